//! `envoy.service.auth.v3.Authorization/Check`: decode the request, resolve the route,
//! check the caller's permission for the route's tenant, get the token from the same
//! `TokenBroker::get_token` as GetToken (inside the caller's task context, so every
//! upstream event names the proxy's caller), and answer.

use super::reply::{allowed, Denial};
use super::routes::RouteTable;
use crate::api::auth::TenantGrant;
use crate::api::parse_grpc_timeout;
use crate::broker::{TokenBroker, TokenRequest};
use crate::context::with_caller;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The ext_authz service. Cheap to clone.
#[derive(Clone)]
pub struct MeshService {
    broker: TokenBroker,
    routes: Arc<RouteTable>,
}

impl MeshService {
    pub fn new(broker: TokenBroker, routes: RouteTable) -> Self {
        Self {
            broker,
            routes: Arc::new(routes),
        }
    }

    async fn answer(
        &self,
        grant: Option<TenantGrant>,
        req: CheckRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<CheckResponse, Denial> {
        let grant = grant.ok_or_else(Denial::no_auth_layer)?;
        let attrs = req.attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let route = self
            .routes
            .resolve(&attrs.context_extensions, &http.host, &http.path)?;
        let caller = grant
            .admit(&route.tenant)
            .ok_or_else(|| Denial::caller_not_allowed(grant.caller()))?;
        tracing::Span::current().record("tenant", route.tenant.as_str());
        crate::api::record_credential(&route.credential_id);
        let token_req = TokenRequest {
            tenant: route.tenant.clone(),
            credential_id: route.credential_id.clone(),
            scopes: route.scopes.clone(),
            min_ttl: Duration::ZERO,
            force_refresh: false,
        };
        let started_ms = self.broker.clock().now_ms();
        let token =
            with_caller(Some(caller.0), self.broker.get_token(&token_req, deadline)).await?;
        // Issued before this Check began: the cache answered, no fetch was made for it.
        let cache_hit = token.issued_at_ms < started_ms;
        Ok(allowed(&route, &token, cache_hit))
    }
}

/// When to give up waiting for the token: a little before the proxy's own ext_authz
/// timeout (`grpc-timeout`; Envoy's default is 200 ms), so the client gets a 503 with
/// `retry-after` from authgate instead of the proxy's error, while the fetch goes on and
/// is cached for the retry.
pub fn check_deadline<T>(req: &Request<T>) -> Option<tokio::time::Instant> {
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    let raw = req.metadata().as_ref().get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    // Room for the answer to travel back: a tenth, at least 10 ms, at most 100 ms.
    let margin = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
    Some(crate::clock::monotonic_now() + timeout.saturating_sub(margin))
}

#[tonic::async_trait]
impl Authorization for MeshService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let deadline = check_deadline(&request);
        let grant = request.extensions().get::<TenantGrant>().cloned();
        let reply = match self.answer(grant, request.into_inner(), deadline).await {
            Ok(r) => r,
            Err(denial) => denial.into_response(),
        };
        Ok(Response::new(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_leaves_room_for_the_answer() {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("grpc-timeout", "200m".parse().unwrap());
        let left = check_deadline(&req).unwrap() - crate::clock::monotonic_now();
        assert!(left <= Duration::from_millis(180), "{left:?}");
        assert!(left > Duration::from_millis(150), "{left:?}");
        assert!(check_deadline(&Request::new(())).is_none());
    }
}
