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
#[ignore = "an open bug the harness finds (issue #19): after a shim SIGKILL (seed 19, \
            step 17) a fork-server process and its pod's cgroups under besteffort/ can \
            outlive the pod; run it with `make chaos`"]
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
    // A plugin after bridge that holds ADD until the flag file goes.
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
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    net.install(&d, r#", {"type": "hold"}"#);
    let scope = Scope::of(&d).with_network("cst-halfway", "10.231.97");

    let config = d.pod_config("halfway");
    let socket = d.socket.clone();
    let run = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let ch = tonic::transport::Endpoint::try_from("http://[::]:50051")
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await
                .unwrap();
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
    let mut rt = d.runtime();
    let pods =
        d.rt.block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()))
            .unwrap()
            .into_inner()
            .items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    d.stop_pod(&pods[0].id);
    d.remove_pod(&pods[0].id);
    let host = HostState::capture(&scope, d.pid());
    assert!(host.is_empty(), "left on the host: {host:#?}");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
}
