//! The hardened backend against the real kernel: needs root. Busybox
//! bundles in temp dirs (as in native_backend_root.rs); each test asserts what
//! the kernel shows: /proc/self/status (Seccomp, NoNewPrivs, CapEff) and the
//! errors denied syscalls return inside the container.

use std::fs;

use caisson_sandbox::backend::hardened::policy::ADDED_CAPABILITIES_ANNOTATION;
use caisson_sandbox::backend::hardened::HardenedBackend;
use caisson_sandbox::backend::{Backend, BackendError, ExecSpec, Stdio, TaskKind};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
    Spec,
};

mod support;

use support::{cgroup_of, file_uri, process, unique};

// ---------------------------------------------------------------- harness

type Harness = support::Harness<HardenedBackend>;

impl Harness {
    fn new() -> Harness {
        Harness::start(
            "the hardened backend makes namespaces, cgroups, mounts and seccomp filters",
            |state, sink| {
                HardenedBackend::new(
                    state,
                    sink,
                    env!("CARGO_BIN_EXE_containerd-shim-caisson-v2").into(),
                )
                .expect("starting the backend")
            },
        )
    }

    /// Deletes an exited task and checks nothing of it is left.
    fn delete_and_check(&self, id: &str, pid: u32, cgroup: &str) {
        let state = self.backend.native().state_root().join(id);
        self.delete_and_check_state(id, pid, cgroup, Some(&state));
    }
}

/// Runs `script` in a hardened busybox container (after `adjust`), returns
/// its exit status and combined output.
fn run_script(
    h: &Harness,
    name: &str,
    script: &str,
    adjust: impl FnOnce(&mut Spec),
) -> (u32, String) {
    let bundle = h.bundle(name, &["sh", "-c", script], adjust);
    let out = h.path(&format!("{name}.out"));
    let id = unique(name);
    let stdio = Stdio {
        stdout: file_uri(&out),
        stderr: file_uri(&out),
        ..Stdio::default()
    };
    let pid = h.run(&id, &bundle, stdio);
    let exit = h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    (exit.status, fs::read_to_string(&out).unwrap_or_default())
}

const PROBE: &str = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
    ls / >/dev/null && echo ls-ok; sleep 0.1 && echo sleep-ok; \
    ip link show lo >/dev/null && echo netlink-ok; \
    unshare -m true 2>&1; mount -t tmpfs none /tmp 2>&1; echo done";

#[test]
fn denied_syscalls_fail_with_eperm_and_ordinary_tools_work() {
    let h = Harness::new();
    let (status, out) = run_script(&h, "probe", PROBE, |_| {});
    assert_eq!(status, 0, "{out}");
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "ls-ok",
        "sleep-ok",
        "netlink-ok",
        "done",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    // unshare and mount are denied by the filter with EPERM, not a crash
    // (busybox words mount's EPERM as "permission denied").
    assert!(
        out.contains("unshare(0x20000): Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("mount: permission denied"), "{out}");
}

#[test]
fn exec_processes_are_filtered_too() {
    let h = Harness::new();
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());
    let out = h.path("exec.out");
    let mut p = process(&["sh", "-c", PROBE]);
    // The exec asks for everything; the policy leaves nothing.
    let all: std::collections::HashSet<Capability> = [
        Capability::SysAdmin,
        Capability::NetAdmin,
        Capability::Chown,
    ]
    .into();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(all.clone()));
    caps.set_effective(Some(all.clone()));
    caps.set_permitted(Some(all));
    p.set_capabilities(Some(caps));
    let exec = ExecSpec {
        container_id: id.clone(),
        exec_id: "e1".into(),
        process: p,
        stdio: Stdio {
            stdout: file_uri(&out),
            stderr: file_uri(&out),
            ..Stdio::default()
        },
    };
    h.backend.exec(&exec).unwrap();
    h.backend.start_exec(&id, "e1").unwrap();
    let exit = h.wait_exit(&id, Some("e1"));
    let out = fs::read_to_string(&out).unwrap();
    assert_eq!(exit.status, 0, "{out}");
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "ls-ok",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    h.backend.delete(&id, Some("e1")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn an_added_permitted_capability_is_kept() {
    let h = Harness::new();
    let (status, out) = run_script(&h, "netbind", "grep CapEff /proc/self/status", |spec| {
        spec.set_annotations(Some(
            [(
                ADDED_CAPABILITIES_ANNOTATION.to_string(),
                "NET_BIND_SERVICE,SYS_ADMIN".to_string(),
            )]
            .into(),
        ));
        let mut process = spec.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        let mut set = caps.bounding().clone().unwrap_or_default();
        set.insert(Capability::NetBindService);
        set.insert(Capability::SysAdmin);
        caps.set_bounding(Some(set.clone()));
        caps.set_effective(Some(set.clone()));
        caps.set_permitted(Some(set));
        process.set_capabilities(Some(caps));
        spec.set_process(Some(process));
    });
    assert_eq!(status, 0, "{out}");
    // NET_BIND_SERVICE (bit 10) only: SYS_ADMIN is not permitted.
    assert!(out.contains("CapEff:\t0000000000000400"), "{out}");
}

#[test]
fn a_pod_profile_narrows_the_policy() {
    let h = Harness::new();
    let (status, out) = run_script(
        &h,
        "narrow",
        "mkdir /tmp/x 2>&1 || echo mkdir-denied; ls / >/dev/null && echo ls-ok",
        |spec| {
            let deny_mkdir = LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .build()
                .unwrap();
            let profile = LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .syscalls(vec![deny_mkdir])
                .build()
                .unwrap();
            let mut linux = spec.linux().clone().unwrap();
            linux.set_seccomp(Some(profile));
            spec.set_linux(Some(linux));
        },
    );
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("mkdir-denied") && out.contains("Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("ls-ok"), "{out}");
}

#[test]
fn privileged_containers_are_refused() {
    let h = Harness::new();
    let bundle = h.bundle("privileged", &["true"], |spec| {
        let mut process = spec.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        caps.set_bounding(Some([Capability::SysAdmin].into()));
        process.set_capabilities(Some(caps));
        spec.set_process(Some(process));
        let mut linux = spec.linux().clone().unwrap();
        linux.set_masked_paths(None);
        spec.set_linux(Some(linux));
    });
    let err = h
        .try_create(
            &unique("privileged"),
            &bundle,
            TaskKind::Sandbox,
            Stdio::default(),
        )
        .unwrap_err();
    match err {
        BackendError::InvalidArgument { what, .. } => assert_eq!(what, "privileged"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn landlock_keeps_the_process_beneath_its_root() {
    let h = Harness::new();
    // stdout is a host file outside the rootfs: writing to the open fd works,
    // reopening it by path (/proc/self/fd/1) is outside the Landlock domain.
    let (status, out) = run_script(
        &h,
        "landlock",
        "echo via-fd; (echo via-path >> /proc/self/fd/1) 2>/dev/null || echo reopen-denied; \
         echo x > /dev/shm/inside && cat /dev/shm/inside",
        |_| {},
    );
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("via-fd"), "{out}");
    assert!(!out.contains("via-path"), "{out}");
    assert!(out.contains("reopen-denied"), "{out}");
    assert!(out.contains("x\n"), "{out}");
}
