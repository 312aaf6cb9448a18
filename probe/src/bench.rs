//! Micro-benchmarks run inside a container: each prints
//! `name<TAB>iterations<TAB>ns/op` after one untimed warm-up pass.
//! `getpid-allow-all` first loads an allow-all seccomp filter into its own
//! process (each `bench` runs in a process of its own).

use std::io::Write;
use std::time::Instant;

use crate::sys::{cstr, errno_name};

/// `bench <what> ...`.
pub fn main(args: &[String]) -> Result<bool, String> {
    let count = |i: usize| -> Result<u64, String> {
        args.get(i)
            .ok_or("missing iteration count")?
            .parse::<u64>()
            .map_err(|e| format!("iteration count: {e}"))
            .and_then(|n| {
                if n == 0 {
                    Err("iteration count must be at least 1".into())
                } else {
                    Ok(n)
                }
            })
    };
    match args.first().map(String::as_str) {
        Some("getpid") => report("getpid", count(1)?, |_| getpid()),
        // What any seccomp filter costs before its first instruction: the
        // syscall entry's slow path. Run where no filter is loaded yet.
        Some("getpid-allow-all") => {
            let n = count(1)?;
            load_allow_all_filter()?;
            report("getpid-allow-all", n, |_| getpid())
        }
        Some("openread") => {
            let path = args
                .get(2)
                .map_or("/etc/passwd", String::as_str)
                .to_string();
            let path_c = cstr(&path);
            report("openread", count(1)?, |_| open_read(&path_c, &path))
        }
        Some("run") => {
            let n = count(1)?;
            if args.get(2).map(String::as_str) != Some("--") || args.len() < 4 {
                return Err("usage: bench run N -- CMD [ARGS...]".into());
            }
            let argv = args[3..].to_vec();
            report("run", n, |_| run(&argv))
        }
        Some("mktree") => {
            let dir = args.get(1).ok_or("usage: bench mktree DIR FILES")?;
            let files = count(2)?;
            mktree(dir, files)?;
            println!("mktree\t{files}\t0");
            Ok(true)
        }
        _ => Err(
            "usage: bench getpid N | getpid-allow-all N | openread N [PATH] | run N -- CMD... \
             | mktree DIR FILES"
                .into(),
        ),
    }
}

/// One warm-up pass of `min(n, 1000)`, then `n` timed iterations.
fn report(
    name: &str,
    n: u64,
    mut op: impl FnMut(u64) -> Result<(), String>,
) -> Result<bool, String> {
    for i in 0..n.min(1000) {
        op(i)?;
    }
    let start = Instant::now();
    for i in 0..n {
        op(i)?;
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{name}\t{n}\t{ns:.1}");
    Ok(true)
}

/// The raw syscall (glibc no longer caches the pid, but be explicit).
fn getpid() -> Result<(), String> {
    // SAFETY: getpid has no arguments.
    let pid = unsafe { libc::syscall(libc::SYS_getpid) };
    if pid <= 0 {
        return Err("getpid failed".into());
    }
    Ok(())
}

/// Loads a one-instruction filter that allows every syscall (the kernel's
/// per-syscall cache answers it without running it).
fn load_allow_all_filter() -> Result<(), String> {
    let mut filter = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with a filter program that outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ) != 0
        {
            return Err(format!(
                "loading an allow-all seccomp filter: {}",
                errno_name(crate::sys::errno())
            ));
        }
    }
    Ok(())
}

fn open_read(path: &std::ffi::CStr, shown: &str) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    // SAFETY: open/read/close on a NUL-terminated path and a local buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(format!("open {shown}: {}", errno_name(crate::sys::errno())));
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        if n < 0 {
            return Err(format!("read {shown}: {}", errno_name(crate::sys::errno())));
        }
    }
    Ok(())
}

fn run(argv: &[String]) -> Result<(), String> {
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if !status.success() {
        return Err(format!("{argv:?} exited {status}"));
    }
    Ok(())
}

/// `files` files of 4 KiB, 50 to a directory, under `dir`.
fn mktree(dir: &str, files: u64) -> Result<(), String> {
    let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    for i in 0..files {
        let sub = format!("{dir}/d{:04}", i / 50);
        if i % 50 == 0 {
            std::fs::create_dir_all(&sub).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        let path = format!("{sub}/f{i:06}");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&block))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}
