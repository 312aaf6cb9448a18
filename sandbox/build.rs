//! Link flags for the shim binary.

fn main() {
    // DT_RELR (glibc 2.36, binutils 2.38): the shim is a PIE whose ~20,000
    // relative relocations took 486 KB as RELA entries, read by the dynamic
    // loader in every exec (a pod execs the shim twice: its server and its
    // fork server) and left resident; packed, they take a few KB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // The functions a pod's shim runs, first in its text (hot-text.ld says
    // why; bench/hot-text.sh regenerates it).
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-text.ld");
    println!("cargo:rerun-if-changed=hot-text.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rustc-link-arg-bin=containerd-shim-caisson-v2=-Wl,-T,{}",
        script.display()
    );
}
