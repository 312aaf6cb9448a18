//! Containers through caissond: ExecSync (streams, exit codes, timeouts
//! that leave nothing running), StopContainer (SIGTERM, the image's
//! StopSignal, SIGKILL after the timeout), an open stdin for `stdin: true`,
//! and the user ContainerStatus reports. Needs root. (CDI devices:
//! `cri_cdi_root.rs`.)

use std::time::{Duration, Instant};

use caisson_tests::daemon::{
    cmdline, container_config, pid_alive, proc_status_field, signal_in_mask, wait_until,
    with_pid_mode, Caissond,
};
use caisson_tests::fixtures::busybox_image;
use k8s_cri::v1 as cri;

/// An upper bound on RPCs that should take a few seconds: it catches a hang,
/// with room for a node slowed by parallel tests.
const HANG: Duration = Duration::from_secs(20);

/// The pids in a container's cgroup (pids controller).
fn cgroup_procs(d: &Caissond, pod_name: &str, container: &str) -> Vec<u32> {
    let path = d
        .task_cgroup("pids", &format!("uid-{pod_name}"), container)
        .join("cgroup.procs");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn exec_sync_separates_streams_and_reports_exit_codes() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("exec");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));

    let cases: &[(&[&str], &str, &str, i32)] = &[
        (
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            "out\n",
            "err\n",
            3,
        ),
        (&["true"], "", "", 0),
        (&["false"], "", "", 1),
        (&["sh", "-c", "echo -n partial"], "partial", "", 0),
        (&["sh", "-c", "echo $HOSTNAME; pwd"], "exec\n/\n", "", 0),
        (&["sh", "-c", "echo dying; kill -9 $$"], "dying\n", "", 137),
        (&["sh", "-c", "printf 'a\\0b' >&2"], "", "a\0b", 0),
    ];
    for (cmd, stdout, stderr, code) in cases {
        let out = d
            .try_exec(&c, cmd, 10)
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}\n{}", d.log_tail()));
        assert_eq!(
            (
                String::from_utf8_lossy(&out.stdout).as_ref(),
                String::from_utf8_lossy(&out.stderr).as_ref(),
                out.exit_code
            ),
            (*stdout, *stderr, *code),
            "ExecSync {cmd:?}"
        );
    }
    // A megabyte of output arrives whole.
    let out = d
        .try_exec(&c, &["head", "-c", "1048576", "/dev/zero"], 10)
        .unwrap();
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout.iter().all(|b| *b == 0));
    // A program that does not exist fails the call (as with containerd),
    // saying which program.
    let err = d
        .try_exec(&c, &["/no/such/program"], 10)
        .expect_err("ExecSync of a missing program");
    assert!(err.message().contains("/no/such/program"), "{err:?}");
    // Execs leave no processes and no output dirs behind. (The failed
    // exec's process reports its error while it is still exiting: under
    // load it can be seen in the cgroup for a moment, with no cmdline.)
    let pid = d.container_pid(&c);
    let extra = || -> Vec<String> {
        cgroup_procs(&d, "exec", &c)
            .into_iter()
            .filter(|p| *p != pid)
            .map(|p| format!("{p} {:?} {:?}", cmdline(p), proc_status_field(p, "State")))
            .collect()
    };
    let what = format!("the exec'd processes {:?} to be gone", extra());
    wait_until(&what, Duration::from_secs(10), || {
        extra().is_empty().then_some(())
    });
    let leftovers: Vec<_> = std::fs::read_dir(d.pods_dir().join(&pod))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-"))
        .collect();
    assert!(leftovers.is_empty(), "exec output dirs left: {leftovers:?}");
}

#[test]
fn exec_sync_timeout_kills_the_exec_and_keeps_the_container() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("slow");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    let container_pid = d.container_pid(&c);

    let started = Instant::now();
    let (result, exec_pid) = std::thread::scope(|s| {
        let exec = s.spawn(|| d.try_exec(&c, &["sleep", "4321"], 2));
        // While it runs, the exec'd process is in the container's cgroup.
        let pid = wait_until("the exec'd sleep to run", Duration::from_secs(10), || {
            d.pids_with_cmdline("sleep 4321").first().copied()
        });
        assert!(
            cgroup_procs(&d, "slow", &c).contains(&pid),
            "exec pid {pid} is not in the container's cgroup"
        );
        (exec.join().unwrap(), pid)
    });
    let elapsed = started.elapsed();
    let status = result.expect_err("ExecSync past its timeout succeeded");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("timed out"), "{status:?}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < HANG,
        "DeadlineExceeded after {elapsed:?} for a 2 s timeout"
    );
    // The exec'd process is gone (not left running), the container is not.
    assert!(
        !pid_alive(exec_pid),
        "the timed-out exec {exec_pid} still runs"
    );
    assert!(d.pids_with_cmdline("sleep 4321").is_empty());
    assert_eq!(cgroup_procs(&d, "slow", &c), vec![container_pid]);
    assert_eq!(
        d.container_status(&c).state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(d.exec(&c, &["echo", "still here"]), "still here\n");
}

#[test]
fn stop_container_escalates_to_sigkill_after_the_timeout() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("stubborn");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(
        &pod,
        &config,
        container_config("c", &["sh", "-c", "trap '' TERM; sleep 1000 & wait"]),
    );
    let pid = d.container_pid(&c);
    wait_until(
        "the shell to ignore SIGTERM",
        Duration::from_secs(10),
        || signal_in_mask(pid, "SigIgn", libc_sigterm()).then_some(()),
    );
    wait_until("the background sleep", Duration::from_secs(10), || {
        (cgroup_procs(&d, "stubborn", &c).len() == 2).then_some(())
    });
    let before = d.container_status(&c);

    let started = Instant::now();
    d.stop_container(&c, 2);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < HANG,
        "StopContainer(timeout 2) of a container ignoring SIGTERM took {elapsed:?}"
    );
    let status = d.container_status(&c);
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(status.reason, "Error", "{status:?}");
    assert!(status.finished_at > before.started_at, "{status:?}");
    // Every process of the container got the SIGKILL, not only its init
    // (the others may still be dying when the init's exit is reported).
    assert!(!pid_alive(pid));
    wait_until(
        "every process of the container to die",
        Duration::from_secs(10),
        || {
            (cgroup_procs(&d, "stubborn", &c).is_empty()
                && d.pids_with_cmdline("sleep 1000").is_empty())
            .then_some(())
        },
    );
    // Stopping again is fine and changes nothing.
    d.stop_container(&c, 2);
    assert_eq!(d.container_status(&c).exit_code, 137);
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

#[test]
fn stop_container_sends_sigterm_or_the_images_stop_signal() {
    let d = Caissond::start("");
    d.import_busybox();
    let mut stopsig = busybox_image();
    stopsig.name = Some("docker.io/library/stopsig:latest".into());
    stopsig.config["StopSignal"] = "SIGINT".into();
    d.import_image(&stopsig);
    let config = d.pod_config("polite");
    let pod = d.run_pod(&config);

    // SIGTERM kills `sleep` (not PID 1 in the pod's PID namespace): 128+15.
    let term =
        d.create_started_container(&pod, &config, container_config("term", &["sleep", "1000"]));
    let started = Instant::now();
    d.stop_container(&term, 30);
    // Well short of the 30 s grace: the signal ended it, not SIGKILL.
    assert!(started.elapsed() < HANG, "{:?}", started.elapsed());
    let status = d.container_status(&term);
    assert_eq!(
        (status.state, status.exit_code),
        (cri::ContainerState::ContainerExited as i32, 143)
    );

    // The image says SIGINT: 128+2.
    let mut int = container_config("int", &["sleep", "1001"]);
    int.image = Some(cri::ImageSpec {
        image: "stopsig".into(),
        ..Default::default()
    });
    let int = d.create_started_container(&pod, &config, int);
    let started = Instant::now();
    d.stop_container(&int, 30);
    assert!(started.elapsed() < HANG, "{:?}", started.elapsed());
    let status = d.container_status(&int);
    assert_eq!(
        (status.state, status.exit_code),
        (cri::ContainerState::ContainerExited as i32, 130)
    );

    // Timeout 0: SIGKILL at once.
    let kill = d.create_started_container(
        &pod,
        &config,
        container_config("kill", &["sh", "-c", "trap '' TERM INT; sleep 1002 & wait"]),
    );
    d.stop_container(&kill, 0);
    assert_eq!(d.container_status(&kill).exit_code, 137);

    // A container that exits on its own keeps its exit code and reason.
    let done = d.create_started_container(&pod, &config, container_config("done", &["true"]));
    let status = d.wait_exited(&done, Duration::from_secs(10));
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    d.stop_container(&done, 2);
    assert_eq!(d.container_status(&done).exit_code, 0);
}

/// Waits until `pid` sleeps reading its stdin (`fd0` is what
/// `/proc/<pid>/fd/0` must point to), then checks for a second that the
/// container keeps RUNNING with the process still blocked there.
fn assert_blocked_in_stdin(d: &Caissond, c: &str, pid: u32, fd0: impl Fn(&str) -> bool) {
    let what = format!("container {c} (pid {pid}) to block reading its stdin");
    wait_until(&what, Duration::from_secs(10), || {
        let state = proc_status_field(pid, "State").unwrap_or_default();
        let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        (state.starts_with('S') && fd0(&stdin)).then_some(())
    });
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let status = d.container_status(c);
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "a stdin container must wait for input, not see EOF: {status:?}\n{}",
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pid_alive(pid), "{pid} exited");
    assert!(
        proc_status_field(pid, "State")
            .unwrap_or_default()
            .starts_with('S'),
        "{pid} no longer sleeps"
    );
}

#[test]
fn stdin_containers_get_an_open_stdin() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("stdin");
    let pod = d.run_pod(&config);
    let reader = |name: &str, stdin: bool, tty: bool| cri::ContainerConfig {
        stdin,
        stdin_once: stdin,
        tty,
        log_path: format!("{name}.log"),
        ..container_config(name, &["sh", "-c", "read x; echo got"])
    };

    // Without stdin, `read` sees EOF at once.
    let closed = d.create_started_container(&pod, &config, reader("closed", false, false));
    let status = d.wait_exited(&closed, HANG);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains(" stdout F got"), "{log:?}");

    // With stdin, it waits on a FIFO in the container's own dir.
    let open = d.create_started_container(&pod, &config, reader("open", true, false));
    let fifo = d
        .pods_dir()
        .join(&pod)
        .join("containers")
        .join(&open)
        .join("stdin");
    let fifo_name = fifo.display().to_string();
    assert_blocked_in_stdin(&d, &open, d.container_pid(&open), |fd0| fd0 == fifo_name);
    let meta = std::fs::metadata(&fifo).unwrap_or_else(|e| panic!("{}: {e}", fifo.display()));
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(meta.file_type().is_fifo(), "{}", fifo.display());
        assert_eq!(
            (meta.mode() & 0o777, meta.uid()),
            (0o600, 0),
            "{}",
            fifo.display()
        );
    }

    // With a terminal too: it reads the pty, fed from the FIFO.
    let tty = d.create_started_container(&pod, &config, reader("tty", true, true));
    assert_blocked_in_stdin(&d, &tty, d.container_pid(&tty), |fd0| {
        fd0.starts_with("/dev/pts/")
    });

    // The FIFO goes with the container.
    d.stop_container(&open, 0);
    let mut rt = d.runtime();
    d.ok(
        "RemoveContainer",
        d.rt.block_on(rt.remove_container(cri::RemoveContainerRequest {
            container_id: open.clone(),
        })),
    );
    assert!(!fifo.exists(), "{} outlived its container", fifo.display());
}

#[test]
fn container_status_reports_the_process_user() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("users");
    let pod = d.run_pod(&config);
    let mut app = container_config("app", &["sleep", "1000"]);
    app.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 2000 }),
            supplemental_groups: vec![3000],
            ..Default::default()
        }),
        ..Default::default()
    });
    let app = d.create_started_container(&pod, &config, app);
    let root =
        d.create_started_container(&pod, &config, container_config("root", &["sleep", "1000"]));

    for (c, want) in [
        (&app, (1000, 2000, vec![2000, 3000])),
        (&root, (0, 0, vec![0])),
    ] {
        let user = d
            .container_status(c)
            .user
            .and_then(|u| u.linux)
            .unwrap_or_else(|| panic!("ContainerStatus of {c} has no user"));
        let mut groups = user.supplemental_groups.clone();
        groups.sort_unstable();
        assert_eq!((user.uid, user.gid, groups.clone()), want, "{c}");
        // What the process really runs as, by `id` inside the container.
        let id = |flag: &str| -> Vec<i64> {
            d.exec(c, &["id", flag])
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect()
        };
        assert_eq!(id("-u"), [user.uid], "{c}");
        assert_eq!(id("-g"), [user.gid], "{c}");
        let mut real = id("-G");
        real.sort_unstable();
        real.dedup();
        assert_eq!(real, groups, "{c}: `id -G` against ContainerStatus.user");
    }
}

/// A container in its pod's PID namespace whose init exits takes what it
/// left running with it (containerd's runc shim does the same): on native
/// and hardened, an orphaned background process leaves the pod's process
/// list once the container has exited.
#[test]
fn what_an_init_leaves_in_the_pods_pid_namespace_dies_with_it() {
    let d = Caissond::start("");
    d.import_busybox();
    for handler in ["runc", "hardened"] {
        let config = d.pod_config(&format!("orphans-{handler}"));
        let pod = d.run_pod_with_handler(&config, handler);
        let in_pod_pidns = |c: cri::ContainerConfig| with_pid_mode(c, cri::NamespaceMode::Pod);
        let watcher = d.create_started_container(
            &pod,
            &config,
            in_pod_pidns(container_config("watcher", &["sleep", "100000"])),
        );
        let parent = d.create_started_container(
            &pod,
            &config,
            in_pod_pidns(container_config(
                "parent",
                &["sh", "-c", "sleep 4243 & sleep 2"],
            )),
        );
        let listed = |d: &Caissond| d.exec(&watcher, &["ps", "-o", "args"]);
        assert!(
            listed(&d).contains("sleep 4243"),
            "{handler}: {}",
            listed(&d)
        );
        assert_eq!(d.wait_exited(&parent, Duration::from_secs(30)).exit_code, 0);
        wait_until(
            &format!("{handler}: the orphaned sleep to be gone"),
            Duration::from_secs(10),
            || (!listed(&d).contains("sleep 4243")).then_some(()),
        );
        d.stop_pod(&pod);
        d.remove_pod(&pod);
    }
}
