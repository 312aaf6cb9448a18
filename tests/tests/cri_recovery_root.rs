//! caissond restarting after SIGKILL: containers keep running under their
//! shims, exits that happened while it was down are recorded, and pods whose
//! shim died are marked exited and cleaned up. Needs root.

use std::time::Duration;

use caisson_tests::daemon::{container_config, pid_alive, signal_in_mask, wait_until, Caissond};
use k8s_cri::v1 as cri;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn list_containers(d: &Caissond) -> Vec<cri::Container> {
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.list_containers(cri::ListContainersRequest::default()));
    let mut v = d.ok("ListContainers", r).containers;
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn wait_gone(pid: u32, what: &str) {
    wait_until(
        &format!("{what} ({pid}) to exit"),
        Duration::from_secs(15),
        || (!pid_alive(pid)).then_some(()),
    );
}

/// After the pod is removed: no processes, mounts or cgroups of the
/// daemon's, no pod dir, no records.
fn assert_all_gone(d: &Caissond, pod: &str) {
    let f = d.footprint();
    assert!(f.processes.is_empty(), "processes left: {:?}", f.processes);
    assert!(f.mounts.is_empty(), "mounts left: {:?}", f.mounts);
    assert!(f.cgroups.is_empty(), "cgroups left: {:?}", f.cgroups);
    assert!(!d.pods_dir().join(pod).exists());
    for kind in ["pods", "containers"] {
        let left: Vec<_> = std::fs::read_dir(d.state_dir().join(kind))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{kind} records left: {left:?}");
    }
}

#[test]
fn restart_keeps_running_containers_and_records_exits_missed_while_down() {
    let mut d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("survivor");
    let pod = d.run_pod(&config);
    let keep =
        d.create_started_container(&pod, &config, container_config("keep", &["sleep", "1000"]));
    let quit = d.create_started_container(
        &pod,
        &config,
        container_config(
            "quit",
            &["sh", "-c", "trap 'exit 5' TERM; while :; do sleep 1; done"],
        ),
    );
    let (pause, keep_pid, quit_pid) = (
        d.pod_pid(&pod),
        d.container_pid(&keep),
        d.container_pid(&quit),
    );
    let term = Signal::SIGTERM as i32;
    wait_until("the shell's TERM trap", Duration::from_secs(10), || {
        signal_in_mask(quit_pid, "SigCgt", term).then_some(())
    });
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 1, "{:?}", d.processes());
    let before = list_containers(&d);
    // The pods' mounts are below mount points of caissond's own.
    let standing = d.standing_mounts();
    let pinned = || {
        standing
            .iter()
            .map(|s| Caissond::mounts_at(s))
            .collect::<Vec<_>>()
    };
    assert_eq!(pinned(), [1, 1], "{standing:?}");

    // caissond dies; while it is down, one container exits with code 5.
    d.sigkill();
    kill(Pid::from_raw(quit_pid as i32), Signal::SIGTERM).unwrap();
    wait_gone(quit_pid, "the quitting container");
    assert!(pid_alive(pause) && pid_alive(keep_pid) && pid_alive(shims[0]));
    d.respawn();

    let after = list_containers(&d);
    assert_eq!(
        after.iter().map(|c| &c.id).collect::<Vec<_>>(),
        before.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
    let status = d.container_status(&keep);
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(d.container_pid(&keep), keep_pid);
    assert!(pid_alive(keep_pid));
    let status = d.container_status(&quit);
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (5, "Error"),
        "{status:?}"
    );
    assert!(status.finished_at >= status.started_at, "{status:?}");
    let pod_status = d.pod_status(&pod);
    assert_eq!(pod_status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(d.pod_pid(&pod), pause);
    assert_eq!(d.shim_pids(), shims, "the same shim serves the pod");

    // The reconnected shim works: exec, exit events, new containers, stop.
    assert_eq!(d.exec(&keep, &["echo", "reconnected"]), "reconnected\n");
    let late = d.create_started_container(
        &pod,
        &config,
        container_config("late", &["sh", "-c", "exit 9"]),
    );
    let status = d.wait_exited(&late, Duration::from_secs(20));
    assert_eq!(status.exit_code, 9);
    d.stop_container(&keep, 10);
    assert_eq!(d.container_status(&keep).exit_code, 143);
    assert!(!pid_alive(keep_pid));

    // And a second restart changes nothing recorded.
    d.restart_after_sigkill();
    assert_eq!(d.container_status(&quit).exit_code, 5);
    assert_eq!(d.container_status(&keep).exit_code, 143);
    assert_eq!(d.container_status(&late).exit_code, 9);
    // SIGTERM with a pod running: its mount points stay for the next
    // caissond, which takes them as they are (one mount each, not two).
    d.terminate();
    assert_eq!(pinned(), [1, 1], "{standing:?}");
    d.respawn();
    assert_eq!(pinned(), [1, 1], "{standing:?}");

    d.stop_pod(&pod);
    d.remove_pod(&pod);
    wait_gone(shims[0], "the shim");
    wait_gone(pause, "pause");
    assert_all_gone(&d, &pod);
    // No pod left: stopping unmounts them.
    d.terminate();
    assert_eq!(pinned(), [0, 0], "{standing:?}");
}

#[test]
fn restart_after_the_shim_died_marks_containers_exited_and_cleans_up() {
    let mut d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("orphaned");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    let created = d.create_container(&pod, &config, container_config("new", &["sleep", "1"]));
    let (pause, pid) = (d.pod_pid(&pod), d.container_pid(&c));
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 1, "{:?}", d.processes());

    d.sigkill();
    kill(Pid::from_raw(shims[0] as i32), Signal::SIGKILL).unwrap();
    wait_gone(shims[0], "the shim");
    d.respawn();

    // The shim's tasks cannot be trusted to run on: they are stopped, and
    // recorded as exited with a reason.
    for id in [&c, &created] {
        let status = d.container_status(id);
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerExited as i32,
            "{status:?}"
        );
        assert_eq!(status.exit_code, 137, "{status:?}");
        assert!(
            !status.reason.is_empty() && status.message.contains("shim"),
            "{status:?}"
        );
    }
    assert_eq!(
        d.pod_status(&pod).state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    wait_gone(pid, "the container");
    wait_gone(pause, "pause");

    // kubelet then stops and removes the pod; nothing is left.
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let mut rt = d.runtime();
    let pods = d.ok(
        "ListPodSandbox",
        d.rt.block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())),
    );
    assert!(pods.items.is_empty(), "{:?}", pods.items);
    assert!(list_containers(&d).is_empty());
    assert_all_gone(&d, &pod);
}
