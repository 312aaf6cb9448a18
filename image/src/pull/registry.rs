//! One registry endpoint through `oci-client`: manifests by tag or digest,
//! blobs as byte streams, and its errors turned into [`ImageError`]s that
//! name the registry.

use std::io;

use futures_util::stream::BoxStream;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use super::auth::Credentials;
use super::config::{Endpoint, RegistriesConfig};
use super::manifest::{Blob, ACCEPTED};
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;

const USER_AGENT: &str = concat!("caisson/", env!("CARGO_PKG_VERSION"));

/// A client for one image's repository at one endpoint.
pub struct RegistryClient {
    client: oci_client::Client,
    auth: RegistryAuth,
    /// The repository at this endpoint (a mirror keeps the image's own name).
    repo: oci_client::Reference,
    /// host\[:port\] as errors name it.
    pub host: String,
    pub mirror: bool,
    /// Spoken over HTTPS (else plain HTTP).
    https: bool,
    /// Plain HTTP is tried next if this host turns out not to speak TLS.
    http_fallback: bool,
    connect_timeout: std::time::Duration,
    read_timeout: std::time::Duration,
}

impl RegistryClient {
    /// `credentials` are the pull request's: they only go to the registry
    /// the image names, never to a mirror.
    pub fn new(
        endpoint: &Endpoint,
        reference: &Reference,
        credentials: &Credentials,
        config: &RegistriesConfig,
    ) -> Result<RegistryClient> {
        let mut extra_root_certificates = Vec::new();
        if let Some(ca) = &endpoint.ca_file {
            let data = std::fs::read(ca).map_err(|e| ImageError::io("reading CA file", ca, e))?;
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let client_config = ClientConfig {
            protocol: if endpoint.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates,
            platform_resolver: None,
            connect_timeout: Some(config.connect_timeout()),
            read_timeout: Some(config.read_timeout()),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        let client =
            oci_client::Client::try_from(client_config).map_err(|e| ImageError::Registry {
                registry: endpoint.host.clone(),
                reason: format!("setting up the HTTP client: {}", chain(&e)),
            })?;
        let credentials = if endpoint.mirror || credentials.is_empty() {
            &endpoint.credentials
        } else {
            credentials
        };
        let mut repo = oci_client::Reference::with_tag(
            reference.domain().to_string(),
            reference.path().to_string(),
            "latest".into(),
        );
        if endpoint.mirror {
            repo.set_mirror_registry(endpoint.host.clone());
        }
        Ok(RegistryClient {
            client,
            auth: credentials.registry_auth(),
            repo,
            host: endpoint.host.clone(),
            mirror: endpoint.mirror,
            https: !endpoint.plain_http,
            http_fallback: endpoint.http_fallback,
            connect_timeout: config.connect_timeout(),
            read_timeout: config.read_timeout(),
        })
    }

    /// Fetches a manifest by tag or digest; returns its bytes and digest
    /// (checked against `digest_ref` when the reference is a digest).
    pub async fn manifest(&self, tag_or_digest: &str, shown: &str) -> Result<(Vec<u8>, Digest)> {
        let target = if tag_or_digest.contains(':') {
            self.repo.clone_with_digest(tag_or_digest.to_string())
        } else {
            let mut r = oci_client::Reference::with_tag(
                self.repo.registry().to_string(),
                self.repo.repository().to_string(),
                tag_or_digest.to_string(),
            );
            if self.mirror {
                r.set_mirror_registry(self.host.clone());
            }
            r
        };
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&target, &self.auth, ACCEPTED)
            .await
            .map_err(|e| self.error(e, shown))?;
        if bytes.len() as u64 > crate::content::MAX_JSON_BLOB {
            return Err(ImageError::malformed(
                format!("manifest of {shown}"),
                "larger than 16 MiB",
            ));
        }
        let digest = Digest::of(&bytes);
        if tag_or_digest.contains(':') && digest.to_string() != tag_or_digest {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {shown} from {}", self.host),
                expected: tag_or_digest.to_string(),
                actual: digest.to_string(),
            });
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Starts a blob download: a stream of its bytes (not yet verified:
    /// the caller hashes them as it writes them).
    pub async fn blob(
        &self,
        blob: &Blob,
        shown: &str,
    ) -> Result<BoxStream<'static, io::Result<bytes::Bytes>>> {
        let desc = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.to_string(),
            size: blob.size as i64,
            ..Default::default()
        };
        let stream = self
            .client
            .pull_blob_stream(&self.repo, &desc)
            .await
            .map_err(|e| self.error(e, shown))?;
        Ok(stream.stream)
    }

    /// An error while reading a blob stream.
    pub fn stream_error(&self, e: io::Error, blob: &Blob, what: &str) -> ImageError {
        if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
        {
            return ImageError::DigestMismatch {
                what: format!("{what} from {}", self.host),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        let timed_out = e.kind() == io::ErrorKind::TimedOut || chain(&e).contains("timed out");
        ImageError::RegistryUnreachable {
            registry: self.host.clone(),
            reason: if timed_out {
                format!(
                    "downloading {what} {} stalled for {} s: {}",
                    blob.digest,
                    self.read_timeout.as_secs(),
                    chain(&e)
                )
            } else {
                format!(
                    "the connection broke while downloading {what} {}: {}",
                    blob.digest,
                    chain(&e)
                )
            },
        }
    }

    /// An oci-client error as an [`ImageError`] naming this registry.
    pub fn error(&self, e: OciDistributionError, shown: &str) -> ImageError {
        let registry = self.host.clone();
        let sent = match &self.auth {
            RegistryAuth::Anonymous => "no credentials were given",
            RegistryAuth::Basic(..) => "wrong username or password?",
            RegistryAuth::Bearer(..) => "the token was refused",
        };
        let unauthorized = |reason: String| ImageError::RegistryUnauthorized {
            registry: registry.clone(),
            reason: format!("{sent} ({reason})"),
        };
        let not_found = |reason: String| ImageError::NotInRegistry {
            reference: shown.to_string(),
            registry: registry.clone(),
            reason,
        };
        match e {
            OciDistributionError::RequestError(re)
                if self.https && re.is_connect() && self.handshake_not_tls(&re) =>
            {
                let hint = if self.http_fallback {
                    String::new()
                } else if super::loopback::is_loopback(&registry) {
                    format!(
                        " (HTTPS only was asked for this loopback registry: by plain_http = false \
                         or a ca_file in registries.hosts.\"{registry}\", port 443, or an \
                         https:// mirror; without them it falls back to plain HTTP)"
                    )
                } else {
                    format!(
                        " (the server answered with something that is not TLS, as a plain HTTP \
                         server does; a registry that is not on loopback is spoken to in plain \
                         HTTP only with registries.hosts.\"{registry}\".plain_http = true)"
                    )
                };
                ImageError::RegistryNotTls {
                    reason: format!("the TLS handshake failed: {}{hint}", chain(&re)),
                    registry,
                }
            }
            OciDistributionError::UnauthorizedError { url } => {
                unauthorized(format!("401 Unauthorized for {url}"))
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                unauthorized(format!("the token service refused: {reason}"))
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let reason = format!("{envelope} ({url})");
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized(reason)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found(reason)
                } else {
                    ImageError::Registry { registry, reason }
                }
            }
            OciDistributionError::ServerError { code, url, message } => {
                let reason = format!("HTTP {code} for {url}: {}", message.trim());
                match code {
                    401 | 403 => unauthorized(reason),
                    404 => not_found(reason),
                    _ => ImageError::Registry { registry, reason },
                }
            }
            OciDistributionError::RequestError(re) if chain(&re).contains("certificate") => {
                ImageError::Registry {
                    reason: format!(
                        "TLS: the registry's certificate is not trusted (a private CA goes in \
                         registries.hosts.\"{registry}\".ca_file): {}",
                        chain(&re)
                    ),
                    registry,
                }
            }
            OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
                let reason = if re.is_timeout() {
                    format!(
                        "no answer within the timeout (connect {} s, read {} s): {}",
                        self.connect_timeout.as_secs(),
                        self.read_timeout.as_secs(),
                        chain(&re)
                    )
                } else {
                    chain(&re)
                };
                ImageError::RegistryUnreachable { registry, reason }
            }
            OciDistributionError::DigestError(d) => ImageError::Registry {
                registry,
                reason: format!("{shown}: {d}"),
            },
            other => ImageError::Registry {
                registry,
                reason: format!("{shown}: {}", chain(&other)),
            },
        }
    }
}

impl RegistryClient {
    /// True when an HTTPS connection failed because the server does not
    /// speak TLS: rustls found no TLS record in its answer (a plain HTTP
    /// server answers `HTTP/1.1 400`: containerd's `tls.RecordHeaderError`
    /// with `HTTP/`) or, for a host that may fall back, the connection was
    /// dropped in the handshake. Certificate errors and alerts are TLS
    /// spoken and refused: they are not this.
    fn handshake_not_tls(&self, e: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(e);
        while let Some(err) = next {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return matches!(tls, rustls::Error::InvalidMessage(_));
            }
            if let Some(io) = err.downcast_ref::<io::Error>() {
                if self.http_fallback
                    && matches!(
                        io.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    )
                {
                    return true;
                }
                // io::Error's source() skips the error it wraps.
                if let Some(inner) = io.get_ref() {
                    next = Some(inner);
                    continue;
                }
            }
            next = err.source();
        }
        false
    }
}

/// `error: cause: cause`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
