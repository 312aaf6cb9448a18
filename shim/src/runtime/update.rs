//! UpdateContainerResources, and what follows a container's resources
//! wherever they change:
//!
//! - the live cgroup, through the pod's shim (Task `Update`, OCI
//!   `LinuxResources` as JSON);
//! - the pod cgroup's sums, when the pod is in caissond's QoS hierarchy:
//!   a pod without kubelet's `linux.resources` is sized from its containers'
//!   sums plus overhead at each CreateContainer, update and RemoveContainer;
//!   a pod with them has its figures moved by the container's change; the
//!   burstable tier's shares follow;
//! - `unified` keys, checked against [`caisson_cgroups::unified`]'s
//!   allow-list and, on a cgroup v1 node, translated to v1 settings (or
//!   refused when there is none);
//! - `[cgroups] restrict_oom_score_adj`.

use std::sync::Arc;

use caisson_cgroups::tree::Limits;
use caisson_cgroups::unified::{self, Setting};
use caisson_cgroups::{CgroupFs, CgroupMode, PodResources};
use caisson_proto::cri;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxPids, LinuxResources};

use super::Runtime;
use crate::status::{CriError, CriResult};
use crate::store::{decode, encode, ContainerState, PodRecord};

/// How long a task cgroup's last processes get to leave it.
const TASK_CGROUP_REMOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A pod's limits around one container's update: widened to cover both,
/// then narrowed to `after`.
struct PodPlan {
    before: Limits,
    after: Limits,
    /// The pod-level figures to save (pods with kubelet's figures).
    new_pod_resources: Option<cri::LinuxContainerResources>,
    /// The pod-level `unified` entries, re-applied after each resize.
    unified: Vec<(String, String)>,
}

/// How a pod's cgroup is sized when caissond owns it.
enum PodSizing {
    /// No kubelet figures: the sum of its containers plus overhead.
    FromContainers,
    /// kubelet's `linux.resources`, moved by each container update.
    FromPodResources(cri::LinuxContainerResources),
}

/// The CRI resources of a container config.
pub(super) fn resources_of(config: &cri::ContainerConfig) -> cri::LinuxContainerResources {
    config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default()
}

/// A refused `unified` entry, named under `field` (the request's
/// resources message).
pub(crate) fn unified_refused(field: &str, e: &caisson_cgroups::UnifiedError) -> CriError {
    CriError::invalid(format!("{field}.unified[{}]", e.key()), e.to_string())
}

/// Checks `r.unified` as [`apply_unified`] will (the allow-list and, on a
/// cgroup v1 node, a v1 equivalent), before anything is made for it.
pub(crate) fn check_unified(
    r: &cri::LinuxContainerResources,
    field: &str,
    mode: CgroupMode,
) -> CriResult<()> {
    // What apply_unified reads of the spec's resources: the memory limit
    // (a v1 swap limit goes on top of it).
    let mut scratch = LinuxResources::default();
    if r.memory_limit_in_bytes > 0 {
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(r.memory_limit_in_bytes));
        scratch.set_memory(Some(memory));
    }
    apply_unified(r, field, mode, &mut scratch)
}

/// Checks `r.unified` against the allow-list; on a cgroup v1 node (`mode`)
/// moves the entries into their v1 equivalents in `res` (libcontainer's v1
/// manager ignores `unified`). `field` names the request's resources message.
pub(crate) fn apply_unified(
    r: &cri::LinuxContainerResources,
    field: &str,
    mode: CgroupMode,
    res: &mut LinuxResources,
) -> CriResult<()> {
    let refused = |e: caisson_cgroups::UnifiedError| unified_refused(field, &e);
    unified::check_all(&r.unified).map_err(refused)?;
    if r.unified.is_empty() || !mode.is_v1() {
        return Ok(());
    }
    let mut keys: Vec<(&String, &String)> = r.unified.iter().collect();
    keys.sort();
    let mut cpu = res.cpu().clone().unwrap_or_default();
    let mut memory = res.memory().unwrap_or_default();
    let mut swap = None;
    let mut hugepages = res.hugepage_limits().clone().unwrap_or_default();
    for (key, value) in keys {
        match unified::to_v1(key, value).map_err(refused)? {
            Setting::CpuShares(shares) => {
                cpu.set_shares(Some(shares));
            }
            Setting::CpuQuota { quota, period } => {
                cpu.set_quota(Some(quota));
                if let Some(p) = period {
                    cpu.set_period(Some(p));
                }
            }
            Setting::MemoryLimit(limit) => {
                memory.set_limit(Some(limit));
            }
            Setting::Swap(s) => swap = Some((key.clone(), s)),
            Setting::Pids(limit) => {
                let mut pids = LinuxPids::default();
                pids.set_limit(limit);
                res.set_pids(Some(pids));
            }
            Setting::CpusetCpus(list) => {
                cpu.set_cpus(Some(list));
            }
            Setting::CpusetMems(list) => {
                cpu.set_mems(Some(list));
            }
            Setting::Hugetlb { page_size, limit } => {
                let mut h = LinuxHugepageLimit::default();
                h.set_page_size(page_size.clone());
                h.set_limit(i64::try_from(limit).unwrap_or(-1));
                hugepages.retain(|x| x.page_size() != &page_size);
                hugepages.push(h);
            }
        }
    }
    // v1 limits memory + swap together: swap goes on top of the limit.
    if let Some((key, s)) = swap {
        let total = match (s, memory.limit()) {
            (-1, _) => -1,
            (s, Some(limit)) if limit > 0 => limit.checked_add(s).ok_or_else(|| {
                CriError::invalid(
                    format!("{field}.unified[{key}]"),
                    "memory limit + swap overflows",
                )
            })?,
            _ => {
                return Err(CriError::invalid(
                    format!("{field}.unified[{key}]"),
                    "on cgroup v1 a swap limit needs a memory limit",
                ))
            }
        };
        memory.set_swap(Some(total));
    }
    if cpu != LinuxCpu::default() {
        res.set_cpu(Some(cpu));
    }
    if memory != LinuxMemory::default() {
        res.set_memory(Some(memory));
    }
    if !hugepages.is_empty() {
        res.set_hugepage_limits(Some(hugepages));
    }
    res.set_unified(None);
    Ok(())
}

/// A container's resources after `update`. kubelet's CPU manager sends
/// only `cpuset_cpus` (its memory manager only `cpuset_mems`): an update
/// that carries no CPU or memory figure at all keeps the container's, in
/// its record (ContainerStatus reports them; kubelet's in-place resize
/// compares them) and in its pod's sums. An update with figures replaces
/// them all (0: no limit, as the pod's sums have always read it). Empty
/// cpuset lists and hugepage limits keep theirs, a zero `oom_score_adj`
/// keeps its, `unified` entries are added to the old ones, as containerd
/// merges them. The live cgroup is updated from `update` alone (unset
/// fields are not written there).
pub(crate) fn merged_update(
    old: &cri::LinuxContainerResources,
    update: &cri::LinuxContainerResources,
) -> cri::LinuxContainerResources {
    let figures = |r: &cri::LinuxContainerResources| {
        [
            r.cpu_period,
            r.cpu_quota,
            r.cpu_shares,
            r.memory_limit_in_bytes,
            r.memory_swap_limit_in_bytes,
        ]
    };
    let from = if figures(update).iter().all(|f| *f == 0) {
        old
    } else {
        update
    };
    let list = |new: &String, old: &String| {
        if new.is_empty() {
            old.clone()
        } else {
            new.clone()
        }
    };
    let mut unified = old.unified.clone();
    unified.extend(update.unified.clone());
    cri::LinuxContainerResources {
        cpu_period: from.cpu_period,
        cpu_quota: from.cpu_quota,
        cpu_shares: from.cpu_shares,
        memory_limit_in_bytes: from.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: from.memory_swap_limit_in_bytes,
        oom_score_adj: if update.oom_score_adj != 0 {
            update.oom_score_adj
        } else {
            old.oom_score_adj
        },
        cpuset_cpus: list(&update.cpuset_cpus, &old.cpuset_cpus),
        cpuset_mems: list(&update.cpuset_mems, &old.cpuset_mems),
        hugepage_limits: if update.hugepage_limits.is_empty() {
            old.hugepage_limits.clone()
        } else {
            update.hugepage_limits.clone()
        },
        unified,
    }
}

/// Drops hugepage limits this node cannot enforce from `res` (kubelet's
/// limits of 0 for every page size, on a node whose hugetlb controller is
/// not usable: one warning per process, as runc and containerd skip them)
/// and refuses a positive one, naming it under `field` (the request's
/// resources message): FAILED_PRECONDITION, as a pod-level one is.
pub(crate) fn fit_hugepage_limits(
    res: &mut LinuxResources,
    hugetlb_usable: bool,
    field: &str,
) -> CriResult<()> {
    caisson_sandbox::host::hugetlb::fit_resources(res, hugetlb_usable)
        .map(|_| ())
        .map_err(|e| hugetlb_refused(field, &e))
}

/// A positive hugepage limit this node cannot enforce, named under `field`.
pub(crate) fn hugetlb_refused(
    field: &str,
    e: &caisson_sandbox::host::hugetlb::HugetlbUnavailable,
) -> CriError {
    CriError::FailedPrecondition(format!("{field}.hugepage_limits[{}]: {e}", e.index))
}

/// Whether a cgroup write or rmdir failed for a reason that passes: a
/// removed child's cgroup lingering in the kernel (v1 refuses a parent's
/// quota below it: EINVAL) or a cgroup's last processes still exiting
/// (EBUSY). Anything else (a cgroup gone, no permission) will not.
fn is_transient(e: &caisson_cgroups::CgroupError) -> bool {
    use caisson_cgroups::CgroupError::*;
    let source = match e {
        WriteFailed { source, .. } | RemoveFailed { source, .. } => source,
        _ => return false,
    };
    matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EBUSY))
}

/// Runs `op` until it succeeds, fails for good, or
/// [`TASK_CGROUP_REMOVE_WAIT`] has passed.
async fn retry_while_busy(
    mut op: impl FnMut() -> Result<(), caisson_cgroups::CgroupError>,
) -> Result<(), caisson_cgroups::CgroupError> {
    let deadline = std::time::Instant::now() + TASK_CGROUP_REMOVE_WAIT;
    loop {
        match op() {
            Err(e) if is_transient(&e) && std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "cgroup busy: retrying");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            done => return done,
        }
    }
}

/// Removes a task's cgroup tree, waiting while it is busy; what is still in
/// it after [`TASK_CGROUP_REMOVE_WAIT`] belongs to a task being removed
/// whose shim could not kill it (it died mid-create) and is SIGKILLed.
pub(super) async fn remove_cgroup_tree(
    root: &caisson_cgroups::fs::CgroupRoot,
    cgroup: &str,
) -> Result<(), caisson_cgroups::CgroupError> {
    match retry_while_busy(|| root.remove_tree(cgroup)).await {
        Err(e) if is_transient(&e) => {
            let killed = root.kill_tree(cgroup);
            tracing::warn!(cgroup, killed, "killing what is left in a task cgroup");
            retry_while_busy(|| root.remove_tree(cgroup)).await
        }
        done => done,
    }
}

impl Runtime {
    /// What caissond's runtime adds to a container's spec: its `unified`
    /// keys checked (and translated on v1), and its `oom_score_adj` raised
    /// to caissond's own under `restrict_oom_score_adj`.
    pub(super) fn finish_container_spec(
        &self,
        config: &cri::ContainerConfig,
        oci: &mut oci_spec::runtime::Spec,
    ) -> CriResult<()> {
        let r = resources_of(config);
        if let Some(res) = oci
            .linux_mut()
            .as_mut()
            .and_then(|l| l.resources_mut().as_mut())
        {
            let field = "config.linux.resources";
            apply_unified(&r, field, self.qos.fs().mode(), res)?;
            fit_hugepage_limits(res, self.hugetlb_usable(), field)?;
        }
        if let Some(process) = oci.process_mut().as_mut() {
            self.restrict_oom_score_adj(process);
        }
        Ok(())
    }

    /// Whether container cgroups on this node can use the hugetlb
    /// controller (read per request: cheap, and a node may mount it later).
    pub(super) fn hugetlb_usable(&self) -> bool {
        self.qos
            .fs()
            .controller_usable(caisson_sandbox::host::hugetlb::CONTROLLER)
    }

    /// `[cgroups] restrict_oom_score_adj`: no lower score than caissond's.
    pub(super) fn restrict_oom_score_adj(&self, process: &mut oci_spec::runtime::Process) {
        if !self.config.cgroups.restrict_oom_score_adj {
            return;
        }
        if let (Some(wanted), Some(own)) = (
            process.oom_score_adj(),
            caisson_cgroups::oom::own_oom_score_adj(),
        ) {
            let granted = caisson_cgroups::oom::restrict_to_own(wanted, own);
            if granted != wanted {
                tracing::debug!(
                    wanted,
                    granted,
                    "restrict_oom_score_adj: raised to caissond's own"
                );
            }
            process.set_oom_score_adj(Some(granted));
        }
    }

    /// How `pod`'s cgroup is sized, when caissond made it (kubelet sizes
    /// the pods it gives a `cgroup_parent` for).
    fn pod_sizing(&self, pod: &PodRecord) -> Option<(PodSizing, cri::PodSandboxConfig)> {
        let config: cri::PodSandboxConfig = decode(&pod.config)?;
        let linux = config.linux.clone().unwrap_or_default();
        if !linux.cgroup_parent.is_empty() {
            return None;
        }
        // The class is the one the pod was made with (its cgroup does not
        // move): recomputing it from figures an update moved could give
        // another tier's path.
        if !self.qos.holds_pod_cgroup(&pod.cgroup_parent, &pod.uid) {
            return None;
        }
        Some(match linux.resources {
            Some(r) => (PodSizing::FromPodResources(r), config),
            None => (PodSizing::FromContainers, config),
        })
    }

    /// The pod cgroup limits from its containers' resources (`changed`
    /// replaces one container's), plus overhead.
    fn summed_limits(
        &self,
        pod: &PodRecord,
        config: &cri::PodSandboxConfig,
        changed: Option<(&str, &cri::LinuxContainerResources)>,
    ) -> Limits {
        // One figure per container name: after a restart kubelet keeps the
        // exited instance until it collects it, and the pod's limit is its
        // spec's sum, not its instances'. The newest instance counts (the
        // exited one's cgroup keeps its quota until removal, so it is not
        // simply left out: v1 refuses a pod quota below a child's).
        let mut newest: std::collections::BTreeMap<
            String,
            (u32, i64, cri::LinuxContainerResources),
        > = std::collections::BTreeMap::new();
        for c in self.records().containers.values() {
            if c.pod_id != pod.id {
                continue;
            }
            let r = match changed {
                Some((id, r)) if id == c.id => r.clone(),
                _ => resources_of(&decode(&c.config).unwrap_or_default()),
            };
            let key = (c.attempt, c.created_at);
            match newest.get(&c.name) {
                Some((attempt, created, _)) if (*attempt, *created) >= key => {}
                _ => {
                    newest.insert(c.name.clone(), (key.0, key.1, r));
                }
            }
        }
        let all: Vec<caisson_cgroups::Resources> = newest
            .values()
            .map(|(_, _, r)| crate::spec::qos_resources(r))
            .collect();
        let overhead = config
            .linux
            .as_ref()
            .and_then(|l| l.overhead.as_ref())
            .map(crate::spec::qos_resources)
            .unwrap_or_default();
        PodResources {
            resources: PodResources::from_containers(&all),
            overhead,
        }
        .limits()
    }

    /// Writes `limits` to the pod's cgroup and lets the burstable tier's
    /// shares follow.
    fn write_pod_limits(&self, pod: &PodRecord, limits: &Limits) -> CriResult<()> {
        self.try_write_pod_limits(pod, limits).map_err(|e| {
            CriError::internal("resizing the pod cgroup", crate::status::error_chain(&e))
        })
    }

    /// Writes `limits` to the pod's cgroup, then its pod-level `unified`
    /// entries again: written last at RunPodSandbox, they win over the
    /// figures (a `memory.max` or `cpu.max` of kubelet's).
    fn size_pod(
        &self,
        pod: &PodRecord,
        limits: &Limits,
        unified: &[(String, String)],
    ) -> CriResult<()> {
        self.write_pod_limits(pod, limits)?;
        if unified.is_empty() {
            return Ok(());
        }
        let extras = caisson_cgroups::PodExtras {
            unified: unified.to_vec(),
            ..Default::default()
        };
        self.qos
            .apply_extras(&pod.cgroup_parent, &extras, limits)
            .map_err(|e| {
                CriError::internal(
                    "writing the pod's unified entries",
                    crate::status::error_chain(&e),
                )
            })
    }

    fn try_write_pod_limits(
        &self,
        pod: &PodRecord,
        limits: &Limits,
    ) -> Result<(), caisson_cgroups::CgroupError> {
        self.qos.apply(&pod.cgroup_parent, limits)?;
        if let Err(e) = self.qos.refresh_burstable() {
            tracing::warn!(error = %e, "updating the burstable tier's cpu shares");
        }
        tracing::debug!(pod_id = %pod.id, ?limits, "pod cgroup sized");
        Ok(())
    }

    /// Re-sizes a pod sized from its containers to their current sums
    /// (after CreateContainer added one, or one was removed). A removed
    /// container's cgroup lingers in the kernel for a moment after its
    /// rmdir, and v1 refuses a pod quota below its quota until it is gone
    /// (EINVAL): the write is retried for a while.
    pub(super) async fn resize_pod_from_containers(&self, pod_id: &str) -> CriResult<()> {
        let Some(pod) = self.find_pod(pod_id) else {
            return Ok(());
        };
        let Some((PodSizing::FromContainers, config)) = self.pod_sizing(&pod) else {
            return Ok(());
        };
        let limits = self.summed_limits(&pod, &config, None);
        retry_while_busy(|| self.try_write_pod_limits(&pod, &limits))
            .await
            .map_err(|e| {
                CriError::internal("resizing the pod cgroup", crate::status::error_chain(&e))
            })
    }

    /// Removes a task's cgroup (`<pod cgroup>/<task>`) from every hierarchy:
    /// the shim removes it when the task is deleted; this catches what a
    /// failed create or a lost shim left behind.
    /// Its last processes may still be exiting (EBUSY): retried for a while.
    pub(super) async fn remove_task_cgroup(&self, pod: &PodRecord, task_id: &str) {
        let cgroup = format!("{}/{task_id}", pod.cgroup_parent.trim_end_matches('/'));
        if let Err(e) = remove_cgroup_tree(self.qos.fs(), &cgroup).await {
            tracing::warn!(cgroup, error = %e, "removing a task cgroup");
        }
    }

    /// A task whose shim died while building it: what the dead shim's
    /// last build was still doing (libcontainer's intermediate process,
    /// which reads EOF from the dead fork server only after it has made the
    /// task's cgroup) can make the cgroup again after the cleanup removed
    /// it. Found by the chaos run. Looks twice more, 2 and 10 s later, and
    /// removes the task's cgroup, and with `parent_too` the pod's (when no
    /// pod uses it any more), if they are there.
    pub(super) fn sweep_late_task_cgroup(
        self: &Arc<Self>,
        pod: crate::store::PodRecord,
        task_id: String,
        parent_too: bool,
    ) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            for wait in [2, 8] {
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                let Some(rt) = runtime.upgrade() else {
                    return;
                };
                rt.remove_task_cgroup(&pod, &task_id).await;
                let unused = || {
                    !rt.records()
                        .pods
                        .values()
                        .any(|p| p.cgroup_parent == pod.cgroup_parent)
                };
                if parent_too && !pod.cgroup_parent.trim_matches('/').is_empty() && unused() {
                    let _ = rt.qos.fs().remove_one(&pod.cgroup_parent);
                }
            }
        });
    }

    /// Applies `resources` to container `id`'s live cgroup, and re-sizes its
    /// pod's.
    pub async fn update_container_resources(
        self: &Arc<Self>,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> CriResult<()> {
        let c = self.container(id)?;
        let resources = resources.ok_or_else(|| CriError::invalid("linux", "must be set"))?;
        let mut oci = crate::spec::update_resources(&resources)?;
        apply_unified(&resources, "linux", self.qos.fs().mode(), &mut oci)?;
        fit_hugepage_limits(&mut oci, self.hugetlb_usable(), "linux")?;
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = serde_json::to_vec(&oci)
            .map_err(|e| CriError::internal("encoding the resources", e))?;
        let lock = self.lock_for(&c.pod_id);
        let _guard = lock.lock().await;
        // Read under the pod's lock: a concurrent update in this pod may
        // have moved the pod's figures, or removed the container.
        let c = self.container(id)?;
        let span = tracing::info_span!("update_container_resources", container_id = %c.id, pod_id = %c.pod_id);
        let _enter = span.enter();
        if !matches!(c.state, ContainerState::Running | ContainerState::Created) {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let pod = self.pod(&c.pod_id)?;
        let client = self.client(&pod)?;
        drop(_enter);

        // The pod's limits before and after, when caissond sizes it.
        let container_config: cri::ContainerConfig = decode(&c.config).unwrap_or_default();
        let old_resources = resources_of(&container_config);
        // What the container has once the update is applied: a field the
        // update leaves at 0 keeps its value.
        let resources = merged_update(&old_resources, &resources);
        let pod_plan = self.pod_sizing(&pod).map(|(sizing, config)| {
            let overhead = super::pod::pod_resources(&config).overhead;
            match sizing {
                PodSizing::FromContainers => PodPlan {
                    before: self.summed_limits(&pod, &config, None),
                    after: self.summed_limits(&pod, &config, Some((&c.id, &resources))),
                    new_pod_resources: None,
                    unified: vec![],
                },
                PodSizing::FromPodResources(pod_r) => {
                    let before = crate::spec::qos_resources(&pod_r);
                    let after = before.with_container_changed(
                        &crate::spec::qos_resources(&old_resources),
                        &crate::spec::qos_resources(&resources),
                    );
                    let mut before = PodResources {
                        resources: before,
                        overhead: overhead.clone(),
                    }
                    .limits();
                    let mut after_limits = PodResources {
                        resources: after.clone(),
                        overhead,
                    }
                    .limits();
                    // The pod's swap (a memory + swap total in the CRI) stays
                    // the same amount on top of its moved memory limit.
                    let total = (pod_r.memory_swap_limit_in_bytes != 0)
                        .then_some(pod_r.memory_swap_limit_in_bytes);
                    let swap = caisson_cgroups::tree::swap_over(total, before.memory)
                        .ok()
                        .flatten();
                    before.swap = swap;
                    after_limits.swap = swap;
                    let new_total = match (swap, after_limits.memory) {
                        (Some(s), Some(m)) if s >= 0 => {
                            i64::try_from(m).unwrap_or(i64::MAX).saturating_add(s)
                        }
                        _ => pod_r.memory_swap_limit_in_bytes,
                    };
                    let mut unified: Vec<(String, String)> = pod_r
                        .unified
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    unified.sort();
                    let new_pod_r = cri::LinuxContainerResources {
                        cpu_shares: after.cpu_shares as i64,
                        cpu_quota: after.cpu_quota,
                        cpu_period: after.cpu_period as i64,
                        memory_limit_in_bytes: after.memory_limit as i64,
                        memory_swap_limit_in_bytes: new_total,
                        ..pod_r.clone()
                    };
                    PodPlan {
                        before,
                        after: after_limits,
                        new_pod_resources: Some(new_pod_r),
                        unified,
                    }
                }
            }
        });
        // Widen the pod first so the container's new limits fit in it
        // (v1 refuses a child CFS quota above its parent's) ...
        if let Some(plan) = &pod_plan {
            self.size_pod(&pod, &plan.before.widest(&plan.after), &plan.unified)?;
        }
        let updated = client
            .update(api::UpdateTaskRequest {
                id: c.id.clone(),
                resources: Some(any).into(),
                ..Default::default()
            })
            .await;
        if let Err(e) = updated {
            if let Some(plan) = &pod_plan {
                if let Err(e) = self.size_pod(&pod, &plan.before, &plan.unified) {
                    tracing::warn!(pod_id = %pod.id, error = %e, "restoring the pod cgroup's size");
                }
            }
            return Err(e);
        }
        // ... and narrow it to its new size once the container fits.
        self.update_container(&c.id, |record| {
            let mut config: cri::ContainerConfig = decode(&record.config).unwrap_or_default();
            config.linux.get_or_insert_with(Default::default).resources = Some(resources.clone());
            record.config = encode(&config);
        });
        // The container has changed: what follows is bookkeeping, and a
        // failure there is logged, not returned as a failed update.
        if let Some(plan) = pod_plan {
            if let Err(e) = self.size_pod(&pod, &plan.after, &plan.unified) {
                tracing::warn!(pod_id = %pod.id, error = %e, "narrowing the pod cgroup");
            }
            if let Some(r) = plan.new_pod_resources {
                let saved = self.pod(&pod.id).and_then(|mut record| {
                    let mut config: cri::PodSandboxConfig =
                        decode(&record.config).unwrap_or_default();
                    config.linux.get_or_insert_with(Default::default).resources = Some(r);
                    record.config = encode(&config);
                    self.save_pod(record)
                });
                if let Err(e) = saved {
                    tracing::warn!(pod_id = %pod.id, error = %e, "saving the pod's new figures");
                }
            }
        }
        tracing::info!(container_id = %c.id, "container resources updated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn field(e: &CriError) -> Option<&str> {
        match e {
            CriError::InvalidArgument { field, .. } => Some(field),
            _ => None,
        }
    }

    fn host_mode() -> CgroupMode {
        caisson_cgroups::fs::CgroupRoot::host().mode()
    }

    fn with_unified(pairs: &[(&str, &str)]) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            unified: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn only_transient_cgroup_errors_are_retried() {
        let failed = |errno| caisson_cgroups::CgroupError::WriteFailed {
            path: "/x".into(),
            value: "1".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        for (errno, transient) in [
            (libc::EINVAL, true),
            (libc::EBUSY, true),
            (libc::ENOENT, false),
            (libc::EACCES, false),
        ] {
            assert_eq!(is_transient(&failed(errno)), transient, "errno {errno}");
        }
        // A missing cgroup fails at once; a busy one is tried until it passes.
        let started = std::time::Instant::now();
        let mut calls = 0;
        let r = retry_while_busy(|| {
            calls += 1;
            Err(failed(libc::ENOENT))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let mut calls = 0;
        retry_while_busy(|| {
            calls += 1;
            if calls < 3 {
                Err(failed(libc::EBUSY))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn an_update_keeps_the_fields_it_leaves_unset() {
        let old = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 64 << 20,
            oom_score_adj: 999,
            cpuset_cpus: "0-3".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            unified: HashMap::from([("memory.oom.group".to_string(), "1".to_string())]),
            ..Default::default()
        };
        let cases = [
            (
                "CPU manager: cpuset only",
                cri::LinuxContainerResources {
                    cpuset_cpus: "2".into(),
                    ..Default::default()
                },
                cri::LinuxContainerResources {
                    cpuset_cpus: "2".into(),
                    ..old.clone()
                },
            ),
            (
                "memory manager: mems only",
                cri::LinuxContainerResources {
                    cpuset_mems: "0".into(),
                    ..Default::default()
                },
                cri::LinuxContainerResources {
                    cpuset_mems: "0".into(),
                    ..old.clone()
                },
            ),
            (
                "in-place resize: every figure",
                cri::LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 20_000,
                    cpu_shares: 204,
                    memory_limit_in_bytes: 32 << 20,
                    memory_swap_limit_in_bytes: 32 << 20,
                    oom_score_adj: 998,
                    unified: HashMap::from([("memory.high".to_string(), "1000".to_string())]),
                    ..Default::default()
                },
                cri::LinuxContainerResources {
                    cpu_quota: 20_000,
                    cpu_shares: 204,
                    memory_limit_in_bytes: 32 << 20,
                    memory_swap_limit_in_bytes: 32 << 20,
                    oom_score_adj: 998,
                    unified: HashMap::from([
                        ("memory.oom.group".to_string(), "1".to_string()),
                        ("memory.high".to_string(), "1000".to_string()),
                    ]),
                    ..old.clone()
                },
            ),
            (
                "figures given: 0 is no limit",
                cri::LinuxContainerResources {
                    cpu_shares: 512,
                    ..Default::default()
                },
                cri::LinuxContainerResources {
                    cpu_period: 0,
                    cpu_quota: 0,
                    cpu_shares: 512,
                    memory_limit_in_bytes: 0,
                    memory_swap_limit_in_bytes: 0,
                    ..old.clone()
                },
            ),
        ];
        for (name, update, want) in cases {
            assert_eq!(merged_update(&old, &update), want, "{name}");
        }
    }

    #[test]
    fn hugepage_limits_are_fitted_to_the_node() {
        let with = |limits: &[(&str, i64)]| {
            let mut res = LinuxResources::default();
            res.set_hugepage_limits(Some(
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
            res
        };
        // (usable, limits, limits left or the field refused)
        type Case<'a> = (bool, &'a [(&'a str, i64)], Result<usize, &'a str>);
        let cases: [Case; 4] = [
            (false, &[("2MB", 0), ("1GB", 0)], Ok(0)),
            (true, &[("2MB", 0), ("1GB", 0)], Ok(2)),
            (true, &[("2MB", 1 << 21)], Ok(1)),
            (
                false,
                &[("2MB", 0), ("1GB", 1 << 30)],
                Err("linux.hugepage_limits[1]"),
            ),
        ];
        for (i, (usable, limits, want)) in cases.into_iter().enumerate() {
            let mut res = with(limits);
            match (fit_hugepage_limits(&mut res, usable, "linux"), want) {
                (Ok(()), Ok(n)) => assert_eq!(
                    res.hugepage_limits().as_ref().map_or(0, Vec::len),
                    n,
                    "case {i}"
                ),
                (Err(CriError::FailedPrecondition(msg)), Err(field)) => {
                    assert!(msg.starts_with(field), "case {i}: {msg}");
                    assert!(msg.contains("hugetlb"), "case {i}: {msg}");
                }
                (got, want) => panic!("case {i}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn unknown_unified_keys_are_refused_by_name() {
        for key in ["cgroup.procs", "memory.bogus", "../release_agent"] {
            let r = with_unified(&[(key, "1")]);
            let mut res = LinuxResources::default();
            let err = apply_unified(&r, "linux", host_mode(), &mut res).unwrap_err();
            assert_eq!(
                field(&err).map(String::from),
                Some(format!("linux.unified[{key}]")),
                "{err}"
            );
        }
    }

    #[test]
    fn unified_keys_on_this_node() {
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(64 << 20));
        let mut res = LinuxResources::default();
        res.set_memory(Some(memory));
        let r = with_unified(&[
            ("pids.max", "50"),
            ("cpu.max", "20000 100000"),
            ("memory.swap.max", "0"),
            ("cpuset.cpus", "0"),
        ]);
        apply_unified(&r, "linux", host_mode(), &mut res).unwrap();
        if host_mode().is_v1() {
            assert_eq!(res.pids().unwrap().limit(), 50);
            let cpu = res.cpu().clone().unwrap();
            assert_eq!((cpu.quota(), cpu.period()), (Some(20_000), Some(100_000)));
            assert_eq!(cpu.cpus().as_deref(), Some("0"));
            assert_eq!(res.memory().unwrap().swap(), Some(64 << 20));
            assert!(res.unified().is_none());
            let err = apply_unified(
                &with_unified(&[("memory.high", "1")]),
                "x",
                host_mode(),
                &mut res,
            )
            .unwrap_err();
            assert_eq!(field(&err), Some("x.unified[memory.high]"));
            assert!(err.to_string().contains("v1"), "{err}");
        } else {
            assert!(res.pids().is_none(), "v2: written as given by libcontainer");
        }
    }
}
