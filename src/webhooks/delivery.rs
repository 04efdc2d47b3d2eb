//! The outbox's delivery loop, one per replica: claim due notifications (the store hands
//! each to one replica at a time), sign and POST each as the Standard Webhooks spec says,
//! then mark it delivered, due again after a backoff (or the receiver's `Retry-After`), or
//! failed once the delivery period is over. Every attempt goes through the SDK's upstream
//! client, so it is an event of the tenant (redacted, bounded in time and size) and passes
//! the egress policy: API-created webhooks are held to it as API-created credentials are.

use super::signature::SigningKey;
use crate::clock::{Clock, UnixMillis};
use crate::events::{EventKind, EventLog};
use crate::metrics::Metrics;
use crate::store::secrets::Vault;
use crate::store::{CredentialSource, Delivery, DeliveryOutcome, Store};
use authgate_plugin_sdk::{
    Egress, ProviderError, UpstreamCall, UpstreamClient, UpstreamRequest, UpstreamResponse,
};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use url::Url;

/// How deliveries are paced.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// How often the outbox is looked at for due notifications.
    pub poll_interval: Duration,
    /// The wait after a first failed attempt; doubles with each one up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long after a notification was written attempts go on; then it is failed.
    pub give_up_after: Duration,
    /// Finished notifications are deleted this long after they finished.
    pub retention: Duration,
}

/// How long a claim keeps other replicas off a notification: longer than a batch's
/// attempts take (each is bounded by the client's total timeout).
const CLAIM: Duration = Duration::from_secs(120);
/// Notifications claimed at once, and attempts in flight at once.
const BATCH: u32 = 32;
const IN_FLIGHT: usize = 8;
/// The longest `Retry-After` honoured (a receiver cannot park the outbox for days).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How often finished notifications past the retention are deleted.
const PURGE_EVERY_MS: i64 = 3_600_000;

/// One replica's delivery loop.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    vault: Vault,
    http: UpstreamClient,
    events: EventLog,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    settings: DeliverySettings,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        http: UpstreamClient,
        events: EventLog,
        clock: Arc<dyn Clock>,
        settings: DeliverySettings,
    ) -> Self {
        Self {
            metrics: events.metrics().clone(),
            store,
            vault,
            http,
            events,
            clock,
            settings,
        }
    }

    /// Runs until `shutdown` turns true (attempts in flight finish first).
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut purged_at = 0;
            loop {
                let now = self.clock.now_ms();
                let full = match self.pass(now).await {
                    Ok(n) => n == BATCH as usize,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook outbox pass failed; trying again");
                        false
                    }
                };
                self.update_gauges(now).await;
                if now - purged_at >= PURGE_EVERY_MS {
                    purged_at = now;
                    let cutoff = now - self.settings.retention.as_millis() as i64;
                    if let Err(e) = self.store.purge_outbox(cutoff).await {
                        tracing::warn!(error = %e, "could not delete finished webhook notifications");
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }

    /// Claims a batch of due notifications and attempts each; how many there were.
    async fn pass(&self, now: UnixMillis) -> Result<usize, crate::store::StoreError> {
        let holder = self.store.instance_id().to_owned();
        let batch = self
            .store
            .claim_deliveries(&holder, now, CLAIM, BATCH)
            .await?;
        let n = batch.len();
        futures::stream::iter(batch)
            .for_each_concurrent(IN_FLIGHT, |d| self.deliver(&holder, d))
            .await;
        Ok(n)
    }

    /// One attempt, and its outcome written back under the claim.
    async fn deliver(&self, holder: &str, d: Delivery) {
        let outcome = match self.attempt(&d).await {
            Ok(result) => self.judge(&d, result),
            Err(unusable) => DeliveryOutcome::Failed { error: unusable },
        };
        let label = match &outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::Failed { .. } => "failed",
        };
        self.metrics.webhook_attempt(label);
        if let DeliveryOutcome::Failed { error } = &outcome {
            tracing::warn!(tenant = %d.tenant, webhook = %d.webhook_id, message_id = %d.message_id, "webhook notification given up: {error}");
            self.events
                .record_as(
                    &d.tenant,
                    &d.credential_id,
                    EventKind::WebhookDelivery,
                    None,
                    format!(
                        "webhook `{}`: gave up on {} {} after {} attempts: {error}",
                        d.webhook_id,
                        d.kind,
                        d.message_id,
                        d.attempts + 1
                    ),
                )
                .await;
        }
        let now = self.clock.now_ms();
        match self
            .store
            .finish_delivery(d.id, holder, &outcome, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(webhook = %d.webhook_id, message_id = %d.message_id, "webhook claim expired before the attempt finished; another replica may deliver it again")
            }
            Err(e) => {
                tracing::warn!(webhook = %d.webhook_id, message_id = %d.message_id, error = %e, "could not record a webhook attempt; it will be attempted again")
            }
        }
    }

    /// Signs and sends the notification. `Err`: it cannot be sent at all (its secret or
    /// body is unusable), which no retry fixes.
    async fn attempt(
        &self,
        d: &Delivery,
    ) -> Result<Result<UpstreamResponse, ProviderError>, String> {
        let secret = self
            .vault
            .open_webhook_secret(&d.tenant, &d.webhook_id, &d.secret_sealed)
            .map_err(|e| format!("the webhook's signing secret cannot be opened: {e}"))?;
        let key =
            SigningKey::parse(&secret).map_err(|e| format!("the webhook's signing secret {e}"))?;
        let body: serde_json::Value = serde_json::from_str(&d.payload)
            .map_err(|e| format!("the stored notification is not JSON: {e}"))?;
        let url = Url::parse(&d.url).map_err(|e| format!("the webhook URL is invalid: {e}"))?;
        // The bytes signed are the bytes sent: the client serializes the body the same way.
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let timestamp = self.clock.now_ms().div_euclid(1000);
        let signature = key.sign(&d.message_id, timestamp, &bytes);
        let request = UpstreamRequest::post_json(url, body)
            .header("webhook-id", d.message_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(
                "user-agent",
                concat!("authgate-webhooks/", env!("CARGO_PKG_VERSION")),
            );
        let redactor = self.vault.redactor();
        redactor.learn(&secret);
        let egress = match d.source {
            CredentialSource::Config => Egress::Trusted,
            CredentialSource::Api => Egress::Guarded,
        };
        let sink = self
            .events
            .webhook_sink(&d.tenant, &d.credential_id, &d.webhook_id);
        let call = UpstreamCall::new(self.http.clone(), sink, redactor, egress);
        Ok(call.send("webhook", request).await)
    }

    /// Delivered on any 2xx; otherwise due again after the backoff (at least what the
    /// receiver's `Retry-After` asks), or failed when that would be past the delivery
    /// period, or when the request cannot succeed (the egress policy refuses the URL).
    fn judge(
        &self,
        d: &Delivery,
        result: Result<UpstreamResponse, ProviderError>,
    ) -> DeliveryOutcome {
        let (error, retry_after) = match result {
            Ok(resp) if resp.is_success() => return DeliveryOutcome::Delivered,
            Ok(resp) => (
                format!("the receiver answered HTTP {}", resp.status),
                resp.retry_after(),
            ),
            Err(e) if !e.is_transient() => {
                return DeliveryOutcome::Failed {
                    error: e.to_string(),
                }
            }
            Err(e) => (e.to_string(), e.retry_after()),
        };
        let s = &self.settings;
        let backoff = s
            .initial_backoff
            .saturating_mul(1u32 << d.attempts.min(20))
            .min(s.max_backoff);
        let delay = retry_after.map_or(backoff, |r| r.min(MAX_RETRY_AFTER).max(backoff));
        let now = self.clock.now_ms();
        let next = now + delay.as_millis() as i64;
        if next > d.created_at_ms + s.give_up_after.as_millis() as i64 {
            return DeliveryOutcome::Failed {
                error: format!(
                    "still failing {} s after it was written: {error}",
                    (now - d.created_at_ms) / 1000
                ),
            };
        }
        DeliveryOutcome::Retry {
            next_attempt_at_ms: next,
            error,
        }
    }

    async fn update_gauges(&self, now: UnixMillis) {
        match self.store.outbox_stats().await {
            Ok(stats) => self.metrics.outbox(&stats, now),
            Err(e) => tracing::debug!(error = %e, "could not read the webhook outbox size"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::crypto::Cipher;
    use crate::store::sqlite::SqliteStore;
    use authgate_plugin_sdk::UpstreamLimits;

    async fn dispatcher(clock: &ManualClock) -> Dispatcher {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        Dispatcher::new(
            store.clone(),
            Vault::new(Arc::new(Cipher::from_key(&[7; 32]))),
            UpstreamClient::new(UpstreamLimits::default()).unwrap(),
            EventLog::new(store, clock.clone()),
            clock,
            DeliverySettings {
                poll_interval: Duration::from_millis(100),
                initial_backoff: Duration::from_secs(5),
                max_backoff: Duration::from_secs(60),
                give_up_after: Duration::from_secs(3600),
                retention: Duration::from_secs(86_400),
            },
        )
    }

    fn delivery(attempts: u32, created_at_ms: UnixMillis) -> Delivery {
        Delivery {
            id: 1,
            tenant: "acme".into(),
            webhook_id: "ops".into(),
            message_id: "msg_1".into(),
            kind: "credential.deleted".into(),
            credential_id: "idp".into(),
            payload: "{}".into(),
            created_at_ms,
            attempts,
            url: "https://hooks.example/x".into(),
            secret_sealed: Vec::new(),
            source: CredentialSource::Api,
        }
    }

    fn answer(status: u16, retry_after: Option<&str>) -> Result<UpstreamResponse, ProviderError> {
        Ok(UpstreamResponse {
            status,
            headers: retry_after
                .map(|r| vec![("retry-after".to_owned(), r.to_owned())])
                .unwrap_or_default(),
            body: Default::default(),
        })
    }

    fn next_in_s(outcome: DeliveryOutcome, now: UnixMillis) -> i64 {
        match outcome {
            DeliveryOutcome::Retry {
                next_attempt_at_ms, ..
            } => (next_attempt_at_ms - now) / 1000,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn backoff_doubles_honours_retry_after_and_gives_up_in_time() {
        let clock = ManualClock::default();
        let d = dispatcher(&clock).await;
        let now = clock.now_ms();
        assert_eq!(
            d.judge(&delivery(0, now), answer(204, None)),
            DeliveryOutcome::Delivered
        );
        assert_eq!(
            next_in_s(d.judge(&delivery(0, now), answer(500, None)), now),
            5
        );
        assert_eq!(
            next_in_s(d.judge(&delivery(2, now), answer(503, None)), now),
            20
        );
        assert_eq!(
            next_in_s(d.judge(&delivery(9, now), answer(503, None)), now),
            60,
            "capped"
        );
        // The receiver's Retry-After wins when it asks for longer, up to an hour.
        assert_eq!(
            next_in_s(d.judge(&delivery(0, now), answer(429, Some("30"))), now),
            30
        );
        assert_eq!(
            next_in_s(d.judge(&delivery(0, now), answer(429, Some("1"))), now),
            5
        );
        // (Capped at an hour, which is past this one's delivery period.)
        let far = d.judge(&delivery(0, now - 10_000), answer(429, Some("999999")));
        assert!(matches!(far, DeliveryOutcome::Failed { .. }), "{far:?}");
        // Past the delivery period: given up, saying why.
        let old = now - 3_590_000;
        match d.judge(&delivery(5, old), answer(502, None)) {
            DeliveryOutcome::Failed { error } => assert!(error.contains("HTTP 502"), "{error}"),
            other => panic!("{other:?}"),
        }
        // A request that cannot succeed (refused by the egress policy) is not retried.
        let refused = Err(ProviderError::config(
            "webhook: egress policy refuses 10.0.0.1",
        ));
        assert!(matches!(
            d.judge(&delivery(0, now), refused),
            DeliveryOutcome::Failed { .. }
        ));
        let timeout = Err(ProviderError::TimedOut {
            step: "webhook".into(),
            after: Duration::from_secs(10),
        });
        assert_eq!(next_in_s(d.judge(&delivery(0, now), timeout), now), 5);
    }
}
