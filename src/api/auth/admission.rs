//! The one decision about a presented identity, shared by every door into authgate: the
//! gRPC layer ([`super::layer`]), the HTTP forward-auth endpoint
//! ([`super::Authorizer::http_grant`]) and a trusted proxy speaking for a workload
//! ([`super::TenantGrant::for_workload`]). In this order: dev mode (no callers: loopback
//! peers only), identify the caller, check the role, take one request from its rate limit.
//! The tenant is checked afterwards by whoever knows it (field 1 of the message, or the
//! route through a [`super::TenantGrant`]).

use super::callers::{Caller, CallerTable};
use super::identity::Presented;
use crate::config::Role;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a caller is not admitted; each message says what to fix and names no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No identity, an unknown API key, a certificate without a SPIFFE id, or a non-loopback
    /// peer with no callers configured.
    Unauthenticated(String),
    /// Identified, but without the role (or, later, the tenant).
    Forbidden(String),
    /// A valid SPIFFE id that names no configured caller.
    UnknownSpiffeId(String),
    /// Over the caller's rate limit.
    RateLimited { message: String, wait: Duration },
}

impl Refusal {
    /// The gRPC status the layer answers with.
    pub fn into_status(self) -> Status {
        match self {
            Refusal::Unauthenticated(m) => Status::unauthenticated(m),
            Refusal::Forbidden(m) | Refusal::UnknownSpiffeId(m) => Status::permission_denied(m),
            Refusal::RateLimited { message, wait } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(wait)),
            ),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated(m) | Refusal::Forbidden(m) | Refusal::UnknownSpiffeId(m) => m,
            Refusal::RateLimited { message, .. } => message,
        }
    }
}

/// `None`: dev mode (no callers configured) and the peer is on this host.
/// `how_to_identify` completes the answer to a request that presented nothing.
pub(super) fn authorize<'t>(
    table: &'t CallerTable,
    presented: Presented,
    loopback_peer: bool,
    role: Role,
    how_to_identify: &str,
) -> Result<Option<&'t Caller>, Refusal> {
    if table.is_empty() {
        if !loopback_peer {
            return Err(Refusal::Unauthenticated(
                "no callers are configured, so only loopback clients are served; configure [[callers]] to call from elsewhere".into(),
            ));
        }
        return Ok(None);
    }
    let caller = identify(table, presented, how_to_identify)?;
    if !caller.has_role(role) {
        return Err(Refusal::Forbidden(denied_message(caller)));
    }
    if let Err(wait) = caller.take_token() {
        return Err(Refusal::RateLimited {
            message: format!(
                "caller `{}` is over its rate limit; retry after {wait:?}",
                caller.name
            ),
            wait,
        });
    }
    Ok(Some(caller))
}

/// The configured caller the presented identity names.
fn identify<'t>(
    table: &'t CallerTable,
    presented: Presented,
    how_to_identify: &str,
) -> Result<&'t Caller, Refusal> {
    match presented {
        Presented::None => Err(Refusal::Unauthenticated(format!(
            "no caller identity: {how_to_identify}"
        ))),
        Presented::BadCertificate(why) => Err(Refusal::Unauthenticated(why.to_string())),
        Presented::ApiKey(digest) => table
            .by_api_key(&digest)
            .ok_or_else(|| Refusal::Unauthenticated("unknown API key".into())),
        Presented::Spiffe(id) => table.by_spiffe_id(&id).ok_or_else(|| {
            Refusal::UnknownSpiffeId(format!("SPIFFE ID {id} is not a configured caller"))
        }),
    }
}

/// One answer for a wrong role, an unknown tenant and a forbidden tenant, so tenants
/// cannot be probed.
pub(super) fn denied_message(caller: &Caller) -> String {
    format!(
        "caller `{}` may not call this method for this tenant",
        caller.name
    )
}

/// The header a forward-auth proxy sends its own API key in. Not `authorization`: the
/// proxy forwards its client's request headers, and that one is the client's.
pub const PROXY_KEY_HEADER: &str = "x-authgate-api-key";

impl super::Authorizer {
    /// The decision for a request on the HTTP port (forward-auth): the caller identified
    /// by its API key in [`PROXY_KEY_HEADER`], or, with no callers configured, a loopback
    /// peer; then the role and the rate limit, as for gRPC. The tenant is checked with the
    /// grant once the route is known.
    pub fn http_grant(
        &self,
        headers: &http::HeaderMap,
        peer: Option<std::net::SocketAddr>,
        role: Role,
    ) -> Result<super::TenantGrant, Refusal> {
        let table = self.callers.current();
        let loopback = peer.is_some_and(|a| super::identity::is_loopback_addr(&a));
        let presented = super::identity::presented_proxy_key(headers.get(PROXY_KEY_HEADER));
        let how = "send the proxy's authgate API key as `x-authgate-api-key: <key>`";
        Ok(match authorize(&table, presented, loopback, role, how)? {
            Some(caller) => super::TenantGrant::new(caller, role, &table),
            None => super::TenantGrant::local(role),
        })
    }
}
