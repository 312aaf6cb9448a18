//! Pod networking: a network namespace per pod ([`netns`]) wired by the
//! node's CNI plugins ([`cni`]).

pub mod cni;
pub mod netns;

/// Errors of pod networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("creating the network namespace {path}: {source}")]
    NetnsCreate {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("no CNI configuration in {dir}")]
    NoConfig { dir: std::path::PathBuf },
    #[error("CNI config {path}: {reason}")]
    BadConfig {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    /// The plugin ran and reported an error (its `msg` and `details`).
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    PluginFailed {
        plugin: String,
        command: &'static str,
        message: String,
    },
}

/// Caisson's default conflist (bridge `caisson0`, host-local 10.87.0.0/16,
/// portmap, loopback), for nodes that have none.
pub const DEFAULT_CONFLIST: &str = include_str!("../../../integration/cni/10-caisson.conflist");

/// Writes [`DEFAULT_CONFLIST`] into `dir` if no config there loads.
/// Returns whether it wrote it.
pub fn install_default_config(dir: &std::path::Path) -> std::io::Result<bool> {
    if cni::load(dir).is_ok() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join("10-caisson.conflist");
    let tmp = dir.join(".10-caisson.conflist.tmp");
    std::fs::write(&tmp, DEFAULT_CONFLIST)?;
    std::fs::rename(&tmp, &path)?;
    tracing::info!(path = %path.display(), "installed the default CNI config");
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_conflist_is_valid() {
        let v: serde_json::Value = serde_json::from_str(super::DEFAULT_CONFLIST).unwrap();
        let list = super::cni::normalise(v).unwrap();
        assert_eq!(list["plugins"][0]["bridge"], "caisson0");
    }
}
