//! The `oauth2` provider's settings: decoded strictly, validated once at build time, and
//! printable without ever showing a secret.

use authgate_plugin_sdk::oauth::ClientCredentials;
use authgate_plugin_sdk::{
    decode_settings, parse_url_setting, ClientTls, ScopeSet, Secret, SettingsError,
};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

mod assertion;
mod client;
mod debug;
mod tls;

use client::{signed_params_not_overridden, Keys};
pub(crate) use debug::SafeUrl;

pub use assertion::{Audience, JwtSettings, ScopeIn};
pub use client::Authn;

/// The config name of this plugin.
pub const KIND: &str = "oauth2";

/// Settings fields that hold secrets (config files must give them as references).
pub const SECRET_FIELDS: &[&str] = &[
    "client_secret",
    "client_secrets",
    "password",
    "refresh_token",
    "private_key",
    "service_account_key",
    "tls_client_key",
];

/// Form parameters the plugin sets itself. Letting `extra_params` override them would
/// silently change the grant or leak a secret into a field the redactor does not expect.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "refresh_token",
    "username",
    "password",
    "code",
    "code_verifier",
    "redirect_uri",
    // RFC 8693: set from each ExchangeToken request.
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "device_code",
];

const GRANT_CHOICES: &str = r#""client_credentials" (default), "password", "refresh_token", "authorization_code", "jwt_bearer" or "device_code""#;

/// The credential's primary grant: how it obtains a token without a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    Password,
    RefreshToken,
    AuthorizationCode,
    /// RFC 7523 §2.1: a signed assertion is the grant.
    JwtBearer,
    /// RFC 8628: the user approves a code on another device; refreshed like
    /// `authorization_code` afterwards.
    DeviceCode,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::Password => "password",
            Self::RefreshToken => "refresh_token",
            Self::AuthorizationCode => "authorization_code",
            Self::JwtBearer => "jwt_bearer",
            Self::DeviceCode => "device_code",
        }
    }

    /// The `grant_type` sent to the token endpoint.
    pub fn wire_name(self) -> &'static str {
        match self {
            Self::JwtBearer => authgate_plugin_sdk::assertion::JWT_BEARER_GRANT,
            Self::DeviceCode => authgate_plugin_sdk::device::DEVICE_CODE_GRANT,
            other => other.as_str(),
        }
    }

    fn parse(value: &str) -> Result<Self, SettingsError> {
        match value {
            "client_credentials" => Ok(Self::ClientCredentials),
            "password" => Ok(Self::Password),
            "refresh_token" => Ok(Self::RefreshToken),
            "authorization_code" => Ok(Self::AuthorizationCode),
            "jwt_bearer" | "urn:ietf:params:oauth:grant-type:jwt-bearer" => Ok(Self::JwtBearer),
            "device_code" | "urn:ietf:params:oauth:grant-type:device_code" => Ok(Self::DeviceCode),
            other => Err(invalid(format!(
                "`grant` must be {GRANT_CHOICES}, not `{other}`"
            ))),
        }
    }

    /// True when this grant can mint a fresh token on its own, so a rejected refresh token
    /// is not the end of the credential.
    pub fn mints_without_refresh_token(self) -> bool {
        matches!(
            self,
            Self::ClientCredentials | Self::Password | Self::JwtBearer
        )
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the token endpoint comes from.
#[derive(Clone)]
pub enum TokenEndpoint {
    /// Configured directly (`token_url`).
    Url(Url),
    /// Found by discovery from this issuer, kept exactly as configured minus a trailing
    /// slash (issuer comparison is a string comparison).
    Issuer(String),
}

/// The validated settings of one `oauth2` credential.
#[derive(Clone)]
pub struct OAuth2Settings {
    pub(crate) endpoint: TokenEndpoint,
    pub(crate) grant: Grant,
    pub(crate) client: ClientCredentials,
    /// Client secrets in the order they are tried (rotation); the first is `client`'s.
    pub(crate) client_secrets: Vec<Secret>,
    pub(crate) authn: Authn,
    pub(crate) jwt: JwtSettings,
    /// The key material as configured, for the redactor.
    pub(crate) key_material: Option<Secret>,
    pub(crate) scopes: ScopeSet,
    pub(crate) scope_separator: String,
    pub(crate) send_scope: bool,
    /// Present exactly when `grant` is `password`.
    pub(crate) password_grant: Option<(String, Secret)>,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) extra_params: Vec<(String, String)>,
    pub(crate) revocation_url: Option<Url>,
    pub(crate) default_lifetime: Duration,
    /// How long the provider keeps an unused refresh token; the gateway refreshes before.
    pub(crate) refresh_token_idle: Option<Duration>,
    pub(crate) authorization_url: Option<Url>,
    pub(crate) redirect_uri: Option<Url>,
    pub(crate) pkce: bool,
    /// RFC 8693 token exchange through this credential's client (ExchangeToken).
    pub(crate) token_exchange: bool,
    /// The client certificate and trusted CAs of the credential's connections.
    pub(crate) tls: Option<Arc<ClientTls>>,
    /// `tls_client_key` as configured, for the redactor.
    pub(crate) tls_key: Option<Secret>,
    /// The RFC 8628 device authorization endpoint (`device_code` grant only); discovered
    /// with `issuer` when not set.
    pub(crate) device_authorization_url: Option<Url>,
}

/// The settings as written; every field is checked before it becomes [`OAuth2Settings`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    token_url: Option<String>,
    issuer: Option<String>,
    grant: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secrets: Option<Vec<Secret>>,
    client_auth: Option<String>,
    private_key: Option<Secret>,
    signing_alg: Option<String>,
    key_id: Option<String>,
    service_account_key: Option<Secret>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
    jwt_subject: Option<String>,
    jwt_claims: Option<serde_json::Map<String, Value>>,
    jwt_lifetime_seconds: Option<u64>,
    jwt_scope: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    scope_separator: Option<String>,
    send_scope: Option<bool>,
    username: Option<String>,
    password: Option<Secret>,
    refresh_token: Option<Secret>,
    #[serde(default)]
    extra_params: BTreeMap<String, String>,
    revocation_url: Option<String>,
    default_lifetime_seconds: Option<u64>,
    refresh_token_idle_seconds: Option<u64>,
    authorization_url: Option<String>,
    redirect_uri: Option<String>,
    pkce: Option<bool>,
    token_exchange: Option<bool>,
    tls_client_certificate: Option<String>,
    tls_client_key: Option<Secret>,
    tls_ca_certificate: Option<String>,
    device_authorization_url: Option<String>,
}

#[derive(Clone, Copy)]
enum FieldType {
    Str,
    SecretStr,
    Bool,
    PositiveInt,
    StrList,
    StrMap,
    SecretList,
    Table,
}

/// The JSON type of every field, checked before serde sees the value: serde's type errors
/// neither name the field nor keep its value out of the message.
const FIELD_TYPES: &[(&str, FieldType)] = &[
    ("token_url", FieldType::Str),
    ("issuer", FieldType::Str),
    ("grant", FieldType::Str),
    ("client_id", FieldType::Str),
    ("client_secret", FieldType::SecretStr),
    ("client_secrets", FieldType::SecretList),
    ("client_auth", FieldType::Str),
    ("private_key", FieldType::SecretStr),
    ("signing_alg", FieldType::Str),
    ("key_id", FieldType::Str),
    ("service_account_key", FieldType::SecretStr),
    ("jwt_audience", FieldType::Str),
    ("jwt_issuer", FieldType::Str),
    ("jwt_subject", FieldType::Str),
    ("jwt_claims", FieldType::Table),
    ("jwt_lifetime_seconds", FieldType::PositiveInt),
    ("jwt_scope", FieldType::Str),
    ("scopes", FieldType::StrList),
    ("scope_separator", FieldType::Str),
    ("send_scope", FieldType::Bool),
    ("username", FieldType::Str),
    ("password", FieldType::SecretStr),
    ("refresh_token", FieldType::SecretStr),
    ("extra_params", FieldType::StrMap),
    ("revocation_url", FieldType::Str),
    ("default_lifetime_seconds", FieldType::PositiveInt),
    ("refresh_token_idle_seconds", FieldType::PositiveInt),
    ("authorization_url", FieldType::Str),
    ("redirect_uri", FieldType::Str),
    ("pkce", FieldType::Bool),
    ("token_exchange", FieldType::Bool),
    ("tls_client_certificate", FieldType::Str),
    ("tls_client_key", FieldType::SecretStr),
    ("tls_ca_certificate", FieldType::Str),
    ("device_authorization_url", FieldType::Str),
];

fn invalid(message: impl fmt::Display) -> SettingsError {
    SettingsError(format!("{KIND} settings: {message}"))
}

fn check_types(settings: &mut Value) -> Result<(), SettingsError> {
    let Value::Object(map) = settings else {
        return Err(invalid(
            "settings must be a table of fields (token_url or issuer, client_id, ...)",
        ));
    };
    // An explicit null means "not set", which is what API clients usually mean by it.
    map.retain(|_, v| !v.is_null());
    for (name, value) in map.iter() {
        let Some((_, ty)) = FIELD_TYPES.iter().find(|(n, _)| n == name) else {
            continue; // unknown: serde rejects it and lists the known fields
        };
        let ok = match ty {
            FieldType::Str | FieldType::SecretStr => value.is_string(),
            FieldType::Bool => value.is_boolean(),
            FieldType::PositiveInt => value.as_u64().is_some_and(|n| n > 0),
            FieldType::StrList | FieldType::SecretList => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            FieldType::Table => value.is_object(),
            FieldType::StrMap => value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string)),
        };
        if !ok {
            let expected = match ty {
                FieldType::Str => "a string",
                FieldType::SecretStr => {
                    "a string (give it as a ${env:NAME} or ${file:PATH} reference)"
                }
                FieldType::Bool => "true or false",
                FieldType::PositiveInt => "a whole number of seconds greater than 0",
                FieldType::StrList => r#"a list of strings such as ["read", "write"]"#,
                FieldType::SecretList => {
                    r#"a list of strings, each a ${env:NAME} or ${file:PATH} reference"#
                }
                FieldType::Table => r#"a table such as { tenant = "acme" }"#,
                FieldType::StrMap => {
                    r#"a table of string values such as { audience = "https://api.example.com" }"#
                }
            };
            return Err(invalid(format!("`{name}` must be {expected}")));
        }
    }
    Ok(())
}

fn url_setting(field: &str, value: &str) -> Result<Url, SettingsError> {
    let url = parse_url_setting(field, value).map_err(|e| invalid(e.0))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(format!(
            "`{field}` must not contain user:password@; client credentials go in `client_id` and `client_secret`"
        )));
    }
    Ok(url)
}

fn non_empty_secret(field: &str, value: Option<Secret>) -> Result<Option<Secret>, SettingsError> {
    match value {
        Some(s) if s.expose().trim().is_empty() => Err(invalid(format!(
            "`{field}` is empty; check that the ${{env:..}} or ${{file:..}} reference it comes from has a value"
        ))),
        other => Ok(other),
    }
}

fn only_for_grant(field: &str, grant: Grant, wanted: Grant) -> Result<(), SettingsError> {
    if grant == wanted {
        return Ok(());
    }
    Err(invalid(format!(
        "`{field}` is only used with grant = \"{wanted}\", but grant is \"{grant}\"; remove `{field}` or change `grant`"
    )))
}

/// Exactly one of `token_url` or `issuer`.
fn token_endpoint(
    token_url: Option<&str>,
    issuer: Option<&str>,
    key_file_default: Option<&Url>,
) -> Result<TokenEndpoint, SettingsError> {
    // A service account key file names its token endpoint (`token_uri`).
    if let (None, None, Some(url)) = (token_url, issuer, key_file_default) {
        return Ok(TokenEndpoint::Url(url.clone()));
    }
    match (token_url, issuer) {
        (Some(url), None) => Ok(TokenEndpoint::Url(url_setting("token_url", url)?)),
        (None, Some(issuer)) => {
            let url = url_setting("issuer", issuer)?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(invalid(
                    "`issuer` must not have a query or fragment (OpenID Connect Discovery §3); give the issuer URL exactly as the provider publishes it",
                ));
            }
            Ok(TokenEndpoint::Issuer(issuer.trim_end_matches('/').to_owned()))
        }
        (None, None) => Err(invalid(
            "set exactly one of `token_url` (the token endpoint, e.g. https://idp.example.com/oauth/token) or `issuer` (for OIDC discovery, e.g. https://idp.example.com); neither is set",
        )),
        (Some(_), Some(_)) => Err(invalid(
            "set exactly one of `token_url` or `issuer`, not both: `issuer` discovers the token endpoint, `token_url` names it",
        )),
    }
}

/// `scope_separator`, a space by default; never empty.
fn scope_separator(value: Option<String>) -> Result<String, SettingsError> {
    let scope_separator = value.unwrap_or_else(|| " ".to_owned());
    if scope_separator.is_empty() {
        return Err(invalid(
            r#"`scope_separator` must not be empty; use " " (RFC 6749) or what the provider expects, such as ",""#,
        ));
    }
    Ok(scope_separator)
}

/// `username` and `password`: both required by the password grant, neither allowed by others.
fn password_grant(
    grant: Grant,
    username: Option<String>,
    password: Option<Secret>,
) -> Result<Option<(String, Secret)>, SettingsError> {
    let password = non_empty_secret("password", password)?;
    match (grant, username, password) {
        (Grant::Password, Some(user), Some(pass)) if !user.trim().is_empty() => {
            Ok(Some((user, pass)))
        }
        (Grant::Password, None, _) => Err(invalid(
            r#"grant = "password" needs `username` (the resource owner's user name)"#,
        )),
        (Grant::Password, Some(_), None) => Err(invalid(
            r#"grant = "password" needs `password` (as a ${env:NAME} or ${file:PATH} reference)"#,
        )),
        (Grant::Password, Some(_), Some(_)) => Err(invalid(
            r#"`username` is empty; grant = "password" needs the resource owner's user name"#,
        )),
        (_, Some(_), _) => {
            only_for_grant("username", grant, Grant::Password)?;
            Ok(None)
        }
        (_, None, Some(_)) => {
            only_for_grant("password", grant, Grant::Password)?;
            Ok(None)
        }
        (_, None, None) => Ok(None),
    }
}

/// `extra_params`: named, and never one of the parameters the plugin sets itself.
fn extra_params(params: BTreeMap<String, String>) -> Result<Vec<(String, String)>, SettingsError> {
    let mut extra_params = Vec::with_capacity(params.len());
    for (name, value) in params {
        if name.trim().is_empty() {
            return Err(invalid("`extra_params` has an empty parameter name"));
        }
        if RESERVED_PARAMS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&name))
        {
            return Err(invalid(format!(
                "`extra_params` must not set `{name}`: the plugin sets it from the other settings (reserved: {})",
                RESERVED_PARAMS.join(", ")
            )));
        }
        extra_params.push((name, value));
    }
    Ok(extra_params)
}

fn optional_url(field: &str, value: Option<&str>) -> Result<Option<Url>, SettingsError> {
    value.map(|u| url_setting(field, u)).transpose()
}

/// `authorization_url` and `redirect_uri` (and `pkce`, given as `pkce_set`): used by the
/// authorization-code grant only, which needs a consent page unless discovery finds it.
fn authorization_code_urls(
    grant: Grant,
    endpoint: &TokenEndpoint,
    authorization_url: Option<&str>,
    redirect_uri: Option<&str>,
    pkce_set: bool,
) -> Result<(Option<Url>, Option<Url>), SettingsError> {
    let authorization_url = optional_url("authorization_url", authorization_url)?;
    let redirect_uri = optional_url("redirect_uri", redirect_uri)?;
    if grant == Grant::AuthorizationCode {
        if authorization_url.is_none() && matches!(endpoint, TokenEndpoint::Url(_)) {
            return Err(invalid(
                r#"grant = "authorization_code" needs `authorization_url` (the provider's consent page), or `issuer` to discover it"#,
            ));
        }
    } else {
        for (field, set) in [
            ("authorization_url", authorization_url.is_some()),
            ("redirect_uri", redirect_uri.is_some()),
            ("pkce", pkce_set),
        ] {
            if set {
                only_for_grant(field, grant, Grant::AuthorizationCode)?;
            }
        }
    }
    Ok((authorization_url, redirect_uri))
}

/// `device_authorization_url`: used by the device grant only, which needs it unless
/// discovery finds it.
fn device_authorization_url(
    grant: Grant,
    endpoint: &TokenEndpoint,
    value: Option<&str>,
) -> Result<Option<Url>, SettingsError> {
    let url = optional_url("device_authorization_url", value)?;
    if grant != Grant::DeviceCode {
        if url.is_some() {
            only_for_grant("device_authorization_url", grant, Grant::DeviceCode)?;
        }
        return Ok(None);
    }
    if url.is_none() && matches!(endpoint, TokenEndpoint::Url(_)) {
        return Err(invalid(
            r#"grant = "device_code" needs `device_authorization_url` (the provider's RFC 8628 device authorization endpoint, e.g. https://idp.example.com/oauth/device/code), or `issuer` to discover it"#,
        ));
    }
    Ok(url)
}

impl OAuth2Settings {
    /// Decodes and validates settings; the error names the field and what to put there.
    pub fn from_value(mut settings: Value) -> Result<Self, SettingsError> {
        check_types(&mut settings)?;
        let raw: RawSettings = decode_settings(KIND, settings)?;
        Self::validate(raw)
    }

    /// Checks every field, in the order their errors are reported, each in a named step.
    fn validate(mut raw: RawSettings) -> Result<Self, SettingsError> {
        let sa = assertion::service_account(raw.service_account_key.take())?;
        let endpoint = token_endpoint(
            raw.token_url.as_deref(),
            raw.issuer.as_deref(),
            sa.as_ref().and_then(|sa| sa.token_uri.as_ref()),
        )?;
        let grant = match raw.grant.as_deref() {
            None => Grant::ClientCredentials,
            Some(g) => Grant::parse(g)?,
        };
        let tls = tls::validate(&mut raw)?;
        let keys = Keys::validate(&mut raw, grant, sa.as_ref(), tls.has_certificate())?;
        if keys.jwt.audience == Audience::Issuer && matches!(endpoint, TokenEndpoint::Url(_)) {
            return Err(invalid(
                r#"jwt_audience = "issuer" needs `issuer` (for discovery) instead of `token_url`; or set `jwt_audience` to the value itself"#,
            ));
        }
        let scope_separator = scope_separator(raw.scope_separator)?;
        let password_grant = password_grant(grant, raw.username, raw.password)?;

        let refresh_token = non_empty_secret("refresh_token", raw.refresh_token)?;
        if grant == Grant::RefreshToken && refresh_token.is_none() {
            return Err(invalid(
                r#"grant = "refresh_token" needs `refresh_token` (as a ${env:NAME} or ${file:PATH} reference); the gateway stores rotated ones itself"#,
            ));
        }

        let extra_params = extra_params(raw.extra_params)?;
        signed_params_not_overridden(&extra_params, grant, &keys.client.authn)?;
        let revocation_url = optional_url("revocation_url", raw.revocation_url.as_deref())?;
        tls::https_endpoints(&tls, &endpoint, revocation_url.as_ref())?;
        let default_lifetime = Duration::from_secs(raw.default_lifetime_seconds.unwrap_or(3600));
        let (authorization_url, redirect_uri) = authorization_code_urls(
            grant,
            &endpoint,
            raw.authorization_url.as_deref(),
            raw.redirect_uri.as_deref(),
            raw.pkce.is_some(),
        )?;
        let device_authorization_url =
            device_authorization_url(grant, &endpoint, raw.device_authorization_url.as_deref())?;

        Ok(Self {
            endpoint,
            grant,
            client: keys.client.credentials,
            client_secrets: keys.client.secrets,
            authn: keys.client.authn,
            jwt: keys.jwt,
            key_material: keys.material,
            scopes: ScopeSet::new(&raw.scopes),
            scope_separator,
            send_scope: raw.send_scope.unwrap_or(true),
            password_grant,
            refresh_token,
            extra_params,
            revocation_url,
            default_lifetime,
            refresh_token_idle: raw.refresh_token_idle_seconds.map(Duration::from_secs),
            authorization_url,
            redirect_uri,
            pkce: raw.pkce.unwrap_or(true),
            token_exchange: raw.token_exchange.unwrap_or(false),
            tls: tls.tls,
            tls_key: tls.key,
            device_authorization_url,
        })
    }

    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// Whether ExchangeToken (RFC 8693) may use this credential's client.
    pub fn token_exchange(&self) -> bool {
        self.token_exchange
    }

    /// The credential's client certificate and trusted CAs, when it has any.
    pub fn client_tls(&self) -> Option<&ClientTls> {
        self.tls.as_deref()
    }

    /// True when a client certificate is presented: the provider is then reached at its
    /// mutual-TLS endpoints (RFC 8705 §5) and only over https.
    pub fn has_client_certificate(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.identity().is_some())
    }

    /// Every secret in the settings, for the redactor.
    pub fn secrets(&self) -> Vec<Secret> {
        let password = self.password_grant.as_ref().map(|(_, p)| p);
        let others = [
            password,
            self.refresh_token.as_ref(),
            self.key_material.as_ref(),
            self.tls_key.as_ref(),
        ];
        self.client_secrets
            .iter()
            .chain(others.into_iter().flatten())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;
