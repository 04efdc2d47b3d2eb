//! The generic OAuth 2.0 / OpenID Connect provider plugin (`provider = "oauth2"`):
//! any RFC 6749 token endpoint, configured by URL or discovered from an issuer.
//!
//! Grants: `client_credentials` (default), `password`, `refresh_token`,
//! `authorization_code` (3-legged, PKCE S256), `jwt_bearer` (RFC 7523 §2.1, also with a
//! Google-style service account key file) and `device_code` (RFC 8628: the gateway polls
//! while the user approves on another device). Client authentication: `basic`, `post` (with
//! an ordered list of secrets for rotation), `private_key_jwt` (RFC 7523 §2.2),
//! `tls_client_auth` / `self_signed_tls_client_auth` (RFC 8705, a client certificate on the
//! credential's own connections, at the issuer's mutual-TLS endpoint aliases) or `none`.
//! Refresh tokens are used whenever the gateway holds one; a rejected one falls back to the
//! primary grant when that grant needs none. Revocation follows RFC 7009.

mod discovery;
mod provider;
mod settings;

pub use provider::OAuth2Provider;
pub use settings::{Grant, OAuth2Settings, TokenEndpoint, KIND, SECRET_FIELDS};

authgate_plugin_sdk::provider_factory! {
    /// Builds [`OAuth2Provider`]s from `oauth2` credential settings.
    pub struct OAuth2Factory => OAuth2Provider {
        kind: KIND,
        secret_fields: SECRET_FIELDS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authgate_plugin_sdk::ProviderFactory;
    use serde_json::json;

    #[test]
    fn factory_names_kind_and_secret_fields() {
        assert_eq!(OAuth2Factory.kind(), "oauth2");
        assert_eq!(
            OAuth2Factory.secret_fields(),
            &[
                "client_secret",
                "client_secrets",
                "password",
                "refresh_token",
                "private_key",
                "service_account_key",
                "tls_client_key"
            ]
        );
    }

    #[test]
    fn factory_builds_and_validates() {
        let p = OAuth2Factory
            .build(json!({"token_url": "https://idp.example.com/token", "client_id": "c", "client_secret": "s"}))
            .unwrap();
        assert!(!p.requires_refresh_token());
        let e = OAuth2Factory
            .build(json!({"client_id": "c"}))
            .err()
            .expect("settings without token_url or issuer must be rejected");
        assert!(e.0.starts_with("oauth2 settings:"), "{e}");
    }
}
