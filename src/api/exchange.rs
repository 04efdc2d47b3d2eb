//! `TokenService.ExchangeToken` at the edge: the request checked and turned into a
//! [`ExchangeRequest`] (every refusal names the field and what to put there, and never
//! shows a token), and the answer built from the exchanged token.

use super::convert::timestamp;
use super::token_service::parse_scopes;
use crate::api::auth::AllowedScopes;
use crate::broker::{ExchangeRequest, ExchangedToken};
use crate::config::validate_id;
use crate::proto::v1 as pb;
use authgate_plugin_sdk::exchange::token_type;
use authgate_plugin_sdk::{Secret, TokenExchange};
use std::time::Duration;
use tonic::Status;

/// Longest subject or actor token accepted (the request size limit bounds them too).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most audience or resource values in one request, and the longest one.
const MAX_TARGETS: usize = 16;
const MAX_TARGET_LEN: usize = 512;
/// Longest token type URI.
const MAX_TYPE_LEN: usize = 256;
/// Longest `min_ttl_seconds` accepted: one day.
const MAX_MIN_TTL_SECONDS: u32 = 86_400;

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

/// A token as given: non-empty, bounded, no whitespace or control characters (a token
/// type's value is never shown back).
fn token(field: &str, value: String) -> Result<Secret, Status> {
    if value.is_empty() {
        return Err(invalid(field, "is empty; pass the token to exchange"));
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(invalid(
            field,
            format!(
                "is {} bytes long; at most {MAX_TOKEN_LEN} are accepted",
                value.len()
            ),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            "contains whitespace or control characters; pass the token itself, without a `Bearer ` prefix",
        ));
    }
    Ok(Secret::from(value))
}

/// A token type identifier (RFC 8693 §3): a URI, e.g. `urn:ietf:params:oauth:token-type:jwt`.
fn token_type_uri(field: &str, value: &str) -> Result<String, Status> {
    let printable = value.chars().all(|c| c.is_ascii_graphic());
    if value.len() > MAX_TYPE_LEN || !printable || !value.contains(':') {
        return Err(invalid(
            field,
            format!(
                "must be a token type URI such as `{}` or `{}` (RFC 8693 §3)",
                token_type::ACCESS_TOKEN,
                token_type::JWT
            ),
        ));
    }
    Ok(value.to_owned())
}

/// Audience or resource values: sorted and deduplicated (order carries no meaning), each a
/// bounded printable string; resources absolute URIs without a fragment (RFC 8707 §2).
fn targets(field: &str, values: Vec<String>, uri: bool) -> Result<Vec<String>, Status> {
    let mut values = values;
    values.sort();
    values.dedup();
    if values.len() > MAX_TARGETS {
        return Err(invalid(
            field,
            format!(
                "{} values given; at most {MAX_TARGETS} are allowed",
                values.len()
            ),
        ));
    }
    for v in &values {
        if v.is_empty() || v.len() > MAX_TARGET_LEN || !v.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                field,
                format!("each value must be 1 to {MAX_TARGET_LEN} printable ASCII characters without spaces"),
            ));
        }
        if uri {
            let ok = url::Url::parse(v).is_ok_and(|u| u.fragment().is_none());
            if !ok {
                return Err(invalid(
                    field,
                    format!("{v:?} is not an absolute URI without a fragment (RFC 8707), e.g. https://api.example.com/"),
                ));
            }
        }
    }
    Ok(values)
}

/// The actor token and its type: both or neither (RFC 8693 §2.1).
fn actor(value: String, ty: &str) -> Result<Option<(Secret, String)>, Status> {
    match (value.is_empty(), ty.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some((
            token("actor_token", value)?,
            token_type_uri("actor_token_type", ty)?,
        ))),
        (false, true) => Err(invalid(
            "actor_token_type",
            "is required with actor_token (RFC 8693 §2.1)",
        )),
        (true, false) => Err(invalid(
            "actor_token_type",
            "is set without actor_token; remove it or pass the actor token",
        )),
    }
}

/// The request at the edge, checked in field order.
pub fn exchange_request(
    r: pb::ExchangeTokenRequest,
    allowed: Option<&AllowedScopes>,
) -> Result<ExchangeRequest, Status> {
    validate_id("tenant", &r.tenant).map_err(|m| invalid("tenant", m))?;
    validate_id("credential_id", &r.credential_id).map_err(|m| invalid("credential_id", m))?;
    let subject_token = token("subject_token", r.subject_token)?;
    let subject_token_type = match r.subject_token_type.as_str() {
        "" => token_type::ACCESS_TOKEN.to_owned(),
        t => token_type_uri("subject_token_type", t)?,
    };
    let actor_token = actor(r.actor_token, &r.actor_token_type)?;
    let audience = targets("audience", r.audience, false)?;
    let resource = targets("resource", r.resource, true)?;
    let scopes = parse_scopes(&r.scopes)?;
    if let Some(scope) = allowed.and_then(|a| a.refused(scopes.iter())) {
        return Err(Status::permission_denied(format!(
            "scope {scope:?} is not in this caller's allowed_scopes ([[callers]] in the config)"
        )));
    }
    let requested_token_type = match r.requested_token_type.as_str() {
        "" => None,
        t => Some(token_type_uri("requested_token_type", t)?),
    };
    if r.min_ttl_seconds > MAX_MIN_TTL_SECONDS {
        return Err(invalid(
            "min_ttl_seconds",
            format!(
                "{} is more than the maximum of {MAX_MIN_TTL_SECONDS}",
                r.min_ttl_seconds
            ),
        ));
    }
    Ok(ExchangeRequest {
        tenant: r.tenant,
        credential_id: r.credential_id,
        exchange: TokenExchange {
            subject_token,
            subject_token_type,
            actor_token,
            audience,
            resource,
            scopes,
            requested_token_type,
        },
        min_ttl: Duration::from_secs(u64::from(r.min_ttl_seconds)),
    })
}

pub fn exchange_response(t: &ExchangedToken) -> pb::ExchangeTokenResponse {
    pb::ExchangeTokenResponse {
        access_token: t.access_token.expose().to_owned(),
        token_type: t.token_type.clone(),
        expires_at: Some(timestamp(t.expires_at_ms)),
        scopes: t.scopes.clone(),
        issued_token_type: t.issued_token_type.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::ExchangeTokenRequest {
        pb::ExchangeTokenRequest {
            tenant: "acme".into(),
            credential_id: "tx".into(),
            subject_token: "canary-subject".into(),
            ..Default::default()
        }
    }

    fn refused(r: pb::ExchangeTokenRequest) -> String {
        let e = exchange_request(r, None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(!e.message().contains("canary"), "{e:?}");
        e.message().to_owned()
    }

    #[test]
    fn defaults_and_normalized_targets() {
        let r = exchange_request(
            pb::ExchangeTokenRequest {
                audience: vec!["b".into(), "a".into(), "b".into()],
                resource: vec!["https://api.example.com/".into()],
                scopes: vec!["write read".into()],
                ..base()
            },
            None,
        )
        .unwrap();
        let x = &r.exchange;
        assert_eq!(x.subject_token_type, token_type::ACCESS_TOKEN);
        assert_eq!(x.audience, ["a", "b"]);
        assert_eq!(x.scopes.as_slice(), ["read", "write"]);
        assert!(x.actor_token.is_none() && x.requested_token_type.is_none());
    }

    #[test]
    fn each_bad_field_is_named_without_showing_a_token() {
        let m = refused(pb::ExchangeTokenRequest {
            subject_token: String::new(),
            ..base()
        });
        assert!(m.starts_with("subject_token: is empty"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            subject_token: "Bearer canary-subject".into(),
            ..base()
        });
        assert!(m.contains("without a `Bearer ` prefix"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            subject_token_type: "access token".into(),
            ..base()
        });
        assert!(m.starts_with("subject_token_type:"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            actor_token: "canary-actor".into(),
            ..base()
        });
        assert!(m.starts_with("actor_token_type: is required"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            resource: vec!["not a uri".into()],
            ..base()
        });
        assert!(m.starts_with("resource:"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            resource: vec!["https://api.example.com/#frag".into()],
            ..base()
        });
        assert!(m.contains("without a fragment"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            audience: (0..20).map(|i| format!("a{i}")).collect(),
            ..base()
        });
        assert!(m.starts_with("audience: 20 values"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            min_ttl_seconds: 100_000,
            ..base()
        });
        assert!(m.starts_with("min_ttl_seconds"), "{m}");
        let m = refused(pb::ExchangeTokenRequest {
            subject_token: "x".repeat(MAX_TOKEN_LEN + 1),
            ..base()
        });
        assert!(m.contains("at most"), "{m}");
    }
}
