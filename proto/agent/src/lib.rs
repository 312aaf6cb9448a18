//! Caisson's host↔guest protocol (`agent.proto`, package
//! `caisson.agent.v1`) and its framing: a 4-byte big-endian length, then one
//! encoded [`Frame`]. Used by the microvm backend (host) and `caisson-agent`
//! (guest), so both read and write frames with the same code.

use std::io::{self, Read, Write};

use prost::Message;

include!(concat!(env!("OUT_DIR"), "/caisson.agent.v1.rs"));

/// The largest frame either side accepts (a spec, or a chunk of output, is
/// far smaller); a larger length means the stream is corrupt.
pub const MAX_FRAME: usize = 16 << 20;

/// Response codes, numbered as gRPC's.
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const NOT_FOUND: u32 = 5;
    pub const ALREADY_EXISTS: u32 = 6;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
}

/// Reads one frame; `None` at a clean end of stream (before a length).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Frame::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes `frame` with its length prefix, ready to be written at once.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let len = frame.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    frame
        .encode(&mut buf)
        .expect("a Vec grows to hold any frame");
    buf
}

/// Writes one frame with a single `write_all` (callers serialise writers).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let buf = encode_frame(frame);
    if buf.len() - 4 > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes (at most {MAX_FRAME})", buf.len() - 4),
        ));
    }
    w.write_all(&buf)?;
    w.flush()
}

impl Response {
    /// A successful response with no result.
    pub fn ok() -> Response {
        Response::default()
    }

    /// A failed response.
    pub fn error(code: u32, message: impl Into<String>) -> Response {
        Response {
            code,
            message: message.into(),
            result: None,
        }
    }
}

impl Frame {
    /// A request frame.
    pub fn request(id: u64, op: request::Op) -> Frame {
        Frame {
            id,
            body: Some(frame::Body::Request(Request { op: Some(op) })),
        }
    }

    /// A response frame for request `id`.
    pub fn response(id: u64, response: Response) -> Frame {
        Frame {
            id,
            body: Some(frame::Body::Response(response)),
        }
    }

    /// An event frame (id 0).
    pub fn event(kind: event::Kind) -> Frame {
        Frame {
            id: 0,
            body: Some(frame::Body::Event(Event { kind: Some(kind) })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_back_to_back() {
        let frames = [
            Frame::request(
                7,
                request::Op::StartContainer(StartContainer {
                    container_id: "c1".into(),
                }),
            ),
            Frame::event(event::Kind::Output(Output {
                container_id: "c1".into(),
                exec_id: String::new(),
                stream: Stream::Stderr as i32,
                data: b"hello\n".to_vec(),
                eof: false,
            })),
            Frame::response(7, Response::error(code::NOT_FOUND, "no c1")),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            write_frame(&mut wire, f).unwrap();
        }
        let mut r = wire.as_slice();
        for f in &frames {
            assert_eq!(read_frame(&mut r).unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn a_truncated_or_oversized_frame_is_an_error_not_a_panic() {
        let wire = encode_frame(&Frame::request(1, request::Op::GetStatus(GetStatus {})));
        let mut cut = &wire[..wire.len() - 1];
        assert_eq!(
            read_frame(&mut cut).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut half_len = &wire[..2];
        assert_eq!(
            read_frame(&mut half_len).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut r = &huge[..];
        assert_eq!(
            read_frame(&mut r).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
