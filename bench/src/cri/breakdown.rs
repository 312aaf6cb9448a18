//! `--phases`: where caissond's pod start time goes. caissond times each
//! phase of RunPodSandbox, CreateContainer and StartContainer into
//! `caisson_cri_phase_duration_seconds{call, phase}` (its `[metrics]`
//! endpoint); the bench scrapes it before and after the timed runs and
//! divides each phase's time by the number of pods started in between.
//! A phase that runs several times per pod (a record saved three times)
//! counts once with its whole time.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};

use super::Result;

/// The histogram caissond times phases into.
const METRIC: &str = "caisson_cri_phase_duration_seconds_sum";

/// A free loopback port for caissond's metrics endpoint.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Seconds spent so far in each (call, phase).
pub type Sums = BTreeMap<(String, String), f64>;

/// Scrapes caissond's `/metrics` on `port` for the phase sums.
pub fn scrape(port: u16) -> Result<Sums> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.") || !text.contains(" 200 ") {
        let status = text.lines().next().unwrap_or_default();
        return Err(format!("scraping caissond's metrics: {status}").into());
    }
    Ok(parse(&text))
}

/// The `METRIC{call="…",phase="…"} value` lines of a scrape.
fn parse(text: &str) -> Sums {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(METRIC)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let label = |name: &str| {
                let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
                let end = labels[start..].find('"')? + start;
                Some(labels[start..end].to_string())
            };
            Some((
                (label("call")?, label("phase")?),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// Milliseconds per pod of each (call, phase) between two scrapes.
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    pub pods: usize,
    pub rows: Vec<(String, String, f64)>,
}

impl Breakdown {
    pub fn between(before: &Sums, after: &Sums, pods: usize) -> Breakdown {
        let rows = after
            .iter()
            .map(|((call, phase), sum)| {
                let spent = sum - before.get(&(call.clone(), phase.clone())).unwrap_or(&0.0);
                (
                    call.clone(),
                    phase.clone(),
                    spent * 1e3 / pods.max(1) as f64,
                )
            })
            .filter(|(_, _, ms)| *ms > 0.0)
            .collect();
        Breakdown { pods, rows }
    }

    /// Milliseconds per pod of `call`'s phases together.
    pub fn total(&self, call: &str) -> f64 {
        self.rows
            .iter()
            .filter(|(c, _, _)| c == call)
            .map(|(_, _, ms)| ms)
            .sum()
    }

    /// The table, each call's phases in decreasing time, against the
    /// call's mean latency as the client saw it (`calls`: name, mean ms).
    pub fn print(&self, calls: &[(&str, f64)]) {
        println!();
        println!(
            "  caissond's phases, ms per pod (mean of {} pods, from caisson_cri_phase_duration_seconds)",
            self.pods
        );
        for (call, mean) in calls {
            let mut rows: Vec<_> = self.rows.iter().filter(|(c, _, _)| c == call).collect();
            rows.sort_by(|a, b| b.2.total_cmp(&a.2));
            for (_, phase, ms) in rows {
                println!("  {call:<16} {phase:<22} {ms:>8.2}");
            }
            let timed = self.total(call);
            println!(
                "  {call:<16} {:<22} {:>8.2}   (the call took {mean:.2} on average: {:.2} outside these phases; \
                 negative where phases overlap)",
                "all phases",
                timed,
                mean - timed
            );
        }
    }

    pub fn json(&self) -> Value {
        let mut out = json!({"pods": self.pods});
        for (call, phase, ms) in &self.rows {
            out["ms_per_pod"][call][phase] = json!(ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_sums_are_read_from_a_scrape_and_divided_per_pod() {
        let scrape = |cgroup: f64, cni: f64| {
            format!(
                "# HELP caisson_cri_phase_duration_seconds Time each phase took.\n\
                 # TYPE caisson_cri_phase_duration_seconds histogram\n\
                 caisson_cri_phase_duration_seconds_sum{{call=\"RunPodSandbox\",phase=\"cgroup\"}} {cgroup}\n\
                 caisson_cri_phase_duration_seconds_count{{call=\"RunPodSandbox\",phase=\"cgroup\"}} 3\n\
                 caisson_cri_phase_duration_seconds_sum{{call=\"RunPodSandbox\",phase=\"cni bridge\"}} {cni}\n\
                 caisson_cri_request_duration_seconds_sum{{method=\"RunPodSandbox\",code=\"OK\"}} 9.0\n"
            )
        };
        let before = parse(&scrape(0.010, 0.0));
        assert_eq!(before.len(), 2);
        let after = parse(&scrape(0.050, 0.120));
        let b = Breakdown::between(&before, &after, 4);
        let ms = |phase: &str| {
            b.rows
                .iter()
                .find(|(_, p, _)| p == phase)
                .map(|(_, _, ms)| (ms * 1000.0).round() / 1000.0)
        };
        assert_eq!(ms("cgroup"), Some(10.0));
        assert_eq!(ms("cni bridge"), Some(30.0));
        assert_eq!((b.total("RunPodSandbox") * 1000.0).round() / 1000.0, 40.0);
    }
}
