//! Exec and attach over a WebSocket, as kubelet's
//! `remotecommand/websocket.go` serves them (plus v5's stdin close, as the
//! API server's translator and client-go's v5 client speak it).
//!
//! Channels: 0 stdin (client → server), 1 stdout, 2 stderr, 3 error (the
//! session's status, once, at the end), 4 resize (client → server, JSON
//! terminal sizes); v5 adds 255, `[255, n]` closing the client's channel
//! `n`. A channel the options did not open is ignored both ways.

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::connection::{Codec, Inbound, InboundHandler, Session};
use super::WebSocketError;
use crate::streaming::{
    Duplex, RemoteCommand, SessionLimits, SessionStreams, StreamOptions, TermSize,
};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// Bytes of stdin the pipe to the command holds before the reader waits.
const STDIN_BUFFER: usize = 64 * 1024;

/// Terminal sizes queued for the command; more are dropped (and logged).
const RESIZE_QUEUE: usize = 32;

/// What the error channel carries at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusStyle {
    /// v4, v5: a Kubernetes `Status` object, success included.
    Status,
    /// `channel.k8s.io`, v2, v3: the error's text, nothing on success.
    Legacy,
}

/// What a remotecommand subprotocol means here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dialect {
    codec: Codec,
    status: StatusStyle,
    /// v5: `[255, n]` closes the client's channel `n`.
    close_signal: bool,
}

fn dialect(protocol: &str) -> Option<Dialect> {
    let (codec, status, close_signal) = match protocol {
        "v5.channel.k8s.io" => (Codec::Binary, StatusStyle::Status, true),
        "v4.channel.k8s.io" => (Codec::Binary, StatusStyle::Status, false),
        "v4.base64.channel.k8s.io" => (Codec::Base64, StatusStyle::Status, false),
        "v3.channel.k8s.io" | "v2.channel.k8s.io" | "channel.k8s.io" | "" => {
            (Codec::Binary, StatusStyle::Legacy, false)
        }
        "base64.channel.k8s.io" => (Codec::Base64, StatusStyle::Legacy, false),
        _ => return None,
    };
    Some(Dialect {
        codec,
        status,
        close_signal,
    })
}

/// Serves one exec or attach on an upgraded connection whose `101` named
/// `protocol` (from [`super::negotiate`] over
/// [`super::REMOTECOMMAND_PROTOCOLS`]; `""` when the client offered none).
///
/// Runs `cmd` with the streams `opts` asks for, sends what it writes as
/// channel 1/2 messages, then its end on channel 3 and a normal close. A
/// client that goes away (or an idle timeout) resolves the command's
/// `client_gone`, ends stdin and fails the output writers; the command is
/// still awaited (it decides how to end, see [`RemoteCommand::run`]). Errors tell how the connection ended badly;
/// the command's own failure is reported to the client, not here.
pub async fn serve_remotecommand(
    io: Box<dyn Duplex>,
    protocol: &str,
    opts: StreamOptions,
    cmd: Box<dyn RemoteCommand>,
    limits: SessionLimits,
) -> Result<(), WebSocketError> {
    let dialect = dialect(protocol)
        .ok_or_else(|| WebSocketError::UnsupportedProtocol(protocol.to_string()))?;
    let (stdin, stdin_feed) = if opts.stdin {
        let (command_end, feed) = tokio::io::duplex(STDIN_BUFFER);
        (Some(command_end), Some(feed))
    } else {
        (None, None)
    };
    let (resize, resize_feed) = if opts.tty {
        let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
        (
            Some(rx),
            Some(ResizeDecoder {
                sizes: tx,
                pending: Vec::new(),
            }),
        )
    } else {
        (None, None)
    };
    let (client_gone_tx, client_gone) = oneshot::channel();
    let handler = CommandInbound {
        stdin: stdin_feed,
        resize: resize_feed,
        _client_gone: client_gone_tx,
    };
    let session = Session::open(io, dialect.codec, dialect.close_signal, limits, handler).await;

    // As kubelet: an empty message on the lowest writable channel tells
    // the client the streams are there.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    session.send(first, Vec::new()).await;

    let streams = SessionStreams {
        stdin: stdin.map(|pipe| Box::new(pipe) as _),
        stdout: opts.stdout.then(|| Box::new(session.writer(STDOUT)) as _),
        stderr: opts.stderr.then(|| Box::new(session.writer(STDERR)) as _),
        resize,
        client_gone,
    };
    let end = cmd.run(streams).await;
    debug!(?end, protocol, "remote command ended");
    match dialect.status {
        StatusStyle::Status => session.send(ERROR, end.status_json()).await,
        StatusStyle::Legacy => {
            if let Some(text) = end.legacy_error_text() {
                session.send(ERROR, text).await;
            }
        }
    }
    session.finish().await
}

/// The client's stdin and resize channels, fed to the command.
struct CommandInbound {
    /// Our end of the command's stdin pipe: dropping it is stdin's EOF.
    stdin: Option<tokio::io::DuplexStream>,
    resize: Option<ResizeDecoder>,
    /// Dropped with the handler when the reader stops: the command's
    /// `client_gone`.
    _client_gone: oneshot::Sender<()>,
}

impl InboundHandler for CommandInbound {
    async fn handle(&mut self, message: Inbound) {
        match message {
            Inbound::Data {
                channel: STDIN,
                data,
            } => {
                if let Some(stdin) = &mut self.stdin {
                    if stdin.write_all(&data).await.is_err() {
                        // The command let go of its stdin: drop the rest.
                        self.stdin = None;
                    }
                }
            }
            Inbound::Data {
                channel: RESIZE,
                data,
            } => {
                if let Some(resize) = &mut self.resize {
                    resize.feed(&data);
                }
            }
            Inbound::Data { channel, .. } => {
                debug!(
                    channel,
                    "ignoring client data on a channel it does not write"
                );
            }
            Inbound::CloseChannel(STDIN) => self.stdin = None,
            Inbound::CloseChannel(RESIZE) => self.resize = None,
            Inbound::CloseChannel(_) => {}
        }
    }
}

/// The resize channel is a stream of JSON objects, which messages may split
/// or join (kubelet reads it with a JSON decoder).
struct ResizeDecoder {
    sizes: mpsc::Sender<TermSize>,
    pending: Vec<u8>,
}

impl ResizeDecoder {
    fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        let mut sizes = serde_json::Deserializer::from_slice(&self.pending).into_iter::<TermSize>();
        let mut consumed = 0;
        loop {
            match sizes.next() {
                Some(Ok(size)) => {
                    consumed = sizes.byte_offset();
                    if self.sizes.try_send(size).is_err() {
                        debug!(?size, "dropping a terminal size the command has not taken");
                    }
                }
                Some(Err(error)) if error.is_eof() => break,
                Some(Err(error)) => {
                    debug!(%error, "dropping a resize message that is not a terminal size");
                    consumed = self.pending.len();
                    break;
                }
                None => {
                    consumed = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..consumed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_map_to_their_framing_and_status() {
        let cases = [
            (
                "v5.channel.k8s.io",
                Codec::Binary,
                StatusStyle::Status,
                true,
            ),
            (
                "v4.channel.k8s.io",
                Codec::Binary,
                StatusStyle::Status,
                false,
            ),
            (
                "v4.base64.channel.k8s.io",
                Codec::Base64,
                StatusStyle::Status,
                false,
            ),
            (
                "v3.channel.k8s.io",
                Codec::Binary,
                StatusStyle::Legacy,
                false,
            ),
            (
                "v2.channel.k8s.io",
                Codec::Binary,
                StatusStyle::Legacy,
                false,
            ),
            ("channel.k8s.io", Codec::Binary, StatusStyle::Legacy, false),
            (
                "base64.channel.k8s.io",
                Codec::Base64,
                StatusStyle::Legacy,
                false,
            ),
            ("", Codec::Binary, StatusStyle::Legacy, false),
        ];
        for (protocol, codec, status, close_signal) in cases {
            assert_eq!(
                dialect(protocol),
                Some(Dialect {
                    codec,
                    status,
                    close_signal
                }),
                "{protocol}"
            );
        }
        assert_eq!(dialect("portforward.k8s.io"), None);
        for protocol in super::super::REMOTECOMMAND_PROTOCOLS {
            assert!(dialect(protocol).is_some(), "{protocol}");
        }
    }

    #[test]
    fn resize_messages_split_and_join() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut decoder = ResizeDecoder {
            sizes: tx,
            pending: Vec::new(),
        };
        decoder.feed(br#"{"Width":80,"He"#);
        assert!(rx.try_recv().is_err());
        decoder.feed(br#"ight":24}{"Width":100,"Height":30}"#);
        assert_eq!(
            rx.try_recv().unwrap(),
            TermSize {
                width: 80,
                height: 24
            }
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            TermSize {
                width: 100,
                height: 30
            }
        );
        decoder.feed(b"not json");
        decoder.feed(br#" {"Width":1,"Height":2}"#);
        assert_eq!(
            rx.try_recv().unwrap(),
            TermSize {
                width: 1,
                height: 2
            }
        );
        assert!(decoder.pending.is_empty());
    }
}
