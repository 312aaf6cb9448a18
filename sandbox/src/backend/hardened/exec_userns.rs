//! Exec processes of a hardened pod enter its user namespace themselves.
//!
//! libcontainer 0.7's tenant (exec) builder joins the container's
//! namespaces except the user namespace (its list has no `user`), so an exec
//! would run as the *host's* uid 0. The hardened backend therefore lets the
//! exec process reach the executor with `CAP_SYS_ADMIN` (and nothing of the
//! user's program has run yet), and the executor calls [`enter_for_exec`]
//! first: it joins the user namespace of the container's pid 1 (every
//! process of the pod is in the pod's), becomes the process's user inside
//! it, and drops to the container's hardened capabilities, carried in
//! [`EXEC_USERNS_ANNOTATION`]. The seccomp filter and Landlock follow, as
//! for every exec.

use std::os::unix::fs::MetadataExt;

use libcontainer::oci_spec::runtime::{LinuxCapabilities, Spec};
use nix::sched::CloneFlags;

/// Annotation (on a container's spec) with the capabilities, as JSON
/// `LinuxCapabilities`, its exec processes end with after entering the
/// pod's user namespace.
pub const EXEC_USERNS_ANNOTATION: &str = "io.caisson.exec-userns-caps";

/// In an exec process of a hardened pod (the annotation is set and the
/// process is still in the host's user namespace),
/// enters that namespace, takes the process's ids inside it and drops to
/// the annotated capabilities. Does nothing for an init process.
pub fn enter_for_exec(spec: &Spec) -> Result<(), String> {
    let Some(json) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(EXEC_USERNS_ANNOTATION))
    else {
        return Ok(());
    };
    let caps: LinuxCapabilities =
        serde_json::from_str(json).map_err(|e| format!("{EXEC_USERNS_ANNOTATION}: {e}"))?;
    // An init process is in the pod's user namespace already (and, with
    // no capabilities, may not even open pid 1's namespaces): only a
    // process still in the host's (identity-mapped) one joins.
    let map = std::fs::read_to_string("/proc/self/uid_map")
        .map_err(|e| format!("/proc/self/uid_map: {e}"))?;
    let in_initial = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if !in_initial {
        return Ok(());
    }
    let pod = std::fs::File::open("/proc/1/ns/user")
        .map_err(|e| format!("the pod's user namespace (/proc/1/ns/user): {e}"))?;
    let own = std::fs::metadata("/proc/self/ns/user")
        .map_err(|e| format!("/proc/self/ns/user: {e}"))?
        .ino();
    let target = pod
        .metadata()
        .map_err(|e| format!("/proc/1/ns/user: {e}"))?
        .ino();
    if own == target {
        return Err("pid 1 of the container is in the host's user namespace".into());
    }
    nix::sched::setns(&pod, CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("entering the pod's user namespace: {e}"))?;
    let user = spec
        .process()
        .as_ref()
        .map(|p| p.user().clone())
        .unwrap_or_default();
    let groups: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    let os_error = |what: &str| {
        format!(
            "{what} in the pod's user namespace: {}",
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: plain syscalls on integers and a valid slice, in the
    // single-threaded exec process.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(os_error("setgroups"));
        }
        // Keep the (full, namespaced) capabilities across the uid change;
        // they are dropped to the container's right after.
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        if libc::syscall(libc::SYS_setresgid, user.gid(), user.gid(), user.gid()) != 0 {
            return Err(os_error(&format!("setresgid({})", user.gid())));
        }
        if libc::syscall(libc::SYS_setresuid, user.uid(), user.uid(), user.uid()) != 0 {
            return Err(os_error(&format!("setresuid({})", user.uid())));
        }
    }
    let syscall = libcontainer::syscall::syscall::create_syscall();
    libcontainer::capabilities::drop_privileges(&caps, syscall.as_ref())
        .map_err(|e| format!("dropping capabilities: {e}"))?;
    Ok(())
}
