//! SPDY exec/attach in-process: `serve_remotecommand` on one end of a pipe
//! (or a loopback TCP connection), `caisson_tests::spdy` (an independent
//! client, frame by frame) on the other, with fake commands. Port
//! forwarding is in `spdy_portforward.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use caisson_shim::streaming::spdy::{negotiate, serve_remotecommand, REMOTECOMMAND_PROTOCOLS};
use caisson_shim::streaming::{
    RemoteCommand, SessionEnd, SessionLimits, SessionStreams, StreamOptions, TermSize,
};
use caisson_tests::spdy::{exec, upgrade, ExecRequest, Seen, SpdyClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(20);

/// Reads stdin to its end, writes it upper-cased to stdout, a line to
/// stderr, and exits 3.
struct UpperEcho;

#[tonic::async_trait]
impl RemoteCommand for UpperEcho {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        let mut input = Vec::new();
        if let Some(stdin) = streams.stdin.as_mut() {
            stdin.read_to_end(&mut input).await.unwrap();
        }
        let stdout = streams.stdout.as_mut().unwrap();
        stdout.write_all(&input.to_ascii_uppercase()).await.unwrap();
        stdout.flush().await.unwrap();
        let stderr = streams.stderr.as_mut().unwrap();
        stderr.write_all(b"to stderr\n").await.unwrap();
        SessionEnd::ExitCode(3)
    }
}

/// With a tty: echoes stdin, then records every resize until the client
/// closes the resize stream.
struct TtyRecorder(Arc<Mutex<Vec<TermSize>>>);

#[tonic::async_trait]
impl RemoteCommand for TtyRecorder {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        assert!(streams.stderr.is_none(), "a tty has no stderr");
        let mut input = Vec::new();
        streams
            .stdin
            .as_mut()
            .unwrap()
            .read_to_end(&mut input)
            .await
            .unwrap();
        streams
            .stdout
            .as_mut()
            .unwrap()
            .write_all(&input)
            .await
            .unwrap();
        let mut resize = streams.resize.take().expect("a resize stream");
        while let Some(size) = resize.recv().await {
            self.0.lock().unwrap().push(size);
        }
        SessionEnd::Success
    }
}

/// Writes `bytes` bytes to stdout and succeeds.
struct Chatty(usize);

#[tonic::async_trait]
impl RemoteCommand for Chatty {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        let data: Vec<u8> = (0..self.0).map(|i| (i % 251) as u8).collect();
        streams
            .stdout
            .as_mut()
            .unwrap()
            .write_all(&data)
            .await
            .unwrap();
        SessionEnd::Success
    }
}

/// Writes to stdout until that fails, and says when it saw the client go.
struct UntilGone(Arc<Mutex<Option<&'static str>>>);

#[tonic::async_trait]
impl RemoteCommand for UntilGone {
    async fn run(self: Box<Self>, streams: SessionStreams) -> SessionEnd {
        let SessionStreams {
            stdout,
            client_gone,
            ..
        } = streams;
        let mut stdout = stdout.unwrap();
        let writing = async {
            loop {
                if stdout.write_all(b"tick\n").await.is_err() {
                    return "write failed";
                }
                tokio::task::yield_now().await;
            }
        };
        let why = tokio::select! {
            why = writing => why,
            _ = client_gone => "client gone",
        };
        *self.0.lock().unwrap() = Some(why);
        SessionEnd::Success
    }
}

/// Never runs: the test fails if it does.
struct MustNotRun;

#[tonic::async_trait]
impl RemoteCommand for MustNotRun {
    async fn run(self: Box<Self>, _: SessionStreams) -> SessionEnd {
        panic!("the command ran without its streams");
    }
}

fn limits() -> SessionLimits {
    SessionLimits {
        idle_timeout: Duration::from_secs(60),
        stream_creation_timeout: Duration::from_secs(10),
    }
}

fn opts(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> StreamOptions {
    StreamOptions {
        stdin,
        stdout,
        stderr,
        tty,
    }
}

fn start_exec(
    protocol: &'static str,
    opts: StreamOptions,
    cmd: impl RemoteCommand + 'static,
    limits: SessionLimits,
) -> (SpdyClient<DuplexStream>, JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve_remotecommand(
        Box::new(server),
        protocol,
        opts,
        Box::new(cmd),
        limits,
    ));
    (SpdyClient::new(client), served)
}

async fn finished(served: JoinHandle<()>) {
    timeout(DEADLINE, served)
        .await
        .expect("the session ends")
        .expect("the session does not panic");
}

#[tokio::test]
async fn exec_v4_separates_stdout_and_stderr_and_reports_the_exit_code() {
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        opts(true, true, true, false),
        UpperEcho,
        limits(),
    );
    let request = ExecRequest {
        stdin: Some(b"hello spdy"),
        stdout: true,
        stderr: true,
        resizes: None,
    };
    let outcome = timeout(DEADLINE, exec(&mut client, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.stdout, b"HELLO SPDY");
    assert_eq!(outcome.stderr, b"to stderr\n");
    let status = outcome.status();
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    timeout(DEADLINE, client.wait_closed()).await.unwrap();
    assert_eq!(
        client.goaway,
        Some(0),
        "GOAWAY with status OK before closing"
    );
    finished(served).await;
}

#[tokio::test]
async fn exec_v4_tty_delivers_resizes_in_order_and_no_stderr() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        // kubelet drops stderr for a tty, whatever the request said.
        opts(true, true, true, true),
        TtyRecorder(sizes.clone()),
        limits(),
    );
    let request = ExecRequest {
        stdin: Some(b"ls\n"),
        stdout: true,
        stderr: false,
        resizes: Some(&[(80, 24), (132, 43), (100, 30)]),
    };
    let outcome = timeout(DEADLINE, exec(&mut client, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.stdout, b"ls\n");
    assert_eq!(outcome.status()["status"], "Success");
    finished(served).await;
    let got: Vec<(u16, u16)> = sizes
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.width, s.height))
        .collect();
    assert_eq!(got, [(80, 24), (132, 43), (100, 30)]);
}

#[tokio::test]
async fn older_protocols_write_the_error_text_and_nothing_on_success() {
    let (mut client, served) = start_exec(
        "v2.channel.k8s.io",
        opts(true, true, true, false),
        UpperEcho,
        limits(),
    );
    let request = ExecRequest {
        stdin: Some(b"x"),
        stdout: true,
        stderr: true,
        resizes: None,
    };
    let outcome = timeout(DEADLINE, exec(&mut client, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.stdout, b"X");
    assert_eq!(
        String::from_utf8_lossy(&outcome.error),
        "command terminated with non-zero exit code: exit status 3"
    );
    finished(served).await;

    let (mut client, served) = start_exec(
        "v3.channel.k8s.io",
        opts(false, true, false, false),
        Chatty(10),
        limits(),
    );
    let request = ExecRequest {
        stdout: true,
        ..ExecRequest::default()
    };
    let outcome = timeout(DEADLINE, exec(&mut client, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.stdout.len(), 10);
    assert!(outcome.error.is_empty(), "success writes nothing on v1-v3");
    finished(served).await;
}

#[tokio::test]
async fn a_client_keeping_windows_holds_the_server_to_them() {
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        opts(false, true, false, false),
        Chatty(200_000),
        limits(),
    );
    client.auto_window_update = false;
    client.settings_initial_window(4096).await.unwrap();
    let error = client
        .open_and_wait(&[("streamType", "error")])
        .await
        .unwrap();
    let stdout = client
        .open_and_wait(&[("streamType", "stdout")])
        .await
        .unwrap();
    let first = timeout(DEADLINE, client.read_exact(stdout, 4096))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), 4096);
    // A PING round trip: the server is live, and still sent no more.
    client.ping().await.unwrap();
    assert!(
        client.streams[&stdout].data.is_empty(),
        "the server overran our window"
    );
    client.auto_window_update = true;
    client.window_update(stdout, 1 << 20).await.unwrap();
    client.window_update(0, 1 << 20).await.unwrap();
    let rest = timeout(DEADLINE, client.read_to_end(stdout))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len() + rest.len(), 200_000);
    let status = client.read_to_end(error).await.unwrap();
    assert!(String::from_utf8_lossy(&status).contains("Success"));
    finished(served).await;
}

#[tokio::test]
async fn a_client_without_flow_control_is_not_held_to_64k() {
    // moby/spdystream (kubectl, crictl) never sends WINDOW_UPDATE.
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        opts(false, true, false, false),
        Chatty(300_000),
        limits(),
    );
    client.auto_window_update = false;
    let outcome = timeout(
        DEADLINE,
        exec(
            &mut client,
            &ExecRequest {
                stdout: true,
                ..ExecRequest::default()
            },
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome.stdout.len(), 300_000);
    finished(served).await;
}

#[tokio::test]
async fn the_server_sends_window_updates_as_stdin_is_read() {
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        opts(true, true, true, false),
        UpperEcho,
        limits(),
    );
    let input = vec![b'a'; 256 * 1024];
    let request = ExecRequest {
        stdin: Some(&input),
        stdout: true,
        stderr: true,
        resizes: None,
    };
    // 256 KiB through a 64 KiB window only works if the server grants more.
    let outcome = timeout(DEADLINE, exec(&mut client, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.stdout, vec![b'A'; 256 * 1024]);
    assert!(client
        .log
        .iter()
        .any(|seen| matches!(seen, Seen::WindowUpdate { stream: 0, .. })));
    finished(served).await;
}

#[tokio::test]
async fn streams_not_opened_in_time_end_the_session_without_running() {
    let limits = SessionLimits {
        stream_creation_timeout: Duration::from_millis(200),
        ..limits()
    };
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        opts(true, true, false, false),
        MustNotRun,
        limits,
    );
    client
        .open_and_wait(&[("streamType", "error")])
        .await
        .unwrap();
    timeout(DEADLINE, client.wait_closed()).await.unwrap();
    finished(served).await;
}

#[tokio::test]
async fn a_client_that_leaves_midway_ends_the_command() {
    let seen = Arc::new(Mutex::new(None));
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        opts(false, true, false, false),
        UntilGone(seen.clone()),
        limits(),
    );
    client
        .open_and_wait(&[("streamType", "error")])
        .await
        .unwrap();
    let stdout = client
        .open_and_wait(&[("streamType", "stdout")])
        .await
        .unwrap();
    client.read_exact(stdout, 5).await.unwrap();
    drop(client);
    finished(served).await;
    assert!(seen.lock().unwrap().is_some());
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let limits = SessionLimits {
        idle_timeout: Duration::from_millis(300),
        ..limits()
    };
    let seen = Arc::new(Mutex::new(None));
    let (mut client, served) = start_exec(
        "v4.channel.k8s.io",
        opts(true, false, false, false),
        UntilGoneNoOutput(seen.clone()),
        limits,
    );
    client
        .open_and_wait(&[("streamType", "error")])
        .await
        .unwrap();
    client
        .open_and_wait(&[("streamType", "stdin")])
        .await
        .unwrap();
    timeout(DEADLINE, client.wait_closed()).await.unwrap();
    finished(served).await;
    assert_eq!(*seen.lock().unwrap(), Some("client gone"));
}

/// Waits for the client to go, with nothing to write.
struct UntilGoneNoOutput(Arc<Mutex<Option<&'static str>>>);

#[tonic::async_trait]
impl RemoteCommand for UntilGoneNoOutput {
    async fn run(self: Box<Self>, streams: SessionStreams) -> SessionEnd {
        let _ = streams.client_gone.await;
        *self.0.lock().unwrap() = Some("client gone");
        SessionEnd::Success
    }
}

#[tokio::test]
async fn the_test_client_upgrades_over_http() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("POST /exec/token123 HTTP/1.1\r\n"),
            "{head}"
        );
        let offers: Vec<&str> = head
            .split("\r\n")
            .filter_map(|l| l.strip_prefix("X-Stream-Protocol-Version: "))
            .collect();
        let protocol = negotiate(&offers, REMOTECOMMAND_PROTOCOLS).unwrap();
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        tcp.write_all(reply.as_bytes()).await.unwrap();
        serve_remotecommand(
            Box::new(tcp),
            protocol,
            opts(true, true, true, false),
            Box::new(UpperEcho),
            limits(),
        )
        .await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, protocol) = upgrade(
        tcp,
        "/exec/token123",
        &[
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
        ],
    )
    .await
    .unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let request = ExecRequest {
        stdin: Some(b"over tcp"),
        stdout: true,
        stderr: true,
        resizes: None,
    };
    let outcome = timeout(DEADLINE, exec(&mut client, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.stdout, b"OVER TCP");
    assert_eq!(outcome.status()["reason"], "NonZeroExitCode");
    timeout(DEADLINE, server).await.unwrap().unwrap();
}
