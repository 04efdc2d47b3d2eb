//! The plugin contract suite: what every provider plugin must do, whatever its wire format
//! and wherever it runs (in process, or out of process behind the gateway's adapter).
//!
//! The suite drives the provider only through the [`Provider`] trait, over an
//! [`UpstreamCall`](crate::UpstreamCall) it makes itself ([`Harness::new`] with the
//! subject's secrets), and the provider's fake only through the [`ContractSubject`]: each
//! case starts a fresh [`MockServer`], asks the subject for a provider pointed at it and
//! for the answers of its wire format, and checks the result, the error's category, that
//! every HTTP exchange was recorded as an event under the subject's step names, and that
//! no [`CANARY`] (every secret and token here holds one) reached an event or an error.
//!
//! ```no_run
//! # use authgate_plugin_sdk::testing::{contract, ticket::TicketSubject};
//! # async fn run() {
//! contract::run_all(&TicketSubject::in_process()).await;
//! # }
//! ```

use crate::http::UpstreamEvent;
use crate::testing::{assert_clean, Harness, CANARY};
use crate::{IssuedToken, Provider, ProviderError, Secret, TokenTypeHint, UpstreamLimits};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use wiremock::{MockServer, ResponseTemplate};

mod cases;

pub use cases::*;

/// A flow of the provider, as the suite asks for its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// A fetch without a refresh token (the primary grant, with whatever steps precede it).
    Primary,
    /// A fetch with a refresh token.
    Refresh,
    /// A revocation.
    Revoke,
}

/// A token the fake issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Seconds.
    pub expires_in: u64,
}

impl Issue {
    pub fn new(access_token: &str, refresh_token: Option<&str>, expires_in: u64) -> Self {
        Self {
            access_token: access_token.to_owned(),
            refresh_token: refresh_token.map(str::to_owned),
            expires_in,
        }
    }

    /// The RFC 6749 §5.1 answer: `access_token`, `token_type` Bearer, `expires_in` and the
    /// refresh token when there is one.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        });
        if let Some(rt) = &self.refresh_token {
            body["refresh_token"] = Value::String(rt.clone());
        }
        body
    }

    /// A 200 answer with [`body`](Self::body).
    pub fn response(&self) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(self.body())
    }
}

/// A scripted answer of the flow's final step: a failure (status and OAuth error body) or a
/// malformed success.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
}

impl Answer {
    /// An RFC 6749 §5.2 error answer.
    pub fn oauth_error(status: u16, code: &str, description: &str) -> Self {
        Self {
            status,
            body: json!({"error": code, "error_description": description}),
            retry_after: None,
        }
    }

    pub fn response(&self) -> ResponseTemplate {
        let resp = ResponseTemplate::new(self.status).set_body_json(self.body.clone());
        match self.retry_after {
            Some(secs) => resp.insert_header("retry-after", secs.to_string().as_str()),
            None => resp,
        }
    }
}

/// A provider under test, with the fake of its provider.
///
/// Every `mount_*` mounts on the case's `server` the answers of the subject's wire format,
/// matching the requests exactly (a deviating request must get no success: wiremock's 404
/// is fine), and may be called more than once per server.
#[async_trait]
pub trait ContractSubject: Send + Sync {
    /// Named in the suite's failure messages.
    fn name(&self) -> String;

    /// A provider built for settings pointing at `base_url` (the case's server), holding
    /// [`secrets`](Self::secrets), with no default scopes.
    async fn provider(&self, base_url: &str) -> Arc<dyn Provider>;

    /// The secrets the settings hold (the suite's redactor knows them, as the gateway's
    /// does); each must contain [`CANARY`].
    fn secrets(&self) -> Vec<Secret>;

    /// The step names a successful `flow` records, in order (e.g. `["session", "token"]`).
    fn steps(&self, flow: Flow) -> Vec<String>;

    /// The primary grant: with exactly `scopes` (sorted; the wire format joins them; empty
    /// means none are sent), issuing `issue`.
    async fn mount_grant(&self, server: &MockServer, scopes: &[&str], issue: &Issue);

    /// A refresh that accepts only the refresh token `old` (and no `scope`), issuing
    /// `issue` (whose refresh token is the rotated one).
    async fn mount_refresh(&self, server: &MockServer, old: &str, issue: &Issue);

    /// `flow` where every step before the last succeeds and the last one (the token, or
    /// revocation, endpoint) answers `answer`, whatever the request.
    async fn mount_answer(&self, server: &MockServer, flow: Flow, answer: &Answer);

    /// `flow` where every step before the last succeeds and the last one answers only after
    /// `delay`.
    async fn mount_slow(&self, server: &MockServer, flow: Flow, delay: Duration);

    /// Revocation of exactly `token` with `hint`, answered 200.
    async fn mount_revoke(&self, server: &MockServer, token: &str, hint: TokenTypeHint);
}

/// `CANARY`-holding token values, distinct per case and use.
pub fn canary_token(what: &str, n: u32) -> String {
    format!("{what}-{CANARY}-{n}")
}

/// One case: a fresh server, the subject's provider for it, and the suite's call.
pub struct Case<'a> {
    pub subject: &'a dyn ContractSubject,
    pub name: &'static str,
    pub server: MockServer,
    pub provider: Arc<dyn Provider>,
    pub harness: Harness,
}

impl<'a> Case<'a> {
    pub async fn start(subject: &'a dyn ContractSubject, name: &'static str) -> Self {
        Self::start_with(subject, name, UpstreamLimits::default()).await
    }

    pub async fn start_with(
        subject: &'a dyn ContractSubject,
        name: &'static str,
        limits: UpstreamLimits,
    ) -> Self {
        let secrets = subject.secrets();
        for s in &secrets {
            assert!(
                s.expose().contains(CANARY),
                "{}: the subject's secrets must contain CANARY for the leak checks",
                subject.name()
            );
        }
        let server = MockServer::start().await;
        let provider = subject.provider(&server.uri()).await;
        Self {
            subject,
            name,
            server,
            provider,
            harness: Harness::new(secrets, limits),
        }
    }

    /// `subject / case`, for messages.
    pub fn ctx(&self) -> String {
        format!("{} / {}", self.subject.name(), self.name)
    }

    pub async fn fetch(
        &self,
        scopes: &[&str],
        refresh_token: Option<&str>,
    ) -> Result<IssuedToken, ProviderError> {
        let rt = refresh_token.map(Secret::from);
        self.harness
            .fetch(self.provider.as_ref(), scopes, rt.as_ref())
            .await
    }

    pub async fn revoke(&self, token: &str, hint: TokenTypeHint) -> Result<(), ProviderError> {
        self.provider
            .revoke(&self.harness.call, &Secret::from(token), hint)
            .await
    }

    /// A success, or a failure naming the case.
    pub fn ok<T>(&self, result: Result<T, ProviderError>) -> T {
        result.unwrap_or_else(|e| panic!("{}: expected success, got {e} / {e:?}", self.ctx()))
    }

    /// A failure, or a panic naming the case.
    pub fn err<T: std::fmt::Debug>(&self, result: Result<T, ProviderError>) -> ProviderError {
        match result {
            Ok(v) => panic!("{}: expected an error, got {v:?}", self.ctx()),
            Err(e) => e,
        }
    }

    /// The events, after checking that no secret reached them or `err`, and that each HTTP
    /// exchange the server received is recorded, in order, as one event.
    pub async fn events(&self, err: Option<&ProviderError>) -> Vec<UpstreamEvent> {
        let events = self.harness.events().await;
        assert_clean(&events, err);
        let received = self
            .server
            .received_requests()
            .await
            .expect("the mock server records requests");
        let ctx = self.ctx();
        assert_eq!(
            received.len(),
            events.len(),
            "{ctx}: each HTTP exchange is recorded as one event: {events:#?}"
        );
        for (req, event) in received.iter().zip(&events) {
            assert_eq!(req.method.as_str(), event.method, "{ctx}: {event:?}");
            assert!(
                event.url.contains(req.url.path()),
                "{ctx}: event {} records {}, the request went to {}",
                event.step,
                event.url,
                req.url.path()
            );
        }
        events
    }

    /// The events of a successful `flow`: exactly its steps, each answered 2xx.
    pub async fn succeeded(&self, flow: Flow) -> Vec<UpstreamEvent> {
        let events = self.events(None).await;
        let steps: Vec<&str> = events.iter().map(|e| e.step.as_str()).collect();
        assert_eq!(
            steps,
            self.subject.steps(flow),
            "{}: the steps of {flow:?}",
            self.ctx()
        );
        for e in &events {
            assert!(
                e.status.is_some_and(|s| (200..300).contains(&s)),
                "{}: step {} answered {:?}",
                self.ctx(),
                e.step,
                e.status
            );
        }
        events
    }

    /// The event of `flow`'s last step after a failure with `err`: the events begin with
    /// the flow's steps (a provider may go on, e.g. fall back to its primary grant), and
    /// none holds a secret.
    pub async fn failed_at_last_step(&self, flow: Flow, err: &ProviderError) -> UpstreamEvent {
        let events = self.events(Some(err)).await;
        let want = self.subject.steps(flow);
        let steps: Vec<&str> = events.iter().map(|e| e.step.as_str()).collect();
        assert!(
            steps.len() >= want.len() && steps[..want.len()] == want[..],
            "{}: the events of {flow:?} begin with {want:?}, got {steps:?}",
            self.ctx()
        );
        events[want.len() - 1].clone()
    }
}

/// Every case of the suite, one after the other; panics at the first failure, naming the
/// subject and the case.
pub async fn run_all(subject: &dyn ContractSubject) {
    primary_grant_issues_token_with_lifetime_and_refresh_token(subject).await;
    refresh_sends_exactly_that_token_and_returns_the_rotated_one(subject).await;
    requested_scopes_are_sent(subject).await;
    invalid_client_rejects_the_credential(subject).await;
    invalid_grant_on_refresh_rejects_the_credential(subject).await;
    invalid_scope_rejects_the_scope(subject).await;
    other_oauth_errors_reject_the_request(subject).await;
    unavailable_is_transient(subject).await;
    too_many_requests_is_transient_with_retry_after(subject).await;
    slow_provider_times_out(subject).await;
    success_without_access_token_is_transient(subject).await;
    secrets_echoed_in_errors_are_redacted(subject).await;
    revoke_sends_token_and_hint(subject).await;
    revoke_failure_is_classified(subject).await;
}
