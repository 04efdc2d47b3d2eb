//! The tower layer in front of every gRPC service, and the method → role table. For each
//! authgate request, in this order: identify the caller, check the method's role, apply the
//! caller's rate limit, read the tenant from the request and check it, then record the
//! decision as [`CallerName`], in which the RPC runs (see `crate::context`).
//!
//! Envoy's ext_authz `Check` carries no tenant of ours: its tenant is the one of the route
//! the handler resolves. For it the layer does all but the tenant check and hands the
//! handler a [`TenantGrant`] (see [`super::grant`]) for that last step.

use super::admission::{authorize, denied_message, Refusal};
use super::callers::{Caller, LiveCallers};
use super::grant::TenantGrant;
use super::identity::{is_loopback_peer, presented_identity};
use super::tenant_field::tenant_of_frame;
use super::{CallerId, CallerName};
use crate::config::{CallerConfig, Role};
use crate::context::with_caller;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::Status;
use tracing::Instrument;

/// The one method whose requests carry the caller's [`CallerId`].
const WATCH_EVENTS: &str = "/authgate.v1.TokenService/WatchEvents";

type Req = http::Request<Body>;
type Resp = http::Response<Body>;

/// The role a method needs; `None` for services that are open (health, reflection).
fn required_role(path: &str) -> Option<Role> {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let method = path.rsplit('/').next().unwrap_or("");
    match service {
        "authgate.v1.TokenService" => Some(match method {
            "ListEvents" | "WatchEvents" => Role::Events,
            "Revoke" => Role::Revoke,
            "ExchangeToken" => Role::Exchange,
            _ => Role::Token,
        }),
        "authgate.v1.CredentialService" | "authgate.v1.WebhookService" => Some(Role::Admin),
        // The proxy asks for a token to inject: the same role as GetToken.
        MESH_SERVICE => Some(Role::Token),
        // A future authgate service is admin-only until it is given a role here.
        s if s.starts_with("authgate.") => Some(Role::Admin),
        _ => None,
    }
}

/// Envoy's external authorization service, served for service-mesh token injection.
const MESH_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Whether the method's tenant is resolved by its handler rather than read from field 1.
fn tenant_from_route(path: &str) -> bool {
    path.trim_start_matches('/').split('/').next() == Some(MESH_SERVICE)
}

/// Shared state of the layer; [`Authorizer::reload`] swaps the caller table.
#[derive(Clone)]
pub struct Authorizer {
    pub(super) callers: LiveCallers,
    max_request_bytes: usize,
}

impl Authorizer {
    pub fn new(configs: &[CallerConfig], max_request_bytes: usize) -> Self {
        Self {
            callers: LiveCallers::new(configs),
            max_request_bytes,
        }
    }

    /// Replaces the callers (keys rotated, callers added or removed) without touching
    /// open connections.
    /// Whether no callers are configured (dev mode: loopback peers only, no identity).
    pub fn is_open(&self) -> bool {
        self.callers.current().is_empty()
    }

    pub fn reload(&self, configs: &[CallerConfig]) {
        self.callers.reload(configs);
    }

    pub fn layer(&self) -> AuthLayer {
        AuthLayer { auth: self.clone() }
    }

    /// The request to hand on with who it runs for, or the status to answer with.
    async fn admit(&self, mut req: Req, role: Role) -> Result<Admitted, Status> {
        let route_tenant = tenant_from_route(req.uri().path());
        let table = self.callers.current();
        let presented = presented_identity(&req);
        let admitted = authorize(
            &table,
            presented,
            is_loopback_peer(&req),
            role,
            "send `authorization: Bearer <api key>` or connect with a client certificate",
        );
        let Some(caller) = admitted.map_err(Refusal::into_status)? else {
            // Dev mode: no callers configured, loopback peers only.
            if route_tenant {
                req.extensions_mut().insert(TenantGrant::local(role));
            }
            return Ok(Admitted {
                req,
                caller: CallerName("local".into()),
                tenant: None,
            });
        };
        if let Some(scopes) = caller.allowed_scopes() {
            req.extensions_mut().insert(scopes.clone());
        }
        if req.uri().path() == WATCH_EVENTS {
            // Only streams are counted per caller; an extension costs an allocation, which
            // the other methods' hot path does not pay.
            req.extensions_mut().insert(CallerId(caller.name.clone()));
        }
        if route_tenant {
            // The handler checks the route's tenant with this grant before any domain call.
            let grant = TenantGrant::new(caller, role, &table);
            req.extensions_mut().insert(grant);
            let name = format!(
                "{} ({}; allowed role {role:?}; tenant from the route)",
                caller.name,
                caller.how()
            );
            return Ok(Admitted {
                req,
                caller: CallerName(name.into()),
                tenant: None,
            });
        }
        let (parts, bytes) = self.read_body(req).await?;
        let tenant =
            tenant_of_frame(&bytes).map_err(|why| Status::invalid_argument(why.to_string()))?;
        if !caller.allows_tenant(&tenant) {
            return Err(denied(caller));
        }
        let req = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
        let name = CallerName(
            format!(
                "{} ({}; allowed role {role:?} on tenant {tenant})",
                caller.name,
                caller.how()
            )
            .into(),
        );
        Ok(Admitted {
            req,
            caller: name,
            tenant: Some(tenant),
        })
    }

    /// The tenant is inside the message: read the (small, unary) body once, so it can be
    /// checked and the same bytes handed on.
    async fn read_body(&self, req: Req) -> Result<(http::request::Parts, Bytes), Status> {
        let (parts, body) = req.into_parts();
        // The gRPC frame header is 5 bytes on top of the message.
        let limit = self.max_request_bytes + 5;
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => Ok((parts, c.to_bytes())),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(Status::resource_exhausted(format!(
                    "request larger than {} bytes",
                    self.max_request_bytes
                )))
            }
            Err(_) => Err(Status::cancelled(
                "request body was not received completely",
            )),
        }
    }
}

/// An admitted request and who it runs for.
struct Admitted {
    req: Req,
    caller: CallerName,
    tenant: Option<String>,
}

/// One answer for a wrong role, an unknown tenant and a forbidden tenant, so tenants
/// cannot be probed.
fn denied(caller: &Caller) -> Status {
    Status::permission_denied(denied_message(caller))
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Authorizer,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authorizer,
}

impl<S> tower::Service<Req> for AuthService<S>
where
    S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The clone is the one made ready by poll_ready's caller contract (tower's
        // "clone then swap" pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let Some(role) = required_role(req.uri().path()) else {
                return inner.call(req).await;
            };
            let span = rpc_span(&req);
            match auth.admit(req, role).await {
                Ok(a) => {
                    if !span.is_disabled() {
                        span.record("caller", &*a.caller.0);
                        span.record("tenant", a.tenant.as_deref().unwrap_or(""));
                    }
                    let resp = with_caller(Some(a.caller.0), inner.call(a.req))
                        .instrument(span.clone())
                        .await;
                    if let Ok(r) = &resp {
                        record_status(&span, r);
                    }
                    resp
                }
                Err(status) => {
                    let resp = status.into_http();
                    record_status(&span, &resp);
                    Ok(resp)
                }
            }
        })
    }
}

/// The RPC's span: named after the method, continuing the caller's trace (W3C
/// `traceparent` in the metadata). At debug level every log line of the RPC names its
/// method, caller, tenant and credential; with `[telemetry] otlp_endpoint` it is exported
/// (see `crate::telemetry`). Otherwise it is disabled, so its fields are never formatted and
/// the hot path allocates nothing for it. The events the RPC causes name the caller either
/// way (the task context).
fn rpc_span(req: &Req) -> tracing::Span {
    let method = req.uri().path();
    let span = tracing::debug_span!(
        "rpc",
        otel.name = method.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        method,
        caller = tracing::field::Empty,
        tenant = tracing::field::Empty,
        credential = tracing::field::Empty,
        cache = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_callers_trace(&span, req.headers());
    span
}

/// The answer's gRPC status code on the RPC's span; a non-OK one marks the span an error.
fn record_status(span: &tracing::Span, resp: &Resp) {
    if span.is_disabled() {
        return;
    }
    let code = crate::api::rpc_metrics::status_code(resp);
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_method() {
        assert_eq!(
            required_role("/authgate.v1.TokenService/GetToken"),
            Some(Role::Token)
        );
        assert_eq!(
            required_role("/authgate.v1.TokenService/Revoke"),
            Some(Role::Revoke)
        );
        assert_eq!(
            required_role("/authgate.v1.TokenService/ExchangeToken"),
            Some(Role::Exchange)
        );
        assert_eq!(
            required_role("/authgate.v1.TokenService/ListEvents"),
            Some(Role::Events)
        );
        assert_eq!(
            required_role("/authgate.v1.CredentialService/PutCredential"),
            Some(Role::Admin)
        );
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        let check = "/envoy.service.auth.v3.Authorization/Check";
        assert_eq!(required_role(check), Some(Role::Token));
        assert!(tenant_from_route(check));
        assert!(!tenant_from_route("/authgate.v1.TokenService/GetToken"));
    }

    fn get_token(traceparent: &str) -> Req {
        http::Request::builder()
            .uri("/authgate.v1.TokenService/GetToken")
            .header("traceparent", traceparent)
            .body(Body::empty())
            .unwrap()
    }

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn rpc_span_is_disabled_without_export() {
        // The subscriber `telemetry::init` installs without `[telemetry] otlp_endpoint`.
        let logs = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .finish();
        tracing::subscriber::with_default(logs, || {
            let span = rpc_span(&get_token(TRACEPARENT));
            assert!(span.is_disabled());
        });
    }

    #[test]
    fn rpc_span_continues_the_callers_trace_when_exporting() {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let sub = crate::telemetry::exporting_subscriber("text", &provider);
        tracing::subscriber::with_default(sub, || {
            let span = rpc_span(&get_token(TRACEPARENT));
            assert!(!span.is_disabled(), "exported although logs are at info");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            assert_eq!(
                sc.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );
            assert_ne!(
                sc.span_id().to_string(),
                "b7ad6b7169203331",
                "a span of its own"
            );
            // No traceparent: a trace of its own.
            let fresh = rpc_span(&get_token("not a traceparent"));
            let sc = fresh.context().span().span_context().clone();
            assert_ne!(
                sc.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );
        });
    }
}
