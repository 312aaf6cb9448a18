//! The one error type of `caisson-image`: every variant names what failed and on what.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        digest: String,
        reason: &'static str,
    },

    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {what}: descriptor says {expected} bytes, blob has {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("blob {digest} ({what}) is missing from the archive and the store")]
    MissingBlob { digest: String, what: String },

    #[error("layer entry {entry:?} is rejected: {reason}")]
    UnsafeEntry { entry: String, reason: String },

    #[error("layer entry {entry:?} could not be unpacked: {source}")]
    EntryFailed {
        entry: String,
        #[source]
        source: std::io::Error,
    },

    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },

    /// A layer whose uncompressed tar goes on past the store's limit (a
    /// gzip bomb, or a layer the node was not sized for).
    #[error(
        "{what} unpacks to more than {limit} bytes (the node's images.max_unpacked_layer_size)"
    )]
    LayerTooLarge { what: String, limit: u64 },

    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },

    #[error("image {0:?} not found")]
    NotFound(String),

    #[error("image reference {reference:?} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },

    #[error("rootfs for {id:?} already exists")]
    RootfsExists { id: String },

    #[error("rootfs for {id:?} not found")]
    RootfsNotFound { id: String },

    #[error("mounting {target}: {reason}")]
    MountFailed { target: PathBuf, reason: String },

    #[error("authentication to registry {registry} failed: {reason}")]
    RegistryUnauthorized { registry: String, reason: String },

    #[error("registry {registry} is unreachable: {reason}")]
    RegistryUnreachable { registry: String, reason: String },

    /// The registry answered the TLS handshake with something that is not
    /// TLS (a plain HTTP server answers so), or dropped the connection in it.
    #[error("registry {registry} does not speak HTTPS: {reason}")]
    RegistryNotTls { registry: String, reason: String },

    #[error("{reference} not found in registry {registry}: {reason}")]
    NotInRegistry {
        reference: String,
        registry: String,
        reason: String,
    },

    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// An I/O error on `path` while doing `op` ("creating", "renaming", …).
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn unsafe_entry(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::UnsafeEntry {
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ImageError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// A copy for every caller waiting on one shared pull (`std::io::Error`
    /// is not `Clone`: its kind and message are carried over).
    pub fn duplicate(&self) -> ImageError {
        fn io(e: &std::io::Error) -> std::io::Error {
            std::io::Error::new(e.kind(), e.to_string())
        }
        use ImageError::*;
        match self {
            InvalidDigest { digest, reason } => InvalidDigest {
                digest: digest.clone(),
                reason,
            },
            InvalidReference { reference, reason } => InvalidReference {
                reference: reference.clone(),
                reason: reason.clone(),
            },
            DigestMismatch {
                what,
                expected,
                actual,
            } => DigestMismatch {
                what: what.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            SizeMismatch {
                what,
                expected,
                actual,
            } => SizeMismatch {
                what: what.clone(),
                expected: *expected,
                actual: *actual,
            },
            MissingBlob { digest, what } => MissingBlob {
                digest: digest.clone(),
                what: what.clone(),
            },
            UnsafeEntry { entry, reason } => UnsafeEntry {
                entry: entry.clone(),
                reason: reason.clone(),
            },
            EntryFailed { entry, source } => EntryFailed {
                entry: entry.clone(),
                source: io(source),
            },
            LayerTooLarge { what, limit } => LayerTooLarge {
                what: what.clone(),
                limit: *limit,
            },
            Malformed { what, reason } => Malformed {
                what: what.clone(),
                reason: reason.clone(),
            },
            Unsupported { what, value } => Unsupported {
                what,
                value: value.clone(),
            },
            NotFound(name) => NotFound(name.clone()),
            Ambiguous { reference, count } => Ambiguous {
                reference: reference.clone(),
                count: *count,
            },
            RootfsExists { id } => RootfsExists { id: id.clone() },
            RootfsNotFound { id } => RootfsNotFound { id: id.clone() },
            MountFailed { target, reason } => MountFailed {
                target: target.clone(),
                reason: reason.clone(),
            },
            RegistryUnauthorized { registry, reason } => RegistryUnauthorized {
                registry: registry.clone(),
                reason: reason.clone(),
            },
            RegistryUnreachable { registry, reason } => RegistryUnreachable {
                registry: registry.clone(),
                reason: reason.clone(),
            },
            RegistryNotTls { registry, reason } => RegistryNotTls {
                registry: registry.clone(),
                reason: reason.clone(),
            },
            NotInRegistry {
                reference,
                registry,
                reason,
            } => NotInRegistry {
                reference: reference.clone(),
                registry: registry.clone(),
                reason: reason.clone(),
            },
            Registry { registry, reason } => Registry {
                registry: registry.clone(),
                reason: reason.clone(),
            },
            Io { op, path, source } => Io {
                op,
                path: path.clone(),
                source: io(source),
            },
        }
    }

    /// True when the error means "no such image" (maps to gRPC NOT_FOUND).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ImageError::NotFound(_) | ImageError::RootfsNotFound { .. }
        )
    }
}
