//! `[streaming]`: where the Exec/Attach/PortForward server listens, and its
//! limits (containerd's `stream_server_address`/`stream_server_port`/
//! `stream_idle_timeout`, kubelet's streaming defaults).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SessionLimits;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingConfig {
    /// The address to listen on; the URLs name it (loopback by default, as
    /// containerd's: kubelet on the node proxies to it).
    #[serde(default = "default_address")]
    pub address: String,
    /// 0: a free port, picked at start.
    #[serde(default)]
    pub port: u16,
    /// HTTPS with this PEM certificate chain and key; both or neither.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Seconds a URL stays usable when nobody opens it.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// Seconds without traffic after which a session is closed (kubelet's
    /// `streamingConnectionIdleTimeout`: 4 hours).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Seconds a client may take to open the streams of a session.
    #[serde(default = "default_stream_creation_timeout")]
    pub stream_creation_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: default_address(),
            port: 0,
            tls_cert_file: None,
            tls_key_file: None,
            token_ttl_secs: default_token_ttl(),
            idle_timeout_secs: default_idle_timeout(),
            stream_creation_timeout_secs: default_stream_creation_timeout(),
        }
    }
}

fn default_address() -> String {
    "127.0.0.1".into()
}

fn default_token_ttl() -> u64 {
    60
}

fn default_idle_timeout() -> u64 {
    4 * 3600
}

fn default_stream_creation_timeout() -> u64 {
    30
}

impl StreamingConfig {
    /// Checks the fields; the message names the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.ip()?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("streaming.tls_cert_file and streaming.tls_key_file go together".into());
        }
        for (name, secs) in [
            ("token_ttl_secs", self.token_ttl_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            (
                "stream_creation_timeout_secs",
                self.stream_creation_timeout_secs,
            ),
        ] {
            if secs == 0 {
                return Err(format!("streaming.{name} must be positive"));
            }
        }
        Ok(())
    }

    pub fn ip(&self) -> Result<IpAddr, String> {
        self.address
            .parse()
            .map_err(|e| format!("streaming.address {:?}: {e}", self.address))
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    pub fn limits(&self) -> SessionLimits {
        SessionLimits {
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            stream_creation_timeout: Duration::from_secs(self.stream_creation_timeout_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let d = StreamingConfig::default();
        assert!(d.validate().is_ok());
        assert_eq!(d.ip().unwrap().to_string(), "127.0.0.1");
        assert_eq!(d.limits().idle_timeout, Duration::from_secs(14_400));
        let bad = |f: fn(&mut StreamingConfig), field: &str| {
            let mut c = StreamingConfig::default();
            f(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.contains(field), "{err} should name {field}");
        };
        bad(|c| c.address = "localhost".into(), "streaming.address");
        bad(|c| c.tls_cert_file = Some("/x".into()), "tls_key_file");
        bad(|c| c.token_ttl_secs = 0, "token_ttl_secs");
        bad(|c| c.idle_timeout_secs = 0, "idle_timeout_secs");
    }
}
