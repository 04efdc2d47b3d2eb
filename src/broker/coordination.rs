//! Refresh coordination between replicas that share a store: one replica at a time calls
//! the provider for a credential (it holds the credential's refresh lease), and what the
//! holder writes is fenced, so a holder that was presumed dead cannot overwrite a newer
//! result. Lease timing is read from the injected clock, like every other time.
//!
//! Behind the in-process single flight, so a replica asks for a lease at most once per
//! credential at a time. The hot path (a cache hit) never comes here.

use crate::clock::{Clock, UnixMillis};
use crate::credentials::CredentialRuntime;
use crate::error::STORE_RETRY;
use crate::store::{Store, StoreError, TokenRecord};
use std::sync::Arc;
use std::time::Duration;

/// Fallback poll while another replica holds the lease. Its release notification normally
/// wakes the waiters at once; polling covers a lost notification and a dead holder (whose
/// lease expires rather than being released).
const LEASE_POLL: Duration = Duration::from_millis(200);

/// A refresh lease this process holds for one credential.
#[derive(Debug)]
pub struct HeldLease {
    fence: i64,
    /// When the lease runs out by this process's clock: writes are retried until then, not
    /// longer (after that another replica may hold it).
    deadline_ms: UnixMillis,
}

/// What a fetch writes when it is done.
pub struct RefreshResult<'a> {
    /// The rotated refresh token, sealed.
    pub refresh_token: Option<&'a [u8]>,
    /// The new token of the cache key.
    pub token: Option<&'a TokenRecord>,
}

/// The refresh lease and fenced writes of one store.
#[derive(Clone)]
pub struct Coordinator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    lease_ttl: Duration,
}

impl Coordinator {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, lease_ttl: Duration) -> Self {
        Self {
            store,
            clock,
            lease_ttl,
        }
    }

    /// How long to keep waiting for another replica's refresh before giving up: a lease
    /// lasts its ttl at most, so twice that covers a holder that died and the next one's
    /// fetch.
    pub fn give_up_after(&self) -> Duration {
        2 * self.lease_ttl
    }

    /// How many lease polls fit in [`Coordinator::give_up_after`]: the bound on waiting
    /// should the injected clock stand still.
    pub fn max_polls(&self) -> u32 {
        (self.give_up_after().as_millis() / LEASE_POLL.as_millis()).max(1) as u32
    }

    /// One attempt to take the credential's refresh lease. `None`: another replica has it.
    pub async fn try_acquire(
        &self,
        cred: &CredentialRuntime,
    ) -> Result<Option<HeldLease>, StoreError> {
        let asked_at = self.clock.now_ms();
        let lease = self
            .store
            .acquire_refresh_lease(
                &cred.tenant,
                &cred.id,
                self.store.instance_id(),
                self.lease_ttl,
            )
            .await?;
        Ok(lease.map(|l| HeldLease {
            fence: l.fence,
            deadline_ms: asked_at + self.lease_ttl.as_millis() as i64,
        }))
    }

    /// Waits until the holder gives the lease back (its notification), or a poll interval.
    /// `released` must have been registered before the lease was asked for.
    pub async fn wait_for_release(
        released: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) {
        tokio::select! {
            _ = released => {}
            _ = tokio::time::sleep(LEASE_POLL) => {}
        }
    }

    /// Gives the lease back so waiting replicas go on at once. If that fails, it simply
    /// expires.
    pub async fn release(&self, cred: &CredentialRuntime, lease: &HeldLease) {
        if let Err(e) = self
            .store
            .release_refresh_lease(&cred.tenant, &cred.id, lease.fence)
            .await
        {
            tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "could not release the refresh lease; it expires by itself");
        }
    }

    /// Writes a fetch result: fenced under a lease (`Ok(false)`: the lease is someone
    /// else's now, nothing was written), directly without one. While the lease lasts, a
    /// store that is briefly unreachable is retried: a rotated refresh token that is not
    /// stored is lost to every other replica.
    pub async fn commit(
        &self,
        cred: &CredentialRuntime,
        lease: Option<&HeldLease>,
        result: RefreshResult<'_>,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let Some(lease) = lease else {
            if let Some(rt) = result.refresh_token {
                self.store
                    .put_refresh_token(&cred.tenant, &cred.id, Some(rt), now)
                    .await?;
            }
            if let Some(rec) = result.token {
                self.store.put_token(rec).await?;
            }
            return Ok(true);
        };
        let mut wait = Duration::from_millis(100);
        // Bounded by the lease's end on the injected clock and, should that clock stand
        // still (tests), by the number of attempts that fit in the lease.
        let mut attempts_left = (self.lease_ttl.as_millis() / 100).max(1);
        loop {
            attempts_left -= 1;
            let written = self
                .store
                .commit_refresh(
                    &cred.tenant,
                    &cred.id,
                    lease.fence,
                    result.refresh_token,
                    result.token,
                    now,
                )
                .await;
            match written {
                Err(StoreError::Unavailable(e))
                    if attempts_left > 0
                        && self.clock.now_ms() + (wait.as_millis() as i64) < lease.deadline_ms =>
                {
                    tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "could not write the refresh result yet; retrying while the lease lasts");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(STORE_RETRY);
                }
                other => return other,
            }
        }
    }

    /// The stored token of one cache key, expired or not.
    pub async fn stored_token(
        &self,
        cred: &CredentialRuntime,
        scope_key: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.store
            .get_token(&cred.tenant, &cred.id, scope_key)
            .await
    }
}
