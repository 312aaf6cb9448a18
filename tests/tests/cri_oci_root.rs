//! A pod under an `oci` handler through caissond, once with Debian's runc
//! (`runtime_path = /usr/sbin/runc`) and once with its crun
//! (`/usr/bin/crun`, `hide_cgroup2`): the busybox container runs under
//! that runtime and exits with its code; ExecSync, UpdateContainerResources
//! and ContainerStats work. Needs root, runc and crun.

use std::time::Duration;

use caisson_tests::daemon::{container_config, wait_until, Caissond};
use caisson_tests::require;
use k8s_cri::v1 as cri;

#[test]
fn a_container_runs_under_runc_via_the_oci_handler() {
    runs_under("runc-oci", "/usr/sbin/runc", "runc");
}

#[test]
fn a_container_runs_under_crun_via_the_oci_handler() {
    runs_under("crun-oci", "/usr/bin/crun", "crun");
}

fn runs_under(handler: &str, runtime: &str, package: &str) {
    require::program(runtime, package);
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("oci");
    let pod = d.run_pod_with_handler(&config, handler);
    let mut rt = d.runtime();
    let sleeper = d.create_started_container(
        &pod,
        &config,
        container_config("sleeper", &["sleep", "1000"]),
    );
    assert_eq!(d.exec(&sleeper, &["echo", "hi"]), "hi\n");
    // ExecSync past its timeout kills the exec's process itself, not only
    // the runtime's CLI (which cannot forward SIGKILL): nothing is left
    // in the container but its init.
    let status = d
        .try_exec(&sleeper, &["sleep", "600"], 1)
        .expect_err("ExecSync past its timeout succeeded");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let uid = config.metadata.as_ref().unwrap().uid.clone();
    let procs = d.task_cgroup("pids", &uid, &sleeper).join("cgroup.procs");
    let left = wait_until("only the init is left", Duration::from_secs(20), || {
        let procs = std::fs::read_to_string(&procs).unwrap();
        (procs.lines().count() == 1).then_some(procs)
    });
    let init = left.trim();
    let cmdline = std::fs::read_to_string(format!("/proc/{init}/cmdline")).unwrap();
    let args: Vec<&str> = cmdline.trim_end_matches('\0').split('\0').collect();
    assert_eq!(args, ["sleep", "1000"], "the one left is the init");
    // UpdateContainerResources goes through the runtime's `update` and
    // lands in the cgroup it made; ContainerStats reads that cgroup.
    let resources = cri::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    d.ok(
        "UpdateContainerResources",
        d.rt.block_on(
            rt.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: sleeper.clone(),
                linux: Some(resources),
                ..Default::default()
            }),
        ),
    );
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(d.task_cgroup(controller, &uid, &sleeper).join(file))
            .unwrap_or_else(|e| panic!("{controller}/{file}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    let stats = d
        .ok(
            "ContainerStats",
            d.rt.block_on(rt.container_stats(cri::ContainerStatsRequest {
                container_id: sleeper.clone(),
            })),
        )
        .stats
        .unwrap();
    let memory = stats.memory.unwrap();
    assert!(memory.usage_bytes.unwrap().value > 0, "{memory:?}");
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.is_some());
    // The runtime keeps the container's state (runc's `state.json`, crun's
    // `status`) under the shim's `--root`, a directory `oci` in the shim's
    // state.
    let run_dir = d.pods_dir().parent().unwrap().to_path_buf();
    assert!(
        find_runc_state(&run_dir, &sleeper),
        "no oci/{sleeper}/ state under {}",
        run_dir.display()
    );
    let ctr = d.create_started_container(
        &pod,
        &config,
        container_config("exit5", &["sh", "-c", "exit 5"]),
    );
    let status = wait_until("the container exits", Duration::from_secs(20), || {
        let s = d.container_status(&ctr);
        (s.state == cri::ContainerState::ContainerExited as i32).then_some(s)
    });
    assert_eq!(status.exit_code, 5);
    d.remove_all_pods();
}

fn find_runc_state(dir: &std::path::Path, id: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if !path.is_dir() || path.is_symlink() {
            return false;
        }
        (path.ends_with(format!("oci/{id}"))
            && (path.join("state.json").exists() || path.join("status").exists()))
            || find_runc_state(&path, id)
    })
}
