//! SPDY/3.1 frames: the 8-byte frame header, the eight control frames
//! Kubernetes' clients and servers exchange, and data frames.
//!
//! ```text
//! control: |1| version(15) | type(16) | flags(8) | length(24) | payload
//! data:    |0| stream id(31)          | flags(8) | length(24) | payload
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::compress::{HeaderCompressor, HeaderDecompressor};
use super::SpdyError;

pub const VERSION: u16 = 3;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN on SYN_STREAM, SYN_REPLY, HEADERS and data frames.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// The SETTINGS id that sets the initial window of new streams.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// The largest payload a frame's 24-bit length can carry.
pub const MAX_FRAME_PAYLOAD: usize = (1 << 24) - 1;

/// A name/value header block. Names are lower case on the wire; a value
/// holding several values separates them with NUL bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The first value of `name`, looked up without regard to case (Go's
    /// `http.Header.Get`, which kubelet uses, canonicalises names).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u32(self.0.len() as u32);
        for (name, value) in &self.0 {
            out.put_u32(name.len() as u32);
            out.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            out.put_u32(value.len() as u32);
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn decode(mut block: &[u8]) -> Result<Headers, SpdyError> {
        fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
            if block.len() < 4 {
                return Err(SpdyError::HeaderBlock("truncated length"));
            }
            let len = block.get_u32() as usize;
            if block.len() < len {
                return Err(SpdyError::HeaderBlock("truncated string"));
            }
            let (bytes, rest) = block.split_at(len);
            *block = rest;
            Ok(bytes)
        }
        if block.len() < 4 {
            return Err(SpdyError::HeaderBlock("truncated count"));
        }
        let count = block.get_u32() as usize;
        let mut pairs = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let name = take(&mut block)?;
            let value = take(&mut block)?;
            if name.is_empty() {
                return Err(SpdyError::HeaderBlock("empty name"));
            }
            let name = std::str::from_utf8(name)
                .map_err(|_| SpdyError::HeaderBlock("name is not UTF-8"))?;
            let value = String::from_utf8_lossy(value).into_owned();
            pairs.push((name.to_ascii_lowercase(), value));
        }
        Ok(Headers(pairs))
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type this implementation does not act on
    /// (CREDENTIAL, NOOP, …): the draft says to ignore it.
    Ignored {
        frame_type: u16,
    },
}

fn control_header(out: &mut BytesMut, frame_type: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | len as u32);
}

impl Frame {
    /// Appends the frame's bytes to `out`, compressing header blocks with
    /// `compressor` (the connection's one context for this direction).
    pub fn encode(
        &self,
        compressor: &mut HeaderCompressor,
        out: &mut BytesMut,
    ) -> Result<(), SpdyError> {
        match self {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                let block = compressor.compress(&headers.encode())?;
                control_header(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(associated_to & 0x7fff_ffff);
                out.put_u8((priority & 0x07) << 5);
                out.put_u8(*slot);
                out.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let frame_type = if matches!(self, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = compressor.compress(&headers.encode())?;
                control_header(out, frame_type, *flags, 4 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control_header(out, TYPE_RST_STREAM, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                control_header(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len());
                out.put_u32(entries.len() as u32);
                for entry in entries {
                    out.put_u32((u32::from(entry.flags) << 24) | (entry.id & 0x00ff_ffff));
                    out.put_u32(entry.value);
                }
            }
            Frame::Ping { id } => {
                control_header(out, TYPE_PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control_header(out, TYPE_GOAWAY, 0, 8);
                out.put_u32(last_good_stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(SpdyError::FrameTooLarge(data.len()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.extend_from_slice(data);
            }
            Frame::Ignored { frame_type } => {
                control_header(out, *frame_type, 0, 0);
            }
        }
        Ok(())
    }

    /// Parses one frame from its 8-byte header and its payload.
    pub fn decode(
        head: [u8; 8],
        payload: Bytes,
        decompressor: &mut HeaderDecompressor,
    ) -> Result<Frame, SpdyError> {
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        if first & 0x8000_0000 == 0 {
            return Ok(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: payload,
            });
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        let frame_type = (first & 0xffff) as u16;
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion(version));
        }
        let mut p = payload;
        let need = |p: &Bytes, n: usize| {
            if p.len() < n {
                Err(SpdyError::FrameTooShort {
                    frame_type,
                    len: p.len(),
                })
            } else {
                Ok(())
            }
        };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need(&p, 10)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                let headers = Headers::decode(&decompressor.decompress(&p)?)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(&p, 4)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = Headers::decode(&decompressor.decompress(&p)?)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(&p, 8)?;
                Frame::RstStream {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(&p, 4)?;
                let count = p.get_u32() as usize;
                need(&p, count.saturating_mul(8))?;
                let entries = (0..count)
                    .map(|_| {
                        let flag_id = p.get_u32();
                        Setting {
                            flags: (flag_id >> 24) as u8,
                            id: flag_id & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(&p, 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                need(&p, 8)?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(&p, 8)?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Ignored { frame_type: other },
        };
        Ok(frame)
    }
}

/// Reads one frame; `None` at a clean end of the stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decompressor: &mut HeaderDecompressor,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    let mut filled = 0;
    while filled < head.len() {
        let n = reader.read(&mut head[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(SpdyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        filled += n;
    }
    let len = (u32::from_be_bytes([0, head[5], head[6], head[7]])) as usize;
    let mut payload = BytesMut::zeroed(len);
    reader.read_exact(&mut payload).await?;
    Frame::decode(head, payload.freeze(), decompressor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_frame() -> Vec<Frame> {
        let headers = Headers::new()
            .with("streamType", "stdout")
            .with("port", "8080")
            .with("multi", "a\0b");
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 7,
                slot: 0,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: headers.clone(),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: Headers::new(),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![Setting {
                    flags: 1,
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 1 << 20,
                }],
            },
            Frame::Ping { id: 0xffff_fffe },
            Frame::GoAway {
                last_good_stream_id: 7,
                status: goaway::PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 9,
                flags: FLAG_FIN,
                headers,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 65536,
            },
            Frame::Data {
                stream_id: 11,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 13,
                flags: 0,
                data: Bytes::new(),
            },
        ]
    }

    #[tokio::test]
    async fn every_frame_type_round_trips_on_one_connection() {
        let mut compressor = HeaderCompressor::new();
        let mut wire = BytesMut::new();
        let frames = every_frame();
        for frame in &frames {
            frame.encode(&mut compressor, &mut wire).unwrap();
        }
        let mut reader: &[u8] = &wire;
        let mut decompressor = HeaderDecompressor::new();
        for frame in &frames {
            let got = read_frame(&mut reader, &mut decompressor).await.unwrap();
            assert_eq!(got.as_ref(), Some(frame));
        }
        assert_eq!(
            read_frame(&mut reader, &mut decompressor).await.unwrap(),
            None
        );
    }

    #[test]
    fn header_lookup_ignores_case_and_takes_the_first_value() {
        let headers = Headers::new().with("StreamType", "error").with("x", "a\0b");
        assert_eq!(headers.get("streamtype"), Some("error"));
        assert_eq!(headers.get("STREAMTYPE"), Some("error"));
        assert_eq!(headers.get("x"), Some("a"));
        assert_eq!(headers.get("port"), None);
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut decompressor = HeaderDecompressor::new();
        // Version 2.
        let head = [0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4];
        assert!(matches!(
            Frame::decode(head, Bytes::from_static(&[0, 0, 0, 1]), &mut decompressor),
            Err(SpdyError::UnsupportedVersion(2))
        ));
        // A RST_STREAM shorter than 8 bytes.
        let head = [0x80, 0x03, 0x00, 0x03, 0, 0, 0, 4];
        assert!(matches!(
            Frame::decode(head, Bytes::from_static(&[0, 0, 0, 1]), &mut decompressor),
            Err(SpdyError::FrameTooShort { .. })
        ));
        // A header block claiming more strings than it holds.
        assert!(Headers::decode(&[0, 0, 0, 2, 0, 0, 0, 1, b'a']).is_err());
        // Unknown control frame types are ignored.
        let head = [0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 0];
        assert_eq!(
            Frame::decode(head, Bytes::new(), &mut decompressor).unwrap(),
            Frame::Ignored { frame_type: 10 }
        );
    }
}
