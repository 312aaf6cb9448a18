//! Content digests (`sha256:<64 hex>`): parsing, computing, and a hashing reader.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, Result};

/// A sha256 content digest. Other algorithms are rejected as unsupported,
/// like containerd does for content it stores.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// From 64 lowercase hex characters.
    pub fn from_hex(hex: &str) -> Result<Digest> {
        if hex.len() != 64 {
            return Err(ImageError::InvalidDigest {
                digest: hex.to_string(),
                reason: "sha256 digests have 64 hex characters",
            });
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ImageError::InvalidDigest {
                digest: hex.to_string(),
                reason: "digest must be lowercase hex",
            });
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex characters, as `crictl images` shows ids.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Digest> {
        match s.split_once(':') {
            Some(("sha256", hex)) => Digest::from_hex(hex),
            Some((alg, _)) => Err(ImageError::Unsupported {
                what: "digest algorithm",
                value: alg.to_string(),
            }),
            None => Err(ImageError::InvalidDigest {
                digest: s.to_string(),
                reason: "expected <algorithm>:<hex>",
            }),
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageError;
    fn try_from(s: String) -> Result<Digest> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Incremental sha256 with a byte count.
#[derive(Default, Clone)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.sha.finalize()),
        }
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::default(),
        }
    }

    /// Reads what is left to the end (tar readers stop before trailing padding),
    /// then returns the digest and length of the whole stream.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let len = self.hasher.len();
        Ok((self.hasher.finish(), len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The chain id of a layer stack: `chain(L0) = diff(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))` (OCI image spec).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let hex = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            (&format!("sha256:{hex}"), true),
            (&format!("sha256:{}", "A".repeat(64)), false),
            (&format!("sha256:{}", "a".repeat(63)), false),
            (&format!("sha512:{hex}"), false),
            (&hex, false),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<Digest>().is_ok(), *ok, "{input}");
        }
    }

    #[test]
    fn digest_of_empty_is_known_value() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn hashing_reader_counts_the_tail() {
        let data = vec![7u8; 10_000];
        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 100];
        r.read_exact(&mut first).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!(n, 10_000);
        assert_eq!(d, Digest::of(&data));
    }
}
