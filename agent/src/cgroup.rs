//! The guest's cgroups (v2): the pod's place in a kubepods QoS tree, and
//! each container's cgroup (where it is, its figures, its processes, new
//! limits).
//!
//! ```text
//! /sys/fs/cgroup/kubepods               (the guest's QoS tree)
//! └── <tier>/pod<uid>                   the tier and uid the host gave the pod
//!     ├── <sandbox id>                  the pause
//!     └── <container id>                each container, its own limits
//! ```
//!
//! Who writes what:
//! - **caisson-cgroups** (the host's QoS crate, its cgroup v2 code) makes
//!   the tree, its tiers and the pod's cgroup, and sizes the pod: levels
//!   libcontainer knows nothing of. The pod goes in the tier the host put
//!   it in (read from the host's `cgroupsPath`, which ends in
//!   `<tier>/pod<uid>/<id>` wherever caissond or kubelet made the pod), and
//!   is sized, after each create, update and delete of a container, to the
//!   sums of its containers' limits as their cgroups show them (kubelet's
//!   rule for a pod cgroup; the pause does not count).
//! - **libcontainer** (libcgroups v2) makes each container's cgroup at
//!   `<pod>/<id>` from the spec's `linux.resources`, and applies
//!   `UpdateResources`: the whole OCI object (shares to weight, swap as v2
//!   counts it, pids, hugetlb, `unified`, and the devices eBPF program that
//!   only it can load), as the native backend has it on a v2 host.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use caisson_agent_proto::Stats;
use caisson_cgroups::fs::CgroupRoot;
use caisson_cgroups::{
    cpu, stats as cg_stats, CgroupFs, NodeAllocatable, PodExtras, PodResources, QosClass, QosTree,
    Resources,
};
use serde_json::Value;

/// Where the guest's cgroup2 is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The guest's QoS tree, under [`ROOT`].
pub const KUBEPODS: &str = "kubepods";
/// The sandbox spec's annotation with the pod's uid (caissond and
/// containerd set it).
const SANDBOX_UID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-uid";

/// The guest's kubepods tree (the VM is the pod's node: no allocatable
/// limit beyond the VM's own size).
fn qos_tree() -> QosTree<CgroupRoot> {
    QosTree::new(CgroupRoot::host(), KUBEPODS, NodeAllocatable::default())
}

/// Where the host placed the pod, which the guest's tree repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlace {
    pub class: QosClass,
    pub uid: String,
}

/// The pod's place from its sandbox's spec: the class from the host's
/// `cgroupsPath` (`.../<tier>/pod<uid>/<id>`, or systemd's
/// `kubepods-<tier>-pod<uid>.slice:<prefix>:<id>`), the uid from the
/// `io.kubernetes.cri.sandbox-uid` annotation, else that path, else the
/// sandbox's id. A path without a pod level says nothing of the class:
/// BestEffort, as the host gives a pod without figures.
pub fn pod_place(spec: &Value, sandbox_id: &str) -> PodPlace {
    let from_path = spec
        .pointer("/linux/cgroupsPath")
        .and_then(Value::as_str)
        .and_then(place_in_host_path);
    let annotated = spec
        .get("annotations")
        .and_then(|a| a.get(SANDBOX_UID_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let class = from_path
        .as_ref()
        .map_or(QosClass::BestEffort, |(class, _)| *class);
    let uid = annotated
        .or(from_path.map(|(_, uid)| uid))
        .unwrap_or_else(|| sandbox_id.to_string());
    PodPlace { class, uid }
}

/// The class and uid of the pod cgroup a host `cgroupsPath` is in.
fn place_in_host_path(path: &str) -> Option<(QosClass, String)> {
    let parent = if path.starts_with('/') {
        path.rsplit_once('/')?.0.to_string()
    } else {
        let slice = path.split(':').next()?;
        caisson_cgroups::path::cgroupfs_parent(slice).ok()?
    };
    let mut levels = parent.rsplit('/');
    let uid = levels.next()?.strip_prefix("pod")?;
    if uid.is_empty() {
        return None;
    }
    let class = match levels.next() {
        Some("burstable") => QosClass::Burstable,
        Some("besteffort") => QosClass::BestEffort,
        _ => QosClass::Guaranteed,
    };
    Some((class, uid.to_string()))
}

/// Makes the pod's cgroup (and the tree above it) where `place` says,
/// without limits until its containers come; its path (`/kubepods/...`).
pub fn create_pod(place: &PodPlace) -> Result<String, String> {
    let tree = qos_tree();
    let pod = tree
        .create_pod_in(
            place.class,
            &place.uid,
            &PodResources::default(),
            &PodExtras::default(),
        )
        .map_err(|e| format!("the pod's cgroup: {e}"))?;
    if let Err(e) = tree.refresh_burstable() {
        crate::log::log!("the burstable tier's weight: {e}");
    }
    Ok(pod)
}

/// Removes the pod's cgroup with whatever is left below it.
pub fn remove_pod(pod: &str) {
    let tree = qos_tree();
    if let Err(e) = tree.remove(pod) {
        crate::log::log!("removing the pod's cgroup {pod}: {e}");
    }
    if let Err(e) = tree.refresh_burstable() {
        crate::log::log!("the burstable tier's weight: {e}");
    }
}

/// The pod cgroup a container's cgroup is in.
pub fn pod_of(cgroup: &str) -> Option<&str> {
    cgroup
        .trim_end_matches('/')
        .rsplit_once('/')
        .map(|(pod, _)| pod)
        .filter(|pod| !pod.is_empty())
}

/// Puts the container's cgroup at `<pod>/<id>` in its spec, where
/// libcontainer makes it (the host's `cgroupsPath` is a host path).
pub fn place(spec: &mut Value, pod: &str, id: &str) -> Result<(), String> {
    let root = spec.as_object_mut().ok_or("spec_json: not a JSON object")?;
    let linux = root
        .entry("linux")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()
        .ok_or("spec_json: linux is not an object")?;
    linux.insert(
        "cgroupsPath".into(),
        Value::String(format!("{}/{id}", pod.trim_end_matches('/'))),
    );
    Ok(())
}

/// The CPU shares libcontainer turned into `weight` (runc's conversion
/// since 1.3: `10^((l² + 125 l) / 612 − 7/34)` for `l = log2(shares)`,
/// rounded up), within a percent or so: the inverse of that formula.
fn shares_from_container_weight(weight: u64) -> u64 {
    if weight <= 1 {
        return cpu::MIN_SHARES;
    }
    let exponent = (weight as f64).log10() + 7.0 / 34.0;
    let l = (-125.0 + (125.0f64.powi(2) + 4.0 * 612.0 * exponent).sqrt()) / 2.0;
    (2f64.powf(l).round() as u64).clamp(cpu::MIN_SHARES, cpu::MAX_SHARES)
}

/// A container's CPU and memory limits as its cgroup shows them (its
/// weight read back as the shares it was made from, `max` as unlimited).
fn container_figures(fs: &impl CgroupFs, cgroup: &str) -> Resources {
    let extras = cg_stats::read_container_extras(fs, cgroup);
    let weight = fs
        .read("", cgroup, "cpu.weight")
        .and_then(|w| w.parse().ok());
    Resources {
        cpu_shares: weight.map_or(0, shares_from_container_weight),
        cpu_quota: extras
            .cpu_quota_us
            .map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX)),
        cpu_period: extras.cpu_period_us.unwrap_or(cpu::DEFAULT_PERIOD_US),
        memory_limit: fs
            .read("", cgroup, "memory.max")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0),
    }
}

/// Sizes the pod's cgroup to the sums of its containers' limits (every
/// child cgroup but `sandbox`'s): shares add up, and a CPU or memory limit
/// is the sum only when every container has one. On cgroup v2 a child may
/// have limits above its parent's, so the order of the container's and
/// the pod's writes does not matter to the kernel.
pub fn resize_pod(pod: &str, sandbox: &str) -> Result<(), String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    size_pod(&qos_tree(), pod, sandbox)
}

fn size_pod<F: CgroupFs>(tree: &QosTree<F>, pod: &str, sandbox: &str) -> Result<(), String> {
    let dir = tree.fs().dir("", pod);
    let entries = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let figures: Vec<Resources> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != sandbox)
        .map(|e| {
            container_figures(
                tree.fs(),
                &format!("{pod}/{}", e.file_name().to_string_lossy()),
            )
        })
        .collect();
    let limits = PodResources {
        resources: PodResources::from_containers(&figures),
        overhead: Resources::default(),
    }
    .limits();
    tree.apply(pod, &limits)
        .map_err(|e| format!("sizing the pod's cgroup: {e}"))?;
    tree.refresh_burstable()
        .map_err(|e| format!("the burstable tier's weight: {e}"))
}

/// The cgroup `pid` is in (from `/proc/<pid>/cgroup`'s `0::` line), as a
/// path relative to [`ROOT`]'s top (`/kubepods/pod1/c1`).
pub fn of_pid(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The cgroup's directory.
pub fn dir(path: &str) -> PathBuf {
    Path::new(ROOT).join(path.trim_start_matches('/'))
}

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

fn number(dir: &Path, file: &str) -> u64 {
    read(dir, file)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// A `key value` file's value for `key`.
pub fn keyed(dir: &Path, file: &str, key: &str) -> u64 {
    read(dir, file)
        .and_then(|t| keyed_value(&t, key))
        .unwrap_or(0)
}

fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A limit file: `max` (no limit) is 0.
fn limit(dir: &Path, file: &str) -> u64 {
    match read(dir, file) {
        Some(t) if t.trim() == "max" => 0,
        Some(t) => t.trim().parse().unwrap_or(0),
        None => 0,
    }
}

/// The container's usage, from its cgroup's files.
pub fn stats(dir: &Path) -> Stats {
    let cpu = read(dir, "cpu.stat").unwrap_or_default();
    let usec = |k| keyed_value(&cpu, k).unwrap_or(0) * 1000;
    let memory = read(dir, "memory.stat").unwrap_or_default();
    let mem = |k| keyed_value(&memory, k).unwrap_or(0);
    let current = number(dir, "memory.current");
    Stats {
        cpu_usage_ns: usec("usage_usec"),
        cpu_user_ns: usec("user_usec"),
        cpu_system_ns: usec("system_usec"),
        memory_usage_bytes: current,
        // "max" as the host's libcgroups reports no limit (a huge number,
        // not 0: consumers subtract usage from it).
        memory_limit_bytes: match read(dir, "memory.max") {
            Some(t) if t.trim() == "max" => u64::MAX,
            _ => limit(dir, "memory.max"),
        },
        memory_working_set_bytes: current.saturating_sub(mem("inactive_file")),
        memory_rss_bytes: mem("anon"),
        page_faults: mem("pgfault"),
        major_page_faults: mem("pgmajfault"),
        oom_events: oom_kills(dir),
        pids_current: number(dir, "pids.current"),
        pids_limit: limit(dir, "pids.max"),
        memory_cache_bytes: mem("file"),
        memory_failcnt: keyed(dir, "memory.events", "max"),
    }
}

/// `memory.events`' `oom_kill`.
pub fn oom_kills(dir: &Path) -> u64 {
    keyed(dir, "memory.events", "oom_kill")
}

/// The pids in the cgroup (and, for a threaded tree, its processes only).
pub fn procs(dir: &Path) -> Vec<i32> {
    read(dir, "cgroup.procs")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Applies an OCI `linux.resources` object to the cgroup, through
/// libcgroups' v2 manager (the same conversions as at create).
pub fn update(path: &str, container_id: &str, resources_json: &[u8]) -> Result<(), String> {
    use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager, ControllerOpt};
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_slice(resources_json).map_err(|e| format!("resources_json: {e}"))?;
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: PathBuf::from(path),
        systemd_cgroup: false,
        container_name: container_id.to_string(),
    })
    .map_err(|e| format!("cgroup {path}: {e}"))?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| format!("applying resources to {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_come_from_the_v2_files() {
        let dir = std::env::temp_dir().join(format!("caisson-agent-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let files = [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            ),
            ("memory.current", "10000\n"),
            ("memory.max", "max\n"),
            (
                "memory.stat",
                "anon 4096\nfile 5000\ninactive_file 3000\npgfault 12\npgmajfault 1\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
        ];
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
        let s = stats(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            (s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns),
            (1_500_000, 1_000_000, 500_000)
        );
        assert_eq!(
            (s.memory_usage_bytes, s.memory_limit_bytes),
            (10000, u64::MAX)
        );
        assert_eq!(
            (s.memory_working_set_bytes, s.memory_rss_bytes),
            (7000, 4096)
        );
        assert_eq!(
            (s.page_faults, s.major_page_faults, s.oom_events),
            (12, 1, 1)
        );
        assert_eq!((s.pids_current, s.pids_limit), (3, 64));
        assert_eq!((s.memory_cache_bytes, s.memory_failcnt), (5000, 2));
    }

    #[test]
    fn the_pod_goes_where_the_host_put_it() {
        let uid = |u: &str| json!({SANDBOX_UID_ANNOTATION: u});
        // (host cgroupsPath, annotations, class, uid)
        let cases = [
            (
                Some("/caisson-kubepods/besteffort/poduid-1/sb"),
                uid("uid-1"),
                QosClass::BestEffort,
                "uid-1",
            ),
            (
                Some("/kubepods/burstable/pod1234-56/sb"),
                json!({}),
                QosClass::Burstable,
                "1234-56",
            ),
            (
                Some("/kubepods/podg/sb"),
                uid("g"),
                QosClass::Guaranteed,
                "g",
            ),
            (
                Some("kubepods-burstable-pod12_34.slice:cri-containerd:sb"),
                json!({}),
                QosClass::Burstable,
                "12-34",
            ),
            // The annotation's uid is the pod's own spelling.
            (
                Some("kubepods-besteffort-pod12_34.slice:cri-containerd:sb"),
                uid("12-34"),
                QosClass::BestEffort,
                "12-34",
            ),
            // No pod level in the path: BestEffort, as a pod without figures.
            (Some("/k8s.io/sb"), uid("u"), QosClass::BestEffort, "u"),
            (None, json!({}), QosClass::BestEffort, "sb"),
            (
                Some("/kubepods/pod/sb"),
                uid(""),
                QosClass::BestEffort,
                "sb",
            ),
        ];
        for (path, annotations, class, want_uid) in cases {
            let mut spec = json!({"annotations": annotations, "linux": {}});
            if let Some(p) = path {
                spec["linux"]["cgroupsPath"] = json!(p);
            }
            let got = pod_place(&spec, "sb");
            assert_eq!(
                got,
                PodPlace {
                    class,
                    uid: want_uid.into()
                },
                "{path:?}"
            );
        }
    }

    #[test]
    fn containers_are_placed_in_the_pod() {
        let mut spec = json!({"linux": {"cgroupsPath": "/host/pod1/c1", "x": 1}});
        place(&mut spec, "/kubepods/besteffort/pod1/", "c1").unwrap();
        assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/besteffort/pod1/c1");
        assert_eq!(spec["linux"]["x"], 1);
        let mut bare = json!({});
        place(&mut bare, "/kubepods/podg", "c2").unwrap();
        assert_eq!(bare["linux"]["cgroupsPath"], "/kubepods/podg/c2");
        assert!(place(&mut json!({"linux": 1}), "/p", "c").is_err());
        assert_eq!(pod_of("/kubepods/podg/c2"), Some("/kubepods/podg"));
        assert_eq!(pod_of("/c2"), None);
        assert_eq!(pod_of(""), None);
    }

    #[test]
    fn the_pod_is_sized_to_its_containers_sums() {
        use caisson_cgroups::CgroupMode;
        let dir = std::env::temp_dir().join(format!("caisson-agent-pod-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let tree = QosTree::new(
            CgroupRoot::at(&dir, CgroupMode::Unified),
            KUBEPODS,
            NodeAllocatable::default(),
        );
        let pod = tree
            .create_pod_in(
                QosClass::Burstable,
                "u",
                &PodResources::default(),
                &PodExtras::default(),
            )
            .unwrap();
        assert_eq!(pod, "/kubepods/burstable/podu");
        let container = |id: &str, files: &[(&str, &str)]| {
            let cg = format!("{pod}/{id}");
            tree.fs().create(&cg).unwrap();
            for (file, value) in files {
                tree.fs().write("", &cg, file, value).unwrap();
            }
        };
        // The pause: no limits, and it does not count.
        container(
            "sb",
            &[
                ("cpu.weight", "1"),
                ("cpu.max", "max 100000"),
                ("memory.max", "max"),
            ],
        );
        container(
            "a",
            &[
                ("cpu.weight", "59"),
                ("cpu.max", "50000 100000"),
                ("memory.max", "33554432"),
            ],
        );
        container(
            "b",
            &[
                ("cpu.weight", "100"),
                ("cpu.max", "20000 50000"),
                ("memory.max", "67108864"),
            ],
        );
        size_pod(&tree, &pod, "sb").unwrap();
        let read = |file| tree.fs().read("", &pod, file).unwrap();
        assert_eq!(read("memory.max"), (96u64 << 20).to_string());
        // 0.5 CPU + 0.4 CPU over the default period.
        assert_eq!(read("cpu.max"), "90000 100000");
        // libcontainer's weights 59 and 100 are 512 and 1024 shares: the
        // pod has kubelet's weight for 1536.
        assert_eq!(
            read("cpu.weight"),
            cpu::cpu_weight_from_shares(1536).to_string()
        );
        // One container without a memory or CPU limit: the pod has none.
        container(
            "c",
            &[
                ("cpu.weight", "100"),
                ("cpu.max", "max 100000"),
                ("memory.max", "max"),
            ],
        );
        size_pod(&tree, &pod, "sb").unwrap();
        assert_eq!(
            (read("memory.max"), read("cpu.max")),
            ("max".into(), "max 100000".into())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn container_weights_read_back_as_their_shares() {
        // (shares, the weight libcontainer wrote for them)
        for (shares, weight) in [
            (2, 1),
            (102, 17),
            (512, 59),
            (1024, 100),
            (2048, 174),
            (4096, 303),
            (262_144, 10_000),
        ] {
            let back = shares_from_container_weight(weight) as f64;
            let error = (back - shares as f64).abs() / shares as f64;
            assert!(error < 0.02, "{shares} → {weight} → {back}");
        }
    }

    #[test]
    fn cgroup_dirs_are_under_the_root() {
        assert_eq!(
            dir("/kubepods/p/c"),
            Path::new("/sys/fs/cgroup/kubepods/p/c")
        );
        assert_eq!(dir("/"), Path::new("/sys/fs/cgroup/"));
    }
}
