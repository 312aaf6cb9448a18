//! The node installer, `integration/deploy/caisson-deploy.sh`, on a node
//! of our own: a temp root holding a realistic containerd 1.6 config
//! (version 2, CRI settings, a runc runtime with options, registry and CNI
//! paths). `install --root <tmp> --restart-containerd no` copies the
//! binaries and registers the handlers; the test then starts Debian's
//! containerd with that config (the installed `bin` first on its `PATH`, as
//! `/usr/local/bin` is on a node), runs a pod with `runtime_handler`
//! `caisson` and one with `caisson-hardened` through containerd's CRI (the
//! `k8s-cri` client on containerd's socket), checks a process runs in each
//! and that the installed shim serves it, stops them, stops containerd,
//! runs `uninstall`, and checks the config is byte-identical and the temp
//! root holds exactly what it held before. Needs root and Debian's
//! `containerd` and `busybox-static`.
//!
//! The other tests exercise the config edit without containerd running:
//! version 3 (containerd 2.x) round trips byte for byte (its TOML checked
//! with Python's `tomllib`), a version 2 file with no trailing newline and
//! no runtimes gets `runc` back (checked with `containerd config dump`), a
//! file already declaring `caisson` is refused untouched, an edit made after
//! install survives uninstall, and caissond mode installs and removes the
//! unit. Those run the script as the image does: Debian's static busybox
//! shell with no `PATH`, from the build context `make-context.sh` makes.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use caisson_tests::bundle::unique;
use caisson_tests::cni::TestNetwork;
use caisson_tests::daemon::{container_config, pod_config, target_dir, wait_until};
use caisson_tests::fixtures::{busybox_image, pause_binary, pause_image, OciArchive, PAUSE_NAME};
use caisson_tests::require;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../integration/deploy");
const RUN_DIR_ENV: &str = "CAISSON_SHIM_RUN_DIR";
const CONFIG: &str = "etc/containerd/config.toml";
/// The hardened shims' uids: clear of containerd_root's (600,000,000) and
/// of the caissond tests' pools.
const BACKEND_OPTIONS: &str = r#"{"userns_first_id": 620000000, "userns_pods": 64}"#;

#[test]
fn installer_registers_handlers_with_containerd_and_uninstall_restores_the_node() {
    require::root("containerd and the shim make mounts, namespaces and cgroups");
    let containerd = require::program("containerd", "containerd");
    let ctr = require::program("ctr", "containerd");
    let tmp = tempfile::Builder::new()
        .prefix("caisson-deploy-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Searchable by the hardened pods' mapped root (traverse, not list).
    std::fs::set_permissions(tmp.path(), PermissionsExt::from_mode(0o711)).unwrap();
    let node = tmp.path().join("node");
    let ctrd = tmp.path().join("ctrd");
    for d in [node.join("etc/containerd"), ctrd.clone()] {
        std::fs::create_dir_all(d).unwrap();
    }
    let original = existing_v2_config(&ctrd);
    std::fs::write(node.join(CONFIG), &original).unwrap();
    std::fs::set_permissions(node.join(CONFIG), PermissionsExt::from_mode(0o640)).unwrap();
    let before = tree(&node);

    let from = release_dir(tmp.path());
    let out = script(&[
        "install",
        "--root",
        &node.display().to_string(),
        "--from",
        &from.display().to_string(),
        "--restart-containerd",
        "no",
    ]);
    expect_ok(&out, "install");
    let installed = std::fs::read_to_string(node.join(CONFIG)).unwrap();
    assert!(
        installed.starts_with(&original),
        "install must only append to the config:\n{installed}"
    );
    for f in [
        "usr/local/bin/caissond",
        "usr/local/bin/containerd-shim-caisson-v2",
        "usr/local/bin/caisson-pause",
        "etc/caisson/caisson.toml",
    ] {
        assert!(node.join(f).is_file(), "install did not add {f}");
    }
    let link = std::fs::read_link(node.join("usr/local/bin/containerd-shim-caisson-hardened-v2"))
        .expect("the hardened shim's symlink");
    assert_eq!(link, Path::new("containerd-shim-caisson-v2"));

    // containerd reads the edited file as one config: its own settings kept,
    // the two handlers added, runc still there.
    let dump = config_dump(&containerd, &node.join(CONFIG));
    for want in [
        format!("sandbox_image = \"{PAUSE_NAME}\""),
        "max_container_log_line_size = 16384".to_string(),
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.caisson]".to_string(),
        "runtime_type = \"io.containerd.caisson.v2\"".to_string(),
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.caisson-hardened]".to_string(),
        "runtime_type = \"io.containerd.caisson-hardened.v2\"".to_string(),
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]".to_string(),
        format!("Root = \"{}\"", ctrd.join("runc").display()),
    ] {
        assert!(
            dump.contains(&want),
            "`containerd config dump` lacks {want}:\n{dump}"
        );
    }

    // The pods' network: Debian's CNI plugins, a bridge of this test's own
    // (removed on drop, after the pods).
    let net = TestNetwork::new("cst-deploy", "cst-deploy0", "10.231.80");
    std::fs::create_dir_all(ctrd.join("cni/conf")).unwrap();
    std::fs::write(
        ctrd.join("cni/conf/10-cst-deploy.conflist"),
        net.conflist(""),
    )
    .unwrap();
    {
        let cd = Containerd::start(&containerd, &ctr, &node, &ctrd);
        cd.import_images();
        let native = cd.run_pod("caisson");
        let map = cd.exec_in_pod(
            &native,
            &["sh", "-c", "echo $((6*7)); cat /proc/self/uid_map"],
        );
        assert!(
            map.starts_with("42\n") && map.contains("4294967295"),
            "a native pod's process runs as the host's root (identity map): {map:?}\n{}",
            cd.diagnostics()
        );
        // The hardened shim needs every directory above a pod's mount
        // sources searchable by the pod's unprivileged root, and containerd
        // 1.6 makes its root and its CRI state dir 0700: a node running
        // hardened pods under containerd makes them 0711 (traverse, not
        // list) after each containerd start.
        for dir in cd.cri_state_dirs() {
            std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o711)).unwrap();
        }
        let hardened = cd.run_pod("caisson-hardened");
        let map = cd.exec_in_pod(
            &hardened,
            &["sh", "-c", "echo $((6*7)); cat /proc/self/uid_map"],
        );
        let fields: Vec<u64> = map
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        assert!(
            map.starts_with("42\n") && fields.len() == 3 && fields[1] >= 620_000_000,
            "a hardened pod's root is an unprivileged host range: {map:?}\n{}",
            cd.diagnostics()
        );
        // Both pods are served by the installed shim, not the build's.
        let shim = node.join("usr/local/bin/containerd-shim-caisson-v2");
        let exes = cd.shim_exes();
        assert!(
            exes.len() >= 2 && exes.iter().all(|e| *e == shim),
            "shims running {exes:?}, expected {} for both pods\n{}",
            shim.display(),
            cd.diagnostics()
        );
        for pod in [native, hardened] {
            cd.stop_and_remove(&pod.id);
        }
        wait_until("the pods' shims to exit", Duration::from_secs(15), || {
            cd.shim_exes().is_empty().then_some(())
        });
        cd.finish();
    }
    assert!(
        net.allocations().is_empty(),
        "pod IPs left allocated: {:?}",
        net.allocations()
    );

    let out = script(&[
        "uninstall",
        "--root",
        &node.display().to_string(),
        "--restart-containerd",
        "no",
    ]);
    expect_ok(&out, "uninstall");
    assert_eq!(
        std::fs::read_to_string(node.join(CONFIG)).unwrap(),
        original,
        "uninstall must give the config back byte for byte"
    );
    assert_eq!(
        tree(&node),
        before,
        "uninstall must leave the node as it was"
    );
}

#[test]
fn version_3_config_round_trips_byte_for_byte() {
    let tmp = tempdir();
    let node = tmp.path().join("node");
    std::fs::create_dir_all(node.join("etc/containerd")).unwrap();
    let original = r#"# containerd 2.x
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10'

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false

    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'

        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = true
"#;
    std::fs::write(node.join(CONFIG), original).unwrap();
    let before = tree(&node);
    let ctx = build_context(tmp.path());
    let out = image_script(&ctx, &node, &["install", "--restart-containerd", "no"]);
    expect_ok(&out, "install");
    let edited = std::fs::read_to_string(node.join(CONFIG)).unwrap();
    assert!(edited.starts_with(original), "only appended:\n{edited}");
    // Valid TOML whose CRI runtime plugin now has both handlers, runc kept.
    let runtimes = toml_runtimes(&node.join(CONFIG), "io.containerd.cri.v1.runtime");
    assert_eq!(
        runtimes,
        [
            ("caisson", "io.containerd.caisson.v2"),
            ("caisson-hardened", "io.containerd.caisson-hardened.v2"),
            ("runc", "io.containerd.runc.v2"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into_iter()
        .collect::<BTreeMap<_, _>>()
    );
    let out = image_script(&ctx, &node, &["uninstall", "--restart-containerd", "no"]);
    expect_ok(&out, "uninstall");
    assert_eq!(
        std::fs::read_to_string(node.join(CONFIG)).unwrap(),
        original
    );
    assert_eq!(tree(&node), before);
}

#[test]
fn a_config_without_runtimes_gets_runc_back_and_round_trips() {
    let containerd = require::program("containerd", "containerd");
    let tmp = tempdir();
    let node = tmp.path().join("node");
    std::fs::create_dir_all(node.join("etc/containerd")).unwrap();
    // No trailing newline, no runtimes: declaring caisson alone would drop
    // containerd's built-in runc.
    let original = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.6\"";
    std::fs::write(node.join(CONFIG), original).unwrap();
    let before = tree(&node);
    let ctx = build_context(tmp.path());
    expect_ok(
        &image_script(&ctx, &node, &["install", "--restart-containerd", "no"]),
        "install",
    );
    let dump = config_dump(&containerd, &node.join(CONFIG));
    for name in ["runc", "caisson", "caisson-hardened"] {
        let table = format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]");
        assert!(dump.contains(&table), "no {table} in:\n{dump}");
    }
    assert!(dump.contains("sandbox_image = \"registry.k8s.io/pause:3.6\""));
    expect_ok(
        &image_script(&ctx, &node, &["uninstall", "--restart-containerd", "no"]),
        "uninstall",
    );
    assert_eq!(
        std::fs::read(node.join(CONFIG)).unwrap(),
        original.as_bytes()
    );
    assert_eq!(tree(&node), before);
}

#[test]
fn a_config_already_declaring_caisson_is_refused_untouched() {
    let tmp = tempdir();
    let node = tmp.path().join("node");
    std::fs::create_dir_all(node.join("etc/containerd")).unwrap();
    let ctx = build_context(tmp.path());
    for existing in [
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.caisson]\n  runtime_type = \"x\"\n",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.'caisson-hardened'.options]\n",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes.caisson.runtime_type = \"x\"\n",
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\n  runtimes = {}\n",
    ] {
        std::fs::write(node.join(CONFIG), existing).unwrap();
        let before = tree(&node);
        let out = image_script(&ctx, &node, &["install", "--restart-containerd", "no"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("refusing to edit"),
            "install over {existing:?} must be refused with a clear message: {out:?}"
        );
        assert_eq!(tree(&node), before, "a refused install changes nothing");
    }
    // Version 1 (no `version`) is refused too, naming the migration.
    std::fs::write(
        node.join(CONFIG),
        "[plugins.cri]\n  sandbox_image = \"p\"\n",
    )
    .unwrap();
    let out = image_script(&ctx, &node, &["install", "--restart-containerd", "no"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("migrate"),
        "{out:?}"
    );
    // Asking for a restart where there is no systemd fails before any change.
    std::fs::write(node.join(CONFIG), "version = 2\n").unwrap();
    let before = tree(&node);
    let out = image_script(&ctx, &node, &["install", "--restart-containerd", "yes"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("--restart-containerd no"),
        "{out:?}"
    );
    assert_eq!(tree(&node), before);
}

#[test]
fn uninstall_keeps_edits_made_after_install_and_restores_replaced_files() {
    let tmp = tempdir();
    let node = tmp.path().join("node");
    std::fs::create_dir_all(node.join("etc/containerd")).unwrap();
    std::fs::create_dir_all(node.join("usr/local/bin")).unwrap();
    // An operator's own caisson-pause and config are there before.
    std::fs::write(node.join("usr/local/bin/caisson-pause"), "old pause").unwrap();
    std::fs::create_dir_all(node.join("etc/caisson")).unwrap();
    std::fs::write(node.join("etc/caisson/caisson.toml"), "# mine\n").unwrap();
    let original = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
    std::fs::write(node.join(CONFIG), original).unwrap();
    let before = tree(&node);
    let ctx = build_context(tmp.path());
    let install = ["install", "--restart-containerd", "no"];
    expect_ok(&image_script(&ctx, &node, &install), "install");
    assert_eq!(
        std::fs::read_to_string(node.join("etc/caisson/caisson.toml")).unwrap(),
        "# mine\n",
        "an existing caisson.toml is kept"
    );
    // A second install (a DaemonSet pod restarted) changes nothing more.
    let once = std::fs::read(node.join(CONFIG)).unwrap();
    expect_ok(&image_script(&ctx, &node, &install), "install again");
    assert_eq!(std::fs::read(node.join(CONFIG)).unwrap(), once);

    let mut edited = String::from_utf8(once).unwrap();
    edited.push_str("\n[debug]\n  level = \"debug\"\n");
    std::fs::write(node.join(CONFIG), &edited).unwrap();
    expect_ok(
        &image_script(&ctx, &node, &["uninstall", "--restart-containerd", "no"]),
        "uninstall",
    );
    let after = std::fs::read_to_string(node.join(CONFIG)).unwrap();
    assert!(
        !after.contains("caisson")
            && after.contains("level = \"debug\"")
            && after.starts_with(original),
        "the operator's edit kept, the block gone:\n{after}"
    );
    std::fs::write(node.join(CONFIG), original).unwrap();
    assert_eq!(
        tree(&node),
        before,
        "replaced files are back, added ones gone"
    );
}

#[test]
fn caissond_mode_installs_the_unit_and_uninstall_removes_it() {
    let tmp = tempdir();
    let node = tmp.path().join("node");
    std::fs::create_dir_all(&node).unwrap();
    let before = tree(&node);
    let ctx = build_context(tmp.path());
    expect_ok(
        &image_script(
            &ctx,
            &node,
            &["install", "--mode", "caissond", "--start", "no"],
        ),
        "install",
    );
    let unit = std::fs::read_to_string(node.join("etc/systemd/system/caissond.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/caissond --config /etc/caisson/caisson.toml"));
    let config = std::fs::read_to_string(node.join("etc/caisson/caisson.toml")).unwrap();
    assert!(
        config.contains("socket = \"/run/caisson/caissond.sock\""),
        "{config}"
    );
    assert!(
        !node.join(CONFIG).exists(),
        "caissond mode leaves containerd alone"
    );
    // Without systemd, starting it from a pod's view of the node is refused.
    let out = image_script(&ctx, &node, &["install", "--mode", "caissond"]);
    assert!(!out.status.success(), "{out:?}");
    expect_ok(&image_script(&ctx, &node, &["uninstall"]), "uninstall");
    assert_eq!(tree(&node), before);
}

// ---------------------------------------------------------------------------

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("caisson-deploy-")
        .tempdir()
        .unwrap()
}

/// A node's containerd 1.6 config, as a kubeadm-style setup leaves it, with
/// every path under `ctrd`.
fn existing_v2_config(ctrd: &Path) -> String {
    let d = ctrd.display();
    format!(
        r#"# containerd 1.6 on a Kubernetes node (generated by `containerd config default`, then edited)
version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0

[grpc]
  address = "{d}/containerd.sock"
  max_recv_message_size = 16777216
  max_send_message_size = 16777216

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "debug"

[metrics]
  address = ""
  grpc_histogram = false

[plugins]

  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_NAME}"
    # This machine's root lacks CAP_SYS_RESOURCE.
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    max_container_log_line_size = 16384

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "{d}/runc"

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{d}/cni/conf"

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{d}/certs.d"
"#
    )
}

/// A directory holding the binaries as a release puts them side by side
/// (links to this build's caissond and shim, and caisson-pause).
fn release_dir(tmp: &Path) -> PathBuf {
    let from = tmp.join("release");
    std::fs::create_dir_all(&from).unwrap();
    let bin = target_dir();
    for (name, path) in [
        ("caissond", bin.join("caissond")),
        (
            "containerd-shim-caisson-v2",
            bin.join("containerd-shim-caisson-v2"),
        ),
        ("caisson-pause", pause_binary()),
    ] {
        assert!(
            path.is_file(),
            "{} is not built: run `make build`",
            path.display()
        );
        std::os::unix::fs::symlink(&path, from.join(name)).unwrap();
    }
    from
}

/// The Containerfile's build context, made by `make-context.sh` from this
/// build; checks it holds every file the Containerfile copies.
fn build_context(tmp: &Path) -> PathBuf {
    let ctx = tmp.join("context");
    let bin = target_dir();
    let out = Command::new("sh")
        .arg(Path::new(DEPLOY_DIR).join("make-context.sh"))
        .arg(&ctx)
        .arg(&bin)
        .arg(pause_binary())
        .output()
        .unwrap();
    expect_ok(&out, "make-context.sh");
    let containerfile =
        std::fs::read_to_string(Path::new(DEPLOY_DIR).join("Containerfile")).unwrap();
    for line in containerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(
                ctx.join(src).exists(),
                "the Containerfile copies {src}, which make-context.sh did not make"
            );
        }
    }
    ctx
}

/// Runs the script from the repo with Debian's /bin/sh (dash).
fn script(args: &[&str]) -> Output {
    Command::new("/bin/sh")
        .arg(Path::new(DEPLOY_DIR).join("caisson-deploy.sh"))
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .unwrap()
}

/// Runs the script as the image does: from the build context, under
/// Debian's static busybox shell with nothing on `PATH` (busybox runs its
/// own applets), binaries from the context's `bin/`.
fn image_script(ctx: &Path, node: &Path, args: &[&str]) -> Output {
    let busybox = require::program("busybox", "busybox-static");
    Command::new(busybox)
        .arg("sh")
        .arg(ctx.join("caisson-deploy.sh"))
        .args(&args[..1])
        .arg("--root")
        .arg(node)
        .args(&args[1..])
        .env_clear()
        .env("PATH", "/nonexistent")
        .output()
        .unwrap()
}

fn expect_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every path under `root`: its type, mode, owner and content digest (a
/// link's target).
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let head = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("{head} -> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, format!("{head} dir"));
                walk(root, &path, out);
            } else {
                let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                out.insert(rel, format!("{head} {digest}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `containerd --config <file> config dump`: the config containerd reads.
fn config_dump(containerd: &Path, config: &Path) -> String {
    let out = Command::new(containerd)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    expect_ok(&out, "containerd config dump");
    String::from_utf8(out.stdout).unwrap()
}

/// The `runtime_type` of each runtime of `plugin` in a version 3 config,
/// parsed by Python's `tomllib` (an independent TOML parser).
fn toml_runtimes(config: &Path, plugin: &str) -> BTreeMap<String, String> {
    let program = format!(
        "import json, sys, tomllib\n\
         c = tomllib.load(open(sys.argv[1], 'rb'))\n\
         r = c['plugins']['{plugin}']['containerd']['runtimes']\n\
         print(json.dumps({{k: v['runtime_type'] for k, v in r.items()}}))"
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .arg(config)
        .output()
        .unwrap();
    expect_ok(&out, "python3 tomllib");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A pod this test made through containerd's CRI.
struct Pod {
    id: String,
    container: String,
}

/// containerd with the node's config, its shims found on the installed
/// `bin` first; torn down on drop (pods, containerd, leftover shims, mounts,
/// cgroups), also when a check panics.
struct Containerd {
    ctrd: PathBuf,
    ctr: PathBuf,
    socket: PathBuf,
    shim_run_dir: PathBuf,
    log: PathBuf,
    cgroup_parent: String,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    pods: std::cell::RefCell<Vec<String>>,
}

impl Containerd {
    fn start(containerd: &Path, ctr: &Path, node: &Path, ctrd: &Path) -> Containerd {
        let shim_run_dir = ctrd.join("shim");
        let log = ctrd.join("containerd.log");
        for d in [
            "root", "state", "opt", "runc", "cni/bin", "cni/conf", "certs.d", "logs",
        ] {
            std::fs::create_dir_all(ctrd.join(d)).unwrap();
        }
        std::fs::create_dir_all(&shim_run_dir).unwrap();
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            node.join("usr/local/bin").display()
        );
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(containerd);
        cmd.arg("--config")
            .arg(node.join(CONFIG))
            .env("PATH", path)
            .env(RUN_DIR_ENV, &shim_run_dir)
            .env("CAISSON_BACKEND_OPTIONS", BACKEND_OPTIONS)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe. containerd dies with this
        // test's thread if the test process is killed before teardown.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawning containerd");
        let cd = Containerd {
            ctrd: ctrd.to_path_buf(),
            ctr: ctr.to_path_buf(),
            socket: ctrd.join("containerd.sock"),
            shim_run_dir,
            log,
            cgroup_parent: format!("/{}", unique("caisson-deploy")),
            child: Some(child),
            rt: tokio::runtime::Runtime::new().unwrap(),
            pods: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cd.socket.exists() && cd.ctr_ok(&["version"]).contains("Server:") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30s\n{}",
                cd.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cd
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::new()
        }
    }

    /// The pause and busybox images, into the CRI plugin's namespace. The
    /// pause image gets the `PATH` every built image carries (Docker's and
    /// buildah's builders add it; registry.k8s.io/pause has it): the shim's
    /// libcontainer refuses to exec a process whose spec has no `PATH`,
    /// where runc does not mind.
    fn import_images(&self) {
        let mut pause = pause_image(&pause_binary());
        pause.config["Env"] = serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]);
        for (file, image) in [("pause.tar", pause), ("busybox.tar", busybox_image())] {
            let archive = self.ctrd.join(file);
            let mut oci = OciArchive::new();
            oci.add_image(&image);
            oci.write(&archive, false);
            let out = Command::new(&self.ctr)
                .arg("--address")
                .arg(&self.socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive)
                .output()
                .unwrap();
            expect_ok(&out, "ctr images import");
        }
    }

    /// The two dirs containerd 1.6 makes 0700 above the pods' mount
    /// sources (resolv.conf, hostname, /dev/shm): its root and the CRI
    /// plugin's state dir.
    fn cri_state_dirs(&self) -> [PathBuf; 2] {
        [
            self.ctrd.join("root"),
            self.ctrd.join("state/io.containerd.grpc.v1.cri"),
        ]
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        let socket = self.socket.clone();
        let channel = self
            .rt
            .block_on(
                tonic::transport::Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .expect("connecting to containerd's CRI");
        RuntimeServiceClient::new(channel)
    }

    fn ok<T>(&self, what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> T {
        match r {
            Ok(r) => r.into_inner(),
            Err(e) => panic!("{what}: {e}\n{}", self.diagnostics()),
        }
    }

    /// A pod on the test's CNI network (hardened pods cannot share the
    /// node's) with one running busybox container, on `handler`.
    fn run_pod(&self, handler: &str) -> Pod {
        let name = unique(handler);
        let mut config = pod_config(&name);
        config.log_directory = self.ctrd.join("logs").join(&name).display().to_string();
        config
            .linux
            .get_or_insert_with(Default::default)
            .cgroup_parent = self.cgroup_parent.clone();
        let mut client = self.client();
        let id = self
            .ok(
                &format!("RunPodSandbox ({handler})"),
                self.rt
                    .block_on(client.run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: handler.into(),
                    })),
            )
            .pod_sandbox_id;
        self.pods.borrow_mut().push(id.clone());
        let mut container = container_config(
            "main",
            &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
        );
        container.log_path = "main.log".into();
        let container = self
            .ok(
                &format!("CreateContainer ({handler})"),
                self.rt
                    .block_on(client.create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: id.clone(),
                        config: Some(container),
                        sandbox_config: Some(config),
                    })),
            )
            .container_id;
        self.ok(
            &format!("StartContainer ({handler})"),
            self.rt
                .block_on(client.start_container(cri::StartContainerRequest {
                    container_id: container.clone(),
                })),
        );
        let status = self
            .ok(
                "ContainerStatus",
                self.rt
                    .block_on(client.container_status(cri::ContainerStatusRequest {
                        container_id: container.clone(),
                        verbose: false,
                    })),
            )
            .status
            .unwrap_or_default();
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "container of the {handler} pod not running: {status:?}\n{}",
            self.diagnostics()
        );
        Pod { id, container }
    }

    /// ExecSync in the pod's container: its stdout.
    fn exec_in_pod(&self, pod: &Pod, cmd: &[&str]) -> String {
        let mut client = self.client();
        let out = self.ok(
            "ExecSync",
            self.rt.block_on(client.exec_sync(cri::ExecSyncRequest {
                container_id: pod.container.clone(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 20,
            })),
        );
        assert_eq!(
            out.exit_code,
            0,
            "exec {cmd:?}: stderr {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop_and_remove(&self, pod: &str) {
        let mut client = self.client();
        self.ok(
            "StopPodSandbox",
            self.rt
                .block_on(client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })),
        );
        self.ok(
            "RemovePodSandbox",
            self.rt
                .block_on(client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })),
        );
        self.pods.borrow_mut().retain(|p| p != pod);
    }

    /// Executables of the shims this containerd started (they inherit our
    /// `CAISSON_SHIM_RUN_DIR`).
    fn shim_exes(&self) -> Vec<PathBuf> {
        self.shim_pids().into_iter().map(|(_, exe)| exe).collect()
    }

    fn shim_pids(&self) -> Vec<(i32, PathBuf)> {
        let marker = format!("{RUN_DIR_ENV}={}", self.shim_run_dir.display());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
                continue;
            };
            if !exe
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
            {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                found.push((pid, exe));
            }
        }
        found
    }

    /// Checks containerd has no pod left, then tears down.
    fn finish(mut self) {
        let mut client = self.client();
        let left = self
            .ok(
                "ListPodSandbox",
                self.rt
                    .block_on(client.list_pod_sandbox(cri::ListPodSandboxRequest::default())),
            )
            .items;
        assert!(left.is_empty(), "pods left: {left:?}");
        self.teardown();
    }

    fn teardown(&mut self) {
        if self.child.is_some() {
            for pod in self.pods.take() {
                let mut client = self.client();
                let _ = self
                    .rt
                    .block_on(client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    }));
                let _ = self
                    .rt
                    .block_on(client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod,
                    }));
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (pid, _) in self.shim_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for _ in 0..10 {
            let mounts: Vec<PathBuf> = caisson_sandbox::host::mountinfo::read()
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| p.starts_with(&self.ctrd))
                .collect();
            if mounts.is_empty() {
                break;
            }
            for m in mounts.iter().rev() {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        remove_cgroups(&self.cgroup_parent);
    }

    fn diagnostics(&self) -> String {
        let mut s = format!("--- containerd log (tail) ---\n{}\n", tail(&self.log, 60));
        if let Ok(dir) = std::fs::read_dir(self.shim_run_dir.join("log")) {
            for log in dir.flatten() {
                s.push_str(&format!(
                    "--- shim log {} (tail) ---\n{}\n",
                    log.path().display(),
                    tail(&log.path(), 30)
                ));
            }
        }
        s
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Removes the test's cgroup parent in every v1 hierarchy, children first,
/// killing what is left in them.
fn remove_cgroups(parent: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let dir = h.path().join(parent.trim_start_matches('/'));
        if dir.is_dir() {
            remove_tree(&dir);
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&c.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}
