//! caissond answers every `:authority` a gRPC client may send on its unix
//! socket (Go's gRPC of kubelet/crictl 1.26 sends the socket path, which the
//! `h2` crate alone resets with PROTOCOL_ERROR), and logs each failed call
//! with its method, ids and cause. A raw HTTP/2 client sends the HEADERS
//! frames itself, so no URI type stands between the test and the wire.

use caisson_tests::daemon::{container_config, Caissond};
use caisson_tests::http2::{grpc_message, grpc_request_fields, CallOutcome, RawClient};
use k8s_cri::v1 as cri;
use prost::Message;

const VERSION: &str = "/runtime.v1.RuntimeService/Version";

fn version_over_raw_h2(d: &Caissond, authority: Option<&[u8]>) -> CallOutcome {
    let mut client = RawClient::connect(&d.socket).expect("connecting to caissond");
    let request = grpc_message(&cri::VersionRequest::default().encode_to_vec());
    client
        .call(&grpc_request_fields(VERSION, authority), &request)
        .expect("the call ends")
}

#[test]
fn every_authority_a_client_may_send_is_answered() {
    let d = Caissond::start("");
    let socket = d.socket.display().to_string();
    let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        (
            "the socket path (Go gRPC, grpc-java)",
            Some(socket.clone().into_bytes()),
        ),
        (
            "localhost (Python grpcio, newer Go gRPC)",
            Some(b"localhost".to_vec()),
        ),
        ("empty", Some(Vec::new())),
        ("absent", None),
        ("bytes no URI allows", Some(b"\xff\x00 {}\x7f/..".to_vec())),
        ("a host and port", Some(b"caissond.local:10010".to_vec())),
    ];
    for (what, authority) in &cases {
        // Twice on one connection each, so the second request's headers
        // may come from the client's HPACK table.
        let mut client = RawClient::connect(&d.socket).expect("connecting to caissond");
        let request = grpc_message(&cri::VersionRequest::default().encode_to_vec());
        for attempt in 0..2 {
            let outcome = client
                .call(
                    &grpc_request_fields(VERSION, authority.as_deref()),
                    &request,
                )
                .expect("the call ends");
            let CallOutcome::Answered { ref data, .. } = outcome else {
                panic!("{what} (call {attempt}): {outcome:?}\n{}", d.log_tail());
            };
            assert_eq!(outcome.grpc_status().as_deref(), Some("0"), "{what}");
            assert!(data.len() > 5, "{what}: a gRPC message");
            let version = cri::VersionResponse::decode(&data[5..]).expect("a VersionResponse");
            assert_eq!(version.runtime_name, "caisson", "{what}");
            assert_eq!(version.runtime_api_version, "v1", "{what}");
        }
    }
    // What was replaced is named in the (debug) log, the socket path first.
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    let replaced: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("serving it as localhost"))
        .collect();
    assert!(
        replaced.iter().any(|l| l.contains(&socket)),
        "the socket path is logged as replaced:\n{}",
        replaced.join("\n")
    );
    assert!(
        !replaced.iter().any(|l| l.contains("caissond.local")),
        "a valid authority is kept"
    );
}

#[test]
fn an_unknown_method_is_a_grpc_answer_not_a_reset() {
    let d = Caissond::start("");
    let mut client = RawClient::connect(&d.socket).expect("connecting to caissond");
    let fields = grpc_request_fields(
        "/runtime.v1.RuntimeService/NoSuchMethod",
        Some(d.socket.display().to_string().as_bytes()),
    );
    let outcome = client.call(&fields, &grpc_message(&[])).unwrap();
    assert_eq!(
        outcome.grpc_status().as_deref(),
        Some("12"),
        "UNIMPLEMENTED: {outcome:?}"
    );
    // The connection still serves the next call.
    assert_eq!(
        version_over_raw_h2(&d, Some(b"/x"))
            .grpc_status()
            .as_deref(),
        Some("0")
    );
}

#[test]
fn failed_calls_are_logged_once_with_method_ids_and_cause() {
    let d = Caissond::start("");
    d.import_pause_image();
    let config = d.pod_config("failing-create");
    let pod = d.run_pod(&config);
    let mut rt = d.runtime();
    let err =
        d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                image: Some(cri::ImageSpec {
                    image: "example.invalid/no-such-image:1".into(),
                    ..Default::default()
                }),
                ..container_config("c", &["true"])
            }),
            sandbox_config: Some(config),
        }))
        .expect_err("an image that is not here");
    let missing = format!("{:064x}", 0xdead_u32);
    let err2 =
        d.rt.block_on(rt.container_status(cri::ContainerStatusRequest {
            container_id: missing.clone(),
            verbose: false,
        }))
        .expect_err("no such container");
    assert_eq!(err2.code(), tonic::Code::NotFound);
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    let lines = |needle: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    };
    let create = lines("CreateContainer failed");
    assert_eq!(create.len(), 1, "logged once: {create:#?}");
    assert!(create[0].contains("WARN"), "{}", create[0]);
    assert!(create[0].contains(&pod), "names the pod: {}", create[0]);
    assert!(
        create[0].contains(err.message()) || create[0].contains("no-such-image"),
        "carries the cause: {}\n(status: {})",
        create[0],
        err.message()
    );
    let status = lines("ContainerStatus failed");
    assert_eq!(status.len(), 1, "{status:#?}");
    assert!(
        status[0].contains(&missing),
        "names the container: {}",
        status[0]
    );
    assert!(status[0].contains("NotFound"), "{}", status[0]);
    // Calls that succeed leave no such line.
    assert!(lines("RunPodSandbox failed").is_empty());
    assert!(lines("Version failed").is_empty());
}
