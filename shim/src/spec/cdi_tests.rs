use super::*;

fn dirs(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let root = tempfile::tempdir().unwrap();
    let dirs = (0..n)
        .map(|i| {
            let d = root.path().join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    (root, dirs)
}

fn request(name: &str) -> Request {
    Request {
        field: "config.CDI_devices[0]".into(),
        name: name.into(),
    }
}

const NULL_JSON: &str = r#"{
  "cdiVersion": "0.6.0",
  "kind": "example.com/device",
  "containerEdits": {"env": ["SPEC_LEVEL=1"]},
  "devices": [
    {"name": "null0", "containerEdits": {
      "env": ["CDI_TEST=1", "PATH=/cdi"],
      "deviceNodes": [{"path": "/dev/cdi-null", "hostPath": "/dev/null", "permissions": "rw"}],
      "mounts": [{"hostPath": "/etc", "containerPath": "/cdi/etc", "options": ["ro", "rbind"]}],
      "hooks": [{"hookName": "createContainer", "path": "/bin/true", "args": ["true"]}],
      "additionalGids": [0, 44]
    }},
    {"name": "zero", "containerEdits": {"deviceNodes": [{"path": "/dev/zero"}]}}
  ]
}"#;

const NULL_YAML: &str = "
cdiVersion: 0.3.0
kind: example.com/yaml
devices:
  - name: a
    containerEdits:
      env: [FROM_YAML=1]
      deviceNodes:
        - path: /dev/y
          hostPath: /dev/null
          type: c
          major: 1
          minor: 3
";

#[test]
fn qualified_names() {
    let cases = [
        ("example.com/device=null0", true),
        ("nvidia.com/gpu=0", true),
        ("vendor.example-1.com/class_a=dev:1.a", true),
        ("example.com/device", false),
        ("device=null0", false),
        ("example.com/=x", false),
        ("1vendor.com/class=x", false),
        ("example.com/cl.ass=x", false),
        ("example.com/class=", false),
        ("example.com/class=-x", false),
        ("example.com/class=x/y", false),
        ("", false),
    ];
    for (name, ok) in cases {
        assert_eq!(check_qualified_name(name).is_ok(), ok, "{name}");
    }
}

#[test]
fn parsing_json_and_yaml() {
    let (_root, d) = dirs(1);
    std::fs::write(d[0].join("null.json"), NULL_JSON).unwrap();
    std::fs::write(d[0].join("y.yaml"), NULL_YAML).unwrap();
    std::fs::write(d[0].join("ignored.txt"), "not a spec").unwrap();
    let registry = Registry::load(&d);
    assert!(registry.skipped.is_empty(), "{:?}", registry.skipped);
    let mut names: Vec<_> = registry.devices.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "example.com/device=null0",
            "example.com/device=zero",
            "example.com/yaml=a"
        ]
    );
}

#[test]
fn malformed_files() {
    let version = NULL_YAML.replace("0.3.0", "0.2.0");
    let no_edits = NULL_YAML.replace(
        "    containerEdits:\n      env: [FROM_YAML=1]\n",
        "    containerEdits: {}\n      x:\n",
    );
    let bad_kind = NULL_YAML.replace("example.com/yaml", "example");
    let bad_hook = NULL_JSON.replace("createContainer", "whenever");
    let bad_env = NULL_JSON.replace("CDI_TEST=1", "CDI_TEST");
    let cases: &[(&str, &str, &str)] = &[
        ("a.yaml", "{{{ not yaml", "example.com/yaml=a"),
        ("a.yaml", &version, "example.com/yaml=a"),
        ("a.yaml", &no_edits, "example.com/yaml=a"),
        ("a.yaml", &bad_kind, "example=a"),
        ("a.json", &bad_hook, "example.com/device=null0"),
        ("a.json", &bad_env, "example.com/device=null0"),
    ];
    for (file, text, wanted) in cases {
        let (_root, d) = dirs(1);
        std::fs::write(d[0].join(file), text).unwrap();
        // A good file beside it still counts.
        std::fs::write(d[0].join("good.yaml"), NULL_YAML.replace("yaml", "good")).unwrap();
        let registry = Registry::load(&d);
        assert_eq!(registry.skipped.len(), 1, "{text}");
        assert!(
            registry.devices.contains_key("example.com/good=a"),
            "{text}"
        );
        let err = registry.resolve(&[request(wanted)]).unwrap_err();
        assert_eq!(err.field(), Some("config.CDI_devices[0]"), "{text}");
        assert!(matches!(err, SpecError::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains(wanted), "{err}");
    }
}

#[test]
fn priority_and_conflicts() {
    let (_root, d) = dirs(2);
    let other = NULL_YAML.replace("FROM_YAML=1", "FROM_YAML=2");
    std::fs::write(d[0].join("a.yaml"), NULL_YAML).unwrap();
    std::fs::write(d[1].join("a.yaml"), &other).unwrap();
    // A later directory wins.
    let resolved = Registry::load(&d)
        .resolve(&[request("example.com/yaml=a")])
        .unwrap();
    let env: Vec<_> = resolved
        .edits
        .iter()
        .flat_map(|(_, e)| e.env.clone())
        .collect();
    assert_eq!(env, ["FROM_YAML=2"]);
    // Two files of one directory: a conflict, named.
    std::fs::write(d[1].join("b.yaml"), NULL_YAML).unwrap();
    let err = Registry::load(&d)
        .resolve(&[request("example.com/yaml=a")])
        .unwrap_err();
    assert!(err.to_string().contains("defined by both"), "{err}");
    assert_eq!(err.field(), Some("config.CDI_devices[0]"));
}

#[test]
fn unknown_and_missing_dirs() {
    let registry = Registry::load(&[PathBuf::from("/no/such/cdi/dir")]);
    let err = registry
        .resolve(&[request("example.com/device=gone")])
        .unwrap_err();
    assert_eq!(err.field(), Some("config.CDI_devices[0]"));
    assert!(err.to_string().contains("example.com/device=gone"), "{err}");
}

#[test]
fn requests_from_field_and_annotations() {
    let annotations = HashMap::from([
        (
            "cdi.k8s.io/plugin".to_string(),
            "example.com/device=null0, example.com/device=zero".to_string(),
        ),
        ("other".to_string(), "x".to_string()),
    ]);
    let got = requests(&["example.com/yaml=a".into()], &annotations).unwrap();
    let got: Vec<_> = got
        .iter()
        .map(|r| (r.field.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("config.CDI_devices[0]", "example.com/yaml=a"),
            (
                "config.annotations[\"cdi.k8s.io/plugin\"]",
                "example.com/device=null0"
            ),
            (
                "config.annotations[\"cdi.k8s.io/plugin\"]",
                "example.com/device=zero"
            ),
        ]
    );
    let err = requests(&["ok.com/c=a".into(), "nope".into()], &HashMap::new()).unwrap_err();
    assert_eq!(err.field(), Some("config.CDI_devices[1]"));
    assert!(err.to_string().contains("nope"), "{err}");
}

fn base_spec() -> OciSpec {
    let mut spec = OciSpec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_env(Some(vec!["PATH=/bin".into(), "HOME=/root".into()]));
    spec.set_process(Some(process));
    let mut linux = spec.linux().clone().unwrap();
    let mut resources = oci_spec::runtime::LinuxResources::default();
    resources.set_devices(Some(vec![devices::deny_all()]));
    linux.set_resources(Some(resources));
    linux.set_devices(None);
    spec.set_linux(Some(linux));
    spec.set_hooks(None);
    spec
}

#[test]
fn edits_are_merged_into_the_spec() {
    let (_root, d) = dirs(1);
    std::fs::write(d[0].join("null.json"), NULL_JSON).unwrap();
    let registry = Registry::load(&d);
    let resolved = registry
        .resolve(&[
            request("example.com/device=null0"),
            request("example.com/device=zero"),
            request("example.com/device=null0"),
        ])
        .unwrap();
    // Spec edits once, then each device once.
    assert_eq!(resolved.edits.len(), 3);
    let mut spec = base_spec();
    resolved.apply(&mut spec).unwrap();

    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.env().as_ref().unwrap(),
        &["PATH=/cdi", "HOME=/root", "SPEC_LEVEL=1", "CDI_TEST=1"]
    );
    assert_eq!(process.user().additional_gids().as_ref().unwrap(), &[44]);

    let linux = spec.linux().as_ref().unwrap();
    let devs = linux.devices().as_ref().unwrap();
    let paths: Vec<_> = devs
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(paths, ["/dev/cdi-null", "/dev/zero"]);
    assert_eq!(
        (devs[0].typ(), devs[0].major(), devs[0].minor()),
        (LinuxDeviceType::C, 1, 3)
    );
    assert_eq!((devs[1].major(), devs[1].minor()), (1, 5));
    let rules: Vec<_> = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(rules, ["a *:* rwm", "c 1:3 rw", "c 1:5 rwm"]);

    let mounts = spec.mounts().as_ref().unwrap();
    let cdi = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/cdi/etc"))
        .unwrap();
    assert_eq!(cdi.source().as_deref(), Some(Path::new("/etc")));
    assert_eq!(cdi.typ().as_deref(), Some("bind"));
    assert_eq!(cdi.options().as_ref().unwrap(), &["ro", "rbind"]);
    // Parents first.
    let depths: Vec<_> = mounts
        .iter()
        .map(|m| m.destination().components().count())
        .collect();
    assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{depths:?}");

    let hooks = spec.hooks().as_ref().unwrap();
    let create = hooks.create_container().as_ref().unwrap();
    assert_eq!(create.len(), 1);
    assert_eq!(create[0].path(), Path::new("/bin/true"));
}

#[test]
fn device_node_conflicts_and_failures() {
    let node = |path: &str, host: &str, typ: Option<&str>| DeviceNode {
        path: path.into(),
        host_path: Some(host.into()),
        typ: typ.map(String::from),
        ..Default::default()
    };
    let cases = [
        (node("/dev/x", "/dev/null", None), Ok("c 1:3")),
        (node("/dev/x", "/dev/null", Some("c")), Ok("c 1:3")),
        (node("/dev/x", "/dev/null", Some("b")), Err("type")),
        (node("/dev/x", "/no/such/device", None), Err("No such file")),
        (node("/dev/x", "/etc/hostname", None), Err("not a device")),
    ];
    for (n, want) in cases {
        let got = device_of(&n, 0, 0)
            .map(|(d, _)| format!("{} {}:{}", d.typ().as_str(), d.major(), d.minor()));
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w),
            (Err(g), Err(w)) => assert!(g.contains(w), "{g}"),
            (g, w) => panic!("{n:?}: got {g:?}, want {w:?}"),
        }
    }
    // A device edit replaces an earlier one at the same path; the owner
    // follows the container's user unless given.
    let mut spec = base_spec();
    let mut edits = Edits {
        device_nodes: vec![node("/dev/x", "/dev/null", None)],
        ..Default::default()
    };
    apply_edits(&mut spec, &edits).unwrap();
    edits.device_nodes = vec![node("/dev/x", "/dev/zero", None)];
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_uid(1000);
    apply_edits(&mut spec, &edits).unwrap();
    let devs = spec.linux().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!((devs[0].minor(), devs[0].uid()), (5, Some(1000)));
    // Edits caisson cannot apply fail the create.
    let rdt = Edits {
        intel_rdt: Some(serde_json::json!({"closID": "x"})),
        ..Default::default()
    };
    assert!(apply_edits(&mut base_spec(), &rdt)
        .unwrap_err()
        .contains("intelRdt"));
}
