//! The compatibility workload: what ordinary programs do, each check failing
//! with what went wrong. Under a syscall filter, a missing syscall shows up
//! here as a failed check naming the call.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::sys::{check, errno_name};

type Check = Result<String, String>;
/// A named check.
type NamedCheck = (&'static str, fn() -> Check);

/// Runs every check; `Ok(false)` if any failed.
pub fn main() -> Result<bool, String> {
    let checks: [NamedCheck; 12] = [
        ("threads", threads),
        ("futex", futex),
        ("epoll", epoll),
        ("mmap", mmap),
        ("signals", signals),
        ("pipes", pipes),
        ("file_io", file_io),
        ("tcp_loopback", tcp),
        ("unix_sockets", unix_sockets),
        ("exec", exec),
        ("fork", fork),
        ("clock_and_sleep", clock_and_sleep),
    ];
    let mut all_ok = true;
    for (name, check) in checks {
        match check() {
            Ok(detail) => println!("{name}\tok\t{detail}"),
            Err(e) => {
                all_ok = false;
                println!("{name}\tfail\t{e}");
            }
        }
    }
    Ok(all_ok)
}

/// `what` failed with the current errno.
fn failed(what: &str) -> String {
    format!("{what}: {}", errno_name(crate::sys::errno()))
}

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Four threads hand work over through a mutex and condition variable.
fn threads() -> Check {
    let state = Arc::new((Mutex::new(0u64), Condvar::new()));
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let sum: u64 = (0..100_000u64).map(|n| n % (i + 2)).sum();
                    let (lock, cv) = &*state;
                    *lock.lock().unwrap() += sum;
                    cv.notify_all();
                })
        })
        .collect::<Result<_, _>>()
        .map_err(io("spawning a thread"))?;
    for h in handles {
        h.join()
            .map_err(|_| "a worker thread panicked".to_string())?;
    }
    let total = *state.0.lock().unwrap();
    let want: u64 = (0..4u64)
        .map(|i| (0..100_000u64).map(|n| n % (i + 2)).sum::<u64>())
        .sum();
    if total != want {
        return Err(format!("sum {total}, expected {want}"));
    }
    Ok("4 threads joined".into())
}

fn futex_call(word: &AtomicU32, op: i32, val: u32, timeout: Option<&libc::timespec>) -> i64 {
    // SAFETY: futex on a live atomic word, with an optional timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec),
        )
    }
}

/// A thread sleeps in FUTEX_WAIT until the main thread sets the word and
/// wakes it.
fn futex() -> Check {
    let word = Arc::new(AtomicU32::new(0));
    let waiter = {
        let word = Arc::clone(&word);
        std::thread::spawn(move || -> Result<u32, String> {
            let timeout = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            for _ in 0..10 {
                if word.load(Ordering::SeqCst) != 0 {
                    return Ok(word.load(Ordering::SeqCst));
                }
                let r = futex_call(&word, libc::FUTEX_WAIT, 0, Some(&timeout));
                if r < 0 {
                    let e = crate::sys::errno();
                    if ![libc::EAGAIN, libc::ETIMEDOUT, libc::EINTR].contains(&e) {
                        return Err(format!("FUTEX_WAIT: {}", errno_name(e)));
                    }
                }
            }
            Err("not woken within 10 s".into())
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    word.store(7, Ordering::SeqCst);
    if futex_call(&word, libc::FUTEX_WAKE, 1, None) < 0 {
        return Err(failed("FUTEX_WAKE"));
    }
    let seen = waiter.join().map_err(|_| "waiter panicked".to_string())??;
    Ok(format!("woken with {seen}"))
}

/// One byte through a pipe wakes epoll_wait on its read end.
fn epoll() -> Check {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2/epoll_* with local buffers; every descriptor is closed.
    unsafe {
        check(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) as i64)
            .map_err(|_| failed("pipe2"))?;
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let result = (|| {
            if ep < 0 {
                return Err(failed("epoll_create1"));
            }
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 42,
            };
            if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fds[0], &mut ev) < 0 {
                return Err(failed("epoll_ctl"));
            }
            if libc::write(fds[1], b"x".as_ptr().cast(), 1) != 1 {
                return Err(failed("write"));
            }
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
            let n = libc::epoll_wait(ep, out.as_mut_ptr(), 4, 5000);
            let data = out[0].u64;
            match n {
                1 if data == 42 => Ok("woken for the pipe".to_string()),
                n if n < 0 => Err(failed("epoll_wait")),
                n => Err(format!("epoll_wait returned {n} events, data {data}")),
            }
        })();
        if ep >= 0 {
            libc::close(ep);
        }
        libc::close(fds[0]);
        libc::close(fds[1]);
        result
    }
}

/// Anonymous memory written, made read-only and unmapped; a shared file
/// mapping written and read back through read(2).
fn mmap() -> Check {
    const LEN: usize = 1 << 20;
    // SAFETY: mappings made, used within their length and unmapped here.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(failed("mmap anonymous"));
        }
        let bytes = std::slice::from_raw_parts_mut(p.cast::<u8>(), LEN);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        if libc::mprotect(p, LEN, libc::PROT_READ) != 0 {
            return Err(failed("mprotect"));
        }
        let sum: u64 = bytes.iter().map(|&b| b as u64).sum();
        if libc::munmap(p, LEN) != 0 {
            return Err(failed("munmap"));
        }

        let path = format!("/tmp/caisson-probe-mmap-{}", std::process::id());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("creating the mapped file"))?;
        let _ = std::fs::remove_file(&path);
        file.set_len(4096).map_err(io("ftruncate"))?;
        use std::os::fd::AsRawFd;
        let m = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if m == libc::MAP_FAILED {
            return Err(failed("mmap shared file"));
        }
        std::ptr::copy_nonoverlapping(b"mapped".as_ptr(), m.cast::<u8>(), 6);
        libc::msync(m, 4096, libc::MS_SYNC);
        libc::munmap(m, 4096);
        let mut back = [0u8; 6];
        file.read_exact(&mut back).map_err(io("reading back"))?;
        if &back != b"mapped" {
            return Err(format!("file reads {back:?} after a shared mapping write"));
        }
        Ok(format!("1 MiB anonymous (sum {sum}), shared file mapping"))
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: i32) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// A handler runs for SIGUSR1 sent with kill(2); a blocked SIGUSR2 is taken
/// with sigtimedwait.
fn signals() -> Check {
    // SAFETY: sigaction with a handler that only stores an atomic; signal
    // masks changed and restored on this thread.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            return Err(failed("sigaction"));
        }
        if libc::kill(libc::getpid(), libc::SIGUSR1) != 0 {
            return Err(failed("kill"));
        }
        for _ in 0..100 {
            if SIGNALLED.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !SIGNALLED.load(Ordering::SeqCst) {
            return Err("the SIGUSR1 handler did not run".into());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGUSR2);
        let timeout = libc::timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let got = libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        if got != libc::SIGUSR2 {
            return Err(failed("sigtimedwait"));
        }
    }
    Ok("handler ran; sigtimedwait took SIGUSR2".into())
}

/// 1 MiB through a pipe from a writer thread.
fn pipes() -> Check {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 into a local array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as i64)
        .map_err(|_| failed("pipe2"))?;
    use std::os::fd::FromRawFd;
    // SAFETY: the two new descriptors, each owned by one File from here on.
    let (mut rx, mut tx) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let writer = std::thread::spawn(move || tx.write_all(&vec![7u8; 1 << 20]));
    let mut got = Vec::new();
    rx.read_to_end(&mut got).map_err(io("reading the pipe"))?;
    writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(io("writing the pipe"))?;
    if got.len() != 1 << 20 || got.iter().any(|&b| b != 7) {
        return Err(format!("read {} bytes, not 1 MiB of 7s", got.len()));
    }
    Ok("1 MiB".into())
}

/// Write, fsync, seek, read back, rename, stat, list, unlink in /tmp.
fn file_io() -> Check {
    let dir = format!("/tmp/caisson-probe-io-{}", std::process::id());
    std::fs::create_dir_all(&dir).map_err(io("mkdir"))?;
    let result = (|| {
        let a = format!("{dir}/a");
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&a)
            .map_err(io("create"))?;
        f.write_all(&data).map_err(io("write"))?;
        f.sync_all().map_err(io("fsync"))?;
        f.seek(SeekFrom::Start(0)).map_err(io("lseek"))?;
        let mut back = Vec::new();
        f.read_to_end(&mut back).map_err(io("read"))?;
        if back != data {
            return Err("read back differs".to_string());
        }
        let b = format!("{dir}/b");
        std::fs::rename(&a, &b).map_err(io("rename"))?;
        let len = std::fs::metadata(&b).map_err(io("stat"))?.len();
        let names = std::fs::read_dir(&dir)
            .map_err(io("readdir"))?
            .filter_map(|e| e.ok())
            .count();
        std::fs::remove_file(&b).map_err(io("unlink"))?;
        if len != 1 << 20 || names != 1 {
            return Err(format!("stat says {len} bytes, readdir {names} entries"));
        }
        Ok("1 MiB written, synced, read, renamed, removed".to_string())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A TCP echo over 127.0.0.1.
fn tcp() -> Check {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1"))?;
    let addr = listener.local_addr().map_err(io("getsockname"))?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        s.write_all(&buf)
    });
    let mut c = TcpStream::connect(addr).map_err(io("connect"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io("setsockopt"))?;
    c.write_all(b"ping").map_err(io("send"))?;
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).map_err(io("recv"))?;
    server
        .join()
        .map_err(|_| "server panicked".to_string())?
        .map_err(io("server"))?;
    if &buf != b"ping" {
        return Err(format!("echo returned {buf:?}"));
    }
    Ok(format!("echo over {addr}"))
}

/// A stream echo on a socket path, a socketpair and a datagram pair.
fn unix_sockets() -> Check {
    let path = format!("/tmp/caisson-probe-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io("bind"))?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        s.write_all(&buf)
    });
    let result = (|| {
        let mut c = UnixStream::connect(&path).map_err(io("connect"))?;
        c.write_all(b"pong").map_err(io("send"))?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).map_err(io("recv"))?;
        server
            .join()
            .map_err(|_| "server panicked".to_string())?
            .map_err(io("server"))?;
        let (mut a, mut b) = UnixStream::pair().map_err(io("socketpair"))?;
        a.write_all(b"pair").map_err(io("send on a socketpair"))?;
        let mut pair = [0u8; 4];
        b.read_exact(&mut pair)
            .map_err(io("recv on a socketpair"))?;
        let (d1, d2) = UnixDatagram::pair().map_err(io("datagram socketpair"))?;
        d1.send(b"dgram").map_err(io("send a datagram"))?;
        let mut dgram = [0u8; 8];
        let n = d2.recv(&mut dgram).map_err(io("recv a datagram"))?;
        if &buf != b"pong" || &pair != b"pair" || &dgram[..n] != b"dgram" {
            return Err("unix socket data came back wrong".to_string());
        }
        Ok("stream on a path, socketpair, datagrams".to_string())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Runs this program again (fork/clone + execve) and reads its output.
fn exec() -> Check {
    let out = std::process::Command::new("/proc/self/exe")
        .args(["echo", "exec", "works"])
        .output()
        .map_err(io("spawning /proc/self/exe"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.trim() != "exec works" {
        return Err(format!("child exited {} with {text:?}", out.status));
    }
    Ok("re-executed itself".into())
}

/// fork(2) and a child exit code seen through waitpid.
fn fork() -> Check {
    // SAFETY: the child only calls _exit; other threads have all been joined.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(failed("fork"));
    }
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(42) };
    }
    match crate::sys::wait_child(pid) {
        Ok(42) => Ok(format!("child {pid} exited 42")),
        Ok(other) => Err(format!("child exited {other}")),
        Err(e) => Err(format!("waitpid: {}", errno_name(e))),
    }
}

/// Clocks, nanosleep, a timerfd and getrandom: what runtimes do at start.
fn clock_and_sleep() -> Check {
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(10));
    if start.elapsed() < Duration::from_millis(10) {
        return Err("slept less than asked".into());
    }
    // SAFETY: timerfd and getrandom with local buffers; the fd is closed.
    unsafe {
        let tfd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC);
        if tfd < 0 {
            return Err(failed("timerfd_create"));
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            },
        };
        let set = libc::timerfd_settime(tfd, 0, &spec, std::ptr::null_mut());
        let mut expirations = 0u64;
        let n = libc::read(tfd, (&mut expirations as *mut u64).cast(), 8);
        libc::close(tfd);
        if set != 0 || n != 8 || expirations == 0 {
            return Err(failed("timerfd"));
        }
        let mut rnd = [0u8; 16];
        if libc::getrandom(rnd.as_mut_ptr().cast(), 16, 0) != 16 {
            return Err(failed("getrandom"));
        }
    }
    Ok("sleep, timerfd, getrandom".into())
}
