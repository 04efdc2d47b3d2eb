//! `Debug` for the settings, written out by hand so a field added later cannot print a
//! secret by accident: each field is chosen here, secrets only as `Secret` (which prints
//! `[redacted]`).

use super::{OAuth2Settings, TokenEndpoint};
use authgate_plugin_sdk::redact::is_secret_field;
use std::fmt;
use url::Url;

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

impl fmt::Debug for OAuth2Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Settings")
            .field("endpoint", &self.endpoint)
            .field("grant", &self.grant)
            .field("client_id", &self.client.client_id)
            .field("client_secret", &self.client.client_secret)
            .field("client_secrets", &self.client_secrets)
            .field("client_auth", &self.client.auth)
            .field("client_auth_method", &self.authn.method())
            .field("authn", &self.authn)
            .field("jwt", &self.jwt)
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
            .field("token_exchange", &self.token_exchange)
            // Subjects of the certificates only; the key prints as `[redacted]`.
            .field("tls", &self.tls)
            .field("tls_client_key", &self.tls_key)
            .field(
                "device_authorization_url",
                &self.device_authorization_url.as_ref().map(SafeUrl),
            )
            .finish()
    }
}
