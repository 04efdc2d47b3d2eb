//! A credential as the broker uses it: its plugin instance, status, current refresh token,
//! and the lock that keeps upstream fetches for one credential strictly one at a time
//! (rotating refresh tokens are single-use; some providers allow one session only).

use crate::store::CredentialStatus;
use authgate_plugin_sdk::{Provider, Redactor, Secret};
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub struct CredentialRuntime {
    pub tenant: String,
    pub id: String,
    pub provider_kind: String,
    pub provider: Arc<dyn Provider>,
    /// Knows the credential's secrets, so they are scrubbed from anything recorded.
    pub redactor: Redactor,
    status: AtomicU8,
    refresh_token: Mutex<Option<Secret>>,
    /// Held for the duration of each upstream fetch of this credential.
    pub fetch_lock: tokio::sync::Mutex<()>,
    /// Woken when another replica gives this credential's refresh lease back.
    pub lease_released: tokio::sync::Notify,
    /// When the refresh token was last used successfully (0: unknown since start), for
    /// keeping refresh tokens that expire while idle alive.
    refresh_token_used_at_ms: AtomicI64,
}

impl std::fmt::Debug for CredentialRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRuntime")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .field("provider", &self.provider_kind)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn status_code(s: CredentialStatus) -> u8 {
    match s {
        CredentialStatus::Active => 0,
        CredentialStatus::NeedsAuthorization => 1,
        CredentialStatus::Invalid => 2,
        CredentialStatus::Revoked => 3,
    }
}

fn status_from_code(c: u8) -> CredentialStatus {
    match c {
        0 => CredentialStatus::Active,
        1 => CredentialStatus::NeedsAuthorization,
        2 => CredentialStatus::Invalid,
        _ => CredentialStatus::Revoked,
    }
}

impl CredentialRuntime {
    pub fn new(
        tenant: String,
        id: String,
        provider_kind: String,
        provider: Arc<dyn Provider>,
        redactor: Redactor,
        status: CredentialStatus,
        refresh_token: Option<Secret>,
    ) -> Self {
        // The credential's own redactor knows only the settings' secrets; tokens are
        // learned by each call's fork (see `call_redactor`), so they do not pile up here.
        for s in provider.secrets() {
            redactor.learn(&s);
        }
        Self {
            tenant,
            id,
            provider_kind,
            provider,
            redactor,
            status: AtomicU8::new(status_code(status)),
            refresh_token: Mutex::new(refresh_token),
            fetch_lock: tokio::sync::Mutex::new(()),
            lease_released: tokio::sync::Notify::new(),
            refresh_token_used_at_ms: AtomicI64::new(0),
        }
    }

    pub fn refresh_token_used_at_ms(&self) -> i64 {
        self.refresh_token_used_at_ms.load(Ordering::Acquire)
    }

    pub fn mark_refresh_token_used(&self, at_ms: i64) {
        self.refresh_token_used_at_ms
            .store(at_ms, Ordering::Release);
    }

    pub fn status(&self) -> CredentialStatus {
        status_from_code(self.status.load(Ordering::Acquire))
    }

    pub fn set_status(&self, s: CredentialStatus) {
        self.status.store(status_code(s), Ordering::Release);
    }

    /// A redactor for one upstream operation: the settings' secrets and the current refresh
    /// token, plus whatever the operation's responses reveal, forgotten when it ends.
    pub fn call_redactor(&self) -> Redactor {
        let r = self.redactor.fork();
        if let Some(rt) = self.refresh_token() {
            r.learn(&rt);
        }
        r
    }

    pub fn refresh_token(&self) -> Option<Secret> {
        self.refresh_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_refresh_token(&self, rt: Option<Secret>) {
        *self
            .refresh_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = rt;
    }

    /// What the caller should do when this credential cannot issue tokens.
    pub fn not_active_message(&self, last_error: Option<&str>) -> String {
        let (t, c) = (&self.tenant, &self.id);
        match self.status() {
            CredentialStatus::Active => String::new(),
            CredentialStatus::NeedsAuthorization => format!(
                "credential `{c}` of tenant `{t}` needs authorization: run `authgate authorize --tenant {t} --credential {c}` (or StartAuthorization) to complete the provider's consent step"
            ),
            CredentialStatus::Invalid => format!(
                "the provider rejected credential `{c}` of tenant `{t}`{}; update its secrets (PutCredential or the config file) to use it again",
                last_error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            CredentialStatus::Revoked => format!(
                "credential `{c}` of tenant `{t}` was revoked; put it again (PutCredential or the config file) to use it"
            ),
        }
    }
}
