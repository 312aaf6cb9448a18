//! caissond's Prometheus endpoint (`[metrics] address`), scraped during a
//! pod's life and read by an independent parser: the Python
//! `prometheus_client` package's (PyPI, pinned in the Makefile's
//! `PY_GRPC_TOOLS`), over Python's own HTTP client. The figures must move
//! with the work: calls counted per method and code, pods and containers by
//! handler and state up then down, a shim RSS series per live pod, pulls,
//! streaming sessions, caissond's process figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use caisson_tests::daemon::{container_config, wait_until, Caissond};
use caisson_tests::require;
use k8s_cri::v1 as cri;

/// Fetches a URL with urllib and parses it with prometheus_client's text
/// parser (or its OpenMetrics parser); prints JSON.
const SCRAPER: &str = r#"
import json, sys, urllib.request
url, accept = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
with urllib.request.urlopen(req, timeout=20) as rsp:
    content_type = rsp.headers.get("Content-Type", "")
    text = rsp.read().decode("utf-8")
if "openmetrics" in accept:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
families, samples = {}, []
for f in text_string_to_metric_families(text):
    families[f.name] = {"type": f.type, "help": f.documentation}
    for s in f.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"content_type": content_type, "families": families, "samples": samples}, sys.stdout)
"#;

/// The interop venv's Python with `prometheus_client`, failing with how to
/// get it.
fn python_prometheus() -> PathBuf {
    let python = require::python_grpc();
    let ok = std::process::Command::new(&python)
        .args([
            "-c",
            "import prometheus_client.parser, prometheus_client.openmetrics.parser",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with `prometheus-client` (PyPI, pinned in the Makefile's PY_GRPC_TOOLS) is required: `make python-deps` makes it",
        python.display()
    );
    python
}

struct Scrape {
    content_type: String,
    /// name → (type, help)
    families: BTreeMap<String, (String, String)>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn take(python: &Path, url: &str, accept: &str) -> Scrape {
        let out = std::process::Command::new(python)
            .args(["-c", SCRAPER, url, accept])
            .output()
            .expect("running the Python scraper");
        assert!(
            out.status.success(),
            "scraping {url} with prometheus_client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let families = json["families"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, f)| {
                let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
                (name.clone(), (s("type"), s("help")))
            })
            .collect();
        let samples = json["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                (
                    s[0].as_str().unwrap().to_string(),
                    labels,
                    s[2].as_f64().unwrap(),
                )
            })
            .collect();
        Scrape {
            content_type: json["content_type"].as_str().unwrap().to_string(),
            families,
            samples,
        }
    }

    /// The sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }

    /// [`Scrape::value`], 0 when the series is absent (a counter not yet
    /// counted).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The sum over every series of `name` that has these labels.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }

    fn family_type(&self, name: &str) -> &str {
        self.families
            .get(name)
            .map(|(t, _)| t.as_str())
            .unwrap_or_else(|| panic!("no family {name} in {:?}", self.families.keys()))
    }

    fn pods(&self, state: &str) -> f64 {
        self.get("caisson_pods", &[("handler", "runc"), ("state", state)])
    }

    fn containers(&self, state: &str) -> f64 {
        self.get(
            "caisson_containers",
            &[("handler", "runc"), ("state", state)],
        )
    }

    fn calls(&self, method: &str, code: &str) -> f64 {
        self.get(
            "caisson_cri_requests_total",
            &[("method", method), ("code", code)],
        )
    }
}

/// The endpoint's URL, from caissond's log line naming the bound port.
fn metrics_url(d: &Caissond) -> String {
    const MARK: &str = "metrics endpoint ready: http://";
    wait_until(
        "the metrics endpoint's log line",
        Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(&d.log_path).ok()?;
            let rest = &log[log.find(MARK)? + MARK.len() - "http://".len()..];
            Some(rest.split_whitespace().next()?.to_string())
        },
    )
}

/// gRPC's name of a code, as the metrics label it.
fn go_code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "OK".into(),
        tonic::Code::Cancelled => "Canceled".into(),
        other => format!("{other:?}"),
    }
}

fn raw_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut tcp = std::net::TcpStream::connect(host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn metrics_move_with_a_pods_life() {
    let python = python_prometheus();
    let d = Caissond::start("metrics.address = \"127.0.0.1:0\"");
    let url = metrics_url(&d);
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
        "{url}"
    );
    assert!(
        !url.contains(":0/"),
        "the bound port is logged, not 0: {url}"
    );

    // At rest: families typed, process figures of caissond itself.
    let start = Scrape::take(&python, &url, "");
    assert!(
        start.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        start.content_type
    );
    for (family, ty) in [
        ("caisson_cri_requests", "counter"),
        ("caisson_cri_request_duration_seconds", "histogram"),
        ("caisson_pods", "gauge"),
        ("caisson_containers", "gauge"),
        ("caisson_shims", "gauge"),
        ("caisson_image_pulls", "counter"),
        ("caisson_image_pull_failures", "counter"),
        ("caisson_image_pull_bytes", "counter"),
        ("caisson_image_pull_duration_seconds", "histogram"),
        ("caisson_recovered_pods", "counter"),
        ("caisson_recovered_containers", "counter"),
        ("caisson_streaming_sessions", "counter"),
        ("caisson_streaming_sessions_in_flight", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(start.family_type(family), ty, "{family}");
        assert!(!start.families[family].1.is_empty(), "{family} has HELP");
    }
    assert!(start.get("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(start.get("process_open_fds", &[]) > 3.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = start.get("process_start_time_seconds", &[]);
    assert!(
        (now - 120.0..=now + 1.0).contains(&started),
        "caissond started at {started}, now is {now}"
    );
    assert_eq!(start.pods("ready"), 0.0);
    assert_eq!(start.get("caisson_shims", &[("handler", "runc")]), 0.0);
    assert_eq!(start.sum("caisson_recovered_pods_total", &[]), 0.0);
    // The harness's start-up Version calls are counted already.
    assert!(start.calls("Version", "OK") >= 1.0);

    // The work: a pod, a container, an ExecSync, a streaming exec, a call
    // that fails, a pull that fails.
    d.import_busybox();
    d.import_pause_image();
    let config = d.pod_config("prometheus");
    let pod = d.run_pod(&config);
    let id = d.create_started_container(&pod, &config, container_config("c", &["sleep", "600"]));
    assert_eq!(d.exec(&id, &["echo", "hi"]), "hi\n");
    let mut rt = d.runtime();
    let exec_url = d
        .ok(
            "Exec",
            d.rt.block_on(rt.exec(cri::ExecRequest {
                container_id: id.clone(),
                cmd: vec!["echo".into(), "streamed".into()],
                stdout: true,
                ..Default::default()
            })),
        )
        .url;
    let rest = exec_url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let streamed = d.rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
        let (mut client, _) = caisson_tests::spdy::upgrade(tcp, path, &["v4.channel.k8s.io"])
            .await
            .unwrap();
        caisson_tests::spdy::exec(
            &mut client,
            &caisson_tests::spdy::ExecRequest {
                stdout: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
    });
    assert_eq!(String::from_utf8_lossy(&streamed.stdout), "streamed\n");
    let missing =
        d.rt.block_on(rt.container_status(cri::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        }))
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let pull =
        d.rt.block_on(d.images().pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "127.0.0.1:1/caisson/nothing:latest".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap_err();
    let pull_code = go_code_name(pull.code());

    let busy = Scrape::take(&python, &url, "");
    for method in ["RunPodSandbox", "CreateContainer", "StartContainer", "Exec"] {
        assert_eq!(busy.calls(method, "OK"), 1.0, "{method}");
        assert_eq!(
            busy.get(
                "caisson_cri_request_duration_seconds_count",
                &[("method", method), ("code", "OK")]
            ),
            1.0,
            "{method}"
        );
    }
    assert!(busy.calls("ExecSync", "OK") >= 1.0);
    assert_eq!(busy.calls("ContainerStatus", "NotFound"), 1.0);
    assert_eq!(busy.calls("PullImage", &pull_code), 1.0, "{pull_code}");
    let run_labels = [("method", "RunPodSandbox"), ("code", "OK")];
    assert!(busy.get("caisson_cri_request_duration_seconds_sum", &run_labels) > 0.0);
    // The calls' phases: each timed once per call, together inside it.
    for (call, phase) in [
        ("RunPodSandbox", "cgroup"),
        ("RunPodSandbox", "shim start"),
        ("RunPodSandbox", "pause create"),
        ("RunPodSandbox", "pause start"),
        ("CreateContainer", "rootfs"),
        ("CreateContainer", "spec"),
        ("CreateContainer", "task create"),
        ("StartContainer", "task start"),
    ] {
        let labels = [("call", call), ("phase", phase)];
        assert_eq!(
            busy.get("caisson_cri_phase_duration_seconds_count", &labels),
            1.0,
            "{call} {phase}"
        );
    }
    for (call, method) in [
        ("RunPodSandbox", "RunPodSandbox"),
        ("CreateContainer", "CreateContainer"),
    ] {
        let phases = busy.sum("caisson_cri_phase_duration_seconds_sum", &[("call", call)]);
        let whole = busy.get(
            "caisson_cri_request_duration_seconds_sum",
            &[("method", method), ("code", "OK")],
        );
        assert!(
            phases > 0.0 && phases <= whole,
            "{call}: phases {phases} s, call {whole} s"
        );
    }
    let inf = [("method", "RunPodSandbox"), ("code", "OK"), ("le", "+Inf")];
    assert_eq!(
        busy.get("caisson_cri_request_duration_seconds_bucket", &inf),
        1.0
    );
    assert_eq!(busy.get("caisson_image_pulls_total", &[]), 1.0);
    assert_eq!(busy.sum("caisson_image_pull_failures_total", &[]), 1.0);
    assert_eq!(
        busy.get(
            "caisson_image_pull_failures_total",
            &[("cause", "unreachable")]
        ),
        1.0,
        "a pull from a closed port fails as unreachable ({pull:?})"
    );
    assert_eq!(
        busy.get(
            "caisson_image_pull_duration_seconds_count",
            &[("outcome", "failure")]
        ),
        1.0
    );
    assert_eq!(busy.pods("ready"), 1.0);
    assert_eq!(busy.pods("notready"), 0.0);
    assert_eq!(
        busy.get(
            "caisson_pods",
            &[("handler", "hardened"), ("state", "ready")]
        ),
        0.0
    );
    assert_eq!(busy.containers("running"), 1.0);
    assert_eq!(busy.get("caisson_shims", &[("handler", "runc")]), 1.0);
    let shim_rss = busy
        .value("caisson_shim_resident_memory_bytes", &[("pod_id", &pod)])
        .unwrap_or_else(|| panic!("no shim RSS series for pod {pod}"));
    assert!(shim_rss > 100_000.0, "shim RSS {shim_rss}");
    let exec_spdy = [("kind", "exec"), ("protocol", "spdy")];
    assert_eq!(
        busy.get("caisson_streaming_sessions_total", &exec_spdy),
        1.0
    );
    assert_eq!(
        busy.get(
            "caisson_streaming_sessions_total",
            &[("kind", "exec"), ("protocol", "websocket")]
        ),
        0.0
    );
    assert!(
        busy.get("process_cpu_seconds_total", &[]) >= start.get("process_cpu_seconds_total", &[])
    );
    // The session ends once its streams are done: in flight back to 0.
    wait_until("the exec session to end", Duration::from_secs(20), || {
        let s = Scrape::take(&python, &url, "");
        (s.get("caisson_streaming_sessions_in_flight", &exec_spdy) == 0.0).then_some(())
    });

    // Stopped: the pod is not ready, its container exited, its shim lives on.
    d.stop_pod(&pod);
    let stopped = Scrape::take(&python, &url, "");
    assert_eq!(stopped.pods("ready"), 0.0);
    assert_eq!(stopped.pods("notready"), 1.0);
    assert_eq!(stopped.containers("running"), 0.0);
    assert_eq!(stopped.containers("exited"), 1.0);
    assert_eq!(stopped.calls("StopPodSandbox", "OK"), 1.0);

    // Removed: nothing left, and no shim series.
    d.remove_pod(&pod);
    let gone = Scrape::take(&python, &url, "");
    assert_eq!(gone.sum("caisson_pods", &[]), 0.0);
    assert_eq!(gone.sum("caisson_containers", &[]), 0.0);
    assert_eq!(gone.sum("caisson_shims", &[]), 0.0);
    assert_eq!(
        gone.value("caisson_shim_resident_memory_bytes", &[("pod_id", &pod)]),
        None
    );
    assert_eq!(gone.calls("RemovePodSandbox", "OK"), 1.0);
    // Counters only go up.
    assert_eq!(gone.calls("RunPodSandbox", "OK"), 1.0);

    // OpenMetrics for a scraper that asks, parsed by its own parser.
    let om = Scrape::take(
        &python,
        &url,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    assert_eq!(om.family_type("caisson_cri_requests"), "counter");
    assert_eq!(om.calls("RunPodSandbox", "OK"), 1.0);

    // Only /metrics is served.
    let other = raw_get(&url.replace("/metrics", "/other"));
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[test]
fn recovered_pods_are_counted_after_a_restart() {
    let python = python_prometheus();
    let mut d = Caissond::start("metrics.address = \"127.0.0.1:0\"");
    d.import_busybox();
    d.import_pause_image();
    let config = d.pod_config("prometheus-recovery");
    let pod = d.run_pod(&config);
    d.create_started_container(&pod, &config, container_config("c", &["sleep", "600"]));
    d.restart_after_sigkill();
    // The log is appended to: the second start's line is the last one.
    let url = wait_until("the restarted endpoint", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&d.log_path).ok()?;
        (log.matches("metrics endpoint ready").count() == 2).then(|| metrics_url_last(&log))
    });
    let s = Scrape::take(&python, &url, "");
    assert_eq!(
        s.get(
            "caisson_recovered_pods_total",
            &[("outcome", "reconnected")]
        ),
        1.0
    );
    assert_eq!(
        s.get("caisson_recovered_pods_total", &[("outcome", "lost")]),
        0.0
    );
    assert_eq!(
        s.get(
            "caisson_recovered_containers_total",
            &[("outcome", "running")]
        ),
        1.0
    );
    assert_eq!(s.pods("ready"), 1.0);
    assert_eq!(s.containers("running"), 1.0);
    assert!(
        s.value("caisson_shim_resident_memory_bytes", &[("pod_id", &pod)])
            .is_some_and(|v| v > 0.0),
        "the recovered pod's shim is measured"
    );
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

/// The URL of the last "metrics endpoint ready" line of `log`.
fn metrics_url_last(log: &str) -> String {
    const MARK: &str = "metrics endpoint ready: ";
    let at = log.rfind(MARK).unwrap() + MARK.len();
    log[at..].split_whitespace().next().unwrap().to_string()
}
