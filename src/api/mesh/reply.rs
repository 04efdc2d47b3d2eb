//! What a Check answers. Allowed: the token in the route's header (overwriting whatever
//! the client sent), the route's headers removed, and dynamic metadata naming the
//! credential, the token's expiry and whether the cache answered (never the token).
//! Denied: an HTTP status Envoy sends to the client as is, with a short JSON body saying
//! what to do, and the gRPC status code Envoy reads (`PERMISSION_DENIED`, `UNAVAILABLE`).
//!
//! The gRPC status of the Check RPC itself stays OK: Envoy treats a failed RPC as an
//! error of the authorization service, not as an answer.

use super::routes::{Route, RouteError};
use crate::api::auth::Refusal;
use crate::broker::{BrokerError, CachedToken};
use crate::config::mesh::TOKEN_PLACEHOLDER;
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::time::Duration;

/// gRPC codes in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAUTHENTICATED: i32 = 16;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;

/// The header value for a token: the route's format with its one `{token}` replaced.
pub fn header_value(format: &str, token: &str) -> String {
    format.replacen(TOKEN_PLACEHOLDER, token, 1)
}

/// The allowed answer. `cache_hit`: the token was in memory before this Check.
pub fn allowed(route: &Route, token: &CachedToken, cache_hit: bool) -> CheckResponse {
    let set = header(
        &route.header,
        header_value(&route.format, token.access_token.expose()),
    );
    let expires_at = crate::api::convert::timestamp(token.expires_at_ms).to_string();
    let metadata = [
        ("tenant", route.tenant.clone()),
        ("credential_id", route.credential_id.clone()),
        ("token_expires_at", expires_at),
        ("cache", if cache_hit { "hit" } else { "miss" }.to_owned()),
    ];
    CheckResponse {
        status: Some(RpcStatus {
            code: OK,
            ..Default::default()
        }),
        dynamic_metadata: Some(Struct {
            fields: metadata
                .into_iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(Kind::StringValue(v)),
                    };
                    (k.to_owned(), value)
                })
                .collect(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![set],
            headers_to_remove: route.remove_headers.clone(),
            ..Default::default()
        })),
    }
}

/// A header Envoy sets, replacing any value the request had. `append` stays unset: Envoy
/// rejects a reply that sets both it and `append_action`.
fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        // `append` (deprecated) and `keep_empty_value` stay at their defaults.
        ..Default::default()
    }
}

/// A denied answer: what the client gets instead of the upstream's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub http_status: u16,
    pub grpc_code: i32,
    /// A stable machine-readable reason, e.g. `no_route`.
    pub error: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Denial {
    fn forbidden(error: &'static str, message: String) -> Self {
        Self {
            http_status: 403,
            grpc_code: PERMISSION_DENIED,
            error,
            message,
            retry_after: None,
        }
    }

    fn unavailable(message: String, retry_after: Duration) -> Self {
        Self {
            http_status: 503,
            grpc_code: UNAVAILABLE,
            error: "unavailable",
            message,
            retry_after: Some(retry_after),
        }
    }

    /// The proxy's caller may not use the route's tenant (unknown tenants get the same).
    pub fn caller_not_allowed(caller: &str) -> Self {
        Self::forbidden(
            "caller_not_allowed",
            format!("authgate caller `{caller}` may not use this route's tenant; add the tenant to that caller's `tenants` in authgate's [[callers]], or fix the route"),
        )
    }

    /// A trusted proxy's workload is not admitted (the same checks as any caller's).
    pub fn workload_refused(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated(m) | Refusal::UnknownSpiffeId(m) => {
                Self::forbidden("unknown_workload", m)
            }
            other => Self::refused(other),
        }
    }

    /// The caller is not admitted: 401 when it is not identified (forward-auth's own
    /// caller), 403 without the role, 429 over its rate limit.
    pub fn refused(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated(message) => Self {
                http_status: 401,
                grpc_code: UNAUTHENTICATED,
                error: "unauthenticated",
                message,
                retry_after: None,
            },
            Refusal::Forbidden(m) | Refusal::UnknownSpiffeId(m) => {
                Self::forbidden("caller_not_allowed", m)
            }
            Refusal::RateLimited { message, wait } => Self {
                http_status: 429,
                grpc_code: RESOURCE_EXHAUSTED,
                error: "rate_limited",
                message,
                retry_after: Some(wait),
            },
        }
    }

    /// A request the proxy sent incompletely (forward-auth): what it must add.
    pub fn bad_request(message: String) -> Self {
        Self::forbidden("bad_route", message)
    }

    /// Whole seconds for `retry-after`, at least one: it has no smaller unit.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|after| (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1))
    }

    /// Check was reached without the auth layer in front: refuse rather than serve.
    pub fn no_auth_layer() -> Self {
        Self {
            http_status: 500,
            grpc_code: INTERNAL,
            error: "internal",
            message: "authgate is misassembled: Check ran without its authorization layer".into(),
            retry_after: None,
        }
    }

    /// The JSON body: `{"error": ..., "message": ...}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.error, "message": self.message }).to_string()
    }

    pub fn into_response(self) -> CheckResponse {
        let mut headers = vec![header("content-type", "application/json".into())];
        if let Some(secs) = self.retry_after_secs() {
            headers.push(header("retry-after", secs.to_string()));
        }
        let body = self.body();
        CheckResponse {
            status: Some(RpcStatus {
                code: self.grpc_code,
                message: self.message,
                ..Default::default()
            }),
            dynamic_metadata: None,
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(self.http_status),
                }),
                headers,
                body,
            })),
        }
    }
}

impl From<RouteError> for Denial {
    fn from(e: RouteError) -> Self {
        let error = match e {
            RouteError::NoRoute { .. } => "no_route",
            RouteError::BadExtension { .. } => "bad_route",
        };
        Self::forbidden(error, e.to_string())
    }
}

/// The domain error as a mesh answer; the messages are the broker's, which say what to do
/// and never carry a secret.
impl From<BrokerError> for Denial {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match e {
            BrokerError::NotFound { .. } => Self::forbidden(
                "unknown_credential",
                format!("{message} (authgate credentials put), or fix the route's credential_id"),
            ),
            BrokerError::InvalidArgument(_) => Self::forbidden("bad_route", message),
            BrokerError::NotActive { .. } | BrokerError::Rejected(_) => {
                Self::forbidden("credential_not_usable", message)
            }
            BrokerError::Misconfigured(_) => Self::forbidden("credential_misconfigured", message),
            // Too many scope sets for one credential: fix the route's scopes (429 would
            // invite the client to retry a request that cannot succeed as it is).
            BrokerError::ResourceExhausted(_) => Self::forbidden("too_many_scope_sets", message),
            BrokerError::PermissionDenied(_) => Self::forbidden("scope_not_allowed", message),
            // The provider's token endpoint is protected from a burst: retry later.
            BrokerError::RateLimited { retry_after, .. } => Self::unavailable(message, retry_after),
            BrokerError::Unavailable { retry_after, .. } => {
                Self::unavailable(message, retry_after.unwrap_or(Duration::from_secs(1)))
            }
            BrokerError::DeadlineExceeded => Self::unavailable(
                "the token is still being fetched from the provider; it will be cached when it arrives, retry shortly".into(),
                Duration::from_secs(1),
            ),
            BrokerError::Internal { what, source } => {
                tracing::error!(what, error = %source, "internal error answered to an ext_authz Check");
                Self {
                    http_status: 500,
                    grpc_code: INTERNAL,
                    error: "internal",
                    message,
                    retry_after: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::TokenTimes;
    use crate::credentials::TokenShape;
    use crate::store::CredentialStatus;
    use authgate_plugin_sdk::{ScopeSet, Secret};
    use std::sync::Arc;

    const CANARY: &str = "canary-token-3f9a";

    fn route() -> Route {
        Route {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scopes: ScopeSet::new(["read"]),
            header: "x-api-key".into(),
            format: "{token}".into(),
            remove_headers: vec!["x-client-key".into()],
        }
    }

    fn token() -> CachedToken {
        let times = TokenTimes {
            issued_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_060_000,
            refresh_at_ms: 1_700_000_050_000,
        };
        let shape = TokenShape {
            token_type: "Bearer".into(),
            granted_scopes: None,
            metadata: Default::default(),
        };
        CachedToken::new(Secret::new(CANARY), times, Arc::new(shape))
    }

    #[test]
    fn formats_put_the_token_once() {
        assert_eq!(header_value("Bearer {token}", "abc"), "Bearer abc");
        assert_eq!(header_value("{token}", "abc"), "abc");
        // A token that itself looks like the placeholder is not expanded again.
        assert_eq!(header_value("T {token}", "{token}"), "T {token}");
    }

    #[test]
    fn allowed_sets_overwrites_and_removes_and_metadata_has_no_token() {
        let r = allowed(&route(), &token(), true);
        assert_eq!(r.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
            panic!("not an ok response")
        };
        let h = &ok.headers[0];
        // The deprecated field is read only to prove it stays unset.
        #[allow(deprecated)]
        let append = h.append;
        assert_eq!(append, None);
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        let hv = h.header.as_ref().unwrap();
        assert_eq!((hv.key.as_str(), hv.value.as_str()), ("x-api-key", CANARY));
        assert_eq!(ok.headers_to_remove, vec!["x-client-key".to_owned()]);
        let md = r.dynamic_metadata.as_ref().unwrap();
        let text = format!("{md:?}");
        assert!(!text.contains(CANARY), "{text}");
        let get = |k: &str| match md.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("credential_id"), "idp");
        assert_eq!(get("cache"), "hit");
        assert_eq!(get("token_expires_at"), "2023-11-14T22:14:20Z");
    }

    #[test]
    fn denials_have_status_json_and_retry_after() {
        let d: Denial = BrokerError::Unavailable {
            message: "provider unavailable: 503; retry later".into(),
            retry_after: Some(Duration::from_millis(2500)),
        }
        .into();
        let r = d.into_response();
        assert_eq!(r.status.as_ref().unwrap().code, 14);
        let Some(HttpResponse::DeniedResponse(denied)) = r.http_response else {
            panic!("not denied")
        };
        assert_eq!(denied.status.unwrap().code, 503);
        let hv: Vec<(String, String)> = denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        assert!(hv.contains(&("content-type".into(), "application/json".into())));
        assert!(hv.contains(&("retry-after".into(), "3".into())), "{hv:?}");
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["error"], "unavailable");

        let cases: Vec<(Denial, u16, &str)> = vec![
            (
                BrokerError::not_found("acme", "nope").into(),
                403,
                "unknown_credential",
            ),
            (
                BrokerError::NotActive {
                    status: CredentialStatus::Invalid,
                    message: "re-authorize".into(),
                }
                .into(),
                403,
                "credential_not_usable",
            ),
            (BrokerError::DeadlineExceeded.into(), 503, "unavailable"),
            (
                Denial::caller_not_allowed("envoy"),
                403,
                "caller_not_allowed",
            ),
            (
                RouteError::NoRoute {
                    origin: super::super::routes::Origin::ContextExtensions,
                    host: "h".into(),
                    path: "/".into(),
                }
                .into(),
                403,
                "no_route",
            ),
        ];
        for (d, status, error) in cases {
            assert_eq!((d.http_status, d.error), (status, error), "{d:?}");
            assert_eq!(d.grpc_code, if status == 403 { 7 } else { 14 });
            assert!(!d.body().contains(CANARY));
        }
    }
}
