//! The contract between authgate and its provider plugins.
//!
//! A plugin knows one provider's grant flow and nothing else: it never touches the cache,
//! the store or the network directly. It receives an [`UpstreamCall`] (the only way out to
//! the provider, which records, redacts and bounds every request) and returns an
//! [`IssuedToken`] or a classified [`ProviderError`].

pub mod error;
pub mod http;
pub mod jwt;
pub mod oauth;
pub mod provider;
pub mod redact;
pub mod secret;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{ProviderError, RejectKind};
pub use http::{
    EventSink, MemorySink, RequestBody, UpstreamCall, UpstreamClient, UpstreamEvent,
    UpstreamLimits, UpstreamRequest, UpstreamResponse,
};
pub use provider::{
    AuthorizationRequest, Capabilities, CodeExchange, FetchRequest, IssuedToken, Provider,
    ProviderFactory, ScopeSet, TokenTypeHint,
};
pub use redact::Redactor;
pub use secret::Secret;
pub use settings::{decode_and_validate, decode_settings, parse_url_setting, SettingsError};

/// Not public API: what [`provider_factory!`] expands to needs.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}
