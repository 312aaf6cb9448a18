//! Requests at and past the limits: gRPC messages over the CRI socket's
//! 16 MiB (kubelet's and containerd's), 10,000 labels, megabyte label and
//! annotation values. Each is served or refused with a clear status,
//! caissond's memory stays bounded, and a refusal leaves nothing behind.
//! Needs root.

use caisson_tests::daemon::{container_config, proc_status_field, Caissond};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::Code;

/// A client whose own limits are far above the server's, so the server's
/// are what is tested.
fn big_client(d: &Caissond) -> RuntimeServiceClient<Channel> {
    d.runtime()
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

/// caissond's peak RSS so far, bytes.
fn peak_rss(d: &Caissond) -> u64 {
    let kb: u64 = proc_status_field(d.pid(), "VmHWM")
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM of caissond");
    kb << 10
}

#[test]
fn a_request_over_the_message_limit_is_refused_with_bounded_memory() {
    let d = Caissond::start("");
    let baseline = d.footprint();
    let mut rt = big_client(&d);
    let before = peak_rss(&d);
    for size in [17 << 20, 48 << 20] {
        let mut config = d.pod_config("huge");
        config.annotations.insert("blob".into(), "x".repeat(size));
        let err =
            d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))
            .unwrap_err();
        // tonic answers OUT_OF_RANGE where Go's gRPC says RESOURCE_EXHAUSTED.
        assert!(
            matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{size}: {err:?}"
        );
        assert!(
            err.message().contains("too large") && err.message().contains("16777216"),
            "{size}: {}",
            err.message()
        );
    }
    let grown = peak_rss(&d).saturating_sub(before);
    assert!(
        grown < 40 << 20,
        "caissond's peak RSS grew by {} MiB for refused messages",
        grown >> 20
    );
    // Still serving, nothing made.
    d.rt.block_on(rt.version(cri::VersionRequest::default()))
        .unwrap();
    assert_eq!(d.footprint(), baseline, "{}", d.footprint().diff(&baseline));
}

#[test]
fn megabyte_labels_and_annotations_are_invalid_argument_naming_the_entry() {
    let d = Caissond::start("");
    d.import_busybox();
    let mut rt = big_client(&d);
    let baseline = d.footprint();

    let mut config = d.pod_config("fat");
    config
        .annotations
        .insert("blob".into(), "x".repeat(1 << 20));
    let err =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }))
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("config.annotations[\"blob\"]"),
        "{}",
        err.message()
    );
    assert_eq!(d.footprint(), baseline, "{}", d.footprint().diff(&baseline));

    let config = d.pod_config("lean");
    let pod = d.run_pod(&config);
    let with_pod = d.footprint();
    let mut container = container_config("fat", &["sleep", "60"]);
    container.labels.insert("blob".into(), "y".repeat(1 << 20));
    let err =
        d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        }))
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("config.labels[\"blob\"]"),
        "{}",
        err.message()
    );
    assert_eq!(d.footprint(), with_pod, "{}", d.footprint().diff(&with_pod));
    d.remove_pod(&pod);
}

#[test]
fn ten_thousand_labels_are_kept_filtered_on_and_survive_a_restart() {
    let mut d = Caissond::start("");
    d.import_busybox();
    let mut rt = big_client(&d);
    let mut config = d.pod_config("many");
    for i in 0..10_000 {
        config
            .labels
            .insert(format!("example.com/label-{i}"), format!("value-{i}"));
    }
    let pod =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut container = container_config("app", &["sleep", "60"]);
    for i in 0..10_000 {
        container
            .annotations
            .insert(format!("example.com/note-{i}"), format!("note-{i}"));
    }
    let id =
        d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        }))
        .unwrap()
        .into_inner()
        .container_id;

    let check = |d: &Caissond| {
        let mut rt = big_client(d);
        let status =
            d.rt.block_on(rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert!(status.labels.len() >= 10_000, "{}", status.labels.len());
        assert_eq!(status.labels["example.com/label-9999"], "value-9999");
        let listed =
            d.rt.block_on(
                rt.list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(cri::PodSandboxFilter {
                        label_selector: [(
                            "example.com/label-4242".to_string(),
                            "value-4242".to_string(),
                        )]
                        .into(),
                        ..Default::default()
                    }),
                }),
            )
            .unwrap()
            .into_inner()
            .items;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, pod);
        let container =
            d.rt.block_on(rt.container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(container.annotations["example.com/note-1234"], "note-1234");
        assert!(container.annotations.len() >= 10_000);
    };
    check(&d);
    d.restart_after_sigkill();
    check(&d);
    d.remove_pod(&pod);
}
