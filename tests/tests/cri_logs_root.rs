//! Container logs through caissond: the CRI log format kubelet parses
//! (`<RFC3339Nano> <stdout|stderr> <P|F> <content>`), long lines split into
//! partial records, and ReopenContainerLog after kubelet rotated the file.
//! Needs root.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caisson_tests::daemon::{container_config, wait_until, Caissond};
use k8s_cri::v1 as cri;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    /// Nanoseconds since the epoch.
    at: i128,
    stream: String,
    partial: bool,
    content: String,
}

fn digits(s: &str, what: &str, line: &str) -> i128 {
    assert!(
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "bad {what} {s:?} in {line:?}"
    );
    s.parse().unwrap()
}

/// RFC 3339 with a fraction of 1 to 9 digits (what Go's RFC3339Nano,
/// which kubelet parses with, produces), as nanoseconds since the epoch.
fn parse_rfc3339_nano(ts: &str, line: &str) -> i128 {
    let (date, time) = ts
        .split_once('T')
        .unwrap_or_else(|| panic!("no 'T' in timestamp of {line:?}"));
    let d: Vec<&str> = date.split('-').collect();
    assert!(
        d.len() == 3 && d[0].len() == 4 && d[1].len() == 2 && d[2].len() == 2,
        "bad date {date:?} in {line:?}"
    );
    let (y, m, day) = (
        digits(d[0], "year", line),
        digits(d[1], "month", line),
        digits(d[2], "day", line),
    );
    assert!((1..=12).contains(&m) && (1..=31).contains(&day), "{line:?}");
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let i = time
            .rfind(['+', '-'])
            .unwrap_or_else(|| panic!("no zone in {line:?}"));
        let (c, zone) = time.split_at(i);
        let (h, mi) = zone[1..]
            .split_once(':')
            .unwrap_or_else(|| panic!("bad zone in {line:?}"));
        let secs = digits(h, "zone hours", line) * 3600 + digits(mi, "zone minutes", line) * 60;
        (c, if zone.starts_with('+') { secs } else { -secs })
    };
    let (hms, frac) = clock
        .split_once('.')
        .unwrap_or_else(|| panic!("no fractional seconds in {line:?}"));
    assert!(
        (1..=9).contains(&frac.len()),
        "fraction {frac:?} in {line:?}"
    );
    let t: Vec<&str> = hms.split(':').collect();
    assert!(
        t.len() == 3 && t.iter().all(|p| p.len() == 2),
        "bad time {hms:?} in {line:?}"
    );
    let (h, mi, s) = (
        digits(t[0], "hour", line),
        digits(t[1], "minute", line),
        digits(t[2], "second", line),
    );
    assert!(h < 24 && mi < 60 && s < 61, "{line:?}");
    let nanos = digits(frac, "fraction", line) * 10i128.pow(9 - frac.len() as u32);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + h * 3600 + mi * 60 + s - offset_secs) * 1_000_000_000) + nanos
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Every record of a CRI log file, each line checked against the format.
fn records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends mid-record",
        path.display()
    );
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (ts, stream, tag) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let content = parts
                .next()
                .unwrap_or_else(|| panic!("record without content field: {line:?}"));
            assert!(matches!(stream, "stdout" | "stderr"), "stream in {line:?}");
            assert!(matches!(tag, "P" | "F"), "tag in {line:?}");
            Record {
                at: parse_rfc3339_nano(ts, line),
                stream: stream.into(),
                partial: tag == "P",
                content: content.into(),
            }
        })
        .collect()
}

fn of(records: &[Record], stream: &str) -> Vec<(bool, String)> {
    records
        .iter()
        .filter(|r| r.stream == stream)
        .map(|r| (r.partial, r.content.clone()))
        .collect()
}

fn wait_for_line(path: &Path, content: &str) -> Vec<Record> {
    wait_until(
        &format!("{content:?} in {}", path.display()),
        Duration::from_secs(20),
        || {
            let r = records(path);
            r.iter().any(|r| r.content == content).then_some(r)
        },
    )
}

#[test]
fn log_records_are_cri_formatted_and_long_lines_split() {
    let started = now_ns();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("logs");
    let pod = d.run_pod(&config);
    let mut c = container_config(
        "talker",
        &[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; head -c 40960 /dev/zero | tr '\\0' x; echo; \
             echo err2 >&2; echo '  spaced  out '; echo; echo -n unterminated",
        ],
    );
    c.log_path = "talker/0.log".into();
    let c = d.create_started_container(&pod, &config, c);
    let path = Path::new(&config.log_directory).join("talker/0.log");
    assert_eq!(d.container_status(&c).log_path, path.display().to_string());
    d.wait_exited(&c, Duration::from_secs(20));
    let all = wait_for_line(&path, "unterminated");

    let x = |n: usize| "x".repeat(n);
    assert_eq!(
        of(&all, "stdout"),
        vec![
            (false, "out1".to_string()),
            (true, x(16384)),
            (true, x(16384)),
            (false, x(8192)),
            (false, "  spaced  out ".to_string()),
            (false, String::new()),
            (false, "unterminated".to_string()),
        ]
    );
    assert_eq!(
        of(&all, "stderr"),
        vec![(false, "err1".to_string()), (false, "err2".to_string())]
    );
    let done = now_ns();
    for r in &all {
        assert!(
            r.at >= started - 1_000_000_000 && r.at <= done,
            "timestamp {} outside the test's run ({started}..{done})",
            r.at
        );
    }
    for stream in ["stdout", "stderr"] {
        let times: Vec<i128> = all
            .iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.at)
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{stream}: {times:?}"
        );
    }
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.is_file());
}

#[test]
fn reopen_container_log_starts_a_new_file_after_rotation() {
    reopen_after_rotation("");
}

/// The same through the oci handler's runc: its shim holds the log too.
#[test]
fn reopen_container_log_works_under_runc() {
    caisson_tests::require::program("/usr/sbin/runc", "runc");
    reopen_after_rotation("runc-oci");
}

fn reopen_after_rotation(handler: &str) {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("rotate");
    let pod = d.run_pod_with_handler(&config, handler);
    let mut c = container_config(
        "c",
        &[
            "sh",
            "-c",
            "echo before; mkfifo /tmp/go; echo ready; read x < /tmp/go; \
             echo after; echo after-err >&2; exec sleep 1000",
        ],
    );
    c.log_path = "c/0.log".into();
    let c = d.create_started_container(&pod, &config, c);
    let path = Path::new(&config.log_directory).join("c/0.log");
    wait_for_line(&path, "ready");

    // kubelet rotates: rename, then ReopenContainerLog.
    let rotated = path.with_file_name("0.log.20261122-000000");
    std::fs::rename(&path, &rotated).unwrap();
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: c.clone(),
        }));
    d.ok("ReopenContainerLog", r);
    assert!(path.is_file(), "no new file at {}", path.display());
    // Now let the container write again.
    d.exec(&c, &["sh", "-c", "echo go > /tmp/go"]);
    let new = wait_until(
        "both lines in the new file",
        Duration::from_secs(20),
        || {
            let r = records(&path);
            (r.len() >= 2).then_some(r)
        },
    );
    assert_eq!(new.len(), 2, "{new:?}");
    assert_eq!(of(&new, "stdout"), vec![(false, "after".to_string())]);
    assert_eq!(of(&new, "stderr"), vec![(false, "after-err".to_string())]);
    let old = records(&rotated);
    assert_eq!(
        of(&old, "stdout"),
        vec![(false, "before".to_string()), (false, "ready".to_string())]
    );
    assert!(of(&old, "stderr").is_empty());

    // A stopped container has no log to reopen; an unknown one is NOT_FOUND.
    d.stop_container(&c, 0);
    let r =
        d.rt.block_on(rt.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: c.clone(),
        }));
    let s = r.expect_err("ReopenContainerLog of a stopped container");
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("not running"), "{s:?}");
    let r =
        d.rt.block_on(rt.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: "0123456789abcdef".into(),
        }));
    assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    // Nothing more reached either file after the stop.
    assert_eq!(records(&path).len(), 2);
    assert_eq!(records(&rotated).len(), 2);
}
