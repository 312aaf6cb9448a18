//! The crate's cgroup v2 code against a real cgroup2 hierarchy: what the
//! unit tests' fake tree cannot show (the kernel's rounding and refusals,
//! controllers enabled level by level, rmdir of a busy cgroup, usage of a
//! real process, the OOM killer).
//!
//! They need root and cgroup2 mounted alone and writable at
//! `/sys/fs/cgroup` with the cpu, memory, pids and cpuset controllers,
//! which this project's hosts (cgroup v1) do not have. So this target is
//! `test = false` (Cargo.toml): `cargo test` on a host does not build it,
//! and `tests/tests/cri_microvm_resources_root.rs` builds it statically
//! (`--test v2_guest_root`) and runs it in a privileged container of a
//! microvm guest, asserting that every one of them passed. Run anywhere
//! without such a hierarchy, each fails naming what is missing.
//!
//! Each test works in a tree of its own at the root
//! (`/caisson-v2-test-<pid>-<name>`), removed (processes killed) at its end.

use std::path::Path;
use std::time::{Duration, Instant};

use caisson_cgroups::cpu;
use caisson_cgroups::fs::CgroupRoot;
use caisson_cgroups::stats;
use caisson_cgroups::tree::Limits;
use caisson_cgroups::{
    CgroupError, CgroupFs, CgroupMode, NodeAllocatable, PodExtras, PodResources, QosClass, QosTree,
    Resources, UnifiedApplyError,
};
use nix::libc;

const MI: u64 = 1 << 20;
const ROOT: &str = "/sys/fs/cgroup";
/// Controllers every test needs in the root's `cgroup.controllers`.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "cpuset"];

/// Fails, naming it, unless this is root on a writable cgroup2 hierarchy
/// with [`CONTROLLERS`].
fn require_cgroup2() {
    let run_where = "run these tests inside a microvm guest \
                     (tests/tests/cri_microvm_resources_root.rs does)";
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they make cgroups; {run_where}"
    );
    let mode = CgroupMode::detect(Path::new(ROOT));
    assert_eq!(
        mode,
        CgroupMode::Unified,
        "these tests need cgroup2 mounted alone at {ROOT}; this system is {:?} ({}); {run_where}",
        mode,
        mode.as_str()
    );
    let available = std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"))
        .unwrap_or_else(|e| panic!("{ROOT}/cgroup.controllers: {e}; {run_where}"));
    let missing: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    assert!(
        missing.is_empty(),
        "the cgroup2 hierarchy at {ROOT} lacks the controllers {missing:?} (it has {:?}); {run_where}",
        available.trim()
    );
    let probe = Path::new(ROOT).join(format!("caisson-v2-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => std::fs::remove_dir(&probe).unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("{ROOT} is not writable ({e}); {run_where}"),
    }
}

/// A tree of one test's own at the root; killed and removed when dropped.
struct Scratch {
    tree: QosTree<CgroupRoot>,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        require_cgroup2();
        let top = format!("caisson-v2-test-{}-{name}", std::process::id());
        let tree = QosTree::new(
            CgroupRoot::host(),
            &top,
            NodeAllocatable {
                memory: Some(512 * MI),
                cpu_milli: Some(1500),
            },
        );
        assert_eq!(tree.fs().mode(), CgroupMode::Unified);
        Scratch { tree }
    }

    fn fs(&self) -> &CgroupRoot {
        self.tree.fs()
    }

    fn read(&self, cgroup: &str, file: &str) -> String {
        self.fs()
            .read("", cgroup, file)
            .unwrap_or_else(|| panic!("{cgroup}/{file} is not readable"))
    }

    fn exists(&self, cgroup: &str) -> bool {
        self.fs().dir("", cgroup).is_dir()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let top = self.tree.top().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.fs().kill_tree(&top);
            match self.fs().remove_tree(&top) {
                Ok(()) => return,
                // Killed processes take a moment to leave their cgroups.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    eprintln!("removing {top}: {e}");
                    return;
                }
            }
        }
    }
}

fn pod(shares: u64, quota: i64, memory: u64) -> PodResources {
    PodResources {
        resources: Resources {
            cpu_shares: shares,
            cpu_quota: quota,
            cpu_period: 100_000,
            memory_limit: memory,
        },
        overhead: Resources::default(),
    }
}

fn controllers(text: &str) -> Vec<&str> {
    let mut list: Vec<&str> = text.split_whitespace().collect();
    list.sort();
    list
}

/// A forked child that waits to be placed in a cgroup, then touches
/// `touch` bytes and burns `cpu` of CPU time, says so, and sleeps until
/// killed. Only raw syscalls run in the child (the test process has
/// threads).
struct Worker {
    pid: libc::pid_t,
    go: libc::c_int,
    done: libc::c_int,
}

impl Worker {
    fn spawn(touch: usize, cpu: Duration) -> Worker {
        let mut go = [0; 2];
        let mut done = [0; 2];
        // SAFETY: plain syscalls on fds and memory this function owns; the
        // child calls only async-signal-safe functions and never returns.
        unsafe {
            assert_eq!(libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC), 0);
            let buffer = libc::mmap(
                std::ptr::null_mut(),
                touch.max(4096),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(buffer, libc::MAP_FAILED);
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let mut byte = 0u8;
                if libc::read(go[0], (&mut byte as *mut u8).cast(), 1) != 1 {
                    libc::_exit(1);
                }
                let bytes = buffer.cast::<u8>();
                let mut offset = 0;
                while offset < touch {
                    *bytes.add(offset) = 1;
                    offset += 4096;
                }
                let want_ns = cpu.as_nanos() as i64;
                loop {
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
                    if ts.tv_sec * 1_000_000_000 + ts.tv_nsec >= want_ns {
                        break;
                    }
                }
                libc::write(done[1], (&byte as *const u8).cast(), 1);
                loop {
                    libc::pause();
                }
            }
            libc::munmap(buffer, touch.max(4096));
            libc::close(go[0]);
            libc::close(done[1]);
            Worker {
                pid,
                go: go[1],
                done: done[0],
            }
        }
    }

    /// Moves the worker into `cgroup`, lets it work and waits until it has
    /// (true) or died (false).
    fn run_in(&self, s: &Scratch, cgroup: &str) -> bool {
        s.fs()
            .write("", cgroup, "cgroup.procs", &self.pid.to_string())
            .unwrap();
        let mut byte = 0u8;
        // SAFETY: fds owned by this worker; one byte buffers.
        unsafe {
            assert_eq!(libc::write(self.go, (&byte as *const u8).cast(), 1), 1);
            libc::read(self.done, (&mut byte as *mut u8).cast(), 1) == 1
        }
    }

    /// Its exit status once it ended (killing it first unless `ended`).
    fn finish(self, ended: bool) -> i32 {
        let mut status = 0;
        // SAFETY: this worker's own pid and fds.
        unsafe {
            if !ended {
                libc::kill(self.pid, libc::SIGKILL);
            }
            libc::waitpid(self.pid, &mut status, 0);
            libc::close(self.go);
            libc::close(self.done);
        }
        status
    }
}

#[test]
fn the_mode_is_read_from_real_mounts() {
    require_cgroup2();
    assert_eq!(CgroupMode::detect(Path::new(ROOT)), CgroupMode::Unified);
    assert!(!CgroupRoot::host().mode().is_v1());
    // A hybrid layout: cgroup2 at `<root>/unified` of a tmpfs root.
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(CgroupMode::detect(dir.path()), CgroupMode::Legacy);
    mount(
        Some("tmpfs"),
        dir.path(),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("mounting a tmpfs (the test needs CAP_SYS_ADMIN)");
    let unified = dir.path().join("unified");
    std::fs::create_dir(&unified).unwrap();
    let mounted = mount(
        Some("cgroup2"),
        &unified,
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    );
    let modes = (CgroupMode::detect(dir.path()), CgroupMode::detect(&unified));
    let _ = umount2(&unified, MntFlags::MNT_DETACH);
    umount2(dir.path(), MntFlags::MNT_DETACH).unwrap();
    mounted.expect("mounting cgroup2 a second time");
    assert_eq!(modes, (CgroupMode::Hybrid, CgroupMode::Unified));
    assert_eq!(CgroupMode::detect(dir.path()), CgroupMode::Legacy);
}

#[test]
fn ensure_makes_the_tiers_with_controllers_and_limits() {
    let s = Scratch::new("ensure");
    let tree = &s.tree;
    tree.ensure().unwrap();
    tree.ensure().expect("ensure is idempotent");
    let top = tree.top();
    // The kernel lists what each level delegates to its children.
    for level in ["/", top] {
        let enabled = s.read(level, "cgroup.subtree_control");
        for c in ["cpu", "memory", "pids"] {
            assert!(
                controllers(&enabled).contains(&c),
                "{level}: {c} not in {enabled:?}"
            );
        }
    }
    let shares = cpu::cpu_shares_from_request(1500);
    assert_eq!(
        s.read(top, "cpu.weight"),
        cpu::cpu_weight_from_shares(shares).to_string()
    );
    assert_eq!(s.read(top, "memory.max"), (512 * MI).to_string());
    assert_eq!(s.read(top, "cpu.max"), "max 100000");
    for class in [QosClass::Burstable, QosClass::BestEffort] {
        let tier = tree.tier(class);
        assert_eq!(s.read(&tier, "cpu.weight"), "1", "{tier}");
        assert_eq!(s.read(&tier, "memory.max"), "max", "{tier}");
        // Each tier's own files exist because its parent delegates them.
        assert!(s.fs().dir("", &tier).join("pids.max").is_file(), "{tier}");
    }
}

#[test]
fn pods_are_made_in_their_tier_sized_resized_and_removed() {
    let s = Scratch::new("pods");
    let tree = &s.tree;
    // Half a CPU requested and limited, and a memory limit: Guaranteed.
    let g = tree
        .create_pod("g", &pod(512, 50_000, 64 * MI), &PodExtras::default())
        .unwrap();
    assert_eq!(g, format!("{}/podg", tree.top()));
    assert_eq!(s.read(&g, "cpu.max"), "50000 100000");
    assert_eq!(s.read(&g, "memory.max"), (64 * MI).to_string());
    assert_eq!(
        s.read(&g, "cpu.weight"),
        cpu::cpu_weight_from_shares(512).to_string()
    );
    // The class chosen elsewhere wins over the figures' own.
    let b = tree
        .create_pod_in(
            QosClass::Burstable,
            "b",
            &PodResources::default(),
            &PodExtras::default(),
        )
        .unwrap();
    assert_eq!(b, format!("{}/burstable/podb", tree.top()));
    assert_eq!(s.read(&b, "memory.max"), "max");
    assert_eq!(s.read(&b, "cpu.max"), "max 100000");

    // Resized: the kernel rounds memory limits down to whole pages.
    let odd = 64 * MI + 1000;
    tree.apply(
        &b,
        &Limits {
            cpu_shares: Some(512),
            cpu_quota: Some(20_000),
            memory: Some(odd),
            swap: Some(0),
        },
    )
    .unwrap();
    assert_eq!(s.read(&b, "memory.max"), (64 * MI).to_string());
    assert_eq!(s.read(&b, "memory.swap.max"), "0");
    assert_eq!(s.read(&b, "cpu.max"), "20000 100000");
    // The kernel refuses a CFS quota under 1 ms; the error names the file.
    let err = tree
        .apply(
            &b,
            &Limits {
                cpu_quota: Some(500),
                ..Limits::default()
            },
        )
        .unwrap_err();
    match &err {
        CgroupError::WriteFailed { path, source, .. } => {
            assert!(path.ends_with("cpu.max"), "{err}");
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{err}");
        }
        other => panic!("{other}"),
    }

    // The burstable tier's weight follows its pods' weights.
    let b2 = tree
        .create_pod("b2", &pod(256, -1, 0), &PodExtras::default())
        .unwrap();
    assert_eq!(b2, format!("{}/burstable/podb2", tree.top()));
    tree.refresh_burstable().unwrap();
    let sum: u64 = [&b, &b2]
        .iter()
        .map(|p| cpu::cpu_shares_from_weight(s.read(p, "cpu.weight").parse().unwrap()))
        .sum();
    assert_eq!(
        s.read(&tree.tier(QosClass::Burstable), "cpu.weight"),
        cpu::cpu_weight_from_shares(sum).to_string()
    );

    // A pod with a process in a child cgroup: rmdir is refused (EBUSY)
    // until the process is gone.
    let task = format!("{g}/task");
    s.fs().create(&task).unwrap();
    let worker = Worker::spawn(0, Duration::ZERO);
    assert!(worker.run_in(&s, &task));
    let err = tree.remove(&g).unwrap_err();
    assert!(
        matches!(&err, CgroupError::RemoveFailed { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
        "{err}"
    );
    assert!(s.exists(&g), "a busy pod cgroup was removed");
    assert_eq!(s.fs().kill_tree(&g), 1);
    worker.finish(true);
    tree.remove(&g).unwrap();
    assert!(!s.exists(&task) && !s.exists(&g));
    tree.remove(&g).expect("removing twice is fine");
    for p in [&b, &b2] {
        tree.remove(p).unwrap();
        assert!(!s.exists(p), "{p}");
    }
}

#[test]
fn pod_extras_and_unified_entries_reach_the_kernel() {
    let s = Scratch::new("extras");
    let tree = &s.tree;
    let hugetlb = s.fs().controller_usable("hugetlb");
    let extras = PodExtras {
        pids_limit: Some(128),
        cpuset_cpus: Some("0".into()),
        cpuset_mems: Some("0".into()),
        memory_swap: Some(96 * MI as i64),
        hugepages: if hugetlb {
            vec![("2MB".into(), 4 * MI)]
        } else {
            vec![]
        },
        unified: vec![
            // Not page-aligned: the kernel keeps whole pages.
            ("memory.high".into(), "50000000".into()),
            // Written last: wins over pids_limit.
            ("pids.max".into(), "100".into()),
        ],
    };
    let p = tree
        .create_pod("x", &pod(1024, 100_000, 64 * MI), &extras)
        .unwrap();
    let mut want = vec![
        ("memory.max", (64 * MI).to_string()),
        ("memory.swap.max", (32 * MI).to_string()),
        ("cpuset.cpus", "0".to_string()),
        ("cpuset.mems", "0".to_string()),
        ("memory.high", (50_000_000 / 4096 * 4096).to_string()),
        ("pids.max", "100".to_string()),
        ("cpu.max", "100000 100000".to_string()),
    ];
    if hugetlb {
        want.push(("hugetlb.2MB.max", (4 * MI).to_string()));
    }
    for (file, value) in want {
        assert_eq!(s.read(&p, file), value, "{file}");
    }
    // A Guaranteed pod, at the top; cpuset was enabled on the way down.
    assert_eq!(p, format!("{}/podx", tree.top()));
    let enabled = s.read(tree.top(), "cgroup.subtree_control");
    assert!(controllers(&enabled).contains(&"cpuset"), "{enabled:?}");

    // A key outside the allow-list, and a value the kernel refuses: both
    // fail naming what, and leave no pod cgroup behind.
    for (key, value, named) in [
        ("cgroup.procs", "1", "cgroup.procs"),
        ("memory.high", "lots", "memory.high"),
    ] {
        let refused = PodExtras {
            unified: vec![(key.into(), value.into())],
            ..PodExtras::default()
        };
        let err = tree
            .create_pod("bad", &pod(512, -1, 0), &refused)
            .unwrap_err();
        assert!(err.to_string().contains(named), "{err}");
        if key == "memory.high" {
            assert!(matches!(err, UnifiedApplyError::Cgroup(_)), "{err}");
        }
        assert!(
            !s.exists(&format!("{}/burstable/podbad", tree.top())),
            "a refused pod left its cgroup ({key})"
        );
    }
}

#[test]
fn usage_of_a_working_process_is_read_at_each_level() {
    let s = Scratch::new("stats");
    let tree = &s.tree;
    let p = tree
        .create_pod("s", &pod(512, 50_000, 128 * MI), &PodExtras::default())
        .unwrap();
    let c = format!("{p}/c");
    s.fs().create(&c).unwrap();
    let idle = stats::read(s.fs(), &c);
    assert_eq!(idle.processes, Some(0));
    assert_eq!(idle.cpu_usage_ns, Some(0));
    let worker = Worker::spawn(16 * MI as usize, Duration::from_millis(100));
    assert!(worker.run_in(&s, &c), "the worker died");
    let usage = stats::read(s.fs(), &c);
    let pod_usage = stats::read(s.fs(), &p);
    let extras = stats::read_container_extras(s.fs(), &c);
    worker.finish(false);
    assert!(
        usage.cpu_usage_ns.unwrap() >= 50_000_000,
        "100 ms of work shows as {usage:?}"
    );
    assert!(usage.memory_usage.unwrap() >= 16 * MI, "{usage:?}");
    assert!(usage.rss.unwrap() >= 16 * MI, "anon: {usage:?}");
    assert!(usage.working_set.unwrap() >= 16 * MI, "{usage:?}");
    assert!(usage.page_faults.unwrap() >= 4096, "{usage:?}");
    assert_eq!(usage.processes, Some(1));
    // The pod's figures hold its children's.
    assert!(
        pod_usage.cpu_usage_ns >= usage.cpu_usage_ns,
        "{pod_usage:?}"
    );
    assert!(
        pod_usage.memory_usage >= usage.memory_usage,
        "{pod_usage:?}"
    );
    assert_eq!(pod_usage.processes, Some(1));
    assert_eq!(extras.process_count, Some(1));
    assert_eq!(extras.failcnt, Some(0));
    assert_eq!(
        (extras.cpu_period_us, extras.cpu_quota_us),
        (Some(100_000), None)
    );
    // The pod's own CPU settings read back as the crate wrote them.
    let pod_extras = stats::read_container_extras(s.fs(), &p);
    assert_eq!(pod_extras.cpu_quota_us, Some(50_000));
    assert_eq!(
        pod_extras.cpu_shares,
        Some(cpu::cpu_shares_from_weight(cpu::cpu_weight_from_shares(
            512
        )))
    );
}

#[test]
fn a_process_over_its_memory_limit_is_oom_killed_and_counted() {
    let s = Scratch::new("oom");
    let tree = &s.tree;
    let p = tree
        .create_pod("o", &pod(512, -1, 0), &PodExtras::default())
        .unwrap();
    let c = format!("{p}/c");
    s.fs().create(&c).unwrap();
    tree.apply(
        &c,
        &Limits {
            memory: Some(8 * MI),
            swap: Some(0),
            ..Limits::default()
        },
    )
    .unwrap();
    let worker = Worker::spawn(64 * MI as usize, Duration::ZERO);
    let finished = worker.run_in(&s, &c);
    let status = worker.finish(!finished);
    assert!(!finished, "64 MiB were touched under an 8 MiB limit");
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the worker ended with status {status:#x}, not SIGKILL"
    );
    let events = s.read(&c, "memory.events");
    assert!(events.contains("oom_kill 1"), "{events}");
    let extras = stats::read_container_extras(s.fs(), &c);
    assert!(extras.failcnt.unwrap() > 0, "{extras:?}");
    // The pod's memory.events counts its children's kills too.
    assert!(s.read(&p, "memory.events").contains("oom_kill 1"));
}
