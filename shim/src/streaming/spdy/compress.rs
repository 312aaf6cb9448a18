//! SPDY/3 name/value header blocks: zlib with the protocol's fixed
//! dictionary, one context per direction for the whole connection.
//!
//! Each header block is compressed with a sync flush, so a block ends on a
//! byte boundary and the receiver can inflate it from its frame alone while
//! the window (and so earlier blocks' strings) carries over to the next.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::SpdyError;

/// The header names and values SPDY/3 puts in its dictionary, each as a
/// 32-bit big-endian length and the bytes (section 2.6.10.1 of the draft).
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's tail: status codes, reason phrases, dates, media types,
/// as one run of bytes without length prefixes.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
    "charset=iso-8859-1,utf-,*,enq=0.",
);

/// The largest header block we inflate: SPDY does not bound it, a hostile
/// peer could otherwise make a few bytes expand without end.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// SPDY/3's zlib dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let mut bytes = Vec::with_capacity(1423);
        for word in DICTIONARY_WORDS {
            bytes.extend_from_slice(&(word.len() as u32).to_be_bytes());
            bytes.extend_from_slice(word.as_bytes());
        }
        bytes.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        bytes
    })
}

/// Our direction's compression context.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    pub fn new() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(dictionary())
            .expect("a fresh deflate stream takes a dictionary");
        HeaderCompressor { zlib }
    }

    /// Compresses one encoded header block, ending it with a sync flush.
    pub fn compress(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            let consumed = (self.zlib.total_in() - before) as usize;
            input = &input[consumed..];
            // Done once all input is in and the flush fitted with room to
            // spare (zlib fills the buffer when it has more to give).
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

/// The peer's direction's decompression context.
pub struct HeaderDecompressor {
    zlib: Decompress,
}

impl HeaderDecompressor {
    pub fn new() -> Self {
        HeaderDecompressor {
            zlib: Decompress::new(true),
        }
    }

    /// Inflates one header block (a control frame's compressed part).
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut input = compressed;
        loop {
            if out.len() == out.capacity() {
                out.reserve(4096);
            }
            let before = self.zlib.total_in();
            let status = match self
                .zlib
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(status) => status,
                Err(e) if e.needs_dictionary().is_some() => {
                    let consumed = (self.zlib.total_in() - before) as usize;
                    input = &input[consumed..];
                    self.zlib
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Zlib(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Zlib(e.to_string())),
            };
            let consumed = (self.zlib.total_in() - before) as usize;
            input = &input[consumed..];
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlockTooLarge);
            }
            if matches!(status, Status::StreamEnd) {
                return Err(SpdyError::Zlib("the peer ended its header stream".into()));
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && out.len() < out.capacity() {
                // No progress with input left and room to write: the input
                // is a truncated deflate block.
                return Err(SpdyError::Zlib("truncated header block".into()));
            }
        }
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(bytes: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in bytes {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_is_spdy3s() {
        // Its length and Adler-32 (the DICTID in every SPDY/3 zlib header).
        assert_eq!(dictionary().len(), 1423);
        assert_eq!(adler32(dictionary()), 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_share_one_context_per_direction() {
        let mut ours = HeaderCompressor::new();
        let mut theirs = HeaderDecompressor::new();
        let blocks: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("streamtype stdout {i} content-type").into_bytes())
            .collect();
        let mut sizes = Vec::new();
        for block in &blocks {
            let compressed = ours.compress(block).unwrap();
            sizes.push(compressed.len());
            assert_eq!(&theirs.decompress(&compressed).unwrap(), block);
        }
        // Later blocks refer back to earlier ones: smaller than the first.
        assert!(sizes[4] < sizes[0], "{sizes:?}");
    }

    #[test]
    fn large_blocks_round_trip() {
        let mut ours = HeaderCompressor::new();
        let mut theirs = HeaderDecompressor::new();
        let block: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let compressed = ours.compress(&block).unwrap();
        assert_eq!(theirs.decompress(&compressed).unwrap(), block);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut theirs = HeaderDecompressor::new();
        assert!(theirs
            .decompress(b"\x78\xbb\x00\x00\x00\x00garbage")
            .is_err());
    }
}
