//! Prerequisites of tests: a missing one fails the test and says what to install.

use std::path::{Path, PathBuf};

/// Fails unless running as root.
pub fn root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    assert_eq!(
        euid, 0,
        "this test must run as root ({why}); run the suite with `make test` as root"
    );
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Path of `program`, failing with the Debian package that provides it.
pub fn program(program: &str, debian_package: &str) -> PathBuf {
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!("{program} is required: install Debian's {debian_package} package (`make deps` does)");
}
