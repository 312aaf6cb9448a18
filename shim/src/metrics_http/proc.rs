//! The few `/proc` figures a scrape needs: a process's RSS, CPU time,
//! start time and open descriptors (what Prometheus' Go and Python clients
//! export as `process_*`).

use std::path::Path;

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmRSS`), in bytes.
pub fn status_bytes(proc_dir: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    parse_status_kb(&text, field).map(|kb| kb * 1024)
}

fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name != field {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, so that
/// `fields[0]` is field 3 (`state`) of proc(5).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    Some(after_comm.split_whitespace().collect())
}

/// What `/proc/<pid>/stat` says of CPU and start, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatTimes {
    /// utime + stime.
    pub cpu_ticks: u64,
    /// Since boot.
    pub start_ticks: u64,
}

pub fn stat_times(proc_dir: &Path) -> Option<StatTimes> {
    let text = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    parse_stat_times(&text)
}

fn parse_stat_times(stat: &str) -> Option<StatTimes> {
    let f = stat_fields(stat)?;
    // proc(5): utime is field 14, stime 15, starttime 22 (fields[0] is 3).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(StatTimes {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The boot time, in seconds since the epoch (`btime` of `/proc/stat`).
pub fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Entries of `/proc/<pid>/fd`.
pub fn open_fds(proc_dir: &Path) -> Option<u64> {
    Some(std::fs::read_dir(proc_dir.join("fd")).ok()?.count() as u64)
}

/// The soft limit on open files of this process.
pub fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_stat_fields() {
        let status = "Name:\tcaissond\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(12345));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
        // A command name with spaces and a parenthesis must not shift fields.
        let stat = "42 (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 4 0 9876 1000 300";
        assert_eq!(
            parse_stat_times(stat),
            Some(StatTimes {
                cpu_ticks: 12,
                start_ticks: 9876
            })
        );
        assert_eq!(parse_stat_times("42 (short) S 1"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = Path::new("/proc/self");
        assert!(status_bytes(me, "VmRSS").unwrap() > 0);
        assert!(stat_times(me).is_some());
        assert!(open_fds(me).unwrap() > 0);
        assert!(boot_time().unwrap() > 1_000_000_000);
        assert!(max_fds().unwrap() > 0);
    }
}
