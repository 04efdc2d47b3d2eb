//! The contract between authgate and its provider plugins.
//!
//! A plugin knows one provider's grant flow and nothing else: it never touches the cache,
//! the store or the network directly. It receives an [`UpstreamCall`] (the only way out to
//! the provider, which records, redacts and bounds every request) and returns an
//! [`IssuedToken`] or a classified [`ProviderError`].
//!
//! The modules are layered, each importing only from those below it, so the graph stays
//! acyclic: [`secret`], [`error`], [`scope`], [`jwt`] and `clock` (the SDK's one clock
//! read) import nothing from the crate; [`redact`], [`settings`] and [`authcode`] (the
//! authorization-code flow's requests) build on them, [`signing`] (private keys, JWS) on
//! [`settings`], [`tls`] (a credential's client certificate and trusted CAs) on
//! [`settings`], and [`egress`] (which addresses a call may reach) stands alone; [`http`],
//! the upstream client, on [`redact`], [`egress`], [`tls`] and `clock`; [`assertion`] (RFC 7523 JWT
//! assertions) on [`signing`] and [`http`]; [`oauth`], the RFC 6749 wire format, on
//! [`http`]; [`exchange`], the RFC 8693 token exchange wire format, and [`device`], the
//! RFC 8628 device authorization grant's wire format, on [`oauth`]; and
//! [`provider`], the plugin trait, sits on top. `testing` may use them all. Shared
//! vocabulary belongs in the lowest module that can hold it.

pub mod assertion;
pub mod authcode;
mod clock;
pub mod device;
pub mod egress;
pub mod error;
pub mod exchange;
pub mod http;
pub mod jwt;
pub mod oauth;
pub mod provider;
pub mod redact;
pub mod scope;
pub mod secret;
pub mod settings;
pub mod signing;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use authcode::{AuthorizationRequest, CodeExchange};
pub use device::{DeviceAuthorization, DevicePoll};
pub use egress::{Egress, EgressDenied, EgressPolicy};
pub use error::{ProviderError, RejectKind};
pub use exchange::TokenExchange;
pub use http::{
    EventSink, MemorySink, RequestBody, UpstreamCall, UpstreamClient, UpstreamEvent,
    UpstreamLimits, UpstreamRequest, UpstreamResponse,
};
pub use provider::{
    BuildFuture, Capabilities, ExchangedToken, FetchRequest, IssuedToken, Provider,
    ProviderFactory, TokenTypeHint,
};
pub use redact::Redactor;
pub use scope::ScopeSet;
pub use secret::Secret;
pub use settings::{decode_and_validate, decode_settings, parse_url_setting, SettingsError};
pub use signing::SigningKey;
pub use tls::{ClientIdentity, ClientTls};

/// Not public API: what [`provider_factory!`] expands to needs.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}
