//! The CNI runtime side (spec 1.0.0, and 0.4.0 for older plugins): load the
//! node's network configuration, run plugins with the `CNI_*` environment,
//! chain results, pass capability args.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

use super::NetworkError;

/// The interface name every pod gets.
pub const IFNAME: &str = "eth0";

/// A network configuration list, normalised from a `.conflist` or a single
/// plugin `.conf`: `{"cniVersion", "name", "plugins": [...]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub path: PathBuf,
    pub config: Value,
}

impl NetworkList {
    pub fn name(&self) -> &str {
        self.config["name"].as_str().unwrap_or_default()
    }
}

/// Loads the first usable configuration (in file-name order) from `dir`.
/// Read on every call, so a new file is picked up without a restart.
pub fn load(dir: &Path) -> Result<NetworkList, NetworkError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.is_file()
            && matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
    });
    files.sort();
    let mut last_error = None;
    for path in files {
        match parse_file(&path) {
            Ok(list) => return Ok(list),
            Err(e) => {
                tracing::warn!(error = %e, "skipping CNI config");
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or(NetworkError::NoConfig {
        dir: dir.to_path_buf(),
    }))
}

fn parse_file(path: &Path) -> Result<NetworkList, NetworkError> {
    let bad = |reason: String| NetworkError::BadConfig {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let config = normalise(value).map_err(bad)?;
    Ok(NetworkList {
        path: path.to_path_buf(),
        config,
    })
}

/// A list as is, or a single plugin config wrapped in a list.
pub fn normalise(value: Value) -> Result<Value, String> {
    let Value::Object(obj) = value else {
        return Err("not a JSON object".into());
    };
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("no \"name\"")?
        .to_string();
    let version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.4.0")
        .to_string();
    let plugins = match obj.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p.clone(),
        Some(_) => return Err("\"plugins\" must be a non-empty array".into()),
        None => vec![Value::Object(obj.clone())],
    };
    for p in &plugins {
        if p.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("a plugin has no \"type\"".into());
        }
    }
    Ok(json!({"cniVersion": version, "name": name, "plugins": plugins}))
}

/// What one pod brings to a CNI call.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub container_id: String,
    /// Empty when the namespace is gone (DEL still runs, to release IPs).
    pub netns: String,
    /// `CNI_ARGS` pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, …).
    pub args: Vec<(String, String)>,
    /// Capability args by name (`portMappings`, `dns`, `bandwidth`, `ipRanges`).
    pub capabilities: Map<String, Value>,
    /// The runtime made `netns` and brought its `lo` up ([`super::netns::create`]),
    /// and removes it with the pod: see [`elided`].
    pub loopback_up: bool,
}

/// The plugin types whose runs [`elided`] spares.
const LOOPBACK: &str = "loopback";
const PORTMAP: &str = "portmap";

/// Whether running `plugin` for `command` would change nothing, so it is
/// not run: each run is a Go binary's exec (~3 ms of CPU, a tenth of a
/// pod's start).
///
/// * The reference `loopback` plugin, chained after another plugin, sets
///   `lo` up and hands its `prevResult` on untouched (ADD), or sets `lo`
///   down (DEL). In a namespace the runtime made with `lo` up and removes
///   with the pod, neither changes anything anybody sees. First in a chain
///   (no `prevResult`) it still runs: its result is the chain's input then.
/// * The reference `portmap` plugin, given no port mappings, hands its
///   `prevResult` on untouched (ADD, chained) and does nothing on DEL: it
///   touches iptables only for a mapping. Most pods have none (no
///   `hostPort`). A config it would refuse (its mark bit out of range, or
///   both a mark bit and an external chain) still runs, so that the error
///   is the plugin's own.
///
/// CHECK always runs them (it checks what they set up, or their config).
fn elided(plugin: &Value, command: CniCommand, att: &Attachment, prev: Option<&Value>) -> bool {
    let chained_add_or_del = match command {
        CniCommand::Add => prev.is_some(),
        CniCommand::Del => true,
        CniCommand::Check => false,
    };
    chained_add_or_del
        && match plugin["type"].as_str() {
            Some(LOOPBACK) => att.loopback_up,
            Some(PORTMAP) => portmap_is_idle(plugin, &att.capabilities),
            _ => false,
        }
}

/// Whether `portmap` would be given no port mappings (from the pod's
/// capability args or the plugin's own `runtimeConfig`) and would accept
/// its config.
fn portmap_is_idle(plugin: &Value, capabilities: &Map<String, Value>) -> bool {
    let conf = plugin_config(&Value::Null, plugin, capabilities, None);
    // Anything but none or an empty list (a malformed one too) runs it.
    let no_mappings = match conf.get("runtimeConfig") {
        None | Some(Value::Null) => true,
        Some(Value::Object(runtime)) => match runtime.get("portMappings") {
            None | Some(Value::Null) => true,
            Some(Value::Array(mappings)) => mappings.is_empty(),
            Some(_) => false,
        },
        Some(_) => false,
    };
    let mark_bit_ok = match conf.get("markMasqBit") {
        None | Some(Value::Null) => true,
        Some(bit) => {
            bit.as_u64().is_some_and(|b| b <= 31)
                && conf.get("externalSetMarkChain").is_none_or(Value::is_null)
        }
    };
    no_mappings && mark_bit_ok
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// Runs ADD through the list's plugins in order; returns the final result.
pub fn add(list: &Value, bin_dirs: &[PathBuf], att: &Attachment) -> Result<Value, NetworkError> {
    let mut prev: Option<Value> = None;
    for plugin in plugins(list) {
        if elided(plugin, CniCommand::Add, att, prev.as_ref()) {
            continue;
        }
        let plugin_type = plugin["type"].as_str().unwrap_or("?");
        let _p = crate::metrics_http::phase("RunPodSandbox", format!("cni {plugin_type}"));
        let out = exec(list, plugin, bin_dirs, att, CniCommand::Add, prev.as_ref())?;
        prev = Some(out);
    }
    Ok(prev.unwrap_or_else(|| json!({"cniVersion": version(list)})))
}

/// Runs DEL through the plugins in reverse order, with the ADD result as
/// `prevResult` (0.4.0 and later). Every plugin runs even if one fails;
/// the first error is returned.
pub fn del(
    list: &Value,
    bin_dirs: &[PathBuf],
    att: &Attachment,
    result: Option<&Value>,
) -> Result<(), NetworkError> {
    let prev = result.filter(|_| supports_prev_result(version(list)));
    let mut first_error = None;
    for plugin in plugins(list).rev() {
        if elided(plugin, CniCommand::Del, att, prev) {
            continue;
        }
        if let Err(e) = exec(list, plugin, bin_dirs, att, CniCommand::Del, prev) {
            tracing::warn!(error = %e, "CNI DEL");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs CHECK (0.4.0 and later) with the ADD result.
pub fn check(
    list: &Value,
    bin_dirs: &[PathBuf],
    att: &Attachment,
    result: &Value,
) -> Result<(), NetworkError> {
    if !supports_prev_result(version(list)) {
        return Ok(());
    }
    for plugin in plugins(list) {
        exec(list, plugin, bin_dirs, att, CniCommand::Check, Some(result))?;
    }
    Ok(())
}

/// Asks a plugin which spec versions it supports (`VERSION`).
pub fn plugin_versions(
    list: &Value,
    bin_dirs: &[PathBuf],
    plugin_type: &str,
) -> Result<Vec<String>, NetworkError> {
    let path = find_plugin(plugin_type, bin_dirs)?;
    let out = run(
        &path,
        plugin_type,
        "VERSION",
        &[("CNI_COMMAND".into(), "VERSION".into())],
        &json!({"cniVersion": version(list)}),
    )?;
    Ok(out["supportedVersions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// The addresses (without prefix length) of a result, IPv4 first.
pub fn result_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<std::net::IpAddr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.dedup();
    ips.iter().map(ToString::to_string).collect()
}

fn version(list: &Value) -> &str {
    list["cniVersion"].as_str().unwrap_or("0.4.0")
}

fn supports_prev_result(version: &str) -> bool {
    !(version.starts_with("0.1") || version.starts_with("0.2") || version.starts_with("0.3"))
}

fn plugins(list: &Value) -> impl DoubleEndedIterator<Item = &Value> {
    list["plugins"].as_array().into_iter().flatten()
}

/// The stdin config of one plugin: its own object plus the list's name and
/// version, `prevResult` and the capability args it asks for.
pub fn plugin_config(
    list: &Value,
    plugin: &Value,
    capabilities: &Map<String, Value>,
    prev: Option<&Value>,
) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), list["name"].clone());
    conf.insert("cniVersion".into(), json!(version(list)));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let wanted: Map<String, Value> = plugin["capabilities"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(cap, _)| Some((cap.clone(), capabilities.get(cap)?.clone())))
        .collect();
    if !wanted.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    Value::Object(conf)
}

fn find_plugin(plugin_type: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf, NetworkError> {
    if plugin_type.contains('/') {
        return Err(NetworkError::PluginNotFound {
            plugin: plugin_type.into(),
            dirs: "(a plugin type may not contain '/')".into(),
        });
    }
    bin_dirs
        .iter()
        .map(|d| d.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| NetworkError::PluginNotFound {
            plugin: plugin_type.into(),
            dirs: join_paths(bin_dirs),
        })
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn exec(
    list: &Value,
    plugin: &Value,
    bin_dirs: &[PathBuf],
    att: &Attachment,
    command: CniCommand,
    prev: Option<&Value>,
) -> Result<Value, NetworkError> {
    let plugin_type = plugin["type"].as_str().unwrap_or_default();
    let path = find_plugin(plugin_type, bin_dirs)?;
    let args = att
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let env = [
        ("CNI_COMMAND".to_string(), command.as_str().to_string()),
        ("CNI_CONTAINERID".into(), att.container_id.clone()),
        ("CNI_NETNS".into(), att.netns.clone()),
        ("CNI_IFNAME".into(), IFNAME.into()),
        ("CNI_PATH".into(), join_paths(bin_dirs)),
        ("CNI_ARGS".into(), args),
    ];
    let conf = plugin_config(list, plugin, &att.capabilities, prev);
    tracing::debug!(plugin = plugin_type, command = command.as_str(), container_id = %att.container_id, "running CNI plugin");
    run(&path, plugin_type, command.as_str(), &env, &conf)
}

fn run(
    path: &Path,
    plugin_type: &str,
    command: &'static str,
    env: &[(String, String)],
    conf: &Value,
) -> Result<Value, NetworkError> {
    let failed = |message: String| NetworkError::PluginFailed {
        plugin: plugin_type.to_string(),
        command,
        message,
    };
    let mut child = Command::new(path)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("starting {}: {e}", path.display())))?;
    let stdin = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(&stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("waiting for {}: {e}", path.display())))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let message = parsed
            .as_ref()
            .and_then(|v| {
                let msg = v["msg"].as_str()?;
                Some(match v["details"].as_str().filter(|d| !d.is_empty()) {
                    Some(d) => format!("{msg}: {d}"),
                    None => msg.to_string(),
                })
            })
            .unwrap_or_else(|| {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                format!("{} ({stderr})", out.status)
            });
        return Err(failed(message));
    }
    if command == "DEL" || command == "CHECK" {
        return Ok(Value::Null);
    }
    parsed.ok_or_else(|| {
        failed(format!(
            "output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_a_single_plugin_conf() {
        let list =
            normalise(json!({"cniVersion": "0.4.0", "name": "n", "type": "bridge"})).unwrap();
        assert_eq!(list["plugins"][0]["type"], "bridge");
        assert_eq!(list["name"], "n");
        for bad in [
            json!([]),
            json!({"type": "x"}),
            json!({"name": "n", "plugins": []}),
            json!({"name": "n", "plugins": [{}]}),
        ] {
            assert!(normalise(bad).is_err());
        }
    }

    #[test]
    fn plugin_config_passes_only_asked_capabilities() {
        let list = json!({"cniVersion": "1.0.0", "name": "net", "plugins": []});
        let caps: Map<String, Value> = [
            ("portMappings".to_string(), json!([{"hostPort": 8080}])),
            ("bandwidth".to_string(), json!({"ingressRate": 1})),
        ]
        .into_iter()
        .collect();
        let cases = [
            (json!({"type": "bridge"}), None),
            (
                json!({"type": "portmap", "capabilities": {"portMappings": true}}),
                Some(json!({"portMappings": [{"hostPort": 8080}]})),
            ),
            (
                json!({"type": "x", "capabilities": {"portMappings": false, "dns": true}}),
                None,
            ),
        ];
        for (plugin, want) in cases {
            let conf = plugin_config(&list, &plugin, &caps, Some(&json!({"ips": []})));
            assert_eq!(conf["name"], "net");
            assert_eq!(conf["cniVersion"], "1.0.0");
            assert_eq!(conf["prevResult"], json!({"ips": []}));
            assert_eq!(conf.get("runtimeConfig").cloned(), want, "{plugin}");
        }
    }

    #[test]
    fn result_ips_lists_v4_then_v6() {
        let cases = [
            (json!({}), vec![]),
            (
                json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/16"}]}),
                vec!["10.1.0.5", "fd00::5"],
            ),
            (json!({"ips": [{"address": "bogus"}]}), vec![]),
        ];
        for (result, want) in cases {
            assert_eq!(result_ips(&result), want);
        }
    }

    #[test]
    fn prev_result_from_0_4_0() {
        for (v, want) in [
            ("0.3.1", false),
            ("0.4.0", true),
            ("1.0.0", true),
            ("0.2.0", false),
        ] {
            assert_eq!(supports_prev_result(v), want, "{v}");
        }
    }
    /// Plugins that append their type and command to `<dir>/runs` and
    /// answer ADD with their `prevResult` (or a result naming themselves).
    fn recording_plugins(dir: &Path, types: &[&str]) {
        use std::os::unix::fs::PermissionsExt;
        for t in types {
            let path = dir.join(t);
            let script = format!(
                "#!/bin/sh\necho \"{t} $CNI_COMMAND\" >> {runs}\ncat >/dev/null\n\
                 [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.9.9/24\"}}]}}'\nexit 0\n",
                runs = dir.join("runs").display()
            );
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    fn runs(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("runs"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn portmap_runs_only_for_a_mapping_or_a_config_it_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        recording_plugins(dir.path(), &["bridge", PORTMAP]);
        let bins = [dir.path().to_path_buf()];
        let chained = |portmap: Value| json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}, portmap]});
        let capable = json!({"type": PORTMAP, "capabilities": {"portMappings": true}});
        let no_ports = Attachment {
            container_id: "c".into(),
            ..Default::default()
        };
        let mut ports = no_ports.clone();
        ports.capabilities.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        let mut empty = no_ports.clone();
        empty.capabilities.insert("portMappings".into(), json!([]));
        let lifecycle = |list: &Value, att: &Attachment| {
            let result = add(list, &bins, att).unwrap();
            assert_eq!(result_ips(&result), ["10.9.9.9"]);
            del(list, &bins, att, Some(&result)).unwrap();
            check(list, &bins, att, &result).unwrap();
            let seen = runs(dir.path());
            std::fs::remove_file(dir.path().join("runs")).unwrap();
            seen
        };

        // No mapping: only CHECK runs it.
        let idle = ["bridge ADD", "bridge DEL", "bridge CHECK", "portmap CHECK"];
        assert_eq!(lifecycle(&chained(capable.clone()), &no_ports), idle);
        assert_eq!(lifecycle(&chained(capable.clone()), &empty), idle);
        // Mappings the plugin does not ask for are not given to it.
        assert_eq!(lifecycle(&chained(json!({"type": PORTMAP})), &ports), idle);

        let all = [
            "bridge ADD",
            "portmap ADD",
            "portmap DEL",
            "bridge DEL",
            "bridge CHECK",
            "portmap CHECK",
        ];
        // A mapping, from the pod or from the plugin's own config.
        assert_eq!(lifecycle(&chained(capable.clone()), &ports), all);
        let fixed = json!({"type": PORTMAP, "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2}]}});
        assert_eq!(lifecycle(&chained(fixed), &no_ports), all);
        // A config portmap refuses: its error, not our silence.
        let bad_bit = json!({"type": PORTMAP, "markMasqBit": 40});
        assert_eq!(lifecycle(&chained(bad_bit), &no_ports), all);
        let both = json!({"type": PORTMAP, "markMasqBit": 13, "externalSetMarkChain": "X"});
        assert_eq!(lifecycle(&chained(both), &no_ports), all);
        let malformed = json!({"type": PORTMAP, "runtimeConfig": {"portMappings": "8080"}});
        assert_eq!(lifecycle(&chained(malformed), &no_ports), all);
        // First in a chain it must run (and fails, as it is not chained).
        let first = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [capable]});
        add(&first, &bins, &no_ports).unwrap();
        assert_eq!(runs(dir.path()), ["portmap ADD"]);
    }

    #[test]
    fn a_chained_loopback_is_not_run_in_a_namespace_made_with_lo_up() {
        let dir = tempfile::tempdir().unwrap();
        recording_plugins(dir.path(), &["bridge", LOOPBACK]);
        let bins = [dir.path().to_path_buf()];
        let list = |types: &[&str]| {
            let plugins: Vec<Value> = types.iter().map(|t| json!({"type": t})).collect();
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": plugins})
        };
        let ours = Attachment {
            container_id: "c".into(),
            loopback_up: true,
            ..Default::default()
        };
        let chained = list(&["bridge", LOOPBACK]);
        let result = add(&chained, &bins, &ours).unwrap();
        assert_eq!(result_ips(&result), ["10.9.9.9"]);
        del(&chained, &bins, &ours, Some(&result)).unwrap();
        check(&chained, &bins, &ours, &result).unwrap();
        assert_eq!(
            runs(dir.path()),
            ["bridge ADD", "bridge DEL", "bridge CHECK", "loopback CHECK"]
        );

        // First in its chain it makes the result; in a namespace not made
        // by the runtime it is all the runtime knows of lo.
        std::fs::remove_file(dir.path().join("runs")).unwrap();
        add(&list(&[LOOPBACK, "bridge"]), &bins, &ours).unwrap();
        let theirs = Attachment {
            loopback_up: false,
            ..ours.clone()
        };
        add(&chained, &bins, &theirs).unwrap();
        del(&chained, &bins, &theirs, None).unwrap();
        assert_eq!(
            runs(dir.path()),
            [
                "loopback ADD",
                "bridge ADD",
                "bridge ADD",
                "loopback ADD",
                "loopback DEL",
                "bridge DEL"
            ]
        );
    }
}
