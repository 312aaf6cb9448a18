//! What a `caissond` has made on the host, as the kernel shows it, checked
//! against what caissond says it owns (its pods and containers over CRI):
//!
//! * **presence**: every ready pod has its pause process, its shim, its
//!   pinned netns and its cgroup (and host-local's IP if it has one); every
//!   running container has its init process, in its own cgroup;
//! * **ownership**: nothing exists that no listed pod or container owns:
//!   mounts under the daemon's dirs, cgroups under its cgroup parent,
//!   netns pins, shim / pause / container processes, host-local IP
//!   allocations of its networks, iptables rules for its subnets (portmap);
//! * **records**: every pod and container record in the state dir is
//!   readable JSON, and the records are exactly what caissond lists.
//!
//! [`HostState::capture`] reads the kernel; [`Owned::query`] asks caissond;
//! [`check`] compares them. The churn, concurrency and chaos tests share it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::daemon::{daemon_processes, pid_alive, Caissond};

/// Where one daemon's resources live.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Mounts below these dirs are the daemon's (run dir, root dir).
    pub dirs: Vec<PathBuf>,
    /// The daemon's temp dir: shims name it on their command line.
    pub marker: PathBuf,
    pub cgroup_parent: String,
    pub netns_dir: PathBuf,
    pub state_dir: PathBuf,
    /// CNI network names (host-local's `/var/lib/cni/networks/<name>`).
    pub networks: Vec<String>,
    /// Subnet prefixes ("10.231.90.") whose iptables rules are the daemon's.
    pub subnets: Vec<String>,
    /// Paths below `dirs` that are not the daemon's (a test's own files).
    pub ignore: Vec<PathBuf>,
    /// The daemon's standing mount points (the dirs it keeps its pods'
    /// mounts below, each a mount point while it runs): no pod's.
    pub standing: Vec<PathBuf>,
}

impl Scope {
    /// The harness daemon's dirs (`<dir>/run`, `<dir>/root`), no network.
    pub fn of(d: &Caissond) -> Scope {
        Scope {
            dirs: vec![d.dir.path().join("run"), d.dir.path().join("root")],
            marker: d.dir.path().to_path_buf(),
            cgroup_parent: d.cgroup_parent.clone(),
            netns_dir: d.dir.path().join("run/netns"),
            state_dir: d.state_dir(),
            networks: vec![],
            subnets: vec![],
            ignore: vec![],
            standing: d.standing_mounts().to_vec(),
        }
    }

    /// Adds a CNI network (its name and /24 prefix, e.g. "10.231.90").
    pub fn with_network(mut self, name: &str, prefix: &str) -> Scope {
        self.networks.push(name.to_string());
        self.subnets.push(format!("{prefix}."));
        self
    }
}

/// A process of the daemon's and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proc {
    /// A pod's shim server (`-id <pod>` ... `serve`).
    Shim { pod: String },
    /// A pod's shim's fork server (the shim's command line, named
    /// `fork-server`): it dies with its shim, or once idle for 10 s.
    ForkServer { pod: String },
    /// A process in a task cgroup `<...>/<id>` (pause, container, exec, or
    /// a container's init still inside its shim's fork).
    Task { id: String },
    /// In the daemon's cgroups but not in a task's (`pod<uid>`, a tier).
    Cgroup { path: String },
    /// A short-lived shim command (`start`, `delete`): not counted.
    Transient,
    /// Anything else naming the daemon's dir.
    Other,
}

/// The kernel's view of a daemon's resources at one moment.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    pub mounts: BTreeSet<String>,
    /// `<controller>/<path>` below the cgroup parent (QoS tiers left out).
    pub cgroups: BTreeSet<String>,
    pub netns_pins: BTreeSet<String>,
    /// Mounted netns pins (nsfs mounts in `netns_dir`).
    pub netns_mounted: BTreeSet<String>,
    pub processes: BTreeMap<u32, (Proc, String)>,
    /// `(network, ip)` → the container id host-local recorded.
    pub ips: BTreeMap<(String, String), String>,
    /// nat/filter rules for the scope's subnets or chains.
    pub iptables: Vec<String>,
    /// State records: file name → parsed or the error.
    pub records: BTreeMap<String, Result<(), String>>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The 64-hex ids a path (or a line of text) names, in order.
pub fn ids_in(path: &str) -> Vec<String> {
    path.split(['/', '.', '-', '_', ' ', ':', '"', '='])
        .filter(|s| is_id(s))
        .map(String::from)
        .collect()
}

fn v1_controllers() -> Vec<String> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Named hierarchies and symlinks (cpu -> cpu,cpuacct) once each.
            if e.file_type().is_ok_and(|t| t.is_dir()) && name != "unified" {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

fn walk_cgroups(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = format!("{rel}/{name}");
            out.insert(rel.clone());
            walk_cgroups(&e.path(), &rel, out);
        }
    }
}

impl HostState {
    pub fn capture(scope: &Scope, daemon_pid: u32) -> HostState {
        let mut s = HostState::default();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut standing_seen = BTreeSet::new();
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(point) = fields.get(4) else { continue };
            let p = Path::new(point);
            if scope.standing.iter().any(|s| p == s) {
                // One mount each: a second one stacked there is a leak.
                if !standing_seen.insert(p.to_path_buf()) {
                    s.mounts.insert(format!("{point} (stacked)"));
                }
                continue;
            }
            if scope.ignore.iter().any(|i| p == i || p.starts_with(i)) {
                continue;
            }
            if scope.dirs.iter().any(|d| p.starts_with(d) && p != d) {
                s.mounts.insert(point.to_string());
            }
            if p.parent() == Some(scope.netns_dir.as_path()) {
                s.netns_mounted.insert(
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        let parent = scope.cgroup_parent.trim_matches('/');
        for ctl in v1_controllers() {
            let base = Path::new("/sys/fs/cgroup").join(&ctl).join(parent);
            let mut found = BTreeSet::new();
            walk_cgroups(&base, &ctl, &mut found);
            for tier in ["besteffort", "burstable"] {
                found.remove(&format!("{ctl}/{tier}"));
            }
            s.cgroups.extend(found);
        }
        if let Ok(rd) = std::fs::read_dir(&scope.netns_dir) {
            for e in rd.flatten() {
                s.netns_pins
                    .insert(e.file_name().to_string_lossy().into_owned());
            }
        }
        for (pid, cmd) in daemon_processes(&scope.marker, &scope.cgroup_parent, daemon_pid) {
            s.processes
                .insert(pid, (classify(pid, &cmd, &scope.cgroup_parent), cmd));
        }
        for net in &scope.networks {
            let dir = Path::new("/var/lib/cni/networks").join(net);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name == "lock" || name.starts_with("last_reserved_ip") {
                        continue;
                    }
                    let owner = std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    s.ips.insert((net.clone(), name), owner);
                }
            }
        }
        if !scope.subnets.is_empty() {
            s.iptables = iptables_rules(&scope.subnets);
        }
        for kind in ["pods", "containers"] {
            let dir = scope.state_dir.join(kind);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(".tmp") {
                        continue;
                    }
                    let parsed = std::fs::read(e.path())
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            serde_json::from_slice::<serde_json::Value>(&b)
                                .map(|_| ())
                                .map_err(|e| format!("{e} ({} bytes)", b.len()))
                        });
                    s.records.insert(format!("{kind}/{name}"), parsed);
                }
            }
        }
        s
    }

    /// Nothing at all: what a daemon with no pods must show.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
            && self.cgroups.is_empty()
            && self.netns_pins.is_empty()
            && self.netns_mounted.is_empty()
            && self
                .processes
                .values()
                .all(|(p, _)| matches!(p, Proc::Transient))
            && self.ips.is_empty()
            && self.iptables.is_empty()
            && self.records.is_empty()
    }
}

/// What a process of the daemon's is, from its command line and cgroup.
fn classify(pid: u32, cmd: &str, cgroup_parent: &str) -> Proc {
    // The shim's command line is also its fork server's (a fork of it,
    // named `fork-server`) and, until they exec, that of what the server
    // clones for a build (libcontainer's `youki:[...]` processes): those
    // are what their cgroup says, not the shim (the chaos run's shim kill
    // could pick a pause's init before its exec).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if cmd.contains("containerd-shim-caisson-v2") {
        let words: Vec<&str> = cmd.split(' ').collect();
        let pod = words
            .iter()
            .position(|w| *w == "-id")
            .and_then(|i| words.get(i + 1))
            .map(|pod| pod.to_string());
        if let (Some(pod), Some(&"serve")) = (pod, words.last()) {
            match comm.trim_end() {
                "containerd-shim" => return Proc::Shim { pod },
                "fork-server" => return Proc::ForkServer { pod },
                _ => {}
            }
        }
        if matches!(words.last(), Some(&"start") | Some(&"delete")) {
            return Proc::Transient;
        }
    }
    let below = format!("{}/", cgroup_parent.trim_end_matches('/'));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let path = cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find(|p| p.starts_with(&below))
        .map(String::from);
    match path {
        Some(path) => {
            let leaf = path.rsplit('/').next().unwrap_or_default();
            if is_id(leaf) {
                Proc::Task {
                    id: leaf.to_string(),
                }
            } else {
                Proc::Cgroup { path }
            }
        }
        None => Proc::Other,
    }
}

/// nat and filter rules that mention one of `subnets`, or a chain such a
/// rule is in or jumps to (portmap's per-pod `CNI-DN-*` chains).
fn iptables_rules(subnets: &[String]) -> Vec<String> {
    let out = Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("-A ")).collect();
    let mut chains: BTreeSet<String> = BTreeSet::new();
    for l in &lines {
        if subnets.iter().any(|s| l.contains(s.as_str())) {
            if let Some(chain) = l.split(' ').nth(1) {
                if chain.starts_with("CNI-") && !chain.starts_with("CNI-HOSTPORT") {
                    chains.insert(chain.to_string());
                }
            }
        }
    }
    lines
        .into_iter()
        .filter(|l| {
            subnets.iter().any(|s| l.contains(s.as_str()))
                || chains.iter().any(|c| l.split(' ').any(|w| w == c.as_str()))
        })
        .map(String::from)
        .collect()
}

/// A pod as caissond lists it.
#[derive(Debug, Clone, Default)]
pub struct OwnedPod {
    pub uid: String,
    pub ready: bool,
    pub pause_pid: u32,
    pub netns: Option<String>,
    pub ip: String,
    pub host_network: bool,
}

/// A container as caissond lists it.
#[derive(Debug, Clone, Default)]
pub struct OwnedContainer {
    pub pod_id: String,
    pub running: bool,
    pub pid: u32,
}

/// Everything caissond lists, with the verbose details the checks need.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    pub pods: BTreeMap<String, OwnedPod>,
    pub containers: BTreeMap<String, OwnedContainer>,
}

fn verbose_info(info: &std::collections::HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// A status answer, or `None` when its object went away since the list.
fn unless_gone<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> Result<Option<T>, tonic::Status> {
    match r {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

impl Owned {
    /// Lists pods and containers with their verbose statuses. An object
    /// removed between the list and its status is left out.
    pub async fn query(rt: &mut RuntimeServiceClient<Channel>) -> Result<Owned, tonic::Status> {
        let mut owned = Owned::default();
        let pods = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        for p in pods {
            let r = rt
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: p.id.clone(),
                    verbose: true,
                })
                .await;
            let Some(r) = unless_gone(r)? else {
                continue;
            };
            let v = verbose_info(&r.info);
            let status = r.status.unwrap_or_default();
            owned.pods.insert(
                p.id.clone(),
                OwnedPod {
                    uid: p.metadata.map(|m| m.uid).unwrap_or_default(),
                    ready: status.state == cri::PodSandboxState::SandboxReady as i32,
                    pause_pid: v["pid"].as_u64().unwrap_or(0) as u32,
                    netns: v["netns"].as_str().map(String::from),
                    ip: status.network.map(|n| n.ip).unwrap_or_default(),
                    host_network: v["hostNetwork"].as_bool().unwrap_or(false),
                },
            );
        }
        let containers = rt
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        for c in containers {
            let r = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: true,
                })
                .await;
            let Some(r) = unless_gone(r)? else {
                continue;
            };
            let v = verbose_info(&r.info);
            let status = r.status.unwrap_or_default();
            owned.containers.insert(
                c.id.clone(),
                OwnedContainer {
                    pod_id: c.pod_sandbox_id,
                    running: status.state == cri::ContainerState::ContainerRunning as i32,
                    pid: v["pid"].as_u64().unwrap_or(0) as u32,
                },
            );
        }
        Ok(owned)
    }

    fn owns(&self, id: &str) -> bool {
        self.pods.contains_key(id) || self.containers.contains_key(id)
    }
}

/// Every way the host and caissond's lists disagree (empty: none).
pub fn check(scope: &Scope, host: &HostState, owned: &Owned) -> Vec<String> {
    let mut v = vec![];
    // Presence.
    for (id, p) in &owned.pods {
        if !p.ready {
            continue;
        }
        if p.pause_pid == 0 || !pid_alive(p.pause_pid) {
            v.push(format!(
                "ready pod {id}: its pause process {} is gone",
                p.pause_pid
            ));
        }
        if !host
            .processes
            .values()
            .any(|(proc, _)| *proc == Proc::Shim { pod: id.clone() })
        {
            v.push(format!("ready pod {id}: no shim serves it"));
        }
        if let Some(ns) = &p.netns {
            let name = Path::new(ns)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !host.netns_mounted.contains(&name) {
                v.push(format!("ready pod {id}: its netns {ns} is not pinned"));
            }
        } else if !p.host_network {
            v.push(format!("ready pod {id}: no netns recorded"));
        }
        if !host
            .cgroups
            .iter()
            .any(|c| c.starts_with("memory/") && c.ends_with(&format!("/pod{}", p.uid)))
        {
            v.push(format!("ready pod {id}: no pod cgroup pod{}", p.uid));
        }
        if !p.ip.is_empty()
            && !scope.networks.is_empty()
            && !host
                .ips
                .iter()
                .any(|((_, ip), owner)| ip == &p.ip && owner == id)
        {
            v.push(format!(
                "ready pod {id}: host-local holds no {} for it",
                p.ip
            ));
        }
    }
    for (id, c) in &owned.containers {
        if !c.running {
            continue;
        }
        if c.pid == 0 || !pid_alive(c.pid) {
            v.push(format!(
                "running container {id}: its process {} is gone",
                c.pid
            ));
            continue;
        }
        match host.processes.get(&c.pid) {
            Some((Proc::Task { id: task }, _)) if task == id => {}
            other => v.push(format!(
                "running container {id}: its process {} is not in its cgroup ({other:?})",
                c.pid
            )),
        }
    }
    // Ownership.
    for m in &host.mounts {
        let ids = ids_in(m);
        if ids.is_empty() || !ids.iter().any(|i| owned.owns(i)) {
            v.push(format!("mount {m}: no pod or container owns it"));
        }
    }
    let uids: BTreeSet<String> = owned
        .pods
        .values()
        .map(|p| format!("pod{}", p.uid))
        .collect();
    for c in &host.cgroups {
        let owner_ok = c.split('/').any(|seg| uids.contains(seg))
            && c.split('/').filter(|s| is_id(s)).all(|s| owned.owns(s));
        if !owner_ok {
            v.push(format!("cgroup {c}: no pod or container owns it"));
        }
    }
    for pin in host.netns_pins.union(&host.netns_mounted) {
        if !owned.pods.contains_key(pin) {
            v.push(format!("netns pin {pin}: no pod owns it"));
        }
    }
    for (pid, (proc, cmd)) in &host.processes {
        let ok = match proc {
            Proc::Shim { pod } | Proc::ForkServer { pod } => owned.pods.contains_key(pod),
            Proc::Task { id } => owned.owns(id),
            Proc::Transient => true,
            Proc::Cgroup { .. } | Proc::Other => false,
        };
        if !ok {
            v.push(format!(
                "process {pid} ({cmd}, {proc:?}): no pod or container owns it"
            ));
        }
    }
    for ((net, ip), owner) in &host.ips {
        if !owned.pods.contains_key(owner) {
            v.push(format!(
                "CNI IP {ip} of {net}: held for {owner}, which no pod is"
            ));
        }
    }
    // portmap's per-pod chains: named by the jump rule carrying the pod id.
    let mut chain_owner: BTreeMap<String, String> = BTreeMap::new();
    for rule in &host.iptables {
        if let (Some(id), Some(chain)) = (
            rule_owner(rule),
            rule.split(" -j ").nth(1).and_then(|r| r.split(' ').next()),
        ) {
            chain_owner.insert(chain.to_string(), id.to_string());
        }
    }
    let pod_ips: BTreeSet<String> = owned
        .pods
        .values()
        .filter(|p| !p.ip.is_empty())
        .map(|p| p.ip.clone())
        .collect();
    for rule in &host.iptables {
        let chain = rule.split(' ').nth(1).unwrap_or_default();
        let to_pod = rule
            .split("--to-destination ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .is_some_and(|ip| pod_ips.contains(ip));
        let owned_rule = rule_owner(rule).is_some_and(|o| owned.pods.contains_key(o))
            || chain_owner
                .get(chain)
                .is_some_and(|o| owned.pods.contains_key(o))
            || to_pod;
        if !owned_rule {
            v.push(format!("iptables rule no pod owns: {rule}"));
        }
    }
    // Records.
    for (name, parsed) in &host.records {
        if let Err(e) = parsed {
            v.push(format!("state record {name} is unreadable: {e}"));
            continue;
        }
        let id = name
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        let listed = if name.starts_with("pods/") {
            owned.pods.contains_key(id)
        } else {
            owned.containers.contains_key(id)
        };
        if !listed {
            v.push(format!("state record {name}: caissond does not list it"));
        }
    }
    for id in owned.pods.keys() {
        if !host.records.contains_key(&format!("pods/{id}.json")) {
            v.push(format!("pod {id} is listed but has no record on disk"));
        }
    }
    for id in owned.containers.keys() {
        if !host.records.contains_key(&format!("containers/{id}.json")) {
            v.push(format!(
                "container {id} is listed but has no record on disk"
            ));
        }
    }
    v
}

/// The pod id in a rule's comment (`... id: \"<id>\"`, as portmap writes it).
fn rule_owner(rule: &str) -> Option<&str> {
    let rest = rule.split("id: \\\"").nth(1)?;
    rest.split('\\').next()
}

/// caissond's resident set (KiB) and open fds.
pub fn rss_kib_and_fds(pid: u32) -> (u64, usize) {
    let rss = crate::daemon::proc_status_field(pid, "VmRSS")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

impl Caissond {
    /// [`check`] of this daemon in `scope`, now (empty: consistent).
    pub fn leak_check(&self, scope: &Scope) -> Vec<String> {
        let mut rt = self.runtime();
        let owned = match self.rt.block_on(Owned::query(&mut rt)) {
            Ok(o) => o,
            Err(s) => return vec![format!("listing pods and containers: {s}")],
        };
        let host = HostState::capture(scope, self.pid());
        check(scope, &host, &owned)
    }

    /// Waits up to `timeout` for [`Caissond::leak_check`] to come out
    /// clean (exits and removals settle asynchronously); the violations
    /// that remained otherwise.
    pub fn settled_leak_check(&self, scope: &Scope, timeout: std::time::Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let v = self.leak_check(scope);
            if v.is_empty() || std::time::Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
