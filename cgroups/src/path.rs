//! `cgroup_parent` forms: cgroupfs paths and systemd slices.

use crate::CgroupError;

/// A cgroupfs path for kubelet's `cgroup_parent`: absolute cgroupfs paths
/// are kept (without a trailing `/`); systemd slices
/// (`kubepods-burstable-pod<uid>.slice`) become the path kubelet's cgroupfs
/// driver would have used (`/kubepods/burstable/pod<uid>`), with the `_`
/// systemd escaping turned back into `-`.
pub fn cgroupfs_parent(parent: &str) -> Result<String, CgroupError> {
    let invalid = |reason| CgroupError::InvalidParent {
        parent: parent.to_string(),
        reason,
    };
    if let Some(slice) = parent.strip_suffix(".slice") {
        // A path of slices (`/kubepods.slice/kubepods-burstable.slice/x.slice`):
        // the last one names the whole chain.
        let last = slice.rsplit('/').next().unwrap_or(slice);
        if last == "-" {
            return Ok("/".to_string());
        }
        if last.is_empty() || last.contains("..") || last.starts_with('-') || last.ends_with('-') {
            return Err(invalid("not a systemd slice name"));
        }
        let parts: Vec<String> = last.split('-').map(|p| p.replace('_', "-")).collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains('/') || p.contains(".slice"))
        {
            return Err(invalid("not a systemd slice name"));
        }
        return Ok(format!("/{}", parts.join("/")));
    }
    if !parent.starts_with('/') || parent.split('/').any(|c| c == ".." || c == ".") {
        return Err(invalid(
            "must be an absolute cgroupfs path without '..' or a systemd slice",
        ));
    }
    let trimmed = parent.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// `pod<uid>` with only characters safe in a cgroup name.
pub fn pod_cgroup_name(uid: &str) -> String {
    let uid: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    format!("pod{uid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        for (given, want) in [
            (
                "/kubepods/burstable/pod123",
                Some("/kubepods/burstable/pod123"),
            ),
            ("/kubepods/pod123/", Some("/kubepods/pod123")),
            (
                "kubepods-burstable-pod12_34.slice",
                Some("/kubepods/burstable/pod12-34"),
            ),
            ("kubepods-pod9.slice", Some("/kubepods/pod9")),
            (
                "kubepods-besteffort-podabc.slice",
                Some("/kubepods/besteffort/podabc"),
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice",
                Some("/kubepods/besteffort/podx"),
            ),
            ("kubepods.slice", Some("/kubepods")),
            ("-kubepods.slice", None),
            ("kubepods--x.slice", None),
            (".slice", None),
            ("kubepods/x", None),
            ("/kubepods/../etc", None),
            ("", None),
        ] {
            let got = cgroupfs_parent(given).ok();
            assert_eq!(got.as_deref(), want, "{given:?}");
        }
    }

    #[test]
    fn pod_names() {
        assert_eq!(pod_cgroup_name("ab-12_c"), "podab-12_c");
        assert_eq!(pod_cgroup_name("a/../b"), "podab");
        assert_eq!(cgroupfs_parent("-.slice").unwrap(), "/");
    }
}
