//! The credentials this process holds in memory, and everything that changes their state:
//! loading one from its stored record (building its provider), its refresh token, status
//! transitions (each one stored, applied and recorded as an event), and the upstream calls
//! made on a credential's behalf. The token broker reads credentials from here; it never
//! changes a credential's state except through these methods.

use super::runtime::CredentialRuntime;
use crate::broker::BrokerError;
use crate::clock::Clock;
use crate::events::{EventKind, EventLog};
use crate::plugins::Registry;
use crate::store::secrets::Vault;
use crate::store::{
    CredentialRecord, CredentialSource, CredentialStatus, Notification, Notify, Store,
};
use crate::webhooks::notice;
use authgate_plugin_sdk::{
    Egress, EgressPolicy, Provider, ProviderError, Secret, TokenTypeHint, UpstreamCall,
    UpstreamClient,
};
use dashmap::DashMap;
use std::sync::Arc;

/// How long before a client certificate expires its credential's loads say so (30 days).
const CERT_EXPIRY_NOTICE_MS: i64 = 30 * 86_400_000;

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct CredentialSet {
    inner: Arc<Inner>,
}

struct Inner {
    held: DashMap<(String, String), Arc<CredentialRuntime>>,
    store: Arc<dyn Store>,
    vault: Vault,
    events: EventLog,
    http: UpstreamClient,
    registry: Registry,
    clock: Arc<dyn Clock>,
}

/// What an upstream revoke achieved: how many values the provider accepted, and why the
/// others were not revoked.
#[derive(Debug, Default)]
pub struct Revoked {
    pub count: u32,
    pub notes: Vec<String>,
}

impl CredentialSet {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        events: EventLog,
        http: UpstreamClient,
        registry: Registry,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                held: DashMap::new(),
                store,
                vault,
                events,
                http,
                registry,
                clock,
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn vault(&self) -> &Vault {
        &self.inner.vault
    }

    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<CredentialRuntime>> {
        self.inner
            .held
            .get(&(tenant.to_owned(), id.to_owned()))
            .map(|c| c.value().clone())
    }

    /// Every credential in memory.
    pub fn all(&self) -> Vec<Arc<CredentialRuntime>> {
        self.inner.held.iter().map(|c| c.value().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.inner.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.held.is_empty()
    }

    /// Builds the credential's provider from its stored settings and holds it, replacing
    /// what memory held. The caller drops the tokens of the replaced one.
    pub async fn load(
        &self,
        rec: &CredentialRecord,
    ) -> Result<Arc<CredentialRuntime>, BrokerError> {
        let settings = self.inner.vault.open_settings(rec)?;
        let (provider, policy) = self
            .inner
            .registry
            .build_with_policy(&rec.provider, settings)
            .await
            .map_err(|e| BrokerError::Misconfigured(e.to_string()))?;
        let http = self.own_http(rec, provider.as_ref())?;
        self.note_certificate_expiry(rec, provider.as_ref()).await;
        let rt = self.stored_refresh_token(&rec.tenant, &rec.id).await?;
        let has_refresh_token = rt.is_some();
        let mut status = rec.status;
        if status == CredentialStatus::Active && provider.requires_refresh_token() && rt.is_none() {
            status = CredentialStatus::NeedsAuthorization;
        }
        let runtime = Arc::new(
            CredentialRuntime::new(
                rec.tenant.clone(),
                rec.id.clone(),
                rec.provider.clone(),
                provider,
                self.inner.vault.redactor(),
                status,
                rt,
            )
            .with_policy(policy)
            .with_http(http)
            .with_egress(match rec.source {
                CredentialSource::Config => Egress::Trusted,
                CredentialSource::Api => Egress::Guarded,
            }),
        );
        if has_refresh_token {
            // Idle time counts from the last write (the last rotation), not from this start:
            // a restart must not spend a rotation on a refresh token used minutes ago.
            let written = self
                .inner
                .store
                .refresh_token_written_at(&rec.tenant, &rec.id)
                .await?;
            runtime.mark_refresh_token_used(written.unwrap_or(0));
        }
        self.inner
            .held
            .insert((rec.tenant.clone(), rec.id.clone()), runtime.clone());
        Ok(runtime)
    }

    /// The credential's own connection pools, built once here, when its provider has TLS
    /// settings of its own; they keep the shared client's limits and egress policy.
    fn own_http(
        &self,
        rec: &CredentialRecord,
        provider: &dyn Provider,
    ) -> Result<Option<UpstreamClient>, BrokerError> {
        let Some(tls) = provider.client_tls().filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let http = self
            .inner
            .http
            .with_tls(tls)
            .map_err(|e| BrokerError::Misconfigured(e.to_string()))?;
        tracing::debug!(
            tenant = %rec.tenant,
            credential = %rec.id,
            client_certificate = tls.identity().map(|i| i.subject()),
            "built the credential's own connection pools (its TLS settings)"
        );
        Ok(Some(http))
    }

    /// A client certificate that has expired, or expires within [`CERT_EXPIRY_NOTICE_MS`],
    /// is said at every load, in the log and as a `credential_changed` event: a provider's
    /// `invalid_client` alone would not say why.
    async fn note_certificate_expiry(&self, rec: &CredentialRecord, provider: &dyn Provider) {
        let Some(cert) = provider.client_tls().and_then(|t| t.identity()) else {
            return;
        };
        let left_ms = cert
            .expires_at_unix()
            .saturating_mul(1000)
            .saturating_sub(self.inner.clock.now_ms());
        if left_ms > CERT_EXPIRY_NOTICE_MS {
            return;
        }
        let when = if left_ms <= 0 {
            format!("expired on {}", cert.expires_at())
        } else {
            format!(
                "expires on {} (in {} days)",
                cert.expires_at(),
                left_ms / 86_400_000
            )
        };
        let message = format!(
            "the client certificate ({}) {when}; put a renewed one in `tls_client_certificate` and `tls_client_key`",
            cert.subject()
        );
        tracing::warn!(tenant = %rec.tenant, credential = %rec.id, "{message}");
        self.inner
            .events
            .record(&rec.tenant, &rec.id, EventKind::CredentialChanged, message)
            .await;
    }

    /// Stops holding a credential; returns what was held.
    pub fn forget(&self, tenant: &str, id: &str) -> Option<Arc<CredentialRuntime>> {
        self.inner
            .held
            .remove(&(tenant.to_owned(), id.to_owned()))
            .map(|(_, c)| c)
    }

    /// The refresh token in the store (which another replica may have rotated since this
    /// one last read it).
    pub async fn stored_refresh_token(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Secret>, BrokerError> {
        let Some(sealed) = self.inner.store.get_refresh_token(tenant, id).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.inner.vault.open_refresh_token(tenant, id, &sealed)?,
        ))
    }

    /// Stores a refresh token durably (outside a refresh lease: from settings or consent).
    pub async fn store_refresh_token(
        &self,
        tenant: &str,
        id: &str,
        rt: Option<&Secret>,
    ) -> Result<(), BrokerError> {
        let sealed = rt.map(|rt| self.inner.vault.seal_refresh_token(tenant, id, rt));
        let now = self.inner.clock.now_ms();
        self.inner
            .store
            .put_refresh_token(tenant, id, sealed.as_deref(), now)
            .await?;
        Ok(())
    }

    /// Sets a credential's status in the store and in memory and records the transition.
    pub async fn set_status(
        &self,
        cred: &CredentialRuntime,
        status: CredentialStatus,
        reason: &str,
    ) -> Result<(), BrokerError> {
        self.set_status_notifying(cred, status, reason, &[]).await
    }

    /// [`CredentialSet::set_status`], with `also` written in the same transaction (the
    /// status change's own notification is written when the stored status changes).
    pub async fn set_status_notifying(
        &self,
        cred: &CredentialRuntime,
        status: CredentialStatus,
        reason: &str,
        also: &[Notification],
    ) -> Result<(), BrokerError> {
        let before = cred.status();
        let now = self.inner.clock.now_ms();
        let changed =
            notice::status_changed(&cred.tenant, &cred.id, Some(before), status, reason, now);
        let notify = Notify {
            always: also,
            on_status_change: Some(&changed),
        };
        self.inner
            .store
            .set_credential_status_notifying(&cred.tenant, &cred.id, status, None, now, notify)
            .await?;
        cred.set_status(status);
        if before != status {
            self.record(
                cred,
                EventKind::StatusChanged,
                format!("{} → {}: {reason}", before.as_str(), status.as_str()),
            )
            .await;
        }
        Ok(())
    }

    /// A consent step (device authorization) ended without a token: the credential keeps
    /// its status; `message` (what happened, what to do) becomes its `last_error` and an
    /// event.
    pub async fn authorization_failed(&self, cred: &CredentialRuntime, message: String) {
        let now = self.inner.clock.now_ms();
        if let Err(e) = self
            .inner
            .store
            .set_credential_status(&cred.tenant, &cred.id, cred.status(), Some(&message), now)
            .await
        {
            tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "could not store why the authorization failed");
        }
        self.record(cred, EventKind::TokenFailed, message).await;
    }

    /// The provider rejected the credential: it is INVALID from now on (in memory at once;
    /// in the store as well as it can be, with its notification). The caller drops its
    /// tokens.
    pub async fn mark_invalid(&self, cred: &CredentialRuntime, e: &ProviderError) -> BrokerError {
        let now = self.inner.clock.now_ms();
        let msg = e.to_string();
        let before = cred.status();
        cred.set_status(CredentialStatus::Invalid);
        let changed = notice::status_changed(
            &cred.tenant,
            &cred.id,
            Some(before),
            CredentialStatus::Invalid,
            &msg,
            now,
        );
        let notify = Notify {
            always: &[],
            on_status_change: Some(&changed),
        };
        if let Err(se) = self
            .inner
            .store
            .set_credential_status_notifying(
                &cred.tenant,
                &cred.id,
                CredentialStatus::Invalid,
                Some(&msg),
                now,
                notify,
            )
            .await
        {
            tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %se, "could not persist INVALID status");
        }
        self.record(
            cred,
            EventKind::StatusChanged,
            format!("{} → INVALID: {msg}", before.as_str()),
        )
        .await;
        tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %msg, "provider rejected credential; marked INVALID");
        BrokerError::Rejected(cred.not_active_message(Some(&msg)))
    }

    /// A fetch of `scopes` failed `failures` times in a row: queued as a
    /// `token.fetch_failing` notification (the broker calls this once per run of failures).
    pub async fn fetch_failing(
        &self,
        cred: &CredentialRuntime,
        scopes: &[String],
        failures: u32,
        e: &ProviderError,
    ) {
        let now = self.inner.clock.now_ms();
        let n = notice::fetch_failing(
            &cred.tenant,
            &cred.id,
            scopes,
            failures,
            &e.to_string(),
            now,
        );
        if let Err(se) = self.inner.store.append_notifications(&[n]).await {
            tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %se, "could not queue the fetch-failing notification");
        }
    }

    /// Another replica changed the stored status: take it over (no event; that replica
    /// recorded the transition).
    pub fn adopt_status(&self, cred: &CredentialRuntime, status: CredentialStatus) {
        cred.set_status(status);
    }

    /// Why a credential that is not ACTIVE cannot issue tokens, with what to do about it.
    pub async fn not_active(&self, cred: &CredentialRuntime) -> BrokerError {
        let last_error = self
            .inner
            .store
            .get_credential(&cred.tenant, &cred.id)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.last_error);
        BrokerError::NotActive {
            status: cred.status(),
            message: cred.not_active_message(last_error.as_deref()),
        }
    }

    /// Records an event about a credential, on behalf of the current caller.
    pub async fn record(&self, cred: &CredentialRuntime, kind: EventKind, message: String) {
        self.inner
            .events
            .record(&cred.tenant, &cred.id, kind, message)
            .await;
    }

    /// The one way an upstream operation for a credential begins: calls go through the
    /// shared client (or the credential's own, with its client certificate), are recorded
    /// under the credential and the current caller, and are redacted with the credential's
    /// secrets.
    pub fn upstream_call(&self, cred: &CredentialRuntime) -> UpstreamCall {
        UpstreamCall::new(
            cred.http.as_ref().unwrap_or(&self.inner.http).clone(),
            self.inner
                .events
                .sink(&cred.tenant, &cred.id, &cred.provider_kind),
            cred.call_redactor(),
            cred.egress,
        )
    }

    /// The operator's egress allow-list, which API-created credentials are held to.
    pub fn egress_policy(&self) -> &EgressPolicy {
        self.inner.http.egress_policy()
    }

    /// Revokes `tokens` (and with `refresh_token`, the credential's refresh token) at the
    /// provider (RFC 7009), when the provider supports revocation.
    pub async fn revoke_upstream(
        &self,
        cred: &CredentialRuntime,
        tokens: &[Secret],
        refresh_token: bool,
    ) -> Revoked {
        let mut out = Revoked::default();
        if !cred.provider.capabilities().revoke {
            out.notes.push(format!(
                "provider `{}` does not support revocation",
                cred.provider_kind
            ));
            return out;
        }
        let call = self.upstream_call(cred);
        let rt = if refresh_token {
            cred.refresh_token()
        } else {
            None
        };
        let access = tokens.iter().map(|t| (t, TokenTypeHint::AccessToken));
        for (value, hint) in access.chain(rt.iter().map(|t| (t, TokenTypeHint::RefreshToken))) {
            call.redactor().learn(value);
            match cred.provider.revoke(&call, value, hint).await {
                Ok(()) => out.count += 1,
                Err(e) => out.notes.push(e.to_string()),
            }
        }
        out
    }
}
