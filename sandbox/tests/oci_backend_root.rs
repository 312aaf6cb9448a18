//! The `oci` backend delegating to Debian's runc: needs root and
//! `/usr/sbin/runc`. Busybox bundles in temp dirs; a container runs under
//! runc and its exit code and output come back through the shim's reaper.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use caisson_sandbox::backend::oci::{OciBackend, OciOptions};
use caisson_sandbox::backend::{
    Backend, BackendError, ExecSpec, Exit, ExitSink, Stdio, TaskKind, TaskSpec,
};
use caisson_sandbox::host::reaper::Reaper;
use caisson_tests::fixtures;
use caisson_tests::require;
use oci_spec::runtime::{Process, Spec};

const RUNC: &str = "/usr/sbin/runc";

const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- harness

/// Exits the backend reported, with a condvar to wait on.
#[derive(Default)]
struct ExitLog {
    exits: Mutex<Vec<Exit>>,
    changed: Condvar,
}

impl ExitLog {
    fn wait(&self, id: &str, exec_id: Option<&str>, deadline: Duration) -> Option<Exit> {
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
}

/// One test's backend, temp dir and the tasks it must clean up.
struct Harness {
    backend: OciBackend,
    log: Arc<ExitLog>,
    dir: tempfile::TempDir,
    /// Tasks created and not yet deleted, in creation order.
    live: Mutex<Vec<String>>,
    cgroups: Mutex<Vec<String>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Harness {
    fn new() -> Harness {
        Harness::with_runtime(RUNC, &[], "runc")
    }

    /// A backend delegating to `runtime` with global `args`. (Debian's crun
    /// 1.8.1 cannot run here: it refuses hybrid cgroups when cgroup2 holds
    /// a controller, and this host's has hugetlb.)
    fn with_runtime(runtime: &str, args: &[&str], package: &str) -> Harness {
        require::root("runc makes namespaces, cgroups and mounts");
        // CAISSON_TEST_LOG=debug shows the backend's and libcontainer's logs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("CAISSON_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let log = Arc::new(ExitLog::default());
        let sink_log = log.clone();
        let sink: ExitSink = Arc::new(move |exit: Exit| {
            sink_log.exits.lock().unwrap().push(exit);
            sink_log.changed.notify_all();
        });
        let dir = tempfile::tempdir().expect("temp dir");
        require::program(runtime, package);
        let backend = OciBackend::new(
            dir.path().join("state"),
            sink,
            OciOptions {
                runtime_path: runtime.into(),
                runtime_args: args.iter().map(|a| a.to_string()).collect(),
            },
        )
        .expect("starting the backend");
        Harness {
            backend,
            log,
            dir,
            live: Mutex::new(Vec::new()),
            cgroups: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A busybox bundle running `args`, with a unique cgroup; `adjust`
    /// edits the spec before it is written.
    fn bundle(&self, name: &str, args: &[&str], adjust: impl FnOnce(&mut Spec)) -> PathBuf {
        let bundle = self.path(name);
        let rootfs = bundle.join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let layer = busybox_layer();
        {
            // Files are written under the fork lock: a container forked
            // meanwhile would inherit them open for writing (ETXTBSY).
            let reaper = Reaper::global().unwrap();
            let _fork = reaper.lock();
            tar::Archive::new(layer)
                .unpack(&rootfs)
                .expect("unpacking busybox");
        }
        let cgroup = unique("/caisson-test");
        self.cgroups.lock().unwrap().push(cgroup.clone());
        let mut spec = Spec::default();
        let mut process = Process::default();
        process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        spec.set_process(Some(process));
        let mut linux = spec.linux().clone().unwrap();
        linux.set_cgroups_path(Some(PathBuf::from(&cgroup)));
        spec.set_linux(Some(linux));
        spec.set_hostname(Some(name.to_string()));
        adjust(&mut spec);
        spec.save(bundle.join("config.json")).unwrap();
        bundle
    }

    fn create(&self, id: &str, bundle: &Path, kind: TaskKind, stdio: Stdio) -> u32 {
        self.try_create(id, bundle, kind, stdio).expect("create")
    }

    fn try_create(
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
        };
        let pid = self.backend.create(&task)?;
        self.live.lock().unwrap().push(id.to_string());
        Ok(pid)
    }

    fn run(&self, id: &str, bundle: &Path, stdio: Stdio) -> u32 {
        let pid = self.create(id, bundle, TaskKind::Sandbox, stdio);
        assert_eq!(self.backend.start(id).expect("start"), pid);
        pid
    }

    fn wait_exit(&self, id: &str, exec_id: Option<&str>) -> Exit {
        self.log
            .wait(id, exec_id, DEADLINE)
            .unwrap_or_else(|| panic!("no exit of {id} {exec_id:?} within {DEADLINE:?}"))
    }

    /// Deletes an exited task and checks nothing of it is left.
    fn delete_and_check(&self, id: &str, pid: u32, cgroup: &str) {
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
        let _ = id;
    }
}

impl Drop for Harness {
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
        for cgroup in self.cgroups.lock().unwrap().iter() {
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
}

/// The busybox layer, built once (under the fork lock: it runs busybox and
/// waits for it, which the reaper of a concurrent test must not steal).
fn busybox_layer() -> &'static [u8] {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let reaper = Reaper::global().unwrap();
        let _fork = reaper.lock();
        fixtures::busybox_layer()
    })
}

fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn cgroup_of(bundle: &Path) -> String {
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

#[test]
fn a_container_runs_under_runc_and_exits_with_its_code() {
    runs_and_exits_with_its_code(Harness::new());
}

fn runs_and_exits_with_its_code(h: Harness) {
    let bundle = h.bundle(
        "exit7",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        |_| {},
    );
    let (out, err) = (h.path("out.log"), h.path("err.log"));
    let id = unique("exit7");
    let stdio = Stdio {
        stdout: file_uri(&out),
        stderr: file_uri(&err),
        ..Stdio::default()
    };
    let pid = h.create(&id, &bundle, TaskKind::Sandbox, stdio);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(h.backend.start(&id).unwrap(), pid);
    let exit = h.wait_exit(&id, None);
    assert_eq!((exit.pid, exit.status), (pid, 7));
    assert_eq!(fs::read_to_string(&out).unwrap(), "out\n");
    assert_eq!(fs::read_to_string(&err).unwrap(), "err\n");
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    assert!(matches!(
        h.backend.delete(&id, None),
        Err(BackendError::NotFound(_))
    ));
}

#[test]
fn exec_and_kill_through_runc() {
    let h = Harness::new();
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());
    let out = h.path("exec.out");
    let mut process = Process::default();
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo hi; exit 3".into(),
    ]));
    let exec = ExecSpec {
        container_id: id.clone(),
        exec_id: "e1".into(),
        process,
        stdio: Stdio {
            stdout: file_uri(&out),
            ..Stdio::default()
        },
    };
    h.backend.exec(&exec).unwrap();
    h.backend.start_exec(&id, "e1").unwrap();
    let exit = h.wait_exit(&id, Some("e1"));
    assert_eq!(exit.status, 3);
    assert_eq!(fs::read_to_string(&out).unwrap(), "hi\n");
    h.backend.delete(&id, Some("e1")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}
