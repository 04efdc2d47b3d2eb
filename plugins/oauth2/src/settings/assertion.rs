//! Settings of signed assertions: the private key (`private_key` or a Google-style
//! `service_account_key`), and the claims of the JWT bearer grant (RFC 7523 §2.1).

use super::{invalid, non_empty_secret, url_setting, Grant};
use authgate_plugin_sdk::assertion::{DEFAULT_LIFETIME, REGISTERED_CLAIMS};
use authgate_plugin_sdk::{Secret, SettingsError, SigningKey};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Longest assertion lifetime accepted: providers refuse longer ones (Google: 1 hour).
const MAX_LIFETIME_SECS: u64 = 3600;

/// The `aud` of assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The token endpoint URL (RFC 7523 §3), the default.
    TokenEndpoint,
    /// The configured `issuer` (OpenID Connect Core §9 allows it).
    Issuer,
    /// A value the provider documents.
    Value(String),
}

/// Where the JWT bearer grant puts the scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeIn {
    /// The `scope` form parameter (RFC 7521 §4.1), the default.
    Param,
    /// A `scope` claim in the assertion (Google service accounts).
    Claim,
}

/// The validated assertion settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub key: Option<Arc<SigningKey>>,
    pub audience: Audience,
    pub lifetime: Duration,
    /// JWT bearer grant: `iss` (default the client id).
    pub issuer: String,
    /// JWT bearer grant: `sub`; `None` leaves it out (a service account acting as itself).
    pub subject: Option<String>,
    pub claims: Map<String, Value>,
    pub scope_in: ScopeIn,
}

/// A Google-style service account key file, as the console downloads it.
pub struct ServiceAccount {
    pub private_key: Secret,
    pub client_email: String,
    pub private_key_id: Option<String>,
    pub token_uri: Option<Url>,
}

/// Parses `service_account_key`; only the fields authgate needs are read and no value is
/// ever echoed in an error.
pub fn service_account(key: Option<Secret>) -> Result<Option<ServiceAccount>, SettingsError> {
    let Some(key) = non_empty_secret("service_account_key", key)? else {
        return Ok(None);
    };
    let bad = |what: &str| {
        invalid(format!(
            "`service_account_key` {what}; give the JSON key file as downloaded (type \"service_account\") as a ${{file:PATH}} reference"
        ))
    };
    let doc: Map<String, Value> =
        serde_json::from_str(key.expose()).map_err(|_| bad("is not a JSON object"))?;
    let text = |name: &str| doc.get(name).and_then(Value::as_str);
    if text("type") != Some("service_account") {
        return Err(bad("has no \"type\": \"service_account\""));
    }
    let private_key = text("private_key").ok_or_else(|| bad("has no `private_key`"))?;
    let client_email = text("client_email")
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| bad("has no `client_email`"))?;
    let token_uri = text("token_uri")
        .map(|u| url_setting("service_account_key.token_uri", u))
        .transpose()?;
    Ok(Some(ServiceAccount {
        private_key: Secret::from(private_key),
        client_email: client_email.to_owned(),
        private_key_id: text("private_key_id").map(str::to_owned),
        token_uri,
    }))
}

/// The raw assertion settings.
pub struct JwtInput<'a> {
    pub grant: Grant,
    pub client_id: &'a str,
    pub service_account: Option<&'a ServiceAccount>,
    pub jwt_audience: Option<&'a str>,
    pub jwt_issuer: Option<String>,
    pub jwt_subject: Option<String>,
    pub jwt_claims: Option<Map<String, Value>>,
    pub jwt_lifetime_seconds: Option<u64>,
    pub jwt_scope: Option<&'a str>,
}

/// The signing key: from `private_key` or the service account key, never both.
pub fn signing_key(
    private_key: Option<Secret>,
    signing_alg: Option<&str>,
    key_id: Option<&str>,
    sa: Option<&ServiceAccount>,
) -> Result<Option<Arc<SigningKey>>, SettingsError> {
    let private_key = non_empty_secret("private_key", private_key)?;
    let parse = |field: &str, material: &Secret, kid: Option<&str>| {
        SigningKey::parse(field, material, signing_alg, kid)
            .map(|k| Some(Arc::new(k)))
            .map_err(|e| invalid(e.0))
    };
    match (private_key, sa) {
        (Some(_), Some(_)) => Err(invalid(
            "set `private_key` or `service_account_key`, not both: the service account key file holds its own private key",
        )),
        (Some(pk), None) => parse("private_key", &pk, key_id),
        (None, Some(sa)) => parse(
            "service_account_key.private_key",
            &sa.private_key,
            key_id.or(sa.private_key_id.as_deref()),
        ),
        (None, None) => {
            for (field, set) in [("signing_alg", signing_alg.is_some()), ("key_id", key_id.is_some())] {
                if set {
                    return Err(invalid(format!(
                        "`{field}` describes `private_key`, which is not set; set `private_key` or remove `{field}`"
                    )));
                }
            }
            Ok(None)
        }
    }
}

fn audience(value: Option<&str>) -> Result<Audience, SettingsError> {
    match value.map(str::trim) {
        None | Some("token_endpoint") => Ok(Audience::TokenEndpoint),
        Some("issuer") => Ok(Audience::Issuer),
        Some("") => Err(invalid(
            r#"`jwt_audience` is empty; use "token_endpoint" (default), "issuer" or the value the provider documents"#,
        )),
        Some(other) => Ok(Audience::Value(other.to_owned())),
    }
}

fn extra_claims(claims: Option<Map<String, Value>>) -> Result<Map<String, Value>, SettingsError> {
    let claims = claims.unwrap_or_default();
    if let Some(reserved) = claims
        .keys()
        .find(|k| REGISTERED_CLAIMS.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "`jwt_claims` must not set `{reserved}`: authgate sets {} itself (use `jwt_issuer`, `jwt_subject` or `jwt_audience`)",
            REGISTERED_CLAIMS.join(", ")
        )));
    }
    Ok(claims)
}

/// Checks the assertion settings against the grant; `uses_key` tells whether client
/// authentication signs with the key (`private_key_jwt`).
pub fn jwt_settings(
    input: JwtInput<'_>,
    key: Option<Arc<SigningKey>>,
    uses_key: bool,
) -> Result<JwtSettings, SettingsError> {
    let bearer = input.grant == Grant::JwtBearer;
    if bearer && key.is_none() {
        return Err(invalid(
            r#"grant = "jwt_bearer" needs `private_key` (PEM or JWK, as a ${file:PATH} reference) or `service_account_key` (a JSON key file)"#,
        ));
    }
    if key.is_some() && !bearer && !uses_key {
        return Err(invalid(
            r#"a private key is set but unused; it is for grant = "jwt_bearer" or client_auth = "private_key_jwt""#,
        ));
    }
    if !bearer {
        for (field, set) in [
            ("jwt_issuer", input.jwt_issuer.is_some()),
            ("jwt_subject", input.jwt_subject.is_some()),
            ("jwt_claims", input.jwt_claims.is_some()),
            ("jwt_scope", input.jwt_scope.is_some()),
        ] {
            if set {
                return Err(invalid(format!(
                    "`{field}` is only used with grant = \"jwt_bearer\"; remove `{field}` or change `grant`"
                )));
            }
        }
    }
    let lifetime = input
        .jwt_lifetime_seconds
        .unwrap_or(DEFAULT_LIFETIME.as_secs());
    if lifetime > MAX_LIFETIME_SECS {
        return Err(invalid(format!(
            "`jwt_lifetime_seconds` is {lifetime}; assertions are single-use and short-lived, use at most {MAX_LIFETIME_SECS} (default 60)"
        )));
    }
    let sa = input.service_account;
    let scope_in = match input.jwt_scope {
        None if sa.is_some() => ScopeIn::Claim,
        None | Some("param") => ScopeIn::Param,
        Some("claim") => ScopeIn::Claim,
        Some(other) => {
            return Err(invalid(format!(
                r#"`jwt_scope` must be "param" (the scope form parameter) or "claim" (a scope claim in the assertion), not `{other}`"#
            )))
        }
    };
    let non_empty = |field: &str, v: Option<String>| match v {
        Some(s) if s.trim().is_empty() => Err(invalid(format!(
            "`{field}` is empty; remove it to use the default"
        ))),
        other => Ok(other),
    };
    let issuer = non_empty("jwt_issuer", input.jwt_issuer)?;
    let subject = non_empty("jwt_subject", input.jwt_subject)?;
    Ok(JwtSettings {
        key,
        audience: audience(input.jwt_audience)?,
        lifetime: Duration::from_secs(lifetime),
        issuer: issuer
            .or_else(|| sa.map(|s| s.client_email.clone()))
            .unwrap_or_else(|| input.client_id.to_owned()),
        // A service account acts as itself unless it impersonates someone.
        subject: subject.or_else(|| sa.is_none().then(|| input.client_id.to_owned())),
        claims: extra_claims(input.jwt_claims)?,
        scope_in,
    })
}
