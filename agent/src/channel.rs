//! The host channel: the virtio-serial port named `caisson.agent`, opened
//! once, read by one thread and written by many, whole frames at a time
//! under one lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use caisson_agent_proto::{encode_frame, event, Frame};

use crate::log::log;

/// The port's name, as the host's `virtserialport,name=` gives it.
const PORT_NAME: &str = "caisson.agent";

/// Finds the port under `/sys/class/virtio-ports` (the virtio_console
/// module binds it asynchronously, so this retries until `deadline`) and
/// opens its device node, making the node from `dev` if devtmpfs has not.
pub fn open_port(wait: Duration) -> Result<File, String> {
    let deadline = Instant::now() + wait;
    loop {
        match find_port() {
            Some(dev) => {
                return OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dev)
                    .map_err(|e| format!("opening {}: {e}", dev.display()));
            }
            None if Instant::now() >= deadline => {
                return Err(format!(
                    "no virtio-serial port named {PORT_NAME} under /sys/class/virtio-ports"
                ))
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn find_port() -> Option<PathBuf> {
    for entry in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() != PORT_NAME {
            continue;
        }
        let node = PathBuf::from("/dev").join(entry.file_name());
        if node.exists() {
            return Some(node);
        }
        let dev = fs::read_to_string(entry.path().join("dev")).ok()?;
        let (major, minor) = dev.trim().split_once(':')?;
        let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major, minor),
        )
        .ok()?;
        return Some(node);
    }
    None
}

/// The writing half: every frame the agent sends goes through here.
pub struct Channel {
    port: Mutex<File>,
    failed: AtomicBool,
}

impl Channel {
    pub fn new(port: File) -> Channel {
        Channel {
            port: Mutex::new(port),
            failed: AtomicBool::new(false),
        }
    }

    /// Sends one frame. A failed write is logged once: the host is gone,
    /// and the agent carries on (it is PID 1).
    pub fn send(&self, frame: &Frame) {
        let buf = encode_frame(frame);
        let mut port = self.port.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = port.write_all(&buf) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                log!("writing to the host channel: {e}");
            }
        }
    }

    pub fn event(&self, kind: event::Kind) {
        self.send(&Frame::event(kind));
    }
}
