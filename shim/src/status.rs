//! The one place errors become gRPC statuses: bad requests name the field,
//! missing objects are NOT_FOUND, conflicts ALREADY_EXISTS or
//! FAILED_PRECONDITION, the rest INTERNAL with the cause chain.

use caisson_image::ImageError;
use tonic::{Code, Status};

use crate::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{field}: {reason}")]
    FieldNotFound { field: String, reason: String },
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A registry refused the credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A registry could not be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type CriResult<T> = Result<T, CriError>;

impl CriError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CriError {
        CriError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn internal(context: &str, e: impl std::fmt::Display) -> CriError {
        CriError::Internal(format!("{context}: {e}"))
    }
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        let code = match &e {
            CriError::InvalidArgument { .. } => Code::InvalidArgument,
            CriError::NotFound { .. } | CriError::FieldNotFound { .. } => Code::NotFound,
            CriError::AlreadyExists { .. } => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Unauthenticated(_) => Code::Unauthenticated,
            CriError::Unavailable(_) => Code::Unavailable,
            CriError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<ImageError> for CriError {
    fn from(e: ImageError) -> CriError {
        match e {
            ImageError::NotFound(name) => CriError::NotFound {
                what: "image",
                id: name,
            },
            ImageError::InvalidReference { .. } | ImageError::InvalidDigest { .. } => {
                CriError::invalid("image", e.to_string())
            }
            ImageError::Ambiguous { .. } => CriError::invalid("image", e.to_string()),
            ImageError::RootfsExists { id } => CriError::AlreadyExists {
                what: "container rootfs",
                id,
            },
            ImageError::RootfsNotFound { id } => CriError::NotFound {
                what: "container rootfs",
                id,
            },
            ImageError::RegistryUnauthorized { .. } => CriError::Unauthenticated(e.to_string()),
            ImageError::RegistryUnreachable { .. } => CriError::Unavailable(e.to_string()),
            // A plain-HTTP registry not configured as such: the node's
            // config must change first.
            ImageError::RegistryNotTls { .. } => CriError::FailedPrecondition(e.to_string()),
            ImageError::NotInRegistry { .. } => CriError::FieldNotFound {
                field: "image".into(),
                reason: e.to_string(),
            },
            // The node's limit, not the request: kubelet's retry gets the same.
            ImageError::LayerTooLarge { .. } => CriError::FailedPrecondition(e.to_string()),
            other => CriError::Internal(error_chain(&other)),
        }
    }
}

impl From<SpecError> for CriError {
    fn from(e: SpecError) -> CriError {
        match e {
            SpecError::InvalidArgument { field, reason } => {
                CriError::InvalidArgument { field, reason }
            }
            SpecError::NotFound { field, reason } => CriError::FieldNotFound { field, reason },
            SpecError::FailedPrecondition { reason } => CriError::FailedPrecondition(reason),
            other @ SpecError::Io { .. } => CriError::Internal(error_chain(&other)),
        }
    }
}

/// A ttrpc error from a shim, with its status code carried over.
pub fn from_ttrpc(op: &str, e: ttrpc::Error) -> CriError {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let msg = format!("{op}: {}", s.message());
            match s.code() {
                ttrpc::Code::NOT_FOUND => CriError::NotFound {
                    what: "task",
                    id: msg,
                },
                ttrpc::Code::ALREADY_EXISTS => CriError::AlreadyExists {
                    what: "task",
                    id: msg,
                },
                ttrpc::Code::FAILED_PRECONDITION => CriError::FailedPrecondition(msg),
                ttrpc::Code::INVALID_ARGUMENT => {
                    CriError::invalid(op.to_string(), s.message().to_string())
                }
                ttrpc::Code::UNIMPLEMENTED => CriError::Unimplemented(msg),
                ttrpc::Code::DEADLINE_EXCEEDED => CriError::DeadlineExceeded(msg),
                _ => CriError::Internal(msg),
            }
        }
        other => CriError::Internal(format!("{op}: {other}")),
    }
}

/// `error: cause: cause` for INTERNAL messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
