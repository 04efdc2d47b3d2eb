//! Webhooks: a tenant's HTTP endpoints told when its credentials change. Declared in the
//! config file (`[[webhooks]]`) or managed by admins through `WebhookService`; each has a
//! URL, the notification types it subscribes to and a Standard Webhooks signing secret
//! (write-only, sealed in the store like credential secrets).
//!
//! - `notice`: the notification types and bodies; whoever makes a change builds its
//!   notification and hands it to the store with the change (`store::Notify`), so it is
//!   written in the same transaction: a change is never stored without its notification.
//! - `delivery`: the outbox's delivery loop (claim, sign, POST, retry, give up).
//! - `signature`: the Standard Webhooks signature.

pub mod delivery;
pub mod notice;
pub mod signature;

use crate::broker::BrokerError;
use crate::clock::{Clock, UnixMillis};
use crate::config::validate_id;
use crate::store::secrets::Vault;
use crate::store::{CredentialSource, Store, WebhookRecord};
use authgate_plugin_sdk::{EgressPolicy, Secret};
use notice::NoticeType;
use signature::SigningKey;
use std::sync::Arc;
use url::Url;

/// Webhooks one tenant may have: each costs a request per notification.
pub const MAX_WEBHOOKS_PER_TENANT: usize = 16;
const MAX_URL_BYTES: usize = 2048;
/// How long creating a webhook waits for DNS when it checks the URL's host.
const EGRESS_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A webhook as given, by the config file or an admin.
#[derive(Clone)]
pub struct NewWebhook {
    pub tenant: String,
    pub id: String,
    pub url: String,
    /// Notification types (`credential.status_changed`, ...) or `*` for all.
    pub events: Vec<String>,
    pub secret: Secret,
}

impl std::fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewWebhook")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// A webhook as an API shows it: never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookView {
    pub tenant: String,
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub source: CredentialSource,
    pub created_at_ms: UnixMillis,
    pub updated_at_ms: UnixMillis,
}

impl From<WebhookRecord> for WebhookView {
    fn from(r: WebhookRecord) -> Self {
        Self {
            tenant: r.tenant,
            id: r.id,
            url: r.url,
            events: r.kinds,
            source: r.source,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        }
    }
}

/// A checked webhook: its URL and its subscription (named types, sorted, or `*` alone).
#[derive(Debug)]
pub struct Checked {
    pub url: Url,
    pub events: Vec<String>,
}

/// Checks what every webhook needs, with messages that name the field (`at` prefixes
/// them: `webhooks[0]` in the config, the request field names in the API).
pub fn check(new: &NewWebhook, at: &str) -> Result<Checked, String> {
    let sep = if at.is_empty() { "" } else { "." };
    validate_id("tenant", &new.tenant).map_err(|m| format!("{at}{sep}tenant: {m}"))?;
    validate_id("webhook id", &new.id).map_err(|m| format!("{at}{sep}webhook_id: {m}"))?;
    let url = check_url(&new.url).map_err(|m| format!("{at}{sep}url: {m}"))?;
    let events = subscription(&new.events).map_err(|m| format!("{at}{sep}events: {m}"))?;
    SigningKey::parse(&new.secret).map_err(|m| format!("{at}{sep}secret: {m}"))?;
    Ok(Checked { url, events })
}

fn check_url(raw: &str) -> Result<Url, String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("is {} bytes; at most {MAX_URL_BYTES}", raw.len()));
    }
    let url = Url::parse(raw).map_err(|e| format!("is not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(
            "must be an http(s) URL with a host, e.g. https://hooks.example.com/authgate".into(),
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry a user name or password; the signature authenticates each delivery"
                .into(),
        );
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    Ok(url)
}

/// Named types, deduplicated and sorted, or `["*"]`.
fn subscription(events: &[String]) -> Result<Vec<String>, String> {
    if events.is_empty() {
        return Err(format!(
            "is empty; name the notification types to send ({}) or \"*\" for all",
            NoticeType::names()
        ));
    }
    if events.iter().any(|e| e == "*") {
        return Ok(vec!["*".into()]);
    }
    let mut out = Vec::new();
    for e in events {
        let known = NoticeType::parse(e).ok_or_else(|| {
            format!(
                "unknown notification type `{e}`; use {} or \"*\"",
                NoticeType::names()
            )
        })?;
        out.push(known.as_str().to_owned());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Creates, lists and deletes webhooks; keeps the config file's in the store.
#[derive(Clone)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    vault: Vault,
    egress: EgressPolicy,
    clock: Arc<dyn Clock>,
}

fn invalid(m: String) -> BrokerError {
    BrokerError::InvalidArgument(m)
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        egress: EgressPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            vault,
            egress,
            clock,
        }
    }

    /// Creates an API webhook, or replaces the API webhook of that id (a new secret, URL or
    /// subscription). Its URL must pass the egress policy now, and passes it again at every
    /// delivery.
    pub async fn create(&self, new: NewWebhook) -> Result<WebhookView, BrokerError> {
        let checked = check(&new, "").map_err(invalid)?;
        if let Err(denied) = self
            .egress
            .check_url(&checked.url, EGRESS_LOOKUP_TIMEOUT)
            .await
        {
            return Err(invalid(format!("url: {denied}")));
        }
        let existing = self.store.list_webhooks(Some(&new.tenant)).await?;
        match existing.iter().find(|w| w.id == new.id) {
            Some(w) if w.source == CredentialSource::Config => {
                return Err(BrokerError::Misconfigured(format!(
                    "webhook `{}` of tenant `{}` is managed by the config file; change it there",
                    new.id, new.tenant
                )))
            }
            None if existing.len() >= MAX_WEBHOOKS_PER_TENANT => {
                return Err(BrokerError::ResourceExhausted(format!(
                    "tenant `{}` has {} webhooks, the most allowed; delete one first",
                    new.tenant,
                    existing.len()
                )))
            }
            _ => {}
        }
        let rec = self.record(&new, checked, CredentialSource::Api);
        self.store.put_webhook(&rec).await?;
        tracing::info!(tenant = %rec.tenant, webhook = %rec.id, events = ?rec.kinds, "webhook stored");
        Ok(rec.into())
    }

    fn record(
        &self,
        new: &NewWebhook,
        checked: Checked,
        source: CredentialSource,
    ) -> WebhookRecord {
        let now = self.clock.now_ms();
        WebhookRecord {
            tenant: new.tenant.clone(),
            id: new.id.clone(),
            url: checked.url.to_string(),
            kinds: checked.events,
            secret_sealed: self
                .vault
                .seal_webhook_secret(&new.tenant, &new.id, &new.secret),
            source,
            created_at_ms: now,
            updated_at_ms: now,
        }
    }

    pub async fn list(&self, tenant: &str) -> Result<Vec<WebhookView>, BrokerError> {
        validate_id("tenant", tenant).map_err(|m| invalid(format!("tenant: {m}")))?;
        let all = self.store.list_webhooks(Some(tenant)).await?;
        Ok(all.into_iter().map(WebhookView::from).collect())
    }

    /// Deletes an API webhook with the notifications still queued for it; `false` when
    /// there was none.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, BrokerError> {
        validate_id("tenant", tenant).map_err(|m| invalid(format!("tenant: {m}")))?;
        validate_id("webhook id", id).map_err(|m| invalid(format!("webhook_id: {m}")))?;
        let existing = self.store.list_webhooks(Some(tenant)).await?;
        match existing.iter().find(|w| w.id == id) {
            None => return Ok(false),
            Some(w) if w.source == CredentialSource::Config => {
                return Err(BrokerError::Misconfigured(format!(
                    "webhook `{id}` of tenant `{tenant}` is managed by the config file; remove it there"
                )))
            }
            Some(_) => {}
        }
        Ok(self.store.delete_webhook(tenant, id).await?)
    }

    /// Makes the store's config-file webhooks those of `declared` (checked by config
    /// validation): each one stored (replacing an API webhook of the same id), and those no
    /// longer in the file deleted.
    pub async fn sync_config(&self, declared: &[NewWebhook]) -> Result<(), BrokerError> {
        for (i, new) in declared.iter().enumerate() {
            let checked =
                check(new, &format!("webhooks[{i}]")).map_err(BrokerError::Misconfigured)?;
            let rec = self.record(new, checked, CredentialSource::Config);
            self.store.put_webhook(&rec).await?;
        }
        for w in self.store.list_webhooks(None).await? {
            let kept = declared
                .iter()
                .any(|d| d.tenant == w.tenant && d.id == w.id);
            if w.source == CredentialSource::Config && !kept {
                self.store.delete_webhook(&w.tenant, &w.id).await?;
                tracing::info!(tenant = %w.tenant, webhook = %w.id, "webhook removed from the config file: deleted");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(url: &str, events: &[&str], secret: &str) -> NewWebhook {
        NewWebhook {
            tenant: "acme".into(),
            id: "ops".into(),
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secret: Secret::from(secret),
        }
    }

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn subscriptions_are_named_types_or_all() {
        let c = check(
            &new(
                "https://h.example/x",
                &[
                    "credential.deleted",
                    "credential.status_changed",
                    "credential.deleted",
                ],
                KEY,
            ),
            "",
        )
        .unwrap();
        assert_eq!(
            c.events,
            ["credential.deleted", "credential.status_changed"]
        );
        let all = check(
            &new("https://h.example/x", &["credential.deleted", "*"], KEY),
            "",
        )
        .unwrap();
        assert_eq!(all.events, ["*"]);
    }

    #[test]
    fn each_mistake_names_its_field() {
        for (w, field) in [
            (new("ftp://h.example/x", &["*"], KEY), "url"),
            (new("https://u:p@h.example/x", &["*"], KEY), "url"),
            (new("https://h.example/x", &[], KEY), "events"),
            (
                new("https://h.example/x", &["credential.exploded"], KEY),
                "events",
            ),
            (new("https://h.example/x", &["*"], "canary"), "secret"),
        ] {
            let e = check(&w, "webhooks[2]").unwrap_err();
            assert!(e.starts_with(&format!("webhooks[2].{field}:")), "{e}");
            assert!(!e.contains("canary"), "{e}");
        }
        let debug = format!("{:?}", new("https://h.example/x", &["*"], "whsec_canary"));
        assert!(!debug.contains("canary"), "{debug}");
    }
}
