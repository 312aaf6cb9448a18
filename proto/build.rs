//! Compiles the CRI v1 API with tonic/prost. `protoc` comes from Debian's
//! `protobuf-compiler` package (the Makefile installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cri/api.proto");
    println!("cargo:rerun-if-changed=admin/admin.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["cri/api.proto"], &["cri"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["admin/admin.proto"], &["admin"])?;
    Ok(())
}
