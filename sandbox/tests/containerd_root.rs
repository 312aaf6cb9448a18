//! Debian's containerd drives Caisson's shim as a user would: `ctr run
//! --runtime io.containerd.caisson.v2`. The test starts its own containerd
//! with a temp root, state, sockets and config (the CRI plugin disabled; `ctr`
//! does not need it), with the shim's build directory first on containerd's
//! `PATH`, imports the busybox fixture, and runs containers through `ctr`. It
//! then checks that nothing is left: no shim process, no mount under the temp
//! dir, no container cgroup. Needs root and Debian's `containerd` package.
//!
//! `CAISSON_CTR_RUNTIME=io.containerd.runc.v2` runs the same scenarios on
//! Debian's runc (package `runc`), which checks the harness itself.
//!
//! A second test picks the hardened backend the way an operator does under
//! containerd: runtime type `io.containerd.caisson-hardened.v2`, whose shim
//! `containerd-shim-caisson-hardened-v2` is a symlink to ours.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use caisson_tests::bundle::unique;
use caisson_tests::fixtures::{busybox_image, OciArchive, BUSYBOX_NAME};
use caisson_tests::require;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-caisson-v2");
const RUNTIME: &str = "io.containerd.caisson.v2";
const RUN_DIR_ENV: &str = "CAISSON_SHIM_RUN_DIR";
/// Longest any single `ctr` call may take.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);
const CGROUP_CONTROLLERS: &[&str] = &[
    "memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "devices", "freezer", "systemd",
    "unified",
];

#[test]
fn ctr_runs_containers_on_caisson() {
    let runtime = std::env::var("CAISSON_CTR_RUNTIME").unwrap_or_else(|_| RUNTIME.to_string());
    let mut cd = Containerd::start(&runtime);
    cd.import_busybox();
    cd.run_echo();
    cd.run_exit_code();
    cd.run_detached_exec_kill();
    cd.finish();
}

#[test]
fn ctr_runs_a_hardened_container_through_the_named_shim() {
    let mut cd = Containerd::start("io.containerd.caisson-hardened.v2");
    cd.import_busybox();
    let id = cd.new_id("hardened");
    let script =
        "cat /proc/self/uid_map; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status";
    let out = cd.run(&["--rm"], &id, &["sh", "-c", script]);
    if !out.status.success() {
        cd.fail(&format!("expected exit 0: {out}"));
    }
    // Root inside is an unprivileged host range (not the identity map),
    // the allow-list is loaded, no_new_privs is set, no capability is left.
    let map: Vec<u64> = out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let checks = [
        map.len() == 3 && map[0] == 0 && map[1] >= 600_000_000 && map[2] == 65_536,
        out.stdout.contains("Seccomp:\t2"),
        out.stdout.contains("NoNewPrivs:\t1"),
        out.stdout.contains("CapEff:\t0000000000000000"),
    ];
    if checks.contains(&false) {
        cd.fail(&format!("not a hardened container ({checks:?}): {out}"));
    }
    cd.expect_container_gone(&id);
    cd.finish();
}

/// containerd's default seccomp profile (`ctr run --seccomp`) without
/// no_new_privs (`--allow-new-privs`) on the native shim: the init's filter is the program the
/// fork server compiled, loaded by the executor while the init still holds
/// the `CAP_SYS_ADMIN` the shim lent it, and the container ends with the
/// capabilities containerd's spec gives (those of the same container
/// without the profile), no_new_privs unset.
#[test]
fn ctr_runs_a_container_with_containerds_seccomp_profile_and_its_own_capabilities() {
    let runtime = std::env::var("CAISSON_CTR_RUNTIME").unwrap_or_else(|_| RUNTIME.to_string());
    let mut cd = Containerd::start(&runtime);
    cd.import_busybox();
    let script = "grep -E '^(Seccomp|NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status";
    let mut seen = vec![];
    // ctr's spec asks for no_new_privs unless told otherwise.
    for flags in [
        &["--rm", "--allow-new-privs", "--seccomp"][..],
        &["--rm", "--allow-new-privs"][..],
    ] {
        let id = cd.new_id("seccomp");
        let out = cd.run(flags, &id, &["sh", "-c", script]);
        if !out.status.success() {
            cd.fail(&format!("expected exit 0: {out}"));
        }
        cd.expect_container_gone(&id);
        seen.push(out.stdout);
    }
    let caps = |status: &str| -> Vec<String> {
        status
            .lines()
            .filter(|l| l.starts_with("Cap"))
            .map(String::from)
            .collect()
    };
    let (filtered, plain) = (&seen[0], &seen[1]);
    let checks = [
        filtered.contains("Seccomp:\t2"),
        filtered.contains("NoNewPrivs:\t0"),
        plain.contains("Seccomp:\t0"),
        caps(filtered).len() == 5 && caps(filtered) == caps(plain),
    ];
    if checks.contains(&false) {
        cd.fail(&format!(
            "filtered ({checks:?}):\n{filtered}\nwithout the profile:\n{plain}"
        ));
    }
    cd.finish();
}

/// Output of one `ctr` call.
struct Out {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}`: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// A containerd of our own, torn down on drop (also when a check panics).
struct Containerd {
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    socket: PathBuf,
    shim_run_dir: PathBuf,
    fifo_dir: PathBuf,
    log: PathBuf,
    ctr: PathBuf,
    runtime: String,
    child: Option<Child>,
    /// containerd namespace, one per test: `ctr` puts containers in cgroup
    /// `/<namespace>/<id>`, and a parent cgroup shared between the tests
    /// would let one's cleanup rmdir it while the other makes a container.
    ns: String,
    /// Every container id used, for cleanup and the cgroup check.
    ids: Vec<String>,
    finished: bool,
}

impl Containerd {
    fn start(runtime: &str) -> Containerd {
        require::root("containerd and the shim make mounts, namespaces and cgroups");
        let containerd = require::program("containerd", "containerd");
        let ctr = require::program("ctr", "containerd");
        if runtime == "io.containerd.runc.v2" {
            require::program("runc", "runc");
        }
        let tmp = tempfile::Builder::new()
            .prefix("caisson-ctrd-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let socket = dir.join("containerd.sock");
        let shim_run_dir = dir.join("shim");
        let fifo_dir = dir.join("fifo");
        let log = dir.join("containerd.log");
        for d in [&shim_run_dir, &fifo_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(&dir, &socket)).unwrap();

        let shim_dir = Path::new(SHIM)
            .parent()
            .expect("shim binary has a directory");
        // The hardened backend's shim, named as containerd looks it up.
        // The temp dir must be searchable by the pods' mapped root: 0711
        // (traverse, not list), never more.
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(SHIM, bin.join("containerd-shim-caisson-hardened-v2")).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .unwrap();
        let path = format!(
            "{}:{}:{}",
            bin.display(),
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&containerd);
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env(RUN_DIR_ENV, &shim_run_dir)
            // The hardened shims' uids: clear of the default range a real
            // pool on this host may hold (overlapping pools are refused).
            .env(
                "CAISSON_BACKEND_OPTIONS",
                r#"{"userns_first_id": 600000000, "userns_pods": 64}"#,
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe. containerd dies with this test
        // thread if the test process is killed before teardown.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", containerd.display()));
        let mut cd = Containerd {
            tmp: Some(tmp),
            dir,
            socket,
            shim_run_dir,
            fifo_dir,
            log,
            ctr,
            runtime: runtime.to_string(),
            child: Some(child),
            ns: unique("caisson"),
            ids: Vec::new(),
            finished: false,
        };
        cd.wait_ready();
        cd
    }

    /// Polls the socket, then `ctr version`, until containerd answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.fail(&format!("containerd exited during startup: {status}"));
            }
            if self.socket.exists() {
                let out = self.ctr_with_timeout(&["version"], Duration::from_secs(5));
                if out.status.success() && out.stdout.contains("Server:") {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.fail("containerd did not answer `ctr version` within 30s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctr(&self, args: &[&str]) -> Out {
        self.ctr_with_timeout(args, CTR_TIMEOUT)
    }

    /// `ctr -a <socket> -n <namespace> <args>`, killed after `timeout`.
    fn ctr_with_timeout(&self, args: &[&str], timeout: Duration) -> Out {
        let what = format!("ctr {}", args.join(" "));
        let mut child = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().unwrap();
                let out = Out {
                    what: what.clone(),
                    status,
                    stdout: stdout.join().unwrap(),
                    stderr: stderr.join().unwrap(),
                };
                if self.finished {
                    return out;
                }
                self.fail(&format!("timed out after {timeout:?}: {out}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Out {
            what,
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }

    /// Runs `ctr`, failing unless it exits 0.
    fn ctr_ok(&self, args: &[&str]) -> Out {
        let out = self.ctr(args);
        if !out.status.success() {
            self.fail(&format!("failed: {out}"));
        }
        out
    }

    fn new_id(&mut self, prefix: &str) -> String {
        let id = unique(prefix);
        self.ids.push(id.clone());
        id
    }

    fn import_busybox(&self) {
        let archive = self.dir.join("busybox.tar");
        let mut a = OciArchive::new();
        a.add_image(&busybox_image());
        a.write(&archive, false);
        self.ctr_ok(&["images", "import", &archive.display().to_string()]);
        let out = self.ctr_ok(&["images", "ls", "-q"]);
        if !out.stdout.lines().any(|l| l.trim() == BUSYBOX_NAME) {
            self.fail(&format!("{BUSYBOX_NAME} not listed after import: {out}"));
        }
    }

    /// `ctr run ... <id> <argv>` with our runtime and FIFO dir.
    fn run(&self, flags: &[&str], id: &str, argv: &[&str]) -> Out {
        let fifo_dir = self.fifo_dir.display().to_string();
        let mut args = vec!["run", "--runtime", &self.runtime, "--fifo-dir", &fifo_dir];
        args.extend_from_slice(flags);
        args.push(BUSYBOX_NAME);
        args.push(id);
        args.extend_from_slice(argv);
        self.ctr(&args)
    }

    fn run_echo(&mut self) {
        let id = self.new_id("echo");
        let out = self.run(&["--rm"], &id, &["echo", "hi"]);
        if !out.status.success() || out.stdout != "hi\n" {
            self.fail(&format!("expected exit 0 and stdout \"hi\\n\": {out}"));
        }
        self.expect_container_gone(&id);
    }

    fn run_exit_code(&mut self) {
        let id = self.new_id("exit7");
        let out = self.run(&["--rm"], &id, &["sh", "-c", "exit 7"]);
        if out.status.code() != Some(7) {
            self.fail(&format!("expected exit status 7: {out}"));
        }
        self.expect_container_gone(&id);
    }

    fn run_detached_exec_kill(&mut self) {
        let id = self.new_id("sleeper");
        // PID 1 of a PID namespace ignores signals it has no handler for, so
        // a bare `sleep` would shrug off SIGTERM (under runc too): trap it.
        let script = "trap 'exit 0' TERM; sleep 1000 & wait";
        let out = self.run(&["-d"], &id, &["sh", "-c", script]);
        if !out.status.success() {
            self.fail(&format!("failed: {out}"));
        }
        let out = self.ctr_ok(&["containers", "ls", "-q"]);
        if !out.stdout.lines().any(|l| l.trim() == id) {
            self.fail(&format!("`ctr run -d` did not leave container {id}: {out}"));
        }
        self.expect_task_status(&id, "RUNNING");

        let fifo_dir = self.fifo_dir.display().to_string();
        let exec = |exec_id: &str, script: &str| {
            let args = [
                "task",
                "exec",
                "--fifo-dir",
                &fifo_dir,
                "--exec-id",
                exec_id,
            ];
            self.ctr(&[&args[..], &[id.as_str(), "sh", "-c", script]].concat())
        };
        let out = exec("e1", "echo from-exec");
        if !out.status.success() || out.stdout != "from-exec\n" {
            self.fail(&format!(
                "expected exit 0 and stdout \"from-exec\\n\": {out}"
            ));
        }
        let out = exec("e2", "exit 3");
        if out.status.code() != Some(3) {
            self.fail(&format!("expected the exec's exit status 3: {out}"));
        }
        self.expect_task_status(&id, "RUNNING");

        self.ctr_ok(&["task", "kill", "--signal", "SIGTERM", &id]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.task_status(&id) {
                Some(s) if s == "STOPPED" => break,
                status if Instant::now() > deadline => self.fail(&format!(
                    "task {id} not STOPPED 20s after SIGTERM (status {status:?})"
                )),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.ctr_ok(&["task", "rm", &id]);
        if let Some(status) = self.task_status(&id) {
            self.fail(&format!(
                "task {id} still listed after `ctr task rm`: {status}"
            ));
        }
        self.ctr_ok(&["containers", "rm", &id]);
        self.expect_container_gone(&id);
    }

    /// Status column of `ctr task ls` for `id`, if listed.
    fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.stdout.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.last().unwrap_or(&"").to_string())
        })
    }

    fn expect_task_status(&self, id: &str, want: &str) {
        let status = self.task_status(id);
        if status.as_deref() != Some(want) {
            let out = self.ctr(&["task", "ls"]);
            self.fail(&format!(
                "task {id}: expected {want}, got {status:?}: {out}"
            ));
        }
    }

    fn expect_container_gone(&self, id: &str) {
        let out = self.ctr_ok(&["containers", "ls", "-q"]);
        if out.stdout.lines().any(|l| l.trim() == id) {
            self.fail(&format!("container {id} still listed: {out}"));
        }
        if let Some(status) = self.task_status(id) {
            self.fail(&format!("task {id} still listed: {status}"));
        }
    }

    /// Checks that everything went away, then tears down; panics listing
    /// what was left.
    fn finish(mut self) {
        let out = self.ctr_ok(&["containers", "ls", "-q"]);
        if !out.stdout.trim().is_empty() {
            self.fail(&format!("containers left: {out}"));
        }
        // The shim exits once containerd has deleted its last task.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut shims = self.shim_pids();
        while !shims.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            shims = self.shim_pids();
        }
        let diagnostics = self.diagnostics();
        let mut problems = Vec::new();
        if !shims.is_empty() {
            problems.push(format!(
                "shim processes still running 10s after cleanup: {shims:?}"
            ));
        }
        let sockets: Vec<PathBuf> = std::fs::read_dir(self.shim_run_dir.join("s"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if sockets
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "sock"))
        {
            problems.push(format!("shim sockets left: {sockets:?}"));
        }
        self.finished = true;
        problems.extend(self.teardown());
        assert!(
            problems.is_empty(),
            "left behind:\n  {}\n{diagnostics}",
            problems.join("\n  ")
        );
    }

    /// Stops containerd, kills leftover shims, unmounts and removes what is
    /// under the temp dir and removes container cgroups. Returns what it had
    /// to clean up that should already have been gone.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        problems.push("containerd ignored SIGTERM for 10s; killed".to_string());
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        let shims = self.shim_pids();
        if !shims.is_empty() {
            problems.push(format!("killed shim processes {shims:?}"));
            for pid in &shims {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        let mounts = mounts_under(&self.dir);
        if !mounts.is_empty() {
            problems.push(format!("unmounted {mounts:?}"));
            for _ in 0..10 {
                let mounts = mounts_under(&self.dir);
                if mounts.is_empty() {
                    break;
                }
                for m in mounts.iter().rev() {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        for id in &self.ids {
            let cgroup = format!("{}/{id}", self.ns);
            let left: Vec<&str> = CGROUP_CONTROLLERS
                .iter()
                .copied()
                .filter(|c| Path::new("/sys/fs/cgroup").join(c).join(&cgroup).exists())
                .collect();
            if !left.is_empty() {
                problems.push(format!("cgroup /{cgroup} left in {left:?}"));
                for c in &left {
                    remove_cgroup(&Path::new("/sys/fs/cgroup").join(c).join(&cgroup));
                }
            }
        }
        // The namespace's parent cgroup, made along with the first container.
        for c in CGROUP_CONTROLLERS {
            let parent = Path::new("/sys/fs/cgroup").join(c).join(&self.ns);
            if let Err(e) = std::fs::remove_dir(&parent) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("removing {}: {e}", parent.display()));
                }
            }
        }
        if let Some(tmp) = self.tmp.take() {
            if let Err(e) = tmp.close() {
                problems.push(format!("removing {}: {e}", self.dir.display()));
            }
        }
        problems
    }

    /// Shim processes this containerd started: they inherit our
    /// `CAISSON_SHIM_RUN_DIR`.
    fn shim_pids(&self) -> Vec<i32> {
        let marker = format!("{RUN_DIR_ENV}={}", self.shim_run_dir.display());
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
                continue;
            };
            let name = exe
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.starts_with("containerd-shim") {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Tails of containerd's log and of the shim's logs.
    fn diagnostics(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "runtime {}, temp dir {}",
            self.runtime,
            self.dir.display()
        );
        let _ = writeln!(s, "--- containerd log (tail) ---\n{}", tail(&self.log, 60));
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.shim_run_dir.join("log"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let _ = writeln!(
                s,
                "--- shim log {} (tail) ---\n{}",
                log.display(),
                tail(&log, 40)
            );
        }
        s
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.diagnostics());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_none() && self.tmp.is_none() {
            return;
        }
        self.finished = true;
        if self.child.is_some() {
            for id in self.ids.clone().iter().rev() {
                let short = Duration::from_secs(10);
                let _ = self.ctr_with_timeout(&["task", "kill", "--signal", "SIGKILL", id], short);
                let _ = self.ctr_with_timeout(&["task", "rm", "--force", id], short);
                let _ = self.ctr_with_timeout(&["containers", "rm", id], short);
            }
        }
        for problem in self.teardown() {
            eprintln!("containerd_root teardown: {problem}");
        }
    }
}

/// Kills what is still in a leftover cgroup, then removes it.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// containerd's config: everything under `dir`, no CRI plugin.
fn config_toml(dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    let sock = socket.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}

/// Reads a pipe to the end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
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

/// Mount points at or under `dir` in /proc/self/mountinfo, in mount order.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    caisson_sandbox::host::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}
