//! The server side of a SPDY/3.1 connection: one task reads frames, one
//! writes them, one watches for idleness; the client's streams come out of
//! [`Connection::accept`].

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::compress::{HeaderCompressor, HeaderDecompressor};
use super::frame::{
    goaway, read_frame, rst, Frame, Headers, FLAG_FIN, FLAG_UNIDIRECTIONAL,
    SETTINGS_INITIAL_WINDOW_SIZE,
};
use super::stream::{
    LocalFin, Shared, State, StreamHandle, StreamReader, StreamState, StreamWriter, INITIAL_WINDOW,
    MAX_DATA_FRAME,
};
use super::SpdyError;
use crate::streaming::{Duplex, SessionLimits};

/// Streams one connection may have open at once; more are refused.
const MAX_STREAMS: usize = 1024;
/// Data frames' bytes the writer puts in one batch before it looks at the
/// control queue again.
const BATCH_BYTES: usize = 256 * 1024;

/// A SPDY connection whose client opens the streams (kubelet's server side).
pub struct Connection {
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedReceiver<IncomingStream>,
    driver: Option<JoinHandle<()>>,
}

/// A stream the client opened, not yet answered.
pub struct IncomingStream {
    shared: Arc<Shared>,
    id: u32,
    headers: Headers,
    unidirectional: bool,
    answered: bool,
}

impl Connection {
    /// Starts serving `io` (an upgraded HTTP connection). The connection
    /// closes when the client goes, on [`Connection::close`], or after
    /// `limits.idle_timeout` without a frame either way (0: never).
    pub fn new(io: Box<dyn Duplex>, limits: &SessionLimits) -> Connection {
        let shared = Shared::new();
        let (tx, incoming) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(shared.clone(), io, tx, limits.idle_timeout));
        Connection {
            shared,
            incoming,
            driver: Some(driver),
        }
    }

    /// The next stream the client opens; `None` once it will open no more
    /// (it sent GOAWAY, or the connection is gone).
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        self.incoming.recv().await
    }

    /// Resolves when the connection is gone (the client left, a protocol
    /// error, the idle timeout, or our close).
    pub fn client_gone(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.lock();
        if state.dead {
            let _ = tx.send(());
        } else {
            state.gone.push(tx);
        }
        rx
    }

    /// Sends what is queued, then GOAWAY, and closes the connection.
    pub async fn close(mut self) {
        self.start_closing();
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
    }

    fn start_closing(&self) {
        self.shared.lock().closing = true;
        self.shared.writer_wake.notify_one();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.driver.is_some() {
            self.start_closing();
        }
    }
}

impl IncomingStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Accepts the stream: SYN_REPLY (none for a unidirectional stream,
    /// which is half-closed on our side), and its halves.
    pub fn reply(mut self) -> (StreamReader, StreamWriter, StreamHandle) {
        self.answered = true;
        if !self.unidirectional {
            self.shared.lock().control.push_back(Frame::SynReply {
                stream_id: self.id,
                flags: 0,
                headers: Headers::new(),
            });
            self.shared.writer_wake.notify_one();
        }
        let shared = self.shared.clone();
        (
            StreamReader {
                shared: shared.clone(),
                id: self.id,
            },
            StreamWriter {
                shared: shared.clone(),
                id: self.id,
            },
            StreamHandle {
                shared,
                id: self.id,
            },
        )
    }

    /// Rejects the stream with RST_STREAM (REFUSED_STREAM).
    pub fn refuse(mut self) {
        self.answered = true;
        refuse_stream(&self.shared, self.id);
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.answered {
            refuse_stream(&self.shared, self.id);
        }
    }
}

fn refuse_stream(shared: &Shared, id: u32) {
    let mut state = shared.lock();
    if let Some(stream) = state.streams.remove(&id) {
        state.credit_connection(stream.inbound_len);
    }
    state.control.push_back(Frame::RstStream {
        stream_id: id,
        status: rst::REFUSED_STREAM,
    });
    drop(state);
    shared.writer_wake.notify_one();
}

async fn drive(
    shared: Arc<Shared>,
    io: Box<dyn Duplex>,
    incoming: mpsc::UnboundedSender<IncomingStream>,
    idle_timeout: Duration,
) {
    let (reader, writer) = tokio::io::split(io);
    let outcome = tokio::select! {
        read = read_loop(&shared, reader, incoming) => read.map(|()| "the client closed the connection"),
        written = write_loop(&shared, writer) => written.map(|()| "closed"),
        () = idle_watch(&shared, idle_timeout) => Ok("idle timeout"),
    };
    match outcome {
        Ok(why) => tracing::debug!(why, "SPDY connection ended"),
        Err(error) => tracing::debug!(%error, "SPDY connection ended"),
    }
    let mut state = shared.lock();
    state.dead = true;
    for stream in state.streams.values_mut() {
        stream.wake();
    }
    for gone in state.gone.drain(..) {
        let _ = gone.send(());
    }
    drop(state);
    shared.progress.notify_waiters();
    shared.reader_space.notify_one();
}

fn touch(shared: &Shared) {
    shared.lock().last_activity = Instant::now();
}

async fn idle_watch(shared: &Shared, idle_timeout: Duration) {
    if idle_timeout.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let deadline = shared.lock().last_activity + idle_timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

async fn read_loop(
    shared: &Arc<Shared>,
    mut reader: impl AsyncRead + Unpin,
    incoming: mpsc::UnboundedSender<IncomingStream>,
) -> Result<(), SpdyError> {
    let mut incoming = Some(incoming);
    let mut decompressor = HeaderDecompressor::new();
    while let Some(frame) = read_frame(&mut reader, &mut decompressor).await? {
        touch(shared);
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let Some(accepted) = open_stream(shared, stream_id, flags, headers, &incoming)
                else {
                    continue;
                };
                if let Some(Err(rejected)) = incoming.as_ref().map(|tx| tx.send(accepted)) {
                    rejected.0.refuse();
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let wait = receive_data(shared, stream_id, flags, data);
                if wait {
                    wait_for_reader(shared, stream_id).await;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                let mut state = shared.lock();
                if let Some(stream) = state.streams.get_mut(&stream_id) {
                    stream.reset = true;
                    let discarded = stream.inbound_len;
                    stream.inbound.clear();
                    stream.inbound_len = 0;
                    stream.outbound.clear();
                    stream.wake();
                    state.credit_connection(discarded);
                    state.reap(stream_id);
                }
                drop(state);
                shared.progress.notify_waiters();
                shared.reader_space.notify_one();
            }
            Frame::Settings { entries, .. } => {
                let mut state = shared.lock();
                for entry in entries {
                    if entry.id == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = i64::from(entry.value) - state.initial_send_window;
                        state.initial_send_window = i64::from(entry.value);
                        state.peer_flow_control = true;
                        for stream in state.streams.values_mut() {
                            stream.send_window += delta;
                        }
                    }
                }
                reschedule_all(&mut state);
                drop(state);
                shared.writer_wake.notify_one();
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut state = shared.lock();
                state.peer_flow_control = true;
                if stream_id == 0 {
                    state.conn_send_window += i64::from(delta);
                    reschedule_all(&mut state);
                } else if let Some(stream) = state.streams.get_mut(&stream_id) {
                    stream.send_window += i64::from(delta);
                    if !stream.outbound.is_empty() {
                        state.schedule(stream_id);
                    }
                }
                drop(state);
                shared.writer_wake.notify_one();
            }
            Frame::Ping { id } => {
                // Odd ids are the client's; even ones would answer ours.
                if id % 2 == 1 {
                    shared.lock().control.push_back(Frame::Ping { id });
                    shared.writer_wake.notify_one();
                }
            }
            Frame::GoAway { .. } => {
                // No new streams; the open ones carry on.
                incoming = None;
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    let mut state = shared.lock();
                    if let Some(stream) = state.streams.get_mut(&stream_id) {
                        stream.remote_fin = true;
                        stream.wake();
                    }
                }
            }
            Frame::SynReply { .. } | Frame::Ignored { .. } => {}
        }
    }
    Ok(())
}

/// Queues a data frame for its stream's reader (or drops it, giving the
/// window back). `true` when the client overran the reader's buffer and
/// the reader task should wait for it to drain.
fn receive_data(shared: &Shared, stream_id: u32, flags: u8, data: bytes::Bytes) -> bool {
    let len = data.len();
    let mut state = shared.lock();
    let peer_flow_control = state.peer_flow_control;
    let (mut reset, mut stored, mut wait) = (false, false, false);
    if let Some(stream) = state.streams.get_mut(&stream_id) {
        if stream.reader_alive && !stream.reset && !stream.remote_fin {
            stream.recv_window -= len as i64;
            if stream.recv_window < 0 && peer_flow_control {
                stream.reset = true;
                reset = true;
            } else if len > 0 {
                stream.inbound.push_back(data);
                stream.inbound_len += len;
                stored = true;
                wait = stream.inbound_len as i64 > INITIAL_WINDOW;
            }
            if flags & FLAG_FIN != 0 {
                stream.remote_fin = true;
            }
            stream.wake();
        }
    }
    if !stored {
        // Nobody will read it: give the window back now.
        state.credit_connection(len);
    }
    if reset {
        state.control.push_back(Frame::RstStream {
            stream_id,
            status: rst::FLOW_CONTROL_ERROR,
        });
    }
    drop(state);
    shared.writer_wake.notify_one();
    if reset {
        shared.progress.notify_waiters();
    }
    wait
}

/// Registers a new client stream, or answers it with RST_STREAM.
fn open_stream(
    shared: &Arc<Shared>,
    id: u32,
    flags: u8,
    headers: Headers,
    incoming: &Option<mpsc::UnboundedSender<IncomingStream>>,
) -> Option<IncomingStream> {
    let mut state = shared.lock();
    let status = if id.is_multiple_of(2) || id <= state.last_client_stream {
        Some(rst::PROTOCOL_ERROR)
    } else if state.closing || incoming.is_none() || state.streams.len() >= MAX_STREAMS {
        Some(rst::REFUSED_STREAM)
    } else {
        None
    };
    if id % 2 == 1 && id > state.last_client_stream {
        state.last_client_stream = id;
    }
    if let Some(status) = status {
        state.control.push_back(Frame::RstStream {
            stream_id: id,
            status,
        });
        drop(state);
        shared.writer_wake.notify_one();
        return None;
    }
    let mut stream = StreamState::new(state.initial_send_window);
    stream.remote_fin = flags & FLAG_FIN != 0;
    let unidirectional = flags & FLAG_UNIDIRECTIONAL != 0;
    if unidirectional {
        stream.local_fin = LocalFin::Sent;
    }
    state.streams.insert(id, stream);
    Some(IncomingStream {
        shared: shared.clone(),
        id,
        headers,
        unidirectional,
        answered: false,
    })
}

fn reschedule_all(state: &mut State) {
    let pending: Vec<u32> = state
        .streams
        .iter()
        .filter(|(_, s)| !s.outbound.is_empty() || s.local_fin == LocalFin::Requested)
        .map(|(id, _)| *id)
        .collect();
    for id in pending {
        state.schedule(id);
    }
}

/// Holds the reader task (and so the whole connection) until a stream's
/// reader drains its buffer: only a client that ignores our window gets
/// here, and it has no other brake.
async fn wait_for_reader(shared: &Shared, id: u32) {
    loop {
        let notified = shared.reader_space.notified();
        {
            let state = shared.lock();
            let full = state.streams.get(&id).is_some_and(|s| {
                s.reader_alive && !s.reset && s.inbound_len as i64 > INITIAL_WINDOW
            });
            if !full || state.dead {
                return;
            }
        }
        notified.await;
    }
}

async fn write_loop(shared: &Shared, mut writer: impl AsyncWrite + Unpin) -> Result<(), SpdyError> {
    let mut compressor = HeaderCompressor::new();
    let mut wire = BytesMut::new();
    loop {
        let notified = shared.writer_wake.notified();
        let (frames, finished) = next_batch(&mut shared.lock());
        for frame in &frames {
            frame.encode(&mut compressor, &mut wire)?;
        }
        if !wire.is_empty() {
            writer.write_all(&wire).await?;
            writer.flush().await?;
            wire.clear();
            touch(shared);
            shared.progress.notify_waiters();
        }
        if finished {
            let _ = writer.shutdown().await;
            return Ok(());
        }
        if frames.is_empty() {
            notified.await;
        }
    }
}

/// Takes what the writer sends next: control frames, then data within
/// the windows; GOAWAY last when closing. `true` when that was the end.
fn next_batch(state: &mut State) -> (Vec<Frame>, bool) {
    let mut frames: Vec<Frame> = state.control.drain(..).collect();
    let mut budget = BATCH_BYTES;
    let mut deferred = Vec::new();
    while let Some(id) = state.ready.pop_front() {
        let flow_control = state.peer_flow_control;
        let conn_window = state.conn_send_window;
        let Some(stream) = state.streams.get_mut(&id) else {
            continue;
        };
        stream.queued = false;
        if stream.reset {
            stream.outbound.clear();
            stream.wake();
            continue;
        }
        let mut sent = 0i64;
        while !stream.outbound.is_empty() && budget > 0 {
            let mut n = stream.outbound.len().min(MAX_DATA_FRAME).min(budget);
            if flow_control {
                let window = stream.send_window.min(conn_window - sent).max(0);
                n = n.min(window as usize);
            }
            if n == 0 {
                break;
            }
            let data = stream.outbound.split_to(n).freeze();
            stream.send_window -= n as i64;
            sent += n as i64;
            budget -= n;
            let fin = stream.outbound.is_empty() && stream.local_fin == LocalFin::Requested;
            if fin {
                stream.local_fin = LocalFin::Sent;
            }
            frames.push(Frame::Data {
                stream_id: id,
                flags: if fin { FLAG_FIN } else { 0 },
                data,
            });
        }
        if stream.outbound.is_empty() && stream.local_fin == LocalFin::Requested {
            stream.local_fin = LocalFin::Sent;
            frames.push(Frame::Data {
                stream_id: id,
                flags: FLAG_FIN,
                data: Default::default(),
            });
        }
        if !stream.outbound.is_empty() && budget == 0 {
            deferred.push(id);
        }
        stream.wake();
        state.conn_send_window -= sent;
        state.reap(id);
        if budget == 0 {
            break;
        }
    }
    for id in deferred {
        state.schedule(id);
    }
    let mut finished = false;
    if state.closing && frames.is_empty() && state.ready.is_empty() {
        frames.push(Frame::GoAway {
            last_good_stream_id: state.last_client_stream,
            status: goaway::OK,
        });
        finished = true;
    }
    (frames, finished)
}
