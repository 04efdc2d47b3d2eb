//! The suite against the in-process `example_ticket` plugin, which must pass, and against
//! mutants of it, each doing one thing wrong, which must fail the cases that guard that
//! thing: a case no wrong provider can fail would check nothing.

use super::super::{run_all, ContractSubject};
use super::*;
use crate::testing::ticket::{TicketFactory, TicketSubject};
use crate::{Capabilities, FetchRequest, Provider, ProviderFactory, ScopeSet, Secret};
use crate::{RejectKind as Kind, UpstreamCall};
use async_trait::async_trait;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

#[tokio::test]
async fn the_in_process_ticket_plugin_passes() {
    run_all(&TicketSubject::in_process()).await;
}

/// One wrong behaviour, laid over the correct provider.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    DropIssuedRefreshToken,
    KeepSentRefreshToken,
    DefaultLifetime,
    IgnoreScopes,
    AddScope,
    SendOtherRefreshToken,
    RefreshAsPrimaryGrant,
    RejectionsAsRequest,
    RejectionsAsCredential,
    RejectionsAsTransient,
    TransientsAsRejected,
    DropRetryAfter,
    WrongStep,
    SwallowFetchErrors,
    LeakInErrors,
    SwapHint,
    RevokeWithoutCall,
}

/// Which cases each mutation must fail (at least these; others may fail too).
const EXPECTED: &[(Mutation, &[&str])] = &[
    (
        Mutation::DropIssuedRefreshToken,
        &[
            "primary_grant_issues_token_with_lifetime_and_refresh_token",
            "refresh_sends_exactly_that_token_and_returns_the_rotated_one",
            "requested_scopes_are_sent",
        ],
    ),
    (
        Mutation::KeepSentRefreshToken,
        &["refresh_sends_exactly_that_token_and_returns_the_rotated_one"],
    ),
    (
        Mutation::DefaultLifetime,
        &[
            "primary_grant_issues_token_with_lifetime_and_refresh_token",
            "refresh_sends_exactly_that_token_and_returns_the_rotated_one",
            "requested_scopes_are_sent",
        ],
    ),
    (Mutation::IgnoreScopes, &["requested_scopes_are_sent"]),
    (
        Mutation::AddScope,
        &["primary_grant_issues_token_with_lifetime_and_refresh_token"],
    ),
    (
        Mutation::SendOtherRefreshToken,
        &["refresh_sends_exactly_that_token_and_returns_the_rotated_one"],
    ),
    (
        Mutation::RefreshAsPrimaryGrant,
        &[
            "refresh_sends_exactly_that_token_and_returns_the_rotated_one",
            "invalid_grant_on_refresh_rejects_the_credential",
        ],
    ),
    (
        Mutation::RejectionsAsRequest,
        &[
            "invalid_client_rejects_the_credential",
            "invalid_grant_on_refresh_rejects_the_credential",
            "invalid_scope_rejects_the_scope",
            "secrets_echoed_in_errors_are_redacted",
            "revoke_failure_is_classified",
        ],
    ),
    (
        Mutation::RejectionsAsCredential,
        &[
            "invalid_scope_rejects_the_scope",
            "other_oauth_errors_reject_the_request",
            "revoke_failure_is_classified",
        ],
    ),
    (
        Mutation::RejectionsAsTransient,
        &[
            "invalid_client_rejects_the_credential",
            "invalid_grant_on_refresh_rejects_the_credential",
            "invalid_scope_rejects_the_scope",
            "other_oauth_errors_reject_the_request",
            "revoke_failure_is_classified",
        ],
    ),
    (
        Mutation::TransientsAsRejected,
        &[
            "unavailable_is_transient",
            "too_many_requests_is_transient_with_retry_after",
            "slow_provider_times_out",
            "success_without_access_token_is_transient",
            "revoke_failure_is_classified",
        ],
    ),
    (
        Mutation::DropRetryAfter,
        &[
            "too_many_requests_is_transient_with_retry_after",
            "revoke_failure_is_classified",
        ],
    ),
    (
        Mutation::WrongStep,
        &[
            "invalid_client_rejects_the_credential",
            "invalid_grant_on_refresh_rejects_the_credential",
            "invalid_scope_rejects_the_scope",
            "other_oauth_errors_reject_the_request",
            "unavailable_is_transient",
            "too_many_requests_is_transient_with_retry_after",
            "slow_provider_times_out",
            "success_without_access_token_is_transient",
            "revoke_failure_is_classified",
        ],
    ),
    (
        Mutation::SwallowFetchErrors,
        &[
            "invalid_client_rejects_the_credential",
            "invalid_grant_on_refresh_rejects_the_credential",
            "invalid_scope_rejects_the_scope",
            "other_oauth_errors_reject_the_request",
            "unavailable_is_transient",
            "too_many_requests_is_transient_with_retry_after",
            "slow_provider_times_out",
            "success_without_access_token_is_transient",
            "secrets_echoed_in_errors_are_redacted",
        ],
    ),
    (
        Mutation::LeakInErrors,
        &["secrets_echoed_in_errors_are_redacted"],
    ),
    (Mutation::SwapHint, &["revoke_sends_token_and_hint"]),
    (
        Mutation::RevokeWithoutCall,
        &[
            "revoke_sends_token_and_hint",
            "revoke_failure_is_classified",
        ],
    ),
];

/// Runs the case named `name`.
async fn run_case(name: &str, subject: &dyn ContractSubject) {
    match name {
        "primary_grant_issues_token_with_lifetime_and_refresh_token" => {
            primary_grant_issues_token_with_lifetime_and_refresh_token(subject).await;
        }
        "refresh_sends_exactly_that_token_and_returns_the_rotated_one" => {
            refresh_sends_exactly_that_token_and_returns_the_rotated_one(subject).await;
        }
        "requested_scopes_are_sent" => requested_scopes_are_sent(subject).await,
        "invalid_client_rejects_the_credential" => {
            invalid_client_rejects_the_credential(subject).await;
        }
        "invalid_grant_on_refresh_rejects_the_credential" => {
            invalid_grant_on_refresh_rejects_the_credential(subject).await;
        }
        "invalid_scope_rejects_the_scope" => invalid_scope_rejects_the_scope(subject).await,
        "other_oauth_errors_reject_the_request" => {
            other_oauth_errors_reject_the_request(subject).await;
        }
        "unavailable_is_transient" => unavailable_is_transient(subject).await,
        "too_many_requests_is_transient_with_retry_after" => {
            too_many_requests_is_transient_with_retry_after(subject).await;
        }
        "slow_provider_times_out" => slow_provider_times_out(subject).await,
        "success_without_access_token_is_transient" => {
            success_without_access_token_is_transient(subject).await;
        }
        "secrets_echoed_in_errors_are_redacted" => {
            secrets_echoed_in_errors_are_redacted(subject).await;
        }
        "revoke_sends_token_and_hint" => revoke_sends_token_and_hint(subject).await,
        "revoke_failure_is_classified" => revoke_failure_is_classified(subject).await,
        other => panic!("no case named {other}"),
    }
}

#[tokio::test]
async fn every_mutant_fails_the_cases_that_guard_its_mistake() {
    // One case at a time: wiremock's `MockServer` blocks its thread in `Drop` until it can
    // read its state, which hangs when another case polled by the same thread is queued for
    // that lock (seen as a rare hang when all ran at once under one `join_all`).
    let mut survivors = Vec::new();
    for (mutation, cases) in EXPECTED {
        for case in *cases {
            let subject = mutant_subject(*mutation);
            let failed = AssertUnwindSafe(run_case(case, &subject))
                .catch_unwind()
                .await
                .is_err();
            if !failed {
                survivors.push(format!("{mutation:?} passes {case}"));
            }
        }
    }
    assert!(
        survivors.is_empty(),
        "mutants the suite misses: {survivors:#?}"
    );
}

fn mutant_subject(mutation: Mutation) -> TicketSubject {
    TicketSubject::with_builder(format!("mutant {mutation:?}"), move |settings| async move {
        let inner = TicketFactory
            .build(settings)
            .expect("the fake's settings build");
        Arc::new(Mutant { inner, mutation }) as Arc<dyn Provider>
    })
}

struct Mutant {
    inner: Arc<dyn Provider>,
    mutation: Mutation,
}

#[async_trait]
impl Provider for Mutant {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn secrets(&self) -> Vec<Secret> {
        self.inner.secrets()
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        let sent = req.refresh_token.cloned();
        let other = sent
            .as_ref()
            .map(|rt| Secret::from(format!("{}-other", rt.expose())));
        let (none, extra) = (ScopeSet::default(), ScopeSet::new(["extra"]));
        let (scopes, refresh_token) = match self.mutation {
            Mutation::IgnoreScopes => (&none, req.refresh_token),
            Mutation::AddScope if req.scopes.is_empty() => (&extra, req.refresh_token),
            Mutation::SendOtherRefreshToken => (req.scopes, other.as_ref()),
            Mutation::RefreshAsPrimaryGrant => (req.scopes, None),
            _ => (req.scopes, req.refresh_token),
        };
        let fetched = self
            .inner
            .fetch(FetchRequest {
                scopes,
                refresh_token,
                call: req.call,
            })
            .await;
        match fetched {
            Ok(token) => Ok(self.mutate_token(token, sent)),
            Err(_) if matches!(self.mutation, Mutation::SwallowFetchErrors) => Ok(made_up()),
            Err(e) => Err(self.mutate_error(e, sent.as_ref())),
        }
    }

    async fn revoke(
        &self,
        call: &UpstreamCall,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        let hint = match (self.mutation, hint) {
            (Mutation::SwapHint, TokenTypeHint::AccessToken) => TokenTypeHint::RefreshToken,
            (Mutation::SwapHint, TokenTypeHint::RefreshToken) => TokenTypeHint::AccessToken,
            (Mutation::RevokeWithoutCall, _) => return Ok(()),
            (_, hint) => hint,
        };
        let revoked = self.inner.revoke(call, token, hint).await;
        revoked.map_err(|e| self.mutate_error(e, Some(token)))
    }
}

/// A token the provider never issued.
fn made_up() -> IssuedToken {
    IssuedToken {
        access_token: Secret::from("made-up"),
        token_type: "Bearer".into(),
        expires_in: Some(Duration::from_secs(3600)),
        expires_at_unix: None,
        scopes: None,
        refresh_token: None,
        metadata: Default::default(),
    }
}

impl Mutant {
    fn mutate_token(&self, mut token: IssuedToken, sent: Option<Secret>) -> IssuedToken {
        match self.mutation {
            Mutation::DropIssuedRefreshToken => token.refresh_token = None,
            Mutation::KeepSentRefreshToken if sent.is_some() => token.refresh_token = sent,
            Mutation::DefaultLifetime => token.expires_in = Some(Duration::from_secs(3600)),
            _ => {}
        }
        token
    }

    fn mutate_error(&self, mut err: ProviderError, sent: Option<&Secret>) -> ProviderError {
        use ProviderError::{Rejected, TimedOut, Transient};
        match (self.mutation, &mut err) {
            (Mutation::RejectionsAsRequest, Rejected { kind, .. }) => *kind = Kind::Request,
            (Mutation::RejectionsAsCredential, Rejected { kind, .. }) => *kind = Kind::Credential,
            (Mutation::RejectionsAsTransient, Rejected { step, .. }) => {
                return ProviderError::transient(step.clone(), "refused");
            }
            (Mutation::TransientsAsRejected, Transient { step, .. } | TimedOut { step, .. }) => {
                return Rejected {
                    kind: Kind::Request,
                    step: step.clone(),
                    code: "server_error".into(),
                    description: None,
                };
            }
            (Mutation::DropRetryAfter, Transient { retry_after, .. }) => *retry_after = None,
            (
                Mutation::WrongStep,
                Rejected { step, .. } | Transient { step, .. } | TimedOut { step, .. },
            ) => *step = "elsewhere".into(),
            (Mutation::LeakInErrors, Rejected { description, .. }) => {
                *description = Some(self.leak(sent));
            }
            (Mutation::LeakInErrors, Transient { message, .. }) => *message = self.leak(sent),
            _ => {}
        }
        err
    }

    /// What an unredacted echo would show: the secret and the token sent.
    fn leak(&self, sent: Option<&Secret>) -> String {
        let secret = self.inner.secrets().first().map(|s| s.expose().to_owned());
        format!("{secret:?} {:?}", sent.map(Secret::expose))
    }
}
