//! Prometheus metrics of caissond on an opt-in HTTP endpoint (`[metrics]
//! address`, like containerd's `metrics.address`).
//!
//! Two kinds of figures make up a scrape:
//!
//! * **events**, counted where they happen into one process-wide
//!   [`Metrics`] ([`metrics()`]): CRI calls and their latency (by
//!   [`crate::call_log`]), image pulls (by [`crate::image`]), what a restart
//!   recovered (by the runtime's `recover`), streaming sessions (by the
//!   streaming server);
//! * **state**, computed at scrape time ([`scrape`]): pods and containers
//!   by handler and state from the runtime's records, live shims and their
//!   RSS, and caissond's own `process_*` figures from `/proc/self`.
//!
//! Both are encoded with the `prometheus-client` crate in Prometheus' text
//! format 0.0.4 (or OpenMetrics when the scraper asks for it) by
//! [`server`]. Not to be confused with [`crate::runtime::metrics`], CRI's
//! ListPodSandboxMetrics.

pub mod config;
mod proc;
pub mod scrape;
pub mod server;

use std::sync::OnceLock;
use std::time::Duration;

use caisson_image::ImageError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use config::MetricsConfig;
pub use server::start;

/// Every metric name starts with this (`caisson_…`), except the standard
/// `process_*` ones.
pub const PREFIX: &str = "caisson";

/// Kinds and protocols of streaming sessions (their series start at 0).
pub const STREAMING_KINDS: &[&str] = &["exec", "attach", "portforward"];
pub const STREAMING_PROTOCOLS: &[&str] = &["spdy", "websocket"];

/// Latency buckets of CRI calls, in seconds: from a status read (~1 ms) to
/// a pod start or an image pull (minutes).
const CALL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Duration buckets of image pulls, in seconds.
const PULL_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Why a pull failed: one label value per kind of [`ImageError`].
pub const PULL_FAILURE_CAUSES: &[&str] = &[
    "invalid_reference",
    "not_found",
    "unauthorized",
    "unreachable",
    "registry_error",
    "integrity",
    "unsupported",
    "unpack",
    "storage",
];

/// What a restart found of a pod: its shim answered (`reconnected`) or
/// not (`lost`: its containers were marked exited).
pub const RECOVERED_POD_OUTCOMES: &[&str] = &["reconnected", "lost"];

/// What a restart found of a container that was not known to have exited:
/// still there (`running`), exited meanwhile (`exited`), or gone with its
/// task or shim (`lost`).
pub const RECOVERED_CONTAINER_OUTCOMES: &[&str] = &["running", "exited", "lost"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    call: &'static str,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    kind: &'static str,
    protocol: &'static str,
}

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS.iter().copied())
}

fn pull_histogram() -> Histogram {
    Histogram::new(PULL_BUCKETS.iter().copied())
}

/// The event metrics of one caissond, registered under [`PREFIX`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cri_requests: Family<CallLabels, Counter>,
    cri_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    phase_duration: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    pulls: Counter,
    pull_failures: Family<CauseLabels, Counter>,
    pull_bytes: Counter,
    pull_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    recovered_pods: Family<OutcomeLabels, Counter>,
    recovered_containers: Family<OutcomeLabels, Counter>,
    sessions: Family<SessionLabels, Counter>,
    sessions_in_flight: Family<SessionLabels, Gauge>,
    /// Method labels given out so far: a client calling made-up paths
    /// must not grow the series without end.
    methods: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct `method` labels at most (CRI v1 and the admin API have about
/// 50); later ones are counted as `other`.
pub const MAX_METHOD_LABELS: usize = 100;

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix(PREFIX),
            cri_requests: Family::default(),
            cri_duration: Family::new_with_constructor(call_histogram),
            phase_duration: Family::new_with_constructor(call_histogram),
            pulls: Counter::default(),
            pull_failures: Family::default(),
            pull_bytes: Counter::default(),
            pull_duration: Family::new_with_constructor(pull_histogram),
            methods: Default::default(),
            recovered_pods: Family::default(),
            recovered_containers: Family::default(),
            sessions: Family::default(),
            sessions_in_flight: Family::default(),
        };
        // Series whose labels are known up front start at 0, so a query
        // sees them before the first event.
        for &cause in PULL_FAILURE_CAUSES {
            m.pull_failures.get_or_create_owned(&CauseLabels { cause });
        }
        for outcome in ["success", "failure"] {
            m.pull_duration
                .get_or_create_owned(&OutcomeLabels { outcome });
        }
        for &outcome in RECOVERED_POD_OUTCOMES {
            m.recovered_pods
                .get_or_create_owned(&OutcomeLabels { outcome });
        }
        for &outcome in RECOVERED_CONTAINER_OUTCOMES {
            m.recovered_containers
                .get_or_create_owned(&OutcomeLabels { outcome });
        }
        for &kind in STREAMING_KINDS {
            for &protocol in STREAMING_PROTOCOLS {
                let labels = SessionLabels { kind, protocol };
                m.sessions.get_or_create_owned(&labels);
                m.sessions_in_flight.get_or_create_owned(&labels);
            }
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "cri_requests",
            "CRI (and admin) gRPC calls answered, by method and gRPC status code",
            self.cri_requests.clone(),
        );
        r.register(
            "cri_request_duration_seconds",
            "Time from a CRI call's arrival to its answer's headers, by method and gRPC status code",
            self.cri_duration.clone(),
        );
        r.register(
            "cri_phase_duration_seconds",
            "Time each phase of a pod or container start took (cgroup, netns, each CNI plugin, shim, task create and start, rootfs, spec, records), by call and phase",
            self.phase_duration.clone(),
        );
        r.register(
            "image_pulls",
            "PullImage calls that reached the puller, whatever their outcome",
            self.pulls.clone(),
        );
        r.register(
            "image_pull_failures",
            "Image pulls that failed, by cause",
            self.pull_failures.clone(),
        );
        r.register(
            "image_pull_bytes",
            "Blob bytes downloaded from registries by successful pulls",
            self.pull_bytes.clone(),
        );
        r.register(
            "image_pull_duration_seconds",
            "Time an image pull took, by outcome (success or failure)",
            self.pull_duration.clone(),
        );
        r.register(
            "recovered_pods",
            "Pods found in the state at caissond's start, by outcome (reconnected: the shim answered; lost: it was gone)",
            self.recovered_pods.clone(),
        );
        r.register(
            "recovered_containers",
            "Containers not known to have exited found at caissond's start, by outcome (running, exited meanwhile, lost)",
            self.recovered_containers.clone(),
        );
        r.register(
            "streaming_sessions",
            "Exec, attach and port-forward sessions opened on the streaming server, by kind and protocol (spdy, websocket)",
            self.sessions.clone(),
        );
        r.register(
            "streaming_sessions_in_flight",
            "Streaming sessions open now, by kind and protocol",
            self.sessions_in_flight.clone(),
        );
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One answered gRPC call.
    pub fn record_call(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let method = {
            let mut seen = self.methods.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(method) {
                method.to_owned()
            } else if seen.len() < MAX_METHOD_LABELS {
                seen.insert(method.to_owned());
                method.to_owned()
            } else {
                "other".to_owned()
            }
        };
        let labels = CallLabels {
            method,
            code: code_name(code),
        };
        self.cri_requests.get_or_create(&labels).inc();
        self.cri_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// One phase of a CRI call ([`phase`]).
    pub fn record_phase(&self, call: &'static str, phase: String, elapsed: Duration) {
        self.phase_duration
            .get_or_create(&PhaseLabels { call, phase })
            .observe(elapsed.as_secs_f64());
    }

    /// One pull that reached the puller: `Ok(bytes downloaded by it)` or
    /// its error.
    pub fn record_pull(&self, result: Result<u64, &ImageError>, elapsed: Duration) {
        self.pulls.inc();
        let outcome = match result {
            Ok(bytes) => {
                self.pull_bytes.inc_by(bytes);
                "success"
            }
            Err(e) => {
                let cause = pull_failure_cause(e);
                self.pull_failures
                    .get_or_create(&CauseLabels { cause })
                    .inc();
                "failure"
            }
        };
        self.pull_duration
            .get_or_create(&OutcomeLabels { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// A pod found at start; `outcome` is one of [`RECOVERED_POD_OUTCOMES`].
    pub fn recovered_pod(&self, outcome: &'static str) {
        self.recovered_pods
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A container found at start; `outcome` is one of
    /// [`RECOVERED_CONTAINER_OUTCOMES`].
    pub fn recovered_container(&self, outcome: &'static str) {
        self.recovered_containers
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a session opened and holds it in flight until the guard drops.
    pub fn session(&self, kind: &'static str, protocol: &'static str) -> SessionGuard {
        let labels = SessionLabels { kind, protocol };
        self.sessions.get_or_create(&labels).inc();
        let in_flight = self.sessions_in_flight.get_or_create(&labels).clone();
        in_flight.inc();
        SessionGuard { in_flight }
    }
}

/// A streaming session in flight (see [`Metrics::session`]).
#[must_use = "the session counts as in flight while the guard lives"]
pub struct SessionGuard {
    in_flight: Gauge,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// caissond's metrics (made on first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Times one phase of a CRI call from now until the guard drops, into
/// `caisson_cri_phase_duration_seconds{call, phase}` (summarised by
/// `caisson-bench cri --phases`), and logs it at debug level.
pub fn phase(call: &'static str, phase: impl Into<String>) -> PhaseGuard {
    PhaseGuard {
        call,
        phase: phase.into(),
        started: std::time::Instant::now(),
    }
}

/// A phase being timed (see [`phase`]).
#[must_use = "the phase is timed until the guard drops"]
pub struct PhaseGuard {
    call: &'static str,
    phase: String,
    started: std::time::Instant,
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        tracing::debug!(call = self.call, phase = %self.phase, elapsed_us = elapsed.as_micros() as u64, "phase");
        metrics().record_phase(self.call, std::mem::take(&mut self.phase), elapsed);
    }
}

/// A streaming session of `kind` (exec, attach, portforward) over
/// `protocol` (spdy, websocket), in flight while the guard lives.
pub fn streaming_session(kind: &'static str, protocol: &'static str) -> SessionGuard {
    metrics().session(kind, protocol)
}

/// The gRPC code as gRPC's own libraries name it (`OK`, `NotFound`,
/// `Canceled`, …), as grpc-prometheus and containerd label it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The `cause` label of a failed pull (one of [`PULL_FAILURE_CAUSES`]).
pub fn pull_failure_cause(e: &ImageError) -> &'static str {
    use ImageError::*;
    match e {
        InvalidReference { .. } | InvalidDigest { .. } | Ambiguous { .. } => "invalid_reference",
        NotFound(_) | NotInRegistry { .. } => "not_found",
        RegistryUnauthorized { .. } => "unauthorized",
        RegistryUnreachable { .. } | RegistryNotTls { .. } => "unreachable",
        Registry { .. } => "registry_error",
        DigestMismatch { .. } | SizeMismatch { .. } | MissingBlob { .. } => "integrity",
        Malformed { .. } | Unsupported { .. } => "unsupported",
        UnsafeEntry { .. } | EntryFailed { .. } | LayerTooLarge { .. } => "unpack",
        Io { .. } | MountFailed { .. } | RootfsExists { .. } | RootfsNotFound { .. } => "storage",
    }
}

#[cfg(test)]
mod tests;
