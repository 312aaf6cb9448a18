//! Churn and concurrency (issue #19): pods through their whole life one
//! after another and 20 at a time, then nothing left on the host (as the
//! kernel shows it: `caisson_tests::leaks`) and caissond's RSS and open fds
//! back near where they started; 50 RunPodSandbox calls at once; 10 for the
//! same pod at once; RemovePodSandbox racing CreateContainer; StopContainer
//! racing ExecSync. Native and hardened pods, on a CNI bridge with portmap.
//! Needs root and containernetworking-plugins.
//!
//! `CAISSON_CHURN_PODS` sets how many pods go through each churn phase
//! (default 60; `make churn` runs 1,000).

use std::time::{Duration, Instant};

use caisson_tests::cni::TestNetwork;
use caisson_tests::daemon::{container_config, with_pid_mode, Caissond};
use caisson_tests::leaks::{rss_kib_and_fds, HostState, Scope};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

const HANDLERS: [&str; 2] = ["runc", "hardened"];

/// The container every pod runs: `sleep`, in a PID namespace of its own
/// (kubelet's default).
fn app() -> cri::ContainerConfig {
    with_pid_mode(
        container_config("app", &["sleep", "1000"]),
        cri::NamespaceMode::Container,
    )
}

async fn client(d: &Caissond) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(d.channel().await.expect("connecting to caissond"))
}

fn pod_config(d: &Caissond, name: &str, host_port: i32) -> cri::PodSandboxConfig {
    let mut c = d.pod_config(name);
    if host_port > 0 {
        c.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port,
            host_ip: "127.0.0.1".into(),
        }];
    }
    c
}

/// One pod's whole life: run, create, start, exec, stop, remove.
async fn pod_life(
    mut rt: RuntimeServiceClient<Channel>,
    config: cri::PodSandboxConfig,
    handler: &str,
) -> Result<(), String> {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let err =
        |what: &str, s: tonic::Status| format!("{name}: {what}: {:?} {}", s.code(), s.message());
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map_err(|s| err("RunPodSandbox", s))?
        .into_inner()
        .pod_sandbox_id;
    let c = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(app()),
            sandbox_config: Some(config),
        })
        .await
        .map_err(|s| err("CreateContainer", s))?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .map_err(|s| err("StartContainer", s))?;
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["echo".into(), "alive".into()],
            timeout: 30,
        })
        .await
        .map_err(|s| err("ExecSync", s))?
        .into_inner();
    if out.exit_code != 0 || out.stdout != b"alive\n" {
        return Err(format!("{name}: ExecSync answered {out:?}"));
    }
    rt.stop_container(cri::StopContainerRequest {
        container_id: c,
        timeout: 0,
    })
    .await
    .map_err(|s| err("StopContainer", s))?;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .map_err(|s| err("StopPodSandbox", s))?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .map_err(|s| err("RemovePodSandbox", s))?;
    Ok(())
}

/// Pods through their whole life, 20 at a time (handlers alternating).
fn run_batches(d: &Caissond, configs: &[cri::PodSandboxConfig]) {
    for (batch, chunk) in configs.chunks(20).enumerate() {
        let results = d.rt.block_on(async {
            let mut tasks = vec![];
            for (i, config) in chunk.iter().enumerate() {
                let rt = client(d).await;
                let config = config.clone();
                let handler = HANDLERS[(batch + i) % 2];
                tasks.push(tokio::spawn(
                    async move { pod_life(rt, config, handler).await },
                ));
            }
            let mut out = vec![];
            for t in tasks {
                out.push(t.await.expect("pod task"));
            }
            out
        });
        let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        assert!(
            failed.is_empty(),
            "batch {batch}: {}\n{}",
            failed.join("\n"),
            d.log_tail()
        );
    }
}

fn churn_pods() -> usize {
    std::env::var("CAISSON_CHURN_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

struct Daemon {
    // Field order is drop order: the daemon (and its pods) before the network.
    d: Caissond,
    scope: Scope,
    _net: TestNetwork,
}

fn daemon(net: &str, bridge: &str, prefix: &str) -> Daemon {
    let n = TestNetwork::new(net, bridge, prefix).with_portmap();
    let d = Caissond::start("");
    d.import_busybox();
    n.install(
        &d,
        r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#,
    );
    let scope = Scope::of(&d).with_network(net, prefix);
    Daemon { d, scope, _net: n }
}

/// No violation and nothing at all on the host.
fn assert_clean(x: &Daemon, when: &str) {
    let v = x.d.settled_leak_check(&x.scope, Duration::from_secs(20));
    assert!(
        v.is_empty(),
        "{when}: {}\n--- caissond log ---\n{}",
        v.join("\n"),
        x.d.log_tail()
    );
    let host = HostState::capture(&x.scope, x.d.pid());
    assert!(host.is_empty(), "{when}: left on the host: {host:#?}");
}

#[test]
fn churn_sequential_then_twenty_at_a_time_leaks_nothing() {
    let x = daemon("cst-churn", "cst-churn0", "10.231.90");
    let d = &x.d;
    let n = churn_pods();
    // Warm-up, one by one and 20 at a time: the allocator's per-thread
    // arenas and tokio's blocking pool grow to their working size.
    for i in 0..10 {
        let config = pod_config(d, &format!("warm-{i}"), 0);
        d.rt.block_on(async { pod_life(client(d).await, config, HANDLERS[i % 2]).await })
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    }
    let warm: Vec<cri::PodSandboxConfig> = (0..20)
        .map(|i| pod_config(d, &format!("warm-par-{i}"), 0))
        .collect();
    run_batches(d, &warm);
    assert_clean(&x, "after the warm-up");
    let (rss0, fds0) = rss_kib_and_fds(d.pid());

    let t = Instant::now();
    for i in 0..n {
        let config = pod_config(d, &format!("seq-{i}"), 30000 + i as i32);
        d.rt.block_on(async { pod_life(client(d).await, config, HANDLERS[i % 2]).await })
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    }
    let sequential = t.elapsed();
    assert_clean(&x, "after the sequential churn");
    let (rss1, fds1) = rss_kib_and_fds(d.pid());

    let t = Instant::now();
    let configs: Vec<cri::PodSandboxConfig> = (0..n)
        .map(|i| pod_config(d, &format!("par-{i}"), 31000 + i as i32))
        .collect();
    run_batches(d, &configs);
    let parallel = t.elapsed();
    assert_clean(&x, "after the concurrent churn");
    let (rss2, fds2) = rss_kib_and_fds(d.pid());
    let drift = |a: u64, b: u64| (b as f64 - a as f64) * 100.0 / a as f64;
    eprintln!(
        "churn: {n} pods sequentially in {:.1} s ({:.0} ms/pod), {n} pods 20 at a time in {:.1} s ({:.0} ms/pod); \
         leaks: 0; caissond RSS {rss0} KiB -> {rss1} KiB ({:+.1}%) -> {rss2} KiB ({:+.1}%), fds {fds0} -> {fds1} -> {fds2}",
        sequential.as_secs_f64(),
        sequential.as_secs_f64() * 1000.0 / n as f64,
        parallel.as_secs_f64(),
        parallel.as_secs_f64() * 1000.0 / n as f64,
        drift(rss0, rss1),
        drift(rss0, rss2),
    );
    assert_eq!((fds1, fds2), (fds0, fds0), "caissond's open fds drifted");
    assert!(
        drift(rss0, rss2) < 10.0,
        "caissond's RSS grew from {rss0} KiB to {rss2} KiB"
    );
}

#[test]
fn fifty_distinct_pods_at_once() {
    let x = daemon("cst-conc", "cst-conc0", "10.231.91");
    let d = &x.d;
    let configs: Vec<cri::PodSandboxConfig> = (0..50)
        .map(|i| pod_config(d, &format!("at-once-{i}"), 0))
        .collect();
    let ids = d.rt.block_on(async {
        let mut tasks = vec![];
        for (i, config) in configs.iter().enumerate() {
            let mut rt = client(d).await;
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: HANDLERS[i % 2].into(),
                })
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
            }));
        }
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let ids: Vec<String> = ids
        .into_iter()
        .map(|r| r.unwrap_or_else(|s| panic!("RunPodSandbox: {s}\n{}", d.log_tail())))
        .collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 50);
    let v = d.settled_leak_check(&x.scope, Duration::from_secs(20));
    assert!(v.is_empty(), "{}", v.join("\n"));
    for id in &ids {
        assert_eq!(
            d.pod_status(id).state,
            cri::PodSandboxState::SandboxReady as i32
        );
    }
    d.rt.block_on(async {
        let mut tasks = vec![];
        for id in ids {
            let mut rt = client(d).await;
            tasks.push(tokio::spawn(async move {
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await
            }));
        }
        for t in tasks {
            t.await
                .expect("task")
                .unwrap_or_else(|s| panic!("removing: {s}"));
        }
    });
    assert_clean(&x, "after removing the 50 pods");
}

#[test]
fn ten_run_pod_sandbox_calls_for_the_same_pod_make_one() {
    let x = daemon("cst-same", "cst-same0", "10.231.93");
    let d = &x.d;
    for round in 0..3 {
        let config = pod_config(d, "same", 0);
        let handler = HANDLERS[round % 2];
        let answers = d.rt.block_on(async {
            let mut tasks = vec![];
            for _ in 0..10 {
                let mut rt = client(d).await;
                let config = config.clone();
                tasks.push(tokio::spawn(async move {
                    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: handler.into(),
                    })
                    .await
                    .map(|r| r.into_inner().pod_sandbox_id)
                }));
            }
            let mut out = vec![];
            for t in tasks {
                out.push(t.await.expect("task"));
            }
            out
        });
        let pods = d.list_pods();
        assert_eq!(pods.len(), 1, "round {round}: {pods:?}");
        for a in &answers {
            match a {
                Ok(id) => assert_eq!(id, &pods[0].id, "round {round}"),
                Err(s) => assert!(
                    matches!(
                        s.code(),
                        tonic::Code::AlreadyExists | tonic::Code::Unavailable
                    ),
                    "round {round}: not a clean error: {s}"
                ),
            }
        }
        assert!(answers.iter().any(Result::is_ok), "{answers:?}");
        let v = d.settled_leak_check(&x.scope, Duration::from_secs(20));
        assert!(v.is_empty(), "{}", v.join("\n"));
        // Re-created under the same name once removed.
        d.stop_pod(&pods[0].id);
        d.remove_pod(&pods[0].id);
        assert_clean(&x, "after removing the pod");
    }
}

#[test]
fn remove_pod_sandbox_racing_create_container() {
    let x = daemon("cst-race", "cst-race0", "10.231.94");
    let d = &x.d;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..16 {
        let config = pod_config(d, &format!("race-{i}"), 0);
        let pod = d.run_pod_with_handler(&config, HANDLERS[i % 2]);
        // The remove is sent a little later each round, to land at
        // different points of the create.
        let delay = Duration::from_millis(15 * i as u64);
        let (created, removed) = d.rt.block_on(async {
            let mut a = client(d).await;
            let mut b = client(d).await;
            let (pa, pb, ca) = (pod.clone(), pod.clone(), config.clone());
            let create = tokio::spawn(async move {
                a.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pa,
                    config: Some(app()),
                    sandbox_config: Some(ca),
                })
                .await
                .map(|r| r.into_inner().container_id)
            });
            let remove = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                b.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pb.clone(),
                })
                .await?;
                b.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pb })
                    .await
            });
            (create.await.unwrap(), remove.await.unwrap())
        });
        removed.unwrap_or_else(|s| panic!("round {i}: removing the pod: {s}\n{}", d.log_tail()));
        let outcome = match &created {
            Ok(_) => "created, then removed with the pod".to_string(),
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::NotFound | tonic::Code::FailedPrecondition
                    ),
                    "round {i}: CreateContainer: not a clean error: {s}\n{}",
                    d.log_tail()
                );
                format!("refused: {:?}", s.code())
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
        assert_clean(&x, &format!("round {i} ({created:?})"));
    }
    eprintln!("RemovePodSandbox vs CreateContainer: {outcomes:?}");
}

#[test]
fn stop_container_racing_exec_sync() {
    let x = daemon("cst-stopexec", "cst-stex0", "10.231.95");
    let d = &x.d;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (h, handler) in HANDLERS.iter().enumerate() {
        for p in 0..2 {
            let config = pod_config(d, &format!("stop-exec-{h}-{p}"), 0);
            let pod = d.run_pod_with_handler(&config, handler);
            for i in p * 4..p * 4 + 4 {
                let mut cc = app();
                cc.metadata.as_mut().unwrap().attempt = i;
                let c = d.create_started_container(&pod, &config, cc);
                let delay = Duration::from_millis(10 * u64::from(i));
                let (exec, stop) = d.rt.block_on(async {
                    let mut a = client(d).await;
                    let mut b = client(d).await;
                    let (ca, cb) = (c.clone(), c.clone());
                    let exec = tokio::spawn(async move {
                        a.exec_sync(cri::ExecSyncRequest {
                            container_id: ca,
                            cmd: vec!["sh".into(), "-c".into(), "sleep 0.1; echo done".into()],
                            timeout: 10,
                        })
                        .await
                        .map(|r| r.into_inner())
                    });
                    let stop = tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        b.stop_container(cri::StopContainerRequest {
                            container_id: cb,
                            timeout: 0,
                        })
                        .await
                    });
                    (exec.await.unwrap(), stop.await.unwrap())
                });
                stop.unwrap_or_else(|s| {
                    panic!("{handler} {i}: StopContainer: {s}\n{}", d.log_tail())
                });
                let outcome = match &exec {
                    Ok(r) if r.exit_code == 0 => "exec finished".to_string(),
                    Ok(r) => format!("exec killed (exit {})", r.exit_code),
                    Err(s) => {
                        assert!(
                            matches!(
                                s.code(),
                                tonic::Code::NotFound
                                    | tonic::Code::FailedPrecondition
                                    | tonic::Code::Unavailable
                            ),
                            "{handler} {i}: ExecSync: not a clean error: {s}\n{}",
                            d.log_tail()
                        );
                        format!("exec refused: {:?}", s.code())
                    }
                };
                *outcomes.entry(outcome).or_default() += 1;
                let status = d.container_status(&c);
                assert_eq!(
                    status.state,
                    cri::ContainerState::ContainerExited as i32,
                    "{handler} {i}: {status:?}"
                );
                let v = d.settled_leak_check(&x.scope, Duration::from_secs(20));
                assert!(v.is_empty(), "{handler} {i}: {}", v.join("\n"));
                // As kubelet's container GC would (a pod with more than a few
                // stopped containers cannot create another: see the report).
                let mut rt = d.runtime();
                let r =
                    d.rt.block_on(rt.remove_container(cri::RemoveContainerRequest {
                        container_id: c.clone(),
                    }));
                d.ok("RemoveContainer", r);
            }
            d.stop_pod(&pod);
            d.remove_pod(&pod);
        }
    }
    eprintln!("StopContainer vs ExecSync: {outcomes:?}");
    assert_clean(&x, "after removing the pods");
}

/// Regression (found by `stop_container_racing_exec_sync`): in a pod whose
/// containers share the pod's PID namespace, a container created once
/// about ten pids had been used in that namespace failed ("failed to
/// prepare rootfs": libcontainer's own cgroup v1 mount looked up its
/// namespace pid in the host's `/proc`). The native backend now hands
/// libcontainer `/sys/fs/cgroup` as a tmpfs and binds of the container's
/// own cgroups (`sandbox/src/backend/native/cgroup_mount.rs`), read-only:
/// libcontainer's binds were writable, so a container's root could raise
/// its own limits. The last container checks both from inside.
#[test]
fn a_shared_pid_namespace_pod_creates_a_dozen_containers() {
    let x = daemon("cst-many", "cst-many0", "10.231.96");
    let d = &x.d;
    let config = pod_config(d, "many", 0);
    let pod = d.run_pod_with_handler(&config, "runc");
    let limit = 48 * caisson_tests::daemon::MI;
    let mut last = String::new();
    for i in 0..12 {
        let cc = caisson_tests::daemon::with_resources(
            with_pid_mode(
                container_config("app", &["sleep", "1000"]),
                cri::NamespaceMode::Pod,
            ),
            &cri::LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            },
        );
        let mut cc = cc;
        cc.metadata.as_mut().unwrap().attempt = i;
        let c = d.create_started_container(&pod, &config, cc);
        if i < 11 {
            d.stop_container(&c, 2);
        }
        last = c;
    }
    // Its own memory cgroup, as the host has it, and nothing writable:
    // neither a lower pids.max nor twice its memory limit.
    let seen = d.exec(
        &last,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
             if echo 1 > /sys/fs/cgroup/pids/pids.max; then echo writable; else echo refused; fi; \
             if echo 100663296 > /sys/fs/cgroup/memory/memory.limit_in_bytes; then echo writable; else echo refused; fi",
        ],
    );
    let host = caisson_tests::daemon::read_trimmed(
        &d.task_cgroup("memory", &config.metadata.as_ref().unwrap().uid, &last)
            .join("memory.limit_in_bytes"),
    );
    assert_eq!(host, limit.to_string());
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [host.as_str(), "refused", "refused"],
        "{seen}"
    );
    d.stop_container(&last, 2);
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    assert_clean(&x, "after removing the pod");
}
