//! The shim binary is linked with `sandbox/hot-text.ld`: the functions a pod's
//! shim runs are laid out together, in their own output section before the
//! rest of the text, so that the kernel's fault-around maps them and little
//! else. The list names functions by their v0 symbols (`.cargo/config.toml`)
//! with the crates' hashes left out; if the mangling or the link step
//! changed, the section would come out empty or be gone.

use std::process::Command;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-caisson-v2");

fn readelf(flag: &str) -> String {
    let out = Command::new("readelf")
        .args([flag, "-W", SHIM])
        .output()
        .expect("running readelf (binutils)");
    assert!(out.status.success(), "readelf {flag} {SHIM} failed");
    String::from_utf8(out.stdout).expect("readelf's output is UTF-8")
}

/// (address, size) of the named section, from `readelf -S`.
fn section(headers: &str, name: &str) -> Option<(u64, u64)> {
    headers.lines().find_map(|line| {
        let fields: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter(|f| !f.is_empty())
            .collect();
        let at = fields.iter().position(|f| *f == name)?;
        let hex = |i: usize| u64::from_str_radix(fields.get(i)?, 16).ok();
        // name, type, address, offset, size
        Some((hex(at + 2)?, hex(at + 4)?))
    })
}

#[test]
fn the_functions_a_shim_runs_come_first_in_its_text() {
    let headers = readelf("-S");
    let (hot, hot_size) = section(&headers, ".text.hot").expect("a .text.hot section in the shim");
    let (text, _) = section(&headers, ".text").expect("a .text section in the shim");
    assert!(
        hot < text,
        ".text.hot at {hot:#x}, after .text at {text:#x}"
    );
    assert!(
        hot_size >= 256 << 10,
        ".text.hot holds only {hot_size} bytes: hot-text.ld's patterns no longer match"
    );

    // The shim's server loop and its backend's container build are in it;
    // a function no shim runs (the microvm backend's boot of QEMU, for a
    // native pod) is not.
    let symbols = readelf("-s");
    let address_of = |needle: &str| -> Vec<u64> {
        symbols
            .lines()
            .filter(|l| l.contains(" FUNC ") && l.contains(needle))
            .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
            .collect()
    };
    let in_hot = |a: &u64| (hot..hot + hot_size).contains(a);
    for hot_fn in ["15caisson_sandbox4shim5serve", "10build_here"] {
        let at = address_of(hot_fn);
        assert!(!at.is_empty(), "no symbol with {hot_fn} (v0 names?)");
        assert!(
            at.iter().any(in_hot),
            "{hot_fn} at {at:x?}, outside .text.hot"
        );
    }
    let cold = address_of("7microvm12console_tail");
    assert!(!cold.is_empty(), "no symbol for microvm::console_tail");
    assert!(
        !cold.iter().any(in_hot),
        "microvm::console_tail in .text.hot"
    );
}
