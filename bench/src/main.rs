//! `caisson-bench`: side-by-side benchmarks of Caisson against the tools of
//! the containerd/runc world, reported as ratios.
//!
//! * [`image_import`]: OCI archive import + unpack, against
//!   `skopeo copy` + `umoci unpack`.
//! * [`synthetic`]: the deterministic image it imports.
//! * [`shim`]: a pod's shim, containerd-shim-caisson-v2 against
//!   containerd-shim-runc-v2: container create+start latency and memory.
//! * [`cri`]: the node runtime through CRI, caissond against containerd 1.6 +
//!   runc: pod + container start/stop latency, daemon and per-pod memory.
//! * [`hardened`]: the hardened backend against native and runc (via the
//!   oci backend): syscall cost, a tar workload, pod start, memory per pod,
//!   and the share of the syscall table the allow-list denies.
//! * [`pull`]: CRI PullImage of the synthetic image from a local registry,
//!   caissond against containerd 1.6's CRI plugin: time, CPU, peak RSS.
//! * [`streaming`]: CRI Exec and PortForward through each daemon's
//!   streaming server over SPDY/3.1, caissond against containerd 1.6: exec
//!   round trip latency, port-forward throughput.
//! * [`checkpoint`]: CRI CheckpointContainer and restore through caissond,
//!   for a container holding touched memory: time and archive size.
//! * [`microvm`]: the microvm handler (a QEMU VM per pod) against native in
//!   one caissond, for each guest kernel: pod start split into VM boot and
//!   Caisson's own work, QEMU and shim memory per idle pod, pod to pod TCP
//!   throughput, beside Kata's published figures.
//! * [`measure`]: wall/CPU timing, min and median.
//! * [`caissond`]: the release caissond those benchmarks start, configure
//!   and clean up after; [`daemon`]: any CRI daemon process they spawn;
//!   [`host`]: the mounts and cgroups they leave, and their removal.

mod caissond;
mod checkpoint;
mod cri;
mod daemon;
mod hardened;
mod host;
mod image_import;
mod measure;
mod microvm;
mod pull;
mod shim;
mod streaming;
mod synthetic;

use std::path::PathBuf;
use std::process::ExitCode;

/// Runs a fixture builder of `caisson_tests` (which panics with what to
/// build or install) and turns its panic into an error: "{what}: {reason}".
fn fixture<T>(what: &str, build: impl FnOnce() -> T) -> Result<T, Box<dyn std::error::Error>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)).map_err(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{what}: {reason}").into()
    })
}

const USAGE: &str = "\
usage: caisson-bench <benchmark> [options]

benchmarks:
  image-import   import + unpack an OCI archive: caisson vs skopeo copy + umoci unpack
      --size-mb N      file content of the synthetic image, in MB (default 100)
      --runs N         timed runs of each side, after one warm-up (default 3)
      --work-dir DIR   where a temporary bench dir is made (default /var/tmp)
      --json FILE      also write the results as JSON
  shim           a pod's shim: containerd-shim-caisson-v2 vs containerd-shim-runc-v2
                 (container create+start latency, shim and pause memory; needs root)
      --runs N         timed containers in each pod, after one warm-up (default 20)
      --node-pods N    N other pods' mounts on the node (3 each), and a third side:
                       Caisson's shim with every build seeing every pod's mounts
      --json FILE      also write the results as JSON
  cri            the node runtime through CRI: caissond vs containerd 1.6 + runc (cgroupfs)
                 (pod + container start and teardown latency, daemon and per-pod memory;
                 needs root)
      --runs N         timed pods on each daemon, after one warm-up (default 20)
      --pods N         pods running at once for the memory reading (default 10)
      --cni            pods on a CNI bridge (bridge, host-local, portmap, loopback from
                       /usr/lib/cni; the same conflist on both) instead of the host network
      --phases         where caissond's time goes: its per-phase times (cgroup, netns, each
                       CNI plugin, shim, pause and task create/start, rootfs, spec, records)
                       per pod, from its metrics endpoint
      --burst N        also start N pods at once on each daemon: time to all running,
                       p50/p99 per pod
      --burst-rounds K K bursts on each daemon, alternating (ABBA); each figure is the
                       median over the rounds, and each round's ratio is listed (default 1)
      --density N      memory with N pods (as --pods N), each daemon's CPU over 10 s
                       with them running and idle, and 10 ListContainerStats calls over
                       them (kubelet's stats loop): latency and host CPU per call
      --json FILE      also write the results as JSON
  hardened       the hardened handler vs native vs runc through the oci handler, in one
                 caissond: getpid and open/read/close loops and a busybox tar, timed
                 inside the containers; pod start latency; Pss per pod; the share of
                 the x86-64 syscall table the allow-list denies (needs root, runc)
      --runs N         timed pod starts per handler, after one warm-up (default 20)
      --pods N         pods per handler for the memory reading (default 5)
      --reps N         repetitions of each in-container benchmark (default 5)
      --phases         caissond's phase timings per handler around each timed start
      --json FILE      also write the results as JSON
  pull           CRI PullImage of the synthetic image from a local docker-registry:
                 caissond vs containerd 1.6's CRI plugin (time, daemon CPU, peak RSS;
                 needs root)
      --size-mb N      file content of the synthetic image, in MB (default 100)
      --runs N         timed pulls on each daemon, after one warm-up (default 3)
      --work-dir DIR   where a temporary bench dir is made (default /var/tmp)
      --json FILE      also write the results as JSON
  streaming      CRI Exec and PortForward over SPDY/3.1: caissond vs containerd 1.6's CRI
                 plugin (exec round trip of `true`, p50/p99; port-forward throughput of a
                 file served by busybox httpd in a host-network pod; needs root)
      --runs N         timed exec round trips on each daemon, after 5 warm-ups (default 50)
      --forwards N     timed port-forwards of each kind on each daemon, after one
                       warm-up (default 5)
      --size-mb N      size of the forwarded file, in MB (default 100)
      --json FILE      also write the results as JSON
  checkpoint     CRI CheckpointContainer and restore (CreateContainer from the archive +
                 StartContainer) through caissond of a busybox container holding touched
                 memory: time, archive size (needs root and `make criu`)
      --runs N         checkpoints and restores (default 3)
      --mem-mb N       memory the container touches, in MiB (default 64)
      --json FILE      also write the results as JSON
  microvm        the microvm handler (a QEMU VM per pod) vs native, in one caissond: pod +
                 container start p50/p90 split into VM boot (QEMU spawn to agent ready) and
                 Caisson's own work; VmRSS and Pss of QEMU and shim per idle pod; pod to pod
                 TCP throughput; for each guest kernel; beside Kata's published figures
                 (needs root, `make microvm-guest`)
      --runs N         timed pod starts per handler, after one warm-up (default 10)
      --pods N         microvm pods per kernel for the memory reading (default 3)
      --kernels LIST   guest kernels, a handler and a column each, comma-separated: NAME
                       (`default`: /var/lib/caisson/microvm/vmlinux, another: vmlinux-NAME
                       there) or LABEL=PATH (default: default,debian)
      --net-runs N     TCP throughput on a CNI bridge of the bench's own (10.231.250.0/24):
                       native -> native, microvm -> native, native -> microvm, N runs of
                       3 s each (default 5; 0: none)
      --json FILE      also write the results as JSON
";

/// A benchmark's options from its command line: `set` handles one flag,
/// taking its value (if it has one) from `value`.
fn parse_options<O: Default>(
    mut args: impl Iterator<Item = String>,
    mut set: impl FnMut(&mut O, &str, &mut dyn FnMut() -> Result<String, String>) -> Result<(), String>,
) -> Result<O, String> {
    let mut opts = O::default();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        set(&mut opts, &flag, &mut value)?;
    }
    Ok(opts)
}

/// A flag's value as a number.
fn number<T: std::str::FromStr>(flag: &str, value: String) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| format!("{flag}: {e}"))
}

fn unknown(flag: &str) -> Result<(), String> {
    Err(format!("unknown option {flag}"))
}

fn parse_image_import(args: impl Iterator<Item = String>) -> Result<image_import::Options, String> {
    parse_options(args, |opts: &mut image_import::Options, flag, value| {
        match flag {
            "--size-mb" => opts.size_mb = number(flag, value()?)?,
            "--runs" => opts.runs = number(flag, value()?)?,
            "--work-dir" => opts.work_dir = Some(PathBuf::from(value()?)),
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            other => return unknown(other),
        }
        Ok(())
    })
}

fn parse_shim(args: impl Iterator<Item = String>) -> Result<shim::Options, String> {
    parse_options(args, |opts: &mut shim::Options, flag, value| {
        match flag {
            "--runs" => opts.runs = number(flag, value()?)?,
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            "--node-pods" => opts.node_pods = number(flag, value()?)?,
            other => return unknown(other),
        }
        Ok(())
    })
}

fn parse_cri(args: impl Iterator<Item = String>) -> Result<cri::Options, String> {
    parse_options(args, |opts: &mut cri::Options, flag, value| {
        match flag {
            "--runs" => opts.runs = number(flag, value()?)?,
            "--pods" => opts.pods = number(flag, value()?)?,
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            "--cni" => opts.cni = true,
            "--phases" => opts.phases = true,
            "--burst" => opts.burst = number(flag, value()?)?,
            "--burst-rounds" => opts.burst_rounds = number(flag, value()?)?,
            "--density" => {
                opts.pods = number(flag, value()?)?;
                opts.idle_cpu_window = Some(std::time::Duration::from_secs(10));
            }
            other => return unknown(other),
        }
        Ok(())
    })
}

fn parse_hardened(args: impl Iterator<Item = String>) -> Result<hardened::Options, String> {
    parse_options(args, |opts: &mut hardened::Options, flag, value| {
        match flag {
            "--runs" => opts.runs = number(flag, value()?)?,
            "--pods" => opts.pods = number(flag, value()?)?,
            "--reps" => opts.reps = number(flag, value()?)?,
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            "--phases" => opts.phases = true,
            other => return unknown(other),
        }
        Ok(())
    })
}

fn parse_pull(args: impl Iterator<Item = String>) -> Result<pull::Options, String> {
    parse_options(args, |opts: &mut pull::Options, flag, value| {
        match flag {
            "--size-mb" => opts.size_mb = number(flag, value()?)?,
            "--runs" => opts.runs = number(flag, value()?)?,
            "--work-dir" => opts.work_dir = Some(PathBuf::from(value()?)),
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            other => return unknown(other),
        }
        Ok(())
    })
}

fn parse_streaming(args: impl Iterator<Item = String>) -> Result<streaming::Options, String> {
    parse_options(args, |opts: &mut streaming::Options, flag, value| {
        match flag {
            "--runs" => opts.runs = number(flag, value()?)?,
            "--forwards" => opts.forwards = number(flag, value()?)?,
            "--size-mb" => opts.size_mb = number(flag, value()?)?,
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            other => return unknown(other),
        }
        Ok(())
    })
}

fn parse_checkpoint(args: impl Iterator<Item = String>) -> Result<checkpoint::Options, String> {
    parse_options(args, |opts: &mut checkpoint::Options, flag, value| {
        match flag {
            "--runs" => opts.runs = number(flag, value()?)?,
            "--mem-mb" => opts.mem_mb = number(flag, value()?)?,
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            other => return unknown(other),
        }
        Ok(())
    })
}

fn parse_microvm(args: impl Iterator<Item = String>) -> Result<microvm::Options, String> {
    parse_options(args, |opts: &mut microvm::Options, flag, value| {
        match flag {
            "--runs" => opts.runs = number(flag, value()?)?,
            "--pods" => opts.pods = number(flag, value()?)?,
            "--kernels" => opts.kernels = value()?.split(',').map(String::from).collect(),
            "--net-runs" => opts.net_runs = number(flag, value()?)?,
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            other => return unknown(other),
        }
        Ok(())
    })
}

/// Runs a benchmark with its parsed options; a command-line error prints
/// the usage and exits with 2.
fn run<O>(
    options: Result<O, String>,
    bench: impl FnOnce(&O) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Result<(), Box<dyn std::error::Error>>, ExitCode> {
    match options {
        Ok(opts) => Ok(bench(&opts)),
        Err(e) => {
            eprintln!("caisson-bench: {e}\n\n{USAGE}");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let ran = match args.next().as_deref() {
        Some("image-import") => run(parse_image_import(args), image_import::bench),
        Some("shim") => run(parse_shim(args), shim::bench),
        Some("cri") => run(parse_cri(args), cri::bench),
        Some("hardened") => run(parse_hardened(args), hardened::bench),
        Some("pull") => run(parse_pull(args), pull::bench),
        Some("streaming") => run(parse_streaming(args), streaming::bench),
        Some("checkpoint") => run(parse_checkpoint(args), checkpoint::bench),
        Some("microvm") => run(parse_microvm(args), microvm::bench),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match ran {
        Ok(result) => result,
        Err(usage_error) => return usage_error,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caisson-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<image_import::Options, String> {
        parse_image_import(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_image_import_options() {
        let opts = parse(&["--size-mb", "20", "--runs", "5", "--json", "out.json"]).unwrap();
        assert_eq!((opts.size_mb, opts.runs), (20, 5));
        assert_eq!(opts.json, Some(PathBuf::from("out.json")));
        assert_eq!(opts.work_dir, None);

        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.size_mb, defaults.runs), (100, 3));

        for bad in [&["--runs"][..], &["--runs", "x"], &["--frobnicate"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_shim_options() {
        let parse = |args: &[&str]| parse_shim(args.iter().map(|s| s.to_string()));
        let opts = parse(&["--runs", "5", "--json", "shim.json"]).unwrap();
        assert_eq!(opts.runs, 5);
        assert_eq!(opts.json, Some(PathBuf::from("shim.json")));
        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.runs, defaults.json), (20, None));
        for bad in [&["--runs"][..], &["--runs", "x"], &["--size-mb", "1"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_hardened_options() {
        let parse = |args: &[&str]| parse_hardened(args.iter().map(|s| s.to_string()));
        let opts = parse(&["--runs", "5", "--pods", "2", "--reps", "3"]).unwrap();
        assert_eq!((opts.runs, opts.pods, opts.reps), (5, 2, 3));
        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.runs, defaults.pods, defaults.reps), (20, 5, 5));
        assert!(!defaults.phases);
        assert!(parse(&["--phases"]).unwrap().phases);
        for bad in [&["--reps"][..], &["--pods", "x"], &["--cni"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_microvm_options() {
        let parse = |args: &[&str]| parse_microvm(args.iter().map(|s| s.to_string()));
        let opts = parse(&["--runs", "5", "--pods", "2", "--json", "vm.json"]).unwrap();
        assert_eq!((opts.runs, opts.pods), (5, 2));
        assert_eq!(opts.json, Some(PathBuf::from("vm.json")));
        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.runs, defaults.pods, defaults.json), (10, 3, None));
        assert_eq!(
            (defaults.kernels.join(","), defaults.net_runs),
            ("default,debian".into(), 5)
        );
        let opts = parse(&["--kernels", "debian,mine=/k", "--net-runs", "0"]).unwrap();
        assert_eq!(
            (opts.kernels.join(" "), opts.net_runs),
            ("debian mine=/k".into(), 0)
        );
        for bad in [
            &["--pods"][..],
            &["--runs", "x"],
            &["--reps", "1"],
            &["--kernels"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_pull_options() {
        let parse = |args: &[&str]| parse_pull(args.iter().map(|s| s.to_string()));
        let opts = parse(&["--size-mb", "20", "--runs", "2", "--json", "p.json"]).unwrap();
        assert_eq!((opts.size_mb, opts.runs), (20, 2));
        assert_eq!(opts.json, Some(PathBuf::from("p.json")));
        let defaults = parse(&[]).unwrap();
        assert_eq!(
            (defaults.size_mb, defaults.runs, defaults.json),
            (100, 3, None)
        );
        for bad in [&["--runs"][..], &["--runs", "x"], &["--pods", "1"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_cri_options() {
        let parse = |args: &[&str]| parse_cri(args.iter().map(|s| s.to_string()));
        let opts = parse(&["--runs", "5", "--pods", "3", "--json", "cri.json"]).unwrap();
        assert_eq!((opts.runs, opts.pods, opts.cni), (5, 3, false));
        assert!(parse(&["--cni"]).unwrap().cni);
        assert_eq!(opts.json, Some(PathBuf::from("cri.json")));
        let burst = parse(&["--burst", "50", "--burst-rounds", "3"]).unwrap();
        assert_eq!((burst.burst, burst.burst_rounds), (50, 3));
        assert_eq!(opts.burst_rounds, 1);
        let defaults = parse(&[]).unwrap();
        assert_eq!(
            (defaults.runs, defaults.pods, defaults.json),
            (20, 10, None)
        );
        for bad in [&["--pods"][..], &["--pods", "x"], &["--size-mb", "1"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_streaming_options() {
        let parse = |args: &[&str]| parse_streaming(args.iter().map(|s| s.to_string()));
        let opts = parse(&["--runs", "7", "--forwards", "2", "--size-mb", "10"]).unwrap();
        assert_eq!((opts.runs, opts.forwards, opts.size_mb), (7, 2, 10));
        let defaults = parse(&[]).unwrap();
        assert_eq!(
            (
                defaults.runs,
                defaults.forwards,
                defaults.size_mb,
                defaults.json
            ),
            (50, 5, 100, None)
        );
        for bad in [&["--forwards"][..], &["--runs", "x"], &["--pods", "1"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
