//! A SPDY/3.1 client for Kubernetes' streaming protocols, written from the
//! SPDY draft and the remotecommand/portforward conventions frame by frame
//! (the second implementation of the wire; it shares no code with
//! `caisson-shim`).
//!
//! * [`upgrade`]: the HTTP/1.1 request (`Connection: Upgrade`, `Upgrade:
//!   SPDY/3.1`, `X-Stream-Protocol-Version`) over a `TcpStream`, up to the
//!   `101 Switching Protocols`.
//! * [`SpdyClient`]: streams opened with SYN_STREAM, data frames, FIN,
//!   RST_STREAM, PING, GOAWAY, flow control both ways, and its own zlib
//!   contexts for header blocks. One task drives it: every call that waits
//!   reads frames until what it waits for has come.
//! * [`exec`] and [`PortForwardRequest`]: the remotecommand and
//!   portforward conventions on top (streams named by `streamType`, the
//!   error stream's `Status` JSON, request ids and ports).

use std::collections::HashMap;
use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// SPDY/3's header dictionary, from the draft's section 2.6.10.1.
const DICTIONARY: &[u8] =
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\
    \x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06ac\
    cept\x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\x00\
    \x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03\
    age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcac\
    he-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\
    \x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0e\
    content-length\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md\
    5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\x00\x00\x00\
    \x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07expire\
    s\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\
    \x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\
    \x08if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modi\
    fied\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06\
    pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorizat\
    ion\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-aft\
    er\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\
    \x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser\
    -agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\
    \x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\
    \x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\x00\
    \x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\
    \x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin100101\
    201202205206300302303304305306307402405406407408409410411412413414415416\
    417502504505203 Non-Authoritative Information204 No Content301 Moved Per\
    manently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Int\
    ernal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar \
    Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, S\
    at, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/\
    xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-ag\
    e=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

const CONTROL: u32 = 0x8000_0000;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const WINDOW_UPDATE: u16 = 9;
const FIN: u8 = 1;
/// SPDY/3.1's initial window (both directions, streams and connection).
pub const DEFAULT_WINDOW: u32 = 65536;

/// What the client knows of one of its streams.
#[derive(Debug, Default)]
pub struct ClientStream {
    pub replied: bool,
    /// Data received and not yet taken.
    pub data: Vec<u8>,
    /// The server sent FIN.
    pub fin: bool,
    /// The server reset the stream with this status.
    pub reset: Option<u32>,
    send_window: i64,
    unacked: u32,
}

/// A frame as the client saw it (kept in [`SpdyClient::log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    SynReply(u32),
    Data { stream: u32, len: usize, fin: bool },
    Rst { stream: u32, status: u32 },
    Settings,
    Ping(u32),
    GoAway { last_good: u32, status: u32 },
    WindowUpdate { stream: u32, delta: u32 },
    Other(u16),
}

pub struct SpdyClient<S> {
    io: S,
    deflate: Compress,
    inflate: Decompress,
    next_stream: u32,
    next_ping: u32,
    pub streams: HashMap<u32, ClientStream>,
    conn_send_window: i64,
    conn_unacked: u32,
    /// Send WINDOW_UPDATE as data comes in (on by default); off, the test
    /// grants windows itself with [`SpdyClient::window_update`].
    pub auto_window_update: bool,
    /// Every frame received, in order.
    pub log: Vec<Seen>,
    pub goaway: Option<u32>,
    /// The server closed the connection.
    pub closed: bool,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl<S: AsyncRead + AsyncWrite + Unpin> SpdyClient<S> {
    /// A client on an already upgraded connection.
    pub fn new(io: S) -> Self {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .expect("deflate takes a dictionary before any data");
        SpdyClient {
            io,
            deflate,
            inflate: Decompress::new(true),
            next_stream: 1,
            next_ping: 1,
            streams: HashMap::new(),
            conn_send_window: i64::from(DEFAULT_WINDOW),
            conn_unacked: 0,
            auto_window_update: true,
            log: Vec::new(),
            goaway: None,
            closed: false,
        }
    }

    fn header_block(&mut self, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 128);
        let mut rest = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(rest, &mut out, FlushCompress::Sync)
                .map_err(|e| invalid(e.to_string()))?;
            rest = &rest[(self.deflate.total_in() - before) as usize..];
            if rest.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn parse_header_block(&mut self, compressed: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut raw = Vec::with_capacity(1024);
        let mut rest = compressed;
        while !rest.is_empty() || raw.len() == raw.capacity() {
            raw.reserve(1024);
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(rest, &mut raw, FlushDecompress::Sync);
            rest = &rest[(self.inflate.total_in() - before) as usize..];
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| invalid(e.to_string()))?;
                }
                Err(e) => return Err(invalid(e.to_string())),
            }
        }
        let mut at = &raw[..];
        let word = |at: &mut &[u8]| -> io::Result<String> {
            if at.len() < 4 {
                return Err(invalid("short header block"));
            }
            let len = u32::from_be_bytes([at[0], at[1], at[2], at[3]]) as usize;
            let bytes = at
                .get(4..4 + len)
                .ok_or_else(|| invalid("short header block"))?;
            let text = String::from_utf8_lossy(bytes).into_owned();
            *at = &at[4 + len..];
            Ok(text)
        };
        if at.len() < 4 {
            return Err(invalid("short header block"));
        }
        let count = u32::from_be_bytes([at[0], at[1], at[2], at[3]]);
        at = &at[4..];
        let mut headers = Vec::new();
        for _ in 0..count {
            let name = word(&mut at)?;
            let value = word(&mut at)?;
            headers.push((name, value));
        }
        Ok(headers)
    }

    async fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(CONTROL | (3 << 16) | u32::from(kind)).to_be_bytes());
        frame.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }

    /// Opens a stream (SYN_STREAM) with these headers; does not wait.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> io::Result<u32> {
        let id = self.next_stream;
        self.next_stream += 2;
        let block = self.header_block(headers)?;
        let mut payload = Vec::new();
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&block);
        self.control(SYN_STREAM, 0, &payload).await?;
        self.streams.insert(
            id,
            ClientStream {
                send_window: i64::from(DEFAULT_WINDOW),
                ..ClientStream::default()
            },
        );
        Ok(id)
    }

    /// Waits for the server's SYN_REPLY (error: it reset the stream).
    pub async fn wait_reply(&mut self, id: u32) -> io::Result<()> {
        loop {
            let stream = self.stream(id)?;
            if let Some(status) = stream.reset {
                return Err(invalid(format!("stream {id} reset with status {status}")));
            }
            if stream.replied {
                return Ok(());
            }
            self.pump().await?;
        }
    }

    /// Opens a stream and waits for its reply.
    pub async fn open_and_wait(&mut self, headers: &[(&str, &str)]) -> io::Result<u32> {
        let id = self.open(headers).await?;
        self.wait_reply(id).await?;
        Ok(id)
    }

    fn stream(&self, id: u32) -> io::Result<&ClientStream> {
        self.streams
            .get(&id)
            .ok_or_else(|| invalid(format!("no stream {id}")))
    }

    fn stream_mut(&mut self, id: u32) -> io::Result<&mut ClientStream> {
        self.streams
            .get_mut(&id)
            .ok_or_else(|| invalid(format!("no stream {id}")))
    }

    /// Sends data within the server's windows (waiting for WINDOW_UPDATE
    /// when they are spent), with FIN on the last frame if asked.
    pub async fn send(&mut self, id: u32, mut data: &[u8], fin: bool) -> io::Result<()> {
        loop {
            if data.is_empty() {
                return if fin { self.fin(id).await } else { Ok(()) };
            }
            let window = self.stream(id)?.send_window.min(self.conn_send_window);
            if window <= 0 {
                self.pump().await?;
                continue;
            }
            let n = data.len().min(window as usize).min(16 * 1024);
            let last = n == data.len();
            self.data_frame(id, &data[..n], fin && last).await?;
            self.stream_mut(id)?.send_window -= n as i64;
            self.conn_send_window -= n as i64;
            data = &data[n..];
            if last {
                return Ok(());
            }
        }
    }

    /// Ends our side of a stream (an empty data frame with FIN).
    pub async fn fin(&mut self, id: u32) -> io::Result<()> {
        self.data_frame(id, &[], true).await
    }

    async fn data_frame(&mut self, id: u32, data: &[u8], fin: bool) -> io::Result<()> {
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        let flags = if fin { FIN } else { 0 };
        frame.extend_from_slice(&((u32::from(flags) << 24) | data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }

    /// RST_STREAM with CANCEL.
    pub async fn reset(&mut self, id: u32) -> io::Result<()> {
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&5u32.to_be_bytes());
        self.control(RST_STREAM, 0, &payload).await
    }

    /// Declares our initial stream window (SETTINGS_INITIAL_WINDOW_SIZE),
    /// which says we keep SPDY/3.1 flow control.
    pub async fn settings_initial_window(&mut self, window: u32) -> io::Result<()> {
        let mut payload = 1u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&7u32.to_be_bytes());
        payload.extend_from_slice(&window.to_be_bytes());
        self.control(SETTINGS, 0, &payload).await
    }

    /// Grants the server `delta` more bytes on a stream (0: the connection).
    pub async fn window_update(&mut self, id: u32, delta: u32) -> io::Result<()> {
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&delta.to_be_bytes());
        self.control(WINDOW_UPDATE, 0, &payload).await
    }

    /// Sends a PING and waits for its echo.
    pub async fn ping(&mut self) -> io::Result<()> {
        let id = self.next_ping;
        self.next_ping += 2;
        self.control(PING, 0, &id.to_be_bytes()).await?;
        while !self.log.contains(&Seen::Ping(id)) {
            self.pump().await?;
        }
        Ok(())
    }

    /// Says we are done with the connection (GOAWAY, status OK).
    pub async fn goaway(&mut self) -> io::Result<()> {
        let mut payload = (self.next_stream.saturating_sub(2)).to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        self.control(GOAWAY, 0, &payload).await
    }

    /// Reads one frame and acts on it. An error at the connection's end.
    pub async fn pump(&mut self) -> io::Result<()> {
        let mut head = [0u8; 8];
        if let Err(e) = self.io.read_exact(&mut head).await {
            self.closed = true;
            return Err(e);
        }
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await?;
        let word = |at: usize| -> io::Result<u32> {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("short control frame"))
        };
        if first & CONTROL == 0 {
            let id = first & 0x7fff_ffff;
            self.log.push(Seen::Data {
                stream: id,
                len,
                fin: flags & FIN != 0,
            });
            let auto = self.auto_window_update;
            let stream = self.stream_mut(id)?;
            stream.data.extend_from_slice(&payload);
            stream.fin |= flags & FIN != 0;
            stream.unacked += len as u32;
            let stream_delta = std::mem::take(&mut stream.unacked);
            let fin = stream.fin;
            self.conn_unacked += len as u32;
            if auto && len > 0 {
                // Best effort: the server may have sent its last frames
                // and gone.
                if !fin {
                    let _ = self.window_update(id, stream_delta).await;
                }
                let delta = std::mem::take(&mut self.conn_unacked);
                let _ = self.window_update(0, delta).await;
            }
            return Ok(());
        }
        let version = (first >> 16) & 0x7fff;
        if version != 3 {
            return Err(invalid(format!("SPDY version {version}")));
        }
        match (first & 0xffff) as u16 {
            SYN_REPLY => {
                let id = word(0)? & 0x7fff_ffff;
                self.parse_header_block(&payload[4..])?;
                self.log.push(Seen::SynReply(id));
                let stream = self.stream_mut(id)?;
                stream.replied = true;
                stream.fin |= flags & FIN != 0;
            }
            RST_STREAM => {
                let (id, status) = (word(0)? & 0x7fff_ffff, word(4)?);
                self.log.push(Seen::Rst { stream: id, status });
                if let Some(stream) = self.streams.get_mut(&id) {
                    stream.reset = Some(status);
                }
            }
            SETTINGS => self.log.push(Seen::Settings),
            PING => {
                let id = word(0)?;
                self.log.push(Seen::Ping(id));
                if id % 2 == 0 {
                    self.control(PING, 0, &id.to_be_bytes()).await?;
                }
            }
            GOAWAY => {
                let (last_good, status) = (word(0)? & 0x7fff_ffff, word(4)?);
                self.log.push(Seen::GoAway { last_good, status });
                self.goaway = Some(status);
            }
            WINDOW_UPDATE => {
                let (id, delta) = (word(0)? & 0x7fff_ffff, word(4)? & 0x7fff_ffff);
                self.log.push(Seen::WindowUpdate { stream: id, delta });
                if id == 0 {
                    self.conn_send_window += i64::from(delta);
                } else if let Some(stream) = self.streams.get_mut(&id) {
                    stream.send_window += i64::from(delta);
                }
            }
            SYN_STREAM => return Err(invalid("the server opened a stream")),
            other => self.log.push(Seen::Other(other)),
        }
        Ok(())
    }

    /// Reads until the server ended the stream (FIN or reset) and takes
    /// its data.
    pub async fn read_to_end(&mut self, id: u32) -> io::Result<Vec<u8>> {
        loop {
            let stream = self.stream(id)?;
            if stream.fin || stream.reset.is_some() {
                return Ok(std::mem::take(&mut self.stream_mut(id)?.data));
            }
            self.pump().await?;
        }
    }

    /// Reads until at least `n` bytes came on the stream and takes `n`.
    pub async fn read_exact(&mut self, id: u32, n: usize) -> io::Result<Vec<u8>> {
        loop {
            let stream = self.stream_mut(id)?;
            if stream.data.len() >= n {
                return Ok(stream.data.drain(..n).collect());
            }
            if stream.fin || stream.reset.is_some() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.pump().await?;
        }
    }

    /// Reads frames until the server closes the connection.
    pub async fn wait_closed(&mut self) {
        while self.pump().await.is_ok() {}
    }
}

/// Upgrades `tcp` to SPDY/3.1 with a `POST path` offering `protocols`;
/// returns the client and the protocol the server chose.
pub async fn upgrade(
    tcp: TcpStream,
    path: &str,
    protocols: &[&str],
) -> io::Result<(SpdyClient<TcpStream>, String)> {
    let host = tcp.peer_addr()?.to_string();
    upgrade_over(tcp, &host, path, protocols).await
}

/// [`upgrade`] over any byte stream (a TLS one, say), naming `host`.
pub async fn upgrade_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: S,
    host: &str,
    path: &str,
    protocols: &[&str],
) -> io::Result<(SpdyClient<S>, String)> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for protocol in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {protocol}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    // Byte by byte: nothing past the response's head may be eaten.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tcp.read_u8().await?;
        head.push(byte);
        if head.len() > 64 * 1024 {
            return Err(invalid("response head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(invalid(format!("upgrade refused: {head}")));
    }
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1")) {
        return Err(invalid(format!("no Upgrade: SPDY/3.1 in {head}")));
    }
    let protocol = header("x-stream-protocol-version").unwrap_or_default();
    Ok((SpdyClient::new(tcp), protocol))
}

/// An exec or attach as kubectl asks for it.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest<'a> {
    /// Sent on the stdin stream, then FIN (`None`: no stdin stream).
    pub stdin: Option<&'a [u8]>,
    pub stdout: bool,
    pub stderr: bool,
    /// Opens a resize stream (v3 and later) and sends these sizes
    /// (width, height) as JSON objects, then FIN.
    pub resizes: Option<&'a [(u16, u16)]>,
}

/// What came back on each stream.
#[derive(Debug, Clone, Default)]
pub struct ExecOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream: v4's Status JSON, v1–v3's error text.
    pub error: Vec<u8>,
}

impl ExecOutcome {
    /// The error stream as a Kubernetes `Status` object (v4).
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.error).unwrap_or(serde_json::Value::Null)
    }
}

/// Runs the remotecommand protocol's client side: the error stream first,
/// then stdin, stdout, stderr and resize (client-go's order), stdin's
/// bytes and FIN, the resizes, then everything the server sends until it
/// has ended stdout, stderr and the error stream.
pub async fn exec<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SpdyClient<S>,
    request: &ExecRequest<'_>,
) -> io::Result<ExecOutcome> {
    // Like client-go, nothing is written on (or closed of) our side of the
    // error and output streams: the server may be gone by then.
    let error = client.open_and_wait(&[("streamType", "error")]).await?;
    let stdin = match request.stdin {
        Some(_) => Some(client.open_and_wait(&[("streamType", "stdin")]).await?),
        None => None,
    };
    let mut outputs = Vec::new();
    for (wanted, kind) in [(request.stdout, "stdout"), (request.stderr, "stderr")] {
        if wanted {
            let id = client.open_and_wait(&[("streamType", kind)]).await?;
            outputs.push((kind, id));
        }
    }
    let resize = match request.resizes {
        Some(_) => Some(client.open_and_wait(&[("streamType", "resize")]).await?),
        None => None,
    };
    if let (Some(id), Some(bytes)) = (stdin, request.stdin) {
        client.send(id, bytes, false).await?;
        client.fin(id).await?;
    }
    if let (Some(id), Some(sizes)) = (resize, request.resizes) {
        for (width, height) in sizes {
            let json = serde_json::json!({"Width": width, "Height": height}).to_string();
            client.send(id, json.as_bytes(), false).await?;
        }
        client.fin(id).await?;
    }
    let mut outcome = ExecOutcome::default();
    for (kind, id) in outputs {
        let data = client.read_to_end(id).await?;
        match kind {
            "stdout" => outcome.stdout = data,
            _ => outcome.stderr = data,
        }
    }
    outcome.error = client.read_to_end(error).await?;
    Ok(outcome)
}

/// One forwarded connection of `portforward.k8s.io`: an error stream and a
/// data stream sharing `requestID` and `port`.
#[derive(Debug, Clone, Copy)]
pub struct PortForwardRequest {
    pub error: u32,
    pub data: u32,
}

impl PortForwardRequest {
    /// Opens the pair (error first, as client-go does) and waits for both
    /// replies. `request_id: None` leaves the header out, as clients older
    /// than Kubernetes 1.6 did.
    pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
        client: &mut SpdyClient<S>,
        port: u16,
        request_id: Option<&str>,
    ) -> io::Result<Self> {
        let port = port.to_string();
        let mut headers = vec![("streamType", "error"), ("port", port.as_str())];
        if let Some(id) = request_id {
            headers.push(("requestID", id));
        }
        let error = client.open_and_wait(&headers).await?;
        client.fin(error).await?;
        headers[0] = ("streamType", "data");
        let data = client.open_and_wait(&headers).await?;
        Ok(PortForwardRequest { error, data })
    }
}
