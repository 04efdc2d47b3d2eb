//! The authorization-code (3-legged) flow's requests: what the gateway needs to send a
//! user to the provider's consent page, and the callback's result to exchange for tokens.

use crate::scope::ScopeSet;
use crate::secret::Secret;
use url::Url;

/// What the gateway needs to send a user to the provider's consent page.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub scopes: ScopeSet,
    pub state: String,
    /// `code_challenge` for PKCE S256, when used.
    pub code_challenge: Option<String>,
    pub redirect_uri: Url,
}

/// The callback's result, to be exchanged for tokens.
#[derive(Debug, Clone)]
pub struct CodeExchange {
    pub code: Secret,
    pub code_verifier: Option<Secret>,
    pub redirect_uri: Url,
}
