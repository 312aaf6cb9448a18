//! A pod's shim that is gone: noticed while caissond runs (a pidfd on the
//! shim process, [`Runtime::watch_shim`]) or at a restart (recovery), and
//! handled the same way by [`Runtime::mark_shim_lost`]: what the shim ran
//! is killed and unmounted by the shim binary's `delete` command, every
//! container of the pod becomes EXITED and the pod NOTREADY. A pod whose
//! shim is seen to exit has no shim client from then on, so StopPodSandbox
//! and RemovePodSandbox do not wait on a dead socket (one recovery could
//! not probe may still run, without its pause task: teardown shuts it down).

use std::sync::Arc;

use caisson_sandbox::host::pidfd::Pidfd;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{now_ns, ChangeKind, Runtime};
use crate::store::{ContainerState, PodRecord};

/// Why the containers of a pod whose shim is gone stopped.
pub struct ShimLoss {
    /// The containers' `reason`.
    pub reason: &'static str,
    /// The containers' `message`.
    pub message: &'static str,
}

/// A shim killed or crashed while caissond ran.
pub const SHIM_DIED: ShimLoss = ShimLoss {
    reason: "ShimExited",
    message: "the pod's shim (containerd-shim-caisson-v2) exited while the container ran",
};

/// A shim gone while caissond was down (found by recovery).
pub const SHIM_GONE_AT_RESTART: ShimLoss = ShimLoss {
    reason: "Unknown",
    message: "the pod's shim exited while caissond was down",
};

impl Runtime {
    /// Whether the pod's shim is known to be gone.
    pub fn shim_lost(&self, pod_id: &str) -> bool {
        self.lost_shims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(pod_id)
    }

    /// Forgets a removed pod's lost shim.
    pub(super) fn forget_lost_shim(&self, pod_id: &str) {
        self.lost_shims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_id);
    }

    /// The pod's shim is gone: cleans up what it ran (the shim's `delete`
    /// for each task: kills what is left in the task's cgroup, removes the
    /// cgroup, unmounts its rootfs and idmapped layers), marks every
    /// container EXITED (an exit event each) and the pod NOTREADY.
    /// Idempotent. Answers how many containers it marked exited. The
    /// caller holds the pod's lock (or runs before the CRI socket serves).
    pub async fn mark_shim_lost(&self, pod: &PodRecord, loss: &ShimLoss) -> usize {
        self.drop_client(&pod.id);
        let tasks = self.pod_containers(&pod.id);
        let mut marked = 0;
        for c in &tasks {
            if c.state == ContainerState::Exited {
                continue;
            }
            let updated = self.update_container(&c.id, |c| {
                c.state = ContainerState::Exited;
                c.exit_code = 137;
                c.finished_at = now_ns();
                c.reason = loss.reason.into();
                c.message = loss.message.into();
            });
            if updated.is_some() {
                marked += 1;
                self.notify(&c.id, &pod.id, ChangeKind::Stopped);
            }
        }
        for c in &tasks {
            self.shims
                .delete_orphan(&c.id, &c.bundle, &pod.backend)
                .await;
        }
        self.shims
            .delete_orphan(&pod.id, &pod.bundle, &pod.backend)
            .await;
        self.on_exit(&pod.id, 137, now_ns());
        marked
    }

    /// Watches the shim process `shim` of pod `pod_id`: when it exits
    /// while the pod still exists (not a Shutdown by RemovePodSandbox),
    /// the pod's shim is lost ([`Runtime::mark_shim_lost`]).
    pub fn watch_shim(self: &Arc<Self>, pod_id: String, shim: Pidfd) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            let pid = shim.pid();
            // SAFETY: the Pidfd owns its fd, which stays open (and its
            // `as_raw_fd` the same) until the AsyncFd drops it.
            let registered = unsafe { AsyncFd::register_with_interest(shim, Interest::READABLE) };
            let shim = match registered {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(pod_id = %pod_id, shim_pid = pid, error = %e, "watching the pod's shim");
                    return;
                }
            };
            // Readable once the process has exited; an error is the same
            // answer (the fd cannot be polled any more).
            let _ = shim.readable().await;
            drop(shim);
            let Some(rt) = runtime.upgrade() else {
                return;
            };
            rt.shim_exited(pod_id, pid).await;
        });
    }

    /// The pod's shim (pid `pid`, 0 if unknown) is gone while caissond
    /// runs: unless the pod was removed meanwhile, its containers become
    /// EXITED and the pod NOTREADY ([`Runtime::mark_shim_lost`]).
    async fn shim_exited(self: &Arc<Self>, pod_id: String, pid: u32) {
        if !self.records().pods.contains_key(&pod_id) {
            return;
        }
        let lock = self.lock_for(&pod_id);
        let _guard = lock.lock().await;
        let Some(pod) = self.records().pods.get(&pod_id).cloned() else {
            // Removed meanwhile (its shim was told to shut down): the
            // lock may have been made again here.
            self.forget_lock(&pod_id);
            return;
        };
        if self.shim_lost(&pod_id) {
            return;
        }
        tracing::warn!(
            pod_id = %pod_id,
            shim_pid = pid,
            "the pod's shim exited: marking its containers exited and the pod not ready"
        );
        // Known dead (not merely silent, as a shim recovery could not
        // probe may be): no client connects to its socket again.
        self.lost_shims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod_id.clone());
        self.mark_shim_lost(&pod, &SHIM_DIED).await;
    }

    /// Starts watching the shim of `pod`, whose pid it gives over its Task
    /// API (`Connect`); a shim that no longer answers, or whose process is
    /// gone already, is taken as gone.
    pub(super) async fn watch_pod_shim(
        self: &Arc<Self>,
        client: &crate::shims::ShimClient,
        pod: &PodRecord,
    ) {
        let mut asked = client.shim_pid(&pod.id).await;
        if asked.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            asked = client.shim_pid(&pod.id).await;
        }
        let shim = match asked {
            Ok(pid) if pid > 0 => Pidfd::open(pid),
            Ok(_) => return,
            Err(e) => {
                // It answered the call before this one: it died since (the
                // chaos run killed one in between, and the pod stayed READY
                // with no shim).
                tracing::warn!(pod_id = %pod.id, error = %e, "the pod's shim does not answer for its pid: taking it as gone");
                self.spawn_shim_exited(pod.id.clone(), 0);
                return;
            }
        };
        match shim {
            Ok(shim) => self.watch_shim(pod.id.clone(), shim),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                self.spawn_shim_exited(pod.id.clone(), 0)
            }
            Err(e) => {
                tracing::warn!(pod_id = %pod.id, error = %e, "opening a pidfd on the pod's shim")
            }
        }
    }

    fn spawn_shim_exited(self: &Arc<Self>, pod_id: String, pid: u32) {
        let rt = self.clone();
        tokio::spawn(async move { rt.shim_exited(pod_id, pid).await });
    }
}
