//! `streaming`: CRI Exec and PortForward through each daemon's streaming
//! server, caissond against containerd 1.6's CRI plugin (kubelet's
//! streaming library), both started as `cri` starts them
//! ([`crate::cri::start_daemons`]) and driven the same way: the `k8s-cri`
//! client for the CRI calls, the independent SPDY/3.1 client of
//! `caisson_tests::spdy` for the sessions.
//!
//! 1. Both daemons start in a temp dir; on each, one host-network pod whose
//!    busybox container writes a `--size-mb` file of zeros and serves it
//!    with `httpd` on 127.0.0.1 (a port per daemon).
//! 2. Exec round trip, alternating daemons: CRI `Exec` of `true` (stdout and
//!    stderr, no tty), then the URL opened with SPDY `v4.channel.k8s.io`,
//!    the error, stdout and stderr streams, and the `Success` Status on the
//!    error stream. ExecSync of `true` beside it. Warm-ups, then `--runs`.
//! 3. Port-forward throughput, alternating daemons: CRI `PortForward`, SPDY
//!    `portforward.k8s.io`, an error + data stream pair, an HTTP/1.0 GET of
//!    the file and its body read in full; once as client-go does (no
//!    WINDOW_UPDATE), once granting SPDY/3.1 windows; and the same GET over
//!    plain TCP from the host. One warm-up, then `--forwards` runs.
//! 4. Teardown: pods removed through CRI, daemons stopped, then anything
//!    left killed, unmounted and removed ([`crate::cri::in_work_dir`]).
//!
//! * [`session`]: the SPDY client side of one exec or forward.
//! * [`report`]: the table and the JSON.

mod report;
mod session;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use serde_json::json;

use crate::cri::daemon::Daemon;
use crate::cri::{Result, DAEMONS};
use report::{ExecRun, ForwardRun, Side};
use session::Flow;

/// The ports the pods' httpd listen on (host network: one per daemon).
const PORTS: [u16; 2] = [47080, 47081];
/// Warm-up exec round trips on each daemon before the timed ones.
const EXEC_WARMUPS: usize = 5;
/// How long a pod's server may take to write its file and listen.
const SERVER_DEADLINE: Duration = Duration::from_secs(120);

/// Command-line options of `streaming`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timed exec round trips (and ExecSyncs) on each daemon.
    pub runs: usize,
    /// Timed forwards of the file, of each kind, on each daemon.
    pub forwards: usize,
    /// Size of the forwarded file, in MB (10^6 bytes).
    pub size_mb: u64,
    pub json: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 50,
            forwards: 5,
            size_mb: 100,
            json: None,
        }
    }
}

impl Options {
    fn size(&self) -> u64 {
        self.size_mb * 1_000_000
    }
}

/// Runs the benchmark, prints the table and writes the JSON if asked.
pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.forwards == 0 || opts.size_mb == 0 {
        return Err("--runs, --forwards and --size-mb must be at least 1".into());
    }
    if !crate::cri::is_root() {
        return Err(
            "the streaming bench must run as root (both daemons make namespaces, mounts and cgroups)"
                .into(),
        );
    }
    for port in PORTS {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("127.0.0.1:{port}, which the bench's pods serve on: {e}"))?;
    }
    let mut sides = Vec::new();
    let (config, leftovers) =
        crate::cri::in_work_dir("caisson-bench-streaming-", false, |work_dir, pause| {
            measure(opts, work_dir, pause, &mut sides)
        })?;
    report::print(opts, &sides, &leftovers);
    if let Some(path) = &opts.json {
        let value = report::to_json(opts, &sides, &leftovers, config);
        let text = serde_json::to_string_pretty(&value)? + "\n";
        fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if leftovers.iter().any(|left| report::leaked(left).any()) {
        return Err("a daemon left processes, mounts or pod cgroups behind (see above)".into());
    }
    Ok(())
}

/// The pod of one daemon: its ids and the port its httpd serves.
struct Pod {
    container: String,
    port: u16,
}

/// Starts busybox `httpd` serving a file of `size` zero bytes as `/blob` on
/// 127.0.0.1:`port`, in a host-network pod, and waits until it listens.
fn start_server(daemon: &mut Daemon, port: u16, size: u64) -> Result<Pod> {
    let script = format!(
        "mkdir -p /tmp/www && head -c {size} /dev/zero > /tmp/www/blob && \
         exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"
    );
    let (_pod, container, _) = daemon.start_pod_running(&["sh", "-c", &script])?;
    let deadline = Instant::now() + SERVER_DEADLINE;
    // Polling for a port another process opens: there is no event to wait on.
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{}: nothing listens on 127.0.0.1:{port} {SERVER_DEADLINE:?} after the server's container started",
                daemon.name()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Pod { container, port })
}

/// One exec round trip of `true` and one ExecSync of `true`.
fn exec_run(daemon: &Daemon, rt: &tokio::runtime::Runtime, pod: &Pod) -> Result<ExecRun> {
    let start = Instant::now();
    let mut c = daemon.client();
    let request = cri::ExecRequest {
        container_id: pod.container.clone(),
        cmd: vec!["true".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    };
    let (reply, cri_call) = daemon.call("Exec", async move { c.exec(request).await })?;
    let url = token_hidden(&reply.url);
    let session_start = Instant::now();
    rt.block_on(session::exec_true(&reply.url))?;
    let session = session_start.elapsed();
    let total = start.elapsed();

    let mut c = daemon.client();
    let request = cri::ExecSyncRequest {
        container_id: pod.container.clone(),
        cmd: vec!["true".into()],
        timeout: 60,
    };
    let (reply, exec_sync) = daemon.call("ExecSync", async move { c.exec_sync(request).await })?;
    if reply.exit_code != 0 {
        return Err(format!(
            "{}: ExecSync of `true` exited with {}",
            daemon.name(),
            reply.exit_code
        )
        .into());
    }
    Ok(ExecRun {
        cri_call,
        session,
        total,
        exec_sync,
        url,
    })
}

/// The URL with its last path segment (the token) replaced by `<token>`,
/// for the report.
fn token_hidden(url: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/<token>"),
        None => url.to_string(),
    }
}

/// The daemon's user + system CPU time so far (zero once it is gone).
fn cpu_time(pid: u32) -> Duration {
    crate::measure::process_cpu(pid)
        .map(|(user, system)| user + system)
        .unwrap_or_default()
}

/// One forward of each kind and one direct fetch.
fn forward_run(
    daemon: &Daemon,
    rt: &tokio::runtime::Runtime,
    pod_id: &str,
    pod: &Pod,
    size: u64,
) -> Result<ForwardRun> {
    let mut run = ForwardRun {
        direct: session::direct(pod.port, size)?,
        ..Default::default()
    };
    for flow in [Flow::None, Flow::WindowUpdates] {
        let cpu_before = cpu_time(daemon.pid());
        let mut c = daemon.client();
        let request = cri::PortForwardRequest {
            pod_sandbox_id: pod_id.to_string(),
            port: vec![i32::from(pod.port)],
        };
        let (reply, cri_call) =
            daemon.call("PortForward", async move { c.port_forward(request).await })?;
        let forward = rt.block_on(session::forward(&reply.url, pod.port, size, flow))?;
        let cpu = cpu_time(daemon.pid()).saturating_sub(cpu_before);
        match flow {
            Flow::None => {
                run.plain = forward;
                run.plain_cpu = cpu;
                run.cri_call = cri_call;
            }
            Flow::WindowUpdates => {
                run.windowed = forward;
                run.windowed_cpu = cpu;
            }
        }
    }
    Ok(run)
}

/// Starts both daemons and their pods, measures, and stops them; fills
/// `sides` as it goes. Returns both daemons' configs, for the JSON.
fn measure(
    opts: &Options,
    work: &Path,
    pause: &Path,
    sides: &mut Vec<Side>,
) -> Result<serde_json::Value> {
    let mut daemons = crate::cri::start_daemons(work, pause, false)?;
    let config = json!({
        "caissond": fs::read_to_string(work.join(DAEMONS[0]).join("caisson.toml"))?,
        "containerd": fs::read_to_string(work.join(DAEMONS[1]).join("config.toml"))?,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut pods = Vec::new();
    for (d, port) in daemons.iter_mut().zip(PORTS) {
        eprintln!(
            "{}: a host-network pod serving {} MB on 127.0.0.1:{port}",
            d.name(),
            opts.size_mb
        );
        let pod = start_server(d, port, opts.size())?;
        let pod_id = d.list_pods()?.into_iter().next().ok_or("no pod listed")?;
        sides.push(Side {
            name: d.name(),
            binary: d.spec.binary.clone(),
            version: d.spec.version.clone(),
            ..Default::default()
        });
        pods.push((pod_id, pod));
    }

    let order = |run: usize| -> Vec<usize> {
        // Alternate which daemon goes first.
        if run % 2 == 1 {
            vec![1, 0]
        } else {
            vec![0, 1]
        }
    };
    eprintln!(
        "exec round trips: {EXEC_WARMUPS} warm-ups, then {} runs",
        opts.runs
    );
    for run in 0..EXEC_WARMUPS + opts.runs {
        for i in order(run) {
            let result = exec_run(&daemons[i], &rt, &pods[i].1)?;
            if run >= EXEC_WARMUPS {
                sides[i].url = result.url.clone();
                sides[i].execs.push(result);
            }
        }
    }
    eprintln!(
        "port-forward: {} MB, one warm-up, then {} runs",
        opts.size_mb, opts.forwards
    );
    for run in 0..=opts.forwards {
        for i in order(run) {
            let (pod_id, pod) = &pods[i];
            let result = forward_run(&daemons[i], &rt, pod_id, pod, opts.size())?;
            if run > 0 {
                sides[i].forwards.push(result);
            }
        }
    }

    eprintln!("teardown");
    for (d, side) in daemons.iter_mut().zip(sides.iter_mut()) {
        side.pods_removed = d.remove_all_pods()?;
        let (exit, killed) = d.stop()?;
        side.exit = exit;
        side.killed = killed;
    }
    Ok(config)
}
