//! A CRI daemon for the pull bench (a [`Caissond`] or a containerd
//! [`Process`]), reached with the `k8s-cri` ImageService client; one
//! timed PullImage with the daemon's peak RSS (`VmHWM` after a
//! `clear_refs` reset) and CPU time (`/proc/<pid>/stat`).

use std::fs;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use super::{Result, Run};
use crate::caissond::Caissond;
use crate::daemon::Process;

const PULL_DEADLINE: Duration = Duration::from_secs(600);

/// A daemon serving CRI's ImageService on a unix socket.
pub enum Daemon {
    /// Cleans up its cgroups when dropped.
    Caissond(Caissond),
    Containerd(Process),
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

impl Daemon {
    fn process(&self) -> &Process {
        match self {
            Daemon::Caissond(c) => c.process(),
            Daemon::Containerd(p) => p,
        }
    }

    /// One timed PullImage, with the daemon's peak RSS and CPU time.
    pub fn pull(&self, reference: &str) -> Result<Run> {
        let daemon = self.process();
        let pid = daemon.pid();
        // Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
        fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        let rss_before = status_kb(pid, "VmRSS")?;
        let (user0, sys0) = crate::measure::process_cpu(pid)?;
        let mut images = daemon.images();
        let request = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let start = Instant::now();
        let reply = daemon.call("PullImage", PULL_DEADLINE, images.pull_image(request))?;
        let wall = start.elapsed();
        let peak_rss = status_kb(pid, "VmHWM")?;
        let (user1, sys1) = crate::measure::process_cpu(pid)?;
        if reply.image_ref.is_empty() {
            return Err(format!("{} PullImage answered no image ref", daemon.name()).into());
        }
        let mut images = daemon.images();
        let status = daemon.call(
            "ImageStatus",
            Duration::from_secs(30),
            images.image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: reference.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }),
        )?;
        if status.image.is_none() {
            return Err(format!("{} has no {reference} after pulling it", daemon.name()).into());
        }
        Ok(Run {
            wall,
            user: user1.saturating_sub(user0),
            sys: sys1.saturating_sub(sys0),
            peak_rss,
            rss_before,
        })
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub fn stop(self) -> Result<()> {
        match self {
            Daemon::Caissond(mut c) => c.stop()?,
            Daemon::Containerd(mut p) => p.stop()?,
        };
        Ok(())
    }
}
