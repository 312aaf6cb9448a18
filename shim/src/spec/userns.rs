//! Pod user namespaces (KEP-127, `hostUsers: false`): kubelet allocates
//! the pod a host id range and sends it in
//! `NamespaceOption.userns_options` (mode POD) for the sandbox and again,
//! identical, for each of its containers.
//!
//! * **Validation**: mode NODE (or no options) is the host's user
//!   namespace, as before. Mode POD needs exactly one uid and one gid
//!   mapping, each from container id 0, of a non-zero length, ending
//!   before `(uid_t)-1`, and clear of the host ids kubelet keeps for the
//!   node (0..65535); CONTAINER and TARGET are refused. A pod in its own
//!   user namespace cannot share the host's network, PID or IPC namespace
//!   (Kubernetes refuses those too). A container's options must be the
//!   pod's. Every refusal names the field.
//! * **Translation**: the sandbox gets a new user namespace with the
//!   mappings; each container joins the pause's (`/proc/<pause>/ns/user`)
//!   and carries the same mappings, as containerd 2.x writes them. What the
//!   backend does with them (making the namespace, idmapping the rootfs and
//!   volumes) is the backend's business.

use caisson_proto::cri;
use cri::NamespaceMode;
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, User};

use super::SpecError;

/// The host ids kubelet keeps for the node itself: a pod's range must not
/// touch them.
pub(crate) const HOST_RESERVED_IDS: u32 = 65_536;

/// One validated id mapping (container id 0 upwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRange {
    pub host_id: u32,
    pub length: u32,
}

impl IdRange {
    pub(crate) fn to_oci(self) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(self.host_id)
            .size(self.length)
            .build()
            .expect("an id mapping builds")
    }

    /// Whether container id `id` is mapped.
    fn covers(self, id: u32) -> bool {
        id < self.length
    }
}

/// A pod's user namespace: its uid and gid ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PodUserns {
    pub uids: IdRange,
    pub gids: IdRange,
}

fn mode_of(userns: &cri::UserNamespace, field: &str) -> Result<NamespaceMode, SpecError> {
    NamespaceMode::try_from(userns.mode)
        .map_err(|_| SpecError::invalid(field, format!("unknown namespace mode {}", userns.mode)))
}

fn one_mapping(mappings: &[cri::IdMapping], field: &str) -> Result<IdRange, SpecError> {
    let [m] = mappings else {
        return Err(SpecError::invalid(
            field,
            format!(
                "a pod user namespace takes exactly one mapping, not {}",
                mappings.len()
            ),
        ));
    };
    let at = |name: &str| format!("{field}[0].{name}");
    if m.container_id != 0 {
        return Err(SpecError::invalid(
            at("container_id"),
            format!(
                "{} is not 0: the mapping must start at the pod's root",
                m.container_id
            ),
        ));
    }
    if m.length == 0 {
        return Err(SpecError::invalid(at("length"), "must not be 0"));
    }
    if m.host_id < HOST_RESERVED_IDS {
        return Err(SpecError::invalid(
            at("host_id"),
            format!(
                "{} is among the host ids 0..{} kept for the node",
                m.host_id,
                HOST_RESERVED_IDS - 1
            ),
        ));
    }
    // (uid_t)-1 is never an id: the range must end before it.
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(SpecError::invalid(
            at("length"),
            format!(
                "{} ids from {} run past the last host id {}",
                m.length,
                m.host_id,
                u32::MAX - 1
            ),
        ));
    }
    Ok(IdRange {
        host_id: m.host_id,
        length: m.length,
    })
}

/// The user namespace `option` asks for: `None` for the host's (no
/// options, or mode NODE), the validated ranges for mode POD. `field` names
/// the `NamespaceOption`.
pub(crate) fn from_option(
    option: Option<&cri::NamespaceOption>,
    field: &str,
) -> Result<Option<PodUserns>, SpecError> {
    let Some(userns) = option.and_then(|o| o.userns_options.as_ref()) else {
        return Ok(None);
    };
    let field = format!("{field}.userns_options");
    match mode_of(userns, &format!("{field}.mode"))? {
        NamespaceMode::Node => Ok(None),
        NamespaceMode::Pod => Ok(Some(PodUserns {
            uids: one_mapping(&userns.uids, &format!("{field}.uids"))?,
            gids: one_mapping(&userns.gids, &format!("{field}.gids"))?,
        })),
        other => Err(SpecError::invalid(
            format!("{field}.mode"),
            format!(
                "{} is not supported for the user namespace (POD or NODE)",
                other.as_str_name()
            ),
        )),
    }
}

/// A container's user namespace must be its pod's (kubelet sends the same
/// options for both): same mode, same mappings.
pub(crate) fn check_container_matches_pod(
    container: Option<&cri::NamespaceOption>,
    pod: Option<&cri::NamespaceOption>,
    container_field: &str,
) -> Result<(), SpecError> {
    let strip = |o: Option<&cri::NamespaceOption>| {
        o.and_then(|o| o.userns_options.clone())
            // NODE with no mappings is the same as no options at all.
            .filter(|u| {
                !(u.mode == NamespaceMode::Node as i32 && u.uids.is_empty() && u.gids.is_empty())
            })
    };
    if strip(container) != strip(pod) {
        return Err(SpecError::invalid(
            format!("{container_field}.userns_options"),
            "must be the pod sandbox's (the same mode and uid/gid mappings)",
        ));
    }
    Ok(())
}

/// Refuses the host's network, PID or IPC namespace for a pod in a user
/// namespace of its own (Kubernetes refuses `hostUsers: false` with
/// `hostNetwork`, `hostPID` or `hostIPC`): the pod's root could not own
/// them, and sharing them defeats the point.
pub(crate) fn check_no_host_namespaces(
    option: &cri::NamespaceOption,
    field: &str,
) -> Result<(), SpecError> {
    for (name, mode) in [
        ("network", option.network),
        ("pid", option.pid),
        ("ipc", option.ipc),
    ] {
        if mode == NamespaceMode::Node as i32 {
            return Err(SpecError::invalid(
                format!("{field}.{name}"),
                "NODE cannot be combined with a pod user namespace (userns_options mode POD)",
            ));
        }
    }
    Ok(())
}

/// Refuses a process user the pod's ranges do not map (it could not run
/// as that user inside). `field` names the ranges' options.
pub(crate) fn check_user_mapped(
    userns: &PodUserns,
    user: &User,
    field: &str,
) -> Result<(), SpecError> {
    if !userns.uids.covers(user.uid()) {
        return Err(SpecError::invalid(
            format!("{field}.userns_options.uids[0].length"),
            format!(
                "the process runs as uid {}, outside the pod's {} mapped uids",
                user.uid(),
                userns.uids.length
            ),
        ));
    }
    let gids = std::iter::once(user.gid()).chain(user.additional_gids().iter().flatten().copied());
    for gid in gids {
        if !userns.gids.covers(gid) {
            return Err(SpecError::invalid(
                format!("{field}.userns_options.gids[0].length"),
                format!(
                    "the process has gid {gid}, outside the pod's {} mapped gids",
                    userns.gids.length
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: i32 = NamespaceMode::Pod as i32;
    const NODE: i32 = NamespaceMode::Node as i32;

    fn map(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    fn option(
        mode: i32,
        uids: Vec<cri::IdMapping>,
        gids: Vec<cri::IdMapping>,
    ) -> cri::NamespaceOption {
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace { mode, uids, gids }),
            ..Default::default()
        }
    }

    fn good() -> cri::NamespaceOption {
        option(
            POD,
            vec![map(3_000_000, 0, 65_536)],
            vec![map(3_000_000, 0, 65_536)],
        )
    }

    #[test]
    fn pod_mode_gives_the_ranges_and_node_mode_none() {
        let got = from_option(Some(&good()), "f").unwrap().unwrap();
        assert_eq!(
            got.uids,
            IdRange {
                host_id: 3_000_000,
                length: 65_536
            }
        );
        assert_eq!(got.uids.to_oci().host_id(), 3_000_000);
        assert_eq!(
            from_option(Some(&option(NODE, vec![], vec![])), "f").unwrap(),
            None
        );
        assert_eq!(from_option(None, "f").unwrap(), None);
        assert_eq!(
            from_option(Some(&cri::NamespaceOption::default()), "f").unwrap(),
            None
        );
        // The last usable id: 2^32 - 2.
        let last = option(
            POD,
            vec![map(u32::MAX - 65_536, 0, 65_535)],
            vec![map(65_536, 0, 1)],
        );
        assert!(from_option(Some(&last), "f").is_ok());
    }

    #[test]
    fn every_bad_form_names_its_field() {
        let u = |m: Vec<cri::IdMapping>| option(POD, m, vec![map(3_000_000, 0, 65_536)]);
        let g = |m: Vec<cri::IdMapping>| option(POD, vec![map(3_000_000, 0, 65_536)], m);
        let cases = [
            (
                option(NamespaceMode::Target as i32, vec![], vec![]),
                "f.userns_options.mode",
            ),
            (
                option(NamespaceMode::Container as i32, vec![], vec![]),
                "f.userns_options.mode",
            ),
            (option(7, vec![], vec![]), "f.userns_options.mode"),
            (u(vec![]), "f.userns_options.uids"),
            (
                u(vec![map(3_000_000, 0, 10), map(4_000_000, 10, 10)]),
                "f.userns_options.uids",
            ),
            (g(vec![]), "f.userns_options.gids"),
            (
                u(vec![map(3_000_000, 1, 65_536)]),
                "f.userns_options.uids[0].container_id",
            ),
            (
                u(vec![map(3_000_000, 0, 0)]),
                "f.userns_options.uids[0].length",
            ),
            (
                u(vec![map(0, 0, 65_536)]),
                "f.userns_options.uids[0].host_id",
            ),
            (
                u(vec![map(65_535, 0, 65_536)]),
                "f.userns_options.uids[0].host_id",
            ),
            (
                g(vec![map(1000, 0, 65_536)]),
                "f.userns_options.gids[0].host_id",
            ),
            (
                u(vec![map(u32::MAX - 10, 0, 65_536)]),
                "f.userns_options.uids[0].length",
            ),
            (
                u(vec![map(u32::MAX - 65_535, 0, 65_536)]),
                "f.userns_options.uids[0].length",
            ),
            (
                g(vec![map(4_000_000_000, 0, u32::MAX)]),
                "f.userns_options.gids[0].length",
            ),
        ];
        for (opt, field) in cases {
            let err = from_option(Some(&opt), "f").unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn a_container_must_carry_the_pods_options() {
        let pod = good();
        check_container_matches_pod(Some(&good()), Some(&pod), "c").unwrap();
        let other = option(
            POD,
            vec![map(4_000_000, 0, 65_536)],
            vec![map(3_000_000, 0, 65_536)],
        );
        let none = cri::NamespaceOption::default();
        for container in [Some(&other), Some(&none), None] {
            let err = check_container_matches_pod(container, Some(&pod), "c").unwrap_err();
            assert_eq!(err.field(), Some("c.userns_options"), "{err}");
        }
        // A container asking for a namespace its pod does not have.
        let err = check_container_matches_pod(Some(&pod), None, "c").unwrap_err();
        assert_eq!(err.field(), Some("c.userns_options"));
        // NODE, explicit or not, is the same.
        let node = option(NODE, vec![], vec![]);
        check_container_matches_pod(Some(&node), None, "c").unwrap();
        check_container_matches_pod(None, Some(&node), "c").unwrap();
    }

    #[test]
    fn host_namespaces_and_unmapped_users_are_refused() {
        check_no_host_namespaces(&good(), "f").unwrap();
        for name in ["network", "pid", "ipc"] {
            let mut o = good();
            match name {
                "network" => o.network = NODE,
                "pid" => o.pid = NODE,
                _ => o.ipc = NODE,
            }
            let err = check_no_host_namespaces(&o, "f").unwrap_err();
            assert_eq!(err.field(), Some(format!("f.{name}").as_str()));
        }
        let userns = PodUserns {
            uids: IdRange {
                host_id: 3_000_000,
                length: 1000,
            },
            gids: IdRange {
                host_id: 3_000_000,
                length: 1000,
            },
        };
        let mut user = User::default();
        user.set_uid(999);
        user.set_gid(0);
        check_user_mapped(&userns, &user, "f").unwrap();
        user.set_uid(65_535);
        let err = check_user_mapped(&userns, &user, "f").unwrap_err();
        assert_eq!(err.field(), Some("f.userns_options.uids[0].length"));
        user.set_uid(0);
        user.set_additional_gids(Some(vec![5, 1000]));
        let err = check_user_mapped(&userns, &user, "f").unwrap_err();
        assert_eq!(err.field(), Some("f.userns_options.gids[0].length"));
    }
}
