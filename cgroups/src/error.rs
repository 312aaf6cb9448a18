use std::path::PathBuf;

/// What failed in this crate, and on what.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup_parent {parent:?} is invalid: {reason}")]
    InvalidParent {
        parent: String,
        reason: &'static str,
    },
    #[error("writing {value:?} to {path}")]
    WriteFailed {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating cgroup {path}")]
    CreateFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {controller} controller is not mounted on this node")]
    ControllerMissing { controller: String },
    #[error("removing cgroup {path}")]
    RemoveFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
