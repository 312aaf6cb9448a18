//! A pod under the `hardened` runtime handler through caissond: it runs,
//! and an ExecSync in its container sees the syscall filter, no_new_privs
//! and no capabilities in /proc/self/status. Needs root.

use caisson_tests::daemon::{container_config, Caissond};
use k8s_cri::v1 as cri;

#[test]
fn a_hardened_pod_runs_with_seccomp_and_no_capabilities() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("hardened");
    let mut rt = d.runtime();
    let pod =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "hardened".into(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", d.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let ctr = d.create_started_container(
        &pod,
        &config,
        container_config("sleeper", &["sleep", "1000"]),
    );
    let status = d.exec(&ctr, &["cat", "/proc/self/status"]);
    for want in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000"] {
        assert!(status.contains(want), "{want:?} missing in:\n{status}");
    }
    // A denied syscall fails with EPERM inside the pod.
    let out = d.try_exec(&ctr, &["unshare", "-m", "true"], 10).unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.remove_all_pods();
}
