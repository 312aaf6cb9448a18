//! The state a connection shares with its streams, and a stream's halves:
//! [`StreamReader`] (the client's data frames) and [`StreamWriter`] (ours).
//!
//! Flow control, SPDY/3.1 section 2.6.8: every stream and the connection
//! start with a 64 KiB window each way. We send WINDOW_UPDATE as the
//! reader half consumes. We hold our data to the client's windows once the
//! client shows it keeps them (a WINDOW_UPDATE, or SETTINGS with an initial
//! window size): moby/spdystream, under kubectl, crictl and kubelet's
//! proxy, says `SPDY/3.1` but keeps no windows and never sends
//! WINDOW_UPDATE, so holding it to 64 KiB would stall every session.
//! Likewise a client that overruns our window without keeping windows is
//! slowed by no longer reading the connection, not reset.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::frame::Frame;

/// SPDY/3.1's initial window, per stream and for the connection.
pub(crate) const INITIAL_WINDOW: i64 = 64 * 1024;
/// The most a writer half buffers before it waits for the connection.
pub(crate) const OUTBOUND_CAP: usize = 64 * 1024;
/// The largest data frame we send.
pub(crate) const MAX_DATA_FRAME: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalFin {
    Open,
    Requested,
    Sent,
}

pub(crate) struct StreamState {
    // The client's data, not yet read.
    pub inbound: VecDeque<Bytes>,
    pub inbound_len: usize,
    pub remote_fin: bool,
    pub read_waker: Option<Waker>,
    pub reader_alive: bool,
    /// Our window as the client sees it, and what the reader consumed
    /// since the last WINDOW_UPDATE.
    pub recv_window: i64,
    pub recv_unacked: u32,
    // Our data, not yet framed.
    pub outbound: BytesMut,
    pub local_fin: LocalFin,
    pub send_window: i64,
    pub write_waker: Option<Waker>,
    pub writer_alive: bool,
    /// In `State::ready`.
    pub queued: bool,
    pub reset: bool,
}

impl StreamState {
    pub fn new(send_window: i64) -> Self {
        StreamState {
            inbound: VecDeque::new(),
            inbound_len: 0,
            remote_fin: false,
            read_waker: None,
            reader_alive: true,
            recv_window: INITIAL_WINDOW,
            recv_unacked: 0,
            outbound: BytesMut::new(),
            local_fin: LocalFin::Open,
            send_window,
            write_waker: None,
            writer_alive: true,
            queued: false,
            reset: false,
        }
    }

    pub fn wake(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }
}

pub(crate) struct State {
    pub streams: HashMap<u32, StreamState>,
    /// Control frames to send, before any data.
    pub control: VecDeque<Frame>,
    /// Streams with data or a FIN to send, in the order they asked.
    pub ready: VecDeque<u32>,
    pub conn_send_window: i64,
    pub conn_recv_unacked: u32,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE (for streams it opens).
    pub initial_send_window: i64,
    /// The client keeps flow-control windows (see the module doc).
    pub peer_flow_control: bool,
    /// The highest stream id the client opened.
    pub last_client_stream: u32,
    /// We are closing: the writer sends what is queued, then GOAWAY.
    pub closing: bool,
    /// The connection is gone: nothing more is read or written.
    pub dead: bool,
    pub last_activity: Instant,
    pub gone: Vec<oneshot::Sender<()>>,
}

impl State {
    pub fn new() -> Self {
        State {
            streams: HashMap::new(),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            conn_send_window: INITIAL_WINDOW,
            conn_recv_unacked: 0,
            initial_send_window: INITIAL_WINDOW,
            peer_flow_control: false,
            last_client_stream: 0,
            closing: false,
            dead: false,
            last_activity: Instant::now(),
            gone: Vec::new(),
        }
    }

    /// Puts a stream with something to send in the writer's queue.
    pub fn schedule(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(&id) {
            if !stream.queued {
                stream.queued = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Credits `n` consumed (or discarded) bytes to the connection's
    /// receive window, queueing a WINDOW_UPDATE at half a window.
    pub fn credit_connection(&mut self, n: usize) {
        self.conn_recv_unacked = self.conn_recv_unacked.saturating_add(n as u32);
        if i64::from(self.conn_recv_unacked) >= INITIAL_WINDOW / 2 {
            self.control.push_back(Frame::WindowUpdate {
                stream_id: 0,
                delta: self.conn_recv_unacked,
            });
            self.conn_recv_unacked = 0;
        }
    }

    /// Forgets a stream once neither half nor the writer needs it.
    pub fn reap(&mut self, id: u32) {
        let dead = self.dead;
        if let Some(stream) = self.streams.get(&id) {
            let out_done = stream.reset || dead || stream.local_fin == LocalFin::Sent;
            if !stream.reader_alive && !stream.writer_alive && out_done {
                self.streams.remove(&id);
            }
        }
    }
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Wakes the writer task: a frame or data to send.
    pub writer_wake: Notify,
    /// Wakes the reader task waiting for a stream's buffer to drain.
    pub reader_space: Notify,
    /// Every batch written, every reset and the connection's end.
    pub progress: Notify,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(State::new()),
            writer_wake: Notify::new(),
            reader_space: Notify::new(),
            progress: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY stream closed")
}

/// The client's data on one stream. Ends (EOF) at the client's FIN, a
/// reset, or the connection's end.
pub struct StreamReader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u32,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        let dead = state.dead;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if stream.reset {
            return Poll::Ready(Ok(()));
        }
        let Some(chunk) = stream.inbound.front_mut() else {
            if stream.remote_fin || dead {
                return Poll::Ready(Ok(()));
            }
            stream.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk.split_to(n));
        if chunk.is_empty() {
            stream.inbound.pop_front();
        }
        stream.inbound_len -= n;
        stream.recv_unacked = stream.recv_unacked.saturating_add(n as u32);
        let mut update = None;
        if i64::from(stream.recv_unacked) >= INITIAL_WINDOW / 2 && !stream.remote_fin {
            update = Some(stream.recv_unacked);
            stream.recv_window += i64::from(stream.recv_unacked);
            stream.recv_unacked = 0;
        }
        if let Some(delta) = update {
            state.control.push_back(Frame::WindowUpdate {
                stream_id: self.id,
                delta,
            });
        }
        state.credit_connection(n);
        let wake_writer = !state.control.is_empty();
        drop(state);
        if wake_writer {
            shared.writer_wake.notify_one();
        }
        shared.reader_space.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return;
        };
        stream.reader_alive = false;
        let discarded = stream.inbound_len;
        stream.inbound.clear();
        stream.inbound_len = 0;
        state.credit_connection(discarded);
        state.reap(self.id);
        drop(state);
        self.shared.writer_wake.notify_one();
        self.shared.reader_space.notify_one();
    }
}

/// Our data on one stream. Shutting it down sends FIN; dropping it does
/// too. Writes fail once the client reset the stream or the connection
/// is gone.
pub struct StreamWriter {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u32,
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        let dead = state.dead;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(broken_pipe()));
        };
        if dead || stream.reset || stream.local_fin != LocalFin::Open {
            return Poll::Ready(Err(broken_pipe()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = OUTBOUND_CAP.saturating_sub(stream.outbound.len());
        if room == 0 {
            stream.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        stream.outbound.extend_from_slice(&buf[..n]);
        state.schedule(self.id);
        drop(state);
        self.shared.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }

    /// Ready once everything written is in frames handed to the connection.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let dead = state.dead;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if stream.outbound.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if dead || stream.reset {
            return Poll::Ready(Err(broken_pipe()));
        }
        stream.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready once the FIN is in a frame handed to the connection.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let dead = state.dead;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        match stream.local_fin {
            LocalFin::Sent => return Poll::Ready(Ok(())),
            _ if dead || stream.reset => return Poll::Ready(Err(broken_pipe())),
            LocalFin::Open => stream.local_fin = LocalFin::Requested,
            LocalFin::Requested => {}
        }
        stream.write_waker = Some(cx.waker().clone());
        state.schedule(self.id);
        drop(state);
        self.shared.writer_wake.notify_one();
        Poll::Pending
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let dead = state.dead;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return;
        };
        stream.writer_alive = false;
        stream.write_waker = None;
        if !dead && !stream.reset && stream.local_fin == LocalFin::Open {
            stream.local_fin = LocalFin::Requested;
            state.schedule(self.id);
        }
        state.reap(self.id);
        drop(state);
        self.shared.writer_wake.notify_one();
    }
}

/// A handle on a stream that outlives its halves: to end our side of it
/// (whoever holds the writer) or to learn that the client ended it.
#[derive(Clone)]
pub struct StreamHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u32,
}

impl StreamHandle {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends FIN after what is already written (later writes fail) and
    /// waits until it is handed to the connection, or the stream or the
    /// connection is gone.
    pub async fn finish(&self) {
        {
            let mut state = self.shared.lock();
            let dead = state.dead;
            if let Some(stream) = state.streams.get_mut(&self.id) {
                if !dead && !stream.reset && stream.local_fin == LocalFin::Open {
                    stream.local_fin = LocalFin::Requested;
                    state.schedule(self.id);
                }
            }
        }
        self.shared.writer_wake.notify_one();
        self.wait_until(|state, stream| {
            state.dead || stream.is_none_or(|s| s.reset || s.local_fin == LocalFin::Sent)
        })
        .await;
    }

    /// Resolves when the client reset the stream or the connection is gone.
    pub async fn aborted(&self) {
        self.wait_until(|state, stream| state.dead || stream.is_none_or(|s| s.reset))
            .await;
    }

    async fn wait_until(&self, done: impl Fn(&State, Option<&StreamState>) -> bool) {
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if done(&state, state.streams.get(&self.id)) {
                    return;
                }
            }
            notified.await;
        }
    }
}
