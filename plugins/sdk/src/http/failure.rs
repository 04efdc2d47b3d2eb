//! How a failed exchange with a provider is classified: egress refusal, TLS refusal,
//! timeout, connection, cut-short or oversized body.

use super::UpstreamLimits;
use crate::egress;
use crate::error::ProviderError;

pub(super) enum Failure {
    Transport(reqwest::Error),
    Body(u16, reqwest::Error),
    TooLarge(u16),
}

pub(super) fn failure_status(f: &Failure) -> Option<u16> {
    match f {
        Failure::Transport(_) => None,
        Failure::Body(s, _) | Failure::TooLarge(s) => Some(*s),
    }
}

impl Failure {
    pub(super) fn to_error(&self, step: &str, limits: &UpstreamLimits) -> ProviderError {
        if let Failure::Transport(e) = self {
            if let Some(denied) = egress::find_denial(e) {
                return ProviderError::config(format!("{step}: {denied}"));
            }
        }
        if let Failure::Transport(e) | Failure::Body(_, e) = self {
            if let Some(refused) = crate::tls::classify_failure(step, e) {
                return refused;
            }
        }
        match self {
            Failure::Transport(e) | Failure::Body(_, e) if e.is_timeout() => {
                ProviderError::TimedOut {
                    step: step.to_owned(),
                    after: limits.total_timeout,
                }
            }
            Failure::Transport(e) if e.is_connect() => {
                ProviderError::transient(step, "cannot connect to the provider")
            }
            Failure::Transport(e) => {
                ProviderError::transient(step, format!("request failed: {}", describe(e)))
            }
            Failure::Body(status, e) => ProviderError::transient(
                step,
                format!("HTTP {status} response body was cut short: {}", describe(e)),
            ),
            Failure::TooLarge(status) => ProviderError::transient(
                step,
                format!(
                    "HTTP {status} response body exceeds {} bytes",
                    limits.max_response_bytes
                ),
            ),
        }
    }
}

/// reqwest's error text includes the URL, which may carry query secrets; keep only the kind
/// and the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    let kind = if e.is_body() || e.is_decode() {
        "body error"
    } else if e.is_request() {
        "request error"
    } else {
        "error"
    };
    match last {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}
