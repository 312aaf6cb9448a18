//! Per-registry configuration, like containerd's `hosts.toml`: mirrors tried
//! before a registry, plain HTTP, an extra CA, credentials; and the pull's
//! limits (parallel downloads, timeouts). `caissond` embeds it as the
//! `[registries]` table of its config.
//!
//! ```toml
//! [registries]
//! max_concurrent_downloads = 3
//! connect_timeout = 30
//! read_timeout = 30
//!
//! [registries.hosts."docker.io"]
//! mirrors = ["http://10.0.0.5:5000", "mirror.example.com"]
//!
//! [registries.hosts."mirror.example.com"]
//! ca_file = "/etc/caisson/certs/mirror-ca.pem"
//! username = "puller"
//! password = "secret"
//! ```
//!
//! A registry on loopback (`localhost`, `127.0.0.0/8`, `::1`) with neither
//! `plain_http` nor `ca_file` written falls back from HTTPS to plain HTTP by
//! itself, as under containerd and Docker: see [`super::loopback`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::Credentials;
use super::loopback::Transport;
use crate::reference::Reference;

/// The `[registries]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistriesConfig {
    /// Blobs one pull downloads at once.
    pub max_concurrent_downloads: usize,
    /// Seconds to set up a connection (TCP and TLS) before the registry
    /// counts as unreachable.
    pub connect_timeout: u64,
    /// Seconds a request may wait for the next bytes of an answer.
    pub read_timeout: u64,
    /// Per-registry settings, keyed by host\[:port\] as image references name
    /// it (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`).
    pub hosts: BTreeMap<String, HostConfig>,
}

impl Default for RegistriesConfig {
    fn default() -> Self {
        RegistriesConfig {
            max_concurrent_downloads: 3,
            connect_timeout: 30,
            read_timeout: 30,
            hosts: BTreeMap::new(),
        }
    }
}

/// One registry's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Mirrors tried in order before the registry itself: `host[:port]`
    /// (HTTPS unless that host's own entry says `plain_http`; a loopback
    /// host falls back to plain HTTP as the registry itself would) or
    /// `http://host[:port]` / `https://host[:port]`. A mirror that fails or
    /// lacks the image is skipped.
    pub mirrors: Vec<String>,
    /// Only the mirrors are tried, never the registry itself (air-gapped nodes).
    pub skip_upstream: bool,
    /// `true`: talk plain HTTP to this host. `false`: HTTPS only. Not
    /// written: HTTPS, except that a loopback host (`localhost`,
    /// `127.0.0.0/8`, `::1`) without `ca_file` falls back to plain HTTP when
    /// it does not speak TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
    /// A PEM file of CA certificates trusted for this host, in addition to
    /// the system's CA store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Credentials for this host, used when the pull request brings none
    /// (and always for a mirror: a request's credentials only go to the
    /// registry the image names).
    pub username: String,
    pub password: String,
    /// base64 of `username:password`, as in Docker's config.json.
    pub auth: String,
    /// A bearer token sent as is.
    pub registry_token: String,
}

/// Where one attempt of a pull goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// host\[:port\] to connect to.
    pub host: String,
    /// Plain HTTP only.
    pub plain_http: bool,
    /// HTTPS first, then plain HTTP if the host does not speak TLS (a
    /// loopback host without configuration); never with `plain_http`.
    pub http_fallback: bool,
    pub ca_file: Option<PathBuf>,
    /// A mirror of the image's registry (not the registry itself).
    pub mirror: bool,
    /// Credentials from the config for this host.
    pub credentials: Credentials,
}

impl RegistriesConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout)
    }

    /// Checks the table; the error names the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.max_concurrent_downloads) {
            return Err(format!(
                "registries.max_concurrent_downloads must be between 1 and 64, got {}",
                self.max_concurrent_downloads
            ));
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("read_timeout", self.read_timeout),
        ] {
            if value == 0 {
                return Err(format!(
                    "registries.{key} must be at least 1 (seconds), got 0"
                ));
            }
        }
        for (name, host) in &self.hosts {
            let at = format!("registries.hosts.{name:?}");
            check_registry_name(name).map_err(|e| format!("{at}: {e}"))?;
            for mirror in &host.mirrors {
                let (_, mirror_host) =
                    split_mirror(mirror).map_err(|e| format!("{at}.mirrors: {e}"))?;
                if mirror_host == *name {
                    return Err(format!("{at}.mirrors: {mirror:?} is the registry itself"));
                }
            }
            if host.skip_upstream && host.mirrors.is_empty() {
                return Err(format!("{at}.skip_upstream needs at least one mirror"));
            }
            if host.plain_http == Some(true) && host.ca_file.is_some() {
                return Err(format!(
                    "{at}: plain_http and ca_file contradict each other (a CA is for HTTPS)"
                ));
            }
            if let Some(ca) = &host.ca_file {
                check_ca_file(ca).map_err(|e| format!("{at}.ca_file: {e}"))?;
            }
            host.credentials().map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(())
    }

    /// Where a pull of an image of `registry` goes, in order: its mirrors,
    /// then the registry itself (unless `skip_upstream`).
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let host = self.hosts.get(registry).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for mirror in &host.mirrors {
            // validate() has checked every mirror.
            let Ok((scheme, mirror_host)) = split_mirror(mirror) else {
                continue;
            };
            let own = self.hosts.get(&mirror_host).cloned().unwrap_or_default();
            let transport = match scheme {
                Some("http") => Transport::PlainHttp,
                Some(_) => Transport::Https,
                None => Transport::for_host(&mirror_host, own.plain_http, own.ca_file.is_some()),
            };
            out.push(Endpoint {
                plain_http: transport == Transport::PlainHttp,
                http_fallback: transport == Transport::HttpsThenHttp,
                ca_file: own.ca_file.clone(),
                credentials: own.credentials().unwrap_or_default(),
                host: mirror_host,
                mirror: true,
            });
        }
        if !host.skip_upstream {
            let transport = Transport::for_host(registry, host.plain_http, host.ca_file.is_some());
            out.push(Endpoint {
                host: registry.to_string(),
                plain_http: transport == Transport::PlainHttp,
                http_fallback: transport == Transport::HttpsThenHttp,
                ca_file: host.ca_file.clone(),
                mirror: false,
                credentials: host.credentials().unwrap_or_default(),
            });
        }
        out
    }
}

impl Endpoint {
    /// The same endpoint over plain HTTP: where an `http_fallback` endpoint
    /// goes once it has shown it does not speak TLS.
    pub fn over_http(&self) -> Endpoint {
        Endpoint {
            plain_http: true,
            http_fallback: false,
            ..self.clone()
        }
    }
}

impl HostConfig {
    /// The configured credentials (`auth` decoded).
    pub fn credentials(&self) -> Result<Credentials, String> {
        Credentials::new(
            &self.username,
            &self.password,
            &self.auth,
            "",
            &self.registry_token,
        )
        .map_err(|e| e.to_string())
    }
}

/// A registry key must be what a reference's domain is after normalization.
fn check_registry_name(name: &str) -> Result<(), String> {
    if name.contains("://") || name.contains('/') {
        return Err("a registry is named host[:port], without scheme or path".into());
    }
    let parsed: Reference = format!("{name}/x")
        .parse()
        .map_err(|e| format!("not a registry host: {e}"))?;
    if parsed.domain() != name {
        return Err(format!(
            "image references never name this registry (they say {:?}); \
             a host without a dot or port needs one, except localhost",
            parsed.domain()
        ));
    }
    Ok(())
}

/// `[scheme://]host[:port]` → (scheme, host).
pub(crate) fn split_mirror(mirror: &str) -> Result<(Option<&'static str>, String), String> {
    let (scheme, rest) = match mirror.split_once("://") {
        Some(("http", rest)) => (Some("http"), rest),
        Some(("https", rest)) => (Some("https"), rest),
        Some((other, _)) => {
            return Err(format!(
                "{mirror:?}: scheme {other:?} is neither http nor https"
            ))
        }
        None => (None, mirror),
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "{mirror:?}: a mirror is [http[s]://]host[:port], without a path"
        ));
    }
    let parsed: Reference = format!("{host}/x")
        .parse()
        .map_err(|e| format!("{mirror:?} is not a registry host: {e}"))?;
    if parsed.domain() != host {
        return Err(format!(
            "{mirror:?}: a host without a dot or port needs one, except localhost"
        ));
    }
    Ok((scheme, host.to_string()))
}

fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !text
        .windows(27)
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegistriesConfig, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            registries: RegistriesConfig,
        }
        let w: Wrapper = toml::from_str(text).map_err(|e| e.to_string())?;
        w.registries.validate()?;
        Ok(w.registries)
    }

    #[test]
    fn endpoints_put_mirrors_first() {
        let c = parse(
            r#"
[registries]
max_concurrent_downloads = 4
[registries.hosts."docker.io"]
mirrors = ["http://127.0.0.1:5000", "mirror.example.com", "https://localhost:5443"]
[registries.hosts."mirror.example.com"]
username = "u"
password = "p"
[registries.hosts."127.0.0.1:5001"]
plain_http = true
"#,
        )
        .unwrap();
        assert_eq!(c.max_concurrent_downloads, 4);
        assert_eq!(c.connect_timeout, 30);
        let got: Vec<(String, bool, bool, bool)> = c
            .endpoints("docker.io")
            .into_iter()
            .map(|e| (e.host, e.plain_http, e.mirror, e.credentials.is_empty()))
            .collect();
        let want = [
            ("127.0.0.1:5000", true, true, true),
            ("mirror.example.com", false, true, false),
            ("localhost:5443", false, true, true),
            ("docker.io", false, false, true),
        ];
        let want: Vec<(String, bool, bool, bool)> = want
            .iter()
            .map(|(h, p, m, e)| (h.to_string(), *p, *m, *e))
            .collect();
        assert_eq!(got, want);
        let plain = c.endpoints("127.0.0.1:5001");
        assert_eq!(plain.len(), 1);
        assert!(plain[0].plain_http && !plain[0].mirror);
        let unknown = c.endpoints("quay.io");
        assert_eq!(unknown.len(), 1);
        assert!(!unknown[0].plain_http);
    }

    #[test]
    fn loopback_endpoints_fall_back_to_http_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let c = parse(&format!(
            r#"
[registries.hosts."docker.io"]
mirrors = ["localhost:5001", "https://127.0.0.1:5002", "127.0.0.1:5003", "10.0.0.9:5000"]
[registries.hosts."127.0.0.1:5003"]
plain_http = false
[registries.hosts."localhost:6000"]
ca_file = "{}"
[registries.hosts."127.0.0.1:6001"]
plain_http = false
"#,
            ca.display()
        ))
        .unwrap();
        let transports = |registry: &str| -> Vec<(String, bool, bool)> {
            c.endpoints(registry)
                .into_iter()
                .map(|e| (e.host, e.plain_http, e.http_fallback))
                .collect()
        };
        let want = |rows: &[(&str, bool, bool)]| -> Vec<(String, bool, bool)> {
            rows.iter()
                .map(|(h, p, f)| (h.to_string(), *p, *f))
                .collect()
        };
        // (host, plain HTTP only, HTTPS then HTTP)
        assert_eq!(
            transports("docker.io"),
            want(&[
                ("localhost:5001", false, true),
                ("127.0.0.1:5002", false, false),
                ("127.0.0.1:5003", false, false),
                ("10.0.0.9:5000", false, false),
                ("docker.io", false, false),
            ])
        );
        for (registry, row) in [
            ("127.0.0.1:5000", (false, true)),
            ("[::1]:5000", (false, true)),
            ("localhost", (false, true)),
            ("localhost:80", (true, false)),
            ("localhost:443", (false, false)),
            ("localhost:6000", (false, false)),
            ("127.0.0.1:6001", (false, false)),
            ("10.0.0.1:5000", (false, false)),
            ("localhost.example.com:5000", (false, false)),
        ] {
            assert_eq!(
                transports(registry),
                want(&[(registry, row.0, row.1)]),
                "{registry}"
            );
        }
        let e = &c.endpoints("127.0.0.1:5000")[0];
        let plain = e.over_http();
        assert!(plain.plain_http && !plain.http_fallback && plain.host == e.host);
    }

    #[test]
    fn skip_upstream_leaves_only_mirrors() {
        let c = parse(
            "[registries.hosts.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\nskip_upstream = true\n",
        )
        .unwrap();
        let e = c.endpoints("docker.io");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, "127.0.0.1:5000");
    }

    #[test]
    fn bad_tables_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let cases = [
            ("max_concurrent_downloads = 0", "max_concurrent_downloads"),
            ("connect_timeout = 0", "connect_timeout"),
            ("bogus = 1", "unknown field"),
            ("[hosts.\"https://docker.io\"]", "without scheme or path"),
            ("[hosts.\"myregistry\"]", "needs one"),
            (
                "[hosts.\"docker.io\"]\nmirrors = [\"ftp://x.io\"]",
                "scheme",
            ),
            (
                "[hosts.\"docker.io\"]\nmirrors = [\"x.io/v2/proxy\"]",
                "without a path",
            ),
            (
                "[hosts.\"docker.io\"]\nmirrors = [\"docker.io\"]",
                "the registry itself",
            ),
            (
                "[hosts.\"docker.io\"]\nskip_upstream = true",
                "at least one mirror",
            ),
            ("[hosts.\"x.io\"]\nusername = \"u\"", "password"),
            ("[hosts.\"x.io\"]\nauth = \"!!!\"", "base64"),
            (
                "[hosts.\"x.io\"]\nplain_http = true\nca_file = \"/etc/hostname\"",
                "contradict",
            ),
            (
                "[hosts.\"x.io\"]\nca_file = \"/nonexistent/ca.pem\"",
                "ca_file",
            ),
            ("[hosts.\"x.io\"]\nunknown = 1", "unknown field"),
        ];
        for (body, want) in cases {
            let err = parse(&format!(
                "[registries]\n{}",
                body.replace("[hosts", "[registries.hosts")
            ))
            .unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
        let err = parse(&format!(
            "[registries.hosts.\"x.io\"]\nca_file = \"{}\"",
            not_pem.display()
        ))
        .unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
