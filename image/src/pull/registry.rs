//! One registry endpoint through `oci-client`: manifests by tag or digest,
//! blobs as byte streams, and its errors turned into [`ImageError`]s that
//! name the registry.
//!
//! Manifests are fetched here rather than by `oci-client`'s
//! `pull_manifest_raw`, which reads the whole body into memory before
//! anything can look at its size: a registry answering with an endless or
//! 1 GiB "manifest" held the puller's memory (and the pull) for as long as
//! it liked. Here the body is read in chunks and cut at
//! [`MAX_JSON_BLOB`](crate::content::MAX_JSON_BLOB) (a declared
//! `Content-Length` above it is refused unread), and the whole manifest
//! must arrive within [`MANIFEST_DEADLINE_READS`] read timeouts: each read
//! of a slow-loris body is within the read timeout, so only that deadline
//! ends it. Authentication (the token dance, basic credentials) is still
//! `oci-client`'s, and so are blobs, which stream.

use std::io;

use futures_util::stream::BoxStream;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use super::auth::Credentials;
use super::config::{Endpoint, RegistriesConfig};
use super::manifest::{Blob, ACCEPTED};
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;

const USER_AGENT: &str = concat!("caisson/", env!("CARGO_PKG_VERSION"));

/// A manifest must arrive whole within this many read timeouts (plus the
/// connect timeout): 2 minutes with the default 30 s.
pub const MANIFEST_DEADLINE_READS: u32 = 4;

/// Redirects followed for one manifest request (the distribution API
/// redirects at most once or twice, to a CDN).
const MAX_REDIRECTS: usize = 10;

/// How much of an error answer's body is read (for its error envelope).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A client for one image's repository at one endpoint.
pub struct RegistryClient {
    client: oci_client::Client,
    /// For manifests, with the same TLS roots and timeouts (see the module docs).
    http: reqwest::Client,
    /// The pull token `oci-client` got for this repository, once.
    token: tokio::sync::OnceCell<Option<String>>,
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
        let setup_error = |e: &(dyn std::error::Error + 'static)| ImageError::Registry {
            registry: endpoint.host.clone(),
            reason: format!("setting up the HTTP client: {}", chain(e)),
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout())
            .read_timeout(config.read_timeout())
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS));
        for cert in &client_config.extra_root_certificates {
            let cert = reqwest::Certificate::from_pem(&cert.data).map_err(|e| setup_error(&e))?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build().map_err(|e| setup_error(&e))?;
        let client = oci_client::Client::try_from(client_config).map_err(|e| setup_error(&e))?;
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
            http,
            token: tokio::sync::OnceCell::new(),
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
        let deadline = self.read_timeout * MANIFEST_DEADLINE_READS + self.connect_timeout;
        let bytes = tokio::time::timeout(deadline, self.fetch_manifest(&target, shown))
            .await
            .map_err(|_| ImageError::RegistryUnreachable {
                registry: self.host.clone(),
                reason: format!(
                    "the manifest of {shown} did not arrive whole within {} s ({} read timeouts)",
                    deadline.as_secs(),
                    MANIFEST_DEADLINE_READS
                ),
            })??;
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

    /// GETs a manifest with this repository's pull token, reading at most
    /// [`MAX_JSON_BLOB`](crate::content::MAX_JSON_BLOB) bytes of it.
    async fn fetch_manifest(&self, target: &oci_client::Reference, shown: &str) -> Result<Vec<u8>> {
        let token = self
            .token
            .get_or_try_init(|| {
                self.client
                    .auth(target, &self.auth, RegistryOperation::Pull)
            })
            .await
            .map_err(|e| self.error(e, shown))?;
        let url = format!(
            "{scheme}://{registry}/v2/{repository}/manifests/{reference}{ns}",
            scheme = if self.https { "https" } else { "http" },
            registry = target.resolve_registry(),
            repository = target.repository(),
            reference = target
                .digest()
                .unwrap_or_else(|| target.tag().unwrap_or("latest")),
            ns = target
                .namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        );
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
        request = match (token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let failed = |e: reqwest::Error| self.error(OciDistributionError::RequestError(e), shown);
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        let limit = crate::content::MAX_JSON_BLOB;
        let too_big = |size: u64| {
            ImageError::malformed(
                format!("manifest of {shown} from {}", self.host),
                format!(
                    "{size} bytes or more: larger than the {} MiB a manifest may be",
                    limit >> 20
                ),
            )
        };
        let cap = if status.is_success() {
            match response.content_length() {
                Some(declared) if declared > limit => return Err(too_big(declared)),
                _ => limit as usize,
            }
        } else {
            MAX_ERROR_BODY
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > cap {
                if status.is_success() {
                    return Err(too_big((body.len() + chunk.len()) as u64));
                }
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let e = match status.as_u16() {
            401 => OciDistributionError::UnauthorizedError { url },
            code => match serde_json::from_slice::<OciEnvelope>(&body) {
                Ok(envelope) if !envelope.errors.is_empty() => {
                    OciDistributionError::RegistryError { envelope, url }
                }
                _ => OciDistributionError::ServerError {
                    code,
                    url,
                    message: String::from_utf8_lossy(&body).into_owned(),
                },
            },
        };
        Err(self.error(e, shown))
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
