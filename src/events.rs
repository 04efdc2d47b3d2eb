//! The event log: what happened to each credential (upstream calls, issued tokens, status
//! changes, revokes), persisted through the store, kept for the retention period.
//!
//! Everything arriving here is already redacted: upstream exchanges by the SDK's client,
//! messages by construction (they are built from error values that never hold secrets).

use crate::clock::{Clock, UnixMillis};
use crate::context::current_caller;
use crate::metrics::Metrics;
use crate::store::{EventRecord, Store};
use async_trait::async_trait;
use authgate_plugin_sdk::{EventSink, UpstreamEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What an event records. Stored as its `as_str` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    UpstreamCall,
    TokenIssued,
    TokenFailed,
    StatusChanged,
    Revoked,
    CredentialChanged,
    LegacyGrant,
    /// A webhook delivery attempt (its HTTP exchange), or a notification given up on.
    WebhookDelivery,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        Self::UpstreamCall,
        Self::TokenIssued,
        Self::TokenFailed,
        Self::StatusChanged,
        Self::Revoked,
        Self::CredentialChanged,
        Self::LegacyGrant,
        Self::WebhookDelivery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamCall => "upstream_call",
            Self::TokenIssued => "token_issued",
            Self::TokenFailed => "token_failed",
            Self::StatusChanged => "status_changed",
            Self::Revoked => "revoked",
            Self::CredentialChanged => "credential_changed",
            Self::LegacyGrant => "legacy_grant",
            Self::WebhookDelivery => "webhook_delivery",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The stored JSON shape of an upstream exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct HttpExchange {
    pub step: String,
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub request_headers: BTreeMap<String, String>,
    pub request_body: String,
    pub response_headers: BTreeMap<String, String>,
    pub response_body: String,
    pub error: Option<String>,
}

impl From<&UpstreamEvent> for HttpExchange {
    fn from(e: &UpstreamEvent) -> Self {
        Self {
            step: e.step.clone(),
            method: e.method.clone(),
            url: e.url.clone(),
            status: e.status,
            latency_ms: e.latency.as_millis() as u64,
            request_headers: e.request_headers.iter().cloned().collect(),
            request_body: e.request_body.clone(),
            response_headers: e.response_headers.iter().cloned().collect(),
            response_body: e.response_body.clone(),
            error: e.error.clone(),
        }
    }
}

/// Records events to the store.
#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Where upstream calls are also counted (latency by provider, step, status class).
    metrics: Metrics,
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            metrics: Metrics::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts upstream calls in `metrics` too.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Appends an event on behalf of the current caller ([`current_caller`]). A store
    /// failure is logged, not propagated: losing the audit line must not fail the token
    /// request that caused it.
    pub async fn record(
        &self,
        tenant: &str,
        credential_id: &str,
        kind: EventKind,
        message: String,
    ) {
        self.append(tenant, credential_id, kind, current_caller(), message, None)
            .await;
    }

    /// Appends an event on behalf of `caller` (background work: `None`).
    pub async fn record_as(
        &self,
        tenant: &str,
        credential_id: &str,
        kind: EventKind,
        caller: Option<Arc<str>>,
        message: String,
    ) {
        self.append(tenant, credential_id, kind, caller, message, None)
            .await;
    }

    async fn append(
        &self,
        tenant: &str,
        credential_id: &str,
        kind: EventKind,
        caller: Option<Arc<str>>,
        message: String,
        http: Option<&UpstreamEvent>,
    ) {
        let http = http.and_then(|e| serde_json::to_string(&HttpExchange::from(e)).ok());
        let rec = EventRecord {
            id: 0,
            tenant: tenant.to_owned(),
            credential_id: credential_id.to_owned(),
            kind: kind.as_str().to_owned(),
            occurred_at_ms: self.clock.now_ms(),
            caller: caller.map(|c| String::from(&*c)),
            message,
            http,
        };
        if let Err(e) = self.store.append_event(&rec).await {
            tracing::warn!(tenant, credential_id, kind = kind.as_str(), error = %e, "could not record event");
        }
    }

    /// An SDK event sink that files upstream calls under this credential and the current
    /// caller; `provider` is the plugin kind the calls are counted under.
    pub fn sink(&self, tenant: &str, credential_id: &str, provider: &str) -> Arc<dyn EventSink> {
        Arc::new(CredentialSink {
            log: self.clone(),
            tenant: tenant.to_owned(),
            credential_id: credential_id.to_owned(),
            provider: provider.to_owned(),
            caller: current_caller(),
        })
    }

    /// An SDK event sink for a webhook's delivery attempts: each is a `webhook_delivery`
    /// event of the tenant, under the credential the notification is about.
    pub fn webhook_sink(
        &self,
        tenant: &str,
        credential_id: &str,
        webhook_id: &str,
    ) -> Arc<dyn EventSink> {
        Arc::new(WebhookSink {
            log: self.clone(),
            tenant: tenant.to_owned(),
            credential_id: credential_id.to_owned(),
            webhook_id: webhook_id.to_owned(),
        })
    }

    /// Deletes events older than `retention`, now and then every `every`.
    pub fn spawn_retention(
        &self,
        retention: Duration,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let cutoff: UnixMillis = log.clock.now_ms() - retention.as_millis() as i64;
                match log.store.purge_events(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "deleted events past retention"),
                    Err(e) => tracing::warn!(error = %e, "event retention pass failed"),
                }
            }
        })
    }
}

/// The one-line summary of an HTTP exchange.
fn exchange_line(event: &UpstreamEvent) -> String {
    match (event.status, &event.error) {
        (Some(s), None) => format!("{} {} {} → HTTP {s}", event.step, event.method, event.url),
        (Some(s), Some(e)) => format!(
            "{} {} {} → HTTP {s}: {e}",
            event.step, event.method, event.url
        ),
        (None, Some(e)) => format!("{} {} {} failed: {e}", event.step, event.method, event.url),
        (None, None) => format!("{} {} {}", event.step, event.method, event.url),
    }
}

struct WebhookSink {
    log: EventLog,
    tenant: String,
    credential_id: String,
    webhook_id: String,
}

#[async_trait]
impl EventSink for WebhookSink {
    async fn record(&self, event: UpstreamEvent) {
        let message = format!("webhook `{}`: {}", self.webhook_id, exchange_line(&event));
        self.log
            .append(
                &self.tenant,
                &self.credential_id,
                EventKind::WebhookDelivery,
                None,
                message,
                Some(&event),
            )
            .await;
    }
}

struct CredentialSink {
    log: EventLog,
    tenant: String,
    credential_id: String,
    provider: String,
    caller: Option<Arc<str>>,
}

#[async_trait]
impl EventSink for CredentialSink {
    async fn record(&self, event: UpstreamEvent) {
        self.log.metrics.upstream_call(
            &self.provider,
            &event.step,
            event.status,
            event.latency,
            &self.tenant,
            &self.credential_id,
        );
        let message = exchange_line(&event);
        self.log
            .append(
                &self.tenant,
                &self.credential_id,
                EventKind::UpstreamCall,
                self.caller.clone(),
                message,
                Some(&event),
            )
            .await;
    }

    fn provider(&self) -> &str {
        &self.provider
    }

    /// A plugin's fact about the credential (e.g. which client secret the provider
    /// accepts), already redacted: filed as a `credential_changed` event.
    async fn notice(&self, message: String) {
        self.log
            .append(
                &self.tenant,
                &self.credential_id,
                EventKind::CredentialChanged,
                self.caller.clone(),
                message,
                None,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::sqlite::SqliteStore;
    use crate::store::EventQuery;

    #[tokio::test]
    async fn retention_deletes_only_events_older_than_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("e.db").display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
        let clock = ManualClock::default();
        let log = EventLog::new(store.clone(), Arc::new(clock.clone()));
        log.record("acme", "idp", EventKind::TokenIssued, "old".into())
            .await;
        clock.advance(Duration::from_secs(20 * 86_400));
        log.record("acme", "idp", EventKind::TokenIssued, "recent".into())
            .await;
        clock.advance(Duration::from_secs(11 * 86_400));
        // 31 days after the first event, 11 after the second: only the first is past 30.
        let task = log.spawn_retention(Duration::from_secs(30 * 86_400), Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
        task.abort();
        let left = store
            .list_events(&EventQuery {
                tenant: "acme".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let messages: Vec<_> = left.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, vec!["recent"]);
    }
}
