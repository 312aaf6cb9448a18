//! The Kubernetes manifests and the systemd unit in `integration/`, checked
//! offline: the RuntimeClasses and the installer's DaemonSet (with its RBAC)
//! against Kubernetes' own schemas by `kubernetes-validate` (PyPI, in the
//! test venv `make deps` makes; strict: unknown fields fail), for the
//! oldest and newest Kubernetes versions it carries that we claim; then
//! what the schemas cannot say (handlers, node labels the installer sets,
//! overheads, mounts, the uninstall hook). The unit is checked by Debian's
//! `systemd-analyze verify` (no running systemd needed) in a root dir of
//! its own, and a broken copy of it must fail the same check. No root needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_tests::require::PYTHON_GRPC_VENV;
use serde_json::Value;

const INTEGRATION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../integration");
/// Kubernetes versions the manifests must validate against: kubelet 1.26
/// (the CRI generation the README names) and the newest the package has.
const KUBERNETES_VERSIONS: &[&str] = &["1.26.0", "1.37.0"];

fn integration(path: &str) -> PathBuf {
    Path::new(INTEGRATION).join(path)
}

fn kubernetes_validate() -> PathBuf {
    let bin = Path::new(PYTHON_GRPC_VENV).join("bin/kubernetes-validate");
    assert!(
        bin.is_file(),
        "{} is required: the `kubernetes-validate` package (PyPI, pinned in the Makefile's PY_GRPC_TOOLS); `make deps` installs it",
        bin.display()
    );
    bin
}

fn validate(file: &Path) {
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(kubernetes_validate())
            .args(["--strict", "-k", version])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} against Kubernetes {version}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The documents of a YAML file as JSON, read by PyYAML (in the venv).
fn documents(file: &Path) -> Vec<Value> {
    let python = Path::new(PYTHON_GRPC_VENV).join("bin/python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A memory quantity in bytes (the binary suffixes the manifests use).
fn bytes(quantity: &str) -> u64 {
    for (suffix, unit) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a whole number") * unit;
        }
    }
    quantity.parse().expect("a quantity")
}

/// The node labels `caisson-deploy.sh install` sets.
fn installer_labels() -> (String, String) {
    let script = std::fs::read_to_string(integration("deploy/caisson-deploy.sh")).unwrap();
    let value = |key: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("caisson-deploy.sh sets no {key}"))
            .to_string()
    };
    (value("LABEL"), value("MODE_LABEL"))
}

#[test]
fn runtime_classes_validate_and_select_the_installers_nodes() {
    let file = integration("kubernetes/runtimeclass.yaml");
    validate(&file);
    let (runtime_label, mode_label) = installer_labels();
    // Per-pod Pss measured in bench/README.md: shim + pause 2645 KiB,
    // hardened up to 300 KiB more; microvm's QEMU + shim 288 MiB of RSS.
    let measured = |handler: &str| match handler {
        "caisson" | "runc" => 2645 << 10,
        "caisson-hardened" | "hardened" => (2645 + 300) << 10,
        "caisson-microvm" | "microvm" => 288 << 20,
        other => panic!("unexpected handler {other}"),
    };
    let mut handlers = Vec::new();
    for rc in documents(&file) {
        assert_eq!(rc["kind"], "RuntimeClass");
        assert_eq!(rc["apiVersion"], "node.k8s.io/v1");
        let handler = rc["handler"].as_str().unwrap().to_string();
        let selector = &rc["scheduling"]["nodeSelector"];
        assert_eq!(selector[&runtime_label], "true", "{rc}");
        let mode = if handler.starts_with("caisson") {
            "containerd"
        } else {
            "caissond"
        };
        assert_eq!(selector[&mode_label], mode, "{rc}");
        let memory = bytes(rc["overhead"]["podFixed"]["memory"].as_str().unwrap());
        assert!(
            memory >= measured(&handler),
            "{handler}: overhead {memory} below the measured {}",
            measured(&handler)
        );
        handlers.push(handler);
    }
    handlers.sort();
    assert_eq!(
        handlers,
        [
            "caisson",
            "caisson-hardened",
            "caisson-microvm",
            "hardened",
            "microvm",
            "runc"
        ],
        "one RuntimeClass per handler"
    );
    // The containerd handlers are the ones the installer registers.
    let script = std::fs::read_to_string(integration("deploy/caisson-deploy.sh")).unwrap();
    for h in ["caisson", "caisson-hardened", "caisson-microvm"] {
        assert!(script.contains(&format!("echo \"[$p.{h}]\"")), "{h}");
    }
}

#[test]
fn installer_daemonset_validates_and_mounts_what_the_script_writes() {
    let file = integration("deploy/caisson-deploy.yaml");
    validate(&file);
    let docs = documents(&file);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(role["rules"][0]["resources"][0], "nodes");
    assert!(role["rules"][0]["verbs"]
        .as_array()
        .unwrap()
        .contains(&"patch".into()));

    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "nsenter into the node's systemd");
    assert_eq!(pod["serviceAccountName"], "caisson-deploy");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let args = c["args"][0].as_str().unwrap();
    assert!(
        args.contains("caisson-deploy.sh install --root /host"),
        "{args}"
    );
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"].to_string();
    assert!(
        pre_stop.contains("caisson-deploy.sh uninstall --root /host"),
        "{pre_stop}"
    );
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"));
    // Every node path the script writes is a hostPath mount under /host.
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap();
            (
                m["mountPath"].as_str().unwrap().to_string(),
                volume["hostPath"]["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for node_path in [
        "/etc/containerd",
        "/etc/caisson",
        "/usr/local/bin",
        "/run/caisson",
        "/etc/systemd/system",
        "/run/systemd",
    ] {
        assert!(
            mounts.contains(&(format!("/host{node_path}"), node_path.to_string())),
            "{node_path} not mounted at /host{node_path}: {mounts:?}"
        );
    }
}

#[test]
fn caissond_unit_passes_systemd_analyze_verify() {
    let analyze = caisson_tests::require::program("systemd-analyze", "systemd");
    let unit = std::fs::read_to_string(integration("systemd/caissond.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/caissond --config /etc/caisson/caisson.toml",
        "Type=exec",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "OOMScoreAdjust=-999",
        "LimitNOFILE=1048576",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "caissond.service lacks {line}"
        );
    }
    let verify = |unit_text: &str| {
        // A root of its own: systemd's targets (for the default
        // dependencies) and an executable at ExecStart's path.
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
        let copied = Command::new("cp")
            .args(["-a", "/usr/lib/systemd/system"])
            .arg(r.join("usr/lib/systemd/"))
            .status()
            .unwrap();
        assert!(copied.success(), "copying /usr/lib/systemd/system");
        std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
        std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
        std::fs::write(r.join("usr/local/bin/caissond"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            r.join("usr/local/bin/caissond"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(r.join("etc/systemd/system/caissond.service"), unit_text).unwrap();
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .arg("caissond.service")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = verify(&unit);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // The check has teeth: a misspelt setting is reported.
    let (_, text) = verify(&unit.replace("KillMode=process", "KillMode=proces"));
    assert!(text.contains("kill mode"), "a broken unit passed: {text}");
}
