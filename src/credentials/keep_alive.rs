//! Keep-alive for refresh tokens that expire while idle (e.g. Autodesk's 14 days, Trimble's
//! 9): a credential whose refresh token has been unused for two thirds of its idle lifetime
//! is refreshed in the background, so a quiet tenant does not lose its grant.

use super::CredentialManager;
use crate::broker::TokenRequest;
use crate::context::with_caller;
use crate::store::CredentialStatus;
use authgate_plugin_sdk::ScopeSet;
use std::time::Duration;

impl CredentialManager {
    /// Runs [`CredentialManager::keep_alive_pass`] every `every`.
    pub fn spawn_keep_alive(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.keep_alive_pass().await;
            }
        })
    }

    /// Refreshes every credential whose refresh token would otherwise expire while idle;
    /// its events name the caller `keep-alive`.
    pub async fn keep_alive_pass(&self) {
        with_caller(Some("keep-alive".into()), self.keep_alive_once()).await
    }

    async fn keep_alive_once(&self) {
        let now = self.0.set.clock().now_ms();
        for cred in self.0.set.all() {
            let Some(idle) = cred.provider.refresh_token_idle_lifetime() else {
                continue;
            };
            if cred.status() != CredentialStatus::Active || cred.refresh_token().is_none() {
                continue;
            }
            let threshold = (idle.as_millis() as i64) * 2 / 3;
            if now - cred.refresh_token_used_at_ms() < threshold {
                continue;
            }
            let req = TokenRequest {
                tenant: cred.tenant.clone(),
                credential_id: cred.id.clone(),
                scopes: ScopeSet::default(),
                min_ttl: Duration::ZERO,
                force_refresh: true,
            };
            match self.0.broker.get_token(&req, None).await {
                Ok(_) => {
                    tracing::debug!(tenant = %cred.tenant, credential = %cred.id, "refresh token kept alive")
                }
                Err(e) => {
                    tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "refresh-token keep-alive failed")
                }
            }
        }
    }
}
