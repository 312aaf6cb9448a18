//! SPDY/3.1 (the framing kubelet's streaming server and crictl 1.26 use)
//! with Kubernetes' remotecommand and portforward subprotocols.
//!
//! * [`frame`]: frames on the wire; [`compress`]: header blocks' zlib with
//!   SPDY/3's dictionary, one context per direction.
//! * [`conn`]: the multiplexer over an upgraded connection: accepts the
//!   client's streams, hands each out as an `AsyncRead` + `AsyncWrite` pair,
//!   keeps flow-control windows, echoes PINGs, times out when idle.
//! * [`remotecommand`]: exec and attach (`v4.channel.k8s.io` … `channel.k8s.io`).
//! * [`portforward`]: port forwarding, `portforward.k8s.io`.
//!
//! The HTTP upgrade itself (`101 Switching Protocols`, `Upgrade: SPDY/3.1`,
//! the negotiated `X-Stream-Protocol-Version`) is the server's; it picks the
//! subprotocol with [`negotiate`] and hands the upgraded bytes here.

pub mod compress;
pub mod conn;
pub mod frame;
pub mod portforward;
pub mod remotecommand;
mod stream;

pub use conn::{Connection, IncomingStream};
pub use portforward::{serve_portforward, PORTFORWARD_PROTOCOLS};
pub use remotecommand::{serve_remotecommand, REMOTECOMMAND_PROTOCOLS};
pub use stream::{StreamHandle, StreamReader, StreamWriter};

/// What goes wrong on a SPDY connection.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY version {0} is not supported (only 3)")]
    UnsupportedVersion(u16),
    #[error("SPDY control frame type {frame_type} too short ({len} bytes)")]
    FrameTooShort { frame_type: u16, len: usize },
    #[error("SPDY data frame of {0} bytes is over the 24-bit limit")]
    FrameTooLarge(usize),
    #[error("SPDY header block zlib: {0}")]
    Zlib(String),
    #[error("SPDY header block malformed: {0}")]
    HeaderBlock(&'static str),
    #[error("SPDY header block inflates past {} bytes", compress::MAX_HEADER_BLOCK)]
    HeaderBlockTooLarge,
}

/// The subprotocol to speak, as kubelet's `httpstream.Handshake` picks it:
/// the first of the client's `X-Stream-Protocol-Version` values (each may
/// hold several, comma-separated) that the server supports. `None` when
/// there is no common one (kubelet answers 403 with
/// `X-Accepted-Stream-Protocol-Versions`).
pub fn negotiate(client_offers: &[&str], supported: &[&'static str]) -> Option<&'static str> {
    client_offers
        .iter()
        .flat_map(|offer| offer.split(','))
        .map(str::trim)
        .filter(|offer| !offer.is_empty())
        .find_map(|offer| supported.iter().copied().find(|s| *s == offer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_supported_offer() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["v4.channel.k8s.io"], Some("v4.channel.k8s.io")),
            (
                &[
                    "v5.channel.k8s.io",
                    "v3.channel.k8s.io",
                    "v4.channel.k8s.io",
                ],
                Some("v3.channel.k8s.io"),
            ),
            (
                &["v5.channel.k8s.io, v2.channel.k8s.io,v4.channel.k8s.io"],
                Some("v2.channel.k8s.io"),
            ),
            (&["channel.k8s.io"], Some("channel.k8s.io")),
            (&["v9.channel.k8s.io"], None),
            (&[], None),
            (&[" , "], None),
        ];
        for (offers, want) in cases {
            assert_eq!(
                negotiate(offers, REMOTECOMMAND_PROTOCOLS),
                *want,
                "{offers:?}"
            );
        }
        assert_eq!(
            negotiate(&["portforward.k8s.io"], PORTFORWARD_PROTOCOLS),
            Some("portforward.k8s.io")
        );
    }
}
