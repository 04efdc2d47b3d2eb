//! The generic OAuth 2.0 / OIDC provider: RFC 6749 grants, RFC 7009 revocation, the
//! authorization-code flow with PKCE, and endpoints configured or discovered.

use crate::discovery::{self, Discovered};
use crate::settings::{Grant, OAuth2Settings, SafeUrl, TokenEndpoint};
use async_trait::async_trait;
use authgate_plugin_sdk::device::{
    device_token_form, parse_device_authorization, parse_device_token_response,
};
use authgate_plugin_sdk::oauth::{
    authorization_code_form, check_status, parse_token_response, refresh_token_form,
    revocation_form, TokenResponse,
};
use authgate_plugin_sdk::{
    AuthorizationRequest, Capabilities, ClientTls, CodeExchange, DeviceAuthorization, DevicePoll,
    ExchangedToken, FetchRequest, IssuedToken, Provider, ProviderError, ScopeSet, Secret,
    SettingsError, TokenExchange, TokenTypeHint, UpstreamCall,
};
use std::fmt;
use std::sync::atomic::AtomicUsize;
use tokio::sync::OnceCell;

mod auth;
mod exchange;
use url::Url;

/// Step names as recorded in upstream events.
const STEP_TOKEN: &str = "token";
const STEP_REFRESH: &str = "refresh";
const STEP_EXCHANGE: &str = "exchange_code";
const STEP_DEVICE_AUTHORIZATION: &str = "device_authorization";
const STEP_DEVICE_TOKEN: &str = "device_token";

/// One `oauth2` credential.
pub struct OAuth2Provider {
    settings: OAuth2Settings,
    /// The issuer's endpoints. Only a success is stored: a failed discovery is retried by
    /// the next operation, and concurrent first callers wait on one discovery.
    discovered: OnceCell<Discovered>,
    /// Which of `client_secrets` the provider last accepted (rotation).
    active_secret: AtomicUsize,
}

impl OAuth2Provider {
    pub fn new(settings: OAuth2Settings) -> Self {
        Self {
            settings,
            discovered: OnceCell::new(),
            active_secret: AtomicUsize::new(0),
        }
    }

    /// Decodes and validates settings, then builds the provider.
    pub fn from_settings(settings: serde_json::Value) -> Result<Self, SettingsError> {
        OAuth2Settings::from_value(settings).map(Self::new)
    }

    pub fn settings(&self) -> &OAuth2Settings {
        &self.settings
    }

    /// The issuer's metadata, discovering it on first use.
    async fn discover(
        &self,
        call: &UpstreamCall,
        issuer: &str,
    ) -> Result<&Discovered, ProviderError> {
        self.discovered
            .get_or_try_init(|| {
                discovery::discover(call, issuer, self.settings.has_client_certificate())
            })
            .await
    }

    /// The issuer's metadata; `None` when `token_url` is configured instead.
    async fn discovered(&self, call: &UpstreamCall) -> Result<Option<&Discovered>, ProviderError> {
        match &self.settings.endpoint {
            TokenEndpoint::Url(_) => Ok(None),
            TokenEndpoint::Issuer(issuer) => self.discover(call, issuer).await.map(Some),
        }
    }

    async fn token_endpoint(&self, call: &UpstreamCall) -> Result<Url, ProviderError> {
        match &self.settings.endpoint {
            TokenEndpoint::Url(url) => Ok(url.clone()),
            TokenEndpoint::Issuer(issuer) => {
                Ok(self.discover(call, issuer).await?.token_endpoint.clone())
            }
        }
    }

    /// The `scope` parameter for these scopes, if one is to be sent.
    fn scope_param(&self, scopes: &ScopeSet) -> Option<(String, String)> {
        (self.settings.send_scope && !scopes.is_empty()).then(|| {
            (
                "scope".to_owned(),
                scopes.join(&self.settings.scope_separator),
            )
        })
    }

    /// The caller's scopes, or the configured defaults when the caller names none.
    fn effective_scopes<'a>(&'a self, requested: &'a ScopeSet) -> &'a ScopeSet {
        if requested.is_empty() {
            &self.settings.scopes
        } else {
            requested
        }
    }

    /// Sends a token request: the grant's fields, then `extra_params`, then client auth.
    async fn token_request(
        &self,
        call: &UpstreamCall,
        step: &str,
        mut form: Vec<(String, String)>,
    ) -> Result<TokenResponse, ProviderError> {
        let url = self.token_endpoint(call).await?;
        form.extend(self.settings.extra_params.iter().cloned());
        self.authenticated(call, step, form, url, |resp, call| {
            parse_token_response(step, resp, call)
        })
        .await
    }

    fn issued(&self, mut resp: TokenResponse, assumed_scopes: &ScopeSet) -> IssuedToken {
        let sep = self.settings.scope_separator.as_str();
        // The SDK splits `scope` on whitespace; a provider that joins with another separator
        // answers with it too.
        if !sep.trim().is_empty() {
            if let Some(scopes) = resp.scope.take() {
                resp.scope = Some(
                    scopes
                        .iter()
                        .flat_map(|s| s.split(sep))
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
        }
        if resp.scope.is_none() && !assumed_scopes.is_empty() {
            // RFC 6749 §5.1: an absent `scope` means the requested scopes were granted.
            resp.scope = Some(assumed_scopes.as_slice().to_vec());
        }
        IssuedToken::from_response(resp, self.settings.default_lifetime)
    }

    /// The primary grant (client_credentials or password), which needs no refresh token.
    async fn primary_grant(
        &self,
        call: &UpstreamCall,
        requested: &ScopeSet,
    ) -> Result<IssuedToken, ProviderError> {
        let scopes = self.effective_scopes(requested);
        if self.settings.grant == Grant::JwtBearer {
            let form = self.jwt_bearer_form(call, scopes).await?;
            let resp = self.token_request(call, STEP_TOKEN, form).await?;
            return Ok(self.issued(resp, scopes));
        }
        let mut form = vec![(
            "grant_type".to_owned(),
            self.settings.grant.wire_name().to_owned(),
        )];
        match (self.settings.grant, &self.settings.password_grant) {
            (Grant::ClientCredentials | Grant::JwtBearer, _) => {}
            (Grant::Password, Some((username, password))) => {
                form.push(("username".into(), username.clone()));
                form.push(("password".into(), password.expose().to_owned()));
            }
            (Grant::RefreshToken | Grant::AuthorizationCode | Grant::DeviceCode, _) => {
                return Err(ProviderError::config(format!(
                    r#"grant = "{}" cannot obtain a token without a refresh token; {}"#,
                    self.settings.grant,
                    match self.settings.grant {
                        Grant::AuthorizationCode =>
                            "complete the authorization flow (StartAuthorization) first",
                        Grant::DeviceCode =>
                            "complete the device authorization (`authgate authorize` or StartAuthorization) first",
                        _ => "set `refresh_token`",
                    }
                )))
            }
            (Grant::Password, None) => {
                // Settings validation guarantees both for the password grant.
                return Err(ProviderError::config(
                    r#"grant = "password" needs `username` and `password`"#,
                ));
            }
        }
        form.extend(self.scope_param(scopes));
        let resp = self.token_request(call, STEP_TOKEN, form).await?;
        Ok(self.issued(resp, scopes))
    }

    /// RFC 6749 §6. Only the caller's own scopes are sent: without `scope` the provider
    /// keeps the originally granted ones, which is what a default request wants.
    async fn refresh(
        &self,
        call: &UpstreamCall,
        refresh_token: &Secret,
        requested: &ScopeSet,
    ) -> Result<IssuedToken, ProviderError> {
        let mut form = refresh_token_form(refresh_token);
        form.extend(self.scope_param(requested));
        let resp = self.token_request(call, STEP_REFRESH, form).await?;
        Ok(self.issued(resp, self.effective_scopes(requested)))
    }

    fn authorization_code_only(&self) -> Result<(), ProviderError> {
        if self.settings.grant == Grant::AuthorizationCode {
            Ok(())
        } else {
            Err(ProviderError::Unsupported(format!(
                r#"authorization code flow (this credential uses grant = "{}")"#,
                self.settings.grant
            )))
        }
    }

    fn device_code_only(&self) -> Result<(), ProviderError> {
        if self.settings.grant == Grant::DeviceCode {
            Ok(())
        } else {
            Err(ProviderError::Unsupported(format!(
                r#"device authorization grant (this credential uses grant = "{}")"#,
                self.settings.grant
            )))
        }
    }

    /// The device authorization endpoint: configured, else discovered.
    async fn device_authorization_endpoint(
        &self,
        call: &UpstreamCall,
    ) -> Result<Url, ProviderError> {
        if let Some(url) = &self.settings.device_authorization_url {
            return Ok(url.clone());
        }
        self.discovered(call)
            .await?
            .and_then(|d| d.device_authorization_endpoint.clone())
            .ok_or_else(|| {
                ProviderError::config(
                    "the issuer's metadata lists no usable device_authorization_endpoint; set `device_authorization_url`",
                )
            })
    }

    /// The configured redirect URI wins over the gateway's: it is the one registered at the
    /// provider (e.g. authgate's public URL behind a proxy).
    fn redirect_uri<'a>(&'a self, gateway: &'a Url) -> &'a Url {
        self.settings.redirect_uri.as_ref().unwrap_or(gateway)
    }
}

#[async_trait]
impl Provider for OAuth2Provider {
    fn capabilities(&self) -> Capabilities {
        let s = &self.settings;
        let code_flow = s.grant == Grant::AuthorizationCode;
        Capabilities {
            revoke: s.revocation_url.is_some() || matches!(s.endpoint, TokenEndpoint::Issuer(_)),
            authorization_code: code_flow,
            pkce: code_flow && s.pkce,
            refresh_token: !matches!(s.grant, Grant::ClientCredentials | Grant::JwtBearer)
                || s.refresh_token.is_some(),
            token_exchange: s.token_exchange,
            device_code: s.grant == Grant::DeviceCode,
        }
    }

    fn default_scopes(&self) -> Vec<String> {
        self.settings.scopes.as_slice().to_vec()
    }

    fn secrets(&self) -> Vec<Secret> {
        self.settings.secrets()
    }

    fn configured_refresh_token(&self) -> Option<Secret> {
        self.settings.refresh_token.clone()
    }

    fn refresh_token_idle_lifetime(&self) -> Option<std::time::Duration> {
        self.settings.refresh_token_idle
    }

    fn client_tls(&self) -> Option<&ClientTls> {
        self.settings.client_tls()
    }

    fn requires_refresh_token(&self) -> bool {
        matches!(
            self.settings.grant,
            Grant::RefreshToken | Grant::AuthorizationCode | Grant::DeviceCode
        )
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        let refresh_token = req.refresh_token.or(self.settings.refresh_token.as_ref());
        let Some(refresh_token) = refresh_token else {
            return self.primary_grant(req.call, req.scopes).await;
        };
        match self.refresh(req.call, refresh_token, req.scopes).await {
            Err(e)
                if e.oauth_code() == Some("invalid_grant")
                    && self.settings.grant.mints_without_refresh_token() =>
            {
                // Providers expire refresh tokens routinely; a grant that needs none simply
                // starts over, once.
                tracing::info!(
                    grant = %self.settings.grant,
                    "refresh token rejected (invalid_grant); falling back to the primary grant"
                );
                self.primary_grant(req.call, req.scopes).await
            }
            other => other,
        }
    }

    async fn exchange_token(
        &self,
        call: &UpstreamCall,
        req: &TokenExchange,
    ) -> Result<ExchangedToken, ProviderError> {
        self.token_exchange(call, req).await
    }

    async fn revoke(
        &self,
        call: &UpstreamCall,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        let url = match &self.settings.revocation_url {
            Some(url) => url.clone(),
            None => match self.discovered(call).await? {
                Some(Discovered {
                    revocation_endpoint: Some(url),
                    ..
                }) => url.clone(),
                Some(_) => {
                    return Err(ProviderError::Unsupported(
                        "revocation: the issuer's metadata lists no usable revocation_endpoint; set `revocation_url`"
                            .into(),
                    ))
                }
                None => {
                    return Err(ProviderError::Unsupported(
                        "revocation: no `revocation_url` is configured".into(),
                    ))
                }
            },
        };
        let form = revocation_form(token, Some(hint.as_str()));
        self.authenticated(call, "revoke", form, url, |resp, call| {
            check_status("revoke", resp, call)
        })
        .await
    }

    async fn authorization_url(
        &self,
        call: &UpstreamCall,
        req: &AuthorizationRequest,
    ) -> Result<Url, ProviderError> {
        self.authorization_code_only()?;
        let mut url = match &self.settings.authorization_url {
            Some(url) => url.clone(),
            None => self
                .discovered(call)
                .await?
                .and_then(|d| d.authorization_endpoint.clone())
                .ok_or_else(|| {
                    ProviderError::config(
                        "the issuer's metadata lists no usable authorization_endpoint; set `authorization_url`",
                    )
                })?,
        };
        let scopes = self.effective_scopes(&req.scopes);
        {
            // Appended, so a query the provider's URL already has (e.g. a tenant) is kept.
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.settings.client.client_id)
                .append_pair(
                    "redirect_uri",
                    self.redirect_uri(&req.redirect_uri).as_str(),
                );
            if let Some((name, value)) = self.scope_param(scopes) {
                query.append_pair(&name, &value);
            }
            query.append_pair("state", &req.state);
            // OpenID Connect Core §11: a refresh token for offline_access is only issued
            // when consent was explicitly prompted for.
            if scopes.iter().any(|s| s == "offline_access") {
                query.append_pair("prompt", "consent");
            }
            if let (true, Some(challenge)) = (self.settings.pkce, &req.code_challenge) {
                query
                    .append_pair("code_challenge", challenge)
                    .append_pair("code_challenge_method", "S256");
            }
        }
        Ok(url)
    }

    async fn exchange_code(
        &self,
        call: &UpstreamCall,
        req: CodeExchange,
    ) -> Result<IssuedToken, ProviderError> {
        self.authorization_code_only()?;
        let verifier = req.code_verifier.as_ref().filter(|_| self.settings.pkce);
        let form =
            authorization_code_form(&req.code, self.redirect_uri(&req.redirect_uri), verifier);
        let resp = self.token_request(call, STEP_EXCHANGE, form).await?;
        Ok(self.issued(resp, &ScopeSet::default()))
    }

    /// RFC 8628 §3.1: the scopes (the caller's, else the defaults) and `extra_params`, with
    /// the client's authentication (public clients send `client_id`).
    async fn start_device_authorization(
        &self,
        call: &UpstreamCall,
        scopes: &ScopeSet,
    ) -> Result<DeviceAuthorization, ProviderError> {
        self.device_code_only()?;
        let url = self.device_authorization_endpoint(call).await?;
        let mut form: Vec<(String, String)> = self
            .scope_param(self.effective_scopes(scopes))
            .into_iter()
            .collect();
        form.extend(self.settings.extra_params.iter().cloned());
        self.authenticated(call, STEP_DEVICE_AUTHORIZATION, form, url, |resp, call| {
            parse_device_authorization(STEP_DEVICE_AUTHORIZATION, resp, call)
        })
        .await
    }

    /// RFC 8628 §3.4: one poll of the token endpoint.
    async fn poll_device_token(
        &self,
        call: &UpstreamCall,
        device_code: &Secret,
    ) -> Result<DevicePoll<IssuedToken>, ProviderError> {
        self.device_code_only()?;
        call.redactor().learn(device_code);
        let url = self.token_endpoint(call).await?;
        let mut form = device_token_form(device_code);
        form.extend(self.settings.extra_params.iter().cloned());
        let poll = self
            .authenticated(call, STEP_DEVICE_TOKEN, form, url, |resp, call| {
                parse_device_token_response(STEP_DEVICE_TOKEN, resp, call)
            })
            .await?;
        Ok(poll.map(|resp| self.issued(resp, &ScopeSet::default())))
    }
}

impl fmt::Debug for OAuth2Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let discovered = self.discovered.get().map(|d| {
            (
                SafeUrl(&d.token_endpoint),
                d.revocation_endpoint.as_ref().map(SafeUrl),
                d.authorization_endpoint.as_ref().map(SafeUrl),
                d.device_authorization_endpoint.as_ref().map(SafeUrl),
            )
        });
        f.debug_struct("OAuth2Provider")
            .field("settings", &self.settings)
            .field("discovered", &discovered)
            .finish()
    }
}

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
mod grant_tests;
#[cfg(test)]
mod tests;
