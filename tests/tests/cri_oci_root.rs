//! A pod under an `oci` handler (`runtime_path = /usr/sbin/runc`) through
//! caissond: its container runs under Debian's runc and exits with its
//! code; an ExecSync works. Needs root and runc.

use std::time::Duration;

use caisson_tests::daemon::{container_config, wait_until, Caissond};
use caisson_tests::require;
use k8s_cri::v1 as cri;

#[test]
fn a_container_runs_under_runc_via_the_oci_handler() {
    require::program("/usr/sbin/runc", "runc");
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("oci");
    let mut rt = d.runtime();
    let pod =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "runc-oci".into(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", d.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let sleeper = d.create_started_container(
        &pod,
        &config,
        container_config("sleeper", &["sleep", "1000"]),
    );
    assert_eq!(d.exec(&sleeper, &["echo", "hi"]), "hi\n");
    // runc keeps the container's state (state.json) under the shim's
    // `--root`, a directory `oci` in the shim's state.
    let run_dir = d.pods_dir().parent().unwrap().to_path_buf();
    assert!(
        find_runc_state(&run_dir, &sleeper),
        "no oci/{sleeper}/state.json under {}",
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
        (path.ends_with(format!("oci/{id}")) && path.join("state.json").exists())
            || find_runc_state(&path, id)
    })
}
