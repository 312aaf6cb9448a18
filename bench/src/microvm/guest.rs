//! What the host shows of a microvm pod's VM: its `boot.json` (the host
//! side writes it in the VM's dir when the guest's agent is ready) and its
//! host processes (the shim, the QEMU below it, the shim's helpers), and
//! their memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::caissond::{Caissond, SHIM};
use crate::cri::procfs::{self, Memory};
use crate::cri::Result;

/// A microvm pod's `boot.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Boot {
    pub accelerator: String,
    pub accelerator_reason: String,
    pub kernel_release: String,
    /// The guest's CLOCK_BOOTTIME when its agent was ready.
    pub guest_boot: Duration,
    /// From QEMU's spawn to the agent's Ready, on the host.
    pub spawn_to_ready: Duration,
}

impl Boot {
    fn parse(text: &str) -> Result<Boot> {
        let v: Value = serde_json::from_str(text)?;
        let text_of = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        let ms_of = |key: &str| {
            v[key]
                .as_u64()
                .map(Duration::from_millis)
                .ok_or_else(|| format!("no {key} in {text}"))
        };
        Ok(Boot {
            accelerator: text_of("accelerator"),
            accelerator_reason: text_of("accelerator_reason"),
            kernel_release: text_of("kernel_release"),
            guest_boot: ms_of("guest_boot_ms")?,
            spawn_to_ready: ms_of("spawn_to_ready_ms")?,
        })
    }

    /// The `boot.json` of pod `pod`'s VM below caissond's run dir.
    pub fn of(d: &Caissond, pod: &str) -> Result<Boot> {
        let run = d.dir().join("run");
        let dir = vm_dir(&run, &vm_dir_name(pod))
            .ok_or_else(|| format!("no VM dir of pod {pod} below {}", run.display()))?;
        let path = dir.join("boot.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Boot::parse(&text)
    }
}

/// The name the backend gives pod `pod`'s VM dir: 16 hex digits of the
/// SHA-256 of its id.
fn vm_dir_name(pod: &str) -> String {
    let digest = caisson_tests::fixtures::sha256(pod.as_bytes());
    digest.trim_start_matches("sha256:")[..16].to_string()
}

/// The dir `vm/<name>` below `root` (not into the VMs' shared dirs, which
/// hold the pods' root filesystems).
fn vm_dir(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || path.ends_with("shared") {
                continue;
            }
            if path.ends_with(name) && dir.ends_with("vm") {
                return Some(path);
            }
            stack.push(path);
        }
    }
    None
}

/// Whether `argv` is the QEMU of pod `pod`: `-name caisson-<12 chars of
/// the id>[,options]`.
fn is_qemu_of(argv: &[String], pod: &str) -> bool {
    let name = format!("caisson-{}", &pod[..pod.len().min(12)]);
    argv.windows(2)
        .any(|w| w[0] == "-name" && w[1].split(',').next() == Some(name.as_str()))
}

/// A microvm pod's host processes: its shim, the QEMU below it, and the
/// shim's other helpers.
pub struct VmPodProcesses {
    shim: u32,
    pub qemu: u32,
    helpers: Vec<u32>,
}

impl VmPodProcesses {
    pub fn of(d: &Caissond, pod: &str) -> Result<VmPodProcesses> {
        let all = procfs::processes();
        let below = procfs::shim_tree(&all, SHIM, d.dir(), pod)?;
        let qemus: Vec<u32> = all
            .iter()
            .filter(|p| below[1..].contains(&p.pid) && is_qemu_of(&p.argv, pod))
            .map(|p| p.pid)
            .collect();
        let [qemu] = qemus[..] else {
            return Err(procfs::tree_error(&all, &below, "one QEMU", qemus.len()));
        };
        Ok(VmPodProcesses {
            shim: below[0],
            qemu,
            helpers: below[1..].iter().copied().filter(|p| *p != qemu).collect(),
        })
    }

    /// Their memory now.
    pub fn memory(&self) -> Result<PodMemory> {
        let mut shim = Memory::of(self.shim)?;
        let mut helpers = 0;
        for helper in &self.helpers {
            // A helper may exit between the listing and the read.
            if let Ok(m) = Memory::of(*helper) {
                shim = shim + m;
                helpers += 1;
            }
        }
        Ok(PodMemory {
            qemu: Memory::of(self.qemu)?,
            shim,
            helpers,
        })
    }
}

/// One idle microvm pod's memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodMemory {
    pub qemu: Memory,
    /// The shim and its helpers.
    pub shim: Memory,
    pub helpers: usize,
}

impl PodMemory {
    pub fn total(&self) -> Memory {
        self.qemu + self.shim
    }

    pub fn json(&self) -> Value {
        json!({
            "qemu": self.qemu.json(),
            "shim_with_helpers": self.shim.json(),
            "shim_helpers": self.helpers,
            "total": self.total().json(),
        })
    }
}

impl std::ops::Add for PodMemory {
    type Output = PodMemory;
    fn add(self, other: PodMemory) -> PodMemory {
        PodMemory {
            qemu: self.qemu + other.qemu,
            shim: self.shim + other.shim,
            helpers: self.helpers + other.helpers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_boot_json() {
        let text = r#"{"accelerator":"tcg","accelerator_reason":"PVM","kernel_release":"6.1.0-41-amd64","guest_boot_ms":812,"spawn_to_ready_ms":1530}"#;
        let boot = Boot::parse(text).unwrap();
        assert_eq!(
            boot,
            Boot {
                accelerator: "tcg".into(),
                accelerator_reason: "PVM".into(),
                kernel_release: "6.1.0-41-amd64".into(),
                guest_boot: Duration::from_millis(812),
                spawn_to_ready: Duration::from_millis(1530),
            }
        );
        for bad in ["", "{}", r#"{"guest_boot_ms":1}"#] {
            assert!(Boot::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recognises_a_pods_qemu() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let qemu =
            argv("/usr/bin/qemu-system-x86_64 -name caisson-0123456789ab,debug-threads=on -m 512M");
        let cases = [
            (&qemu, "0123456789abcdef", true),
            (&qemu, "0123456789abffff", true),
            (&qemu, "0123456789ac", false),
            (&argv("sleep 3600"), "0123456789abcdef", false),
        ];
        for (argv, pod, want) in cases {
            assert_eq!(is_qemu_of(argv, pod), want, "{pod}");
        }
    }

    #[test]
    fn finds_a_vm_dir_by_the_pods_hash() {
        let root = tempfile::tempdir().unwrap();
        let name = vm_dir_name("pod-a");
        assert_eq!(name.len(), 16);
        let dir = root.path().join("shim/state/k8s.io/vm").join(&name);
        std::fs::create_dir_all(dir.join("shared/x")).unwrap();
        assert_eq!(vm_dir(root.path(), &name), Some(dir));
        assert_eq!(vm_dir(root.path(), &vm_dir_name("pod-b")), None);
    }
}
