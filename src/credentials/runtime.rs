//! A credential held in memory: its plugin instance, status, current refresh token, and
//! the lock that keeps upstream fetches for one credential strictly one at a time
//! (rotating refresh tokens are single-use; some providers allow one session only).

use super::CredentialPolicy;
use crate::store::CredentialStatus;
use authgate_plugin_sdk::{Egress, Provider, Redactor, Secret, UpstreamClient};
use crossbeam_utils::atomic::AtomicCell;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct CredentialRuntime {
    pub tenant: String,
    pub id: String,
    pub provider_kind: String,
    pub provider: Arc<dyn Provider>,
    /// Knows the credential's secrets, so they are scrubbed from anything recorded.
    pub redactor: Redactor,
    /// Read on every GetToken: a lock-free cell (one byte, so no lock behind it).
    status: AtomicCell<CredentialStatus>,
    refresh_token: Mutex<Option<Secret>>,
    /// The shape of the last token issued for this credential (type, granted scopes,
    /// metadata), shared by every cached token that has the same one.
    last_shape: Mutex<Option<Arc<TokenShape>>>,
    /// Held for the duration of each upstream fetch of this credential.
    pub fetch_lock: tokio::sync::Mutex<()>,
    /// Held by the fetch of a key that never had a token (a new scope set) while it waits
    /// for `fetch_lock`, so at most one such fetch is queued there at a time.
    pub new_key_turn: tokio::sync::Mutex<()>,
    /// Woken when another replica gives this credential's refresh lease back.
    pub lease_released: tokio::sync::Notify,
    /// When the refresh token was last used successfully (0: unknown since start), for
    /// keeping refresh tokens that expire while idle alive.
    refresh_token_used_at_ms: AtomicI64,
    /// How many cache keys (scope sets) this credential has, for the per-credential bound.
    slots: AtomicUsize,
    /// Whether its upstream calls are held to the egress policy (API-created credentials
    /// are; the operator's config-file credentials are trusted).
    pub egress: Egress,
    /// What the gateway enforces for it (`settings.gateway`).
    pub policy: CredentialPolicy,
    /// Its own connection pools when its provider has TLS settings of its own (a client
    /// certificate, trusted CAs); `None`: the shared ones.
    pub http: Option<UpstreamClient>,
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

/// What a token says besides its secret and times. Most tokens of a credential have the
/// same one, so it is stored once ([`CredentialRuntime::shape`]) instead of once per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenShape {
    pub token_type: String,
    /// Granted scopes when the provider named them and they differ from the requested ones
    /// (`None`: exactly the requested scope set).
    pub granted_scopes: Option<Vec<String>>,
    pub metadata: BTreeMap<String, String>,
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
            status: AtomicCell::new(status),
            refresh_token: Mutex::new(refresh_token),
            last_shape: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            new_key_turn: tokio::sync::Mutex::new(()),
            lease_released: tokio::sync::Notify::new(),
            refresh_token_used_at_ms: AtomicI64::new(0),
            slots: AtomicUsize::new(0),
            egress: Egress::Guarded,
            policy: CredentialPolicy::default(),
            http: None,
        }
    }

    /// Sets the gateway policy (default: none).
    pub fn with_policy(mut self, policy: CredentialPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets its own connection pools (default: the shared ones).
    pub fn with_http(mut self, http: Option<UpstreamClient>) -> Self {
        self.http = http;
        self
    }

    /// Sets how its upstream calls are held to the egress policy (default: guarded).
    pub fn with_egress(mut self, egress: Egress) -> Self {
        self.egress = egress;
        self
    }

    /// Counts one more cache key unless the credential has `limit` already.
    pub fn try_count_slot(&self, limit: usize) -> bool {
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts one more cache key, whatever the bound (keys warmed from the store, the
    /// token of a completed authorization).
    pub fn count_slot(&self) {
        self.slots.fetch_add(1, Ordering::AcqRel);
    }

    pub fn uncount_slot(&self) {
        let _ = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// How many cache keys the credential has.
    pub fn slot_count(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }

    pub fn refresh_token_used_at_ms(&self) -> i64 {
        self.refresh_token_used_at_ms.load(Ordering::Acquire)
    }

    pub fn mark_refresh_token_used(&self, at_ms: i64) {
        self.refresh_token_used_at_ms
            .store(at_ms, Ordering::Release);
    }

    pub fn status(&self) -> CredentialStatus {
        self.status.load()
    }

    pub fn set_status(&self, s: CredentialStatus) {
        self.status.store(s);
    }

    /// The shared copy of `shape`: the last one when equal, else `shape` becomes the last.
    pub fn shape(&self, shape: TokenShape) -> Arc<TokenShape> {
        let mut last = self.last_shape.lock();
        match last.as_ref() {
            Some(s) if **s == shape => s.clone(),
            _ => {
                let s = Arc::new(shape);
                *last = Some(s.clone());
                s
            }
        }
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
        self.refresh_token.lock().clone()
    }

    pub fn set_refresh_token(&self, rt: Option<Secret>) {
        *self.refresh_token.lock() = rt;
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
        }
    }
}
