//! The one mapping from domain errors to gRPC status codes (the table in ARCHITECTURE.md).

use crate::broker::BrokerError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match e {
            BrokerError::InvalidArgument(_) => Status::invalid_argument(message),
            BrokerError::NotFound { .. } => Status::not_found(message),
            BrokerError::NotActive { .. }
            | BrokerError::Rejected(_)
            | BrokerError::Misconfigured(_) => Status::failed_precondition(message),
            BrokerError::Unavailable { retry_after, .. } => match retry_after {
                Some(delay) => Status::with_error_details(
                    Code::Unavailable,
                    message,
                    ErrorDetails::with_retry_info(Some(delay)),
                ),
                None => Status::unavailable(message),
            },
            BrokerError::DeadlineExceeded => Status::deadline_exceeded(message),
            BrokerError::ResourceExhausted(_) => Status::resource_exhausted(message),
            BrokerError::RateLimited { retry_after, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            BrokerError::PermissionDenied(_) => Status::permission_denied(message),
            BrokerError::Internal { what, source } => {
                // The caller is told only that it is internal; the operator gets the cause.
                tracing::error!(what, error = %source, "internal error answered INTERNAL");
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CredentialStatus;
    use std::time::Duration;

    #[test]
    fn table() {
        let cases: Vec<(BrokerError, Code)> = vec![
            (
                BrokerError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                BrokerError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (
                BrokerError::RateLimited {
                    message: "x".into(),
                    retry_after: Duration::from_secs(1),
                },
                Code::ResourceExhausted,
            ),
            (
                BrokerError::NotFound {
                    tenant: "t".into(),
                    credential: "c".into(),
                },
                Code::NotFound,
            ),
            (
                BrokerError::NotActive {
                    status: CredentialStatus::Invalid,
                    message: "m".into(),
                },
                Code::FailedPrecondition,
            ),
            (BrokerError::Rejected("r".into()), Code::FailedPrecondition),
            (
                BrokerError::Misconfigured("r".into()),
                Code::FailedPrecondition,
            ),
            (
                BrokerError::Unavailable {
                    message: "u".into(),
                    retry_after: None,
                },
                Code::Unavailable,
            ),
            (BrokerError::DeadlineExceeded, Code::DeadlineExceeded),
            (
                BrokerError::ResourceExhausted("r".into()),
                Code::ResourceExhausted,
            ),
            (
                BrokerError::internal("x", std::io::Error::other("corrupt row")),
                Code::Internal,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn unavailable_carries_retry_info() {
        let s = Status::from(BrokerError::Unavailable {
            message: "down".into(),
            retry_after: Some(Duration::from_secs(3)),
        });
        let details = s.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(3))
        );
    }
}
