//! CDI (Container Device Interface): a container's `CDI_devices` (and
//! `cdi.k8s.io/*` annotations) resolved against the CDI spec files in
//! `[cdi] spec_dirs`, and their `containerEdits` applied to its OCI spec.
//!
//! Follows the CDI specification (`container-device-interface` SPEC.md,
//! versions 0.3.0–0.8.0 and 1.0.0) and the Go reference library containerd
//! uses: `*.json` and `*.yaml` files under each directory, a later directory
//! overriding an earlier one for the same device, two files of one directory
//! defining the same device a conflict; a file that cannot be read or is
//! malformed is skipped with a warning unless it is the one that defines a
//! requested device. A spec's top-level edits apply once for any of its
//! devices, then each device's own.
//!
//! The crates.io `container-device-interface` crate was not used: it pulls
//! `clap` and `jsonschema` (with an HTTP client) into the daemon and parses
//! YAML with the unmaintained `serde_yaml`; this module parses with serde
//! (`serde_norway` for YAML).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, Hooks, LinuxDevice, LinuxDeviceType, Mount, Spec as OciSpec};
use serde::{Deserialize, Deserializer, Serialize};

use super::devices;
use super::SpecError;

/// Annotations whose values name CDI devices (comma-separated), as kubelet's
/// device plugins set them before `CDI_devices` existed.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The CDI versions whose files are read.
const SUPPORTED_VERSIONS: &[&str] = &[
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0",
];

/// `[cdi]`: where CDI spec files are read (containerd's `cdi_spec_dirs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdiConfig {
    /// In increasing priority: a device in a later directory overrides the
    /// same device in an earlier one. Read at each CreateContainer that asks
    /// for a device, so new files need no restart.
    #[serde(default = "default_spec_dirs")]
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            spec_dirs: default_spec_dirs(),
        }
    }
}

fn default_spec_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
}

fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One CDI spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    devices: Vec<DeviceEntry>,
    #[serde(default, deserialize_with = "nullable")]
    container_edits: Edits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceEntry {
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    container_edits: Edits,
}

/// `containerEdits`, top-level or per device.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Edits {
    #[serde(default, deserialize_with = "nullable")]
    env: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    device_nodes: Vec<DeviceNode>,
    #[serde(default, deserialize_with = "nullable")]
    hooks: Vec<HookEdit>,
    #[serde(default, deserialize_with = "nullable")]
    mounts: Vec<MountEdit>,
    #[serde(default, deserialize_with = "nullable")]
    additional_gids: Vec<u32>,
    #[serde(default)]
    intel_rdt: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "nullable")]
    net_devices: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceNode {
    path: String,
    host_path: Option<String>,
    #[serde(rename = "type")]
    typ: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MountEdit {
    host_path: String,
    container_path: String,
    #[serde(rename = "type")]
    typ: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HookEdit {
    hook_name: String,
    path: String,
    #[serde(default, deserialize_with = "nullable")]
    args: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    env: Vec<String>,
    timeout: Option<i64>,
}

const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

impl Edits {
    fn is_empty(&self) -> bool {
        self == &Edits::default()
    }

    fn validate(&self) -> Result<(), String> {
        for e in &self.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(format!("env {e:?} is not KEY=VALUE"));
            }
        }
        for d in &self.device_nodes {
            if !d.path.starts_with('/') {
                return Err(format!("deviceNodes path {:?} is not absolute", d.path));
            }
            if let Some(host) = d.host_path.as_deref().filter(|h| !h.starts_with('/')) {
                return Err(format!("deviceNodes hostPath {host:?} is not absolute"));
            }
            if let Some(t) = d.typ.as_deref() {
                if !matches!(t, "" | "b" | "c" | "u" | "p") {
                    return Err(format!(
                        "deviceNodes {}: type {t:?} is not b, c, u or p",
                        d.path
                    ));
                }
            }
            if let Some(p) = d.permissions.as_deref() {
                if p.chars().any(|c| !matches!(c, 'r' | 'w' | 'm')) {
                    return Err(format!(
                        "deviceNodes {}: permissions {p:?} are not made of r, w, m",
                        d.path
                    ));
                }
            }
        }
        for h in &self.hooks {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                return Err(format!("hook name {:?} is not known", h.hook_name));
            }
            if !h.path.starts_with('/') {
                return Err(format!("hook path {:?} is not absolute", h.path));
            }
        }
        for m in &self.mounts {
            if m.host_path.is_empty() {
                return Err(format!("mount at {:?} has no hostPath", m.container_path));
            }
            if !m.container_path.starts_with('/') {
                return Err(format!(
                    "mount containerPath {:?} is not absolute",
                    m.container_path
                ));
            }
        }
        Ok(())
    }
}

fn valid_chars(s: &str, extra: &[char]) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

fn check_vendor(v: &str) -> Result<(), String> {
    let ok = v.starts_with(|c: char| c.is_ascii_alphabetic())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
        && valid_chars(v, &['-', '_', '.']);
    ok.then_some(())
        .ok_or_else(|| format!("vendor {v:?} is not a valid CDI vendor name"))
}

fn check_class(c: &str) -> Result<(), String> {
    let ok = c.starts_with(|c: char| c.is_ascii_alphabetic())
        && c.ends_with(|c: char| c.is_ascii_alphanumeric())
        && valid_chars(c, &['-', '_']);
    ok.then_some(())
        .ok_or_else(|| format!("class {c:?} is not a valid CDI class name"))
}

fn check_device_name(n: &str) -> Result<(), String> {
    let ok = n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
        && valid_chars(n, &['-', '_', '.', ':']);
    ok.then_some(())
        .ok_or_else(|| format!("device name {n:?} is not a valid CDI device name"))
}

/// `vendor.com/class` checked.
fn check_kind(kind: &str) -> Result<(), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("kind {kind:?} is not vendor.com/class"))?;
    check_vendor(vendor)?;
    check_class(class)
}

/// A fully-qualified device name, `vendor.com/class=name`, checked.
pub(crate) fn check_qualified_name(name: &str) -> Result<(), String> {
    let (kind, device) = name.split_once('=').ok_or_else(|| {
        format!("{name:?} is not a fully-qualified CDI device name (vendor.com/class=name)")
    })?;
    check_kind(kind).map_err(|e| format!("{name:?}: {e}"))?;
    check_device_name(device).map_err(|e| format!("{name:?}: {e}"))
}

fn validate_file(file: &SpecFile) -> Result<(), String> {
    let version = file.cdi_version.trim_start_matches('v');
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "cdiVersion {:?} is not supported (supported: {})",
            file.cdi_version,
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    check_kind(&file.kind)?;
    if file.devices.is_empty() {
        return Err("no devices".into());
    }
    file.container_edits
        .validate()
        .map_err(|e| format!("containerEdits: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    for d in &file.devices {
        check_device_name(&d.name)?;
        if !seen.insert(d.name.as_str()) {
            return Err(format!("device {:?} is defined twice", d.name));
        }
        if d.container_edits.is_empty() {
            return Err(format!("device {:?} has no containerEdits", d.name));
        }
        d.container_edits
            .validate()
            .map_err(|e| format!("device {:?}: containerEdits: {e}", d.name))?;
    }
    Ok(())
}

fn parse_value(path: &Path, bytes: &[u8]) -> Result<serde_json::Value, String> {
    let json = path.extension().is_some_and(|e| e == "json");
    if json {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    } else {
        serde_norway::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// A valid spec file.
#[derive(Debug)]
struct LoadedSpec {
    path: PathBuf,
    kind: String,
    edits: Edits,
    devices: BTreeMap<String, Edits>,
}

/// A file that was skipped: why, and the devices it seemed to define.
#[derive(Debug)]
struct SkippedFile {
    path: PathBuf,
    reason: String,
    names: Vec<String>,
}

/// Every device the spec dirs define.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    specs: Vec<LoadedSpec>,
    /// Qualified name → (spec index, directory priority).
    devices: HashMap<String, (usize, usize)>,
    /// Qualified name → the files of one directory that both define it.
    conflicts: HashMap<String, (PathBuf, PathBuf)>,
    skipped: Vec<SkippedFile>,
}

/// The `.json`/`.yaml` files under `dir` (recursively), in name order.
fn spec_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            spec_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json" || e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

impl Registry {
    /// Reads every spec file under `dirs` (a missing directory is empty).
    pub(crate) fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry::default();
        for (priority, dir) in dirs.iter().enumerate() {
            let mut files = Vec::new();
            match spec_files(dir, &mut files) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "reading a CDI spec directory");
                }
            }
            for path in files {
                registry.add_file(path, priority);
            }
        }
        registry
    }

    fn add_file(&mut self, path: PathBuf, priority: usize) {
        let value = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| parse_value(&path, &bytes))
        {
            Ok(value) => value,
            Err(reason) => return self.skip(path, reason, Vec::new()),
        };
        let file = SpecFile::deserialize(&value)
            .map_err(|e| e.to_string())
            .and_then(|f| validate_file(&f).map(|()| f));
        let file = match file {
            Ok(file) => file,
            Err(reason) => {
                // What the file seems to define, to name it if asked for.
                let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
                let names = value
                    .get("devices")
                    .and_then(|d| d.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.get("name").and_then(|n| n.as_str()))
                    .map(|n| format!("{kind}={n}"))
                    .collect();
                return self.skip(path, reason, names);
            }
        };
        let index = self.specs.len();
        for d in &file.devices {
            let qualified = format!("{}={}", file.kind, d.name);
            match self.devices.get(&qualified) {
                Some(&(other, p)) if p == priority => {
                    self.conflicts
                        .insert(qualified, (self.specs[other].path.clone(), path.clone()));
                    continue;
                }
                _ => {
                    self.conflicts.remove(&qualified);
                }
            }
            self.devices.insert(qualified, (index, priority));
        }
        self.specs.push(LoadedSpec {
            path,
            kind: file.kind,
            edits: file.container_edits,
            devices: file
                .devices
                .into_iter()
                .map(|d| (d.name, d.container_edits))
                .collect(),
        });
    }

    fn skip(&mut self, path: PathBuf, reason: String, names: Vec<String>) {
        tracing::warn!(file = %path.display(), error = %reason, "skipping a malformed CDI spec file");
        self.skipped.push(SkippedFile {
            path,
            reason,
            names,
        });
    }

    /// The edits for `requests` (field, qualified name), in order: each
    /// spec's own edits once, before its first device's.
    pub(crate) fn resolve(&self, requests: &[Request]) -> Result<Resolved, SpecError> {
        let mut out = Resolved::default();
        let mut specs_used = Vec::new();
        let mut names_used = Vec::new();
        for r in requests {
            if names_used.contains(&r.name) {
                continue;
            }
            if let Some((a, b)) = self.conflicts.get(&r.name) {
                return Err(SpecError::invalid(
                    &r.field,
                    format!(
                        "CDI device {} is defined by both {} and {}",
                        r.name,
                        a.display(),
                        b.display()
                    ),
                ));
            }
            let Some(&(index, _)) = self.devices.get(&r.name) else {
                if let Some(bad) = self.skipped.iter().find(|s| s.names.contains(&r.name)) {
                    return Err(SpecError::invalid(
                        &r.field,
                        format!(
                            "CDI device {} is defined by {}, which is malformed: {}",
                            r.name,
                            bad.path.display(),
                            bad.reason
                        ),
                    ));
                }
                return Err(SpecError::invalid(
                    &r.field,
                    format!("unknown CDI device {}: no CDI spec file defines it", r.name),
                ));
            };
            let spec = &self.specs[index];
            if !specs_used.contains(&index) {
                specs_used.push(index);
                out.edits.push((
                    format!("{} ({})", spec.kind, spec.path.display()),
                    spec.edits.clone(),
                ));
            }
            let device = r.name.split_once('=').map(|(_, d)| d).unwrap_or_default();
            out.edits
                .push((r.name.clone(), spec.devices[device].clone()));
            names_used.push(r.name.clone());
        }
        Ok(out)
    }
}

/// One requested device and the request field that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub field: String,
    pub name: String,
}

/// The devices a container config asks for: `CDI_devices`, then the
/// `cdi.k8s.io/*` annotations (by key), each name checked.
pub(crate) fn requests(
    devices: &[String],
    annotations: &HashMap<String, String>,
) -> Result<Vec<Request>, SpecError> {
    let mut out = Vec::new();
    for (i, name) in devices.iter().enumerate() {
        let field = format!("config.CDI_devices[{i}]");
        check_qualified_name(name).map_err(|e| SpecError::invalid(&field, e))?;
        out.push(Request {
            field,
            name: name.clone(),
        });
    }
    let mut keys: Vec<_> = annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for key in keys {
        let field = format!("config.annotations[{key:?}]");
        for name in annotations[key].split(',').map(str::trim) {
            check_qualified_name(name).map_err(|e| SpecError::invalid(&field, e))?;
            out.push(Request {
                field: field.clone(),
                name: name.to_string(),
            });
        }
    }
    Ok(out)
}

/// The edits to apply, each with what it comes from (for errors).
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    edits: Vec<(String, Edits)>,
}

impl Resolved {
    /// Applies the edits to `spec`: env set (a CDI variable replaces the
    /// same name), device nodes added to `linux.devices` and the device
    /// cgroup's allow-list, mounts added (sorted parents first), hooks
    /// appended, additional GIDs added.
    pub(crate) fn apply(&self, spec: &mut OciSpec) -> Result<(), SpecError> {
        for (from, edits) in &self.edits {
            apply_edits(spec, edits).map_err(|e| {
                SpecError::precondition(format!("applying CDI edits of {from}: {e}"))
            })?;
        }
        Ok(())
    }
}

fn apply_edits(spec: &mut OciSpec, edits: &Edits) -> Result<(), String> {
    if edits.intel_rdt.is_some() {
        return Err("intelRdt edits are not supported by caisson".into());
    }
    if !edits.net_devices.is_empty() {
        return Err("netDevices edits are not supported by caisson".into());
    }
    let mut process = spec.process().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    for e in &edits.env {
        // Every entry is KEY=VALUE (checked when the file was read).
        super::process::set_env(&mut env, e);
    }
    process.set_env(Some(env));
    let mut gids = process.user().additional_gids().clone().unwrap_or_default();
    for &gid in &edits.additional_gids {
        if gid != 0 && !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    if !gids.is_empty() {
        process.user_mut().set_additional_gids(Some(gids));
    }
    let (uid, gid) = (process.user().uid(), process.user().gid());
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut device_list = linux.devices().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    for node in &edits.device_nodes {
        let (device, access) = device_of(node, uid, gid)?;
        device_list.retain(|d| d.path() != device.path());
        if matches!(device.typ(), LinuxDeviceType::C | LinuxDeviceType::B) {
            rules.push(devices::allow(&device, &access));
        }
        device_list.push(device);
    }
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    linux.set_devices(if device_list.is_empty() {
        None
    } else {
        Some(device_list)
    });
    spec.set_linux(Some(linux));

    if !edits.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &edits.mounts {
            let destination = PathBuf::from(&m.container_path);
            mounts.retain(|old| old.destination() != &destination);
            let mut options = m.options.clone();
            let typ = m.typ.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| {
                if !options.iter().any(|o| o == "bind" || o == "rbind") {
                    options.push("bind".into());
                }
                "bind".into()
            });
            let mut mount = Mount::default();
            mount.set_destination(destination);
            mount.set_source(Some(PathBuf::from(&m.host_path)));
            mount.set_typ(Some(typ));
            mount.set_options(Some(options));
            mounts.push(mount);
        }
        // Parents before children (a stable sort keeps the rest in order).
        mounts.sort_by_key(|m| m.destination().components().count());
        spec.set_mounts(Some(mounts));
    }

    if !edits.hooks.is_empty() {
        let mut hooks = spec.hooks().clone().unwrap_or_default();
        for h in &edits.hooks {
            let mut hook = Hook::default();
            hook.set_path(PathBuf::from(&h.path));
            hook.set_args((!h.args.is_empty()).then(|| h.args.clone()));
            hook.set_env((!h.env.is_empty()).then(|| h.env.clone()));
            hook.set_timeout(h.timeout);
            add_hook(&mut hooks, &h.hook_name, hook);
        }
        spec.set_hooks(Some(hooks));
    }
    Ok(())
}

fn add_hook(hooks: &mut Hooks, name: &str, hook: Hook) {
    let push = |list: Option<Vec<Hook>>| {
        let mut list = list.unwrap_or_default();
        list.push(hook);
        Some(list)
    };
    match name {
        #[allow(deprecated)] // CDI still names it
        "prestart" => hooks.set_prestart(push(hooks.prestart().clone())),
        "createRuntime" => hooks.set_create_runtime(push(hooks.create_runtime().clone())),
        "createContainer" => hooks.set_create_container(push(hooks.create_container().clone())),
        "startContainer" => hooks.set_start_container(push(hooks.start_container().clone())),
        "poststart" => hooks.set_poststart(push(hooks.poststart().clone())),
        _ => hooks.set_poststop(push(hooks.poststop().clone())),
    };
}

/// The OCI device for a node: what the spec file leaves out is read from
/// the host device (type, numbers, mode); the owner defaults to the
/// container's user, as the CDI library does.
fn device_of(node: &DeviceNode, uid: u32, gid: u32) -> Result<(LinuxDevice, String), String> {
    let host_path = node.host_path.clone().unwrap_or_else(|| node.path.clone());
    let typ = node.typ.clone().filter(|t| !t.is_empty());
    let complete = matches!(
        (typ.as_deref(), node.major),
        (Some("p"), _) | (Some(_), Some(_))
    );
    let mut device = LinuxDevice::default();
    device.set_path(PathBuf::from(&node.path));
    let meta = if complete {
        std::fs::metadata(&host_path).ok()
    } else {
        Some(
            std::fs::metadata(&host_path)
                .map_err(|e| format!("device node {}: hostPath {host_path}: {e}", node.path))?,
        )
    };
    let host_typ = meta.as_ref().and_then(|m| {
        let ft = m.file_type();
        if ft.is_char_device() {
            Some("c")
        } else if ft.is_block_device() {
            Some("b")
        } else if ft.is_fifo() {
            Some("p")
        } else {
            None
        }
    });
    let typ = match (typ.as_deref(), host_typ) {
        (Some(t), _) if complete => t.to_string(),
        (None, Some(h)) => h.to_string(),
        (Some(t), Some(h)) if t == h || (t == "u" && h == "c") => t.to_string(),
        (Some(t), Some(h)) => {
            return Err(format!(
                "device node {}: type {t:?} but {host_path} is of type {h:?}",
                node.path
            ))
        }
        (_, None) => {
            return Err(format!(
                "device node {}: {host_path} is not a device",
                node.path
            ))
        }
    };
    device.set_typ(match typ.as_str() {
        "b" => LinuxDeviceType::B,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        _ => LinuxDeviceType::C,
    });
    let rdev = meta.as_ref().map(|m| m.rdev()).unwrap_or_default();
    device.set_major(node.major.unwrap_or(nix::sys::stat::major(rdev) as i64));
    device.set_minor(node.minor.unwrap_or(nix::sys::stat::minor(rdev) as i64));
    device.set_file_mode(
        node.file_mode
            .or_else(|| meta.as_ref().map(|m| m.mode() & 0o7777)),
    );
    device.set_uid(node.uid.or((uid > 0).then_some(uid)));
    device.set_gid(node.gid.or((gid > 0).then_some(gid)));
    let access = node
        .permissions
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "rwm".into());
    Ok((device, access))
}

#[cfg(test)]
#[path = "cdi_tests.rs"]
mod tests;
