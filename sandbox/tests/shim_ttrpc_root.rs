//! The shim driven over ttrpc exactly as containerd drives it: `start` to get
//! the pod's address, then the Task API for a pause sandbox and containers.
//! Asserts what /proc shows (namespace inodes, processes), exit codes, events,
//! and that nothing is left once the pod is gone. Needs root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caisson_tests::bundle::{unique, Bundle};
use caisson_tests::require;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::{create_events, Events, TaskClient};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-caisson-v2");
const NS: &str = "caisson-test";

/// Collects forwarded events.
#[derive(Default)]
struct Collector {
    events: Mutex<Vec<(String, Any)>>,
}

impl Events for Collector {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: api::ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let env = req.envelope.unwrap_or_default();
        self.events
            .lock()
            .unwrap()
            .push((env.topic.clone(), env.event.unwrap_or_default()));
        Ok(Empty::new())
    }
}

impl Collector {
    fn wait_for(&self, what: &str, pred: impl Fn(&[(String, Any)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if pred(&self.events.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let topics: Vec<String> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        panic!("timed out waiting for {what}; events seen: {topics:?}");
    }
}

/// Everything one test made, torn down even when an assertion fails.
struct Pod {
    tmp: tempfile::TempDir,
    run_dir: PathBuf,
    events_socket: PathBuf,
    tasks: Vec<(String, PathBuf)>,
    cgroups: Vec<String>,
    _server: ttrpc::Server,
    collector: Arc<Collector>,
}

impl Pod {
    fn new() -> Pod {
        require::root("the shim creates namespaces, cgroups and mounts");
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let events_socket = tmp.path().join("events.sock");
        let collector = Arc::new(Collector::default());
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", events_socket.display()))
            .unwrap()
            .register_service(create_events(collector.clone()));
        server.start().unwrap();
        Pod {
            tmp,
            run_dir,
            events_socket,
            tasks: Vec::new(),
            cgroups: Vec::new(),
            _server: server,
            collector,
        }
    }

    fn shim(&self, args: &[&str], cwd: &Path) -> std::process::Output {
        Command::new(SHIM)
            .args(args)
            .current_dir(cwd)
            .env("CAISSON_SHIM_RUN_DIR", &self.run_dir)
            .env(
                "TTRPC_ADDRESS",
                format!("unix://{}", self.events_socket.display()),
            )
            .output()
            .unwrap()
    }

    /// `start` for a bundle: returns the address it printed.
    fn start_shim(&self, id: &str, bundle: &Path) -> String {
        let out = self.shim(
            &[
                "-namespace",
                NS,
                "-address",
                "/run/none.sock",
                "-id",
                id,
                "start",
            ],
            bundle,
        );
        assert!(
            out.status.success(),
            "start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let address = String::from_utf8(out.stdout).unwrap();
        assert!(
            address.starts_with("unix:///") && !address.contains('\n'),
            "bare address expected, got {address:?}"
        );
        address
    }

    fn bundle(
        &mut self,
        name: &str,
        make: impl FnOnce(&Path) -> Bundle,
    ) -> (String, PathBuf, Bundle) {
        let id = unique(name);
        let dir = self.tmp.path().join(&id);
        let mut b = make(&dir);
        let cgroup = format!("/caisson-test-{id}");
        b.cgroups_path(&cgroup);
        self.cgroups.push(cgroup);
        self.tasks.push((id.clone(), dir.clone()));
        (id, dir, b)
    }
}

/// Pids of shim servers (and their fork servers) whose command line names `dir`.
fn shims_under(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

impl Drop for Pod {
    fn drop(&mut self) {
        // A test that failed half-way leaves its shim serving: stop it first.
        for pid in shims_under(&self.run_dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // What a crashed shim would leave: `delete` is containerd's cleanup path.
        for (id, dir) in self.tasks.iter().rev() {
            if dir.exists() {
                let _ = self.shim(
                    &[
                        "-namespace",
                        NS,
                        "-id",
                        id,
                        "-bundle",
                        &dir.display().to_string(),
                        "delete",
                    ],
                    dir,
                );
            }
        }
        for cg in &self.cgroups {
            for ctl in [
                "memory",
                "pids",
                "cpu,cpuacct",
                "freezer",
                "devices",
                "blkio",
                "cpuset",
            ] {
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{ctl}{cg}"));
            }
        }
    }
}

fn client(address: &str) -> TaskClient {
    TaskClient::new(ttrpc::Client::connect(address).unwrap())
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

fn ns_inode(pid: u32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .display()
        .to_string()
}

fn create(c: &TaskClient, id: &str, bundle: &Path, stdout: &str) -> u32 {
    let req = api::CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        stdout: stdout.into(),
        ..Default::default()
    };
    c.create(ctx(), &req)
        .unwrap_or_else(|e| panic!("create {id}: {e}"))
        .pid
}

fn start(c: &TaskClient, id: &str, exec_id: &str) -> u32 {
    let req = api::StartRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    c.start(ctx(), &req)
        .unwrap_or_else(|e| panic!("start {id}/{exec_id}: {e}"))
        .pid
}

fn wait(c: &TaskClient, id: &str, exec_id: &str) -> u32 {
    let req = api::WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    c.wait(ctx(), &req).unwrap().exit_status
}

fn kill(c: &TaskClient, id: &str, signal: u32) {
    let req = api::KillRequest {
        id: id.into(),
        signal,
        ..Default::default()
    };
    c.kill(ctx(), &req).unwrap();
}

fn delete(c: &TaskClient, id: &str) -> api::DeleteResponse {
    c.delete(
        ctx(),
        &api::DeleteRequest {
            id: id.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn exec_spec(args: &[&str]) -> Any {
    let process = serde_json::json!({
        "args": args, "cwd": "/", "env": ["PATH=/bin:/sbin:/usr/bin"], "user": {"uid": 0, "gid": 0}
    });
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = serde_json::to_vec(&process).unwrap();
    any
}

fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') => {}
            Ok(_) => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_pod_with_two_containers_shares_the_sandbox_namespaces() {
    let mut pod = Pod::new();
    let (pod_id, pod_dir, sandbox) = pod.bundle("pod", Bundle::pause);
    let pod_id_for = pod_id.clone();
    sandbox.as_sandbox(&pod_id).write();
    let address = pod.start_shim(&pod_id, &pod_dir);
    let c = client(&address);
    let connect = c
        .connect(
            ctx(),
            &api::ConnectRequest {
                id: pod_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    let shim_pid = connect.shim_pid;

    let pause_pid = create(&c, &pod_id, &pod_dir, "");
    assert_eq!(start(&c, &pod_id, ""), pause_pid);
    let ns = |kind: &str| format!("/proc/{pause_pid}/ns/{kind}");

    // c1 shares the pod's PID namespace; c2 has its own.
    let mut containers = HashMap::new();
    for (name, share_pid) in [("c1", true), ("c2", false)] {
        let (id, dir, mut b) = pod.bundle(name, |d| Bundle::busybox(d, &["sleep", "1000"]));
        b = b.in_sandbox(&pod_id_for);
        for kind in ["uts", "ipc", "network"] {
            let path = ns(if kind == "network" { "net" } else { kind });
            b.namespace(kind, Some(&path));
        }
        if share_pid {
            b.namespace("pid", Some(&ns("pid")));
        }
        b.write();
        assert_eq!(
            pod.start_shim(&id, &dir),
            address,
            "containers of a pod must join the pod's shim"
        );
        create(&c, &id, &dir, "");
        let pid = start(&c, &id, "");
        containers.insert(name, (id, pid));
    }
    for (name, (_, pid)) in &containers {
        for kind in ["uts", "ipc", "net"] {
            assert_eq!(
                ns_inode(*pid, kind),
                ns_inode(pause_pid, kind),
                "{name} {kind}"
            );
        }
        assert_ne!(
            ns_inode(*pid, "mnt"),
            ns_inode(pause_pid, "mnt"),
            "{name} has its own mount ns"
        );
    }
    let (c1, c1_pid) = containers["c1"].clone();
    let (c2, c2_pid) = containers["c2"].clone();
    assert_eq!(ns_inode(c1_pid, "pid"), ns_inode(pause_pid, "pid"));
    assert_ne!(ns_inode(c2_pid, "pid"), ns_inode(pause_pid, "pid"));

    // Exec returns its output and exit code.
    let out = pod.tmp.path().join("exec.out");
    let req = api::ExecProcessRequest {
        id: c1.clone(),
        exec_id: "e1".into(),
        stdout: format!("file://{}", out.display()),
        spec: Some(exec_spec(&["sh", "-c", "echo hi from exec; exit 3"])).into(),
        ..Default::default()
    };
    c.exec(ctx(), &req).unwrap();
    start(&c, &c1, "e1");
    assert_eq!(wait(&c, &c1, "e1"), 3);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi from exec\n");
    c.delete(
        ctx(),
        &api::DeleteRequest {
            id: c1.clone(),
            exec_id: "e1".into(),
            ..Default::default()
        },
    )
    .unwrap();

    // Pids and state reflect the running container.
    let pids = c
        .pids(
            ctx(),
            &api::PidsRequest {
                id: c1.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(pids.processes.iter().any(|p| p.pid == c1_pid), "{pids:?}");
    let state = c
        .state(
            ctx(),
            &api::StateRequest {
                id: c1.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(state.status.enum_value_or_default(), api::Status::RUNNING);

    // A container that exits on its own: exit code and TaskExit event.
    let (c3, c3_dir, mut b) = pod.bundle("c3", |d| {
        Bundle::busybox(d, &["sh", "-c", "echo bye; exit 7"])
    });
    b = b.in_sandbox(&pod_id);
    b.namespace("network", Some(&ns("net")));
    b.write();
    let log = pod.tmp.path().join("c3.out");
    create(&c, &c3, &c3_dir, &format!("file://{}", log.display()));
    start(&c, &c3, "");
    assert_eq!(wait(&c, &c3, ""), 7);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "bye\n");
    let c3_for = c3.clone();
    pod.collector
        .wait_for("TaskExit of c3 with status 7", |events| {
            events.iter().any(|(topic, any)| {
                topic == "/tasks/exit"
                    && TaskExit::parse_from_bytes(&any.value)
                        .is_ok_and(|e| e.container_id == c3_for && e.exit_status == 7)
            })
        });
    pod.collector.wait_for("TaskExecStarted of e1", |events| {
        events.iter().any(|(topic, any)| {
            topic == "/tasks/exec-started"
                && TaskExecStarted::parse_from_bytes(&any.value).is_ok_and(|e| e.exec_id == "e1")
        })
    });

    // Deleting a running task is refused; kill, wait, delete works.
    let err = c
        .delete(
            ctx(),
            &api::DeleteRequest {
                id: c1.clone(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("kill it before deleting"), "{err}");
    // c1's sleep is not PID 1 (pause is), so SIGTERM kills it: 128 + 15.
    // c2's sleep is PID 1 of its own namespace and ignores SIGTERM: SIGKILL.
    kill(&c, &c1, libc::SIGTERM as u32);
    assert_eq!(wait(&c, &c1, ""), 143);
    kill(&c, &c2, libc::SIGKILL as u32);
    assert_eq!(wait(&c, &c2, ""), 137);
    for id in [&c1, &c2, &c3] {
        delete(&c, id);
    }
    kill(&c, &pod_id, libc::SIGTERM as u32);
    assert_eq!(wait(&c, &pod_id, ""), 0, "pause exits 0 on SIGTERM");
    assert_eq!(delete(&c, &pod_id).exit_status, 0);
    let topics: Vec<String> = pod
        .collector
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
    ] {
        assert!(
            topics.iter().any(|t| t == topic),
            "no {topic} event in {topics:?}"
        );
    }
    pod.collector.wait_for("/tasks/delete", |events| {
        events.iter().any(|(t, _)| t == "/tasks/delete")
    });

    // The shim exits once the pod is gone, and nothing is left behind.
    c.shutdown(
        ctx(),
        &api::ShutdownRequest {
            id: pod_id.clone(),
            ..Default::default()
        },
    )
    .ok();
    assert!(
        gone(shim_pid),
        "the shim must exit after the sandbox is deleted"
    );
    for pid in [pause_pid, c1_pid, c2_pid] {
        assert!(gone(pid), "process {pid} survived its task");
    }
    for cg in &pod.cgroups {
        for ctl in ["memory", "pids"] {
            let dir = format!("/sys/fs/cgroup/{ctl}{cg}");
            assert!(!Path::new(&dir).exists(), "cgroup {dir} left behind");
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&pod.tmp.path().display().to_string()),
        "a mount under the test dir was left"
    );
    assert!(!pod.run_dir.join("s").read_dir().unwrap().any(|e| e
        .unwrap()
        .path()
        .extension()
        .is_some_and(|x| x == "sock")));
    pod.tasks.clear();
}

#[test]
fn bad_requests_get_clear_errors() {
    let mut pod = Pod::new();
    let (pod_id, pod_dir, sandbox) = pod.bundle("badpod", Bundle::pause);
    sandbox.as_sandbox(&pod_id).write();
    let c = client(&pod.start_shim(&pod_id, &pod_dir));
    let code = |r: ttrpc::Result<api::StateResponse>| match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    };
    assert_eq!(
        code(c.state(
            ctx(),
            &api::StateRequest {
                id: "nope".into(),
                ..Default::default()
            }
        )),
        ttrpc::Code::NOT_FOUND
    );
    let relative = api::CreateTaskRequest {
        id: "x".into(),
        bundle: "relative/dir".into(),
        ..Default::default()
    };
    let err = c.create(ctx(), &relative).unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
    create(&c, &pod_id, &pod_dir, "");
    let dup = api::CreateTaskRequest {
        id: pod_id.clone(),
        bundle: pod_dir.display().to_string(),
        ..Default::default()
    };
    let err = c.create(ctx(), &dup).unwrap_err();
    assert!(
        matches!(&err, ttrpc::Error::RpcStatus(s) if s.code() == ttrpc::Code::ALREADY_EXISTS),
        "{err}"
    );
    let err = c
        .checkpoint(
            ctx(),
            &api::CheckpointTaskRequest {
                id: pod_id.clone(),
                ..Default::default()
            },
        )
        .unwrap_err();
    // Only a running task has processes to checkpoint.
    assert!(
        matches!(&err, ttrpc::Error::RpcStatus(s)
            if s.code() == ttrpc::Code::FAILED_PRECONDITION && s.message().contains("not running")),
        "{err}"
    );
    // A created-but-never-started task can be deleted.
    delete(&c, &pod_id);
    c.shutdown(
        ctx(),
        &api::ShutdownRequest {
            id: pod_id,
            ..Default::default()
        },
    )
    .ok();
    pod.tasks.clear();
}

#[test]
fn an_oom_killed_container_publishes_task_oom_then_exits_137() {
    let mut pod = Pod::new();
    let (pod_id, pod_dir, sandbox) = pod.bundle("oompod", Bundle::pause);
    sandbox.as_sandbox(&pod_id).write();
    let c = client(&pod.start_shim(&pod_id, &pod_dir));
    create(&c, &pod_id, &pod_dir, "");
    start(&c, &pod_id, "");
    // tmpfs pages are charged to the writer's memory cgroup and cannot be
    // reclaimed without swap: past the limit the kernel OOM-kills dd.
    let (id, dir, mut b) = pod.bundle("hog", |d| {
        Bundle::busybox(
            d,
            &[
                "dd",
                "if=/dev/zero",
                "of=/dev/shm/fill",
                "bs=1M",
                "count=60",
            ],
        )
    });
    b = b.in_sandbox(&pod_id);
    b.spec["linux"]["resources"]["memory"] =
        serde_json::json!({"limit": 16 << 20, "swap": 16 << 20});
    b.write();
    create(&c, &id, &dir, "");
    start(&c, &id, "");
    assert_eq!(wait(&c, &id, ""), 137);
    let id_for = id.clone();
    pod.collector.wait_for("TaskOOM for the hog", |events| {
        events.iter().any(|(topic, any)| {
            topic == "/tasks/oom"
                && containerd_shim_protos::events::task::TaskOOM::parse_from_bytes(&any.value)
                    .is_ok_and(|e| e.container_id == id_for)
        })
    });
    // TaskOOM comes before TaskExit, so the caller knows why when it sees the exit.
    let id_for = id.clone();
    pod.collector.wait_for("TaskExit for the hog", |events| {
        events.iter().any(|(topic, any)| {
            topic == "/tasks/exit"
                && TaskExit::parse_from_bytes(&any.value).is_ok_and(|e| e.container_id == id_for)
        })
    });
    let topics: Vec<String> = pod
        .collector
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    let oom = topics.iter().position(|t| t == "/tasks/oom").unwrap();
    let last_exit = topics.iter().rposition(|t| t == "/tasks/exit").unwrap();
    assert!(oom < last_exit, "{topics:?}");
    delete(&c, &id);
    kill(&c, &pod_id, libc::SIGKILL as u32);
    wait(&c, &pod_id, "");
    delete(&c, &pod_id);
    c.shutdown(
        ctx(),
        &api::ShutdownRequest {
            id: pod_id,
            ..Default::default()
        },
    )
    .ok();
    pod.tasks.clear();
}
