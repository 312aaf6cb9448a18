//! Timing one run (wall clock plus CPU time) and summarising a series of runs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Bytes in a megabyte, as every number here uses it (decimal, like `dd`).
pub const MB: f64 = 1_000_000.0;

/// User and system CPU time of process `pid` so far (`/proc/<pid>/stat`).
pub fn process_cpu(pid: u32) -> std::io::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let at = |i: usize| -> std::io::Result<Duration> {
        let t: f64 = fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("short /proc/{pid}/stat")))?;
        Ok(Duration::from_secs_f64(t / ticks))
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the name.
    Ok((at(11)?, at(12)?))
}

/// Whose CPU time a run is charged with.
#[derive(Debug, Clone, Copy)]
pub enum CpuOf {
    /// This process (in-process work, all threads).
    SelfProcess,
    /// Children waited for during the run (external tools).
    Children,
}

/// Wall, user CPU and system CPU time of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub wall: Duration,
    pub user: Duration,
    pub sys: Duration,
}

impl std::ops::Add for Sample {
    type Output = Sample;

    /// Two steps run one after the other.
    fn add(self, other: Sample) -> Sample {
        Sample {
            wall: self.wall + other.wall,
            user: self.user + other.user,
            sys: self.sys + other.sys,
        }
    }
}

/// (user, system) CPU time so far.
fn cpu_time(of: CpuOf) -> (Duration, Duration) {
    let who = match of {
        CpuOf::SelfProcess => libc::RUSAGE_SELF,
        CpuOf::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// Runs `f`, returning its result and how long it took.
pub fn timed<T>(of: CpuOf, f: impl FnOnce() -> T) -> (T, Sample) {
    let (user0, sys0) = cpu_time(of);
    let start = Instant::now();
    let out = f();
    let wall = start.elapsed();
    let (user1, sys1) = cpu_time(of);
    let sample = Sample {
        wall,
        user: user1.saturating_sub(user0),
        sys: sys1.saturating_sub(sys0),
    };
    (out, sample)
}

/// Min and median of a series of runs.
#[derive(Debug, Clone)]
pub struct Summary {
    pub samples: Vec<Sample>,
    pub min: Duration,
    pub median: Duration,
    pub median_user: Duration,
    pub median_sys: Duration,
}

pub(crate) fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    let n = values.len();
    match n {
        0 => Duration::ZERO,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2,
    }
}

impl Summary {
    pub fn of(samples: Vec<Sample>) -> Summary {
        Summary {
            min: samples.iter().map(|s| s.wall).min().unwrap_or_default(),
            median: median(samples.iter().map(|s| s.wall).collect()),
            median_user: median(samples.iter().map(|s| s.user).collect()),
            median_sys: median(samples.iter().map(|s| s.sys).collect()),
            samples,
        }
    }

    /// MB/s for `bytes` at this series' median wall time.
    pub fn throughput(&self, bytes: u64) -> f64 {
        mb_per_s(bytes, self.median)
    }

    pub fn json(&self, bytes: u64) -> Value {
        json!({
            "runs_wall_s": self.samples.iter().map(|s| s.wall.as_secs_f64()).collect::<Vec<_>>(),
            "runs_user_s": self.samples.iter().map(|s| s.user.as_secs_f64()).collect::<Vec<_>>(),
            "runs_sys_s": self.samples.iter().map(|s| s.sys.as_secs_f64()).collect::<Vec<_>>(),
            "min_s": self.min.as_secs_f64(),
            "median_s": self.median.as_secs_f64(),
            "median_user_s": self.median_user.as_secs_f64(),
            "median_sys_s": self.median_sys.as_secs_f64(),
            "mb_per_s_at_min": mb_per_s(bytes, self.min),
            "mb_per_s_at_median": mb_per_s(bytes, self.median),
        })
    }
}

/// Nearest-rank percentile `p` (0–100] of sorted values (the default,
/// e.g. zero, when there is none).
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// The value of `key:` in a /proc `Key:   value kB` file.
pub fn proc_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs == 0.0 {
        return 0.0;
    }
    bytes as f64 / MB / secs
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / MB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let twenty: Vec<Duration> = (1..=20).map(ms).collect();
        let cases: [(&[Duration], f64, u64); 6] = [
            (&twenty, 50.0, 10),
            (&twenty, 90.0, 18),
            (&twenty, 99.0, 20),
            (&twenty, 100.0, 20),
            (&[ms(7)], 50.0, 7),
            (&[], 50.0, 0),
        ];
        for (values, p, want) in cases {
            assert_eq!(
                percentile(values, p),
                ms(want),
                "p{p} of {} values",
                values.len()
            );
        }
    }

    #[test]
    fn median_of_odd_and_even_series() {
        let cases: [(&[u64], u64); 4] = [
            (&[], 0),
            (&[5_000], 5_000),
            (&[9_000, 1_000, 5_000], 5_000),
            (&[4_000, 1_000, 3_000, 2_000], 2_500),
        ];
        for (micros, want) in cases {
            let got = median(micros.iter().map(|&v| Duration::from_micros(v)).collect());
            assert_eq!(got, Duration::from_micros(want), "{micros:?}");
        }
    }

    #[test]
    fn throughput_in_decimal_megabytes() {
        assert_eq!(mb_per_s(100_000_000, Duration::from_secs(2)), 50.0);
        assert_eq!(mb_per_s(1, Duration::ZERO), 0.0);
    }
}
