//! Credentials declared in the config file: stored at start (new ones created, changed
//! ones replaced with their status back to ACTIVE and their tokens dropped), and removed
//! from the store when they leave the file. Credentials created through the API are left
//! alone.

use super::{CredentialManager, NewSettings};
use crate::broker::BrokerError;
use crate::config::ResolvedCredential;
use crate::events::EventKind;
use crate::store::{CredentialSource, CredentialStatus, Notify};
use crate::webhooks::notice;

impl CredentialManager {
    /// Makes the store hold exactly the config file's credentials (of source `config`).
    pub async fn sync_config(&self, creds: &[ResolvedCredential]) -> Result<(), BrokerError> {
        let store = self.0.set.store();
        let vault = self.0.set.vault();
        for c in creds {
            let digest = vault.settings_digest(&c.provider, &c.settings);
            let existing = store.get_credential(&c.tenant, &c.id).await?;
            if existing
                .as_ref()
                .is_some_and(|e| e.settings_digest == digest)
            {
                continue;
            }
            // A refresh token given in the settings is the starting point; a changed one
            // replaces whatever rotated token was stored for the old settings.
            let provider = self
                .0
                .set
                .registry()
                .build_with_policy(&c.provider, c.settings.clone())
                .await
                .map(|(provider, _)| provider)
                .map_err(|e| {
                    BrokerError::Misconfigured(format!(
                        "credentials {}/{} from the config file: {e}",
                        c.tenant, c.id
                    ))
                })?;
            let replaced = self
                .store_settings(NewSettings {
                    tenant: &c.tenant,
                    id: &c.id,
                    provider: &c.provider,
                    settings: &c.settings,
                    source: CredentialSource::Config,
                    status: CredentialStatus::Active,
                    refresh_token: provider.configured_refresh_token(),
                })
                .await?;
            let what = if replaced.is_some() {
                "replaced"
            } else {
                "created"
            };
            self.0
                .set
                .events()
                .record(
                    &c.tenant,
                    &c.id,
                    EventKind::CredentialChanged,
                    format!(
                        "credential {what} from the config file (provider {})",
                        c.provider
                    ),
                )
                .await;
        }
        for rec in store.list_credentials().await? {
            if rec.source == CredentialSource::Config
                && !creds
                    .iter()
                    .any(|c| c.tenant == rec.tenant && c.id == rec.id)
            {
                let gone =
                    notice::credential_deleted(&rec.tenant, &rec.id, self.0.set.clock().now_ms());
                let notify = Notify {
                    always: std::slice::from_ref(&gone),
                    on_status_change: None,
                };
                store
                    .delete_credential_notifying(&rec.tenant, &rec.id, notify)
                    .await?;
                tracing::info!(tenant = %rec.tenant, credential = %rec.id, "credential removed from the config file; deleted");
            }
        }
        Ok(())
    }
}
