//! OCI bundles for shim and backend tests: a busybox (or pause) rootfs
//! unpacked from the fixtures and a `config.json` shaped like `runc spec`'s
//! default, which tests then adjust.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::fixtures::{busybox_layer, pause_binary};

/// CRI's annotation names, as containerd's CRI plugin sets them.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A bundle directory: `config.json` plus `rootfs/`.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Value,
}

impl Bundle {
    /// A busybox rootfs under `dir` running `args`.
    pub fn busybox(dir: &Path, args: &[&str]) -> Bundle {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let layer = busybox_layer();
        let mut archive = tar::Archive::new(&layer[..]);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive
            .unpack(&rootfs)
            .unwrap_or_else(|e| panic!("unpacking busybox into {}: {e}", rootfs.display()));
        Bundle {
            dir: dir.to_path_buf(),
            spec: default_spec(args),
        }
    }

    /// A rootfs holding only `/pause` (from `caisson-pause`), running it.
    pub fn pause(dir: &Path) -> Bundle {
        let rootfs = dir.join("rootfs");
        for d in ["proc", "dev", "sys"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(pause_binary(), rootfs.join("pause")).unwrap();
        let mut spec = default_spec(&["/pause"]);
        spec["process"]["user"] = json!({"uid": 65535, "gid": 65535});
        Bundle {
            dir: dir.to_path_buf(),
            spec,
        }
    }

    /// Marks the bundle as a CRI sandbox.
    pub fn as_sandbox(mut self, sandbox_id: &str) -> Bundle {
        self.annotate(CONTAINER_TYPE, "sandbox")
            .annotate(SANDBOX_ID, sandbox_id);
        self
    }

    /// Marks the bundle as a container of `sandbox_id`.
    pub fn in_sandbox(mut self, sandbox_id: &str) -> Bundle {
        self.annotate(CONTAINER_TYPE, "container")
            .annotate(SANDBOX_ID, sandbox_id);
        self
    }

    pub fn annotate(&mut self, key: &str, value: &str) -> &mut Bundle {
        if !self.spec["annotations"].is_object() {
            self.spec["annotations"] = json!({});
        }
        self.spec["annotations"][key] = json!(value);
        self
    }

    /// Sets (or adds) a namespace; `path` joins an existing one.
    pub fn namespace(&mut self, kind: &str, path: Option<&str>) -> &mut Bundle {
        let list = self.spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces");
        list.retain(|n| n["type"] != kind);
        let mut ns = json!({"type": kind});
        if let Some(p) = path {
            ns["path"] = json!(p);
        }
        list.push(ns);
        self
    }

    /// Removes a namespace (the process stays in the shim's).
    pub fn without_namespace(&mut self, kind: &str) -> &mut Bundle {
        self.spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .retain(|n| n["type"] != kind);
        self
    }

    pub fn cgroups_path(&mut self, path: &str) -> &mut Bundle {
        self.spec["linux"]["cgroupsPath"] = json!(path);
        self
    }

    pub fn terminal(&mut self, on: bool) -> &mut Bundle {
        self.spec["process"]["terminal"] = json!(on);
        self
    }

    /// Writes `config.json`; returns the bundle dir.
    pub fn write(&self) -> PathBuf {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.spec).unwrap(),
        )
        .unwrap();
        self.dir.clone()
    }
}

/// The capabilities container runtimes grant by default.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A runtime spec like `runc spec`'s: new pid/ipc/uts/mount/network
/// namespaces, the usual /proc, /dev and /sys mounts, masked paths.
pub fn default_spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "caisson-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// A unique-enough name for cgroups and ids in tests.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
