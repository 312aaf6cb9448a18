//! The executor libcontainer calls last in a container process: it gives
//! the payload a clean signal state (the agent blocks SIGCHLD for its
//! reaper, and a blocked mask survives `execve`) and, like runc, does not
//! refuse a spec without `PATH` (a pause image has none).

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// containerd's default `PATH`, used only to check a spec that has none
/// (the process still gets exactly the spec's environment; `execvp` then
/// searches the C library's default path).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Default)]
pub struct GuestExecutor;

impl Executor for GuestExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let has_path = spec
            .process()
            .as_ref()
            .and_then(|p| p.env().as_ref())
            .is_some_and(|env| env.iter().any(|e| e.starts_with("PATH=")));
        if has_path {
            return DefaultExecutor {}.validate(spec);
        }
        let mut checked = spec.clone();
        if let Some(mut process) = checked.process().clone() {
            let mut env = process.env().clone().unwrap_or_default();
            env.push(format!("PATH={DEFAULT_PATH}"));
            process.set_env(Some(env));
            checked.set_process(Some(process));
        }
        DefaultExecutor {}.validate(&checked)
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals();
        DefaultExecutor {}.exec(spec)
    }
}

/// Every signal back to its default disposition, and an empty mask.
fn reset_signals() {
    // SAFETY: plain signal-state calls in the single-threaded container
    // process, right before execve.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}
