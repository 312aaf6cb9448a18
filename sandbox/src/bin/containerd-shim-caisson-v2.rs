//! `containerd-shim-caisson-v2`: Caisson's per-pod shim. See `caisson_sandbox::shim`.

use std::process::ExitCode;

use caisson_sandbox::host::forker::FORK_SERVER_ACTION;
use caisson_sandbox::shim::{self, parse_flags, RUNTIME_NAME};

/// The server's log, which its fork servers share (a forked one inherits
/// it; an exec'd one makes the same): libcgroups' warnings about every v1
/// controller a hybrid host lacks (hugetlb, perf_event, …), each time it
/// opens a cgroup, are dropped, and so is one libcontainer warning: the
/// init is cloned as the fork server's sibling, so libcontainer's wait for
/// the intermediate process always finds it is not the server's child. The
/// subscriber writes synchronously: a fork server must stay
/// single-threaded.
fn init_logging(debug: bool) {
    let default = if debug {
        "debug,libcgroups=error"
    } else {
        "info,libcgroups=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAISSON_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        .add_directive(
            "libcontainer::process::container_main_process=error"
                .parse()
                .expect("a valid directive"),
        );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The only two libm functions the shim calls (libcgroups' cgroup v2 CPU
/// weight conversion), defined here from the `libm` crate's pure-Rust
/// implementations: with no symbol left for libm.so.6 to resolve, the link's
/// `--as-needed` drops the library, and no shim maps it (0.33 MB of RSS in
/// each). `sandbox/tests/hot_text.rs` checks that the shim needs no libm.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// See [`pow`].
#[no_mangle]
pub extern "C" fn log2(x: f64) -> f64 {
    libm::log2(x)
}

fn main() -> ExitCode {
    // A symlink `containerd-shim-caisson-<backend>-v2` (runtime type
    // `io.containerd.caisson-<backend>.v2`) picks the backend unless the
    // environment does; `serve`, `delete` and the fork server inherit it.
    if std::env::var_os(shim::BACKEND_ENV).is_none() {
        if let Some(backend) = std::env::args()
            .next()
            .and_then(|argv0| shim::backend_from_binary_name(&argv0))
        {
            // Still single-threaded: nothing reads the environment concurrently.
            std::env::set_var(shim::BACKEND_ENV, backend);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match parse_flags(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_NAME}: {e}");
            return ExitCode::from(2);
        }
    };
    // Only the server logs (its stderr is the shim log file): containerd 1.6
    // takes everything `start` writes, stdout and stderr, as the address.
    if flags.action == "serve" {
        init_logging(flags.debug);
    }
    let result = match flags.action.as_str() {
        "v" | "version" => {
            println!(
                "containerd-shim-caisson-v2 {} ({RUNTIME_NAME})",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        "start" => shim::start(&flags)
            .and_then(|address| shim::write_stdout(address.as_bytes()).map_err(|e| e.to_string())),
        "delete" => shim::delete(&flags)
            .and_then(|bytes| shim::write_stdout(&bytes).map_err(|e| e.to_string())),
        "serve" => shim::serve(&flags),
        // Hidden: the native backend's single-threaded fork server, started
        // by the shim itself (see caisson_sandbox::host::forker).
        FORK_SERVER_ACTION => {
            init_logging(flags.debug);
            caisson_sandbox::host::forker::name_fork_server();
            caisson_sandbox::backend::native::serve_fork_requests()
        }
        "" => Err("no action given: expected start, delete or serve".to_string()),
        other => Err(format!("unknown action {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{RUNTIME_NAME}: {}: {e}", flags.action);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// libcgroups 0.7's cgroup v2 conversion of CPU shares to a weight (its
    /// `v2::cpu`), the one use of [`super::pow`] and [`super::log2`].
    fn weight(shares: u64) -> u64 {
        let log_shares = super::log2(shares as f64);
        let exponent = (log_shares * log_shares + 125.0 * log_shares) / 612.0 - 7.0 / 34.0;
        super::pow(10.0, exponent).ceil() as u64
    }

    #[test]
    fn pow_and_log2_give_the_weights_glibcs_libm_gives() {
        // Computed with glibc 2.36's libm: 1024 shares is exactly weight 100
        // there, where a result one ulp high would round up to 101.
        for (shares, expected) in [
            (3, 2),
            (100, 17),
            (512, 59),
            (1024, 100),
            (4096, 303),
            (100_000, 4340),
            (262_143, 10_000),
        ] {
            assert_eq!(weight(shares), expected, "weight of {shares} shares");
        }
        let close = |a: f64, b: f64| (a - b).abs() <= f64::EPSILON * b.abs();
        assert!(close(super::pow(10.0, 0.5), 3.162_277_660_168_379_5));
        assert!(close(super::log2(3.0), 1.584_962_500_721_156));
        assert_eq!(super::log2(1024.0), 10.0);
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
    }
}
