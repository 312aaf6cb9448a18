//! `[metrics]`: where the Prometheus endpoint listens (containerd's
//! `[metrics] address`). Off unless an address is given.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` serving `GET /metrics` over plain HTTP; empty: no
    /// endpoint. Port 0 picks a free port (the log names it).
    #[serde(default)]
    pub address: String,
}

impl MetricsConfig {
    /// Checks the address; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.socket_addr().map(|_| ())
    }

    /// The address to bind, or `None` when the endpoint is off.
    pub fn socket_addr(&self) -> Result<Option<SocketAddr>, String> {
        let address = self.address.trim();
        if address.is_empty() {
            return Ok(None);
        }
        address.parse().map(Some).map_err(|e| {
            format!("metrics.address {address:?}: {e} (want ip:port, e.g. \"127.0.0.1:9323\")")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_addresses_are_checked() {
        let config = |a: &str| MetricsConfig { address: a.into() };
        assert_eq!(MetricsConfig::default().socket_addr(), Ok(None));
        assert_eq!(config("  ").socket_addr(), Ok(None));
        for (address, want) in [
            ("127.0.0.1:9323", "127.0.0.1:9323"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("[::1]:9323", "[::1]:9323"),
            ("0.0.0.0:9323", "0.0.0.0:9323"),
        ] {
            let got = config(address).socket_addr().unwrap().unwrap();
            assert_eq!(got.to_string(), want);
        }
        for bad in ["localhost:9323", "127.0.0.1", ":9323", "127.0.0.1:99999"] {
            let err = config(bad).validate().unwrap_err();
            assert!(err.contains("metrics.address"), "{err}");
        }
    }
}
