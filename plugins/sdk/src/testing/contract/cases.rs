//! The cases of the plugin contract suite, one `pub async fn` each, run by
//! [`run_all`](super::run_all) or one at a time.
//!
//! A case sees the provider only through [`Provider`](crate::Provider) and its fake only
//! through [`ContractSubject`], so it holds for an out-of-process plugin as well, whose
//! errors come back over the wire as (kind, message, step, reject kind, code, retry after):
//! the cases compare those, never a message's text. Each case starts a fresh server per
//! scenario, so one scenario's mocks cannot answer another's requests.

use super::{canary_token, Answer, Case, ContractSubject, Flow, Issue};
use crate::clock;
use crate::testing::{short_timeout, SLOW};
use crate::{IssuedToken, ProviderError, RejectKind, TokenTypeHint};
use serde_json::json;
use std::time::Duration;

/// How much shorter than `expires_in` a lifetime may be: a plugin may count from when it
/// sent the request, or round down; more would be a lifetime it made up.
const LIFETIME_SLACK: Duration = Duration::from_secs(5);

/// The step a failure names, when its kind carries one.
fn step_of(err: &ProviderError) -> Option<&str> {
    match err {
        ProviderError::Rejected { step, .. }
        | ProviderError::Transient { step, .. }
        | ProviderError::TimedOut { step, .. } => Some(step),
        ProviderError::InvalidConfiguration(_) | ProviderError::Unsupported(_) => None,
    }
}

/// The last step of `flow`: the one each case scripts, and where its failures belong.
fn last_step(case: &Case<'_>, flow: Flow) -> String {
    case.subject
        .steps(flow)
        .pop()
        .unwrap_or_else(|| panic!("{}: the subject names no steps for {flow:?}", case.ctx()))
}

/// The token is exactly `issue`: its access token, type Bearer, a lifetime of its
/// `expires_in` and its refresh token (the new one when it rotates, none when it has none).
fn assert_issued(case: &Case<'_>, token: &IssuedToken, issue: &Issue) {
    let ctx = case.ctx();
    assert!(
        token.access_token.expose() == issue.access_token,
        "{ctx}: the access token is not the one the provider issued"
    );
    assert_eq!(token.token_type, "Bearer", "{ctx}: the token type");
    assert_lifetime(case, token, Duration::from_secs(issue.expires_in));
    let refresh = token.refresh_token.as_ref().map(|s| s.expose());
    assert!(
        refresh == issue.refresh_token.as_deref(),
        "{ctx}: the refresh token is not the one the provider issued (got one: {}, issued one: {})",
        refresh.is_some(),
        issue.refresh_token.is_some()
    );
}

/// The token lives as long as the answer said: `expires_in`, or an absolute expiry that
/// far from now.
fn assert_lifetime(case: &Case<'_>, token: &IssuedToken, want: Duration) {
    let lifetime = match (token.expires_in, token.expires_at_unix) {
        (Some(d), _) => d,
        (None, Some(at)) => Duration::from_secs(at.saturating_sub(clock::unix_now())),
        (None, None) => panic!("{}: the token has no lifetime", case.ctx()),
    };
    assert!(
        lifetime <= want + Duration::from_secs(1) && lifetime + LIFETIME_SLACK >= want,
        "{}: lifetime {lifetime:?}, the provider said {want:?}",
        case.ctx()
    );
}

/// `err` is a refusal of `kind` with `code`, at the last step of `flow`.
fn assert_rejected(case: &Case<'_>, err: &ProviderError, flow: Flow, kind: RejectKind, code: &str) {
    let ctx = case.ctx();
    match err {
        ProviderError::Rejected {
            kind: got_kind,
            code: got_code,
            ..
        } => {
            assert_eq!(*got_kind, kind, "{ctx}: the reject kind of `{code}`");
            assert_eq!(got_code, code, "{ctx}: the OAuth error code");
        }
        other => panic!("{ctx}: expected a {kind:?} rejection `{code}`, got {other} / {other:?}"),
    }
    assert_failed_at(case, err, flow);
}

/// `err` is transient (not a timeout), at the last step of `flow`, carrying exactly
/// `retry_after`.
fn assert_transient(case: &Case<'_>, err: &ProviderError, flow: Flow, retry_after: Option<u64>) {
    let ctx = case.ctx();
    assert!(
        matches!(err, ProviderError::Transient { .. }),
        "{ctx}: expected a transient failure, got {err} / {err:?}"
    );
    assert_eq!(
        err.retry_after(),
        retry_after.map(Duration::from_secs),
        "{ctx}: the provider's Retry-After"
    );
    assert_failed_at(case, err, flow);
}

/// The failure names the last step of `flow`: the gateway's messages and metrics say where
/// a flow broke, so a plugin must not blur it.
fn assert_failed_at(case: &Case<'_>, err: &ProviderError, flow: Flow) {
    let want = last_step(case, flow);
    assert_eq!(
        step_of(err),
        Some(want.as_str()),
        "{}: the step the failure names ({err:?})",
        case.ctx()
    );
}

/// Runs `flow` once: `token` is the refresh token sent (Refresh) or the token revoked
/// (Revoke, as a refresh token); Primary asks for no scopes.
async fn attempt(
    case: &Case<'_>,
    flow: Flow,
    token: &str,
) -> Result<Option<IssuedToken>, ProviderError> {
    match flow {
        Flow::Primary => case.fetch(&[], None).await.map(Some),
        Flow::Refresh => case.fetch(&[], Some(token)).await.map(Some),
        Flow::Revoke => case
            .revoke(token, TokenTypeHint::RefreshToken)
            .await
            .map(|()| None),
    }
}

/// A fresh case where `flow`'s last step answers `answer`: the error, after checking that
/// the flow got as far as that step, that the step's event records the answer's status,
/// and that no secret reached the events or the error.
async fn failure<'a>(
    subject: &'a dyn ContractSubject,
    name: &'static str,
    flow: Flow,
    token: &str,
    answer: &Answer,
) -> (Case<'a>, ProviderError) {
    let case = Case::start(subject, name).await;
    subject.mount_answer(&case.server, flow, answer).await;
    let err = case.err(attempt(&case, flow, token).await);
    let event = case.failed_at_last_step(flow, &err).await;
    assert_eq!(
        event.status,
        Some(answer.status),
        "{}: the event of step {} records the answer",
        case.ctx(),
        event.step
    );
    (case, err)
}

/// The primary grant returns the issued token whole: value, type, lifetime (not a
/// default one) and refresh token.
pub async fn primary_grant_issues_token_with_lifetime_and_refresh_token(
    subject: &dyn ContractSubject,
) {
    let case = Case::start(
        subject,
        "primary_grant_issues_token_with_lifetime_and_refresh_token",
    )
    .await;
    let access = canary_token("access", 1);
    let refresh = canary_token("refresh", 1);
    // An unusual lifetime, so a plugin that ignores `expires_in` for a default fails.
    let issue = Issue::new(&access, Some(&refresh), 1234);
    subject.mount_grant(&case.server, &[], &issue).await;
    let token = case.ok(case.fetch(&[], None).await);
    assert_issued(&case, &token, &issue);
    case.succeeded(Flow::Primary).await;
}

/// A refresh sends the credential's current refresh token, and nothing but the refresh
/// grant, and returns the rotated refresh token with the new access token.
pub async fn refresh_sends_exactly_that_token_and_returns_the_rotated_one(
    subject: &dyn ContractSubject,
) {
    let case = Case::start(
        subject,
        "refresh_sends_exactly_that_token_and_returns_the_rotated_one",
    )
    .await;
    let old = canary_token("refresh", 2);
    let rotated = canary_token("refresh", 3);
    let issue = Issue::new(&canary_token("access", 2), Some(&rotated), 777);
    subject.mount_refresh(&case.server, &old, &issue).await;
    let token = case.ok(case.fetch(&[], Some(&old)).await);
    assert_issued(&case, &token, &issue);
    case.succeeded(Flow::Refresh).await;
}

/// The scopes the caller asks for reach the provider (all of them, normalized); the fake
/// answers nothing else.
pub async fn requested_scopes_are_sent(subject: &dyn ContractSubject) {
    let case = Case::start(subject, "requested_scopes_are_sent").await;
    let issue = Issue::new(
        &canary_token("access", 3),
        Some(&canary_token("refresh", 4)),
        600,
    );
    subject
        .mount_grant(&case.server, &["files.read", "files.write"], &issue)
        .await;
    // Out of order and repeated: the gateway normalizes before the plugin sees them.
    let requested = ["files.write", "files.read", "files.write"];
    let token = case.ok(case.fetch(&requested, None).await);
    assert_issued(&case, &token, &issue);
    case.succeeded(Flow::Primary).await;
}

/// `invalid_client` marks the credential bad.
pub async fn invalid_client_rejects_the_credential(subject: &dyn ContractSubject) {
    let answer = Answer::oauth_error(401, "invalid_client", "client authentication failed");
    let name = "invalid_client_rejects_the_credential";
    let (case, err) = failure(subject, name, Flow::Primary, "", &answer).await;
    assert_rejected(
        &case,
        &err,
        Flow::Primary,
        RejectKind::Credential,
        "invalid_client",
    );
    assert!(err.rejects_credential(), "{}", case.ctx());
}

/// `invalid_grant` on a refresh marks the credential bad (its refresh token is gone).
pub async fn invalid_grant_on_refresh_rejects_the_credential(subject: &dyn ContractSubject) {
    let answer = Answer::oauth_error(400, "invalid_grant", "refresh token expired");
    let token = canary_token("refresh", 5);
    let name = "invalid_grant_on_refresh_rejects_the_credential";
    let (case, err) = failure(subject, name, Flow::Refresh, &token, &answer).await;
    assert_rejected(
        &case,
        &err,
        Flow::Refresh,
        RejectKind::Credential,
        "invalid_grant",
    );
}

/// `invalid_scope` is the caller's fault: the scope is refused, the credential is not.
pub async fn invalid_scope_rejects_the_scope(subject: &dyn ContractSubject) {
    let name = "invalid_scope_rejects_the_scope";
    let case = Case::start(subject, name).await;
    let answer = Answer::oauth_error(400, "invalid_scope", "scope admin is not granted");
    subject
        .mount_answer(&case.server, Flow::Primary, &answer)
        .await;
    let err = case.err(case.fetch(&["admin"], None).await);
    let event = case.failed_at_last_step(Flow::Primary, &err).await;
    assert_eq!(event.status, Some(400), "{}", case.ctx());
    assert_rejected(
        &case,
        &err,
        Flow::Primary,
        RejectKind::Scope,
        "invalid_scope",
    );
    assert!(!err.rejects_credential(), "{}", case.ctx());
}

/// Any other OAuth error code refuses the request: not retried, credential kept; the
/// code comes back as the provider sent it.
pub async fn other_oauth_errors_reject_the_request(subject: &dyn ContractSubject) {
    let scenarios = [
        (Flow::Primary, 400, "invalid_request"),
        (Flow::Refresh, 400, "unsupported_grant_type"),
        (Flow::Primary, 403, "vendor_account_suspended"),
    ];
    for (flow, status, code) in scenarios {
        let answer = Answer::oauth_error(status, code, "refused");
        let token = canary_token("refresh", 6);
        let name = "other_oauth_errors_reject_the_request";
        let (case, err) = failure(subject, name, flow, &token, &answer).await;
        assert_rejected(&case, &err, flow, RejectKind::Request, code);
        assert!(!err.is_transient(), "{}: {code} is not retried", case.ctx());
    }
}

/// 5xx is transient, even with an OAuth error body, and carries no Retry-After when the
/// provider sent none.
pub async fn unavailable_is_transient(subject: &dyn ContractSubject) {
    let scenarios = [
        (
            Flow::Primary,
            Answer::oauth_error(503, "temporarily_unavailable", "down for maintenance"),
        ),
        (
            Flow::Refresh,
            Answer {
                status: 500,
                body: json!({"message": "internal error"}),
                retry_after: None,
            },
        ),
    ];
    for (flow, answer) in scenarios {
        let token = canary_token("refresh", 7);
        let name = "unavailable_is_transient";
        let (case, err) = failure(subject, name, flow, &token, &answer).await;
        assert_transient(&case, &err, flow, None);
    }
}

/// 429 (and a 503 that says when to come back) is transient and carries the provider's
/// Retry-After, so the gateway waits as long as asked.
pub async fn too_many_requests_is_transient_with_retry_after(subject: &dyn ContractSubject) {
    let scenarios = [
        (Flow::Primary, 429, 7),
        (Flow::Refresh, 429, 11),
        (Flow::Refresh, 503, 30),
    ];
    for (flow, status, secs) in scenarios {
        let answer = Answer {
            retry_after: Some(secs),
            ..Answer::oauth_error(status, "slow_down", "too many requests")
        };
        let token = canary_token("refresh", 8);
        let name = "too_many_requests_is_transient_with_retry_after";
        let (case, err) = failure(subject, name, flow, &token, &answer).await;
        assert_transient(&case, &err, flow, Some(secs));
    }
}

/// A provider slower than the call's timeout fails the fetch at that step as a timeout
/// (or transient failure) when the timeout runs out, not when the provider answers.
pub async fn slow_provider_times_out(subject: &dyn ContractSubject) {
    for flow in [Flow::Primary, Flow::Refresh] {
        let name = "slow_provider_times_out";
        let case = Case::start_with(subject, name, short_timeout()).await;
        subject.mount_slow(&case.server, flow, SLOW).await;
        let started = clock::monotonic_now();
        let err = case.err(attempt(&case, flow, &canary_token("refresh", 9)).await);
        let waited = started.elapsed();
        let ctx = case.ctx();
        assert!(
            matches!(
                err,
                ProviderError::TimedOut { .. } | ProviderError::Transient { .. }
            ),
            "{ctx}: expected a timeout, got {err} / {err:?}"
        );
        assert!(
            waited < SLOW,
            "{ctx}: waited {waited:?}, as long as the provider took"
        );
        assert_failed_at(&case, &err, flow);
        let event = case.failed_at_last_step(flow, &err).await;
        assert_eq!(event.status, None, "{ctx}: no answer arrived in time");
        assert!(
            event.error.is_some(),
            "{ctx}: the event records the timeout"
        );
    }
}

/// A 2xx without a usable access token is a malformed answer: transient, never a token.
pub async fn success_without_access_token_is_transient(subject: &dyn ContractSubject) {
    let scenarios = [
        (
            Flow::Primary,
            json!({"token_type": "Bearer", "expires_in": 3600}),
        ),
        (
            Flow::Primary,
            json!({"access_token": "", "token_type": "Bearer"}),
        ),
        (
            Flow::Refresh,
            json!({"access_token": null, "refresh_token": canary_token("refresh", 10)}),
        ),
        (Flow::Refresh, json!(["not", "an", "object"])),
    ];
    for (flow, body) in scenarios {
        let answer = Answer {
            status: 200,
            body,
            retry_after: None,
        };
        let token = canary_token("refresh", 11);
        let name = "success_without_access_token_is_transient";
        let (case, err) = failure(subject, name, flow, &token, &answer).await;
        assert_transient(&case, &err, flow, None);
    }
}

/// An error answer that echoes the credential's secret (and, on a refresh, the refresh
/// token sent): the failure is still classified, and neither the error nor any event shows
/// them (every failure is checked for canaries).
pub async fn secrets_echoed_in_errors_are_redacted(subject: &dyn ContractSubject) {
    let secrets = subject.secrets();
    let secret = secrets
        .first()
        .unwrap_or_else(|| panic!("{}: the subject has no secret", subject.name()))
        .expose()
        .to_owned();
    let token = canary_token("refresh", 12);
    let scenarios = [
        (Flow::Refresh, 400, "invalid_grant"),
        (Flow::Primary, 401, "invalid_client"),
        (Flow::Primary, 503, "temporarily_unavailable"),
    ];
    for (flow, status, code) in scenarios {
        // Only what the call sent is the call's to redact: a refresh token the primary
        // grant never saw is no secret of it.
        let echo = match flow {
            Flow::Refresh => {
                format!("refresh token {token} was issued to another client ({secret})")
            }
            Flow::Primary | Flow::Revoke => format!("client secret {secret} does not match"),
        };
        let answer = Answer::oauth_error(status, code, &echo);
        let name = "secrets_echoed_in_errors_are_redacted";
        let (case, err) = failure(subject, name, flow, &token, &answer).await;
        if status >= 500 {
            assert_transient(&case, &err, flow, None);
        } else {
            assert_rejected(&case, &err, flow, RejectKind::Credential, code);
        }
    }
}

/// Revocation sends exactly the token and its type hint, and succeeds on 200.
pub async fn revoke_sends_token_and_hint(subject: &dyn ContractSubject) {
    let scenarios = [
        (canary_token("access", 13), TokenTypeHint::AccessToken),
        (canary_token("refresh", 13), TokenTypeHint::RefreshToken),
    ];
    for (token, hint) in scenarios {
        let case = Case::start(subject, "revoke_sends_token_and_hint").await;
        subject.mount_revoke(&case.server, &token, hint).await;
        case.ok(case.revoke(&token, hint).await);
        case.succeeded(Flow::Revoke).await;
    }
}

/// A refused revocation is classified like any other answer: the credential's fault, the
/// request's, or transient with the provider's Retry-After.
pub async fn revoke_failure_is_classified(subject: &dyn ContractSubject) {
    let token = canary_token("refresh", 14);
    let name = "revoke_failure_is_classified";
    let flow = Flow::Revoke;

    let answer = Answer::oauth_error(401, "invalid_client", "unknown client");
    let (case, err) = failure(subject, name, flow, &token, &answer).await;
    assert_rejected(&case, &err, flow, RejectKind::Credential, "invalid_client");

    let answer = Answer::oauth_error(400, "unsupported_token_type", "cannot revoke that");
    let (case, err) = failure(subject, name, flow, &token, &answer).await;
    assert_rejected(
        &case,
        &err,
        flow,
        RejectKind::Request,
        "unsupported_token_type",
    );

    let answer = Answer {
        retry_after: Some(5),
        ..Answer::oauth_error(503, "temporarily_unavailable", "try later")
    };
    let (case, err) = failure(subject, name, flow, &token, &answer).await;
    assert_transient(&case, &err, flow, Some(5));
}

#[cfg(test)]
mod tests;
