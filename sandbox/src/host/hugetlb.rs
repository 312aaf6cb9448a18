//! Hugepage limits this node cannot enforce.
//!
//! kubelet sends a `hugepage_limits` entry for every page size the node
//! lists, with limit 0 where the pod asked for none, whether or not the
//! hugetlb controller is usable (on this project's machines it is bound to
//! the cgroup2 tree at `/sys/fs/cgroup/unified` while every other controller
//! is in v1). libcontainer refuses a spec that needs a controller it cannot
//! find ("cgroup hugetlb is required to fulfill the request"). containerd's
//! CRI plugin drops such limits before runc sees them, with one warning
//! (`tolerate_missing_hugetlb_controller`); Caisson does the same for the
//! specs it builds (caissond) and the ones it receives (the shim under
//! containerd):
//!
//! * the controller is usable: every limit is kept;
//! * it is not, and every limit is 0 or unlimited (negative): they are
//!   dropped, and a warning naming the controller is logged once per process;
//! * it is not, and a limit is positive: the pod asked for hugepages this
//!   node cannot account, and the request fails ([`HugetlbUnavailable`]),
//!   as a pod-level hugepage limit does.

use std::sync::atomic::{AtomicBool, Ordering};

use libcgroups::common::{get_cgroup_setup, CgroupSetup, DEFAULT_CGROUP_ROOT};
use oci_spec::runtime::LinuxResources;

/// The controller's name, as logs and errors give it.
pub const CONTROLLER: &str = "hugetlb";

/// A positive hugepage limit on a node whose hugetlb controller is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a {page_size} hugepage limit of {limit} bytes cannot be enforced: the hugetlb cgroup \
     controller is not usable in this node's cgroup hierarchy (on cgroup v1 it must be \
     mounted as a v1 hierarchy; on cgroup v2 it must be in cgroup.controllers)"
)]
pub struct HugetlbUnavailable {
    /// The limit's position in the request's list.
    pub index: usize,
    pub page_size: String,
    pub limit: i64,
}

/// What [`fit`] decided for a list of hugepage limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// No limits, or the controller is usable: nothing changes.
    Keep,
    /// The controller is unusable and no limit restricts anything it
    /// could not: the limits of these page sizes are dropped.
    Skip(Vec<String>),
}

/// The decision for `limits` (page size, limit in bytes; negative =
/// unlimited) when the hugetlb controller is `usable` or not.
pub fn fit(usable: bool, limits: &[(&str, i64)]) -> Result<Fit, HugetlbUnavailable> {
    if usable || limits.is_empty() {
        return Ok(Fit::Keep);
    }
    if let Some((index, (page_size, limit))) =
        limits.iter().enumerate().find(|(_, (_, limit))| *limit > 0)
    {
        return Err(HugetlbUnavailable {
            index,
            page_size: page_size.to_string(),
            limit: *limit,
        });
    }
    Ok(Fit::Skip(
        limits.iter().map(|(s, _)| s.to_string()).collect(),
    ))
}

/// Applies [`fit`] to `resources`' hugepage limits: drops them (with the
/// once-per-process warning) or refuses. Returns whether any were dropped.
pub fn fit_resources(
    resources: &mut LinuxResources,
    usable: bool,
) -> Result<bool, HugetlbUnavailable> {
    let Some(limits) = resources.hugepage_limits() else {
        return Ok(false);
    };
    let pairs: Vec<(&str, i64)> = limits
        .iter()
        .map(|h| (h.page_size().as_str(), h.limit()))
        .collect();
    match fit(usable, &pairs)? {
        Fit::Keep => Ok(false),
        Fit::Skip(page_sizes) => {
            warn_skipped_once(&page_sizes);
            resources.set_hugepage_limits(None);
            Ok(true)
        }
    }
}

/// Logs, once per process, that hugepage limits are being skipped.
pub fn warn_skipped_once(page_sizes: &[String]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            controller = CONTROLLER,
            ?page_sizes,
            "cgroup controller hugetlb is not usable on this node: skipping hugepage limits \
             of 0 (as runc and containerd do); a positive hugepage limit is refused. \
             Logged once."
        );
    }
}

/// Whether libcontainer can use the hugetlb controller for a container
/// here: on a v1 or hybrid node (where libcontainer uses v1), a mounted v1
/// hugetlb hierarchy; on a v2 node, `hugetlb` in the root's
/// `cgroup.controllers`.
pub fn usable() -> bool {
    match get_cgroup_setup() {
        Ok(CgroupSetup::Unified) => {
            libcgroups::v2::util::get_available_controllers(DEFAULT_CGROUP_ROOT).is_ok_and(|c| {
                c.contains(&libcgroups::v2::controller_type::ControllerType::HugeTlb)
            })
        }
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {
            // Looking for a mount that is not there reads the whole mount
            // table, every pod's mounts included, in every shim's start:
            // `/proc/cgroups` says first whether a v1 hierarchy holds it.
            let bound = std::fs::read_to_string("/proc/cgroups")
                .ok()
                .and_then(|table| bound_to_v1(&table, CONTROLLER));
            bound != Some(false)
                && libcgroups::v1::util::get_subsystem_mount_point(
                    &libcgroups::v1::ControllerType::HugeTlb,
                )
                .is_ok()
        }
        Err(_) => false,
    }
}

/// Whether `/proc/cgroups` (`table`) has `controller` enabled in a v1
/// hierarchy (a nonzero hierarchy id; 0 is cgroup2 or none). `None` when
/// the table does not list it.
fn bound_to_v1(table: &str, controller: &str) -> Option<bool> {
    table.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != controller {
            return None;
        }
        let hierarchy: u32 = fields.next()?.parse().ok()?;
        let enabled = fields.nth(1)? == "1";
        Some(hierarchy != 0 && enabled)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroups_says_which_controllers_a_v1_hierarchy_holds() {
        let table = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
                     cpu\t1\t1\t1\nmemory\t4\t317\t1\nhugetlb\t0\t1\t1\n\
                     pids\t8\t1\t0\n";
        assert_eq!(bound_to_v1(table, "hugetlb"), Some(false));
        assert_eq!(bound_to_v1(table, "memory"), Some(true));
        assert_eq!(bound_to_v1(table, "pids"), Some(false), "disabled");
        assert_eq!(bound_to_v1(table, "rdma"), None);
        // This machine: hugetlb is cgroup2's, and the answer agrees with
        // libcgroups' look through the mount table.
        let here = std::fs::read_to_string("/proc/cgroups").unwrap();
        let mounted = libcgroups::v1::util::get_subsystem_mount_point(
            &libcgroups::v1::ControllerType::HugeTlb,
        )
        .is_ok();
        assert_eq!(bound_to_v1(&here, "hugetlb").unwrap_or(false), mounted);
    }
    use oci_spec::runtime::LinuxHugepageLimit;

    #[test]
    fn skip_or_refuse_is_table_driven() {
        let skip = |sizes: &[&str]| Ok(Fit::Skip(sizes.iter().map(|s| s.to_string()).collect()));
        let refuse = |index, page_size: &str, limit| {
            Err(HugetlbUnavailable {
                index,
                page_size: page_size.into(),
                limit,
            })
        };
        type Case<'a> = (
            &'a str,
            bool,
            Vec<(&'a str, i64)>,
            Result<Fit, HugetlbUnavailable>,
        );
        let cases: Vec<Case> = vec![
            (
                "usable, zeros",
                true,
                vec![("2MB", 0), ("1GB", 0)],
                Ok(Fit::Keep),
            ),
            (
                "usable, a request",
                true,
                vec![("2MB", 1 << 21)],
                Ok(Fit::Keep),
            ),
            ("unusable, none", false, vec![], Ok(Fit::Keep)),
            (
                "unusable, kubelet's zeros",
                false,
                vec![("2MB", 0), ("1GB", 0)],
                skip(&["2MB", "1GB"]),
            ),
            (
                "unusable, unlimited",
                false,
                vec![("2MB", -1)],
                skip(&["2MB"]),
            ),
            (
                "unusable, a request",
                false,
                vec![("2MB", 0), ("1GB", 1 << 30)],
                refuse(1, "1GB", 1 << 30),
            ),
        ];
        for (name, usable, limits, want) in cases {
            assert_eq!(fit(usable, &limits), want, "{name}");
        }
    }

    fn with_limits(limits: &[(&str, i64)]) -> LinuxResources {
        let mut r = LinuxResources::default();
        r.set_hugepage_limits(Some(
            limits
                .iter()
                .map(|(size, limit)| {
                    let mut h = LinuxHugepageLimit::default();
                    h.set_page_size(size.to_string());
                    h.set_limit(*limit);
                    h
                })
                .collect(),
        ));
        r
    }

    #[test]
    fn resources_lose_only_limits_that_restrict_nothing() {
        let mut r = with_limits(&[("2MB", 0), ("1GB", 0)]);
        assert!(fit_resources(&mut r, false).unwrap());
        assert!(r.hugepage_limits().is_none());
        let mut r = with_limits(&[("2MB", 0)]);
        assert!(!fit_resources(&mut r, true).unwrap());
        assert_eq!(r.hugepage_limits().as_ref().map(Vec::len), Some(1));
        let mut r = with_limits(&[("2MB", 4 << 20)]);
        let err = fit_resources(&mut r, false).unwrap_err();
        assert!(err.to_string().contains("hugetlb"), "{err}");
        assert!(err.to_string().contains("2MB"), "{err}");
        assert_eq!(r.hugepage_limits().as_ref().map(Vec::len), Some(1));
        assert!(!fit_resources(&mut LinuxResources::default(), false).unwrap());
    }
}
