//! What a scrape computes when it happens: pods and containers by handler
//! and state (from the runtime's records), the live shims and their RSS,
//! and caissond's own `process_*` figures; and the encoding of a whole
//! scrape (these plus the event [`Metrics`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{proc, Metrics, PREFIX};
use crate::runtime::Runtime;
use crate::store::{ContainerState, PodState};

/// How long a shim gets to tell its pid before it counts as not live.
const SHIM_PID_TIMEOUT: Duration = Duration::from_secs(2);

pub const POD_STATES: &[&str] = &["ready", "notready"];
pub const CONTAINER_STATES: &[&str] = &["created", "running", "exited", "unknown"];

fn pod_state(s: PodState) -> &'static str {
    match s {
        PodState::Ready => "ready",
        PodState::NotReady => "notready",
    }
}

fn container_state(s: ContainerState) -> &'static str {
    match s {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
        ContainerState::Unknown => "unknown",
    }
}

/// One pod's shim, as a scrape found it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShimSample {
    pub pod_id: String,
    pub handler: String,
    /// VmRSS of the shim process, in bytes.
    pub rss_bytes: u64,
}

/// caissond's own process figures (`None`: unreadable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessSample {
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessSample {
    /// Of the process whose `/proc` dir is `dir` (`/proc/self`).
    pub fn read(dir: &Path) -> ProcessSample {
        let ticks = proc::ticks_per_second();
        let times = proc::stat_times(dir);
        ProcessSample {
            resident_memory_bytes: proc::status_bytes(dir, "VmRSS"),
            virtual_memory_bytes: proc::status_bytes(dir, "VmSize"),
            cpu_seconds: times.map(|t| t.cpu_ticks as f64 / ticks),
            start_time_seconds: times
                .zip(proc::boot_time())
                .map(|(t, boot)| boot as f64 + t.start_ticks as f64 / ticks),
            open_fds: proc::open_fds(dir),
            max_fds: proc::max_fds(),
        }
    }
}

/// The state a scrape reports, read from the runtime and `/proc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The configured handlers: their pod and container series are there
    /// (at 0) even with no pod.
    pub handlers: Vec<String>,
    /// Handler and state of each pod.
    pub pods: Vec<(String, &'static str)>,
    /// Handler (its pod's) and state of each container.
    pub containers: Vec<(String, &'static str)>,
    /// The shims that answered.
    pub shims: Vec<ShimSample>,
    pub process: ProcessSample,
}

/// Shim pids learnt from the shims (`Connect`), by pod id, with the
/// process's start time so that a reused pid is not taken for the shim.
#[derive(Debug, Default)]
pub struct ShimPids {
    known: Mutex<HashMap<String, (u32, u64)>>,
}

impl ShimPids {
    fn cached(&self, pod_id: &str) -> Option<PathBuf> {
        let (pid, start) = *self.lock().get(pod_id)?;
        let dir = PathBuf::from(format!("/proc/{pid}"));
        (proc::stat_times(&dir)?.start_ticks == start).then_some(dir)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, u64)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `/proc` dir of the pod's shim, asking the shim at `address` for
    /// its pid when it is not known (or its process is gone).
    async fn proc_dir(&self, rt: &Runtime, pod_id: &str, address: &str) -> Option<PathBuf> {
        if let Some(dir) = self.cached(pod_id) {
            return Some(dir);
        }
        // A client of its own: the runtime's clients belong to its calls.
        let client = rt.shims.connect(address).ok()?;
        let pid = tokio::time::timeout(SHIM_PID_TIMEOUT, client.shim_pid(pod_id))
            .await
            .ok()?
            .ok()
            .filter(|&pid| pid > 0)?;
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let start = proc::stat_times(&dir)?.start_ticks;
        self.lock().insert(pod_id.to_owned(), (pid, start));
        Some(dir)
    }

    fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| live(id));
    }
}

/// Reads the runtime's records, its shims and `/proc/self`.
pub async fn gather(rt: &Runtime, shim_pids: &ShimPids) -> Snapshot {
    let (pods, containers, shims) = {
        let records = rt.records();
        let handler_of = |pod_id: &str| {
            records
                .pods
                .get(pod_id)
                .map(|p| p.handler.clone())
                .unwrap_or_default()
        };
        let pods: Vec<(String, &'static str)> = records
            .pods
            .values()
            .map(|p| (p.handler.clone(), pod_state(p.state)))
            .collect();
        let containers = records
            .containers
            .values()
            .map(|c| (handler_of(&c.pod_id), container_state(c.state)))
            .collect();
        let shims: Vec<(String, String, String)> = records
            .pods
            .values()
            .filter(|p| !p.shim_address.is_empty())
            .map(|p| (p.id.clone(), p.handler.clone(), p.shim_address.clone()))
            .collect();
        (pods, containers, shims)
    };
    shim_pids.retain(|id| shims.iter().any(|(pod_id, _, _)| pod_id == id));
    let samples = futures_util::future::join_all(shims.into_iter().map(
        |(pod_id, handler, address)| async move {
            let dir = shim_pids.proc_dir(rt, &pod_id, &address).await?;
            let rss_bytes = proc::status_bytes(&dir, "VmRSS")?;
            Some(ShimSample {
                pod_id,
                handler,
                rss_bytes,
            })
        },
    ))
    .await;
    let mut shims: Vec<ShimSample> = samples.into_iter().flatten().collect();
    shims.sort_by(|a, b| a.pod_id.cmp(&b.pod_id));
    Snapshot {
        handlers: rt.config.runtimes.handlers.keys().cloned().collect(),
        pods,
        containers,
        shims,
        process: ProcessSample::read(Path::new("/proc/self")),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerStateLabels {
    handler: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod_id: String,
}

/// The registry of one scrape's state figures.
fn state_registry(snap: &Snapshot) -> Registry {
    let mut root = Registry::default();
    register_process(&mut root, &snap.process);
    let r = root.sub_registry_with_prefix(PREFIX);

    let by_handler_state = |items: &[(String, &'static str)], states: &[&'static str]| {
        let family = Family::<HandlerStateLabels, Gauge>::default();
        for handler in &snap.handlers {
            for &state in states {
                family.get_or_create_owned(&HandlerStateLabels {
                    handler: handler.clone(),
                    state,
                });
            }
        }
        for (handler, state) in items {
            family
                .get_or_create(&HandlerStateLabels {
                    handler: handler.clone(),
                    state,
                })
                .inc();
        }
        family
    };
    r.register(
        "pods",
        "Pod sandboxes caissond holds, by runtime handler and state (ready, notready)",
        by_handler_state(&snap.pods, POD_STATES),
    );
    r.register(
        "containers",
        "Containers caissond holds, by their pod's runtime handler and state (created, running, exited, unknown)",
        by_handler_state(&snap.containers, CONTAINER_STATES),
    );

    let shims = Family::<HandlerLabels, Gauge>::default();
    let shim_rss = Family::<PodLabels, Gauge>::default();
    for handler in &snap.handlers {
        shims.get_or_create_owned(&HandlerLabels {
            handler: handler.clone(),
        });
    }
    for s in &snap.shims {
        shims
            .get_or_create(&HandlerLabels {
                handler: s.handler.clone(),
            })
            .inc();
        shim_rss
            .get_or_create(&PodLabels {
                pod_id: s.pod_id.clone(),
            })
            .set(to_i64(s.rss_bytes));
    }
    r.register(
        "shims",
        "Per-pod shims (containerd-shim-caisson-v2) that answered, by runtime handler",
        shims,
    );
    r.register(
        "shim_resident_memory_bytes",
        "Resident memory (VmRSS) of each live pod's shim process",
        shim_rss,
    );
    root
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `process_*` metrics Prometheus' client libraries export, for
/// caissond itself.
fn register_process(r: &mut Registry, p: &ProcessSample) {
    let gauge = |v: u64| {
        let g: Gauge = Gauge::default();
        g.set(to_i64(v));
        g
    };
    if let Some(v) = p.resident_memory_bytes {
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            gauge(v),
        );
    }
    if let Some(v) = p.virtual_memory_bytes {
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            gauge(v),
        );
    }
    if let Some(v) = p.cpu_seconds {
        let c: Counter<f64, AtomicU64> = Counter::default();
        c.inc_by(v);
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            c,
        );
    }
    if let Some(v) = p.start_time_seconds {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        r.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            g,
        );
    }
    if let Some(v) = p.open_fds {
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            gauge(v),
        );
    }
    if let Some(v) = p.max_fds {
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            gauge(v),
        );
    }
}

/// The format of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, for a scraper that asks for it.
    OpenMetrics,
}

impl Format {
    /// From an `Accept` header: OpenMetrics only when it is offered.
    pub fn from_accept(accept: &str) -> Format {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A whole scrape: the event metrics, then the state of `snap`.
pub fn encode(
    events: &Metrics,
    snap: &Snapshot,
    format: Format,
) -> Result<String, std::fmt::Error> {
    let state = state_registry(snap);
    let mut out = String::new();
    match format {
        Format::Prometheus => {
            use prometheus_client::encoding::prometheus_text::encode;
            encode(&mut out, events.registry())?;
            encode(&mut out, &state)?;
        }
        Format::OpenMetrics => {
            use prometheus_client::encoding::text::{encode_eof, encode_registry};
            encode_registry(&mut out, events.registry())?;
            encode_registry(&mut out, &state)?;
            encode_eof(&mut out)?;
        }
    }
    Ok(out)
}
