//! Making a bundle's spec fit what this host can grant.
//!
//! Some hosts (ours among them) run the shim without `CAP_SYS_RESOURCE` in
//! its capability bounding set. Then no container can be given that
//! capability, and no process can get an `oom_score_adj` below the shim's
//! own (libcontainer writes the value into the shim's own
//! `/proc/self/oom_score_adj` before forking, and lowering it needs the
//! capability). A pod must not fail for that: the capability is dropped and
//! the score clamped, each with a warning, as containerd does with
//! `restrict_oom_score_adj`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxNamespaceType, Process, Spec,
};

use crate::backend::{BackendError, Result};

/// What this host cannot grant, measured once when the backend starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostLimits {
    /// `CAP_SYS_RESOURCE` is in the shim's bounding set.
    pub sys_resource: bool,
    /// The shim's own `oom_score_adj` at start: without `CAP_SYS_RESOURCE`
    /// nothing below it can be set.
    pub own_oom_score_adj: i32,
    /// libcontainer can use the hugetlb controller here
    /// ([`crate::host::hugetlb::usable`]).
    pub hugetlb: bool,
}

impl HostLimits {
    pub fn measure() -> HostLimits {
        /// `CAP_SYS_RESOURCE` in <linux/capability.h>.
        const CAP_SYS_RESOURCE: libc::c_ulong = 24;
        // SAFETY: PR_CAPBSET_READ takes a capability number, returns 0/1.
        let sys_resource =
            unsafe { libc::prctl(libc::PR_CAPBSET_READ, CAP_SYS_RESOURCE, 0, 0, 0) } == 1;
        HostLimits {
            sys_resource,
            own_oom_score_adj: own_oom_score_adj().unwrap_or(0),
            hugetlb: crate::host::hugetlb::usable(),
        }
    }

    /// The lowest `oom_score_adj` a container may get, if limited.
    fn oom_floor(&self) -> Option<i32> {
        (!self.sys_resource).then_some(self.own_oom_score_adj)
    }
}

pub(crate) fn own_oom_score_adj() -> Option<i32> {
    fs::read_to_string("/proc/self/oom_score_adj")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Makes `process` grantable here; `what` names it in warnings. `default_oom`
/// fills a missing `oomScoreAdj` (an exec inherits its container's). Returns
/// whether anything changed.
pub(crate) fn sanitize_process(
    what: &str,
    process: &mut Process,
    limits: HostLimits,
    default_oom: Option<i32>,
) -> bool {
    let mut changed = false;
    if !limits.sys_resource {
        if let Some(caps) = process.capabilities() {
            let mut caps = caps.clone();
            if drop_capability(&mut caps, Capability::SysResource) {
                tracing::warn!(
                    process = what,
                    "dropping CAP_SYS_RESOURCE: it is not in this host's capability bounding set"
                );
                process.set_capabilities(Some(caps));
                changed = true;
            }
        }
    }
    if process.oom_score_adj().is_none() && default_oom.is_some() {
        process.set_oom_score_adj(default_oom);
        changed = true;
    }
    if let (Some(wanted), Some(floor)) = (process.oom_score_adj(), limits.oom_floor()) {
        if wanted < floor {
            tracing::warn!(
                process = what,
                wanted,
                clamped_to = floor,
                "clamping oomScoreAdj: lowering it below the shim's own needs CAP_SYS_RESOURCE, which this host cannot grant"
            );
            process.set_oom_score_adj(Some(floor));
            changed = true;
        }
    }
    changed
}

/// Removes `cap` from every set; true if it was in one.
fn drop_capability(caps: &mut LinuxCapabilities, cap: Capability) -> bool {
    let mut dropped = false;
    let mut strip = |set: &Option<Capabilities>| -> Option<Capabilities> {
        set.as_ref().map(|set| {
            let mut set = set.clone();
            dropped |= set.remove(&cap);
            set
        })
    };
    let bounding = strip(caps.bounding());
    let effective = strip(caps.effective());
    let inheritable = strip(caps.inheritable());
    let permitted = strip(caps.permitted());
    let ambient = strip(caps.ambient());
    caps.set_bounding(bounding)
        .set_effective(effective)
        .set_inheritable(inheritable)
        .set_permitted(permitted)
        .set_ambient(ambient);
    dropped
}

/// What the backend keeps from a task's spec.
#[derive(Debug, Clone)]
pub(crate) struct PreparedSpec {
    /// The cgroup libcontainer puts the task in (as it computes it).
    pub cgroup_path: PathBuf,
    /// The init's (sanitised) `oomScoreAdj`, inherited by its execs.
    pub oom_score_adj: Option<i32>,
    /// `linux.rootfsPropagation` is shared (a BIDIRECTIONAL volume): its
    /// builds see the node's own mount namespace, not a pod's view of it
    /// ([`crate::host::pod_view`]).
    pub shared_rootfs: bool,
    /// The sources of its bind mounts (a view must not change what they
    /// show).
    pub bind_sources: Vec<PathBuf>,
    /// For an init whose seccomp filter the executor loads without
    /// no_new_privs: what its capabilities are ([`admit_init_filter_load`]).
    pub own_caps: Option<OwnCaps>,
}

/// An init's own capabilities, which the bundle's spec raised for its
/// build: the ceiling of its execs' ([`clamp_capabilities`]), and its spec
/// with them, written back to the bundle once the init is built (what
/// reads the bundle afterwards, an ExecSync's process, a checkpoint, a
/// verbose status, sees the container's own).
#[derive(Debug, Clone)]
pub(crate) struct OwnCaps {
    pub caps: LinuxCapabilities,
    spec: Box<Spec>,
}

impl OwnCaps {
    /// Writes the spec with the init's own capabilities back to `bundle`.
    pub fn write_back(&self, id: &str, bundle: &Path) -> Result<()> {
        let path = bundle.join("config.json");
        replace_json(&path, &self.spec).map_err(|e| BackendError::Failed {
            op: "write back the spec",
            id: id.to_string(),
            reason: format!("{}: {e}", path.display()),
        })
    }
}

/// Narrows each of `process`'s capability sets to `ceiling`'s (an absent
/// set is empty): an exec of a container never gets more than the
/// container's own, whatever its process asked.
pub(crate) fn clamp_capabilities(process: &mut Process, ceiling: &LinuxCapabilities) {
    let Some(mut caps) = process.capabilities().clone() else {
        return;
    };
    let within = |set: &Option<Capabilities>, limit: &Option<Capabilities>| {
        let limit = limit.clone().unwrap_or_default();
        set.as_ref()
            .map(|set| set.intersection(&limit).copied().collect::<Capabilities>())
    };
    caps.set_bounding(within(caps.bounding(), ceiling.bounding()));
    caps.set_effective(within(caps.effective(), ceiling.effective()));
    caps.set_permitted(within(caps.permitted(), ceiling.permitted()));
    caps.set_inheritable(within(caps.inheritable(), ceiling.inheritable()));
    caps.set_ambient(within(caps.ambient(), ceiling.ambient()));
    process.set_capabilities(Some(caps));
}

/// Annotations only Caisson's backends set, read by the executor inside
/// container processes (or by the backend): anything an incoming spec
/// carries under these keys is removed before a backend adds its own, so a
/// spec from containerd or a CRI client can never choose them.
pub const INTERNAL_ANNOTATIONS: &[&str] = &[
    crate::host::executor::EXEC_SECCOMP_ANNOTATION,
    crate::host::executor::LANDLOCK_ANNOTATION,
    crate::host::executor::INIT_SECCOMP_CAPS_ANNOTATION,
    crate::backend::hardened::exec_userns::EXEC_USERNS_ANNOTATION,
    // Once read by the fork server; now carried out of band, refused here
    // so an old name cannot come back.
    "io.caisson.fork-netns",
];

/// Removes [`INTERNAL_ANNOTATIONS`] from `spec`; the keys removed.
pub fn strip_internal_annotations(spec: &mut Spec) -> Vec<String> {
    let Some(mut annotations) = spec.annotations().clone() else {
        return Vec::new();
    };
    let mut removed: Vec<String> = INTERNAL_ANNOTATIONS
        .iter()
        .filter(|key| annotations.remove(**key).is_some())
        .map(|key| key.to_string())
        .collect();
    removed.sort();
    if !removed.is_empty() {
        spec.set_annotations(Some(annotations));
    }
    removed
}

/// For an init without no_new_privs whose seccomp filter the executor is to
/// load: records the process's capabilities in
/// [`crate::host::executor::INIT_SECCOMP_CAPS_ANNOTATION`] and adds
/// `CAP_SYS_ADMIN` (to load a filter without no_new_privs) and
/// `CAP_SETPCAP` (to drop the bounding set afterwards) to its bounding,
/// effective and permitted sets; the executor drops to the recorded ones.
/// Answers the recorded capabilities, or `None` (and changes nothing) for
/// capabilities without all three sets, which libcontainer is left to
/// apply with its own filter load.
fn admit_init_filter_load(
    id: &str,
    spec: &mut Spec,
    process: &mut Process,
) -> Result<Option<LinuxCapabilities>> {
    let Some(own) = process.capabilities().clone() else {
        return Ok(None);
    };
    if own.bounding().is_none() || own.effective().is_none() || own.permitted().is_none() {
        return Ok(None);
    }
    let json = serde_json::to_string(&own).map_err(|e| BackendError::Failed {
        op: "record the init's capabilities",
        id: id.to_string(),
        reason: e.to_string(),
    })?;
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert(
        crate::host::executor::INIT_SECCOMP_CAPS_ANNOTATION.to_string(),
        json,
    );
    spec.set_annotations(Some(annotations));
    raise_capabilities(process, &[Capability::SysAdmin, Capability::Setpcap]);
    Ok(Some(own))
}

/// Adds `extra` to `process`'s bounding, effective and permitted sets (not
/// to what it passes on: inheritable and ambient), for what the executor
/// does before it drops to the process's own.
pub(crate) fn raise_capabilities(process: &mut Process, extra: &[Capability]) {
    let mut caps = process.capabilities().clone().unwrap_or_default();
    let raised = |set: &Option<Capabilities>| {
        let mut set = set.clone().unwrap_or_default();
        set.extend(extra.iter().copied());
        Some(set)
    };
    caps.set_bounding(raised(caps.bounding()));
    caps.set_effective(raised(caps.effective()));
    caps.set_permitted(raised(caps.permitted()));
    process.set_capabilities(Some(caps));
}

/// Where [`prepare_bundle`] takes a bundle's spec from.
#[derive(Debug)]
pub(crate) enum SpecOrigin {
    /// As it came in (native): internal annotations are removed, and a
    /// user namespace is refused (libcontainer's exec builder never joins
    /// it, so execs would run in the host's).
    Incoming,
    /// Rewritten in memory by a backend built on this one (hardened), which
    /// loaded the bundle's spec, removed incoming internal annotations, set
    /// its own, and makes execs join the user namespace itself: the spec is
    /// written to the bundle once, here.
    Backend(Box<Spec>),
}

fn invalid_spec(path: &Path, reason: impl std::fmt::Display) -> BackendError {
    BackendError::InvalidArgument {
        what: format!("OCI spec {}", path.display()),
        reason: reason.to_string(),
    }
}

/// Loads `bundle/config.json` (or takes a backend's rewrite of it), makes
/// it grantable here and consistent with the requested stdio (`terminal`),
/// and writes it back (atomically) when that changed anything.
pub(crate) fn prepare_bundle(
    id: &str,
    bundle: &Path,
    terminal: bool,
    limits: HostLimits,
    origin: SpecOrigin,
) -> Result<PreparedSpec> {
    let path = bundle.join("config.json");
    let incoming = matches!(origin, SpecOrigin::Incoming);
    let (mut spec, mut changed) = match origin {
        // Not on disk yet: always written.
        SpecOrigin::Backend(spec) => (*spec, true),
        SpecOrigin::Incoming => (
            Spec::load(&path).map_err(|e| invalid_spec(&path, e))?,
            false,
        ),
    };
    if incoming {
        let user_ns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|nss| nss.iter().any(|n| n.typ() == LinuxNamespaceType::User));
        if user_ns {
            return Err(BackendError::InvalidArgument {
                what: format!("linux.namespaces of OCI spec {}", path.display()),
                reason: "the native runtime handler does not run containers in a user \
                         namespace (its exec processes would not join it and would run as \
                         the host's root); use the hardened runtime handler, which gives \
                         every pod a user namespace of its own"
                    .into(),
            });
        }
        let removed = strip_internal_annotations(&mut spec);
        if !removed.is_empty() {
            tracing::warn!(
                id,
                ?removed,
                "ignoring internal annotations in an incoming spec"
            );
            changed = true;
        }
    }
    changed |= fit_hugepage_limits(&mut spec, limits.hugetlb, &path)?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| invalid_spec(&path, "no process"))?;
    check_args(&process).map_err(|reason| invalid_spec(&path, reason))?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid_spec(&path, "no linux section"))?;
    let cgroup_path = libcontainer::utils::get_cgroup_path(linux.cgroups_path(), id);
    // libcontainer's own v1 cgroup mount fails in a shared PID namespace and
    // ignores `ro` ([`super::cgroup_mount`]).
    changed |= super::cgroup_mount::emulate_here(&mut spec, &cgroup_path);

    changed |= sanitize_process(&format!("task {id}"), &mut process, limits, None);
    if process.terminal().unwrap_or(false) != terminal {
        tracing::debug!(
            id,
            terminal,
            "making process.terminal match the requested stdio"
        );
        process.set_terminal(Some(terminal));
        changed = true;
    }
    // libcontainer 0.7 loads a seccomp filter while still privileged only
    // when noNewPrivileges is *absent*; an explicit `false` (what CRI sends
    // by default) makes it load after dropping capabilities, which the
    // kernel refuses. Absent and false mean the same to the spec.
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
        changed = true;
    }
    // libcontainer 0.7 drops `linux.seccomp` for exec processes: hand the
    // container's filter to the executor, which loads it for execs too.
    let mut own_caps = None;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    if let Some(filter) = seccomp {
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        if !annotations.contains_key(crate::host::executor::EXEC_SECCOMP_ANNOTATION) {
            let json = serde_json::to_string(&filter).map_err(|e| invalid_spec(&path, e))?;
            annotations.insert(
                crate::host::executor::EXEC_SECCOMP_ANNOTATION.to_string(),
                json,
            );
            spec.set_annotations(Some(annotations));
            changed = true;
        }
        // Under no_new_privs libcontainer would load the filter right before
        // the executor runs, compiling it in the container's process; the
        // executor loads the same filter there, compiled once by the fork
        // server ([`crate::host::seccomp_cache`]).
        let compilable = crate::host::seccomp_cache::compilable(&filter);
        let leave_to_executor = if process.no_new_privileges() == Some(true) {
            compilable
        } else if compilable {
            // Without it, libcontainer loads the filter before it drops the
            // capabilities, compiling it with libseccomp in the container's
            // init: 13–15 ms for RuntimeDefault, in every container kubelet
            // starts without allowPrivilegeEscalation: false. The init
            // reaches the executor with the two capabilities loading the
            // compiled program and then dropping the bounding set need, and
            // drops to its own there, before it reports ready
            // ([`crate::host::executor::INIT_SECCOMP_CAPS_ANNOTATION`]).
            own_caps = admit_init_filter_load(id, &mut spec, &mut process)?;
            own_caps.is_some()
        } else {
            false
        };
        if leave_to_executor {
            if let Some(mut linux) = spec.linux().clone() {
                linux.set_seccomp(None);
                spec.set_linux(Some(linux));
                changed = true;
            }
        }
    }
    let oom_score_adj = process.oom_score_adj();
    let own_caps = own_caps.map(|caps| {
        let mut own = process.clone();
        own.set_capabilities(Some(caps.clone()));
        let mut spec = spec.clone();
        spec.set_process(Some(own));
        OwnCaps {
            caps,
            spec: Box::new(spec),
        }
    });
    if changed {
        spec.set_process(Some(process));
        replace_json(&path, &spec).map_err(|e| BackendError::Failed {
            op: "rewrite spec",
            id: id.to_string(),
            reason: format!("{}: {e}", path.display()),
        })?;
    }
    let shared_rootfs = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .is_some_and(|p| matches!(p, "shared" | "rshared"));
    let bind_sources = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind")
        })
        .filter_map(|m| m.source().clone())
        .collect();
    Ok(PreparedSpec {
        cgroup_path,
        oom_score_adj,
        shared_rootfs,
        bind_sources,
        own_caps,
    })
}

/// Drops the spec's hugepage limits when the hugetlb controller is not
/// `usable` and none of them restricts anything ([`crate::host::hugetlb`]);
/// a positive one is refused, naming it. Returns whether the spec changed.
fn fit_hugepage_limits(spec: &mut Spec, usable: bool, path: &Path) -> Result<bool> {
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(false);
    };
    let Some(mut resources) = linux.resources().clone() else {
        return Ok(false);
    };
    let dropped = crate::host::hugetlb::fit_resources(&mut resources, usable)
        .map_err(|e| hugetlb_refused("linux.resources", &e, Some(path)))?;
    if dropped {
        linux.set_resources(Some(resources));
        spec.set_linux(Some(linux));
    }
    Ok(dropped)
}

/// A positive hugepage limit this node cannot enforce, named by its field
/// under `field` (and the spec's path, when it came from one).
pub(crate) fn hugetlb_refused(
    field: &str,
    e: &crate::host::hugetlb::HugetlbUnavailable,
    path: Option<&Path>,
) -> BackendError {
    let what = format!("{field}.hugepageLimits[{}]", e.index);
    BackendError::InvalidArgument {
        what: match path {
            Some(path) => format!("{what} of OCI spec {}", path.display()),
            None => what,
        },
        reason: e.to_string(),
    }
}

/// A process must name a program: libcontainer would otherwise index an
/// empty argv inside the container.
pub(crate) fn check_args(process: &Process) -> std::result::Result<(), &'static str> {
    match process.args() {
        Some(args) if args.first().is_some_and(|a| !a.is_empty()) => Ok(()),
        _ => Err("process.args is empty"),
    }
}

/// Writes `value` as JSON to `path` through a temp file in the same
/// directory, fsynced, then renamed over (and the directory fsynced):
/// readers see the old or the new file, never a torn one, after a host
/// crash too. For records that outlive this boot's processes.
pub(crate) fn write_json_atomically(
    path: &Path,
    value: &impl serde::Serialize,
) -> std::io::Result<()> {
    write_json(path, value, true)
}

/// [`write_json_atomically`] without the fsyncs, for files that matter only
/// while this boot's processes live (a bundle's spec, which the task's
/// build reads at once; a pod's user namespace slot): readers still never
/// see a torn file, and a host crash takes their processes with it. Two
/// fsyncs were 2–8 ms of every create on a disk-backed run dir.
pub(crate) fn replace_json(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    write_json(path, value, false)
}

fn write_json(path: &Path, value: &impl serde::Serialize, durable: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.json.")
        .tempfile_in(dir)?;
    let mut out = std::io::BufWriter::new(tmp.as_file_mut());
    serde_json::to_writer(&mut out, value)?;
    out.flush()?;
    drop(out);
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, LinuxHugepageLimit, LinuxResources};

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    fn process_with(caps_: &[Capability], oom: Option<i32>) -> Process {
        let mut p = Process::default();
        let set = caps(caps_);
        p.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(set.clone())
                .effective(set.clone())
                .permitted(set.clone())
                .inheritable(set.clone())
                .ambient(set)
                .build()
                .unwrap(),
        ));
        p.set_oom_score_adj(oom);
        p
    }

    const LIMITED: HostLimits = HostLimits {
        sys_resource: false,
        own_oom_score_adj: 0,
        hugetlb: false,
    };
    const UNLIMITED: HostLimits = HostLimits {
        sys_resource: true,
        own_oom_score_adj: 0,
        hugetlb: true,
    };

    struct Case {
        limits: HostLimits,
        caps: &'static [Capability],
        oom: Option<i32>,
        default_oom: Option<i32>,
        changed: bool,
        caps_left: &'static [Capability],
        oom_left: Option<i32>,
    }

    #[test]
    fn sanitising_is_table_driven() {
        use Capability::{Kill, SysResource};
        let case = |limits, caps, oom, default_oom, changed, caps_left, oom_left| Case {
            limits,
            caps,
            oom,
            default_oom,
            changed,
            caps_left,
            oom_left,
        };
        let cases = [
            case(
                LIMITED,
                &[Kill, SysResource],
                Some(-998),
                None,
                true,
                &[Kill],
                Some(0),
            ),
            case(LIMITED, &[Kill], Some(-1), None, true, &[Kill], Some(0)),
            case(LIMITED, &[Kill], Some(0), None, false, &[Kill], Some(0)),
            case(
                LIMITED,
                &[Kill],
                Some(1000),
                None,
                false,
                &[Kill],
                Some(1000),
            ),
            case(LIMITED, &[Kill], None, None, false, &[Kill], None),
            case(LIMITED, &[Kill], None, Some(500), true, &[Kill], Some(500)),
            case(LIMITED, &[Kill], None, Some(-5), true, &[Kill], Some(0)),
            case(
                UNLIMITED,
                &[Kill, SysResource],
                Some(-998),
                None,
                false,
                &[Kill, SysResource],
                Some(-998),
            ),
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut p = process_with(c.caps, c.oom);
            let changed = sanitize_process("t", &mut p, c.limits, c.default_oom);
            assert_eq!(changed, c.changed, "case {i}");
            let caps_after = p.capabilities().as_ref().unwrap();
            for set in [
                caps_after.bounding(),
                caps_after.effective(),
                caps_after.permitted(),
                caps_after.inheritable(),
                caps_after.ambient(),
            ] {
                assert_eq!(set.as_ref().unwrap(), &caps(c.caps_left), "case {i}");
            }
            assert_eq!(p.oom_score_adj(), c.oom_left, "case {i}");
        }
    }

    #[test]
    fn empty_args_are_rejected() {
        let mut p = Process::default();
        assert!(check_args(&p).is_ok());
        p.set_args(Some(vec![]));
        assert!(check_args(&p).is_err());
        p.set_args(None);
        assert!(check_args(&p).is_err());
        p.set_args(Some(vec![String::new()]));
        assert!(check_args(&p).is_err());
    }

    #[test]
    fn prepare_rewrites_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut spec = Spec::default();
        spec.set_process(Some(process_with(&[Capability::Kill], Some(5))));
        // Without a `cgroup` mount, which a v1 host rewrites
        // (`cgroup_mount`'s own tests).
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.retain(|m| m.typ().as_deref() != Some("cgroup"));
        spec.set_mounts(Some(mounts));
        spec.save(&path).unwrap();
        let before = fs::read(&path).unwrap();
        let prepared =
            prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap();
        assert_eq!(fs::read(&path).unwrap(), before, "nothing to change");
        assert_eq!(prepared.oom_score_adj, Some(5));
        assert_eq!(prepared.cgroup_path, PathBuf::from(":youki:t"));

        spec.set_process(Some(process_with(&[Capability::SysResource], Some(-100))));
        spec.save(&path).unwrap();
        let prepared =
            prepare_bundle("t", dir.path(), true, LIMITED, SpecOrigin::Incoming).unwrap();
        assert_eq!(prepared.oom_score_adj, Some(0));
        let written = Spec::load(&path).unwrap();
        let process = written.process().as_ref().unwrap();
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(process.oom_score_adj(), Some(0));
        let bounding = process.capabilities().as_ref().unwrap().bounding().clone();
        assert_eq!(bounding, Some(Capabilities::new()));
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_init_filter_without_no_new_privs_goes_to_the_executor_with_its_capabilities() {
        use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let filter = |action: LinuxSeccompAction| {
            LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .syscalls(vec![LinuxSyscallBuilder::default()
                    .names(vec!["unshare".to_string()])
                    .action(action)
                    .build()
                    .unwrap()])
                .build()
                .unwrap()
        };
        let prepare = |nnp: Option<bool>, action: LinuxSeccompAction| {
            let mut spec = Spec::default();
            let mut process = process_with(&[Capability::Kill, Capability::Chown], None);
            process.set_no_new_privileges(nnp);
            spec.set_process(Some(process));
            let mut linux = spec.linux().clone().unwrap();
            linux.set_seccomp(Some(filter(action)));
            spec.set_linux(Some(linux));
            spec.save(&path).unwrap();
            prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap();
            Spec::load(&path).unwrap()
        };
        let own = process_with(&[Capability::Kill, Capability::Chown], None)
            .capabilities()
            .clone()
            .unwrap();
        let init_caps = crate::host::executor::INIT_SECCOMP_CAPS_ANNOTATION;
        let exec_filter = crate::host::executor::EXEC_SECCOMP_ANNOTATION;

        // CRI's default (no_new_privs false): the executor loads it.
        let written = prepare(Some(false), LinuxSeccompAction::ScmpActErrno);
        assert!(written.linux().as_ref().unwrap().seccomp().is_none());
        let annotations = written.annotations().clone().unwrap();
        assert!(annotations.contains_key(exec_filter));
        let recorded: LinuxCapabilities = serde_json::from_str(&annotations[init_caps]).unwrap();
        assert_eq!(recorded, own, "the capabilities the init ends with");
        let process = written.process().clone().unwrap();
        assert_eq!(process.no_new_privileges(), None);
        let given = process.capabilities().clone().unwrap();
        let loaders = caps(&[
            Capability::Kill,
            Capability::Chown,
            Capability::SysAdmin,
            Capability::Setpcap,
        ]);
        assert_eq!(given.bounding().as_ref(), Some(&loaders));
        assert_eq!(given.effective().as_ref(), Some(&loaders));
        assert_eq!(given.permitted().as_ref(), Some(&loaders));
        assert_eq!(given.inheritable(), own.inheritable(), "not inherited");
        assert_eq!(given.ambient(), own.ambient(), "not ambient");

        // Under no_new_privs: the executor loads it, the capabilities stay.
        let written = prepare(Some(true), LinuxSeccompAction::ScmpActErrno);
        assert!(written.linux().as_ref().unwrap().seccomp().is_none());
        assert!(!written
            .annotations()
            .clone()
            .unwrap()
            .contains_key(init_caps));
        assert_eq!(
            written.process().clone().unwrap().capabilities(),
            &Some(own.clone())
        );

        // A notify action is libcontainer's (it hands the listener over).
        let written = prepare(None, LinuxSeccompAction::ScmpActNotify);
        assert!(written.linux().as_ref().unwrap().seccomp().is_some());
        assert!(!written
            .annotations()
            .clone()
            .unwrap()
            .contains_key(init_caps));
        assert_eq!(
            written.process().clone().unwrap().capabilities(),
            &Some(own)
        );
    }

    #[test]
    fn an_exec_gets_no_capability_its_container_lacks() {
        let ceiling = process_with(&[Capability::Kill, Capability::Chown], None)
            .capabilities()
            .clone()
            .unwrap();
        let mut exec = process_with(
            &[Capability::Kill, Capability::SysAdmin, Capability::Setpcap],
            None,
        );
        clamp_capabilities(&mut exec, &ceiling);
        let got = exec.capabilities().clone().unwrap();
        let kill = Some(caps(&[Capability::Kill]));
        assert_eq!(got.bounding(), &kill);
        assert_eq!(got.effective(), &kill);
        assert_eq!(got.permitted(), &kill);
        assert_eq!(got.inheritable(), &kill);
        assert_eq!(got.ambient(), &kill);
        // A set the container does not have is empty for its execs.
        let mut none = ceiling.clone();
        none.set_ambient(None);
        let mut exec = process_with(&[Capability::Kill], None);
        clamp_capabilities(&mut exec, &none);
        assert_eq!(
            exec.capabilities().clone().unwrap().ambient(),
            &Some(Capabilities::new())
        );
    }

    #[test]
    fn hugepage_limits_this_node_cannot_enforce_are_skipped_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let save = |limits: &[(&str, i64)]| {
            let mut spec = Spec::default();
            spec.set_process(Some(process_with(&[Capability::Kill], Some(5))));
            let mut resources = LinuxResources::default();
            resources.set_hugepage_limits(Some(
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
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_resources(Some(resources));
            spec.set_linux(Some(linux));
            spec.save(&path).unwrap();
        };
        let limits_left = || {
            Spec::load(&path)
                .unwrap()
                .linux()
                .as_ref()
                .and_then(|l| l.resources().clone())
                .and_then(|r| r.hugepage_limits().clone())
                .map(|h| h.len())
        };
        // kubelet's zeros on a node without a usable hugetlb: dropped.
        save(&[("2MB", 0), ("1GB", 0)]);
        prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap();
        assert_eq!(limits_left(), None);
        // With the controller: kept.
        save(&[("2MB", 0), ("1GB", 0)]);
        prepare_bundle("t", dir.path(), false, UNLIMITED, SpecOrigin::Incoming).unwrap();
        assert_eq!(limits_left(), Some(2));
        // A positive one without the controller: refused, naming it.
        save(&[("2MB", 0), ("1GB", 1 << 30)]);
        let err =
            prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap_err();
        match &err {
            BackendError::InvalidArgument { what, reason } => {
                assert!(
                    what.starts_with("linux.resources.hugepageLimits[1]"),
                    "{what}"
                );
                assert!(
                    reason.contains("hugetlb") && reason.contains("1GB"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_or_broken_spec_is_invalid_argument() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap_err();
        assert!(matches!(err, BackendError::InvalidArgument { .. }), "{err}");
        fs::write(dir.path().join("config.json"), b"{not json").unwrap();
        let err =
            prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap_err();
        assert!(matches!(err, BackendError::InvalidArgument { .. }), "{err}");
    }

    #[test]
    fn incoming_internal_annotations_are_removed_and_user_namespaces_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut spec = Spec::default();
        spec.set_process(Some(process_with(&[Capability::Kill], None)));
        let forged: std::collections::HashMap<String, String> = INTERNAL_ANNOTATIONS
            .iter()
            .map(|k| (k.to_string(), "forged".to_string()))
            .chain([("io.example/kept".to_string(), "yes".to_string())])
            .collect();
        spec.set_annotations(Some(forged.clone()));
        spec.save(&path).unwrap();
        prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap();
        let written = Spec::load(&path).unwrap();
        let annotations = written.annotations().clone().unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        assert_eq!(annotations["io.example/kept"], "yes");
        // A backend's own are kept.
        spec.save(&path).unwrap();
        prepare_bundle(
            "t",
            dir.path(),
            false,
            LIMITED,
            SpecOrigin::Backend(Box::new(spec.clone())),
        )
        .unwrap();
        let written = Spec::load(&path).unwrap();
        assert_eq!(written.annotations().clone().unwrap(), forged);

        let mut linux = spec.linux().clone().unwrap();
        let mut nss = linux.namespaces().clone().unwrap();
        let mut user = oci_spec::runtime::LinuxNamespace::default();
        user.set_typ(LinuxNamespaceType::User);
        nss.push(user);
        linux.set_namespaces(Some(nss));
        spec.set_linux(Some(linux));
        spec.save(&path).unwrap();
        let err =
            prepare_bundle("t", dir.path(), false, LIMITED, SpecOrigin::Incoming).unwrap_err();
        match &err {
            BackendError::InvalidArgument { what, reason } => {
                assert!(what.contains("linux.namespaces"), "{what}");
                assert!(reason.contains("hardened"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        prepare_bundle(
            "t",
            dir.path(),
            false,
            LIMITED,
            SpecOrigin::Backend(Box::new(spec.clone())),
        )
        .unwrap();
    }
}
