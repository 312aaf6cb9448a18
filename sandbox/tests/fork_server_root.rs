//! The native backend's fork server against the real kernel (needs root).
//!
//! libcontainer forks container processes with `clone` and lets the child
//! run Rust code that ends in `std::process::exit`; forked from a
//! multi-threaded process, such a child can deadlock on a std lock another
//! thread held at fork time. These tests create containers while other
//! threads come and go, and check where the container processes end up
//! (children of this process, which is the subreaper) and that every exit
//! is reported.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use caisson_sandbox::backend::native::NativeBackend;
use caisson_sandbox::backend::{Backend, ExecSpec, Stdio, TaskKind};
use caisson_sandbox::host::forker::IDLE_EXIT;
use caisson_tests::daemon::proc_status_field;

mod support;

use support::{process, unique, DEADLINE};

type Harness = support::Harness<NativeBackend>;

impl Harness {
    /// A sandbox task `id` from `bundle` (a bundle may serve many tasks one
    /// after the other).
    fn create_sandbox(&self, id: &str, bundle: &Path) -> u32 {
        self.try_create(id, bundle, TaskKind::Sandbox, Stdio::default())
            .unwrap_or_else(|e| panic!("create {id}: {e}"))
    }
}

fn ppid(pid: u32) -> u32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // pid (comm) state ppid ...: comm may hold spaces, so cut after ')'.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Threads that start and join threads as fast as they can until dropped:
/// the condition under which a `clone`d child of this process can inherit a
/// std lock held by a thread that is being created or torn down.
struct ThreadChurn {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<u64>>,
}

impl ThreadChurn {
    fn start(count: usize) -> ThreadChurn {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut spawned = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        thread::spawn(|| std::hint::black_box(0)).join().unwrap();
                        spawned += 1;
                    }
                    spawned
                })
            })
            .collect();
        ThreadChurn { stop, threads }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

// ------------------------------------------------------------------ tests

/// Many short containers (some with an exec) while threads churn: every
/// create returns and every exit is reported within the deadline.
#[test]
fn creates_and_execs_do_not_hang_while_threads_come_and_go() {
    const CONTAINERS: usize = 150;
    const OVERALL: Duration = Duration::from_secs(120);
    let h = Arc::new(Harness::new());
    let quick = h.bundle("quick", &["true"], |_| {});
    let long = h.bundle("long", &["sleep", "1000"], |_| {});
    let churn = ThreadChurn::start(2);
    let started = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();
    let progress = Arc::new(AtomicU32::new(0));
    let worker = {
        let (h, progress) = (h.clone(), progress.clone());
        thread::spawn(move || {
            for i in 0..CONTAINERS {
                let id = unique("churn");
                if i % 3 == 0 {
                    // A running container, an exec in it, then a kill.
                    let pid = h.create_sandbox(&id, &long);
                    h.backend.start(&id).unwrap();
                    let exec_id = format!("e{i}");
                    h.backend
                        .exec(&ExecSpec {
                            container_id: id.clone(),
                            exec_id: exec_id.clone(),
                            process: process(&["sh", "-c", "exit 3"]),
                            stdio: Stdio::default(),
                        })
                        .unwrap();
                    h.backend.start_exec(&id, &exec_id).unwrap();
                    assert_eq!(h.log.wait_exit(&id, Some(&exec_id)).status, 3);
                    h.backend.delete(&id, Some(&exec_id)).unwrap();
                    h.backend
                        .kill(&id, None, libc::SIGKILL as u32, false)
                        .unwrap();
                    let exit = h.log.wait_exit(&id, None);
                    assert_eq!((exit.pid, exit.status), (pid, 137));
                } else {
                    let pid = h.create_sandbox(&id, &quick);
                    h.backend.start(&id).unwrap();
                    let exit = h.log.wait_exit(&id, None);
                    assert_eq!((exit.pid, exit.status), (pid, 0));
                }
                h.delete(&id).unwrap();
                progress.fetch_add(1, Ordering::Relaxed);
            }
            let _ = done_tx.send(());
        })
    };
    let finished = done_rx.recv_timeout(OVERALL);
    let spawned = churn.stop();
    let done = progress.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    eprintln!("{done} containers in {elapsed:?} while {spawned} threads came and went");
    match finished {
        Ok(()) => worker.join().unwrap(),
        // The worker panicked: its message is the failure.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "hung: only {done} of {CONTAINERS} containers done in {OVERALL:?} \
             (a forked child deadlocked?)"
        ),
    }
}

fn threads(pid: u32) -> u32 {
    proc_status_field(pid, "Threads").unwrap().parse().unwrap()
}

/// Waits until `pid` is gone (reaped by this process's reaper).
fn wait_gone(pid: u32) {
    wait_gone_within(pid, DEADLINE);
}

fn wait_gone_within(pid: u32, limit: Duration) {
    let until = Instant::now() + limit;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < until, "{pid} still exists after {limit:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// After the server `first` is gone: a task built in a bundle (and so a
/// cgroup) of its own gets a new server and runs; then it and `waiting`
/// are deleted. Returns the new server.
fn a_new_server_builds(h: &Harness, name: &str, first: u32, waiting: &str) -> u32 {
    let bundle = h.bundle(&format!("{name}-2"), &["sleep", "1000"], |_| {});
    let id = unique(name);
    let pid = h.create_sandbox(&id, &bundle);
    let second = h.backend.fork_server_pid().expect("a new fork server");
    assert_ne!(second, first);
    assert_eq!(threads(second), 1);
    h.backend.start(&id).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.log.wait_exit(&id, None).pid, pid);
    for id in [id.as_str(), waiting] {
        h.delete(id).unwrap();
    }
    second
}

/// The fork server is a single-threaded child of this process, and what it
/// forks is this process's child too (libcontainer's `as_sibling`): the
/// reaper, not the server, gets the exits.
#[test]
fn inits_and_execs_are_children_of_the_shim_not_of_the_fork_server() {
    let h = Harness::new();
    let me = std::process::id();
    let server = h.backend.fork_server_pid().expect("a running fork server");
    assert_eq!(ppid(server), me);
    assert_eq!(
        threads(server),
        1,
        "the fork server must stay single-threaded"
    );
    let bundle = h.bundle("family", &["sleep", "1000"], |_| {});
    let id = unique("family");
    let init = h.create_sandbox(&id, &bundle);
    assert_eq!(ppid(init), me, "the init's parent");
    h.backend.start(&id).unwrap();
    h.backend
        .exec(&ExecSpec {
            container_id: id.clone(),
            exec_id: "x".into(),
            process: process(&["sleep", "1000"]),
            stdio: Stdio::default(),
        })
        .unwrap();
    let exec = h.backend.start_exec(&id, "x").unwrap();
    assert_eq!(ppid(exec), me, "the exec's parent");
    // Still one thread after two builds, and the same server.
    assert_eq!(h.backend.fork_server_pid(), Some(server));
    assert_eq!(threads(server), 1);
    h.backend
        .kill(&id, Some("x"), libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.log.wait_exit(&id, Some("x")).pid, exec);
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    let exit = h.log.wait_exit(&id, None);
    assert_eq!((exit.pid, exit.status), (init, 137));
    h.delete(&id).unwrap();
    wait_gone(init);
}

/// A fork server that died is replaced at the next request, even while a
/// created container (which inherited the server's socket) keeps that
/// socket open.
#[test]
fn a_dead_fork_server_is_replaced() {
    let h = Harness::new();
    let bundle = h.bundle("respawn", &["sleep", "1000"], |_| {});
    let waiting = unique("respawn");
    h.create_sandbox(&waiting, &bundle);
    let first = h.backend.fork_server_pid().unwrap();
    // SAFETY: kill(2) of our own child, which is not reaped before its
    // exit is handled.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    wait_gone(first);
    a_new_server_builds(&h, "respawn", first, &waiting);
}

/// An idle fork server is let go (an idle pod costs one process less), even
/// while a container it built keeps its socket open, and the next request
/// starts a new one.
#[test]
fn an_idle_fork_server_exits_and_the_next_request_starts_one() {
    let h = Harness::new();
    let bundle = h.bundle("idle", &["sleep", "1000"], |_| {});
    let waiting = unique("idle");
    h.create_sandbox(&waiting, &bundle);
    let first = h.backend.fork_server_pid().unwrap();
    wait_gone_within(first, IDLE_EXIT + DEADLINE);
    assert_eq!(h.backend.fork_server_pid(), None);
    a_new_server_builds(&h, "idle", first, &waiting);
}
