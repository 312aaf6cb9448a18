//! Every way a CRI request can be wrong, table-driven: each gets the gRPC
//! code the CRI expects, a message naming the field (or the object), and
//! leaves nothing behind — no pod dir, record, mount, cgroup or process
//! more than before. Needs root.

use caisson_tests::daemon::{container_config, rejection as case, Caissond, Call};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::Code;

type Client = RuntimeServiceClient<Channel>;

fn run_pod(config: Option<cri::PodSandboxConfig>, handler: &str) -> Call {
    let handler = handler.to_string();
    Box::new(move |d, rt| {
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: config.clone(),
            runtime_handler: handler.clone(),
        }))
        .map(drop)
    })
}

/// A valid pod config for a pod that does not exist yet, changed by `f`.
fn bad_pod(
    d: &Caissond,
    f: impl FnOnce(&mut cri::PodSandboxConfig),
) -> Option<cri::PodSandboxConfig> {
    let mut c = d.pod_config("never");
    f(&mut c);
    Some(c)
}

fn meta(c: &mut cri::PodSandboxConfig) -> &mut cri::PodSandboxMetadata {
    c.metadata.as_mut().unwrap()
}

fn namespaces(c: &mut cri::PodSandboxConfig, options: cri::NamespaceOption) {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(options);
}

fn create(
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    config: Option<cri::ContainerConfig>,
) -> Call {
    let (pod, sandbox) = (pod.to_string(), sandbox.clone());
    Box::new(move |d, rt| {
        d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: config.clone(),
            sandbox_config: Some(sandbox.clone()),
        }))
        .map(drop)
    })
}

/// A valid container config ("fresh", never created), changed by `f`.
fn bad_container(f: impl FnOnce(&mut cri::ContainerConfig)) -> Option<cri::ContainerConfig> {
    let mut c = container_config("fresh", &["sleep", "1"]);
    f(&mut c);
    Some(c)
}

fn security_context(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

fn mount(container_path: &str, host_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        host_path: host_path.into(),
        ..Default::default()
    }
}

/// A call of one RuntimeService method with a fixed request.
macro_rules! rpc {
    ($method:ident, $req:expr) => {{
        let req = $req;
        Box::new(move |d: &Caissond, rt: &mut Client| {
            d.rt.block_on(rt.$method(req.clone())).map(drop)
        }) as Call
    }};
}

const UNKNOWN: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";

#[test]
fn bad_pod_sandbox_requests() {
    let d = Caissond::start("");
    let baseline = d.footprint();
    let sysctl = |key: &str| {
        let key = key.to_string();
        move |c: &mut cri::PodSandboxConfig| {
            c.linux
                .get_or_insert_with(Default::default)
                .sysctls
                .insert(key, "1".into());
        }
    };
    let host_network = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let target_network = cri::NamespaceOption {
        network: cri::NamespaceMode::Target as i32,
        ..Default::default()
    };
    let cases = vec![
        case(
            "no config",
            Code::InvalidArgument,
            "config",
            run_pod(None, ""),
        ),
        case(
            "no metadata",
            Code::InvalidArgument,
            "config.metadata",
            run_pod(bad_pod(&d, |c| c.metadata = None), ""),
        ),
        case(
            "empty name",
            Code::InvalidArgument,
            "config.metadata.name",
            run_pod(bad_pod(&d, |c| meta(c).name.clear()), ""),
        ),
        case(
            "empty namespace",
            Code::InvalidArgument,
            "config.metadata.namespace",
            run_pod(bad_pod(&d, |c| meta(c).namespace.clear()), ""),
        ),
        case(
            "empty uid",
            Code::InvalidArgument,
            "config.metadata.uid",
            run_pod(bad_pod(&d, |c| meta(c).uid.clear()), ""),
        ),
        case(
            "unknown runtime handler",
            Code::InvalidArgument,
            "runtime_handler",
            run_pod(bad_pod(&d, |_| {}), "kata-qemu"),
        ),
        case(
            "relative log directory",
            Code::InvalidArgument,
            "config.log_directory",
            run_pod(bad_pod(&d, |c| c.log_directory = "var/log/pods".into()), ""),
        ),
        case(
            "hostname with a slash",
            Code::InvalidArgument,
            "config.hostname",
            run_pod(bad_pod(&d, |c| c.hostname = "a/b".into()), ""),
        ),
        case(
            "cgroup parent escaping",
            Code::InvalidArgument,
            "config.linux.cgroup_parent",
            run_pod(
                bad_pod(&d, |c| {
                    c.linux.get_or_insert_with(Default::default).cgroup_parent =
                        "/kubepods/../../etc".into()
                }),
                "",
            ),
        ),
        case(
            "non-namespaced sysctl",
            Code::InvalidArgument,
            "config.linux.sysctls[kernel.panic]",
            run_pod(bad_pod(&d, sysctl("kernel.panic")), ""),
        ),
        case(
            "net sysctl with host network",
            Code::InvalidArgument,
            "config.linux.sysctls[net.ipv4.ip_forward]",
            run_pod(
                bad_pod(&d, |c| {
                    sysctl("net.ipv4.ip_forward")(c);
                    namespaces(c, host_network);
                }),
                "",
            ),
        ),
        case(
            "TARGET network mode",
            Code::InvalidArgument,
            "network",
            run_pod(bad_pod(&d, |c| namespaces(c, target_network)), ""),
        ),
        case(
            "status of an unknown pod",
            Code::NotFound,
            UNKNOWN,
            rpc!(
                pod_sandbox_status,
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: UNKNOWN.into(),
                    verbose: false,
                }
            ),
        ),
        // Stop and remove are idempotent: kubelet retries them.
        case(
            "stop an unknown pod",
            Code::Ok,
            "",
            rpc!(
                stop_pod_sandbox,
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: UNKNOWN.into(),
                }
            ),
        ),
        case(
            "remove an unknown pod",
            Code::Ok,
            "",
            rpc!(
                remove_pod_sandbox,
                cri::RemovePodSandboxRequest {
                    pod_sandbox_id: UNKNOWN.into(),
                }
            ),
        ),
        case(
            "stop without an id",
            Code::InvalidArgument,
            "pod_sandbox_id",
            rpc!(stop_pod_sandbox, cri::StopPodSandboxRequest::default()),
        ),
        case(
            "remove without an id",
            Code::InvalidArgument,
            "pod_sandbox_id",
            rpc!(remove_pod_sandbox, cri::RemovePodSandboxRequest::default()),
        ),
    ];
    d.check_rejections(cases, &baseline);
    // Nothing of "never" was kept: the name is free for a good request.
    let good = d.pod_config("never");
    let pod = d.run_pod(&good);
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

#[test]
fn bad_container_requests() {
    let d = Caissond::start("");
    d.import_busybox();
    let sandbox = d.pod_config("good");
    let pod = d.run_pod(&sandbox);
    let running =
        d.create_started_container(&pod, &sandbox, container_config("c", &["sleep", "1000"]));
    let stopped_config = d.pod_config("stopped");
    let stopped = d.run_pod(&stopped_config);
    d.stop_pod(&stopped);
    let host_dir = d.dir.path().join("volume");
    std::fs::create_dir_all(&host_dir).unwrap();
    let host = host_dir.display().to_string();
    let baseline = d.footprint();

    let cases = vec![
        case(
            "no config",
            Code::InvalidArgument,
            "config",
            create(&pod, &sandbox, None),
        ),
        case(
            "no metadata",
            Code::InvalidArgument,
            "config.metadata",
            create(&pod, &sandbox, bad_container(|c| c.metadata = None)),
        ),
        case(
            "no image",
            Code::InvalidArgument,
            "config.image.image",
            create(&pod, &sandbox, bad_container(|c| c.image = None)),
        ),
        case(
            "no pod id",
            Code::InvalidArgument,
            "pod_sandbox_id",
            create("", &sandbox, bad_container(|_| {})),
        ),
        case(
            "unknown pod",
            Code::NotFound,
            UNKNOWN,
            create(UNKNOWN, &sandbox, bad_container(|_| {})),
        ),
        case(
            "stopped pod",
            Code::FailedPrecondition,
            &stopped,
            create(&stopped, &stopped_config, bad_container(|_| {})),
        ),
        case(
            "image not present",
            Code::NotFound,
            "docker.io/library/nosuch:1.0",
            create(
                &pod,
                &sandbox,
                bad_container(|c| {
                    c.image.as_mut().unwrap().image = "docker.io/library/nosuch:1.0".into()
                }),
            ),
        ),
        case(
            "duplicate name and attempt",
            Code::AlreadyExists,
            "c (attempt 0)",
            create(&pod, &sandbox, Some(container_config("c", &["true"]))),
        ),
        case(
            "absolute log path",
            Code::InvalidArgument,
            "config.log_path",
            create(
                &pod,
                &sandbox,
                bad_container(|c| c.log_path = "/etc/evil.log".into()),
            ),
        ),
        case(
            "log path with ..",
            Code::InvalidArgument,
            "config.log_path",
            create(
                &pod,
                &sandbox,
                bad_container(|c| c.log_path = "c/../../evil.log".into()),
            ),
        ),
        case(
            "relative mount path",
            Code::InvalidArgument,
            "config.mounts[0].container_path",
            create(
                &pod,
                &sandbox,
                bad_container(|c| c.mounts = vec![mount("data", &host)]),
            ),
        ),
        case(
            "mount path with ..",
            Code::InvalidArgument,
            "config.mounts[1].container_path",
            create(
                &pod,
                &sandbox,
                bad_container(|c| {
                    c.mounts = vec![mount("/ok", &host), mount("/data/../../etc", &host)]
                }),
            ),
        ),
        case(
            "relative mount source",
            Code::InvalidArgument,
            "config.mounts[0].host_path",
            create(
                &pod,
                &sandbox,
                bad_container(|c| c.mounts = vec![mount("/data", "volume")]),
            ),
        ),
        case(
            "malformed user name",
            Code::InvalidArgument,
            "run_as_username",
            create(
                &pod,
                &sandbox,
                bad_container(|c| security_context(c).run_as_username = "bad:name".into()),
            ),
        ),
        case(
            "unknown capability",
            Code::InvalidArgument,
            "CAP_BOGUS",
            create(
                &pod,
                &sandbox,
                bad_container(|c| {
                    security_context(c).capabilities = Some(cri::Capability {
                        add_capabilities: vec!["CAP_BOGUS".into()],
                        ..Default::default()
                    })
                }),
            ),
        ),
        case(
            "start an unknown container",
            Code::NotFound,
            UNKNOWN,
            rpc!(
                start_container,
                cri::StartContainerRequest {
                    container_id: UNKNOWN.into(),
                }
            ),
        ),
        case(
            "start a running container",
            Code::FailedPrecondition,
            &running,
            rpc!(
                start_container,
                cri::StartContainerRequest {
                    container_id: running.clone(),
                }
            ),
        ),
        case(
            "stop an unknown container",
            Code::NotFound,
            UNKNOWN,
            rpc!(
                stop_container,
                cri::StopContainerRequest {
                    container_id: UNKNOWN.into(),
                    timeout: 1,
                }
            ),
        ),
        case(
            "status of an unknown container",
            Code::NotFound,
            UNKNOWN,
            rpc!(
                container_status,
                cri::ContainerStatusRequest {
                    container_id: UNKNOWN.into(),
                    verbose: true,
                }
            ),
        ),
        case(
            "remove an unknown container",
            Code::Ok,
            "",
            rpc!(
                remove_container,
                cri::RemoveContainerRequest {
                    container_id: UNKNOWN.into(),
                }
            ),
        ),
        case(
            "exec in an unknown container",
            Code::NotFound,
            UNKNOWN,
            rpc!(
                exec_sync,
                cri::ExecSyncRequest {
                    container_id: UNKNOWN.into(),
                    cmd: vec!["true".into()],
                    timeout: 5,
                }
            ),
        ),
        case(
            "exec without a command",
            Code::InvalidArgument,
            "cmd",
            rpc!(
                exec_sync,
                cri::ExecSyncRequest {
                    container_id: running.clone(),
                    cmd: vec![],
                    timeout: 5,
                }
            ),
        ),
        case(
            "exec with a negative timeout",
            Code::InvalidArgument,
            "timeout",
            rpc!(
                exec_sync,
                cri::ExecSyncRequest {
                    container_id: running.clone(),
                    cmd: vec!["true".into()],
                    timeout: -1,
                }
            ),
        ),
        case(
            "reopen the log of an unknown container",
            Code::NotFound,
            UNKNOWN,
            rpc!(
                reopen_container_log,
                cri::ReopenContainerLogRequest {
                    container_id: UNKNOWN.into(),
                }
            ),
        ),
    ];
    d.check_rejections(cases, &baseline);
    // The rejected "fresh" was never recorded: a good one by that name works.
    let fresh = d.create_container(&pod, &sandbox, container_config("fresh", &["true"]));
    d.start_container(&fresh);
}

/// An empty id is a bad request naming its field, never "not found" (nor
/// an idempotent OK).
#[test]
fn empty_ids_are_invalid_arguments() {
    let d = Caissond::start("");
    let baseline = d.footprint();
    let container =
        |name: &'static str, call: Call| case(name, Code::InvalidArgument, "container_id", call);
    let pod =
        |name: &'static str, call: Call| case(name, Code::InvalidArgument, "pod_sandbox_id", call);
    let cases = vec![
        pod(
            "StopPodSandbox",
            rpc!(stop_pod_sandbox, cri::StopPodSandboxRequest::default()),
        ),
        pod(
            "RemovePodSandbox",
            rpc!(remove_pod_sandbox, cri::RemovePodSandboxRequest::default()),
        ),
        pod(
            "PodSandboxStatus",
            rpc!(pod_sandbox_status, cri::PodSandboxStatusRequest::default()),
        ),
        pod(
            "PodSandboxStats",
            rpc!(pod_sandbox_stats, cri::PodSandboxStatsRequest::default()),
        ),
        container(
            "StartContainer",
            rpc!(start_container, cri::StartContainerRequest::default()),
        ),
        container(
            "StopContainer",
            rpc!(stop_container, cri::StopContainerRequest::default()),
        ),
        container(
            "RemoveContainer",
            rpc!(remove_container, cri::RemoveContainerRequest::default()),
        ),
        container(
            "ContainerStatus",
            rpc!(container_status, cri::ContainerStatusRequest::default()),
        ),
        container(
            "ContainerStats",
            rpc!(container_stats, cri::ContainerStatsRequest::default()),
        ),
        container(
            "UpdateContainerResources",
            rpc!(
                update_container_resources,
                cri::UpdateContainerResourcesRequest::default()
            ),
        ),
        container(
            "ReopenContainerLog",
            rpc!(
                reopen_container_log,
                cri::ReopenContainerLogRequest::default()
            ),
        ),
        container(
            "ExecSync",
            rpc!(
                exec_sync,
                cri::ExecSyncRequest {
                    cmd: vec!["true".into()],
                    timeout: 5,
                    ..Default::default()
                }
            ),
        ),
    ];
    d.check_rejections(cases, &baseline);
}

#[test]
fn streaming_stats_update_and_checkpoint_calls_without_an_id_are_refused() {
    let d = Caissond::start("");
    let baseline = d.footprint();
    let cases = vec![
        case(
            "Attach without an id",
            Code::InvalidArgument,
            "container_id",
            rpc!(attach, cri::AttachRequest::default()),
        ),
        case(
            "Exec without an id",
            Code::InvalidArgument,
            "container_id",
            rpc!(exec, cri::ExecRequest::default()),
        ),
        case(
            "PortForward without an id",
            Code::InvalidArgument,
            "pod_sandbox_id",
            rpc!(port_forward, cri::PortForwardRequest::default()),
        ),
        case(
            "ContainerStats without an id",
            Code::InvalidArgument,
            "container_id",
            rpc!(container_stats, cri::ContainerStatsRequest::default()),
        ),
        case(
            "PodSandboxStats without an id",
            Code::InvalidArgument,
            "pod_sandbox_id",
            rpc!(pod_sandbox_stats, cri::PodSandboxStatsRequest::default()),
        ),
        case(
            "UpdateContainerResources without an id",
            Code::InvalidArgument,
            "container_id",
            rpc!(
                update_container_resources,
                cri::UpdateContainerResourcesRequest::default()
            ),
        ),
        case(
            "CheckpointContainer without an id",
            Code::InvalidArgument,
            "container_id",
            rpc!(
                checkpoint_container,
                cri::CheckpointContainerRequest::default()
            ),
        ),
    ];
    d.check_rejections(cases, &baseline);
}
