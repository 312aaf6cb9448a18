//! Pods under the `microvm` handler through caissond: each pod in its own
//! QEMU virtual machine (TCG on these machines), its containers made in the
//! guest by caisson-agent. Needs root, QEMU and the guest (`make
//! microvm-deps microvm-guest`); a missing one fails the test naming it.
//!
//! The tests take turns (one VM at a time): two cores run TCG guests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caisson_tests::daemon::{
    container_config, wait_until, with_pid_mode, with_resources, Caissond, MI,
};
use caisson_tests::microvm::{
    assert_nothing_left, host_processes_with, mounts_under, pod_mounts, qemu_of, run_dir, turn,
    vm_dirs,
};
use caisson_tests::require;
use k8s_cri::v1 as cri;

#[test]
fn a_microvm_pod_runs_its_containers_in_the_guests_kernel() {
    let guest_release = require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vm1");
    let started = Instant::now();
    let pod = d.run_pod_with_handler(&config, "microvm");
    eprintln!("RunPodSandbox (microvm) took {:?}", started.elapsed());
    let c1 = d.create_started_container(
        &pod,
        &config,
        container_config("one", &["sleep", "1234567"]),
    );
    // The guest's kernel, not the host's.
    let uname = d.exec(&c1, &["uname", "-r"]);
    let host = nix_uname();
    assert_eq!(uname.trim(), guest_release);
    assert_ne!(uname.trim(), host, "the container sees the host's kernel");
    // The host does not see the container's process; it sees QEMU, in the
    // pod's cgroup.
    assert_eq!(
        host_processes_with("sleep 1234567"),
        Vec::<(u32, String)>::new(),
        "the container's process is visible on the host"
    );
    let qemu = qemu_of(&pod);
    assert_eq!(qemu.len(), 1, "one QEMU for the pod: {qemu:?}");
    let uid = config.metadata.as_ref().unwrap().uid.clone();
    let pod_procs =
        std::fs::read_to_string(d.task_cgroup("pids", &uid, &pod).join("cgroup.procs")).unwrap();
    assert!(
        pod_procs.lines().any(|l| l.trim() == qemu[0].to_string()),
        "QEMU {} is not in the sandbox's cgroup: {pod_procs:?}",
        qemu[0]
    );
    // A second container shares the guest pod's UTS, IPC and network
    // namespaces with the first.
    let c2 = d.create_started_container(
        &pod,
        &config,
        container_config("two", &["sleep", "7654321"]),
    );
    for ns in ["uts", "ipc", "net"] {
        let path = format!("/proc/self/ns/{ns}");
        let a = d.exec(&c1, &["readlink", &path]);
        let b = d.exec(&c2, &["readlink", &path]);
        assert_eq!(a, b, "{ns} namespace differs between the pod's containers");
    }
    assert_ne!(
        d.exec(&c1, &["readlink", "/proc/self/ns/mnt"]),
        d.exec(&c2, &["readlink", "/proc/self/ns/mnt"]),
        "containers share a mount namespace"
    );
    assert_eq!(d.exec(&c2, &["hostname"]).trim(), "vm1");
    // The pod's network namespace in the guest has its loopback up
    // (IFF_UP | IFF_LOOPBACK), so `localhost` works between its containers.
    assert_eq!(
        d.exec(&c2, &["cat", "/sys/class/net/lo/flags"]).trim(),
        "0x9"
    );
    // Exec: output on both streams and the exit code.
    let out = d
        .try_exec(&c2, &["sh", "-c", "echo out; echo err >&2; exit 7"], 30)
        .unwrap();
    assert_eq!(out.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // Stats come from the guest.
    let stats = d.container_stats(&c1);
    assert!(
        stats
            .memory
            .as_ref()
            .unwrap()
            .working_set_bytes
            .as_ref()
            .unwrap()
            .value
            > 0,
        "{stats:?}"
    );
    // Logs in the CRI format, written on the host.
    let mut talker = container_config("talker", &["sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    talker.log_path = "talker/0.log".into();
    let c3 = d.create_started_container(&pod, &config, talker);
    let status = d.wait_exited(&c3, Duration::from_secs(60));
    assert_eq!(status.exit_code, 3, "{status:?}");
    let log = std::fs::read_to_string(d.log_dir().join("vm1/talker/0.log")).unwrap();
    let lines: Vec<(&str, &str)> = log
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let _time = f.next().unwrap();
            let stream = f.next().unwrap();
            assert_eq!(f.next(), Some("F"), "{l}");
            (stream, f.next().unwrap())
        })
        .collect();
    assert!(lines.contains(&("stdout", "hello")), "{log}");
    assert!(lines.contains(&("stderr", "oops")), "{log}");
    // StopContainer: SIGTERM is ignored, SIGKILL follows after the timeout.
    let mut stubborn = container_config(
        "stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo trapped; while true; do sleep 1; done",
        ],
    );
    stubborn.log_path = "stubborn/0.log".into();
    let stubborn = d.create_started_container(&pod, &config, stubborn);
    let log = d.log_dir().join("vm1/stubborn/0.log");
    wait_until("the trap to be set", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("trapped"))
            .then_some(())
    });
    let stopping = Instant::now();
    d.stop_container(&stubborn, 2);
    let status = d.container_status(&stubborn);
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert!(
        stopping.elapsed() >= Duration::from_secs(2),
        "SIGTERM was not given its time"
    );
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}

#[test]
fn killing_qemu_ends_every_container_and_leaves_nothing_behind() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vm2");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let c = d.create_started_container(&pod, &config, container_config("one", &["sleep", "1000"]));
    let qemu = qemu_of(&pod);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = d.wait_exited(&c, Duration::from_secs(30));
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(status.reason, "VMExited", "{status:?}");
    assert!(
        status.message.contains("VM") && status.message.contains(&qemu[0].to_string()),
        "the message does not name the VM: {status:?}"
    );
    let run = run_dir(&d);
    // The VM's own: its share's mounts and its dir (the containers'
    // rootfs stay mounted until they are removed, as on every handler).
    wait_until(
        "the VM's host side to be cleaned up",
        Duration::from_secs(30),
        || {
            let vm_mounts: Vec<String> = mounts_under(&run)
                .into_iter()
                .filter(|m| m.contains("/vm/"))
                .collect();
            (vm_mounts.is_empty() && vm_dirs(&run).is_empty()).then_some(())
        },
    );
    // The pod is still removable, and then nothing is left.
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}

#[test]
fn a_killed_shim_takes_its_vm_with_it() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vm3");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let qemu = qemu_of(&pod);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("QEMU to die with its shim", Duration::from_secs(20), || {
        qemu_of(&pod).is_empty().then_some(())
    });
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}

/// An initramfs whose `/init` never speaks (the pause binary: it only
/// waits), as a newc cpio.
fn silent_initramfs(path: &Path) {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let pause = std::fs::read(caisson_tests::fixtures::pause_binary()).unwrap();
    let mut out = Vec::new();
    entry(&mut out, 1, "init", 0o100755, &pause);
    entry(&mut out, 2, "TRAILER!!!", 0, &[]);
    std::fs::write(path, out).unwrap();
}

/// hostNetwork is refused for microvm before anything is made: a VM has
/// its own network stack.
#[test]
fn a_host_network_pod_is_refused_naming_the_field() {
    require::microvm();
    let d = Caissond::start("");
    let config = caisson_tests::daemon::with_host_network(d.pod_config("hostnet"));
    let mut rt = d.runtime();
    let err =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: "microvm".into(),
        }))
        .expect_err("a hostNetwork microvm pod started");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("namespace_options.network")
            && err.message().contains("hostNetwork"),
        "{}",
        err.message()
    );
    assert_eq!(d.list_pods().len(), 0);
    assert_eq!(vm_dirs(&run_dir(&d)), Vec::<PathBuf>::new());
}

/// A guest whose agent never answers: RunPodSandbox fails past the boot
/// deadline, says why with the guest's console, and leaves nothing.
#[test]
fn a_vm_whose_agent_never_answers_fails_the_pod_and_leaves_nothing() {
    require::microvm();
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let initramfs = dir.path().join("silent.cpio");
    silent_initramfs(&initramfs);
    let handler = format!(
        "\n[runtimes.handlers.microvm-silent]\nbackend = \"microvm\"\n[runtimes.handlers.microvm-silent.options]\ninitramfs = \"{}\"\nboot_timeout_secs = 8\n",
        initramfs.display()
    );
    let d = Caissond::start_edited("", |config| format!("{config}{handler}"));
    let config = d.pod_config("silent");
    let mut rt = d.runtime();
    let started = Instant::now();
    let err =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: "microvm-silent".into(),
        }))
        .expect_err("a pod whose agent never answers started");
    let message = err.message();
    assert!(
        message.contains("agent") && message.contains("ready"),
        "the error does not say the agent never became ready: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the boot deadline was not kept: {:?}",
        started.elapsed()
    );
    assert_eq!(d.list_pods().len(), 0, "a failed pod is listed");
    let run = run_dir(&d);
    assert_eq!(pod_mounts(&d), Vec::<String>::new(), "mounts left");
    assert_eq!(vm_dirs(&run), Vec::<PathBuf>::new(), "VM dirs left");
    let qemus: Vec<(u32, String)> = host_processes_with("qemu-system")
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&initramfs.display().to_string()))
        .collect();
    assert_eq!(qemus, Vec::<(u32, String)>::new(), "QEMU left running");
}

/// caissond SIGKILLed and restarted: it finds the pod's shim again, and
/// the VM and its container kept running.
#[test]
fn caissond_restarted_finds_the_vm_still_running() {
    require::microvm();
    let _turn = turn();
    let mut d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vm4");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let c = d.create_started_container(&pod, &config, container_config("one", &["sleep", "1000"]));
    let qemu = qemu_of(&pod);
    d.restart_after_sigkill();
    assert_eq!(qemu_of(&pod), qemu, "the VM did not survive caissond");
    let status = d.container_status(&c);
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(d.exec(&c, &["echo", "still here"]), "still here\n");
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}

/// A container over its memory limit is OOM-killed by the guest's kernel
/// and reported as on native: OOMKilled, 137.
#[test]
fn a_container_over_its_memory_limit_is_reported_oom_killed() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vm5");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let hog = with_resources(
        container_config(
            "hog",
            &["sh", "-c", "head -c 300000000 /dev/zero | tail > /dev/null"],
        ),
        &cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 * MI,
            ..Default::default()
        },
    );
    let c = d.create_started_container(&pod, &config, hog);
    let status = d.wait_exited(&c, Duration::from_secs(60));
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}

fn nix_uname() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// A handler selects Debian's kernel through its options (`kernel`): the
/// same initramfs boots it (the agent loads that release's modules), and
/// the pod's containers run on it.
#[test]
fn a_handler_boots_debians_kernel_through_its_options() {
    require::microvm();
    let debian = require::GuestKernel::Debian;
    let _turn = turn();
    let handler = format!(
        "\n[runtimes.handlers.microvm-debian]\nbackend = \"microvm\"\npod_overhead = {{ memory_mib = 1024, cpu_millicores = 250 }}\n[runtimes.handlers.microvm-debian.options]\nkernel = \"{}\"\n",
        debian.vmlinux().display()
    );
    let d = Caissond::start_edited("", |config| format!("{config}{handler}"));
    d.import_busybox();
    let config = d.pod_config("debian");
    let pod = d.run_pod_with_handler(&config, "microvm-debian");
    let c = d.create_started_container(&pod, &config, container_config("one", &["sleep", "600"]));
    assert_eq!(d.exec(&c, &["uname", "-r"]).trim(), debian.release());
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}

/// The default guest kernel is Caisson's own, built from the repo's config
/// (`agent/guest/kernel/`, by `make microvm-guest`): its release carries the
/// hash of that config (`build-kernel.sh --release`), the installed vmlinux
/// is that release, it has no modules, and a pod boots on it.
#[test]
fn the_default_guest_kernel_is_the_one_the_repos_config_builds() {
    let installed = require::microvm();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/guest/kernel/build-kernel.sh");
    let out = std::process::Command::new(&script)
        .arg("--release")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} --release: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        installed, expected,
        "the installed default guest kernel is not the repo's config: `make microvm-guest` builds and installs it"
    );
    let vmlinux = std::fs::read(require::GuestKernel::Default.vmlinux()).unwrap();
    let banner = format!("Linux version {expected} ");
    assert!(
        vmlinux
            .windows(banner.len())
            .any(|w| w == banner.as_bytes()),
        "{} is not {expected}",
        require::GuestKernel::Default.vmlinux().display()
    );
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("minimal");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let c = d.create_started_container(&pod, &config, container_config("one", &["sleep", "600"]));
    assert_eq!(d.exec(&c, &["uname", "-r"]).trim(), expected);
    // Everything is built in: the kernel has no module support at all.
    let modules = d.exec(
        &c,
        &["sh", "-c", "if test -e /proc/modules; then echo some; fi"],
    );
    assert_eq!(modules.trim(), "", "the default guest kernel has modules");
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}

/// A container in its pod's PID namespace whose init exits takes what it
/// left running with it, as under containerd's runc shim: a background
/// process is gone from the pod's process list once the container has
/// exited.
#[test]
fn what_an_init_leaves_in_the_pods_pid_namespace_dies_with_it() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vmpid");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let watcher = d.create_started_container(
        &pod,
        &config,
        with_pid_mode(
            container_config("watcher", &["sleep", "100000"]),
            cri::NamespaceMode::Pod,
        ),
    );
    let parent = d.create_started_container(
        &pod,
        &config,
        with_pid_mode(
            container_config("parent", &["sh", "-c", "sleep 4242 & sleep 3"]),
            cri::NamespaceMode::Pod,
        ),
    );
    let listed = |d: &Caissond| d.exec(&watcher, &["ps", "-o", "args"]);
    assert!(listed(&d).contains("sleep 4242"), "{}", listed(&d));
    let status = d.wait_exited(&parent, Duration::from_secs(60));
    assert_eq!(status.exit_code, 0);
    wait_until(
        "the orphaned sleep to be gone",
        Duration::from_secs(10),
        || (!listed(&d).contains("sleep 4242")).then_some(()),
    );
    d.remove_all_pods();
    assert_nothing_left(&d, &pod);
}
