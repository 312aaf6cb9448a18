//! SPDY port forwarding in-process: `serve_portforward` on one end of a
//! pipe, `caisson_tests::spdy` (an independent client) on the other, and a
//! dialer to loopback echo servers standing in for the pod's ports.

use std::sync::Arc;
use std::time::Duration;

use caisson_shim::streaming::spdy::serve_portforward;
use caisson_shim::streaming::{Duplex, PortDialer, SessionLimits};
use caisson_tests::spdy::{PortForwardRequest, SpdyClient};
use tokio::io::DuplexStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(20);

fn limits() -> SessionLimits {
    SessionLimits {
        idle_timeout: Duration::from_secs(60),
        stream_creation_timeout: Duration::from_secs(10),
    }
}

async fn finished(served: JoinHandle<()>) {
    timeout(DEADLINE, served)
        .await
        .expect("the session ends")
        .expect("the session does not panic");
}

/// Dials 127.0.0.1:<port> (the test's stand-in for the pod's netns).
struct LoopbackDialer;

#[tonic::async_trait]
impl PortDialer for LoopbackDialer {
    async fn dial(&self, port: u16) -> std::io::Result<Box<dyn Duplex>> {
        Ok(Box::new(TcpStream::connect(("127.0.0.1", port)).await?))
    }
}

/// An echo server on loopback; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A loopback port nothing listens on.
async fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn start_portforward() -> (SpdyClient<DuplexStream>, JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve_portforward(
        Box::new(server),
        Arc::new(LoopbackDialer),
        limits(),
    ));
    (SpdyClient::new(client), served)
}

#[tokio::test]
async fn port_forward_carries_concurrent_requests_and_reports_a_refused_port() {
    let echo = echo_server().await;
    let refused = refused_port().await;
    let (mut client, served) = start_portforward();
    let run = async {
        let first = PortForwardRequest::open(&mut client, echo, Some("0"))
            .await
            .unwrap();
        let second = PortForwardRequest::open(&mut client, echo, Some("1"))
            .await
            .unwrap();
        let broken = PortForwardRequest::open(&mut client, refused, Some("2"))
            .await
            .unwrap();
        client
            .send(first.data, b"first request", false)
            .await
            .unwrap();
        client.send(second.data, b"second", false).await.unwrap();
        assert_eq!(client.read_exact(second.data, 6).await.unwrap(), b"second");
        assert_eq!(
            client.read_exact(first.data, 13).await.unwrap(),
            b"first request"
        );

        let error = String::from_utf8(client.read_to_end(broken.error).await.unwrap()).unwrap();
        assert!(
            error.contains(&format!("error forwarding port {refused}")),
            "{error}"
        );

        // The others carry on: a big round trip through the windows.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        client.send(first.data, &big, true).await.unwrap();
        let echoed = client.read_to_end(first.data).await.unwrap();
        assert_eq!(echoed, big);
        assert!(client.read_to_end(first.error).await.unwrap().is_empty());

        client.send(second.data, b"still here", true).await.unwrap();
        assert_eq!(
            client.read_to_end(second.data).await.unwrap(),
            b"still here"
        );

        // A client older than request ids: the stream-id rule pairs them.
        let old = PortForwardRequest::open(&mut client, echo, None)
            .await
            .unwrap();
        client.send(old.data, b"old client", true).await.unwrap();
        assert_eq!(client.read_to_end(old.data).await.unwrap(), b"old client");

        client.goaway().await.unwrap();
        client.wait_closed().await;
    };
    timeout(DEADLINE, run).await.unwrap();
    finished(served).await;
}

#[tokio::test]
async fn port_forward_refuses_streams_without_a_port_or_type() {
    let (mut client, served) = start_portforward();
    let run = async {
        let no_port = client
            .open(&[("streamType", "data"), ("requestID", "0")])
            .await
            .unwrap();
        assert!(client.wait_reply(no_port).await.is_err());
        let bad_type = client
            .open(&[("streamType", "stdin"), ("port", "80"), ("requestID", "1")])
            .await
            .unwrap();
        assert!(client.wait_reply(bad_type).await.is_err());
        // The connection still works.
        client.ping().await.unwrap();
        client.goaway().await.unwrap();
        client.wait_closed().await;
    };
    timeout(DEADLINE, run).await.unwrap();
    finished(served).await;
}

#[tokio::test]
async fn a_port_forward_client_that_leaves_frees_its_connections() {
    let echo = echo_server().await;
    let (mut client, served) = start_portforward();
    let request = PortForwardRequest::open(&mut client, echo, Some("0"))
        .await
        .unwrap();
    client.send(request.data, b"ping", false).await.unwrap();
    assert_eq!(client.read_exact(request.data, 4).await.unwrap(), b"ping");
    drop(client);
    finished(served).await;
}
