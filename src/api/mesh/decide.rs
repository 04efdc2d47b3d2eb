//! The one decision both doors into token injection share — Envoy's ext_authz `Check`
//! ([`super::check`]) and the HTTP forward-auth endpoint ([`super::forward_auth`]): resolve
//! the route, for a trusted proxy take its workload's grant, check the tenant through the
//! auth layer's [`TenantGrant`], and get the token from the same `TokenBroker::get_token`
//! as GetToken, inside the effective caller's task context (so every upstream event names
//! it). Each door only decodes its request and writes its answer.

use super::reply::Denial;
use super::routes::{Origin, Route, RouteTable};
use crate::api::auth::TenantGrant;
use crate::broker::{CachedToken, TokenBroker, TokenRequest};
use crate::context::with_caller;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The token-injection service. Cheap to clone.
#[derive(Clone)]
pub struct MeshService {
    broker: TokenBroker,
    routes: Arc<RouteTable>,
}

/// What a request asks for, as its door read it.
pub struct Ask<'a> {
    /// Where `fields` came from, for the wording of errors.
    pub origin: Origin,
    /// Route fields the proxy set (`tenant`, `credential_id`, ...; see `routes`).
    pub fields: &'a HashMap<String, String>,
    pub host: &'a str,
    pub path: &'a str,
    /// The downstream workload's SPIFFE id as the proxy authenticated it; used only when
    /// the caller is a trusted proxy.
    pub principal: Option<&'a str>,
}

/// An allowed request: the route and its token.
pub struct Granted {
    pub route: Route,
    pub token: Arc<CachedToken>,
    /// The token was in memory before this request.
    pub cache_hit: bool,
}

impl MeshService {
    pub fn new(broker: TokenBroker, routes: RouteTable) -> Self {
        Self {
            broker,
            routes: Arc::new(routes),
        }
    }

    /// The token for `ask`, or the denial to answer with. `grant` is the auth layer's
    /// decision on the proxy; without one (the layer not in front) nothing is served.
    pub async fn decide(
        &self,
        grant: Option<TenantGrant>,
        ask: Ask<'_>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Granted, Denial> {
        let mut grant = grant.ok_or_else(Denial::no_auth_layer)?;
        let route = self
            .routes
            .resolve_from(ask.origin, ask.fields, ask.host, ask.path)?;
        if grant.is_trusted_proxy() {
            grant = grant
                .for_workload(ask.principal.unwrap_or(""))
                .map_err(Denial::workload_refused)?;
        }
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
        // Issued before this request began: the cache answered, no fetch was made for it.
        let cache_hit = token.issued_at_ms < started_ms;
        Ok(Granted {
            route,
            token,
            cache_hit,
        })
    }
}

/// When to give up waiting for the token: a little before the proxy's own timeout, so
/// the client gets a 503 with `retry-after` from authgate instead of the proxy's error,
/// while the fetch goes on and is cached for the retry.
pub fn deadline_within(timeout: Duration) -> tokio::time::Instant {
    // Room for the answer to travel back: a tenth, at least 10 ms, at most 100 ms.
    let margin = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
    crate::clock::monotonic_now() + timeout.saturating_sub(margin)
}
