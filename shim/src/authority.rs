//! Any `:authority` on a unix socket: what Go's gRPC sends must not reset
//! the stream.
//!
//! Go's gRPC of the kubelet/crictl 1.26 generation (and grpc-java, older
//! grpcurl) dials a unix socket with its path as the HTTP/2 `:authority`
//! (`/run/caisson/caissond.sock`). The `h2` crate under tonic parses the
//! authority as a URI authority and resets the stream with PROTOCOL_ERROR
//! when it is not one, so every call of those clients failed before any
//! handler ran. containerd and CRI-O (Go's HTTP/2 server) accept it.
//!
//! [`AuthorityFix`] sits between the socket and the HTTP/2 server, on the
//! client-to-server byte stream of one connection. It passes every frame
//! through unchanged except header blocks (HEADERS and their CONTINUATION
//! frames), which it decodes with HPACK, re-encodes with its own encoder and
//! forwards, replacing an `:authority` that is not a valid URI authority
//! (a path, empty, non-UTF-8 bytes) by `localhost`. Every header block is
//! re-encoded, not only those it changes: the server's HPACK decoder then
//! follows our encoder's dynamic table, never the client's, so the two can
//! never drift apart. Padding is dropped (it only hides lengths on the
//! wire) and blocks are split into frames no larger than HTTP/2's default
//! maximum, which the server advertises.
//!
//! The server-to-client direction is not touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The authority a replaced `:authority` becomes.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 §6.5.2); tonic keeps
/// it, so h2 refuses a larger frame too (FRAME_SIZE_ERROR).
const MAX_FRAME_SIZE: usize = 16_384;
/// A header block (all of its fragments) larger than this closes the
/// connection: a HEADERS frame and five CONTINUATIONs, what h2 takes at its
/// 16 KiB header list limit. gRPC metadata is a few hundred bytes.
const MAX_HEADER_BLOCK: usize = 6 * MAX_FRAME_SIZE;
/// The decoded header list (RFC 7541 sizes: name + value + 32 each) larger
/// than this closes the connection before it is copied: a block of one-byte
/// references to a large table entry must not expand into gigabytes. Above
/// the 16 KiB list limit h2 advertises, so h2 still answers lists between.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// The HPACK table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE's initial
/// value): a client's table may not be larger.
const HEADER_TABLE_SIZE: usize = 4096;

/// A header block the rewriter could not take apart: the connection ends
/// (the HTTP/2 server would have ended it with a connection error too).
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("HEADERS frame on stream {stream}: padding longer than the frame")]
    BadPadding { stream: u32 },
    #[error("HEADERS frame on stream {stream}: shorter than its priority fields")]
    ShortPriority { stream: u32 },
    #[error("frame type {kind:#x} on stream {stream} inside the header block of stream {open}")]
    InterruptedBlock { kind: u8, stream: u32, open: u32 },
    #[error("header block of stream {stream} exceeds {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge { stream: u32 },
    #[error("header frame on stream {stream} of {len} bytes exceeds the {MAX_FRAME_SIZE}-byte maximum frame size")]
    FrameTooLarge { stream: u32, len: usize },
    #[error("header list of stream {stream} decodes past {MAX_HEADER_LIST} bytes")]
    ListTooLarge { stream: u32 },
    #[error("HPACK decoding the header block of stream {stream}: {cause}")]
    Hpack { stream: u32, cause: String },
}

impl From<RewriteError> for io::Error {
    fn from(e: RewriteError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A header block being collected from a HEADERS frame and its
/// CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    priority: [u8; 5],
    fragment: Vec<u8>,
}

/// The sans-IO rewriter: client bytes in, server bytes out.
pub struct Rewriter {
    preface_left: usize,
    /// Bytes of the current non-header frame still to pass through as is.
    passthrough_left: usize,
    /// Bytes received but not yet a whole frame header or header frame.
    pending: BytesMut,
    block: Option<OpenBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// The distinct authorities replaced on this connection (the first
    /// few), for the log.
    replaced: Vec<String>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            preface_left: PREFACE_LEN,
            passthrough_left: 0,
            pending: BytesMut::new(),
            block: None,
            decoder: {
                let mut d = loona_hpack::Decoder::new();
                d.set_max_allowed_table_size(HEADER_TABLE_SIZE);
                d
            },
            encoder: loona_hpack::Encoder::new(),
            replaced: Vec::new(),
        }
    }
}

/// Whether the HTTP/2 server (h2) takes `value` as an `:authority`.
pub fn is_valid_authority(value: &[u8]) -> bool {
    !value.is_empty() && http::uri::Authority::try_from(value).is_ok()
}

impl Rewriter {
    /// Takes `input` from the client and appends to `out` whatever can go
    /// to the server now; the rest waits for more input.
    pub fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), RewriteError> {
        while !input.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(input.len());
                out.put_slice(&input[..n]);
                self.preface_left -= n;
                input = &input[n..];
            } else if self.passthrough_left > 0 {
                let n = self.passthrough_left.min(input.len());
                out.put_slice(&input[..n]);
                self.passthrough_left -= n;
                input = &input[n..];
            } else {
                self.pending.put_slice(input);
                input = &[];
                self.drain_pending(out)?;
            }
        }
        Ok(())
    }

    /// The distinct authorities replaced so far on this connection (at
    /// most a few).
    pub fn replaced(&self) -> &[String] {
        &self.replaced
    }

    fn drain_pending(&mut self, out: &mut BytesMut) -> Result<(), RewriteError> {
        loop {
            if self.pending.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let h = &self.pending[..FRAME_HEADER_LEN];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let kind = h[3];
            let flags = h[4];
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let header_frame = kind == HEADERS || (kind == CONTINUATION && self.block.is_some());
            if let Some(open) = &self.block {
                if kind != CONTINUATION || stream != open.stream {
                    return Err(RewriteError::InterruptedBlock {
                        kind,
                        stream,
                        open: open.stream,
                    });
                }
            }
            if !header_frame {
                // Anything else goes through as it arrives, without waiting
                // for its whole payload.
                let n = (FRAME_HEADER_LEN + len).min(self.pending.len());
                out.put_slice(&self.pending[..n]);
                self.passthrough_left = FRAME_HEADER_LEN + len - n;
                self.pending.advance(n);
                if self.passthrough_left > 0 {
                    // `pending` is empty: the rest of the payload is next.
                    return Ok(());
                }
                continue;
            }
            if len > MAX_FRAME_SIZE {
                return Err(RewriteError::FrameTooLarge { stream, len });
            }
            if self.pending.len() < FRAME_HEADER_LEN + len {
                return Ok(());
            }
            self.pending.advance(FRAME_HEADER_LEN);
            let payload = self.pending.split_to(len);
            self.take_header_frame(kind, flags, stream, &payload, out)?;
        }
    }

    fn take_header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        let mut open = match self.block.take() {
            Some(open) => open,
            None => {
                debug_assert_eq!(kind, HEADERS);
                let mut body = payload;
                if flags & PADDED != 0 {
                    let (&pad, rest) = body
                        .split_first()
                        .ok_or(RewriteError::BadPadding { stream })?;
                    if pad as usize > rest.len() {
                        return Err(RewriteError::BadPadding { stream });
                    }
                    body = &rest[..rest.len() - pad as usize];
                }
                let mut priority = [0u8; 5];
                if flags & PRIORITY != 0 {
                    if body.len() < 5 {
                        return Err(RewriteError::ShortPriority { stream });
                    }
                    priority.copy_from_slice(&body[..5]);
                    body = &body[5..];
                }
                OpenBlock {
                    stream,
                    flags: flags & (END_STREAM | PRIORITY),
                    priority,
                    fragment: body.to_vec(),
                }
            }
        };
        if kind == CONTINUATION {
            open.fragment.extend_from_slice(payload);
        }
        if open.fragment.len() > MAX_HEADER_BLOCK {
            return Err(RewriteError::BlockTooLarge { stream });
        }
        if flags & END_HEADERS == 0 {
            self.block = Some(open);
            return Ok(());
        }
        let block = self.reencode(&open)?;
        write_header_frames(&open, &block, out);
        Ok(())
    }

    /// Decodes one header block and encodes it again with the authority
    /// made valid.
    fn reencode(&mut self, open: &OpenBlock) -> Result<Vec<u8>, RewriteError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(&open.fragment, |name, value| {
                list_size += name.len() + value.len() + 32;
                if list_size <= MAX_HEADER_LIST {
                    fields.push((name.into_owned(), value.into_owned()))
                }
            })
            .map_err(|e| RewriteError::Hpack {
                stream: open.stream,
                cause: format!("{e:?}"),
            })?;
        if list_size > MAX_HEADER_LIST {
            return Err(RewriteError::ListTooLarge {
                stream: open.stream,
            });
        }
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" && !is_valid_authority(value) {
                let shown = String::from_utf8_lossy(value).escape_debug().to_string();
                if self.replaced.len() < 4 && !self.replaced.contains(&shown) {
                    self.replaced.push(shown);
                }
                *value = REPLACEMENT_AUTHORITY.to_vec();
            }
        }
        Ok(self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))))
    }
}

/// One HEADERS frame and as many CONTINUATION frames as `block` needs.
fn write_header_frames(open: &OpenBlock, block: &[u8], out: &mut BytesMut) {
    let priority: &[u8] = if open.flags & PRIORITY != 0 {
        &open.priority
    } else {
        &[]
    };
    let first = block.len().min(MAX_FRAME_SIZE - priority.len());
    let (head, mut rest) = block.split_at(first);
    let mut flags = open.flags;
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    put_frame_header(
        out,
        priority.len() + head.len(),
        HEADERS,
        flags,
        open.stream,
    );
    out.put_slice(priority);
    out.put_slice(head);
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME_SIZE);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        put_frame_header(out, n, CONTINUATION, flags, open.stream);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A connection whose client-to-server bytes go through a [`Rewriter`].
pub struct AuthorityFix<IO> {
    inner: IO,
    rewriter: Rewriter,
    out: BytesMut,
    scratch: Box<[u8]>,
    logged: usize,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(inner: IO) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            out: BytesMut::new(),
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
            logged: 0,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    fn log_new_replacements(&mut self) {
        for authority in &self.rewriter.replaced()[self.logged..] {
            tracing::debug!(
                authority = %authority,
                "client sent an :authority that is not a URI authority (a unix socket \
                 path from Go gRPC?); serving it as localhost"
            );
        }
        self.logged = self.rewriter.replaced().len();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut raw = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if raw.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let filled = raw.filled().len();
                    this.rewriter
                        .feed(&this.scratch[..filled], &mut this.out)
                        .map_err(|e| {
                            tracing::debug!(error = %e, "closing an HTTP/2 connection");
                            io::Error::from(e)
                        })?;
                    if this.rewriter.replaced().len() > this.logged {
                        this.log_new_replacements();
                    }
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
