//! The handful of x86_64 Linux syscalls `caisson-pause` needs, made directly
//! with the `syscall` instruction (there is no libc), plus the process entry
//! point and the signal-return trampoline, which must be written in assembly.

use core::arch::{asm, global_asm};

const SYS_WRITE: usize = 1;
const SYS_RT_SIGACTION: usize = 13;
const SYS_PAUSE: usize = 34;
const SYS_WAIT4: usize = 61;
const SYS_EXIT_GROUP: usize = 231;

/// `EINTR`, as a negative return value of a raw syscall.
const EINTR: isize = -4;

pub const SIGINT: usize = 2;
pub const SIGTERM: usize = 15;
pub const SIGCHLD: usize = 17;

const SA_NOCLDSTOP: u64 = 0x0000_0001;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_RESTART: u64 = 0x1000_0000;

const WNOHANG: usize = 0x0000_0001;
/// Wait for every kind of child, whatever signal it was cloned to send.
const WALL: usize = 0x4000_0000;

pub const STDOUT: usize = 1;
pub const STDERR: usize = 2;

// The kernel starts the process at `_start` with `rsp` pointing at argc,
// followed by argv[], NULL, envp[], NULL, auxv. Hand that pointer to Rust with
// the stack aligned as the System V ABI expects at a call.
global_asm!(
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym crate::start,
);

// Where a signal handler returns to: x86_64 rt_sigaction requires
// SA_RESTORER and a trampoline that calls rt_sigreturn (15).
global_asm!(
    ".globl caisson_pause_restore_rt",
    ".type caisson_pause_restore_rt, @function",
    "caisson_pause_restore_rt:",
    "mov eax, 15",
    "syscall",
    "ud2",
);

extern "C" {
    fn caisson_pause_restore_rt();
}

/// The kernel's `struct sigaction` on x86_64 (not glibc's).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

#[inline(always)]
unsafe fn syscall1(nr: usize, a1: usize) -> isize {
    let ret: isize;
    asm!(
        "syscall",
        inlateout("rax") nr as isize => ret,
        in("rdi") a1,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

#[inline(always)]
unsafe fn syscall4(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    asm!(
        "syscall",
        inlateout("rax") nr as isize => ret,
        in("rdi") a1,
        in("rsi") a2,
        in("rdx") a3,
        in("r10") a4,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

/// Ends the whole process (every thread) with `code`.
pub fn exit_group(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes no pointers and does not return.
        unsafe { syscall1(SYS_EXIT_GROUP, code) };
    }
}

/// Writes all of `bytes` to `fd`, retrying short writes and EINTR; gives up
/// silently on any other error (there is nobody to tell).
pub fn write_all(fd: usize, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { syscall4(SYS_WRITE, fd, bytes.as_ptr() as usize, bytes.len(), 0) };
        if n == EINTR {
            continue;
        }
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Sleeps until a signal is delivered (the `pause` syscall).
pub fn pause() {
    // SAFETY: pause takes no arguments.
    unsafe { syscall1(SYS_PAUSE, 0) };
}

/// Reaps every child that has already exited, without blocking.
pub fn reap_exited_children() {
    loop {
        // SAFETY: null status and rusage pointers are allowed.
        let pid = unsafe {
            syscall4(
                SYS_WAIT4,
                usize::MAX, /* -1: any child */
                0,
                WNOHANG | WALL,
                0,
            )
        };
        if pid == EINTR {
            continue;
        }
        // 0: children left, none exited yet; negative: no children (ECHILD).
        if pid <= 0 {
            return;
        }
    }
}

/// Installs `handler` for `signal`; on return from the handler the
/// interrupted syscall is restarted where that makes sense (SA_RESTART).
/// Returns false if the kernel refused.
pub fn set_handler(signal: usize, handler: extern "C" fn(i32)) -> bool {
    let action = KernelSigaction {
        handler: handler as usize,
        flags: SA_RESTORER | SA_RESTART | SA_NOCLDSTOP,
        restorer: caisson_pause_restore_rt as *const () as usize,
        mask: 0,
    };
    // SAFETY: `action` is a valid kernel sigaction that outlives the call, the
    // old action is not asked for, and 8 is sizeof(kernel sigset_t).
    let ret = unsafe {
        syscall4(
            SYS_RT_SIGACTION,
            signal,
            &action as *const KernelSigaction as usize,
            0,
            8,
        )
    };
    ret == 0
}
