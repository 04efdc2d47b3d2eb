//! Refresh coordination between replicas that share a store: one replica at a time calls
//! the provider for a credential (it holds the credential's refresh lease), the others wait
//! and adopt the token it stored; what the holder writes is fenced, so a holder that was
//! presumed dead cannot overwrite a newer result; and other replicas' revocations and
//! credential changes are applied to this replica's memory as they commit.
//!
//! Behind the in-process single-flight, so a replica asks for a lease at most once per
//! credential at a time. The hot path (a cache hit) never comes here.

use super::*;
use crate::store::{ChangeStream, StoreChange, StoreError};
use std::collections::HashSet;
use tokio::time::Instant;

/// A refresh lease this process holds for one credential.
pub(super) struct HeldLease {
    fence: i64,
    /// When the lease runs out, by this process's monotonic clock: writes are retried until
    /// then, not longer (after that another replica may hold it).
    deadline: Instant,
}

pub(super) enum Coordinated {
    /// Another replica (or an earlier run) stored a token that does: no upstream call.
    Adopted(Arc<CachedToken>),
    /// This process may call the provider.
    Leased(HeldLease),
}

/// Fallback poll while another replica holds the lease. Its release notification normally
/// wakes the waiters at once; polling covers a lost notification and a dead holder (whose
/// lease expires rather than being released).
const LEASE_POLL: Duration = Duration::from_millis(200);

/// How long a key waits after the store failed before it tries the store again: answers
/// come at once meanwhile (UNAVAILABLE) and a store that is down is not hammered.
const STORE_RETRY: Duration = Duration::from_secs(1);

impl TokenBroker {
    /// Takes the credential's refresh lease or, when another replica refreshed meanwhile,
    /// its stored token instead.
    pub(super) async fn lease_or_adopt(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<Coordinated, BrokerError> {
        if let Some(tok) = self.adopt_stored_token(slot).await? {
            return Ok(Coordinated::Adopted(tok));
        }
        let cred = &slot.cred;
        let store = &self.inner.store;
        let ttl = self.inner.settings.refresh_lease;
        // A lease lasts `ttl` at most; waiting twice that covers a holder that died and the
        // next one's fetch.
        let give_up = Instant::now() + 2 * ttl;
        loop {
            // Registered before asking, so a release between the answer and the wait counts.
            let released = cred.lease_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let asked_at = Instant::now();
            if let Some(lease) = store
                .acquire_refresh_lease(&cred.tenant, &cred.id, store.instance_id(), ttl)
                .await?
            {
                let held = HeldLease {
                    fence: lease.fence,
                    deadline: asked_at + ttl,
                };
                return match self.prepare_under_lease(slot).await {
                    Ok(None) => Ok(Coordinated::Leased(held)),
                    Ok(Some(tok)) => {
                        self.release_lease(cred, &held).await;
                        Ok(Coordinated::Adopted(tok))
                    }
                    Err(e) => {
                        self.release_lease(cred, &held).await;
                        Err(e)
                    }
                };
            }
            if Instant::now() >= give_up {
                return Err(BrokerError::Unavailable {
                    message: format!(
                        "another replica has been refreshing credential `{}` of tenant `{}` for over {} s; retry shortly",
                        cred.id,
                        cred.tenant,
                        (2 * ttl).as_secs()
                    ),
                    retry_after: Some(STORE_RETRY),
                });
            }
            tokio::select! {
                _ = &mut released => {}
                _ = tokio::time::sleep(LEASE_POLL) => {}
            }
            if let Some(tok) = self.adopt_stored_token(slot).await? {
                return Ok(Coordinated::Adopted(tok));
            }
        }
    }

    /// Just after taking the lease: the previous holder may have stored a token just before
    /// letting go (adopt it), found the credential rejected (do not try it again), or
    /// rotated the refresh token (use the stored one, not the copy in memory, which another
    /// replica's refresh has made stale).
    async fn prepare_under_lease(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<Option<Arc<CachedToken>>, BrokerError> {
        if let Some(tok) = self.adopt_stored_token(slot).await? {
            return Ok(Some(tok));
        }
        let cred = &slot.cred;
        if let Some(rec) = self
            .inner
            .store
            .get_credential(&cred.tenant, &cred.id)
            .await?
        {
            if rec.status != CredentialStatus::Active {
                cred.set_status(rec.status);
                return Err(BrokerError::NotActive {
                    status: rec.status,
                    message: cred.not_active_message(rec.last_error.as_deref()),
                });
            }
        }
        if let Some(rt) = self.stored_refresh_token(&cred.tenant, &cred.id).await? {
            cred.set_refresh_token(Some(rt));
        }
        Ok(None)
    }

    /// Caches the token stored for the slot's key when it is newer than the one in memory
    /// (and than the last forced refresh) and not yet due for refresh: someone else already
    /// did the work.
    async fn adopt_stored_token(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<Option<Arc<CachedToken>>, BrokerError> {
        let cred = &slot.cred;
        let Some(rec) = self
            .inner
            .store
            .get_token(&cred.tenant, &cred.id, slot.key.scope_key())
            .await?
        else {
            return Ok(None);
        };
        let now = self.inner.clock.now_ms();
        let held_issued_at = slot
            .current
            .load_full()
            .map_or(UnixMillis::MIN, |t| t.issued_at_ms);
        let not_before = held_issued_at.max(slot.force_not_before_ms.load(Ordering::Acquire));
        if rec.issued_at_ms <= not_before || now >= self.refresh_due(&rec) {
            return Ok(None);
        }
        let field = format!("access_token:{}", rec.scope_key);
        let access = match self.inner.cipher.open_secret(
            SecretSlot {
                tenant: &cred.tenant,
                credential: &cred.id,
                field: &field,
            },
            &rec.access_sealed,
        ) {
            Ok(a) => a,
            Err(_) => {
                tracing::warn!(tenant = %cred.tenant, credential = %cred.id, "stored token failed to decrypt; fetching a new one");
                return Ok(None);
            }
        };
        if slot.dropped.load(Ordering::Acquire) {
            // Revoked while this fetch waited: what was read may be the revoked token.
            return Err(BrokerError::Unavailable {
                message: "the token was revoked while this request waited for it; retry".into(),
                retry_after: None,
            });
        }
        let tok = Arc::new(CachedToken {
            access_token: access,
            token_type: rec.token_type,
            expires_at_ms: rec.expires_at_ms,
            issued_at_ms: rec.issued_at_ms,
            refresh_at_ms: self.refresh_at(rec.issued_at_ms, rec.expires_at_ms),
            scopes: rec.scopes,
            metadata: rec.metadata,
        });
        slot.current.store(Some(tok.clone()));
        *lock(&slot.backoff) = Backoff::default();
        slot.retry_not_before_ms
            .store(UnixMillis::MIN, Ordering::Relaxed);
        self.inner
            .metrics
            .tokens_adopted
            .fetch_add(1, Ordering::Relaxed);
        Ok(Some(tok))
    }

    /// The start of a stored token's refresh window, without jitter: from then on it is not
    /// worth adopting, a refresh is due anyway.
    fn refresh_due(&self, rec: &TokenRecord) -> UnixMillis {
        let s = &self.inner.settings;
        let lifetime = (rec.expires_at_ms - rec.issued_at_ms).max(0);
        let margin = ((lifetime as f64 * s.refresh_fraction) as i64)
            .min(s.refresh_margin_max.as_millis() as i64);
        rec.expires_at_ms - margin
    }

    /// Writes a fetch result: fenced under a lease (`Ok(false)`: the lease is someone
    /// else's now, nothing was written), directly without one. While the lease lasts, a
    /// store that is briefly unreachable is retried: a rotated refresh token that is not
    /// stored is lost to every other replica.
    pub(super) async fn write_result(
        &self,
        cred: &CredentialRuntime,
        lease: Option<&HeldLease>,
        refresh_token: Option<&[u8]>,
        token: Option<&TokenRecord>,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let store = &self.inner.store;
        let Some(lease) = lease else {
            if let Some(rt) = refresh_token {
                store
                    .put_refresh_token(&cred.tenant, &cred.id, Some(rt), now)
                    .await?;
            }
            if let Some(rec) = token {
                store.put_token(rec).await?;
            }
            return Ok(true);
        };
        let mut wait = Duration::from_millis(100);
        loop {
            match store
                .commit_refresh(
                    &cred.tenant,
                    &cred.id,
                    lease.fence,
                    refresh_token,
                    token,
                    now,
                )
                .await
            {
                Err(StoreError::Unavailable(e)) if Instant::now() + wait < lease.deadline => {
                    tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "could not write the refresh result yet; retrying while the lease lasts");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(STORE_RETRY);
                }
                other => return other,
            }
        }
    }

    /// The lease passed to another replica while this one waited for the provider (it was
    /// presumed dead): nothing of this fetch was written. Serve the new holder's token when
    /// it is stored already; otherwise the caller retries.
    pub(super) async fn lease_lost(&self, slot: &Arc<Slot>, caller: Option<&str>) -> FetchResult {
        let cred = &slot.cred;
        tracing::warn!(tenant = %cred.tenant, credential = %cred.id, "refresh lease expired during the fetch and was taken over; result discarded");
        self.inner
            .events
            .record(
                &cred.tenant,
                &cred.id,
                EventKind::TokenFailed,
                caller,
                "refresh result discarded: the refresh lease expired during the fetch and another replica took it over".into(),
                None,
            )
            .await;
        match self.adopt_stored_token(slot).await? {
            Some(tok) => Ok(tok),
            None => Err(BrokerError::Unavailable {
                message: "another replica took over this credential's refresh; retry shortly"
                    .into(),
                retry_after: Some(STORE_RETRY),
            }),
        }
    }

    /// Gives the lease back so waiting replicas go on at once. If that fails, it simply
    /// expires.
    pub(super) async fn release_lease(&self, cred: &CredentialRuntime, lease: &HeldLease) {
        if let Err(e) = self
            .inner
            .store
            .release_refresh_lease(&cred.tenant, &cred.id, lease.fence)
            .await
        {
            tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "could not release the refresh lease; it expires by itself");
        }
    }

    /// The store could not coordinate a fetch: the caller gets UNAVAILABLE, and for a
    /// moment so does every caller of the key (without trying the store again), while
    /// cached tokens of other keys keep being served.
    pub(super) fn store_failed(&self, slot: &Slot, e: BrokerError) -> BrokerError {
        if let BrokerError::Unavailable { message, .. } = &e {
            let mut b = lock(&slot.backoff);
            b.next_attempt_ms = self.inner.clock.now_ms() + STORE_RETRY.as_millis() as i64;
            slot.retry_not_before_ms
                .store(b.next_attempt_ms, Ordering::Relaxed);
            b.last_error = Some(BrokerError::Unavailable {
                message: message.clone(),
                retry_after: Some(STORE_RETRY),
            });
        }
        e
    }

    /// Applies other replicas' changes to this replica's memory until the store goes away
    /// (or this broker does).
    pub(super) fn follow_store_changes(&self, mut changes: ChangeStream) {
        let broker = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                let Some(inner) = broker.upgrade() else {
                    return;
                };
                TokenBroker { inner }.apply_change(change);
            }
        });
    }

    fn apply_change(&self, change: StoreChange) {
        match change {
            StoreChange::TokensDeleted {
                tenant,
                credential_id,
                scope_key,
            } => {
                let n = self
                    .drop_slots(&tenant, &credential_id, scope_key.as_deref())
                    .len();
                tracing::info!(%tenant, credential = %credential_id, dropped = n, "tokens revoked by another replica; dropped from memory");
            }
            StoreChange::CredentialChanged {
                tenant,
                credential_id,
            } => {
                // Its tokens stop now; the credential is re-read off this task, so a slow
                // store does not hold up the revocations queued behind it.
                self.drop_slots(&tenant, &credential_id, None);
                let broker = self.clone();
                tokio::spawn(
                    async move { broker.reload_credential(&tenant, &credential_id).await },
                );
            }
            StoreChange::LeaseReleased {
                tenant,
                credential_id,
            } => {
                if let Some(c) = self.credential(&tenant, &credential_id) {
                    c.lease_released.notify_waiters();
                }
            }
            StoreChange::Resync => {
                let broker = self.clone();
                tokio::spawn(async move { broker.resync().await });
            }
        }
    }

    /// Re-reads one credential another replica changed (created, replaced, deleted,
    /// marked invalid...).
    async fn reload_credential(&self, tenant: &str, id: &str) {
        match self.inner.store.get_credential(tenant, id).await {
            Ok(Some(rec)) => {
                if let Err(e) = self.load_credential(rec).await {
                    tracing::error!(%tenant, credential = %id, error = %e, "cannot load credential changed by another replica");
                }
            }
            Ok(None) => {
                self.forget_credential(tenant, id);
                tracing::info!(%tenant, credential = %id, "credential deleted by another replica");
            }
            Err(e) => {
                tracing::warn!(%tenant, credential = %id, error = %e, "cannot re-read credential changed by another replica; its tokens were dropped");
            }
        }
    }

    /// After notifications may have been missed (the store connection was lost): rebuild
    /// memory from the store, so nothing revoked meanwhile is served from memory.
    async fn resync(&self) {
        let mut wait = Duration::from_millis(200);
        for _ in 0..10 {
            match self.resync_once().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "resync with the store failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(
            "could not resync with the store; cached tokens may be stale until the next change"
        );
    }

    async fn resync_once(&self) -> Result<(), BrokerError> {
        let stored: HashSet<(String, String)> = self
            .inner
            .store
            .list_credentials()
            .await?
            .into_iter()
            .map(|c| (c.tenant, c.id))
            .collect();
        for c in self.credentials() {
            if !stored.contains(&(c.tenant.clone(), c.id.clone())) {
                self.forget_credential(&c.tenant, &c.id);
            }
        }
        // Reloading a credential drops its cached tokens; the still-valid stored ones come
        // back with it, revoked ones do not.
        self.load_state().await
    }
}
