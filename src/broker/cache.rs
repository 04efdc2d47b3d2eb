//! The token cache: one [`Slot`] per cache key (tenant, credential, normalized scope set),
//! holding the current token, the key's single flight and its backoff state.
//!
//! Laid out for memory: a slot stores its key text once (the scope set is read back from
//! it), a cached token holds one copy of the access token and shares its type, granted
//! scopes and metadata with the credential's other tokens ([`TokenShape`]), the map holds
//! one pointer per slot, and backoff state is allocated only while a key is failing.

use super::single_flight::SingleFlight;
use super::{BrokerError, FetchResult};
use crate::clock::UnixMillis;
use crate::credentials::{CredentialRuntime, TokenShape};
use arc_swap::ArcSwapOption;
use authgate_plugin_sdk::{ScopeSet, Secret};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Cache key text: tenant, credential id and the normalized scope set (space-separated),
/// joined with NUL, which validated ids and scopes cannot contain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<str>);

impl CacheKey {
    pub fn new(tenant: &str, credential: &str, scopes: &ScopeSet) -> Self {
        let mut s = String::with_capacity(tenant.len() + credential.len() + 32);
        Self::write(&mut s, tenant, credential, scopes);
        Self(s.into_boxed_str())
    }

    /// The key's text, written into `buf` (cleared first).
    pub fn write(buf: &mut String, tenant: &str, credential: &str, scopes: &ScopeSet) {
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

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> (&str, &str, &str) {
        let mut it = self.0.splitn(3, '\0');
        let t = it.next().unwrap_or("");
        let c = it.next().unwrap_or("");
        let s = it.next().unwrap_or("");
        (t, c, s)
    }

    /// The normalized scope set as stored: scopes joined by one space.
    pub fn scope_key(&self) -> &str {
        self.parts().2
    }

    /// The scope set, read back from the key (allocates; not for the hot path).
    pub fn scopes(&self) -> ScopeSet {
        ScopeSet::new(self.scope_key().split(' '))
    }

    fn is_of(&self, tenant: &str, id: &str, scope_key: Option<&str>) -> bool {
        let (t, c, s) = self.parts();
        t == tenant && c == id && scope_key.is_none_or(|sk| sk == s)
    }
}

/// A token held in the cache.
pub struct CachedToken {
    pub access_token: Secret,
    pub expires_at_ms: UnixMillis,
    pub issued_at_ms: UnixMillis,
    /// When a background refresh should start (before expiry, with jitter).
    pub refresh_at_ms: UnixMillis,
    shape: Arc<TokenShape>,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("access_token", &self.access_token)
            .field("token_type", &self.shape.token_type)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("granted_scopes", &self.shape.granted_scopes)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    pub fn new(access_token: Secret, times: TokenTimes, shape: Arc<TokenShape>) -> Self {
        Self {
            access_token,
            expires_at_ms: times.expires_at_ms,
            issued_at_ms: times.issued_at_ms,
            refresh_at_ms: times.refresh_at_ms,
            shape,
        }
    }

    pub fn token_type(&self) -> &str {
        &self.shape.token_type
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.shape.metadata
    }

    /// The scopes the token was granted for: what the provider said, or else the scopes
    /// it was requested for.
    pub fn scopes(&self, requested: &ScopeSet) -> Vec<String> {
        match &self.shape.granted_scopes {
            Some(granted) => granted.clone(),
            None => requested.as_slice().to_vec(),
        }
    }
}

/// A token's times, all in the injected clock's milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TokenTimes {
    pub issued_at_ms: UnixMillis,
    pub expires_at_ms: UnixMillis,
    pub refresh_at_ms: UnixMillis,
}

/// A key's state after transient failures (no new attempt before `next_attempt_ms`;
/// callers meanwhile get `last_error`) and after forced refreshes. Allocated only when a key
/// has any: most keys never fail or are forced, and every slot's byte counts.
#[derive(Debug)]
struct Backoff {
    failures: u32,
    next_attempt_ms: UnixMillis,
    last_error: Option<BrokerError>,
    /// When a caller last asked for a forced refresh: a token stored by another replica
    /// is adopted only if issued after this (it may be the very token the caller rejects).
    force_not_before_ms: UnixMillis,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            failures: 0,
            next_attempt_ms: UnixMillis::MIN,
            last_error: None,
            force_not_before_ms: UnixMillis::MIN,
        }
    }
}

/// One cache key's state.
pub struct Slot {
    pub key: CacheKey,
    pub cred: Arc<CredentialRuntime>,
    pub current: ArcSwapOption<CachedToken>,
    pub flight: SingleFlight<FetchResult>,
    backoff: Mutex<Option<Box<Backoff>>>,
    /// `backoff.next_attempt_ms`, readable without the lock: cache hits in the refresh
    /// window during an outage check it and move on, at the cost of one atomic load.
    retry_not_before_ms: AtomicI64,
    /// Set when the slot was dropped by Revoke: a fetch finishing later must not store.
    dropped: AtomicBool,
}

impl Slot {
    pub fn new(key: CacheKey, cred: Arc<CredentialRuntime>) -> Arc<Self> {
        Arc::new(Self {
            key,
            cred,
            current: ArcSwapOption::empty(),
            flight: SingleFlight::default(),
            backoff: Mutex::new(None),
            retry_not_before_ms: AtomicI64::new(UnixMillis::MIN),
            dropped: AtomicBool::new(false),
        })
    }

    pub fn flight(slot: &Slot) -> &SingleFlight<FetchResult> {
        &slot.flight
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Whether a retry is still held back (one atomic load: for the refresh window's hits).
    pub fn backing_off(&self, now: UnixMillis) -> bool {
        now < self.retry_not_before_ms.load(Ordering::Relaxed)
    }

    /// The answer while the key backs off: its last error, with the time left to wait.
    pub fn backoff_error(&self, now: UnixMillis) -> Option<BrokerError> {
        let b = self.backoff.lock();
        let b = b.as_ref().filter(|b| now < b.next_attempt_ms)?;
        let wait = Duration::from_millis((b.next_attempt_ms - now) as u64);
        Some(match &b.last_error {
            Some(BrokerError::Unavailable { message, .. }) => BrokerError::Unavailable {
                message: message.clone(),
                retry_after: Some(wait),
            },
            Some(other) => other.clone(),
            None => BrokerError::Unavailable {
                message: "provider temporarily unavailable".into(),
                retry_after: Some(wait),
            },
        })
    }

    /// Counts one more failure and returns the count (for the next delay).
    pub fn note_failure(&self) -> u32 {
        let mut b = self.backoff.lock();
        let b = b.get_or_insert_with(Box::default);
        b.failures = b.failures.saturating_add(1);
        b.failures
    }

    /// Holds retries back until `until`, answering `error` meanwhile.
    pub fn back_off(&self, until: UnixMillis, error: BrokerError) {
        let mut b = self.backoff.lock();
        let b = b.get_or_insert_with(Box::default);
        b.next_attempt_ms = until;
        b.last_error = Some(error);
        self.retry_not_before_ms.store(until, Ordering::Relaxed);
    }

    /// A good token arrived: failures are forgotten (a forced refresh is not).
    pub fn reset_backoff(&self) {
        let mut b = self.backoff.lock();
        match b.as_ref().map(|b| b.force_not_before_ms) {
            Some(forced) if forced != UnixMillis::MIN => {
                *b = Some(Box::new(Backoff {
                    force_not_before_ms: forced,
                    ..Backoff::default()
                }));
            }
            _ => *b = None,
        }
        self.retry_not_before_ms
            .store(UnixMillis::MIN, Ordering::Relaxed);
    }

    pub fn note_forced_refresh(&self, now: UnixMillis) {
        let mut b = self.backoff.lock();
        let b = b.get_or_insert_with(Box::default);
        b.force_not_before_ms = b.force_not_before_ms.max(now);
    }

    pub fn forced_refresh_at(&self) -> UnixMillis {
        self.backoff
            .lock()
            .as_ref()
            .map_or(UnixMillis::MIN, |b| b.force_not_before_ms)
    }
}

/// The map's element: a slot, hashed and compared by its key text, so a lookup needs only
/// the text and the map stores one pointer per key.
struct Entry(Arc<Slot>);

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.as_str().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Entry {}

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.0.key.as_str()
    }
}

thread_local! {
    /// Each worker thread's buffer for the text of the key being looked up: a cache hit
    /// allocates no key.
    static LOOKUP_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// All slots of this process.
#[derive(Default)]
pub struct TokenCache {
    slots: DashMap<Entry, ()>,
}

impl TokenCache {
    /// The slot of a key, if there is one: the hot path (no allocation, no lock held).
    pub fn lookup(&self, tenant: &str, credential: &str, scopes: &ScopeSet) -> Option<Arc<Slot>> {
        LOOKUP_KEY.with_borrow_mut(|buf| {
            CacheKey::write(buf, tenant, credential, scopes);
            self.slots.get(buf.as_str()).map(|e| e.key().0.clone())
        })
    }

    /// The slot of a key given as its stored scope key (another replica's notice).
    pub fn lookup_scope_key(
        &self,
        tenant: &str,
        credential: &str,
        scope_key: &str,
    ) -> Option<Arc<Slot>> {
        let key = format!("{tenant}\0{credential}\0{scope_key}");
        self.slots.get(key.as_str()).map(|e| e.key().0.clone())
    }

    /// The slot of a key, created for `cred` when there is none and the credential has
    /// fewer than `limit` slots (`None` when it has that many).
    pub fn get_or_insert(
        &self,
        key: CacheKey,
        cred: &Arc<CredentialRuntime>,
        limit: usize,
    ) -> Option<Arc<Slot>> {
        if let Some(e) = self.slots.get(key.as_str()) {
            return Some(e.key().0.clone());
        }
        if !cred.try_count_slot(limit) {
            return None;
        }
        let slot = Slot::new(key, cred.clone());
        let entry = self.slots.entry(Entry(slot));
        if matches!(entry, dashmap::Entry::Occupied(_)) {
            // Another caller created it meanwhile: its count stands, not this one's.
            cred.uncount_slot();
        }
        Some(entry.or_insert(()).key().0.clone())
    }

    /// Puts a new slot in place of any slot of the same key.
    pub fn replace(&self, slot: Arc<Slot>) {
        if let Some((old, ())) = self.slots.remove(slot.key.as_str()) {
            old.0.dropped.store(true, Ordering::Release);
            old.0.cred.uncount_slot();
        }
        slot.cred.count_slot();
        self.slots.insert(Entry(slot), ());
    }

    /// Removes the slots that hold no token valid at `now` and are neither fetching nor
    /// backing off; returns how many.
    pub fn evict_idle(&self, now: UnixMillis) -> usize {
        let mut evicted = 0;
        self.slots.retain(|e, ()| {
            let slot = &e.0;
            let valid = slot
                .current
                .load()
                .as_ref()
                .is_some_and(|t| t.expires_at_ms > now);
            let idle = !valid && !slot.flight.is_running() && !slot.backing_off(now);
            if idle {
                slot.dropped.store(true, Ordering::Release);
                slot.cred.uncount_slot();
                evicted += 1;
            }
            !idle
        });
        evicted
    }

    /// Removes the slots of a credential (one scope key, or all); returns the tokens they
    /// held. A fetch still running for a removed slot hands its token to its waiters but
    /// does not cache it.
    pub fn remove(&self, tenant: &str, id: &str, scope_key: Option<&str>) -> Vec<Arc<CachedToken>> {
        let mut dropped = Vec::new();
        self.slots.retain(|e, ()| {
            let slot = &e.0;
            let hit = slot.key.is_of(tenant, id, scope_key);
            if hit {
                slot.dropped.store(true, Ordering::Release);
                slot.cred.uncount_slot();
                if let Some(tok) = slot.current.swap(None) {
                    dropped.push(tok);
                }
            }
            !hit
        });
        dropped
    }

    /// The tokens held for a credential, with the scopes each was requested for.
    pub fn tokens_of(&self, tenant: &str, id: &str) -> Vec<(ScopeSet, Arc<CachedToken>)> {
        self.slots
            .iter()
            .filter(|e| e.key().0.key.is_of(tenant, id, None))
            .filter_map(|e| {
                let slot = &e.key().0;
                slot.current.load_full().map(|t| (slot.key.scopes(), t))
            })
            .collect()
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// How many slots hold a token still valid at `now` (a scrape walks the map once).
    pub fn valid_tokens(&self, now: UnixMillis) -> usize {
        self.slots
            .iter()
            .filter(|e| {
                e.key()
                    .0
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|t| t.expires_at_ms > now)
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-token memory goal (key + token + 256 B, measured by `authgate-bench run
    /// --only memory`) leaves room for these and the map's pointer; a field added to either
    /// must be paid for elsewhere.
    #[test]
    fn slot_and_token_stay_small() {
        assert!(
            std::mem::size_of::<Slot>() <= 80,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert!(
            std::mem::size_of::<CachedToken>() <= 48,
            "{}",
            std::mem::size_of::<CachedToken>()
        );
        assert_eq!(std::mem::size_of::<Entry>(), 8);
    }

    #[test]
    fn key_parts_and_scopes_read_back() {
        let scopes = ScopeSet::new(["b a", "a"]);
        let k = CacheKey::new("acme", "idp", &scopes);
        assert_eq!(k.scope_key(), "a b");
        assert_eq!(k.scopes(), scopes);
        assert!(k.is_of("acme", "idp", None) && k.is_of("acme", "idp", Some("a b")));
        assert!(!k.is_of("acme", "idp", Some("a")) && !k.is_of("acme", "other", None));
        let empty = CacheKey::new("acme", "idp", &ScopeSet::default());
        assert!(empty.scopes().is_empty());
    }

    struct NoProvider;

    #[async_trait::async_trait]
    impl authgate_plugin_sdk::Provider for NoProvider {
        fn capabilities(&self) -> authgate_plugin_sdk::Capabilities {
            authgate_plugin_sdk::Capabilities::default()
        }
        fn secrets(&self) -> Vec<Secret> {
            Vec::new()
        }
        async fn fetch(
            &self,
            _: authgate_plugin_sdk::FetchRequest<'_>,
        ) -> Result<authgate_plugin_sdk::IssuedToken, authgate_plugin_sdk::ProviderError> {
            Err(authgate_plugin_sdk::ProviderError::config(
                "not for fetching",
            ))
        }
    }

    fn slot() -> Arc<Slot> {
        let cred = Arc::new(CredentialRuntime::new(
            "acme".into(),
            "idp".into(),
            "none".into(),
            Arc::new(NoProvider),
            authgate_plugin_sdk::Redactor::new([0; 32]),
            crate::store::CredentialStatus::Active,
            None,
        ));
        Slot::new(CacheKey::new("acme", "idp", &ScopeSet::default()), cred)
    }

    #[test]
    fn backoff_answers_until_it_ends_and_a_forced_refresh_outlives_its_reset() {
        let s = slot();
        assert!(s.backoff_error(0).is_none() && !s.backing_off(0));
        assert_eq!((s.note_failure(), s.note_failure()), (1, 2));
        let down = BrokerError::Unavailable {
            message: "down".into(),
            retry_after: None,
        };
        s.back_off(1_000, down);
        assert!(s.backing_off(999) && !s.backing_off(1_000));
        match s.backoff_error(400) {
            Some(BrokerError::Unavailable { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_millis(600)));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.backoff_error(1_000).is_none());
        s.note_forced_refresh(500);
        s.note_forced_refresh(300);
        s.reset_backoff();
        assert!(!s.backing_off(0) && s.backoff_error(0).is_none());
        assert_eq!(s.note_failure(), 1, "failures are forgotten");
        assert_eq!(s.forced_refresh_at(), 500, "the forced refresh is not");
    }
}
