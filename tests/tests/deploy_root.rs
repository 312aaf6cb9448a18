//! The node installer, `integration/deploy/caisson-deploy.sh`, on a node
//! of our own: a temp root holding a realistic containerd 1.6 config
//! (version 2, CRI settings, a runc runtime with options, registry and CNI
//! paths). `install --root <tmp> --restart-containerd no` copies the
//! binaries and registers the handlers; the test then starts Debian's
//! containerd with that config (the installed `bin` first on its `PATH`, as
//! `/usr/local/bin` is on a node), runs a pod with `runtime_handler`
//! `caisson`, one with `caisson-hardened` and one with `caisson-microvm`
//! (its container in its own VM) through containerd's CRI (the
//! `k8s-cri` client on containerd's socket), checks a process runs in each
//! and that the installed shim serves it, stops them, stops containerd,
//! runs `uninstall`, and checks the config is byte-identical and the temp
//! root holds exactly what it held before. Needs root and Debian's
//! `containerd` and `busybox-static`.
//!
//! The config edit alone (no containerd running) is tested in
//! `deploy_config.rs`.

#[path = "deploy/containerd_cri.rs"]
mod containerd_cri;
mod deploy;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use caisson_tests::cni::TestNetwork;
use caisson_tests::daemon::wait_until;
use caisson_tests::fixtures::PAUSE_NAME;
use caisson_tests::require;
use containerd_cri::Containerd;
use deploy::{config_dump, expect_ok, release_dir, script, tree, CONFIG};

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
    for backend in ["hardened", "microvm"] {
        let link = std::fs::read_link(node.join(format!(
            "usr/local/bin/containerd-shim-caisson-{backend}-v2"
        )))
        .unwrap_or_else(|e| panic!("the {backend} shim's symlink: {e}"));
        assert_eq!(link, Path::new("containerd-shim-caisson-v2"));
    }

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
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.caisson-microvm]".to_string(),
        "runtime_type = \"io.containerd.caisson-microvm.v2\"".to_string(),
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
        // containerd 1.6 makes its root and its CRI state dir 0700, above
        // the pod's resolv.conf, hostname and /dev/shm: the hardened shim
        // relays those sources through the task's bundle, and the host's
        // dirs stay as containerd made them.
        let hardened = cd.run_pod("caisson-hardened");
        for dir in cd.cri_state_dirs() {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{} was loosened", dir.display());
        }
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
        // A microvm pod: containerd runs containerd-shim-caisson-microvm-v2,
        // which boots the pod's VM; its container sees the guest's kernel.
        let guest_release = require::microvm();
        let microvm = cd.run_pod("caisson-microvm");
        let release = cd.exec_in_pod(&microvm, &["uname", "-r"]);
        assert_eq!(
            release.trim(),
            guest_release,
            "the microvm pod's container does not run on the guest kernel\n{}",
            cd.diagnostics()
        );
        for pod in [native, hardened, microvm] {
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
