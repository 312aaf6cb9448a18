//! The HTTP endpoint: `GET /metrics` on `[metrics] address`, plain
//! HTTP/1.1 (hyper), as containerd's metrics listener.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::scrape::{self, Format, ShimPids};
use super::{metrics, MetricsConfig};
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    #[error("{0}")]
    Config(String),
    #[error("metrics endpoint: binding {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct Endpoint {
    rt: Arc<Runtime>,
    shim_pids: ShimPids,
}

/// Binds `[metrics] address` and serves it until the process ends; `None`
/// when no address is configured. Logs the bound address (port 0 picks one).
pub async fn start(
    config: &MetricsConfig,
    rt: Arc<Runtime>,
) -> Result<Option<SocketAddr>, MetricsServerError> {
    let Some(address) = config.socket_addr().map_err(MetricsServerError::Config)? else {
        return Ok(None);
    };
    let bind = |source| MetricsServerError::Bind { address, source };
    let listener = tokio::net::TcpListener::bind(address).await.map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    tracing::info!(address = %local, "metrics endpoint ready: http://{local}/metrics");
    let endpoint = Arc::new(Endpoint {
        rt,
        shim_pids: ShimPids::default(),
    });
    tokio::spawn(accept_loop(listener, endpoint));
    Ok(Some(local))
}

async fn accept_loop(listener: tokio::net::TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept");
                // EMFILE and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, std::convert::Infallible>(endpoint.handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics connection");
            }
        });
    }
}

impl Endpoint {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/metrics" {
            return plain(StatusCode::NOT_FOUND, "not found: scrape /metrics");
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        }
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let format = Format::from_accept(accept);
        let snapshot = scrape::gather(&self.rt, &self.shim_pids).await;
        match scrape::encode(metrics(), &snapshot, format) {
            Ok(text) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, format.content_type())
                .body(Full::new(Bytes::from(text)))
                .expect("a valid response"),
            Err(e) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding the metrics: {e}"),
            ),
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{text}\n"))))
        .expect("a valid response")
}
