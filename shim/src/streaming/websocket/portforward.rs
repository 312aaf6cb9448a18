//! Port-forward over a WebSocket, as kubelet's `portforward/websocket.go`
//! serves it.
//!
//! Port `i` of the request has two channels: data `2i` (both ways) and
//! error `2i+1` (server → client). The first message on each carries the
//! port as a little-endian `u16`, alone. Each port is dialed once, at the
//! start; client data waits for the dial. A failed dial, or a connection
//! that breaks, is reported as text on that port's error channel and leaves
//! the other ports alone. A port is done when the pod closes its side or
//! the client goes away; the WebSocket closes when every port is done.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::debug;

use super::connection::{client_gone, Codec, Inbound, InboundHandler, Outgoing, ReadEnd, Session};
use super::{WebSocketError, MAX_PORTS};
use crate::streaming::{Duplex, PortDialer, SessionLimits};

/// Client data queued per port while it is dialed or written.
const PORT_QUEUE: usize = 16;

/// The most a read from the pod sends in one message.
const READ_BUFFER: usize = 32 * 1024;

fn codec(protocol: &str) -> Option<Codec> {
    match protocol {
        "v4.channel.k8s.io" | "" => Some(Codec::Binary),
        "v4.base64.channel.k8s.io" => Some(Codec::Base64),
        _ => None,
    }
}

/// Serves one port-forward on an upgraded connection whose `101` named
/// `protocol` (from [`super::negotiate`] over
/// [`super::PORTFORWARD_PROTOCOLS`]; `""` when the client offered none).
/// `ports` are the CRI request's (kubelet's `BuildV4Options`), in order;
/// at most [`MAX_PORTS`].
pub async fn serve_portforward(
    io: Box<dyn Duplex>,
    protocol: &str,
    ports: Vec<u16>,
    dialer: Arc<dyn PortDialer>,
    limits: SessionLimits,
) -> Result<(), WebSocketError> {
    let codec =
        codec(protocol).ok_or_else(|| WebSocketError::UnsupportedProtocol(protocol.to_string()))?;
    if ports.len() > MAX_PORTS {
        return Err(WebSocketError::TooManyPorts { count: ports.len() });
    }
    let mut feeds = Vec::with_capacity(ports.len());
    let mut from_client = Vec::with_capacity(ports.len());
    for _ in &ports {
        let (tx, rx) = mpsc::channel(PORT_QUEUE);
        feeds.push(Some(tx));
        from_client.push(rx);
    }
    let session = Session::open(io, codec, false, limits, PortInbound { feeds }).await;

    for (index, port) in ports.iter().enumerate() {
        let prefix = port.to_le_bytes().to_vec();
        session.send(data_channel(index), prefix.clone()).await;
        session.send(error_channel(index), prefix).await;
    }
    let mut forwards = JoinSet::new();
    for ((index, port), from_client) in ports.into_iter().enumerate().zip(from_client) {
        forwards.spawn(forward_port(
            index,
            port,
            from_client,
            dialer.clone(),
            session.sender(),
            session.ended(),
        ));
    }
    while forwards.join_next().await.is_some() {}
    session.finish().await
}

fn data_channel(index: usize) -> u8 {
    (2 * index) as u8
}

fn error_channel(index: usize) -> u8 {
    (2 * index + 1) as u8
}

/// Client data on the data channels, to each port's forwarder.
struct PortInbound {
    feeds: Vec<Option<mpsc::Sender<Vec<u8>>>>,
}

impl InboundHandler for PortInbound {
    async fn handle(&mut self, message: Inbound) {
        let Inbound::Data { channel, data } = message else {
            return;
        };
        if channel % 2 != 0 || data.is_empty() {
            return;
        }
        let Some(slot) = self.feeds.get_mut(usize::from(channel / 2)) else {
            debug!(channel, "ignoring data on a channel of no requested port");
            return;
        };
        if let Some(feed) = slot {
            if feed.send(data).await.is_err() {
                // That port is done: what comes later has nowhere to go.
                *slot = None;
            }
        }
    }
}

/// One port: dial, then copy both ways until the pod closes its side, the
/// connection breaks, or the client goes away.
async fn forward_port(
    index: usize,
    port: u16,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    dialer: Arc<dyn PortDialer>,
    out: mpsc::Sender<Outgoing>,
    mut ended: watch::Receiver<ReadEnd>,
) {
    let report = |error: std::io::Error| {
        let out = out.clone();
        async move {
            debug!(port, %error, "port-forward failed");
            let text = format!("error forwarding port {port}: {error}");
            let message = Outgoing::Data {
                channel: error_channel(index),
                data: Bytes::from(text),
            };
            let _ = out.send(message).await;
        }
    };
    let dialed = tokio::select! {
        dialed = dialer.dial(port) => dialed,
        () = client_gone(&mut ended) => return,
    };
    let connection = match dialed {
        Ok(connection) => connection,
        Err(error) => return report(error).await,
    };
    let (mut pod_reader, mut pod_writer) = tokio::io::split(connection);
    let to_pod = async {
        while let Some(data) = from_client.recv().await {
            pod_writer.write_all(&data).await?;
        }
        // The client is gone: let the pod see the end of its input.
        pod_writer.shutdown().await
    };
    let from_pod = async {
        let mut buffer = vec![0u8; READ_BUFFER];
        loop {
            let read = pod_reader.read(&mut buffer).await?;
            if read == 0 {
                return Ok(());
            }
            let message = Outgoing::Data {
                channel: data_channel(index),
                data: Bytes::copy_from_slice(&buffer[..read]),
            };
            if out.send(message).await.is_err() {
                return Ok(());
            }
        }
    };
    let result: std::io::Result<()> = tokio::select! {
        result = to_pod => result,
        result = from_pod => result,
        () = client_gone(&mut ended) => Ok(()),
    };
    if let Err(error) = result {
        report(error).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_map_to_their_framing() {
        assert_eq!(codec("v4.channel.k8s.io"), Some(Codec::Binary));
        assert_eq!(codec(""), Some(Codec::Binary));
        assert_eq!(codec("v4.base64.channel.k8s.io"), Some(Codec::Base64));
        assert_eq!(codec("v5.channel.k8s.io"), None);
        assert_eq!(codec("portforward.k8s.io"), None);
        for protocol in super::super::PORTFORWARD_PROTOCOLS {
            assert!(codec(protocol).is_some(), "{protocol}");
        }
    }

    #[test]
    fn ports_have_a_data_and_an_error_channel() {
        assert_eq!((data_channel(0), error_channel(0)), (0, 1));
        assert_eq!((data_channel(2), error_channel(2)), (4, 5));
        assert_eq!(
            (data_channel(MAX_PORTS - 1), error_channel(MAX_PORTS - 1)),
            (254, 255)
        );
    }
}
