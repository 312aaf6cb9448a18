//! The host's OCI spec, rewritten for the guest.
//!
//! The host sends the spec it would give the native backend, with paths
//! already in the guest's view. What still refers to the host is fixed
//! here: namespace paths (host pids and the host's netns: the sandbox gets
//! a network namespace of its own in the guest, which its containers join,
//! as on the host, so network sysctls are namespaced; the agent moves the
//! guest's NICs into it), hooks (host programs), and a bind-mounted
//! `/dev/shm` (the pod's shm is a tmpfs the agent makes in the guest). The spec is kept
//! as JSON so that fields this code does not know pass through unchanged.

use serde_json::{Map, Value};

/// Where the container sits in its pod.
pub enum Role {
    /// The pod's infra container: IPC, UTS (and PID) namespaces are new.
    Sandbox,
    /// An application container: joins the namespaces of the sandbox's
    /// init, `sandbox_pid` in the guest.
    Container { sandbox_pid: i32 },
}

/// Rewrites `spec` in place for the guest; `shm` is the pod's shm tmpfs.
/// The error names the field that is not what a spec has.
pub fn rewrite(spec: &mut Value, role: &Role, shm: &str) -> Result<(), String> {
    let root = spec.as_object_mut().ok_or("spec_json: not a JSON object")?;
    root.remove("hooks");
    match root.get("root").and_then(|r| r.get("path")) {
        Some(Value::String(p)) if p.starts_with('/') => {}
        _ => return Err("spec_json: root.path must be an absolute path in the guest".into()),
    }
    if let Some(linux) = root.get_mut("linux") {
        let linux = linux
            .as_object_mut()
            .ok_or("spec_json: linux is not an object")?;
        if let Some(namespaces) = linux.get_mut("namespaces") {
            let list = namespaces
                .as_array_mut()
                .ok_or("spec_json: linux.namespaces is not an array")?;
            rewrite_namespaces(list, role)?;
        }
    }
    if let Some(mounts) = root.get_mut("mounts") {
        let mounts = mounts
            .as_array_mut()
            .ok_or("spec_json: mounts is not an array")?;
        for m in mounts.iter_mut() {
            let m = m
                .as_object_mut()
                .ok_or("spec_json: an entry of mounts is not an object")?;
            if m.get("destination").and_then(Value::as_str) == Some("/dev/shm") && is_bind(m) {
                m.insert("source".into(), Value::String(shm.into()));
            }
        }
    }
    Ok(())
}

fn is_bind(m: &Map<String, Value>) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn rewrite_namespaces(list: &mut Vec<Value>, role: &Role) -> Result<(), String> {
    let mut kept = Vec::with_capacity(list.len());
    for ns in list.drain(..) {
        let Value::Object(mut ns) = ns else {
            return Err("spec_json: an entry of linux.namespaces is not an object".into());
        };
        let kind = ns
            .get("type")
            .and_then(Value::as_str)
            .ok_or("spec_json: linux.namespaces entry without a type")?
            .to_string();
        let had_path = ns.contains_key("path");
        ns.remove("path");
        match (kind.as_str(), role) {
            ("network" | "ipc" | "uts", Role::Container { sandbox_pid }) => {
                let kind = if kind == "network" { "net" } else { &kind };
                ns.insert(
                    "path".into(),
                    Value::String(format!("/proc/{sandbox_pid}/ns/{kind}")),
                );
            }
            // The pod's PID namespace is shared only when the host said so.
            ("pid", Role::Container { sandbox_pid }) if had_path => {
                ns.insert(
                    "path".into(),
                    Value::String(format!("/proc/{sandbox_pid}/ns/pid")),
                );
            }
            _ => {}
        }
        kept.push(Value::Object(ns));
    }
    *list = kept;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host_spec() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/run/caisson/shared/c1/rootfs"},
            "process": {"args": ["sh"]},
            "hooks": {"createRuntime": [{"path": "/usr/bin/hook"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/caisson/pods/p/shm",
                 "options": ["rbind"]},
            ],
            "linux": {
                "cgroupsPath": "/kubepods/podx/c1",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                    {"type": "uts", "path": "/proc/4242/ns/uts"},
                    {"type": "mount"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "cgroup", "path": "/proc/4242/ns/cgroup"},
                ],
                "futureField": {"kept": true},
            }
        })
    }

    #[test]
    fn a_container_joins_the_sandbox_in_the_guest() {
        let mut spec = host_spec();
        rewrite(&mut spec, &Role::Container { sandbox_pid: 7 }, "/shm/p").unwrap();
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/proc/7/ns/net"},
                {"type": "cgroup"},
            ])
        );
        assert!(spec.get("hooks").is_none());
        assert_eq!(spec["mounts"][1]["source"], "/shm/p");
        assert_eq!(spec["mounts"][0]["source"], "proc");
        assert_eq!(spec["linux"]["futureField"], json!({"kept": true}));
        assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/podx/c1");
    }

    #[test]
    fn a_shared_pid_namespace_is_the_sandboxs_and_a_sandbox_gets_new_ones() {
        let mut spec = host_spec();
        spec["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/4242/ns/pid"});
        rewrite(&mut spec, &Role::Container { sandbox_pid: 7 }, "/s").unwrap();
        assert_eq!(
            spec["linux"]["namespaces"][0],
            json!({"type": "pid", "path": "/proc/7/ns/pid"})
        );

        let mut spec = host_spec();
        rewrite(&mut spec, &Role::Sandbox, "/s").unwrap();
        for ns in spec["linux"]["namespaces"].as_array().unwrap() {
            assert!(ns.get("path").is_none(), "{ns}");
        }
        let types: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ns| ns["type"].as_str().unwrap())
            .collect();
        assert!(types.contains(&"network"), "{types:?}");
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (json!([]), "not a JSON object"),
            (json!({"root": {"path": "rootfs"}}), "root.path"),
            (
                json!({"root": {"path": "/r"}, "linux": {"namespaces": {}}}),
                "linux.namespaces",
            ),
            (
                json!({"root": {"path": "/r"}, "linux": {"namespaces": [{"path": "/x"}]}}),
                "without a type",
            ),
            (json!({"root": {"path": "/r"}, "mounts": [1]}), "mounts"),
        ];
        for (mut spec, want) in cases {
            let err = rewrite(&mut spec, &Role::Sandbox, "/s").unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
