//! Namespaces per the CRI `NamespaceOption`.
//!
//! The sandbox creates the pod's namespaces (or uses the host's for NODE);
//! containers join them through `/proc/<pause pid>/ns/*`. Host network
//! means host UTS too (containerd), so a host-network pod sees the node's
//! hostname.

use std::path::PathBuf;

use caisson_proto::cri;
use cri::NamespaceMode;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::host::HostFacts;
use super::userns::{self, PodUserns};
use super::{PodContext, SpecError};

/// The validated modes of one `NamespaceOption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NamespaceModes {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    /// The pod's own user namespace (mode POD), `None` for the host's.
    pub userns: Option<PodUserns>,
}

impl Default for NamespaceModes {
    fn default() -> Self {
        NamespaceModes {
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Pod,
            ipc: NamespaceMode::Pod,
            userns: None,
        }
    }
}

fn mode(value: i32, field: &str) -> Result<NamespaceMode, SpecError> {
    NamespaceMode::try_from(value)
        .map_err(|_| SpecError::invalid(field, format!("unknown namespace mode {value}")))
}

impl NamespaceModes {
    /// Validates `option` (`None` is POD everywhere). `field` names it.
    pub(crate) fn from_option(
        option: Option<&cri::NamespaceOption>,
        field: &str,
    ) -> Result<NamespaceModes, SpecError> {
        let Some(option) = option else {
            return Ok(NamespaceModes::default());
        };
        let modes = NamespaceModes {
            network: mode(option.network, &format!("{field}.network"))?,
            pid: mode(option.pid, &format!("{field}.pid"))?,
            ipc: mode(option.ipc, &format!("{field}.ipc"))?,
            userns: userns::from_option(Some(option), field)?,
        };
        for (name, m) in [("network", modes.network), ("ipc", modes.ipc)] {
            if m == NamespaceMode::Target {
                return Err(SpecError::invalid(
                    format!("{field}.{name}"),
                    "TARGET is only supported for the PID namespace",
                ));
            }
        }
        if modes.pid == NamespaceMode::Target && option.target_id.is_empty() {
            return Err(SpecError::invalid(
                format!("{field}.target_id"),
                "PID namespace mode TARGET needs a target container id",
            ));
        }
        if modes.userns.is_some() {
            userns::check_no_host_namespaces(option, field)?;
        }
        Ok(modes)
    }

    pub(crate) fn network_is_host(&self) -> bool {
        self.network == NamespaceMode::Node
    }

    pub(crate) fn ipc_is_host(&self) -> bool {
        self.ipc == NamespaceMode::Node
    }
}

fn new_ns(typ: LinuxNamespaceType) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(None);
    ns
}

fn join_ns(typ: LinuxNamespaceType, path: PathBuf) -> LinuxNamespace {
    let mut ns = new_ns(typ);
    ns.set_path(Some(path));
    ns
}

/// `/proc/<pid>/ns/<name>`.
pub(crate) fn proc_ns(pid: u32, typ: LinuxNamespaceType) -> PathBuf {
    let name = match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    };
    PathBuf::from(format!("/proc/{pid}/ns/{name}"))
}

/// The pause container's namespaces. A TARGET PID mode has no meaning for
/// the sandbox; it gets its own PID namespace like POD/CONTAINER.
pub(crate) fn sandbox_namespaces(modes: &NamespaceModes, ctx: &PodContext) -> Vec<LinuxNamespace> {
    let mut list = Vec::new();
    // First: the namespaces made after it are owned by it.
    if modes.userns.is_some() {
        list.push(new_ns(LinuxNamespaceType::User));
    }
    list.push(new_ns(LinuxNamespaceType::Mount));
    if !modes.network_is_host() {
        list.push(match &ctx.netns_path {
            Some(path) => join_ns(LinuxNamespaceType::Network, path.clone()),
            None => new_ns(LinuxNamespaceType::Network),
        });
        list.push(new_ns(LinuxNamespaceType::Uts));
    }
    if !modes.ipc_is_host() {
        list.push(new_ns(LinuxNamespaceType::Ipc));
    }
    if modes.pid != NamespaceMode::Node {
        list.push(new_ns(LinuxNamespaceType::Pid));
    }
    list
}

/// A container's namespaces: its own mount namespace, the pod's (or the
/// host's) network, UTS and IPC, and a PID namespace per its mode.
pub(crate) fn container_namespaces(
    modes: &NamespaceModes,
    ctx: &PodContext,
    target_pid: Option<u32>,
    privileged: bool,
    host: &HostFacts,
    sc_field: &str,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let pause = || {
        ctx.pause_pid.ok_or_else(|| {
            SpecError::precondition(format!(
                "pod {} has no running pause process to join",
                ctx.pod_id
            ))
        })
    };
    let mut list = Vec::new();
    if modes.userns.is_some() {
        list.push(join_ns(
            LinuxNamespaceType::User,
            proc_ns(pause()?, LinuxNamespaceType::User),
        ));
    }
    list.push(new_ns(LinuxNamespaceType::Mount));
    match modes.network {
        NamespaceMode::Node => {}
        NamespaceMode::Container => list.push(new_ns(LinuxNamespaceType::Network)),
        _ => list.push(join_ns(
            LinuxNamespaceType::Network,
            proc_ns(pause()?, LinuxNamespaceType::Network),
        )),
    }
    if !modes.network_is_host() {
        list.push(join_ns(
            LinuxNamespaceType::Uts,
            proc_ns(pause()?, LinuxNamespaceType::Uts),
        ));
    }
    match modes.ipc {
        NamespaceMode::Node => {}
        NamespaceMode::Container => list.push(new_ns(LinuxNamespaceType::Ipc)),
        _ => list.push(join_ns(
            LinuxNamespaceType::Ipc,
            proc_ns(pause()?, LinuxNamespaceType::Ipc),
        )),
    }
    match modes.pid {
        NamespaceMode::Node => {}
        NamespaceMode::Container => list.push(new_ns(LinuxNamespaceType::Pid)),
        NamespaceMode::Target => {
            let pid = target_pid.ok_or_else(|| {
                SpecError::precondition(format!(
                    "the target container of {sc_field}.namespace_options.target_id has no running process"
                ))
            })?;
            list.push(join_ns(
                LinuxNamespaceType::Pid,
                proc_ns(pid, LinuxNamespaceType::Pid),
            ));
        }
        NamespaceMode::Pod => list.push(join_ns(
            LinuxNamespaceType::Pid,
            proc_ns(pause()?, LinuxNamespaceType::Pid),
        )),
    }
    // cgroup v2 hides the host's hierarchy behind a cgroup namespace;
    // containerd skips it on v1 and for privileged containers.
    if host.cgroup_v2 && !privileged {
        list.push(new_ns(LinuxNamespaceType::Cgroup));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: i32 = NamespaceMode::Pod as i32;
    const CONTAINER: i32 = NamespaceMode::Container as i32;
    const NODE: i32 = NamespaceMode::Node as i32;
    const TARGET: i32 = NamespaceMode::Target as i32;

    fn option(network: i32, pid: i32, ipc: i32) -> cri::NamespaceOption {
        cri::NamespaceOption {
            network,
            pid,
            ipc,
            target_id: if pid == TARGET {
                "c1".into()
            } else {
                String::new()
            },
            userns_options: None,
        }
    }

    fn ctx() -> PodContext {
        PodContext {
            pod_id: "pod1".into(),
            pause_pid: Some(42),
            ..PodContext::default()
        }
    }

    /// `type` or `type=path` for each namespace, in order.
    fn describe(list: &[LinuxNamespace]) -> Vec<String> {
        list.iter()
            .map(|ns| match ns.path() {
                Some(p) => format!("{}={}", ns.typ(), p.display()),
                None => ns.typ().to_string(),
            })
            .collect()
    }

    #[test]
    fn sandbox_table() {
        let plain = ctx();
        let with_netns = PodContext {
            netns_path: Some("/run/netns/cni-1".into()),
            ..ctx()
        };
        let cases: Vec<(&str, cri::NamespaceOption, &PodContext, Vec<&str>)> = vec![
            (
                "all pod",
                option(POD, POD, POD),
                &plain,
                vec!["mnt", "net", "uts", "ipc", "pid"],
            ),
            (
                "pid container",
                option(POD, CONTAINER, POD),
                &plain,
                vec!["mnt", "net", "uts", "ipc", "pid"],
            ),
            (
                "host network: host uts",
                option(NODE, CONTAINER, POD),
                &plain,
                vec!["mnt", "ipc", "pid"],
            ),
            (
                "host ipc",
                option(POD, POD, NODE),
                &plain,
                vec!["mnt", "net", "uts", "pid"],
            ),
            (
                "host pid",
                option(POD, NODE, POD),
                &plain,
                vec!["mnt", "net", "uts", "ipc"],
            ),
            ("all host", option(NODE, NODE, NODE), &plain, vec!["mnt"]),
            (
                "cni netns joined",
                option(POD, POD, POD),
                &with_netns,
                vec!["mnt", "net=/run/netns/cni-1", "uts", "ipc", "pid"],
            ),
            (
                "cni netns ignored for host network",
                option(NODE, POD, POD),
                &with_netns,
                vec!["mnt", "ipc", "pid"],
            ),
        ];
        for (name, opt, ctx, want) in cases {
            let modes = NamespaceModes::from_option(Some(&opt), "f").unwrap();
            assert_eq!(describe(&sandbox_namespaces(&modes, ctx)), want, "{name}");
        }
    }

    #[test]
    fn container_table() {
        let host = HostFacts::for_tests();
        let v2 = HostFacts {
            cgroup_v2: true,
            ..HostFacts::for_tests()
        };
        let cases: Vec<(&str, cri::NamespaceOption, &HostFacts, bool, Vec<&str>)> = vec![
            (
                "pod shares everything",
                option(POD, POD, POD),
                &host,
                false,
                vec![
                    "mnt",
                    "net=/proc/42/ns/net",
                    "uts=/proc/42/ns/uts",
                    "ipc=/proc/42/ns/ipc",
                    "pid=/proc/42/ns/pid",
                ],
            ),
            (
                "own pid namespace",
                option(POD, CONTAINER, POD),
                &host,
                false,
                vec![
                    "mnt",
                    "net=/proc/42/ns/net",
                    "uts=/proc/42/ns/uts",
                    "ipc=/proc/42/ns/ipc",
                    "pid",
                ],
            ),
            (
                "host network and pid",
                option(NODE, NODE, POD),
                &host,
                false,
                vec!["mnt", "ipc=/proc/42/ns/ipc"],
            ),
            (
                "host ipc",
                option(POD, CONTAINER, NODE),
                &host,
                false,
                vec!["mnt", "net=/proc/42/ns/net", "uts=/proc/42/ns/uts", "pid"],
            ),
            (
                "target pid",
                option(POD, TARGET, POD),
                &host,
                false,
                vec![
                    "mnt",
                    "net=/proc/42/ns/net",
                    "uts=/proc/42/ns/uts",
                    "ipc=/proc/42/ns/ipc",
                    "pid=/proc/777/ns/pid",
                ],
            ),
            (
                "container network and ipc",
                option(CONTAINER, CONTAINER, CONTAINER),
                &host,
                false,
                vec!["mnt", "net", "uts=/proc/42/ns/uts", "ipc", "pid"],
            ),
            (
                "cgroup v2: cgroup namespace",
                option(POD, CONTAINER, POD),
                &v2,
                false,
                vec![
                    "mnt",
                    "net=/proc/42/ns/net",
                    "uts=/proc/42/ns/uts",
                    "ipc=/proc/42/ns/ipc",
                    "pid",
                    "cgroup",
                ],
            ),
            (
                "cgroup v2 privileged: no cgroup namespace",
                option(NODE, NODE, NODE),
                &v2,
                true,
                vec!["mnt"],
            ),
        ];
        for (name, opt, host, privileged, want) in cases {
            let modes = NamespaceModes::from_option(Some(&opt), "f").unwrap();
            let got =
                container_namespaces(&modes, &ctx(), Some(777), privileged, host, "sc").unwrap();
            assert_eq!(describe(&got), want, "{name}");
        }
    }

    #[test]
    fn missing_processes_are_preconditions() {
        let host = HostFacts::for_tests();
        let no_pause = PodContext {
            pause_pid: None,
            ..ctx()
        };
        let modes = NamespaceModes::from_option(Some(&option(POD, POD, POD)), "f").unwrap();
        let err = container_namespaces(&modes, &no_pause, None, false, &host, "sc").unwrap_err();
        assert!(matches!(err, SpecError::FailedPrecondition { .. }), "{err}");
        // All-host needs no pause process.
        let modes = NamespaceModes::from_option(Some(&option(NODE, NODE, NODE)), "f").unwrap();
        assert!(container_namespaces(&modes, &no_pause, None, false, &host, "sc").is_ok());
        let modes = NamespaceModes::from_option(Some(&option(POD, TARGET, POD)), "f").unwrap();
        let err = container_namespaces(&modes, &ctx(), None, false, &host, "sc").unwrap_err();
        assert!(matches!(err, SpecError::FailedPrecondition { .. }), "{err}");
    }

    #[test]
    fn invalid_options_name_the_field() {
        let mut no_target = option(POD, TARGET, POD);
        no_target.target_id.clear();
        let userns = cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: POD,
                ..Default::default()
            }),
            ..option(POD, POD, POD)
        };
        let cases = [
            (option(TARGET, POD, POD), "f.network"),
            (option(POD, POD, TARGET), "f.ipc"),
            (option(POD, 9, POD), "f.pid"),
            (no_target, "f.target_id"),
            (userns, "f.userns_options.uids"),
        ];
        for (opt, field) in cases {
            let err = NamespaceModes::from_option(Some(&opt), "f").unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
        let host_userns = cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: NODE,
                ..Default::default()
            }),
            ..option(POD, POD, POD)
        };
        assert!(NamespaceModes::from_option(Some(&host_userns), "f").is_ok());
        assert_eq!(
            NamespaceModes::from_option(None, "f").unwrap(),
            NamespaceModes::default()
        );
    }
}
