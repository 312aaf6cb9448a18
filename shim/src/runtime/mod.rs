//! The CRI RuntimeService's engine: pods ([`pod`]), containers
//! ([`container`]), exec and logs ([`exec`]), checkpoints ([`checkpoint`]); records, shim clients, locks,
//! the exit-event loop and recovery after a restart live here.

pub mod checkpoint;
pub mod container;
pub mod exec;
pub mod lost_shim;
pub mod metrics;
pub mod network;
pub mod pod;
pub mod stats;
pub mod streams;
pub mod update;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use caisson_image::ImageStore;
use caisson_sandbox::host::pod_view;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::Message;
use tokio::sync::{broadcast, Mutex as AsyncMutex};

use crate::config::Config;
use crate::shims::{ShimClient, ShimEvent, ShimManager};
use crate::status::{CriError, CriResult};
use crate::store::{ContainerRecord, ContainerState, PodRecord, Store};

/// How long a pod's shim gets to answer after a restart before it counts as
/// gone. A dead shim's socket still accepts connections while a process it
/// forked holds the listener, and the call would otherwise hold recovery
/// (and the CRI socket) for a whole call timeout per pod.
const SHIM_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Nanoseconds since the epoch, as CRI timestamps are.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A new 64-hex-character id, like containerd's.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    hex::encode(bytes)
}

fn getrandom(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n as usize, buf.len(), "getrandom failed");
}

/// A container lifecycle change, for GetContainerEvents.
#[derive(Debug, Clone)]
pub struct ContainerChange {
    pub container_id: String,
    pub pod_id: String,
    pub kind: ChangeKind,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Default)]
pub struct Records {
    pub pods: HashMap<String, PodRecord>,
    pub containers: HashMap<String, ContainerRecord>,
}

/// Everything the RuntimeService needs.
pub struct Runtime {
    pub config: Config,
    pub images: Arc<ImageStore>,
    pub store: Store,
    pub shims: ShimManager,
    pub pause_binary: PathBuf,
    /// The built-in pause's shared rootfs (`pod::shared_pause_rootfs`);
    /// `None` with a pause image.
    pause_rootfs: Option<PathBuf>,
    pub records: std::sync::Mutex<Records>,
    clients: std::sync::Mutex<HashMap<String, ShimClient>>,
    /// Pods whose shim is gone ([`lost_shim`]): no client connects to them.
    lost_shims: std::sync::Mutex<HashSet<String>>,
    /// One lock per pod (and per RunPodSandbox name): operations on a pod and
    /// its containers do not interleave.
    locks: std::sync::Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// One lock per pod record, held while it is changed and written, so
    /// that the store ends with the version the records hold (two writers
    /// of one pod, RunPodSandbox and its pause's exit, could otherwise land
    /// in the other order).
    pod_writes: std::sync::Mutex<HashMap<String, Arc<std::sync::Mutex<()>>>>,
    pub changes: broadcast::Sender<ContainerChange>,
    /// The pod CIDR kubelet sent in UpdateRuntimeConfig (for CNI, later).
    pub pod_cidr: std::sync::Mutex<String>,
    /// The QoS hierarchy under `cgroup_parent` on the node's cgroupfs
    /// (its mode detected once, at start); `qos.fs()` is the cgroupfs.
    qos: caisson_cgroups::QosTree<caisson_cgroups::fs::CgroupRoot>,
    /// The previous `(timestamp ns, cpu ns)` sample of each container (by id)
    /// and pod (by `pod/<id>`), for nano-cores; removed with them.
    cpu_samples: std::sync::Mutex<HashMap<String, (i64, u64)>>,
}

impl Runtime {
    pub fn new(
        config: Config,
        images: Arc<ImageStore>,
        mut shims: ShimManager,
        pause_binary: PathBuf,
    ) -> CriResult<Arc<Runtime>> {
        let store = Store::open(&config.state_dir())
            .map_err(|e| CriError::internal("opening the state dir", e))?;
        std::fs::create_dir_all(config.pods_dir())
            .map_err(|e| CriError::internal("creating the pods dir", e))?;
        std::fs::create_dir_all(config.netns_dir())
            .map_err(|e| CriError::internal("creating the netns dir", e))?;
        // Each its own mount point: a build hides the other pods' mounts
        // below them in one unmount each.
        shims.pod_mount_roots = pod_view::pin_roots(&[config.pods_dir(), config.netns_dir()]);
        if config.network.install_default_cni_config {
            if let Err(e) = crate::network::install_default_config(&config.network.cni_conf_dir) {
                tracing::warn!(dir = %config.network.cni_conf_dir.display(), error = %e, "installing the default CNI config");
            }
        }
        // The QoS tiers exist from the start, like kubelet's (a pod's
        // cgroup creation retries and reports failures).
        let qos = config.cgroups.qos_tree(&config.cgroup_parent);
        tracing::info!(
            driver = "cgroupfs",
            mode = caisson_cgroups::CgroupFs::mode(qos.fs()).as_str(),
            top = qos.top(),
            "cgroups"
        );
        if let Err(e) = qos.ensure() {
            tracing::warn!(error = %e, "creating the QoS cgroup hierarchy");
        }
        let pause_rootfs = if config.pause_image.is_empty() {
            let made = pod::shared_pause_rootfs(&config.run_dir, &pause_binary)
                .map_err(|e| CriError::internal("making the pause's rootfs", e))?;
            Some(made)
        } else {
            None
        };
        let (changes, _) = broadcast::channel(1024);
        Ok(Arc::new(Runtime {
            config,
            images,
            store,
            shims,
            pause_binary,
            pause_rootfs,
            records: std::sync::Mutex::new(Records::default()),
            clients: std::sync::Mutex::new(HashMap::new()),
            lost_shims: std::sync::Mutex::new(HashSet::new()),
            locks: std::sync::Mutex::new(HashMap::new()),
            pod_writes: std::sync::Mutex::new(HashMap::new()),
            changes,
            pod_cidr: std::sync::Mutex::new(String::new()),
            qos,
            cpu_samples: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// At exit: unmounts the pods' mount roots [`Runtime::new`] pinned, if
    /// no pod's mount is left below them (a running pod's stay for the next
    /// caissond).
    pub fn release_pod_mount_roots(&self) {
        pod_view::unpin_roots(&self.shims.pod_mount_roots);
    }

    pub fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock serialising operations on `key` (a pod id or name key).
    pub fn lock_for(&self, key: &str) -> Arc<AsyncMutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    pub fn forget_lock(&self, key: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The shim client of a pod, connecting on first use; an error for a
    /// pod whose shim is gone.
    /// The records of pod `pod_id`'s containers.
    pub fn pod_containers(&self, pod_id: &str) -> Vec<ContainerRecord> {
        self.records()
            .containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect()
    }

    pub fn client(&self, pod: &PodRecord) -> CriResult<ShimClient> {
        if self.shim_lost(&pod.id) {
            return Err(CriError::Internal(format!(
                "the shim of pod {} is gone",
                pod.id
            )));
        }
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pod.id)
        {
            return Ok(c.clone());
        }
        let c = self.shims.connect(&pod.shim_address)?;
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod.id.clone(), c.clone());
        Ok(c)
    }

    pub fn drop_client(&self, pod_id: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_id);
    }

    pub fn pod(&self, id: &str) -> CriResult<PodRecord> {
        self.find_pod(id).ok_or_else(|| CriError::NotFound {
            what: "pod sandbox",
            id: id.to_string(),
        })
    }

    /// By full id or unique prefix (crictl accepts prefixes).
    pub fn find_pod(&self, id: &str) -> Option<PodRecord> {
        if id.is_empty() {
            return None;
        }
        let records = self.records();
        if let Some(p) = records.pods.get(id) {
            return Some(p.clone());
        }
        let hits: Vec<&PodRecord> = records
            .pods
            .values()
            .filter(|p| p.id.starts_with(id))
            .collect();
        (hits.len() == 1).then(|| hits[0].clone())
    }

    pub fn container(&self, id: &str) -> CriResult<ContainerRecord> {
        self.find_container(id).ok_or_else(|| CriError::NotFound {
            what: "container",
            id: id.to_string(),
        })
    }

    pub fn find_container(&self, id: &str) -> Option<ContainerRecord> {
        if id.is_empty() {
            return None;
        }
        let records = self.records();
        if let Some(c) = records.containers.get(id) {
            return Some(c.clone());
        }
        let hits: Vec<&ContainerRecord> = records
            .containers
            .values()
            .filter(|c| c.id.starts_with(id))
            .collect();
        (hits.len() == 1).then(|| hits[0].clone())
    }

    /// Saves a pod record and takes it as the pod's. A pause exit recorded
    /// meanwhile ([`Runtime::on_exit`]) stays: a copy taken before it
    /// (RunPodSandbox's, whose CNI ADD runs beside the pause's start) does
    /// not make a dead pod READY again.
    pub fn save_pod(&self, mut pod: PodRecord) -> CriResult<()> {
        let lock = self.pod_write_lock(&pod.id);
        let _writing = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .records()
            .pods
            .get(&pod.id)
            .is_some_and(|p| p.pause_exited)
        {
            pod.pause_exited = true;
            pod.state = crate::store::PodState::NotReady;
        }
        self.store
            .save_pod(&pod)
            .map_err(|e| CriError::internal("saving the pod record", e))?;
        self.records().pods.insert(pod.id.clone(), pod);
        Ok(())
    }

    /// The lock [`Runtime::save_pod`] and [`Runtime::on_exit`] hold while
    /// they change and write pod `id`'s record.
    fn pod_write_lock(&self, id: &str) -> Arc<std::sync::Mutex<()>> {
        self.pod_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Forgets a removed pod's record and its write lock.
    pub(super) fn forget_pod_record(&self, id: &str) {
        self.records().pods.remove(id);
        self.pod_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub fn save_container(&self, c: ContainerRecord) -> CriResult<()> {
        self.store
            .save_container(&c)
            .map_err(|e| CriError::internal("saving the container record", e))?;
        self.records().containers.insert(c.id.clone(), c);
        Ok(())
    }

    /// Updates a container record in place (if it still exists) and persists it.
    pub fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Option<ContainerRecord> {
        let updated = {
            let mut records = self.records();
            let c = records.containers.get_mut(id)?;
            f(c);
            c.clone()
        };
        if let Err(e) = self.store.save_container(&updated) {
            tracing::error!(container_id = %id, error = %e, "persisting a container record");
        }
        Some(updated)
    }

    pub fn notify(&self, container_id: &str, pod_id: &str, kind: ChangeKind) {
        let _ = self.changes.send(ContainerChange {
            container_id: container_id.to_string(),
            pod_id: pod_id.to_string(),
            kind,
            at: now_ns(),
        });
    }

    /// Applies task events from shims: exits and OOMs update records.
    pub async fn handle_events(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<ShimEvent>,
    ) {
        while let Some(ev) = rx.recv().await {
            match ev.topic.as_str() {
                "/tasks/exit" => {
                    let Ok(exit) = TaskExit::parse_from_bytes(&ev.event.value) else {
                        continue;
                    };
                    if exit.id != exit.container_id {
                        continue; // an exec process
                    }
                    self.on_exit(
                        &exit.container_id,
                        exit.exit_status as i32,
                        ns_of(&exit.exited_at),
                    );
                }
                "/tasks/oom" => {
                    let Ok(oom) = TaskOOM::parse_from_bytes(&ev.event.value) else {
                        continue;
                    };
                    self.update_container(&oom.container_id, |c| c.reason = "OOMKilled".into());
                }
                _ => {}
            }
        }
    }

    /// A task's init exited: a container becomes EXITED, a pod NOTREADY.
    pub fn on_exit(&self, task_id: &str, status: i32, at: i64) {
        // Why, when the backend knows more than the status says (a microvm
        // pod's VM died under it).
        let told = self
            .records()
            .containers
            .get(task_id)
            .map(|c| c.bundle.join(caisson_sandbox::backend::EXIT_REASON_FILE))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| {
                let (reason, message) = text.trim_end().split_once('\t')?;
                Some((reason.to_string(), message.to_string()))
            });
        if let Some(c) = self.update_container(task_id, |c| {
            if c.state == ContainerState::Exited {
                return;
            }
            c.state = ContainerState::Exited;
            c.exit_code = status;
            c.finished_at = at;
            if let Some((reason, message)) = told {
                c.reason = reason;
                c.message = message;
            } else if c.reason != "OOMKilled" {
                c.reason = if status == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                };
            }
        }) {
            tracing::info!(container_id = %task_id, exit_code = status, "container exited");
            self.notify(&c.id, &c.pod_id, ChangeKind::Stopped);
            return;
        }
        if !self.records().pods.contains_key(task_id) {
            return;
        }
        let lock = self.pod_write_lock(task_id);
        let _writing = lock.lock().unwrap_or_else(|p| p.into_inner());
        let pod = self.records().pods.get_mut(task_id).map(|pod| {
            pod.pause_exited = true;
            pod.state = crate::store::PodState::NotReady;
            pod.clone()
        });
        let Some(pod) = pod else {
            // Removed since: its write lock was forgotten before this one
            // was made.
            drop(_writing);
            self.forget_pod_record(task_id);
            return;
        };
        tracing::info!(pod_id = %task_id, "pod sandbox stopped");
        if let Err(e) = self.store.save_pod(&pod) {
            tracing::error!(pod_id = %task_id, error = %e, "persisting a pod record");
        }
    }

    /// Loads records after a restart and reconciles them with the shims:
    /// live tasks keep running, exits that happened meanwhile are recorded,
    /// pods whose shim is gone are cleaned up as far as possible.
    pub async fn recover(self: &Arc<Self>) -> CriResult<()> {
        let pods = self
            .store
            .load_pods()
            .map_err(|e| CriError::internal("loading pod records", e))?;
        let containers = self
            .store
            .load_containers()
            .map_err(|e| CriError::internal("loading container records", e))?;
        {
            let mut records = self.records();
            for p in pods {
                records.pods.insert(p.id.clone(), p);
            }
            for c in containers {
                records.containers.insert(c.id.clone(), c);
            }
        }
        let pods: Vec<PodRecord> = self.records().pods.values().cloned().collect();
        for pod in pods {
            let tasks = self.pod_containers(&pod.id);
            // The probe's answer is also the pause task's state.
            let probe = match self.client(&pod) {
                Ok(c) => match tokio::time::timeout(SHIM_PROBE_TIMEOUT, c.state(&pod.id)).await {
                    Ok(Ok(pause)) => Some((c, pause)),
                    _ => None,
                },
                _ => None,
            };
            let recovered = crate::metrics_http::metrics();
            let Some((client, pause)) = probe else {
                tracing::warn!(pod_id = %pod.id, "the pod's shim is gone: marking its containers exited");
                recovered.recovered_pod("lost");
                let lost = self
                    .mark_shim_lost(&pod, &lost_shim::SHIM_GONE_AT_RESTART)
                    .await;
                for _ in 0..lost {
                    recovered.recovered_container("lost");
                }
                continue;
            };
            recovered.recovered_pod("reconnected");
            self.watch_pod_shim(&client, &pod).await;
            for c in tasks {
                if c.state == ContainerState::Exited {
                    continue;
                }
                match client.state(&c.id).await {
                    Ok(s) => recovered.recovered_container(if self.record_if_stopped(&c.id, &s) {
                        "exited"
                    } else {
                        self.record_if_started(&c, &s);
                        "running"
                    }),
                    Err(e) => {
                        recovered.recovered_container("lost");
                        tracing::warn!(container_id = %c.id, error = %e, "task unknown to its shim");
                        self.on_exit(&c.id, 137, now_ns());
                    }
                }
            }
            self.record_if_stopped(&pod.id, &pause);
        }
        self.sweep_orphan_pod_dirs();
        self.sweep_orphan_containers();
        Ok(())
    }

    /// Records an exit that happened while caissond was down; whether it did.
    fn record_if_stopped(
        &self,
        task_id: &str,
        state: &containerd_shim_protos::api::StateResponse,
    ) -> bool {
        let stopped =
            state.status.enum_value_or_default() == containerd_shim_protos::api::Status::STOPPED;
        if stopped {
            self.on_exit(task_id, state.exit_status as i32, ns_of(&state.exited_at));
        }
        stopped
    }

    /// A container whose record says less than its shim (a start, or the
    /// pid of a create, that could not be written: the state disk was full)
    /// takes the shim's word: the shim ran it, so it runs. Found by the chaos
    /// run, which saw such a container listed as created, pid 0, after a
    /// restart while its process ran on.
    fn record_if_started(
        &self,
        c: &ContainerRecord,
        state: &containerd_shim_protos::api::StateResponse,
    ) {
        use containerd_shim_protos::api::Status;
        let running = matches!(
            state.status.enum_value_or_default(),
            Status::RUNNING | Status::PAUSED | Status::PAUSING
        );
        let behind = (running && c.state == ContainerState::Created) || c.pid != state.pid;
        if !behind || state.pid == 0 {
            return;
        }
        tracing::warn!(
            container_id = %c.id,
            recorded = ?c.state,
            recorded_pid = c.pid,
            pid = state.pid,
            "the record was behind its task (a write that failed): taking the shim's state"
        );
        self.update_container(&c.id, |r| {
            r.pid = state.pid;
            if running && r.state == ContainerState::Created {
                r.state = ContainerState::Running;
                if r.started_at == 0 {
                    r.started_at = now_ns();
                }
            }
        });
    }

    /// Container rootfs and bundles without a record: a CreateContainer that
    /// crashed half-way (after the rootfs was mounted, before the record).
    fn sweep_orphan_containers(&self) {
        if let Ok(all) = self.images.list_rootfs() {
            for rootfs in all {
                let owned = {
                    let records = self.records();
                    records.containers.contains_key(&rootfs.id)
                        || records.pods.contains_key(&rootfs.id)
                };
                if !owned {
                    tracing::info!(container_id = %rootfs.id, "removing a rootfs no container owns");
                    if let Err(e) = self.images.remove_rootfs(&rootfs.id) {
                        tracing::warn!(container_id = %rootfs.id, error = %e, "removing an orphan rootfs");
                    }
                }
            }
        }
        let pods: Vec<String> = self.records().pods.keys().cloned().collect();
        for pod in pods {
            let Ok(entries) = std::fs::read_dir(pod::pod_dir(self, &pod).join("containers")) else {
                continue;
            };
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if !self.records().containers.contains_key(&id) {
                    // Image volumes first: remove_dir_all stops at a
                    // read-only mount.
                    container::image_volumes::unmount_image_volumes(&entry.path());
                    let _ = nix::mount::umount2(
                        &entry.path().join(crate::spec::ROOTFS_DIR),
                        nix::mount::MntFlags::MNT_DETACH,
                    );
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// Pod dirs without a record: a RunPodSandbox that crashed half-way.
    fn sweep_orphan_pod_dirs(&self) {
        let Ok(entries) = std::fs::read_dir(self.config.pods_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if self.records().pods.contains_key(&id) {
                continue;
            }
            tracing::info!(pod_id = %id, "removing what an interrupted RunPodSandbox left");
            pod::remove_pod_dir(&entry.path());
        }
    }
}

fn ns_of(
    ts: &containerd_shim_protos::protobuf::MessageField<
        containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp,
    >,
) -> i64 {
    ts.as_ref()
        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
        .unwrap_or_else(now_ns)
}

/// Labels/annotations from a proto map, sorted.
pub fn sorted(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Back to a proto map.
pub fn unsorted(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// True when every `selector` label is in `labels` with the same value.
pub fn labels_match(selector: &HashMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Starts, off the async runtime, the grace period the next cgroup move
/// waits for ([`caisson_cgroups::warm`]): called where a shim will move a
/// new process into a cgroup a few ms later (a pause, a container, an exec).
pub(crate) fn warm_cgroup_moves() {
    use caisson_cgroups::warm::MoveWarmer;
    static WARMER: std::sync::OnceLock<MoveWarmer> = std::sync::OnceLock::new();
    let warmer: &'static MoveWarmer = WARMER.get_or_init(|| {
        let warmer = MoveWarmer::for_this_process(std::path::Path::new("/sys/fs/cgroup"));
        tracing::debug!(file = ?warmer.procs_file(), "warming cgroup moves through");
        warmer
    });
    if warmer.procs_file().is_some() {
        tokio::task::spawn_blocking(move || warmer.warm());
    }
}
