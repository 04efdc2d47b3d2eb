//! Loading credentials from the store, and following what other replicas change: their
//! revocations, credential changes (created, replaced, deleted, status changed) and lease
//! releases are applied to this replica's memory as they commit; after a lost connection
//! memory is rebuilt from the store.

use super::CredentialManager;
use crate::broker::BrokerError;
use crate::store::{ChangeStream, StoreChange};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

impl CredentialManager {
    /// Loads every stored credential into memory and builds its plugin, warms the cache
    /// with stored tokens that are still valid, then follows other replicas' changes.
    pub async fn load(&self) -> Result<(), BrokerError> {
        // Subscribed before reading, so nothing committed while loading is missed.
        let changes = self.0.set.store().subscribe();
        self.load_state().await?;
        self.follow_store_changes(changes);
        Ok(())
    }

    /// Reads credentials and valid tokens from the store into memory.
    async fn load_state(&self) -> Result<(), BrokerError> {
        let store = self.0.set.store();
        for rec in store.list_credentials().await? {
            if let Err(e) = self.load_record(&rec).await {
                tracing::error!(tenant = %rec.tenant, credential = %rec.id, error = %e, "cannot load credential; it will answer NOT_FOUND until fixed");
            }
        }
        let now = self.0.set.clock().now_ms();
        let warmed = self.0.broker.warm(store.list_tokens(now).await?);
        tracing::info!(
            credentials = self.0.set.len(),
            tokens = warmed,
            "credentials loaded"
        );
        Ok(())
    }

    /// Applies other replicas' changes to this replica's memory until the store goes away
    /// (or this manager does).
    fn follow_store_changes(&self, mut changes: ChangeStream) {
        let me = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                let Some(parts) = me.upgrade() else {
                    return;
                };
                CredentialManager(parts).apply_change(change);
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
                    .0
                    .broker
                    .drop_tokens(&tenant, &credential_id, scope_key.as_deref())
                    .len();
                tracing::info!(%tenant, credential = %credential_id, dropped = n, "tokens revoked by another replica; dropped from memory");
            }
            StoreChange::CredentialChanged {
                tenant,
                credential_id,
            } => {
                // Its tokens stop now; the credential is re-read off this task, so a slow
                // store does not hold up the revocations queued behind it.
                self.0.broker.drop_tokens(&tenant, &credential_id, None);
                let me = self.clone();
                tokio::spawn(async move { me.reload_credential(&tenant, &credential_id).await });
            }
            StoreChange::TokenStored {
                tenant,
                credential_id,
                scope_key,
            } => {
                let broker = self.0.broker.clone();
                tokio::spawn(async move {
                    broker
                        .adopt_stored(&tenant, &credential_id, &scope_key)
                        .await
                });
            }
            StoreChange::LeaseReleased {
                tenant,
                credential_id,
            } => {
                if let Some(c) = self.0.set.get(&tenant, &credential_id) {
                    c.lease_released.notify_waiters();
                }
            }
            StoreChange::Resync => {
                let me = self.clone();
                tokio::spawn(async move { me.resync().await });
            }
        }
    }

    /// Re-reads one credential another replica changed (created, replaced, deleted,
    /// marked invalid...).
    async fn reload_credential(&self, tenant: &str, id: &str) {
        match self.0.set.store().get_credential(tenant, id).await {
            Ok(Some(rec)) => {
                if let Err(e) = self.load_record(&rec).await {
                    tracing::error!(%tenant, credential = %id, error = %e, "cannot load credential changed by another replica");
                }
            }
            Ok(None) => {
                self.forget(tenant, id);
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
            .0
            .set
            .store()
            .list_credentials()
            .await?
            .into_iter()
            .map(|c| (c.tenant, c.id))
            .collect();
        for c in self.0.set.all() {
            if !stored.contains(&(c.tenant.clone(), c.id.clone())) {
                self.forget(&c.tenant, &c.id);
            }
        }
        // Reloading a credential drops its cached tokens; the still-valid stored ones come
        // back with it, revoked ones do not.
        self.load_state().await
    }
}
