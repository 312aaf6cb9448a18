//! `caissond status`: the running daemon's conditions, handlers with their
//! backends' readiness, pods and containers per handler, and the config in
//! use, read over its socket by the `caissond` binary itself. Needs root.

use std::process::Command;

use caisson_tests::daemon::{container_config, target_dir, Caissond};
use serde_json::Value;

/// A handler whose runtime binary is not there.
const BROKEN: &str = "\n[runtimes.handlers.broken-oci]\nbackend = \"oci\"\n[runtimes.handlers.broken-oci.options]\nruntime_path = \"/nonexistent/runc\"\n";

fn status(d: &Caissond, json: bool) -> String {
    let socket = d.socket.display().to_string();
    let mut args = vec!["status", "--socket", &socket];
    if json {
        args.push("--json");
    }
    let out = Command::new(target_dir().join("caissond"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "caissond status: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn handler<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no handler {name} in {doc:#}"))
}

#[test]
fn status_reports_handlers_readiness_counts_and_config() {
    let d = Caissond::start_edited("", |config| format!("{config}{BROKEN}"));
    d.import_busybox();
    let runc_config = d.pod_config("status-runc");
    let runc_pod = d.run_pod_with_handler(&runc_config, "runc");
    d.create_started_container(
        &runc_pod,
        &runc_config,
        container_config("a", &["sleep", "1000"]),
    );
    d.create_started_container(
        &runc_pod,
        &runc_config,
        container_config("b", &["sleep", "1001"]),
    );
    let hardened_config = d.pod_config("status-hardened");
    let hardened_pod = d.run_pod_with_handler(&hardened_config, "hardened");
    d.create_container(
        &hardened_pod,
        &hardened_config,
        container_config("c", &["sleep", "1002"]),
    );

    let text = status(&d, true);
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(doc["config_path"], d.config_path.display().to_string());
    assert_eq!(doc["socket"], d.socket.display().to_string());
    assert_eq!(doc["default_handler"], "runc");
    let runtime_ready = doc["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RuntimeReady")
        .unwrap_or_else(|| panic!("no RuntimeReady condition: {doc:#}"));
    assert_eq!(runtime_ready["status"], true);

    for (name, backend) in [
        ("runc", "native"),
        ("hardened", "hardened"),
        ("runc-oci", "oci"),
        ("crun-oci", "oci"),
    ] {
        let h = handler(&doc, name);
        assert_eq!(h["backend"], backend, "{h:#}");
        assert_eq!(h["ready"], true, "{h:#}");
        assert_eq!(h["reason"], "", "{h:#}");
        let checks: Vec<&str> = h["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(checks.contains(&"shim binary"), "{h:#}");
        match backend {
            "hardened" => {
                assert!(checks.contains(&"user namespaces"), "{h:#}");
                assert!(checks.contains(&"idmapped mounts"), "{h:#}");
            }
            "oci" => assert!(checks.contains(&"oci runtime"), "{h:#}"),
            _ => {}
        }
    }
    assert_eq!(handler(&doc, "runc")["default"], true);
    assert!(handler(&doc, "runc-oci")["checks"]
        .to_string()
        .contains("runc version"));

    let counts = |name: &str, what: &str| handler(&doc, name)[what].clone();
    assert_eq!(counts("runc", "pods"), serde_json::json!({"ready": 1}));
    assert_eq!(
        counts("runc", "containers"),
        serde_json::json!({"running": 2})
    );
    assert_eq!(counts("hardened", "pods"), serde_json::json!({"ready": 1}));
    assert_eq!(
        counts("hardened", "containers"),
        serde_json::json!({"created": 1})
    );
    assert_eq!(counts("runc-oci", "pods"), serde_json::json!({}));

    let broken = handler(&doc, "broken-oci");
    assert_eq!(broken["ready"], false, "{broken:#}");
    let reason = broken["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("oci runtime:") && reason.contains("/nonexistent/runc"),
        "{broken:#}"
    );

    // The tables say the same.
    let table = status(&d, false);
    for want in [
        format!("config: {}", d.config_path.display()),
        "RuntimeReady".to_string(),
        "runc (default)".to_string(),
        "1 ready".to_string(),
        "2 running".to_string(),
        "1 created".to_string(),
        "/nonexistent/runc".to_string(),
    ] {
        assert!(table.contains(&want), "{want:?} not in\n{table}");
    }
    let broken_row = table
        .lines()
        .find(|l| l.starts_with("broken-oci ") && l.contains(" oci "))
        .unwrap_or_else(|| panic!("no broken-oci row in\n{table}"));
    assert!(broken_row.contains(" no "), "{broken_row}");
    eprintln!("{table}");
}

/// Without a daemon the command fails, naming the socket.
#[test]
fn status_without_a_daemon_names_the_socket() {
    let out = Command::new(target_dir().join("caissond"))
        .args(["status", "--socket", "/nonexistent/caissond.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/caissond.sock"), "{err}");
}
