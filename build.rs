//! Generates the gRPC server and client code from `proto/`, and the encoded file descriptor set
//! that server reflection serves. Uses protox (a pure-Rust protobuf compiler) so no system
//! `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/copilot/v1/copilot.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("copilot_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().codec_path("crate::codec::LeanCodec").compile_fds(descriptors)?;
    Ok(())
}
