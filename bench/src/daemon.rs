//! A CRI daemon process a benchmark spawns (caissond or containerd): its
//! stdout and stderr in a log file, a tonic channel over its unix socket
//! once CRI `Version` answers there, calls with a deadline whose errors name
//! the call and carry the end of the log, and a SIGTERM stop. Dropping a
//! process that was not stopped kills it.
//!
//! [`crate::caissond`] builds the benchmarks' caissond on it; `cri` and
//! `pull` start containerd with it directly.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::cri::Result;

/// How long a daemon may take to serve CRI after it is spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// How much of the log an error carries.
const LOG_LINES: usize = 40;

/// A running daemon and a channel to its CRI socket.
pub struct Process {
    /// `caissond` or `containerd`, in errors.
    name: &'static str,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    channel: Channel,
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

/// The last `n` lines of a log file.
fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Process {
    /// Spawns `command` (stdout and stderr appended to `log_path`) and waits
    /// until CRI `Version` answers on `socket`.
    pub fn start(
        name: &'static str,
        mut command: Command,
        socket: &Path,
        log_path: PathBuf,
    ) -> Result<Process> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", command.get_program().to_string_lossy()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let channel = loop {
            if socket.exists() {
                if let Ok(channel) = rt.block_on(connect(socket.to_path_buf())) {
                    let mut client = RuntimeServiceClient::new(channel.clone());
                    let version = rt.block_on(client.version(cri::VersionRequest::default()));
                    if version.is_ok() {
                        break channel;
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{name} exited with {status} at startup; its log ({}) ends with:\n{}",
                    log_path.display(),
                    log_tail(&log_path, LOG_LINES)
                )
                .into());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} did not serve CRI on {} within {STARTUP_DEADLINE:?}; its log ends with:\n{}",
                    socket.display(),
                    log_tail(&log_path, LOG_LINES)
                )
                .into());
            }
            // Polling for a socket another process makes: there is no event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Process {
            name,
            child: Some(child),
            rt,
            channel,
            log_path,
        })
    }

    /// `caissond` or `containerd`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its pid; 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has not been stopped yet.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// A RuntimeService client (tonic clients are cheap handles on one channel).
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// An ImageService client on the same channel.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one CRI call with a deadline; a failure names the daemon and the
    /// call and carries the end of the daemon's log.
    pub fn call<T>(
        &self,
        what: &str,
        deadline: Duration,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let name = self.name;
        let log = || {
            format!(
                "{name}'s log ({}) ends with:\n{}",
                self.log_path.display(),
                log_tail(&self.log_path, LOG_LINES)
            )
        };
        match self
            .rt
            .block_on(async { tokio::time::timeout(deadline, call).await })
        {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(format!(
                "{name} {what}: {:?}: {}\n{}",
                status.code(),
                status.message(),
                log()
            )
            .into()),
            Err(_) => {
                Err(format!("{name} {what}: no answer within {deadline:?}; {}", log()).into())
            }
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after a deadline.
    /// Returns how long it took to exit and whether it had to be killed.
    pub fn stop(&mut self) -> Result<(Duration, bool)> {
        let Some(mut child) = self.child.take() else {
            return Ok((Duration::ZERO, false));
        };
        let start = Instant::now();
        // SAFETY: kill on the pid of our own child, not yet waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        while start.elapsed() < EXIT_DEADLINE {
            if child.try_wait()?.is_some() {
                return Ok((start.elapsed(), false));
            }
            // Waiting on the runtime, not the thread: its connection task must
            // run to answer the server's GOAWAY, or a graceful shutdown waits
            // for this client forever.
            self.rt
                .block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
        child.kill()?;
        child.wait()?;
        Ok((start.elapsed(), true))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
