//! The hardened backend against the real kernel: needs root. Busybox
//! bundles in temp dirs (as in native_backend_root.rs); each test asserts what
//! the kernel shows: /proc/self/status (Seccomp, NoNewPrivs, CapEff) and the
//! errors denied syscalls return inside the container.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use caisson_sandbox::backend::hardened::policy::ADDED_CAPABILITIES_ANNOTATION;
use caisson_sandbox::backend::hardened::HardenedBackend;
use caisson_sandbox::backend::{
    Backend, BackendError, ExecSpec, Exit, ExitSink, Stdio, TaskKind, TaskSpec,
};
use caisson_sandbox::host::reaper::Reaper;
use caisson_tests::fixtures;
use caisson_tests::require;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
    Process, Spec,
};

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
    backend: HardenedBackend,
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
        require::root("the hardened backend makes namespaces, cgroups, mounts and seccomp filters");
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
        let backend = HardenedBackend::new(
            dir.path().join("state"),
            sink,
            env!("CARGO_BIN_EXE_containerd-shim-caisson-v2").into(),
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
        let state = self.backend.native().state_root().join(id);
        assert!(!state.exists(), "{} still exists", state.display());
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

fn process(args: &[&str]) -> Process {
    let mut p = Process::default();
    p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    p
}

/// Runs `script` in a hardened busybox container (after `adjust`), returns
/// its exit status and combined output.
fn run_script(
    h: &Harness,
    name: &str,
    script: &str,
    adjust: impl FnOnce(&mut Spec),
) -> (u32, String) {
    let bundle = h.bundle(name, &["sh", "-c", script], adjust);
    let out = h.path(&format!("{name}.out"));
    let id = unique(name);
    let stdio = Stdio {
        stdout: file_uri(&out),
        stderr: file_uri(&out),
        ..Stdio::default()
    };
    let pid = h.run(&id, &bundle, stdio);
    let exit = h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    (exit.status, fs::read_to_string(&out).unwrap_or_default())
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

const PROBE: &str = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
    ls / >/dev/null && echo ls-ok; sleep 0.1 && echo sleep-ok; \
    ip link show lo >/dev/null && echo netlink-ok; \
    unshare -m true 2>&1; mount -t tmpfs none /tmp 2>&1; echo done";

#[test]
fn denied_syscalls_fail_with_eperm_and_ordinary_tools_work() {
    let h = Harness::new();
    let (status, out) = run_script(&h, "probe", PROBE, |_| {});
    assert_eq!(status, 0, "{out}");
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "ls-ok",
        "sleep-ok",
        "netlink-ok",
        "done",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    // unshare and mount are denied by the filter with EPERM, not a crash
    // (busybox words mount's EPERM as "permission denied").
    assert!(
        out.contains("unshare(0x20000): Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("mount: permission denied"), "{out}");
}

#[test]
fn exec_processes_are_filtered_too() {
    let h = Harness::new();
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());
    let out = h.path("exec.out");
    let mut p = process(&["sh", "-c", PROBE]);
    // The exec asks for everything; the policy leaves nothing.
    let all: std::collections::HashSet<Capability> = [
        Capability::SysAdmin,
        Capability::NetAdmin,
        Capability::Chown,
    ]
    .into();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(all.clone()));
    caps.set_effective(Some(all.clone()));
    caps.set_permitted(Some(all));
    p.set_capabilities(Some(caps));
    let exec = ExecSpec {
        container_id: id.clone(),
        exec_id: "e1".into(),
        process: p,
        stdio: Stdio {
            stdout: file_uri(&out),
            stderr: file_uri(&out),
            ..Stdio::default()
        },
    };
    h.backend.exec(&exec).unwrap();
    h.backend.start_exec(&id, "e1").unwrap();
    let exit = h.wait_exit(&id, Some("e1"));
    let out = fs::read_to_string(&out).unwrap();
    assert_eq!(exit.status, 0, "{out}");
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "ls-ok",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    h.backend.delete(&id, Some("e1")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn an_added_permitted_capability_is_kept() {
    let h = Harness::new();
    let (status, out) = run_script(&h, "netbind", "grep CapEff /proc/self/status", |spec| {
        spec.set_annotations(Some(
            [(
                ADDED_CAPABILITIES_ANNOTATION.to_string(),
                "NET_BIND_SERVICE,SYS_ADMIN".to_string(),
            )]
            .into(),
        ));
        let mut process = spec.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        let mut set = caps.bounding().clone().unwrap_or_default();
        set.insert(Capability::NetBindService);
        set.insert(Capability::SysAdmin);
        caps.set_bounding(Some(set.clone()));
        caps.set_effective(Some(set.clone()));
        caps.set_permitted(Some(set));
        process.set_capabilities(Some(caps));
        spec.set_process(Some(process));
    });
    assert_eq!(status, 0, "{out}");
    // NET_BIND_SERVICE (bit 10) only: SYS_ADMIN is not permitted.
    assert!(out.contains("CapEff:\t0000000000000400"), "{out}");
}

#[test]
fn a_pod_profile_narrows_the_policy() {
    let h = Harness::new();
    let (status, out) = run_script(
        &h,
        "narrow",
        "mkdir /tmp/x 2>&1 || echo mkdir-denied; ls / >/dev/null && echo ls-ok",
        |spec| {
            let deny_mkdir = LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .build()
                .unwrap();
            let profile = LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .syscalls(vec![deny_mkdir])
                .build()
                .unwrap();
            let mut linux = spec.linux().clone().unwrap();
            linux.set_seccomp(Some(profile));
            spec.set_linux(Some(linux));
        },
    );
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("mkdir-denied") && out.contains("Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("ls-ok"), "{out}");
}

#[test]
fn privileged_containers_are_refused() {
    let h = Harness::new();
    let bundle = h.bundle("privileged", &["true"], |spec| {
        let mut process = spec.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        caps.set_bounding(Some([Capability::SysAdmin].into()));
        process.set_capabilities(Some(caps));
        spec.set_process(Some(process));
        let mut linux = spec.linux().clone().unwrap();
        linux.set_masked_paths(None);
        spec.set_linux(Some(linux));
    });
    let err = h
        .try_create(
            &unique("privileged"),
            &bundle,
            TaskKind::Sandbox,
            Stdio::default(),
        )
        .unwrap_err();
    match err {
        BackendError::InvalidArgument { what, .. } => assert_eq!(what, "privileged"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn landlock_keeps_the_process_beneath_its_root() {
    let h = Harness::new();
    // stdout is a host file outside the rootfs: writing to the open fd works,
    // reopening it by path (/proc/self/fd/1) is outside the Landlock domain.
    let (status, out) = run_script(
        &h,
        "landlock",
        "echo via-fd; (echo via-path >> /proc/self/fd/1) 2>/dev/null || echo reopen-denied; \
         echo x > /dev/shm/inside && cat /dev/shm/inside",
        |_| {},
    );
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("via-fd"), "{out}");
    assert!(!out.contains("via-path"), "{out}");
    assert!(out.contains("reopen-denied"), "{out}");
    assert!(out.contains("x\n"), "{out}");
}
