//! Security pieces shared by pods and containers: namespaces, user
//! namespace ID mappings, SELinux, seccomp/AppArmor profiles.

use k8s_cri::v1::{
    security_profile::ProfileType, IdMapping, NamespaceMode, NamespaceOption, SeLinuxOption,
    SecurityProfile, UserNamespace,
};

use super::values::Distinct;

/// Every namespace mode is non-default (`POD` is 0), so each is on the wire.
pub fn namespace_options(v: &mut Distinct) -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Target as i32,
        ipc: NamespaceMode::Container as i32,
        target_id: v.text("target-container-id"),
        // Kubelet sends POD with mappings for `hostUsers: false`; POD is the
        // default (0) and would not be on the wire, so NODE stands in.
        userns_options: Some(UserNamespace {
            mode: NamespaceMode::Node as i32,
            uids: id_mappings(v),
            gids: id_mappings(v),
        }),
    })
}

/// Two mappings, so that repeated message fields are exercised.
pub fn id_mappings(v: &mut Distinct) -> Vec<IdMapping> {
    (0..2)
        .map(|_| IdMapping {
            host_id: v.num(),
            container_id: v.num(),
            length: v.num(),
        })
        .collect()
}

pub fn selinux_options(v: &mut Distinct) -> Option<SeLinuxOption> {
    Some(SeLinuxOption {
        user: v.text("system_u"),
        role: v.text("system_r"),
        r#type: v.text("container_t"),
        level: v.text("s0:c1,c2"),
    })
}

/// A `Localhost` profile (`RuntimeDefault` is 0) naming `what`'s profile.
pub fn localhost_profile(v: &mut Distinct, what: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: v.text(&format!("profiles/{what}.json")),
    })
}
