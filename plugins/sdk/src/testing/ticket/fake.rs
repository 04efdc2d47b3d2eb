//! A wiremock fake of the `example_ticket` provider, with scripted answers.
//!
//! [`TicketWire`] mounts the answers on any [`MockServer`] (the contract suite hands its
//! subject one per case); [`TicketFake`] is a server of its own with the wire's credentials.
//! Every mock matches its request exactly (method, path, whole body, HTTP Basic where the
//! format has it): a request that deviates gets wiremock's 404, so the fetch fails.

use super::{STEP_REFRESH, STEP_REVOKE, STEP_SESSION, STEP_TOKEN};
use crate::testing::{basic, form_body, json_body, CANARY};
use crate::TokenTypeHint;
use serde_json::{json, Value};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// The provider's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketEndpoint {
    /// `POST /session` (step `session`).
    Session,
    /// `POST /token` (steps `token` and `refresh`).
    Token,
    /// `POST /revoke` (step `revoke`).
    Revoke,
}

impl TicketEndpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Session => "/session",
            Self::Token => "/token",
            Self::Revoke => "/revoke",
        }
    }

    /// The endpoint a step of the flow calls.
    pub fn of_step(step: &str) -> Option<Self> {
        match step {
            STEP_SESSION => Some(Self::Session),
            STEP_TOKEN | STEP_REFRESH => Some(Self::Token),
            STEP_REVOKE => Some(Self::Revoke),
            _ => None,
        }
    }
}

/// An RFC 6749 §5.1 token answer.
pub fn token_json(access_token: &str, refresh_token: Option<&str>, expires_in: u64) -> Value {
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(rt) = refresh_token {
        body["refresh_token"] = Value::String(rt.to_owned());
    }
    body
}

/// A JSON answer with `status`, and `Retry-After: retry_after` when given.
pub fn answer(status: u16, body: Value, retry_after: Option<u64>) -> ResponseTemplate {
    let resp = ResponseTemplate::new(status).set_body_json(body);
    match retry_after {
        Some(secs) => resp.insert_header("retry-after", secs.to_string().as_str()),
        None => resp,
    }
}

/// The form of a token request: `pairs`, then `scope` when `scopes` is not empty (joined
/// with spaces, in the order given: pass them sorted, as the provider sends them).
fn with_scope<'a>(mut pairs: Vec<(&'a str, &'a str)>, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    if !scope.is_empty() {
        pairs.push(("scope", scope));
    }
    pairs
}

/// The provider's wire format for one credential (`api_key`, `api_secret`), mounted on a
/// server.
#[derive(Debug, Clone)]
pub struct TicketWire {
    pub api_key: String,
    pub api_secret: String,
}

impl Default for TicketWire {
    /// The key `ticket-key` and a secret containing [`CANARY`].
    fn default() -> Self {
        Self::new("ticket-key", &format!("api-secret-{CANARY}-1"))
    }
}

impl TicketWire {
    pub fn new(api_key: &str, api_secret: &str) -> Self {
        Self {
            api_key: api_key.to_owned(),
            api_secret: api_secret.to_owned(),
        }
    }

    /// Settings of an `example_ticket` credential for this key and secret at `base_url`.
    pub fn settings(&self, base_url: &str) -> Value {
        json!({
            "base_url": base_url,
            "api_key": self.api_key,
            "api_secret": self.api_secret,
        })
    }

    fn basic(&self) -> String {
        basic(&self.api_key, &self.api_secret)
    }

    /// `POST /session` with exactly this key and secret answers `ticket` (lifetime 60 s).
    pub async fn mount_session(&self, server: &MockServer, ticket: &str) {
        self.mount_session_answer(
            server,
            answer(200, json!({"ticket": ticket, "expires_in": 60}), None),
        )
        .await;
    }

    /// `POST /session` with exactly this key and secret answers `response`.
    pub async fn mount_session_answer(&self, server: &MockServer, response: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path(TicketEndpoint::Session.path()))
            .and(json_body(json!({
                "api_key": self.api_key,
                "api_secret": self.api_secret,
            })))
            .respond_with(response)
            .mount(server)
            .await;
    }

    /// `POST /token` with exactly `grant_type=ticket`, `ticket` and (when not empty)
    /// `scope` answers `response`.
    pub async fn mount_ticket_grant(
        &self,
        server: &MockServer,
        ticket: &str,
        scope: &str,
        response: ResponseTemplate,
    ) {
        let form = with_scope(vec![("grant_type", "ticket"), ("ticket", ticket)], scope);
        Mock::given(method("POST"))
            .and(path(TicketEndpoint::Token.path()))
            .and(form_body(&form))
            .respond_with(response)
            .mount(server)
            .await;
    }

    /// The whole primary grant: the session issues `ticket`, the token endpoint takes it
    /// (with exactly `scope`, space-joined; empty for none) and issues `access_token` with
    /// `refresh_token`, for `expires_in` seconds.
    pub async fn mount_grant(
        &self,
        server: &MockServer,
        ticket: &str,
        scope: &str,
        access_token: &str,
        refresh_token: Option<&str>,
        expires_in: u64,
    ) {
        self.mount_session(server, ticket).await;
        let body = token_json(access_token, refresh_token, expires_in);
        self.mount_ticket_grant(server, ticket, scope, answer(200, body, None))
            .await;
    }

    /// `POST /token` with HTTP Basic and exactly `grant_type=refresh_token`,
    /// `refresh_token=old` and (when not empty) `scope` answers `response`.
    pub async fn mount_refresh_answer(
        &self,
        server: &MockServer,
        old: &str,
        scope: &str,
        response: ResponseTemplate,
    ) {
        let form = with_scope(
            vec![("grant_type", "refresh_token"), ("refresh_token", old)],
            scope,
        );
        Mock::given(method("POST"))
            .and(path(TicketEndpoint::Token.path()))
            .and(header("authorization", self.basic().as_str()))
            .and(form_body(&form))
            .respond_with(response)
            .mount(server)
            .await;
    }

    /// A refresh that accepts only `old` and rotates it: `access_token` with the new
    /// refresh token `new`.
    pub async fn mount_refresh(
        &self,
        server: &MockServer,
        old: &str,
        scope: &str,
        access_token: &str,
        new: &str,
        expires_in: u64,
    ) {
        let body = token_json(access_token, Some(new), expires_in);
        self.mount_refresh_answer(server, old, scope, answer(200, body, None))
            .await;
    }

    /// Every request to `endpoint`, whatever its body, answers `status` with the JSON
    /// `body` (and `Retry-After` when given). Mounted after the exact mocks of a case, it
    /// only answers what they do not match.
    pub async fn mount_failure(
        &self,
        server: &MockServer,
        endpoint: TicketEndpoint,
        status: u16,
        body: Value,
        retry_after: Option<u64>,
    ) {
        self.mount_any(server, endpoint, answer(status, body, retry_after))
            .await;
    }

    /// Every `POST` to `endpoint`, whatever its headers and body, answers `response` (a
    /// scripted failure or malformed success; the contract suite's `mount_answer`).
    pub async fn mount_any(
        &self,
        server: &MockServer,
        endpoint: TicketEndpoint,
        response: ResponseTemplate,
    ) {
        Mock::given(method("POST"))
            .and(path(endpoint.path()))
            .respond_with(response)
            .mount(server)
            .await;
    }

    /// Every request to `endpoint` answers a token after `delay` (past the call's timeout,
    /// a timeout test).
    pub async fn mount_slow(&self, server: &MockServer, endpoint: TicketEndpoint, delay: Duration) {
        let body = token_json(&format!("slow-at-{CANARY}"), None, 3600);
        self.mount_any(server, endpoint, answer(200, body, None).set_delay(delay))
            .await;
    }

    /// `POST /revoke` with HTTP Basic and exactly `token` and `token_type_hint` answers 200.
    pub async fn mount_revoke(&self, server: &MockServer, token: &str, hint: TokenTypeHint) {
        Mock::given(method("POST"))
            .and(path(TicketEndpoint::Revoke.path()))
            .and(header("authorization", self.basic().as_str()))
            .and(form_body(&[
                ("token", token),
                ("token_type_hint", hint.as_str()),
            ]))
            .respond_with(ResponseTemplate::new(200))
            .mount(server)
            .await;
    }
}

/// A fake `example_ticket` provider: its own server, expecting the wire's key and secret.
pub struct TicketFake {
    server: MockServer,
    wire: TicketWire,
}

impl TicketFake {
    /// A fake for [`TicketWire::default`]'s credentials.
    pub async fn start() -> Self {
        Self::start_with(TicketWire::default()).await
    }

    pub async fn start_with(wire: TicketWire) -> Self {
        Self {
            server: MockServer::start().await,
            wire,
        }
    }

    pub fn server(&self) -> &MockServer {
        &self.server
    }

    pub fn wire(&self) -> &TicketWire {
        &self.wire
    }

    /// The `base_url` setting that reaches the fake.
    pub fn base_url(&self) -> String {
        self.server.uri()
    }

    /// Settings pointing at the fake with the credentials it expects.
    pub fn settings(&self) -> Value {
        self.wire.settings(&self.base_url())
    }

    /// Settings pointing at the fake with other credentials (the fake refuses them: its
    /// mocks do not match).
    pub fn settings_for(&self, api_key: &str, api_secret: &str) -> Value {
        TicketWire::new(api_key, api_secret).settings(&self.base_url())
    }

    /// See [`TicketWire::mount_grant`].
    pub async fn grant(
        &self,
        ticket: &str,
        scope: &str,
        access_token: &str,
        refresh_token: Option<&str>,
        expires_in: u64,
    ) {
        self.wire
            .mount_grant(
                &self.server,
                ticket,
                scope,
                access_token,
                refresh_token,
                expires_in,
            )
            .await;
    }

    /// See [`TicketWire::mount_session_answer`].
    pub async fn session_answer(&self, response: ResponseTemplate) {
        self.wire.mount_session_answer(&self.server, response).await;
    }

    /// See [`TicketWire::mount_refresh`].
    pub async fn refresh(
        &self,
        old: &str,
        scope: &str,
        access_token: &str,
        new: &str,
        expires_in: u64,
    ) {
        self.wire
            .mount_refresh(&self.server, old, scope, access_token, new, expires_in)
            .await;
    }

    /// See [`TicketWire::mount_failure`].
    pub async fn failure(
        &self,
        endpoint: TicketEndpoint,
        status: u16,
        body: Value,
        retry_after: Option<u64>,
    ) {
        self.wire
            .mount_failure(&self.server, endpoint, status, body, retry_after)
            .await;
    }

    /// See [`TicketWire::mount_slow`].
    pub async fn slow(&self, endpoint: TicketEndpoint, delay: Duration) {
        self.wire.mount_slow(&self.server, endpoint, delay).await;
    }

    /// See [`TicketWire::mount_revoke`].
    pub async fn revoke(&self, token: &str, hint: TokenTypeHint) {
        self.wire.mount_revoke(&self.server, token, hint).await;
    }

    /// Every request the fake received, in order.
    pub async fn received(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }

    /// The requests to `endpoint`, in order.
    pub async fn received_at(&self, endpoint: TicketEndpoint) -> Vec<Request> {
        self.received()
            .await
            .into_iter()
            .filter(|r| r.url.path() == endpoint.path())
            .collect()
    }

    /// The form pairs of a request's body.
    pub fn form(request: &Request) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect()
    }
}
