//! How the native backend reports failures: [`BackendError`]s that name the
//! task, built from libcontainer's and the host's errors.

use libcontainer::error::LibcontainerError;

use crate::backend::{BackendError, Result};
use crate::host::forker::{RefusalKind, Refused};

pub(super) fn not_found(id: &str) -> BackendError {
    BackendError::NotFound(id.to_string())
}

pub(super) fn exec_not_found(id: &str, exec_id: &str) -> BackendError {
    BackendError::NotFound(format!("{id}/{exec_id}"))
}

pub(super) fn failed(op: &'static str, id: &str, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Failed {
        op,
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

pub(super) fn invalid_state(id: &str, state: &str, op: &'static str) -> BackendError {
    BackendError::InvalidState {
        id: id.to_string(),
        state: state.to_string(),
        op,
    }
}

/// An error and its sources, without the repeats `#[error(transparent)]`
/// layers produce.
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

pub(super) fn from_libcontainer(
    op: &'static str,
    id: &str,
    err: LibcontainerError,
) -> BackendError {
    from_refusal(op, id, refusal(err))
}

/// How a libcontainer error is classified, in the fork server's terms (the
/// builds run there; the rest of libcontainer runs in the shim).
pub(super) fn refusal(err: LibcontainerError) -> Refused {
    match err {
        LibcontainerError::Exist => Refused::new(RefusalKind::Exists, chain(&err)),
        LibcontainerError::IncorrectStatus(status) => Refused {
            kind: RefusalKind::State,
            error: chain(&err),
            state: Some(status.to_string().to_lowercase()),
        },
        LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_) => Refused::new(RefusalKind::Invalid, chain(&err)),
        other => Refused::new(RefusalKind::Failed, chain(&other)),
    }
}

/// The backend error for a refusal of `op` on task `id`.
pub(super) fn from_refusal(op: &'static str, id: &str, refused: Refused) -> BackendError {
    match refused.kind {
        RefusalKind::Exists => BackendError::AlreadyExists {
            what: "container",
            id: id.to_string(),
        },
        RefusalKind::State => invalid_state(id, refused.state.as_deref().unwrap_or("unknown"), op),
        RefusalKind::Invalid => BackendError::InvalidArgument {
            what: format!("spec of {id}"),
            reason: refused.error,
        },
        RefusalKind::Failed => failed(op, id, refused.error),
    }
}

pub(super) fn stdio_error(id: &str, err: std::io::Error) -> BackendError {
    use std::io::ErrorKind::{InvalidInput, NotFound, Unsupported};
    match err.kind() {
        InvalidInput | NotFound | Unsupported => BackendError::InvalidArgument {
            what: format!("stdio of {id}"),
            reason: err.to_string(),
        },
        _ => failed("open stdio", id, err),
    }
}

pub(super) fn signal_number(signal: u32) -> Result<i32> {
    match i32::try_from(signal) {
        Ok(s) if (1..=libc::SIGRTMAX()).contains(&s) => Ok(s),
        _ => Err(BackendError::InvalidArgument {
            what: "signal".into(),
            reason: format!("{signal} is not a signal number"),
        }),
    }
}
