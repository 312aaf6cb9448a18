//! Wire compatibility of Caisson's CRI types with `k8s-cri`'s, which are
//! generated independently from Kubernetes' own `api.proto` (kubelet and
//! crictl speak exactly that).
//!
//! Every representative message is built as a `k8s-cri` value with every
//! field, at every depth, set to a distinct non-default value (checked, not
//! assumed), and then:
//! 1. encoded by `k8s-cri` and decoded as ours;
//! 2. compared field by field: prost's derived `Debug` prints type names,
//!    every field name and value (enums by variant name), identically on
//!    both sides;
//! 3. re-encoded from ours, which must give the same bytes;
//! 4. decoded from those bytes by `k8s-cri`, which must equal the original.
//!
//! The RPC tests check that our `api.proto` declares every CRI v1 RPC and
//! that the generated server traits have a method for each.

#[path = "wire_compat/container.rs"]
mod container;
#[path = "wire_compat/image.rs"]
mod image;
#[path = "wire_compat/pod.rs"]
mod pod;
#[path = "wire_compat/runtime.rs"]
mod runtime;
#[path = "wire_compat/security.rs"]
mod security;
#[path = "wire_compat/stats.rs"]
mod stats;
#[path = "wire_compat/values.rs"]
mod values;

use std::collections::HashMap;
use std::fmt::Debug;

use caisson_proto::cri as ours;
use k8s_cri::v1 as theirs;
use prost::Message;

use values::Distinct;

/// Steps 1–4 of the module docs for one message.
fn assert_wire_compatible<Theirs, Ours>(original: &Theirs)
where
    Theirs: Message + Default + PartialEq + Debug,
    Ours: Message + Default + Debug,
{
    let wire = original.encode_to_vec();
    let decoded = Ours::decode(wire.as_slice()).expect("our type decodes k8s-cri's bytes");
    assert_eq!(
        format!("{decoded:#?}"),
        format!("{original:#?}"),
        "our decoding differs from k8s-cri's value"
    );
    let rewire = decoded.encode_to_vec();
    assert!(
        rewire == wire,
        "our re-encoding differs from k8s-cri's bytes"
    );
    let back = Theirs::decode(rewire.as_slice()).expect("k8s-cri decodes our bytes");
    assert!(
        back == *original,
        "k8s-cri reads our bytes as a different value"
    );
}

/// Fails naming every field of `fixture` left at its default value, and
/// every value used by two fields.
fn assert_fully_set(message: &str, fixture: &serde_json::Value) {
    let unset = values::unset_fields(fixture);
    assert!(
        unset.is_empty(),
        "{message} fixture leaves fields unset: {unset:#?}"
    );
    let repeated = values::repeated_values(fixture);
    assert!(
        repeated.is_empty(),
        "{message} fixture repeats values: {repeated:#?}"
    );
}

/// One test per message: `module::fixture => Message`.
macro_rules! wire_compatible {
    ($($module:ident::$fixture:ident => $message:ident,)*) => {$(
        #[test]
        fn $fixture() {
            let fixture: theirs::$message = $module::$fixture(&mut Distinct::new());
            let json = serde_json::to_value(&fixture).expect("k8s-cri types serialize");
            assert_fully_set(stringify!($message), &json);
            assert_wire_compatible::<theirs::$message, ours::$message>(&fixture);
        }
    )*};
}

wire_compatible! {
    pod::pod_sandbox_config => PodSandboxConfig,
    pod::run_pod_sandbox_request => RunPodSandboxRequest,
    pod::run_pod_sandbox_response => RunPodSandboxResponse,
    pod::pod_sandbox_status_response => PodSandboxStatusResponse,
    pod::list_pod_sandbox_response => ListPodSandboxResponse,
    container::container_config => ContainerConfig,
    container::create_container_request => CreateContainerRequest,
    container::container_status => ContainerStatus,
    container::container_status_response => ContainerStatusResponse,
    container::list_containers_request => ListContainersRequest,
    container::list_containers_response => ListContainersResponse,
    container::update_container_resources_request => UpdateContainerResourcesRequest,
    container::exec_sync_request => ExecSyncRequest,
    container::exec_sync_response => ExecSyncResponse,
    stats::container_stats => ContainerStats,
    stats::list_container_stats_response => ListContainerStatsResponse,
    stats::pod_sandbox_stats_response => PodSandboxStatsResponse,
    stats::image_fs_info_response => ImageFsInfoResponse,
    image::pull_image_request => PullImageRequest,
    image::pull_image_response => PullImageResponse,
    image::image_status_request => ImageStatusRequest,
    image::image_status_response => ImageStatusResponse,
    image::list_images_request => ListImagesRequest,
    image::list_images_response => ListImagesResponse,
    runtime::version_request => VersionRequest,
    runtime::version_response => VersionResponse,
    runtime::status_response => StatusResponse,
    runtime::runtime_config_response => RuntimeConfigResponse,
    runtime::update_runtime_config_request => UpdateRuntimeConfigRequest,
    runtime::container_event_response => ContainerEventResponse,
}

// ---- Guards: the checks above can fail -------------------------------------

#[test]
fn one_changed_field_is_noticed_by_every_comparison() {
    let original = pod::pod_sandbox_config(&mut Distinct::new());
    let wire = original.encode_to_vec();
    assert!(
        wire.len() > 1000,
        "fixture encodes to only {} bytes",
        wire.len()
    );

    let mut changed = ours::PodSandboxConfig::decode(wire.as_slice()).unwrap();
    let run_as_user = changed
        .linux
        .as_mut()
        .and_then(|linux| linux.security_context.as_mut())
        .and_then(|context| context.run_as_user.as_mut())
        .unwrap();
    run_as_user.value += 1;

    assert_ne!(format!("{changed:?}"), format!("{original:?}"));
    let rewire = changed.encode_to_vec();
    assert_eq!(rewire.len(), wire.len(), "same shape, one value differs");
    assert_ne!(rewire, wire);
    assert_ne!(
        theirs::PodSandboxConfig::decode(rewire.as_slice()).unwrap(),
        original
    );
}

#[test]
fn lookalike_messages_are_rejected() {
    let rejects = |check: fn()| std::panic::catch_unwind(check).is_err();
    // Field 2 is a string in one and a number in the other: decoding fails.
    assert!(rejects(|| {
        let metadata = pod::pod_sandbox_metadata(&mut Distinct::new()).unwrap();
        assert_wire_compatible::<theirs::PodSandboxMetadata, ours::ContainerMetadata>(&metadata);
    }));
    // Identical bytes, but other names: only the field-by-field view differs.
    assert!(rejects(|| {
        let running = theirs::ContainerStateValue {
            state: theirs::ContainerState::ContainerRunning as i32,
        };
        assert_wire_compatible::<theirs::ContainerStateValue, ours::PodSandboxStateValue>(&running);
    }));
}

#[test]
fn debug_output_names_every_field_and_enum_variants_alike() {
    let mapping = |protocol: i32| theirs::PortMapping {
        protocol,
        container_port: 8080,
        host_port: 0,
        host_ip: String::new(),
    };
    let theirs = mapping(theirs::Protocol::Sctp as i32);
    let decoded = ours::PortMapping::decode(theirs.encode_to_vec().as_slice()).unwrap();
    let expected =
        r#"PortMapping { protocol: Sctp, container_port: 8080, host_port: 0, host_ip: "" }"#;
    assert_eq!(format!("{decoded:?}"), expected);
    assert_eq!(format!("{theirs:?}"), expected);
    // A number that is no variant prints as the number.
    assert_eq!(
        format!("{:?}", mapping(7)),
        r#"PortMapping { protocol: 7, container_port: 8080, host_port: 0, host_ip: "" }"#
    );
}

#[test]
fn fixture_checks_notice_unset_and_repeated_fields() {
    let mut fixture = pod::pod_sandbox_config(&mut Distinct::new());
    fixture.hostname.clear();
    let context = fixture
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    context.seccomp.as_mut().unwrap().localhost_ref.clear();
    context.supplemental_groups_policy = theirs::SupplementalGroupsPolicy::Merge as i32;
    context.apparmor = None;
    let log_directory = fixture.log_directory.clone();
    fixture.metadata.as_mut().unwrap().name = log_directory.clone();

    let json = serde_json::to_value(&fixture).unwrap();
    assert_eq!(
        values::unset_fields(&json),
        [
            "hostname",
            "linux.security_context.apparmor",
            "linux.security_context.seccomp.localhost_ref",
            "linux.security_context.supplemental_groups_policy",
        ]
    );
    assert_eq!(
        values::repeated_values(&json),
        [(
            log_directory,
            vec!["log_directory".into(), "metadata.name".into()]
        )]
        .into()
    );
}

// ---- What one-entry fixtures cannot show ----------------------------------

#[test]
fn multi_entry_maps_arrive_whole_in_any_order() {
    let v = &mut Distinct::new();
    let mut original = pod::pod_sandbox_config(v);
    let entries = |v: &mut Distinct, field: &str| -> HashMap<String, String> {
        (0..8)
            .map(|_| (v.text(&format!("{field}-key")), v.text(field)))
            .collect()
    };
    original.labels = entries(v, "label");
    original.annotations = entries(v, "annotation");
    original.linux.as_mut().unwrap().sysctls = entries(v, "sysctl");

    let wire = original.encode_to_vec();
    let decoded = ours::PodSandboxConfig::decode(wire.as_slice()).unwrap();
    assert_eq!(decoded.labels, original.labels);
    assert_eq!(decoded.annotations, original.annotations);
    assert_eq!(
        decoded.linux.as_ref().unwrap().sysctls,
        original.linux.as_ref().unwrap().sysctls
    );

    let rewire = decoded.encode_to_vec();
    assert_eq!(rewire.len(), wire.len());
    assert_eq!(
        theirs::PodSandboxConfig::decode(rewire.as_slice()).unwrap(),
        original
    );
}

#[test]
fn default_values_travel_as_absence() {
    // TCP, POD namespaces and SANDBOX_READY are the zero values kubelet
    // sends most; they are not on the wire and must decode as themselves.
    let tcp = theirs::PortMapping {
        protocol: theirs::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 8080,
        host_ip: String::new(),
    };
    assert_eq!(
        tcp.encoded_len(),
        theirs::PortMapping {
            protocol: 1,
            ..tcp.clone()
        }
        .encoded_len()
            - 2
    );
    assert_wire_compatible::<_, ours::PortMapping>(&tcp);

    let pod_namespaces = theirs::NamespaceOption::default();
    assert!(pod_namespaces.encode_to_vec().is_empty());
    let decoded = ours::NamespaceOption::decode(&[][..]).unwrap();
    assert_eq!(decoded.network(), ours::NamespaceMode::Pod);
    assert_eq!(decoded.userns_options, None);

    let ready = theirs::PodSandboxStateValue::default();
    assert_wire_compatible::<_, ours::PodSandboxStateValue>(&ready);
    assert_eq!(
        ours::PodSandboxStateValue::decode(&[][..]).unwrap().state(),
        ours::PodSandboxState::SandboxReady
    );
}

// ---- Services ---------------------------------------------------------------

/// Declares `$list`, the CRI v1 RPCs of one service paired with the method
/// that serves each, and a function naming every such method on the
/// generated server trait, so that a missing method does not compile.
macro_rules! served_rpcs {
    ($list:ident, $server:path, [$($rpc:ident => $method:ident,)*]) => {
        const $list: &[(&str, &str)] = &[$((stringify!($rpc), stringify!($method))),*];
        const _: () = {
            #[allow(dead_code)]
            fn every_rpc_is_a_method<S: $server>() {
                $(let _ = S::$method;)*
            }
        };
    };
}

served_rpcs!(RUNTIME_SERVICE_RPCS, ours::runtime_service_server::RuntimeService, [
    Version => version,
    RunPodSandbox => run_pod_sandbox,
    StopPodSandbox => stop_pod_sandbox,
    RemovePodSandbox => remove_pod_sandbox,
    PodSandboxStatus => pod_sandbox_status,
    ListPodSandbox => list_pod_sandbox,
    CreateContainer => create_container,
    StartContainer => start_container,
    StopContainer => stop_container,
    RemoveContainer => remove_container,
    ListContainers => list_containers,
    ContainerStatus => container_status,
    UpdateContainerResources => update_container_resources,
    ReopenContainerLog => reopen_container_log,
    ExecSync => exec_sync,
    Exec => exec,
    Attach => attach,
    PortForward => port_forward,
    ContainerStats => container_stats,
    ListContainerStats => list_container_stats,
    PodSandboxStats => pod_sandbox_stats,
    ListPodSandboxStats => list_pod_sandbox_stats,
    UpdateRuntimeConfig => update_runtime_config,
    Status => status,
    CheckpointContainer => checkpoint_container,
    GetContainerEvents => get_container_events,
    ListMetricDescriptors => list_metric_descriptors,
    ListPodSandboxMetrics => list_pod_sandbox_metrics,
    RuntimeConfig => runtime_config,
]);

served_rpcs!(IMAGE_SERVICE_RPCS, ours::image_service_server::ImageService, [
    ListImages => list_images,
    ImageStatus => image_status,
    PullImage => pull_image,
    RemoveImage => remove_image,
    ImageFsInfo => image_fs_info,
]);

/// The RPC names declared in `service $service { ... }` of our api.proto.
fn rpcs_declared_in_api_proto(service: &str) -> Vec<&'static str> {
    let proto = include_str!("../cri/api.proto");
    let body = proto
        .split_once(&format!("\nservice {service} {{"))
        .unwrap_or_else(|| panic!("api.proto declares no service {service}"))
        .1;
    let body = &body[..body.find("\n}").expect("service body is closed")];
    body.lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .map(|rpc| rpc[..rpc.find('(').expect("rpc Name(")].trim())
        .collect()
}

fn snake_case(name: &str) -> String {
    let mut snake = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}

#[test]
fn api_proto_declares_exactly_the_cri_v1_rpcs_and_the_servers_serve_them() {
    for (service, known) in [
        ("RuntimeService", RUNTIME_SERVICE_RPCS),
        ("ImageService", IMAGE_SERVICE_RPCS),
    ] {
        let mut declared = rpcs_declared_in_api_proto(service);
        let mut expected: Vec<&str> = known.iter().map(|(rpc, _)| *rpc).collect();
        declared.sort_unstable();
        expected.sort_unstable();
        assert_eq!(declared, expected, "{service} RPCs in api.proto");
        for (rpc, method) in known {
            assert_eq!(
                snake_case(rpc),
                *method,
                "{service}.{rpc} is served by its own method"
            );
        }
    }
}
