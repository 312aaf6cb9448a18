//! Exec, Attach and PortForward end to end through a real caissond, on the
//! native, hardened, oci (runc) and microvm handlers, with two clients that
//! are not
//! caissond's: a SPDY/3.1 client written frame by frame from the spec
//! (`caisson_tests::spdy`, what kubelet's proxy and crictl 1.26 speak) and
//! the Python `kubernetes` package's WebSocket client (PyPI).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use caisson_tests::cni::TestNetwork;
use caisson_tests::daemon::{container_config, wait_until, Caissond};
use caisson_tests::require;
use caisson_tests::spdy::{self, ExecRequest, PortForwardRequest, SpdyClient};
use k8s_cri::v1 as cri;
use tokio::net::TcpStream;

/// Handlers whose container processes are the host's.
const HANDLERS: &[&str] = &["runc", "hardened", "runc-oci"];
/// microvm too: its processes run in the pod's VM, and its port-forward
/// goes through the shim's socket to the guest's localhost.
const SESSION_HANDLERS: &[&str] = &["runc", "hardened", "runc-oci", "microvm"];

fn started() -> Caissond {
    let d = Caissond::start("");
    d.import_busybox();
    d.import_pause_image();
    d
}

/// A running pod with one container running `cmd`.
fn pod_with(
    d: &Caissond,
    handler: &str,
    name: &str,
    config: cri::ContainerConfig,
) -> (String, String) {
    let pod_config = d.pod_config(name);
    let pod = d.run_pod_with_handler(&pod_config, handler);
    let id = d.create_started_container(&pod, &pod_config, config);
    (pod, id)
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let slash = rest.find('/').unwrap();
    (rest[..slash].to_string(), rest[slash..].to_string())
}

async fn spdy_open(url: &str, protocol: &str) -> SpdyClient<TcpStream> {
    let (host, path) = split_url(url);
    let tcp = TcpStream::connect(host).await.unwrap();
    let (client, chosen) = spdy::upgrade(tcp, &path, &[protocol]).await.unwrap();
    assert_eq!(chosen, protocol);
    client
}

fn exec_url(d: &Caissond, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    let mut rt = d.runtime();
    d.ok(
        "Exec",
        d.rt.block_on(rt.exec(cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })),
    )
    .url
}

fn spdy_exec(d: &Caissond, url: &str, request: &ExecRequest) -> spdy::ExecOutcome {
    d.rt.block_on(async {
        let mut client = spdy_open(url, "v4.channel.k8s.io").await;
        tokio::time::timeout(Duration::from_secs(60), spdy::exec(&mut client, request))
            .await
            .expect("the exec ends")
            .expect("the exec's streams")
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn spdy_exec_streams_exit_codes_stdin_and_tty_on_every_handler() {
    require::microvm();
    let d = started();
    for handler in SESSION_HANDLERS {
        let (_pod, id) = pod_with(
            &d,
            handler,
            &format!("exec-{handler}"),
            container_config("c", &["sleep", "600"]),
        );
        // Separate streams and a non-zero exit.
        let url = exec_url(
            &d,
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        );
        let got = spdy_exec(
            &d,
            &url,
            &ExecRequest {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        );
        assert_eq!(text(&got.stdout), "out\n", "{handler}");
        assert_eq!(text(&got.stderr), "err\n", "{handler}");
        let status = got.status();
        assert_eq!(status["status"], "Failure", "{handler}: {status}");
        assert_eq!(status["reason"], "NonZeroExitCode", "{handler}");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3", "{handler}");
        // Success.
        let url = exec_url(&d, &id, &["true"], false, false);
        let got = spdy_exec(
            &d,
            &url,
            &ExecRequest {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        );
        assert_eq!(got.status()["status"], "Success", "{handler}");
        // stdin to cat: it ends when stdin closes.
        let url = exec_url(&d, &id, &["cat"], true, false);
        let got = spdy_exec(
            &d,
            &url,
            &ExecRequest {
                stdin: Some(b"hello\nworld\n"),
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        );
        assert_eq!(
            text(&got.stdout),
            "hello\nworld\n",
            "{handler}: {got:?}\n{}",
            d.log_tail()
        );
        assert_eq!(got.status()["status"], "Success", "{handler}");
        // A terminal, resized: the command waits until it sees the size.
        let script = "until [ \"$(stty size 2>/dev/null)\" = '30 100' ]; do sleep 0.05; done; stty size; tty";
        let url = exec_url(&d, &id, &["sh", "-c", script], false, true);
        let got = spdy_exec(
            &d,
            &url,
            &ExecRequest {
                stdout: true,
                resizes: Some(&[(80, 24), (100, 30)]),
                ..Default::default()
            },
        );
        let out = text(&got.stdout);
        assert!(out.starts_with("30 100\r\n"), "{handler}: {out:?}");
        assert!(out.contains("/dev/pts/"), "{handler}: a pty: {out:?}");
        assert_eq!(got.status()["status"], "Success", "{handler}");
    }
}

/// Processes on the host whose command line is exactly `cmdline`.
fn processes(cmdline: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmdline)
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_client_that_disconnects_leaves_no_process_behind() {
    let d = started();
    for (i, handler) in HANDLERS.iter().enumerate() {
        let (_pod, id) = pod_with(
            &d,
            handler,
            &format!("gone-{handler}"),
            container_config("c", &["sleep", "600"]),
        );
        let marker = format!("sleep 42{i}7");
        for tty in [false, true] {
            let args: Vec<&str> = marker.split(' ').collect();
            let url = exec_url(&d, &id, &args, true, tty);
            d.rt.block_on(async {
                let mut client = spdy_open(&url, "v4.channel.k8s.io").await;
                client
                    .open_and_wait(&[("streamType", "error")])
                    .await
                    .unwrap();
                client
                    .open_and_wait(&[("streamType", "stdin")])
                    .await
                    .unwrap();
                client
                    .open_and_wait(&[("streamType", "stdout")])
                    .await
                    .unwrap();
                // A terminal has no stderr and a resize stream (kubelet
                // waits for exactly these).
                let last = if tty { "resize" } else { "stderr" };
                client.open_and_wait(&[("streamType", last)]).await.unwrap();
                let deadline = Instant::now() + Duration::from_secs(20);
                while processes(&marker).is_empty() {
                    assert!(Instant::now() < deadline, "{handler}: the exec never ran");
                    // Keep serving the connection (pings, window updates)
                    // while the process starts.
                    let _ = tokio::time::timeout(Duration::from_millis(20), client.pump()).await;
                }
                drop(client);
            });
            wait_until(
                &format!("{handler} (tty {tty}): the exec is killed after its client left"),
                Duration::from_secs(20),
                || processes(&marker).is_empty().then_some(()),
            );
        }
        // The container itself was not touched.
        let status = d.container_status(&id);
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "{handler}"
        );
    }
}

fn attach_url(d: &Caissond, id: &str, stdin: bool) -> String {
    let mut rt = d.runtime();
    d.ok(
        "Attach",
        d.rt.block_on(rt.attach(cri::AttachRequest {
            container_id: id.into(),
            stdin,
            stdout: true,
            stderr: true,
            ..Default::default()
        })),
    )
    .url
}

#[test]
fn attach_follows_output_feeds_stdin_and_detaches_cleanly() {
    require::microvm();
    let d = started();
    for handler in SESSION_HANDLERS {
        // A container printing a line per second, attached twice at once.
        let (_pod, ticker) = pod_with(
            &d,
            handler,
            &format!("tick-{handler}"),
            cri::ContainerConfig {
                log_path: "ticker.log".into(),
                ..container_config(
                    "t",
                    &[
                        "sh",
                        "-c",
                        "i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done",
                    ],
                )
            },
        );
        let (first, second) = (
            attach_url(&d, &ticker, false),
            attach_url(&d, &ticker, false),
        );
        d.rt.block_on(async {
            let mut a = spdy_open(&first, "v4.channel.k8s.io").await;
            let mut b = spdy_open(&second, "v4.channel.k8s.io").await;
            let mut outs = Vec::new();
            for c in [&mut a, &mut b] {
                c.open_and_wait(&[("streamType", "error")]).await.unwrap();
                let out = c.open_and_wait(&[("streamType", "stdout")]).await.unwrap();
                c.open_and_wait(&[("streamType", "stderr")]).await.unwrap();
                outs.push(out);
            }
            for (c, out) in [&mut a, &mut b].into_iter().zip(outs) {
                // Two whole lines, each from the container's counter.
                let mut got = Vec::new();
                while got.iter().filter(|b| **b == b'\n').count() < 2 {
                    let more = tokio::time::timeout(Duration::from_secs(20), c.read_exact(out, 1))
                        .await
                        .expect("a line a second")
                        .unwrap();
                    got.extend(more);
                }
                assert!(text(&got).contains("line "), "{handler}: {:?}", text(&got));
            }
        });
        // Detached: the container runs on and its log is still written.
        let status = d.container_status(&ticker);
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "{handler}"
        );
        let log = Path::new(&status.log_path).to_path_buf();
        let before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        wait_until(
            "the log grows after the detach",
            Duration::from_secs(20),
            || {
                (std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .count()
                    > before)
                    .then_some(())
            },
        );

        // A stdin_once container reading a line: attach gives it the line,
        // and closing the attach's stdin closes the container's.
        let (_pod, reader) = pod_with(
            &d,
            handler,
            &format!("read-{handler}"),
            cri::ContainerConfig {
                stdin: true,
                stdin_once: true,
                ..container_config(
                    "r",
                    &["sh", "-c", "read line; echo got $line; cat; echo eof"],
                )
            },
        );
        let url = attach_url(&d, &reader, true);
        let got = spdy_exec(
            &d,
            &url,
            &ExecRequest {
                stdin: Some(b"hello\n"),
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        );
        assert_eq!(text(&got.stdout), "got hello\neof\n", "{handler}");
        assert_eq!(got.status()["status"], "Success", "{handler}");
        wait_until(
            "the reader exits after stdin_once",
            Duration::from_secs(20),
            || {
                (d.container_status(&reader).state == cri::ContainerState::ContainerExited as i32)
                    .then_some(())
            },
        );
        assert_eq!(d.container_status(&reader).exit_code, 0, "{handler}");
    }
}

/// A pod on a CNI bridge serving two ports with busybox httpd.
fn web_pod(d: &Caissond, handler: &str, name: &str) -> String {
    let script = "mkdir -p /tmp/a /tmp/b; echo port-a > /tmp/a/index.html; \
                  echo port-b > /tmp/b/index.html; httpd -p 8080 -h /tmp/a; \
                  httpd -f -p 9090 -h /tmp/b";
    let (pod, id) = pod_with(
        d,
        handler,
        name,
        container_config("web", &["sh", "-c", script]),
    );
    // Both servers listen before a test connects (a refusal is an answer).
    for port in ["8080", "9090"] {
        let url = format!("http://127.0.0.1:{port}/");
        wait_until(
            &format!("{handler}: httpd on {port}"),
            Duration::from_secs(30),
            || {
                d.try_exec(&id, &["wget", "-q", "-O", "/dev/null", &url], 10)
                    .ok()
                    .filter(|out| out.exit_code == 0)
            },
        );
    }
    pod
}

fn port_forward_url(d: &Caissond, pod: &str, ports: &[i32]) -> String {
    let mut rt = d.runtime();
    d.ok(
        "PortForward",
        d.rt.block_on(rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: ports.to_vec(),
        })),
    )
    .url
}

const GET: &[u8] = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";

#[test]
fn spdy_port_forward_reaches_two_ports_concurrently_and_reports_refusals() {
    require::microvm();
    let net = TestNetwork::new("cst-stream", "cst-strm0", "10.231.70");
    let d = started();
    net.install(&d, r#", {"type": "loopback"}"#);
    for handler in SESSION_HANDLERS {
        let pod = web_pod(&d, handler, &format!("web-{handler}"));
        let url = port_forward_url(&d, &pod, &[8080, 9090]);
        let answers = d.rt.block_on(async {
            let mut client = spdy_open(&url, "portforward.k8s.io").await;
            // Wait for both servers: a refused port is an error, not a hang.
            let mut requests = Vec::new();
            for (i, port) in [8080u16, 9090, 8080, 7070].into_iter().enumerate() {
                let pair = PortForwardRequest::open(&mut client, port, Some(&i.to_string()))
                    .await
                    .unwrap();
                requests.push((port, pair));
            }
            // Two connections to 8080 and one to 9090 in flight at once.
            for (port, pair) in &requests[..3] {
                assert_ne!(*port, 7070);
                client.send(pair.data, GET, false).await.unwrap();
            }
            let mut answers = Vec::new();
            for (port, pair) in &requests {
                if *port == 7070 {
                    let error = client.read_to_end(pair.error).await.unwrap();
                    answers.push((*port, text(&error)));
                } else {
                    let body = client.read_to_end(pair.data).await.unwrap();
                    answers.push((*port, text(&body)));
                }
            }
            answers
        });
        assert!(answers[0].1.ends_with("port-a\n"), "{handler}: {answers:?}");
        assert!(answers[1].1.ends_with("port-b\n"), "{handler}: {answers:?}");
        assert!(answers[2].1.ends_with("port-a\n"), "{handler}: {answers:?}");
        assert!(
            answers[3].1.contains("7070"),
            "{handler}: a refusal names the port: {answers:?}"
        );
    }
    drop(d);
    drop(net);
}

/// The Python `kubernetes` package's WebSocket client against a URL.
fn ws_client(args: &[&str]) -> serde_json::Value {
    let python = require::python_kubernetes();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ws_client.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("running ws_client.py");
    assert!(
        out.status.success(),
        "ws_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_kubernetes_python_client_execs_and_forwards_over_websocket() {
    require::microvm();
    let net = TestNetwork::new("cst-wstream", "cst-wstr0", "10.231.71");
    let d = started();
    net.install(&d, r#", {"type": "loopback"}"#);
    for handler in SESSION_HANDLERS {
        let pod = web_pod(&d, handler, &format!("ws-{handler}"));
        let id = d
            .ok(
                "ListContainers",
                d.rt.block_on(d.runtime().list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id: pod.clone(),
                        ..Default::default()
                    }),
                })),
            )
            .containers[0]
            .id
            .clone();
        let ws = |url: &str| url.replacen("http://", "ws://", 1);
        // v4: separate streams and the exit code.
        let url = exec_url(
            &d,
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        );
        let got = ws_client(&["exec", &ws(&url), "--protocol", "v4.channel.k8s.io"]);
        assert_eq!(got["stdout"], "out\n", "{handler}: {got}");
        assert_eq!(got["stderr"], "err\n", "{handler}: {got}");
        assert_eq!(got["returncode"], 3, "{handler}: {got}");
        assert_eq!(
            got["status"]["reason"], "NonZeroExitCode",
            "{handler}: {got}"
        );
        // v5 (the package's default): stdin closed ends cat.
        let url = exec_url(&d, &id, &["cat"], true, false);
        let got = ws_client(&["exec", &ws(&url), "--stdin", "piped\n", "--close-stdin"]);
        assert_eq!(got["protocol"], "v5.channel.k8s.io", "{handler}: {got}");
        assert_eq!(got["stdout"], "piped\n", "{handler}: {got}");
        assert_eq!(got["returncode"], 0, "{handler}: {got}");
        // A terminal and a resize.
        let script =
            "until [ \"$(stty size 2>/dev/null)\" = '40 120' ]; do sleep 0.05; done; stty size";
        let url = exec_url(&d, &id, &["sh", "-c", script], false, true);
        let got = ws_client(&["exec", &ws(&url), "--resize", "120x40"]);
        assert_eq!(got["stdout"], "40 120\r\n", "{handler}: {got}");
        // Port-forward: two ports and a refused one.
        let url = port_forward_url(&d, &pod, &[8080, 9090, 7070]);
        let request = String::from_utf8_lossy(GET).into_owned();
        let got = ws_client(&[
            "portforward",
            &ws(&url),
            "--port",
            &format!("8080:{request}"),
            "--port",
            &format!("9090:{request}"),
            "--port",
            "7070:x",
            "--read-to-end",
        ]);
        let a = got["ports"]["8080"]["received"]
            .as_str()
            .unwrap_or_default();
        let b = got["ports"]["9090"]["received"]
            .as_str()
            .unwrap_or_default();
        assert!(a.ends_with("port-a\n"), "{handler}: {got}");
        assert!(b.ends_with("port-b\n"), "{handler}: {got}");
        assert!(
            got["ports"]["7070"]["error"]
                .as_str()
                .unwrap_or_default()
                .contains("7070"),
            "{handler}: {got}"
        );
    }
    drop(d);
    drop(net);
}

#[test]
fn many_sessions_at_once_stay_independent() {
    let d = started();
    let (_pod, id) = pod_with(&d, "runc", "many", container_config("c", &["sleep", "600"]));
    let urls: Vec<String> = (0..16)
        .map(|i| {
            exec_url(
                &d,
                &id,
                &["sh", "-c", &format!("echo session {i}; exit {}", i % 4)],
                false,
                false,
            )
        })
        .collect();
    let started = Instant::now();
    let outcomes = d.rt.block_on(async {
        let mut tasks = Vec::new();
        for url in urls {
            tasks.push(tokio::spawn(async move {
                let mut client = spdy_open(&url, "v4.channel.k8s.io").await;
                spdy::exec(
                    &mut client,
                    &ExecRequest {
                        stdout: true,
                        stderr: true,
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for (i, got) in outcomes.iter().enumerate() {
        assert_eq!(text(&got.stdout), format!("session {i}\n"));
        let status = got.status();
        if i % 4 == 0 {
            assert_eq!(status["status"], "Success", "{i}: {status}");
        } else {
            assert_eq!(
                status["details"]["causes"][0]["message"],
                (i % 4).to_string(),
                "{i}: {status}"
            );
        }
    }
    eprintln!("16 concurrent SPDY execs in {:?}", started.elapsed());
}
