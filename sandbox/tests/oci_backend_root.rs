//! The `oci` backend delegating to Debian's runc: needs root and
//! `/usr/sbin/runc`. Busybox bundles in temp dirs; a container runs under
//! runc and its exit code and output come back through the shim's reaper.

use std::fs;
use std::path::Path;

use caisson_sandbox::backend::oci::{OciBackend, OciOptions};
use caisson_sandbox::backend::{Backend, BackendError, ExecSpec, Stdio, TaskKind};
use caisson_tests::require;
use oci_spec::runtime::Process;

mod support;

use support::{cgroup_of, file_uri, unique};

const RUNC: &str = "/usr/sbin/runc";

// ---------------------------------------------------------------- harness

type Harness = support::Harness<OciBackend>;

impl Harness {
    fn new() -> Harness {
        Harness::with_runtime(RUNC, &[], "runc")
    }

    /// A backend delegating to `runtime` with global `args`. (Debian's crun
    /// 1.8.1 cannot run here: it refuses hybrid cgroups when cgroup2 holds
    /// a controller, and this host's has hugetlb.)
    fn with_runtime(runtime: &str, args: &[&str], package: &str) -> Harness {
        Harness::start(
            "runc makes namespaces, cgroups and mounts",
            |state, sink| {
                require::program(runtime, package);
                OciBackend::new(
                    state,
                    sink,
                    OciOptions {
                        runtime_path: runtime.into(),
                        runtime_args: args.iter().map(|a| a.to_string()).collect(),
                    },
                )
                .expect("starting the backend")
            },
        )
    }

    /// Deletes an exited task and checks nothing of it is left.
    fn delete_and_check(&self, id: &str, pid: u32, cgroup: &str) {
        self.delete_and_check_state(id, pid, cgroup, None);
    }
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
