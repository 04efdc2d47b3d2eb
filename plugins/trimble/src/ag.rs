//! `trimble_ag`: tokens for the Trimble Ag APIs (seed 002), by client credentials or by
//! authorization code followed by refresh tokens.
//!
//! Access to an organization's data is granted on Trimble Ag's own approval page
//! (`ThirdPartyAuthorizationRedirect`): with `redirectionUrl` for the authorization-code
//! variant, which then sends the user back with a code; without it for client credentials,
//! where the approval only decides which organizations the application's tokens can see.
//! Documented lifetimes: code 10 minutes, access token 1 hour, refresh token 9 days.

use crate::identity::{steps, IdentityClient, CLIENT_ID_HINT};
use async_trait::async_trait;
use authgate_plugin_sdk::oauth::request_token;
use authgate_plugin_sdk::settings::{
    client_id_setting, effective_scopes, optional_secret, required_secret, scopes_setting, unused,
    url_setting,
};
use authgate_plugin_sdk::{
    decode_and_validate, provider_factory, AuthorizationRequest, Capabilities, CodeExchange,
    FetchRequest, IssuedToken, Provider, ProviderError, Secret, SettingsError, UpstreamCall,
};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use url::Url;

/// The config name of this provider.
pub const KIND: &str = "trimble_ag";

/// Trimble Identity's token endpoint. Older Trimble Ag documents name
/// `https://identity.trimble.com/token`; set `token_url` if your application was registered
/// there.
pub const DEFAULT_TOKEN_URL: &str = "https://id.trimble.com/oauth/token";

/// Trimble Ag's organization-approval page.
pub const DEFAULT_APPROVAL_URL: &str =
    "https://www.trimbleag.com/ThirdPartyAccess/ThirdPartyAuthorizationRedirect";

/// How long the user's authorization code stays valid (seed 002).
pub const AUTHORIZATION_CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Access-token lifetime when the response says nothing (seed 002: 1 hour).
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Refresh-token lifetime (seed 002: 9 days); the gateway refreshes before it runs out.
pub const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(9 * 24 * 3600);

const SECRET_FIELDS: &[&str] = &["client_secret", "refresh_token"];

/// The grant the credential uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgGrant {
    #[default]
    ClientCredentials,
    /// Authorized through the gateway's StartAuthorization, then refresh tokens.
    AuthorizationCode,
    /// Starts from a refresh token given in the settings (e.g. moved from another system).
    RefreshToken,
}

impl AgGrant {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }

    fn is_user_session(self) -> bool {
        !matches!(self, Self::ClientCredentials)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    grant: AgGrant,
    client_id: String,
    client_secret: Option<Secret>,
    refresh_token: Option<Secret>,
    #[serde(default)]
    scopes: Vec<String>,
    token_url: Option<String>,
    approval_url: Option<String>,
}

/// A Trimble Ag credential.
pub struct TrimbleAgProvider {
    grant: AgGrant,
    identity: IdentityClient,
    approval_url: Url,
    configured_refresh_token: Option<Secret>,
    scopes: Vec<String>,
}

impl TrimbleAgProvider {
    /// Decodes and validates the credential's settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        decode_and_validate(KIND, settings, Self::validate)
    }

    fn validate(s: Settings) -> Result<Self, SettingsError> {
        let grant = s.grant.as_str();
        let client_id = client_id_setting(&s.client_id, CLIENT_ID_HINT)?;
        let client_secret = required_secret(
            "client_secret",
            s.client_secret,
            "(Trimble Ag applications authenticate with their client id and secret)",
        )?;
        let refresh_token = optional_secret("refresh_token", s.refresh_token)?;
        match s.grant {
            AgGrant::ClientCredentials => unused("refresh_token", &refresh_token, grant)?,
            AgGrant::RefreshToken if refresh_token.is_none() => {
                return Err(SettingsError(
                    "`refresh_token` is required for grant = \"refresh_token\"; use grant = \"authorization_code\" to authorize through the gateway instead".into(),
                ))
            }
            _ => {}
        }
        Ok(Self {
            grant: s.grant,
            identity: IdentityClient::new(
                url_setting("token_url", s.token_url.as_deref(), DEFAULT_TOKEN_URL)?,
                client_id,
                Some(client_secret),
            ),
            approval_url: url_setting(
                "approval_url",
                s.approval_url.as_deref(),
                DEFAULT_APPROVAL_URL,
            )?,
            configured_refresh_token: refresh_token,
            scopes: scopes_setting(s.scopes)?,
        })
    }

    fn user_session_only(&self) -> Result<(), ProviderError> {
        if self.grant.is_user_session() {
            Ok(())
        } else {
            Err(ProviderError::Unsupported(
                "code exchange with grant = \"client_credentials\": the approval page only grants organization access, there is no code".into(),
            ))
        }
    }
}

#[async_trait]
impl Provider for TrimbleAgProvider {
    fn capabilities(&self) -> Capabilities {
        let session = self.grant.is_user_session();
        Capabilities {
            revoke: false,
            authorization_code: session,
            // Seed 002 documents no PKCE for the approval page.
            pkce: false,
            refresh_token: session,
            ..Capabilities::default()
        }
    }

    fn default_scopes(&self) -> Vec<String> {
        self.scopes.clone()
    }

    fn secrets(&self) -> Vec<Secret> {
        self.identity
            .client_secret()
            .into_iter()
            .chain(self.configured_refresh_token.iter())
            .cloned()
            .collect()
    }

    fn configured_refresh_token(&self) -> Option<Secret> {
        self.configured_refresh_token.clone()
    }

    fn requires_refresh_token(&self) -> bool {
        self.grant.is_user_session()
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        if !self.grant.is_user_session() {
            let mut form = vec![("grant_type".to_owned(), "client_credentials".to_owned())];
            let scopes = effective_scopes(req.scopes, &self.scopes);
            if !scopes.is_empty() {
                form.push(("scope".into(), scopes.join(" ")));
            }
            let resp = request_token(
                req.call,
                steps::CLIENT_CREDENTIALS,
                self.identity.token_request(form),
            )
            .await?;
            let mut token = IssuedToken::from_response(resp, ACCESS_TOKEN_LIFETIME);
            // Client credentials are re-run on expiry; a refresh token would only be one more
            // secret to store.
            token.refresh_token = None;
            return Ok(token);
        }
        let refresh_token = req
            .refresh_token
            .or(self.configured_refresh_token.as_ref())
            .ok_or_else(|| {
                ProviderError::config(
                    "no refresh token yet: approve the application through StartAuthorization (Trimble Ag's organization approval page), or give `refresh_token` in the settings",
                )
            })?;
        let narrowed = (!req.scopes.is_empty()).then_some(req.scopes);
        let resp = self
            .identity
            .refresh(req.call, refresh_token, narrowed)
            .await?;
        Ok(IssuedToken::from_response(resp, ACCESS_TOKEN_LIFETIME))
    }

    /// Trimble Ag's approval page. `state` is added for the authorization-code variant so the
    /// gateway's callback can match the answer; seed 002 documents only `clientid` and
    /// `redirectionUrl`.
    async fn authorization_url(
        &self,
        _call: &UpstreamCall,
        req: &AuthorizationRequest,
    ) -> Result<Url, ProviderError> {
        let mut url = self.approval_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("clientid", self.identity.client_id());
            if self.grant.is_user_session() {
                q.append_pair("redirectionUrl", req.redirect_uri.as_str())
                    .append_pair("state", &req.state);
            }
        }
        Ok(url)
    }

    async fn exchange_code(
        &self,
        call: &UpstreamCall,
        req: CodeExchange,
    ) -> Result<IssuedToken, ProviderError> {
        self.user_session_only()?;
        let resp = self.identity.exchange_code(call, &req).await?;
        Ok(IssuedToken::from_response(resp, ACCESS_TOKEN_LIFETIME))
    }

    fn refresh_token_idle_lifetime(&self) -> Option<Duration> {
        self.grant
            .is_user_session()
            .then_some(REFRESH_TOKEN_LIFETIME)
    }
}

provider_factory! {
    /// Builds [`TrimbleAgProvider`]s for `provider = "trimble_ag"`.
    pub struct TrimbleAgFactory => TrimbleAgProvider {
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
        settings_error(TrimbleAgProvider::from_settings(v))
    }

    #[test]
    fn defaults_follow_the_documents() {
        let p = TrimbleAgProvider::from_settings(json!({"client_id": "c", "client_secret": "s"}))
            .unwrap();
        assert_eq!(p.identity.token_url.as_str(), DEFAULT_TOKEN_URL);
        assert_eq!(p.approval_url.as_str(), DEFAULT_APPROVAL_URL);
        assert_eq!(p.refresh_token_idle_lifetime(), None);
        assert!(!p.requires_refresh_token());
        let p = TrimbleAgProvider::from_settings(
            json!({"client_id": "c", "client_secret": "s", "grant": "authorization_code"}),
        )
        .unwrap();
        assert_eq!(
            p.refresh_token_idle_lifetime(),
            Some(Duration::from_secs(777_600))
        );
        assert!(p.capabilities().authorization_code && !p.capabilities().pkce);
    }

    #[test]
    fn settings_errors_name_the_field() {
        assert!(err(json!({"client_id": "c"})).contains("`client_secret` is required"));
        assert!(
            err(json!({"client_id": "c", "client_secret": ""})).contains("environment variable")
        );
        assert!(
            err(json!({"client_id": "c", "client_secret": "s", "grant": "refresh_token"}))
                .contains("`refresh_token` is required")
        );
        assert!(
            err(json!({"client_id": "c", "client_secret": "s", "refresh_token": "r"}))
                .contains("not used")
        );
        assert!(
            err(json!({"client_id": "c", "client_secret": "s", "token_url": "nope"}))
                .contains("`token_url`")
        );
        assert!(
            err(json!({"client_id": "c", "client_secret": "s", "region": "eu"}))
                .contains("unknown field `region`")
        );
    }

    #[test]
    fn secret_fields_cover_every_secret_setting() {
        assert_eq!(
            TrimbleAgFactory.secret_fields(),
            &["client_secret", "refresh_token"]
        );
        assert_eq!(TrimbleAgFactory.kind(), "trimble_ag");
    }
}
