use super::*;
use caisson_tests::http2::{self, grpc_request_fields, Fields, Frame, PREFACE};

const PATH: &str = "/runtime.v1.RuntimeService/Version";

/// What the server sees of `client_bytes`, fed `chunk` bytes at a time.
fn rewrite(client_bytes: &[u8], chunk: usize) -> Result<Vec<u8>, RewriteError> {
    let mut rewriter = Rewriter::default();
    let mut out = BytesMut::new();
    for piece in client_bytes.chunks(chunk) {
        rewriter.feed(piece, &mut out)?;
    }
    Ok(out.to_vec())
}

fn headers_frame(encoder: &mut loona_hpack::Encoder, stream: u32, fields: &Fields) -> Frame {
    let block = encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    Frame::new(http2::HEADERS, http2::END_HEADERS, stream, block)
}

/// The header lists of every HEADERS(+CONTINUATION) block in `frames`, decoded
/// by one decoder, as the server decodes a connection.
fn decoded_blocks(frames: &[Frame]) -> Vec<Fields> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for f in frames {
        match f.kind {
            http2::HEADERS => {
                let mut p = &f.payload[..];
                assert_eq!(f.flags & http2::PADDED, 0, "padding is dropped");
                if f.flags & http2::PRIORITY_FLAG != 0 {
                    p = &p[5..];
                }
                block = p.to_vec();
            }
            http2::CONTINUATION => block.extend_from_slice(&f.payload),
            _ => continue,
        }
        if f.flags & http2::END_HEADERS != 0 {
            let mut fields = Vec::new();
            decoder
                .decode_with_cb(&block, |n, v| fields.push((n.into_owned(), v.into_owned())))
                .unwrap();
            blocks.push(fields);
        }
    }
    blocks
}

fn authority_of(fields: &Fields) -> Option<Vec<u8>> {
    fields
        .iter()
        .find(|(n, _)| n.as_slice() == b":authority")
        .map(|(_, v)| v.clone())
}

#[test]
fn authorities_are_kept_when_valid_and_replaced_otherwise() {
    // (sent, what the server must see)
    type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
    let cases: &[Case] = &[
        (Some(b"/run/caisson/caissond.sock"), Some(b"localhost")),
        (Some(b""), Some(b"localhost")),
        (Some(b"\xff\xfe not utf-8"), Some(b"localhost")),
        (Some(b"has space"), Some(b"localhost")),
        (Some(b"\x01\x7f"), Some(b"localhost")),
        (Some(b"localhost"), Some(b"localhost")),
        (Some(b"localhost:1234"), Some(b"localhost:1234")),
        (Some(b"[::1]:50051"), Some(b"[::1]:50051")),
        (Some(b"caissond.example"), Some(b"caissond.example")),
        (None, None),
    ];
    for (sent, seen) in cases {
        let fields = grpc_request_fields(PATH, *sent);
        let mut encoder = loona_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(headers_frame(&mut encoder, 1, &fields).encode());
        let out = rewrite(&bytes, usize::MAX).unwrap();
        let blocks = decoded_blocks(&Frame::parse_all(&out));
        assert_eq!(blocks.len(), 1);
        assert_eq!(authority_of(&blocks[0]).as_deref(), *seen, "sent {sent:?}");
        // Everything else is kept, in order.
        let others = |f: &Fields| -> Fields {
            f.iter()
                .filter(|(n, _)| n.as_slice() != b":authority")
                .cloned()
                .collect()
        };
        assert_eq!(others(&blocks[0]), others(&fields), "sent {sent:?}");
    }
}

#[test]
fn other_frames_pass_through_byte_for_byte_whatever_the_read_sizes() {
    let mut bytes = PREFACE.to_vec();
    let frames = [
        Frame::new(http2::SETTINGS, 0, 0, [0, 4, 0, 1, 0, 0]),
        Frame::new(http2::WINDOW_UPDATE, 0, 0, [0, 0, 0x10, 0]),
        Frame::new(http2::PING, 0, 0, *b"12345678"),
        Frame::new(http2::DATA, 0, 3, vec![7u8; 40_000]),
        Frame::new(http2::PRIORITY, 0, 5, [0, 0, 0, 1, 9]),
        Frame::new(http2::RST_STREAM, 0, 3, [0, 0, 0, 8]),
    ];
    for f in &frames {
        bytes.extend(f.encode());
    }
    for chunk in [1, 2, 9, 10, 4096, usize::MAX] {
        assert_eq!(rewrite(&bytes, chunk).unwrap(), bytes, "chunk {chunk}");
    }
}

#[test]
fn padding_priority_and_continuations_become_one_clean_block() {
    let fields = grpc_request_fields(PATH, Some(b"/run/caisson/caissond.sock"));
    let block = loona_hpack::Encoder::new()
        .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let (a, b) = block.split_at(block.len() / 2);
    let (b, c) = b.split_at(b.len() / 2);
    let mut first = vec![3u8]; // pad length
    first.extend([0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight 200
    first.extend(a);
    first.extend([0, 0, 0]);
    let flags = http2::PADDED | http2::PRIORITY_FLAG | http2::END_STREAM;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(Frame::new(http2::HEADERS, flags, 3, first).encode());
    bytes.extend(Frame::new(http2::CONTINUATION, 0, 3, b.to_vec()).encode());
    bytes.extend(Frame::new(http2::CONTINUATION, http2::END_HEADERS, 3, c.to_vec()).encode());
    for chunk in [1, 7, usize::MAX] {
        let frames = Frame::parse_all(&rewrite(&bytes, chunk).unwrap());
        assert_eq!(frames.len(), 1, "one HEADERS frame: {frames:?}");
        let f = &frames[0];
        assert_eq!(f.kind, http2::HEADERS);
        assert_eq!(f.stream, 3);
        assert_eq!(
            f.flags,
            http2::END_STREAM | http2::PRIORITY_FLAG | http2::END_HEADERS
        );
        assert_eq!(&f.payload[..5], &[0x80, 0, 0, 1, 200]);
        let blocks = decoded_blocks(&frames);
        assert_eq!(authority_of(&blocks[0]).as_deref(), Some(&b"localhost"[..]));
    }
}

#[test]
fn the_servers_table_follows_ours_across_blocks_of_a_connection() {
    // The client indexes its authority and then refers to it by index: the
    // server must never see the socket path through a table entry.
    let mut encoder = loona_hpack::Encoder::new();
    let mut bytes = PREFACE.to_vec();
    let mut sent = Vec::new();
    for (i, path) in ["/a", "/b", "/a", "/c", "/a"].iter().enumerate() {
        let mut fields = grpc_request_fields(path, Some(b"/run/caisson/caissond.sock"));
        fields.push((b"x-n".to_vec(), i.to_string().into_bytes()));
        bytes.extend(headers_frame(&mut encoder, 1 + 2 * i as u32, &fields).encode());
        sent.push(fields);
    }
    let blocks = decoded_blocks(&Frame::parse_all(&rewrite(&bytes, 5).unwrap()));
    assert_eq!(blocks.len(), sent.len());
    for (got, sent) in blocks.iter().zip(&sent) {
        assert_eq!(authority_of(got).as_deref(), Some(&b"localhost"[..]));
        assert_eq!(got.len(), sent.len());
        for ((gn, gv), (sn, sv)) in got.iter().zip(sent) {
            assert_eq!(gn, sn);
            if gn.as_slice() != b":authority" {
                assert_eq!(gv, sv);
            }
        }
    }
}

/// `fields` as a HEADERS frame and CONTINUATIONs of at most 16 KiB.
fn split_block(encoder: &mut loona_hpack::Encoder, stream: u32, fields: &Fields) -> Vec<u8> {
    let block = encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 {
            http2::HEADERS
        } else {
            http2::CONTINUATION
        };
        let flags = if i + 1 == chunks.len() {
            http2::END_HEADERS
        } else {
            0
        };
        out.extend(Frame::new(kind, flags, stream, chunk.to_vec()).encode());
    }
    out
}

#[test]
fn a_block_larger_than_a_frame_is_split_into_continuations() {
    let mut fields = grpc_request_fields(PATH, Some(b"/a/path"));
    // Values no table can shorten: the re-encoded block is over 40 KB.
    for i in 0..5 {
        fields.push((format!("x-big-{i}").into_bytes(), vec![b'a' + i; 9000]));
    }
    let mut bytes = PREFACE.to_vec();
    bytes.extend(split_block(&mut loona_hpack::Encoder::new(), 1, &fields));
    let frames = Frame::parse_all(&rewrite(&bytes, usize::MAX).unwrap());
    assert!(frames.len() >= 3, "{} frames", frames.len());
    assert!(frames.iter().all(|f| f.payload.len() <= 16_384));
    assert_eq!(frames[0].kind, http2::HEADERS);
    assert!(frames[1..].iter().all(|f| f.kind == http2::CONTINUATION));
    let ends: Vec<bool> = frames
        .iter()
        .map(|f| f.flags & http2::END_HEADERS != 0)
        .collect();
    assert_eq!(ends.iter().filter(|e| **e).count(), 1);
    assert!(ends.last().unwrap());
    assert_eq!(decoded_blocks(&frames)[0].len(), fields.len());
}

#[test]
fn blocks_that_would_expand_or_overflow_end_the_connection() {
    // A 4000-byte entry in the table, then a block of 5000 one-byte
    // references to it: 20 MB decoded from 5 KB on the wire.
    let mut table = vec![0x40, 0x01, b'x'];
    table.extend(loona_hpack::encoder::encode_integer(4000, 7));
    table.extend(vec![b'v'; 4000]);
    let one = loona_hpack::Decoder::new().decode(&table).unwrap();
    assert_eq!((one.len(), one[0].1.len()), (1, 4000), "the table entry");
    let mut refs = table.clone();
    refs.extend(vec![0x80 | 62; 5000]);
    // A dynamic table size update past what h2 advertises (4096).
    let mut resize = vec![0x3f];
    resize.extend(
        loona_hpack::encoder::encode_integer(1 << 20, 5)
            .into_iter()
            .skip(1),
    );
    let cases: Vec<(Vec<Frame>, &str)> = vec![
        (
            vec![Frame::new(http2::HEADERS, http2::END_HEADERS, 1, refs)],
            "decodes past",
        ),
        (
            vec![Frame::new(http2::HEADERS, http2::END_HEADERS, 1, resize)],
            "HPACK",
        ),
        (
            vec![Frame::new(
                http2::HEADERS,
                http2::END_HEADERS,
                1,
                vec![0; 16_385],
            )],
            "maximum frame size",
        ),
        (
            std::iter::once(Frame::new(http2::HEADERS, 0, 1, vec![0; 16_384]))
                .chain((0..6).map(|_| Frame::new(http2::CONTINUATION, 0, 1, vec![0; 16_384])))
                .collect(),
            "exceeds",
        ),
    ];
    for (frames, expected) in cases {
        let mut bytes = PREFACE.to_vec();
        for f in &frames {
            bytes.extend(f.encode());
        }
        let err = rewrite(&bytes, usize::MAX).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should name {expected:?}");
    }
}

#[test]
fn malformed_header_frames_end_the_connection_with_a_named_error() {
    let fields = grpc_request_fields(PATH, None);
    let block = loona_hpack::Encoder::new()
        .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let cases: Vec<(Vec<Frame>, &str)> = vec![
        (
            vec![Frame::new(
                http2::HEADERS,
                http2::END_HEADERS | http2::PADDED,
                1,
                [200, 1, 2],
            )],
            "padding",
        ),
        (
            vec![Frame::new(
                http2::HEADERS,
                http2::END_HEADERS | http2::PRIORITY_FLAG,
                1,
                [1, 2],
            )],
            "priority",
        ),
        (
            vec![
                Frame::new(http2::HEADERS, 0, 1, block.clone()),
                Frame::new(http2::DATA, 0, 1, *b"x"),
            ],
            "inside the header block of stream 1",
        ),
        (
            vec![Frame::new(
                http2::HEADERS,
                http2::END_HEADERS,
                1,
                [0xff, 0xff, 0xff, 0xff],
            )],
            "HPACK",
        ),
    ];
    for (frames, expected) in cases {
        let mut bytes = PREFACE.to_vec();
        for f in &frames {
            bytes.extend(f.encode());
        }
        let err = rewrite(&bytes, usize::MAX).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should name {expected:?}");
    }
}

/// The HTTP/2 server Caisson runs (h2, under tonic) accepts the rewritten
/// request, and resets the same request when it is not rewritten.
#[tokio::test]
async fn h2_serves_what_the_rewriter_forwards_and_resets_the_raw_request() {
    for fixed in [true, false] {
        let (client, server) = tokio::io::duplex(1 << 16);
        let server_task = tokio::spawn(async move {
            let serve = |io| async move {
                let mut conn = h2::server::handshake(io).await.unwrap();
                conn.accept()
                    .await
                    .map(|r| r.map(|(req, _respond)| req.uri().authority().map(|a| a.to_string())))
            };
            if fixed {
                serve(Box::pin(AuthorityFix::new(server)) as Pin<Box<dyn Io>>).await
            } else {
                serve(Box::pin(server) as Pin<Box<dyn Io>>).await
            }
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(Frame::new(http2::SETTINGS, 0, 0, vec![]).encode());
        let fields = grpc_request_fields(PATH, Some(b"/run/caisson/caissond.sock"));
        bytes.extend(headers_frame(&mut loona_hpack::Encoder::new(), 1, &fields).encode());
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        wr.write_all(&bytes).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                if Frame::parse_all_partial(&all)
                    .iter()
                    .any(|f| f.kind == http2::RST_STREAM)
                {
                    break;
                }
            }
            all
        });
        if fixed {
            let got = tokio::time::timeout(Duration::from_secs(10), server_task)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.unwrap().unwrap(), Some("localhost".to_string()));
            reader.abort();
        } else {
            let seen = tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .unwrap()
                .unwrap();
            let resets: Vec<Frame> = Frame::parse_all_partial(&seen)
                .into_iter()
                .filter(|f| f.kind == http2::RST_STREAM)
                .collect();
            assert_eq!(resets.len(), 1, "h2 resets the unrewritten request");
            assert_eq!(resets[0].payload, [0, 0, 0, 1], "PROTOCOL_ERROR");
            server_task.abort();
        }
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> Io for T {}

use std::time::Duration;
