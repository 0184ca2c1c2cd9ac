//! Generates the server API's gRPC code from `proto/` with a pure-Rust protobuf compiler, so
//! building needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/idmint.proto", "proto/workload.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
