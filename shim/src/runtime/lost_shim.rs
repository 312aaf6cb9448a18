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
        let tasks: Vec<_> = self
            .records()
            .containers
            .values()
            .filter(|c| c.pod_id == pod.id)
            .cloned()
            .collect();
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
            if !rt.records().pods.contains_key(&pod_id) {
                return;
            }
            let lock = rt.lock_for(&pod_id);
            let _guard = lock.lock().await;
            let Some(pod) = rt.records().pods.get(&pod_id).cloned() else {
                // Removed meanwhile (its shim was told to shut down): the
                // lock may have been made again here.
                rt.forget_lock(&pod_id);
                return;
            };
            if rt.shim_lost(&pod_id) {
                return;
            }
            tracing::warn!(
                pod_id = %pod_id,
                shim_pid = pid,
                "the pod's shim exited: marking its containers exited and the pod not ready"
            );
            // Known dead (not merely silent, as a shim recovery could not
            // probe may be): no client connects to its socket again.
            rt.lost_shims
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pod_id.clone());
            rt.mark_shim_lost(&pod, &SHIM_DIED).await;
        });
    }

    /// Starts watching the shim of `pod`, whose pid it gives over its Task
    /// API (`Connect`); a shim that does not answer is not watched.
    pub(super) async fn watch_pod_shim(
        self: &Arc<Self>,
        client: &crate::shims::ShimClient,
        pod: &PodRecord,
    ) {
        let shim = match client.shim_pid(&pod.id).await {
            Ok(pid) if pid > 0 => Pidfd::open(pid),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(pod_id = %pod.id, error = %e, "asking the pod's shim for its pid");
                return;
            }
        };
        match shim {
            Ok(shim) => self.watch_shim(pod.id.clone(), shim),
            Err(e) => {
                tracing::warn!(pod_id = %pod.id, error = %e, "opening a pidfd on the pod's shim")
            }
        }
    }
}
