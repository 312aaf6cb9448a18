//! A raw HTTP/2 client, frame by frame (RFC 9113), with HPACK from
//! `loona-hpack`: it sends whatever `:authority` bytes a test asks for,
//! which no `http::Uri`-based client (tonic, hyper, h2) can, and reports a
//! stream reset as such instead of hiding it in an error.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// One HTTP/2 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: u8, flags: u8, stream: u32, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind,
            flags,
            stream,
            payload: payload.into(),
        }
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Splits `bytes` into frames (after the preface, if `bytes` has it);
    /// panics on a partial frame.
    pub fn parse_all(bytes: &[u8]) -> Vec<Frame> {
        let (frames, rest) = Frame::parse_whole(bytes);
        assert_eq!(rest, 0, "{rest} bytes of a partial frame");
        frames
    }

    /// The whole frames at the start of `bytes`, ignoring a partial one at
    /// the end.
    pub fn parse_all_partial(bytes: &[u8]) -> Vec<Frame> {
        Frame::parse_whole(bytes).0
    }

    /// The whole frames and the length of what is left.
    fn parse_whole(mut bytes: &[u8]) -> (Vec<Frame>, usize) {
        if bytes.starts_with(PREFACE) {
            bytes = &bytes[PREFACE.len()..];
        }
        let mut frames = Vec::new();
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            if bytes.len() < 9 + len {
                break;
            }
            frames.push(Frame {
                kind: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
                payload: bytes[9..9 + len].to_vec(),
            });
            bytes = &bytes[9 + len..];
        }
        (frames, bytes.len())
    }
}

/// A header list, names and values as raw bytes.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The request headers of a gRPC call to `path`, with `authority` as given
/// (`None`: no `:authority` at all).
pub fn grpc_request_fields(path: &str, authority: Option<&[u8]>) -> Fields {
    let mut fields: Fields = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ];
    if let Some(a) = authority {
        fields.push((b":authority".to_vec(), a.to_vec()));
    }
    fields.extend([
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
        (b"user-agent".to_vec(), b"caisson-raw-h2/1".to_vec()),
    ]);
    fields
}

/// A gRPC length-prefixed message (uncompressed).
pub fn grpc_message(encoded: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(encoded);
    out
}

/// How a raw call ended.
#[derive(Debug)]
pub enum CallOutcome {
    /// Response headers, the DATA bytes and the trailers.
    Answered {
        headers: Fields,
        data: Vec<u8>,
        trailers: Fields,
    },
    /// The server reset the stream with this error code.
    Reset(u32),
    /// The server ended the connection with this GOAWAY error code.
    GoAway(u32),
}

impl CallOutcome {
    /// The `grpc-status` of an answered call (from the trailers, or from the
    /// headers of a trailers-only answer).
    pub fn grpc_status(&self) -> Option<String> {
        let CallOutcome::Answered {
            headers, trailers, ..
        } = self
        else {
            return None;
        };
        trailers
            .iter()
            .chain(headers.iter())
            .find(|(n, _)| n.as_slice() == b"grpc-status")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// One connection to an HTTP/2 server on a unix socket.
pub struct RawClient {
    sock: UnixStream,
    encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
    next_stream: u32,
}

impl RawClient {
    /// Connects, sends the preface and an empty SETTINGS frame.
    pub fn connect(socket: &Path) -> std::io::Result<RawClient> {
        let mut sock = UnixStream::connect(socket)?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        sock.write_all(PREFACE)?;
        sock.write_all(&Frame::new(SETTINGS, 0, 0, vec![]).encode())?;
        Ok(RawClient {
            sock,
            encoder: loona_hpack::Encoder::new(),
            decoder: loona_hpack::Decoder::new(),
            next_stream: 1,
        })
    }

    pub fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.sock.write_all(&frame.encode())
    }

    /// HPACK-encodes `fields` with this connection's encoder.
    pub fn encode_fields(&mut self, fields: &Fields) -> Vec<u8> {
        self.encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    pub fn read_frame(&mut self) -> std::io::Result<Frame> {
        let mut header = [0u8; 9];
        self.sock.read_exact(&mut header)?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.sock.read_exact(&mut payload)?;
        Ok(Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// One unary gRPC call: HEADERS with `fields`, one DATA frame with
    /// `message` (already length-prefixed), then frames until the stream
    /// ends, answering SETTINGS and PING as a client must.
    pub fn call(&mut self, fields: &Fields, message: &[u8]) -> std::io::Result<CallOutcome> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let block = self.encode_fields(fields);
        self.send(&Frame::new(HEADERS, END_HEADERS, stream, block))?;
        self.send(&Frame::new(DATA, END_STREAM, stream, message.to_vec()))?;
        let mut headers: Option<Fields> = None;
        let mut data = Vec::new();
        loop {
            let frame = self.read_frame()?;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    self.send(&Frame::new(SETTINGS, ACK, 0, vec![]))?
                }
                PING if frame.flags & ACK == 0 => {
                    self.send(&Frame::new(PING, ACK, 0, frame.payload))?
                }
                GOAWAY => {
                    let code = frame
                        .payload
                        .get(4..8)
                        .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    return Ok(CallOutcome::GoAway(code));
                }
                RST_STREAM if frame.stream == stream => {
                    let p = &frame.payload;
                    return Ok(CallOutcome::Reset(u32::from_be_bytes([
                        p[0], p[1], p[2], p[3],
                    ])));
                }
                HEADERS if frame.stream == stream => {
                    assert!(frame.flags & END_HEADERS != 0, "server split its headers");
                    let fields = self.decode(&frame.payload);
                    let end = frame.flags & END_STREAM != 0;
                    match headers {
                        None if end => {
                            return Ok(CallOutcome::Answered {
                                headers: fields,
                                data,
                                trailers: Vec::new(),
                            })
                        }
                        None => headers = Some(fields),
                        Some(headers) => {
                            return Ok(CallOutcome::Answered {
                                headers,
                                data,
                                trailers: fields,
                            })
                        }
                    }
                }
                DATA if frame.stream == stream => data.extend_from_slice(&frame.payload),
                _ => {}
            }
        }
    }

    /// Decodes a header block with this connection's decoder.
    pub fn decode(&mut self, block: &[u8]) -> Fields {
        let mut fields = Vec::new();
        self.decoder
            .decode_with_cb(block, |n, v| fields.push((n.into_owned(), v.into_owned())))
            .expect("the server's header block decodes");
        fields
    }
}
