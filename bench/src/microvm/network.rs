//! TCP throughput between pods on a CNI bridge of the bench's own: two
//! native pods, and each kernel's microvm pod with a native pod, both ways.
//!
//! Every pod runs a source: busybox `nc -l -p 5001 -e dd if=/dev/zero
//! bs=65536` in a loop (dd writes into the accepted socket itself). A run
//! of `src → dst` starts a container in `dst` that connects to `src` and
//! hands the socket to `dd of=/dev/null bs=65536`, waits until bytes flow,
//! lets them flow for [`WARM`], then counts the bytes TCP moved over
//! [`WINDOW`] at the connection's native end (`ss -ti` in that pod's
//! network namespace: `bytes_received` at a native receiver, `bytes_acked`
//! at a native sender: payload the peer's kernel has acknowledged). The
//! count is the kernel's, so the execs and the connection set-up inside a
//! TCG guest are outside it. Then the container is stopped and removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use caisson_tests::cni::TestNetwork;
use k8s_cri::v1 as cri;
use serde_json::{json, Value};

use super::pod_config;
use crate::caissond::Caissond;
use crate::cri::{workload, Result};
use crate::measure::{percentile, ratio};

/// The network's name (host-local's dir), its bridge and its /24.
const NETWORK: &str = "caisson-bench-vmnet";
const BRIDGE: &str = "cbvmnet0";
const PREFIX: &str = "10.231.250";
const PORT: u16 = 5001;
/// Bytes flow this long before the window opens (TCP's slow start).
const WARM: Duration = Duration::from_secs(1);
/// How long each run counts.
pub const WINDOW: Duration = Duration::from_secs(3);
/// How long a run waits for the first bytes.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// The bench's network: what the plugins leave on the host (the bridge,
/// host-local's allocations, portmap chains on its subnet) goes when it is
/// dropped, after the daemon's. Leftovers of an earlier run go now.
pub fn network() -> Result<TestNetwork> {
    crate::fixture("the CNI network", || {
        TestNetwork::new(NETWORK, BRIDGE, PREFIX)
    })
}

/// Puts the bridge + host-local conflist in caissond's CNI dir: pods run
/// from now on get an IP on it (caissond reads the dir on every pod).
pub fn install(net: &TestNetwork, d: &Caissond) -> Result<()> {
    let dir = crate::caissond::cni_conf_dir(d.dir());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("10-{NETWORK}.conflist")), net.conflist(""))?;
    Ok(())
}

/// A pod of the network phase, running its source.
pub struct Pod {
    /// `native`, or the kernel's label.
    pub label: String,
    id: String,
    /// Its source container.
    source: String,
    config: cri::PodSandboxConfig,
    ip: String,
    /// Its network namespace, for a native pod (a microvm pod's sockets
    /// are in its guest).
    netns: Option<PathBuf>,
}

/// busybox running `command` as container `name` (log `<name>.log`).
fn container(name: &str, command: &str) -> cri::ContainerConfig {
    let mut config = workload::container_running(true, &["sh", "-c", command]);
    if let Some(metadata) = config.metadata.as_mut() {
        metadata.name = name.into();
    }
    config.log_path = format!("{name}.log");
    config
}

fn source_command() -> String {
    format!("while :; do nc -l -p {PORT} -e dd if=/dev/zero bs=65536 2>/dev/null; done")
}

/// Runs pod `name` under `handler` with its source, labelled `label`.
pub fn start_pod(d: &Caissond, name: &str, handler: &str, label: &str) -> Result<Pod> {
    let config = pod_config(d, name)?;
    let (id, source) = d.run_pod_with_container(
        config.clone(),
        handler,
        container("source", &source_command()),
    )?;
    let request = cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.clone(),
        verbose: false,
    };
    let status = d.call("PodSandboxStatus", |mut c| async move {
        c.pod_sandbox_status(request).await
    })?;
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .filter(|ip| ip.starts_with(&format!("{PREFIX}.")))
        .ok_or_else(|| format!("pod {name} has no IP on {PREFIX}.0/24"))?;
    let netns = match handler {
        "runc" => Some(netns_with_ip(d, &ip)?),
        _ => None,
    };
    Ok(Pod {
        label: label.into(),
        id,
        source,
        config,
        ip,
        netns,
    })
}

impl Pod {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The addresses, routes and listening sockets its source sees, for
    /// an error.
    fn network_seen(&self, d: &Caissond) -> String {
        let request = cri::ExecSyncRequest {
            container_id: self.source.clone(),
            cmd: ["sh", "-c", "ip -o addr; ip route; netstat -tln"]
                .map(String::from)
                .to_vec(),
            timeout: 60,
        };
        let seen = d
            .call(
                "ExecSync",
                |mut c| async move { c.exec_sync(request).await },
            )
            .map(|out| String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned())
            .unwrap_or_else(|e| e.to_string());
        format!("in pod {} ({}):\n{seen}", self.label, self.ip)
    }

    /// The end of container `name`'s log, for an error.
    fn log_tail(&self, name: &str) -> String {
        let path = Path::new(&self.config.log_directory).join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| e.to_string());
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        format!(
            "{} of pod {} ({}):\n{tail}",
            path.display(),
            self.label,
            self.ip
        )
    }
}

/// The pinned network namespace (caissond's `run/netns/`) holding `ip`.
fn netns_with_ip(d: &Caissond, ip: &str) -> Result<PathBuf> {
    let dir = d.dir().join("run/netns");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for path in entries.flatten().map(|e| e.path()) {
        let out = in_netns(&path, &["ip", "-4", "-o", "addr", "show"])?;
        if out.contains(&format!("inet {ip}/")) {
            return Ok(path);
        }
    }
    Err(format!("no network namespace in {} holds {ip}", dir.display()).into())
}

fn in_netns(netns: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .map_err(|e| format!("nsenter (util-linux): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} in {}: {}",
            netns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Each connection in `ss -tinH state established` output ("local peer"
/// from its first line) with the value of `field:` (`bytes_received`,
/// `bytes_acked`) on its indented second line.
fn ss_connections(text: &str, field: &str) -> Vec<(String, u64)> {
    let key = format!("{field}:");
    let mut connections = Vec::new();
    let mut current = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let words: Vec<&str> = line.split_whitespace().collect();
            current = (words.len() >= 2).then(|| words[words.len() - 2..].join(" "));
            continue;
        }
        let value = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&key)?.parse().ok());
        if let (Some(connection), Some(value)) = (current.take(), value) {
            connections.push((connection, value));
        }
    }
    connections
}

/// The connection's native end: the namespace to read and the field.
struct NativeEnd<'a> {
    netns: &'a Path,
    peer: &'a str,
    field: &'static str,
}

impl NativeEnd<'_> {
    /// The established connections with the peer on [`PORT`] and their
    /// byte counts, and when they were read.
    fn sample(&self) -> Result<(Vec<(String, u64)>, Instant)> {
        let filter = format!(
            "( sport = :{PORT} or dport = :{PORT} ) and dst {}",
            self.peer
        );
        let before = Instant::now();
        let out = in_netns(
            self.netns,
            &["ss", "-tinH", "state", "established", &filter],
        )?;
        let at = before + before.elapsed() / 2;
        Ok((ss_connections(&out, self.field), at))
    }

    /// The byte count of `connection` and when it was read.
    fn bytes_of(&self, connection: &str) -> Result<(u64, Instant)> {
        let (connections, at) = self.sample()?;
        let bytes = connections
            .into_iter()
            .find(|(c, _)| c == connection)
            .map(|(_, bytes)| bytes)
            .ok_or_else(|| format!("the connection {connection} went away"))?;
        Ok((bytes, at))
    }
}

/// One run of `src → dst`: payload MB/s over [`WINDOW`].
fn transfer(d: &Caissond, src: &Pod, dst: &Pod, run: usize) -> Result<f64> {
    let end = match (&dst.netns, &src.netns) {
        (Some(netns), _) => NativeEnd {
            netns,
            peer: &src.ip,
            field: "bytes_received",
        },
        (None, Some(netns)) => NativeEnd {
            netns,
            peer: &dst.ip,
            field: "bytes_acked",
        },
        (None, None) => return Err("a transfer needs a native end".into()),
    };
    // A connection of an earlier run may linger: this run's is the new one.
    let earlier: Vec<String> = end.sample()?.0.into_iter().map(|(c, _)| c).collect();
    if !earlier.is_empty() {
        eprintln!("tcp: earlier connections still established: {earlier:?}");
    }
    let receive = format!("nc {} {PORT} -e dd of=/dev/null bs=65536", src.ip);
    let sink = match &src.netns {
        // A native source: once it listens, the sink is one process (nc,
        // then dd), the container's init, so stopping it closes the socket.
        Some(netns) => {
            wait_for_listener(netns).map_err(|e| format!("{}: {e}", src.label))?;
            container(&format!("sink-{run}"), &format!("exec {receive}"))
        }
        // A guest's source may take a while to listen again: retry.
        None => container(
            &format!("sink-{run}"),
            &format!("until {receive}; do sleep 0.2; done"),
        ),
    };
    let request = cri::CreateContainerRequest {
        pod_sandbox_id: dst.id.clone(),
        config: Some(sink),
        sandbox_config: Some(dst.config.clone()),
    };
    let ctr = d
        .call("CreateContainer", |mut c| async move {
            c.create_container(request).await
        })?
        .container_id;
    let id = ctr.clone();
    d.call("StartContainer", |mut c| async move {
        c.start_container(cri::StartContainerRequest { container_id: id })
            .await
    })?;
    let measured = measure(&end, &earlier);
    let id = ctr.clone();
    d.call("StopContainer", |mut c| async move {
        c.stop_container(cri::StopContainerRequest {
            container_id: id,
            timeout: 0,
        })
        .await
    })?;
    d.call("RemoveContainer", |mut c| async move {
        c.remove_container(cri::RemoveContainerRequest { container_id: ctr })
            .await
    })?;
    measured.map_err(|e| {
        format!(
            "{} -> {}: {e}\n{}\n{}\n{}\n{}",
            src.label,
            dst.label,
            src.log_tail("source"),
            dst.log_tail(&format!("sink-{run}")),
            src.network_seen(d),
            dst.network_seen(d),
        )
        .into()
    })
}

/// Waits until the source in the namespace at `netns` listens again (its
/// connection of the last run is over).
fn wait_for_listener(netns: &Path) -> Result<()> {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let filter = format!("sport = :{PORT}");
    while in_netns(netns, &["ss", "-tlnH", &filter])?
        .trim()
        .is_empty()
    {
        if Instant::now() > deadline {
            let established = in_netns(netns, &["ss", "-tnH", "state", "established"])?;
            return Err(format!(
                "its source does not listen again within {CONNECT_DEADLINE:?}; \
                 established: {established}"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The rate of the one connection not in `earlier` once bytes flow on it.
fn measure(end: &NativeEnd, earlier: &[String]) -> Result<f64> {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let connection = loop {
        let (connections, _) = end.sample()?;
        let new: Vec<_> = connections
            .into_iter()
            .filter(|(c, _)| !earlier.contains(c))
            .collect();
        match &new[..] {
            [(c, bytes)] if *bytes > 0 => break c.clone(),
            [_, _, ..] => return Err(format!("more than one new connection: {new:?}").into()),
            _ if Instant::now() > deadline => {
                return Err(format!("no bytes within {CONNECT_DEADLINE:?}").into())
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // The window, not a wait for an event: the rate is what it measures.
    std::thread::sleep(WARM);
    let (b0, t0) = end.bytes_of(&connection)?;
    std::thread::sleep(WINDOW);
    let (b1, t1) = end.bytes_of(&connection)?;
    Ok(crate::measure::mb_per_s(b1.saturating_sub(b0), t1 - t0))
}

/// One direction between two pods: its runs' MB/s.
#[derive(Debug, Clone, Default)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub runs: Vec<f64>,
}

impl Pair {
    pub fn p50(&self) -> f64 {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 50.0)
    }

    pub fn range(&self) -> (f64, f64) {
        let min = self.runs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.runs.iter().copied().fold(0.0, f64::max);
        (min, max)
    }

    pub fn json(&self, native_p50: f64) -> Value {
        json!({
            "from": self.from,
            "to": self.to,
            "runs_mb_per_s": self.runs,
            "p50_mb_per_s": self.p50(),
            "p50_over_native": ratio(self.p50(), native_p50),
        })
    }
}

/// Runs `runs` transfers of every pair, round-robin: native `a → b`, then
/// for each microvm pod `vm → b` and `a → vm`. The first pair is the
/// native one, the ratios' base.
pub fn throughput(d: &Caissond, a: &Pod, b: &Pod, vms: &[Pod], runs: usize) -> Result<Vec<Pair>> {
    let mut ends = vec![(a, b)];
    for vm in vms {
        ends.extend([(vm, b), (a, vm)]);
    }
    let mut pairs: Vec<Pair> = ends
        .iter()
        .map(|(src, dst)| Pair {
            from: src.label.clone(),
            to: dst.label.clone(),
            runs: Vec::new(),
        })
        .collect();
    for run in 0..runs {
        for (pair, (src, dst)) in pairs.iter_mut().zip(&ends) {
            let mb_per_s = transfer(d, src, dst, run)?;
            eprintln!(
                "tcp {} -> {}: run {}/{runs}: {mb_per_s:.1} MB/s",
                pair.from,
                pair.to,
                run + 1
            );
            pair.runs.push(mb_per_s);
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_connections_and_byte_counts_from_ss() {
        let one = "0 0 10.231.250.3:41234 10.231.250.2:5001\n\t cubic wscale:7,7 rto:204 \
                   bytes_sent:120 bytes_acked:121 bytes_received:73400320 segs_out:9 \
                   lastsnd:8 lastack:0\n";
        let two = "0      0      [::ffff:10.231.250.2]:5001  [::ffff:10.231.250.4]:43838\n\t \
                   bbr bytes_sent:9 bytes_acked:7\n";
        let a = "10.231.250.3:41234 10.231.250.2:5001";
        let b = "[::ffff:10.231.250.2]:5001 [::ffff:10.231.250.4]:43838";
        let both = format!("{one}{two}");
        type Connections<'a> = &'a [(&'a str, u64)];
        let cases: [(&str, &str, Connections); 5] = [
            (one, "bytes_received", &[(a, 73400320)]),
            (one, "bytes_acked", &[(a, 121)]),
            ("", "bytes_received", &[]),
            (&both, "bytes_acked", &[(a, 121), (b, 7)]),
            (&both, "bytes_received", &[(a, 73400320)]),
        ];
        for (text, field, want) in cases {
            let want: Vec<(String, u64)> = want.iter().map(|(c, v)| (c.to_string(), *v)).collect();
            assert_eq!(ss_connections(text, field), want, "{field} in {text:?}");
        }
    }
}
