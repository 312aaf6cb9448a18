//! What the microvm tests share: one VM at a time per test binary (two
//! cores run TCG guests), and the host-side leftovers a pod's teardown must
//! not leave (QEMU processes, mounts, the shim's VM directories).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::daemon::{wait_until, Caissond};

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Held by each microvm test of a binary while its VMs run.
pub fn turn() -> MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host processes whose command line contains `needle`.
pub fn host_processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push((pid, cmd.trim().to_string()));
        }
    }
    found
}

/// QEMU processes whose command line contains `needle`.
pub fn qemus_with(needle: &str) -> Vec<(u32, String)> {
    host_processes_with(needle)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system"))
        .collect()
}

/// QEMU processes of pod `pod` (their `-name` is `caisson-<id prefix>`).
pub fn qemu_of(pod: &str) -> Vec<u32> {
    qemus_with(&format!("caisson-{}", &pod[..12]))
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// The shims' VM directories (`<shim state>/vm/<hash>`) under `run_dir`.
pub fn vm_dirs(run_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![run_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                if path.parent().is_some_and(|p| p.ends_with("vm")) {
                    found.push(path.clone());
                }
                if !path.ends_with("shared") {
                    stack.push(path);
                }
            }
        }
    }
    found
}

/// caissond's run dir (its pods' and shims' state).
pub fn run_dir(d: &Caissond) -> PathBuf {
    d.pods_dir().parent().unwrap().to_path_buf()
}

/// Mount points under caissond's run dir but for its standing ones
/// ([`Caissond::standing_mounts`]): its pods'.
pub fn pod_mounts(d: &Caissond) -> Vec<String> {
    mounts_under(&run_dir(d))
        .into_iter()
        .filter(|m| !d.is_standing_mount(m))
        .collect()
}

/// Pod `pod`'s QEMU is gone, and no mount or VM directory is left under
/// caissond's run dir.
pub fn assert_nothing_left(d: &Caissond, pod: &str) {
    let run = run_dir(d);
    wait_until("the pod's QEMU to be gone", Duration::from_secs(30), || {
        qemu_of(pod).is_empty().then_some(())
    });
    assert_eq!(pod_mounts(d), Vec::<String>::new(), "mounts left");
    assert_eq!(vm_dirs(&run), Vec::<PathBuf>::new(), "VM dirs left");
}
