//! A native pod's seccomp profile covers ExecSync processes too: libcontainer
//! 0.7 leaves `linux.seccomp` out of exec processes, and the shim's executor
//! loads the container's filter for them.

use caisson_tests::daemon::{container_config, Caissond};
use k8s_cri::v1 as cri;

fn seccomp_mode(status: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with("Seccomp:"))
        .map(|l| l.trim_start_matches("Seccomp:").trim().to_string())
        .unwrap_or_default()
}

#[test]
fn runtime_default_seccomp_applies_to_the_container_and_its_execs() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("seccomp");
    let pod = d.run_pod(&config);
    let mut filtered = container_config("filtered", &["sleep", "1000"]);
    filtered.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = d.create_started_container(&pod, &config, filtered);
    let init = std::fs::read_to_string(format!("/proc/{}/status", d.container_pid(&c))).unwrap();
    assert_eq!(
        seccomp_mode(&init),
        "2",
        "the container's init runs filtered"
    );
    let exec = d.exec(&c, &["cat", "/proc/self/status"]);
    assert_eq!(
        seccomp_mode(&exec),
        "2",
        "an ExecSync process must run under the same filter"
    );
    // The RuntimeDefault profile denies unshare without CAP_SYS_ADMIN.
    let denied = d.try_exec(&c, &["unshare", "-n", "true"], 10).unwrap();
    assert_ne!(denied.exit_code, 0, "unshare must be denied in an exec too");

    let unfiltered =
        d.create_started_container(&pod, &config, container_config("plain", &["sleep", "1000"]));
    let exec = d.exec(&unfiltered, &["cat", "/proc/self/status"]);
    assert_eq!(seccomp_mode(&exec), "0", "no profile asked: none applied");
}
