//! `caisson-pause`: the infra process of a Caisson pod, like Kubernetes' `pause`.
//!
//! It is started first in every pod sandbox and holds the pod's namespaces
//! open while the pod lives. Running as PID 1 of the pod's PID namespace, it
//! also becomes the parent of every orphaned process in the pod and must reap
//! them so that no zombies pile up.
//!
//! Behaviour:
//! * no arguments: install signal handlers, then sleep in the `pause` syscall
//!   forever. The SIGCHLD handler reaps every exited child with
//!   `wait4(-1, WNOHANG | __WALL)` in a loop; the SIGINT and SIGTERM handlers
//!   end the process with `exit_group(0)`.
//! * `-v` / `--version`: print `caisson-pause <version>` and exit 0.
//! * `-h` / `--help`: print usage to stdout and exit 0.
//! * anything else: print usage to stderr and exit 2.
//!
//! It must stay tiny (binary ≤ 128 KiB, RSS ≤ 256 KiB, one per pod), so it is
//! `#![no_std]` and `#![no_main]` with no libc at all: raw x86_64 syscalls
//! ([`sys`]), its own `_start`, and a panic handler that exits with status 2.
//! `build.rs` links it statically without C start files. Only x86_64 Linux is
//! supported.

#![no_std]
#![no_main]

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "caisson-pause supports only x86_64 Linux: it makes raw x86_64 syscalls and has its own _start"
);

mod sys;

const VERSION_LINE: &str = concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION"), "\n");
const USAGE: &str = concat!(
    "usage: ",
    env!("CARGO_PKG_NAME"),
    " [-v | --version | -h | --help]\n",
    "Sleeps as a pod's infra process: reaps orphaned children, exits 0 on SIGINT or SIGTERM.\n",
);

/// Exit status for a bad command line (and for a panic, which cannot happen).
const EXIT_USAGE: usize = 2;

/// Called by `_start` with the initial stack pointer: `argc`, then `argv`.
///
/// # Safety
/// `stack` must be the process's initial stack pointer as set up by the kernel.
unsafe extern "C" fn start(stack: *const usize) -> ! {
    let argc = *stack;
    let argv = stack.add(1) as *const *const u8;
    match argc {
        0 | 1 => run(),
        2 => {
            let arg = *argv.add(1);
            if c_str_eq(arg, b"-v") || c_str_eq(arg, b"--version") {
                sys::write_all(sys::STDOUT, VERSION_LINE.as_bytes());
                sys::exit_group(0)
            }
            if c_str_eq(arg, b"-h") || c_str_eq(arg, b"--help") {
                sys::write_all(sys::STDOUT, USAGE.as_bytes());
                sys::exit_group(0)
            }
            usage_error()
        }
        _ => usage_error(),
    }
}

fn usage_error() -> ! {
    sys::write_all(sys::STDERR, USAGE.as_bytes());
    sys::exit_group(EXIT_USAGE)
}

/// Whether the NUL-terminated string at `ptr` equals `expected`. Compares as
/// it walks (rather than measuring the string first) so that LLVM does not
/// turn the loop into a call to libc's `strlen`, which is not linked.
///
/// # Safety
/// `ptr` must be null or point to a NUL-terminated string.
unsafe fn c_str_eq(ptr: *const u8, expected: &[u8]) -> bool {
    if ptr.is_null() {
        return false;
    }
    for (i, &want) in expected.iter().enumerate() {
        if *ptr.add(i) != want {
            return false;
        }
    }
    *ptr.add(expected.len()) == 0
}

/// Installs the handlers and sleeps forever; the handlers do all the work.
fn run() -> ! {
    let installed = sys::set_handler(sys::SIGCHLD, on_sigchld)
        && sys::set_handler(sys::SIGINT, on_terminate)
        && sys::set_handler(sys::SIGTERM, on_terminate);
    if !installed {
        sys::write_all(sys::STDERR, b"caisson-pause: rt_sigaction failed\n");
        sys::exit_group(1);
    }
    // Children may have been re-parented to us and exited before the SIGCHLD
    // handler existed; reap them now.
    sys::reap_exited_children();
    loop {
        sys::pause();
    }
}

extern "C" fn on_sigchld(_signal: i32) {
    sys::reap_exited_children();
}

extern "C" fn on_terminate(_signal: i32) {
    sys::exit_group(0);
}

/// The prebuilt libcore is compiled with `panic = "unwind"`, so its unwind
/// tables name this symbol. This binary is `panic = "abort"` and never
/// unwinds, so it is never called; it only has to exist for the linker.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    sys::exit_group(EXIT_USAGE)
}
