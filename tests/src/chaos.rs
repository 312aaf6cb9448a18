//! A chaos harness (issue #19): clients drive a kubelet-like workload on
//! native and hardened pods (run pod, create, start, exec, stop, remove,
//! retrying calls that fail or time out, re-creating pods and containers
//! under the same names) while faults land at random moments: caissond
//! SIGKILLed and restarted, a pod's shim SIGKILLed, a container's init
//! SIGKILLed, the state dir's filesystem (a small tmpfs) filled for a while.
//!
//! After every fault (once the clients' calls in flight have ended) and at
//! the end, [`crate::leaks`] checks the kernel against what caissond lists;
//! after a caissond restart, every container that was running before the
//! kill and that nobody stopped is running still, with the same id and pid.
//! Every decision (fault kinds, moments, victims, client choices) comes
//! from one seed; thread timing does not, so a seed replays the same plan,
//! not always the same interleaving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::cni::TestNetwork;
use crate::daemon::{container_config, with_pid_mode, Caissond};
use crate::leaks::{HostState, Owned, Proc, Scope};

/// xorshift64*: small, seeded, good enough to pick faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// The kinds of fault, as the summary counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillCaissond,
    KillShim,
    KillInit,
    FillStateDisk,
}

impl Fault {
    fn pick(rng: &mut Rng) -> Fault {
        match rng.below(10) {
            0..=2 => Fault::KillCaissond,
            3..=4 => Fault::KillShim,
            5..=7 => Fault::KillInit,
            _ => Fault::FillStateDisk,
        }
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub faults: usize,
    pub clients: usize,
}

impl Plan {
    /// `CAISSON_CHAOS_SEED`, `CAISSON_CHAOS_FAULTS`, `CAISSON_CHAOS_CLIENTS`
    /// over the given defaults.
    pub fn from_env(seed: u64, faults: usize, clients: usize) -> Plan {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Plan {
            seed: var("CAISSON_CHAOS_SEED").unwrap_or(seed),
            faults: var("CAISSON_CHAOS_FAULTS").map_or(faults, |v| v as usize),
            clients: var("CAISSON_CHAOS_CLIENTS").map_or(clients, |v| v as usize),
        }
    }
}

/// A violation: at which fault (step) and what.
#[derive(Debug, Clone)]
pub struct Violation {
    pub step: usize,
    pub after: String,
    pub what: String,
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seed: u64,
    pub operations: u64,
    pub failed_operations: u64,
    pub faults: BTreeMap<String, u64>,
    pub restarts: u64,
    pub checks: u64,
    pub survivors_checked: u64,
    pub elapsed: Duration,
    pub violations: Vec<Violation>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: u64 = self.faults.values().sum();
        writeln!(
            f,
            "chaos seed {}: {} operations ({} failed and retried or given up), {faults} faults {:?}, \
             {} caissond restarts, {} invariant checks, {} running containers checked across restarts, \
             {:.0} s; violations: {}",
            self.seed,
            self.operations,
            self.failed_operations,
            self.faults,
            self.restarts,
            self.checks,
            self.survivors_checked,
            self.elapsed.as_secs_f64(),
            self.violations.len()
        )?;
        for v in &self.violations {
            writeln!(
                f,
                "  VIOLATION seed {} step {} (after {}): {}",
                self.seed, v.step, v.after, v.what
            )?;
        }
        Ok(())
    }
}

/// A tmpfs of a test's own, unmounted (and its dir removed) on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let path = tempfile::Builder::new()
            .prefix("caisson-chaos-")
            .tempdir_in("/var/tmp")
            .unwrap()
            .keep();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mounting the chaos tmpfs");
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Whatever caissond left mounted below it, deepest first.
        let prefix = self.path.display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut below: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&format!("{prefix}/")))
            .map(String::from)
            .collect();
        below.reverse();
        for m in below {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What the clients and the chaos share.
struct Shared {
    socket: PathBuf,
    log_dir: PathBuf,
    /// Held for reading around each CRI call, for writing by checks.
    gate: tokio::sync::RwLock<()>,
    stop: AtomicBool,
    operations: AtomicU64,
    failed: AtomicU64,
    /// Pods and containers someone stopped, removed or killed on purpose
    /// (not expected to survive a restart running).
    touched: Mutex<BTreeSet<String>>,
    client_errors: Mutex<Vec<String>>,
}

impl Shared {
    fn touch(&self, id: &str) {
        self.touched.lock().unwrap().insert(id.to_string());
    }
}

async fn connect(socket: &Path) -> Option<RuntimeServiceClient<Channel>> {
    let ch = crate::daemon::channel_to(socket.to_path_buf()).await.ok()?;
    Some(RuntimeServiceClient::new(ch))
}

/// kubelet's per-call deadline here.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts of one call before the client gives up on it.
const ATTEMPTS: usize = 6;

/// Whether a kubelet would retry the same call.
fn retryable(s: &tonic::Status) -> bool {
    !matches!(
        s.code(),
        tonic::Code::NotFound
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
    )
}

/// One client: its own connection, its own pods (`c<idx>-p<slot>`).
struct Client {
    idx: usize,
    shared: Arc<Shared>,
    rng: Rng,
    rt: Option<RuntimeServiceClient<Channel>>,
    attempts: BTreeMap<usize, u32>,
}

macro_rules! cri_call {
    ($self:ident, $what:expr, $method:ident, $req:expr) => {{
        let mut out: Result<_, tonic::Status> = Err(tonic::Status::unavailable("not tried"));
        for attempt in 0..ATTEMPTS {
            if $self.shared.stop.load(Ordering::Relaxed) && attempt > 0 {
                break;
            }
            let _g = $self.shared.gate.read().await;
            if $self.rt.is_none() {
                $self.rt = connect(&$self.shared.socket).await;
            }
            let Some(rt) = $self.rt.as_mut() else {
                drop(_g);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut req = tonic::Request::new($req);
            req.set_timeout(CALL_TIMEOUT);
            $self.shared.operations.fetch_add(1, Ordering::Relaxed);
            let r = rt.$method(req).await.map(tonic::Response::into_inner);
            drop(_g);
            match r {
                Ok(v) => {
                    out = Ok(v);
                    break;
                }
                Err(s) => {
                    $self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                        $self.rt = None;
                    }
                    let again = retryable(&s);
                    out = Err(s);
                    if !again {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        if let Err(s) = &out {
            if s.code() == tonic::Code::Unknown && !s.message().contains("transport") {
                $self.shared.client_errors.lock().unwrap().push(format!(
                    "client {} {}: {:?} {}",
                    $self.idx,
                    $what,
                    s.code(),
                    s.message()
                ));
            }
        }
        out
    }};
}

impl Client {
    fn pod_config(&self, slot: usize, attempt: u32) -> cri::PodSandboxConfig {
        let name = format!("c{}-p{slot}", self.idx);
        let mut c = crate::daemon::pod_config(&name);
        c.metadata.as_mut().unwrap().attempt = attempt;
        c.log_directory = self.shared.log_dir.join(&name).display().to_string();
        if slot == 0 {
            c.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 32000 + self.idx as i32,
                host_ip: "127.0.0.1".into(),
            }];
        }
        c
    }

    /// RunPodSandbox as kubelet does it: a call that fails is retried with
    /// the same attempt (caissond answers the same pod); a pod of that
    /// name that is not ready is stopped and removed, and the next attempt
    /// made.
    async fn run_pod(&mut self, slot: usize) -> Option<(String, cri::PodSandboxConfig)> {
        let handler = if slot == 0 { "runc" } else { "hardened" };
        for _ in 0..3 {
            let attempt = *self.attempts.get(&slot).unwrap_or(&0);
            let config = self.pod_config(slot, attempt);
            let r = cri_call!(
                self,
                "RunPodSandbox",
                run_pod_sandbox,
                cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: handler.into(),
                }
            );
            match r {
                Ok(r) => return Some((r.pod_sandbox_id, config)),
                Err(_) => {
                    // Whatever is left under this name goes, then attempt+1.
                    self.remove_pods_named(&config).await;
                    self.attempts.insert(slot, attempt + 1);
                }
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return None;
            }
        }
        None
    }

    async fn remove_pods_named(&mut self, config: &cri::PodSandboxConfig) {
        let uid = config.metadata.as_ref().unwrap().uid.clone();
        let Ok(list) = cri_call!(
            self,
            "ListPodSandbox",
            list_pod_sandbox,
            cri::ListPodSandboxRequest::default()
        ) else {
            return;
        };
        for p in list.items {
            if p.metadata.as_ref().is_some_and(|m| m.uid == uid) {
                self.remove_pod(&p.id).await;
            }
        }
    }

    async fn remove_pod(&mut self, pod: &str) {
        self.shared.touch(pod);
        let _ = cri_call!(
            self,
            "StopPodSandbox",
            stop_pod_sandbox,
            cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            }
        );
        let _ = cri_call!(
            self,
            "RemovePodSandbox",
            remove_pod_sandbox,
            cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            }
        );
    }

    /// CreateContainer + StartContainer; a create retried after a timeout
    /// may find the name taken by its first try: that container is used.
    async fn start_container(
        &mut self,
        pod: &str,
        config: &cri::PodSandboxConfig,
        name: &str,
        attempt: u32,
    ) -> Option<String> {
        let mut cc = with_pid_mode(
            container_config(name, &["sleep", "100000"]),
            cri::NamespaceMode::Container,
        );
        cc.metadata.as_mut().unwrap().attempt = attempt;
        cc.log_path = format!("{name}-{attempt}.log");
        let r = cri_call!(
            self,
            "CreateContainer",
            create_container,
            cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(cc.clone()),
                sandbox_config: Some(config.clone()),
            }
        );
        let id = match r {
            Ok(r) => r.container_id,
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let list = cri_call!(
                    self,
                    "ListContainers",
                    list_containers,
                    cri::ListContainersRequest {
                        filter: Some(cri::ContainerFilter {
                            pod_sandbox_id: pod.to_string(),
                            ..Default::default()
                        }),
                    }
                )
                .ok()?;
                list.containers
                    .into_iter()
                    .find(|c| {
                        c.metadata
                            .as_ref()
                            .is_some_and(|m| m.name == name && m.attempt == attempt)
                    })?
                    .id
            }
            Err(_) => return None,
        };
        let r = cri_call!(
            self,
            "StartContainer",
            start_container,
            cri::StartContainerRequest {
                container_id: id.clone(),
            }
        );
        match r {
            Ok(_) => Some(id),
            // A retried start of a container that started.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Some(id),
            Err(_) => None,
        }
    }

    async fn exec(&mut self, id: &str) {
        let _ = cri_call!(
            self,
            "ExecSync",
            exec_sync,
            cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: vec!["echo".into(), "probe".into()],
                timeout: 10,
            }
        );
    }

    async fn stop_and_remove_container(&mut self, id: &str) {
        self.shared.touch(id);
        let _ = cri_call!(
            self,
            "StopContainer",
            stop_container,
            cri::StopContainerRequest {
                container_id: id.to_string(),
                timeout: 1,
            }
        );
        let _ = cri_call!(
            self,
            "RemoveContainer",
            remove_container,
            cri::RemoveContainerRequest {
                container_id: id.to_string(),
            }
        );
    }

    /// One pod's life with a few containers, probes, a restart of a
    /// container under its name, and removal.
    async fn pod_life(&mut self) {
        let slot = self.rng.below(2) as usize;
        let Some((pod, config)) = self.run_pod(slot).await else {
            return;
        };
        let mut containers = vec![];
        for n in 0..1 + self.rng.below(2) {
            let name = format!("app{n}");
            if let Some(id) = self.start_container(&pod, &config, &name, 0).await {
                containers.push((name, 0u32, id));
            }
        }
        let rounds = self.rng.below(4);
        for _ in 0..rounds {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(self.rng.millis(100, 900)).await;
            if containers.is_empty() {
                break;
            }
            let i = self.rng.below(containers.len() as u64) as usize;
            if self.rng.below(3) == 0 {
                // kubelet restarting a container: stop, remove, re-create
                // under the same name with the next attempt.
                let (name, attempt, id) = containers.remove(i);
                self.stop_and_remove_container(&id).await;
                if let Some(id) = self
                    .start_container(&pod, &config, &name, attempt + 1)
                    .await
                {
                    containers.push((name, attempt + 1, id));
                }
            } else {
                let id = containers[i].2.clone();
                self.exec(&id).await;
            }
        }
        self.remove_pod(&pod).await;
    }

    async fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.pod_life().await;
        }
    }
}

/// One chaos run per machine at a time, held until dropped: two runs share
/// the bridge, subnet and host-local dir (and the second's set-up removes
/// the first's), and each takes the other's pods' IPs and portmap rules
/// for leaks (a `make chaos` beside CI's run failed both). A second run
/// waits for the first.
fn one_run_at_a_time() -> nix::fcntl::Flock<std::fs::File> {
    use nix::fcntl::{Flock, FlockArg};
    let path = Path::new("/var/tmp/caisson-chaos.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((file, _)) => {
            eprintln!(
                "chaos: another chaos run holds {}: waiting for it to end",
                path.display()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()))
        }
    }
}

/// Runs `plan` against a fresh caissond whose root dir is on a small
/// tmpfs, on a CNI bridge with portmap (subnet `10.231.92.0/24`).
pub fn run(plan: &Plan) -> Summary {
    let _one_at_a_time = one_run_at_a_time();
    let started = Instant::now();
    let net = TestNetwork::new("cst-chaos", "cst-chaos0", "10.231.92").with_portmap();
    let tmpfs = Tmpfs::new("96m");
    let (mut d, scope) = start_with_root(&tmpfs.path.join("root"));
    d.import_busybox();
    net.install(
        &d,
        r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#,
    );
    let scope = scope.with_network("cst-chaos", "10.231.92");
    let filler = tmpfs.path.join("filler");

    let shared = Arc::new(Shared {
        socket: d.socket.clone(),
        log_dir: d.log_dir(),
        gate: tokio::sync::RwLock::new(()),
        stop: AtomicBool::new(false),
        operations: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        touched: Mutex::new(BTreeSet::new()),
        client_errors: Mutex::new(vec![]),
    });
    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut handles = vec![];
    for idx in 0..plan.clients {
        let c = Client {
            idx,
            shared: shared.clone(),
            rng: Rng::new(plan.seed ^ ((idx as u64 + 1) << 32)),
            rt: None,
            attempts: BTreeMap::new(),
        };
        handles.push(clients_rt.spawn(c.run()));
    }

    let mut rng = Rng::new(plan.seed);
    let mut summary = Summary {
        seed: plan.seed,
        ..Default::default()
    };
    let check = |d: &Caissond, summary: &mut Summary, step: usize, after: &str| {
        let _g = shared.gate.blocking_write();
        summary.checks += 1;
        for what in d.settled_leak_check(&scope, Duration::from_secs(20)) {
            summary.violations.push(Violation {
                step,
                after: after.to_string(),
                what,
            });
        }
    };
    for step in 0..plan.faults {
        // Violations found while the fault lands (a survivor of a caissond
        // kill that did not survive) are printed with the check's.
        let seen = summary.violations.len();
        std::thread::sleep(rng.millis(300, 2500));
        let fault = Fault::pick(&mut rng);
        let name = format!("{fault:?}");
        let done = match fault {
            Fault::KillCaissond => {
                let before = owned_now(&d);
                d.sigkill();
                // Calls in flight fail now; none starts until the check.
                let g = shared.gate.blocking_write();
                std::thread::sleep(rng.millis(0, 500));
                d.respawn();
                summary.restarts += 1;
                let touched = shared.touched.lock().unwrap().clone();
                let after = owned_settled(&d);
                if let (Some(before), Some(after)) = (before, after) {
                    for (id, c) in &before.containers {
                        if !c.running || touched.contains(id) || touched.contains(&c.pod_id) {
                            continue;
                        }
                        summary.survivors_checked += 1;
                        match after.containers.get(id) {
                            Some(a) if a.running && a.pid == c.pid => {}
                            other => summary.violations.push(Violation {
                                step,
                                after: name.clone(),
                                what: format!(
                                    "container {id} (pid {}) was running before caissond's kill; after: {other:?}",
                                    c.pid
                                ),
                            }),
                        }
                    }
                }
                drop(g);
                true
            }
            Fault::KillShim => {
                let host = HostState::capture(&scope, d.pid());
                let shims: Vec<(u32, String)> = host
                    .processes
                    .iter()
                    .filter_map(|(pid, (p, _))| match p {
                        Proc::Shim { pod } => Some((*pid, pod.clone())),
                        _ => None,
                    })
                    .collect();
                if shims.is_empty() {
                    false
                } else {
                    let (pid, pod) = &shims[rng.below(shims.len() as u64) as usize];
                    shared.touch(pod);
                    sigkill(*pid);
                    true
                }
            }
            Fault::KillInit => match owned_now(&d) {
                Some(owned) => {
                    let running: Vec<(&String, u32)> = owned
                        .containers
                        .iter()
                        .filter(|(_, c)| c.running && c.pid != 0)
                        .map(|(id, c)| (id, c.pid))
                        .collect();
                    if running.is_empty() {
                        false
                    } else {
                        let (id, pid) = running[rng.below(running.len() as u64) as usize];
                        shared.touch(id);
                        sigkill(pid);
                        true
                    }
                }
                None => false,
            },
            Fault::FillStateDisk => {
                fill(&filler);
                std::thread::sleep(rng.millis(500, 3000));
                let _ = std::fs::remove_file(&filler);
                true
            }
        };
        if done {
            *summary.faults.entry(name.clone()).or_default() += 1;
        }
        check(&d, &mut summary, step, &name);
        for v in &summary.violations[seen..] {
            eprintln!(
                "chaos step {step} VIOLATION (after {}): {}\n--- caissond's log about it ---\n{}",
                v.after,
                v.what,
                d.log_lines_naming(&crate::leaks::ids_in(&v.what), 60)
            );
        }
        eprintln!(
            "chaos step {step}: {name}{} — {} operations, {} violations",
            if done { "" } else { " (nothing to hit)" },
            shared.operations.load(Ordering::Relaxed),
            summary.violations.len()
        );
    }
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = clients_rt.block_on(h);
    }
    check(&d, &mut summary, plan.faults, "the end");
    // Everything removed through CRI: nothing may be left at all.
    d.remove_all_pods();
    let left = d.settled_leak_check(&scope, Duration::from_secs(20));
    for what in left {
        summary.violations.push(Violation {
            step: plan.faults,
            after: "removing every pod".into(),
            what,
        });
    }
    let host = HostState::capture(&scope, d.pid());
    if !host.is_empty() {
        summary.violations.push(Violation {
            step: plan.faults,
            after: "removing every pod".into(),
            what: format!("left on the host: {host:?}"),
        });
    }
    for e in shared.client_errors.lock().unwrap().iter() {
        summary.violations.push(Violation {
            step: plan.faults,
            after: "a client call".into(),
            what: e.clone(),
        });
    }
    summary.operations = shared.operations.load(Ordering::Relaxed);
    summary.failed_operations = shared.failed.load(Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    if !summary.violations.is_empty() {
        eprintln!("--- caissond log ---\n{}", d.log_tail());
    }
    drop(d);
    drop(clients_rt);
    drop(tmpfs);
    drop(net);
    summary
}

fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A caissond whose root dir (state, images, rootfs) is `root` (a small
/// tmpfs to fill), and the leak-check scope that knows it.
pub fn start_with_root(root: &Path) -> (Caissond, Scope) {
    let root_line = format!("root_dir = \"{}\"", root.display());
    let d = Caissond::start_edited("", |text| {
        text.lines()
            .map(|l| {
                if l.starts_with("root_dir = ") {
                    root_line.clone()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    let mut scope = Scope::of(&d);
    scope.dirs = vec![d.dir.path().join("run"), root.to_path_buf()];
    scope.state_dir = root.join("state");
    (d, scope)
}

/// Fills the filesystem holding `path` (1 MiB writes until ENOSPC).
pub fn fill(path: &Path) {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(path) else {
        return;
    };
    let chunk = vec![0xa5u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn owned_now(d: &Caissond) -> Option<Owned> {
    let mut rt = d.runtime();
    d.rt.block_on(Owned::query(&mut rt)).ok()
}

/// Owned after a restart, once every listed running container's process
/// answers (exits seen during recovery settle).
fn owned_settled(d: &Caissond) -> Option<Owned> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = owned_now(d);
        if Instant::now() >= deadline
            || o.as_ref().is_some_and(|o| {
                o.containers
                    .values()
                    .all(|c| !c.running || crate::daemon::pid_alive(c.pid))
            })
        {
            return o;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
