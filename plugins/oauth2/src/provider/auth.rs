//! Client authentication on every token-endpoint and revocation request, client-secret
//! rotation, and the JWT bearer grant's assertion. With a client certificate (RFC 8705) the
//! TLS connection itself authenticates: the credential's own connection pools present it,
//! and the form carries `client_id` only.

use super::OAuth2Provider;
use crate::settings::{Audience, Authn, ScopeIn, TokenEndpoint};
use authgate_plugin_sdk::assertion::{sign_assertion, AssertionClaims};
use authgate_plugin_sdk::oauth::ClientCredentials;
use authgate_plugin_sdk::{
    ProviderError, ScopeSet, UpstreamCall, UpstreamRequest, UpstreamResponse,
};
use std::sync::atomic::Ordering;
use url::Url;

/// The OAuth error that says the client's own authentication failed (RFC 6749 §5.2).
const INVALID_CLIENT: &str = "invalid_client";

impl OAuth2Provider {
    /// The `aud` of assertions: the token endpoint, the issuer, or the configured value.
    pub(super) async fn assertion_audience(
        &self,
        call: &UpstreamCall,
    ) -> Result<String, ProviderError> {
        match (&self.settings.jwt.audience, &self.settings.endpoint) {
            (Audience::Value(v), _) => Ok(v.clone()),
            (Audience::Issuer, TokenEndpoint::Issuer(issuer)) => Ok(issuer.clone()),
            // Settings validation refuses "issuer" without `issuer`; the token endpoint is
            // the RFC 7523 default either way.
            _ => Ok(self.token_endpoint(call).await?.to_string()),
        }
    }

    /// Sends `form` to `url` with the client's authentication and parses the answer with
    /// `parse`. With several client secrets, an `invalid_client` answer tries the next one
    /// (starting from the one that last worked); the one that works is remembered and an
    /// event names it by its position, never its value.
    pub(super) async fn authenticated<T>(
        &self,
        call: &UpstreamCall,
        step: &str,
        form: Vec<(String, String)>,
        url: Url,
        parse: impl Fn(&UpstreamResponse, &UpstreamCall) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let client = &self.settings.client;
        if self.settings.has_client_certificate() && url.scheme() != "https" {
            return Err(ProviderError::config(format!(
                "{step}: the endpoint {}://{}{} is not https, so the client certificate cannot be presented; use the provider's https endpoint (`token_url`, `revocation_url`, or an `issuer` whose metadata lists https endpoints or mtls_endpoint_aliases)",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.path()
            )));
        }
        if let Authn::PrivateKeyJwt(assertion) = &self.settings.authn {
            let audience = self.assertion_audience(call).await?;
            let mut form = form;
            // The assertion fields include `client_id` (RFC 7523 §3 allows it).
            form.extend(assertion.form_fields(call, &audience)?);
            let resp = call
                .send(step, UpstreamRequest::post_form(url, form))
                .await?;
            return parse(&resp, call);
        }
        let secrets = &self.settings.client_secrets;
        if secrets.len() <= 1 {
            let resp = call.send(step, client.apply(form, url)).await?;
            return parse(&resp, call);
        }
        let start = self.active_secret.load(Ordering::Relaxed) % secrets.len();
        let mut first_rejection = None;
        for offset in 0..secrets.len() {
            let index = (start + offset) % secrets.len();
            let candidate = ClientCredentials {
                client_secret: Some(secrets[index].clone()),
                ..client.clone()
            };
            let resp = call
                .send(step, candidate.apply(form.clone(), url.clone()))
                .await?;
            match parse(&resp, call) {
                Err(e) if e.oauth_code() == Some(INVALID_CLIENT) => {
                    first_rejection.get_or_insert(e);
                }
                Ok(value) => {
                    if index != start {
                        self.secret_switched(call, start, index).await;
                    }
                    return Ok(value);
                }
                Err(e) => return Err(e),
            }
        }
        call.notice(&format!(
            "none of the {} client secrets was accepted (invalid_client); put a valid one in `client_secret` or `client_secrets`",
            secrets.len()
        ))
        .await;
        Err(first_rejection.unwrap_or_else(|| {
            ProviderError::config("no client secret was tried; set `client_secret`")
        }))
    }

    async fn secret_switched(&self, call: &UpstreamCall, from: usize, to: usize) {
        // Only an accepted secret moves the pointer; a racing request that found the same
        // one stores the same index.
        self.active_secret.store(to, Ordering::Relaxed);
        let n = self.settings.client_secrets.len();
        tracing::info!(
            accepted = to + 1,
            rejected = from + 1,
            of = n,
            "client secret rotation: another client secret was accepted"
        );
        call.notice(&format!(
            "client secret #{} of {n} was rejected (invalid_client) and #{} was accepted; authgate uses #{} from now on (numbered in order: `client_secret`, then `client_secrets`). Once the provider no longer needs #{}, remove it",
            from + 1,
            to + 1,
            to + 1,
            from + 1,
        ))
        .await;
    }

    /// The form of the JWT bearer grant (RFC 7523 §2.1): a freshly signed assertion, and the
    /// scopes as a parameter or a claim.
    pub(super) async fn jwt_bearer_form(
        &self,
        call: &UpstreamCall,
        scopes: &ScopeSet,
    ) -> Result<Vec<(String, String)>, ProviderError> {
        let jwt = &self.settings.jwt;
        let key = jwt.key.as_ref().ok_or_else(|| {
            // Settings validation requires a key for this grant.
            ProviderError::config(r#"grant = "jwt_bearer" needs `private_key`"#)
        })?;
        let audience = self.assertion_audience(call).await?;
        let mut extra = jwt.claims.clone();
        let scope_claim = jwt.scope_in == ScopeIn::Claim;
        if scope_claim && !scopes.is_empty() {
            extra.insert(
                "scope".into(),
                scopes.join(&self.settings.scope_separator).into(),
            );
        }
        let assertion = sign_assertion(
            call,
            key,
            &AssertionClaims {
                issuer: &jwt.issuer,
                subject: jwt.subject.as_deref(),
                audience: &audience,
                lifetime: jwt.lifetime,
                extra: &extra,
            },
        )?;
        let mut form = vec![
            (
                "grant_type".to_owned(),
                self.settings.grant.wire_name().to_owned(),
            ),
            ("assertion".to_owned(), assertion.expose().to_owned()),
        ];
        if !scope_claim {
            form.extend(self.scope_param(scopes));
        }
        Ok(form)
    }
}
