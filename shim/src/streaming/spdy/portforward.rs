//! Port forwarding over SPDY (`portforward.k8s.io`), as kubelet's
//! `cri/streaming/portforward/httpstream.go` serves it.
//!
//! Each forwarded connection is a pair of client streams carrying the same
//! `requestID` and `port` headers: `streamType: error` and `streamType:
//! data`. When both are there the port is dialed in the pod and bytes are
//! copied both ways; a dial that fails writes its error on the request's
//! error stream and leaves the other requests alone.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conn::{Connection, IncomingStream};
use super::remotecommand::STREAM_TYPE;
use super::stream::{StreamHandle, StreamReader, StreamWriter};
use crate::streaming::{Duplex, PortDialer, SessionLimits};

/// The port-forward subprotocols.
pub const PORTFORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

const PORT: &str = "port";
const REQUEST_ID: &str = "requestid";

struct Half {
    reader: StreamReader,
    writer: StreamWriter,
    handle: StreamHandle,
}

struct Pending {
    port: u16,
    error: Option<Half>,
    data: Option<Half>,
    deadline: Instant,
}

/// Serves port forwarding for one pod on an upgraded connection, until the
/// client closes it (or it idles out) and every forwarded connection ended.
pub async fn serve_portforward(
    io: Box<dyn Duplex>,
    dialer: Arc<dyn PortDialer>,
    limits: SessionLimits,
) {
    let mut conn = Connection::new(io, &limits);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        tokio::select! {
            incoming = conn.accept() => {
                let Some(incoming) = incoming else { break };
                let Some((request_id, port, kind)) = check_stream(&incoming) else {
                    incoming.refuse();
                    continue;
                };
                let (reader, writer, handle) = incoming.reply();
                let half = Half { reader, writer, handle };
                let pair = pending.entry(request_id.clone()).or_insert_with(|| Pending {
                    port,
                    error: None,
                    data: None,
                    deadline: Instant::now() + limits.stream_creation_timeout,
                });
                let slot = if kind == Kind::Error { &mut pair.error } else { &mut pair.data };
                if slot.is_some() {
                    let message = format!(
                        "error processing stream for request {request_id}: {} stream already assigned",
                        kind.name()
                    );
                    tracing::warn!("{message}");
                    if let Some(error) = pair.error.as_mut() {
                        let _ = error.writer.write_all(message.as_bytes()).await;
                    }
                    continue;
                }
                *slot = Some(half);
                if pair.error.is_some() && pair.data.is_some() {
                    let pair = pending.remove(&request_id).expect("the pair is there");
                    let (Some(error), Some(data)) = (pair.error, pair.data) else { continue };
                    forwards.spawn(forward(dialer.clone(), pair.port, error, data));
                }
            }
            () = sleep_until(next_deadline), if next_deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for request_id in expired {
                    let Some(pair) = pending.remove(&request_id) else { continue };
                    let message = format!("request {request_id}: timed out waiting for streams");
                    tracing::warn!("{message}");
                    if let Some(mut error) = pair.error {
                        let _ = error.writer.write_all(message.as_bytes()).await;
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // No new streams: the client sent GOAWAY or left. Let the forwarded
    // connections finish (they end on their own when the client has gone).
    drop(pending);
    while forwards.join_next().await.is_some() {}
    conn.close().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Error => "error",
            Kind::Data => "data",
        }
    }
}

/// A stream's request id, port and kind, as kubelet's
/// `httpStreamReceived` checks them (`None`: refuse it). A client too old
/// to send `requestID` gets kubelet's guess: the error stream's id, which
/// the data stream opened right after it has plus two.
fn check_stream(incoming: &IncomingStream) -> Option<(String, u16, Kind)> {
    let headers = incoming.headers();
    let port = match headers.get(PORT).map(str::parse::<u16>) {
        Some(Ok(port)) if port > 0 => port,
        other => {
            tracing::warn!(port = ?other, "port-forward stream without a valid port header");
            return None;
        }
    };
    let kind = match headers.get(STREAM_TYPE) {
        Some("error") => Kind::Error,
        Some("data") => Kind::Data,
        other => {
            tracing::warn!(stream_type = ?other, "port-forward stream of no known type");
            return None;
        }
    };
    let request_id = match headers.get(REQUEST_ID) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => match kind {
            Kind::Error => incoming.id().to_string(),
            Kind::Data => (i64::from(incoming.id()) - 2).to_string(),
        },
    };
    Some((request_id, port, kind))
}

/// One forwarded connection: dial, then copy both ways until either side
/// is done with it, the client resets the data stream or leaves.
async fn forward(dialer: Arc<dyn PortDialer>, port: u16, error: Half, data: Half) {
    let Half {
        reader: error_reader,
        writer: mut error_writer,
        handle: _,
    } = error;
    drop(error_reader);
    let Half {
        reader: mut from_client,
        writer: mut to_client,
        handle: data_handle,
    } = data;
    match dialer.dial(port).await {
        Err(e) => {
            let message = format!("error forwarding port {port} to pod: {e}");
            tracing::debug!("{message}");
            let _ = error_writer.write_all(message.as_bytes()).await;
        }
        Ok(pod) => {
            let (from_pod, mut to_pod): (_, WriteHalf<Box<dyn Duplex>>) = tokio::io::split(pod);
            let upstream = async {
                let _ = tokio::io::copy(&mut from_client, &mut to_pod).await;
                let _ = to_pod.shutdown().await;
            };
            let downstream = async {
                // 64 KiB reads from the pod (tokio::io::copy reads 8 KiB):
                // fewer wake-ups of the SPDY writer per MB.
                let mut from_pod = tokio::io::BufReader::with_capacity(64 * 1024, from_pod);
                let _ = tokio::io::copy_buf(&mut from_pod, &mut to_client).await;
                let _ = to_client.shutdown().await;
            };
            tokio::select! {
                _ = async { tokio::join!(upstream, downstream) } => {}
                () = data_handle.aborted() => {}
            }
        }
    }
    let _ = error_writer.shutdown().await;
}
