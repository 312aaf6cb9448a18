//! A pod's user namespace, made from explicit uid/gid mappings and held by
//! an fd.
//!
//! A child is cloned with `CLONE_NEWUSER` (sharing the shim's memory); the
//! shim (root in the host's user namespace) writes its `uid_map` and
//! `gid_map`, opens its `/proc/<pid>/ns/user` and lets it exit: the
//! namespace lives on as long as the fd (or a process in it) does. Tasks
//! join it by path (`/proc/<shim>/fd/<n>`), so libcontainer never makes
//! nor maps one itself, and mounts can be idmapped through it
//! ([`super::idmap`]) before any task exists. The hardened backend makes
//! one per pod from its pool's range; the native backend from the mappings
//! kubelet sent (`hostUsers: false`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

/// `container_id host_id size`: one mapping.
pub fn mapping(container_id: u32, host_id: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(container_id)
        .host_id(host_id)
        .size(size)
        .build()
        .expect("an id mapping builds")
}

/// The host id that container id `id` maps to, if any.
pub fn host_id_of(mappings: &[LinuxIdMapping], id: u32) -> Option<u32> {
    mappings.iter().find_map(|m| {
        let offset = id.checked_sub(m.container_id())?;
        (offset < m.size()).then(|| m.host_id().checked_add(offset))?
    })
}

/// Why a list of mappings cannot make a user namespace: checked before the
/// kernel is asked, so the error names the mapping.
pub fn check_mappings(mappings: &[LinuxIdMapping]) -> Result<(), String> {
    if mappings.is_empty() {
        return Err("no mapping".into());
    }
    // The kernel takes at most 340 lines; `(uid_t)-1` is never an id.
    if mappings.len() > 340 {
        return Err(format!("{} mappings (at most 340)", mappings.len()));
    }
    let end = |start: u32, size: u32| u64::from(start) + u64::from(size);
    for (i, m) in mappings.iter().enumerate() {
        let shown = format!("[{i}] {} {} {}", m.container_id(), m.host_id(), m.size());
        if m.size() == 0 {
            return Err(format!("{shown}: size 0"));
        }
        if end(m.container_id(), m.size()) > u64::from(u32::MAX)
            || end(m.host_id(), m.size()) > u64::from(u32::MAX)
        {
            return Err(format!("{shown}: runs past the last id"));
        }
        for (j, other) in mappings.iter().enumerate().take(i) {
            let overlaps = |a: u32, b: u32| a < b.saturating_add(other.size()) && b < a + m.size();
            if overlaps(m.container_id(), other.container_id())
                || overlaps(m.host_id(), other.host_id())
            {
                return Err(format!("{shown}: overlaps [{j}]"));
            }
        }
    }
    Ok(())
}

/// Removes `task` from whichever pod of `pods` (by sandbox id) lists it in
/// `tasks`; returns that pod, with its sandbox id, when `task` was its
/// last one, so the caller can release what the pod held. Both backends
/// keep their pods' user namespaces this way.
pub fn leave_pod<P>(
    pods: &mut HashMap<String, P>,
    task: &str,
    tasks: impl Fn(&mut P) -> &mut HashSet<String>,
) -> Option<(String, P)> {
    let (sandbox, last) = pods.iter_mut().find_map(|(sandbox, pod)| {
        let tasks = tasks(pod);
        tasks
            .remove(task)
            .then(|| (sandbox.clone(), tasks.is_empty()))
    })?;
    if last {
        pods.remove_entry(&sandbox)
    } else {
        None
    }
}

/// A user namespace held by an fd of this process.
#[derive(Debug)]
pub struct UserNamespace {
    fd: OwnedFd,
    inode: u64,
    uid_mappings: Vec<LinuxIdMapping>,
    gid_mappings: Vec<LinuxIdMapping>,
}

impl UserNamespace {
    /// Makes a user namespace with exactly these mappings (checked first
    /// with [`check_mappings`]).
    pub fn create(
        uid_mappings: &[LinuxIdMapping],
        gid_mappings: &[LinuxIdMapping],
    ) -> io::Result<UserNamespace> {
        for (what, m) in [("uid", uid_mappings), ("gid", gid_mappings)] {
            check_mappings(m).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{what} mappings: {e}"))
            })?;
        }
        let fd = make_userns(&map_text(uid_mappings), &map_text(gid_mappings))?;
        let inode = fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?.ino();
        Ok(UserNamespace {
            fd,
            inode,
            uid_mappings: uid_mappings.to_vec(),
            gid_mappings: gid_mappings.to_vec(),
        })
    }

    /// The path tasks join it by: this process's fd.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn inode(&self) -> u64 {
        self.inode
    }

    pub fn uid_mappings(&self) -> &[LinuxIdMapping] {
        &self.uid_mappings
    }

    pub fn gid_mappings(&self) -> &[LinuxIdMapping] {
        &self.gid_mappings
    }

    /// The host uid and gid of the namespace's root (`None` when it maps
    /// no root).
    pub fn root_ids(&self) -> Option<(u32, u32)> {
        Some((
            host_id_of(&self.uid_mappings, 0)?,
            host_id_of(&self.gid_mappings, 0)?,
        ))
    }
}

/// `/proc/<pid>/uid_map` text.
fn map_text(mappings: &[LinuxIdMapping]) -> String {
    mappings
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Clones a child into a new user namespace, writes its maps, and returns
/// an fd of the namespace (the child is gone).
///
/// The child shares this process's memory (`CLONE_VM`, on a stack of its
/// own) and only waits for a pipe to close: a fork would copy the shim's
/// page tables and leave every page it writes afterwards copy-on-write, on
/// pod start's path.
fn make_userns(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    /// The child's stack, used by one child at a time: under the fork lock,
    /// and that child has exited before the lock is released.
    struct ChildStack(std::cell::UnsafeCell<[u128; CHILD_STACK_WORDS]>);
    // SAFETY: only used under the fork lock (see above).
    unsafe impl Sync for ChildStack {}
    const CHILD_STACK_WORDS: usize = 1024; // 16 KiB, 16-byte aligned
    static CHILD_STACK: ChildStack = ChildStack(std::cell::UnsafeCell::new([0; CHILD_STACK_WORDS]));

    /// The child: raw syscalls only (it runs on this process's memory and
    /// its calling thread's TLS; libc's cancellable wrappers would write
    /// there). Returning exits it.
    extern "C" fn hold(pipe: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `pipe` points at the parent's [read, write] fds, alive
        // until this child has been waited for.
        let [read_end, write_end] = unsafe { *pipe.cast::<[libc::c_int; 2]>() };
        let mut byte = 0u8;
        // SAFETY: raw syscalls with valid arguments; `byte` is on this
        // child's own stack. Its copy of the write end is closed first, or
        // the read would never see the end of the pipe.
        unsafe {
            libc::syscall(libc::SYS_close, write_end);
            libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::syscall(libc::SYS_read, read_end, &mut byte as *mut u8, 1usize);
        }
        0
    }

    let reaper = super::reaper::Reaper::global()?;
    // The child is ours to wait for: the reaper does not reap while the
    // fork lock is held.
    let _guard = reaper.lock();
    // Close-on-exec: a process spawned concurrently must not inherit the
    // write end (the child below would then never see EOF, and the waitpid
    // below would block with the reaper's lock held).
    let (hold_read, hold_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut pipe = [hold_read.as_raw_fd(), hold_write.as_raw_fd()];
    // SAFETY: the stack is ours alone under the fork lock and outlives the
    // child (waited for below), as does `pipe`; the child makes raw
    // syscalls only, on its own copy of the fd table (no CLONE_FILES).
    let pid = unsafe {
        let top = CHILD_STACK.0.get().cast::<u8>().add(CHILD_STACK_WORDS * 16);
        libc::clone(
            hold,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_NEWUSER | libc::SIGCHLD,
            pipe.as_mut_ptr().cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(hold_read);
    let result = (|| {
        // One write each: the kernel takes a map in a single write(2).
        write_once(&format!("/proc/{pid}/uid_map"), uid_map)?;
        write_once(&format!("/proc/{pid}/gid_map"), gid_map)?;
        let ns = File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    // The child's read returns: it exits, and is waited for before its
    // stack can serve another.
    drop(hold_write);
    let mut status = 0;
    // SAFETY: waits for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
    result
}

fn write_once(path: &str, text: &str) -> io::Result<()> {
    use std::io::Write;
    let written = fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write(text.as_bytes())?;
    if written != text.len() {
        return Err(io::Error::other(format!(
            "{path}: wrote {written} of {} bytes",
            text.len()
        )));
    }
    Ok(())
}

/// A task's init in a user namespace other than the shim's, seen before
/// it was started: until it `execve`s its program, others in its pod
/// cannot join its namespaces by path.
///
/// Between switching to its uid inside the namespace and `execve`, a
/// libcontainer init is not dumpable and its memory still belongs to the
/// host's user namespace (it is a copy of the fork server), so the kernel
/// refuses to open its `/proc/<pid>/ns/*` (`EACCES`) to anything without
/// `CAP_SYS_PTRACE` on the host, such as the next container of its pod,
/// which opens them after it has joined the pod's user namespace. runc
/// opens every namespace before it joins any; libcontainer joins the user
/// namespace first. libcontainer's `start` only tells the init to go on,
/// so on a busy node a pod's pause could still be on its way to `execve`
/// when its first container was created.
/// [`PendingExec::wait`] waits for the `execve`, after which the kernel
/// lets the pod's processes open the namespaces.
#[derive(Debug)]
pub struct PendingExec {
    pid: u32,
    /// `/proc/<pid>/exe` before the `execve` (the fork server's binary).
    exe: (u64, u64),
}

impl PendingExec {
    /// `Some` when `pid` is in a user namespace other than ours; call it
    /// before the init is started.
    pub fn observe(pid: u32) -> Option<PendingExec> {
        // The shim's own user namespace does not change.
        static OURS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        let ours =
            (*OURS.get_or_init(|| fs::metadata("/proc/self/ns/user").ok().map(|m| m.ino())))?;
        if fs::metadata(format!("/proc/{pid}/ns/user")).ok()?.ino() == ours {
            return None;
        }
        let exe = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        Some(PendingExec {
            pid,
            exe: (exe.dev(), exe.ino()),
        })
    }

    /// Waits until the init runs another binary (it has exec'd) or is gone,
    /// at most `limit`. False when the limit passed first.
    /// Looks every 100 µs for the first 20 ms (an exec usually takes about
    /// a millisecond, and this wait is on pod start's path), every 2 ms
    /// after; a look is one `stat`.
    pub fn wait(self, limit: std::time::Duration) -> bool {
        use std::time::{Duration, Instant};
        let began = Instant::now();
        loop {
            match fs::metadata(format!("/proc/{}/exe", self.pid)) {
                Ok(m) if (m.dev(), m.ino()) == self.exe => {}
                // Another binary, or no exe: exited (a zombie has none).
                _ => return true,
            }
            let waited = began.elapsed();
            if waited >= limit {
                return false;
            }
            std::thread::sleep(if waited < Duration::from_millis(20) {
                Duration::from_micros(100)
            } else {
                Duration::from_millis(2)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_handed_back_when_its_last_task_leaves() {
        let mut pods: HashMap<String, HashSet<String>> = HashMap::from([
            (
                "a".to_string(),
                HashSet::from(["a".to_string(), "c1".to_string()]),
            ),
            ("b".to_string(), HashSet::from(["b".to_string()])),
        ]);
        assert!(leave_pod(&mut pods, "unknown", |t| t).is_none());
        assert!(leave_pod(&mut pods, "c1", |t| t).is_none());
        let (sandbox, tasks) = leave_pod(&mut pods, "a", |t| t).unwrap();
        assert_eq!((sandbox.as_str(), tasks.len()), ("a", 0));
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn mappings_are_checked_and_looked_up() {
        let one = [mapping(0, 3_000_000, 65_536)];
        check_mappings(&one).unwrap();
        assert_eq!(host_id_of(&one, 0), Some(3_000_000));
        assert_eq!(host_id_of(&one, 65_535), Some(3_065_535));
        assert_eq!(host_id_of(&one, 65_536), None);
        let two = [mapping(0, 3_000_000, 10), mapping(1000, 4_000_000, 10)];
        check_mappings(&two).unwrap();
        assert_eq!(host_id_of(&two, 1005), Some(4_000_005));
        assert_eq!(host_id_of(&two, 10), None);
        for (bad, why) in [
            (vec![], "no mapping"),
            (vec![mapping(0, 1, 0)], "size 0"),
            (vec![mapping(0, u32::MAX - 1, 2)], "past the last id"),
            (vec![mapping(u32::MAX, 1, 1)], "past the last id"),
            (
                vec![mapping(0, 100, 10), mapping(5, 1000, 10)],
                "overlaps [0]",
            ),
            (
                vec![mapping(0, 100, 10), mapping(50, 105, 10)],
                "overlaps [0]",
            ),
        ] {
            let err = check_mappings(&bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert_eq!(map_text(&two), "0 3000000 10\n1000 4000000 10\n");
    }
}
