//! The shim binary is linked with `sandbox/hot-text.ld`: the functions a pod's
//! shim runs are laid out together, in their own output section before the
//! rest of the text, so that the kernel's fault-around maps them and little
//! else. The list names functions by their v0 symbols (`.cargo/config.toml`)
//! with the crates' hashes left out. A debug build links with the list's
//! first patterns only (`build.rs`), but has the names of nearly every
//! function the list names: when too few of them are there any more, the
//! list is stale (or the mangling changed) and `bench/hot-text.sh` remakes it.
//!
//! `make test` runs these again on the release shim (`CAISSON_TEST_SHIM`),
//! a static build whose list also places the C code it runs.

use std::process::Command;

const SCRIPT: &str = include_str!("../hot-text.ld");

/// The shim under test: the debug build's, or the one `CAISSON_TEST_SHIM` names.
fn shim() -> String {
    std::env::var("CAISSON_TEST_SHIM")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_containerd-shim-caisson-v2").to_string())
}

fn readelf(flag: &str) -> String {
    let shim = shim();
    let out = Command::new("readelf")
        .args([flag, "-W", &shim])
        .output()
        .expect("running readelf (binutils)");
    assert!(out.status.success(), "readelf {flag} {shim} failed");
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

/// The shim's functions, (name, address), sorted by name.
fn functions() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = readelf("-s")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[3] == "FUNC" && f[6] != "UND")
                .then(|| Some((f[7].to_string(), u64::from_str_radix(f[1], 16).ok()?)))?
        })
        .collect();
    out.sort();
    out
}

/// The script's symbol patterns (each line's `.text.<pattern>`), in order.
fn patterns() -> Vec<&'static str> {
    SCRIPT
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("*(.text.")?.split(' ').next())
        .collect()
}

/// A glob with `*` only, as the script's patterns are.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// The functions a pattern matches: only names with its literal prefix are tried.
fn matching<'a>(functions: &'a [(String, u64)], pattern: &str) -> Vec<&'a (String, u64)> {
    let prefix = pattern.split('*').next().unwrap_or_default();
    let start = functions.partition_point(|(n, _)| n.as_str() < prefix);
    functions[start..]
        .iter()
        .take_while(|(n, _)| n.starts_with(prefix))
        .filter(|(n, _)| glob(pattern, n))
        .collect()
}

#[test]
fn glob_matches_as_the_linker_does() {
    assert!(glob("_RNvCs*_5alloc3foo", "_RNvCsAbC123_5alloc3foo"));
    assert!(!glob("_RNvCs*_5alloc3foo", "_RNvCsAbC123_5alloc3fooo"));
    assert!(glob("name*", "name.12"));
    assert!(glob("main", "main"));
    assert!(!glob("main", "mainly"));
    assert!(glob("a*b*c", "a-b-b-c"));
    assert!(!glob("a*b*c", "a-c"));
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
    let in_hot = |a: u64| (hot..hot + hot_size).contains(&a);

    let functions = functions();
    let patterns = patterns();
    assert!(
        patterns.len() > 1000,
        "hot-text.ld has {} patterns",
        patterns.len()
    );
    let matched: Vec<_> = patterns
        .iter()
        .map(|p| (p, matching(&functions, p)))
        .collect();
    let found = matched.iter().filter(|(_, m)| !m.is_empty()).count();
    assert!(
        found * 10 >= patterns.len() * 8,
        "only {found} of hot-text.ld's {} patterns name a function of the shim: \
         remake it with bench/hot-text.sh (or, if none do, the symbols are not v0: \
         a RUSTFLAGS in the environment replaces .cargo/config.toml's rustflags)",
        patterns.len()
    );

    // The first patterns are linked in every build: what they name is in
    // .text.hot.
    let (first, at) = matched
        .iter()
        .find_map(|(p, m)| Some((p, m.first()?)))
        .expect("a pattern that matches");
    assert!(
        in_hot(at.1),
        "{} (pattern {first}) at {:#x}, outside .text.hot",
        at.0,
        at.1
    );
    // A function no shim runs in a pod's life (the microvm backend's console
    // tail, read when a VM fails to boot) is not in it.
    let cold: Vec<_> = functions
        .iter()
        .filter(|(n, _)| n.contains("7microvm12console_tail"))
        .collect();
    assert!(!cold.is_empty(), "no symbol for microvm::console_tail");
    assert!(
        !cold.iter().any(|(_, a)| in_hot(*a)),
        "microvm::console_tail in .text.hot"
    );
}

/// The C libraries a shim maps. A dynamic shim needs libc and not libm: it
/// defines the two libm functions it calls (`pow`, `log2`, in
/// containerd-shim-caisson-v2.rs), so the link drops libm.so.6 and no shim
/// maps it; a new call into libm (an `f64::exp`, say, in a dependency)
/// brings the library back, and this fails then. A static shim (the
/// release build) needs nothing, and the C code it runs is in its hot text
/// (malloc, from libc.a's member named in hot-text.ld).
#[test]
fn the_shim_maps_no_libm_and_a_static_one_has_its_c_code_hot() {
    let dynamic = readelf("-d");
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    let functions = functions();
    for defined in ["pow", "log2"] {
        assert!(
            functions.iter().any(|(n, _)| n == defined),
            "no {defined} defined in the shim"
        );
    }
    if readelf("-l").contains("INTERP") {
        assert!(
            needed.iter().any(|l| l.contains("libc.so")),
            "readelf -d shows no NEEDED libc: {dynamic}"
        );
        assert!(
            !needed.iter().any(|l| l.contains("libm.so")),
            "the shim needs libm.so.6 again ({needed:?}): `readelf -V` on it names what \
             it imports from libm; define that beside pow and log2 in \
             containerd-shim-caisson-v2.rs"
        );
        return;
    }
    assert!(needed.is_empty(), "a static shim needs {needed:?}");
    let (hot, size) = section(&readelf("-S"), ".text.hot").expect("a .text.hot section");
    let malloc = functions
        .iter()
        .find(|(n, _)| n == "malloc")
        .expect("malloc defined in a static shim");
    assert!(
        (hot..hot + size).contains(&malloc.1),
        "malloc at {:#x}, outside .text.hot ({hot:#x}, {size:#x} bytes): \
         hot-text.ld names no libc.a member? remake it with bench/hot-text.sh",
        malloc.1
    );
}
