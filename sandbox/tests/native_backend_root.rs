//! The native backend against the real kernel: needs root (namespaces,
//! cgroups, mounts). Bundles are built in temp dirs from the busybox fixture
//! (and `caisson-pause` for sandboxes); every assertion reads what the kernel
//! shows in /proc and /sys/fs/cgroup. Each test owns its backend, state root
//! and cgroups, and a guard kills and deletes whatever it created, even when
//! the test fails.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use caisson_sandbox::backend::native::NativeBackend;
use caisson_sandbox::backend::{Backend, BackendError, ExecSpec, Stdio, TaskKind};
use caisson_sandbox::host::reaper::Reaper;
use caisson_tests::daemon::{ns_inode, proc_status_field};
use caisson_tests::fixtures;
use caisson_tests::require;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Process, Spec,
};

mod support;

use support::{cgroup_of, file_uri, mkfifo, process, unique, wait_for_exec, DEADLINE};

// ---------------------------------------------------------------- harness

type Harness = support::Harness<NativeBackend>;

impl Harness {
    /// Deletes an exited task and checks nothing of it is left.
    fn delete_and_check(&self, id: &str, pid: u32, cgroup: &str) {
        let state = self.backend.state_root().join(id);
        self.delete_and_check_state(id, pid, cgroup, Some(&state));
    }
}

/// Connects to a FIFO as its reader now (as containerd does before it
/// starts a task) and reads it to EOF on a thread; the result arrives on the
/// channel. Opening first matters: once the last writer is gone, a blocking
/// open for reading would wait forever.
fn read_fifo(path: &Path) -> mpsc::Receiver<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut fifo = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open fifo for reading");
    // SAFETY: F_SETFL on an fd we own.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fifo), libc::F_SETFL, 0) };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = String::new();
        fifo.read_to_string(&mut out).expect("read fifo");
        let _ = tx.send(out);
    });
    rx
}

/// Reads what a FIFO holds once its writers are gone (non-blocking: there
/// is no writer left to wait for).
fn drain_fifo(path: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let mut fifo = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open fifo for reading");
    let mut out = String::new();
    fifo.read_to_string(&mut out).expect("read fifo");
    out
}

fn namespaces(spec: &mut Spec, list: Vec<LinuxNamespace>) {
    let mut linux = spec.linux().clone().unwrap();
    linux.set_namespaces(Some(list));
    spec.set_linux(Some(linux));
}

fn new_ns(typ: LinuxNamespaceType) -> LinuxNamespace {
    LinuxNamespaceBuilder::default().typ(typ).build().unwrap()
}

fn ns_of(typ: LinuxNamespaceType, pid: u32, name: &str) -> LinuxNamespace {
    LinuxNamespaceBuilder::default()
        .typ(typ)
        .path(format!("/proc/{pid}/ns/{name}"))
        .build()
        .unwrap()
}

/// The test's cgroupsPath, as written in the bundle.
fn set_oom(spec: &mut Spec, oom: i32) {
    let mut process = spec.process().clone().unwrap();
    process.set_oom_score_adj(Some(oom));
    spec.set_process(Some(process));
}

// ------------------------------------------------------------------ tests

#[test]
fn sandbox_and_containers_share_namespaces_by_path() {
    let h = Harness::new();
    let sandbox_bundle = h.bundle("pause", &["/pause"], |spec| {
        use LinuxNamespaceType::*;
        namespaces(
            spec,
            vec![
                new_ns(Pid),
                new_ns(Ipc),
                new_ns(Uts),
                new_ns(Mount),
                new_ns(Network),
            ],
        );
    });
    {
        let reaper = Reaper::global().unwrap();
        let _fork = reaper.lock();
        fs::copy(
            fixtures::pause_binary(),
            sandbox_bundle.join("rootfs/pause"),
        )
        .unwrap();
    }
    let sandbox = unique("sandbox");
    let pause = h.run(&sandbox, &sandbox_bundle, Stdio::default());

    let joined = |share_pid: bool| {
        move |spec: &mut Spec| {
            use LinuxNamespaceType::*;
            let mut list = vec![
                ns_of(Uts, pause, "uts"),
                ns_of(Ipc, pause, "ipc"),
                ns_of(Network, pause, "net"),
                new_ns(Mount),
            ];
            list.push(if share_pid {
                ns_of(Pid, pause, "pid")
            } else {
                new_ns(Pid)
            });
            namespaces(spec, list);
            // The hostname belongs to the sandbox's UTS namespace.
            spec.set_hostname(None);
        }
    };
    let kind = TaskKind::Container {
        sandbox_id: sandbox.clone(),
    };
    let shared_bundle = h.bundle("shared-pid", &["sleep", "1000"], joined(true));
    let own_bundle = h.bundle("own-pid", &["sleep", "1000"], joined(false));
    let shared = unique("shared");
    let own = unique("own");
    let shared_pid = h.create(&shared, &shared_bundle, kind.clone(), Stdio::default());
    h.backend.start(&shared).unwrap();
    let own_pid = h.create(&own, &own_bundle, kind, Stdio::default());
    h.backend.start(&own).unwrap();

    wait_for_exec(pause, "pause");
    for pid in [shared_pid, own_pid] {
        wait_for_exec(pid, "sleep");
        for kind in ["uts", "ipc", "net"] {
            assert_eq!(
                ns_inode(pid, kind),
                ns_inode(pause, kind),
                "{kind} of {pid}"
            );
        }
        assert_ne!(ns_inode(pid, "mnt"), ns_inode(pause, "mnt"), "mnt of {pid}");
        assert_ne!(
            ns_inode(pid, "mnt"),
            ns_inode(std::process::id(), "mnt"),
            "mnt of {pid}"
        );
        // The shim ignores SIGPIPE; the payload must not inherit that.
        assert_eq!(
            proc_status_field(pid, "SigIgn").unwrap(),
            "0000000000000000",
            "SigIgn of {pid}"
        );
    }
    assert_eq!(ns_inode(shared_pid, "pid"), ns_inode(pause, "pid"));
    let nspid = proc_status_field(shared_pid, "NSpid").unwrap();
    let levels: Vec<&str> = nspid.split_whitespace().collect();
    assert_eq!(levels.len(), 2, "NSpid {nspid:?}");
    assert_ne!(levels[1], "1", "pause is pid 1 of the shared namespace");
    assert_ne!(ns_inode(own_pid, "pid"), ns_inode(pause, "pid"));
    assert_eq!(
        proc_status_field(own_pid, "NSpid")
            .unwrap()
            .split_whitespace()
            .nth(1),
        Some("1")
    );
    assert_ne!(ns_inode(pause, "uts"), ns_inode(std::process::id(), "uts"));
    assert_ne!(ns_inode(pause, "net"), ns_inode(std::process::id(), "net"));

    // Containers go first, then the sandbox.
    for (id, pid, bundle) in [
        (&shared, shared_pid, &shared_bundle),
        (&own, own_pid, &own_bundle),
    ] {
        h.backend
            .kill(id, None, libc::SIGKILL as u32, false)
            .unwrap();
        assert_eq!(h.wait_exit(id, None).status, 137);
        h.delete_and_check(id, pid, &cgroup_of(bundle));
    }
    h.backend
        .kill(&sandbox, None, libc::SIGTERM as u32, false)
        .unwrap();
    let exit = h.wait_exit(&sandbox, None);
    assert_eq!(exit.pid, pause);
    h.delete_and_check(&sandbox, pause, &cgroup_of(&sandbox_bundle));
}

#[test]
fn delete_runs_the_poststop_hooks_after_the_cgroup_is_gone() {
    let h = Harness::new();
    let seen = h.path("hook-ran");
    let bundle = h.bundle("poststop", &["true"], |spec| {
        // The hook gets the container's state on stdin and looks for the
        // task's memory cgroup, which must be gone by then.
        let script = format!(
            "cat > {seen}.state; \
             for d in /sys/fs/cgroup/memory/caisson-test-*; do [ -d \"$d\" ] && echo \"$d\"; done > {seen}.cgroups; \
             echo ran >> {seen}",
            seen = seen.display()
        );
        let hook = oci_spec::runtime::HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".to_string(), script])
            .build()
            .unwrap();
        let hooks = oci_spec::runtime::HooksBuilder::default()
            .poststop(vec![hook])
            .build()
            .unwrap();
        spec.set_hooks(Some(hooks));
    });
    let cgroup = cgroup_of(&bundle);
    let id = unique("poststop");
    let pid = h.create(&id, &bundle, TaskKind::Sandbox, Stdio::default());
    h.backend.start(&id).unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 0);
    assert!(!seen.exists(), "a poststop hook ran before delete");
    h.delete_and_check(&id, pid, &cgroup);
    assert_eq!(fs::read_to_string(&seen).unwrap(), "ran\n");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(seen.with_extension("state")).unwrap()).unwrap();
    assert_eq!(state["id"], id.as_str(), "{state}");
    let cgroups = fs::read_to_string(seen.with_extension("cgroups")).unwrap();
    let task_cgroup = format!("/sys/fs/cgroup/memory{cgroup}");
    assert!(
        !cgroups.lines().any(|d| d == task_cgroup),
        "the task's cgroup was still there for the hook: {cgroups}"
    );
}

#[test]
fn exit_status_and_file_stdio_then_delete_leaves_nothing() {
    let h = Harness::new();
    let bundle = h.bundle(
        "exit7",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        |_| {},
    );
    let (out, err) = (h.path("logs/out.log"), h.path("logs/err.log"));
    let id = unique("exit7");
    let stdio = Stdio {
        stdout: file_uri(&out),
        stderr: file_uri(&err),
        ..Stdio::default()
    };
    let pid = h.create(&id, &bundle, TaskKind::Sandbox, stdio);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // Created, not started: the program has not run.
    assert_eq!(fs::read_to_string(&out).unwrap(), "");
    assert_eq!(h.backend.start(&id).unwrap(), pid);
    let exit = h.wait_exit(&id, None);
    assert_eq!((exit.pid, exit.status, exit.exec_id), (pid, 7, None));
    assert_eq!(fs::read_to_string(&out).unwrap(), "out\n");
    assert_eq!(fs::read_to_string(&err).unwrap(), "err\n");
    // Killing an exited task is not an error.
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    h.backend
        .kill(&id, None, libc::SIGTERM as u32, true)
        .unwrap();
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    assert!(matches!(
        h.backend.delete(&id, None),
        Err(BackendError::NotFound(_))
    ));
}

#[test]
fn fifo_output_waits_for_a_caller_that_connects_late() {
    let h = Harness::new();
    let bundle = h.bundle(
        "fifo",
        &["sh", "-c", "echo hello-fifo; echo to-err >&2"],
        |_| {},
    );
    let stdout = mkfifo(&h.path("stdout"));
    let stderr = mkfifo(&h.path("stderr"));
    let id = unique("fifo");
    let pid = h.create(
        &id,
        &bundle,
        TaskKind::Sandbox,
        Stdio {
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            ..Stdio::default()
        },
    );
    h.backend.start(&id).unwrap();
    // Nobody reads while the process runs and exits: the shim's reader
    // keeps the FIFOs from breaking, and the output waits in them.
    assert_eq!(h.wait_exit(&id, None).status, 0);
    assert_eq!(drain_fifo(Path::new(&stdout)), "hello-fifo\n");
    assert_eq!(drain_fifo(Path::new(&stderr)), "to-err\n");
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn stdin_fifo_reaches_eof_only_after_close_stdin() {
    let h = Harness::new();
    let bundle = h.bundle("cat", &["cat"], |_| {});
    let stdin = mkfifo(&h.path("stdin"));
    let stdout = mkfifo(&h.path("stdout"));
    let id = unique("cat");
    let pid = h.create(
        &id,
        &bundle,
        TaskKind::Sandbox,
        Stdio {
            stdin: stdin.clone(),
            stdout: stdout.clone(),
            ..Stdio::default()
        },
    );
    let out = read_fifo(Path::new(&stdout));
    h.backend.start(&id).unwrap();
    {
        let mut writer = fs::OpenOptions::new().write(true).open(&stdin).unwrap();
        writer.write_all(b"ping\n").unwrap();
    }
    // The caller's writer is closed, but the shim's keep-alive is not: cat
    // keeps running.
    assert!(h.log.wait(&id, None, Duration::from_millis(300)).is_none());
    h.backend.close_stdin(&id, None).unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 0);
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), "ping\n");
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn exec_runs_in_the_container_and_reports_its_own_exit() {
    let h = Harness::new();
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let cgroup = cgroup_of(&bundle);
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());

    let (out, err) = (h.path("exec.out"), h.path("exec.err"));
    let exec = ExecSpec {
        container_id: id.clone(),
        exec_id: "e1".into(),
        process: process(&["sh", "-c", "echo hi; cat /proc/self/cgroup >&2; exit 3"]),
        stdio: Stdio {
            stdout: file_uri(&out),
            stderr: file_uri(&err),
            ..Stdio::default()
        },
    };
    h.backend.exec(&exec).unwrap();
    assert!(matches!(
        h.backend.exec(&exec),
        Err(BackendError::AlreadyExists { .. })
    ));
    let exec_pid = h.backend.start_exec(&id, "e1").unwrap();
    let exit = h.wait_exit(&id, Some("e1"));
    assert_eq!(
        (exit.pid, exit.status, exit.exec_id.as_deref()),
        (exec_pid, 3, Some("e1"))
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "hi\n");
    // The exec joined the container's cgroup namespace, at its root: the
    // container's own cgroup (a process elsewhere would see "/..").
    let cgroups = fs::read_to_string(&err).unwrap();
    assert!(
        cgroups.lines().any(|l| l.ends_with(":memory:/")),
        "{cgroups}"
    );
    // The init is untouched; the exec can go.
    assert!(h.log.wait(&id, None, Duration::ZERO).is_none());
    h.backend
        .kill(&id, Some("e1"), libc::SIGKILL as u32, false)
        .unwrap();
    h.backend.delete(&id, Some("e1")).unwrap();
    assert!(matches!(
        h.backend.kill(&id, Some("e1"), 9, false),
        Err(BackendError::NotFound(_))
    ));

    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup);
}

#[test]
fn sigterm_and_sigkill_give_143_and_137() {
    let h = Harness::new();
    // In the host PID namespace: a namespace's pid 1 would ignore SIGTERM.
    let host_pid_ns = |spec: &mut Spec| {
        use LinuxNamespaceType::*;
        namespaces(
            spec,
            vec![new_ns(Ipc), new_ns(Uts), new_ns(Mount), new_ns(Network)],
        );
    };
    let term_bundle = h.bundle("term", &["sleep", "1000"], host_pid_ns);
    let kill_bundle = h.bundle("kill", &["sleep", "1000"], |_| {});
    let (term, killed) = (unique("term"), unique("kill"));
    let term_pid = h.run(&term, &term_bundle, Stdio::default());
    let kill_pid = h.run(&killed, &kill_bundle, Stdio::default());
    // Signalled once it runs the program (not while libcontainer's code
    // still runs in it).
    wait_for_exec(term_pid, "sleep");
    h.backend
        .kill(&term, None, libc::SIGTERM as u32, false)
        .unwrap();
    h.backend
        .kill(&killed, None, libc::SIGKILL as u32, true)
        .unwrap();
    let term_exit = h.wait_exit(&term, None);
    let kill_exit = h.wait_exit(&killed, None);
    assert_eq!((term_exit.pid, term_exit.status), (term_pid, 143));
    assert_eq!((kill_exit.pid, kill_exit.status), (kill_pid, 137));
    for id in [&term, &killed] {
        h.backend
            .kill(id, None, libc::SIGKILL as u32, false)
            .unwrap();
        h.backend
            .kill(id, None, libc::SIGKILL as u32, true)
            .unwrap();
    }
    h.delete_and_check(&term, term_pid, &cgroup_of(&term_bundle));
    h.delete_and_check(&killed, kill_pid, &cgroup_of(&kill_bundle));
}

#[test]
fn pause_resume_pids_update_and_stats() {
    let h = Harness::new();
    let busy = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000";
    let bundle = h.bundle("busy", &["sh", "-c", busy], |_| {});
    let cgroup = cgroup_of(&bundle);
    let id = unique("busy");
    let pid = h.run(&id, &bundle, Stdio::default());
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "sleeper".into(),
            process: process(&["sleep", "1000"]),
            stdio: Stdio::default(),
        })
        .unwrap();
    let exec_pid = h.backend.start_exec(&id, "sleeper").unwrap();

    let pids = h.backend.pids(&id).unwrap();
    let listed: HashSet<(u32, Option<String>)> =
        pids.into_iter().map(|p| (p.pid, p.exec_id)).collect();
    assert!(listed.contains(&(pid, None)), "{listed:?}");
    assert!(
        listed.contains(&(exec_pid, Some("sleeper".into()))),
        "{listed:?}"
    );

    let freezer = Path::new("/sys/fs/cgroup/freezer")
        .join(cgroup.trim_start_matches('/'))
        .join("freezer.state");
    h.backend.pause(&id).unwrap();
    assert_eq!(fs::read_to_string(&freezer).unwrap().trim(), "FROZEN");
    h.backend.resume(&id).unwrap();
    assert_eq!(fs::read_to_string(&freezer).unwrap().trim(), "THAWED");

    let resources = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
        .build()
        .unwrap();
    h.backend.update(&id, &resources).unwrap();
    let pids_max = Path::new("/sys/fs/cgroup/pids")
        .join(cgroup.trim_start_matches('/'))
        .join("pids.max");
    assert_eq!(fs::read_to_string(pids_max).unwrap().trim(), "100");

    // The busy loop has used some CPU once the init has exec'd sleep. The
    // exec's short-lived intermediate process counts in pids.current until
    // the reaper has collected it (slower on a loaded machine): wait for it.
    wait_for_exec(pid, "sleep");
    let until = Instant::now() + DEADLINE;
    let stats = loop {
        let stats = h.backend.stats(&id).unwrap();
        if stats.pids_current == 2 || Instant::now() > until {
            break stats;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert!(stats.memory_limit_bytes > 0, "{stats:?}");
    assert!(
        stats.memory_working_set_bytes <= stats.memory_usage_bytes,
        "{stats:?}"
    );
    assert!(stats.page_faults > 0, "{stats:?}");
    assert_eq!(stats.pids_current, 2, "{stats:?}");
    assert_eq!(stats.pids_limit, 100, "{stats:?}");

    // Any other signal to all of a paused task leaves it paused (pending);
    // SIGKILL thaws it, and kills it.
    h.backend.pause(&id).unwrap();
    h.backend
        .kill(&id, None, libc::SIGTERM as u32, true)
        .unwrap();
    assert_eq!(fs::read_to_string(&freezer).unwrap().trim(), "FROZEN");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, true)
        .unwrap();
    // A SIGTERM that was fatal (no handler) when it was sent has already
    // decided the process's exit: it dies of the first fatal signal once
    // thawed.
    for exec_id in [None, Some("sleeper")] {
        let status = h.wait_exit(&id, exec_id).status;
        assert!([137, 143].contains(&status), "{exec_id:?}: {status}");
    }
    h.backend.delete(&id, Some("sleeper")).unwrap();
    h.delete_and_check(&id, pid, &cgroup);
}

#[test]
fn terminal_gets_a_pty_that_can_be_resized() {
    let h = Harness::new();
    let bundle = h.bundle("tty", &["sh", "-c", "tty; stty size"], |_| {});
    let stdout = mkfifo(&h.path("stdout"));
    let id = unique("tty");
    let pid = h.create(
        &id,
        &bundle,
        TaskKind::Sandbox,
        Stdio {
            stdout: stdout.clone(),
            terminal: true,
            ..Stdio::default()
        },
    );
    let out = read_fifo(Path::new(&stdout));
    h.backend.resize_pty(&id, None, 80, 24).unwrap();
    h.backend.start(&id).unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 0);
    let out = out.recv_timeout(DEADLINE).unwrap();
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(lines[1], "24 80", "{out:?}");
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));

    // Without a terminal there is nothing to resize.
    let plain_bundle = h.bundle("plain", &["true"], |_| {});
    let plain = unique("plain");
    h.create(&plain, &plain_bundle, TaskKind::Sandbox, Stdio::default());
    assert!(matches!(
        h.backend.resize_pty(&plain, None, 80, 24),
        Err(BackendError::InvalidArgument { .. })
    ));
}

#[test]
fn exec_with_a_terminal() {
    let h = Harness::new();
    let bundle = h.bundle("tty-host", &["sleep", "1000"], |_| {});
    let id = unique("tty-host");
    let pid = h.run(&id, &bundle, Stdio::default());
    let stdout = mkfifo(&h.path("exec-stdout"));
    let mut process = Process::default();
    process.set_args(Some(vec!["tty".into()]));
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "t".into(),
            process,
            stdio: Stdio {
                stdout: stdout.clone(),
                terminal: true,
                ..Stdio::default()
            },
        })
        .unwrap();
    h.backend.start_exec(&id, "t").unwrap();
    // Connected after the shim opened its end (at start_exec): whether or
    // not tty has already finished, its output waits in the FIFO.
    let out = read_fifo(Path::new(&stdout));
    assert_eq!(h.wait_exit(&id, Some("t")).status, 0);
    let out = out.recv_timeout(DEADLINE).unwrap();
    assert!(out.trim_end().starts_with("/dev/pts/"), "{out:?}");
    h.backend.delete(&id, Some("t")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn privileges_this_host_cannot_grant_are_dropped_not_fatal() {
    let h = Harness::new();
    let own_oom = fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    let own_oom: i32 = own_oom.trim().parse().unwrap();
    // SAFETY: PR_CAPBSET_READ has no side effects.
    let host_has_sys_resource = unsafe { libc::prctl(libc::PR_CAPBSET_READ, 24, 0, 0, 0) } == 1;

    let greedy = h.bundle("greedy", &["sleep", "1000"], |spec| {
        let mut process = spec.process().clone().unwrap();
        let caps: oci_spec::runtime::Capabilities = [Capability::Kill, Capability::SysResource]
            .into_iter()
            .collect();
        let mut all = LinuxCapabilities::default();
        all.set_bounding(Some(caps.clone()))
            .set_effective(Some(caps.clone()))
            .set_permitted(Some(caps.clone()))
            .set_inheritable(Some(caps.clone()))
            .set_ambient(Some(caps));
        process.set_capabilities(Some(all));
        spec.set_process(Some(process));
        set_oom(spec, -500);
    });
    let polite = h.bundle("polite", &["sleep", "1000"], |spec| set_oom(spec, 500));
    let (greedy_id, polite_id) = (unique("greedy"), unique("polite"));
    let greedy_pid = h.run(&greedy_id, &greedy, Stdio::default());
    let polite_pid = h.run(&polite_id, &polite, Stdio::default());
    wait_for_exec(greedy_pid, "sleep");
    wait_for_exec(polite_pid, "sleep");

    let cap_bnd =
        u64::from_str_radix(&proc_status_field(greedy_pid, "CapBnd").unwrap(), 16).unwrap();
    let sys_resource = cap_bnd & (1 << 24) != 0;
    let kill = cap_bnd & (1 << 5) != 0;
    assert!(kill, "CAP_KILL kept: {cap_bnd:#x}");
    assert_eq!(sys_resource, host_has_sys_resource, "CapBnd {cap_bnd:#x}");
    let greedy_oom: i32 = fs::read_to_string(format!("/proc/{greedy_pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if host_has_sys_resource {
        assert_eq!(greedy_oom, -500);
    } else {
        assert_eq!(greedy_oom, own_oom.max(-500));
    }
    assert_eq!(
        fs::read_to_string(format!("/proc/{polite_pid}/oom_score_adj"))
            .unwrap()
            .trim(),
        "500"
    );
    // libcontainer sets the score on the shim itself before forking: it is
    // put back.
    assert_eq!(
        fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim(),
        own_oom.to_string()
    );
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let h = Harness::new();
    let bundle = h.bundle("bad", &["sleep", "1000"], |_| {});
    let id = unique("bad");
    assert!(matches!(
        h.backend.start(&id),
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(
        h.backend.kill(&id, None, 9, false),
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(
        h.backend.pids(&id),
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(
        h.backend.stats(&id),
        Err(BackendError::NotFound(_))
    ));
    let binary_log = Stdio {
        stdout: "binary:///usr/bin/logger".into(),
        ..Stdio::default()
    };
    assert!(matches!(
        h.try_create(&id, &bundle, TaskKind::Sandbox, binary_log),
        Err(BackendError::InvalidArgument { .. })
    ));
    assert!(matches!(
        h.try_create(
            &id,
            &h.path("no-such-bundle"),
            TaskKind::Sandbox,
            Stdio::default()
        ),
        Err(BackendError::InvalidArgument { .. })
    ));
    assert!(matches!(
        h.try_create("../escape", &bundle, TaskKind::Sandbox, Stdio::default()),
        Err(BackendError::InvalidArgument { .. })
    ));
    let empty_args = h.bundle("empty", &[], |_| {});
    assert!(matches!(
        h.try_create(
            &unique("empty"),
            &empty_args,
            TaskKind::Sandbox,
            Stdio::default()
        ),
        Err(BackendError::InvalidArgument { .. })
    ));

    let pid = h.create(&id, &bundle, TaskKind::Sandbox, Stdio::default());
    assert!(matches!(
        h.try_create(&id, &bundle, TaskKind::Sandbox, Stdio::default()),
        Err(BackendError::AlreadyExists { .. })
    ));
    assert!(matches!(
        h.backend.kill(&id, None, 0xFFFF, false),
        Err(BackendError::InvalidArgument { .. })
    ));
    assert!(matches!(
        h.backend.start_exec(&id, "nope"),
        Err(BackendError::NotFound(_))
    ));
    h.backend.start(&id).unwrap();
    assert!(matches!(
        h.backend.start(&id),
        Err(BackendError::InvalidState { .. })
    ));
    assert!(matches!(
        h.backend.delete(&id, None),
        Err(BackendError::InvalidState { .. })
    ));
    let mut no_args = Process::default();
    no_args.set_args(Some(vec![]));
    assert!(matches!(
        h.backend.exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "x".into(),
            process: no_args,
            stdio: Stdio::default(),
        }),
        Err(BackendError::InvalidArgument { .. })
    ));
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn a_created_task_can_be_deleted_without_starting() {
    let h = Harness::new();
    let bundle = h.bundle("never", &["sleep", "1000"], |_| {});
    let id = unique("never");
    let pid = h.create(&id, &bundle, TaskKind::Sandbox, Stdio::default());
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn reaper_run_collects_output_without_racing_the_reaper() {
    require::root("shares the test process's reaper");
    let reaper = Reaper::global().unwrap();
    for _ in 0..20 {
        let out = reaper
            .run(std::process::Command::new("/bin/sh").args(["-c", "echo ok; echo e >&2; exit 4"]))
            .unwrap();
        assert_eq!(out.status.code(), Some(4));
        assert_eq!(out.stdout, b"ok\n");
        assert_eq!(out.stderr, b"e\n");
    }
}

#[test]
fn forged_internal_annotations_do_not_take_effect() {
    let h = Harness::new();
    // A network namespace the spec's author names, hoping the fork server
    // enters it for the build.
    let name = unique("caisson-forged");
    // Through the reaper: a plain `status()` races with it (ECHILD).
    let ip = |args: &[&str]| {
        Reaper::global()
            .unwrap()
            .run(std::process::Command::new("ip").args(args))
            .unwrap()
            .status
            .success()
    };
    assert!(ip(&["netns", "add", &name]));
    struct DelNetns(String);
    impl Drop for DelNetns {
        fn drop(&mut self) {
            if let Ok(reaper) = Reaper::global() {
                let _ =
                    reaper.run(std::process::Command::new("ip").args(["netns", "del", &self.0]));
            }
        }
    }
    let _netns = DelNetns(name.clone());
    let bundle = h.bundle("forged", &["sleep", "1000"], |spec| {
        use LinuxNamespaceType::*;
        // The host's network namespace (no entry).
        namespaces(
            spec,
            vec![new_ns(Mount), new_ns(Pid), new_ns(Ipc), new_ns(Uts)],
        );
        spec.set_annotations(Some(
            [
                ("io.caisson.fork-netns", format!("/run/netns/{name}")),
                ("io.caisson.exec-userns-caps", "{}".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
        ));
    });
    let id = unique("forged");
    let pid = h.run(&id, &bundle, Stdio::default());
    assert_eq!(ns_inode(pid, "net"), ns_inode(std::process::id(), "net"));
    // Neither kept in the spec libcontainer recorded...
    let config = fs::read_to_string(bundle.join("config.json")).unwrap();
    assert!(!config.contains("io.caisson."), "{config}");
    // ...nor taken by an exec (which a hardened marker would stop).
    let exec = ExecSpec {
        container_id: id.clone(),
        exec_id: "e".into(),
        process: process(&["true"]),
        stdio: Stdio::default(),
    };
    h.backend.exec(&exec).unwrap();
    h.backend.start_exec(&id, "e").unwrap();
    assert_eq!(h.wait_exit(&id, Some("e")).status, 0);
    h.backend.delete(&id, Some("e")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

/// A pod user namespace (`hostUsers: false`) is made from the sandbox's
/// own mappings: without them it is refused, leaving nothing; a container
/// asking for one in a pod that has none is refused too.
#[test]
fn a_user_namespace_without_mappings_or_pod_is_refused() {
    let h = Harness::new();
    let bundle = h.bundle("userns", &["true"], |spec| {
        use LinuxNamespaceType::*;
        namespaces(
            spec,
            vec![new_ns(User), new_ns(Mount), new_ns(Pid), new_ns(Network)],
        );
    });
    let id = unique("userns");
    let err = h
        .try_create(&id, &bundle, TaskKind::Sandbox, Stdio::default())
        .unwrap_err();
    match &err {
        BackendError::InvalidArgument { what, reason } => {
            assert!(what.contains("linux.uidMappings"), "{err}");
            assert!(reason.contains("uidMappings and gidMappings"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!h.backend.state_root().join(&id).exists());
    let ctr = unique("ctr");
    let err = h
        .try_create(
            &ctr,
            &bundle,
            TaskKind::Container {
                sandbox_id: "no-such-pod".into(),
            },
            Stdio::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::InvalidArgument { reason, .. } if reason.contains("has none in this shim")),
        "{err}"
    );
    assert!(!h.backend.state_root().join(&ctr).exists());
}

/// The process's environment with `PATH` left out (what containerd's CRI
/// builds for an image whose config has no `Env`).
fn without_path(process: &mut Process) {
    process.set_env(Some(vec!["HOME=/root".to_string(), "MARK=1".to_string()]));
}

#[test]
fn a_process_without_path_runs_as_under_runc_and_keeps_its_environment() {
    let h = Harness::new();
    // A bare name, looked up in the default PATH; the environment the
    // program sees is the spec's, without a PATH added.
    let script = "tr '\\0' '\\n' < /proc/$$/environ; echo \"argv0=$0\"";
    for (name, args) in [
        ("bare", vec!["sh", "-c", script]),
        ("absolute", vec!["/bin/sh", "-c", script]),
    ] {
        let bundle = h.bundle(name, &args, |spec| {
            let mut process = spec.process().clone().unwrap();
            without_path(&mut process);
            spec.set_process(Some(process));
        });
        let out = h.path(&format!("{name}.out"));
        let id = unique(name);
        let stdio = Stdio {
            stdout: file_uri(&out),
            stderr: file_uri(&out),
            ..Stdio::default()
        };
        let pid = h.run(&id, &bundle, stdio);
        let exit = h.wait_exit(&id, None);
        let out = fs::read_to_string(&out).unwrap();
        assert_eq!(exit.status, 0, "{name}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines.contains(&"HOME=/root") && lines.contains(&"MARK=1"),
            "{name}: {out}"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("PATH=")),
            "{name}: no PATH is added to the environment: {out}"
        );
        // argv[0] is the spec's, as runc execs it.
        assert!(
            lines.contains(&format!("argv0={}", args[0]).as_str()),
            "{name}: {out}"
        );
        h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    }

    // A program the default PATH does not have is a create-time error.
    let missing = h.bundle("missing", &["caisson-no-such-program"], |spec| {
        let mut process = spec.process().clone().unwrap();
        without_path(&mut process);
        spec.set_process(Some(process));
    });
    assert!(h
        .try_create(
            &unique("missing"),
            &missing,
            TaskKind::Sandbox,
            Stdio::default()
        )
        .is_err());

    // An exec without PATH too.
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());
    let out = h.path("exec.out");
    let mut exec_process = process(&["sh", "-c", script]);
    without_path(&mut exec_process);
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "e1".into(),
            process: exec_process,
            stdio: Stdio {
                stdout: file_uri(&out),
                stderr: file_uri(&out),
                ..Stdio::default()
            },
        })
        .unwrap();
    h.backend.start_exec(&id, "e1").unwrap();
    let exit = h.wait_exit(&id, Some("e1"));
    let out = fs::read_to_string(&out).unwrap();
    assert_eq!(exit.status, 0, "{out}");
    assert!(
        out.lines().any(|l| l == "MARK=1") && !out.lines().any(|l| l.starts_with("PATH=")),
        "{out}"
    );
    h.backend.delete(&id, Some("e1")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

/// A process left in a cgroup, and the cgroup (in the v1 devices hierarchy,
/// where libcgroups lists a cgroup's processes), gone when dropped.
struct Straggler {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Straggler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir(&self.dir);
    }
}

#[test]
fn delete_drains_a_cgroup_a_process_is_still_leaving_and_never_a_root() {
    use caisson_sandbox::host::cgroups;
    use std::os::unix::process::ExitStatusExt;
    require::root("makes a cgroup");
    let cgroup = format!("/{}", unique("caisson-test-drain"));
    let dir = Path::new("/sys/fs/cgroup/devices").join(&cgroup[1..]);
    fs::create_dir(&dir).unwrap();
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let mut s = Straggler { child, dir };
    fs::write(s.dir.join("cgroup.procs"), s.child.id().to_string()).unwrap();
    assert!(cgroups::drain(
        "t",
        Path::new(&cgroup),
        Duration::from_secs(5)
    ));
    assert_eq!(fs::read_to_string(s.dir.join("cgroup.procs")).unwrap(), "");
    // Killed: its status is ours to read, unless a backend's reaper in this
    // test binary (a child subreaper reaping every child) took it first.
    match s.child.wait() {
        Ok(status) => assert_eq!(status.signal(), Some(libc::SIGKILL)),
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::ECHILD), "{e}");
            let pid = s.child.id();
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} lives");
        }
    }
    // A hierarchy's root holds every process of the host (this test's too):
    // never drained.
    assert!(cgroups::drain("t", Path::new("/"), Duration::ZERO));
    assert!(cgroups::drain("t", Path::new(""), Duration::ZERO));
}
