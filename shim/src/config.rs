//! caissond's configuration: TOML, with an embedded default (`caisson.toml`
//! beside this crate) that `--print-default-config` prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caisson_image::RegistriesConfig;
use serde::{Deserialize, Serialize};

/// The embedded default configuration, verbatim.
pub const DEFAULT_CONFIG: &str = include_str!("../caisson.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    #[serde(default)]
    pub pause_image: String,
    #[serde(default)]
    pub pause_binary: String,
    #[serde(default)]
    pub shim_binary: String,
    pub cgroup_parent: String,
    /// `[cgroups]`: the QoS hierarchy built under `cgroup_parent` when
    /// kubelet gives no parent.
    #[serde(default)]
    pub cgroups: CgroupsConfig,
    #[serde(default = "default_stop_timeout")]
    pub default_stop_timeout: u64,
    #[serde(default)]
    pub log: LogConfig,
    pub runtimes: Runtimes,
    /// Registry pulls: mirrors, plain HTTP, CAs, credentials, limits.
    #[serde(default)]
    pub registries: RegistriesConfig,
    /// Pod networking through CNI.
    #[serde(default)]
    pub network: NetworkConfig,
    /// The Exec/Attach/PortForward server.
    #[serde(default)]
    pub streaming: crate::streaming::config::StreamingConfig,
    /// The Prometheus endpoint (off unless `[metrics] address` is set).
    #[serde(default)]
    pub metrics: crate::metrics_http::MetricsConfig,
    /// `[cdi]`: where CDI spec files are read for `CDI_devices`.
    #[serde(default)]
    pub cdi: crate::spec::cdi::CdiConfig,
    /// `[checkpoint]`: CheckpointContainer's CRIU.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// `[images]`: limits of the image store.
    #[serde(default)]
    pub images: ImagesConfig,
}

/// `[images]`: what one image may cost the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Bytes of uncompressed tar one layer may have (file contents, holes
    /// included): a gzip or zstd bomb is cut there and leaves nothing.
    #[serde(default = "default_max_unpacked_layer_size")]
    pub max_unpacked_layer_size: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            max_unpacked_layer_size: default_max_unpacked_layer_size(),
        }
    }
}

fn default_max_unpacked_layer_size() -> u64 {
    caisson_image::layers::DEFAULT_MAX_UNPACKED
}

/// `[checkpoint]`: which CRIU CheckpointContainer and restores run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The CRIU binary; empty: the `make criu` build if present, else
    /// `criu` on `PATH`. Shims caissond starts get it as `CAISSON_CRIU_PATH`.
    #[serde(default)]
    pub criu_path: PathBuf,
}

/// `[cgroups]`: the node-allocatable level of the QoS hierarchy (0 =
/// unlimited).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupsConfig {
    /// Memory all pods together may use, in bytes.
    #[serde(default)]
    pub allocatable_memory: u64,
    /// CPU all pods together are weighted by, in milli-CPU.
    #[serde(default)]
    pub allocatable_cpu_milli: u64,
    /// containerd's setting of that name: no container gets a lower
    /// `oom_score_adj` than caissond's own. Off: only scores the kernel
    /// would refuse (negative ones without CAP_SYS_RESOURCE) are raised,
    /// with one warning.
    #[serde(default)]
    pub restrict_oom_score_adj: bool,
    /// `pids.max` of every pod cgroup caissond makes (kubelet's
    /// `--pod-max-pids`); 0 = unlimited.
    #[serde(default)]
    pub pod_pids_limit: u64,
}

impl CgroupsConfig {
    /// The QoS hierarchy under `top` on this node's cgroupfs.
    pub fn qos_tree(&self, top: &str) -> caisson_cgroups::QosTree<caisson_cgroups::fs::CgroupRoot> {
        let nonzero = |v: u64| (v != 0).then_some(v);
        caisson_cgroups::QosTree::new(
            caisson_cgroups::fs::CgroupRoot::host(),
            top,
            caisson_cgroups::NodeAllocatable {
                memory: nonzero(self.allocatable_memory),
                cpu_milli: nonzero(self.allocatable_cpu_milli),
            },
        )
    }
}

/// `[network]`: where CNI configs and plugins are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The first `*.conflist` / `*.conf` here (file-name order) is used.
    #[serde(default = "default_cni_conf_dir")]
    pub cni_conf_dir: PathBuf,
    /// Searched in order for plugin binaries.
    #[serde(default = "default_cni_bin_dirs")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// At start, write Caisson's default conflist into `cni_conf_dir` if it has none.
    #[serde(default)]
    pub install_default_cni_config: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            cni_conf_dir: default_cni_conf_dir(),
            cni_bin_dirs: default_cni_bin_dirs(),
            install_default_cni_config: false,
        }
    }
}

fn default_cni_conf_dir() -> PathBuf {
    PathBuf::from("/etc/cni/net.d")
}

fn default_cni_bin_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
}

fn default_stop_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtimes {
    pub default_handler: String,
    pub handlers: BTreeMap<String, Handler>,
}

/// One runtime handler (a RuntimeClass `handler`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    /// `native`, `hardened`, `oci` (an external OCI runtime CLI named by
    /// `options.runtime_path`) or `microvm` (a QEMU VM per pod).
    pub backend: String,
    /// Backend options, passed to the shim.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// What the handler costs a pod beyond its containers (a microvm pod's
    /// VM), counted in the pod's cgroup when the pod brings no overhead of
    /// its own (kubelet sends its RuntimeClass's `overhead.podFixed`;
    /// crictl sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_overhead: Option<PodOverhead>,
}

/// A handler's fixed cost per pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodOverhead {
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub cpu_millicores: u64,
}

impl PodOverhead {
    /// As the CRI's `LinuxPodSandboxConfig.overhead` (what kubelet sends
    /// for a RuntimeClass overhead: memory limit and CPU shares).
    pub fn as_cri(&self) -> caisson_proto::cri::LinuxContainerResources {
        caisson_proto::cri::LinuxContainerResources {
            memory_limit_in_bytes: (self.memory_mib << 20) as i64,
            cpu_shares: (self.cpu_millicores * 1024 / 1000) as i64,
            ..Default::default()
        }
    }
}

/// Backends this build can run.
pub const KNOWN_BACKENDS: &[&str] = &["native", "hardened", "oci", "microvm"];

impl Config {
    /// The embedded default.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG, Path::new("<embedded default>"))
            .expect("the embedded default config is valid")
    }

    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Config, String> {
        let config: Config =
            toml::from_str(text).map_err(|e| format!("{}: {e}", origin.display()))?;
        config
            .validate()
            .map_err(|e| format!("{}: {e}", origin.display()))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.streaming.validate()?;
        self.metrics.validate()?;
        for (name, path) in [
            ("root_dir", &self.root_dir),
            ("run_dir", &self.run_dir),
            ("socket", &self.socket),
        ] {
            if !path.is_absolute() {
                return Err(format!(
                    "{name} must be an absolute path, got {}",
                    path.display()
                ));
            }
        }
        if !self.cgroup_parent.starts_with('/') {
            return Err(format!(
                "cgroup_parent must start with '/', got {:?}",
                self.cgroup_parent
            ));
        }
        if !self
            .runtimes
            .handlers
            .contains_key(&self.runtimes.default_handler)
        {
            return Err(format!(
                "runtimes.default_handler {:?} is not in runtimes.handlers",
                self.runtimes.default_handler
            ));
        }
        for (name, handler) in &self.runtimes.handlers {
            if !KNOWN_BACKENDS.contains(&handler.backend.as_str()) {
                return Err(format!(
                    "runtimes.handlers.{name}.backend {:?} is not known (known: {})",
                    handler.backend,
                    KNOWN_BACKENDS.join(", ")
                ));
            }
        }
        self.registries.validate()
    }

    /// The handler for a RunPodSandbox `runtime_handler` ("" = default).
    pub fn handler(&self, name: &str) -> Option<(&str, &Handler)> {
        let name = if name.is_empty() {
            self.runtimes.default_handler.as_str()
        } else {
            name
        };
        self.runtimes
            .handlers
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    pub fn image_dir(&self) -> PathBuf {
        self.root_dir.join("images")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root_dir.join("state")
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.run_dir.join("pods")
    }

    /// Pinned pod network namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }

    pub fn shim_run_dir(&self) -> PathBuf {
        self.run_dir.join("shim")
    }

    /// The ttrpc events socket shims publish to (their `TTRPC_ADDRESS`).
    pub fn events_socket(&self) -> PathBuf {
        self.run_dir.join("events.sock")
    }

    /// A helper binary: the configured path, else next to this executable, else PATH.
    pub fn helper_binary(configured: &str, name: &str) -> Result<PathBuf, String> {
        if !configured.is_empty() {
            return Ok(PathBuf::from(configured));
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(name)));
        if let Some(p) = beside.filter(|p| p.is_file()) {
            return Ok(p);
        }
        for dir in std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/local/lib/caisson"])
        {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(format!(
            "{name} not found beside caissond or on PATH; set it in the config"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_round_trips() {
        let c = Config::default_config();
        assert_eq!(c.socket, PathBuf::from("/run/caisson/caissond.sock"));
        assert_eq!(c.handler("").unwrap().0, "runc");
        assert_eq!(c.handler("runc").unwrap().1.backend, "native");
        assert!(c.handler("nope").is_none());
        let again = Config::parse(&toml::to_string(&c).unwrap(), Path::new("x")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let cases = [
            (
                "root_dir = \"relative\"",
                "root_dir must be an absolute path",
            ),
            (
                "cgroup_parent = \"caisson\"",
                "cgroup_parent must start with '/'",
            ),
            ("bogus_key = 1", "unknown field"),
        ];
        for (line, want) in cases {
            let key = line.split(' ').next().unwrap();
            let mut text: String = DEFAULT_CONFIG
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} ")))
                .collect::<Vec<_>>()
                .join("\n");
            text = format!("{line}\n{text}");
            let err = Config::parse(&text, Path::new("t.toml")).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
        let bad_backend = DEFAULT_CONFIG.replace(
            "backend = \"native\"\n\n[runtimes.handlers.native]",
            "backend = \"qemu\"\n\n[runtimes.handlers.native]",
        );
        assert!(Config::parse(&bad_backend, Path::new("t"))
            .unwrap_err()
            .contains("qemu"));
    }

    #[test]
    fn cgroups_table_is_read() {
        let c = Config::default_config();
        assert_eq!(c.cgroups, CgroupsConfig::default());
        assert!(!c.cgroups.restrict_oom_score_adj);
        let text = DEFAULT_CONFIG
            .replace(
                "restrict_oom_score_adj = false",
                "restrict_oom_score_adj = true",
            )
            .replace("allocatable_memory = 0", "allocatable_memory = 268435456")
            .replace("pod_pids_limit = 0", "pod_pids_limit = 1024");
        let c = Config::parse(&text, Path::new("t")).unwrap();
        assert!(c.cgroups.restrict_oom_score_adj);
        assert_eq!(c.cgroups.allocatable_memory, 256 << 20);
        assert_eq!(c.cgroups.pod_pids_limit, 1024);
        let bad = DEFAULT_CONFIG.replace("pod_pids_limit = 0", "pod_pids_limit = -1");
        assert!(Config::parse(&bad, Path::new("t")).is_err());
    }

    #[test]
    fn registries_table_is_read_and_checked() {
        let c = Config::default_config();
        assert_eq!(c.registries, RegistriesConfig::default());
        // The default without its [registries] table.
        let base = &DEFAULT_CONFIG[..DEFAULT_CONFIG.find("\n[registries]").unwrap()];
        assert_eq!(
            Config::parse(base, Path::new("t")).unwrap().registries,
            RegistriesConfig::default()
        );
        let with_mirror = format!(
            "{DEFAULT_CONFIG}\n[registries.hosts.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n"
        );
        let c = Config::parse(&with_mirror, Path::new("t")).unwrap();
        assert_eq!(
            c.registries.endpoints("docker.io")[0].host,
            "127.0.0.1:5000"
        );
        // Dotted keys before the first table work too (the test harness
        // prepends its extra config that way).
        let dotted = format!(
            "registries.max_concurrent_downloads = 5\nregistries.hosts.\"127.0.0.1:5000\".plain_http = true\n{base}"
        );
        let c = Config::parse(&dotted, Path::new("t")).unwrap();
        assert_eq!(c.registries.max_concurrent_downloads, 5);
        assert!(c.registries.endpoints("127.0.0.1:5000")[0].plain_http);
        let again = Config::parse(&toml::to_string(&c).unwrap(), Path::new("x")).unwrap();
        assert_eq!(again, c);
        for (bad, want) in [
            (
                "[registries]\nmax_concurrent_downloads = 0",
                "max_concurrent_downloads",
            ),
            (
                "[registries.hosts.\"docker.io\"]\nmirrors = [\"ftp://m.io\"]",
                "mirrors",
            ),
            (
                "[registries.hosts.\"docker.io\"]\nusername = \"u\"",
                "password",
            ),
            ("[registries]\nnope = 1", "unknown field"),
        ] {
            let err = Config::parse(&format!("{base}\n{bad}\n"), Path::new("t.toml")).unwrap_err();
            assert!(err.contains(want) && err.contains("t.toml"), "{bad}: {err}");
        }
    }
}
