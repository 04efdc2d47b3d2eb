//! `trimble_connect`: tokens for the Trimble Connect API, with the regional base URLs as
//! metadata.
//!
//! Two modes, chosen by `grant`:
//! - **Exchange** (`client_credentials`, `password`): the documented two-step flow of seed 000.
//!   A Trimble Identity grant (HTTP Basic with the consumer key and secret) yields an
//!   `id_token`, which `POST {master}/auth/token` with `{"jwt": ...}` turns into the Connect
//!   token (`{"token": ...}`).
//! - **Session** (`authorization_code`, `refresh_token`): Trimble's current recommendation.
//!   Authorization code with PKCE once, then the refresh token; the Identity access token is
//!   used on Connect directly. The refresh token must be used at least every 9 days.
//!
//! Every fetch first reads the master region's public `/regions` list (see [`crate::regions`]).

use crate::identity::{
    steps, IdentityClient, IdentityEndpoints, CLIENT_ID_HINT, DEFAULT_IDENTITY_URL,
};
use crate::{regions, LEGACY_GRANT};
use async_trait::async_trait;
use authgate_plugin_sdk::oauth::{
    authorization_url, check_status, parse_expires_in, parse_json_object, request_token,
};
use authgate_plugin_sdk::redact::truncate_chars;
use authgate_plugin_sdk::settings::{
    base_url_setting, client_id_setting, effective_scopes, endpoint, optional_secret,
    required_secret, scopes_setting, unused,
};
use authgate_plugin_sdk::{
    decode_and_validate, jwt, provider_factory, AuthorizationRequest, Capabilities, CodeExchange,
    FetchRequest, IssuedToken, Provider, ProviderError, RejectKind, ScopeSet, Secret,
    SettingsError, TokenTypeHint, UpstreamCall, UpstreamRequest, UpstreamResponse,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// The config name of this provider.
pub const KIND: &str = "trimble_connect";

/// The master region's Connect API: authorization (the `id_token` exchange) and region
/// discovery happen here, whatever region the projects live in.
pub const DEFAULT_MASTER_URL: &str = "https://app.connect.trimble.com/tc/api/2.0";

/// Lifetime assumed when neither `expires_in` nor a JWT `exp` says (Trimble Identity access
/// tokens live one hour).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// How long an unused Trimble Identity refresh token stays valid.
pub const REFRESH_TOKEN_IDLE_LIFETIME: Duration = Duration::from_secs(9 * 24 * 3600);

const SECRET_FIELDS: &[&str] = &["client_secret", "password", "refresh_token"];

/// Which grant the credential uses, and with it the mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectGrant {
    /// Exchange mode: client-credentials grant for the `id_token`.
    #[default]
    ClientCredentials,
    /// Exchange mode: the (legacy) password grant with `scope=openid`.
    Password,
    /// Session mode: authorized through the gateway's StartAuthorization (PKCE).
    AuthorizationCode,
    /// Session mode: starts from a refresh token given in the settings.
    RefreshToken,
}

impl ConnectGrant {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::Password => "password",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// The settings as written in the config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    grant: ConnectGrant,
    /// The consumer key.
    client_id: String,
    /// The consumer secret; optional only for a public PKCE client in session mode.
    client_secret: Option<Secret>,
    username: Option<String>,
    password: Option<Secret>,
    refresh_token: Option<Secret>,
    /// Default `["openid"]`.
    scopes: Option<Vec<String>>,
    /// Where the projects live (`us`, `eu`, `asia`, `australia`, a name from `/regions`, or
    /// `master`); absent means the master region.
    region: Option<String>,
    identity_url: Option<String>,
    master_url: Option<String>,
}

enum ExchangeGrant {
    ClientCredentials,
    Password { username: String, password: Secret },
}

enum Mode {
    Exchange(ExchangeGrant),
    Session {
        configured_refresh_token: Option<Secret>,
    },
}

/// A Trimble Connect credential.
pub struct TrimbleConnectProvider {
    mode: Mode,
    identity: IdentityClient,
    endpoints: IdentityEndpoints,
    master_url: Url,
    region: Option<String>,
    scopes: Vec<String>,
}

/// The grant's mode and the client secret it sends: which of `username`, `password`,
/// `refresh_token` and `client_secret` the grant needs, and that it is given no other.
fn mode_setting(
    grant: ConnectGrant,
    username: Option<String>,
    password: Option<Secret>,
    client_secret: Option<Secret>,
    refresh_token: Option<Secret>,
) -> Result<(Mode, Option<Secret>), SettingsError> {
    let name = grant.as_str();
    let needs_secret = |secret: Option<Secret>| {
        secret.ok_or_else(|| {
            SettingsError(format!(
                "`client_secret` (the consumer secret) is required for grant = \"{name}\": Trimble Identity authenticates the application with HTTP Basic"
            ))
        })
    };
    Ok(match grant {
        ConnectGrant::ClientCredentials => {
            unused("username", &username, name)?;
            unused("password", &password, name)?;
            unused("refresh_token", &refresh_token, name)?;
            let secret = needs_secret(client_secret)?;
            (
                Mode::Exchange(ExchangeGrant::ClientCredentials),
                Some(secret),
            )
        }
        ConnectGrant::Password => {
            unused("refresh_token", &refresh_token, name)?;
            let username = username
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| {
                    SettingsError(
                        "`username` (the Trimble Identity user's email) is required for grant = \"password\"".into(),
                    )
                })?;
            let password = required_secret("password", password, "for grant = \"password\"")?;
            let secret = needs_secret(client_secret)?;
            (
                Mode::Exchange(ExchangeGrant::Password { username, password }),
                Some(secret),
            )
        }
        ConnectGrant::AuthorizationCode | ConnectGrant::RefreshToken => {
            unused("username", &username, name)?;
            unused("password", &password, name)?;
            if grant == ConnectGrant::RefreshToken && refresh_token.is_none() {
                return Err(SettingsError(
                    "`refresh_token` is required for grant = \"refresh_token\"; use grant = \"authorization_code\" to authorize through the gateway instead".into(),
                ));
            }
            (
                Mode::Session {
                    configured_refresh_token: refresh_token,
                },
                client_secret,
            )
        }
    })
}

impl TrimbleConnectProvider {
    /// Decodes and validates the credential's settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        decode_and_validate(KIND, settings, Self::validate)
    }

    fn validate(s: Settings) -> Result<Self, SettingsError> {
        let client_id = client_id_setting(&s.client_id, CLIENT_ID_HINT)?;
        let client_secret = optional_secret("client_secret", s.client_secret)?;
        let refresh_token = optional_secret("refresh_token", s.refresh_token)?;
        let (mode, client_secret) = mode_setting(
            s.grant,
            s.username,
            s.password,
            client_secret,
            refresh_token,
        )?;
        let scopes = scopes_setting(s.scopes.unwrap_or_else(|| vec!["openid".into()]))?;
        if scopes.is_empty() {
            return Err(SettingsError(
                "`scopes` must not be empty: Trimble Identity needs at least `openid`".into(),
            ));
        }
        let region = match s.region {
            Some(r) if r.trim().is_empty() => {
                return Err(SettingsError(
                    "`region` must not be empty: name a region such as \"eu\" or omit it for the master region".into(),
                ))
            }
            other => other,
        };
        let identity_url = base_url_setting(
            "identity_url",
            s.identity_url.as_deref(),
            DEFAULT_IDENTITY_URL,
        )?;
        let master_url =
            base_url_setting("master_url", s.master_url.as_deref(), DEFAULT_MASTER_URL)?;
        let endpoints = IdentityEndpoints::under(&identity_url);
        Ok(Self {
            mode,
            identity: IdentityClient::new(endpoints.token.clone(), client_id, client_secret),
            endpoints,
            master_url,
            region,
            scopes,
        })
    }

    /// Region metadata for the token; fetched before any token step.
    async fn placement(
        &self,
        call: &UpstreamCall,
    ) -> Result<BTreeMap<String, String>, ProviderError> {
        let list = regions::discover(call, &self.master_url).await?;
        regions::placement(&list, self.region.as_deref(), &self.master_url)
    }

    /// Exchange mode: Identity grant for an `id_token`, then the Connect exchange.
    async fn exchange(
        &self,
        call: &UpstreamCall,
        requested: &ScopeSet,
        grant: &ExchangeGrant,
    ) -> Result<IssuedToken, ProviderError> {
        // The exchange needs an id_token, which Trimble Identity issues only for `openid`.
        let mut scopes = effective_scopes(requested, &self.scopes)
            .as_slice()
            .to_vec();
        scopes.push("openid".into());
        let scope = ScopeSet::new(scopes).join(" ");
        let mut metadata = BTreeMap::new();
        let form = match grant {
            ExchangeGrant::ClientCredentials => vec![
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("scope".to_owned(), scope),
            ],
            ExchangeGrant::Password { username, password } => {
                metadata.insert(LEGACY_GRANT.to_owned(), "password".to_owned());
                vec![
                    ("grant_type".to_owned(), "password".to_owned()),
                    ("username".to_owned(), username.clone()),
                    ("password".to_owned(), password.expose().to_owned()),
                    ("scope".to_owned(), scope),
                ]
            }
        };
        let identity = request_token(
            call,
            steps::IDENTITY_TOKEN,
            self.identity.token_request(form),
        )
        .await?;
        let id_token = identity.id_token.ok_or_else(|| {
            ProviderError::transient(
                steps::IDENTITY_TOKEN,
                "Trimble Identity answered without an id_token, which the Connect exchange needs; check that the application may use the `openid` scope",
            )
        })?;
        let (token, expires_in) = connect_exchange(call, &self.master_url, &id_token).await?;
        let (expires_in, expires_at_unix) = match expires_in {
            Some(d) => (Some(d), None),
            None => match jwt::expiry(token.expose()) {
                Some(exp) => (None, Some(exp)),
                None => (Some(DEFAULT_TOKEN_LIFETIME), None),
            },
        };
        Ok(IssuedToken {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in,
            expires_at_unix,
            scopes: None,
            // Exchange mode re-runs its non-interactive grant; a refresh token would only be
            // one more secret to store.
            refresh_token: None,
            metadata,
        })
    }

    fn session_only(&self, what: &str) -> Result<(), ProviderError> {
        match self.mode {
            Mode::Session { .. } => Ok(()),
            Mode::Exchange(_) => Err(ProviderError::Unsupported(format!(
                "{what} needs grant = \"authorization_code\" or \"refresh_token\" (Trimble Connect session mode)"
            ))),
        }
    }
}

/// `POST {master}/auth/token` with `{"jwt": id_token}`; answers `{"token": ...}`.
async fn connect_exchange(
    call: &UpstreamCall,
    master: &Url,
    id_token: &Secret,
) -> Result<(Secret, Option<Duration>), ProviderError> {
    let step = steps::CONNECT_EXCHANGE;
    let url = endpoint(master, &["auth", "token"]);
    let resp = call
        .send(
            step,
            UpstreamRequest::post_json(url, json!({ "jwt": id_token.expose() })),
        )
        .await?;
    check_exchange_status(&resp, call)?;
    let mut obj = parse_json_object(step, &resp)?;
    let token = match obj.remove("token") {
        Some(Value::String(s)) if !s.is_empty() => Secret::from(s),
        _ => {
            return Err(ProviderError::transient(
                step,
                format!(
                    "Trimble Connect answered HTTP {} without a token",
                    resp.status
                ),
            ))
        }
    };
    call.redactor().learn(&token);
    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_expires_in(v).ok_or_else(|| {
            ProviderError::transient(step, "malformed expires_in in the Connect token response")
        })?),
    };
    Ok((token, expires_in))
}

/// Classifies a failed exchange. Connect is not an OAuth server: its errors look like
/// `{"errorcode": "...", "message": "..."}`, and its documentation makes the status the
/// contract (401 unauthorized, 403 access denied), so those reject the credential whatever
/// the body; 5xx, 429 and redirects follow the SDK's rules.
fn check_exchange_status(
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<(), ProviderError> {
    let step = steps::CONNECT_EXCHANGE;
    let status = resp.status;
    if !(400..500).contains(&status) || status == 408 || status == 429 {
        return check_status(step, resp, call);
    }
    let body = serde_json::from_slice::<Value>(&resp.body).ok();
    let obj = match &body {
        // An RFC 6749 body (a proxy in front, or a future Connect) is classified as such.
        Some(Value::Object(o)) if o.contains_key("error") => return check_status(step, resp, call),
        Some(Value::Object(o)) => Some(o),
        _ => None,
    };
    let field = |names: &[&str]| {
        obj.and_then(|o| names.iter().find_map(|n| o.get(*n).and_then(Value::as_str)))
            .map(|s| call.redactor().scrub(s))
    };
    let kind = match (status, obj) {
        (401 | 403, _) => RejectKind::Credential,
        (_, Some(_)) => RejectKind::Request,
        (_, None) => {
            return Err(ProviderError::transient(
                step,
                format!(
                    "Trimble Connect answered HTTP {status} with a body that is not a Connect error ({})",
                    resp.content_type().unwrap_or("no content type")
                ),
            ))
        }
    };
    Err(ProviderError::Rejected {
        kind,
        step: step.to_owned(),
        code: field(&["errorcode", "errorCode", "code"])
            .unwrap_or_else(|| format!("HTTP {status}")),
        description: field(&["message", "developerMessage", "error_description"])
            .map(|d| truncate_chars(&d, 300)),
    })
}

const NEEDS_AUTHORIZATION: &str = "no refresh token yet: authorize the credential through StartAuthorization, or give `refresh_token` in the settings";

#[async_trait]
impl Provider for TrimbleConnectProvider {
    fn capabilities(&self) -> Capabilities {
        match self.mode {
            Mode::Exchange(_) => Capabilities::default(),
            Mode::Session { .. } => Capabilities {
                revoke: true,
                authorization_code: true,
                pkce: true,
                refresh_token: true,
                ..Capabilities::default()
            },
        }
    }

    fn default_scopes(&self) -> Vec<String> {
        self.scopes.clone()
    }

    fn secrets(&self) -> Vec<Secret> {
        let mut out: Vec<Secret> = self.identity.client_secret().into_iter().cloned().collect();
        match &self.mode {
            Mode::Exchange(ExchangeGrant::Password { password, .. }) => out.push(password.clone()),
            Mode::Exchange(ExchangeGrant::ClientCredentials) => {}
            Mode::Session {
                configured_refresh_token,
            } => out.extend(configured_refresh_token.iter().cloned()),
        }
        out
    }

    fn configured_refresh_token(&self) -> Option<Secret> {
        match &self.mode {
            Mode::Session {
                configured_refresh_token,
            } => configured_refresh_token.clone(),
            Mode::Exchange(_) => None,
        }
    }

    fn requires_refresh_token(&self) -> bool {
        matches!(self.mode, Mode::Session { .. })
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        match &self.mode {
            Mode::Exchange(grant) => {
                let placement = self.placement(req.call).await?;
                let mut token = self.exchange(req.call, req.scopes, grant).await?;
                token.metadata.extend(placement);
                Ok(token)
            }
            Mode::Session {
                configured_refresh_token,
            } => {
                let refresh_token = req
                    .refresh_token
                    .or(configured_refresh_token.as_ref())
                    .ok_or_else(|| ProviderError::config(NEEDS_AUTHORIZATION))?;
                // Regions first: after a rotating refresh nothing may fail, or the new
                // refresh token would be lost with the error.
                let placement = self.placement(req.call).await?;
                let narrowed = (!req.scopes.is_empty()).then_some(req.scopes);
                let resp = self
                    .identity
                    .refresh(req.call, refresh_token, narrowed)
                    .await?;
                let mut token = IssuedToken::from_response(resp, DEFAULT_TOKEN_LIFETIME);
                token.metadata.extend(placement);
                Ok(token)
            }
        }
    }

    async fn revoke(
        &self,
        call: &UpstreamCall,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        self.session_only("revocation")?;
        self.identity
            .revoke(call, &self.endpoints.revoke, token, hint)
            .await
    }

    async fn authorization_url(
        &self,
        _call: &UpstreamCall,
        req: &AuthorizationRequest,
    ) -> Result<Url, ProviderError> {
        self.session_only("the authorization code flow")?;
        let scopes = effective_scopes(&req.scopes, &self.scopes);
        Ok(authorization_url(
            &self.endpoints.authorize,
            self.identity.client_id(),
            &scopes,
            req,
        ))
    }

    async fn exchange_code(
        &self,
        call: &UpstreamCall,
        req: CodeExchange,
    ) -> Result<IssuedToken, ProviderError> {
        self.session_only("the authorization code flow")?;
        let resp = self.identity.exchange_code(call, &req).await?;
        let mut token = IssuedToken::from_response(resp, DEFAULT_TOKEN_LIFETIME);
        // The code is spent and the refresh token is new: a regions failure here must not
        // throw them away. Its event records the failure; the next refresh adds the metadata.
        if let Ok(placement) = self.placement(call).await {
            token.metadata.extend(placement);
        }
        Ok(token)
    }

    fn refresh_token_idle_lifetime(&self) -> Option<Duration> {
        match self.mode {
            Mode::Session { .. } => Some(REFRESH_TOKEN_IDLE_LIFETIME),
            Mode::Exchange(_) => None,
        }
    }
}

provider_factory! {
    /// Builds [`TrimbleConnectProvider`]s for `provider = "trimble_connect"`.
    pub struct TrimbleConnectFactory => TrimbleConnectProvider {
        kind: KIND,
        secret_fields: SECRET_FIELDS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authgate_plugin_sdk::testing::settings_error;
    use authgate_plugin_sdk::ProviderFactory;

    fn build(v: Value) -> Result<TrimbleConnectProvider, SettingsError> {
        TrimbleConnectProvider::from_settings(v)
    }

    fn err(v: Value) -> String {
        settings_error(build(v))
    }

    #[test]
    fn design_md_example_builds_with_defaults() {
        let p =
            build(json!({"client_id": "key", "client_secret": "s3cret", "region": "eu"})).unwrap();
        assert!(matches!(
            p.mode,
            Mode::Exchange(ExchangeGrant::ClientCredentials)
        ));
        assert_eq!(p.master_url.as_str(), DEFAULT_MASTER_URL);
        assert_eq!(
            p.identity.token_url.as_str(),
            "https://id.trimble.com/oauth/token"
        );
        assert_eq!(p.scopes, vec!["openid"]);
        assert_eq!(p.capabilities(), Capabilities::default());
        assert_eq!(p.refresh_token_idle_lifetime(), None);
        assert_eq!(p.secrets().len(), 1);
    }

    #[test]
    fn settings_errors_name_the_field() {
        assert!(err(json!({"client_secret": "s"})).contains("client_id"));
        assert!(err(json!({"client_id": "k"})).contains("`client_secret`"));
        assert!(
            err(json!({"client_id": "k", "client_secret": "s", "colour": 1}))
                .contains("unknown field `colour`")
        );
        assert!(
            err(json!({"client_id": "k", "client_secret": "s", "grant": "implicit"}))
                .contains("unknown variant")
        );
        let e = err(
            json!({"client_id": "k", "client_secret": "s", "grant": "password", "password": "p"}),
        );
        assert!(e.contains("`username`"), "{e}");
        let e = err(json!({"client_id": "k", "client_secret": "s", "password": "p"}));
        assert!(e.contains("`password` is not used"), "{e}");
        let e = err(json!({"client_id": "k", "grant": "refresh_token"}));
        assert!(e.contains("`refresh_token` is required"), "{e}");
        let e = err(
            json!({"client_id": "k", "client_secret": "s", "master_url": "app.connect.trimble.com"}),
        );
        assert!(e.contains("`master_url`"), "{e}");
        let e = err(json!({"client_id": "k", "client_secret": "s", "region": " "}));
        assert!(e.contains("`region`"), "{e}");
        assert!(e.starts_with("trimble_connect settings: "), "{e}");
    }

    #[test]
    fn session_mode_allows_a_public_client() {
        let p = build(json!({"client_id": "k", "grant": "authorization_code"})).unwrap();
        assert!(p.requires_refresh_token());
        assert!(p.capabilities().pkce && p.capabilities().revoke);
        assert_eq!(
            p.refresh_token_idle_lifetime(),
            Some(REFRESH_TOKEN_IDLE_LIFETIME)
        );
        assert!(p.secrets().is_empty());
    }

    #[test]
    fn secret_fields_cover_every_secret_setting() {
        let f = TrimbleConnectFactory;
        assert_eq!(f.kind(), "trimble_connect");
        assert_eq!(
            f.secret_fields(),
            &["client_secret", "password", "refresh_token"]
        );
    }
}
