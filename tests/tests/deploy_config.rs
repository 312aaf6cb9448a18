//! The node installer's containerd config edit, without containerd
//! running: version 3 (containerd 2.x) round trips byte for byte (its TOML
//! checked with Python's `tomllib`), a version 2 file with no trailing
//! newline and no runtimes gets `runc` back (checked with `containerd config
//! dump`), a file already declaring `caisson` is refused untouched, an edit
//! made after install survives uninstall, and caissond mode installs and
//! removes the unit. The script runs as the image runs it: Debian's static
//! busybox shell with no `PATH`, from the build context `make-context.sh`
//! makes (which also checks the Containerfile's sources). No root needed.

mod deploy;

use std::collections::BTreeMap;

use caisson_tests::require;
use deploy::{
    build_context, config_dump, expect_ok, image_script, tempdir, toml_runtimes, tree, CONFIG,
};

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
            ("caisson-microvm", "io.containerd.caisson-microvm.v2"),
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
    for name in ["runc", "caisson", "caisson-hardened", "caisson-microvm"] {
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
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.\"caisson-microvm\"]\n",
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
