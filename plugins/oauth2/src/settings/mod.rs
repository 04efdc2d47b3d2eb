//! The `oauth2` provider's settings: decoded strictly, validated once at build time, and
//! printable without ever showing a secret.

use authgate_plugin_sdk::oauth::{ClientAuth, ClientCredentials};
use authgate_plugin_sdk::redact::is_secret_field;
use authgate_plugin_sdk::{decode_settings, parse_url_setting, ScopeSet, Secret, SettingsError};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use url::Url;

/// The config name of this plugin.
pub const KIND: &str = "oauth2";

/// Settings fields that hold secrets (config files must give them as references).
pub const SECRET_FIELDS: &[&str] = &["client_secret", "password", "refresh_token"];

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
];

const GRANT_CHOICES: &str =
    r#""client_credentials" (default), "password", "refresh_token" or "authorization_code""#;

/// The credential's primary grant: how it obtains a token without a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    Password,
    RefreshToken,
    AuthorizationCode,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::Password => "password",
            Self::RefreshToken => "refresh_token",
            Self::AuthorizationCode => "authorization_code",
        }
    }

    fn parse(value: &str) -> Result<Self, SettingsError> {
        match value {
            "client_credentials" => Ok(Self::ClientCredentials),
            "password" => Ok(Self::Password),
            "refresh_token" => Ok(Self::RefreshToken),
            "authorization_code" => Ok(Self::AuthorizationCode),
            other => Err(invalid(format!(
                "`grant` must be {GRANT_CHOICES}, not `{other}`"
            ))),
        }
    }

    /// True when this grant can mint a fresh token on its own, so a rejected refresh token
    /// is not the end of the credential.
    pub fn mints_without_refresh_token(self) -> bool {
        matches!(self, Self::ClientCredentials | Self::Password)
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
}

/// The settings as written; every field is checked before it becomes [`OAuth2Settings`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    token_url: Option<String>,
    issuer: Option<String>,
    grant: Option<String>,
    client_id: String,
    client_secret: Option<Secret>,
    client_auth: Option<String>,
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
}

#[derive(Clone, Copy)]
enum FieldType {
    Str,
    SecretStr,
    Bool,
    PositiveInt,
    StrList,
    StrMap,
}

/// The JSON type of every field, checked before serde sees the value: serde's type errors
/// neither name the field nor keep its value out of the message.
const FIELD_TYPES: &[(&str, FieldType)] = &[
    ("token_url", FieldType::Str),
    ("issuer", FieldType::Str),
    ("grant", FieldType::Str),
    ("client_id", FieldType::Str),
    ("client_secret", FieldType::SecretStr),
    ("client_auth", FieldType::Str),
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
            FieldType::StrList => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
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
) -> Result<TokenEndpoint, SettingsError> {
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

/// The client id, its secret and how the secret is sent, which must agree.
fn client_credentials(
    client_id: &str,
    client_secret: Option<Secret>,
    client_auth: Option<&str>,
) -> Result<ClientCredentials, SettingsError> {
    let client_id = client_id.trim().to_owned();
    if client_id.is_empty() {
        return Err(invalid(
            "`client_id` is empty; put the client id the provider issued for authgate",
        ));
    }
    let client_secret = non_empty_secret("client_secret", client_secret)?;
    let auth = match client_auth {
        None if client_secret.is_some() => ClientAuth::Basic,
        None => ClientAuth::Public,
        // The SDK's deserializer owns the names and their RFC 7591 aliases.
        Some(name) => serde_json::from_value(Value::String(name.to_owned())).map_err(|_| {
            invalid(format!(
                r#"`client_auth` must be "basic" (client_secret_basic), "post" (client_secret_post) or "none" (public client), not `{name}`"#
            ))
        })?,
    };
    match (auth, &client_secret) {
        (ClientAuth::Basic | ClientAuth::Post, None) => {
            return Err(invalid(format!(
                r#"client_auth = "{}" sends a client secret, but `client_secret` is not set; set `client_secret`, or client_auth = "none" for a public client"#,
                client_auth.unwrap_or("basic")
            )))
        }
        (ClientAuth::Public, Some(_)) => {
            return Err(invalid(
                r#"`client_secret` is set but client_auth = "none" never sends it; remove `client_secret` or use client_auth = "basic" or "post""#,
            ))
        }
        _ => {}
    }
    Ok(ClientCredentials {
        client_id,
        client_secret,
        auth,
    })
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

impl OAuth2Settings {
    /// Decodes and validates settings; the error names the field and what to put there.
    pub fn from_value(mut settings: Value) -> Result<Self, SettingsError> {
        check_types(&mut settings)?;
        let raw: RawSettings = decode_settings(KIND, settings)?;
        Self::validate(raw)
    }

    /// Checks every field, in the order their errors are reported, each in a named step.
    fn validate(raw: RawSettings) -> Result<Self, SettingsError> {
        let endpoint = token_endpoint(raw.token_url.as_deref(), raw.issuer.as_deref())?;
        let grant = match raw.grant.as_deref() {
            None => Grant::ClientCredentials,
            Some(g) => Grant::parse(g)?,
        };
        let client = client_credentials(
            &raw.client_id,
            raw.client_secret,
            raw.client_auth.as_deref(),
        )?;
        let scope_separator = scope_separator(raw.scope_separator)?;
        let password_grant = password_grant(grant, raw.username, raw.password)?;

        let refresh_token = non_empty_secret("refresh_token", raw.refresh_token)?;
        if grant == Grant::RefreshToken && refresh_token.is_none() {
            return Err(invalid(
                r#"grant = "refresh_token" needs `refresh_token` (as a ${env:NAME} or ${file:PATH} reference); the gateway stores rotated ones itself"#,
            ));
        }

        let extra_params = extra_params(raw.extra_params)?;
        let revocation_url = optional_url("revocation_url", raw.revocation_url.as_deref())?;
        let default_lifetime = Duration::from_secs(raw.default_lifetime_seconds.unwrap_or(3600));
        let (authorization_url, redirect_uri) = authorization_code_urls(
            grant,
            &endpoint,
            raw.authorization_url.as_deref(),
            raw.redirect_uri.as_deref(),
            raw.pkce.is_some(),
        )?;

        Ok(Self {
            endpoint,
            grant,
            client,
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
        })
    }

    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// Every secret in the settings, for the redactor.
    pub fn secrets(&self) -> Vec<Secret> {
        let password = self.password_grant.as_ref().map(|(_, p)| p);
        [
            self.client.client_secret.as_ref(),
            password,
            self.refresh_token.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// A URL for `Debug`: query values whose names look secret are hidden.
pub(crate) struct SafeUrl<'a>(pub &'a Url);

impl fmt::Debug for SafeUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.0.clone();
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret_field(&k) {
                        "[redacted]".to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        // Settings reject userinfo, but a discovered URL could carry it.
        let _ = url.set_password(None);
        write!(f, "{:?}", url.as_str())
    }
}

struct SafeParams<'a>(&'a [(String, String)]);

impl fmt::Debug for SafeParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let v = if is_secret_field(k) {
                    "[redacted]"
                } else {
                    v.as_str()
                };
                (k, v)
            }))
            .finish()
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(u) => f.debug_tuple("TokenUrl").field(&SafeUrl(u)).finish(),
            Self::Issuer(i) => f.debug_tuple("Issuer").field(i).finish(),
        }
    }
}

// Written out by hand so a field added later cannot print a secret by accident: each
// field is chosen here, secrets only as `Secret` (which prints `[redacted]`).
impl fmt::Debug for OAuth2Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Settings")
            .field("endpoint", &self.endpoint)
            .field("grant", &self.grant)
            .field("client_id", &self.client.client_id)
            .field("client_secret", &self.client.client_secret)
            .field("client_auth", &self.client.auth)
            .field("scopes", &self.scopes.as_slice())
            .field("scope_separator", &self.scope_separator)
            .field("send_scope", &self.send_scope)
            .field("username", &self.password_grant.as_ref().map(|(u, _)| u))
            .field("password", &self.password_grant.as_ref().map(|(_, p)| p))
            .field("refresh_token", &self.refresh_token)
            .field("extra_params", &SafeParams(&self.extra_params))
            .field("revocation_url", &self.revocation_url.as_ref().map(SafeUrl))
            .field("default_lifetime", &self.default_lifetime)
            .field("refresh_token_idle", &self.refresh_token_idle)
            .field(
                "authorization_url",
                &self.authorization_url.as_ref().map(SafeUrl),
            )
            .field("redirect_uri", &self.redirect_uri.as_ref().map(SafeUrl))
            .field("pkce", &self.pkce)
            .finish()
    }
}

#[cfg(test)]
mod tests;
