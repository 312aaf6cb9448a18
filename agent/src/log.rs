//! Logging to the guest console (the agent's stderr, `/dev/console`), each
//! line stamped with the guest's boot time: the host keeps the console log
//! for diagnosis.

/// Milliseconds since the guest booted (`CLOCK_BOOTTIME`).
pub fn boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Writes one line to the console.
pub fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let ms = boot_ms();
    let text = format!(
        "[{:>5}.{:03}] caisson-agent: {args}\n",
        ms / 1000,
        ms % 1000
    );
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `log!("...", args)`: one line on the guest console.
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
pub(crate) use log;
