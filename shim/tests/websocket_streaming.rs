//! The WebSocket streaming protocols (`caisson_shim::streaming::websocket`)
//! against clients: the Python `kubernetes` package's own
//! `kubernetes.stream.ws_client` (an independent implementation, from the
//! interop venv `make deps` makes) and a small tungstenite client here for
//! what the Python one does not speak (base64, no subprotocol, idle
//! timeout, a client that vanishes).
//!
//! The server is a tiny one in this file: it answers the upgrade with the
//! module's `negotiate`/`accept_key`, then hands the connection to
//! `serve_remotecommand` with fake commands, or to `serve_portforward`
//! with a dialer of 127.0.0.1 ports (an echo server, a refused port).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use caisson_shim::streaming::websocket::{
    accept_key, negotiate, offered_protocols, ports_from_query, serve_portforward,
    serve_remotecommand, PORTFORWARD_PROTOCOLS, REMOTECOMMAND_PROTOCOLS,
};
use caisson_shim::streaming::{
    Duplex, PortDialer, RemoteCommand, SessionEnd, SessionLimits, SessionStreams, StreamOptions,
    TermSize,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- commands

/// What a fake command saw by the time it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ended {
    command: &'static str,
    stdin_eof: bool,
    write_failed: bool,
    client_gone: bool,
}

type Events = mpsc::UnboundedSender<Ended>;

/// Echoes stdin upper-cased until its end or a line `exit`; then `done`
/// on stderr and exit code 3.
struct UpperEcho(Events);

#[tonic::async_trait]
impl RemoteCommand for UpperEcho {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        let mut stdin = streams.stdin.take().expect("stdin");
        let mut stdout = streams.stdout.take().expect("stdout");
        let mut stderr = streams.stderr.take().expect("stderr");
        let (mut seen, mut buffer, mut stdin_eof) = (Vec::new(), [0u8; 1024], false);
        loop {
            match stdin.read(&mut buffer).await {
                Ok(0) | Err(_) => {
                    stdin_eof = true;
                    break;
                }
                Ok(read) => {
                    stdout
                        .write_all(&buffer[..read].to_ascii_uppercase())
                        .await
                        .unwrap();
                    seen.extend_from_slice(&buffer[..read]);
                    if seen.windows(5).any(|w| w == b"exit\n") {
                        break;
                    }
                }
            }
        }
        stderr.write_all(b"done\n").await.unwrap();
        let _ = self.0.send(Ended {
            command: "upper",
            stdin_eof,
            write_failed: false,
            client_gone: false,
        });
        SessionEnd::ExitCode(3)
    }
}

/// No stdin: `out` on stdout, `err` on stderr, success.
struct Hello;

#[tonic::async_trait]
impl RemoteCommand for Hello {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        assert!(streams.stdin.is_none() && streams.resize.is_none());
        streams
            .stdout
            .as_mut()
            .unwrap()
            .write_all(b"out\n")
            .await
            .unwrap();
        streams
            .stderr
            .as_mut()
            .unwrap()
            .write_all(b"err\n")
            .await
            .unwrap();
        SessionEnd::Success
    }
}

/// A terminal: `size WxH` on stdout for each resize, until stdin says
/// `exit` or ends.
struct Tty;

#[tonic::async_trait]
impl RemoteCommand for Tty {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        assert!(streams.stderr.is_none());
        let mut stdin = streams.stdin.take().expect("stdin");
        let mut stdout = streams.stdout.take().expect("stdout");
        let mut resize = streams.resize.take().expect("resize with a tty");
        let (mut seen, mut buffer) = (Vec::new(), [0u8; 1024]);
        loop {
            tokio::select! {
                biased;
                Some(TermSize { width, height }) = resize.recv() => {
                    stdout.write_all(format!("size {width}x{height}\n").as_bytes()).await.unwrap();
                }
                read = stdin.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        seen.extend_from_slice(&buffer[..read]);
                        if seen.windows(5).any(|w| w == b"exit\n") {
                            break;
                        }
                    }
                },
            }
        }
        SessionEnd::Success
    }
}

/// Writes lines until a write fails (its client is gone), then waits for
/// `client_gone`.
struct Chatty(Events);

#[tonic::async_trait]
impl RemoteCommand for Chatty {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        let mut stdout = streams.stdout.take().expect("stdout");
        let mut write_failed = false;
        for _ in 0..1_000_000 {
            if stdout.write_all(b"tick\n").await.is_err() {
                write_failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        let client_gone = streams.client_gone.await.is_err();
        let _ = self.0.send(Ended {
            command: "chatty",
            stdin_eof: false,
            write_failed,
            client_gone,
        });
        SessionEnd::Error("client went away".into())
    }
}

/// Says nothing; waits for stdin's end and `client_gone`.
struct Quiet(Events);

#[tonic::async_trait]
impl RemoteCommand for Quiet {
    async fn run(self: Box<Self>, mut streams: SessionStreams) -> SessionEnd {
        let mut stdin = streams.stdin.take().expect("stdin");
        let mut sink = Vec::new();
        let stdin_eof = stdin.read_to_end(&mut sink).await.is_ok();
        let client_gone = streams.client_gone.await.is_err();
        let _ = self.0.send(Ended {
            command: "quiet",
            stdin_eof,
            write_failed: false,
            client_gone,
        });
        SessionEnd::Success
    }
}

// ------------------------------------------------------------------ server

/// Dials 127.0.0.1: the test's stand-in for a pod's network namespace.
struct LoopbackDialer;

#[tonic::async_trait]
impl PortDialer for LoopbackDialer {
    async fn dial(&self, port: u16) -> std::io::Result<Box<dyn Duplex>> {
        Ok(Box::new(TcpStream::connect(("127.0.0.1", port)).await?))
    }
}

struct TestServer {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Ended>,
    /// A port with an echo server behind it.
    echo_port: u16,
    /// A port nothing listens on.
    refused_port: u16,
}

impl TestServer {
    async fn start(limits: SessionLimits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_connection(tcp, limits, events_tx.clone()));
            }
        });
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = tcp.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    let _ = writer.shutdown().await;
                });
            }
        });
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused_port = refused.local_addr().unwrap().port();
        drop(refused);
        TestServer {
            addr,
            events,
            echo_port,
            refused_port,
        }
    }

    async fn next_event(&mut self) -> Ended {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("a fake command to end in time")
            .expect("the server is up")
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// Reads an HTTP request head, answers the WebSocket upgrade as the server
/// core will, and serves the path's session.
async fn serve_connection(mut tcp: TcpStream, limits: SessionLimits, events: Events) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if tcp.read_exact(&mut byte).await.is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let target = lines.next().unwrap().split(' ').nth(1).unwrap().to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let supported = if path == "/portforward" {
        PORTFORWARD_PROTOCOLS
    } else {
        REMOTECOMMAND_PROTOCOLS
    };
    let offered = offered_protocols(
        headers
            .get("sec-websocket-protocol")
            .map_or("", String::as_str),
    );
    let Some(protocol) = negotiate(&offered, supported) else {
        let _ = tcp
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(headers["sec-websocket-key"].as_bytes())
    );
    if !protocol.is_empty() {
        answer.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    answer.push_str("\r\n");
    tcp.write_all(answer.as_bytes()).await.unwrap();

    let io: Box<dyn Duplex> = Box::new(tcp);
    let streams = |stdin, stdout, stderr, tty| StreamOptions {
        stdin,
        stdout,
        stderr,
        tty,
    };
    let result = match path {
        "/portforward" => {
            let ports = ports_from_query(query).unwrap();
            serve_portforward(io, protocol, ports, Arc::new(LoopbackDialer), limits).await
        }
        "/exec/upper" => {
            let cmd = Box::new(UpperEcho(events));
            serve_remotecommand(io, protocol, streams(true, true, true, false), cmd, limits).await
        }
        "/exec/hello" => {
            serve_remotecommand(
                io,
                protocol,
                streams(false, true, true, false),
                Box::new(Hello),
                limits,
            )
            .await
        }
        "/exec/tty" => {
            serve_remotecommand(
                io,
                protocol,
                streams(true, true, false, true),
                Box::new(Tty),
                limits,
            )
            .await
        }
        "/exec/chatty" => {
            let cmd = Box::new(Chatty(events));
            serve_remotecommand(
                io,
                protocol,
                streams(false, true, false, false),
                cmd,
                limits,
            )
            .await
        }
        "/exec/quiet" => {
            let cmd = Box::new(Quiet(events));
            serve_remotecommand(io, protocol, streams(true, true, false, false), cmd, limits).await
        }
        other => panic!("no session at {other}"),
    };
    if let Err(error) = result {
        eprintln!("session {path} ended: {error}");
    }
}

// ----------------------------------------------------------- Python client

fn ws_client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ws_client.py")
}

/// Runs `ws_client.py` with `args` and returns the JSON it prints.
async fn python(args: Vec<String>) -> Value {
    let interpreter = caisson_tests::require::python_kubernetes();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(interpreter)
            .arg(ws_client_script())
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ws_client.py failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ws_client.py printed no JSON ({e}): {stdout}"))
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_v5_exec_closes_stdin_and_reads_the_exit_code() {
    let mut server = TestServer::start(SessionLimits::default()).await;
    // The package offers `v5.channel.k8s.io,v4.channel.k8s.io` by default.
    let got = python(args(&[
        "exec",
        &server.url("/exec/upper"),
        "--stdin",
        "hello\n",
        "--close-stdin",
    ]))
    .await;
    assert_eq!(got["protocol"], "v5.channel.k8s.io", "{got}");
    assert_eq!(got["stdout"], "HELLO\n", "{got}");
    assert_eq!(got["stderr"], "done\n", "{got}");
    assert_eq!(got["status"]["status"], "Failure", "{got}");
    assert_eq!(got["status"]["reason"], "NonZeroExitCode", "{got}");
    assert_eq!(got["returncode"], 3, "{got}");
    assert_eq!(got["closed"], true, "{got}");
    let ended = server.next_event().await;
    assert!(
        ended.stdin_eof,
        "v5's close of channel 0 ends stdin: {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_v4_exec_separates_stdout_and_stderr() {
    let mut server = TestServer::start(SessionLimits::default()).await;
    let v4 = "v4.channel.k8s.io";
    let hello = python(args(&[
        "exec",
        &server.url("/exec/hello"),
        "--protocol",
        v4,
    ]))
    .await;
    assert_eq!(hello["protocol"], v4, "{hello}");
    assert_eq!(hello["stdout"], "out\n", "{hello}");
    assert_eq!(hello["stderr"], "err\n", "{hello}");
    assert_eq!(
        hello["status"],
        serde_json::json!({"metadata": {}, "status": "Success"}),
        "{hello}"
    );
    assert_eq!(hello["returncode"], 0, "{hello}");

    let upper = python(args(&[
        "exec",
        &server.url("/exec/upper"),
        "--protocol",
        v4,
        "--stdin",
        "hi\nexit\n",
    ]))
    .await;
    assert_eq!(upper["stdout"], "HI\nEXIT\n", "{upper}");
    assert_eq!(upper["returncode"], 3, "{upper}");
    assert!(!server.next_event().await.stdin_eof);
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_tty_resizes_reach_the_command() {
    let server = TestServer::start(SessionLimits::default()).await;
    let got = python(args(&[
        "exec",
        &server.url("/exec/tty"),
        "--protocol",
        "v4.channel.k8s.io",
        "--resize",
        "100x30",
        "--wait-stdout",
        "size 100x30",
        "--resize",
        "120x40",
        "--wait-stdout",
        "size 120x40",
        "--stdin",
        "exit\n",
    ]))
    .await;
    assert_eq!(got["stdout"], "size 100x30\nsize 120x40\n", "{got}");
    assert_eq!(got["stderr"], "", "{got}");
    assert_eq!(got["returncode"], 0, "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_port_forward_echoes_and_reports_a_refused_port() {
    let server = TestServer::start(SessionLimits::default()).await;
    let (echo, refused) = (server.echo_port, server.refused_port);
    let url = server.url(&format!("/portforward?port={echo}&port={refused}"));
    let payload = "x".repeat(100_000);
    let got = python(args(&[
        "portforward",
        &url,
        "--port",
        &format!("{echo}:{payload}"),
        "--port",
        &refused.to_string(),
    ]))
    .await;
    let echoed = &got["ports"][echo.to_string()];
    assert_eq!(
        echoed["received"].as_str().map(str::len),
        Some(payload.len()),
        "{echoed:?}"
    );
    assert!(
        echoed["received"] == payload.as_str(),
        "the echo came back changed"
    );
    assert_eq!(echoed["error"], Value::Null, "{got}");
    let failed = &got["ports"][refused.to_string()];
    let error = failed["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error for the refused port: {got}"));
    assert!(
        error.contains(&format!("error forwarding port {refused}")),
        "{error}"
    );
}

// ------------------------------------------------------------- Rust client

type Client = WebSocketStream<TcpStream>;

/// Opens `path` offering `protocols` (no header when `None`); returns the
/// client and the protocol the server chose.
async fn connect(
    addr: SocketAddr,
    path: &str,
    protocols: Option<&str>,
) -> (Client, Option<String>) {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    (client, chosen)
}

/// Every data message until the server closes, as (channel, payload) in
/// order, and the close code.
async fn read_to_close(
    client: &mut Client,
    base64: bool,
) -> (Vec<(u8, Vec<u8>)>, Option<CloseCode>) {
    let mut messages = Vec::new();
    loop {
        let next = tokio::time::timeout(DEADLINE, client.next())
            .await
            .expect("the server to close in time");
        match next {
            Some(Ok(Message::Binary(data))) if !base64 => {
                messages.push((data[0], data[1..].to_vec()))
            }
            Some(Ok(Message::Text(text))) if base64 => {
                let channel = text.as_bytes()[0] - b'0';
                messages.push((channel, BASE64.decode(&text.as_bytes()[1..]).unwrap()));
            }
            Some(Ok(Message::Close(frame))) => return (messages, frame.map(|f| f.code)),
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(error)) => panic!("connection broke: {error}"),
            None => return (messages, None),
        }
    }
}

fn channel_bytes(messages: &[(u8, Vec<u8>)], channel: u8) -> Vec<u8> {
    messages
        .iter()
        .filter(|(c, _)| *c == channel)
        .flat_map(|(_, d)| d.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn base64_protocol_frames_as_text_and_reports_legacy_errors() {
    let mut server = TestServer::start(SessionLimits::default()).await;
    let (mut client, chosen) =
        connect(server.addr, "/exec/upper", Some("base64.channel.k8s.io")).await;
    assert_eq!(chosen.as_deref(), Some("base64.channel.k8s.io"));
    client
        .send(Message::Text(format!("0{}", BASE64.encode("abc\n")).into()))
        .await
        .unwrap();
    client
        .send(Message::Text(
            format!("0{}", BASE64.encode("exit\n")).into(),
        ))
        .await
        .unwrap();
    let (messages, close) = read_to_close(&mut client, true).await;
    // Kubelet's first message: empty, on the lowest writable channel.
    assert_eq!(messages[0], (1, Vec::new()));
    assert_eq!(channel_bytes(&messages, 1), b"ABC\nEXIT\n");
    assert_eq!(channel_bytes(&messages, 2), b"done\n");
    assert_eq!(
        String::from_utf8(channel_bytes(&messages, 3)).unwrap(),
        "command terminated with non-zero exit code: exit status 3"
    );
    assert_eq!(close, Some(CloseCode::Normal));
    server.next_event().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_subprotocol_is_channel_k8s_io() {
    let server = TestServer::start(SessionLimits::default()).await;
    let (mut client, chosen) = connect(server.addr, "/exec/hello", None).await;
    assert_eq!(
        chosen, None,
        "kubelet answers a client that offered none without a protocol"
    );
    let (messages, close) = read_to_close(&mut client, false).await;
    assert_eq!(messages[0], (1, Vec::new()));
    assert_eq!(channel_bytes(&messages, 1), b"out\n");
    assert_eq!(channel_bytes(&messages, 2), b"err\n");
    assert!(
        channel_bytes(&messages, 3).is_empty(),
        "legacy protocols say nothing on success"
    );
    assert_eq!(close, Some(CloseCode::Normal));
}

#[tokio::test(flavor = "multi_thread")]
async fn pings_are_answered_and_a_client_close_ends_stdin() {
    let mut server = TestServer::start(SessionLimits::default()).await;
    let (mut client, _) = connect(server.addr, "/exec/quiet", Some("v5.channel.k8s.io")).await;
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, client.next()).await.unwrap() {
            Some(Ok(Message::Pong(data))) => {
                assert_eq!(&data[..], b"are you there");
                break;
            }
            Some(Ok(Message::Binary(data))) => {
                assert_eq!(&data[..], [1], "only the first empty message")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    client.close(None).await.unwrap();
    let ended = server.next_event().await;
    assert_eq!(
        ended,
        Ended {
            command: "quiet",
            stdin_eof: true,
            write_failed: false,
            client_gone: true
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_subprotocols_are_refused() {
    let server = TestServer::start(SessionLimits::default()).await;
    let mut request = server.url("/exec/hello").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v9.channel.k8s.io".parse().unwrap(),
    );
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let error = tokio_tungstenite::client_async(request, tcp)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("403"), "{error}");
    // Port-forward does not speak v5 (kubelet's does not either).
    let mut request = server
        .url("/portforward?port=1")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    assert!(tokio_tungstenite::client_async(request, tcp).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_fails_writes_and_signals_client_gone() {
    let mut server = TestServer::start(SessionLimits::default()).await;
    let (mut client, _) = connect(server.addr, "/exec/chatty", Some("v4.channel.k8s.io")).await;
    // Output is flowing: the empty first message, then ticks.
    loop {
        let message = tokio::time::timeout(DEADLINE, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message.into_data().ends_with(b"tick\n") {
            break;
        }
    }
    drop(client);
    let ended = server.next_event().await;
    assert_eq!(
        ended,
        Ended {
            command: "chatty",
            stdin_eof: false,
            write_failed: true,
            client_gone: true
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_and_ends_stdin() {
    let limits = SessionLimits {
        idle_timeout: Duration::from_millis(300),
        ..SessionLimits::default()
    };
    let mut server = TestServer::start(limits).await;
    let (mut client, _) = connect(server.addr, "/exec/quiet", Some("v4.channel.k8s.io")).await;
    let (mut messages, close) = read_to_close(&mut client, false).await;
    // The idle timeout ends the command's stdin; "quiet" then ends, and its
    // Success status may be queued before the close goes out (the writer
    // sends what is queued first). Nothing else may come.
    if messages.len() == 2 && messages[1].0 == 3 {
        let status: serde_json::Value = serde_json::from_slice(&messages[1].1).unwrap();
        assert_eq!(status["status"], "Success", "{status}");
        messages.pop();
    }
    assert_eq!(
        messages,
        vec![(1, Vec::new())],
        "only the first empty message (and perhaps the status)"
    );
    assert_eq!(close, Some(CloseCode::Away));
    let ended = server.next_event().await;
    assert_eq!(
        ended,
        Ended {
            command: "quiet",
            stdin_eof: true,
            write_failed: false,
            client_gone: true
        }
    );
}

/// One v4.base64 port-forward session to the echo server and the refused
/// port; `tag` marks its data.
async fn base64_port_forward(server_addr: SocketAddr, echo: u16, refused: u16, tag: &str) {
    let path = format!("/portforward?port={echo}&port={refused}");
    let (mut client, chosen) = connect(server_addr, &path, Some("v4.base64.channel.k8s.io")).await;
    assert_eq!(chosen.as_deref(), Some("v4.base64.channel.k8s.io"));
    let text = |channel: char, data: &[u8]| {
        Message::Text(format!("{channel}{}", BASE64.encode(data)).into())
    };
    let mut expected = Vec::new();
    for round in 0..3 {
        let data = format!("{tag} round {round}\n");
        client.send(text('0', data.as_bytes())).await.unwrap();
        expected.extend_from_slice(data.as_bytes());
    }
    let (mut firsts, mut echoed, mut error) = (HashMap::new(), Vec::new(), Vec::new());
    while echoed.len() < expected.len() || error.is_empty() {
        let message = tokio::time::timeout(DEADLINE, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(message) = message else {
            panic!("binary on a base64 protocol: {message:?}")
        };
        let channel = message.as_bytes()[0] - b'0';
        let data = BASE64.decode(&message.as_bytes()[1..]).unwrap();
        if let std::collections::hash_map::Entry::Vacant(first) = firsts.entry(channel) {
            first.insert(data);
            continue;
        }
        match channel {
            0 => echoed.extend(data),
            3 => error.extend(data),
            other => panic!("{tag}: data on channel {other}"),
        }
    }
    // The first message on each channel is its port, little-endian, alone.
    for (channel, port) in [(0, echo), (1, echo), (2, refused), (3, refused)] {
        assert_eq!(
            firsts.get(&channel),
            Some(&port.to_le_bytes().to_vec()),
            "{tag} channel {channel}"
        );
    }
    assert_eq!(echoed, expected, "{tag}");
    let error = String::from_utf8(error).unwrap();
    assert!(
        error.starts_with(&format!("error forwarding port {refused}: ")),
        "{error}"
    );
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(DEADLINE, client.next()).await.unwrap() {}
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_base64_port_forwards_stay_apart() {
    let server = TestServer::start(SessionLimits::default()).await;
    let (echo, refused) = (server.echo_port, server.refused_port);
    tokio::join!(
        base64_port_forward(server.addr, echo, refused, "first"),
        base64_port_forward(server.addr, echo, refused, "second"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_closes_when_the_pod_closes_every_port() {
    // A server that answers one line and closes, like an HTTP/1.0 server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        tcp.write_all(b"bye\n").await.unwrap();
    });
    let server = TestServer::start(SessionLimits::default()).await;
    let (mut client, _) = connect(
        server.addr,
        &format!("/portforward?port={port}"),
        Some("v4.channel.k8s.io"),
    )
    .await;
    let (messages, close) = read_to_close(&mut client, false).await;
    let prefix = port.to_le_bytes().to_vec();
    assert_eq!(
        messages,
        vec![(0, prefix.clone()), (1, prefix), (0, b"bye\n".to_vec())]
    );
    assert_eq!(close, Some(CloseCode::Normal));
}
