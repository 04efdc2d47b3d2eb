//! The contract subject for the `example_ticket` wire format: [`TicketWire`]'s answers,
//! paired with a provider built by any [`BuildProvider`] (in process, or through the
//! gateway's out-of-process adapter), so one suite checks both plugins against one fake.

use super::fake::{TicketEndpoint, TicketWire};
use super::{TicketFactory, STEP_REFRESH, STEP_REVOKE, STEP_SESSION, STEP_TOKEN};
use crate::testing::contract::{canary_token, Answer, ContractSubject, Flow, Issue};
use crate::{Provider, ProviderFactory, Secret, TokenTypeHint};
use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wiremock::MockServer;

/// Builds the provider under test from an `example_ticket` credential's settings (JSON, as
/// the config gives them). Building may be async (an out-of-process plugin is asked over its
/// socket); a settings error is a broken test, so the builder panics rather than returns it.
///
/// Any `Fn(Value) -> impl Future<Output = Arc<dyn Provider>>` is one; its future must own
/// what it uses, so clone shared state into it:
///
/// ```
/// # use authgate_plugin_sdk::testing::ticket::{TicketFactory, TicketSubject};
/// # use authgate_plugin_sdk::ProviderFactory;
/// # use std::sync::Arc;
/// let factory: Arc<dyn ProviderFactory> = Arc::new(TicketFactory);
/// let subject = TicketSubject::with_builder("example_ticket via a factory", move |settings| {
///     let factory = Arc::clone(&factory);
///     async move { factory.build_async(settings).await.expect("the settings build") }
/// });
/// ```
pub trait BuildProvider: Send + Sync + 'static {
    fn build(&self, settings: Value) -> BoxFuture<'_, Arc<dyn Provider>>;
}

impl<F, Fut> BuildProvider for F
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn Provider>> + Send + 'static,
{
    fn build(&self, settings: Value) -> BoxFuture<'_, Arc<dyn Provider>> {
        Box::pin(self(settings))
    }
}

/// An `example_ticket` provider under the contract suite, with [`TicketWire`] as its fake
/// (by default [`TicketWire::default`], whose secret contains the canary).
pub struct TicketSubject {
    name: String,
    wire: TicketWire,
    builder: Box<dyn BuildProvider>,
}

impl TicketSubject {
    /// The SDK's own [`TicketProvider`](super::TicketProvider), built by [`TicketFactory`].
    pub fn in_process() -> Self {
        Self::with_factory("example_ticket in process", Arc::new(TicketFactory))
    }

    /// Providers built by `factory` ([`ProviderFactory::build_async`], as the gateway
    /// builds them); a settings error panics, naming the subject.
    pub fn with_factory(name: impl Into<String>, factory: Arc<dyn ProviderFactory>) -> Self {
        let name = name.into();
        let named = name.clone();
        Self::with_builder(name, move |settings| {
            let factory = Arc::clone(&factory);
            let name = named.clone();
            async move {
                factory
                    .build_async(settings)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: the fake's settings must build: {e}"))
            }
        })
    }

    /// Providers built by `builder`; `name` names the subject in the suite's messages.
    pub fn with_builder(name: impl Into<String>, builder: impl BuildProvider) -> Self {
        Self {
            name: name.into(),
            wire: TicketWire::default(),
            builder: Box::new(builder),
        }
    }

    /// The same subject against a fake expecting other credentials (the secret must still
    /// contain the canary: the suite checks).
    pub fn with_wire(mut self, wire: TicketWire) -> Self {
        self.wire = wire;
        self
    }

    pub fn wire(&self) -> &TicketWire {
        &self.wire
    }

    /// Mounts the steps of `flow` before its last one, each succeeding.
    async fn mount_steps_before_last(&self, server: &MockServer, flow: Flow) {
        if flow == Flow::Primary {
            self.wire.mount_session(server, &session_ticket()).await;
        }
    }
}

/// The ticket the fake's session issues: a secret the provider learns from the answer, so
/// it holds the canary too.
fn session_ticket() -> String {
    canary_token("ticket", 1)
}

/// The endpoint of `flow`'s last step, the one a case scripts.
fn last_endpoint(flow: Flow) -> TicketEndpoint {
    match flow {
        Flow::Primary | Flow::Refresh => TicketEndpoint::Token,
        Flow::Revoke => TicketEndpoint::Revoke,
    }
}

#[async_trait]
impl ContractSubject for TicketSubject {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn provider(&self, base_url: &str) -> Arc<dyn Provider> {
        self.builder.build(self.wire.settings(base_url)).await
    }

    fn secrets(&self) -> Vec<Secret> {
        vec![Secret::from(self.wire.api_secret.as_str())]
    }

    fn steps(&self, flow: Flow) -> Vec<String> {
        let steps: &[&str] = match flow {
            Flow::Primary => &[STEP_SESSION, STEP_TOKEN],
            Flow::Refresh => &[STEP_REFRESH],
            Flow::Revoke => &[STEP_REVOKE],
        };
        steps.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn mount_grant(&self, server: &MockServer, scopes: &[&str], issue: &Issue) {
        let ticket = session_ticket();
        self.wire.mount_session(server, &ticket).await;
        self.wire
            .mount_ticket_grant(server, &ticket, &scopes.join(" "), issue.response())
            .await;
    }

    async fn mount_refresh(&self, server: &MockServer, old: &str, issue: &Issue) {
        self.wire
            .mount_refresh_answer(server, old, "", issue.response())
            .await;
    }

    async fn mount_answer(&self, server: &MockServer, flow: Flow, answer: &Answer) {
        self.mount_steps_before_last(server, flow).await;
        self.wire
            .mount_any(server, last_endpoint(flow), answer.response())
            .await;
    }

    async fn mount_slow(&self, server: &MockServer, flow: Flow, delay: Duration) {
        self.mount_steps_before_last(server, flow).await;
        self.wire
            .mount_slow(server, last_endpoint(flow), delay)
            .await;
    }

    async fn mount_revoke(&self, server: &MockServer, token: &str, hint: TokenTypeHint) {
        self.wire.mount_revoke(server, token, hint).await;
    }
}
