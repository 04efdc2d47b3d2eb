//! The token broker: a concurrent cache of tokens keyed by (tenant, credential, scopes),
//! single-flight fetches, proactive refresh, and backoff.
//!
//! The hot path (a valid cached token) is a sharded map lookup, an atomic pointer load and
//! a clock read: no I/O, no global lock, and no map guard is held across an `.await`.
//! Everything slower happens in one spawned task per cache key at a time: the task is not
//! cancelled when callers go away, so a fetch sent upstream always completes and is stored.

mod coordination;
mod credential;
mod error;

use coordination::{Coordinated, HeldLease};
pub use credential::CredentialRuntime;
pub use error::BrokerError;

use crate::clock::{Clock, UnixMillis};
use crate::config::{BrokerConfig, ResolvedCredential};
use crate::events::{EventKind, EventLog};
use crate::plugins;
use crate::store::crypto::{Cipher, SecretSlot};
use crate::store::{CredentialRecord, CredentialStatus, Store, TokenRecord};
use arc_swap::ArcSwapOption;
use authgate_plugin_sdk::{
    FetchRequest, IssuedToken, ProviderError, Redactor, RejectKind, ScopeSet, Secret,
    TokenTypeHint, UpstreamCall, UpstreamClient,
};
use dashmap::DashMap;
use futures::future::{BoxFuture, FutureExt, Shared};
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Cache key: tenant, credential id and the normalized scope set, joined with NUL (which
/// validated ids and scopes cannot contain).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    pub fn new(tenant: &str, credential: &str, scopes: &ScopeSet) -> Self {
        let mut s = String::with_capacity(tenant.len() + credential.len() + 32);
        Self::write(&mut s, tenant, credential, scopes);
        Self(s.into())
    }

    /// The key's text, written into `buf` (cleared first).
    fn write(buf: &mut String, tenant: &str, credential: &str, scopes: &ScopeSet) {
        buf.clear();
        buf.push_str(tenant);
        buf.push('\0');
        buf.push_str(credential);
        buf.push('\0');
        for (i, sc) in scopes.iter().enumerate() {
            if i > 0 {
                buf.push(' ');
            }
            buf.push_str(sc);
        }
    }

    fn parts(&self) -> (&str, &str, &str) {
        let mut it = self.0.splitn(3, '\0');
        let t = it.next().unwrap_or("");
        let c = it.next().unwrap_or("");
        let s = it.next().unwrap_or("");
        (t, c, s)
    }

    pub fn scope_key(&self) -> &str {
        self.parts().2
    }
}

/// Lets the cache be searched with the key's text, so a lookup needs no `CacheKey`
/// (hash and equality of the derived impls are those of the text).
impl std::borrow::Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

thread_local! {
    /// Each worker thread's buffer for the text of the key being looked up: a cache hit
    /// allocates no key.
    static LOOKUP_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A token held in the cache.
#[derive(Clone)]
pub struct CachedToken {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_at_ms: UnixMillis,
    pub issued_at_ms: UnixMillis,
    /// When a background refresh should start (before expiry, with jitter).
    pub refresh_at_ms: UnixMillis,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// A token request, validated at the API edge.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub tenant: String,
    pub credential_id: String,
    pub scopes: ScopeSet,
    pub min_ttl: Duration,
    pub force_refresh: bool,
    /// Who asked, for the events of any upstream call this causes.
    pub caller: Option<String>,
}

/// Tunables, from `[broker]`.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub fetch_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub refresh_margin_max: Duration,
    pub refresh_fraction: f64,
    /// How long a replica may hold a credential's refresh lease.
    pub refresh_lease: Duration,
}

impl From<&BrokerConfig> for BrokerSettings {
    fn from(c: &BrokerConfig) -> Self {
        Self {
            fetch_timeout: Duration::from_secs(c.fetch_timeout_seconds),
            backoff_initial: Duration::from_millis(c.backoff_initial_ms),
            backoff_max: Duration::from_secs(c.backoff_max_seconds),
            refresh_margin_max: Duration::from_secs(c.refresh_margin_seconds),
            refresh_fraction: c.refresh_fraction,
            refresh_lease: Duration::from_secs(c.refresh_lease_seconds),
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        (&BrokerConfig::default()).into()
    }
}

type FetchResult = Result<Arc<CachedToken>, BrokerError>;
type SharedFetch = Shared<BoxFuture<'static, FetchResult>>;

#[derive(Default)]
struct Backoff {
    failures: u32,
    next_attempt_ms: UnixMillis,
    last_error: Option<BrokerError>,
}

/// One cache key's state.
struct Slot {
    key: CacheKey,
    scopes: ScopeSet,
    cred: Arc<CredentialRuntime>,
    current: ArcSwapOption<CachedToken>,
    inflight: Mutex<Option<SharedFetch>>,
    backoff: Mutex<Backoff>,
    /// Set when the slot was dropped by Revoke: a fetch finishing later must not store.
    dropped: AtomicBool,
    /// `backoff.next_attempt_ms`, readable without the lock: cache hits in the refresh
    /// window during an outage check it and move on, at the cost of one atomic load.
    retry_not_before_ms: AtomicI64,
    /// When a caller last asked for a forced refresh: a token stored by another replica
    /// is adopted only if issued after this (it may be the very token the caller rejects).
    force_not_before_ms: AtomicI64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub upstream_fetches: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub background_refreshes: AtomicU64,
    /// Fetches answered with a token another replica (or an earlier run) stored.
    pub tokens_adopted: AtomicU64,
}

/// The token broker. Cheap to clone.
#[derive(Clone)]
pub struct TokenBroker {
    inner: Arc<Inner>,
}

struct Inner {
    cache: DashMap<CacheKey, Arc<Slot>>,
    credentials: DashMap<(String, String), Arc<CredentialRuntime>>,
    store: Arc<dyn Store>,
    cipher: Arc<Cipher>,
    events: EventLog,
    clock: Arc<dyn Clock>,
    http: UpstreamClient,
    settings: BrokerSettings,
    metrics: BrokerMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TokenBroker {
    pub fn new(
        store: Arc<dyn Store>,
        cipher: Arc<Cipher>,
        events: EventLog,
        clock: Arc<dyn Clock>,
        http: UpstreamClient,
        settings: BrokerSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache: DashMap::new(),
                credentials: DashMap::new(),
                store,
                cipher,
                events,
                clock,
                http,
                settings,
                metrics: BrokerMetrics::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &BrokerMetrics {
        &self.inner.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub(crate) fn redactor(&self) -> Redactor {
        Redactor::new(self.inner.cipher.redaction_key())
    }

    pub(crate) fn settings_digest(&self, provider: &str, settings: &serde_json::Value) -> String {
        self.redactor().digest(&format!("{provider}\0{settings}"))
    }

    /// Stores the credentials from the config file: new ones are created, changed ones
    /// replaced (status back to ACTIVE, cached tokens dropped), ones no longer in the file
    /// removed. Credentials created through the API are left alone.
    pub async fn sync_config_credentials(
        &self,
        creds: &[ResolvedCredential],
    ) -> Result<(), BrokerError> {
        let now = self.inner.clock.now_ms();
        let store = &self.inner.store;
        for c in creds {
            let digest = self.settings_digest(&c.provider, &c.settings);
            let existing = store.get_credential(&c.tenant, &c.id).await?;
            if existing
                .as_ref()
                .is_some_and(|e| e.settings_digest == digest)
            {
                continue;
            }
            let sealed = self.inner.cipher.seal(
                SecretSlot {
                    tenant: &c.tenant,
                    credential: &c.id,
                    field: "settings",
                },
                c.settings.to_string().as_bytes(),
            );
            let rec = CredentialRecord {
                tenant: c.tenant.clone(),
                id: c.id.clone(),
                provider: c.provider.clone(),
                settings_sealed: sealed,
                settings_digest: digest,
                status: CredentialStatus::Active,
                last_error: None,
                source: "config".into(),
                created_at_ms: existing.as_ref().map_or(now, |e| e.created_at_ms),
                updated_at_ms: now,
            };
            store.put_credential(&rec).await?;
            store.delete_tokens(&c.tenant, &c.id, None).await?;
            // A refresh token given in the settings is the starting point; a changed one
            // replaces whatever rotated token was stored for the old settings.
            let factory = plugins::factory(&c.provider);
            let configured = factory
                .and_then(|f| f.build(c.settings.clone()).ok())
                .and_then(|p| p.configured_refresh_token());
            if let Some(rt) = configured {
                let sealed = self.seal_refresh_token(&c.tenant, &c.id, &rt);
                store
                    .put_refresh_token(&c.tenant, &c.id, Some(&sealed), now)
                    .await?;
            }
            let what = if existing.is_some() {
                "replaced"
            } else {
                "created"
            };
            self.inner
                .events
                .record(
                    &c.tenant,
                    &c.id,
                    EventKind::CredentialChanged,
                    None,
                    format!(
                        "credential {what} from the config file (provider {})",
                        c.provider
                    ),
                    None,
                )
                .await;
        }
        for rec in store.list_credentials().await? {
            if rec.source == "config"
                && !creds
                    .iter()
                    .any(|c| c.tenant == rec.tenant && c.id == rec.id)
            {
                store.delete_credential(&rec.tenant, &rec.id).await?;
                tracing::info!(tenant = %rec.tenant, credential = %rec.id, "credential removed from the config file; deleted");
            }
        }
        Ok(())
    }

    pub(crate) fn seal_refresh_token(&self, tenant: &str, id: &str, rt: &Secret) -> Vec<u8> {
        self.inner.cipher.seal_secret(
            SecretSlot {
                tenant,
                credential: id,
                field: "refresh_token",
            },
            rt,
        )
    }

    async fn stored_refresh_token(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Secret>, BrokerError> {
        let Some(sealed) = self.inner.store.get_refresh_token(tenant, id).await? else {
            return Ok(None);
        };
        self.inner
            .cipher
            .open_secret(
                SecretSlot {
                    tenant,
                    credential: id,
                    field: "refresh_token",
                },
                &sealed,
            )
            .map(Some)
            .map_err(|e| BrokerError::Misconfigured(e.to_string()))
    }

    /// Loads every stored credential into memory and builds its plugin, warms the cache
    /// with stored tokens that are still valid, then follows other replicas' changes.
    pub async fn load(&self) -> Result<(), BrokerError> {
        // Subscribed before reading, so nothing committed while loading is missed.
        let changes = self.inner.store.subscribe();
        self.load_state().await?;
        self.follow_store_changes(changes);
        Ok(())
    }

    /// Reads credentials and valid tokens from the store into memory.
    async fn load_state(&self) -> Result<(), BrokerError> {
        for rec in self.inner.store.list_credentials().await? {
            if let Err(e) = self.load_credential(rec.clone()).await {
                tracing::error!(tenant = %rec.tenant, credential = %rec.id, error = %e, "cannot load credential; it will answer NOT_FOUND until fixed");
            }
        }
        let now = self.inner.clock.now_ms();
        let mut warmed = 0usize;
        for t in self.inner.store.list_tokens(now).await? {
            let Some(cred) = self.credential(&t.tenant, &t.credential_id) else {
                continue;
            };
            let slot_field = format!("access_token:{}", t.scope_key);
            let Ok(access) = self.inner.cipher.open_secret(
                SecretSlot {
                    tenant: &t.tenant,
                    credential: &t.credential_id,
                    field: &slot_field,
                },
                &t.access_sealed,
            ) else {
                tracing::warn!(tenant = %t.tenant, credential = %t.credential_id, "stored token failed to decrypt; ignoring it");
                continue;
            };
            let scopes = ScopeSet::new(t.scope_key.split(' '));
            let key = CacheKey::new(&t.tenant, &t.credential_id, &scopes);
            let tok = CachedToken {
                access_token: access,
                token_type: t.token_type,
                expires_at_ms: t.expires_at_ms,
                issued_at_ms: t.issued_at_ms,
                refresh_at_ms: self.refresh_at(t.issued_at_ms, t.expires_at_ms),
                scopes: t.scopes,
                metadata: t.metadata,
            };
            let slot = self.new_slot(key.clone(), scopes, cred);
            slot.current.store(Some(Arc::new(tok)));
            self.inner.cache.insert(key, slot);
            warmed += 1;
        }
        tracing::info!(
            credentials = self.inner.credentials.len(),
            tokens = warmed,
            "credentials loaded"
        );
        Ok(())
    }

    /// (Re)loads one credential from its stored record, replacing what memory held.
    pub async fn load_credential(&self, rec: CredentialRecord) -> Result<(), BrokerError> {
        let plain = self
            .inner
            .cipher
            .open(
                SecretSlot {
                    tenant: &rec.tenant,
                    credential: &rec.id,
                    field: "settings",
                },
                &rec.settings_sealed,
            )
            .map_err(|e| BrokerError::Misconfigured(e.to_string()))?;
        let settings: serde_json::Value = serde_json::from_slice(&plain).map_err(|e| {
            BrokerError::Misconfigured(format!("stored settings are not JSON: {e}"))
        })?;
        let factory = plugins::factory(&rec.provider).ok_or_else(|| {
            BrokerError::Misconfigured(format!("unknown provider `{}`", rec.provider))
        })?;
        let provider = factory
            .build(settings)
            .map_err(|e| BrokerError::Misconfigured(e.to_string()))?;
        let rt = self.stored_refresh_token(&rec.tenant, &rec.id).await?;
        let mut status = rec.status;
        if status == CredentialStatus::Active && provider.requires_refresh_token() && rt.is_none() {
            status = CredentialStatus::NeedsAuthorization;
        }
        let runtime = Arc::new(CredentialRuntime::new(
            rec.tenant.clone(),
            rec.id.clone(),
            rec.provider.clone(),
            provider,
            self.redactor(),
            status,
            rt,
        ));
        // A replaced credential must not keep serving tokens of its old settings.
        self.drop_slots(&rec.tenant, &rec.id, None);
        self.inner
            .credentials
            .insert((rec.tenant.clone(), rec.id.clone()), runtime);
        Ok(())
    }

    /// Removes a credential and its cached tokens from memory.
    pub fn forget_credential(&self, tenant: &str, id: &str) -> Option<Arc<CredentialRuntime>> {
        self.drop_slots(tenant, id, None);
        self.inner
            .credentials
            .remove(&(tenant.to_owned(), id.to_owned()))
            .map(|(_, c)| c)
    }

    /// Every credential in memory.
    pub fn credentials(&self) -> Vec<Arc<CredentialRuntime>> {
        self.inner
            .credentials
            .iter()
            .map(|c| c.value().clone())
            .collect()
    }

    /// The tokens this process holds for a credential, by scope key.
    pub fn cached_tokens(&self, tenant: &str, id: &str) -> Vec<Arc<CachedToken>> {
        self.inner
            .cache
            .iter()
            .filter(|e| {
                let (t, c, _) = e.key().parts();
                t == tenant && c == id
            })
            .filter_map(|e| e.value().current.load_full())
            .collect()
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn cipher(&self) -> &Arc<Cipher> {
        &self.inner.cipher
    }

    pub(crate) fn events(&self) -> &EventLog {
        &self.inner.events
    }

    pub(crate) fn http(&self) -> &UpstreamClient {
        &self.inner.http
    }

    /// Sets a credential's status in the store and in memory and records the transition.
    pub async fn set_status(
        &self,
        cred: &CredentialRuntime,
        status: CredentialStatus,
        reason: &str,
        caller: Option<&str>,
    ) -> Result<(), BrokerError> {
        let before = cred.status();
        let now = self.inner.clock.now_ms();
        self.inner
            .store
            .set_credential_status(&cred.tenant, &cred.id, status, None, now)
            .await?;
        cred.set_status(status);
        if before != status {
            self.inner
                .events
                .record(
                    &cred.tenant,
                    &cred.id,
                    EventKind::StatusChanged,
                    caller,
                    format!("{} → {}: {reason}", before.as_str(), status.as_str()),
                    None,
                )
                .await;
        }
        Ok(())
    }

    /// Installs the result of an authorization-code exchange: the refresh token is stored
    /// durably first, the credential becomes ACTIVE, and the access token is cached for the
    /// scopes it was granted for.
    pub async fn complete_authorization(
        &self,
        tenant: &str,
        id: &str,
        scopes: &ScopeSet,
        mut issued: IssuedToken,
        caller: Option<&str>,
    ) -> Result<(), BrokerError> {
        let cred = self
            .credential(tenant, id)
            .ok_or_else(|| BrokerError::NotFound {
                tenant: tenant.to_owned(),
                credential: id.to_owned(),
            })?;
        let now = self.inner.clock.now_ms();
        if let Some(rt) = issued.refresh_token.take() {
            let sealed = self.seal_refresh_token(tenant, id, &rt);
            self.inner
                .store
                .put_refresh_token(tenant, id, Some(&sealed), now)
                .await?;
            cred.set_refresh_token(Some(rt));
            cred.mark_refresh_token_used(now);
        }
        // Tokens of an earlier grant must not be served after a new consent.
        self.drop_slots(tenant, id, None);
        self.inner.store.delete_tokens(tenant, id, None).await?;
        self.set_status(
            &cred,
            CredentialStatus::Active,
            "authorization completed",
            caller,
        )
        .await?;
        let key = CacheKey::new(tenant, id, scopes);
        let slot = self.new_slot(key.clone(), scopes.clone(), cred.clone());
        self.inner.cache.insert(key, slot.clone());
        self.accept(&slot, issued, caller, None).await?;
        Ok(())
    }

    pub fn credential(&self, tenant: &str, id: &str) -> Option<Arc<CredentialRuntime>> {
        self.inner
            .credentials
            .get(&(tenant.to_owned(), id.to_owned()))
            .map(|c| c.value().clone())
    }

    fn new_slot(&self, key: CacheKey, scopes: ScopeSet, cred: Arc<CredentialRuntime>) -> Arc<Slot> {
        Arc::new(Slot {
            key,
            scopes,
            cred,
            current: ArcSwapOption::empty(),
            inflight: Mutex::new(None),
            backoff: Mutex::new(Backoff::default()),
            dropped: AtomicBool::new(false),
            retry_not_before_ms: AtomicI64::new(UnixMillis::MIN),
            force_not_before_ms: AtomicI64::new(UnixMillis::MIN),
        })
    }

    /// Removes cache slots of a credential (one scope key or all); returns how many held a
    /// token, and those tokens.
    pub(crate) fn drop_slots(
        &self,
        tenant: &str,
        id: &str,
        scope_key: Option<&str>,
    ) -> Vec<Arc<CachedToken>> {
        let mut dropped = Vec::new();
        self.inner.cache.retain(|k, slot| {
            let (t, c, s) = k.parts();
            let hit = t == tenant && c == id && scope_key.is_none_or(|sk| sk == s);
            if hit {
                slot.dropped.store(true, Ordering::Release);
                if let Some(tok) = slot.current.swap(None) {
                    dropped.push(tok);
                }
            }
            !hit
        });
        dropped
    }

    /// When to start refreshing a token: before expiry by the smaller of
    /// `refresh_fraction` of its lifetime and `refresh_margin_max`, and earlier still by a
    /// random jitter of up to twice `refresh_fraction` of the lifetime, so tokens issued together
    /// are not all refreshed in the same second.
    fn refresh_at(&self, issued_at: UnixMillis, expires_at: UnixMillis) -> UnixMillis {
        let s = &self.inner.settings;
        let lifetime = (expires_at - issued_at).max(0);
        let frac = (lifetime as f64 * s.refresh_fraction) as i64;
        let margin = frac.min(s.refresh_margin_max.as_millis() as i64);
        // Jitter up to twice the fraction, but never before half the lifetime.
        let jitter_max = (2 * frac).min(lifetime / 2 - margin).max(0);
        let jitter = if jitter_max > 0 {
            rand::thread_rng().gen_range(0..=jitter_max)
        } else {
            0
        };
        expires_at - margin - jitter
    }

    /// Returns a valid token: from memory when possible, else from one shared fetch.
    pub async fn get_token(
        &self,
        req: &TokenRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Arc<CachedToken>, BrokerError> {
        let found = LOOKUP_KEY.with_borrow_mut(|buf| {
            CacheKey::write(buf, &req.tenant, &req.credential_id, &req.scopes);
            self.inner
                .cache
                .get(buf.as_str())
                .map(|s| s.value().clone())
        });
        let slot = match found {
            Some(s) => s,
            None => {
                let key = CacheKey::new(&req.tenant, &req.credential_id, &req.scopes);
                self.create_slot(key, req)?
            }
        };
        if slot.cred.status() != CredentialStatus::Active {
            return Err(self.not_active(&slot.cred).await);
        }
        let now = self.inner.clock.now_ms();
        let min_ttl = req.min_ttl.as_millis() as i64;
        if req.force_refresh {
            slot.force_not_before_ms.fetch_max(now, Ordering::AcqRel);
        }
        if !req.force_refresh {
            if let Some(tok) = slot.current.load_full() {
                if tok.expires_at_ms - now > min_ttl {
                    if now >= tok.refresh_at_ms {
                        self.refresh_in_background(&slot, req.caller.as_deref(), now);
                    }
                    self.inner
                        .metrics
                        .cache_hits
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(tok);
                }
            }
        }
        self.inner
            .metrics
            .cache_misses
            .fetch_add(1, Ordering::Relaxed);
        let fetch = self.join_or_start_fetch(&slot, req.caller.as_deref(), now)?;
        let tok = match deadline {
            Some(d) => tokio::time::timeout_at(d, fetch)
                .await
                .map_err(|_| BrokerError::DeadlineExceeded)??,
            None => fetch.await?,
        };
        if tok.expires_at_ms <= self.inner.clock.now_ms() {
            return Err(BrokerError::Unavailable {
                message: "the provider issued a token that has already expired; check the provider's clock and token lifetime".into(),
                retry_after: None,
            });
        }
        Ok(tok)
    }

    fn create_slot(&self, key: CacheKey, req: &TokenRequest) -> Result<Arc<Slot>, BrokerError> {
        let cred = self
            .credential(&req.tenant, &req.credential_id)
            .ok_or_else(|| BrokerError::NotFound {
                tenant: req.tenant.clone(),
                credential: req.credential_id.clone(),
            })?;
        let slot = self
            .inner
            .cache
            .entry(key.clone())
            .or_insert_with(|| self.new_slot(key, req.scopes.clone(), cred))
            .value()
            .clone();
        Ok(slot)
    }

    async fn not_active(&self, cred: &CredentialRuntime) -> BrokerError {
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

    fn refresh_in_background(&self, slot: &Arc<Slot>, caller: Option<&str>, now: UnixMillis) {
        if now < slot.retry_not_before_ms.load(Ordering::Relaxed) || lock(&slot.inflight).is_some()
        {
            return;
        }
        if let Ok(fetch) = self.join_or_start_fetch(slot, caller, now) {
            self.inner
                .metrics
                .background_refreshes
                .fetch_add(1, Ordering::Relaxed);
            // The task runs on its own; dropping this handle does not cancel it.
            drop(fetch);
        }
    }

    /// Joins the key's in-flight fetch or starts one. During backoff after a transient
    /// failure, answers with the last error instead of calling the provider again.
    fn join_or_start_fetch(
        &self,
        slot: &Arc<Slot>,
        caller: Option<&str>,
        now: UnixMillis,
    ) -> Result<SharedFetch, BrokerError> {
        let mut inflight = lock(&slot.inflight);
        if let Some(f) = inflight.as_ref() {
            return Ok(f.clone());
        }
        {
            let b = lock(&slot.backoff);
            if now < b.next_attempt_ms {
                let wait = Duration::from_millis((b.next_attempt_ms - now) as u64);
                return Err(match &b.last_error {
                    Some(BrokerError::Unavailable { message, .. }) => BrokerError::Unavailable {
                        message: message.clone(),
                        retry_after: Some(wait),
                    },
                    Some(other) => other.clone(),
                    None => BrokerError::Unavailable {
                        message: "provider temporarily unavailable".into(),
                        retry_after: Some(wait),
                    },
                });
            }
        }
        let broker = self.clone();
        let task_slot = slot.clone();
        let caller = caller.map(str::to_owned);
        let handle = tokio::spawn(async move {
            let result = broker.fetch_and_store(&task_slot, caller.as_deref()).await;
            *lock(&task_slot.inflight) = None;
            result
        });
        let fut: BoxFuture<'static, FetchResult> = async move {
            handle.await.unwrap_or_else(|e| {
                Err(BrokerError::Unavailable {
                    message: format!("token fetch task failed: {e}"),
                    retry_after: None,
                })
            })
        }
        .boxed();
        let shared = fut.shared();
        *inflight = Some(shared.clone());
        Ok(shared)
    }

    /// One upstream fetch for a slot, with everything that must happen around it: one at a
    /// time per credential in this process and, across replicas, only under the credential's
    /// refresh lease; a replica that waited for the lease adopts the token the holder stored.
    async fn fetch_and_store(&self, slot: &Arc<Slot>, caller: Option<&str>) -> FetchResult {
        let cred = slot.cred.clone();
        let _one_at_a_time = cred.fetch_lock.lock().await;
        let lease = match self.lease_or_adopt(slot).await {
            Ok(Coordinated::Adopted(tok)) => return Ok(tok),
            Ok(Coordinated::Leased(lease)) => lease,
            Err(e) => return Err(self.store_failed(slot, e)),
        };
        let result = self.fetch_under_lease(slot, caller, &lease).await;
        self.release_lease(&cred, &lease).await;
        result
    }

    /// The upstream fetch itself, made while holding the credential's refresh lease.
    async fn fetch_under_lease(
        &self,
        slot: &Arc<Slot>,
        caller: Option<&str>,
        lease: &HeldLease,
    ) -> FetchResult {
        let cred = slot.cred.clone();
        let mut retried_with_stored_token = false;
        loop {
            let used_rt = cred.refresh_token();
            let call = UpstreamCall::new(
                self.inner.http.clone(),
                self.inner.events.sink(&cred.tenant, &cred.id, caller),
                cred.call_redactor(),
            );
            self.inner
                .metrics
                .upstream_fetches
                .fetch_add(1, Ordering::Relaxed);
            let outcome = tokio::time::timeout(
                self.inner.settings.fetch_timeout,
                cred.provider.fetch(FetchRequest {
                    scopes: &slot.scopes,
                    refresh_token: used_rt.as_ref(),
                    call: &call,
                }),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::TimedOut {
                    step: "fetch".into(),
                    after: self.inner.settings.fetch_timeout,
                })
            });
            match outcome {
                Ok(issued) => {
                    if used_rt.is_some() || issued.refresh_token.is_some() {
                        cred.mark_refresh_token_used(self.inner.clock.now_ms());
                    }
                    return self.accept(slot, issued, caller, Some(lease)).await;
                }
                Err(e) if e.rejects_credential() && !retried_with_stored_token => {
                    // Before declaring the credential dead, make sure we did not just use a
                    // refresh token that another refresh (or replica) already rotated.
                    let stored = self.stored_refresh_token(&cred.tenant, &cred.id).await?;
                    if stored.is_some() && stored != used_rt {
                        cred.set_refresh_token(stored);
                        retried_with_stored_token = true;
                        continue;
                    }
                    return Err(self.mark_invalid(&cred, &e, caller).await);
                }
                Err(e) if e.rejects_credential() => {
                    return Err(self.mark_invalid(&cred, &e, caller).await)
                }
                Err(e) => return Err(self.failed(slot, e, caller).await),
            }
        }
    }

    /// Stores and caches a token the provider issued. Fetched under a refresh `lease`, its
    /// results are written only while the lease is still this replica's (fenced).
    async fn accept(
        &self,
        slot: &Arc<Slot>,
        mut issued: IssuedToken,
        caller: Option<&str>,
        lease: Option<&HeldLease>,
    ) -> FetchResult {
        let cred = &slot.cred;
        let now = self.inner.clock.now_ms();
        let expires_at_ms = match (issued.expires_in, issued.expires_at_unix) {
            (Some(d), _) => now + d.as_millis() as i64,
            (None, Some(exp)) => (exp as i64).saturating_mul(1000),
            (None, None) => now + 3_600_000,
        };
        if expires_at_ms <= now {
            let e = ProviderError::transient(
                "token",
                "provider issued a token that is already expired (expires_in 0 or exp in the past)",
            );
            return Err(self.failed(slot, e, caller).await);
        }
        // A rotated refresh token is written durably before the new access token is handed
        // to anyone: losing it would lock the credential out at the next refresh.
        if let Some(rt) = issued.refresh_token.take() {
            cred.set_refresh_token(Some(rt.clone()));
            let sealed = self.seal_refresh_token(&cred.tenant, &cred.id, &rt);
            if !self
                .write_result(cred, lease, Some(&sealed), None, now)
                .await?
            {
                return self.lease_lost(slot, caller).await;
            }
        }
        let legacy = issued.metadata.get("legacy_grant").cloned();
        let scopes = issued
            .scopes
            .take()
            .unwrap_or_else(|| slot.scopes.as_slice().to_vec());
        let tok = Arc::new(CachedToken {
            access_token: issued.access_token,
            token_type: issued.token_type,
            expires_at_ms,
            issued_at_ms: now,
            refresh_at_ms: self.refresh_at(now, expires_at_ms),
            scopes,
            metadata: issued.metadata,
        });
        if slot.dropped.load(Ordering::Acquire) {
            // Revoked while the fetch was in flight: hand it to the waiting callers (they
            // asked before the revoke) but do not cache or store it.
            return Ok(tok);
        }
        let scope_key = slot.key.scope_key();
        let field = format!("access_token:{scope_key}");
        let rec = TokenRecord {
            tenant: cred.tenant.clone(),
            credential_id: cred.id.clone(),
            scope_key: scope_key.to_owned(),
            access_sealed: self.inner.cipher.seal_secret(
                SecretSlot {
                    tenant: &cred.tenant,
                    credential: &cred.id,
                    field: &field,
                },
                &tok.access_token,
            ),
            token_type: tok.token_type.clone(),
            expires_at_ms,
            issued_at_ms: now,
            scopes: tok.scopes.clone(),
            metadata: tok.metadata.clone(),
        };
        match self.write_result(cred, lease, None, Some(&rec), now).await {
            Ok(true) => {}
            // Presumed dead, this replica lost the lease: the new holder's token wins.
            Ok(false) => return self.lease_lost(slot, caller).await,
            Err(e) => {
                // Only the shared (and warm-restart) copy is lost; the token itself is good.
                tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "could not persist token");
            }
        }
        slot.current.store(Some(tok.clone()));
        *lock(&slot.backoff) = Backoff::default();
        slot.retry_not_before_ms
            .store(UnixMillis::MIN, Ordering::Relaxed);
        if let Some(grant) = legacy {
            self.inner
                .events
                .record(
                    &cred.tenant,
                    &cred.id,
                    EventKind::LegacyGrant,
                    caller,
                    format!("legacy `{grant}` grant used; migrate this credential to a grant RFC 9700 allows"),
                    None,
                )
                .await;
        }
        self.inner
            .events
            .record(
                &cred.tenant,
                &cred.id,
                EventKind::TokenIssued,
                caller,
                format!(
                    "token issued for scopes [{}], valid {} s",
                    tok.scopes.join(" "),
                    (expires_at_ms - now) / 1000
                ),
                None,
            )
            .await;
        Ok(tok)
    }

    async fn mark_invalid(
        &self,
        cred: &CredentialRuntime,
        e: &ProviderError,
        caller: Option<&str>,
    ) -> BrokerError {
        let now = self.inner.clock.now_ms();
        let msg = e.to_string();
        cred.set_status(CredentialStatus::Invalid);
        if let Err(se) = self
            .inner
            .store
            .set_credential_status(
                &cred.tenant,
                &cred.id,
                CredentialStatus::Invalid,
                Some(&msg),
                now,
            )
            .await
        {
            tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %se, "could not persist INVALID status");
        }
        self.drop_slots(&cred.tenant, &cred.id, None);
        self.inner
            .metrics
            .upstream_failures
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .events
            .record(
                &cred.tenant,
                &cred.id,
                EventKind::StatusChanged,
                caller,
                format!("ACTIVE → INVALID: {msg}"),
                None,
            )
            .await;
        tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %msg, "provider rejected credential; marked INVALID");
        BrokerError::Rejected(cred.not_active_message(Some(&msg)))
    }

    async fn failed(&self, slot: &Slot, e: ProviderError, caller: Option<&str>) -> BrokerError {
        let cred = &slot.cred;
        self.inner
            .metrics
            .upstream_failures
            .fetch_add(1, Ordering::Relaxed);
        let err = match &e {
            ProviderError::Rejected {
                kind: RejectKind::Scope,
                ..
            } => BrokerError::InvalidArgument(format!(
                "{e}; request only scopes the credential `{}` is allowed",
                cred.id
            )),
            ProviderError::Rejected { .. }
            | ProviderError::InvalidConfiguration(_)
            | ProviderError::Unsupported(_) => BrokerError::Misconfigured(format!(
                "{e}; check the settings of credential `{}` of tenant `{}`",
                cred.id, cred.tenant
            )),
            ProviderError::Transient { .. } | ProviderError::TimedOut { .. } => {
                let now = self.inner.clock.now_ms();
                let mut b = lock(&slot.backoff);
                b.failures = b.failures.saturating_add(1);
                let s = &self.inner.settings;
                let exp = s
                    .backoff_initial
                    .saturating_mul(1u32 << (b.failures - 1).min(16))
                    .min(s.backoff_max);
                // Full jitter in [exp/2, exp] keeps replicas and keys from retrying in step.
                let ms = exp.as_millis() as u64;
                let mut delay = rand::thread_rng().gen_range(ms / 2..=ms.max(1)) as i64;
                // While a valid token is cached, retry before it expires: at most half of
                // its remaining life away, so retries get denser towards expiry and a
                // provider that came back is used before callers are left without a token.
                if let Some(tok) = slot.current.load_full() {
                    let remaining = tok.expires_at_ms - now;
                    if remaining > 0 {
                        let floor = s.backoff_initial.as_millis() as i64;
                        delay = delay.min((remaining / 2).max(floor));
                    }
                }
                let delay = Duration::from_millis(delay.max(0) as u64)
                    .max(e.retry_after().unwrap_or_default());
                b.next_attempt_ms = now + delay.as_millis() as i64;
                slot.retry_not_before_ms
                    .store(b.next_attempt_ms, Ordering::Relaxed);
                let err = BrokerError::Unavailable {
                    message: format!("provider unavailable: {e}; retry later"),
                    retry_after: Some(delay),
                };
                b.last_error = Some(err.clone());
                err
            }
        };
        self.inner
            .events
            .record(
                &cred.tenant,
                &cred.id,
                EventKind::TokenFailed,
                caller,
                format!("token fetch failed: {e}"),
                None,
            )
            .await;
        err
    }

    /// Drops cached tokens of a credential (all, or one scope set) and, when asked and
    /// supported, revokes them at the provider. Returns (dropped, revoked upstream).
    pub async fn revoke(
        &self,
        tenant: &str,
        credential_id: &str,
        scopes: Option<&ScopeSet>,
        upstream: bool,
        caller: Option<&str>,
    ) -> Result<(u32, u32), BrokerError> {
        let cred = self
            .credential(tenant, credential_id)
            .ok_or_else(|| BrokerError::NotFound {
                tenant: tenant.to_owned(),
                credential: credential_id.to_owned(),
            })?;
        let scope_key = scopes.map(|s| {
            CacheKey::new(tenant, credential_id, s)
                .scope_key()
                .to_owned()
        });
        // The store first: if it is unreachable nothing changes and the caller is told to
        // retry, instead of this replica alone forgetting tokens the others keep serving.
        // Its commit tells the other replicas to drop them too.
        self.inner
            .store
            .delete_tokens(tenant, credential_id, scope_key.as_deref())
            .await?;
        let dropped = self.drop_slots(tenant, credential_id, scope_key.as_deref());
        let mut revoked = 0u32;
        let mut notes = Vec::new();
        if upstream && !dropped.is_empty() {
            if cred.provider.capabilities().revoke {
                let call = UpstreamCall::new(
                    self.inner.http.clone(),
                    self.inner.events.sink(tenant, credential_id, caller),
                    cred.call_redactor(),
                );
                for tok in &dropped {
                    call.redactor().learn(&tok.access_token);
                    match cred
                        .provider
                        .revoke(&call, &tok.access_token, TokenTypeHint::AccessToken)
                        .await
                    {
                        Ok(()) => revoked += 1,
                        Err(e) => notes.push(e.to_string()),
                    }
                }
            } else {
                notes.push(format!(
                    "provider `{}` does not support revocation",
                    cred.provider_kind
                ));
            }
        }
        let scope_text =
            scope_key.map_or_else(|| "all scopes".to_owned(), |s| format!("scopes [{s}]"));
        let mut message = format!(
            "revoke ({scope_text}): dropped {} cached token(s), revoked {revoked} upstream",
            dropped.len()
        );
        if !notes.is_empty() {
            message.push_str(&format!("; {}", notes.join("; ")));
        }
        self.inner
            .events
            .record(
                tenant,
                credential_id,
                EventKind::Revoked,
                caller,
                message,
                None,
            )
            .await;
        Ok((dropped.len() as u32, revoked))
    }
}

#[cfg(test)]
mod tests;
