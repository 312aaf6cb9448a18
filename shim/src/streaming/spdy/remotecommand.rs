//! Exec and attach over SPDY, as kubelet's
//! `cri/streaming/remotecommand/httpstream.go` serves them.
//!
//! The client opens one stream per channel, named by its `streamType`
//! header: `error`, then `stdin`, `stdout`, `stderr` as the request asked,
//! and (v3 and later, with a tty) `resize`. Once they are all there the
//! command runs; its end goes on the error stream: a `Status` object
//! (v4), or the error's text and nothing on success (v1–v3).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::conn::Connection;
use super::stream::{StreamHandle, StreamReader, StreamWriter};
use crate::streaming::{
    Duplex, RemoteCommand, SessionLimits, SessionStreams, StreamOptions, TermSize,
};

/// The remotecommand subprotocols, in kubelet's order of preference.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The stream-type header (`api.StreamType`; names are lower case on the
/// wire).
pub(crate) const STREAM_TYPE: &str = "streamtype";

/// Resizes queued for a command that reads them slower than they come.
const RESIZE_QUEUE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    /// kubelet falls back to v1 for an empty or unknown protocol.
    fn from_protocol(protocol: &str) -> Version {
        match protocol {
            "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            _ => Version::V1,
        }
    }

    fn resizes(self) -> bool {
        self >= Version::V3
    }
}

struct Channel {
    reader: StreamReader,
    writer: StreamWriter,
    handle: StreamHandle,
}

#[derive(Default)]
struct Channels {
    error: Option<Channel>,
    stdin: Option<Channel>,
    stdout: Option<Channel>,
    stderr: Option<Channel>,
    resize: Option<Channel>,
}

/// Serves one exec or attach on an upgraded connection speaking
/// `protocol` (the negotiated `X-Stream-Protocol-Version`). Returns when
/// the command has ended and the client has its status, or the client
/// did not open its streams within `limits.stream_creation_timeout`, or it
/// went away.
pub async fn serve_remotecommand(
    io: Box<dyn Duplex>,
    protocol: &str,
    opts: StreamOptions,
    cmd: Box<dyn RemoteCommand>,
    limits: SessionLimits,
) {
    let version = Version::from_protocol(protocol);
    let mut opts = opts;
    if opts.tty {
        // kubelet: a tty has no separate stderr.
        opts.stderr = false;
    }
    let mut conn = Connection::new(io, &limits);
    let Some(channels) =
        wait_for_streams(&mut conn, version, opts, limits.stream_creation_timeout).await
    else {
        conn.close().await;
        return;
    };

    let Channels {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    } = channels;
    let mut finish = Vec::new();
    let stdin = stdin.map(|c| {
        // Ours to the client on the stdin stream: nothing (v1 closes it
        // right away, the others never write).
        drop(c.writer);
        Box::new(c.reader) as crate::streaming::ByteReader
    });
    let mut output = |channel: Option<Channel>| {
        channel.map(|c| {
            finish.push(c.handle);
            Box::new(c.writer) as crate::streaming::ByteWriter
        })
    };
    let stdout = output(stdout);
    let stderr = output(stderr);
    let resize = resize.map(|c| {
        drop(c.writer);
        let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
        tokio::spawn(forward_resizes(c.reader, tx));
        rx
    });
    let streams = SessionStreams {
        stdin,
        stdout,
        stderr,
        resize,
        client_gone: conn.client_gone(),
    };

    let end = cmd.run(streams).await;
    tracing::debug!(?end, ?version, "remote command ended");

    for handle in &finish {
        handle.finish().await;
    }
    if let Some(Channel {
        reader,
        mut writer,
        handle,
    }) = error
    {
        drop(reader);
        let message = match version {
            Version::V4 => Some(end.status_json()),
            _ => end.legacy_error_text(),
        };
        if let Some(message) = message {
            let _ = writer.write_all(&message).await;
        }
        drop(writer);
        handle.finish().await;
    }
    conn.close().await;
}

/// Accepts the client's streams until the expected number are there, as
/// kubelet's `waitForStreams` counts them: one per stream of a known type
/// (a later one of the same type replaces the earlier), others answered
/// and ignored.
async fn wait_for_streams(
    conn: &mut Connection,
    version: Version,
    opts: StreamOptions,
    timeout: Duration,
) -> Option<Channels> {
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && version.resizes());
    let deadline = Instant::now() + timeout;
    let mut channels = Channels::default();
    let mut received = 0;
    while received < expected {
        let incoming = match tokio::time::timeout_at(deadline, conn.accept()).await {
            Ok(Some(incoming)) => incoming,
            Ok(None) => {
                tracing::debug!("client left before opening its streams");
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    received,
                    expected,
                    "timed out waiting for client to create streams"
                );
                return None;
            }
        };
        let stream_type = incoming
            .headers()
            .get(STREAM_TYPE)
            .unwrap_or("")
            .to_string();
        let (reader, writer, handle) = incoming.reply();
        let channel = Channel {
            reader,
            writer,
            handle,
        };
        let slot = match stream_type.as_str() {
            "error" => &mut channels.error,
            "stdin" => &mut channels.stdin,
            "stdout" => &mut channels.stdout,
            "stderr" => &mut channels.stderr,
            "resize" if version.resizes() => &mut channels.resize,
            other => {
                tracing::warn!(stream_type = other, "unexpected stream type");
                continue;
            }
        };
        *slot = Some(channel);
        received += 1;
    }
    Some(channels)
}

/// Terminal sizes, JSON objects one after another, to the command. Keeps
/// reading (and dropping) if the command stops listening, so the client's
/// resizes never back up the connection.
async fn forward_resizes(mut reader: StreamReader, tx: mpsc::Sender<TermSize>) {
    let mut pending = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut listening = true;
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut sizes = serde_json::Deserializer::from_slice(&pending).into_iter::<TermSize>();
        let mut parsed = Vec::new();
        let mut consumed = 0;
        loop {
            match sizes.next() {
                Some(Ok(size)) => {
                    parsed.push(size);
                    consumed = sizes.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    // kubelet stops reading resizes at the first bad one.
                    tracing::debug!(error = %e, "bad terminal size on the resize stream");
                    return;
                }
                None => {
                    consumed = sizes.byte_offset();
                    break;
                }
            }
        }
        pending.drain(..consumed);
        for size in parsed {
            if listening && tx.send(size).await.is_err() {
                listening = false;
            }
        }
    }
}
