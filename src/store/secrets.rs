//! The sealed values the store keeps, and what each is bound to: the only code that names
//! secret-slot fields and builds [`SecretSlot`]s. A credential's settings, its refresh
//! token and the last access token per scope key are each encrypted for their own
//! (tenant, credential, field), so a ciphertext moved to another row or field fails to open.

use super::crypto::{Cipher, CryptoError, SecretSlot};
use super::{CredentialRecord, TokenRecord};
use authgate_plugin_sdk::{Redactor, Secret};
use std::sync::Arc;

/// A stored secret that cannot be used: the key is wrong, the data was tampered with or
/// moved, or the settings are not the JSON they were stored as. Always a data problem
/// (the operator must look), never a reason to retry.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "stored settings of credential `{credential}` of tenant `{tenant}` are not JSON: {source}"
    )]
    SettingsNotJson {
        tenant: String,
        credential: String,
        #[source]
        source: serde_json::Error,
    },
}

const SETTINGS: &str = "settings";
const REFRESH_TOKEN: &str = "refresh_token";
/// A webhook's signing secret, sealed for (tenant, webhook id): a credential of the same id
/// has no field of this name.
const WEBHOOK_SECRET: &str = "webhook_signing_secret";

/// The access token's field: one per scope key, so a token cannot be served for a scope set
/// it was not issued for.
fn access_token_field(scope_key: &str) -> String {
    format!("access_token:{scope_key}")
}

/// Seals and opens every secret the store holds. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Vault {
    cipher: Arc<Cipher>,
}

impl Vault {
    pub fn new(cipher: Arc<Cipher>) -> Self {
        Self { cipher }
    }

    /// A redactor keyed from the encryption key (its digests are stable across restarts
    /// and replicas, but do not reveal the key).
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.cipher.redaction_key())
    }

    /// A keyed digest of a credential's provider and settings: tells whether a config
    /// reload changed them, without storing anything a secret could be recovered from.
    pub fn settings_digest(&self, provider: &str, settings: &serde_json::Value) -> String {
        self.redactor().digest(&format!("{provider}\0{settings}"))
    }

    pub fn seal_settings(&self, tenant: &str, id: &str, settings: &serde_json::Value) -> Vec<u8> {
        self.cipher
            .seal(slot(tenant, id, SETTINGS), settings.to_string().as_bytes())
    }

    pub fn open_settings(&self, rec: &CredentialRecord) -> Result<serde_json::Value, SecretError> {
        let plain = self
            .cipher
            .open(slot(&rec.tenant, &rec.id, SETTINGS), &rec.settings_sealed)?;
        serde_json::from_slice(&plain).map_err(|source| SecretError::SettingsNotJson {
            tenant: rec.tenant.clone(),
            credential: rec.id.clone(),
            source,
        })
    }

    pub fn seal_refresh_token(&self, tenant: &str, id: &str, rt: &Secret) -> Vec<u8> {
        self.cipher.seal_secret(slot(tenant, id, REFRESH_TOKEN), rt)
    }

    pub fn open_refresh_token(
        &self,
        tenant: &str,
        id: &str,
        sealed: &[u8],
    ) -> Result<Secret, SecretError> {
        Ok(self
            .cipher
            .open_secret(slot(tenant, id, REFRESH_TOKEN), sealed)?)
    }

    pub fn seal_webhook_secret(&self, tenant: &str, webhook_id: &str, secret: &Secret) -> Vec<u8> {
        self.cipher
            .seal_secret(slot(tenant, webhook_id, WEBHOOK_SECRET), secret)
    }

    pub fn open_webhook_secret(
        &self,
        tenant: &str,
        webhook_id: &str,
        sealed: &[u8],
    ) -> Result<Secret, SecretError> {
        Ok(self
            .cipher
            .open_secret(slot(tenant, webhook_id, WEBHOOK_SECRET), sealed)?)
    }

    pub fn seal_access_token(
        &self,
        tenant: &str,
        id: &str,
        scope_key: &str,
        token: &Secret,
    ) -> Vec<u8> {
        self.cipher
            .seal_secret(slot(tenant, id, &access_token_field(scope_key)), token)
    }

    pub fn open_access_token(&self, rec: &TokenRecord) -> Result<Secret, SecretError> {
        let field = access_token_field(&rec.scope_key);
        Ok(self.cipher.open_secret(
            slot(&rec.tenant, &rec.credential_id, &field),
            &rec.access_sealed,
        )?)
    }
}

fn slot<'a>(tenant: &'a str, credential: &'a str, field: &'a str) -> SecretSlot<'a> {
    SecretSlot {
        tenant,
        credential,
        field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn vault() -> Vault {
        Vault::new(Arc::new(Cipher::from_key(&[7; 32])))
    }

    #[test]
    fn each_secret_opens_only_in_its_own_slot() {
        let v = vault();
        let rt = Secret::from("rt-canary");
        let sealed = v.seal_refresh_token("acme", "idp", &rt);
        assert_eq!(v.open_refresh_token("acme", "idp", &sealed).unwrap(), rt);
        assert!(v.open_refresh_token("acme", "other", &sealed).is_err());

        let tok = Secret::from("at-canary");
        let rec = |scope_key: &str, access_sealed: Vec<u8>| TokenRecord {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scope_key: scope_key.into(),
            access_sealed,
            token_type: "Bearer".into(),
            expires_at_ms: 0,
            issued_at_ms: 0,
            scopes: vec![],
            metadata: BTreeMap::new(),
        };
        let sealed = v.seal_access_token("acme", "idp", "a b", &tok);
        assert_eq!(
            v.open_access_token(&rec("a b", sealed.clone())).unwrap(),
            tok
        );
        // Served for another scope set, it must not open.
        assert!(v.open_access_token(&rec("a", sealed.clone())).is_err());
        // Nor as the refresh token.
        assert!(v.open_refresh_token("acme", "idp", &sealed).is_err());

        let whsec = Secret::from("whsec_canary");
        let sealed = v.seal_webhook_secret("acme", "idp", &whsec);
        assert_eq!(
            v.open_webhook_secret("acme", "idp", &sealed).unwrap(),
            whsec
        );
        assert!(v.open_refresh_token("acme", "idp", &sealed).is_err());
        assert!(v.open_webhook_secret("other", "idp", &sealed).is_err());
    }
}
