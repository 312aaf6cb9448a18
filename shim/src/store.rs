//! Pod and container records, crash-safe: each record is one JSON file
//! (`state/pods/<id>.json`, `state/containers/<id>.json`) replaced by
//! write-temp, fsync, rename. An interrupted write leaves the old record or
//! the new one, never a torn one. The directory is not fsynced (one fsync
//! per record, not two, and none for a removal): after a host crash a
//! record may be one step behind (a new one missing, a removed one back),
//! which recovery already meets when caissond dies between a task change
//! and its record, and no task of that boot is left to disagree with it.
//! CRI configs are kept as their
//! protobuf encoding so status calls can echo them back exactly.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created_at: i64,
    pub state: PodState,
    pub handler: String,
    pub backend: String,
    /// `PodSandboxConfig`, protobuf-encoded, hex.
    pub config: String,
    pub pause_pid: u32,
    /// ttrpc address of the pod's shim.
    pub shim_address: String,
    pub bundle: PathBuf,
    /// Pod-shared /dev/shm (a tmpfs we mounted), if any.
    pub shm: Option<PathBuf>,
    pub cgroup_parent: String,
    /// Host network (NamespaceMode NODE).
    pub host_network: bool,
    /// The pause task has exited (pod no longer ready).
    pub pause_exited: bool,
    /// The pod's pinned network namespace (pods on the CNI network).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The CNI network list ADD used (JSON), so DEL works after a restart
    /// or a config change.
    #[serde(default)]
    pub cni_config: Option<String>,
    /// The CNI ADD result (JSON), DEL's and CHECK's `prevResult`.
    #[serde(default)]
    pub cni_result: Option<String>,
    /// Pod IPs from the CNI result, IPv4 first.
    #[serde(default)]
    pub ips: Vec<String>,
    /// CNI DEL has succeeded: the pod holds no network resources.
    #[serde(default)]
    pub network_released: bool,
}

impl PodRecord {
    /// The key that makes RunPodSandbox idempotent (kubelet retries).
    pub fn name_key(&self) -> String {
        pod_name_key(&self.name, &self.namespace, &self.uid, self.attempt)
    }
}

pub fn pod_name_key(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("{name}_{namespace}_{uid}_{attempt}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the request named it, and the resolved image.
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub state: ContainerState,
    pub pid: u32,
    /// Absolute path of the CRI log file ("" when none was asked for).
    pub log_path: PathBuf,
    /// `ContainerConfig`, protobuf-encoded, hex.
    pub config: String,
    pub bundle: PathBuf,
    pub stop_signal: String,
    pub user: String,
}

/// The records on disk.
#[derive(Debug, Clone)]
pub struct Store {
    pods: PathBuf,
    containers: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> std::io::Result<Store> {
        let store = Store {
            pods: state_dir.join("pods"),
            containers: state_dir.join("containers"),
        };
        fs::create_dir_all(&store.pods)?;
        fs::create_dir_all(&store.containers)?;
        for dir in [&store.pods, &store.containers] {
            for entry in fs::read_dir(dir)?.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(store)
    }

    pub fn save_pod(&self, pod: &PodRecord) -> std::io::Result<()> {
        write_atomic(&self.pods, &pod.id, pod)
    }

    pub fn save_container(&self, c: &ContainerRecord) -> std::io::Result<()> {
        write_atomic(&self.containers, &c.id, c)
    }

    pub fn remove_pod(&self, id: &str) -> std::io::Result<()> {
        remove(&self.pods, id)
    }

    pub fn remove_container(&self, id: &str) -> std::io::Result<()> {
        remove(&self.containers, id)
    }

    pub fn load_pods(&self) -> std::io::Result<Vec<PodRecord>> {
        load_all(&self.pods)
    }

    pub fn load_containers(&self) -> std::io::Result<Vec<ContainerRecord>> {
        load_all(&self.containers)
    }
}

fn write_atomic<T: Serialize>(dir: &Path, id: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(format!("{id}.json")))
        .map_err(|e| e.error)?;
    Ok(())
}

fn remove(dir: &Path, id: &str) -> std::io::Result<()> {
    match fs::remove_file(dir.join(format!("{id}.json"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn load_all<T: DeserializeOwned>(dir: &Path) -> std::io::Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match fs::read(&path).map(|b| serde_json::from_slice::<T>(&b)) {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable record")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable record")
            }
        }
    }
    Ok(out)
}

/// Encodes a prost message for a record.
pub fn encode<M: prost::Message>(m: &M) -> String {
    hex::encode(m.encode_to_vec())
}

/// Decodes what [`encode`] wrote.
pub fn decode<M: prost::Message + Default>(s: &str) -> Option<M> {
    hex::decode(s).ok().and_then(|b| M::decode(&b[..]).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_temp_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pod = PodRecord {
            id: "p1".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            attempt: 0,
            labels: [("app".to_string(), "web".to_string())].into(),
            annotations: BTreeMap::new(),
            created_at: 1,
            state: PodState::Ready,
            handler: "runc".into(),
            backend: "native".into(),
            config: encode(&caisson_proto::cri::PodSandboxConfig {
                hostname: "h".into(),
                ..Default::default()
            }),
            pause_pid: 42,
            shim_address: "unix:///x".into(),
            bundle: "/b".into(),
            shm: None,
            cgroup_parent: "/caisson".into(),
            host_network: false,
            pause_exited: false,
            netns: None,
            cni_config: None,
            cni_result: None,
            ips: vec![],
            network_released: false,
        };
        store.save_pod(&pod).unwrap();
        std::fs::write(dir.path().join("pods/.tmp-torn"), b"{\"id\": ").unwrap();
        std::fs::write(dir.path().join("pods/garbage.json"), b"{not json").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join("pods/.tmp-torn").exists());
        assert_eq!(store.load_pods().unwrap(), vec![pod.clone()]);
        let cfg: caisson_proto::cri::PodSandboxConfig = decode(&pod.config).unwrap();
        assert_eq!(cfg.hostname, "h");
        store.remove_pod("p1").unwrap();
        store.remove_pod("p1").unwrap();
        assert!(store.load_pods().unwrap().is_empty());
    }
}
