//! How the native backend reports failures: [`BackendError`]s that name the
//! task, built from libcontainer's and the host's errors.

use libcontainer::error::LibcontainerError;

use crate::backend::{BackendError, Result};

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
    match err {
        LibcontainerError::Exist => BackendError::AlreadyExists {
            what: "container",
            id: id.to_string(),
        },
        LibcontainerError::IncorrectStatus(status) => {
            invalid_state(id, &status.to_string().to_lowercase(), op)
        }
        LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_) => BackendError::InvalidArgument {
            what: format!("spec of {id}"),
            reason: chain(&err),
        },
        other => failed(op, id, chain(&other)),
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
