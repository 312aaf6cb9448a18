//! A pod under gVisor through caissond: Debian's `runsc` (gVisor
//! 2022-12) as an `oci` handler, with the handler options the commented
//! example in `shim/caisson.toml` gives (`--platform=ptrace`, the only
//! platform that starts here: KVM hangs on this PVM host and systrap is
//! newer than this runsc; `--network=host`, because runsc's netstack
//! refuses every network namespace on kernels that namespace
//! `net.core.rmem_default`, its test for the host's). The pod's containers
//! run in one gVisor sandbox (runsc reads the `io.kubernetes.cri.*`
//! annotations): the Sentry and the Gofers are host processes, the
//! container's are not. RunPodSandbox, CreateContainer, StartContainer,
//! ExecSync, the container log, exit codes (through `runsc wait`),
//! StopContainer, StopPodSandbox and RemovePodSandbox, and nothing left
//! behind. Needs root and Debian's runsc.

use std::time::Duration;

use caisson_tests::daemon::{cmdline, container_config, wait_until, Caissond};
use caisson_tests::require;
use k8s_cri::v1 as cri;

/// What `shim/caisson.toml`'s commented example sets up.
const RUNSC_HANDLER: &str = r#"[runtimes.handlers.runsc]
backend = "oci"
[runtimes.handlers.runsc.options]
runtime_path = "/usr/bin/runsc"
runtime_args = ["--platform=ptrace", "--network=host"]
"#;

#[test]
fn a_pod_runs_under_gvisor_via_the_runsc_handler() {
    require::program("/usr/bin/runsc", "runsc");
    let d = Caissond::start_edited("", |config| format!("{config}\n{RUNSC_HANDLER}"));
    d.import_busybox();
    let baseline = d.footprint();

    let config = d.pod_config("gvisor");
    let pod = d.run_pod_with_handler(&config, "runsc");
    // The pod's sandbox is a gVisor Sentry with its Gofer beside it.
    let sentries = runsc_pids(&d, "runsc-sandbox");
    assert_eq!(sentries.len(), 1, "{:?}", d.processes());
    let sentry_cmd = d.processes()[&sentries[0]].clone();
    assert!(sentry_cmd.contains(&pod), "{sentry_cmd}");
    assert!(!runsc_pids(&d, "runsc-gofer").is_empty());

    let mut sleeper_config = container_config(
        "sleeper",
        &["sh", "-c", "echo hello from gvisor; exec sleep 31415"],
    );
    sleeper_config.log_path = "sleeper.log".into();
    let sleeper = d.create_started_container(&pod, &config, sleeper_config);
    // The container is in the pod's sandbox, not in a Sentry of its own.
    assert_eq!(runsc_pids(&d, "runsc-sandbox"), sentries);

    // Inside, the kernel is gVisor's: its boot messages and the version it
    // reports, not the host's.
    let dmesg = d.exec(&sleeper, &["dmesg"]);
    assert!(dmesg.contains("Starting gVisor"), "dmesg: {dmesg}");
    let version = d.exec(&sleeper, &["cat", "/proc/version"]);
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(!version.contains(host_release.trim()), "{version}");
    assert!(d.exec(&sleeper, &["ps"]).contains("sleep 31415"));
    // ... and its processes are the Sentry's tasks, not host processes.
    let host_sleep: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| cmdline(e.file_name().to_str()?.parse().ok()?))
        .filter(|c| c == "sleep 31415")
        .collect();
    assert!(
        host_sleep.is_empty(),
        "the container's sleep is a host process"
    );

    // The container's output reaches its CRI log through the shim.
    let log = d.log_dir().join("gvisor/sleeper.log");
    wait_until("the container's log line", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(" stdout F hello from gvisor").then_some(())
    });

    // Exit codes come from `runsc wait` (every task's pid is the Sentry's).
    let exit7 = d.create_started_container(
        &pod,
        &config,
        container_config("exit7", &["sh", "-c", "exit 7"]),
    );
    assert_eq!(d.wait_exited(&exit7, Duration::from_secs(30)).exit_code, 7);
    let status = d.container_status(&sleeper);
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);

    // StopContainer: the Sentry delivers SIGTERM to the container's init.
    d.stop_container(&sleeper, 10);
    let status = d.container_status(&sleeper);
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(
        runsc_pids(&d, "runsc-sandbox"),
        sentries,
        "the pod's sandbox outlives its container"
    );

    d.stop_pod(&pod);
    d.remove_pod(&pod);
    // Nothing of the pod is left: no process (Sentry, Gofers, `runsc
    // wait`), mount, cgroup or file; runsc's own state dir under the
    // shim's (made with the first pod, as for every handler) is empty.
    let runsc_root = d
        .pods_dir()
        .parent()
        .unwrap()
        .join("shim/state/caisson/oci");
    let left: Vec<_> = std::fs::read_dir(&runsc_root)
        .unwrap_or_else(|e| panic!("{}: {e}", runsc_root.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "runsc's state left: {left:?}");
    let mut after = d.footprint();
    after.paths.retain(|p| !p.starts_with("run/shim"));
    assert!(
        after == baseline,
        "left behind after RemovePodSandbox:\n{}",
        after.diff(&baseline)
    );
}

/// The daemon's processes whose command line starts with `name` (runsc
/// names its Sentry `runsc-sandbox` and its Gofers `runsc-gofer`).
fn runsc_pids(d: &Caissond, name: &str) -> Vec<u32> {
    d.processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.split(' ').next() == Some(name))
        .map(|(pid, _)| pid)
        .collect()
}
