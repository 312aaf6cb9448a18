//! Masked and read-only paths, namespaced sysctls, AppArmor profiles, and
//! the security options this node accepts but does not enforce (SELinux).

use std::collections::HashMap;

use caisson_proto::cri;
use cri::security_profile::ProfileType;

use super::namespaces::NamespaceModes;
use super::SpecError;

pub(crate) use caisson_sandbox::backend::defaults::{
    KUBERNETES_MASKED_PATHS as DEFAULT_MASKED_PATHS,
    KUBERNETES_READONLY_PATHS as DEFAULT_READONLY_PATHS,
};

pub(crate) fn default_masked_paths() -> Vec<String> {
    DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn default_readonly_paths() -> Vec<String> {
    DEFAULT_READONLY_PATHS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A non-privileged container's masked and read-only paths: the request's
/// lists when non-empty, else Kubernetes' defaults. (Proto3 cannot tell an
/// empty list from none, so `procMount: Unmasked`, which kubelet sends as
/// empty lists, gets the defaults: the safe side.)
pub(crate) fn container_path_lists(
    sc: &cri::LinuxContainerSecurityContext,
) -> (Vec<String>, Vec<String>) {
    let masked = if sc.masked_paths.is_empty() {
        default_masked_paths()
    } else {
        sc.masked_paths.clone()
    };
    let readonly = if sc.readonly_paths.is_empty() {
        default_readonly_paths()
    } else {
        sc.readonly_paths.clone()
    };
    (masked, readonly)
}

/// What a sysctl is namespaced by, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysctlScope {
    Ipc,
    Network,
}

/// Kubernetes' namespaced sysctls: `kernel.shm*`, `kernel.msg*`,
/// `kernel.sem`, `fs.mqueue.*` (IPC) and `net.*` (network).
fn scope(key: &str) -> Option<SysctlScope> {
    if key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.")
    {
        Some(SysctlScope::Ipc)
    } else if key.starts_with("net.") {
        Some(SysctlScope::Network)
    } else {
        None
    }
}

/// `kernel/shm_rmid_forced` → `kernel.shm_rmid_forced`. Like Kubernetes, a
/// key whose first separator is `/` swaps `/` and `.`, so an interface name
/// with a dot survives (`net/ipv4/conf/eth0.100/rp_filter`).
fn dotted(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => key
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => key.to_string(),
    }
}

/// The pod's sysctls, validated against its namespaces, plus containerd's
/// defaults for a pod network (unprivileged low ports and ping) unless the
/// pod sets them itself.
pub(crate) fn sandbox_sysctls(
    requested: &HashMap<String, String>,
    modes: &NamespaceModes,
    linux_field: &str,
) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::new();
    let mut keys: Vec<&String> = requested.keys().collect();
    keys.sort();
    for key in keys {
        let field = format!("{linux_field}.sysctls[{key}]");
        let name = dotted(key);
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains("..") {
            return Err(SpecError::invalid(field, "malformed sysctl name"));
        }
        match scope(&name) {
            None => {
                return Err(SpecError::invalid(
                    field,
                    "not a namespaced sysctl (allowed: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)",
                ))
            }
            Some(SysctlScope::Network) if modes.network_is_host() => {
                return Err(SpecError::invalid(
                    field,
                    "net.* sysctls are not allowed with host networking",
                ))
            }
            Some(SysctlScope::Ipc) if modes.ipc_is_host() => {
                return Err(SpecError::invalid(
                    field,
                    "IPC sysctls are not allowed with host IPC",
                ))
            }
            Some(_) => {}
        }
        out.insert(name, requested[key].clone());
    }
    if !modes.network_is_host() {
        out.entry("net.ipv4.ip_unprivileged_port_start".into())
            .or_insert_with(|| "0".into());
        out.entry("net.ipv4.ping_group_range".into())
            .or_insert_with(|| "0 2147483647".into());
    }
    Ok(out)
}

/// The `process.apparmorProfile` a request asks for, read from `profile`
/// (the `apparmor` field) or, when unset, the deprecated string form
/// `legacy` (`runtime/default`, `unconfined`, `localhost/<name>`).
///
/// Like containerd, a `Localhost` profile is refused on a node without
/// AppArmor (`apparmor_enabled`): accepting it would run the container
/// unconfined while the pod believes otherwise. `Unconfined` sets nothing.
/// `RuntimeDefault` also sets nothing, enabled or not: Caisson ships no
/// default AppArmor profile (containerd loads its own, and refuses
/// `RuntimeDefault` too on a node without AppArmor; kubelet asks for it by
/// default, so Caisson keeps it a no-op).
pub(crate) fn apparmor_profile(
    profile: Option<&cri::SecurityProfile>,
    legacy: &str,
    sc_field: &str,
    apparmor_enabled: bool,
) -> Result<Option<String>, SpecError> {
    let (field, name) = match profile {
        Some(p) => {
            let field = format!("{sc_field}.apparmor");
            match ProfileType::try_from(p.profile_type) {
                Ok(ProfileType::Localhost) => {
                    let name = p.localhost_ref.trim();
                    (field, name.strip_prefix("localhost/").unwrap_or(name))
                }
                Ok(_) if !p.localhost_ref.is_empty() => {
                    return Err(SpecError::invalid(
                        field,
                        "localhost_ref must only be set with profile_type Localhost",
                    ))
                }
                Ok(ProfileType::Unconfined | ProfileType::RuntimeDefault) => return Ok(None),
                Err(_) => {
                    return Err(SpecError::invalid(
                        field,
                        format!("unknown profile_type {}", p.profile_type),
                    ))
                }
            }
        }
        None => {
            let field = format!("{sc_field}.apparmor_profile");
            match legacy {
                "" | "unconfined" | "runtime/default" => return Ok(None),
                other => match other.strip_prefix("localhost/") {
                    Some(name) => (field, name),
                    None => {
                        return Err(SpecError::invalid(
                            field,
                            format!(
                            "{other:?}: must be runtime/default, unconfined or localhost/<profile>"
                        ),
                        ))
                    }
                },
            }
        }
    };
    if name.is_empty() {
        return Err(SpecError::invalid(
            field,
            "a Localhost profile needs a name",
        ));
    }
    if !apparmor_enabled {
        return Err(SpecError::invalid(
            field,
            format!(
                "AppArmor profile {name:?} asked for, but AppArmor is not enabled on this node"
            ),
        ));
    }
    Ok(Some(name.to_string()))
}

fn selinux_label(option: Option<&cri::SeLinuxOption>) -> Option<String> {
    option
        .filter(|o| {
            !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
        })
        .map(|o| format!("{}:{}:{}:{}", o.user, o.role, o.r#type, o.level))
}

/// Logs the SELinux options accepted but not enforced here.
pub(crate) fn note_unenforced_selinux(what: &str, name: &str, option: Option<&cri::SeLinuxOption>) {
    if let Some(selinux) = selinux_label(option) {
        tracing::info!(
            what,
            name,
            selinux,
            "SELinux options accepted but not enforced on this node"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(network: cri::NamespaceMode, ipc: cri::NamespaceMode) -> NamespaceModes {
        NamespaceModes {
            network,
            ipc,
            ..NamespaceModes::default()
        }
    }

    #[test]
    fn sysctl_table() {
        use cri::NamespaceMode::{Node, Pod};
        // (key, value, network, ipc, Ok(stored key) or Err(()))
        let cases: Vec<(&str, NamespaceModes, Result<&str, ()>)> = vec![
            (
                "kernel.shm_rmid_forced",
                modes(Pod, Pod),
                Ok("kernel.shm_rmid_forced"),
            ),
            ("kernel.shmmax", modes(Pod, Pod), Ok("kernel.shmmax")),
            ("kernel.msgmax", modes(Pod, Pod), Ok("kernel.msgmax")),
            ("kernel.sem", modes(Pod, Pod), Ok("kernel.sem")),
            (
                "fs.mqueue.msg_max",
                modes(Pod, Pod),
                Ok("fs.mqueue.msg_max"),
            ),
            (
                "net.core.somaxconn",
                modes(Pod, Pod),
                Ok("net.core.somaxconn"),
            ),
            (
                "net/ipv4/conf/eth0.100/rp_filter",
                modes(Pod, Pod),
                Ok("net.ipv4.conf.eth0/100.rp_filter"),
            ),
            (
                "kernel/shm_rmid_forced",
                modes(Pod, Pod),
                Ok("kernel.shm_rmid_forced"),
            ),
            ("kernel.sem", modes(Node, Pod), Ok("kernel.sem")),
            ("net.core.somaxconn", modes(Node, Pod), Err(())),
            ("kernel.shmmax", modes(Pod, Node), Err(())),
            ("kernel.hostname", modes(Pod, Pod), Err(())),
            ("kernel.semx", modes(Pod, Pod), Err(())),
            ("vm.swappiness", modes(Pod, Pod), Err(())),
            ("fs.mqueue", modes(Pod, Pod), Err(())),
            ("net..x", modes(Pod, Pod), Err(())),
            ("", modes(Pod, Pod), Err(())),
        ];
        for (key, modes, want) in cases {
            let requested = HashMap::from([(key.to_string(), "1".to_string())]);
            match (sandbox_sysctls(&requested, &modes, "config.linux"), want) {
                (Ok(got), Ok(stored)) => {
                    assert_eq!(got.get(stored).map(String::as_str), Some("1"), "{key}")
                }
                (Err(err), Err(())) => {
                    assert_eq!(
                        err.field(),
                        Some(format!("config.linux.sysctls[{key}]").as_str())
                    );
                    assert!(matches!(err, SpecError::InvalidArgument { .. }));
                }
                (got, want) => panic!("{key}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn pod_network_defaults() {
        use cri::NamespaceMode::{Node, Pod};
        let got = sandbox_sysctls(&HashMap::new(), &modes(Pod, Pod), "l").unwrap();
        assert_eq!(got["net.ipv4.ip_unprivileged_port_start"], "0");
        assert_eq!(got["net.ipv4.ping_group_range"], "0 2147483647");
        let own = HashMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "1024".to_string(),
        )]);
        let got = sandbox_sysctls(&own, &modes(Pod, Pod), "l").unwrap();
        assert_eq!(got["net.ipv4.ip_unprivileged_port_start"], "1024");
        assert!(sandbox_sysctls(&HashMap::new(), &modes(Node, Pod), "l")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn path_lists() {
        let sc = cri::LinuxContainerSecurityContext::default();
        let (masked, readonly) = container_path_lists(&sc);
        assert_eq!(masked, default_masked_paths());
        assert_eq!(readonly, default_readonly_paths());
        let explicit = cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/x".into()],
            readonly_paths: vec!["/proc/y".into()],
            ..sc
        };
        let (masked, readonly) = container_path_lists(&explicit);
        assert_eq!(masked, ["/proc/x"]);
        assert_eq!(readonly, ["/proc/y"]);
    }

    #[test]
    fn apparmor_profiles() {
        let profile = |t: ProfileType, r: &str| {
            Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            })
        };
        use ProfileType::{Localhost, RuntimeDefault, Unconfined};
        const SC: &str = "config.linux.security_context";
        // (profile, legacy, AppArmor enabled, Ok(profile set) or Err(field))
        type Case = (
            Option<cri::SecurityProfile>,
            &'static str,
            bool,
            Result<Option<&'static str>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (None, "", false, Ok(None)),
            (None, "unconfined", false, Ok(None)),
            (None, "runtime/default", false, Ok(None)),
            (None, "runtime/default", true, Ok(None)),
            (profile(Unconfined, ""), "", false, Ok(None)),
            (profile(RuntimeDefault, ""), "", false, Ok(None)),
            (profile(RuntimeDefault, ""), "", true, Ok(None)),
            (
                profile(Localhost, "k8s-nginx"),
                "",
                true,
                Ok(Some("k8s-nginx")),
            ),
            (
                profile(Localhost, "localhost/k8s-nginx"),
                "",
                true,
                Ok(Some("k8s-nginx")),
            ),
            (None, "localhost/k8s-nginx", true, Ok(Some("k8s-nginx"))),
            // The field wins over the deprecated string.
            (profile(Unconfined, ""), "localhost/x", false, Ok(None)),
            (
                profile(Localhost, "k8s-nginx"),
                "",
                false,
                Err("config.linux.security_context.apparmor"),
            ),
            (
                None,
                "localhost/k8s-nginx",
                false,
                Err("config.linux.security_context.apparmor_profile"),
            ),
            (
                profile(Localhost, ""),
                "",
                true,
                Err("config.linux.security_context.apparmor"),
            ),
            (
                None,
                "localhost/",
                true,
                Err("config.linux.security_context.apparmor_profile"),
            ),
            (
                profile(RuntimeDefault, "x"),
                "",
                true,
                Err("config.linux.security_context.apparmor"),
            ),
            (
                None,
                "bogus",
                true,
                Err("config.linux.security_context.apparmor_profile"),
            ),
        ];
        for (p, legacy, enabled, want) in cases {
            let got = apparmor_profile(p.as_ref(), legacy, SC, enabled);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got.as_deref(), want, "{p:?} {legacy:?} {enabled}")
                }
                (Err(e), Err(field)) => {
                    assert_eq!(e.field(), Some(field), "{p:?} {legacy:?}");
                    assert!(matches!(e, SpecError::InvalidArgument { .. }), "{e:?}");
                }
                (got, want) => panic!("{p:?} {legacy:?} {enabled}: got {got:?}, want {want:?}"),
            }
        }
        let e = apparmor_profile(profile(Localhost, "p").as_ref(), "", SC, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("AppArmor is not enabled on this node"),
            "{e}"
        );
    }

    #[test]
    fn selinux_labels() {
        assert_eq!(selinux_label(None), None);
        assert_eq!(selinux_label(Some(&cri::SeLinuxOption::default())), None);
        let opt = cri::SeLinuxOption {
            level: "s0:c1".into(),
            ..Default::default()
        };
        assert_eq!(selinux_label(Some(&opt)).as_deref(), Some(":::s0:c1"));
    }
}
