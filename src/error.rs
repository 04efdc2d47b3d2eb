//! The domain error: what can go wrong when asking for a token or changing a credential,
//! in terms of what the caller should do next. Mapped to gRPC status codes in exactly one
//! place (`api::error`).

use crate::credentials::CredentialRuntime;
use crate::store::secrets::SecretError;
use crate::store::{CredentialStatus, StoreError};
use authgate_plugin_sdk::{ProviderError, RejectKind};
use std::sync::Arc;
use std::time::Duration;

/// How long a caller is told to wait after the store could not be reached.
pub const STORE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such credential for this tenant.
    #[error("credential `{credential}` does not exist for tenant `{tenant}`; check the id or create it first")]
    NotFound { tenant: String, credential: String },
    /// The credential cannot issue tokens in its current state.
    #[error("{message}")]
    NotActive {
        status: CredentialStatus,
        message: String,
    },
    /// The provider refused the credential; it is now INVALID.
    #[error("{0}")]
    Rejected(String),
    /// The credential's configuration does not work with the provider.
    #[error("{0}")]
    Misconfigured(String),
    /// Provider or store is temporarily unavailable; retry later.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A per-credential bound was reached (e.g. how many scope sets it may cache).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The credential's upstream request budget is spent; a token can be fetched again
    /// after `retry_after`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// The request is outside what the credential's policy allows (e.g. a scope not in
    /// `settings.gateway.allowed_scopes`).
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller's deadline passed; a fetch already sent continues and is cached.
    #[error("deadline exceeded while waiting for the provider; the token will be cached when it arrives, retry shortly")]
    DeadlineExceeded,
    /// A bug or corrupt data (a stored row that does not decode, a secret that does not
    /// decrypt): neither the caller nor a retry can fix it. The details, with the source
    /// error, go to the server log, not to the caller.
    #[error("internal error ({what}); the server log has the details")]
    Internal {
        what: &'static str,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl BrokerError {
    pub fn internal(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            what,
            source: Arc::new(source),
        }
    }

    pub fn not_found(tenant: &str, credential: &str) -> Self {
        Self::NotFound {
            tenant: tenant.to_owned(),
            credential: credential.to_owned(),
        }
    }

    /// What a provider failure means for the caller. Transient failures become UNAVAILABLE
    /// with the provider's Retry-After when it sent one (the refresh path replaces that with
    /// its backoff delay); a rejection of the credential itself is handled by marking it
    /// INVALID before this is reached.
    pub fn from_provider(e: &ProviderError, cred: &CredentialRuntime) -> Self {
        match e {
            ProviderError::Rejected {
                kind: RejectKind::Scope,
                ..
            } => Self::InvalidArgument(format!(
                "{e}; request only scopes the credential `{}` is allowed",
                cred.id
            )),
            ProviderError::Rejected {
                kind: RejectKind::Subject,
                ..
            } => Self::InvalidArgument(format!(
                "subject_token: {e}; the provider refused the token exchanged (or the actor token): pass a valid, unexpired token of the type named in subject_token_type"
            )),
            ProviderError::Rejected {
                kind: RejectKind::Target,
                ..
            } => Self::InvalidArgument(format!(
                "audience: {e}; ask only for audiences and resources the provider allows credential `{}`",
                cred.id
            )),
            ProviderError::Rejected { .. }
            | ProviderError::InvalidConfiguration(_)
            | ProviderError::Unsupported(_) => Self::Misconfigured(format!(
                "{e}; check the settings of credential `{}` of tenant `{}`",
                cred.id, cred.tenant
            )),
            ProviderError::Transient { .. } | ProviderError::TimedOut { .. } => Self::Unavailable {
                message: format!("provider unavailable: {e}; retry later"),
                retry_after: e.retry_after(),
            },
        }
    }
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => BrokerError::Unavailable {
                message: format!("{e}; retry shortly"),
                retry_after: Some(STORE_RETRY),
            },
            StoreError::Data(_) | StoreError::Migration(_) => {
                BrokerError::internal("stored data does not decode", e)
            }
        }
    }
}

impl From<SecretError> for BrokerError {
    fn from(e: SecretError) -> Self {
        BrokerError::internal("a stored secret cannot be opened", e)
    }
}
