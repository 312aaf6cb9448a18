//! Whole-spec tests: both builders end to end, table-driven.

use std::collections::HashMap;
use std::path::Path;

use caisson_image::RunConfig;
use caisson_proto::cri;
use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction, Spec};

use super::host::HostFacts;
use super::*;

fn pod_ctx() -> PodContext {
    PodContext {
        pod_id: "pod-1".into(),
        pause_pid: Some(4242),
        hostname: "web-0".into(),
        hostname_path: "/run/caisson/pods/pod-1/hostname".into(),
        hosts_path: "/run/caisson/pods/pod-1/hosts".into(),
        resolv_conf_path: "/run/caisson/pods/pod-1/resolv.conf".into(),
        shm_path: Some("/run/caisson/pods/pod-1/shm".into()),
        cgroup_parent: "/kubepods/burstable/podabc/".into(),
        netns_path: Some("/run/netns/cni-xyz".into()),
    }
}

fn ns_option(
    network: cri::NamespaceMode,
    pid: cri::NamespaceMode,
    ipc: cri::NamespaceMode,
) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        ..Default::default()
    }
}

fn sandbox_config(
    sc: cri::LinuxSandboxSecurityContext,
    sysctls: &[(&str, &str)],
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web-0".into(),
            uid: "abc".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/default_web-0_abc".into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/burstable/podabc".into(),
            security_context: Some(sc),
            sysctls: sysctls
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn runtime_default() -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    })
}

fn namespaces(spec: &Spec) -> Vec<String> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|ns| match ns.path() {
            Some(p) => format!("{}={}", ns.typ(), p.display()),
            None => ns.typ().to_string(),
        })
        .collect()
}

fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The spec must survive oci-spec's own JSON round trip (what the shim reads).
fn round_trips(spec: &Spec) {
    let json = serde_json::to_string(spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, spec);
}

#[test]
fn sandbox_spec_basics() {
    let sc = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(ns_option(
            cri::NamespaceMode::Pod,
            cri::NamespaceMode::Container,
            cri::NamespaceMode::Pod,
        )),
        seccomp: runtime_default(),
        ..Default::default()
    };
    let config = sandbox_config(sc, &[("kernel.shm_rmid_forced", "1")]);
    let host = HostFacts::for_tests();
    let spec = build_sandbox(&config, &pod_ctx(), vec!["/pause".into()], &host).unwrap();
    round_trips(&spec);

    assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(spec.hostname().as_deref(), Some("web-0"));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.args().as_deref(), Some(&["/pause".to_string()][..]));
    assert_eq!((process.user().uid(), process.user().gid()), (65535, 65535));
    assert_eq!(process.no_new_privileges(), Some(true));
    assert!(process
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .as_ref()
        .unwrap()
        .is_empty());
    assert!(process.rlimits().is_none());
    assert_eq!(
        process.oom_score_adj(),
        Some(0),
        "-998 clamped on a node without CAP_SYS_RESOURCE"
    );
    assert_eq!(
        namespaces(&spec),
        ["mnt", "net=/run/netns/cni-xyz", "uts", "ipc", "pid"]
    );
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/burstable/podabc/pod-1"))
    );
    assert_eq!(
        linux.masked_paths().as_deref(),
        Some(&security::default_masked_paths()[..])
    );
    assert_eq!(
        linux.readonly_paths().as_deref(),
        Some(&security::default_readonly_paths()[..])
    );
    let sysctl = linux.sysctl().as_ref().unwrap();
    assert_eq!(sysctl["kernel.shm_rmid_forced"], "1");
    assert_eq!(sysctl["net.ipv4.ip_unprivileged_port_start"], "0");
    let seccomp = linux.seccomp().as_ref().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(
        annotation(&spec, CONTAINER_TYPE_ANNOTATION),
        Some("sandbox")
    );
    assert_eq!(annotation(&spec, SANDBOX_ID_ANNOTATION), Some("pod-1"));
    assert_eq!(
        annotation(&spec, SANDBOX_NAMESPACE_ANNOTATION),
        Some("default")
    );
    assert_eq!(
        annotation(&spec, SANDBOX_LOG_DIR_ANNOTATION),
        Some("/var/log/pods/default_web-0_abc")
    );
    let shm = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/dev/shm"))
        .unwrap();
    assert_eq!(
        shm.source().as_deref(),
        Some(Path::new("/run/caisson/pods/pod-1/shm"))
    );
}

#[test]
fn the_pods_limits_are_passed_on_as_containerd_names_them() {
    use caisson_sandbox::service as s;
    let mut config = sandbox_config(Default::default(), &[]);
    let host = HostFacts::for_tests();
    let spec = build_sandbox(&config, &pod_ctx(), vec!["/pause".into()], &host).unwrap();
    assert_eq!(annotation(&spec, s::SANDBOX_MEMORY_ANNOTATION), None);
    config.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 250_000,
        cpu_shares: 2560,
        memory_limit_in_bytes: 1 << 30,
        ..Default::default()
    });
    let spec = build_sandbox(&config, &pod_ctx(), vec!["/pause".into()], &host).unwrap();
    for (key, want) in [
        (s::SANDBOX_CPU_PERIOD_ANNOTATION, "100000"),
        (s::SANDBOX_CPU_QUOTA_ANNOTATION, "250000"),
        (s::SANDBOX_CPU_SHARES_ANNOTATION, "2560"),
        (s::SANDBOX_MEMORY_ANNOTATION, "1073741824"),
    ] {
        assert_eq!(annotation(&spec, key), Some(want), "{key}");
    }
}

#[test]
fn sandbox_spec_table() {
    use cri::NamespaceMode::{Container, Node, Pod};
    let host = HostFacts::for_tests();
    struct Case {
        name: &'static str,
        sc: cri::LinuxSandboxSecurityContext,
        sysctls: Vec<(&'static str, &'static str)>,
        want: Result<(Option<&'static str>, Vec<&'static str>, bool), &'static str>,
    }
    let ns = |n, p, i| Some(ns_option(n, p, i));
    let cases = vec![
        Case {
            name: "host network: no hostname, no net/uts, no net defaults",
            sc: cri::LinuxSandboxSecurityContext {
                namespace_options: ns(Node, Container, Pod),
                ..Default::default()
            },
            sysctls: vec![],
            want: Ok((None, vec!["mnt", "ipc", "pid"], false)),
        },
        Case {
            name: "all host",
            sc: cri::LinuxSandboxSecurityContext {
                namespace_options: ns(Node, Node, Node),
                ..Default::default()
            },
            sysctls: vec![],
            want: Ok((None, vec!["mnt"], false)),
        },
        Case {
            name: "unconfined by default (empty seccomp_profile_path)",
            sc: Default::default(),
            sysctls: vec![],
            want: Ok((
                Some("web-0"),
                vec!["mnt", "net=/run/netns/cni-xyz", "uts", "ipc", "pid"],
                false,
            )),
        },
        Case {
            name: "privileged pod: no seccomp even if asked",
            sc: cri::LinuxSandboxSecurityContext {
                privileged: true,
                seccomp: runtime_default(),
                ..Default::default()
            },
            sysctls: vec![],
            want: Ok((
                Some("web-0"),
                vec!["mnt", "net=/run/netns/cni-xyz", "uts", "ipc", "pid"],
                false,
            )),
        },
        Case {
            name: "runtime default",
            sc: cri::LinuxSandboxSecurityContext {
                seccomp: runtime_default(),
                ..Default::default()
            },
            sysctls: vec![],
            want: Ok((
                Some("web-0"),
                vec!["mnt", "net=/run/netns/cni-xyz", "uts", "ipc", "pid"],
                true,
            )),
        },
        Case {
            name: "net sysctl with host network",
            sc: cri::LinuxSandboxSecurityContext {
                namespace_options: ns(Node, Pod, Pod),
                ..Default::default()
            },
            sysctls: vec![("net.core.somaxconn", "1024")],
            want: Err("config.linux.sysctls[net.core.somaxconn]"),
        },
        Case {
            name: "non-namespaced sysctl",
            sc: Default::default(),
            sysctls: vec![("vm.overcommit_memory", "1")],
            want: Err("config.linux.sysctls[vm.overcommit_memory]"),
        },
        Case {
            name: "group without user",
            sc: cri::LinuxSandboxSecurityContext {
                run_as_group: Some(cri::Int64Value { value: 1 }),
                ..Default::default()
            },
            sysctls: vec![],
            want: Err("config.linux.security_context.run_as_group"),
        },
        Case {
            name: "missing localhost profile",
            sc: cri::LinuxSandboxSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "/nonexistent/profile.json".into(),
                }),
                ..Default::default()
            },
            sysctls: vec![],
            want: Err("config.linux.security_context.seccomp.localhost_ref"),
        },
    ];
    for case in cases {
        let config = sandbox_config(case.sc, &case.sysctls);
        match (
            build_sandbox(&config, &pod_ctx(), vec!["/pause".into()], &host),
            case.want,
        ) {
            (Ok(spec), Ok((hostname, ns, seccomp))) => {
                assert_eq!(spec.hostname().as_deref(), hostname, "{}", case.name);
                assert_eq!(namespaces(&spec), ns, "{}", case.name);
                assert_eq!(
                    spec.linux().as_ref().unwrap().seccomp().is_some(),
                    seccomp,
                    "{}",
                    case.name
                );
            }
            (Err(err), Err(field)) => assert_eq!(err.field(), Some(field), "{}: {err}", case.name),
            (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
        }
    }
}

/// A rootfs with a user database, for container specs.
fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nnginx:x:101:101::/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("etc/group"),
        "root:x:0:\nnginx:x:101:\nwww:x:33:nginx\n",
    )
    .unwrap();
    dir
}

fn image() -> RunConfig {
    RunConfig {
        user: "nginx".into(),
        env: vec![
            "PATH=/usr/sbin:/usr/bin".into(),
            "NGINX_VERSION=1.25".into(),
        ],
        entrypoint: vec!["/docker-entrypoint.sh".into()],
        cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
        working_dir: "/srv".into(),
        ..Default::default()
    }
}

fn container_config(sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "nginx".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "docker.io/library/nginx:1.25".into(),
            ..Default::default()
        }),
        envs: vec![cri::KeyValue {
            key: "MODE".into(),
            value: "prod".into(),
        }],
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 256,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 999,
                ..Default::default()
            }),
            security_context: Some(sc),
        }),
        ..Default::default()
    }
}

fn pod_sc() -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        namespace_options: Some(ns_option(
            cri::NamespaceMode::Pod,
            cri::NamespaceMode::Container,
            cri::NamespaceMode::Pod,
        )),
        seccomp: runtime_default(),
        ..Default::default()
    }
}

fn build(
    config: &cri::ContainerConfig,
    sandbox: &cri::PodSandboxConfig,
    rootfs: &Path,
) -> Result<Spec, SpecError> {
    build_container(
        config,
        sandbox,
        &image(),
        rootfs,
        &pod_ctx(),
        "ctr-1",
        None,
        &HostFacts::for_tests(),
    )
}

#[test]
fn container_spec_basics() {
    let root = rootfs();
    let spec = build(
        &container_config(pod_sc()),
        &sandbox_config(Default::default(), &[]),
        root.path(),
    )
    .unwrap();
    round_trips(&spec);

    assert_eq!(spec.hostname(), &None, "containers share the pod's UTS");
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.args().as_deref().unwrap(),
        ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    );
    assert_eq!(
        process.env().as_deref().unwrap(),
        [
            "PATH=/usr/sbin:/usr/bin",
            "HOSTNAME=web-0",
            "NGINX_VERSION=1.25",
            "MODE=prod"
        ]
    );
    assert_eq!(process.cwd(), Path::new("/srv"));
    assert_eq!(process.terminal(), Some(false));
    assert_eq!((process.user().uid(), process.user().gid()), (101, 101));
    assert_eq!(
        process.user().additional_gids().as_deref(),
        Some(&[101, 33][..])
    );
    assert_eq!(process.no_new_privileges(), Some(false));
    assert_eq!(process.oom_score_adj(), Some(999));
    let caps = process.capabilities().as_ref().unwrap();
    let bounding = caps.bounding().as_ref().unwrap();
    assert_eq!(bounding.len(), 14);
    assert!(bounding.contains(&Capability::NetBindService));
    assert!(!bounding.contains(&Capability::SysAdmin));
    assert!(caps.ambient().as_ref().unwrap().is_empty());

    assert_eq!(
        namespaces(&spec),
        [
            "mnt",
            "net=/proc/4242/ns/net",
            "uts=/proc/4242/ns/uts",
            "ipc=/proc/4242/ns/ipc",
            "pid"
        ]
    );
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/burstable/podabc/ctr-1"))
    );
    assert_eq!(
        linux.masked_paths().as_deref(),
        Some(&security::default_masked_paths()[..])
    );
    assert!(linux.seccomp().is_some());
    assert!(linux.sysctl().is_none());
    let resources = linux.resources().as_ref().unwrap();
    assert_eq!(resources.cpu().as_ref().unwrap().shares(), Some(256));
    assert_eq!(resources.memory().unwrap().limit(), Some(64 << 20));
    let rules = resources.devices().as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(!rules[0].allow());

    assert_eq!(
        annotation(&spec, CONTAINER_TYPE_ANNOTATION),
        Some("container")
    );
    assert_eq!(annotation(&spec, SANDBOX_ID_ANNOTATION), Some("pod-1"));
    assert_eq!(annotation(&spec, CONTAINER_NAME_ANNOTATION), Some("nginx"));
    assert_eq!(
        annotation(&spec, IMAGE_NAME_ANNOTATION),
        Some("docker.io/library/nginx:1.25")
    );
    let destinations: Vec<_> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    for want in [
        "/proc",
        "/dev",
        "/sys",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/dev/shm",
    ] {
        assert!(
            destinations.iter().any(|d| d == want),
            "{want} in {destinations:?}"
        );
    }
}

#[test]
fn container_spec_variants() {
    let root = rootfs();
    let sandbox = sandbox_config(Default::default(), &[]);
    let privileged_sandbox = sandbox_config(
        cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        },
        &[],
    );

    // Read-only rootfs, no_new_privs, tty, explicit user and caps.
    let mut config = container_config(cri::LinuxContainerSecurityContext {
        readonly_rootfs: true,
        no_new_privs: true,
        run_as_user: Some(cri::Int64Value { value: 0 }),
        capabilities: Some(cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        ..pod_sc()
    });
    config.tty = true;
    config.command = vec!["/bin/sh".into()];
    let spec = build(&config, &sandbox, root.path()).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(process.no_new_privileges(), Some(true));
    assert_eq!(process.terminal(), Some(true));
    assert_eq!(process.args().as_deref().unwrap(), ["/bin/sh"]);
    assert!(process
        .env()
        .as_ref()
        .unwrap()
        .contains(&"TERM=xterm".to_string()));
    assert_eq!((process.user().uid(), process.user().gid()), (0, 0));
    let bounding = process
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert_eq!(bounding, [Capability::NetAdmin].into());

    // Privileged: everything open, no_new_privs ignored.
    let config = container_config(cri::LinuxContainerSecurityContext {
        privileged: true,
        no_new_privs: true,
        masked_paths: vec!["/proc/kcore".into()],
        ..pod_sc()
    });
    let spec = build(&config, &privileged_sandbox, root.path()).unwrap();
    let process = spec.process().as_ref().unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(false));
    let bounding = process
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert!(bounding.contains(&Capability::SysAdmin));
    assert!(
        !bounding.contains(&Capability::SysResource),
        "not grantable here"
    );
    assert!(linux.seccomp().is_none());
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    assert!(linux
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .any(|d| d.path() == Path::new("/dev/null")));
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(rules
        .iter()
        .any(|r| r.allow() && r.access().as_deref() == Some("rwm") && r.major().is_none()));
    let sys = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/sys"))
        .unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    round_trips(&spec);

    // Host namespaces and a TARGET pid namespace.
    let config = container_config(cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            target_id: "ctr-0".into(),
            ..ns_option(
                cri::NamespaceMode::Node,
                cri::NamespaceMode::Target,
                cri::NamespaceMode::Node,
            )
        }),
        ..pod_sc()
    });
    let spec = build_container(
        &config,
        &sandbox,
        &image(),
        root.path(),
        &pod_ctx(),
        "ctr-1",
        Some(777),
        &HostFacts::for_tests(),
    )
    .unwrap();
    assert_eq!(namespaces(&spec), ["mnt", "pid=/proc/777/ns/pid"]);
    let shm = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/dev/shm"))
        .unwrap();
    assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
}

#[test]
fn container_errors_name_the_field() {
    let root = rootfs();
    let sandbox = sandbox_config(Default::default(), &[]);
    type Edit = Box<dyn Fn(&mut cri::ContainerConfig)>;
    fn sc(config: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
        config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
    }
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "relative mount",
            Box::new(|c| {
                c.mounts = vec![cri::Mount {
                    container_path: "data".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }]
            }),
            "config.mounts[0].container_path",
        ),
        (
            "escaping mount",
            Box::new(|c| {
                c.mounts = vec![cri::Mount {
                    container_path: "/data/../../etc".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }]
            }),
            "config.mounts[0].container_path",
        ),
        (
            "malformed user name",
            Box::new(|c| sc(c).run_as_username = "root:0".into()),
            "config.linux.security_context.run_as_username",
        ),
        (
            "unknown capability",
            Box::new(|c| {
                sc(c).capabilities = Some(cri::Capability {
                    add_capabilities: vec!["SYS_MAGIC".into()],
                    ..Default::default()
                })
            }),
            "config.linux.security_context.capabilities.add_capabilities[0]",
        ),
        (
            "privileged in an unprivileged pod",
            Box::new(|c| sc(c).privileged = true),
            "config.linux.security_context.privileged",
        ),
        (
            "relative working dir",
            Box::new(|c| c.working_dir = "srv".into()),
            "config.working_dir",
        ),
        (
            "bad seccomp path",
            Box::new(|c| {
                sc(c).seccomp = None;
                #[allow(deprecated)]
                {
                    sc(c).seccomp_profile_path = "localhost/relative.json".into();
                }
            }),
            "config.linux.security_context.seccomp_profile_path",
        ),
        (
            "bad device",
            Box::new(|c| {
                c.devices = vec![cri::Device {
                    container_path: "/dev/x".into(),
                    host_path: "/dev/none-such".into(),
                    permissions: "rw".into(),
                }]
            }),
            "config.devices[0].host_path",
        ),
        (
            "bad resources",
            Box::new(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .resources
                    .as_mut()
                    .unwrap()
                    .cpu_shares = -1;
            }),
            "config.linux.resources.cpu_shares",
        ),
    ];
    for (name, edit, field) in cases {
        let mut config = container_config(pod_sc());
        edit(&mut config);
        let err = build(&config, &sandbox, root.path()).unwrap_err();
        assert_eq!(err.field(), Some(field), "{name}: {err}");
    }

    // No command anywhere.
    let empty_image = RunConfig::default();
    let err = build_container(
        &container_config(pod_sc()),
        &sandbox,
        &empty_image,
        root.path(),
        &pod_ctx(),
        "ctr-1",
        None,
        &HostFacts::for_tests(),
    )
    .unwrap_err();
    assert_eq!(err.field(), Some("config.command"));
}

#[test]
fn public_entry_points_use_this_node() {
    let root = rootfs();
    let sandbox = sandbox_config(Default::default(), &[("net.core.somaxconn", "512")]);
    let spec = sandbox_spec(&sandbox, &pod_ctx(), vec!["/pause".into()]).unwrap();
    assert_eq!(
        annotation(&spec, CONTAINER_TYPE_ANNOTATION),
        Some("sandbox")
    );
    let spec = container_spec(
        &container_config(pod_sc()),
        &sandbox,
        &image(),
        root.path(),
        &pod_ctx(),
        "ctr-1",
        None,
    )
    .unwrap();
    assert!(spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Mount));
    let sysctls: HashMap<String, String> = sandbox.linux.unwrap().sysctls;
    assert_eq!(sysctls.len(), 1);
    assert!(sandbox_spec(&cri::PodSandboxConfig::default(), &pod_ctx(), vec![]).is_err());
}

#[test]
fn apparmor_localhost_profiles_need_apparmor_on_the_node() {
    let root = rootfs();
    let localhost = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "k8s-nginx".into(),
    });
    let sandbox = sandbox_config(Default::default(), &[]);
    let container = container_config(cri::LinuxContainerSecurityContext {
        apparmor: localhost.clone(),
        ..pod_sc()
    });
    let pod_with_profile = sandbox_config(
        cri::LinuxSandboxSecurityContext {
            apparmor: localhost.clone(),
            ..Default::default()
        },
        &[],
    );
    let build_pod = |config: &cri::PodSandboxConfig, host: &HostFacts| {
        build_sandbox(config, &pod_ctx(), vec!["/pause".into()], host)
    };
    let build_ctr = |host: &HostFacts| {
        build_container(
            &container,
            &sandbox,
            &image(),
            root.path(),
            &pod_ctx(),
            "ctr-1",
            None,
            host,
        )
    };
    let profile = |spec: &Spec| spec.process().as_ref().unwrap().apparmor_profile().clone();

    // No AppArmor here: refused, naming the field.
    let without = HostFacts::for_tests();
    let err = build_ctr(&without).unwrap_err();
    assert_eq!(err.field(), Some("config.linux.security_context.apparmor"));
    assert!(
        err.to_string().contains("not enabled on this node"),
        "{err}"
    );
    let err = build_pod(&pod_with_profile, &without).unwrap_err();
    assert_eq!(err.field(), Some("config.linux.security_context.apparmor"));

    // AppArmor enabled: the process is confined by the profile.
    let with = HostFacts {
        apparmor: true,
        ..HostFacts::for_tests()
    };
    assert_eq!(
        profile(&build_ctr(&with).unwrap()).as_deref(),
        Some("k8s-nginx")
    );
    let spec = build_pod(&pod_with_profile, &with).unwrap();
    assert_eq!(profile(&spec).as_deref(), Some("k8s-nginx"));
    round_trips(&spec);

    // Nothing asked (or RuntimeDefault): no profile, on either node.
    let runtime_default_apparmor = container_config(cri::LinuxContainerSecurityContext {
        apparmor: runtime_default(),
        ..pod_sc()
    });
    for host in [&without, &with] {
        assert_eq!(profile(&build_pod(&sandbox, host).unwrap()), None);
        for config in [&container_config(pod_sc()), &runtime_default_apparmor] {
            let spec = build_container(
                config,
                &sandbox,
                &image(),
                root.path(),
                &pod_ctx(),
                "ctr-1",
                None,
                host,
            )
            .unwrap();
            assert_eq!(profile(&spec), None);
        }
    }
}

/// `hostUsers: false`: the sandbox makes the pod's user namespace with
/// kubelet's mappings, containers join the pause's and carry the same.
#[test]
fn user_namespace_pods() {
    let mapping = |host_id| cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65_536,
    };
    let userns = |host_id| {
        let mut ns = ns_option(
            cri::NamespaceMode::Pod,
            cri::NamespaceMode::Container,
            cri::NamespaceMode::Pod,
        );
        ns.userns_options = Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![mapping(host_id)],
            gids: vec![mapping(host_id)],
        });
        ns
    };
    let pod_sandbox_sc = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(userns(3_000_000)),
        ..Default::default()
    };
    let sandbox = sandbox_config(pod_sandbox_sc.clone(), &[]);
    let host = HostFacts::for_tests();
    let spec = build_sandbox(&sandbox, &pod_ctx(), vec!["/pause".into()], &host).unwrap();
    round_trips(&spec);
    assert_eq!(
        namespaces(&spec),
        ["user", "mnt", "net=/run/netns/cni-xyz", "uts", "ipc", "pid"]
    );
    let ids = |spec: &Spec| {
        let linux = spec.linux().as_ref().unwrap();
        [linux.uid_mappings(), linux.gid_mappings()].map(|m| {
            let m = m.as_ref().unwrap();
            assert_eq!(m.len(), 1);
            (m[0].container_id(), m[0].host_id(), m[0].size())
        })
    };
    assert_eq!(ids(&spec), [(0, 3_000_000, 65_536); 2]);

    let root = rootfs();
    let sc = cri::LinuxContainerSecurityContext {
        namespace_options: Some(userns(3_000_000)),
        ..pod_sc()
    };
    let spec = build(&container_config(sc), &sandbox, root.path()).unwrap();
    round_trips(&spec);
    assert_eq!(
        namespaces(&spec)[..2],
        ["user=/proc/4242/ns/user".to_string(), "mnt".to_string()]
    );
    assert_eq!(ids(&spec), [(0, 3_000_000, 65_536); 2]);

    // A container with other mappings, or none, in that pod.
    for other in [
        Some(userns(4_000_000)),
        Some(pod_sc().namespace_options.unwrap()),
        None,
    ] {
        let sc = cri::LinuxContainerSecurityContext {
            namespace_options: other,
            ..pod_sc()
        };
        let err = build(&container_config(sc), &sandbox, root.path()).unwrap_err();
        assert_eq!(
            err.field(),
            Some("config.linux.security_context.namespace_options.userns_options"),
            "{err}"
        );
    }
    // Without userns options, the host's user namespace as before.
    let spec = build(
        &container_config(pod_sc()),
        &sandbox_config(Default::default(), &[]),
        root.path(),
    )
    .unwrap();
    assert!(!namespaces(&spec).iter().any(|n| n.starts_with("user")));
    assert!(spec.linux().as_ref().unwrap().uid_mappings().is_none());

    // A pause user outside a short range; host network with a userns.
    let mut short = userns(3_000_000);
    short.userns_options.as_mut().unwrap().uids[0].length = 1000;
    let sc = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(short),
        ..Default::default()
    };
    let err = build_sandbox(
        &sandbox_config(sc, &[]),
        &pod_ctx(),
        vec!["/pause".into()],
        &host,
    )
    .unwrap_err();
    assert_eq!(
        err.field(),
        Some("config.linux.security_context.namespace_options.userns_options.uids[0].length")
    );
    let mut host_net = userns(3_000_000);
    host_net.network = cri::NamespaceMode::Node as i32;
    let sc = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(host_net),
        ..Default::default()
    };
    let err = build_sandbox(
        &sandbox_config(sc, &[]),
        &pod_ctx(),
        vec!["/pause".into()],
        &host,
    )
    .unwrap_err();
    assert_eq!(
        err.field(),
        Some("config.linux.security_context.namespace_options.network")
    );
}
