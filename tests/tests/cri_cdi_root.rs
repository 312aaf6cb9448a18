//! CDI devices through caissond: a CDI spec file in a temp `[cdi] spec_dirs`
//! defines `example.com/device=null0` (a device node, an env variable, a
//! mount); a container asking for it by `CDI_devices` sees all three on
//! native and runc-oci (hardened: env and mount, no host device node, by its
//! policy); an unknown or malformed name is INVALID_ARGUMENT naming the
//! field and leaves nothing behind. Needs root.

use caisson_tests::daemon::{container_config, rejection, Caissond};
use k8s_cri::v1 as cri;

/// The spec file (YAML, as device plugins usually write them) and the
/// directory it mounts, in a temp dir that outlives the daemon.
fn cdi_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello"), "from the CDI mount\n").unwrap();
    let specs = dir.path().join("specs");
    std::fs::create_dir(&specs).unwrap();
    std::fs::write(
        specs.join("example.yaml"),
        format!(
            "cdiVersion: 0.6.0\nkind: example.com/device\ndevices:\n  - name: null0\n    containerEdits:\n      env: [CDI_TEST=1]\n      deviceNodes:\n        - path: /dev/cdi-null\n          hostPath: /dev/null\n          permissions: rw\n      mounts:\n        - hostPath: {}\n          containerPath: /cdi-data\n          options: [ro, nosuid, nodev, bind]\n",
            data.display()
        ),
    )
    .unwrap();
    // A broken file beside it is skipped, not fatal.
    std::fs::write(specs.join("broken.json"), "{ not json").unwrap();
    dir
}

fn start(cdi: &tempfile::TempDir) -> Caissond {
    let d = Caissond::start(&format!(
        "cdi.spec_dirs = [\"{}\"]",
        cdi.path().join("specs").display()
    ));
    d.import_busybox();
    d
}

fn with_cdi(name: &str, device: &str) -> cri::ContainerConfig {
    let mut config = container_config(name, &["sleep", "1000"]);
    config.cdi_devices = vec![cri::CdiDevice {
        name: device.into(),
    }];
    config
}

#[test]
fn cdi_device_reaches_the_container() {
    let cdi = cdi_dir();
    let d = start(&cdi);
    // hardened passes no host device nodes by policy (CRI `devices` neither):
    // the node is absent there, the env and mount edits apply.
    for (handler, device) in [("runc", true), ("runc-oci", true), ("hardened", false)] {
        let config = d.pod_config(&format!("cdi-{handler}"));
        let pod = d.run_pod_with_handler(&config, handler);
        let c =
            d.create_started_container(&pod, &config, with_cdi("c", "example.com/device=null0"));
        let script = "test -c /dev/cdi-null && echo written > /dev/cdi-null && echo char-ok; ls -l /dev/cdi-null";
        let out = d.try_exec(&c, &["sh", "-c", script], 30).unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if device {
            assert!(out.starts_with("char-ok\n"), "{handler}: {out}");
            assert!(out.contains(" 1,   3 "), "{handler}: {out}");
        } else {
            assert!(out.contains("No such file"), "{handler}: {out}");
        }
        let env = d.exec(&c, &["env"]);
        assert!(env.lines().any(|l| l == "CDI_TEST=1"), "{handler}: {env}");
        assert_eq!(
            d.exec(&c, &["cat", "/cdi-data/hello"]),
            "from the CDI mount\n",
            "{handler}"
        );
        let write = d.try_exec(&c, &["touch", "/cdi-data/new"], 30).unwrap();
        assert_ne!(write.exit_code, 0, "{handler}: the mount is read-only");
        d.remove_pod(&pod);
    }
}

#[test]
fn unknown_cdi_devices_are_invalid_argument() {
    let cdi = cdi_dir();
    let d = start(&cdi);
    let config = d.pod_config("cdi-bad");
    let pod = d.run_pod(&config);
    let baseline = d.footprint();
    let case = |what: &'static str, device: &str, names: &str| {
        let (pod, sandbox, request) = (pod.clone(), config.clone(), with_cdi("c", device));
        rejection(
            what,
            tonic::Code::InvalidArgument,
            names,
            Box::new(move |d, rt| {
                d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(request.clone()),
                    sandbox_config: Some(sandbox.clone()),
                }))
                .map(drop)
            }),
        )
    };
    d.check_rejections(
        vec![
            case(
                "unknown device",
                "example.com/device=nope",
                "config.CDI_devices[0]: unknown CDI device example.com/device=nope",
            ),
            case(
                "unknown vendor",
                "nvidia.com/gpu=0",
                "config.CDI_devices[0]: unknown CDI device nvidia.com/gpu=0",
            ),
            case(
                "not a qualified name",
                "null0",
                "config.CDI_devices[0]: \"null0\" is not a fully-qualified CDI device name",
            ),
        ],
        &baseline,
    );
}
