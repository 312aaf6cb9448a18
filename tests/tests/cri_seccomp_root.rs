//! A native pod's seccomp profile covers ExecSync processes too: libcontainer
//! 0.7 leaves `linux.seccomp` out of exec processes, and the shim's executor
//! loads the container's filter for them. AppArmor `Localhost` profiles are
//! refused on a node without AppArmor rather than silently not applied.

use caisson_tests::daemon::{container_config, rejection, Caissond};
use k8s_cri::v1 as cri;

fn seccomp_mode(status: &str) -> String {
    status_field(status, "Seccomp:")
}

/// `/proc/<pid>/status`'s value of `field` (`Seccomp:`, `NoNewPrivs:`…).
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

/// What the container's init wrote to `/tmp/unshare`: the exit status of
/// its `unshare -n true` (waited for, at most 10 s).
fn unshare_status(d: &Caissond, c: &str, name: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = d.try_exec(c, &["cat", "/tmp/unshare"], 10).unwrap();
        if out.exit_code == 0 {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: no /tmp/unshare"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A container's Linux config asking for RuntimeDefault (and no_new_privs).
fn runtime_default(no_new_privs: bool) -> cri::LinuxContainerConfig {
    cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            no_new_privs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn runtime_default_seccomp_applies_to_the_container_and_its_execs() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("seccomp");
    let pod = d.run_pod(&config);
    let mut filtered = container_config("filtered", &["sleep", "1000"]);
    filtered.linux = Some(runtime_default(false));
    let c = d.create_started_container(&pod, &config, filtered);
    let init = std::fs::read_to_string(format!("/proc/{}/status", d.container_pid(&c))).unwrap();
    assert_eq!(
        seccomp_mode(&init),
        "2",
        "the container's init runs filtered"
    );
    let exec = d.exec(&c, &["cat", "/proc/self/status"]);
    assert_eq!(
        seccomp_mode(&exec),
        "2",
        "an ExecSync process must run under the same filter"
    );
    // The RuntimeDefault profile denies unshare without CAP_SYS_ADMIN.
    let denied = d.try_exec(&c, &["unshare", "-n", "true"], 10).unwrap();
    assert_ne!(denied.exit_code, 0, "unshare must be denied in an exec too");

    let unfiltered =
        d.create_started_container(&pod, &config, container_config("plain", &["sleep", "1000"]));
    let exec = d.exec(&unfiltered, &["cat", "/proc/self/status"]);
    assert_eq!(seccomp_mode(&exec), "0", "no profile asked: none applied");
}

/// With no_new_privs the filter is loaded by the shim's executor from a
/// program the fork server compiled (once per node: it is kept as a file),
/// not by libcontainer: the init still runs under exactly one filter that
/// denies what RuntimeDefault denies, and so do its execs.
#[test]
fn runtime_default_with_no_new_privs_filters_the_init_once_and_its_execs() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("seccomp-nnp");
    let pod = d.run_pod(&config);
    let config_for = |name: &str| {
        let mut c = container_config(
            name,
            &[
                "sh",
                "-c",
                "unshare -n true; echo $? > /tmp/unshare; exec sleep 1000",
            ],
        );
        c.linux = Some(runtime_default(true));
        c
    };
    // Two containers: the second one's program is found compiled.
    for name in ["nnp-1", "nnp-2"] {
        let c = d.create_started_container(&pod, &config, config_for(name));
        let init =
            std::fs::read_to_string(format!("/proc/{}/status", d.container_pid(&c))).unwrap();
        assert_eq!(seccomp_mode(&init), "2", "{name}: the init runs filtered");
        assert_eq!(
            status_field(&init, "Seccomp_filters:"),
            "1",
            "{name}: one filter"
        );
        assert_eq!(status_field(&init, "NoNewPrivs:"), "1", "{name}");
        let rc = unshare_status(&d, &c, name);
        assert_ne!(rc, "0", "{name}: unshare must be denied in the init");
        let exec = d.exec(&c, &["cat", "/proc/self/status"]);
        assert_eq!(seccomp_mode(&exec), "2", "{name}: an exec runs filtered");
        assert_eq!(status_field(&exec, "Seccomp_filters:"), "1", "{name}");
        let denied = d.try_exec(&c, &["unshare", "-n", "true"], 10).unwrap();
        assert_ne!(
            denied.exit_code, 0,
            "{name}: unshare must be denied in an exec"
        );
    }
    // The fork server kept the compiled program for the node's next shims.
    let programs = d.dir.path().join("run/shim/state/.seccomp-bpf");
    let kept = std::fs::read_dir(&programs)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".bpf"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(kept, 1, "one program kept in {}", programs.display());
}

fn apparmor(profile_type: cri::security_profile::ProfileType, name: &str) -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: name.into(),
    }
}

fn with_apparmor(
    name: &str,
    profile: Option<cri::SecurityProfile>,
    legacy: &str,
) -> cri::ContainerConfig {
    let mut c = container_config(name, &["sleep", "1000"]);
    #[allow(deprecated)] // the CRI still sends the old string form
    let sc = cri::LinuxContainerSecurityContext {
        apparmor: profile,
        apparmor_profile: legacy.into(),
        ..Default::default()
    };
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    c
}

#[test]
fn apparmor_localhost_profiles_are_refused_without_apparmor() {
    use cri::security_profile::ProfileType::{Localhost, RuntimeDefault, Unconfined};
    let enabled =
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").unwrap_or_default();
    assert_ne!(
        enabled.trim(),
        "Y",
        "this test needs a node without AppArmor (/sys/module/apparmor/parameters/enabled is Y)"
    );
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("apparmor");
    let pod = d.run_pod(&config);
    // RuntimeDefault and Unconfined ask for nothing this node lacks.
    for (name, profile, legacy) in [
        ("default", Some(apparmor(RuntimeDefault, "")), ""),
        ("unconfined", Some(apparmor(Unconfined, "")), ""),
        ("legacy-default", None, "runtime/default"),
    ] {
        let c = d.create_started_container(&pod, &config, with_apparmor(name, profile, legacy));
        assert_eq!(d.exec(&c, &["echo", "ok"]), "ok\n", "{name}");
    }
    // (The first container made the pod's containers dir: that stays.)
    let baseline = d.footprint();

    let create = |c: cri::ContainerConfig| -> caisson_tests::daemon::Call {
        let (pod, sandbox) = (pod.clone(), config.clone());
        Box::new(move |d, rt| {
            d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c.clone()),
                sandbox_config: Some(sandbox.clone()),
            }))
            .map(drop)
        })
    };
    let mut pod_with_profile = d.pod_config("confined");
    pod_with_profile.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            apparmor: Some(apparmor(Localhost, "k8s-confined")),
            ..Default::default()
        }),
        ..Default::default()
    });
    d.check_rejections(
        vec![
            rejection(
                "Localhost profile",
                tonic::Code::InvalidArgument,
                "linux.security_context.apparmor: AppArmor profile \"k8s-confined\" asked for, but AppArmor is not enabled on this node",
                create(with_apparmor("local", Some(apparmor(Localhost, "k8s-confined")), "")),
            ),
            rejection(
                "legacy localhost/ string",
                tonic::Code::InvalidArgument,
                "linux.security_context.apparmor_profile",
                create(with_apparmor("legacy", None, "localhost/k8s-confined")),
            ),
            rejection(
                "pod Localhost profile",
                tonic::Code::InvalidArgument,
                "linux.security_context.apparmor",
                Box::new(move |d, rt| {
                    d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(pod_with_profile.clone()),
                        runtime_handler: String::new(),
                    }))
                    .map(drop)
                }),
            ),
        ],
        &baseline,
    );
    let mut rt = d.runtime();
    let listed = d.ok(
        "ListContainers",
        d.rt.block_on(rt.list_containers(cri::ListContainersRequest { filter: None })),
    );
    assert_eq!(listed.containers.len(), 3, "{:?}", listed.containers);
}

/// Without no_new_privs (CRI's default, kubelet's for a container without
/// `allowPrivilegeEscalation: false`) the filter is loaded by the shim's
/// executor too, from the fork server's compiled program, instead of being
/// compiled by libseccomp in every init: the init reaches the executor with
/// CAP_SYS_ADMIN and CAP_SETPCAP added, loads the filter and drops to its
/// own capabilities before it reports ready. It ends with exactly the
/// capabilities of the same container without a profile (as root with the
/// default set, with every capability dropped, as a non-root user), under
/// one filter, without no_new_privs, denied what RuntimeDefault denies;
/// and so do its execs (caissond reads their process from the bundle's
/// spec, written back with the container's own capabilities once the init
/// is built, and the shim caps them at the container's).
#[test]
fn runtime_default_without_no_new_privs_ends_with_the_containers_own_capabilities() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("seccomp-caps");
    let pod = d.run_pod(&config);
    let caps_of = |status: &str| -> Vec<String> {
        ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
            .iter()
            .map(|f| format!("{f} {}", status_field(status, f)))
            .collect()
    };
    let cases: [(&str, bool, Option<i64>); 3] = [
        ("root", false, None),
        ("no-caps", true, None),
        ("user", false, Some(1000)),
    ];
    for (name, drop_all, user) in cases {
        let config_for = |suffix: &str, profile: bool| {
            let mut c = container_config(
                &format!("{name}-{suffix}"),
                &[
                    "sh",
                    "-c",
                    "unshare -n true; echo $? > /tmp/unshare; exec sleep 1000",
                ],
            );
            let mut linux = if profile {
                runtime_default(false)
            } else {
                cri::LinuxContainerConfig::default()
            };
            let sc = linux.security_context.get_or_insert_with(Default::default);
            if drop_all {
                sc.capabilities = Some(cri::Capability {
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                });
            }
            sc.run_as_user = user.map(|value| cri::Int64Value { value });
            c.linux = Some(linux);
            c
        };
        let plain = d.create_started_container(&pod, &config, config_for("plain", false));
        let filtered = d.create_started_container(&pod, &config, config_for("filtered", true));
        let status = |c: &str| {
            std::fs::read_to_string(format!("/proc/{}/status", d.container_pid(c))).unwrap()
        };
        let (plain_status, init) = (status(&plain), status(&filtered));
        assert_eq!(
            seccomp_mode(&plain_status),
            "0",
            "{name}: no profile, no filter"
        );
        assert_eq!(seccomp_mode(&init), "2", "{name}: the init runs filtered");
        assert_eq!(status_field(&init, "Seccomp_filters:"), "1", "{name}");
        assert_eq!(status_field(&init, "NoNewPrivs:"), "0", "{name}");
        assert_eq!(
            caps_of(&init),
            caps_of(&plain_status),
            "{name}: the filtered init's capabilities are the container's own"
        );
        let rc = unshare_status(&d, &filtered, name);
        assert_ne!(rc, "0", "{name}: unshare must be denied in the init");
        let exec = d.exec(&filtered, &["cat", "/proc/self/status"]);
        assert_eq!(seccomp_mode(&exec), "2", "{name}: an exec runs filtered");
        assert_eq!(
            caps_of(&exec),
            caps_of(&d.exec(&plain, &["cat", "/proc/self/status"])),
            "{name}: an exec gets the container's own capabilities, not its build's"
        );
        let denied = d
            .try_exec(&filtered, &["unshare", "-n", "true"], 10)
            .unwrap();
        assert_ne!(
            denied.exit_code, 0,
            "{name}: unshare must be denied in an exec"
        );
    }
}
