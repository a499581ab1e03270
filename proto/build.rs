//! Compiles the `.proto` files with protox (pure Rust: no system `protoc`; protox ships the
//! well-known types, `google/protobuf/struct.proto` among them).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ringzero's own API (package `ringzero.v1`, generated as `ringzero.v1.rs`).
    let ringzero = ["proto/ringzero/v1/authority.proto"];
    // The standard SPIFFE Workload API. It has no package, so it is generated as `_.rs` and its
    // gRPC service is `SpiffeWorkloadAPI` on the wire, as every standard client expects.
    let workload = ["proto/spiffe/workload.proto"];
    // ringzero's extension beside the Workload API on the agent's socket (`ringzero.mesh.v1`).
    let mesh = ["proto/ringzero/mesh/v1/mesh.proto"];
    // The agent's node API over mTLS (`ringzero.node.v1`): task logs, later exec and sessions.
    let node = ["proto/ringzero/node/v1/node.proto"];
    for p in ringzero.iter().chain(&workload).chain(&mesh).chain(&node) {
        println!("cargo:rerun-if-changed={p}");
    }
    // Default stubs answer `Unimplemented`: a server built against an older set of methods
    // (or a test double serving a few) keeps compiling as methods are added.
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_fds(protox::compile(ringzero, ["proto"])?)?;
    // The Workload API is a standard: its server implements every method on purpose. Its
    // codec starts each stream's buffers empty (`codec.rs`): an agent holds thousands open.
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(protox::compile(workload, ["proto"])?)?;
    tonic_prost_build::configure().compile_fds(protox::compile(mesh, ["proto"])?)?;
    tonic_prost_build::configure().compile_fds(protox::compile(node, ["proto"])?)?;
    Ok(())
}
