//! Python's grpcio (gRPC's C core, Debian's `python3-grpcio`) drives a real
//! caissond, with stubs that grpcio-tools generates from the CRI's
//! `api.proto` as the `k8s-cri` crate ships it (found through `cargo
//! metadata`): a second gRPC implementation on the wire, sending each
//! `:authority` form (its default, the socket path as Go's gRPC does,
//! `localhost`, empty).

use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_tests::daemon::Caissond;
use caisson_tests::require;

/// `proto/v1.proto` of the `k8s-cri` package this workspace builds with.
fn cri_proto() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg("x86_64-unknown-linux-gnu")
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "k8s-cri")
        .expect("k8s-cri in cargo metadata");
    let dir = Path::new(package["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let proto = dir.join("proto/v1.proto");
    assert!(proto.is_file(), "{} is missing", proto.display());
    proto
}

/// `v1_pb2.py` and `v1_pb2_grpc.py` in a temp dir.
fn generate_stubs(python: &Path, out: &Path) {
    let proto = cri_proto();
    let status = Command::new(python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.parent().unwrap().display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(&proto)
        .status()
        .expect("running grpc_tools.protoc");
    assert!(status.success(), "grpc_tools.protoc failed");
    for f in ["v1_pb2.py", "v1_pb2_grpc.py"] {
        assert!(out.join(f).is_file(), "{f} was not generated");
    }
}

#[test]
fn grpcio_runs_a_pod_lifecycle_with_every_authority_form() {
    let python = require::python_grpc();
    let d = Caissond::start("");
    d.import_busybox();
    d.import_pause_image();
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(&python, stubs.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cri_client.py");
    let socket = d.socket.display().to_string();
    for (i, authority) in ["default", socket.as_str(), "localhost", ""]
        .into_iter()
        .enumerate()
    {
        let name = format!("grpcio-{i}");
        let out = Command::new(&python)
            .arg(&script)
            .arg(stubs.path())
            .arg(&socket)
            .arg(authority)
            .arg(&name)
            .arg(d.log_dir().join(&name))
            .output()
            .expect("running the Python client");
        assert!(
            out.status.success(),
            "grpcio with authority {authority:?}: {}\n--- caissond log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log_tail()
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let what = format!("authority {authority:?}: {got}");
        assert_eq!(got["runtime_name"], "caisson", "{what}");
        assert_eq!(got["runtime_api_version"], "v1", "{what}");
        assert_eq!(got["conditions"]["RuntimeReady"], true, "{what}");
        let images = got["images"].as_array().unwrap();
        assert!(
            images
                .iter()
                .any(|t| t == "docker.io/library/busybox:latest"),
            "{what}"
        );
        // The container ran: its hostname is the pod's, its streams are
        // apart, its exit code is the command's.
        assert_eq!(got["exec"]["stdout"], format!("{name}\n"), "{what}");
        assert_eq!(got["exec"]["stderr"], "err\n", "{what}");
        assert_eq!(got["exec"]["exit_code"], 3, "{what}");
        assert_eq!(got["state"], "CONTAINER_RUNNING", "{what}");
        let pod = got["pod_id"].as_str().unwrap();
        assert!(
            !got["pods_left"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == pod),
            "{what}: the pod is gone"
        );
        assert!(
            !d.pods_dir().join(pod).exists(),
            "{what}: the pod's run dir is removed"
        );
    }
    // The socket path and the empty authority reached caissond as sent
    // (grpcio's default is `localhost`, which is kept) and were served as
    // localhost, each logged once per connection.
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    let replaced: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("serving it as localhost"))
        .collect();
    let with_path = replaced.iter().filter(|l| l.contains(&socket)).count();
    let empty = replaced
        .iter()
        .filter(|l| l.trim_end().ends_with("authority="))
        .count();
    assert_eq!(
        (with_path, empty, replaced.len()),
        (1, 1, 2),
        "one connection sent the socket path, one an empty authority:\n{}",
        replaced.join("\n")
    );
}

/// The CRI socket's limits through grpcio: a message over 16 MiB refused
/// (gRPC's C core names the size), a 1 MiB annotation refused naming it, a
/// pod with 10,000 labels kept and found by one of them.
#[test]
fn grpcio_meets_the_message_and_metadata_limits() {
    let python = require::python_grpc();
    let d = Caissond::start("");
    let baseline = d.footprint();
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(&python, stubs.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cri_limits.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(stubs.path())
        .arg(&d.socket)
        .arg("grpcio-limits")
        .arg(d.log_dir().join("grpcio-limits"))
        .output()
        .expect("running the Python client");
    assert!(
        out.status.success(),
        "{}\n--- caissond log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let over = &got["over_message_limit"];
    assert!(
        over["code"] == "OUT_OF_RANGE" || over["code"] == "RESOURCE_EXHAUSTED",
        "{got}"
    );
    assert_eq!(
        got["over_metadata_limit"]["code"], "INVALID_ARGUMENT",
        "{got}"
    );
    assert!(
        got["over_metadata_limit"]["details"]
            .as_str()
            .unwrap()
            .contains("config.annotations[\"blob\"]"),
        "{got}"
    );
    assert!(got["labels_kept"].as_u64().unwrap() >= 10_000, "{got}");
    assert_eq!(got["found_by_label"], serde_json::json!([true]), "{got}");
    assert_eq!(got["version_after"], "caisson", "{got}");
    // The pod is gone with everything it had (the shim's run dirs stay,
    // as after any pod).
    let now = d.footprint();
    assert_eq!(
        (&now.mounts, &now.cgroups, &now.processes),
        (&baseline.mounts, &baseline.cgroups, &baseline.processes),
        "{}",
        now.diff(&baseline)
    );
}
