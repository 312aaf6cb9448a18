//! WebSocket with Kubernetes' channel protocols (`v5`/`v4.channel.k8s.io`,
//! `base64.channel.k8s.io`) and the port-forward channel framing.
//!
//! The server core answers the upgrade: it picks the subprotocol with
//! [`negotiate`] over [`REMOTECOMMAND_PROTOCOLS`] or
//! [`PORTFORWARD_PROTOCOLS`] (a `403` when nothing fits, as kubelet), sends
//! `101` with [`accept_key`] and the chosen protocol, and hands the
//! upgraded stream to [`serve_remotecommand`] or [`serve_portforward`].
//!
//! * `connection`: one WebSocket as numbered channels (framing, the
//!   reader and writer tasks, idle timeout);
//! * `remotecommand`: exec and attach (stdin, stdout, stderr, error,
//!   resize; v5's stdin close);
//! * `portforward`: a data and an error channel per port.
//!
//! The facts come from kubelet's `wsstream` package and its
//! `remotecommand`/`portforward` WebSocket servers, and from client-go's
//! v5 client.

mod connection;
mod portforward;
mod remotecommand;

use std::time::Duration;

pub use portforward::serve_portforward;
pub use remotecommand::serve_remotecommand;

/// The subprotocols exec and attach speak: kubelet's (`v4.channel.k8s.io`,
/// `v4.base64.channel.k8s.io`, `channel.k8s.io`, `base64.channel.k8s.io`),
/// v5 (client-go's WebSocket executor; stdin close) and the v2/v3 names,
/// which old clients may offer and which frame and report as
/// `channel.k8s.io` does.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// The subprotocols port-forward speaks over a WebSocket, as kubelet:
/// `v4.channel.k8s.io` and its base64 variant (`portforward.k8s.io` is
/// SPDY's).
pub const PORTFORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The most ports one port-forward carries: two channels each, numbered
/// in a byte.
pub const MAX_PORTS: usize = 128;

/// How a WebSocket session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum WebSocketError {
    #[error("WebSocket subprotocol {0:?} is not one this server speaks")]
    UnsupportedProtocol(String),
    #[error("{count} ports requested; a WebSocket port-forward carries at most {MAX_PORTS}")]
    TooManyPorts { count: usize },
    #[error("WebSocket closed after {0:?} without traffic (idle timeout)")]
    IdleTimeout(Duration),
    #[error("WebSocket connection failed: {0}")]
    Transport(#[from] tokio_tungstenite::tungstenite::Error),
}

/// What is wrong with a port-forward URL's `port` parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortQueryError {
    #[error("query parameter \"port\" is required")]
    Missing,
    #[error("query parameter \"port\" cannot be empty")]
    Empty,
    #[error("unable to parse {0:?} as a port (1-65535)")]
    Invalid(String),
    #[error("{count} ports requested; a WebSocket port-forward carries at most {MAX_PORTS}")]
    TooMany { count: usize },
}

/// The subprotocol to answer: the first the client offered that the
/// server supports (`golang.org/x/net/websocket`'s handshake, which
/// kubelet uses). A client that offered none gets `Some("")`: answer with
/// no `Sec-WebSocket-Protocol` header and serve `""`, which kubelet frames
/// as `channel.k8s.io` (binary, legacy error text). `None`: refuse (`403`).
pub fn negotiate(offered: &[&str], supported: &[&'static str]) -> Option<&'static str> {
    if offered.is_empty() {
        return Some("");
    }
    offered
        .iter()
        .find_map(|offer| supported.iter().copied().find(|known| known == offer))
}

/// The protocols a `Sec-WebSocket-Protocol` value offers, in order
/// (comma-separated, blanks trimmed; join several header lines with `,`).
pub fn offered_protocols(header: &str) -> Vec<&str> {
    header
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// The `Sec-WebSocket-Accept` value for a request's `Sec-WebSocket-Key`.
pub fn accept_key(sec_websocket_key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(sec_websocket_key)
}

/// The ports of a port-forward URL's query, as kubelet's `NewV4Options`
/// reads them: every `port` parameter, each a comma-separated list of
/// 1-65535. (Kubelet's streaming server itself takes the ports from the
/// CRI request the token was made for; this is for a URL that carries
/// them.)
pub fn ports_from_query(query: &str) -> Result<Vec<u16>, PortQueryError> {
    let mut ports = Vec::new();
    let mut seen = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key) != "port" {
            continue;
        }
        seen = true;
        let value = percent_decode(value);
        if value.is_empty() {
            return Err(PortQueryError::Empty);
        }
        for part in value.split(',') {
            match part.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(PortQueryError::Invalid(part.to_string())),
            }
        }
    }
    if !seen {
        return Err(PortQueryError::Missing);
    }
    if ports.len() > MAX_PORTS {
        return Err(PortQueryError::TooMany { count: ports.len() });
    }
    Ok(ports)
}

/// A query component with `%XX` escapes and `+` decoded (bytes that do not
/// form UTF-8 are replaced, which no valid port contains).
fn percent_decode(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => hex_value(high).zip(hex_value(low)),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some((high, low)), _) => {
                out.push(high << 4 | low);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|value| value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_first_offer_the_server_knows() {
        let cases: &[(&[&str], &[&'static str], Option<&str>)] = &[
            (
                &["v5.channel.k8s.io", "v4.channel.k8s.io"],
                REMOTECOMMAND_PROTOCOLS,
                Some("v5.channel.k8s.io"),
            ),
            (
                &["v4.channel.k8s.io", "v5.channel.k8s.io"],
                REMOTECOMMAND_PROTOCOLS,
                Some("v4.channel.k8s.io"),
            ),
            (
                &["SPDY/3.1", "base64.channel.k8s.io"],
                REMOTECOMMAND_PROTOCOLS,
                Some("base64.channel.k8s.io"),
            ),
            (
                &["v5.channel.k8s.io", "v4.channel.k8s.io"],
                PORTFORWARD_PROTOCOLS,
                Some("v4.channel.k8s.io"),
            ),
            (
                &["v4.base64.channel.k8s.io"],
                PORTFORWARD_PROTOCOLS,
                Some("v4.base64.channel.k8s.io"),
            ),
            (&[], REMOTECOMMAND_PROTOCOLS, Some("")),
            (&[], PORTFORWARD_PROTOCOLS, Some("")),
            (&["portforward.k8s.io"], PORTFORWARD_PROTOCOLS, None),
            (&["channel.k8s.io"], PORTFORWARD_PROTOCOLS, None),
        ];
        for (offered, supported, want) in cases {
            assert_eq!(negotiate(offered, supported), *want, "{offered:?}");
        }
    }

    #[test]
    fn offers_split_on_commas() {
        assert_eq!(
            offered_protocols("v5.channel.k8s.io,v4.channel.k8s.io"),
            ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        );
        assert_eq!(
            offered_protocols(" channel.k8s.io , ,base64.channel.k8s.io "),
            ["channel.k8s.io", "base64.channel.k8s.io"]
        );
        assert!(offered_protocols("  ").is_empty());
    }

    #[test]
    fn accept_key_is_rfc6455s() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn ports_read_as_kubelet_reads_them() {
        let ok: &[(&str, &[u16])] = &[
            ("port=80", &[80]),
            ("port=80&port=8080", &[80, 8080]),
            ("port=80,443&x=1&port=8080", &[80, 443, 8080]),
            ("port=80%2C443", &[80, 443]),
            ("port=80&port=80", &[80, 80]),
        ];
        for (query, want) in ok {
            assert_eq!(ports_from_query(query).as_deref(), Ok(*want), "{query}");
        }
        let bad = [
            ("", PortQueryError::Missing),
            ("ports=80", PortQueryError::Missing),
            ("port=", PortQueryError::Empty),
            ("port=0", PortQueryError::Invalid("0".into())),
            ("port=65536", PortQueryError::Invalid("65536".into())),
            ("port=80,", PortQueryError::Invalid("".into())),
            ("port=http", PortQueryError::Invalid("http".into())),
        ];
        for (query, want) in bad {
            assert_eq!(ports_from_query(query), Err(want), "{query}");
        }
        let many = vec!["port=1"; MAX_PORTS + 1].join("&");
        assert_eq!(
            ports_from_query(&many),
            Err(PortQueryError::TooMany {
                count: MAX_PORTS + 1
            })
        );
    }
}
