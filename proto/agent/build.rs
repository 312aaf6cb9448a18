//! Compiles `agent.proto` with prost (`protoc` from Debian's
//! `protobuf-compiler`, which the Makefile installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=agent.proto");
    prost_build::compile_protos(&["agent.proto"], &["."])?;
    Ok(())
}
