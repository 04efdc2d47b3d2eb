//! The Trimble Identity OAuth 2.0 endpoints (token, authorize, revoke) as both Trimble
//! providers use them.
//!
//! Trimble's documents authenticate the application with HTTP Basic over the raw
//! `consumer_key:consumer_secret` string (seed 000 builds it with `base64.b64encode`), so this
//! module does not use the SDK's RFC 6749 §2.3.1 variant, which form-encodes both halves
//! first. A public client (no secret, PKCE) sends only `client_id` in the form instead.

use crate::common::endpoint;
use authgate_plugin_sdk::oauth::{check_status, request_token, TokenResponse};
use authgate_plugin_sdk::{
    AuthorizationRequest, CodeExchange, ProviderError, ScopeSet, Secret, TokenTypeHint,
    UpstreamCall, UpstreamRequest,
};
use url::Url;

/// Production Trimble Identity.
pub const DEFAULT_IDENTITY_URL: &str = "https://id.trimble.com";

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
    pub client_id: String,
    /// `None` for a public (PKCE) client.
    pub client_secret: Option<Secret>,
}

impl IdentityClient {
    /// A token-endpoint POST with the form and the client's authentication.
    pub fn token_request(&self, form: Vec<(String, String)>) -> UpstreamRequest {
        self.authenticated(self.token_url.clone(), form)
    }

    fn authenticated(&self, url: Url, mut form: Vec<(String, String)>) -> UpstreamRequest {
        match &self.client_secret {
            Some(secret) => {
                UpstreamRequest::post_form(url, form).basic_auth(&self.client_id, secret)
            }
            None => {
                form.push(("client_id".into(), self.client_id.clone()));
                UpstreamRequest::post_form(url, form)
            }
        }
    }

    /// Refresh-token grant. `scope` narrows the token when the caller asked for less.
    pub async fn refresh(
        &self,
        call: &UpstreamCall,
        refresh_token: &Secret,
        scope: Option<&ScopeSet>,
    ) -> Result<TokenResponse, ProviderError> {
        let mut form = vec![
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            (
                "refresh_token".to_owned(),
                refresh_token.expose().to_owned(),
            ),
        ];
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
        let mut form = vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), exchange.code.expose().to_owned()),
            ("redirect_uri".to_owned(), exchange.redirect_uri.to_string()),
        ];
        if let Some(v) = &exchange.code_verifier {
            form.push(("code_verifier".into(), v.expose().to_owned()));
        }
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
        let form = vec![
            ("token".to_owned(), token.expose().to_owned()),
            ("token_type_hint".to_owned(), hint.as_str().to_owned()),
        ];
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

/// The consent URL for the authorization-code flow (PKCE S256 when the gateway sent a
/// challenge).
pub(crate) fn authorize_url(
    authorize: &Url,
    client_id: &str,
    scopes: &ScopeSet,
    req: &AuthorizationRequest,
) -> Url {
    let mut url = authorize.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", req.redirect_uri.as_str())
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &req.state);
        if let Some(challenge) = &req.code_challenge {
            q.append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
        }
    }
    url
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

    #[test]
    fn authorize_url_carries_pkce_and_state() {
        let req = AuthorizationRequest {
            scopes: ScopeSet::new(["openid"]),
            state: "st-1".into(),
            code_challenge: Some("ch".into()),
            redirect_uri: Url::parse("https://gw.example.com/oauth/callback").unwrap(),
        };
        let url = authorize_url(
            &Url::parse("https://id.trimble.com/oauth/authorize").unwrap(),
            "key",
            &ScopeSet::new(["openid app"]),
            &req,
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("scope"), Some("app openid"));
        assert_eq!(get("state"), Some("st-1"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert_eq!(
            get("redirect_uri"),
            Some("https://gw.example.com/oauth/callback")
        );
    }
}
