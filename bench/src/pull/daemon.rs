//! A CRI daemon for the pull bench: spawned with its output in a log,
//! reached over its unix socket with the `k8s-cri` ImageService client; one
//! timed PullImage with the daemon's peak RSS (`VmHWM` after a
//! `clear_refs` reset) and CPU time (`/proc/<pid>/stat`).

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

use super::{Result, Run};

const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
const PULL_DEADLINE: Duration = Duration::from_secs(600);

/// A daemon serving CRI's ImageService on a unix socket.
pub struct Daemon {
    name: &'static str,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    images: ImageServiceClient<Channel>,
    log_path: PathBuf,
}

async fn connect(socket: PathBuf) -> std::result::Result<Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
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

/// (user, system) CPU time of a process so far.
fn cpu_of(pid: u32) -> Result<(Duration, Duration)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let at = |i: usize| -> Result<Duration> {
        let t: f64 = fields
            .get(i)
            .ok_or("short /proc/<pid>/stat")?
            .parse()
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        Ok(Duration::from_secs_f64(t / ticks))
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the name.
    Ok((at(11)?, at(12)?))
}

impl Daemon {
    pub fn start(
        name: &'static str,
        mut command: Command,
        socket: PathBuf,
        log_path: PathBuf,
    ) -> Result<Daemon> {
        let log = fs::File::create(&log_path)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {name}: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let images = loop {
            if socket.exists() {
                if let Ok(channel) = rt.block_on(connect(socket.clone())) {
                    let mut images = ImageServiceClient::new(channel);
                    let fs_info = rt.block_on(images.image_fs_info(cri::ImageFsInfoRequest {}));
                    if fs_info.is_ok() {
                        break images;
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(
                    format!("{name} exited with {status}:\n{}", log_tail(&log_path)).into(),
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} did not serve CRI within {STARTUP_DEADLINE:?}:\n{}",
                    log_tail(&log_path)
                )
                .into());
            }
            // Polling for a socket another process makes: there is no event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Daemon {
            name,
            child: Some(child),
            rt,
            images,
            log_path,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn call<T>(
        &self,
        what: &str,
        deadline: Duration,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(deadline, call).await })
        {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(format!(
                "{} {what}: {:?}: {}\n{}",
                self.name,
                status.code(),
                status.message(),
                log_tail(&self.log_path)
            )
            .into()),
            Err(_) => Err(format!("{} {what}: no answer within {deadline:?}", self.name).into()),
        }
    }

    /// One timed PullImage, with the daemon's peak RSS and CPU time.
    pub fn pull(&self, reference: &str) -> Result<Run> {
        let pid = self.pid();
        // Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
        fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        let rss_before = status_kb(pid, "VmRSS")?;
        let (user0, sys0) = cpu_of(pid)?;
        let mut images = self.images.clone();
        let request = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let start = Instant::now();
        let reply = self.call("PullImage", PULL_DEADLINE, images.pull_image(request))?;
        let wall = start.elapsed();
        let peak_rss = status_kb(pid, "VmHWM")?;
        let (user1, sys1) = cpu_of(pid)?;
        if reply.image_ref.is_empty() {
            return Err(format!("{} PullImage answered no image ref", self.name).into());
        }
        let mut images = self.images.clone();
        let status = self.call(
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
            return Err(format!("{} has no {reference} after pulling it", self.name).into());
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
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill on the pid of our own child, not yet waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            // On the runtime, so the client's connection answers the server's GOAWAY.
            self.rt
                .block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
