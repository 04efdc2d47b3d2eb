//! `lseg_rdp`: the LSEG / Refinitiv Data Platform token endpoint (seed 001).
//!
//! RDP signs machine accounts on with the resource-owner password grant and keeps the session
//! going with rotating refresh tokens. Access tokens live minutes (`expires_in` arrives as a
//! string such as `"300"`), so the broker refreshes them ahead of time. The application's
//! App Key is the HTTP Basic user; the password half is the client secret when there is one,
//! else empty, as `requests`' `auth=(CLIENT_ID, CLIENT_SECRET)` sends it.

use crate::LEGACY_GRANT;
use async_trait::async_trait;
use authgate_plugin_sdk::oauth::request_token;
use authgate_plugin_sdk::settings::{
    client_id_setting, effective_scopes, optional_secret, required_secret, scopes_setting, unused,
    url_setting,
};
use authgate_plugin_sdk::{
    decode_and_validate, provider_factory, Capabilities, FetchRequest, IssuedToken, Provider,
    ProviderError, ScopeSet, Secret, SettingsError, UpstreamCall, UpstreamRequest,
};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use url::Url;

/// The config name of this provider.
pub const KIND: &str = "lseg_rdp";

/// The RDP token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://api.refinitiv.com/auth/oauth2/v1/token";

/// The scope RDP's samples request.
pub const DEFAULT_SCOPE: &str = "trapi";

/// Lifetime assumed if a response ever lacks `expires_in` (RDP access tokens live 5 minutes).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Event step names.
pub mod steps {
    /// The password grant (legacy; see the crate documentation).
    pub const PASSWORD: &str = "password";
    pub const REFRESH: &str = "refresh";
}

const SECRET_FIELDS: &[&str] = &["client_secret", "password", "refresh_token"];

/// The grant the credential uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RdpGrant {
    /// Sign on with username and password (needs `allow_legacy_password_grant = true`),
    /// then keep the session with refresh tokens.
    #[default]
    Password,
    /// Start from a refresh token given in the settings; no password is held.
    RefreshToken,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    grant: RdpGrant,
    /// The App Key.
    client_id: String,
    /// Usually absent: RDP App Keys have no secret.
    client_secret: Option<Secret>,
    username: Option<String>,
    password: Option<Secret>,
    refresh_token: Option<Secret>,
    /// Default `["trapi"]`.
    scopes: Option<Vec<String>>,
    /// Default `true`: a new sign-on takes over the account's session instead of failing
    /// with "Session quota is reached".
    take_exclusive_sign_on_control: Option<bool>,
    allow_legacy_password_grant: Option<bool>,
    token_url: Option<String>,
}

enum Mode {
    Password {
        username: String,
        password: Secret,
        take_exclusive_sign_on_control: bool,
    },
    RefreshToken {
        configured: Secret,
    },
}

/// An RDP credential.
pub struct LsegRdpProvider {
    mode: Mode,
    client_id: String,
    client_secret: Option<Secret>,
    token_url: Url,
    scopes: Vec<String>,
}

const PASSWORD_GRANT_OPT_IN: &str = "grant = \"password\" is the resource-owner password grant, which RFC 9700 (OAuth 2.0 Security Best Current Practice) says must not be used because the gateway then holds the user's password. RDP still requires it to sign machine accounts on; to accept that for this credential, set `allow_legacy_password_grant = true` (each sign-on is then recorded as a `legacy_grant` event), or use grant = \"refresh_token\" with a refresh token obtained elsewhere";

impl LsegRdpProvider {
    /// Decodes and validates the credential's settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        decode_and_validate(KIND, settings, Self::validate)
    }

    fn validate(s: Settings) -> Result<Self, SettingsError> {
        let client_id = client_id_setting(
            &s.client_id,
            "the App Key (client id) of your RDP application",
        )?;
        // An empty secret is what RDP's own samples send; treat it as "no secret".
        let client_secret = s.client_secret.filter(|c| !c.is_empty());
        let refresh_token = optional_secret("refresh_token", s.refresh_token)?;
        let mode = match s.grant {
            RdpGrant::Password => {
                if s.allow_legacy_password_grant != Some(true) {
                    return Err(SettingsError(PASSWORD_GRANT_OPT_IN.into()));
                }
                unused("refresh_token", &refresh_token, "password")?;
                let username = s
                    .username
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| {
                        SettingsError(
                            "`username` (the RDP user or machine id) is required for grant = \"password\"".into(),
                        )
                    })?;
                Mode::Password {
                    username,
                    password: required_secret("password", s.password, "for grant = \"password\"")?,
                    take_exclusive_sign_on_control: s
                        .take_exclusive_sign_on_control
                        .unwrap_or(true),
                }
            }
            RdpGrant::RefreshToken => {
                let grant = "refresh_token";
                unused("username", &s.username, grant)?;
                unused("password", &s.password, grant)?;
                unused(
                    "allow_legacy_password_grant",
                    &s.allow_legacy_password_grant,
                    grant,
                )?;
                unused(
                    "take_exclusive_sign_on_control",
                    &s.take_exclusive_sign_on_control,
                    grant,
                )?;
                Mode::RefreshToken {
                    configured: refresh_token.ok_or_else(|| {
                        SettingsError(
                            "`refresh_token` is required for grant = \"refresh_token\"".into(),
                        )
                    })?,
                }
            }
        };
        let scopes = scopes_setting(s.scopes.unwrap_or_else(|| vec![DEFAULT_SCOPE.into()]))?;
        if scopes.is_empty() {
            return Err(SettingsError(
                "`scopes` must not be empty; RDP's default is [\"trapi\"]".into(),
            ));
        }
        Ok(Self {
            mode,
            client_id,
            client_secret,
            token_url: url_setting("token_url", s.token_url.as_deref(), DEFAULT_TOKEN_URL)?,
            scopes,
        })
    }

    /// A token-endpoint POST with the App Key as the Basic user.
    fn token_request(&self, form: Vec<(String, String)>) -> UpstreamRequest {
        let none = Secret::from("");
        let secret = self.client_secret.as_ref().unwrap_or(&none);
        UpstreamRequest::post_form(self.token_url.clone(), form).basic_auth(&self.client_id, secret)
    }

    async fn refresh(
        &self,
        call: &UpstreamCall,
        refresh_token: &Secret,
    ) -> Result<IssuedToken, ProviderError> {
        // Seed 001: neither password nor scope on refresh; the session keeps its scope.
        let form = vec![
            (
                "refresh_token".to_owned(),
                refresh_token.expose().to_owned(),
            ),
            ("grant_type".to_owned(), "refresh_token".to_owned()),
        ];
        let resp = request_token(call, steps::REFRESH, self.token_request(form)).await?;
        Ok(IssuedToken::from_response(resp, DEFAULT_TOKEN_LIFETIME))
    }

    async fn sign_on(
        &self,
        call: &UpstreamCall,
        requested: &ScopeSet,
        username: &str,
        password: &Secret,
        take_exclusive: bool,
    ) -> Result<IssuedToken, ProviderError> {
        let form = vec![
            ("username".to_owned(), username.to_owned()),
            ("password".to_owned(), password.expose().to_owned()),
            ("grant_type".to_owned(), "password".to_owned()),
            (
                "scope".to_owned(),
                effective_scopes(requested, &self.scopes).join(" "),
            ),
            (
                "takeExclusiveSignOnControl".to_owned(),
                take_exclusive.to_string(),
            ),
        ];
        let resp = request_token(call, steps::PASSWORD, self.token_request(form)).await?;
        let mut token = IssuedToken::from_response(resp, DEFAULT_TOKEN_LIFETIME);
        token
            .metadata
            .insert(LEGACY_GRANT.to_owned(), "password".to_owned());
        Ok(token)
    }
}

#[async_trait]
impl Provider for LsegRdpProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            refresh_token: true,
            ..Capabilities::default()
        }
    }

    fn default_scopes(&self) -> Vec<String> {
        self.scopes.clone()
    }

    fn secrets(&self) -> Vec<Secret> {
        let mut out: Vec<Secret> = self.client_secret.iter().cloned().collect();
        match &self.mode {
            Mode::Password { password, .. } => out.push(password.clone()),
            Mode::RefreshToken { configured } => out.push(configured.clone()),
        }
        out
    }

    fn configured_refresh_token(&self) -> Option<Secret> {
        match &self.mode {
            Mode::RefreshToken { configured } => Some(configured.clone()),
            Mode::Password { .. } => None,
        }
    }

    fn requires_refresh_token(&self) -> bool {
        matches!(self.mode, Mode::RefreshToken { .. })
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        match &self.mode {
            Mode::RefreshToken { configured } => {
                self.refresh(req.call, req.refresh_token.unwrap_or(configured))
                    .await
            }
            Mode::Password {
                username,
                password,
                take_exclusive_sign_on_control,
            } => {
                if let Some(refresh_token) = req.refresh_token {
                    match self.refresh(req.call, refresh_token).await {
                        Ok(token) => return Ok(token),
                        // RDP refresh tokens die with the session (another sign-on, expiry);
                        // the password is at hand, so sign on again rather than fail the
                        // credential. A refused password then does fail it.
                        Err(e) if e.rejects_credential() => {}
                        Err(e) => return Err(e),
                    }
                }
                self.sign_on(
                    req.call,
                    req.scopes,
                    username,
                    password,
                    *take_exclusive_sign_on_control,
                )
                .await
            }
        }
    }
}

provider_factory! {
    /// Builds [`LsegRdpProvider`]s for `provider = "lseg_rdp"`.
    pub struct LsegRdpFactory => LsegRdpProvider {
        kind: KIND,
        secret_fields: SECRET_FIELDS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authgate_plugin_sdk::testing::settings_error;
    use authgate_plugin_sdk::ProviderFactory;
    use serde_json::json;

    fn err(v: Value) -> String {
        settings_error(LsegRdpProvider::from_settings(v))
    }

    fn password_settings() -> Value {
        json!({"client_id": "app-key", "username": "GE-A-1", "password": "pw", "allow_legacy_password_grant": true})
    }

    #[test]
    fn password_grant_needs_the_opt_in() {
        let e = err(json!({"client_id": "app-key", "username": "u", "password": "p"}));
        assert!(
            e.contains("RFC 9700") && e.contains("allow_legacy_password_grant = true"),
            "{e}"
        );
        let e = err(
            json!({"client_id": "app-key", "username": "u", "password": "p", "allow_legacy_password_grant": false}),
        );
        assert!(e.contains("RFC 9700"), "{e}");
    }

    #[test]
    fn defaults_follow_seed_001() {
        let p = LsegRdpProvider::from_settings(password_settings()).unwrap();
        assert_eq!(p.token_url.as_str(), DEFAULT_TOKEN_URL);
        assert_eq!(p.scopes, vec!["trapi"]);
        assert!(p.client_secret.is_none());
        assert!(matches!(
            p.mode,
            Mode::Password {
                take_exclusive_sign_on_control: true,
                ..
            }
        ));
        assert!(!p.requires_refresh_token());
        let mut s = password_settings();
        s["client_secret"] = json!("");
        assert!(LsegRdpProvider::from_settings(s)
            .unwrap()
            .client_secret
            .is_none());
    }

    #[test]
    fn settings_errors_name_the_field() {
        let mut s = password_settings();
        s["password"] = json!("");
        assert!(err(s).contains("`password`"));
        let mut s = password_settings();
        s["username"] = json!(" ");
        assert!(err(s).contains("`username`"));
        assert!(err(json!({"client_id": "k", "grant": "refresh_token"}))
            .contains("`refresh_token` is required"));
        assert!(err(json!({"client_id": "k", "grant": "refresh_token", "refresh_token": "r", "take_exclusive_sign_on_control": false})).contains("not used"));
        assert!(err(json!({"client_id": "k", "grant": "refresh_token", "refresh_token": "r", "scope": "trapi"})).contains("unknown field `scope`"));
        let mut s = password_settings();
        s["token_url"] = json!("api.refinitiv.com");
        let e = err(s);
        assert!(
            e.starts_with("lseg_rdp settings: ") && e.contains("`token_url`"),
            "{e}"
        );
    }

    #[test]
    fn secret_fields_cover_every_secret_setting() {
        assert_eq!(LsegRdpFactory.kind(), "lseg_rdp");
        assert_eq!(
            LsegRdpFactory.secret_fields(),
            &["client_secret", "password", "refresh_token"]
        );
    }
}
