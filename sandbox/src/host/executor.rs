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
        crate::backend::hardened::exec_userns::enter_for_exec(spec)
            .map_err(ExecutorError::Other)?;
        confine_to_root(spec)?;
        load_exec_filter(spec)?;
        self.0.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        self.0.validate(spec)?;
        // The last step of an init before it reports ready (libcontainer
        // loads a no_new_privs filter just before this).
        load_init_filter(spec).map_err(ExecutorValidationError::ArgValidationError)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        self.0.setup_envs(envs)
    }
}

/// Annotation asking for Landlock confinement: `rootfs` restricts the
/// process (and its descendants) to files beneath its root directory, i.e.
/// the container's rootfs and the mounts inside it. Defence in depth: a
/// host path reached by other means (another process's `/proc/<pid>/root`,
/// a descriptor leaked in) is outside that hierarchy and refused.
pub const LANDLOCK_ANNOTATION: &str = "io.caisson.landlock";

/// Applies [`LANDLOCK_ANNOTATION`], after `pivot_root` (so `/` is the
/// container's root) and right before `execve`. A kernel without Landlock
/// is tolerated (best effort); any other failure fails the process.
fn confine_to_root(spec: &Spec) -> Result<(), ExecutorError> {
    use landlock::{
        Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI,
    };
    let wanted = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(LANDLOCK_ANNOTATION))
        .is_some_and(|v| v == "rootfs");
    if !wanted {
        return Ok(());
    }
    let failed = |e: &dyn std::fmt::Display| ExecutorError::Other(format!("landlock: {e}"));
    let access = AccessFs::from_all(ABI::V3);
    let root = PathFd::new("/").map_err(|e| failed(&e))?;
    Ruleset::default()
        .handle_access(access)
        .map_err(|e| failed(&e))?
        .create()
        .map_err(|e| failed(&e))?
        .add_rule(PathBeneath::new(root, access))
        .map_err(|e| failed(&e))?
        .restrict_self()
        .map_err(|e| failed(&e))?;
    Ok(())
}

/// Annotation carrying (as JSON) a `linux.seccomp` filter for **exec**
/// processes. libcontainer 0.7's tenant (exec) builder rebuilds
/// `linux` without the container's `seccomp`, so an exec would run
/// unfiltered; a backend that needs execs filtered (hardened) puts the
/// container's filter here and this executor loads it right before `execve`
/// (the process already has `no_new_privs` and its final capabilities).
pub const EXEC_SECCOMP_ANNOTATION: &str = "io.caisson.exec-seccomp";

/// Loads the [`EXEC_SECCOMP_ANNOTATION`] filter in an exec process, or in
/// an init whose `linux.seccomp` the native backend left to this executor
/// (no_new_privs set, no notify action: [`crate::backend::native`]'s
/// `prepare_bundle`); an init whose spec still has `linux.seccomp` has had
/// it loaded by libcontainer. A filter that cannot be loaded fails the
/// process.
fn load_exec_filter(spec: &Spec) -> Result<(), ExecutorError> {
    let already = spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some());
    let Some(json) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(EXEC_SECCOMP_ANNOTATION))
    else {
        return Ok(());
    };
    if already || init_filter_caps(spec).is_some() {
        return Ok(());
    }
    // Compiled by the fork server before it built this process, usually
    // ([`crate::host::seccomp_cache`]); compiled here otherwise.
    let program = crate::host::seccomp_cache::prepare(json)
        .map_err(|e| ExecutorError::Other(format!("{EXEC_SECCOMP_ANNOTATION}: {e}")))?;
    // The process has dropped its capabilities by now, so the kernel only
    // lets it install a filter under no_new_privs: exec processes of a
    // filtered container therefore always run with no_new_privs (an init
    // gets its filter here only when its spec asks for no_new_privs).
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ExecutorError::Other(format!(
            "setting no_new_privs for the exec filter: {}",
            std::io::Error::last_os_error()
        )));
    }
    load_filter(json, program, "exec").map_err(ExecutorError::Other)
}

/// Installs the filter of [`EXEC_SECCOMP_ANNOTATION`]'s `json`: `program`,
/// what [`crate::host::seccomp_cache::prepare`] answered for it, or, where
/// that had none (a filter it does not compile), libcontainer's own
/// compilation of `json`. `whose` names the process in errors.
fn load_filter(
    json: &str,
    program: Option<std::sync::Arc<crate::host::seccomp_cache::Program>>,
    whose: &str,
) -> Result<(), String> {
    let loaded = match program {
        Some(program) => crate::host::seccomp_cache::load(&program).map_err(|e| e.to_string()),
        None => {
            let filter: libcontainer::oci_spec::runtime::LinuxSeccomp = serde_json::from_str(json)
                .map_err(|e| format!("{EXEC_SECCOMP_ANNOTATION}: {e}"))?;
            libcontainer::seccomp::initialize_seccomp(&filter)
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    loaded.map_err(|e| format!("loading the {whose} seccomp filter: {e}"))
}

/// Annotation (set by the native backend on an init's spec) with the
/// capabilities, as JSON `LinuxCapabilities`, of an init whose seccomp
/// filter ([`EXEC_SECCOMP_ANNOTATION`]) this executor loads without
/// no_new_privs: the kernel lets a process do that only with
/// `CAP_SYS_ADMIN`, which libcontainer's own load (before it drops the
/// capabilities) has, so the spec gives the init `CAP_SYS_ADMIN` and
/// `CAP_SETPCAP` on top of its own, and [`load_init_filter`] loads the
/// program the fork server compiled, then drops to these. Both happen in
/// the executor's `validate`, before the init reports ready, and nothing
/// of the user's program runs before.
pub const INIT_SECCOMP_CAPS_ANNOTATION: &str = "io.caisson.init-seccomp-caps";

/// The capabilities [`INIT_SECCOMP_CAPS_ANNOTATION`] gives, for an init
/// (not an exec: those carry the container's annotations too) whose spec
/// has no `linux.seccomp` left for libcontainer.
fn init_filter_caps(spec: &Spec) -> Option<&String> {
    if crate::backend::hardened::exec_userns::building_exec()
        || spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some())
    {
        return None;
    }
    spec.annotations()
        .as_ref()?
        .get(INIT_SECCOMP_CAPS_ANNOTATION)
}

/// For an init with [`INIT_SECCOMP_CAPS_ANNOTATION`]: loads its filter (the
/// fork server's compiled program, or compiled here) while the process
/// still holds `CAP_SYS_ADMIN`, then drops its capabilities to the
/// annotated ones (the bounding set first, with `CAP_SETPCAP`). A failure
/// fails the init.
fn load_init_filter(spec: &Spec) -> Result<(), String> {
    let Some(caps) = init_filter_caps(spec) else {
        return Ok(());
    };
    let caps: libcontainer::oci_spec::runtime::LinuxCapabilities =
        serde_json::from_str(caps).map_err(|e| format!("{INIT_SECCOMP_CAPS_ANNOTATION}: {e}"))?;
    let json = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(EXEC_SECCOMP_ANNOTATION))
        .ok_or_else(|| {
            format!("{INIT_SECCOMP_CAPS_ANNOTATION} without {EXEC_SECCOMP_ANNOTATION}")
        })?;
    let program = crate::host::seccomp_cache::prepare(json)
        .map_err(|e| format!("{EXEC_SECCOMP_ANNOTATION}: {e}"))?;
    load_filter(json, program, "init's")?;
    let syscall = libcontainer::syscall::syscall::create_syscall();
    libcontainer::capabilities::drop_privileges(&caps, syscall.as_ref())
        .map_err(|e| format!("dropping to the init's capabilities: {e}"))
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
