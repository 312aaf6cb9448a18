//! The libcontainer executor for Caisson's host-process backends.
//!
//! libcontainer forks container processes straight from the shim, so they
//! start with the shim's signal state. Rust programs ignore SIGPIPE, and an
//! ignored signal stays ignored across `execve`: without a reset, every
//! container payload would run with SIGPIPE ignored (`yes | head` would spin
//! on EPIPE instead of dying). [`CleanSignals`] restores the default
//! disposition of every signal and an empty signal mask right before the
//! wrapped executor `exec`s the payload.

use std::collections::HashMap;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};

/// Wraps an executor (by default libcontainer's, which `execvp`s the spec's
/// args) and resets the signal state first.
#[derive(Clone)]
pub struct CleanSignals<E = DefaultExecutor>(pub E);

impl Default for CleanSignals<DefaultExecutor> {
    fn default() -> Self {
        CleanSignals(DefaultExecutor {})
    }
}

impl<E: Executor + Clone + 'static> Executor for CleanSignals<E> {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signal_state();
        self.0.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        self.0.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        self.0.setup_envs(envs)
    }
}

/// Default disposition for every signal, empty mask. Runs in the
/// single-threaded container process just before `execve`; failures (a
/// seccomp profile denying `rt_sigaction`) are ignored: the payload then
/// simply keeps what it inherited.
pub fn reset_signal_state() {
    /// The kernel's `struct sigaction` for `rt_sigaction(2)`; all zero is
    /// SIG_DFL with no flags and an empty mask on every architecture.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads one sigaction struct of the given size
        // (8 bytes of mask); the raw syscall also reaches the real-time
        // signals glibc reserves for itself, which `signal()` refuses.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
    }
    // SAFETY: an empty, initialised set; the old mask is not wanted.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}
