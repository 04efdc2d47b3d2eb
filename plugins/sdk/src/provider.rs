//! The provider trait, the top of the SDK: its capabilities, what a fetch receives and
//! returns, and the factory that builds providers from settings.
//!
//! A plugin is built once per credential from that credential's settings, which it decodes
//! into its own typed struct (unknown fields rejected) and validates up front (see
//! [`crate::settings`]); [`provider_factory!`](crate::provider_factory) declares the
//! factory that does so. The core
//! ability is [`Provider::fetch`]; revocation, the authorization-code flow and the device
//! authorization grant are optional
//! and announced through [`Capabilities`].

// Part of the provider contract, so `provider::` paths to them stay valid.
pub use crate::authcode::{AuthorizationRequest, CodeExchange};
pub use crate::exchange::TokenExchange;
pub use crate::scope::ScopeSet;

use crate::device::{DeviceAuthorization, DevicePoll};
use crate::error::ProviderError;
use crate::http::UpstreamCall;
use crate::oauth::TokenResponse;
use crate::secret::Secret;
use crate::settings::SettingsError;
use crate::tls::ClientTls;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// What a provider supports beyond fetching a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Upstream revocation (RFC 7009 or the vendor's equivalent).
    pub revoke: bool,
    /// The authorization-code (3-legged) flow.
    pub authorization_code: bool,
    /// PKCE S256 for the authorization-code flow.
    pub pkce: bool,
    /// The provider issues refresh tokens.
    pub refresh_token: bool,
    /// RFC 8693 token exchange ([`Provider::exchange_token`]) is enabled.
    pub token_exchange: bool,
    /// The device authorization grant (RFC 8628): the user approves on another device.
    pub device_code: bool,
}

/// Which kind of token is being revoked (RFC 7009 `token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    AccessToken,
    RefreshToken,
}

impl TokenTypeHint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// A request for a token.
pub struct FetchRequest<'a> {
    /// The scopes to ask for; empty means the credential's default.
    pub scopes: &'a ScopeSet,
    /// The current refresh token (the latest rotated one), when the credential has one.
    pub refresh_token: Option<&'a Secret>,
    /// The only way to reach the provider.
    pub call: &'a UpstreamCall,
}

/// A token as the provider issued it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: Secret,
    pub token_type: String,
    /// Lifetime relative to receipt.
    pub expires_in: Option<Duration>,
    /// Absolute expiry (seconds since the epoch), when only that is known (JWT `exp`).
    pub expires_at_unix: Option<u64>,
    /// Granted scopes, when the provider said.
    pub scopes: Option<Vec<String>>,
    /// A new refresh token: first one, or rotated. `None` keeps the current one.
    pub refresh_token: Option<Secret>,
    /// Facts the caller needs (e.g. regional base URLs). Never secret.
    pub metadata: BTreeMap<String, String>,
}

impl IssuedToken {
    /// From an RFC 6749 response: lifetime from `expires_in`, else the JWT's `exp`, else
    /// `default_lifetime`.
    pub fn from_response(resp: TokenResponse, default_lifetime: Duration) -> Self {
        let (expires_in, expires_at_unix) = match resp.expires_in {
            Some(d) => (Some(d), None),
            None => match crate::jwt::expiry(resp.access_token.expose()) {
                Some(exp) => (None, Some(exp)),
                None => (Some(default_lifetime), None),
            },
        };
        Self {
            access_token: resp.access_token,
            token_type: resp.token_type,
            expires_in,
            expires_at_unix,
            scopes: resp.scope,
            refresh_token: resp.refresh_token,
            metadata: BTreeMap::new(),
        }
    }
}

/// A token obtained by token exchange (RFC 8693): the issued token, whose refresh token is
/// always `None` (one in the answer belongs to the user's exchange, not to the credential),
/// and its type (`issued_token_type`).
#[derive(Debug, Clone)]
pub struct ExchangedToken {
    pub token: IssuedToken,
    pub issued_token_type: String,
}

/// One provider, bound to one credential's settings.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;

    /// Scopes to request when the caller names none.
    fn default_scopes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Every secret in the settings, so the redactor can scrub them wherever they appear.
    fn secrets(&self) -> Vec<Secret>;

    /// A refresh token given in the settings (the starting point of a refresh-token grant).
    fn configured_refresh_token(&self) -> Option<Secret> {
        None
    }

    /// True when the credential cannot get a token without a refresh token (pure
    /// refresh-token or authorization-code credentials).
    fn requires_refresh_token(&self) -> bool {
        false
    }

    /// Obtains a token: with the refresh token when there is one, otherwise the primary grant.
    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError>;

    /// Revokes a token upstream.
    async fn revoke(
        &self,
        _call: &UpstreamCall,
        _token: &Secret,
        _hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("revocation".into()))
    }

    /// The provider's authorization URL for the 3-legged flow.
    async fn authorization_url(
        &self,
        _call: &UpstreamCall,
        _req: &AuthorizationRequest,
    ) -> Result<Url, ProviderError> {
        Err(ProviderError::Unsupported("authorization code flow".into()))
    }

    /// Exchanges an authorization code (once; never retried automatically).
    async fn exchange_code(
        &self,
        _call: &UpstreamCall,
        _req: CodeExchange,
    ) -> Result<IssuedToken, ProviderError> {
        Err(ProviderError::Unsupported("authorization code flow".into()))
    }

    /// Exchanges a caller's token for one issued to this credential's client (RFC 8693),
    /// authenticated as the credential. The gateway has registered the request's tokens
    /// with the call's redactor before this is called.
    async fn exchange_token(
        &self,
        _call: &UpstreamCall,
        _req: &TokenExchange,
    ) -> Result<ExchangedToken, ProviderError> {
        Err(ProviderError::Unsupported(
            "token exchange (RFC 8693) is not offered by this provider plugin; use an `oauth2` credential with token_exchange = true".into(),
        ))
    }

    /// Starts the device authorization grant (RFC 8628 §3.1): the user code and where the
    /// user enters it. `scopes` empty means the credential's defaults.
    async fn start_device_authorization(
        &self,
        _call: &UpstreamCall,
        _scopes: &ScopeSet,
    ) -> Result<DeviceAuthorization, ProviderError> {
        Err(ProviderError::Unsupported(
            "device authorization grant".into(),
        ))
    }

    /// One device access token request (RFC 8628 §3.4). The gateway polls, honouring the
    /// interval and `slow_down`; `access_denied` and `expired_token` come back as
    /// [`ProviderError::Rejected`] (see [`crate::device::is_denied`]).
    async fn poll_device_token(
        &self,
        _call: &UpstreamCall,
        _device_code: &Secret,
    ) -> Result<DevicePoll<IssuedToken>, ProviderError> {
        Err(ProviderError::Unsupported(
            "device authorization grant".into(),
        ))
    }

    /// How long an unused refresh token stays valid, when the provider documents it
    /// (Trimble Ag: 9 days, Autodesk APS: 14 days); the gateway keeps it alive.
    fn refresh_token_idle_lifetime(&self) -> Option<Duration> {
        None
    }

    /// The credential's own TLS settings (a client certificate for RFC 8705 mutual-TLS
    /// client authentication, CA certificates to trust), when it has any. The gateway then
    /// builds the credential's own connection pools once, with the same limits and egress
    /// policy as the shared ones, and every [`UpstreamCall`] of the credential uses them.
    fn client_tls(&self) -> Option<&ClientTls> {
        None
    }
}

/// Builds providers of one kind from credential settings.
pub trait ProviderFactory: Send + Sync {
    /// The config name, e.g. `oauth2`, `trimble_connect`.
    fn kind(&self) -> &'static str;

    /// Settings fields holding secrets: the config file must give them as `${env:..}` or
    /// `${file:..}` references, never inline.
    fn secret_fields(&self) -> &'static [&'static str];

    fn build(&self, settings: serde_json::Value) -> Result<Arc<dyn Provider>, SettingsError>;

    /// Builds the provider the gateway holds for a credential: where building needs I/O
    /// (an out-of-process plugin checks the settings and tells the credential's facts over
    /// its socket) the factory overrides this, and [`ProviderFactory::build`] is then only
    /// the checks that need none. The default is [`ProviderFactory::build`].
    fn build_async(&self, settings: serde_json::Value) -> BuildFuture<'_> {
        let built = self.build(settings);
        Box::pin(std::future::ready(built))
    }
}

/// What [`ProviderFactory::build_async`] returns.
pub type BuildFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Arc<dyn Provider>, SettingsError>> + Send + 'a>,
>;

/// Declares a unit-struct [`ProviderFactory`] for a provider type that has
/// `fn from_settings(serde_json::Value) -> Result<Self, SettingsError>`: `kind` and
/// `secret_fields` return the given constants, `build` calls `from_settings`.
///
/// ```
/// # use authgate_plugin_sdk::{Capabilities, FetchRequest, IssuedToken, Provider, ProviderError, Secret, SettingsError};
/// # struct EchoProvider;
/// # #[async_trait::async_trait]
/// # impl Provider for EchoProvider {
/// #     fn capabilities(&self) -> Capabilities { Capabilities::default() }
/// #     fn secrets(&self) -> Vec<Secret> { Vec::new() }
/// #     async fn fetch(&self, _: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
/// #         Err(ProviderError::config("no token"))
/// #     }
/// # }
/// impl EchoProvider {
///     pub fn from_settings(_settings: serde_json::Value) -> Result<Self, SettingsError> {
///         Ok(Self)
///     }
/// }
///
/// authgate_plugin_sdk::provider_factory! {
///     /// Builds [`EchoProvider`]s for `provider = "echo"`.
///     pub struct EchoFactory => EchoProvider {
///         kind: "echo",
///         secret_fields: &["client_secret"],
///     }
/// }
///
/// use authgate_plugin_sdk::ProviderFactory;
/// assert_eq!(EchoFactory.kind(), "echo");
/// assert!(EchoFactory.build(serde_json::json!({})).is_ok());
/// ```
#[macro_export]
macro_rules! provider_factory {
    (
        $(#[$attr:meta])*
        $vis:vis struct $factory:ident => $provider:ty {
            kind: $kind:expr,
            secret_fields: $secret_fields:expr $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Default, Clone, Copy)]
        $vis struct $factory;

        impl $crate::ProviderFactory for $factory {
            fn kind(&self) -> &'static str {
                $kind
            }

            fn secret_fields(&self) -> &'static [&'static str] {
                $secret_fields
            }

            fn build(
                &self,
                settings: $crate::__private::serde_json::Value,
            ) -> ::std::result::Result<
                ::std::sync::Arc<dyn $crate::Provider>,
                $crate::SettingsError,
            > {
                ::std::result::Result::Ok(::std::sync::Arc::new(<$provider>::from_settings(
                    settings,
                )?))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_falls_back_to_jwt_then_default() {
        let base = TokenResponse {
            access_token: Secret::from("opaque"),
            token_type: "Bearer".into(),
            expires_in: None,
            refresh_token: None,
            scope: None,
            id_token: None,
            extra: Default::default(),
        };
        let t = IssuedToken::from_response(base.clone(), Duration::from_secs(99));
        assert_eq!(t.expires_in, Some(Duration::from_secs(99)));
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = format!("{}.{}.s", e.encode("{}"), e.encode(r#"{"exp":2000000000}"#));
        let t = IssuedToken::from_response(
            TokenResponse {
                access_token: Secret::from(jwt),
                ..base
            },
            Duration::from_secs(99),
        );
        assert_eq!(t.expires_at_unix, Some(2_000_000_000));
        assert_eq!(t.expires_in, None);
    }
}
