//! What can go wrong when asking the broker for a token, in terms of what the caller
//! should do next. Mapped to gRPC status codes in exactly one place (`api::error`).

use crate::store::{CredentialStatus, StoreError};
use std::time::Duration;

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
    /// The caller's deadline passed; a fetch already sent continues and is cached.
    #[error("deadline exceeded while waiting for the provider; the token will be cached when it arrives, retry shortly")]
    DeadlineExceeded,
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        BrokerError::Unavailable {
            message: format!("{e}; retry shortly"),
            retry_after: Some(Duration::from_secs(1)),
        }
    }
}
