//! Escape attempts and compatibility under the `hardened` runtime handler,
//! side by side with `native`, through a real caissond. Needs root.
//!
//! The probe image is busybox plus `caisson-probe` (built from `probe/`).
//! `caisson-probe escape` tries, one line per attempt: `mount`, `umount2`,
//! `unshare(CLONE_NEWUSER|CLONE_NEWNS)`, `setns`, `ptrace`, `bpf`,
//! `keyctl`, `add_key`, `init_module`, `finit_module`, `kexec_load`,
//! `perf_event_open`, `userfaultfd`, `io_uring_setup`, `open_by_handle_at`,
//! raw and packet sockets, opening `/proc/sysrq-trigger` for writing, and
//! reading a marker file the test puts on the host (outside every rootfs)
//! through `/proc/1/root`, through `..`, and by the chroot-and-`..` trick.
//!
//! The containers get what kubelet sends for a default pod: no
//! `securityContext` in the pod spec, so **seccomp `Unconfined`** (kubelet's
//! `--seccomp-default` is off by default), the runtime's default
//! capabilities (none added or dropped), Kubernetes' default masked and
//! read-only paths, network and IPC shared with the pod, a PID namespace of
//! the container's own, running as the image's user (root).
//!
//! Under `hardened` every attempt must be blocked, both in the container's
//! own process and in an ExecSync. Under `native` the table is what runc
//! would give the same pod: see [`native_expectation`] for which attempts
//! native allows and why. Both tables are printed, so the difference shows
//! in the test output (`--nocapture`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caisson_sandbox::backend::defaults::{KUBERNETES_MASKED_PATHS, KUBERNETES_READONLY_PATHS};
use caisson_tests::daemon::Caissond;
use caisson_tests::fixtures::{probe_binary, probe_image, PROBE_NAME, PROBE_PATH};
use k8s_cri::v1 as cri;

/// A file on the host, outside every container's rootfs, that an escape
/// would read; removed on drop.
struct HostMarker {
    path: PathBuf,
    token: String,
}

impl HostMarker {
    fn new() -> HostMarker {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let token = format!("host-secret-{}-{nanos}", std::process::id());
        let path = PathBuf::from(format!(
            "/var/tmp/caisson-escape-marker-{}",
            std::process::id()
        ));
        std::fs::write(&path, &token).unwrap();
        HostMarker { path, token }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "escape".into(),
            "--marker".into(),
            self.path.display().to_string(),
            "--token".into(),
            self.token.clone(),
        ]
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One line of the probe's table.
#[derive(Debug, Clone)]
struct Row {
    verdict: String,
    detail: String,
}

fn parse_table(out: &str) -> BTreeMap<String, Row> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let name = f.next().unwrap().to_string();
            let verdict = f
                .next()
                .unwrap_or_else(|| panic!("bad probe line {l:?}"))
                .to_string();
            let detail = f.next().unwrap_or("").to_string();
            (name, Row { verdict, detail })
        })
        .collect()
}

/// Every attempt the probe makes, in its order.
const ATTEMPTS: [&str; 21] = [
    "mount",
    "umount2",
    "unshare_user_mount",
    "setns",
    "ptrace",
    "bpf",
    "keyctl",
    "add_key",
    "init_module",
    "finit_module",
    "kexec_load",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "open_by_handle_at",
    "raw_socket",
    "packet_socket",
    "sysrq_trigger",
    "host_file_proc1_root",
    "host_file_dotdot",
    "host_file_chroot_dotdot",
];

fn sysctl(name: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// What `native` gives a default pod (Unconfined seccomp, the default
/// capabilities, root): `true` when the attempt is allowed, with why.
/// Sysctl-dependent rows are read from the host, so the expectation holds
/// on any kernel.
fn native_expectation(attempt: &str) -> (bool, String) {
    let reason = |s: &str| s.to_string();
    match attempt {
        // Capabilities the default set does not hold.
        "mount" | "umount2" | "setns" => (false, reason("no CAP_SYS_ADMIN")),
        "init_module" | "finit_module" => (false, reason("no CAP_SYS_MODULE")),
        "kexec_load" => (false, reason("no CAP_SYS_BOOT")),
        "open_by_handle_at" => (false, reason("no CAP_DAC_READ_SEARCH")),
        // No seccomp: what any unprivileged process may do.
        "unshare_user_mount" => (
            sysctl("user/max_user_namespaces").unwrap_or(1) > 0
                && sysctl("kernel/unprivileged_userns_clone").unwrap_or(1) == 1,
            reason("unprivileged user namespaces (user.max_user_namespaces > 0, Debian's kernel.unprivileged_userns_clone)"),
        ),
        "ptrace" => (true, reason("same uid, its own child")),
        "keyctl" | "add_key" => (
            std::path::Path::new("/proc/keys").exists(),
            reason("the keyring syscalls are unprivileged (where the kernel has keys: /proc/keys)"),
        ),
        "bpf" => (
            sysctl("kernel/unprivileged_bpf_disabled").unwrap_or(0) == 0,
            reason("kernel.unprivileged_bpf_disabled decides"),
        ),
        "perf_event_open" => (
            sysctl("kernel/perf_event_paranoid").unwrap_or(2) <= 2,
            reason("user-space-only self counters at perf_event_paranoid <= 2"),
        ),
        "userfaultfd" => (true, reason("UFFD_USER_MODE_ONLY needs no privilege")),
        "io_uring_setup" => (
            sysctl("kernel/io_uring_disabled").unwrap_or(0) == 0,
            reason("kernel.io_uring_disabled decides"),
        ),
        // CAP_NET_RAW is in the runtimes' default capability set.
        "raw_socket" | "packet_socket" => (true, reason("CAP_NET_RAW is a default capability")),
        // Read-only (Kubernetes' defaults), or absent from the kernel.
        "sysrq_trigger" => (false, reason("read-only path")),
        // The rootfs is the root of the container's mount namespace.
        _ => (
            false,
            reason("the container's root is its own mount namespace's"),
        ),
    }
}

/// A probe-image container as kubelet configures one for a default pod.
fn probe_container(name: &str, args: &[String]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: PROBE_NAME.into(),
            ..Default::default()
        }),
        command: args.to_vec(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                masked_paths: KUBERNETES_MASKED_PATHS.map(String::from).to_vec(),
                readonly_paths: KUBERNETES_READONLY_PATHS.map(String::from).to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn start() -> Caissond {
    let d = Caissond::start("");
    d.import_image(&probe_image(&probe_binary()));
    d
}

/// The stdout records of a CRI log file, joined.
fn log_stdout(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (_, stream, tag, content) = (f.next(), f.next(), f.next(), f.next());
        if stream == Some("stdout") {
            out.push_str(content.unwrap_or(""));
            if tag == Some("F") {
                out.push('\n');
            }
        }
    }
    out
}

/// The probe's escape table twice in one pod of `handler`: from the
/// container's own process (read from its log) and from an ExecSync into a
/// second, sleeping container.
fn escape_tables(
    d: &Caissond,
    handler: &str,
    marker: &HostMarker,
) -> [(String, BTreeMap<String, Row>); 2] {
    let config = d.pod_config(&format!("escape-{handler}"));
    // kubelet makes the pod's log directory before it creates containers.
    std::fs::create_dir_all(&config.log_directory).unwrap();
    let pod = d.run_pod_with_handler(&config, handler);
    let mut init_args = vec![PROBE_PATH.to_string()];
    init_args.extend(marker.args());
    let init = d.create_started_container(&pod, &config, probe_container("escape", &init_args));
    let status = d.wait_exited(&init, Duration::from_secs(60));
    let init_out = log_stdout(&PathBuf::from(&config.log_directory).join("escape.log"));
    assert_eq!(
        status.exit_code, 0,
        "{handler}: `caisson-probe escape` could not make every attempt:\n{init_out}"
    );

    let sleeper = d.create_started_container(
        &pod,
        &config,
        probe_container("sleeper", &["sleep".into(), "3600".into()]),
    );
    let mut exec_args = vec![PROBE_PATH.to_string()];
    exec_args.extend(marker.args());
    let argv: Vec<&str> = exec_args.iter().map(String::as_str).collect();
    let exec_out = d.exec(&sleeper, &argv);
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    [
        (
            format!("{handler}, container process"),
            parse_table(&init_out),
        ),
        (format!("{handler}, ExecSync"), parse_table(&exec_out)),
    ]
}

fn print_table(title: &str, table: &BTreeMap<String, Row>) {
    println!("--- {title} ---");
    for name in ATTEMPTS {
        if let Some(row) = table.get(name) {
            println!("{name:<24} {:<8} {}", row.verdict, row.detail);
        }
    }
}

fn assert_complete(title: &str, table: &BTreeMap<String, Row>) {
    let names: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut want = ATTEMPTS.to_vec();
    want.sort();
    assert_eq!(names, want, "{title}: the probe's table has other rows");
}

#[test]
fn every_escape_attempt_fails_under_hardened_and_native_shows_the_difference() {
    let marker = HostMarker::new();
    let d = start();
    let hardened = escape_tables(&d, "hardened", &marker);
    let native = escape_tables(&d, "runc", &marker);

    let mut failures = Vec::new();
    for (title, table) in &hardened {
        print_table(title, table);
        assert_complete(title, table);
        for (name, row) in table {
            if row.verdict != "blocked" {
                failures.push(format!(
                    "{title}: {name} is {} ({})",
                    row.verdict, row.detail
                ));
            }
        }
    }
    let mut allowed_by_native = Vec::new();
    for (title, table) in &native {
        print_table(title, table);
        assert_complete(title, table);
        for name in ATTEMPTS {
            let row = &table[name];
            let (allowed, why) = native_expectation(name);
            let want = if allowed { "allowed" } else { "blocked" };
            if row.verdict != want {
                failures.push(format!(
                    "{title}: {name} is {} ({}), expected {want} ({why})",
                    row.verdict, row.detail
                ));
            }
            if allowed && !allowed_by_native.contains(&name) {
                allowed_by_native.push(name);
            }
        }
    }
    println!(
        "--- allowed under native, blocked under hardened: {} ---",
        allowed_by_native.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{}\n--- caissond log ---\n{}",
        failures.join("\n"),
        d.log_tail()
    );
    // Native allows some of these on every kernel (ptrace of its own child,
    // raw sockets with the default CAP_NET_RAW): the two handlers differ.
    assert!(allowed_by_native.contains(&"ptrace") && allowed_by_native.contains(&"raw_socket"));
    // Where native reaches the keyring, it is a session keyring of the
    // container's own, never the host's (keyrings are not namespaced).
    let host_session = host_session_keyring();
    for (title, table) in &native {
        let row = &table["keyctl"];
        if row.verdict == "allowed" {
            assert!(
                host_session.is_some_and(|id| !row.detail.contains(&format!(" {id}"))),
                "{title}: the container sees the host's session keyring {host_session:?}: {}",
                row.detail
            );
        }
    }
    d.remove_all_pods();
}

/// Busybox commands, each run with `sh -c` by ExecSync, and what their
/// stdout must contain.
const UTILITIES: &[(&str, &str)] = &[
    ("echo piped | cat", "piped"),
    ("ls /bin/busybox /etc", "/bin/busybox"),
    ("grep '^root:' /etc/passwd", "root:x:0:0"),
    ("echo abc | sed 's/b/X/'", "aXc"),
    ("echo 'one two' | awk '{print $2}'", "two"),
    (
        "mkdir -p /tmp/t/a && echo tarred > /tmp/t/a/f && tar -cf /tmp/t.tar -C /tmp t \
         && mkdir -p /tmp/u && tar -xf /tmp/t.tar -C /tmp/u && cat /tmp/u/t/a/f",
        "tarred",
    ),
    (
        "mkdir -p /tmp/www && echo served > /tmp/www/index.html \
         && (httpd -f -p 127.0.0.1:18080 -h /tmp/www & echo $! > /tmp/httpd.pid) \
         && for i in $(seq 100); do wget -q -O - http://127.0.0.1:18080/index.html && break; sleep 0.05; done; \
         kill $(cat /tmp/httpd.pid)",
        "served",
    ),
    ("ps", "sleep 3600"),
    ("find /etc -name passwd", "/etc/passwd"),
    ("printf 'b\\na\\nc\\n' | sort | tr '\\n' ,", "a,b,c,"),
    (
        "mkdir -p /tmp/x/y/z && rm -r /tmp/x && test ! -e /tmp/x && echo removed",
        "removed",
    ),
    ("date -u +%Y", "20"),
    ("id -u", "0"),
];

fn compatibility(d: &Caissond, handler: &str) -> Vec<String> {
    let config = d.pod_config(&format!("compat-{handler}"));
    std::fs::create_dir_all(&config.log_directory).unwrap();
    let pod = d.run_pod_with_handler(&config, handler);
    let ctr = d.create_started_container(
        &pod,
        &config,
        probe_container("compat", &["sleep".into(), "3600".into()]),
    );
    let mut failures = Vec::new();
    let out = d.try_exec(&ctr, &[PROBE_PATH, "workload"], 60).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("--- {handler}: caisson-probe workload ---\n{text}");
    let checks = text.lines().filter(|l| l.contains("\tok")).count();
    if out.exit_code != 0 || checks != 12 {
        failures.push(format!(
            "{handler}: workload exited {} with {checks}/12 checks ok:\n{text}{}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for (script, want) in UTILITIES {
        let out = d.try_exec(&ctr, &["sh", "-c", script], 30).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.exit_code != 0 || !stdout.contains(want) {
            failures.push(format!(
                "{handler}: `{script}` exited {} with stdout {stdout:?} stderr {:?}, wanted {want:?}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    failures
}

#[test]
fn the_workload_and_busybox_utilities_work_unchanged_under_hardened() {
    let d = start();
    let mut failures = compatibility(&d, "hardened");
    // The same checks under native: they are not passing for some other reason.
    failures.extend(compatibility(&d, "runc"));
    assert!(
        failures.is_empty(),
        "{}\n--- caissond log ---\n{}",
        failures.join("\n"),
        d.log_tail()
    );
    d.remove_all_pods();
}

/// The session keyring id of this test process (the host's), if the kernel
/// has keys.
fn host_session_keyring() -> Option<i64> {
    const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
    const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
    // SAFETY: keyctl with integer arguments only.
    let id = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0,
        )
    };
    (id > 0).then_some(id)
}
