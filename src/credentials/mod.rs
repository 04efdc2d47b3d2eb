//! The one owner of a credential's life: created or replaced (through the API or from the
//! config file), read without its secrets, deleted, loaded from the store at start and
//! followed as other replicas change it, authorized through the provider's consent step
//! (in a browser, or on another device: RFC 8628), and kept alive while idle.
//!
//! Layers inside: [`runtime`] is a credential in memory; [`set`] holds them and makes every
//! state transition (the token broker uses only this); the [`CredentialManager`] above the
//! broker runs the operations that change a credential and its tokens together. Secrets
//! are write-only: settings are stored encrypted, and every view is built without them.

mod authorization;
mod device;
mod follow;
mod keep_alive;
mod runtime;
mod set;
mod sync;

mod policy;
pub use authorization::{
    consent_cookie_name, CallbackOutcome, CallbackQuery, Started, AUTHORIZATION_TTL,
};
pub use device::{DeviceStart, MAX_DEVICE_EXPIRY};
pub use policy::CredentialPolicy;
pub use runtime::{CredentialRuntime, TokenShape};
pub use set::{CredentialSet, Revoked};

use crate::api::convert::normalize_numbers;
use crate::broker::{BrokerError, TokenBroker};
use crate::clock::UnixMillis;
use crate::config::validate_id;
use crate::events::EventKind;
use crate::store::{CredentialRecord, CredentialSource, CredentialStatus, Notify};
use crate::webhooks::notice;
use authgate_plugin_sdk::redact::is_secret_field;
use authgate_plugin_sdk::Secret;
use std::sync::Arc;
use url::Url;

/// A credential as the API shows it: never a secret.
#[derive(Debug, Clone)]
pub struct CredentialView {
    pub record: CredentialRecord,
    /// Settings without secret fields.
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub secret_fields_set: Vec<String>,
    pub has_refresh_token: bool,
    /// (scopes, expires_at_ms, issued_at_ms) of tokens held in memory.
    pub tokens: Vec<(Vec<String>, UnixMillis, UnixMillis)>,
    pub capabilities: Vec<&'static str>,
}

/// New settings for a credential, from the API or the config file.
struct NewSettings<'a> {
    tenant: &'a str,
    id: &'a str,
    provider: &'a str,
    settings: &'a serde_json::Value,
    source: CredentialSource,
    status: CredentialStatus,
    /// The refresh token the settings give. From the API it replaces any stored one (a
    /// refresh token of the old settings may belong to another client); from the config
    /// file only a given one replaces the stored one.
    refresh_token: Option<Secret>,
}

/// Credential operations. Cheap to clone.
#[derive(Clone)]
pub struct CredentialManager(Arc<Parts>);

/// What the manager works with; background tasks hold it weakly, so they end with it.
struct Parts {
    set: CredentialSet,
    broker: TokenBroker,
    authorizations: authorization::Pending,
    /// Device authorization polls (RFC 8628), one per credential at most.
    devices: device::DevicePolls,
}

fn invalid(msg: impl Into<String>) -> BrokerError {
    BrokerError::InvalidArgument(msg.into())
}

/// How long a PutCredential waits for DNS when it checks a provider URL's host.
const EGRESS_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuses settings whose http(s) URLs (at any depth) point where API-created credentials
/// may not reach. The connect-time check stays the real guard (names can change what they
/// resolve to); this one gives the admin the answer when the credential is stored.
async fn check_egress(
    policy: &authgate_plugin_sdk::EgressPolicy,
    value: &serde_json::Value,
    path: &str,
) -> Result<(), BrokerError> {
    let mut pending = vec![(path.to_owned(), value)];
    while let Some((path, value)) = pending.pop() {
        match value {
            serde_json::Value::String(s)
                if s.starts_with("http://") || s.starts_with("https://") =>
            {
                if let Ok(url) = Url::parse(s) {
                    if let Err(denied) = policy.check_url(&url, EGRESS_LOOKUP_TIMEOUT).await {
                        return Err(invalid(format!("{path}: {denied}")));
                    }
                }
            }
            serde_json::Value::Object(map) => {
                pending.extend(map.iter().map(|(k, v)| (format!("{path}.{k}"), v)));
            }
            serde_json::Value::Array(items) => {
                pending.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("{path}[{i}]"), v)),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_ids(tenant: &str, id: &str) -> Result<(), BrokerError> {
    validate_id("tenant", tenant).map_err(|m| invalid(format!("tenant: {m}")))?;
    validate_id("credential_id", id).map_err(|m| invalid(format!("credential_id: {m}")))
}

impl CredentialManager {
    pub fn new(broker: TokenBroker, redirect_uri: Url) -> Self {
        Self(Arc::new(Parts {
            set: broker.credentials().clone(),
            broker,
            authorizations: authorization::Pending::new(redirect_uri),
            devices: device::DevicePolls::default(),
        }))
    }

    pub fn broker(&self) -> &TokenBroker {
        &self.0.broker
    }

    /// Creates or replaces an API-managed credential.
    pub async fn put(
        &self,
        tenant: &str,
        id: &str,
        provider: &str,
        settings: serde_json::Value,
    ) -> Result<CredentialView, BrokerError> {
        check_ids(tenant, id)?;
        let settings = normalize_numbers(settings);
        let built = self
            .0
            .set
            .registry()
            .build_with_policy(provider, settings.clone())
            .await
            .map(|(provider, _)| provider)
            .map_err(|e| match e {
                crate::plugins::BuildError::UnknownKind { .. } => invalid(format!("provider: {e}")),
                crate::plugins::BuildError::Settings(e) => invalid(format!("settings: {e}")),
            })?;
        check_egress(self.0.set.egress_policy(), &settings, "settings").await?;
        let configured_rt = built.configured_refresh_token();
        let status = if built.requires_refresh_token() && configured_rt.is_none() {
            CredentialStatus::NeedsAuthorization
        } else {
            CredentialStatus::Active
        };
        let existing = self
            .store_settings(NewSettings {
                tenant,
                id,
                provider,
                settings: &settings,
                source: CredentialSource::Api,
                status,
                refresh_token: configured_rt,
            })
            .await?;
        let what = if existing.is_some() {
            "replaced"
        } else {
            "created"
        };
        let events = self.0.set.events();
        events
            .record(
                tenant,
                id,
                EventKind::CredentialChanged,
                format!("credential {what} through the API (provider {provider})"),
            )
            .await;
        let before = existing.map(|e| e.status);
        if before != Some(status) {
            events
                .record(
                    tenant,
                    id,
                    EventKind::StatusChanged,
                    format!(
                        "{} → {}: credential {what}",
                        before.map_or("NONE", CredentialStatus::as_str),
                        status.as_str()
                    ),
                )
                .await;
        }
        self.get(tenant, id).await
    }

    /// Stores a credential's new settings (the one place a credential is written): the
    /// record, its old tokens dropped, its refresh token set, then loaded into memory.
    /// Returns the record it replaced.
    async fn store_settings(
        &self,
        new: NewSettings<'_>,
    ) -> Result<Option<CredentialRecord>, BrokerError> {
        let (tenant, id) = (new.tenant, new.id);
        let store = self.0.set.store();
        let existing = store.get_credential(tenant, id).await?;
        if let Some(e) = &existing {
            if e.source == CredentialSource::Config && new.source == CredentialSource::Api {
                return Err(BrokerError::Misconfigured(format!(
                    "credential `{id}` of tenant `{tenant}` is managed by the config file; change it there"
                )));
            }
        }
        let now = self.0.set.clock().now_ms();
        let vault = self.0.set.vault();
        let rec = CredentialRecord {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            provider: new.provider.to_owned(),
            settings_sealed: vault.seal_settings(tenant, id, new.settings),
            settings_digest: vault.settings_digest(new.provider, new.settings),
            status: new.status,
            last_error: None,
            source: new.source,
            created_at_ms: existing.as_ref().map_or(now, |e| e.created_at_ms),
            updated_at_ms: now,
        };
        let sealed_rt = new
            .refresh_token
            .as_ref()
            .map(|rt| vault.seal_refresh_token(tenant, id, rt));
        let refresh_token = match (&sealed_rt, new.source) {
            (Some(rt), _) => Some(Some(rt.as_slice())),
            (None, CredentialSource::Api) => Some(None),
            (None, CredentialSource::Config) => None,
        };
        // The notifications are written with the change: created or replaced, and a status
        // change of an existing credential (INVALID → ACTIVE after new secrets: a recovery).
        let put = notice::credential_put(
            tenant,
            id,
            new.provider,
            new.source.as_str(),
            existing.is_some(),
            now,
        );
        let status_changed = existing.as_ref().map(|e| {
            notice::status_changed(
                tenant,
                id,
                Some(e.status),
                new.status,
                "the credential's settings were replaced",
                now,
            )
        });
        let notify = Notify {
            always: std::slice::from_ref(&put),
            on_status_change: status_changed.as_ref(),
        };
        store
            .replace_credential_notifying(&rec, refresh_token, notify)
            .await?;
        // A device authorization started under the old settings is not for these.
        self.0.devices.cancel(tenant, id);
        if new.source == CredentialSource::Api {
            self.load_record(&rec).await?;
        }
        Ok(existing)
    }

    /// Holds a credential from its stored record, dropping the tokens of what memory held.
    async fn load_record(&self, rec: &CredentialRecord) -> Result<(), BrokerError> {
        self.0.set.load(rec).await?;
        // After the new one is held: a slot made meanwhile for the old one goes too.
        self.0.broker.drop_tokens(&rec.tenant, &rec.id, None);
        Ok(())
    }

    /// Stops holding a credential and its tokens.
    fn forget(&self, tenant: &str, id: &str) -> Option<Arc<CredentialRuntime>> {
        let held = self.0.set.forget(tenant, id);
        self.0.devices.cancel(tenant, id);
        self.0.broker.drop_tokens(tenant, id, None);
        held
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<CredentialView, BrokerError> {
        check_ids(tenant, id)?;
        let rec = self
            .0
            .set
            .store()
            .get_credential(tenant, id)
            .await?
            .ok_or_else(|| BrokerError::not_found(tenant, id))?;
        self.view(rec).await
    }

    async fn view(&self, rec: CredentialRecord) -> Result<CredentialView, BrokerError> {
        let all = match self.0.set.vault().open_settings(&rec)? {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let secret_names = self
            .0
            .set
            .registry()
            .factory(&rec.provider)
            .map(|f| f.secret_fields())
            .unwrap_or(&[]);
        let mut secret_fields_set = Vec::new();
        let is_secret = |k: &str| secret_names.contains(&k) || is_secret_field(k);
        let settings = without_secrets(all, "", &is_secret, &mut secret_fields_set);
        let has_refresh_token = self
            .0
            .set
            .store()
            .get_refresh_token(&rec.tenant, &rec.id)
            .await?
            .is_some();
        let capabilities = self
            .0
            .set
            .get(&rec.tenant, &rec.id)
            .map(|c| {
                let caps = c.provider.capabilities();
                [
                    (caps.revoke, "revoke"),
                    (caps.authorization_code, "authorization_code"),
                    (caps.pkce, "pkce"),
                    (caps.refresh_token, "refresh_token"),
                    (caps.token_exchange, "token_exchange"),
                    (caps.device_code, "device_code"),
                ]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect()
            })
            .unwrap_or_default();
        let tokens = self
            .0
            .broker
            .cached_tokens(&rec.tenant, &rec.id)
            .iter()
            .map(|(scopes, t)| (t.scopes(scopes), t.expires_at_ms, t.issued_at_ms))
            .collect();
        Ok(CredentialView {
            record: rec,
            settings,
            secret_fields_set,
            has_refresh_token,
            tokens,
            capabilities,
        })
    }

    /// A tenant's credentials ordered by id, `limit` after `after`.
    pub async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<CredentialView>, bool), BrokerError> {
        validate_id("tenant", tenant).map_err(|m| invalid(format!("tenant: {m}")))?;
        let mut recs: Vec<CredentialRecord> = self
            .0
            .set
            .store()
            .list_credentials()
            .await?
            .into_iter()
            .filter(|r| r.tenant == tenant && after.is_none_or(|a| r.id.as_str() > a))
            .collect();
        recs.sort_by(|a, b| a.id.cmp(&b.id));
        let more = recs.len() > limit;
        recs.truncate(limit);
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            out.push(self.view(r).await?);
        }
        Ok((out, more))
    }

    /// Deletes a credential with its tokens, refresh token and events; optionally revokes
    /// its tokens and refresh token at the provider first.
    pub async fn delete(
        &self,
        tenant: &str,
        id: &str,
        revoke_upstream: bool,
    ) -> Result<(bool, u32), BrokerError> {
        check_ids(tenant, id)?;
        let store = self.0.set.store();
        let Some(rec) = store.get_credential(tenant, id).await? else {
            return Err(BrokerError::not_found(tenant, id));
        };
        if rec.source == CredentialSource::Config {
            return Err(BrokerError::Misconfigured(format!(
                "credential `{id}` of tenant `{tenant}` is managed by the config file; remove it there"
            )));
        }
        let mut revoked = 0;
        if revoke_upstream {
            if let Some(cred) = self.0.set.get(tenant, id) {
                let tokens: Vec<Secret> = self
                    .0
                    .broker
                    .cached_tokens(tenant, id)
                    .into_iter()
                    .map(|(_, t)| t.access_token.clone())
                    .collect();
                revoked = self.0.set.revoke_upstream(&cred, &tokens, true).await.count;
            }
        }
        self.forget(tenant, id);
        let gone = notice::credential_deleted(tenant, id, self.0.set.clock().now_ms());
        let notify = Notify {
            always: std::slice::from_ref(&gone),
            on_status_change: None,
        };
        let deleted = store
            .delete_credential_notifying(tenant, id, notify)
            .await?;
        tracing::info!(
            tenant,
            credential = id,
            revoked,
            "credential deleted with its tokens and events"
        );
        Ok((deleted, revoked))
    }
}

/// `settings` without any field whose name says it holds a secret, at any depth (e.g. a
/// `client_assertion` inside `extra_params`); the removed fields' dotted paths go to
/// `removed`. Secrets are write-only: no API returns one.
fn without_secrets(
    settings: serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    is_secret: &dyn Fn(&str) -> bool,
    removed: &mut Vec<String>,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut kept = serde_json::Map::new();
    for (k, v) in settings {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        // Below the top level only the generic name rule applies: plugin-named secret
        // fields are top-level settings.
        let secret = if prefix.is_empty() {
            is_secret(&k)
        } else {
            is_secret_field(&k)
        };
        if secret {
            removed.push(path);
            continue;
        }
        let v = match v {
            Value::Object(m) => Value::Object(without_secrets(m, &path, is_secret, removed)),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::Object(m) => Value::Object(without_secrets(
                            m,
                            &format!("{path}[{i}]"),
                            is_secret,
                            removed,
                        )),
                        other => other,
                    })
                    .collect(),
            ),
            other => other,
        };
        kept.insert(k, v);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_removed_at_every_depth_and_named() {
        let settings = serde_json::json!({
            "client_id": "gw",
            "client_secret": "canary-1",
            "region": "eu",
            "extra_params": {
                "audience": "https://api",
                "client_assertion": "canary-2",
                "subscription-key": "canary-3"
            },
            "headers": [{"name": "x", "access_key": "canary-4"}]
        });
        let serde_json::Value::Object(all) = settings else {
            unreachable!()
        };
        let mut removed = Vec::new();
        let kept = without_secrets(
            all,
            "",
            &|k| k == "region" || is_secret_field(k),
            &mut removed,
        );
        let text = serde_json::Value::Object(kept).to_string();
        assert!(!text.contains("canary"), "{text}");
        assert!(
            text.contains("https://api") && text.contains("\"gw\""),
            "{text}"
        );
        removed.sort();
        assert_eq!(
            removed,
            [
                "client_secret",
                "extra_params.client_assertion",
                "extra_params.subscription-key",
                "headers[0].access_key",
                "region"
            ]
        );
    }
}
