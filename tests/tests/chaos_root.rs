//! The chaos harness (`caisson_tests::chaos`) for a bounded run: three
//! kubelet-like clients on native and hardened pods while caissond, shims
//! and container inits are SIGKILLed and the state disk fills, the kernel
//! checked against caissond's lists after every fault. Needs root and
//! containernetworking-plugins.
//!
//! `CAISSON_CHAOS_SEED`, `CAISSON_CHAOS_FAULTS` and `CAISSON_CHAOS_CLIENTS`
//! change the run (`make chaos` runs 1,000 faults); a violation prints the
//! seed and the step.

use caisson_tests::chaos::{run, Plan};

#[test]
fn chaos_finds_no_violation() {
    let plan = Plan::from_env(19, 20, 3);
    let summary = run(&plan);
    eprintln!("{summary}");
    assert!(
        summary.violations.is_empty(),
        "{summary}\nreplay with CAISSON_CHAOS_SEED={} CAISSON_CHAOS_FAULTS={}",
        plan.seed,
        plan.faults
    );
}

/// Installs a CNI plugin `hold` (to be chained after bridge) whose ADD
/// waits while the file it answers exists.
fn install_hold_plugin(d: &caisson_tests::daemon::Caissond) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let flag = d.dir.path().join("hold-add");
    std::fs::write(&flag, "").unwrap();
    std::fs::create_dir_all(d.cni_bin_dir()).unwrap();
    let plugin = d.cni_bin_dir().join("hold");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\ninput=$(cat)\ncase \"$CNI_COMMAND\" in\n\
             ADD) while [ -e {flag} ]; do sleep 0.05; done\n\
             printf '%s' \"$input\" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[\"prevResult\"]))' ;;\n\
             VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}' ;;\n\
             *) exit 0 ;;\nesac\n",
            flag = flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    flag
}

/// Regression (found by the chaos run): caissond SIGKILLed while a
/// RunPodSandbox was half-way (netns pinned, CNI ADD running, shim not
/// started) left the netns pin, the pod's IP and cgroup with no record
/// owning them, forever. The pod is now recorded before anything is made:
/// after the restart it is listed NOTREADY, owns all of it, and
/// RemovePodSandbox releases it.
#[test]
fn caissond_killed_during_run_pod_sandbox_leaks_nothing() {
    use caisson_tests::cni::TestNetwork;
    use caisson_tests::daemon::{wait_until, Caissond};
    use caisson_tests::leaks::{HostState, Scope};
    use k8s_cri::v1 as cri;
    use std::time::Duration;

    let net = TestNetwork::new("cst-halfway", "cst-half0", "10.231.97");
    let mut d = Caissond::start("");
    let flag = install_hold_plugin(&d);
    net.install(&d, r#", {"type": "hold"}"#);
    let scope = Scope::of(&d).with_network("cst-halfway", "10.231.97");

    let config = d.pod_config("halfway");
    let socket = d.socket.clone();
    let run = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let ch = caisson_tests::daemon::channel_to(socket).await.unwrap();
            k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(ch)
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
        })
    });
    // ADD is held: the netns is pinned and bridge gave the pod an IP.
    wait_until("CNI ADD to hold", Duration::from_secs(20), || {
        (!net.allocations().is_empty()).then_some(())
    });
    d.sigkill();
    assert!(run.join().unwrap().is_err(), "RunPodSandbox answered");
    std::fs::remove_file(&flag).unwrap();
    wait_until("the held plugin to exit", Duration::from_secs(10), || {
        HostState::capture(&scope, 0)
            .processes
            .values()
            .all(|(_, cmd)| !cmd.contains("cni/bin/hold"))
            .then_some(())
    });
    d.respawn();
    let v = d.settled_leak_check(&scope, Duration::from_secs(10));
    assert!(v.is_empty(), "{}\n{}", v.join("\n"), d.log_tail());
    let pods = d.list_pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    d.stop_pod(&pods[0].id);
    d.remove_pod(&pods[0].id);
    let host = HostState::capture(&scope, d.pid());
    assert!(host.is_empty(), "left on the host: {host:#?}");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
}

/// Regression (the chaos run, seed 19, a CI run of 2026-12-07): a pod's
/// pause that died while RunPodSandbox was still at work (CNI ADD running
/// beside the pause's start) left the pod READY for good: the exit was
/// recorded (NOTREADY), then RunPodSandbox's last save wrote its own copy
/// of the record, READY, over it. A recorded exit now stays: the pod is
/// listed NOTREADY, and removing it leaves nothing.
#[test]
fn a_pause_dead_before_run_pod_sandbox_ends_leaves_the_pod_not_ready() {
    use caisson_tests::cni::TestNetwork;
    use caisson_tests::daemon::{wait_until, Caissond};
    use caisson_tests::leaks::{HostState, Proc, Scope};
    use k8s_cri::v1 as cri;
    use std::time::Duration;

    let net = TestNetwork::new("cst-pausedie", "cst-pdie0", "10.231.98");
    let d = Caissond::start("");
    let flag = install_hold_plugin(&d);
    net.install(&d, r#", {"type": "hold"}"#);
    let scope = Scope::of(&d).with_network("cst-pausedie", "10.231.98");

    let config = d.pod_config("pause-dies");
    let mut rt = d.runtime();
    let run = d.rt.spawn(async move {
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
    });
    // ADD is held; the pause is started meanwhile: the pod's one task,
    // once it has exec'd (before, its init still has the shim's command
    // line, and killing it fails the build instead).
    let (pause, pod) = wait_until("the pause to run", Duration::from_secs(30), || {
        HostState::capture(&scope, d.pid())
            .processes
            .into_iter()
            .find_map(|(pid, (p, cmd))| match p {
                Proc::Task { id } if !cmd.contains("containerd-shim") => Some((pid, id)),
                _ => None,
            })
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pause as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let stopped = format!("pod_id={pod}");
    wait_until(
        "caissond to record the exit",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&d.log_path)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("pod sandbox stopped") && l.contains(&stopped))
                .then_some(())
        },
    );
    std::fs::remove_file(&flag).unwrap();
    let answered = d.rt.block_on(run).unwrap();
    let id = answered
        .map(|r| r.into_inner().pod_sandbox_id)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", d.log_tail()));
    assert_eq!(id, pod);
    assert_eq!(
        d.pod_status(&id).state,
        cri::PodSandboxState::SandboxNotready as i32,
        "the pod's pause is dead\n{}",
        d.log_tail()
    );
    let v = d.settled_leak_check(&scope, Duration::from_secs(10));
    assert!(v.is_empty(), "{}\n{}", v.join("\n"), d.log_tail());
    d.stop_pod(&id);
    d.remove_pod(&id);
    let host = HostState::capture(&scope, d.pid());
    assert!(host.is_empty(), "left on the host: {host:#?}");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
}

/// Regression (found by the chaos run, seed 19 step 17): a pod's shim
/// SIGKILLed while CreateContainer was building the task left the task's
/// init (created, waiting for a start that never comes) and its cgroup
/// under the pod's with no record owning them, so the pod cgroup stayed
/// too; on hardened, the build's idmapped layers and rootfs overlay stayed
/// mounted (a later chaos run). CreateContainer's cleanup now runs the
/// shim binary's `delete` for a task its shim cannot answer for, and kills
/// what is left in the task's cgroup before removing it. The build is held
/// in a CDI `createRuntime` hook (run by the fork server while the init
/// waits) for the kill.
#[test]
fn a_shim_killed_during_create_container_leaks_nothing() {
    use caisson_tests::daemon::Caissond;
    use caisson_tests::leaks::Scope;

    let cdi = tempfile::tempdir().unwrap();
    let flag = cdi.path().join("hold-create");
    std::fs::write(&flag, "").unwrap();
    std::fs::write(
        cdi.path().join("hold.yaml"),
        format!(
            "cdiVersion: 0.6.0\nkind: example.com/hold\ndevices:\n  - name: h0\n    \
             containerEdits:\n      hooks:\n        - hookName: createRuntime\n          \
             path: /bin/sh\n          args: [sh, -c, 'while [ -e {} ]; do sleep 0.05; done']\n",
            flag.display()
        ),
    )
    .unwrap();
    let d = Caissond::start(&format!("cdi.spec_dirs = [\"{}\"]", cdi.path().display()));
    d.import_busybox();
    let scope = Scope::of(&d);
    for handler in ["runc", "hardened"] {
        for after_the_build in [false, true] {
            std::fs::write(&flag, "").unwrap();
            kill_shim_during_create(&d, &scope, handler, &flag, after_the_build);
        }
    }
}

fn kill_shim_during_create(
    d: &caisson_tests::daemon::Caissond,
    scope: &caisson_tests::leaks::Scope,
    handler: &str,
    flag: &std::path::Path,
    after_the_build: bool,
) {
    use caisson_tests::daemon::{container_config, wait_until};
    use caisson_tests::leaks::HostState;
    use k8s_cri::v1 as cri;
    use std::time::Duration;

    let config = d.pod_config(&format!("held-{handler}-{after_the_build}"));
    let pod = d.run_pod_with_handler(&config, handler);
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 1, "{handler}: {shims:?}");

    let mut cc = container_config("c", &["sleep", "1000"]);
    cc.cdi_devices = vec![cri::CdiDevice {
        name: "example.com/hold=h0".into(),
    }];
    let mut rt = d.runtime();
    let request = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(cc),
        sandbox_config: Some(config.clone()),
    };
    let create =
        d.rt.spawn(async move { rt.create_container(request).await });
    let wanted = flag.display().to_string();
    let hook_running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|p| p.parse().ok())
                .and_then(caisson_tests::daemon::cmdline)
                .is_some_and(|c| c.contains(&wanted))
        })
    };
    wait_until(
        "the createRuntime hook to hold the build",
        Duration::from_secs(30),
        || hook_running().then_some(()),
    );
    let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0] as i32), s);
    if after_the_build {
        // The shim is stopped while the build finishes: the fork server's
        // answer waits in its socket, the task's init waits for a start,
        // and the shim dies without answering caissond.
        signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
        std::fs::remove_file(flag).unwrap();
        wait_until("the task to be created", Duration::from_secs(30), || {
            created_task(d.dir.path(), &pod).then_some(())
        });
        signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    } else {
        // Killed mid-build: the fork server dies with its shim at once,
        // while the hook still holds, rather than finish a task for nobody.
        let shim = shims[0].to_string();
        let server = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                caisson_tests::daemon::proc_status_field(*pid, "Name").as_deref()
                    == Some("fork-server")
                    && caisson_tests::daemon::proc_status_field(*pid, "PPid") == Some(shim.clone())
            })
            .unwrap_or_else(|| panic!("{handler}: no fork server under shim {shim}"));
        signal(nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_until(
            "the fork server to die with its shim",
            Duration::from_secs(5),
            || (!caisson_tests::daemon::pid_alive(server)).then_some(()),
        );
        assert!(flag.exists());
        std::fs::remove_file(flag).unwrap();
    }
    let answer = d.rt.block_on(create).unwrap();
    assert!(
        answer.is_err(),
        "{handler}: CreateContainer succeeded: {answer:?}"
    );
    let v = d.settled_leak_check(scope, Duration::from_secs(20));
    assert!(
        v.is_empty(),
        "{handler}: {}\n{}",
        v.join("\n"),
        d.log_tail()
    );
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let host = HostState::capture(scope, d.pid());
    assert!(host.is_empty(), "{handler}: left on the host: {host:#?}");
}

/// Whether a libcontainer state file under `dir` other than pod `pod`'s
/// says "created".
fn created_task(dir: &std::path::Path, pod: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
            return created_task(&path, pod);
        }
        path.file_name().is_some_and(|n| n == "state.json")
            && !path.parent().is_some_and(|p| p.ends_with(pod))
            && std::fs::read_to_string(&path).is_ok_and(|s| s.contains("\"status\":\"created\""))
    })
}

/// Regression (found by the chaos run, seed 20261206): a container started
/// while the state disk was full ran, but its record still said created,
/// pid 0 (the write failed), and after a caissond restart it was listed as
/// not running while its process ran on, out of reach of ExecSync and
/// StopContainer. Recovery now takes the shim's word for a task its record
/// is behind on.
#[test]
fn a_start_the_full_state_disk_kept_out_of_the_record_is_recovered() {
    use caisson_tests::chaos::{fill, start_with_root, Tmpfs};
    use caisson_tests::daemon::container_config;
    use caisson_tests::leaks::HostState;
    use k8s_cri::v1 as cri;
    use std::time::Duration;

    let tmpfs = Tmpfs::new("96m");
    let (mut d, scope) = start_with_root(&tmpfs.path.join("root"));
    d.import_busybox();
    let config = d.pod_config("full");
    let pod = d.run_pod(&config);
    let c = d.create_container(&pod, &config, container_config("c", &["sleep", "1000"]));

    let filler = tmpfs.path.join("filler");
    fill(&filler);
    d.start_container(&c);
    let pid = d.container_pid(&c);
    assert!(
        d.log_tail().contains("No space left on device"),
        "{}",
        d.log_tail()
    );
    d.sigkill();
    std::fs::remove_file(&filler).unwrap();
    d.respawn();

    let status = d.container_status(&c);
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerRunning as i32,
        "{status:?}\n{}",
        d.log_tail()
    );
    assert_eq!(d.container_pid(&c), pid);
    assert_eq!(d.exec(&c, &["echo", "reachable"]), "reachable\n");
    d.stop_container(&c, 2);
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let v = d.settled_leak_check(&scope, Duration::from_secs(10));
    assert!(v.is_empty(), "{}", v.join("\n"));
    let host = HostState::capture(&scope, d.pid());
    assert!(host.is_empty(), "left on the host: {host:#?}");
}
