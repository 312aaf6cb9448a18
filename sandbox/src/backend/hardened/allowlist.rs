//! The hardened backend's syscall allow-list: everything a container may
//! call. Anything not listed fails with `EPERM` (the filter's default), so
//! software degrades instead of dying. One group per line of reasoning; keep
//! each group's reason to one line.
//!
//! x86-64 names (the filter is built for `SCMP_ARCH_X86_64` only: 32-bit
//! and x32 entry points are not allowed at all). Names the running
//! libseccomp does not know are skipped by libcontainer.

/// Syscalls allowed whatever their arguments, grouped with the reason.
pub const UNCONDITIONAL: &[(&str, &[&str])] = &[
    (
        "file I/O on descriptors the process already holds",
        &[
            "read",
            "write",
            "readv",
            "writev",
            "pread64",
            "pwrite64",
            "preadv",
            "pwritev",
            "preadv2",
            "pwritev2",
            "lseek",
            "close",
            "close_range",
            "dup",
            "dup2",
            "dup3",
            "fcntl",
            "flock",
            "fsync",
            "fdatasync",
            "sync",
            "syncfs",
            "sync_file_range",
            "ftruncate",
            "fallocate",
            "fadvise64",
            "sendfile",
            "splice",
            "tee",
            "vmsplice",
            "copy_file_range",
            "readahead",
        ],
    ),
    (
        "opening, inspecting and changing files by path (confined by the mount namespace)",
        &[
            "open",
            "openat",
            "openat2",
            "creat",
            "stat",
            "fstat",
            "lstat",
            "newfstatat",
            "statx",
            "statfs",
            "fstatfs",
            "access",
            "faccessat",
            "faccessat2",
            "readlink",
            "readlinkat",
            "getdents",
            "getdents64",
            "mkdir",
            "mkdirat",
            "rmdir",
            "unlink",
            "unlinkat",
            "rename",
            "renameat",
            "renameat2",
            "link",
            "linkat",
            "symlink",
            "symlinkat",
            "truncate",
            "chdir",
            "fchdir",
            "getcwd",
            "chmod",
            "fchmod",
            "fchmodat",
            "chown",
            "fchown",
            "lchown",
            "fchownat",
            "umask",
            "utime",
            "utimes",
            "utimensat",
            "futimesat",
            "mknod",
            "mknodat",
            "getxattr",
            "lgetxattr",
            "fgetxattr",
            "listxattr",
            "llistxattr",
            "flistxattr",
            "setxattr",
            "lsetxattr",
            "fsetxattr",
            "removexattr",
            "lremovexattr",
            "fremovexattr",
        ],
    ),
    (
        "memory management of the process's own address space",
        &[
            "brk",
            "mmap",
            "munmap",
            "mremap",
            "mprotect",
            "madvise",
            "msync",
            "mincore",
            "mlock",
            "mlock2",
            "munlock",
            "mlockall",
            "munlockall",
            "membarrier",
            "pkey_alloc",
            "pkey_free",
            "pkey_mprotect",
        ],
    ),
    (
        "running programs and managing its own processes and threads",
        &[
            "execve",
            "execveat",
            "fork",
            "vfork",
            "exit",
            "exit_group",
            "wait4",
            "waitid",
            "set_tid_address",
            "set_robust_list",
            "get_robust_list",
            "rseq",
            "arch_prctl",
            "futex",
            "futex_waitv",
            "sched_yield",
            "sched_getaffinity",
            "sched_setaffinity",
            "sched_getparam",
            "sched_setparam",
            "sched_getscheduler",
            "sched_setscheduler",
            "sched_get_priority_max",
            "sched_get_priority_min",
            "sched_rr_get_interval",
            "sched_getattr",
            "sched_setattr",
            "getpriority",
            "setpriority",
            "pidfd_open",
            "pidfd_send_signal",
            "pidfd_getfd",
        ],
    ),
    (
        "identity: reading it, and changing it within what capabilities allow",
        &[
            "getpid",
            "getppid",
            "gettid",
            "getuid",
            "geteuid",
            "getgid",
            "getegid",
            "getresuid",
            "getresgid",
            "getgroups",
            "setuid",
            "setgid",
            "setreuid",
            "setregid",
            "setresuid",
            "setresgid",
            "setgroups",
            "setfsuid",
            "setfsgid",
            "getpgid",
            "setpgid",
            "getpgrp",
            "getsid",
            "setsid",
            "capget",
            "capset",
            "getrlimit",
            "setrlimit",
            "prlimit64",
            "getrusage",
            "times",
            "uname",
            "sysinfo",
            "getcpu",
            "getrandom",
        ],
    ),
    (
        "signals and timers",
        &[
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "rt_sigpending",
            "rt_sigtimedwait",
            "rt_sigqueueinfo",
            "rt_tgsigqueueinfo",
            "rt_sigsuspend",
            "sigaltstack",
            "kill",
            "tkill",
            "tgkill",
            "pause",
            "alarm",
            "nanosleep",
            "clock_nanosleep",
            "clock_gettime",
            "clock_getres",
            "gettimeofday",
            "time",
            "getitimer",
            "setitimer",
            "timer_create",
            "timer_settime",
            "timer_gettime",
            "timer_getoverrun",
            "timer_delete",
            "timerfd_create",
            "timerfd_settime",
            "timerfd_gettime",
            "signalfd",
            "signalfd4",
        ],
    ),
    (
        "waiting on descriptors, pipes and in-process event objects",
        &[
            "poll",
            "ppoll",
            "select",
            "pselect6",
            "epoll_create",
            "epoll_create1",
            "epoll_ctl",
            "epoll_wait",
            "epoll_pwait",
            "epoll_pwait2",
            "eventfd",
            "eventfd2",
            "pipe",
            "pipe2",
            "inotify_init",
            "inotify_init1",
            "inotify_add_watch",
            "inotify_rm_watch",
            "memfd_create",
        ],
    ),
    (
        "socket operations (which sockets may be made is filtered below)",
        &[
            "bind",
            "connect",
            "listen",
            "accept",
            "accept4",
            "getsockname",
            "getpeername",
            "sendto",
            "recvfrom",
            "sendmsg",
            "recvmsg",
            "sendmmsg",
            "recvmmsg",
            "shutdown",
            "getsockopt",
            "setsockopt",
        ],
    ),
    (
        "System V and POSIX IPC, confined to the pod's IPC namespace",
        &[
            "shmget",
            "shmat",
            "shmdt",
            "shmctl",
            "semget",
            "semop",
            "semtimedop",
            "semctl",
            "msgget",
            "msgsnd",
            "msgrcv",
            "msgctl",
            "mq_open",
            "mq_unlink",
            "mq_timedsend",
            "mq_timedreceive",
            "mq_notify",
            "mq_getsetattr",
        ],
    ),
    (
        "asynchronous I/O the classic way (io_uring is not allowed: a large attack surface)",
        &[
            "io_setup",
            "io_destroy",
            "io_submit",
            "io_cancel",
            "io_getevents",
            "io_pgetevents",
        ],
    ),
    (
        "self-sandboxing, which only narrows (Landlock, more seccomp filters under no_new_privs)",
        &[
            "landlock_create_ruleset",
            "landlock_add_rule",
            "landlock_restrict_self",
            "seccomp",
        ],
    ),
    (
        "changing root inside the container's own mount namespace (needs CAP_SYS_CHROOT)",
        &["chroot"],
    ),
];

/// `clone` flags that make new namespaces (`CLONE_NEWTIME` is not one here:
/// its bit is part of `clone`'s exit-signal byte).
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000; // CLONE_NEWNET

/// Address families `socket` accepts: unix, inet, inet6 (netlink is allowed
/// for `NETLINK_ROUTE` only, see [`AF_NETLINK`]). No packet or raw families.
pub const SOCKET_FAMILIES: &[u64] = &[
    1,  /* AF_UNIX */
    2,  /* AF_INET */
    10, /* AF_INET6 */
];
/// Netlink, allowed with protocol `NETLINK_ROUTE` (0) only: `ip addr`, `getaddrinfo`.
pub const AF_NETLINK: u64 = 16;
/// `socketpair` makes unix sockets only.
pub const AF_UNIX: u64 = 1;

/// `ioctl` requests allowed: terminal control, descriptor flags, and
/// read-only network interface queries (`ip`, `ifconfig` look names up).
pub const IOCTL_REQUESTS: &[u64] = &[
    0x8910,      // SIOCGIFNAME
    0x8912,      // SIOCGIFCONF
    0x8913,      // SIOCGIFFLAGS
    0x8915,      // SIOCGIFADDR
    0x8921,      // SIOCGIFMTU
    0x8927,      // SIOCGIFHWADDR
    0x8933,      // SIOCGIFINDEX
    0x5401,      // TCGETS
    0x5402,      // TCSETS
    0x5403,      // TCSETSW
    0x5404,      // TCSETSF
    0x5409,      // TCSBRK
    0x540A,      // TCXONC
    0x540B,      // TCFLSH
    0x540E,      // TIOCSCTTY
    0x540F,      // TIOCGPGRP
    0x5410,      // TIOCSPGRP
    0x5411,      // TIOCOUTQ
    0x5413,      // TIOCGWINSZ
    0x5414,      // TIOCSWINSZ
    0x541B,      // FIONREAD
    0x5421,      // FIONBIO
    0x5422,      // TIOCNOTTY
    0x5429,      // TIOCGSID
    0x5441,      // TIOCGPTPEER
    0x5450,      // FIONCLEX
    0x5451,      // FIOCLEX
    0x5452,      // FIOASYNC
    0x8004_5430, // TIOCGPTN
    0x4004_5431, // TIOCSPTLCK
];

/// `prctl` options allowed: naming, death signals, dumpability, subreaper,
/// no_new_privs and seccomp (both only narrow), capability queries, THP.
/// Not `PR_SET_MM` (rewrites the process's memory map descriptors).
pub const PRCTL_OPTIONS: &[u64] = &[
    1,           // PR_SET_PDEATHSIG
    2,           // PR_GET_PDEATHSIG
    3,           // PR_GET_DUMPABLE
    4,           // PR_SET_DUMPABLE
    7,           // PR_GET_KEEPCAPS
    8,           // PR_SET_KEEPCAPS
    15,          // PR_SET_NAME
    16,          // PR_GET_NAME
    21,          // PR_GET_SECCOMP
    22,          // PR_SET_SECCOMP
    23,          // PR_CAPBSET_READ
    24,          // PR_CAPBSET_DROP
    29,          // PR_SET_TIMERSLACK
    30,          // PR_GET_TIMERSLACK
    36,          // PR_SET_CHILD_SUBREAPER
    37,          // PR_GET_CHILD_SUBREAPER
    38,          // PR_SET_NO_NEW_PRIVS
    39,          // PR_GET_NO_NEW_PRIVS
    40,          // PR_GET_TID_ADDRESS
    41,          // PR_SET_THP_DISABLE
    42,          // PR_GET_THP_DISABLE
    47,          // PR_CAP_AMBIENT
    0x5356_4d41, // PR_SET_VMA (naming anonymous mappings)
];

/// `personality` values allowed: Linux, 32-bit Linux, and the query.
pub const PERSONALITIES: &[u64] = &[0x0, 0x8, 0xffff_ffff];

/// Syscalls that fail with `ENOSYS` instead of `EPERM`, because programs
/// probe them and fall back: `clone3` (glibc falls back to `clone`, whose
/// flags the filter can inspect; `clone3` passes them in memory).
pub const ENOSYS: &[&str] = &["clone3"];
