//! A pod's shim killed while caissond runs: caissond notices (its
//! containers EXITED with an exit event, the pod NOTREADY), and removing
//! the pod leaves nothing behind (no pause, no cgroups, no mounts). Needs
//! root.

use std::time::Duration;

use caisson_tests::daemon::{container_config, pid_alive, wait_until, Caissond};
use k8s_cri::v1 as cri;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn wait_gone(pid: u32, what: &str) {
    wait_until(
        &format!("{what} ({pid}) to exit"),
        Duration::from_secs(15),
        || (!pid_alive(pid)).then_some(()),
    );
}

/// Runs a pod under `handler` with a running container, SIGKILLs its shim
/// and checks what caissond reports and what removal leaves.
fn kill_the_shim_then_remove_the_pod(handler: &str) {
    let d = Caissond::start("");
    d.import_busybox();
    // A pod run and removed the ordinary way first: what stays after one
    // (the shims' run dir, the user namespace pool) is the baseline.
    let ordinary = d.pod_config("ordinary");
    let pod = d.run_pod_with_handler(&ordinary, handler);
    d.create_started_container(&pod, &ordinary, container_config("c", &["sleep", "1000"]));
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let baseline = d.footprint();

    let config = d.pod_config("shim-death");
    let pod = d.run_pod_with_handler(&config, handler);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    let (pause, pid) = (d.pod_pid(&pod), d.container_pid(&c));
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 1, "{:?}", d.processes());

    let mut rt = d.runtime();
    let mut events = d.ok(
        "GetContainerEvents",
        d.rt.block_on(rt.get_container_events(cri::GetEventsRequest {})),
    );
    kill(Pid::from_raw(shims[0] as i32), Signal::SIGKILL).unwrap();

    // caissond notices, without a restart.
    let exited = cri::ContainerState::ContainerExited as i32;
    let status = wait_until(
        "ContainerStatus EXITED after the shim was killed",
        Duration::from_secs(10),
        || {
            let s = d.container_status(&c);
            (s.state == exited).then_some(s)
        },
    );
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert!(
        status.reason.contains("Shim") && status.message.contains("shim"),
        "{status:?}"
    );
    wait_until(
        "PodSandboxStatus NOTREADY after the shim was killed",
        Duration::from_secs(10),
        || (d.pod_status(&pod).state == cri::PodSandboxState::SandboxNotready as i32).then_some(()),
    );
    let stopped = cri::ContainerEventType::ContainerStoppedEvent as i32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next =
            d.rt.block_on(async { tokio::time::timeout_at(deadline, events.message()).await });
        match next {
            Ok(Ok(Some(e))) if e.container_id == c && e.container_event_type == stopped => break,
            Ok(Ok(Some(_))) => {}
            other => panic!("no CONTAINER_STOPPED_EVENT for {c}: {other:?}"),
        }
    }
    // What the shim ran is stopped with it.
    wait_gone(pid, "the container");
    wait_gone(pause, "pause");

    // kubelet stops and removes the pod: both succeed, nothing is left.
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let pods = d.ok(
        "ListPodSandbox",
        d.rt.block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())),
    );
    assert!(pods.items.is_empty(), "{:?}", pods.items);
    let mut after = d.footprint();
    // A killed shim's log stays for debugging, as a crashed shim's does.
    after
        .paths
        .retain(|p| !(p.starts_with("run/shim/log/") && p.ends_with(".log")));
    assert!(
        after == baseline,
        "left behind after the pod was removed:\n{}",
        after.diff(&baseline)
    );
}

#[test]
fn a_killed_shim_is_noticed_and_its_native_pod_removed_without_leftovers() {
    kill_the_shim_then_remove_the_pod("");
}

#[test]
fn a_killed_shim_is_noticed_and_its_hardened_pod_removed_without_leftovers() {
    kill_the_shim_then_remove_the_pod("hardened");
}
