//! `envoy.service.auth.v3.Authorization/Check`: decode the request (route extensions,
//! host, path, the downstream principal), let the shared decision ([`super::decide`]) find
//! the token, and answer in Envoy's terms.

use super::decide::{deadline_within, Ask, MeshService};
use super::reply::allowed;
use super::routes::Origin;
use crate::api::auth::TenantGrant;
use crate::api::parse_grpc_timeout;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

/// When to give up waiting for the token: a little before the proxy's own ext_authz
/// timeout (`grpc-timeout`; Envoy's default is 200 ms).
pub fn check_deadline<T>(req: &Request<T>) -> Option<tokio::time::Instant> {
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    let raw = req.metadata().as_ref().get(&GRPC_TIMEOUT)?.to_str().ok()?;
    Some(deadline_within(parse_grpc_timeout(raw)?))
}

async fn answer(
    mesh: &MeshService,
    grant: Option<TenantGrant>,
    req: CheckRequest,
    deadline: Option<tokio::time::Instant>,
) -> CheckResponse {
    let attrs = req.attributes.unwrap_or_default();
    let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
    // Envoy's peer identity of the downstream connection (the URI SAN of its client
    // certificate); only a trusted proxy's is used.
    let principal = attrs.source.map(|s| s.principal).unwrap_or_default();
    let ask = Ask {
        origin: Origin::ContextExtensions,
        fields: &attrs.context_extensions,
        host: &http.host,
        path: &http.path,
        principal: Some(&principal),
    };
    match mesh.decide(grant, ask, deadline).await {
        Ok(g) => allowed(&g.route, &g.token, g.cache_hit),
        Err(denial) => denial.into_response(),
    }
}

#[tonic::async_trait]
impl Authorization for MeshService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let deadline = check_deadline(&request);
        let grant = request.extensions().get::<TenantGrant>().cloned();
        let reply = answer(self, grant, request.into_inner(), deadline).await;
        Ok(Response::new(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
