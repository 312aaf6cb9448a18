//! The exposition: every family's name, type and HELP line, the values
//! events and a snapshot put in it, and both formats.

use std::collections::BTreeMap;
use std::time::Duration;

use caisson_image::ImageError;

use super::scrape::{encode, Format, ProcessSample, ShimSample, Snapshot};
use super::*;

/// `# TYPE` of each family, and each family's HELP text.
fn families(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(name.into(), ty.into()).is_none(),
                "{name} twice"
            );
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            helps.insert(name.into(), help.into());
        }
    }
    (types, helps)
}

/// The value of the sample written exactly `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn snapshot() -> Snapshot {
    Snapshot {
        handlers: vec!["hardened".into(), "runc".into()],
        pods: vec![
            ("runc".into(), "ready"),
            ("runc".into(), "ready"),
            ("hardened".into(), "notready"),
        ],
        containers: vec![("runc".into(), "running"), ("runc".into(), "exited")],
        shims: vec![ShimSample {
            pod_id: "p1".into(),
            handler: "runc".into(),
            rss_bytes: 4096 * 1024,
        }],
        process: ProcessSample {
            resident_memory_bytes: Some(20 << 20),
            virtual_memory_bytes: Some(100 << 20),
            cpu_seconds: Some(1.5),
            start_time_seconds: Some(1.7e9),
            open_fds: Some(12),
            max_fds: Some(1024),
        },
    }
}

#[test]
fn every_family_has_its_name_type_and_help() {
    let m = Metrics::new();
    m.record_call("RunPodSandbox", tonic::Code::Ok, Duration::from_millis(300));
    m.record_phase("RunPodSandbox", "cgroup".into(), Duration::from_millis(2));
    let text = encode(&m, &snapshot(), Format::Prometheus).unwrap();
    let (types, helps) = families(&text);
    let want = [
        ("caisson_cri_requests_total", "counter"),
        ("caisson_cri_request_duration_seconds", "histogram"),
        ("caisson_cri_phase_duration_seconds", "histogram"),
        ("caisson_image_pulls_total", "counter"),
        ("caisson_image_pull_failures_total", "counter"),
        ("caisson_image_pull_bytes_total", "counter"),
        ("caisson_image_pull_duration_seconds", "histogram"),
        ("caisson_recovered_pods_total", "counter"),
        ("caisson_recovered_containers_total", "counter"),
        ("caisson_streaming_sessions_total", "counter"),
        ("caisson_streaming_sessions_in_flight", "gauge"),
        ("caisson_pods", "gauge"),
        ("caisson_containers", "gauge"),
        ("caisson_shims", "gauge"),
        ("caisson_shim_resident_memory_bytes", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
    ];
    let want_types: BTreeMap<String, String> = want
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(types, want_types, "\n{text}");
    for (name, _) in want {
        let help = &helps[name];
        assert!(help.len() > 10, "{name}: {help:?}");
    }
    // Every sample belongs to a declared family.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "{line}");
    }
    assert!(!text.contains("# EOF"), "Prometheus text has no EOF");
}

#[test]
fn events_and_state_become_values() {
    let m = Metrics::new();
    m.record_call("RunPodSandbox", tonic::Code::Ok, Duration::from_millis(300));
    m.record_call("RunPodSandbox", tonic::Code::Ok, Duration::from_millis(700));
    m.record_call(
        "StartContainer",
        tonic::Code::NotFound,
        Duration::from_micros(500),
    );
    m.record_pull(Ok(1000), Duration::from_secs(2));
    m.record_pull(
        Err(&ImageError::RegistryUnreachable {
            registry: "127.0.0.1:1".into(),
            reason: "refused".into(),
        }),
        Duration::from_millis(5),
    );
    m.recovered_pod("reconnected");
    m.recovered_container("running");
    m.recovered_container("running");
    let exec = m.session("exec", "spdy");
    let text = encode(&m, &snapshot(), Format::Prometheus).unwrap();
    for (series, want) in [
        (
            r#"caisson_cri_requests_total{method="RunPodSandbox",code="OK"}"#,
            2.0,
        ),
        (
            r#"caisson_cri_requests_total{method="StartContainer",code="NotFound"}"#,
            1.0,
        ),
        (
            r#"caisson_cri_request_duration_seconds_count{method="RunPodSandbox",code="OK"}"#,
            2.0,
        ),
        (
            r#"caisson_cri_request_duration_seconds_sum{method="RunPodSandbox",code="OK"}"#,
            1.0,
        ),
        (
            r#"caisson_cri_request_duration_seconds_bucket{method="RunPodSandbox",code="OK",le="0.5"}"#,
            1.0,
        ),
        (
            r#"caisson_cri_request_duration_seconds_bucket{method="RunPodSandbox",code="OK",le="+Inf"}"#,
            2.0,
        ),
        ("caisson_image_pulls_total", 2.0),
        ("caisson_image_pull_bytes_total", 1000.0),
        (
            r#"caisson_image_pull_failures_total{cause="unreachable"}"#,
            1.0,
        ),
        (
            r#"caisson_image_pull_failures_total{cause="not_found"}"#,
            0.0,
        ),
        (
            r#"caisson_image_pull_duration_seconds_count{outcome="failure"}"#,
            1.0,
        ),
        (
            r#"caisson_recovered_pods_total{outcome="reconnected"}"#,
            1.0,
        ),
        (r#"caisson_recovered_pods_total{outcome="lost"}"#, 0.0),
        (
            r#"caisson_recovered_containers_total{outcome="running"}"#,
            2.0,
        ),
        (
            r#"caisson_streaming_sessions_total{kind="exec",protocol="spdy"}"#,
            1.0,
        ),
        (
            r#"caisson_streaming_sessions_in_flight{kind="exec",protocol="spdy"}"#,
            1.0,
        ),
        (r#"caisson_pods{handler="runc",state="ready"}"#, 2.0),
        (r#"caisson_pods{handler="hardened",state="notready"}"#, 1.0),
        (r#"caisson_pods{handler="hardened",state="ready"}"#, 0.0),
        (r#"caisson_containers{handler="runc",state="running"}"#, 1.0),
        (
            r#"caisson_containers{handler="hardened",state="created"}"#,
            0.0,
        ),
        (r#"caisson_shims{handler="runc"}"#, 1.0),
        (r#"caisson_shims{handler="hardened"}"#, 0.0),
        (
            r#"caisson_shim_resident_memory_bytes{pod_id="p1"}"#,
            4194304.0,
        ),
        ("process_resident_memory_bytes", 20971520.0),
        ("process_cpu_seconds_total", 1.5),
        ("process_open_fds", 12.0),
    ] {
        assert_eq!(value(&text, series), want, "{series}");
    }
    drop(exec);
    let text = encode(&m, &snapshot(), Format::Prometheus).unwrap();
    let series = r#"caisson_streaming_sessions_in_flight{kind="exec",protocol="spdy"}"#;
    assert_eq!(value(&text, series), 0.0);
}

#[test]
fn openmetrics_when_asked() {
    assert_eq!(Format::from_accept(""), Format::Prometheus);
    assert_eq!(
        Format::from_accept("text/plain;version=0.0.4"),
        Format::Prometheus
    );
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    assert_eq!(Format::from_accept(accept), Format::OpenMetrics);
    assert!(Format::Prometheus
        .content_type()
        .starts_with("text/plain; version=0.0.4"));
    let text = encode(&Metrics::new(), &Snapshot::default(), Format::OpenMetrics).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(
        text.contains("# TYPE caisson_image_pulls counter\n"),
        "{text}"
    );
}

#[test]
fn codes_are_named_as_grpc_names_them() {
    for (code, name) in [
        (tonic::Code::Ok, "OK"),
        (tonic::Code::Cancelled, "Canceled"),
        (tonic::Code::NotFound, "NotFound"),
        (tonic::Code::InvalidArgument, "InvalidArgument"),
        (tonic::Code::Unavailable, "Unavailable"),
        (tonic::Code::Unauthenticated, "Unauthenticated"),
    ] {
        assert_eq!(code_name(code), name);
    }
}

#[test]
fn every_pull_failure_has_a_listed_cause() {
    let s = String::new;
    for (e, cause) in [
        (ImageError::NotFound(s()), "not_found"),
        (
            ImageError::InvalidReference {
                reference: s(),
                reason: s(),
            },
            "invalid_reference",
        ),
        (
            ImageError::RegistryUnauthorized {
                registry: s(),
                reason: s(),
            },
            "unauthorized",
        ),
        (
            ImageError::RegistryNotTls {
                registry: s(),
                reason: s(),
            },
            "unreachable",
        ),
        (
            ImageError::DigestMismatch {
                what: s(),
                expected: s(),
                actual: s(),
            },
            "integrity",
        ),
        (
            ImageError::io("creating", "/x", std::io::Error::other("full")),
            "storage",
        ),
    ] {
        assert_eq!(pull_failure_cause(&e), cause, "{e}");
        assert!(PULL_FAILURE_CAUSES.contains(&cause));
    }
}

#[test]
fn made_up_methods_share_one_label_past_the_cap() {
    let m = Metrics::new();
    for i in 0..(MAX_METHOD_LABELS + 50) {
        m.record_call(
            &format!("Made{i}"),
            tonic::Code::Unimplemented,
            Duration::ZERO,
        );
    }
    // A method seen before the cap keeps its own label.
    m.record_call("Made0", tonic::Code::Ok, Duration::ZERO);
    let seen = m.methods.lock().unwrap().len();
    assert_eq!(seen, MAX_METHOD_LABELS);
    let other = CallLabels {
        method: "other".into(),
        code: code_name(tonic::Code::Unimplemented),
    };
    assert_eq!(m.cri_requests.get_or_create(&other).get(), 50);
}
