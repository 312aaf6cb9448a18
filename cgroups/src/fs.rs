//! Plain cgroupfs file writes, behind a trait so that unit tests can run
//! against a fake tree in a temp dir.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::{CgroupError, CgroupMode};

/// The v1 controllers Caisson's hierarchy levels use.
pub const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];
/// The v2 controllers enabled for children of each level.
pub const V2_CONTROLLERS: &str = "+cpu +memory +pids";

/// Where cgroup files live.
pub trait CgroupFs {
    /// The directory of `cgroup` (a `/`-rooted cgroupfs path) for
    /// `controller` (ignored on v2).
    fn dir(&self, controller: &str, cgroup: &str) -> PathBuf;
    /// The mode the tree is in.
    fn mode(&self) -> CgroupMode;

    /// Creates `cgroup` (and its parents) in every controller used.
    fn create(&self, cgroup: &str) -> Result<(), CgroupError> {
        for controller in self.controllers() {
            let path = self.dir(controller, cgroup);
            std::fs::create_dir_all(&path)
                .map_err(|source| CgroupError::CreateFailed { path, source })?;
        }
        if !self.mode().is_v1() {
            self.enable_in_ancestors(cgroup, V2_CONTROLLERS);
        }
        Ok(())
    }

    /// v2: writes `value` (`+controller ...`) into `cgroup.subtree_control`
    /// from the root down to `cgroup`'s parent. Errors (a controller held
    /// elsewhere) are left to the limit writes to report.
    fn enable_in_ancestors(&self, cgroup: &str, value: &str) {
        let mut prefix = String::new();
        for component in cgroup.split('/').filter(|c| !c.is_empty()) {
            let file = self.dir("", &prefix).join("cgroup.subtree_control");
            if let Err(e) = std::fs::write(&file, value) {
                tracing::debug!(file = %file.display(), error = %e, "subtree_control not written");
            }
            prefix = format!("{prefix}/{component}");
        }
    }

    /// Writes `value` into `file` of `cgroup` (v1: under `controller`).
    fn write(
        &self,
        controller: &str,
        cgroup: &str,
        file: &str,
        value: &str,
    ) -> Result<(), CgroupError> {
        let path = self.dir(controller, cgroup).join(file);
        std::fs::write(&path, value).map_err(|source| CgroupError::WriteFailed {
            path,
            value: value.to_string(),
            source,
        })
    }

    /// Reads `file` of `cgroup`, trimmed.
    fn read(&self, controller: &str, cgroup: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(controller, cgroup).join(file))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Removes `cgroup` and every cgroup below it, deepest first, from
    /// every hierarchy mounted at the root (all v1 controllers, not only
    /// [`V1_CONTROLLERS`]: libcontainer makes task cgroups in each). A
    /// missing one is fine; the first failure (a cgroup that still has
    /// processes: EBUSY) is returned after trying the rest.
    fn remove_tree(&self, cgroup: &str) -> Result<(), CgroupError> {
        self.in_every_hierarchy(cgroup, remove_dir_tree)
    }

    /// Removes `cgroup` itself (not its children: one with children or
    /// processes is EBUSY) from every hierarchy; a missing one is fine.
    fn remove_one(&self, cgroup: &str) -> Result<(), CgroupError> {
        self.in_every_hierarchy(cgroup, |path| {
            remove_dir(path).map_err(|source| CgroupError::RemoveFailed {
                path: path.to_path_buf(),
                source,
            })
        })
    }

    /// SIGKILLs every process in `cgroup` and below it, in every
    /// hierarchy, thawing a frozen v1 freezer cgroup first so the signal
    /// lands. For a cgroup being removed whose owner is gone (a task whose
    /// shim died mid-create). Answers how many processes it signalled.
    fn kill_tree(&self, cgroup: &str) -> usize {
        let pids = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let _ = self.in_every_hierarchy(cgroup, |path| {
            collect_pids(path, &mut pids.borrow_mut());
            Ok(())
        });
        let pids = pids.into_inner();
        for pid in &pids {
            // A pid that has exited meanwhile answers ESRCH: nothing to do.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pids.len()
    }

    /// `act` on `cgroup`'s dir in every hierarchy where it exists (removing
    /// it, killing what is in it); never on the root.
    #[doc(hidden)]
    fn in_every_hierarchy(
        &self,
        cgroup: &str,
        act: impl Fn(&Path) -> Result<(), CgroupError>,
    ) -> Result<(), CgroupError> {
        let components: Vec<&str> = cgroup
            .split('/')
            .filter(|c| !c.is_empty() && *c != "." && *c != "..")
            .collect();
        if components.is_empty() {
            return Err(CgroupError::InvalidParent {
                parent: cgroup.to_string(),
                reason: "the root cgroup is never removed",
            });
        }
        let mut first_error = None;
        for mut path in self.hierarchies() {
            path.extend(&components);
            if path.is_dir() {
                if let Err(e) = act(&path) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The roots of every mounted hierarchy (v2: the one root).
    fn hierarchies(&self) -> Vec<PathBuf> {
        if !self.mode().is_v1() {
            return vec![self.dir("", "/")];
        }
        let root = self.dir("", "/");
        let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Creates `cgroup` under one more v1 controller (`cpuset`, `hugetlb`)
    /// or, on v2, enables it in the parents' `cgroup.subtree_control`.
    /// A new v1 cpuset level starts empty and refuses tasks and children's
    /// values until it has CPUs and memory nodes: each new level inherits
    /// its parent's.
    fn create_in(&self, controller: &str, cgroup: &str) -> Result<(), CgroupError> {
        if !self.mode().is_v1() {
            self.create(cgroup)?;
            self.enable_in_ancestors(cgroup, &format!("+{controller}"));
            return Ok(());
        }
        if !self.dir(controller, "/").is_dir() {
            return Err(CgroupError::ControllerMissing {
                controller: controller.to_string(),
            });
        }
        let mut prefix = String::new();
        for component in cgroup.split('/').filter(|c| !c.is_empty() && *c != "..") {
            let parent = prefix.clone();
            prefix = format!("{prefix}/{component}");
            let path = self.dir(controller, &prefix);
            std::fs::create_dir_all(&path)
                .map_err(|source| CgroupError::CreateFailed { path, source })?;
            if controller == "cpuset" {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if self
                        .read(controller, &prefix, file)
                        .unwrap_or_default()
                        .is_empty()
                    {
                        let inherited = self.read(controller, &parent, file).unwrap_or_default();
                        self.write(controller, &prefix, file, &inherited)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `controller` can be used for cgroups in this tree: v1, its
    /// hierarchy is mounted (on a hybrid node a controller bound to the
    /// cgroup2 tree at `unified/` is not usable: limits go to v1, and
    /// libcontainer uses v1 there too); v2, it is listed in the root's
    /// `cgroup.controllers`.
    fn controller_usable(&self, controller: &str) -> bool {
        if self.mode().is_v1() {
            return self.dir(controller, "/").is_dir();
        }
        self.read("", "/", "cgroup.controllers")
            .is_some_and(|list| list.split_whitespace().any(|c| c == controller))
    }

    /// The controllers whose trees are written (one, `""`, on v2).
    fn controllers(&self) -> Vec<&'static str> {
        if self.mode().is_v1() {
            V1_CONTROLLERS.to_vec()
        } else {
            vec![""]
        }
    }
}

/// rmdir, tolerating a missing dir. A fake tree (regular files in a temp
/// dir) refuses with ENOTEMPTY, so its files are removed first; a real
/// cgroupfs never says ENOTEMPTY (children give EBUSY).
fn remove_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::remove_file(entry.path())?;
                }
            }
            std::fs::remove_dir(path)
        }
        Err(e) => Err(e),
    }
}

/// The pids in `path`'s `cgroup.procs` and its children's; a frozen
/// freezer cgroup is thawed on the way.
fn collect_pids(path: &Path, pids: &mut std::collections::BTreeSet<i32>) {
    let state = path.join("freezer.state");
    if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() != "THAWED") {
        let _ = std::fs::write(&state, "THAWED");
    }
    if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), pids);
        }
    }
}

/// rmdir of a cgroup and its children, deepest first.
fn remove_dir_tree(path: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::RemoveFailed {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dir_tree(&entry.path())?;
        }
    }
    remove_dir(path).map_err(|source| CgroupError::RemoveFailed {
        path: path.to_path_buf(),
        source,
    })
}

/// A cgroupfs mounted at `root` (normally `/sys/fs/cgroup`).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    root: PathBuf,
    mode: CgroupMode,
}

impl CgroupRoot {
    /// The node's cgroups, mode detected.
    pub fn host() -> CgroupRoot {
        let root = PathBuf::from("/sys/fs/cgroup");
        let mode = CgroupMode::detect(&root);
        CgroupRoot { root, mode }
    }

    /// A tree at `root` in `mode` (tests: a temp dir).
    pub fn at(root: impl Into<PathBuf>, mode: CgroupMode) -> CgroupRoot {
        CgroupRoot {
            root: root.into(),
            mode,
        }
    }
}

impl CgroupFs for CgroupRoot {
    fn dir(&self, controller: &str, cgroup: &str) -> PathBuf {
        let mut dir = self.root.clone();
        if self.mode.is_v1() {
            dir.push(controller);
        }
        for component in cgroup.split('/').filter(|c| !c.is_empty() && *c != "..") {
            dir.push(component);
        }
        dir
    }

    fn mode(&self) -> CgroupMode {
        self.mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_is_usable_where_libcontainer_would_write_it() {
        // (mode, v1 hierarchies made, root cgroup.controllers, hugetlb usable)
        let cases = [
            (CgroupMode::Hybrid, &["cpu", "memory"][..], None, false),
            (CgroupMode::Hybrid, &["cpu", "hugetlb"][..], None, true),
            // Hybrid with hugetlb bound to the cgroup2 tree (this machine):
            // the v1 hierarchy is what counts.
            (
                CgroupMode::Hybrid,
                &["cpu", "unified"][..],
                Some(("unified/cgroup.controllers", "hugetlb\n")),
                false,
            ),
            (CgroupMode::Legacy, &["hugetlb"][..], None, true),
            (
                CgroupMode::Unified,
                &[][..],
                Some(("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n")),
                true,
            ),
            (
                CgroupMode::Unified,
                &[][..],
                Some(("cgroup.controllers", "cpuset cpu io memory pids\n")),
                false,
            ),
            (CgroupMode::Unified, &[][..], None, false),
        ];
        for (i, (mode, dirs, file, want)) in cases.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            for d in dirs {
                std::fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            if let Some((name, text)) = file {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let root = CgroupRoot::at(dir.path(), mode);
            assert_eq!(root.controller_usable("hugetlb"), want, "case {i}");
        }
    }
}
