//! The harness the root backend tests share: a backend of any kind, the
//! exits it reports, busybox bundles in a temp dir, and a guard that kills
//! and deletes whatever a test created and removes its cgroups, even when
//! the test fails.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use caisson_sandbox::backend::native::NativeBackend;
use caisson_sandbox::backend::{Backend, BackendError, Exit, ExitSink, Stdio, TaskKind, TaskSpec};
use caisson_sandbox::host::reaper::Reaper;
pub use caisson_tests::bundle::unique;
use caisson_tests::fixtures;
use caisson_tests::require;
use oci_spec::runtime::{Process, Spec};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Exits the backend reported, with a condvar to wait on.
#[derive(Default)]
pub struct ExitLog {
    exits: Mutex<Vec<Exit>>,
    changed: Condvar,
}

impl ExitLog {
    /// A new log and the sink that fills it.
    pub fn with_sink() -> (Arc<ExitLog>, ExitSink) {
        let log = Arc::new(ExitLog::default());
        let sink_log = log.clone();
        let sink: ExitSink = Arc::new(move |exit: Exit| {
            sink_log.exits.lock().unwrap().push(exit);
            sink_log.changed.notify_all();
        });
        (log, sink)
    }

    pub fn wait(&self, id: &str, exec_id: Option<&str>, deadline: Duration) -> Option<Exit> {
        let until = Instant::now() + deadline;
        let mut exits = self.exits.lock().unwrap();
        loop {
            if let Some(exit) = exits
                .iter()
                .find(|e| e.container_id == id && e.exec_id.as_deref() == exec_id)
            {
                return Some(exit.clone());
            }
            let left = until.checked_duration_since(Instant::now())?;
            exits = self.changed.wait_timeout(exits, left).unwrap().0;
        }
    }

    /// How many exits of `id` (or its exec `exec_id`) were reported.
    pub fn count(&self, id: &str, exec_id: Option<&str>) -> usize {
        let exits = self.exits.lock().unwrap();
        exits
            .iter()
            .filter(|e| e.container_id == id && e.exec_id.as_deref() == exec_id)
            .count()
    }

    /// The exit of `id` (or its exec `exec_id`); panics if it does not come
    /// within [`DEADLINE`].
    pub fn wait_exit(&self, id: &str, exec_id: Option<&str>) -> Exit {
        self.wait(id, exec_id, DEADLINE)
            .unwrap_or_else(|| panic!("no exit of {id} {exec_id:?} within {DEADLINE:?}"))
    }
}

/// CAISSON_TEST_LOG=debug shows the backend's and libcontainer's logs.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CAISSON_TEST_LOG"))
        .with_test_writer()
        .try_init();
}

/// One test's backend, temp dir and the tasks it must clean up.
pub struct Harness<B: Backend> {
    pub backend: B,
    pub log: Arc<ExitLog>,
    pub dir: tempfile::TempDir,
    /// Tasks created and not yet deleted, in creation order.
    live: Mutex<Vec<String>>,
    cgroups: Mutex<Vec<String>>,
}

impl<B: Backend> Harness<B> {
    /// Needs root (`why` says for what); `make` builds the backend from its
    /// state dir and exit sink.
    pub fn start(why: &str, make: impl FnOnce(PathBuf, ExitSink) -> B) -> Harness<B> {
        require::root(why);
        init_tracing();
        let (log, sink) = ExitLog::with_sink();
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = make(dir.path().join("state"), sink);
        Harness {
            backend,
            log,
            dir,
            live: Mutex::new(Vec::new()),
            cgroups: Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A busybox bundle running `args`, with a unique cgroup; `adjust`
    /// edits the spec before it is written.
    pub fn bundle(&self, name: &str, args: &[&str], adjust: impl FnOnce(&mut Spec)) -> PathBuf {
        let bundle = self.path(name);
        let cgroup = unique("/caisson-test");
        self.cgroups.lock().unwrap().push(cgroup.clone());
        let mut spec = busybox_spec(&bundle, args, &cgroup);
        spec.set_hostname(Some(name.to_string()));
        adjust(&mut spec);
        spec.save(bundle.join("config.json")).unwrap();
        bundle
    }

    pub fn create(&self, id: &str, bundle: &Path, kind: TaskKind, stdio: Stdio) -> u32 {
        self.try_create(id, bundle, kind, stdio).expect("create")
    }

    pub fn try_create(
        &self,
        id: &str,
        bundle: &Path,
        kind: TaskKind,
        stdio: Stdio,
    ) -> Result<u32, BackendError> {
        let task = TaskSpec {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            kind,
            stdio,
            checkpoint: None,
        };
        let pid = self.backend.create(&task)?;
        self.live.lock().unwrap().push(id.to_string());
        Ok(pid)
    }

    pub fn run(&self, id: &str, bundle: &Path, stdio: Stdio) -> u32 {
        let pid = self.create(id, bundle, TaskKind::Sandbox, stdio);
        assert_eq!(self.backend.start(id).expect("start"), pid);
        pid
    }

    pub fn wait_exit(&self, id: &str, exec_id: Option<&str>) -> Exit {
        self.log.wait_exit(id, exec_id)
    }

    /// Deletes a task; once deleted, it is no longer the harness's to
    /// clean up.
    pub fn delete(&self, id: &str) -> Result<(), BackendError> {
        self.backend.delete(id, None)?;
        self.live.lock().unwrap().retain(|t| t != id);
        Ok(())
    }

    /// Deletes an exited task and checks nothing of it is left: no process,
    /// no cgroup and, if the backend keeps one, no `state` dir.
    pub fn delete_and_check_state(&self, id: &str, pid: u32, cgroup: &str, state: Option<&Path>) {
        self.backend.delete(id, None).expect("delete");
        self.live.lock().unwrap().retain(|t| t != id);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists"
        );
        for controller in ["memory", "pids", "cpu", "freezer", "devices"] {
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(cgroup.trim_start_matches('/'));
            assert!(!dir.exists(), "{} still exists", dir.display());
        }
        if let Some(state) = state {
            assert!(!state.exists(), "{} still exists", state.display());
        }
    }
}

impl Harness<NativeBackend> {
    /// A native backend (needs root) running the shim binary as its fork
    /// server.
    pub fn new() -> Harness<NativeBackend> {
        Harness::start(
            "the native backend makes namespaces, cgroups and mounts",
            |state, sink| {
                NativeBackend::new(
                    state,
                    sink,
                    env!("CARGO_BIN_EXE_containerd-shim-caisson-v2").into(),
                )
                .expect("starting the backend")
            },
        )
    }
}

impl<B: Backend> Drop for Harness<B> {
    fn drop(&mut self) {
        let live: Vec<String> = self.live.lock().unwrap().drain(..).rev().collect();
        for id in &live {
            let _ = self.backend.kill(id, None, libc::SIGKILL as u32, true);
        }
        for id in &live {
            // A task never started has nothing to wait for.
            let _ = self.log.wait(id, None, Duration::from_secs(5));
            if let Err(e) = self.backend.delete(id, None) {
                eprintln!("cleanup: deleting {id}: {e}");
            }
        }
        remove_cgroups(&self.cgroups.lock().unwrap());
    }
}

/// Removes `cgroups` (paths as in a spec) from every controller.
pub fn remove_cgroups(cgroups: &[String]) {
    for cgroup in cgroups {
        for controller in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = controller.path().join(cgroup.trim_start_matches('/'));
            if dir.exists() {
                let _ = fs::remove_dir(&dir);
            }
        }
    }
}

/// The busybox layer, built once (under the fork lock: it runs busybox and
/// waits for it, which the reaper of a concurrent test must not steal).
pub fn busybox_layer() -> &'static [u8] {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let reaper = Reaper::global().unwrap();
        let _fork = reaper.lock();
        fixtures::busybox_layer()
    })
}

/// Unpacks the busybox layer into `rootfs`. Files are written under the
/// fork lock: a container forked meanwhile would inherit them open for
/// writing (ETXTBSY).
pub fn unpack_busybox(rootfs: &Path) {
    let layer = busybox_layer();
    let reaper = Reaper::global().unwrap();
    let _fork = reaper.lock();
    tar::Archive::new(layer)
        .unpack(rootfs)
        .expect("unpacking busybox");
}

/// Unpacks busybox into `bundle`/rootfs and returns a default spec running
/// `args` in `cgroup`, for the caller to adjust and save.
pub fn busybox_spec(bundle: &Path, args: &[&str], cgroup: &str) -> Spec {
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    unpack_busybox(&rootfs);
    let mut spec = Spec::default();
    spec.set_process(Some(process(args)));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(Some(PathBuf::from(cgroup)));
    spec.set_linux(Some(linux));
    spec
}

pub fn process(args: &[&str]) -> Process {
    let mut process = Process::default();
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process
}

/// A FIFO at `path` (0600), as a string for a task's stdio.
pub fn mkfifo(path: &Path) -> String {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path.display().to_string()
}

pub fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

pub fn cgroup_of(bundle: &Path) -> String {
    let spec = Spec::load(bundle.join("config.json")).unwrap();
    spec.linux()
        .as_ref()
        .unwrap()
        .cgroups_path()
        .as_ref()
        .unwrap()
        .display()
        .to_string()
}

/// Waits until `pid` runs the program named `comm`: `start` returns once
/// the init was told to go, not once it has exec'd.
pub fn wait_for_exec(pid: u32, comm: &str) {
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let now = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            return;
        }
        assert!(std::time::Instant::now() < until, "{pid} never ran {comm}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
