//! Handing a process to libcontainer, through the fork server
//! ([`crate::host::forker`]).
//!
//! Shim side: a process's stdio (three fds, or a console socket whose pty
//! master is collected after the build) and, for an exec, its
//! `process.json`, become a [`ForkRequest`]. Server side:
//! [`serve_fork_requests`] turns each request into the libcontainer build
//! the shim used to run itself, with the init (or exec) process made a
//! sibling of the server, i.e. a child of the shim.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use super::default_path::DefaultPathExecutor;
use super::errors::{failed, refusal, stdio_error};
use super::spec;
use crate::backend::hardened::exec_userns::BuildScope;
use crate::backend::{Result, Stdio};
use crate::host::executor::{CleanSignals, EXEC_SECCOMP_ANNOTATION};
use crate::host::forker::{self, RefusalKind, Refused};
use crate::host::pod_view::PodView;
use crate::host::stdio::{ChildStdio, PendingStdio, PrepareError, PreparedStdio};

/// One request to the fork server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum ForkRequest {
    /// `ContainerBuilder::as_init(bundle)`: creates container `id`.
    CreateInit {
        id: String,
        state_root: PathBuf,
        bundle: PathBuf,
        stdio: RequestStdio,
        /// A network namespace to enter for the build (see
        /// [`super::CreateExtras`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
        /// Written in `netns` before the build (see
        /// [`super::CreateExtras`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        net_sysctls: BTreeMap<String, String>,
        /// The node's mounts the build sees ([`PodView`]); all of them
        /// when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        view: Option<PodView>,
    },
    /// `ContainerBuilder::as_tenant()`: runs `process_json` in container `id`.
    Exec {
        id: String,
        state_root: PathBuf,
        process_json: PathBuf,
        stdio: RequestStdio,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
        /// The user namespace the exec must end in (a hardened pod's): the
        /// server opens it before the build and the executor joins it
        /// ([`crate::backend::hardened::exec_userns`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        userns: Option<ExecUserns>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        view: Option<PodView>,
    },
}

/// A user namespace an exec joins: a path the fork server can open (on the
/// host's `/proc`) and the namespace's inode, checked when opened and again
/// when joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecUserns {
    pub path: PathBuf,
    pub inode: u64,
}

impl ExecUserns {
    /// Opens the namespace (close-on-exec) and checks its inode.
    fn open(&self) -> std::result::Result<(OwnedFd, u64), Refused> {
        use std::os::unix::fs::MetadataExt;
        let what = |e: &dyn std::fmt::Display| {
            Refused::new(
                RefusalKind::Failed,
                format!("the pod's user namespace {}: {e}", self.path.display()),
            )
        };
        let file = std::fs::File::open(&self.path).map_err(|e| what(&e))?;
        let inode = file.metadata().map_err(|e| what(&e))?.ino();
        if inode != self.inode {
            return Err(what(&format!(
                "inode {inode}, not the recorded {}",
                self.inode
            )));
        }
        Ok((OwnedFd::from(file), inode))
    }
}

/// How a requested process gets its stdio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RequestStdio {
    /// The request carries three fds: stdin, stdout, stderr.
    Fds,
    /// libcontainer connects to this console socket and sends the pty
    /// master; the request carries no fd.
    Console { socket: PathBuf },
}

/// A process's stdio, opened before libcontainer forks it.
pub(super) fn prepare_stdio(id: &str, stdio: &Stdio) -> Result<PreparedStdio> {
    PreparedStdio::open(stdio).map_err(|e| match e {
        PrepareError::Streams(e) => stdio_error(id, e),
        PrepareError::ConsoleSocket(e) => failed("make console socket", id, e),
    })
}

/// Splits `stdio` into what the request says and carries (the process's
/// fds, to close once the server has replied) and what the shim keeps
/// until [`PendingStdio::finish`].
pub(super) fn into_request(
    stdio: PreparedStdio,
) -> (RequestStdio, Option<ChildStdio>, PendingStdio) {
    let request = match stdio.console_socket() {
        Some(socket) => RequestStdio::Console {
            socket: socket.to_path_buf(),
        },
        None => RequestStdio::Fds,
    };
    let (child, pending) = stdio.split();
    (request, child, pending)
}

/// The fds a request with [`RequestStdio::Fds`] carries, in order.
pub(super) fn request_fds(child: Option<&ChildStdio>) -> Vec<BorrowedFd<'_>> {
    child
        .map(|c| vec![c.stdin.as_fd(), c.stdout.as_fd(), c.stderr.as_fd()])
        .unwrap_or_default()
}

/// Writes an exec's process to a temp `process.json` for the tenant builder
/// (removed when the returned file is dropped).
pub(super) fn write_process_file(process: &Process) -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("caisson-exec-")
        .suffix(".json")
        .tempfile()?;
    serde_json::to_writer(file.as_file_mut(), process)?;
    file.as_file_mut().flush()?;
    Ok(file)
}

// ------------------------------------------------------------ server side

/// The `fork-server` action: serves [`ForkRequest`]s until the shim closes
/// the socket. Runs in its own single-threaded process; see
/// [`crate::host::forker`].
pub fn serve_fork_requests() -> std::result::Result<(), String> {
    let own = OwnProcessState::measure();
    forker::serve(|request: ForkRequest, fds| {
        let built = build(request, fds);
        own.restore();
        built
    })
}

fn build(mut request: ForkRequest, fds: Vec<OwnedFd>) -> std::result::Result<u32, Refused> {
    let (netns, sysctls, view) = match &mut request {
        ForkRequest::CreateInit {
            netns,
            net_sysctls,
            view,
            ..
        } => (netns.clone(), std::mem::take(net_sysctls), view.take()),
        ForkRequest::Exec { netns, view, .. } => (netns.clone(), BTreeMap::new(), view.take()),
    };
    // The network namespace is opened before the view hides its pin.
    let build_in_view = |request, fds| match &view {
        Some(view) => view.run(|| build_here(request, fds)),
        None => build_here(request, fds),
    };
    let Some(netns) = netns else {
        return build_in_view(request, fds);
    };
    // The build's processes inherit this thread's network namespace; the
    // server goes back to its own afterwards.
    let own = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| Refused::new(RefusalKind::Failed, format!("own network namespace: {e}")))?;
    let target = std::fs::File::open(&netns).map_err(|e| {
        Refused::new(
            RefusalKind::Invalid,
            format!("network namespace {}: {e}", netns.display()),
        )
    })?;
    nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        Refused::new(
            RefusalKind::Failed,
            format!("entering network namespace {}: {e}", netns.display()),
        )
    })?;
    let built = crate::host::userns_spec::write_net_sysctls(&sysctls)
        .map_err(|e| Refused::new(RefusalKind::Failed, format!("{}: {e}", netns.display())))
        .and_then(|()| build_in_view(request, fds));
    if let Err(e) = nix::sched::setns(&own, nix::sched::CloneFlags::CLONE_NEWNET) {
        // A server left in a pod's namespace must not serve another build.
        tracing::error!(error = %e, "could not return to the fork server's network namespace");
        std::process::exit(1);
    }
    built
}

fn build_here(request: ForkRequest, fds: Vec<OwnedFd>) -> std::result::Result<u32, Refused> {
    join_new_session_keyring()?;
    match request {
        ForkRequest::CreateInit {
            id,
            state_root,
            bundle,
            stdio,
            netns: _,
            net_sysctls: _,
            view: _,
        } => {
            let _scope = BuildScope::init();
            let began = std::time::Instant::now();
            prepare_filter(&bundle.join("config.json"), &state_root);
            let filtered = began.elapsed();
            let builder = attach(builder(&id, &state_root)?, stdio, fds)?;
            let container = builder
                .as_init(&bundle)
                // The init becomes the shim's child, not the server's.
                .as_sibling(true)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(refusal)?;
            tracing::debug!(
                id,
                filter_ms = filtered.as_secs_f64() * 1e3,
                libcontainer_ms = (began.elapsed() - filtered).as_secs_f64() * 1e3,
                "init built by the fork server"
            );
            container
                .pid()
                .map(|pid| pid.as_raw() as u32)
                .ok_or_else(|| Refused::new(RefusalKind::Failed, "libcontainer recorded no pid"))
        }
        ForkRequest::Exec {
            id,
            state_root,
            process_json,
            stdio,
            netns: _,
            userns,
            view: _,
        } => {
            let userns = userns.as_ref().map(ExecUserns::open).transpose()?;
            // Until the build returns: the exec process is a copy of this
            // one and finds the namespace's fd there.
            let _scope = BuildScope::exec(userns);
            let container_dir = state_root.join(&id);
            if let Some(bundle) = bundle_of(&container_dir) {
                prepare_filter(&bundle.join("config.json"), &state_root);
            }
            let builder = attach(builder(&id, &state_root)?, stdio, fds)?;
            let built = builder
                .as_tenant()
                .as_sibling(true)
                .with_process(Some(process_json))
                .with_detach(true)
                .build();
            remove_tenant_sockets(&container_dir);
            Ok(built.map_err(refusal)?.as_raw() as u32)
        }
    }
}

/// Compiles the seccomp filter the executor will load in the process about
/// to be built (the spec's [`EXEC_SECCOMP_ANNOTATION`]) into this process's
/// cache, which that process inherits ([`crate::host::seccomp_cache`]).
/// Compiled programs are kept beside `state_root` too (every shim of the
/// node shares them). Best effort: a process that does not find its program
/// compiles it itself.
fn prepare_filter(config: &Path, state_root: &Path) {
    #[derive(serde::Deserialize)]
    struct Annotated {
        #[serde(default)]
        annotations: Option<std::collections::HashMap<String, String>>,
    }
    let Ok(text) = std::fs::read(config) else {
        return;
    };
    let Ok(spec) = serde_json::from_slice::<Annotated>(&text) else {
        return;
    };
    let Some(json) = spec
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXEC_SECCOMP_ANNOTATION))
    else {
        return;
    };
    // Beside the namespaces' state dirs, as the user namespace pool is.
    let dir = state_root
        .parent()
        .unwrap_or(state_root)
        .join(SECCOMP_PROGRAMS_DIR);
    if let Err(e) = crate::host::seccomp_cache::prepare_in(json, Some(&dir)) {
        tracing::debug!(config = %config.display(), error = %e, "compiling the task's seccomp filter");
    }
}

/// Where, beside the state root, compiled seccomp programs are kept.
const SECCOMP_PROGRAMS_DIR: &str = ".seccomp-bpf";

/// The bundle of the container whose libcontainer state is in `dir`.
fn bundle_of(dir: &Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct State {
        bundle: PathBuf,
    }
    let text = std::fs::read(dir.join("state.json")).ok()?;
    serde_json::from_slice::<State>(&text)
        .ok()
        .map(|s| s.bundle)
}

/// Removes the sockets libcontainer makes in a container's state dir for
/// each exec (`tenant-notify-*`, `tenant-tty-*`) and never removes: one file
/// per exec, thousands a day for a container with an exec probe. The fork
/// server builds one process at a time and an exec's build is done with
/// them when it returns, so every one there is stale (older ones too).
fn remove_tenant_sockets(container_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(container_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tenant-notify-") || name.starts_with("tenant-tty-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn builder(id: &str, state_root: &Path) -> std::result::Result<ContainerBuilder, Refused> {
    ContainerBuilder::new(id.to_string(), SyscallType::default())
        .validate_id()
        .map_err(refusal)?
        .with_executor(CleanSignals(DefaultPathExecutor))
        .with_root_path(state_root)
        .map_err(refusal)
}

fn attach(
    builder: ContainerBuilder,
    stdio: RequestStdio,
    fds: Vec<OwnedFd>,
) -> std::result::Result<ContainerBuilder, Refused> {
    match stdio {
        RequestStdio::Console { socket } if fds.is_empty() => {
            Ok(builder.with_console_socket(Some(socket)))
        }
        RequestStdio::Fds if fds.len() == 3 => {
            let mut fds = fds.into_iter();
            let (Some(stdin), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next())
            else {
                unreachable!("three fds");
            };
            Ok(builder
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr))
        }
        stdio => Err(Refused::new(
            RefusalKind::Invalid,
            format!("{stdio:?} with {} fds", fds.len()),
        )),
    }
}

/// What a libcontainer build changes in the *calling* process (the
/// container's `oom_score_adj` is written to `/proc/self`, and the process
/// is made non-dumpable), to put back before the next build.
struct OwnProcessState {
    oom_score_adj: Option<i32>,
}

impl OwnProcessState {
    fn measure() -> OwnProcessState {
        OwnProcessState {
            oom_score_adj: spec::own_oom_score_adj(),
        }
    }

    fn restore(&self) {
        if let Some(own) = self.oom_score_adj {
            if spec::own_oom_score_adj() != Some(own) {
                if let Err(e) = std::fs::write("/proc/self/oom_score_adj", own.to_string()) {
                    tracing::warn!(error = %e, "could not restore the fork server's oom_score_adj");
                }
            }
        }
        // SAFETY: PR_SET_DUMPABLE takes 0 or 1.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        }
    }
}

/// Gives the next container process a session keyring of its own, as runc
/// does: processes inherit the session keyring of their parent, and kernel
/// keyrings are not namespaced, so without this every container would share
/// the fork server's, which is the host session's (seen: the same keyring
/// id inside a native container as on the host). A new anonymous keyring
/// per build; the server's previous one is dropped once no process holds it.
/// A kernel without keys (ENOSYS) has nothing to share; any other failure
/// refuses the build rather than sharing silently.
fn join_new_session_keyring() -> std::result::Result<(), Refused> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a null name (an anonymous keyring).
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSYS) {
        tracing::debug!("no kernel keyrings: no session keyring to give the container");
        return Ok(());
    }
    Err(Refused::new(
        RefusalKind::Failed,
        format!(
            "could not give the container a session keyring of its own (it would share \
             the host's): {e}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let request = ForkRequest::Exec {
            id: "c1".into(),
            state_root: "/run/state".into(),
            process_json: "/tmp/p.json".into(),
            stdio: RequestStdio::Console {
                socket: "/tmp/tty/console.sock".into(),
            },
            netns: None,
            userns: None,
            view: None,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "op": "exec",
                "id": "c1",
                "state_root": "/run/state",
                "process_json": "/tmp/p.json",
                "stdio": {"console": {"socket": "/tmp/tty/console.sock"}},
            })
        );
        assert_eq!(
            serde_json::from_value::<ForkRequest>(json).unwrap(),
            request
        );
        let create = serde_json::json!({
            "op": "create_init", "id": "c2", "state_root": "/s", "bundle": "/b", "stdio": "fds",
        });
        assert!(matches!(
            serde_json::from_value::<ForkRequest>(create).unwrap(),
            ForkRequest::CreateInit {
                stdio: RequestStdio::Fds,
                ..
            }
        ));
    }

    #[test]
    fn stdio_and_fds_must_agree() {
        let builder = || ContainerBuilder::new("c".into(), SyscallType::default());
        let (r, w) = nix::unistd::pipe().unwrap();
        let err = attach(builder(), RequestStdio::Fds, vec![r, w])
            .err()
            .unwrap();
        assert_eq!(err.kind, RefusalKind::Invalid);
        let console = RequestStdio::Console {
            socket: "/tmp/x".into(),
        };
        let (r, _w) = nix::unistd::pipe().unwrap();
        let err = attach(builder(), console, vec![r]).err().unwrap();
        assert_eq!(err.kind, RefusalKind::Invalid);
    }
}
