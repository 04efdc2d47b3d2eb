//! The outermost gRPC layer: every call's latency and status code, by method, into
//! [`Metrics`]. Method labels are bounded to the methods this server serves
//! ([`served_methods`]); any other path a client sends is counted as `other`.

use crate::metrics::{MethodLabel, Metrics};
use prost::Message;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;

type Req = http::Request<Body>;
type Resp = http::Response<Body>;

/// The full paths (`/package.Service/Method`) of every gRPC method the port serves.
pub fn served_methods() -> Vec<String> {
    let mut out = vec!["/envoy.service.auth.v3.Authorization/Check".to_owned()];
    for set in [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    out.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    for version in ["v1", "v1alpha"] {
        out.push(format!(
            "/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
        ));
    }
    out
}

#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> tower::Service<Req> for RpcMetricsService<S>
where
    S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let started = crate::clock::monotonic_now();
        let method = self.metrics.method_label(req.uri().path());
        Timed {
            answer: self.inner.call(req),
            metrics: self.metrics.clone(),
            method,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call's future, recorded when it completes: no allocation of its own.
    pub struct Timed<F> {
        #[pin]
        answer: F,
        metrics: Metrics,
        method: MethodLabel,
        started: tokio::time::Instant,
    }
}

impl<F, E> Future for Timed<F>
where
    F: Future<Output = Result<Resp, E>>,
{
    type Output = Result<Resp, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.answer.poll(cx));
        if let Ok(resp) = &out {
            this.metrics
                .rpc_finished(*this.method, status_code(resp), this.started.elapsed());
        }
        Poll::Ready(out)
    }
}

/// The call's `grpc-status`: an error is answered trailers-only, with the status in the
/// headers; a success sends headers without it (its OK comes in the trailers), so absent
/// means OK. A unary call never fails after its headers, and every authgate method but the
/// reflection stream is unary.
pub(crate) fn status_code(resp: &Resp) -> i32 {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    resp.headers()
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_cover_the_public_api() {
        let m = served_methods();
        for path in [
            "/authgate.v1.TokenService/GetToken",
            "/authgate.v1.CredentialService/PutCredential",
            "/grpc.health.v1.Health/Check",
            "/envoy.service.auth.v3.Authorization/Check",
        ] {
            assert!(m.iter().any(|p| p == path), "{path} missing from {m:?}");
        }
    }
}
