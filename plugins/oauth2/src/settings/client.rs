//! How the client authenticates at the token endpoint: a shared secret (`basic`, `post`,
//! with an ordered list of secrets for rotation), `private_key_jwt`, a client certificate
//! (`tls_client_auth`, `self_signed_tls_client_auth`), or none.

use super::assertion::{self, JwtSettings};
use super::{invalid, non_empty_secret, Grant, RawSettings};
use authgate_plugin_sdk::assertion::ClientAssertion;
use authgate_plugin_sdk::oauth::{ClientAuth, ClientCredentials};
use authgate_plugin_sdk::{Secret, SettingsError, SigningKey};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const CLIENT_AUTH_CHOICES: &str = r#""basic" (client_secret_basic), "post" (client_secret_post), "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth" or "none" (public client)"#;

/// RFC 8705 §2: the client certificate of the TLS connection authenticates the client.
const TLS_METHODS: &[&str] = &["tls_client_auth", "self_signed_tls_client_auth"];

/// The client authentication method beyond what [`ClientCredentials`] describes.
#[derive(Debug, Clone)]
pub enum Authn {
    /// `basic`, `post` or `none`, as `ClientCredentials::auth` says; with more than one
    /// secret, an `invalid_client` answer tries the next one.
    Shared,
    /// RFC 7523 §2.2: a signed assertion instead of a secret (`client.auth` is `Public`,
    /// so `client_id` is sent in the form as RFC 7523 §3 allows).
    PrivateKeyJwt(ClientAssertion),
    /// RFC 8705 §2.1 (a certificate a CA issued, matched on its subject) or §2.2 (a
    /// self-signed one, matched on the registered key): the client certificate of the TLS
    /// connection is the authentication; `client_id` is sent in the form, no secret.
    Tls { self_signed: bool },
}

impl Authn {
    /// The RFC 7591 name of the method when `ClientCredentials::auth` does not tell it.
    pub fn method(&self) -> Option<&'static str> {
        match self {
            Self::Shared => None,
            Self::PrivateKeyJwt(_) => Some("private_key_jwt"),
            Self::Tls { self_signed: false } => Some("tls_client_auth"),
            Self::Tls { self_signed: true } => Some("self_signed_tls_client_auth"),
        }
    }
}

/// The validated client settings.
pub struct Client {
    pub credentials: ClientCredentials,
    /// Every client secret in the order they are tried: `client_secret`, then
    /// `client_secrets`. The first is `credentials.client_secret`.
    pub secrets: Vec<Secret>,
    pub authn: Authn,
}

/// The client settings as written.
pub struct ClientInput<'a> {
    pub client_id: &'a str,
    pub client_secret: Option<Secret>,
    pub client_secrets: Option<Vec<Secret>>,
    pub client_auth: Option<&'a str>,
    /// The key from `private_key` or `service_account_key`, when one is set.
    pub key: Option<&'a Arc<SigningKey>>,
    pub assertion_lifetime: Duration,
    /// Whether `tls_client_certificate` and `tls_client_key` are set.
    pub certificate: bool,
}

fn secret_list(
    client_secret: Option<Secret>,
    client_secrets: Option<Vec<Secret>>,
) -> Result<Vec<Secret>, SettingsError> {
    let mut secrets: Vec<Secret> = non_empty_secret("client_secret", client_secret)?
        .into_iter()
        .collect();
    if let Some(list) = client_secrets {
        if list.is_empty() {
            return Err(invalid(
                "`client_secrets` is empty; list the secrets to try in order, or remove it",
            ));
        }
        for (i, s) in list.into_iter().enumerate() {
            let s = non_empty_secret(&format!("client_secrets[{i}]"), Some(s))?;
            // A secret listed twice would only cost a second rejected request.
            secrets.extend(s.filter(|s| !secrets.contains(s)));
        }
    }
    Ok(secrets)
}

/// The client id, its secrets or key and the method, which must agree.
pub fn client(input: ClientInput<'_>) -> Result<Client, SettingsError> {
    let client_id = input.client_id.trim().to_owned();
    if client_id.is_empty() {
        return Err(invalid(
            "`client_id` is empty; put the client id the provider issued for authgate",
        ));
    }
    let secrets = secret_list(input.client_secret, input.client_secrets)?;
    if input.client_auth.is_some_and(|a| a == "private_key_jwt") {
        return private_key_jwt(client_id, &secrets, input.key, input.assertion_lifetime);
    }
    if let Some(method) = input.client_auth.filter(|a| TLS_METHODS.contains(a)) {
        return tls_client_auth(client_id, &secrets, method, input.certificate);
    }
    let auth = match input.client_auth {
        None if !secrets.is_empty() => ClientAuth::Basic,
        None => ClientAuth::Public,
        // The SDK's deserializer owns the names and their RFC 7591 aliases.
        Some(name) => serde_json::from_value(Value::String(name.to_owned())).map_err(|_| {
            invalid(format!(
                "`client_auth` must be {CLIENT_AUTH_CHOICES}, not `{name}`"
            ))
        })?,
    };
    match (auth, secrets.is_empty()) {
        (ClientAuth::Basic | ClientAuth::Post, true) => {
            return Err(invalid(format!(
                r#"client_auth = "{}" sends a client secret, but `client_secret` is not set; set `client_secret` (or `client_secrets`), or client_auth = "none" for a public client"#,
                input.client_auth.unwrap_or("basic")
            )))
        }
        (ClientAuth::Public, false) => {
            return Err(invalid(
                r#"`client_secret` is set but client_auth = "none" never sends it; remove `client_secret` or use client_auth = "basic" or "post""#,
            ))
        }
        _ => {}
    }
    Ok(Client {
        credentials: ClientCredentials {
            client_id,
            client_secret: secrets.first().cloned(),
            auth,
        },
        secrets,
        authn: Authn::Shared,
    })
}

fn private_key_jwt(
    client_id: String,
    secrets: &[Secret],
    key: Option<&Arc<SigningKey>>,
    lifetime: Duration,
) -> Result<Client, SettingsError> {
    if !secrets.is_empty() {
        return Err(invalid(
            r#"client_auth = "private_key_jwt" signs an assertion and never sends `client_secret`/`client_secrets`; remove them"#,
        ));
    }
    let key = key.ok_or_else(|| {
        invalid(
            r#"client_auth = "private_key_jwt" needs `private_key` (a PEM or JWK private key, as a ${file:PATH} or ${env:NAME} reference)"#,
        )
    })?;
    Ok(Client {
        credentials: ClientCredentials {
            client_id: client_id.clone(),
            client_secret: None,
            auth: ClientAuth::Public,
        },
        secrets: Vec::new(),
        authn: Authn::PrivateKeyJwt(ClientAssertion {
            client_id,
            key: key.clone(),
            lifetime,
        }),
    })
}

fn tls_client_auth(
    client_id: String,
    secrets: &[Secret],
    method: &str,
    certificate: bool,
) -> Result<Client, SettingsError> {
    if !secrets.is_empty() {
        return Err(invalid(format!(
            r#"client_auth = "{method}" authenticates with the client certificate and never sends `client_secret`/`client_secrets`; remove them"#
        )));
    }
    if !certificate {
        return Err(invalid(format!(
            r#"client_auth = "{method}" authenticates with a client certificate: set `tls_client_certificate` (PEM, the client's own certificate first) and `tls_client_key` (its private key, as a ${{file:PATH}} or ${{env:NAME}} reference)"#
        )));
    }
    Ok(Client {
        credentials: ClientCredentials {
            client_id,
            client_secret: None,
            auth: ClientAuth::Public,
        },
        secrets: Vec::new(),
        authn: Authn::Tls {
            self_signed: method == "self_signed_tls_client_auth",
        },
    })
}

/// A static `client_assertion` (or `assertion`) in `extra_params` is allowed for providers
/// that issue one, but not next to the one authgate signs.
pub(super) fn signed_params_not_overridden(
    params: &[(String, String)],
    grant: Grant,
    authn: &Authn,
) -> Result<(), SettingsError> {
    let signed: &[&str] = match (grant, authn) {
        (Grant::JwtBearer, Authn::PrivateKeyJwt(_)) => {
            &["assertion", "client_assertion", "client_assertion_type"]
        }
        (Grant::JwtBearer, _) => &["assertion"],
        (_, Authn::PrivateKeyJwt(_)) => &["client_assertion", "client_assertion_type"],
        _ => &[],
    };
    match params
        .iter()
        .find(|(k, _)| signed.iter().any(|s| s.eq_ignore_ascii_case(k)))
    {
        Some((name, _)) => Err(invalid(format!(
            "`extra_params` must not set `{name}`: authgate signs it fresh for every request"
        ))),
        None => Ok(()),
    }
}

/// Client authentication and assertion settings, validated together: they share the key.
pub(super) struct Keys {
    pub client: Client,
    pub jwt: JwtSettings,
    pub material: Option<Secret>,
}

impl Keys {
    pub fn validate(
        raw: &mut RawSettings,
        grant: Grant,
        sa: Option<&assertion::ServiceAccount>,
        certificate: bool,
    ) -> Result<Self, SettingsError> {
        let private_key = raw.private_key.take();
        let material = private_key
            .clone()
            .or_else(|| sa.map(|sa| sa.private_key.clone()));
        let key = assertion::signing_key(
            private_key,
            raw.signing_alg.as_deref(),
            raw.key_id.as_deref(),
            sa,
        )?;
        let client_id =
            match (raw.client_id.take(), sa) {
                (Some(id), _) => id,
                (None, Some(sa)) => sa.client_email.clone(),
                (None, None) => return Err(invalid(
                    "missing field `client_id`: put the client id the provider issued for authgate",
                )),
            };
        let lifetime = raw.jwt_lifetime_seconds;
        let jwt = assertion::jwt_settings(
            assertion::JwtInput {
                grant,
                client_id: &client_id,
                service_account: sa,
                jwt_audience: raw.jwt_audience.as_deref(),
                jwt_issuer: raw.jwt_issuer.take(),
                jwt_subject: raw.jwt_subject.take(),
                jwt_claims: raw.jwt_claims.take(),
                jwt_lifetime_seconds: lifetime,
                jwt_scope: raw.jwt_scope.as_deref(),
            },
            key.clone(),
            raw.client_auth.as_deref() == Some("private_key_jwt"),
        )?;
        let client = client(ClientInput {
            client_id: &client_id,
            client_secret: raw.client_secret.take(),
            client_secrets: raw.client_secrets.take(),
            client_auth: raw.client_auth.as_deref(),
            key: key.as_ref(),
            assertion_lifetime: jwt.lifetime,
            certificate,
        })?;
        Ok(Self {
            client,
            jwt,
            material,
        })
    }
}
