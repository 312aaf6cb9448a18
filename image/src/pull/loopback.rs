//! The loopback registry convention of containerd and Docker: a registry on
//! this machine's loopback (`localhost`, `127.0.0.0/8`, `::1`) needs no
//! configuration to be reached over plain HTTP. HTTPS is tried first and a
//! host that answers the TLS handshake with something that is not TLS is
//! retried over HTTP (containerd's `docker.NewHTTPFallback`).
//!
//! What decides the transport of an endpoint (see [`Transport::for_host`]):
//!
//! | host | `plain_http` | `ca_file` | transport |
//! |---|---|---|---|
//! | any | `true` | – | plain HTTP |
//! | any | `false` (written) | any | HTTPS only |
//! | any | unset | set | HTTPS only |
//! | loopback, port 80 | unset | unset | plain HTTP (the port says so) |
//! | loopback, port 443 | unset | unset | HTTPS only (the port says so) |
//! | loopback, other or no port | unset | unset | HTTPS, then plain HTTP |
//! | not loopback | unset | unset | HTTPS only |
//!
//! Unlike containerd, Caisson keeps verifying a loopback registry's
//! certificate (containerd skips verification there): a loopback port can
//! be opened by any local user, and `ca_file` trusts a private CA.

/// How one endpoint is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Https,
    PlainHttp,
    /// HTTPS first; plain HTTP when the host turns out not to speak TLS
    /// (or, with no port in its name, when nothing listens on 443).
    HttpsThenHttp,
}

impl Transport {
    /// The transport of `host` (host\[:port\] as image references name it)
    /// given its configured `plain_http` (None: not written) and whether it
    /// has a `ca_file`.
    pub fn for_host(host: &str, plain_http: Option<bool>, has_ca: bool) -> Transport {
        match plain_http {
            Some(true) => return Transport::PlainHttp,
            Some(false) => return Transport::Https,
            None if has_ca => return Transport::Https,
            None => {}
        }
        if !is_loopback(host) {
            return Transport::Https;
        }
        match split_port(host).1 {
            Some("80") => Transport::PlainHttp,
            Some("443") => Transport::Https,
            _ => Transport::HttpsThenHttp,
        }
    }
}

/// True when `host` (host\[:port\], `[v6]`\[:port\], or a bare `::1`) is this
/// machine's loopback: `localhost`, an address in `127.0.0.0/8`, `::1` (or
/// `::ffff:127.x.y.z`). Names that merely resolve to loopback through DNS
/// or `/etc/hosts` (`localhost.example.com`) do not count, as in containerd.
pub fn is_loopback(host: &str) -> bool {
    let name = split_port(host).0;
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// host\[:port\] → (host, port), brackets of an IPv6 literal removed; a bare
/// IPv6 address (more than one ':') has no port.
pub fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((addr, after)) => (addr, after.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, Some(port)),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        let cases = [
            ("localhost", true),
            ("localhost:5000", true),
            ("LocalHost:5000", true),
            ("127.0.0.1", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("127.255.255.254:80", true),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("::1", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("example.com", false),
            ("example.com:5000", false),
            ("10.0.0.1", false),
            ("10.0.0.1:5000", false),
            ("128.0.0.1", false),
            ("0.0.0.0:5000", false),
            ("[::2]:5000", false),
            ("[fe80::1]", false),
            ("localhost.example.com", false),
            ("localhost.example.com:5000", false),
            ("mylocalhost:5000", false),
            ("127.0.0.1.example.com", false),
            ("docker.io", false),
        ];
        for (host, want) in cases {
            assert_eq!(is_loopback(host), want, "{host}");
        }
    }

    #[test]
    fn ports_are_split_off() {
        let cases = [
            ("localhost", ("localhost", None)),
            ("localhost:5000", ("localhost", Some("5000"))),
            ("[::1]:5000", ("::1", Some("5000"))),
            ("[::1]", ("::1", None)),
            ("::1", ("::1", None)),
            (
                "registry.example.com:443",
                ("registry.example.com", Some("443")),
            ),
        ];
        for (host, want) in cases {
            assert_eq!(split_port(host), want, "{host}");
        }
    }

    #[test]
    fn transport_follows_config_then_loopback_then_port() {
        use Transport::*;
        let cases = [
            ("127.0.0.1:5000", None, false, HttpsThenHttp),
            ("localhost:5000", None, false, HttpsThenHttp),
            ("localhost", None, false, HttpsThenHttp),
            ("[::1]:5000", None, false, HttpsThenHttp),
            ("localhost:80", None, false, PlainHttp),
            ("localhost:443", None, false, Https),
            ("127.0.0.1:5000", Some(false), false, Https),
            ("127.0.0.1:5000", None, true, Https),
            ("127.0.0.1:5000", Some(true), false, PlainHttp),
            ("registry.example.com:5000", None, false, Https),
            ("10.0.0.1:5000", None, false, Https),
            ("10.0.0.1:80", None, false, Https),
            ("10.0.0.1:5000", Some(true), false, PlainHttp),
            ("localhost.example.com:5000", None, false, Https),
        ];
        for (host, plain_http, has_ca, want) in cases {
            assert_eq!(
                Transport::for_host(host, plain_http, has_ca),
                want,
                "{host} plain_http={plain_http:?} ca={has_ca}"
            );
        }
    }
}
