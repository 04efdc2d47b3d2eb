//! `[[webhooks]]` (a tenant's webhooks declared in the file) and `[webhook_delivery]` (how
//! the outbox delivers).

use super::validate::resolve_reference;
use super::{err, Config, ConfigError};
use crate::webhooks::delivery::DeliverySettings;
use crate::webhooks::{check, NewWebhook};
use authgate_plugin_sdk::Secret;
use serde::Deserialize;
use std::time::Duration;

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub tenant: String,
    pub id: String,
    pub url: String,
    /// Notification types, or `["*"]` for all.
    pub events: Vec<String>,
    /// `${env:NAME}` or `${file:PATH}` of a Standard Webhooks secret (`whsec_...`).
    pub secret: String,
}

/// `[webhook_delivery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookDeliveryConfig {
    /// How often each replica looks for notifications due, in milliseconds.
    pub poll_interval_ms: u64,
    /// Wait after the first failed attempt; doubles per attempt up to `max_backoff_seconds`.
    pub initial_backoff_ms: u64,
    pub max_backoff_seconds: u64,
    /// Attempts go on this long after the notification was written; then it is failed.
    pub give_up_after_seconds: u64,
    /// Longest one attempt may take (connect, send, the receiver's answer).
    pub timeout_seconds: u64,
}

impl Default for WebhookDeliveryConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            initial_backoff_ms: 5000,
            max_backoff_seconds: 600,
            give_up_after_seconds: 86_400,
            timeout_seconds: 10,
        }
    }
}

impl WebhookDeliveryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(bool, &str); 5] = [
            (
                (10..=60_000).contains(&self.poll_interval_ms),
                "webhook_delivery.poll_interval_ms must be between 10 and 60000 (default 1000)",
            ),
            (
                (10..=3_600_000).contains(&self.initial_backoff_ms),
                "webhook_delivery.initial_backoff_ms must be between 10 and 3600000 (default 5000)",
            ),
            (
                self.max_backoff_seconds >= 1
                    && self.max_backoff_seconds * 1000 >= self.initial_backoff_ms,
                "webhook_delivery.max_backoff_seconds must be at least 1 and not below initial_backoff_ms",
            ),
            (
                (1..=30 * 86_400).contains(&self.give_up_after_seconds),
                "webhook_delivery.give_up_after_seconds must be between 1 and 2592000 (30 days; default 86400)",
            ),
            (
                (1..=60).contains(&self.timeout_seconds),
                "webhook_delivery.timeout_seconds must be between 1 and 60 (default 10)",
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(err(message)),
            None => Ok(()),
        }
    }

    /// The delivery loop's pacing; finished notifications are kept `retention_days`.
    pub fn settings(&self, retention_days: u32) -> DeliverySettings {
        DeliverySettings {
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_secs(self.max_backoff_seconds),
            give_up_after: Duration::from_secs(self.give_up_after_seconds),
            retention: Duration::from_secs(u64::from(retention_days) * 86_400),
        }
    }
}

impl Config {
    /// The file's webhooks, checked, with their secrets resolved.
    pub fn resolve_webhooks(&self) -> Result<Vec<NewWebhook>, ConfigError> {
        self.webhook_delivery.validate()?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(self.webhooks.len());
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = format!("webhooks[{i}]");
            let secret = resolve_reference(&format!("{at}.secret"), &w.secret)?.ok_or_else(|| {
                err(format!(
                    "{at}.secret is a secret and must be a reference, not inline: use \"${{env:NAME}}\" or \"${{file:/path/to/file}}\""
                ))
            })?;
            let new = NewWebhook {
                tenant: w.tenant.clone(),
                id: w.id.clone(),
                url: w.url.clone(),
                events: w.events.clone(),
                secret: Secret::from(secret),
            };
            check(&new, &at).map_err(err)?;
            if !seen.insert((w.tenant.clone(), w.id.clone())) {
                return Err(err(format!(
                    "{at}: webhook `{}` is defined twice for tenant `{}`; ids must be unique per tenant",
                    w.id, w.tenant
                )));
            }
            out.push(new);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_webhooks_need_a_secret_reference_and_known_types() {
        let base = |events: &str, secret: &str| {
            format!(
                "[[webhooks]]\ntenant = \"acme\"\nid = \"ops\"\nurl = \"https://hooks.example/a\"\nevents = {events}\nsecret = \"{secret}\"\n"
            )
        };
        let inline = Config::parse(&base("[\"*\"]", "whsec_canary")).unwrap();
        let e = inline.validate().unwrap_err().to_string();
        assert!(
            e.contains("webhooks[0].secret") && !e.contains("canary"),
            "{e}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let reference = format!("${{file:{}}}", file.path().display());
        let ok = Config::parse(&base("[\"credential.status_changed\"]", &reference)).unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.resolve_webhooks().unwrap().len(), 1);
        let bad = Config::parse(&base("[\"credential.gone\"]", &reference)).unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("webhooks[0].events"), "{e}");
        let slow = Config::parse("[webhook_delivery]\ntimeout_seconds = 0\n").unwrap();
        let e = slow.validate().unwrap_err().to_string();
        assert!(e.contains("webhook_delivery.timeout_seconds"), "{e}");
    }
}
