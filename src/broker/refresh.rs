//! The slow path of a cache key: one upstream fetch with everything around it, in the
//! order a fetch walks: one at a time per credential in this process; across replicas
//! only under the credential's refresh lease, adopting the token another replica stored
//! instead when there is one; the provider call; then accepting the token (the rotated
//! refresh token stored durably before anyone sees the access token) or handling the
//! failure (the credential marked INVALID, or the key backing off).
//!
//! The refresh window (when a token is due for refresh) is computed here and only here.

use super::cache::{CacheKey, CachedToken, Slot, TokenTimes};
use super::coordination::{Coordinator, HeldLease, RefreshResult};
use super::{BrokerError, BrokerSettings, FetchResult, Inner};
use crate::clock::UnixMillis;
use crate::credentials::{CredentialRuntime, TokenShape};
use crate::error::STORE_RETRY;
use crate::events::EventKind;
use crate::store::{CredentialStatus, TokenRecord};
use crate::webhooks::notice::FETCH_FAILING_AFTER;
use authgate_plugin_sdk::{FetchRequest, IssuedToken, ProviderError};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// The refresh window of a token: it is due `margin` before expiry (the smaller of
/// `refresh_fraction` of its lifetime and `refresh_margin_max`), and a background refresh
/// starts up to `jitter_max` earlier still, so tokens issued together are not all refreshed
/// in the same second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RefreshWindow {
    pub due_at_ms: UnixMillis,
    pub jitter_max_ms: i64,
}

impl RefreshWindow {
    pub fn of(s: &BrokerSettings, issued_at: UnixMillis, expires_at: UnixMillis) -> Self {
        let lifetime = (expires_at - issued_at).max(0);
        let frac = (lifetime as f64 * s.refresh_fraction) as i64;
        let margin = frac.min(s.refresh_margin_max.as_millis() as i64);
        // Jitter up to twice the fraction, but never before half the lifetime.
        let jitter_max_ms = (2 * frac).min(lifetime / 2 - margin).max(0);
        Self {
            due_at_ms: expires_at - margin,
            jitter_max_ms,
        }
    }

    /// When to start refreshing: a random point of the jitter before the due time.
    pub fn refresh_at(self) -> UnixMillis {
        let jitter = if self.jitter_max_ms > 0 {
            rand::thread_rng().gen_range(0..=self.jitter_max_ms)
        } else {
            0
        };
        self.due_at_ms - jitter
    }
}

/// How a fetch may go on after coordinating with the other replicas.
enum Coordinated {
    /// Another replica (or an earlier run) stored a token that does: no upstream call.
    Adopted(Arc<CachedToken>),
    /// This process may call the provider.
    Leased(HeldLease),
}

impl Inner {
    pub(super) fn times(&self, issued_at_ms: UnixMillis, expires_at_ms: UnixMillis) -> TokenTimes {
        TokenTimes {
            issued_at_ms,
            expires_at_ms,
            refresh_at_ms: RefreshWindow::of(&self.settings, issued_at_ms, expires_at_ms)
                .refresh_at(),
        }
    }

    /// A stored token as the cache holds it, with its key.
    pub(super) fn cached_from_record(
        &self,
        cred: &CredentialRuntime,
        rec: TokenRecord,
    ) -> Result<(CacheKey, Arc<CachedToken>), BrokerError> {
        let access = self.credentials.vault().open_access_token(&rec)?;
        let key = CacheKey::new(
            &rec.tenant,
            &rec.credential_id,
            &authgate_plugin_sdk::ScopeSet::new(rec.scope_key.split(' ')),
        );
        let requested = key.scopes();
        let granted = (rec.scopes.as_slice() != requested.as_slice()).then_some(rec.scopes);
        let shape = cred.shape(TokenShape {
            token_type: rec.token_type,
            granted_scopes: granted,
            metadata: rec.metadata,
        });
        let times = self.times(rec.issued_at_ms, rec.expires_at_ms);
        Ok((key, Arc::new(CachedToken::new(access, times, shape))))
    }

    /// One upstream fetch for a slot, with everything that must happen around it: one at a
    /// time per credential in this process and, across replicas, only under the credential's
    /// refresh lease; a replica that waited for the lease adopts the token the holder stored.
    pub(super) async fn fetch_and_store(&self, slot: &Arc<Slot>) -> FetchResult {
        let cred = slot.cred.clone();
        // Keys that never had a token (new scope sets) queue among themselves first, and
        // hold their turn until done: the fetch lock is FIFO, and a caller asking for
        // hundreds of new scope sets would otherwise put the refresh of every key in use
        // behind all their fetches. So a key in use waits for one new key's fetch at most.
        let _new_key_turn = if slot.current.load().is_none() {
            Some(cred.new_key_turn.lock().await)
        } else {
            None
        };
        // What the key held when this fetch began: a different token found later was put
        // there by another replica's notice while this fetch waited.
        let held_at_start = slot.current.load_full();
        let _one_at_a_time = cred.fetch_lock.lock().await;
        let lease = match self.lease_or_adopt(slot, &held_at_start).await {
            Ok(Coordinated::Adopted(tok)) => return Ok(tok),
            Ok(Coordinated::Leased(lease)) => lease,
            Err(e) => return Err(self.store_failed(slot, e)),
        };
        let result = self.fetch_under_lease(slot, &lease).await;
        self.coordinator.release(&cred, &lease).await;
        result
    }

    /// Takes the credential's refresh lease or, when another replica refreshed meanwhile,
    /// its stored token instead.
    async fn lease_or_adopt(
        &self,
        slot: &Arc<Slot>,
        held_at_start: &Option<Arc<CachedToken>>,
    ) -> Result<Coordinated, BrokerError> {
        if let Some(tok) = self.adopt_stored_token(slot, held_at_start).await? {
            return Ok(Coordinated::Adopted(tok));
        }
        let cred = &slot.cred;
        let c = &self.coordinator;
        let give_up_at = self.clock.now_ms() + c.give_up_after().as_millis() as i64;
        let mut waited = false;
        for _ in 0..c.max_polls() {
            // Registered before asking, so a release between the answer and the wait counts.
            let released = cred.lease_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(lease) = c.try_acquire(cred).await? {
                return match self.prepare_under_lease(slot, held_at_start).await {
                    Ok(None) => Ok(Coordinated::Leased(lease)),
                    Ok(Some(tok)) => {
                        c.release(cred, &lease).await;
                        Ok(Coordinated::Adopted(tok))
                    }
                    Err(e) => {
                        c.release(cred, &lease).await;
                        Err(e)
                    }
                };
            }
            if self.clock.now_ms() >= give_up_at {
                break;
            }
            if !waited {
                waited = true;
                self.metrics.counters().lease_waits.inc();
            }
            Coordinator::wait_for_release(released).await;
            if let Some(tok) = self.adopt_stored_token(slot, held_at_start).await? {
                return Ok(Coordinated::Adopted(tok));
            }
        }
        Err(BrokerError::Unavailable {
            message: format!(
                "another replica has been refreshing credential `{}` of tenant `{}` for over {} s; retry shortly",
                cred.id,
                cred.tenant,
                c.give_up_after().as_secs()
            ),
            retry_after: Some(STORE_RETRY),
        })
    }

    /// Just after taking the lease: the previous holder may have stored a token just before
    /// letting go (adopt it), found the credential rejected (do not try it again), or
    /// rotated the refresh token (use the stored one, not the copy in memory, which another
    /// replica's refresh has made stale).
    async fn prepare_under_lease(
        &self,
        slot: &Arc<Slot>,
        held_at_start: &Option<Arc<CachedToken>>,
    ) -> Result<Option<Arc<CachedToken>>, BrokerError> {
        if let Some(tok) = self.adopt_stored_token(slot, held_at_start).await? {
            return Ok(Some(tok));
        }
        let cred = &slot.cred;
        let creds = &self.credentials;
        if let Some(rec) = creds.store().get_credential(&cred.tenant, &cred.id).await? {
            if rec.status != CredentialStatus::Active {
                creds.adopt_status(cred, rec.status);
                return Err(BrokerError::NotActive {
                    status: rec.status,
                    message: cred.not_active_message(rec.last_error.as_deref()),
                });
            }
        }
        if let Some(rt) = creds.stored_refresh_token(&cred.tenant, &cred.id).await? {
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
        held_at_start: &Option<Arc<CachedToken>>,
    ) -> Result<Option<Arc<CachedToken>>, BrokerError> {
        // Another replica's notice may have brought a fresh token while this fetch waited
        // (see `adopt_newer_stored`): then there is nothing left to fetch.
        let now = self.clock.now_ms();
        if let Some(held) = slot.current.load_full() {
            let replaced = held_at_start
                .as_ref()
                .is_none_or(|start| !Arc::ptr_eq(start, &held));
            if replaced && now < held.refresh_at_ms && held.issued_at_ms > slot.forced_refresh_at()
            {
                return Ok(Some(held));
            }
        }
        self.adopt_newer_stored(slot).await
    }

    /// The stored token of the key when it is newer than the one held and not yet due for
    /// refresh: cached and returned.
    pub(super) async fn adopt_newer_stored(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<Option<Arc<CachedToken>>, BrokerError> {
        let cred = &slot.cred;
        let Some(rec) = self
            .coordinator
            .stored_token(cred, slot.key.scope_key())
            .await?
        else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        let held_issued_at = slot
            .current
            .load_full()
            .map_or(UnixMillis::MIN, |t| t.issued_at_ms);
        let not_before = held_issued_at.max(slot.forced_refresh_at());
        let due = RefreshWindow::of(&self.settings, rec.issued_at_ms, rec.expires_at_ms).due_at_ms;
        if rec.issued_at_ms <= not_before || now >= due {
            return Ok(None);
        }
        let tok = match self.cached_from_record(cred, rec) {
            Ok((_, tok)) => tok,
            Err(e) => {
                tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "stored token cannot be used; fetching a new one");
                return Ok(None);
            }
        };
        if slot.is_dropped() {
            // Revoked while this fetch waited: what was read may be the revoked token.
            return Err(BrokerError::Unavailable {
                message: "the token was revoked while this request waited for it; retry".into(),
                retry_after: None,
            });
        }
        slot.current.store(Some(tok.clone()));
        slot.reset_backoff();
        self.metrics.counters().tokens_adopted.inc();
        Ok(Some(tok))
    }

    /// The upstream fetch itself, made while holding the credential's refresh lease.
    async fn fetch_under_lease(&self, slot: &Arc<Slot>, lease: &HeldLease) -> FetchResult {
        let cred = slot.cred.clone();
        let scopes = slot.key.scopes();
        let timeout = self.settings.fetch_timeout;
        let mut retried_with_stored_token = false;
        if let Err(wait) = cred.policy.take_upstream_request() {
            return Err(self.over_budget(slot, wait).await);
        }
        loop {
            let used_rt = cred.refresh_token();
            let call = self.credentials.upstream_call(&cred);
            self.metrics.counters().upstream_fetches.inc();
            let request = FetchRequest {
                scopes: &scopes,
                refresh_token: used_rt.as_ref(),
                call: &call,
            };
            // Lifetimes count from when the request left: the gateway never believes a
            // token lives longer than the provider meant.
            let sent_at = self.clock.now_ms();
            let outcome = tokio::time::timeout(timeout, cred.provider.fetch(request))
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::TimedOut {
                        step: "fetch".into(),
                        after: timeout,
                    })
                });
            match outcome {
                Ok(issued) => {
                    if used_rt.is_some() || issued.refresh_token.is_some() {
                        cred.mark_refresh_token_used(self.clock.now_ms());
                    }
                    return self.accept(slot, issued, Some(lease), sent_at).await;
                }
                Err(e) if e.rejects_credential() && !retried_with_stored_token => {
                    // Before declaring the credential dead, make sure we did not just use a
                    // refresh token that another refresh (or replica) already rotated.
                    let stored = self
                        .credentials
                        .stored_refresh_token(&cred.tenant, &cred.id)
                        .await?;
                    if stored.is_some() && stored != used_rt {
                        cred.set_refresh_token(stored);
                        retried_with_stored_token = true;
                        continue;
                    }
                    return Err(self.rejected(&cred, &e).await);
                }
                Err(e) if e.rejects_credential() => return Err(self.rejected(&cred, &e).await),
                Err(e) => return Err(self.failed(slot, e).await),
            }
        }
    }

    /// Stores and caches a token the provider issued. Fetched under a refresh `lease`, its
    /// results are written only while the lease is still this replica's (fenced).
    pub(super) async fn accept(
        &self,
        slot: &Arc<Slot>,
        mut issued: IssuedToken,
        lease: Option<&HeldLease>,
        sent_at: UnixMillis,
    ) -> FetchResult {
        let cred = &slot.cred;
        let vault = self.credentials.vault();
        let now = self.clock.now_ms();
        let expires_at_ms = match (issued.expires_in, issued.expires_at_unix) {
            (Some(d), _) => sent_at.min(now) + d.as_millis() as i64,
            (None, Some(exp)) => (exp as i64).saturating_mul(1000),
            (None, None) => now + 3_600_000,
        };
        if expires_at_ms <= now {
            let e = ProviderError::transient(
                "token",
                "provider issued a token that is already expired (expires_in 0 or exp in the past)",
            );
            return Err(self.failed(slot, e).await);
        }
        // A rotated refresh token is written durably before the new access token is handed
        // to anyone: losing it would lock the credential out at the next refresh.
        if let Some(rt) = issued.refresh_token.take() {
            cred.set_refresh_token(Some(rt.clone()));
            let sealed = vault.seal_refresh_token(&cred.tenant, &cred.id, &rt);
            let written = RefreshResult {
                refresh_token: Some(&sealed),
                token: None,
            };
            if !self.coordinator.commit(cred, lease, written).await? {
                return self.lease_lost(slot).await;
            }
        }
        let legacy = issued.metadata.get("legacy_grant").cloned();
        let requested = slot.key.scopes();
        let granted = issued
            .scopes
            .take()
            .filter(|g| g.as_slice() != requested.as_slice());
        let shape = cred.shape(TokenShape {
            token_type: issued.token_type,
            granted_scopes: granted,
            metadata: issued.metadata,
        });
        let tok = Arc::new(CachedToken::new(
            issued.access_token,
            self.times(now, expires_at_ms),
            shape,
        ));
        if slot.is_dropped() {
            // Revoked while the fetch was in flight: hand it to the waiting callers (they
            // asked before the revoke) but do not cache or store it.
            return Ok(tok);
        }
        let scope_key = slot.key.scope_key();
        let rec = TokenRecord {
            tenant: cred.tenant.clone(),
            credential_id: cred.id.clone(),
            scope_key: scope_key.to_owned(),
            access_sealed: vault.seal_access_token(
                &cred.tenant,
                &cred.id,
                scope_key,
                &tok.access_token,
            ),
            token_type: tok.token_type().to_owned(),
            expires_at_ms,
            issued_at_ms: now,
            scopes: tok.scopes(&requested),
            metadata: tok.metadata().clone(),
        };
        let written = RefreshResult {
            refresh_token: None,
            token: Some(&rec),
        };
        match self.coordinator.commit(cred, lease, written).await {
            Ok(true) => {}
            // Presumed dead, this replica lost the lease: the new holder's token wins.
            Ok(false) => return self.lease_lost(slot).await,
            Err(e) => {
                // Only the shared (and warm-restart) copy is lost; the token itself is good.
                tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "could not persist token");
            }
        }
        slot.current.store(Some(tok.clone()));
        slot.reset_backoff();
        self.record_issued(cred, &tok, &rec.scopes, legacy).await;
        Ok(tok)
    }

    async fn record_issued(
        &self,
        cred: &CredentialRuntime,
        tok: &CachedToken,
        scopes: &[String],
        legacy: Option<String>,
    ) {
        let creds = &self.credentials;
        if let Some(grant) = legacy {
            creds
                .record(
                    cred,
                    EventKind::LegacyGrant,
                    format!("legacy `{grant}` grant used; migrate this credential to a grant RFC 9700 allows"),
                )
                .await;
        }
        let valid_s = (tok.expires_at_ms - tok.issued_at_ms) / 1000;
        creds
            .record(
                cred,
                EventKind::TokenIssued,
                format!(
                    "token issued for scopes [{}], valid {valid_s} s",
                    scopes.join(" ")
                ),
            )
            .await;
    }

    /// The provider rejected the credential: INVALID, and none of its tokens (nor its
    /// exchanged ones) is served.
    pub(super) async fn rejected(
        &self,
        cred: &CredentialRuntime,
        e: &ProviderError,
    ) -> BrokerError {
        let err = self.credentials.mark_invalid(cred, e).await;
        self.cache.remove(&cred.tenant, &cred.id, None);
        self.exchanges
            .remove(&cred.tenant, &cred.id, self.clock.now_ms());
        self.metrics.counters().upstream_failures.inc();
        err
    }

    /// Any other provider failure: the error for the waiting callers, and a backoff for
    /// the key when the failure is transient, or a scope set the provider refuses (asked
    /// again at once, it would be refused again: the answer is cached for the backoff).
    async fn failed(&self, slot: &Slot, e: ProviderError) -> BrokerError {
        let cred = &slot.cred;
        self.metrics.counters().upstream_failures.inc();
        let mut err = BrokerError::from_provider(&e, cred);
        match &mut err {
            BrokerError::Unavailable { retry_after, .. } => {
                let (delay, failures) = self.backoff_delay(slot, &e);
                *retry_after = Some(delay);
                if failures == FETCH_FAILING_AFTER {
                    let scopes = slot.key.scopes();
                    self.credentials
                        .fetch_failing(cred, scopes.as_slice(), failures, &e)
                        .await;
                }
                self.back_off(
                    slot,
                    self.clock.now_ms() + delay.as_millis() as i64,
                    err.clone(),
                );
            }
            BrokerError::InvalidArgument(_) => {
                let (delay, _) = self.backoff_delay(slot, &e);
                self.back_off(
                    slot,
                    self.clock.now_ms() + delay.as_millis() as i64,
                    err.clone(),
                );
            }
            _ => {}
        }
        self.credentials
            .record(
                cred,
                EventKind::TokenFailed,
                format!("token fetch failed: {e}"),
            )
            .await;
        err
    }

    /// The credential's upstream request budget is spent: no request is sent, the key
    /// backs off until the budget allows one, and callers are told when to retry.
    async fn over_budget(&self, slot: &Slot, wait: Duration) -> BrokerError {
        let cred = &slot.cred;
        let limit = cred.policy.upstream_limit_per_minute().unwrap_or_default();
        let err = BrokerError::RateLimited {
            message: format!(
                "credential `{}` reached its limit of {limit} upstream token requests per minute (settings.gateway.max_token_requests_per_minute); retry after {} ms",
                cred.id,
                wait.as_millis()
            ),
            retry_after: wait,
        };
        self.back_off(
            slot,
            self.clock.now_ms() + wait.as_millis() as i64,
            err.clone(),
        );
        self.credentials
            .record(cred, EventKind::TokenFailed, err.to_string())
            .await;
        err
    }

    /// The wait before the key's next attempt after a transient failure: exponential with
    /// full jitter in [exp/2, exp] (so replicas and keys do not retry in step), at least the
    /// provider's Retry-After, and while a valid token is cached at most half its remaining
    /// life away, so retries get denser towards expiry and a provider that came back is used
    /// before callers are left without a token.
    /// Also returns how many failures in a row the key has now.
    fn backoff_delay(&self, slot: &Slot, e: &ProviderError) -> (Duration, u32) {
        let s = &self.settings;
        let now = self.clock.now_ms();
        let failures = slot.note_failure();
        let exp = s
            .backoff_initial
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(s.backoff_max);
        let ms = exp.as_millis() as u64;
        let mut delay = rand::thread_rng().gen_range(ms / 2..=ms.max(1)) as i64;
        if let Some(tok) = slot.current.load_full() {
            let remaining = tok.expires_at_ms - now;
            if remaining > 0 {
                let floor = s.backoff_initial.as_millis() as i64;
                delay = delay.min((remaining / 2).max(floor));
            }
        }
        let delay =
            Duration::from_millis(delay.max(0) as u64).max(e.retry_after().unwrap_or_default());
        (delay, failures)
    }

    /// The lease passed to another replica while this one waited for the provider (it was
    /// presumed dead): nothing of this fetch was written. Serve the new holder's token when
    /// it is stored already; otherwise the caller retries.
    async fn lease_lost(&self, slot: &Arc<Slot>) -> FetchResult {
        let cred = &slot.cred;
        tracing::warn!(tenant = %cred.tenant, credential = %cred.id, "refresh lease expired during the fetch and was taken over; result discarded");
        self.credentials
            .record(
                cred,
                EventKind::TokenFailed,
                "refresh result discarded: the refresh lease expired during the fetch and another replica took it over".into(),
            )
            .await;
        match self.adopt_newer_stored(slot).await? {
            Some(tok) => Ok(tok),
            None => Err(BrokerError::Unavailable {
                message: "another replica took over this credential's refresh; retry shortly"
                    .into(),
                retry_after: Some(STORE_RETRY),
            }),
        }
    }

    /// Holds the key's retries back until `until` (counted for `/metrics`).
    fn back_off(&self, slot: &Slot, until: UnixMillis, answer: BrokerError) {
        self.metrics.counters().backoffs.inc();
        slot.back_off(until, answer);
    }

    /// The store could not coordinate a fetch: the caller gets UNAVAILABLE, and for a
    /// moment so does every caller of the key (without trying the store again), while
    /// cached tokens of other keys keep being served.
    fn store_failed(&self, slot: &Slot, e: BrokerError) -> BrokerError {
        if let BrokerError::Unavailable { message, .. } = &e {
            let until = self.clock.now_ms() + STORE_RETRY.as_millis() as i64;
            let answer = BrokerError::Unavailable {
                message: message.clone(),
                retry_after: Some(STORE_RETRY),
            };
            self.back_off(slot, until, answer);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_times_spread_over_the_jitter_window() {
        let settings = BrokerSettings::default();
        // 1,000 tokens of 60 s issued together: refresh starts between 42 s and 54 s.
        let mut per_second = std::collections::BTreeMap::new();
        for _ in 0..1000 {
            let at = RefreshWindow::of(&settings, 0, 60_000).refresh_at();
            assert!((42_000..=54_000).contains(&at), "{at}");
            *per_second.entry(at / 1000).or_insert(0u32) += 1;
        }
        let max = per_second.values().max().copied().unwrap_or(0);
        assert!(
            max <= 200,
            "{max} of 1000 refreshes in one second: {per_second:?}"
        );
    }

    #[test]
    fn the_window_never_opens_before_half_the_lifetime() {
        let s = BrokerSettings {
            refresh_fraction: 0.4,
            ..BrokerSettings::default()
        };
        let w = RefreshWindow::of(&s, 0, 100_000);
        assert!(w.due_at_ms - w.jitter_max_ms >= 50_000, "{w:?}");
    }
}
