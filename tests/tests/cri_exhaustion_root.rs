//! A pod that tries to use up its node: a container writing its log as fast
//! as it can, and a fork bomb. The shim's memory stays bounded and the other
//! container's log keeps flowing; the fork bomb is held at the pod's
//! `pids.max`, other pods keep working, and the pod goes away cleanly.
//! Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use caisson_tests::daemon::{container_config, proc_status_field, Caissond};
use k8s_cri::v1 as cri;

fn rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The last `tick N` in a CRI log file, if any.
fn last_tick(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| {
        l.rsplit_once("tick ")
            .and_then(|(_, n)| n.trim().parse().ok())
    })
}

#[test]
fn a_log_flood_keeps_the_shim_small_and_the_other_logs_flowing() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("flood");
    let pod = d.run_pod(&config);
    let mut ticker = container_config(
        "ticker",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        ],
    );
    ticker.log_path = "ticker/0.log".into();
    let _ticker = d.create_started_container(&pod, &config, ticker);
    let shim = {
        let pids = d.shim_pids();
        assert_eq!(pids.len(), 1, "one pod, one shim: {pids:?}");
        pids[0]
    };
    let settle = Instant::now();
    let ticks = Path::new(&config.log_directory).join("ticker/0.log");
    while last_tick(&ticks).is_none() {
        assert!(settle.elapsed() < Duration::from_secs(20), "no tick logged");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = rss_kib(shim);

    let mut flood = container_config(
        "flood",
        &[
            "sh",
            "-c",
            "yes 'a line of output, again and again and again'",
        ],
    );
    flood.log_path = "flood/0.log".into();
    let flood = d.create_started_container(&pod, &config, flood);
    let flood_log = Path::new(&config.log_directory).join("flood/0.log");

    // Ten seconds of flooding; each second kubelet's rotation (rename, then
    // ReopenContainerLog) keeps the disk in check.
    let mut rt = d.runtime();
    let mut peak = before;
    let mut flooded: u64 = 0;
    let mut stalls = Vec::new();
    let first_tick = last_tick(&ticks).unwrap();
    let started = Instant::now();
    let mut last_seen = (first_tick, Instant::now());
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(rss_kib(shim));
        let rotated = flood_log.with_extension("log.old");
        if std::fs::rename(&flood_log, &rotated).is_ok() {
            flooded += std::fs::metadata(&rotated).map(|m| m.len()).unwrap_or(0);
            d.ok(
                "ReopenContainerLog",
                d.rt.block_on(rt.reopen_container_log(cri::ReopenContainerLogRequest {
                    container_id: flood.clone(),
                })),
            );
            std::fs::remove_file(&rotated).unwrap();
        }
        let tick = last_tick(&ticks).unwrap();
        if tick > last_seen.0 {
            last_seen = (tick, Instant::now());
        } else {
            stalls.push(last_seen.1.elapsed());
        }
    }
    let ticked = last_tick(&ticks).unwrap() - first_tick;
    eprintln!(
        "flood: {} MB logged in 10 s; shim RSS {before} → peak {peak} KiB; ticker +{ticked}",
        flooded >> 20
    );
    assert!(
        flooded > 10 << 20,
        "the flood wrote only {flooded} bytes: not a flood"
    );
    assert!(
        peak < before + 16 * 1024,
        "the shim grew from {before} KiB to {peak} KiB under a log flood"
    );
    // 50 ticks in 10 s when idle; the flood may slow the ticker's own
    // process, never stop its log.
    assert!(ticked >= 15, "only {ticked} ticks logged during the flood");
    assert!(
        stalls.iter().all(|s| *s < Duration::from_secs(3)),
        "the ticker's log stalled: {stalls:?}"
    );
    d.remove_pod(&pod);
}

#[test]
fn a_fork_bomb_is_held_by_the_pods_pids_limit() {
    let d = Caissond::start("cgroups.pod_pids_limit = 64");
    d.import_busybox();
    // Another pod, which must keep working while the bomb goes off.
    let quiet_config = d.pod_config("quiet");
    let quiet = d.run_pod(&quiet_config);
    let sleeper = d.create_started_container(
        &quiet,
        &quiet_config,
        container_config("sleeper", &["sleep", "1000"]),
    );
    let baseline = d.footprint();
    let config = d.pod_config("bomb");
    let uid = config.metadata.as_ref().unwrap().uid.clone();
    let pod = d.run_pod(&config);
    let pids = d.pod_cgroup("pids", &uid);
    assert_eq!(
        std::fs::read_to_string(pids.join("pids.max"))
            .unwrap()
            .trim(),
        "64"
    );
    // Processes that stay: a shell forking sleepers as fast as it can (a
    // classic `b() { b | b & }` bomb's children exit as fast as they fork).
    // The forking shell is a subshell, which exits at its first refused
    // fork; the container's init then execs a sleeper, so that it lives on
    // (an init's exit would take the sleepers with it, as under containerd).
    let bomb = container_config(
        "bomb",
        &[
            "sh",
            "-c",
            "(while true; do sleep 1000 & done); exec sleep 100000",
        ],
    );
    let bomb = d.create_started_container(&pod, &config, bomb);

    let started = Instant::now();
    let mut held_at_max = false;
    while started.elapsed() < Duration::from_secs(10) {
        let current: u64 = std::fs::read_to_string(pids.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(current <= 64, "pids.current {current} over pids.max 64");
        // v1 counts a refused fork in the cgroup of the task that forked.
        let refused: u64 = [pids.clone(), d.task_cgroup("pids", &uid, &bomb)]
            .iter()
            .filter_map(|dir| std::fs::read_to_string(dir.join("pids.events")).ok())
            .filter_map(|events| events.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        if refused > 0 && current >= 60 {
            held_at_max = true;
        }
        let t = Instant::now();
        let out = d.exec(&sleeper, &["echo", "alive"]);
        assert_eq!(out.trim(), "alive");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "an exec in another pod took {:?} during the fork bomb",
            t.elapsed()
        );
        if held_at_max {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(held_at_max, "the fork bomb never reached pids.max");

    let t = Instant::now();
    d.remove_pod(&pod);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "removing the bombed pod took {:?}",
        t.elapsed()
    );
    assert_eq!(d.footprint(), baseline, "{}", d.footprint().diff(&baseline));
    assert_eq!(d.exec(&sleeper, &["echo", "alive"]).trim(), "alive");
    d.remove_pod(&quiet);
}
