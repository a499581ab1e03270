//! Compiles the SPIFFE Workload API with protox (pure Rust: no system `protoc`). protox ships
//! the well-known types, `google/protobuf/struct.proto` among them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/workload.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
