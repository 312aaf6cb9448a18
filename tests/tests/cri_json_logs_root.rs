//! `[log] format = "json"`: every line caissond logs is one JSON object,
//! and the events of a CRI call carry the call's `cri` span (method,
//! pod_id, container_id). Needs root.

use caisson_tests::daemon::{container_config, Caissond};
use k8s_cri::v1 as cri;
use serde_json::Value;

/// Every line of the log, parsed; a line that is not a JSON object fails
/// the test naming it.
fn json_lines(d: &Caissond) -> Vec<Value> {
    let text = std::fs::read_to_string(&d.log_path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => v,
            _ => panic!("log line {} is not a JSON object: {line:?}", i + 1),
        })
        .collect()
}

/// The fields of the innermost `cri` span the event ran in (`span`, else
/// the nearest in `spans`).
fn cri_span(event: &Value) -> Option<&Value> {
    let is_cri = |s: &&Value| s["name"] == "cri";
    std::iter::once(&event["span"])
        .filter(is_cri)
        .chain(
            event["spans"]
                .as_array()
                .into_iter()
                .flat_map(|s| s.iter().rev())
                .filter(is_cri),
        )
        .next()
}

#[test]
fn json_log_lines_carry_the_calls_span() {
    let d = Caissond::start_with_log_format("", "json");
    d.import_busybox();
    let config = d.pod_config("jsonlogs");
    let pod = d.run_pod(&config);
    let container =
        d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    // A CreateContainer that fails: the image is not there.
    let mut rt = d.runtime();
    let mut missing = container_config("missing", &["true"]);
    missing.image = Some(cri::ImageSpec {
        image: "example.invalid/not-here:1".into(),
        ..Default::default()
    });
    let failed =
        d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(missing),
            sandbox_config: Some(config.clone()),
        }));
    let status = failed.expect_err("CreateContainer of a missing image");
    d.stop_container(&container, 0);

    let lines = json_lines(&d);
    assert!(lines.len() > 10, "only {} log lines", lines.len());
    for l in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(l.get(key).is_some(), "no {key:?} in {l}");
        }
    }

    // The state change, inside CreateContainer's span: the span names the
    // pod and, once made, the container.
    let created = lines
        .iter()
        .find(|l| l["message"] == "container created" && l["container_id"] == container)
        .unwrap_or_else(|| panic!("no \"container created\" line for {container}"));
    let span = cri_span(created).unwrap_or_else(|| panic!("no cri span on {created}"));
    assert_eq!(span["method"], "CreateContainer", "{created}");
    assert_eq!(span["pod_id"], pod, "{created}");
    assert_eq!(span["container_id"], container, "{created}");
    assert_eq!(created["pod_id"], pod, "{created}");

    // A call that names the container in its request carries it in its span.
    let started = lines
        .iter()
        .find(|l| l["message"] == "container started" && l["container_id"] == container)
        .unwrap_or_else(|| panic!("no \"container started\" line for {container}"));
    let span = cri_span(started).unwrap_or_else(|| panic!("no cri span on {started}"));
    assert_eq!(span["method"], "StartContainer", "{started}");
    assert_eq!(span["container_id"], container, "{started}");

    // The failed call's line from the call log: method, pod and message.
    let failure = lines
        .iter()
        .find(|l| {
            l["method"] == "CreateContainer"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("CreateContainer failed:"))
        })
        .unwrap_or_else(|| panic!("no failure line for CreateContainer"));
    assert_eq!(failure["pod_id"], pod, "{failure}");
    assert_eq!(failure["code"], format!("{:?}", status.code()), "{failure}");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains(status.message()),
        "{failure} vs {}",
        status.message()
    );
    assert!(
        matches!(failure["level"].as_str(), Some("WARN" | "ERROR")),
        "{failure}"
    );
    let span = cri_span(failure).unwrap_or_else(|| panic!("no cri span on {failure}"));
    assert_eq!(span["pod_id"], pod, "{failure}");
    // Shown with --nocapture, as samples of the format.
    eprintln!("{created}\n{started}\n{failure}");
}
