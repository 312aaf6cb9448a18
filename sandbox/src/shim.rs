//! The shim's command line, as containerd's runtime v2 drives it:
//!
//! * `start`: find or spawn the long-lived shim for the task's **pod** and
//!   print its ttrpc address, bare (`unix:///…`), which Debian's containerd
//!   1.6 and containerd 2.x both accept. Containers whose
//!   `io.kubernetes.cri.sandbox-id` names a pod that already has a shim get
//!   that shim's address: one shim per pod.
//! * `delete`: clean up after a shim that died (kill and delete the task,
//!   unmount its rootfs) and print a `DeleteResponse`.
//! * `serve` (ours; what `start` spawns): serve the Task service on the
//!   listening socket inherited as fd 3 until `Shutdown`.
//!
//! Paths: `$CAISSON_SHIM_RUN_DIR` (default `/run/caisson/shim`) holds
//! `s/<hash>.sock` sockets, `state/<namespace>/` backend state and
//! `log/<hash>.log` shim logs.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock, Weak};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::{api, create_task, Task};
use sha2::{Digest, Sha256};

use crate::backend::hardened::HardenedBackend;
use crate::backend::microvm::{MicrovmBackend, MicrovmOptions};
use crate::backend::native::NativeBackend;
use crate::backend::oci::{OciBackend, OciOptions};
use crate::backend::{Backend, BackendError, ExitSink, TaskKind};
use crate::events::{timestamp, Publisher};
use crate::service::{task_kind, TaskService};

/// The runtime name containerd registers this shim under.
pub const RUNTIME_NAME: &str = "io.containerd.caisson.v2";
/// Environment variable overriding where sockets, state and logs live.
pub const RUN_DIR_ENV: &str = "CAISSON_SHIM_RUN_DIR";
/// Environment variable choosing the backend (default `native`).
pub const BACKEND_ENV: &str = "CAISSON_BACKEND";
/// The handler's backend options, as a JSON object (e.g. the `oci`
/// backend's `runtime_path`).
pub const BACKEND_OPTIONS_ENV: &str = "CAISSON_BACKEND_OPTIONS";
const DEFAULT_RUN_DIR: &str = "/run/caisson/shim";
/// A copy of the shim binary to exec a pod's fork servers from, instead of
/// the shim's own image (and none forked from the shim): `bench/hot-text.sh`
/// sets it so that the page cache tells the pages a shim's server runs from
/// those its builds run.
pub const FORK_SERVER_BINARY_ENV: &str = "CAISSON_SHIM_FORK_SERVER_BINARY";
/// The listening socket `start` hands to `serve`.
const LISTENER_FD: i32 = 3;

/// Flags as containerd passes them (Go `flag` syntax: `-name value`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    pub socket: String,
    pub debug: bool,
    pub action: String,
}

/// Parses `-flag value`, `-flag=value` and `--flag value`; the first bare
/// word is the action.
pub fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut flags = Flags::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if flags.action.is_empty() {
                flags.action = arg.clone();
                continue;
            }
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        if matches!(name, "debug" | "v" | "version" | "info") {
            match name {
                "debug" => flags.debug = inline.as_deref() != Some("false"),
                _ => flags.action = name.to_string(),
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("flag -{name} needs a value"))?,
        };
        match name {
            "namespace" => flags.namespace = value,
            "id" => flags.id = value,
            "address" => flags.address = value,
            "publish-binary" => flags.publish_binary = value,
            "bundle" => flags.bundle = value,
            "socket" => flags.socket = value,
            // Accepted for compatibility, unused.
            "runtime-root" | "criu" | "systemd-cgroup" | "log" => {}
            other => return Err(format!("unknown flag -{other}")),
        }
    }
    Ok(flags)
}

/// Where sockets, state and logs live.
pub fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// Backend state of a namespace.
pub fn state_dir(namespace: &str) -> PathBuf {
    run_dir().join("state").join(namespace)
}

/// The pod a task belongs to: its sandbox id for CRI containers, else itself.
pub fn group_id(task_id: &str, kind: &TaskKind) -> String {
    match kind {
        TaskKind::Container { sandbox_id } => sandbox_id.clone(),
        TaskKind::Sandbox => task_id.to_string(),
    }
}

/// The socket of a pod's shim: short and stable, like containerd's own.
pub fn socket_path(namespace: &str, group: &str) -> PathBuf {
    socket_path_in(&run_dir(), namespace, group)
}

/// [`socket_path`] under `run_dir` (`<run_dir>/s/<hash>.sock`).
pub fn socket_path_in(run_dir: &Path, namespace: &str, group: &str) -> PathBuf {
    let hash = hex::encode(Sha256::digest(format!("{namespace}/{group}").as_bytes()));
    run_dir.join("s").join(format!("{}.sock", &hash[..32]))
}

/// The ttrpc address of a shim socket, as `start` prints it.
pub fn address_of(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// `start`: returns the address to print.
pub fn start(flags: &Flags) -> Result<String, String> {
    if flags.namespace.is_empty() || flags.id.is_empty() {
        return Err("start needs -namespace and -id".into());
    }
    // containerd writes runtime options on stdin; drain them so its writer
    // never sees a broken pipe.
    let _ = std::io::stdin().take(1 << 20).read_to_end(&mut Vec::new());
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| e.to_string())?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let kind = task_kind(&bundle)?;
    let group = group_id(&flags.id, &kind);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Nothing may be logged here: containerd 1.6 reads stdout and stderr
    // together as the address.
    start_server(Command::new(exe), &run_dir(), flags, &group, &bundle)
}

/// What `start` does for a pod's sandbox task `pod_id`, done by the calling
/// process: caissond starts its pods' shims so, which spares each pod an
/// exec of this binary (CPU and a few ms of RunPodSandbox). `shim` runs this
/// binary with the environment its server needs ([`RUN_DIR_ENV`] naming
/// `run_dir`, `TTRPC_ADDRESS`, [`BACKEND_ENV`], …). Answers the address.
pub fn start_pod_shim(
    shim: Command,
    run_dir: &Path,
    namespace: &str,
    pod_id: &str,
    bundle: &Path,
) -> Result<String, String> {
    let flags = Flags {
        namespace: namespace.to_string(),
        id: pod_id.to_string(),
        address: "/dev/null".into(),
        ..Flags::default()
    };
    start_server(shim, run_dir, &flags, pod_id, bundle)
}

/// Spawns pod `group`'s server with `shim` unless one answers on its
/// socket already; writes the address into the bundle and answers it.
fn start_server(
    shim: Command,
    run_dir: &Path,
    flags: &Flags,
    group: &str,
    bundle: &Path,
) -> Result<String, String> {
    let socket = socket_path_in(run_dir, &flags.namespace, group);
    let dir = socket.parent().expect("socket has a parent");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;

    // One start at a time per pod, so two containers never spawn two shims.
    crate::host::lock_exclusive(&socket.with_extension("lock")).and_then(|_guard| {
        let address = address_of(&socket);
        if UnixStream::connect(&socket).is_err() {
            let _ = std::fs::remove_file(&socket);
            spawn_server(shim, flags, group, &socket)?;
        }
        // containerd reads it back when it restarts.
        let _ = std::fs::write(bundle.join("address"), &address);
        Ok(address)
    })
}

/// The shim log of the pod whose socket is `socket`: `log/<hash>.log`.
pub fn log_path(socket: &Path) -> PathBuf {
    // The socket is `<run dir>/s/<hash>.sock`.
    let dir = socket.parent().and_then(Path::parent);
    dir.map_or_else(run_dir, Path::to_path_buf)
        .join("log")
        .join(socket.with_extension("log").file_name().unwrap_or_default())
}

/// Binds the socket and spawns `serve` with it as fd 3, detached.
fn spawn_server(mut cmd: Command, flags: &Flags, group: &str, socket: &Path) -> Result<(), String> {
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        socket,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
    let log_path = log_path(socket);
    let log_dir = log_path.parent().expect("log dir");
    std::fs::create_dir_all(log_dir).map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    cmd.args([
        "-namespace",
        &flags.namespace,
        "-id",
        group,
        "-socket",
        &socket.display().to_string(),
    ]);
    if !flags.address.is_empty() {
        cmd.args(["-address", &flags.address]);
    }
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let fd: OwnedFd = listener.into();
    let raw = fd.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Detached: an intermediate child exits at once, so the server
            // is nobody's child but init's (as containerd's shims are) and
            // the caller reaps only the intermediate. std's spawn returns
            // once the server has exec'd (its exec-error pipe closes then).
            match libc::fork() {
                -1 => return Err(std::io::Error::last_os_error()),
                0 => {}
                _ => libc::_exit(0),
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if raw == LISTENER_FD {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(raw, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut intermediate = cmd
        .spawn()
        .map_err(|e| format!("spawning the shim server: {e}"))?;
    drop(fd);
    let _ = intermediate.wait();
    Ok(())
}

/// The backend a binary named `containerd-shim-caisson-<backend>-v2`
/// serves: containerd finds the shim of runtime type
/// `io.containerd.caisson-<backend>.v2` by that name, so an operator picks
/// a backend per containerd runtime with a symlink. `None` for the plain
/// `containerd-shim-caisson-v2` (and any other name).
pub fn backend_from_binary_name(argv0: &str) -> Option<String> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    let backend = name
        .strip_prefix("containerd-shim-caisson-")?
        .strip_suffix("-v2")?;
    (!backend.is_empty()).then(|| backend.to_string())
}

/// A backend's options from [`BACKEND_OPTIONS_ENV`] (unset or blank: the
/// defaults).
fn backend_options<T: serde::de::DeserializeOwned + Default>() -> Result<T, BackendError> {
    crate::backend::options_from_json(
        &std::env::var(BACKEND_OPTIONS_ENV).unwrap_or_default(),
        BACKEND_OPTIONS_ENV,
    )
}

/// The binary a pod's fork server is exec'd from: the running image itself,
/// even if the file was replaced since, unless [`FORK_SERVER_BINARY_ENV`]
/// names another.
fn fork_server_binary() -> PathBuf {
    std::env::var_os(FORK_SERVER_BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Makes the backend the environment asks for ([`BACKEND_ENV`], default
/// `native`; options from [`BACKEND_OPTIONS_ENV`]).
pub fn make_backend(namespace: &str, exits: ExitSink) -> Result<Arc<dyn Backend>, BackendError> {
    let name = std::env::var(BACKEND_ENV).unwrap_or_else(|_| "native".to_string());
    match name.as_str() {
        "native" | "" => Ok(Arc::new(NativeBackend::new(
            state_dir(namespace),
            exits,
            fork_server_binary(),
        )?)),
        "hardened" => Ok(Arc::new(HardenedBackend::with_options(
            state_dir(namespace),
            exits,
            fork_server_binary(),
            &backend_options()?,
        )?)),
        "oci" => Ok(Arc::new(OciBackend::new(
            state_dir(namespace),
            exits,
            backend_options::<OciOptions>()?,
        )?)),
        "microvm" => Ok(Arc::new(MicrovmBackend::new(
            state_dir(namespace),
            exits,
            backend_options::<MicrovmOptions>()?,
        )?)),
        other => Err(BackendError::InvalidArgument {
            what: BACKEND_ENV.to_string(),
            reason: format!("unknown backend {other:?} (known: native, hardened, oci, microvm)"),
        }),
    }
}

/// `serve`: the long-lived shim. Returns when `Shutdown` was accepted.
pub fn serve(flags: &Flags) -> Result<(), String> {
    // One malloc arena for every thread: a pod's shim makes few, small
    // allocations, and glibc's arena per thread (up to 8 per core) cost each
    // shim hundreds of KiB of dirty pages that sat idle.
    // SAFETY: mallopt only sets an allocator parameter; no thread has been
    // started yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let backend = std::env::var(BACKEND_ENV).unwrap_or_default();
    // A fork server from another binary is always exec'd from it.
    let exec_only = std::env::var_os(FORK_SERVER_BINARY_ENV).is_some();
    if matches!(backend.as_str(), "native" | "hardened" | "") && !exec_only {
        // SAFETY: still one thread (main's), which runs until the shim exits.
        if let Err(e) =
            unsafe { crate::host::forker::prefork(crate::backend::native::serve_fork_requests) }
        {
            tracing::warn!(error = %e, "forking the fork server: the first create execs one");
        }
    }
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let publisher = Publisher::new(&ttrpc_address, &flags.namespace);
    let (tx, rx) = std::sync::mpsc::channel();
    let service_cell: Arc<OnceLock<Weak<TaskService>>> = Arc::new(OnceLock::new());
    let cell = service_cell.clone();
    let sink: ExitSink = Arc::new(move |exit| {
        if let Some(service) = cell.get().and_then(Weak::upgrade) {
            service.on_exit(exit);
        }
    });
    let backend = make_backend(&flags.namespace, sink).map_err(|e| e.to_string())?;
    let service = TaskService::new(backend, publisher, tx);
    let _ = service_cell.set(Arc::downgrade(&service));
    // containerd 2.x calls containerd.task.v3.Task, 1.6 calls
    // containerd.task.v2.Task: same messages, so serve both names.
    let task = create_task(service.clone() as Arc<dyn Task + Send + Sync>);
    let task_v2 = create_task(service.clone() as Arc<dyn Task + Send + Sync>)
        .into_iter()
        .map(|(method, handler)| {
            (
                method.replace("/containerd.task.v3.Task/", "/containerd.task.v2.Task/"),
                handler,
            )
        })
        .collect();
    let fd = if flags.socket.is_empty() {
        return Err("serve needs -socket".into());
    } else {
        LISTENER_FD
    };
    let mut server = ttrpc::Server::new()
        .add_listener(fd)
        .map_err(|e| format!("listening on fd {fd}: {e}"))?
        // Two idle handler threads per connection, not ttrpc's three (more
        // are started while calls are in progress); the maximum stays high
        // because containerd's Wait holds a handler until the process exits.
        .set_thread_count_min(1)
        .set_thread_count_default(2)
        .set_thread_count_max(256)
        .register_service(task)
        .register_service(task_v2);
    server
        .start()
        .map_err(|e| format!("starting the ttrpc server: {e}"))?;
    tracing::info!(pod = %flags.id, socket = %flags.socket, pid = std::process::id(), "shim serving");
    let _ = rx.recv();
    server.shutdown();
    service.backend_shutdown();
    let _ = std::fs::remove_file(&flags.socket);
    let _ = std::fs::remove_file(Path::new(&flags.socket).with_extension("lock"));
    tracing::info!(pod = %flags.id, "shim exited");
    // A clean exit leaves no log behind (a crashed shim's log stays for debugging).
    let _ = std::fs::remove_file(log_path(Path::new(&flags.socket)));
    Ok(())
}

/// `delete`: the shim of this task died; clean up what it left and report.
pub fn delete(flags: &Flags) -> Result<Vec<u8>, String> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| e.to_string())?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let state = state_dir(&flags.namespace);
    if let Err(e) = NativeBackend::force_delete(&state, &flags.id) {
        tracing::warn!(id = %flags.id, error = %e, "cleaning up the task's state");
    }
    if let Err(e) = crate::mounts::unmount_all(&bundle.join("rootfs")) {
        tracing::warn!(id = %flags.id, error = %e, "unmounting the task's rootfs");
    }
    match std::env::var(BACKEND_ENV).as_deref() {
        Ok("hardened") => HardenedBackend::force_cleanup(
            &state,
            &flags.id,
            &backend_options().unwrap_or_default(),
        ),
        Ok("microvm") => MicrovmBackend::force_cleanup(&state, &flags.id, &bundle),
        Ok("native" | "") | Err(_) => NativeBackend::force_cleanup_userns(&state, &flags.id),
        Ok(_) => {}
    }
    remove_dead_socket(&flags.namespace, &flags.id);
    let response = api::DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(std::time::SystemTime::now())).into(),
        ..Default::default()
    };
    response.write_to_bytes().map_err(|e| e.to_string())
}

/// Removes the socket and start lock of pod `group`'s shim when nothing
/// answers on the socket any more (a shim that exits cleanly removes them
/// itself; a killed one cannot). Its log stays, for debugging.
fn remove_dead_socket(namespace: &str, group: &str) {
    let socket = socket_path(namespace, group);
    if !socket.exists() {
        return;
    }
    let lock = socket.with_extension("lock");
    // Under the start lock: a `start` for the pod does not spawn a shim
    // on this socket meanwhile.
    let dead = crate::host::lock_exclusive(&lock)
        .map(|_guard| {
            let dead = UnixStream::connect(&socket).is_err();
            if dead {
                let _ = std::fs::remove_file(&socket);
            }
            dead
        })
        .unwrap_or(false);
    if dead {
        let _ = std::fs::remove_file(&lock);
    }
}

/// Writes bytes to stdout and flushes.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_binary_name_can_name_the_backend() {
        let cases = [
            (
                "/usr/local/bin/containerd-shim-caisson-hardened-v2",
                Some("hardened"),
            ),
            ("containerd-shim-caisson-oci-v2", Some("oci")),
            ("/usr/local/bin/containerd-shim-caisson-v2", None),
            ("containerd-shim-runc-v2", None),
            ("/proc/self/exe", None),
        ];
        for (argv0, backend) in cases {
            assert_eq!(
                backend_from_binary_name(argv0).as_deref(),
                backend,
                "{argv0}"
            );
        }
    }

    #[test]
    fn parses_containerd_flags() {
        let f = parse_flags(&args(
            "-namespace k8s.io -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id abc -debug start",
        ))
        .unwrap();
        assert_eq!(
            f,
            Flags {
                namespace: "k8s.io".into(),
                id: "abc".into(),
                address: "/run/containerd/containerd.sock".into(),
                publish_binary: "/usr/bin/containerd".into(),
                debug: true,
                action: "start".into(),
                ..Default::default()
            }
        );
        let f = parse_flags(&args("--namespace=default -id x -bundle /b delete")).unwrap();
        assert_eq!(
            (f.namespace.as_str(), f.bundle.as_str(), f.action.as_str()),
            ("default", "/b", "delete")
        );
        assert_eq!(parse_flags(&args("-v")).unwrap().action, "v");
        for bad in ["-id", "-bogus 1 start", "start extra"] {
            assert!(parse_flags(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn containers_of_a_pod_share_its_socket() {
        let sandbox = group_id("pod1", &TaskKind::Sandbox);
        let container = group_id(
            "c1",
            &TaskKind::Container {
                sandbox_id: "pod1".into(),
            },
        );
        assert_eq!(
            socket_path("k8s.io", &sandbox),
            socket_path("k8s.io", &container)
        );
        assert_ne!(
            socket_path("k8s.io", "pod1"),
            socket_path("default", "pod1")
        );
        assert!(socket_path("k8s.io", "pod1").display().to_string().len() < 100);
    }
}
