//! The streaming HTTP server: single-use URLs for Exec, Attach and
//! PortForward, and the upgrade to SPDY/3.1 or WebSocket.
//!
//! A CRI call validated by the runtime becomes a [`StreamRequest`] under a
//! random token: the URL `<base>/<exec|attach|portforward>/<token>` is what
//! the call answers. The token is removed when the URL is opened (used
//! once) and expires unused after `token_ttl_secs`. Opening it is an HTTP/1.1
//! upgrade: `Upgrade: websocket` with `Sec-WebSocket-Protocol` offers, or
//! `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version` offers, negotiated as
//! kubelet's server does (the first offer the server supports; none offered:
//! the oldest protocol). The upgraded connection goes to the protocol's
//! `serve_*` with a session from the [`SessionFactory`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::config::StreamingConfig;
use super::{spdy, websocket, PortDialer, RemoteCommand, SessionLimits, StreamOptions};

/// URLs not yet opened, at most (kubelet's cache holds 1,000 too).
pub const MAX_PENDING: usize = 1000;

/// What a URL was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        opts: StreamOptions,
    },
    Attach {
        container_id: String,
        opts: StreamOptions,
    },
    PortForward {
        pod_id: String,
        /// The CRI request's ports: used by a WebSocket client that names
        /// none in its URL (SPDY clients name theirs per stream).
        ports: Vec<u16>,
    },
}

impl StreamRequest {
    fn path_kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }
}

/// Turns a request into a session when its URL is opened (the runtime).
pub trait SessionFactory: Send + Sync {
    fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        opts: StreamOptions,
    ) -> Box<dyn RemoteCommand>;
    fn attach(&self, container_id: &str, opts: StreamOptions) -> Box<dyn RemoteCommand>;
    fn port_dialer(&self, pod_id: &str) -> Result<Arc<dyn PortDialer>, String>;
}

/// Failures of the streaming server that reach a CRI caller.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("too many streaming requests in flight (max {MAX_PENDING}); retry later")]
    TooManyPending,
    #[error("streaming server: {0}")]
    Io(#[from] std::io::Error),
    #[error("streaming server: {0}")]
    Config(String),
}

struct Pending {
    request: StreamRequest,
    expires: Instant,
}

/// The running server.
pub struct StreamingServer {
    base_url: String,
    ttl: Duration,
    limits: SessionLimits,
    pending: Mutex<HashMap<String, Pending>>,
    factory: Arc<dyn SessionFactory>,
}

/// 128 random bits, hex (getrandom(2); only EINTR is retried).
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled part of
        // `bytes`, which getrandom only writes into.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(hex::encode(bytes))
}

/// How long a client may take to send its request head or finish a TLS
/// handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl StreamingServer {
    /// Binds the configured address and serves until the process ends.
    pub async fn start(
        config: &StreamingConfig,
        factory: Arc<dyn SessionFactory>,
    ) -> Result<Arc<StreamingServer>, StreamingError> {
        let ip = config.ip().map_err(StreamingError::Config)?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, config.port)).await?;
        let local = listener.local_addr()?;
        let tls = super::tls::acceptor(config).map_err(StreamingError::Config)?;
        let advertised = if ip.is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
        } else {
            local
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(StreamingServer {
            base_url: format!("{scheme}://{advertised}"),
            ttl: config.token_ttl(),
            limits: config.limits(),
            pending: Mutex::new(HashMap::new()),
            factory,
        });
        tracing::info!(url = %server.base_url, "streaming server ready (exec, attach, port-forward)");
        let accepting = server.clone();
        tokio::spawn(async move { accepting.accept_loop(listener, tls).await });
        Ok(server)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The single-use URL for `request`.
    pub fn url_for(&self, request: StreamRequest) -> Result<String, StreamingError> {
        let token = new_token()?;
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= MAX_PENDING {
            return Err(StreamingError::TooManyPending);
        }
        let url = format!("{}/{}/{token}", self.base_url, request.path_kind());
        pending.insert(
            token,
            Pending {
                request,
                expires: now + self.ttl,
            },
        );
        Ok(url)
    }

    /// Takes the request of `token` (once), if it has not expired.
    fn take(&self, kind: &str, token: &str) -> Option<StreamRequest> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.remove(token)?;
        (entry.expires > Instant::now() && entry.request.path_kind() == kind)
            .then_some(entry.request)
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server: accept");
                    continue;
                }
            };
            // Interactive sessions: no Nagle delay on keystrokes and echoes
            // (Go's servers, kubelet's and containerd's, do the same).
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let served = match tls {
                    Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp))
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                    {
                        Ok(stream) => server.serve_connection(stream).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "streaming server: TLS handshake");
                            return;
                        }
                    },
                    None => server.serve_connection(tcp).await,
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "streaming connection");
                }
            });
        }
    }

    async fn serve_connection<IO>(self: Arc<Self>, io: IO) -> Result<(), hyper::Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let server = self.clone();
            async move { Ok::<_, std::convert::Infallible>(server.handle(req)) }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await
    }

    fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
            return plain(StatusCode::NOT_FOUND, "no such streaming endpoint");
        }
        if !matches!(*req.method(), Method::GET | Method::POST) {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
        }
        let Some(request) = self.take(kind, token) else {
            return plain(
                StatusCode::NOT_FOUND,
                "unknown, used or expired streaming token",
            );
        };
        let upgrade = header_str(req.headers(), header::UPGRADE).to_ascii_lowercase();
        let query = req.uri().query().unwrap_or("").to_owned();
        if upgrade == "websocket" {
            self.upgrade_websocket(req, request, &query)
        } else if upgrade == "spdy/3.1" {
            self.upgrade_spdy(req, request)
        } else {
            plain(
                StatusCode::BAD_REQUEST,
                "expected an upgrade to SPDY/3.1 or websocket",
            )
        }
    }

    fn upgrade_spdy(
        self: &Arc<Self>,
        req: Request<Incoming>,
        request: StreamRequest,
    ) -> Response<Full<Bytes>> {
        let offered = header_values(req.headers(), "x-stream-protocol-version");
        let supported = match request {
            StreamRequest::PortForward { .. } => spdy::PORTFORWARD_PROTOCOLS,
            _ => spdy::REMOTECOMMAND_PROTOCOLS,
        };
        let Some(protocol) = negotiate_or_oldest(&offered, supported) else {
            return no_protocol(&offered, supported);
        };
        let server = self.clone();
        tokio::spawn(async move {
            let io = match hyper::upgrade::on(req).await {
                Ok(upgraded) => Box::new(TokioIo::new(upgraded)),
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY upgrade");
                    return;
                }
            };
            let _session = crate::metrics_http::streaming_session(request.path_kind(), "spdy");
            match request {
                StreamRequest::PortForward { pod_id, .. } => {
                    match server.factory.port_dialer(&pod_id) {
                        Ok(dialer) => spdy::serve_portforward(io, dialer, server.limits).await,
                        Err(e) => tracing::warn!(pod_id, error = %e, "port-forward"),
                    }
                }
                other => {
                    let (cmd, opts) = server.command(other);
                    spdy::serve_remotecommand(io, protocol, opts, cmd, server.limits).await
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", protocol)
            .body(Full::default())
            .expect("a valid response")
    }

    fn upgrade_websocket(
        self: &Arc<Self>,
        req: Request<Incoming>,
        request: StreamRequest,
        query: &str,
    ) -> Response<Full<Bytes>> {
        let key = header_str(req.headers(), header::SEC_WEBSOCKET_KEY);
        if key.is_empty() {
            return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
        }
        let offered = header_values(req.headers(), "sec-websocket-protocol");
        let supported = match request {
            StreamRequest::PortForward { .. } => websocket::PORTFORWARD_PROTOCOLS,
            _ => websocket::REMOTECOMMAND_PROTOCOLS,
        };
        let offers: Vec<&str> = offered.iter().map(String::as_str).collect();
        // "" when the client offered none: plain `channel.k8s.io`, and no
        // protocol header in the answer.
        let Some(protocol) = websocket::negotiate(&offers, supported) else {
            return no_protocol(&offered, supported);
        };
        let ports = match &request {
            StreamRequest::PortForward { ports, .. } => {
                // The URL's `port` parameters (kubectl's), else the CRI
                // request's.
                match websocket::ports_from_query(query) {
                    Ok(from_url) if !from_url.is_empty() => from_url,
                    Ok(_) | Err(websocket::PortQueryError::Missing) if !ports.is_empty() => {
                        ports.clone()
                    }
                    Ok(_) | Err(websocket::PortQueryError::Missing) => {
                        return plain(StatusCode::BAD_REQUEST, "no port to forward")
                    }
                    Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
                }
            }
            _ => Vec::new(),
        };
        let accept = websocket::accept_key(key.as_bytes());
        let server = self.clone();
        tokio::spawn(async move {
            let io = match hyper::upgrade::on(req).await {
                Ok(upgraded) => Box::new(TokioIo::new(upgraded)),
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade");
                    return;
                }
            };
            let _session = crate::metrics_http::streaming_session(request.path_kind(), "websocket");
            let served = match request {
                StreamRequest::PortForward { pod_id, .. } => {
                    match server.factory.port_dialer(&pod_id) {
                        Ok(dialer) => {
                            websocket::serve_portforward(io, protocol, ports, dialer, server.limits)
                                .await
                        }
                        Err(e) => {
                            tracing::warn!(pod_id, error = %e, "port-forward");
                            Ok(())
                        }
                    }
                }
                other => {
                    let (cmd, opts) = server.command(other);
                    websocket::serve_remotecommand(io, protocol, opts, cmd, server.limits).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "websocket session");
            }
        });
        let mut rsp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if !protocol.is_empty() {
            rsp = rsp.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        rsp.body(Full::default()).expect("a valid response")
    }

    fn command(&self, request: StreamRequest) -> (Box<dyn RemoteCommand>, StreamOptions) {
        match request {
            StreamRequest::Exec {
                container_id,
                cmd,
                opts,
            } => (self.factory.exec(&container_id, &cmd, opts), opts),
            StreamRequest::Attach { container_id, opts } => {
                (self.factory.attach(&container_id, opts), opts)
            }
            StreamRequest::PortForward { .. } => unreachable!("port-forward has no command"),
        }
    }
}

/// The first offer the server supports; with no offer at all, the oldest
/// protocol the server has (the last of `supported`), as kubelet's
/// handshake falls back to.
fn negotiate_or_oldest(offered: &[String], supported: &[&'static str]) -> Option<&'static str> {
    if offered.is_empty() {
        return supported.last().copied();
    }
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

fn no_protocol(offered: &[String], supported: &[&str]) -> Response<Full<Bytes>> {
    plain(
        StatusCode::FORBIDDEN,
        &format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
        ),
    )
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{text}\n"))))
        .expect("a valid response")
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Every value of a header that may repeat or list values with commas.
fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_first_supported_offer_or_the_oldest() {
        let supported = &["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"];
        let offers = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate_or_oldest(
                &offers(&["v5.channel.k8s.io", "v3.channel.k8s.io"]),
                supported
            ),
            Some("v3.channel.k8s.io")
        );
        assert_eq!(negotiate_or_oldest(&[], supported), Some("channel.k8s.io"));
        assert_eq!(negotiate_or_oldest(&offers(&["x"]), supported), None);
    }

    #[test]
    fn repeated_and_listed_header_values_are_all_offers() {
        let mut h = HeaderMap::new();
        h.append(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        h.append(
            "x-stream-protocol-version",
            "v3.channel.k8s.io, v2.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(
            header_values(&h, "x-stream-protocol-version"),
            [
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io"
            ]
        );
    }

    #[test]
    fn tokens_are_long_random_and_distinct() {
        let a = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_token().unwrap());
    }
}
