//! The hardened backend: the native backend with a narrower spec.
//!
//! Containers are made exactly as [`NativeBackend`] makes them (libcontainer
//! in the fork server, the same reaper, stdio and cgroups); the only
//! difference is a transformation of the spec before `create` and of the
//! process before `exec` ([`policy`]): privileged containers refused,
//! `no_new_privs`, capabilities only when added and permitted, more of
//! `/proc` and `/sys` masked, `/sys` read-only, no host devices, and a
//! default-deny syscall filter ([`seccomp`], listed in [`allowlist`])
//! intersected with the pod's own profile. libcontainer loads that filter in
//! every container and exec process, after which it cannot be widened.

pub mod allowlist;
pub mod policy;
pub mod seccomp;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use oci_spec::runtime::{Capability, LinuxResources, Spec};

use crate::backend::native::NativeBackend;
use crate::backend::{
    Backend, BackendError, ExecSpec, ExitSink, ProcessInfo, Result, TaskSpec, TaskStats,
};

const NAME: &str = "hardened";

/// The hardened backend. One per shim; see the module docs.
pub struct HardenedBackend {
    native: NativeBackend,
    /// Per task, the capabilities its pod added (exec processes get the same).
    added_caps: Mutex<HashMap<String, Vec<Capability>>>,
}

impl HardenedBackend {
    /// Like [`NativeBackend::new`].
    pub fn new(state_root: PathBuf, exits: ExitSink, fork_server: PathBuf) -> Result<Self> {
        Ok(HardenedBackend {
            native: NativeBackend::new(state_root, exits, fork_server)?,
            added_caps: Mutex::new(HashMap::new()),
        })
    }

    /// The native backend underneath (state root, fork server pid).
    pub fn native(&self) -> &NativeBackend {
        &self.native
    }

    fn harden_bundle(&self, task: &TaskSpec) -> Result<Vec<Capability>> {
        let path = task.bundle.join("config.json");
        let invalid = |reason: String| BackendError::InvalidArgument {
            what: format!("OCI spec {}", path.display()),
            reason,
        };
        let mut spec = Spec::load(&path).map_err(|e| invalid(e.to_string()))?;
        let added = policy::capabilities_added(&spec);
        policy::harden_spec(&mut spec)?;
        crate::backend::native::write_spec(&path, &spec).map_err(|e| BackendError::Failed {
            op: "rewrite spec",
            id: task.id.clone(),
            reason: format!("{}: {e}", path.display()),
        })?;
        Ok(added)
    }
}

impl Backend for HardenedBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, task: &TaskSpec) -> Result<u32> {
        let added = self.harden_bundle(task)?;
        let pid = self.native.create(task)?;
        tracing::info!(id = task.id, ?added, "hardened task created");
        self.added_caps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.id.clone(), added);
        Ok(pid)
    }

    fn start(&self, id: &str) -> Result<u32> {
        self.native.start(id)
    }

    fn exec(&self, exec: &ExecSpec) -> Result<()> {
        let added = self
            .added_caps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&exec.container_id)
            .cloned()
            .unwrap_or_default();
        let mut exec = exec.clone();
        policy::harden_process(&mut exec.process, &added);
        self.native.exec(&exec)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.native.start_exec(id, exec_id)
    }

    fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        self.native.kill(id, exec_id, signal, all)
    }

    fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.native.delete(id, exec_id)?;
        if exec_id.is_none() {
            self.added_caps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        self.native.pids(id)
    }

    fn pause(&self, id: &str) -> Result<()> {
        self.native.pause(id)
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.native.resume(id)
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.native.update(id, resources)
    }

    fn stats(&self, id: &str) -> Result<TaskStats> {
        self.native.stats(id)
    }

    fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()> {
        self.native.resize_pty(id, exec_id, width, height)
    }

    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.native.close_stdin(id, exec_id)
    }

    fn reopen_logs(&self, id: &str) -> Result<()> {
        self.native.reopen_logs(id)
    }
}
