//! Per-pod user namespaces: root in a hardened pod is an unprivileged host
//! uid/gid range, allocated from a configured pool, never shared with
//! another living pod.
//!
//! * **The pool** is a directory (by default `.userns-pool` beside the
//!   backend's state root, i.e. `$CAISSON_SHIM_RUN_DIR/state/.userns-pool`,
//!   shared by every shim of the host whether caissond or containerd runs
//!   it). Slot `i` covers host ids `first_id + i * ids_per_pod` onwards and
//!   is taken by hard-linking a complete record (the pod id, the owning
//!   shim's pid and start time, later the user namespace's inode) to
//!   `slot-<i>`: `link(2)` fails with `EEXIST` if the slot is taken, so
//!   two shims never get the same range, and a record is never seen half
//!   written. Allocations are serialised by a `flock` on `.lock`, which
//!   makes reclaiming a stale slot race-free. The directory must be a
//!   real directory of root's (it is made, and kept, 0700), and the first
//!   allocation records the pool's geometry (first id, ids per pod, pods)
//!   in it: a shim configured otherwise is refused while any slot is
//!   taken, since its slot `i` would be another range. Pools in different
//!   directories must not overlap: every allocation records its pool in a
//!   host-wide registry ([`REGISTRY_DIR`]) and is refused while another
//!   registered pool with a pod alive has an overlapping range.
//! * **Freed** when the pod's sandbox task is deleted. A slot whose shim
//!   died is reclaimed only once no process on the host is left in its user
//!   namespace (the inode is looked up in every `/proc/<pid>/ns/user`), so
//!   a range is never reused while anything of its pod lives.
//! * **The namespace** is made by the backend before the pause container
//!   ([`crate::host::userns`], mapping `0 <first> <count>`), kept by an fd.
//!   Tasks join it by path (`/proc/<shim>/fd/<n>`), so libcontainer never
//!   makes (nor maps) one itself, and the rootfs can be idmapped with it
//!   before the task exists ([`crate::host::idmap`]).
//! * **Exhaustion**: the pod's sandbox fails with an error naming the pool
//!   (its size, its directory); nothing is allocated.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, Result};
use crate::host::userns::{mapping, UserNamespace};

/// The hardened handler's options (`CAISSON_BACKEND_OPTIONS`, from
/// `[runtimes.handlers.hardened] options = {...}`), every key optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardenedOptions {
    /// The first host uid/gid of the pool. Default 1,000,000, above the
    /// ranges `useradd` hands out in /etc/subuid (100,000 + 65,536 per user).
    pub userns_first_id: u32,
    /// Ids per pod (the pod sees uids `0..ids_per_pod`). Default 65,536.
    pub userns_ids_per_pod: u32,
    /// How many pods the pool holds at once. Default 4,096 (ids up to
    /// 269,435,456).
    pub userns_pods: u32,
    /// The pool's directory; default `.userns-pool` beside the state root.
    pub userns_pool_dir: Option<PathBuf>,
}

impl Default for HardenedOptions {
    fn default() -> Self {
        HardenedOptions {
            userns_first_id: 1_000_000,
            userns_ids_per_pod: 65_536,
            userns_pods: 4_096,
            userns_pool_dir: None,
        }
    }
}

/// The validated pool.
#[derive(Debug, Clone)]
pub struct UsernsPool {
    dir: PathBuf,
    /// The host-wide registry of pools ([`REGISTRY_DIR`]; tests use their own).
    registry: PathBuf,
    first_id: u32,
    ids_per_pod: u32,
    pods: u32,
}

/// The lowest first id of a pool: below are the host's root, system and
/// ordinary users.
const MIN_FIRST_ID: u32 = 65_536;

/// The pool's geometry, recorded in its directory by the first allocation:
/// slot `i` means a range only under one geometry, so shims configured
/// differently (two hardened handlers, caissond's and containerd's shims)
/// must not share a pool while any slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Geometry {
    first_id: u32,
    ids_per_pod: u32,
    pods: u32,
}

const GEOMETRY_FILE: &str = "geometry.json";

/// The host-wide registry of pools: every pool directory that allocated,
/// with its geometry (`pools.json`, under a `flock` on `pools.lock`). Two
/// pool directories (two handlers' `userns_pool_dir`, caissond's and
/// containerd's shim run dirs) never see each other's slots, so a pool
/// whose ids overlap another's that still has a pod alive is refused.
pub const REGISTRY_DIR: &str = "/run/caisson/userns";
const REGISTRY_FILE: &str = "pools.json";

fn option_error(key: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidArgument {
        what: format!("hardened option {key}"),
        reason: reason.into(),
    }
}

impl UsernsPool {
    /// Validates `options`; the pool lives in `default_dir` unless they name
    /// one. Warns about overlaps with /etc/subuid and /etc/subgid.
    pub fn new(options: &HardenedOptions, default_dir: PathBuf) -> Result<UsernsPool> {
        if options.userns_first_id < MIN_FIRST_ID {
            return Err(option_error(
                "userns_first_id",
                format!(
                    "{} is below {MIN_FIRST_ID}: the pool must stay clear of the host's \
                     root and system and login users",
                    options.userns_first_id
                ),
            ));
        }
        if options.userns_ids_per_pod == 0 {
            return Err(option_error("userns_ids_per_pod", "must be at least 1"));
        }
        if options.userns_pods == 0 {
            return Err(option_error("userns_pods", "must be at least 1"));
        }
        let end = options.userns_first_id as u64
            + options.userns_pods as u64 * options.userns_ids_per_pod as u64;
        // 2^32 - 1 is (uid_t)-1, never a valid id.
        if end > u32::MAX as u64 {
            return Err(option_error(
                "userns_pods",
                format!(
                    "{} pods of {} ids from {} end at {end}, past the last uid {}",
                    options.userns_pods,
                    options.userns_ids_per_pod,
                    options.userns_first_id,
                    u32::MAX - 1
                ),
            ));
        }
        let pool = UsernsPool {
            dir: options.userns_pool_dir.clone().unwrap_or(default_dir),
            registry: PathBuf::from(REGISTRY_DIR),
            first_id: options.userns_first_id,
            ids_per_pod: options.userns_ids_per_pod,
            pods: options.userns_pods,
        };
        for file in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = fs::read_to_string(file) {
                for (owner, start, count) in subid_overlaps(&text, pool.first_id as u64, end) {
                    tracing::warn!(
                        file,
                        owner,
                        start,
                        count,
                        "this subordinate id range overlaps the hardened pods' user namespace pool"
                    );
                }
            }
        }
        Ok(pool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn slot_path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("slot-{index}"))
    }

    /// Takes a free slot for `pod`.
    pub fn allocate(&self, pod: &str) -> Result<Slot> {
        let fail = |reason: String| BackendError::Failed {
            op: "allocate a user namespace range",
            id: pod.to_string(),
            reason,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| fail(format!("{}: {e}", self.dir.display())))?;
        check_pool_dir(&self.dir).map_err(fail)?;
        // Registry, then pool: the one order every allocation takes them in.
        let _registry = self.register().map_err(fail)?;
        let _lock = crate::host::lock_exclusive(&self.dir.join(".lock")).map_err(fail)?;
        self.check_geometry().map_err(fail)?;
        for index in 0..self.pods {
            let path = self.slot_path(index);
            let first_id = self.first_id + index * self.ids_per_pod;
            let record = SlotRecord {
                pod: pod.to_string(),
                owner_pid: std::process::id(),
                owner_start: process_start_time(std::process::id()).unwrap_or(0),
                userns_inode: None,
                first_id: Some(first_id),
                count: Some(self.ids_per_pod),
            };
            let reclaimed = match write_exclusive(&self.dir, &path, &record) {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !(self.reclaim_if_stale(index)
                        && write_exclusive(&self.dir, &path, &record).is_ok())
                    {
                        continue;
                    }
                    true
                }
                Err(e) => return Err(fail(format!("{}: {e}", path.display()))),
            };
            let count = self.ids_per_pod;
            if reclaimed {
                tracing::info!(
                    pod,
                    index,
                    first_id,
                    "user namespace range allocated (reclaimed)"
                );
            } else {
                tracing::info!(
                    pod,
                    index,
                    first_id,
                    count,
                    "user namespace range allocated"
                );
            }
            return Ok(Slot {
                path,
                record,
                first_id,
                count,
            });
        }
        Err(fail(format!(
            "the user namespace pool is exhausted: all {} ranges of {} ids from uid {} (slots in {}) belong to living pods",
            self.pods,
            self.ids_per_pod,
            self.first_id,
            self.dir.display()
        )))
    }

    /// Locks the host-wide registry, refuses this pool if its ids overlap
    /// another registered pool's that still has a pod alive, and records
    /// this one. The lock is held until the returned guard drops (after the
    /// allocation), so no other pool can take a slot meanwhile.
    fn register(&self) -> std::result::Result<nix::fcntl::Flock<File>, String> {
        // Its parent (/run/caisson) is shared with others: made as any dir.
        if let Some(parent) = self.registry.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.registry) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(format!("{}: {e}", self.registry.display()))
            }
            _ => {}
        }
        check_pool_dir(&self.registry)?;
        let lock = crate::host::lock_exclusive(&self.registry.join("pools.lock"))?;
        let path = self.registry.join(REGISTRY_FILE);
        let recorded: std::collections::BTreeMap<PathBuf, Geometry> =
            match fs::read_to_string(&path) {
                Ok(text) => {
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
        let ours = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        let range = |g: &Geometry| {
            let start = g.first_id as u64;
            (start, start + g.pods as u64 * g.ids_per_pod as u64)
        };
        let (start, end) = range(&self.geometry());
        let mut live = std::collections::BTreeMap::new();
        for (dir, theirs) in recorded.iter().filter(|(dir, _)| **dir != ours) {
            // A pool with no pod alive is forgotten (its dir may be gone).
            if !pool_in_use(dir) {
                continue;
            }
            let (their_start, their_end) = range(theirs);
            if start < their_end && their_start < end {
                return Err(format!(
                    "the user namespace pool {} (uids {start}..{end}) overlaps the pool {} \
                     (uids {their_start}..{their_end}), which has pods alive: pools in \
                     different directories must have disjoint ranges (set userns_first_id), \
                     or share one userns_pool_dir",
                    self.dir.display(),
                    dir.display()
                ));
            }
            live.insert(dir.clone(), *theirs);
        }
        live.insert(ours, self.geometry());
        // Written (and fsynced) only when it changed: not on every pod.
        if live != recorded {
            crate::backend::native::write_json_atomically(&path, &live)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(lock)
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            first_id: self.first_id,
            ids_per_pod: self.ids_per_pod,
            pods: self.pods,
        }
    }

    /// Records this pool's geometry in its directory, or checks it matches
    /// the recorded one. A different geometry is taken over only while no
    /// slot is taken. Called with the pool lock held.
    fn check_geometry(&self) -> std::result::Result<(), String> {
        let ours = self.geometry();
        let path = self.dir.join(GEOMETRY_FILE);
        let recorded: Option<Geometry> = match fs::read_to_string(&path) {
            Ok(text) => {
                Some(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if recorded == Some(ours) {
            return Ok(());
        }
        // Slots written before geometries were recorded: their ranges are
        // unknown, so the pool is not stamped while any may be alive.
        if recorded.is_none() && pool_in_use(&self.dir) {
            return Err(format!(
                "the user namespace pool {} has slots of living pods but no {GEOMETRY_FILE} \
                 (written by an older shim): their ranges are unknown, so nothing is allocated \
                 from it until those pods are gone (or give this handler another \
                 userns_pool_dir with a disjoint range)",
                self.dir.display()
            ));
        }
        if let Some(theirs) = recorded {
            let taken = fs::read_dir(&self.dir)
                .map_err(|e| format!("{}: {e}", self.dir.display()))?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("slot-"));
            if taken {
                return Err(format!(
                    "the user namespace pool {} is in use with another geometry ({} pods of {} \
                     ids from uid {}) than this handler's ({} pods of {} ids from uid {}): \
                     give each configuration its own userns_pool_dir with a disjoint range \
                     (userns_first_id), or the same options",
                    self.dir.display(),
                    theirs.pods,
                    theirs.ids_per_pod,
                    theirs.first_id,
                    ours.pods,
                    ours.ids_per_pod,
                    ours.first_id
                ));
            }
        }
        crate::backend::native::write_json_atomically(&path, &ours)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Removes slot `index` if its shim is gone and nothing is left in its
    /// user namespace. Called with the pool lock held.
    fn reclaim_if_stale(&self, index: u32) -> bool {
        let path = self.slot_path(index);
        let Ok(text) = fs::read_to_string(&path) else {
            return false;
        };
        let record: Option<SlotRecord> = serde_json::from_str(&text).ok();
        if let Some(record) = &record {
            if slot_in_use(&path, record) {
                return false;
            }
        }
        tracing::warn!(slot = %path.display(), ?record, "reclaiming a user namespace range whose pod is gone");
        fs::remove_file(&path).is_ok()
    }
}

/// Whether the pod of a slot may live: its shim runs, or (the shim gone)
/// a process is still in its user namespace.
fn slot_in_use(path: &Path, record: &SlotRecord) -> bool {
    let owner_alive =
        process_start_time(record.owner_pid).is_some_and(|start| start == record.owner_start);
    if owner_alive {
        return true;
    }
    if let Some(pid) = record.userns_inode.and_then(process_in_userns) {
        tracing::warn!(
            slot = %path.display(),
            pod = record.pod,
            pid,
            "the shim that owned this user namespace range is gone but process {pid} still uses it: not reusing it"
        );
        return true;
    }
    false
}

/// Whether any slot of the pool in `dir` may belong to a living pod (an
/// unreadable slot counts as one).
fn pool_in_use(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        entry.file_name().to_string_lossy().starts_with("slot-")
            && fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str::<SlotRecord>(&text).ok())
                .is_none_or(|record| slot_in_use(&path, &record))
    })
}

/// Frees the slots of `pod` in the pool in `dir` whose shim is gone and
/// whose user namespace nothing uses any more: what a pod whose shim died
/// leaves (an allocation would reclaim them too, but only when it needs
/// them). For the shim's `delete`.
pub fn free_stale_slots(dir: &Path, pod: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let Ok(_lock) = crate::host::lock_exclusive(&dir.join(".lock")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("slot-") {
            continue;
        }
        let Some(record) = fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<SlotRecord>(&text).ok())
        else {
            continue;
        };
        if record.pod == pod && !slot_in_use(&path, &record) && fs::remove_file(&path).is_ok() {
            tracing::info!(pod, slot = %path.display(), "user namespace range of a dead shim's pod freed");
        }
    }
}

/// Lines of an /etc/subuid-style `text` whose range meets `[start, end)`.
fn subid_overlaps(text: &str, start: u64, end: u64) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(':');
            let owner = parts.next()?.to_string();
            let first: u64 = parts.next()?.parse().ok()?;
            let count: u64 = parts.next()?.parse().ok()?;
            (first < end && start < first + count).then_some((owner, first, count))
        })
        .collect()
}

/// What a slot file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SlotRecord {
    pod: String,
    owner_pid: u32,
    /// The owner's start time (clock ticks after boot), against pid reuse.
    owner_start: u64,
    /// The pod's user namespace, once made.
    userns_inode: Option<u64>,
    /// The host range (for whoever reads the pool; absent in older slots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
}

/// Writes `record` to a temp file in `dir`, then links it to `path`:
/// `AlreadyExists` if the slot is taken.
fn write_exclusive(dir: &Path, path: &Path, record: &SlotRecord) -> io::Result<()> {
    // Not fsynced: a slot matters only while its pod's processes live, and
    // one left torn or empty by a host crash is reclaimed (it cannot be
    // parsed, and nothing is in its namespace).
    let mut tmp = tempfile::Builder::new().prefix(".slot-").tempfile_in(dir)?;
    serde_json::to_writer(tmp.as_file_mut(), record)?;
    tmp.as_file_mut().flush()?;
    fs::hard_link(tmp.path(), path)?;
    Ok(())
}

/// Rewrites a slot this process owns.
fn rewrite(path: &Path, record: &SlotRecord) -> io::Result<()> {
    crate::backend::native::replace_json(path, record)
}

/// The pool directory must be a real directory of this (root) user that no
/// one else can write: its slots decide which host ids pods get.
fn check_pool_dir(dir: &Path) -> std::result::Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!(
            "{} is not a directory (a symlink is refused)",
            dir.display()
        ));
    }
    // SAFETY: geteuid has no failure mode.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}, not by uid {euid} running the shim",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("making {} 0700: {e}", dir.display()))?;
    }
    Ok(())
}

/// Field 22 of `/proc/<pid>/stat`.
fn process_start_time(pid: u32) -> Option<u64> {
    crate::host::proc_stat(pid)?.get(19)?.parse().ok()
}

/// Some process whose user namespace has this inode. A zombie is not one:
/// it runs nothing, but keeps its namespace until its parent reaps it,
/// which a dead shim's orphans wait on as long as the host's init takes.
fn process_in_userns(inode: u64) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let ns = fs::metadata(entry.path().join("ns/user")).ok()?;
        let zombie =
            || crate::host::proc_stat(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"));
        (ns.ino() == inode && !zombie()).then_some(pid)
    })
}

/// An allocated range; freed by [`Slot::free`].
#[derive(Debug)]
pub struct Slot {
    path: PathBuf,
    record: SlotRecord,
    pub first_id: u32,
    pub count: u32,
}

impl Slot {
    /// Gives the range back to the pool (if this pod still holds it).
    pub fn free(self) {
        let ours = fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<SlotRecord>(&t).ok())
            .is_some_and(|r| r.pod == self.record.pod && r.owner_pid == self.record.owner_pid);
        if !ours {
            tracing::warn!(slot = %self.path.display(), pod = self.record.pod, "user namespace slot no longer ours; leaving it");
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => tracing::info!(
                pod = self.record.pod,
                first_id = self.first_id,
                "user namespace range freed"
            ),
            Err(e) => {
                tracing::warn!(slot = %self.path.display(), error = %e, "freeing a user namespace range")
            }
        }
    }
}

/// A pod's user namespace: its range and the namespace holding it.
#[derive(Debug)]
pub struct PodUserns {
    slot: Slot,
    ns: UserNamespace,
}

impl PodUserns {
    /// Makes a user namespace mapping root to `slot`'s range. On error the
    /// slot is freed.
    pub fn create(mut slot: Slot) -> Result<PodUserns> {
        let pod = slot.record.pod.clone();
        let map = [mapping(0, slot.first_id, slot.count)];
        let made = UserNamespace::create(&map, &map).and_then(|ns| {
            slot.record.userns_inode = Some(ns.inode());
            rewrite(&slot.path, &slot.record)?;
            Ok(ns)
        });
        match made {
            Ok(ns) => Ok(PodUserns { slot, ns }),
            Err(e) => {
                slot.free();
                Err(BackendError::Failed {
                    op: "create the pod's user namespace",
                    id: pod,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The namespace itself (its fd, path, inode).
    pub fn namespace(&self) -> &UserNamespace {
        &self.ns
    }

    /// The path tasks join it by: this process's fd.
    pub fn path(&self) -> PathBuf {
        self.ns.path()
    }

    pub fn fd(&self) -> &OwnedFd {
        self.ns.fd()
    }

    pub fn inode(&self) -> u64 {
        self.ns.inode()
    }

    pub fn first_id(&self) -> u32 {
        self.slot.first_id
    }

    pub fn count(&self) -> u32 {
        self.slot.count
    }

    /// Closes the namespace's fd and frees the range.
    pub fn release(self) {
        drop(self.ns);
        self.slot.free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(dir: &Path, pods: u32) -> UsernsPool {
        let pool = UsernsPool::new(
            &HardenedOptions {
                userns_pods: pods,
                ..HardenedOptions::default()
            },
            dir.to_path_buf(),
        )
        .unwrap();
        with_registry(pool, dir)
    }

    /// A registry of the test's own (in `dir`), not the host's.
    fn with_registry(pool: UsernsPool, dir: &Path) -> UsernsPool {
        UsernsPool {
            registry: dir.join(".registry"),
            ..pool
        }
    }

    #[test]
    fn pools_in_two_dirs_with_overlapping_ranges_are_refused_while_in_use() {
        let top = tempfile::tempdir().unwrap();
        let registry = top.path().join("registry");
        let make = |name: &str, first_id: u32| UsernsPool {
            registry: registry.clone(),
            ..UsernsPool::new(
                &HardenedOptions {
                    userns_first_id: first_id,
                    userns_pods: 4,
                    ..HardenedOptions::default()
                },
                top.path().join(name),
            )
            .unwrap()
        };
        let a = make("a", 1_000_000);
        let b = make("b", 1_100_000);
        let disjoint = make("c", 1_100_000 + 4 * 65_536);
        let slot = a.allocate("pod-a").unwrap();
        let err = b.allocate("pod-b").unwrap_err().to_string();
        assert!(
            err.contains("disjoint") && err.contains("overlaps"),
            "{err}"
        );
        assert!(!top.path().join("b/slot-0").exists(), "nothing allocated");
        // A disjoint range is fine; so is a second pod in the same pool.
        let c = disjoint.allocate("pod-c").unwrap();
        let a2 = a.allocate("pod-a2").unwrap();
        // Once a has no pod alive, b may take the range.
        slot.free();
        a2.free();
        let b_slot = b.allocate("pod-b").unwrap();
        assert_eq!(b_slot.first_id, 1_100_000);
        let err = a.allocate("pod-a").unwrap_err().to_string();
        assert!(err.contains("overlaps"), "{err}");
        b_slot.free();
        c.free();
    }

    #[test]
    fn options_parse_with_defaults_and_refuse_bad_values() {
        use crate::backend::options_from_json;
        let o: HardenedOptions = options_from_json("", "env").unwrap();
        assert_eq!(o, HardenedOptions::default());
        let o: HardenedOptions = options_from_json(r#"{"userns_pods": 8}"#, "env").unwrap();
        assert_eq!((o.userns_pods, o.userns_ids_per_pod), (8, 65_536));
        assert!(options_from_json::<HardenedOptions>(r#"{"bogus": 1}"#, "env").is_err());
        let dir = PathBuf::from("/nonexistent");
        let cases: &[(&str, HardenedOptions)] = &[
            (
                "userns_first_id",
                HardenedOptions {
                    userns_first_id: 0,
                    ..Default::default()
                },
            ),
            (
                "userns_ids_per_pod",
                HardenedOptions {
                    userns_ids_per_pod: 0,
                    ..Default::default()
                },
            ),
            (
                "userns_pods",
                HardenedOptions {
                    userns_pods: 70_000,
                    ..Default::default()
                },
            ),
        ];
        for (key, options) in cases {
            match UsernsPool::new(options, dir.clone()) {
                Err(BackendError::InvalidArgument { what, .. }) => {
                    assert!(what.contains(key), "{what} should name {key}")
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn subid_overlaps_are_found() {
        let text = "alice:100000:65536\nbob:1000000:65536\nbad line\ncarol:2000000:10\n";
        let found = subid_overlaps(text, 1_000_000, 1_131_072);
        assert_eq!(found, vec![("bob".to_string(), 1_000_000, 65_536)]);
        assert!(subid_overlaps(text, 165_536, 1_000_000).is_empty());
    }

    #[test]
    fn slots_are_exclusive_freed_and_exhaust_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let a = pool.allocate("a").unwrap();
        let b = pool.allocate("b").unwrap();
        assert_eq!((a.first_id, b.first_id), (1_000_000, 1_065_536));
        // Both slots are held by a living shim (this process).
        let err = pool.allocate("c").unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
        let files = |d: &Path| {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("slot-"))
                .collect();
            v.sort();
            v
        };
        assert_eq!(files(dir.path()), ["slot-0", "slot-1"], "nothing leaked");
        a.free();
        let c = pool.allocate("c").unwrap();
        assert_eq!(c.first_id, 1_000_000, "a's range is reused once freed");
        b.free();
        c.free();
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn a_dead_owners_slot_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 1);
        let stale = SlotRecord {
            pod: "gone".into(),
            // No process has pid u32::MAX - 1.
            owner_pid: u32::MAX - 1,
            owner_start: 1,
            userns_inode: Some(1),
            first_id: None,
            count: None,
        };
        fs::write(
            dir.path().join("slot-0"),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        let slot = pool.allocate("new").unwrap();
        assert_eq!(slot.first_id, 1_000_000);
        slot.free();
        // A slot whose owner lives (this process) is not.
        let live = SlotRecord {
            owner_pid: std::process::id(),
            owner_start: process_start_time(std::process::id()).unwrap(),
            ..stale
        };
        fs::write(
            dir.path().join("slot-0"),
            serde_json::to_vec(&live).unwrap(),
        )
        .unwrap();
        assert!(pool.allocate("new").is_err());
    }

    #[test]
    fn a_pool_with_live_slots_but_no_geometry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = SlotRecord {
            pod: "old".into(),
            owner_pid: std::process::id(),
            owner_start: process_start_time(std::process::id()).unwrap(),
            userns_inode: None,
            first_id: None,
            count: None,
        };
        fs::write(dir.path().join("slot-3"), serde_json::to_vec(&old).unwrap()).unwrap();
        let err = pool(dir.path(), 4).allocate("new").unwrap_err().to_string();
        assert!(err.contains("no geometry.json"), "{err}");
        assert!(!dir.path().join(GEOMETRY_FILE).exists(), "not stamped");
        assert!(!dir.path().join("slot-0").exists(), "nothing allocated");
        // Once its owner is gone (and nothing is in its namespace), the
        // pool is stamped and the stale slot reclaimed in turn.
        let dead = SlotRecord {
            owner_pid: u32::MAX - 1,
            ..old
        };
        fs::write(
            dir.path().join("slot-3"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let slot = pool(dir.path(), 4).allocate("new").unwrap();
        assert!(dir.path().join(GEOMETRY_FILE).exists());
        slot.free();
    }

    #[test]
    fn shims_with_another_geometry_cannot_share_a_pool_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let a = pool(dir.path(), 2);
        let other = with_registry(
            UsernsPool::new(
                &HardenedOptions {
                    userns_pods: 2,
                    userns_ids_per_pod: 1_000,
                    ..HardenedOptions::default()
                },
                dir.path().to_path_buf(),
            )
            .unwrap(),
            dir.path(),
        );
        let slot = a.allocate("a").unwrap();
        let record: SlotRecord =
            serde_json::from_str(&fs::read_to_string(&slot.path).unwrap()).unwrap();
        assert_eq!(
            (record.first_id, record.count),
            (Some(1_000_000), Some(65_536))
        );
        // Its slot-1 would be 1,001,000.., inside a's slot-0.
        let err = other.allocate("b").unwrap_err().to_string();
        assert!(err.contains("another geometry"), "{err}");
        assert!(!dir.path().join("slot-1").exists(), "nothing allocated");
        // The same geometry shares it; once empty, another takes it over.
        let same = pool(dir.path(), 2).allocate("c").unwrap();
        assert_eq!(same.first_id, 1_065_536);
        slot.free();
        same.free();
        let taken_over = other.allocate("b").unwrap();
        assert_eq!((taken_over.first_id, taken_over.count), (1_000_000, 1_000));
        assert!(
            a.allocate("a").is_err(),
            "now a's geometry is the other one"
        );
        taken_over.free();
    }

    #[test]
    fn low_first_ids_and_unsafe_pool_dirs_are_refused() {
        let low = HardenedOptions {
            userns_first_id: 1_000,
            ..HardenedOptions::default()
        };
        let err = UsernsPool::new(&low, PathBuf::from("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("65536"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = pool(&link, 1).allocate("a").unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(fs::read_dir(&real).unwrap().next().is_none());

        let loose = dir.path().join("loose");
        fs::create_dir(&loose).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
        pool(&loose, 1).allocate("a").unwrap().free();
        assert_eq!(fs::metadata(&loose).unwrap().mode() & 0o777, 0o700);
        let fresh = dir.path().join("fresh/pool");
        pool(&fresh, 1).allocate("a").unwrap().free();
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);

        if unsafe { libc::geteuid() } == 0 {
            let foreign = dir.path().join("foreign");
            fs::create_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(1234), Some(1234)).unwrap();
            let err = pool(&foreign, 1).allocate("a").unwrap_err().to_string();
            assert!(err.contains("owned by uid 1234"), "{err}");
        }
    }
}
