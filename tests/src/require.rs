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

/// Where `make deps` puts the Python environment of the interop tests: a
/// venv over Debian's `python3-grpcio` with `grpcio-tools` from PyPI, kept
/// outside the clone (`CAISSON_TEST_PYTHON` overrides the interpreter).
pub const PYTHON_GRPC_VENV: &str = "/var/cache/caisson-test/py-grpc";

/// The Python interpreter with grpcio and grpcio-tools, failing with how to
/// get it.
pub fn python_grpc() -> PathBuf {
    let python = std::env::var_os("CAISSON_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(PYTHON_GRPC_VENV).join("bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with grpcio (Debian's python3-grpcio) and grpcio-tools (PyPI) is required: `make deps` makes it",
        python.display()
    );
    python
}

/// The interop venv's Python interpreter with the `kubernetes` package
/// (PyPI; its `kubernetes.stream.ws_client` speaks the WebSocket channel
/// protocols, v5 included), failing with how to get it.
pub fn python_kubernetes() -> PathBuf {
    let python = std::env::var_os("CAISSON_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(PYTHON_GRPC_VENV).join("bin/python"));
    let ok = std::process::Command::new(&python)
        .args([
            "-c",
            "from kubernetes.stream import ws_client; ws_client.V5_CHANNEL_PROTOCOL",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with the `kubernetes` package (PyPI, pinned in the Makefile's PY_GRPC_TOOLS) is required: `make deps` makes it",
        python.display()
    );
    python
}

/// Where `make microvm-guest` installs the microvm guest (the embedded
/// default config's paths).
pub const MICROVM_GUEST_DIR: &str = "/var/lib/caisson/microvm";

/// The guest kernels `make microvm-guest` installs, each with its release
/// in a file beside it; one initramfs serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKernel {
    /// Caisson's own (`agent/guest/kernel/`), the handler's default:
    /// `vmlinux`, `kernel-release`.
    Default,
    /// Debian's linux-image-amd64: `vmlinux-debian`, `kernel-release-debian`.
    Debian,
}

impl GuestKernel {
    fn suffix(self) -> &'static str {
        match self {
            GuestKernel::Default => "",
            GuestKernel::Debian => "-debian",
        }
    }

    pub fn vmlinux(self) -> PathBuf {
        Path::new(MICROVM_GUEST_DIR).join(format!("vmlinux{}", self.suffix()))
    }

    /// Its release (`uname -r` in the guest).
    pub fn release(self) -> String {
        let path = Path::new(MICROVM_GUEST_DIR).join(format!("kernel-release{}", self.suffix()));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; `make microvm-guest` builds the guest",
                    path.display()
                )
            })
            .trim()
            .to_string()
    }
}

/// QEMU and the microvm guest (both kernels, the initramfs), failing with
/// what is missing and how to get it. Returns the default kernel's release.
pub fn microvm() -> String {
    program(
        "qemu-system-x86_64",
        "qemu-system-x86 (bookworm-backports; `make microvm-deps`)",
    );
    let dir = Path::new(MICROVM_GUEST_DIR);
    for file in [
        "vmlinux",
        "kernel-release",
        "vmlinux-debian",
        "kernel-release-debian",
        "initramfs.cpio",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{} is required: `make microvm-guest` builds the guest",
            dir.join(file).display()
        );
    }
    GuestKernel::Default.release()
}
