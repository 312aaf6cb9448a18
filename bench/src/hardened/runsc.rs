//! The gVisor column of `hardened`: Debian's `runsc` (gVisor 2022-12) as
//! an `oci` handler, as `shim/caisson.toml`'s commented example sets it up
//! and `tests/tests/cri_runsc_root.rs` tests it. `--platform=ptrace`: the
//! kvm platform hangs on this PVM host and systrap is newer than this
//! runsc; `--network=host`: runsc's netstack refuses every network
//! namespace on kernels that give each one `net.core.rmem_default`.

use std::process::Command;

pub const RUNSC: &str = "/usr/bin/runsc";
/// The platform flag, printed with the results.
pub const PLATFORM: &str = "ptrace";

/// The handler table appended to the bench's config.
pub const HANDLER_CONFIG: &str = r#"[runtimes.handlers.runsc]
backend = "oci"
[runtimes.handlers.runsc.options]
runtime_path = "/usr/bin/runsc"
runtime_args = ["--platform=ptrace", "--network=host"]
"#;

/// Every syscall of the workload goes through the Sentry (ptrace stops
/// on each): the loops run this many times fewer iterations, still
/// seconds long, so a repetition does not take minutes.
pub const ITERATION_DIVISOR: u64 = 100;

/// `runsc --version`'s first line, for the record.
pub fn version() -> String {
    Command::new(RUNSC)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What a process of a pod is, for the Pss breakdown: the program name
/// (`containerd-shim-caisson-v2`, `caisson-pause`, `sleep`,
/// `runsc-sandbox` (the Sentry), `runsc-gofer`), `runsc wait` for the CLI
/// the oci backend leaves following a container of a shared sandbox, and
/// `ptrace stubs` for the Sentry's address-space processes (no command
/// line of their own).
pub fn process_kind(cmdline: &str) -> String {
    let mut words = cmdline.split(' ').filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return "ptrace stubs".into();
    };
    let program = first.rsplit('/').next().unwrap_or(first);
    if program == "runsc" && cmdline.split(' ').any(|w| w == "wait") {
        return "runsc wait".into();
    }
    program.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_pod_processes() {
        let cases = [
            ("/usr/bin/runsc --root /x wait abc", "runsc wait"),
            (
                "runsc-sandbox --root=/x boot --bundle=/b abc",
                "runsc-sandbox",
            ),
            ("runsc-gofer --root=/x gofer --bundle /b", "runsc-gofer"),
            (
                "/t/containerd-shim-caisson-v2 -id x serve",
                "containerd-shim-caisson-v2",
            ),
            ("sleep 3600", "sleep"),
            ("", "ptrace stubs"),
        ];
        for (cmdline, kind) in cases {
            assert_eq!(process_kind(cmdline), kind, "{cmdline}");
        }
    }
}
