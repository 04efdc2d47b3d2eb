//! The few error categories a plugin can report, each saying what the caller should do.

use std::time::Duration;

/// Why the provider refused, which decides what happens to the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// The credential itself is bad (`invalid_grant`, `invalid_client`,
    /// `unauthorized_client`): it is marked INVALID until someone fixes it.
    Credential,
    /// The requested scope is not allowed (`invalid_scope`): the caller's request is wrong,
    /// the credential stays usable.
    Scope,
    /// The provider refused the request shape (`invalid_request`, `unsupported_grant_type`,
    /// other 4xx): a configuration problem, not retried, credential left as it is.
    Request,
    /// A token exchange's subject or actor token is refused (RFC 8693 `invalid_request`,
    /// `invalid_grant`): the caller's token is bad, the credential stays usable.
    Subject,
    /// A token exchange's `audience` or `resource` is refused (`invalid_target`): the
    /// caller's request is wrong, the credential stays usable.
    Target,
}

/// A plugin failure. Messages never contain secrets: upstream text passes through the
/// [`crate::Redactor`] before it lands here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The credential's settings are wrong; names the field and what to put there.
    #[error("invalid provider settings: {0}")]
    InvalidConfiguration(String),

    /// The provider answered with a definite refusal (RFC 6749 §5.2 or equivalent).
    #[error("{step}: provider rejected the request ({code}){}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        kind: RejectKind,
        step: String,
        code: String,
        description: Option<String>,
    },

    /// A failure that may go away by itself: connection errors, 5xx, 429, malformed or
    /// truncated bodies, a success response without a token. Retried with backoff.
    #[error("{step}: {message}")]
    Transient {
        step: String,
        message: String,
        retry_after: Option<Duration>,
    },

    /// The provider did not answer within the configured timeout.
    #[error("{step}: provider did not answer within {after:?}")]
    TimedOut { step: String, after: Duration },

    /// The plugin does not support what was asked (e.g. revocation).
    #[error("not supported by this provider: {0}")]
    Unsupported(String),
}

impl ProviderError {
    pub fn transient(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Transient {
            step: step.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::InvalidConfiguration(message.into())
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::TimedOut { .. })
    }

    /// True when the provider says the credential itself is no longer good.
    pub fn rejects_credential(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                kind: RejectKind::Credential,
                ..
            }
        )
    }

    /// The OAuth error code when the provider sent one.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }

    /// How long the provider asked us to wait (HTTP `Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
