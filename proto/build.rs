//! Compiles Caisson's own admin API with tonic/prost. `protoc` comes from
//! Debian's `protobuf-compiler` package (the Makefile installs it). The CRI
//! is not compiled here: it comes from the `k8s-cri` crate (see `lib.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=admin/admin.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["admin/admin.proto"], &["admin"])?;
    Ok(())
}
