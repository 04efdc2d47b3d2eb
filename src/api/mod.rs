//! The API edge: everything between the network and the domain (the broker and the
//! credential manager). Handlers are thin: convert the request to domain types at the edge
//! (bad input is INVALID_ARGUMENT), call the domain, convert the result.
//!
//! Where each concern lives:
//! * [`auth`]: who may call what; the tower layer in front of every gRPC service, and
//!   [`auth::CallerName`], the caller identity it hands to handlers;
//! * [`token_service`]: `authgate.v1.TokenService` (GetToken, Revoke, ListEvents,
//!   ExchangeToken, whose request checks and answer are in [`exchange`]);
//! * [`credential_service`]: `authgate.v1.CredentialService` (credential management,
//!   StartAuthorization);
//! * [`webhook_service`]: `authgate.v1.WebhookService` (a tenant's webhooks);
//! * [`convert`]: timestamps, enums, JSON ⇄ `Struct` and page tokens, shared with the CLI;
//! * [`error`]: the one mapping from domain errors to gRPC status codes;
//! * [`mesh`]: Envoy's ext_authz `Check`, service-mesh token injection;
//! * [`http`]: the HTTP port (OAuth callback page, `/healthz`, `/metrics`);
//! * this module: bounds and deadlines every RPC applies the same way.
//!
//! The transport itself (listeners, TLS, the router with its limits, serving) is
//! [`crate::server`].

pub mod auth;
pub mod convert;
pub mod credential_service;
pub mod error;
pub mod exchange;
pub mod http;
pub mod mesh;
pub mod rpc_metrics;
pub mod token_service;
pub mod watch;
pub mod webhook_service;

use std::time::Duration;

/// Bounds on what a request may ask for.
pub const MAX_SCOPES: usize = 64;
pub const MAX_SCOPE_LEN: usize = 256;

/// A list RPC's `page_size`: 0 means the default (50); more than 1000 is capped at 1000.
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 50,
        n => n.min(1000),
    }
}

/// The caller's deadline from the `grpc-timeout` header, slightly shortened so that this
/// service answers DEADLINE_EXCEEDED itself before tonic's own timer answers CANCELLED.
pub fn caller_deadline<T>(req: &tonic::Request<T>) -> Option<tokio::time::Instant> {
    // A prebuilt header name: looking up by `&str` parses the name on every call. (`::http`
    // is the crate; plain `http` here is the sibling module.)
    const GRPC_TIMEOUT: ::http::HeaderName = ::http::HeaderName::from_static("grpc-timeout");
    let raw = req.metadata().as_ref().get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    let margin = (timeout / 20).max(Duration::from_millis(5));
    Some(crate::clock::monotonic_now() + timeout.saturating_sub(margin))
}

/// Parses the gRPC `TimeoutValue TimeoutUnit` format (at most 8 digits; H M S m u n).
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Names the credential an RPC is about on its `rpc` span (made by the auth layer).
pub fn record_credential(id: &str) {
    tracing::Span::current().record("credential", id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
