//! The `oci` backend delegating to Debian's runc and crun: needs root,
//! `/usr/sbin/runc` and `/usr/bin/crun`. Busybox bundles in temp dirs; a
//! container runs under the runtime and its exit code and output come back
//! through the shim's reaper.

use std::fs;
use std::io::Write;
use std::path::Path;

use caisson_sandbox::backend::oci::{OciBackend, OciOptions};
use caisson_sandbox::backend::{Backend, BackendError, ExecSpec, Stdio, TaskKind};
use caisson_tests::require;
use oci_spec::runtime::{LinuxPidsBuilder, LinuxResourcesBuilder, Process};

mod support;

use support::{cgroup_of, file_uri, mkfifo, unique, wait_for_exec};

const RUNC: &str = "/usr/sbin/runc";
const CRUN: &str = "/usr/bin/crun";

// ---------------------------------------------------------------- harness

type Harness = support::Harness<OciBackend>;

impl Harness {
    fn new() -> Harness {
        Harness::with_runtime(RUNC, false, "runc")
    }

    /// A backend delegating to Debian's crun 1.8.1, which refuses hybrid
    /// cgroup hosts whose cgroup2 holds a controller (this one's has
    /// hugetlb) unless the cgroup2 mount is hidden from it.
    fn crun(hide_cgroup2: bool) -> Harness {
        Harness::with_runtime(CRUN, hide_cgroup2, "crun")
    }

    /// A backend delegating to `runtime`.
    fn with_runtime(runtime: &str, hide_cgroup2: bool, package: &str) -> Harness {
        Harness::start(
            "runc makes namespaces, cgroups and mounts",
            |state, sink| {
                require::program(runtime, package);
                OciBackend::new(
                    state,
                    sink,
                    OciOptions {
                        runtime_path: runtime.into(),
                        runtime_args: Vec::new(),
                        hide_cgroup2,
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

#[test]
fn a_container_runs_under_crun_with_cgroup2_hidden() {
    runs_and_exits_with_its_code(Harness::crun(true));
}

/// On a hybrid host whose cgroup2 holds a controller, crun refuses to
/// create without `hide_cgroup2`, and the error says what to set.
#[test]
fn crun_on_a_hybrid_host_names_the_option_it_needs() {
    let controllers =
        fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if controllers.trim().is_empty() {
        eprintln!("skipped: not a hybrid host with a cgroup2 controller");
        return;
    }
    let h = Harness::crun(false);
    let bundle = h.bundle("refused", &["true"], |_| {});
    let id = unique("refused");
    let err = h
        .try_create(&id, &bundle, TaskKind::Sandbox, Stdio::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("hybrid mode"), "{err}");
    assert!(err.contains("hide_cgroup2"), "{err}");
    assert!(matches!(
        h.backend.delete(&id, None),
        Err(BackendError::NotFound(_))
    ));
    let cgroup = cgroup_of(&bundle);
    assert!(!Path::new("/sys/fs/cgroup/pids")
        .join(cgroup.trim_start_matches('/'))
        .exists());
}

#[test]
fn update_stats_and_terminal_through_runc() {
    update_stats_and_terminal(Harness::new());
}

#[test]
fn update_stats_and_terminal_through_crun() {
    update_stats_and_terminal(Harness::crun(true));
}

/// `update` goes through the runtime's CLI and lands in the cgroup the
/// runtime made; `stats` reads that cgroup; the init's terminal arrives
/// through the console socket and can be resized before the start.
fn update_stats_and_terminal(h: Harness) {
    let busy = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000";
    let bundle = h.bundle("busy", &["sh", "-c", busy], |_| {});
    let cgroup = cgroup_of(&bundle);
    let id = unique("busy");
    let pid = h.run(&id, &bundle, Stdio::default());
    let resources = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
        .build()
        .unwrap();
    h.backend.update(&id, &resources).unwrap();
    let pids_max = Path::new("/sys/fs/cgroup/pids")
        .join(cgroup.trim_start_matches('/'))
        .join("pids.max");
    assert_eq!(fs::read_to_string(pids_max).unwrap().trim(), "100");
    wait_for_exec(pid, "sleep");
    let stats = h.backend.stats(&id).unwrap();
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert_eq!(stats.pids_current, 1, "{stats:?}");
    assert_eq!(stats.pids_limit, 100, "{stats:?}");
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup);

    let tty_bundle = h.bundle("tty", &["sh", "-c", "tty; stty size"], |spec| {
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(true));
        spec.set_process(Some(process));
    });
    let out = h.path("tty.out");
    let tty = unique("tty");
    let tty_pid = h.create(
        &tty,
        &tty_bundle,
        TaskKind::Sandbox,
        Stdio {
            stdout: file_uri(&out),
            terminal: true,
            ..Stdio::default()
        },
    );
    h.backend.resize_pty(&tty, None, 80, 24).unwrap();
    h.backend.start(&tty).unwrap();
    assert_eq!(h.wait_exit(&tty, None).status, 0);
    // The pump writes what the pty held once the process is gone.
    let until = std::time::Instant::now() + support::DEADLINE;
    let text = loop {
        let text = fs::read_to_string(&out).unwrap_or_default();
        if text.lines().count() >= 2 || std::time::Instant::now() > until {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(lines[0].starts_with("/dev/pts/"), "{text:?}");
    assert_eq!(lines[1], "24 80", "{text:?}");
    h.delete_and_check(&tty, tty_pid, &cgroup_of(&tty_bundle));
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
    // Exited, not deleted: no process (runc's `ps` prints `null`, crun's fails).
    let pids = h.backend.pids(&id).unwrap();
    assert!(pids.is_empty(), "{pids:?}");
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

#[test]
fn exec_terminal_and_stdin_through_runc() {
    exec_terminal_and_stdin(Harness::new());
}

#[test]
fn exec_terminal_and_stdin_through_crun() {
    exec_terminal_and_stdin(Harness::crun(true));
}

#[test]
fn exec_kill_reaches_the_process_through_runc() {
    exec_kill_reaches_the_process(Harness::new());
}

#[test]
fn exec_kill_reaches_the_process_through_crun() {
    exec_kill_reaches_the_process(Harness::crun(true));
}

/// SIGKILL for an exec (ExecSync's timeout) kills the exec's process, not
/// only the foreground CLI, which cannot forward it; Pids names the exec.
fn exec_kill_reaches_the_process(h: Harness) {
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());
    let mut process = Process::default();
    process.set_args(Some(vec!["sleep".into(), "600".into()]));
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "s1".into(),
            process,
            stdio: Stdio::default(),
        })
        .unwrap();
    let exec_pid = h.backend.start_exec(&id, "s1").unwrap();
    let pids = h.backend.pids(&id).unwrap();
    let named: Vec<(u32, Option<String>)> =
        pids.iter().map(|p| (p.pid, p.exec_id.clone())).collect();
    assert!(named.contains(&(pid, None)), "{named:?}");
    assert!(named.contains(&(exec_pid, Some("s1".into()))), "{named:?}");
    h.backend
        .kill(&id, Some("s1"), libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, Some("s1")).status, 137);
    let procs = Path::new("/sys/fs/cgroup/pids")
        .join(cgroup_of(&bundle).trim_start_matches('/'))
        .join("cgroup.procs");
    let until = std::time::Instant::now() + support::DEADLINE;
    while fs::read_to_string(&procs).unwrap().trim() != pid.to_string() {
        assert!(
            std::time::Instant::now() < until,
            "the exec's process is still running: {}",
            fs::read_to_string(&procs).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    h.backend.delete(&id, Some("s1")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

/// Waits until `path` holds at least `lines` lines (a pump writes it).
fn wait_for_lines(path: &Path, lines: usize) -> String {
    let until = std::time::Instant::now() + support::DEADLINE;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines || std::time::Instant::now() > until {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// An exec with a terminal (`exec --detach --console-socket`) gets a pty of
/// its own, is resized through `resize_pty`, reads the stdin FIFO through
/// the pty and reports its own exit; a plain exec's stdin ends only at
/// `close_stdin`.
fn exec_terminal_and_stdin(h: Harness) {
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());

    let (stdin, out) = (mkfifo(&h.path("tty.in")), h.path("tty.out"));
    let script = "read line; tty; stty size; echo \"got $line\"; exit 5";
    let mut process = Process::default();
    process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "t1".into(),
            process,
            stdio: Stdio {
                stdin: stdin.clone(),
                stdout: file_uri(&out),
                terminal: true,
                ..Stdio::default()
            },
        })
        .unwrap();
    let exec_pid = h.backend.start_exec(&id, "t1").unwrap();
    assert_ne!(exec_pid, pid);
    // Blocked in `read` on its pty: the shim (a subreaper) is its parent now
    // that the detached CLI is gone.
    let tty = fs::read_link(format!("/proc/{exec_pid}/fd/0")).unwrap();
    assert!(tty.starts_with("/dev/pts/"), "{}", tty.display());
    let parent = fs::read_to_string(format!("/proc/{exec_pid}/stat")).unwrap();
    let ppid: u32 = parent
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, std::process::id(), "{parent}");
    h.backend.resize_pty(&id, Some("t1"), 100, 30).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&stdin)
        .unwrap()
        .write_all(b"hello\n")
        .unwrap();
    let exit = h.wait_exit(&id, Some("t1"));
    assert_eq!((exit.pid, exit.status), (exec_pid, 5));
    // The pty echoes the input line before the script's three lines.
    let text = wait_for_lines(&out, 4);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{text:?}");
    assert!(lines.contains(&"30 100"), "{text:?}");
    assert!(lines.contains(&"got hello"), "{text:?}");
    h.backend.delete(&id, Some("t1")).unwrap();

    // Execs that exit at once, before the detached CLI has even exited:
    // the shim adopts them when it does, and each exit is reported once.
    for n in 0..5 {
        let exec_id = format!("quick{n}");
        let mut process = Process::default();
        process.set_args(Some(vec!["sh".into(), "-c".into(), "exit 7".into()]));
        h.backend
            .exec(&ExecSpec {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
                process,
                stdio: Stdio {
                    terminal: true,
                    ..Stdio::default()
                },
            })
            .unwrap();
        let quick = h.backend.start_exec(&id, &exec_id).unwrap();
        let exit = h.wait_exit(&id, Some(&exec_id));
        assert_eq!((exit.pid, exit.status), (quick, 7));
        // Once started, its stdio is there even though it has exited.
        h.backend.close_stdin(&id, Some(&exec_id)).unwrap();
        h.backend.delete(&id, Some(&exec_id)).unwrap();
    }
    // One that cannot start: an error, no exit, nothing left in the cgroup.
    let mut process = Process::default();
    process.set_args(Some(vec!["/no/such/binary".into()]));
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "missing".into(),
            process,
            stdio: Stdio {
                terminal: true,
                ..Stdio::default()
            },
        })
        .unwrap();
    assert!(matches!(
        h.backend.close_stdin(&id, Some("missing")),
        Err(BackendError::InvalidState { .. })
    ));
    let err = h.backend.start_exec(&id, "missing").unwrap_err();
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    assert!(h
        .log
        .wait(&id, Some("missing"), std::time::Duration::from_millis(300))
        .is_none());
    let procs = fs::read_to_string(
        Path::new("/sys/fs/cgroup/pids")
            .join(cgroup_of(&bundle).trim_start_matches('/'))
            .join("cgroup.procs"),
    )
    .unwrap();
    assert_eq!(procs.trim(), pid.to_string(), "only the init is left");
    for n in 0..5 {
        assert_eq!(h.log.count(&id, Some(&format!("quick{n}"))), 1);
    }

    let (stdin, out) = (mkfifo(&h.path("cat.in")), h.path("cat.out"));
    let mut process = Process::default();
    process.set_args(Some(vec!["cat".into()]));
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "c1".into(),
            process,
            stdio: Stdio {
                stdin: stdin.clone(),
                stdout: file_uri(&out),
                ..Stdio::default()
            },
        })
        .unwrap();
    h.backend.start_exec(&id, "c1").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&stdin)
        .unwrap()
        .write_all(b"ping\n")
        .unwrap();
    // The caller's writer is closed, the shim's keep-alive is not: cat runs on.
    assert!(h
        .log
        .wait(&id, Some("c1"), std::time::Duration::from_millis(300))
        .is_none());
    h.backend.close_stdin(&id, Some("c1")).unwrap();
    assert_eq!(h.wait_exit(&id, Some("c1")).status, 0);
    assert_eq!(wait_for_lines(&out, 1), "ping\n");
    h.backend.delete(&id, Some("c1")).unwrap();

    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

/// A runtime whose `create` and `delete` hang: past the deadline each CLI
/// call is killed (not left running) and the call fails, so the cleanup
/// `delete --force` after a killed create cannot hang create either.
#[test]
fn a_runtime_cli_past_its_deadline_is_killed() {
    use std::os::unix::fs::PermissionsExt;
    let scripts = tempfile::tempdir().unwrap();
    let pid_file = scripts.path().join("cli.pid");
    let delete_pid_file = scripts.path().join("delete.pid");
    let runtime = scripts.path().join("hanging-runtime");
    fs::write(
        &runtime,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n *\" create \"*) echo $$ > {}; exec sleep 1000;;\n \
             *\" delete \"*) echo $$ > {}; exec sleep 1000;;\nesac\nexit 0\n",
            pid_file.display(),
            delete_pid_file.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o755)).unwrap();
    let h = Harness::start("the oci backend's CLI deadline", |state, sink| {
        OciBackend::new(
            state,
            sink,
            OciOptions {
                runtime_path: runtime.clone(),
                runtime_args: Vec::new(),
                hide_cgroup2: false,
            },
        )
        .expect("starting the backend")
        .with_cli_deadline(std::time::Duration::from_secs(3))
    });
    let bundle = h.bundle("hang", &["true"], |_| {});
    let started = std::time::Instant::now();
    let err = h
        .try_create(
            &unique("hang"),
            &bundle,
            TaskKind::Sandbox,
            Stdio::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
    // Two deadlines (create, then the cleanup delete) and the kills: a hang
    // would take 1000 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    for file in [&pid_file, &delete_pid_file] {
        let pid: u32 = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the CLI ({pid}, {}) is still there",
            file.display()
        );
    }
}
