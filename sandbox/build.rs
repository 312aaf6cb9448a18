//! Link flags for the shim binary.

use std::path::Path;

fn main() {
    // DT_RELR (glibc 2.36, binutils 2.38): the shim is a PIE whose ~20,000
    // relative relocations took 486 KB as RELA entries, read by the dynamic
    // loader in every exec (a pod execs the shim twice: its server and its
    // fork server) and left resident; packed, they take a few KB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // The functions a pod's shim runs, first in its text (hot-text.ld says
    // why; bench/hot-text.sh regenerates it). LLD matches every input section
    // against every pattern: with the debug build's ~70,000 functions the
    // whole list adds ~20 s to each link, so other profiles take only its
    // first patterns, enough for the tests to run a shim linked this way.
    println!("cargo:rerun-if-changed=hot-text.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-text.ld");
    let script = if std::env::var("PROFILE").as_deref() == Ok("release") {
        script
    } else {
        let text = std::fs::read_to_string(&script).expect("reading hot-text.ld");
        let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("hot-text.ld");
        std::fs::write(&out, first_patterns(&text, 64)).expect("writing the short hot-text.ld");
        out
    };
    println!(
        "cargo:rustc-link-arg-bin=containerd-shim-caisson-v2=-Wl,-T,{}",
        script.display()
    );
}

/// hot-text.ld with only its first `n` function patterns, and none of its
/// archive members' (`*libc.a:memcpy.o(.text)`): those are the static
/// release shim's C code, which other builds link dynamically.
fn first_patterns(script: &str, n: usize) -> String {
    let mut kept = 0;
    let mut out = String::new();
    for line in script.lines() {
        let trimmed = line.trim_start();
        let function = trimmed.starts_with("*(");
        let member = trimmed.starts_with('*') && !function;
        if !member && (!function || kept < n) {
            out.push_str(line);
            out.push('\n');
        }
        kept += usize::from(function);
    }
    out
}
