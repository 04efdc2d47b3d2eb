//! `autodesk_aps`: the Autodesk Platform Services OAuth v2 provider.
//!
//! 2-legged tokens by client credentials; 3-legged tokens by authorization code (PKCE when
//! the gateway sends a challenge), then refresh tokens, which APS rotates on every use and
//! which lapse after 14 days unused. The client authenticates with HTTP Basic over the raw
//! `client_id:client_secret` (APS v2), with the pair in the form (`client_auth = "post"`, as
//! seed 003's samples do), or, as a public PKCE client, with `client_id` alone.

use crate::error::check_aps_status;
use async_trait::async_trait;
use authgate_plugin_sdk::oauth::{
    authorization_code_form, authorization_url, parse_token_response, refresh_token_form,
    revocation_form, ClientAuth, ClientCredentials, TokenResponse,
};
use authgate_plugin_sdk::settings::{
    base_url_setting, client_id_setting, effective_scopes, endpoint, optional_secret,
    scopes_setting, unused,
};
use authgate_plugin_sdk::{
    decode_and_validate, provider_factory, AuthorizationRequest, Capabilities, CodeExchange,
    FetchRequest, IssuedToken, Provider, ProviderError, ScopeSet, Secret, SettingsError,
    TokenTypeHint, UpstreamCall,
};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use url::Url;

/// The config name of this provider.
pub const KIND: &str = "autodesk_aps";

/// APS authentication v2; `token`, `authorize` and `revoke` hang below it.
pub const DEFAULT_BASE_URL: &str = "https://developer.api.autodesk.com/authentication/v2";

/// Lifetime assumed when the response says nothing (APS access tokens live one hour).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// How long an unused APS refresh token stays valid.
pub const REFRESH_TOKEN_IDLE_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

/// Event step names.
pub mod steps {
    pub const CLIENT_CREDENTIALS: &str = "client_credentials";
    pub const AUTHORIZATION_CODE: &str = "authorization_code";
    pub const REFRESH: &str = "refresh";
    pub const REVOKE: &str = "revoke";
}

const SECRET_FIELDS: &[&str] = &["client_secret", "refresh_token"];

/// The grant the credential uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApsGrant {
    /// 2-legged.
    #[default]
    ClientCredentials,
    /// 3-legged, authorized through the gateway's StartAuthorization.
    AuthorizationCode,
    /// 3-legged, starting from a refresh token given in the settings.
    RefreshToken,
}

impl ApsGrant {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }

    fn is_three_legged(self) -> bool {
        !matches!(self, Self::ClientCredentials)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    grant: ApsGrant,
    client_id: String,
    client_secret: Option<Secret>,
    /// `basic` (default with a secret), `post`, or `public` (no secret, PKCE).
    client_auth: Option<ClientAuth>,
    refresh_token: Option<Secret>,
    #[serde(default)]
    scopes: Vec<String>,
    base_url: Option<String>,
}

/// An APS credential.
pub struct AutodeskApsProvider {
    grant: ApsGrant,
    /// APS v2 documents HTTP Basic over the raw `id:secret`, not RFC 6749's form-encoded
    /// halves (identical for APS's alphanumeric ids and secrets), hence `apply_raw_basic`.
    client: ClientCredentials,
    token_url: Url,
    authorize_url: Url,
    revoke_url: Url,
    configured_refresh_token: Option<Secret>,
    scopes: Vec<String>,
}

impl AutodeskApsProvider {
    /// Decodes and validates the credential's settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        decode_and_validate(KIND, settings, Self::validate)
    }

    fn validate(s: Settings) -> Result<Self, SettingsError> {
        let grant = s.grant.as_str();
        let client_id = client_id_setting(&s.client_id, "the Client ID of your APS application")?;
        let client_secret = optional_secret("client_secret", s.client_secret)?;
        let refresh_token = optional_secret("refresh_token", s.refresh_token)?;
        let client_auth = match (&client_secret, s.client_auth) {
            (Some(_), Some(ClientAuth::Public)) => {
                return Err(SettingsError(
                    "`client_auth = \"public\"` sends no secret: remove `client_secret`, or use \"basic\" or \"post\"".into(),
                ))
            }
            (Some(_), auth) => auth.unwrap_or(ClientAuth::Basic),
            (None, Some(auth @ (ClientAuth::Basic | ClientAuth::Post))) => {
                return Err(SettingsError(format!(
                    "`client_secret` is required for client_auth = \"{}\"",
                    if auth == ClientAuth::Basic { "basic" } else { "post" }
                )))
            }
            (None, _) if s.grant == ApsGrant::ClientCredentials => {
                return Err(SettingsError(
                    "`client_secret` is required for grant = \"client_credentials\" (2-legged tokens are for confidential applications)".into(),
                ))
            }
            (None, _) => ClientAuth::Public,
        };
        let scopes = scopes_setting(s.scopes)?;
        match s.grant {
            ApsGrant::ClientCredentials => {
                unused("refresh_token", &refresh_token, grant)?;
                if scopes.is_empty() {
                    return Err(SettingsError(
                        "`scopes` is required for grant = \"client_credentials\": APS issues 2-legged tokens only for named scopes, e.g. [\"data:read\", \"viewables:read\"]".into(),
                    ));
                }
            }
            ApsGrant::RefreshToken if refresh_token.is_none() => {
                return Err(SettingsError(
                    "`refresh_token` is required for grant = \"refresh_token\"; use grant = \"authorization_code\" to authorize through the gateway instead".into(),
                ))
            }
            _ => {}
        }
        let base = base_url_setting("base_url", s.base_url.as_deref(), DEFAULT_BASE_URL)?;
        Ok(Self {
            grant: s.grant,
            client: ClientCredentials {
                client_id,
                client_secret,
                auth: client_auth,
            },
            token_url: endpoint(&base, &["token"]),
            authorize_url: endpoint(&base, &["authorize"]),
            revoke_url: endpoint(&base, &["revoke"]),
            configured_refresh_token: refresh_token,
            scopes,
        })
    }

    async fn token(
        &self,
        call: &UpstreamCall,
        step: &str,
        form: Vec<(String, String)>,
    ) -> Result<TokenResponse, ProviderError> {
        let resp = call
            .send(
                step,
                self.client.apply_raw_basic(form, self.token_url.clone()),
            )
            .await?;
        check_aps_status(step, &resp, call)?;
        parse_token_response(step, &resp, call)
    }

    fn three_legged_only(&self) -> Result<(), ProviderError> {
        if self.grant.is_three_legged() {
            Ok(())
        } else {
            Err(ProviderError::Unsupported(
                "the authorization code flow needs grant = \"authorization_code\" (3-legged)"
                    .into(),
            ))
        }
    }

    fn scopes_for(&self, requested: &ScopeSet) -> Result<ScopeSet, ProviderError> {
        let scopes = effective_scopes(requested, &self.scopes);
        if scopes.is_empty() {
            return Err(ProviderError::config(
                "no scopes: APS needs at least one, e.g. `scopes = [\"data:read\"]` in the credential or scopes in the request",
            ));
        }
        Ok(scopes)
    }
}

#[async_trait]
impl Provider for AutodeskApsProvider {
    fn capabilities(&self) -> Capabilities {
        let three = self.grant.is_three_legged();
        Capabilities {
            revoke: true,
            authorization_code: three,
            pkce: three,
            refresh_token: three,
            ..Capabilities::default()
        }
    }

    fn default_scopes(&self) -> Vec<String> {
        self.scopes.clone()
    }

    fn secrets(&self) -> Vec<Secret> {
        self.client
            .client_secret
            .iter()
            .chain(self.configured_refresh_token.iter())
            .cloned()
            .collect()
    }

    fn configured_refresh_token(&self) -> Option<Secret> {
        self.configured_refresh_token.clone()
    }

    fn requires_refresh_token(&self) -> bool {
        self.grant.is_three_legged()
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        if !self.grant.is_three_legged() {
            let scope = self.scopes_for(req.scopes)?.join(" ");
            let form = vec![
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("scope".to_owned(), scope),
            ];
            let resp = self
                .token(req.call, steps::CLIENT_CREDENTIALS, form)
                .await?;
            return Ok(IssuedToken::from_response(resp, DEFAULT_TOKEN_LIFETIME));
        }
        let refresh_token = req
            .refresh_token
            .or(self.configured_refresh_token.as_ref())
            .ok_or_else(|| {
                ProviderError::config(
                    "no refresh token yet: authorize the credential through StartAuthorization, or give `refresh_token` in the settings",
                )
            })?;
        let mut form = refresh_token_form(refresh_token);
        // Only narrow when asked: the default set may differ from what the user consented
        // to, and APS refuses scopes beyond the consent.
        if !req.scopes.is_empty() {
            form.push(("scope".into(), req.scopes.join(" ")));
        }
        let resp = self.token(req.call, steps::REFRESH, form).await?;
        // APS rotates the refresh token on every use; `from_response` hands the new one to
        // the broker, which stores it before the access token is used.
        Ok(IssuedToken::from_response(resp, DEFAULT_TOKEN_LIFETIME))
    }

    async fn revoke(
        &self,
        call: &UpstreamCall,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        let form = revocation_form(token, Some(hint.as_str()));
        let resp = call
            .send(
                steps::REVOKE,
                self.client.apply_raw_basic(form, self.revoke_url.clone()),
            )
            .await?;
        check_aps_status(steps::REVOKE, &resp, call)
    }

    async fn authorization_url(
        &self,
        _call: &UpstreamCall,
        req: &AuthorizationRequest,
    ) -> Result<Url, ProviderError> {
        self.three_legged_only()?;
        let scopes = self.scopes_for(&req.scopes)?;
        Ok(authorization_url(
            &self.authorize_url,
            &self.client.client_id,
            &scopes,
            req,
        ))
    }

    async fn exchange_code(
        &self,
        call: &UpstreamCall,
        req: CodeExchange,
    ) -> Result<IssuedToken, ProviderError> {
        self.three_legged_only()?;
        let form =
            authorization_code_form(&req.code, &req.redirect_uri, req.code_verifier.as_ref());
        let resp = self.token(call, steps::AUTHORIZATION_CODE, form).await?;
        Ok(IssuedToken::from_response(resp, DEFAULT_TOKEN_LIFETIME))
    }

    fn refresh_token_idle_lifetime(&self) -> Option<Duration> {
        self.grant
            .is_three_legged()
            .then_some(REFRESH_TOKEN_IDLE_LIFETIME)
    }
}

provider_factory! {
    /// Builds [`AutodeskApsProvider`]s for `provider = "autodesk_aps"`.
    pub struct AutodeskApsFactory => AutodeskApsProvider {
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
        settings_error(AutodeskApsProvider::from_settings(v))
    }

    #[test]
    fn defaults_point_at_aps_v2() {
        let p = AutodeskApsProvider::from_settings(
            json!({"client_id": "c", "client_secret": "s", "scopes": ["data:read viewables:read"]}),
        )
        .unwrap();
        assert_eq!(
            p.token_url.as_str(),
            "https://developer.api.autodesk.com/authentication/v2/token"
        );
        assert_eq!(
            p.revoke_url.as_str(),
            "https://developer.api.autodesk.com/authentication/v2/revoke"
        );
        assert_eq!(
            p.authorize_url.as_str(),
            "https://developer.api.autodesk.com/authentication/v2/authorize"
        );
        assert_eq!(p.client.auth, ClientAuth::Basic);
        assert_eq!(p.scopes, vec!["data:read", "viewables:read"]);
        assert_eq!(p.refresh_token_idle_lifetime(), None);
        assert!(p.capabilities().revoke && !p.capabilities().authorization_code);
    }

    #[test]
    fn three_legged_public_client_is_allowed() {
        let p = AutodeskApsProvider::from_settings(
            json!({"client_id": "c", "grant": "authorization_code"}),
        )
        .unwrap();
        assert_eq!(p.client.auth, ClientAuth::Public);
        assert_eq!(
            p.refresh_token_idle_lifetime(),
            Some(Duration::from_secs(1_209_600))
        );
        assert!(p.requires_refresh_token() && p.capabilities().pkce);
    }

    #[test]
    fn settings_errors_name_the_field() {
        assert!(
            err(json!({"client_id": "c", "scopes": ["a"]})).contains("`client_secret` is required")
        );
        assert!(
            err(json!({"client_id": "c", "client_secret": "s"})).contains("`scopes` is required")
        );
        assert!(err(json!({"client_id": "c", "client_secret": "s", "scopes": ["a"], "client_auth": "public"})).contains("public"));
        assert!(err(
            json!({"client_id": "c", "grant": "authorization_code", "client_auth": "post"})
        )
        .contains("`client_secret` is required"));
        assert!(err(json!({"client_id": "c", "grant": "refresh_token"}))
            .contains("`refresh_token` is required"));
        assert!(err(json!({"client_id": "c", "client_secret": "s", "scopes": ["a"], "base_url": "https://x/?q"})).contains("`base_url`"));
        assert!(err(
            json!({"client_id": "c", "client_secret": "s", "scopes": ["a"], "scope": "a"})
        )
        .contains("unknown field `scope`"));
        let e = err(
            json!({"client_id": "c", "client_secret": "s", "scopes": ["a"], "refresh_token": "r"}),
        );
        assert!(
            e.starts_with("autodesk_aps settings: ") && e.contains("not used"),
            "{e}"
        );
    }

    #[test]
    fn secret_fields_cover_every_secret_setting() {
        assert_eq!(AutodeskApsFactory.kind(), "autodesk_aps");
        assert_eq!(
            AutodeskApsFactory.secret_fields(),
            &["client_secret", "refresh_token"]
        );
    }
}
