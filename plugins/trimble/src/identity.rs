//! The Trimble Identity OAuth 2.0 endpoints (token, authorize, revoke) as both Trimble
//! providers use them.
//!
//! Trimble's documents authenticate the application with HTTP Basic over the raw
//! `consumer_key:consumer_secret` string (seed 000 builds it with `base64.b64encode`), so this
//! module uses the SDK's `ClientCredentials::apply_raw_basic`, not the RFC 6749 §2.3.1
//! variant, which form-encodes both halves first. A public client (no secret, PKCE) sends
//! only `client_id` in the form instead.

use authgate_plugin_sdk::oauth::{
    authorization_code_form, check_status, refresh_token_form, request_token, revocation_form,
    ClientAuth, ClientCredentials, TokenResponse,
};
use authgate_plugin_sdk::settings::endpoint;
use authgate_plugin_sdk::{
    CodeExchange, ProviderError, ScopeSet, Secret, TokenTypeHint, UpstreamCall, UpstreamRequest,
};
use url::Url;

/// Production Trimble Identity.
pub const DEFAULT_IDENTITY_URL: &str = "https://id.trimble.com";

/// Where the operator finds the `client_id` of either Trimble provider.
pub(crate) const CLIENT_ID_HINT: &str = "the consumer key (client id) Trimble issued";

/// Event step names; each upstream call is recorded under one of these.
pub mod steps {
    /// Trimble Identity grant that yields the `id_token` (Connect exchange mode).
    pub const IDENTITY_TOKEN: &str = "identity_token";
    /// `POST {master}/auth/token` exchanging the `id_token` for a Connect token.
    pub const CONNECT_EXCHANGE: &str = "connect_exchange";
    /// `GET {master}/regions`.
    pub const REGIONS: &str = "regions";
    /// Refresh-token grant.
    pub const REFRESH: &str = "refresh";
    /// Revocation.
    pub const REVOKE: &str = "revoke";
    /// Authorization-code exchange.
    pub const AUTHORIZATION_CODE: &str = "authorization_code";
    /// Client-credentials grant (Trimble Ag).
    pub const CLIENT_CREDENTIALS: &str = "client_credentials";
}

/// The application's identity at a Trimble Identity token endpoint.
#[derive(Debug, Clone)]
pub(crate) struct IdentityClient {
    pub token_url: Url,
    pub client: ClientCredentials,
}

impl IdentityClient {
    /// HTTP Basic with the secret; a public (PKCE) client has none (`client_secret` is
    /// `None`) and sends only its `client_id` in the form.
    pub fn new(token_url: Url, client_id: String, client_secret: Option<Secret>) -> Self {
        Self {
            token_url,
            client: ClientCredentials {
                client_id,
                client_secret,
                auth: ClientAuth::Basic,
            },
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client.client_id
    }

    pub fn client_secret(&self) -> Option<&Secret> {
        self.client.client_secret.as_ref()
    }

    /// A token-endpoint POST with the form and the client's authentication.
    pub fn token_request(&self, form: Vec<(String, String)>) -> UpstreamRequest {
        self.authenticated(self.token_url.clone(), form)
    }

    fn authenticated(&self, url: Url, form: Vec<(String, String)>) -> UpstreamRequest {
        self.client.apply_raw_basic(form, url)
    }

    /// Refresh-token grant. `scope` narrows the token when the caller asked for less.
    pub async fn refresh(
        &self,
        call: &UpstreamCall,
        refresh_token: &Secret,
        scope: Option<&ScopeSet>,
    ) -> Result<TokenResponse, ProviderError> {
        let mut form = refresh_token_form(refresh_token);
        if let Some(s) = scope.filter(|s| !s.is_empty()) {
            form.push(("scope".into(), s.join(" ")));
        }
        request_token(call, steps::REFRESH, self.token_request(form)).await
    }

    /// Authorization-code grant (RFC 6749 §4.1.3, with the PKCE verifier when there is one).
    pub async fn exchange_code(
        &self,
        call: &UpstreamCall,
        exchange: &CodeExchange,
    ) -> Result<TokenResponse, ProviderError> {
        let form = authorization_code_form(
            &exchange.code,
            &exchange.redirect_uri,
            exchange.code_verifier.as_ref(),
        );
        request_token(call, steps::AUTHORIZATION_CODE, self.token_request(form)).await
    }

    /// RFC 7009 revocation at `url`.
    pub async fn revoke(
        &self,
        call: &UpstreamCall,
        url: &Url,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        let form = revocation_form(token, Some(hint.as_str()));
        let resp = call
            .send(steps::REVOKE, self.authenticated(url.clone(), form))
            .await?;
        check_status(steps::REVOKE, &resp, call)
    }
}

/// The three Trimble Identity endpoints under one base URL.
#[derive(Debug, Clone)]
pub(crate) struct IdentityEndpoints {
    pub token: Url,
    pub authorize: Url,
    pub revoke: Url,
}

impl IdentityEndpoints {
    pub fn under(base: &Url) -> Self {
        Self {
            token: endpoint(base, &["oauth", "token"]),
            authorize: endpoint(base, &["oauth", "authorize"]),
            revoke: endpoint(base, &["oauth", "revoke"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_hang_under_the_identity_base() {
        let e = IdentityEndpoints::under(&Url::parse(DEFAULT_IDENTITY_URL).unwrap());
        assert_eq!(e.token.as_str(), "https://id.trimble.com/oauth/token");
        assert_eq!(
            e.authorize.as_str(),
            "https://id.trimble.com/oauth/authorize"
        );
        assert_eq!(e.revoke.as_str(), "https://id.trimble.com/oauth/revoke");
    }
}
