//! One span per gRPC call, and one log line per failed call.
//!
//! [`CallLogLayer`] wraps every service on the CRI socket. Each request runs
//! in a `cri` span carrying its method and, once a handler names them with
//! [`record_id`], the pod and container ids. A call that ends with a status
//! other than OK is logged once, when its answer leaves: at `error` for
//! INTERNAL, UNKNOWN and DATA_LOSS (Caisson's own failures), at `warn` for
//! the rest (the caller's), with the method, the ids and the status message,
//! which carries the cause chain. So an operator sees in caissond's log why
//! a kubelet pod is stuck in CreateContainerError, as containerd shows.
//! Every answered call is also counted, with its latency, by method and
//! code in [`crate::metrics_http`].

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Code;
use tracing::Instrument;

/// The ids a handler has named for the call in progress.
#[derive(Default, Clone)]
struct CallIds {
    pod_id: Option<String>,
    container_id: Option<String>,
}

tokio::task_local! {
    static CALL_IDS: RefCell<CallIds>;
}

/// Names an id of the call in progress: `pod_sandbox_id` (or `pod_id`) and
/// `container_id` go into the call's span and its failure line; other
/// fields are ignored. Does nothing outside a call.
pub fn record_id(field: &str, id: &str) {
    let (span_field, pod) = match field {
        "pod_sandbox_id" | "pod_id" => ("pod_id", true),
        "container_id" => ("container_id", false),
        _ => return,
    };
    if id.is_empty() {
        return;
    }
    tracing::Span::current().record(span_field, id);
    let _ = CALL_IDS.try_with(|ids| {
        let mut ids = ids.borrow_mut();
        let slot = if pod {
            &mut ids.pod_id
        } else {
            &mut ids.container_id
        };
        *slot = Some(id.to_owned());
    });
}

/// The tower layer for tonic's `Server::builder().layer(...)`.
#[derive(Clone, Copy, Default)]
pub struct CallLogLayer;

impl<S> tower::Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> CallLog<S> {
        CallLog { inner }
    }
}

#[derive(Clone)]
pub struct CallLog<S> {
    inner: S,
}

/// `/runtime.v1.RuntimeService/CreateContainer` → `CreateContainer`.
fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a failure is Caisson's own (logged at error) rather than the
/// caller's (warn).
fn is_server_fault(code: Code) -> bool {
    matches!(code, Code::Internal | Code::Unknown | Code::DataLoss)
}

impl<S, B, RB> tower::Service<http::Request<B>> for CallLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = std::time::Instant::now();
        let method = method_name(req.uri().path()).to_owned();
        let span = tracing::info_span!(
            "cri",
            method = %method,
            pod_id = tracing::field::Empty,
            container_id = tracing::field::Empty,
        );
        // The handler runs when the inner future is polled, inside both the
        // span and the ids' scope.
        let call = span.in_scope(|| self.inner.call(req));
        let answer = CALL_IDS.scope(RefCell::new(CallIds::default()), async move {
            let answer = call.await;
            let ids = CALL_IDS.with(|ids| ids.borrow().clone());
            (answer, ids)
        });
        Box::pin(
            async move {
                let (answer, ids) = answer.await;
                // A failure is a trailers-only answer: its status is in the
                // headers. A streaming call's status comes later: OK here.
                let code = match &answer {
                    Ok(rsp) => match tonic::Status::from_header_map(rsp.headers()) {
                        Some(status) => {
                            log_failure(&method, &ids, &status);
                            status.code()
                        }
                        None => Code::Ok,
                    },
                    Err(_) => Code::Unknown,
                };
                crate::metrics_http::metrics().record_call(&method, code, started.elapsed());
                answer
            }
            .instrument(span),
        )
    }
}

fn log_failure(method: &str, ids: &CallIds, status: &tonic::Status) {
    if status.code() == Code::Ok {
        return;
    }
    let pod_id = ids.pod_id.as_deref().unwrap_or("");
    let container_id = ids.container_id.as_deref().unwrap_or("");
    let code = format!("{:?}", status.code());
    let message = status.message();
    if is_server_fault(status.code()) {
        tracing::error!(
            method,
            pod_id,
            container_id,
            code,
            "{method} failed: {message}"
        );
    } else {
        tracing::warn!(
            method,
            pod_id,
            container_id,
            code,
            "{method} failed: {message}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_and_fault_levels() {
        for (path, method) in [
            (
                "/runtime.v1.RuntimeService/CreateContainer",
                "CreateContainer",
            ),
            ("/runtime.v1.ImageService/PullImage", "PullImage"),
            ("/caisson.admin.v1.Images/Import", "Import"),
            ("weird", "weird"),
        ] {
            assert_eq!(method_name(path), method);
        }
        for (code, server) in [
            (Code::Internal, true),
            (Code::Unknown, true),
            (Code::DataLoss, true),
            (Code::NotFound, false),
            (Code::InvalidArgument, false),
            (Code::Unimplemented, false),
            (Code::Unavailable, false),
        ] {
            assert_eq!(is_server_fault(code), server, "{code:?}");
        }
    }

    #[tokio::test]
    async fn ids_recorded_by_the_handler_reach_the_failure_line() {
        let ids = CALL_IDS
            .scope(RefCell::new(CallIds::default()), async {
                record_id("pod_sandbox_id", "p1");
                record_id("container_id", "c1");
                record_id("image", "ignored");
                record_id("container_id", "");
                CALL_IDS.with(|ids| ids.borrow().clone())
            })
            .await;
        assert_eq!(ids.pod_id.as_deref(), Some("p1"));
        assert_eq!(ids.container_id.as_deref(), Some("c1"));
        // Outside a call: nothing, and no panic.
        record_id("container_id", "c2");
    }
}
