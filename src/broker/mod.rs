//! The token broker: tokens only. A concurrent cache of tokens keyed by (tenant,
//! credential, scopes) ([`cache`]), one fetch per key at a time ([`single_flight`]),
//! proactive refresh, backoff and the fetch itself ([`refresh`]), and the refresh lease
//! between replicas ([`coordination`]). Credentials and their state belong to
//! [`crate::credentials`]; the broker reads them from its [`CredentialSet`].
//!
//! The hot path (a valid cached token) is a sharded map lookup, an atomic pointer load and
//! a clock read: no I/O, no global lock, and no map guard is held across an `.await`.
//! Everything slower happens in one spawned task per cache key at a time: the task is not
//! cancelled when callers go away, so a fetch sent upstream always completes and is stored.

mod cache;
mod coordination;
mod exchange;
mod refresh;
pub mod single_flight;

pub use crate::error::{BrokerError, STORE_RETRY};
pub use cache::{CacheKey, CachedToken, TokenTimes};
pub use exchange::{ExchangeKey, ExchangeRequest, ExchangedToken};

use crate::clock::{monotonic_now, Clock, UnixMillis};
use crate::config::BrokerConfig;
use crate::context::{current_caller, with_caller};
use crate::credentials::{CredentialRuntime, CredentialSet};
use crate::events::EventKind;
use crate::metrics::{GaugeReadings, Metrics, Outcome as MetricOutcome};
use crate::store::{CredentialStatus, TokenRecord};
use authgate_plugin_sdk::{IssuedToken, ScopeSet, Secret};
use cache::{Slot, TokenCache};
use coordination::Coordinator;
use single_flight::{Flight, Outcome, SingleFlight};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// A token request, validated at the API edge.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub tenant: String,
    pub credential_id: String,
    pub scopes: ScopeSet,
    pub min_ttl: Duration,
    pub force_refresh: bool,
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
    /// How many scope sets one credential may have cached at once.
    pub max_scope_sets_per_credential: usize,
    /// How many exchanged tokens one credential may have cached at once (LRU beyond).
    pub max_exchanged_tokens_per_credential: usize,
    /// How long an exchange result for an opaque subject token is served from the cache.
    pub exchange_opaque_subject_cache: Duration,
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
            max_scope_sets_per_credential: c.max_scope_sets_per_credential,
            max_exchanged_tokens_per_credential: c.max_exchanged_tokens_per_credential,
            exchange_opaque_subject_cache: Duration::from_secs(
                c.exchange_opaque_subject_cache_seconds,
            ),
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        (&BrokerConfig::default()).into()
    }
}

/// What a key's fetch ends with, shared by everyone waiting for it.
pub type FetchResult = Result<Arc<CachedToken>, BrokerError>;

impl Outcome for FetchResult {
    fn lost(e: tokio::task::JoinError) -> Self {
        Err(BrokerError::internal("the token fetch task failed", e))
    }
}

/// The token broker. Cheap to clone.
#[derive(Clone)]
pub struct TokenBroker {
    inner: Arc<Inner>,
}

/// The broker's state, shared with the fetch tasks it spawns.
struct Inner {
    cache: TokenCache,
    exchanges: exchange::ExchangeCache,
    credentials: CredentialSet,
    coordinator: Coordinator,
    clock: Arc<dyn Clock>,
    settings: BrokerSettings,
    metrics: Metrics,
}

impl TokenBroker {
    pub fn new(credentials: CredentialSet, settings: BrokerSettings) -> Self {
        Self::with_metrics(credentials, settings, Metrics::default())
    }

    /// A broker that records into `metrics` (the gateway's, which `/metrics` exposes).
    pub fn with_metrics(
        credentials: CredentialSet,
        settings: BrokerSettings,
        metrics: Metrics,
    ) -> Self {
        let clock = credentials.clock().clone();
        let coordinator = Coordinator::new(
            credentials.store().clone(),
            clock.clone(),
            settings.refresh_lease,
        );
        Self {
            inner: Arc::new(Inner {
                cache: TokenCache::default(),
                exchanges: exchange::ExchangeCache::new(
                    settings.max_exchanged_tokens_per_credential,
                ),
                credentials,
                coordinator,
                clock,
                settings,
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn credentials(&self) -> &CredentialSet {
        &self.inner.credentials
    }

    /// Returns a valid token: from memory when possible, else from one shared fetch.
    pub async fn get_token(
        &self,
        req: &TokenRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Arc<CachedToken>, BrokerError> {
        let started = monotonic_now();
        let answer = self.answer(req, deadline).await;
        let outcome = match &answer {
            Ok((_, true)) => MetricOutcome::Hit,
            Ok((_, false)) => MetricOutcome::Miss,
            Err(_) => MetricOutcome::Error,
        };
        record_cache_outcome(outcome.as_str());
        self.inner.metrics.token_served(
            &req.tenant,
            &req.credential_id,
            outcome,
            started.elapsed(),
        );
        answer.map(|(tok, _)| tok)
    }

    /// [`TokenBroker::get_token`]'s answer, and whether it came from memory.
    async fn answer(
        &self,
        req: &TokenRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Arc<CachedToken>, bool), BrokerError> {
        let inner = &self.inner;
        let slot = match inner
            .cache
            .lookup(&req.tenant, &req.credential_id, &req.scopes)
        {
            Some(s) => s,
            None => self.create_slot(req).await?,
        };
        if slot.cred.status() != CredentialStatus::Active {
            return Err(inner.credentials.not_active(&slot.cred).await);
        }
        let now = inner.clock.now_ms();
        let min_ttl = req.min_ttl.as_millis() as i64;
        if req.force_refresh {
            slot.note_forced_refresh(now);
        } else if let Some(tok) = slot.current.load_full() {
            if tok.expires_at_ms - now > min_ttl {
                if now >= tok.refresh_at_ms {
                    self.refresh_in_background(&slot, now);
                }
                inner.metrics.counters().cache_hits.inc();
                return Ok((tok, true));
            }
        }
        inner.metrics.counters().cache_misses.inc();
        let fetch = self.join_or_start_fetch(&slot, now)?;
        let tok = match deadline {
            Some(d) => tokio::time::timeout_at(d, fetch)
                .await
                .map_err(|_| BrokerError::DeadlineExceeded)??,
            None => fetch.await?,
        };
        if tok.expires_at_ms <= inner.clock.now_ms() {
            return Err(BrokerError::Unavailable {
                message: "the provider issued a token that has already expired; check the provider's clock and token lifetime".into(),
                retry_after: None,
            });
        }
        Ok((tok, false))
    }

    /// A new key: only for a credential that can issue tokens, and only while the
    /// credential has fewer than `max_scope_sets_per_credential` keys.
    async fn create_slot(&self, req: &TokenRequest) -> Result<Arc<Slot>, BrokerError> {
        let inner = &self.inner;
        let cred = inner
            .credentials
            .get(&req.tenant, &req.credential_id)
            .ok_or_else(|| BrokerError::not_found(&req.tenant, &req.credential_id))?;
        if cred.status() != CredentialStatus::Active {
            return Err(inner.credentials.not_active(&cred).await);
        }
        if let Some(scope) = cred.policy.refused_scope(req.scopes.iter()) {
            return Err(BrokerError::PermissionDenied(format!(
                "scope {scope:?} is not in credential `{}`'s settings.gateway.allowed_scopes",
                req.credential_id
            )));
        }
        let key = CacheKey::new(&req.tenant, &req.credential_id, &req.scopes);
        let limit = inner.settings.max_scope_sets_per_credential;
        inner.cache.get_or_insert(key, &cred, limit).ok_or_else(|| {
            BrokerError::ResourceExhausted(format!(
                "credential `{}` of tenant `{}` already has {limit} scope sets cached (broker.max_scope_sets_per_credential); ask for a scope set already in use, or wait for unused ones to be evicted",
                req.credential_id, req.tenant
            ))
        })
    }

    /// Removes, every `every`, the keys that hold no valid token and are neither fetching
    /// nor backing off (so a rejected scope set stays negatively cached while its backoff
    /// lasts), freeing their memory and their share of the per-credential bound.
    pub fn spawn_eviction(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let broker = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = broker.upgrade() else {
                    return;
                };
                let now = inner.clock.now_ms();
                let n = inner.cache.evict_idle(now) + inner.exchanges.evict_idle(now);
                if n > 0 {
                    tracing::debug!(evicted = n, "idle cache keys evicted");
                }
            }
        })
    }

    fn refresh_in_background(&self, slot: &Arc<Slot>, now: UnixMillis) {
        if slot.backing_off(now) || slot.flight.is_running() {
            return;
        }
        if let Ok(fetch) = self.join_or_start_fetch(slot, now) {
            self.inner.metrics.counters().background_refreshes.inc();
            // The task runs on its own; dropping this handle does not cancel it.
            drop(fetch);
        }
    }

    /// Joins the key's in-flight fetch or starts one, on behalf of the current caller.
    /// During backoff after a transient failure, answers with the last error instead of
    /// calling the provider again.
    fn join_or_start_fetch(
        &self,
        slot: &Arc<Slot>,
        now: UnixMillis,
    ) -> Result<Flight<FetchResult>, BrokerError> {
        SingleFlight::join_or_start(slot, Slot::flight, || {
            if let Some(e) = slot.backoff_error(now) {
                return Err(e);
            }
            let inner = self.inner.clone();
            let slot = slot.clone();
            // The fetch's upstream spans are children of the RPC span that started it.
            Ok(with_caller(current_caller(), async move {
                inner.fetch_and_store(&slot).await
            })
            .instrument(tracing::Span::current()))
        })
    }

    /// Drops cached tokens of a credential (all, or one scope set) in every replica and,
    /// when asked and supported, revokes them at the provider. Returns (dropped, revoked
    /// upstream).
    pub async fn revoke(
        &self,
        tenant: &str,
        credential_id: &str,
        scopes: Option<&ScopeSet>,
        upstream: bool,
    ) -> Result<(u32, u32), BrokerError> {
        let creds = &self.inner.credentials;
        let cred = creds
            .get(tenant, credential_id)
            .ok_or_else(|| BrokerError::not_found(tenant, credential_id))?;
        let scope_key = scopes.map(|s| {
            CacheKey::new(tenant, credential_id, s)
                .scope_key()
                .to_owned()
        });
        // The store first: if it is unreachable nothing changes and the caller is told to
        // retry, instead of this replica alone forgetting tokens the others keep serving.
        // Its commit tells the other replicas to drop them too.
        creds
            .store()
            .delete_tokens(tenant, credential_id, scope_key.as_deref())
            .await?;
        let mut tokens: Vec<Secret> = match scope_key {
            // Every token of the credential: its exchanged ones too.
            None => {
                let now = self.inner.clock.now_ms();
                self.inner.exchanges.remove(tenant, credential_id, now)
            }
            Some(_) => Vec::new(),
        };
        let dropped = self.drop_tokens(tenant, credential_id, scope_key.as_deref());
        tokens.extend(dropped.iter().map(|t| t.access_token.clone()));
        let mut revoked = crate::credentials::Revoked::default();
        if upstream && !tokens.is_empty() {
            revoked = creds.revoke_upstream(&cred, &tokens, false).await;
        }
        let scope_text =
            scope_key.map_or_else(|| "all scopes".to_owned(), |s| format!("scopes [{s}]"));
        let mut message = format!(
            "revoke ({scope_text}): dropped {} cached token(s), revoked {} upstream",
            tokens.len(),
            revoked.count
        );
        if !revoked.notes.is_empty() {
            message.push_str(&format!("; {}", revoked.notes.join("; ")));
        }
        creds.record(&cred, EventKind::Revoked, message).await;
        Ok((tokens.len() as u32, revoked.count))
    }

    /// Removes cached tokens of a credential from this process (one scope key or all, then
    /// with its exchanged tokens); returns the credential's own tokens removed.
    pub fn drop_tokens(
        &self,
        tenant: &str,
        id: &str,
        scope_key: Option<&str>,
    ) -> Vec<Arc<CachedToken>> {
        if scope_key.is_none() {
            let now = self.inner.clock.now_ms();
            self.inner.exchanges.remove(tenant, id, now);
        }
        self.inner.cache.remove(tenant, id, scope_key)
    }

    /// Another replica stored a new token for a key this replica may hold: take it when it
    /// is newer than the held one (e.g. after that replica's `force_refresh`), so replicas do
    /// not serve different tokens until their own refresh. Keys not held here are left
    /// alone: they adopt from the store when first asked.
    pub async fn adopt_stored(&self, tenant: &str, id: &str, scope_key: &str) {
        let Some(slot) = self.inner.cache.lookup_scope_key(tenant, id, scope_key) else {
            return;
        };
        if slot.current.load_full().is_none() || Slot::flight(&slot).is_running() {
            // Nothing held, or a fetch under way that adopts from the store itself.
            return;
        }
        if let Err(e) = self.inner.adopt_newer_stored(&slot).await {
            tracing::debug!(%tenant, credential = %id, error = %e, "token another replica stored not adopted");
        }
    }

    /// The tokens this process holds for a credential, with the scopes each was asked for.
    pub fn cached_tokens(&self, tenant: &str, id: &str) -> Vec<(ScopeSet, Arc<CachedToken>)> {
        self.inner.cache.tokens_of(tenant, id)
    }

    /// Caches (and stores) a token the credential's provider issued outside a fetch (the
    /// authorization-code exchange, whose request left at `sent_at`), for the scopes it was
    /// asked for.
    pub async fn install(
        &self,
        cred: &Arc<CredentialRuntime>,
        scopes: &ScopeSet,
        issued: IssuedToken,
        sent_at: UnixMillis,
    ) -> Result<(), BrokerError> {
        let slot = Slot::new(CacheKey::new(&cred.tenant, &cred.id, scopes), cred.clone());
        self.inner.cache.replace(slot.clone());
        self.inner.accept(&slot, issued, None, sent_at).await?;
        Ok(())
    }

    /// Caches stored tokens that are still valid (at start, after a resync), so a restart
    /// does not refetch everything.
    pub fn warm(&self, tokens: Vec<TokenRecord>) -> usize {
        let inner = &self.inner;
        let mut warmed = 0usize;
        for t in tokens {
            let Some(cred) = inner.credentials.get(&t.tenant, &t.credential_id) else {
                continue;
            };
            let tok = match inner.cached_from_record(&cred, t) {
                Ok(tok) => tok,
                Err(e) => {
                    tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "stored token cannot be used; ignoring it");
                    continue;
                }
            };
            let (key, tok) = tok;
            let slot = Slot::new(key, cred);
            slot.current.store(Some(tok));
            inner.cache.replace(slot);
            warmed += 1;
        }
        warmed
    }

    /// Whether a fetch for the request's key is running (tests wait for background ones).
    #[cfg(test)]
    fn fetching(&self, req: &TokenRequest) -> bool {
        self.inner
            .cache
            .lookup(&req.tenant, &req.credential_id, &req.scopes)
            .is_some_and(|s| s.flight.is_running())
    }

    /// How many keys the cache holds.
    pub fn cache_len(&self) -> usize {
        self.inner.cache.slot_count()
    }

    /// `/metrics`: the exposition, with the cache's and credentials' gauges read now.
    pub fn metrics_text(&self) -> String {
        let inner = &self.inner;
        let mut by_status: Vec<(CredentialStatus, usize)> = Vec::new();
        for cred in inner.credentials.all() {
            let status = cred.status();
            match by_status.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => by_status.push((status, 1)),
            }
        }
        inner.metrics.render(&GaugeReadings {
            cached_tokens: inner.cache.valid_tokens(inner.clock.now_ms()),
            cache_keys: inner.cache.slot_count(),
            credentials: by_status,
        })
    }
}

/// How the cache answered, on the RPC's span (the auth layer's `cache` field) when it is
/// enabled; nothing to do otherwise (the hot path).
fn record_cache_outcome(outcome: &'static str) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("cache", outcome);
    }
}

#[cfg(test)]
mod tests;
