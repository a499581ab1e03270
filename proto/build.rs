//! Compiles the `.proto` files with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/ringzero/v1/authority.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // Default stubs answer `Unimplemented`: a server built against an older set of methods
    // (or a test double serving a few) keeps compiling as methods are added.
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
