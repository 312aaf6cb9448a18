//! One WebSocket carrying numbered channels, as Kubernetes' `wsstream`
//! package frames them: every data message starts with its channel (a byte
//! for the binary protocols, an ASCII digit before a base64 payload for the
//! `base64.` ones).
//!
//! A [`Session`] owns the socket through two tasks: a writer that sends the
//! [`Outgoing`] messages queued by everyone with a sender, in order, and a
//! reader that decodes what the client sends and hands it to an
//! [`InboundHandler`] (the protocol's: stdin and resize for a remote
//! command, data channels for port-forward). When the reader ends (the
//! client closed or broke the connection, or nothing moved for the idle
//! timeout) its handler is dropped, so whatever it fed sees its end, and
//! the writer stops, so every [`ChannelWriter`] fails.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::PollSender;
use tracing::debug;

use super::WebSocketError;
use crate::streaming::{Duplex, SessionLimits};

type Socket = WebSocketStream<Box<dyn Duplex>>;

/// How long closing may take once the session is over: the writer's close
/// frame, and the client's answer to it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The most payload one data message carries (a write larger than this is
/// split by [`ChannelWriter`] into several messages).
const MAX_MESSAGE_DATA: usize = 32 * 1024;

/// Messages queued between the session's users and its writer task.
const OUTGOING_QUEUE: usize = 64;

/// The v5 control channel: `[255, n]` closes channel `n`.
pub(super) const CLOSE_CHANNEL: u8 = 255;

/// How a protocol puts channel and payload in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    /// `channel.k8s.io` and its versions: binary messages, channel byte first.
    Binary,
    /// `base64.channel.k8s.io` and its versions: text messages, channel
    /// digit first, base64 (standard alphabet, padded) after it.
    Base64,
}

/// One message from the client, decoded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inbound {
    Data {
        channel: u8,
        data: Vec<u8>,
    },
    /// v5: the client will send nothing more on this channel.
    CloseChannel(u8),
}

/// What the session's users queue for the client.
#[derive(Debug)]
pub(super) enum Outgoing {
    Data {
        channel: u8,
        data: Bytes,
    },
    /// Close the WebSocket normally after what was queued before.
    Close,
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadEnd {
    /// Still reading.
    Open,
    /// The client closed the connection or it broke.
    ClientGone,
    /// No data message either way for the idle timeout.
    IdleTimeout,
}

/// The protocol's side of the reader: what to do with each message.
pub(super) trait InboundHandler: Send + 'static {
    fn handle(&mut self, message: Inbound) -> impl Future<Output = ()> + Send;
}

/// Decodes one WebSocket message. Binary protocols take text messages as
/// bytes too, as kubelet's server does (and the Python client sends text
/// when given a `str`); the close signal is v5's and binary only.
pub(super) fn decode(message: Message, codec: Codec, close_signal: bool) -> Option<Inbound> {
    let payload: Bytes = match message {
        Message::Binary(bytes) => bytes,
        Message::Text(text) => Bytes::from(text),
        _ => return None,
    };
    match codec {
        Codec::Binary => {
            let (&channel, data) = payload.split_first()?;
            if close_signal && channel == CLOSE_CHANNEL {
                return data.first().map(|&closed| Inbound::CloseChannel(closed));
            }
            Some(Inbound::Data {
                channel,
                data: data.to_vec(),
            })
        }
        Codec::Base64 => {
            let text = std::str::from_utf8(&payload).ok()?;
            let mut chars = text.chars();
            let first = u8::try_from(u32::from(chars.next()?)).ok()?;
            let encoded: Vec<u8> = chars
                .as_str()
                .bytes()
                .filter(|b| !matches!(b, b'\r' | b'\n'))
                .collect();
            match BASE64.decode(&encoded) {
                Ok(data) => Some(Inbound::Data {
                    channel: first.wrapping_sub(b'0'),
                    data,
                }),
                Err(error) => {
                    debug!(%error, "dropping a base64 message that does not decode");
                    None
                }
            }
        }
    }
}

/// Encodes one data message for the client.
pub(super) fn encode(codec: Codec, channel: u8, data: &[u8]) -> Message {
    match codec {
        Codec::Binary => {
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::Binary(frame.into())
        }
        Codec::Base64 => {
            // As kubelet: the channel as the character '0' + n.
            let mut text = String::from(char::from(b'0'.wrapping_add(channel)));
            BASE64.encode_string(data, &mut text);
            Message::Text(text.into())
        }
    }
}

/// When a data message last went either way.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_millis: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_millis: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_millis.load(Ordering::Relaxed))
    }
}

/// A live WebSocket session: its writer and reader tasks.
pub(super) struct Session {
    out: mpsc::Sender<Outgoing>,
    ended: watch::Receiver<ReadEnd>,
    writer: JoinHandle<Result<(), WebSocketError>>,
    reader: JoinHandle<ReadEnd>,
    idle_timeout: Duration,
}

impl Session {
    /// Takes over an upgraded connection (the HTTP `101` already sent).
    pub(super) async fn open<H: InboundHandler>(
        io: Box<dyn Duplex>,
        codec: Codec,
        close_signal: bool,
        limits: SessionLimits,
        handler: H,
    ) -> Session {
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let (sink, stream) = socket.split();
        let activity = Activity::new();
        let idle_timeout = limits.idle_timeout;
        let (out, queue) = mpsc::channel(OUTGOING_QUEUE);
        let (ended_tx, ended) = watch::channel(ReadEnd::Open);
        let writer = tokio::spawn(write_loop(
            sink,
            queue,
            codec,
            activity.clone(),
            idle_timeout,
            ended.clone(),
        ));
        let reader = tokio::spawn(async move {
            let mut handler = handler;
            let end = read_loop(
                stream,
                codec,
                close_signal,
                &activity,
                idle_timeout,
                &mut handler,
            )
            .await;
            // The handler goes first, so what it fed (stdin, a pod's
            // connection) sees its end before anyone hears of it.
            drop(handler);
            ended_tx.send_replace(end);
            end
        });
        Session {
            out,
            ended,
            writer,
            reader,
            idle_timeout,
        }
    }

    /// A writer of data messages on `channel`.
    pub(super) fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter {
            channel,
            queue: PollSender::new(self.out.clone()),
        }
    }

    /// A sender to queue messages from another task.
    pub(super) fn sender(&self) -> mpsc::Sender<Outgoing> {
        self.out.clone()
    }

    /// Tells when the client is gone (see [`client_gone`]).
    pub(super) fn ended(&self) -> watch::Receiver<ReadEnd> {
        self.ended.clone()
    }

    /// Queues one data message; nothing happens if the client is gone.
    pub(super) async fn send(&self, channel: u8, data: impl Into<Bytes>) {
        let _ = self
            .out
            .send(Outgoing::Data {
                channel,
                data: data.into(),
            })
            .await;
    }

    /// Closes the WebSocket normally after everything queued, and waits
    /// (a bounded time) for the client to answer the close.
    pub(super) async fn finish(self) -> Result<(), WebSocketError> {
        let Session {
            out,
            ended,
            writer,
            mut reader,
            idle_timeout,
        } = self;
        let _ = out.send(Outgoing::Close).await;
        drop(out);
        let written = writer.await.unwrap_or(Ok(()));
        let read_end = match tokio::time::timeout(CLOSE_GRACE, &mut reader).await {
            Ok(end) => end.unwrap_or(ReadEnd::ClientGone),
            Err(_) => {
                reader.abort();
                *ended.borrow()
            }
        };
        written?;
        if read_end == ReadEnd::IdleTimeout {
            return Err(WebSocketError::IdleTimeout(idle_timeout));
        }
        Ok(())
    }
}

/// Resolves once the session's reader has stopped.
pub(super) async fn client_gone(ended: &mut watch::Receiver<ReadEnd>) {
    let _ = ended.wait_for(|end| *end != ReadEnd::Open).await;
}

async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    mut queue: mpsc::Receiver<Outgoing>,
    codec: Codec,
    activity: Activity,
    idle_timeout: Duration,
    mut ended: watch::Receiver<ReadEnd>,
) -> Result<(), WebSocketError> {
    loop {
        let next = tokio::select! {
            biased;
            next = queue.recv() => next,
            () = client_gone(&mut ended) => {
                if *ended.borrow() == ReadEnd::IdleTimeout {
                    let frame = close_frame(ReadEnd::IdleTimeout);
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
                }
                return Ok(());
            }
        };
        let message = match next {
            Some(Outgoing::Data { channel, data }) => encode(codec, channel, &data),
            Some(Outgoing::Close) | None => {
                // A session the idle timeout ended says so, even when its
                // command's end (its stdin closed by that timeout) was
                // queued first.
                let frame = close_frame(*ended.borrow());
                return match tokio::time::timeout(
                    CLOSE_GRACE,
                    sink.send(Message::Close(Some(frame))),
                )
                .await
                {
                    Ok(Err(error)) if !is_closed(&error) => Err(error.into()),
                    _ => Ok(()),
                };
            }
        };
        let sent = if idle_timeout.is_zero() {
            Ok(sink.send(message).await)
        } else {
            tokio::time::timeout(idle_timeout, sink.send(message)).await
        };
        match sent {
            Ok(Ok(())) => activity.touch(),
            Ok(Err(error)) => return Err(error.into()),
            // As kubelet's write deadline: a client that takes nothing
            // for the idle timeout is gone.
            Err(_) => return Err(WebSocketError::IdleTimeout(idle_timeout)),
        }
    }
}

/// The close frame for a session whose reader ended as `read_end`:
/// `Away` after the idle timeout, `Normal` otherwise.
fn close_frame(read_end: ReadEnd) -> CloseFrame {
    if read_end == ReadEnd::IdleTimeout {
        CloseFrame {
            code: CloseCode::Away,
            reason: "idle timeout".into(),
        }
    } else {
        CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }
    }
}

fn is_closed(error: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(error, Error::ConnectionClosed | Error::AlreadyClosed)
}

async fn read_loop<H: InboundHandler>(
    mut stream: SplitStream<Socket>,
    codec: Codec,
    close_signal: bool,
    activity: &Activity,
    idle_timeout: Duration,
    handler: &mut H,
) -> ReadEnd {
    loop {
        let next = if idle_timeout.is_zero() {
            stream.next().await
        } else {
            let deadline = activity.last() + idle_timeout;
            tokio::select! {
                next = stream.next() => next,
                () = tokio::time::sleep_until(deadline.into()) => {
                    if activity.last() + idle_timeout <= Instant::now() {
                        debug!(?idle_timeout, "closing an idle WebSocket stream");
                        return ReadEnd::IdleTimeout;
                    }
                    continue;
                }
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                debug!(%error, "WebSocket stream broke");
                return ReadEnd::ClientGone;
            }
            None => return ReadEnd::ClientGone,
        };
        // Kubelet's deadline moves with data messages, not with pings.
        if matches!(message, Message::Binary(_) | Message::Text(_)) {
            activity.touch();
        }
        if let Some(inbound) = decode(message, codec, close_signal) {
            handler.handle(inbound).await;
        }
    }
}

/// Writes data messages on one channel. A write returns once its message is
/// queued in order with everything else for the client, so what a command
/// wrote before it returned goes out before its status. Fails with
/// `BrokenPipe` once the client is gone.
pub(super) struct ChannelWriter {
    channel: u8,
    queue: PollSender<Outgoing>,
}

fn client_gone_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket client is gone")
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.queue.poll_reserve(cx)).map_err(|_| client_gone_error())?;
        let len = buf.len().min(MAX_MESSAGE_DATA);
        let message = Outgoing::Data {
            channel: self.channel,
            data: Bytes::copy_from_slice(&buf[..len]),
        };
        self.queue
            .send_item(message)
            .map_err(|_| client_gone_error())?;
        Poll::Ready(Ok(len))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_per_codec() {
        let binary = |bytes: &[u8]| Message::Binary(Bytes::copy_from_slice(bytes));
        let text = |s: &str| Message::Text(s.into());
        let data = |channel: u8, data: &[u8]| {
            Some(Inbound::Data {
                channel,
                data: data.to_vec(),
            })
        };
        let cases: Vec<(Message, Codec, bool, Option<Inbound>)> = vec![
            (
                binary(&[0, b'h', b'i']),
                Codec::Binary,
                false,
                data(0, b"hi"),
            ),
            (binary(&[4]), Codec::Binary, false, data(4, b"")),
            (binary(&[]), Codec::Binary, false, None),
            (text("\u{0}hi"), Codec::Binary, false, data(0, b"hi")),
            (
                binary(&[255, 0]),
                Codec::Binary,
                true,
                Some(Inbound::CloseChannel(0)),
            ),
            (binary(&[255, 0]), Codec::Binary, false, data(255, &[0])),
            (binary(&[255]), Codec::Binary, true, None),
            (text("0aGk="), Codec::Base64, false, data(0, b"hi")),
            (text("4"), Codec::Base64, false, data(4, b"")),
            (text("0!!"), Codec::Base64, false, None),
            (Message::Ping(Bytes::new()), Codec::Binary, false, None),
        ];
        for (message, codec, close, want) in cases {
            let shown = format!("{message:?}");
            assert_eq!(
                decode(message, codec, close),
                want,
                "{shown} with {codec:?}"
            );
        }
    }

    #[test]
    fn messages_encode_per_codec() {
        assert_eq!(
            encode(Codec::Binary, 1, b"out"),
            Message::Binary(Bytes::from_static(b"\x01out"))
        );
        assert_eq!(
            encode(Codec::Base64, 1, b"\n"),
            Message::Text("1Cg==".into())
        );
        assert_eq!(encode(Codec::Base64, 3, b""), Message::Text("3".into()));
        for channel in [0u8, 1, 7, 9] {
            let round = decode(
                encode(Codec::Base64, channel, b"data"),
                Codec::Base64,
                false,
            );
            assert_eq!(
                round,
                Some(Inbound::Data {
                    channel,
                    data: b"data".to_vec()
                })
            );
        }
    }
}
