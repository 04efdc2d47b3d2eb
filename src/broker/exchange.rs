//! Token exchange (RFC 8693) on behalf of a caller's user: a cache of its own, apart from
//! the credential's own tokens, because its keys are chosen by callers (every subject token
//! is a new key) and its results belong to users.
//!
//! - **Key**: SHA-256 over a per-process random salt and every field that changes the
//!   answer (subject and actor token with their types, audience, resource, scopes, the
//!   requested type). The raw subject token is never a key, and `Debug` shows a digest
//!   prefix only. Audience and resource lists are sorted and deduplicated first.
//! - **Bound**: at most `broker.max_exchanged_tokens_per_credential` keys per credential;
//!   beyond it the least recently used key is dropped (a running exchange still answers its
//!   callers). Keys without a valid token are swept by the broker's eviction task.
//! - **Lifetime**: the earlier of the issued token's expiry and the subject (and actor)
//!   token's JWT `exp`, read without verification (the provider verifies). A subject token
//!   already expired, or expiring within `min_ttl`, is refused before any upstream call.
//!   An opaque subject token's expiry is unknown: its result is served from the cache for
//!   at most `broker.exchange_opaque_subject_cache_seconds`.
//! - **Single flight**: one exchange per key at a time, joined by every caller of the key,
//!   not cancelled when they give up (as for GetToken).
//! - **Failures**: a refused subject token, audience or scope is the caller's problem
//!   (INVALID_ARGUMENT); only `invalid_client` marks the credential INVALID. Nothing is
//!   cached for a failure: the credential's upstream budget bounds retries.
//!
//! Results are held in this process only (not in the store): a replica exchanges for
//! itself, and a restart starts empty.

use super::single_flight::{Flight, Outcome, SingleFlight};
use super::{BrokerError, Inner, TokenBroker};
use crate::clock::UnixMillis;
use crate::context::{current_caller, with_caller};
use crate::credentials::CredentialRuntime;
use crate::events::EventKind;
use crate::store::CredentialStatus;
use authgate_plugin_sdk::{ProviderError, Secret, TokenExchange};
use dashmap::DashMap;
use hashlink::LruCache;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// An exchange request, validated at the API edge.
#[derive(Debug, Clone)]
pub struct ExchangeRequest {
    pub tenant: String,
    pub credential_id: String,
    pub exchange: TokenExchange,
    pub min_ttl: Duration,
}

/// A token obtained by exchange, as cached and answered.
#[derive(Debug)]
pub struct ExchangedToken {
    pub access_token: Secret,
    pub token_type: String,
    pub issued_token_type: String,
    /// The earlier of the issued token's and the subject (actor) token's expiry.
    pub expires_at_ms: UnixMillis,
    pub scopes: Vec<String>,
    /// Served from the cache until then (earlier than `expires_at_ms` for opaque subjects).
    cache_until_ms: UnixMillis,
}

pub type ExchangeResult = Result<Arc<ExchangedToken>, BrokerError>;

impl Outcome for ExchangeResult {
    fn lost(e: tokio::task::JoinError) -> Self {
        Err(BrokerError::internal("the token exchange task failed", e))
    }
}

/// The digest an exchange is cached under. Its `Debug` is a prefix of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeKey([u8; 32]);

impl std::fmt::Debug for ExchangeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExchangeKey({}…)", hex(&self.0[..6]))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One key's state: the last result and the running exchange.
#[derive(Default)]
struct ExchangeSlot {
    current: Mutex<Option<Arc<ExchangedToken>>>,
    flight: SingleFlight<ExchangeResult>,
}

impl ExchangeSlot {
    fn flight(slot: &ExchangeSlot) -> &SingleFlight<ExchangeResult> {
        &slot.flight
    }

    fn valid(&self, now: UnixMillis, min_ttl_ms: i64) -> Option<Arc<ExchangedToken>> {
        let tok = self.current.lock().clone()?;
        (tok.cache_until_ms - now > min_ttl_ms && tok.expires_at_ms - now > min_ttl_ms)
            .then_some(tok)
    }
}

type Keys = Mutex<LruCache<ExchangeKey, Arc<ExchangeSlot>>>;

/// Every credential's exchanged tokens.
pub struct ExchangeCache {
    salt: [u8; 32],
    limit: usize,
    by_credential: DashMap<(String, String), Arc<Keys>>,
}

impl ExchangeCache {
    pub fn new(limit: usize) -> Self {
        let mut salt = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut salt);
        Self {
            salt,
            limit: limit.max(1),
            by_credential: DashMap::new(),
        }
    }

    /// The key of an exchange: every field length-prefixed, so no two requests share one.
    pub fn key(&self, x: &TokenExchange) -> ExchangeKey {
        let mut h = Sha256::new();
        h.update(self.salt);
        let mut field = |v: &str| {
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        };
        field(x.subject_token.expose());
        field(&x.subject_token_type);
        match &x.actor_token {
            Some((t, ty)) => {
                field(t.expose());
                field(ty);
            }
            None => field("\0none"),
        }
        for list in [&x.audience, &x.resource] {
            field(&list.len().to_string());
            list.iter().for_each(|v| field(v));
        }
        field(&x.scopes.join(" "));
        field(x.requested_token_type.as_deref().unwrap_or("\0none"));
        ExchangeKey(h.finalize().into())
    }

    fn slot(&self, tenant: &str, id: &str, key: ExchangeKey) -> Arc<ExchangeSlot> {
        let keys = self
            .by_credential
            .entry((tenant.to_owned(), id.to_owned()))
            .or_insert_with(|| Arc::new(Mutex::new(LruCache::new(self.limit))))
            .clone();
        let mut keys = keys.lock();
        if let Some(slot) = keys.get(&key) {
            return slot.clone();
        }
        let slot = Arc::new(ExchangeSlot::default());
        // At the bound, inserting drops the least recently used key.
        keys.insert(key, slot.clone());
        slot
    }

    /// Drops a credential's exchanged tokens; returns the ones that were still valid.
    pub fn remove(&self, tenant: &str, id: &str, now: UnixMillis) -> Vec<Secret> {
        let Some((_, keys)) = self
            .by_credential
            .remove(&(tenant.to_owned(), id.to_owned()))
        else {
            return Vec::new();
        };
        let keys = keys.lock();
        keys.iter()
            .filter_map(|(_, slot)| slot.current.lock().take())
            .filter(|t| t.expires_at_ms > now)
            .map(|t| t.access_token.clone())
            .collect()
    }

    /// Removes keys without a valid token and no running exchange; returns how many.
    pub fn evict_idle(&self, now: UnixMillis) -> usize {
        let mut evicted = 0;
        self.by_credential.retain(|_, keys| {
            let mut keys = keys.lock();
            let idle: Vec<ExchangeKey> = keys
                .iter()
                .filter(|(_, s)| s.valid(now, 0).is_none() && !s.flight.is_running())
                .map(|(k, _)| *k)
                .collect();
            for k in &idle {
                keys.remove(k);
            }
            evicted += idle.len();
            !keys.is_empty()
        });
        evicted
    }

    /// How many keys a credential holds.
    pub fn len_of(&self, tenant: &str, id: &str) -> usize {
        self.by_credential
            .get(&(tenant.to_owned(), id.to_owned()))
            .map_or(0, |k| k.lock().len())
    }
}

/// What is known of the subject's (and actor's) expiry before the exchange.
#[derive(Debug, Clone, Copy)]
struct SubjectExpiry {
    /// The earliest JWT `exp` among the tokens presented.
    earliest_ms: Option<UnixMillis>,
    /// Whether the subject token's own expiry is unknown (opaque, or a JWT without `exp`).
    subject_opaque: bool,
}

/// Refuses a token that has expired or expires within `min_ttl`; `Some(exp)` when its
/// JWT `exp` says when.
fn check_expiry(
    field: &str,
    token: &Secret,
    now: UnixMillis,
    min_ttl_ms: i64,
) -> Result<Option<UnixMillis>, BrokerError> {
    let Some(exp) = authgate_plugin_sdk::jwt::expiry(token.expose()) else {
        return Ok(None);
    };
    let exp_ms = (exp as i64).saturating_mul(1000);
    if exp_ms <= now {
        return Err(BrokerError::InvalidArgument(format!(
            "{field}: expired {} s ago (its JWT `exp`); exchange a current token",
            (now - exp_ms) / 1000
        )));
    }
    if exp_ms - now <= min_ttl_ms {
        return Err(BrokerError::InvalidArgument(format!(
            "{field}: expires in {} s, within min_ttl_seconds; exchange a fresher token or ask for a shorter min_ttl_seconds",
            (exp_ms - now) / 1000
        )));
    }
    Ok(Some(exp_ms))
}

fn subject_expiry(
    x: &TokenExchange,
    now: UnixMillis,
    min_ttl_ms: i64,
) -> Result<SubjectExpiry, BrokerError> {
    let subject = check_expiry("subject_token", &x.subject_token, now, min_ttl_ms)?;
    let actor = match &x.actor_token {
        Some((t, _)) => check_expiry("actor_token", t, now, min_ttl_ms)?,
        None => None,
    };
    Ok(SubjectExpiry {
        earliest_ms: subject.into_iter().chain(actor).min(),
        subject_opaque: subject.is_none(),
    })
}

impl TokenBroker {
    /// Exchanges the request's subject token with the credential's client (RFC 8693):
    /// from the cache when a valid result is held, else in one shared exchange per key.
    pub async fn exchange_token(
        &self,
        req: ExchangeRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Arc<ExchangedToken>, BrokerError> {
        let inner = &self.inner;
        let cred = self.exchanging_credential(&req).await?;
        let now = inner.clock.now_ms();
        let min_ttl_ms = req.min_ttl.as_millis() as i64;
        let expiry = subject_expiry(&req.exchange, now, min_ttl_ms)?;
        let key = inner.exchanges.key(&req.exchange);
        let slot = inner.exchanges.slot(&cred.tenant, &cred.id, key);
        if let Some(tok) = slot.valid(now, min_ttl_ms) {
            inner.metrics.counters().exchange_hits.inc();
            super::record_cache_outcome("hit");
            return Ok(tok);
        }
        inner.metrics.counters().exchange_misses.inc();
        super::record_cache_outcome("miss");
        let fetch: Flight<ExchangeResult> =
            SingleFlight::join_or_start(&slot, ExchangeSlot::flight, || {
                let inner = inner.clone();
                let slot = slot.clone();
                let exchange = req.exchange;
                // The exchange's upstream span is a child of the RPC that started it.
                Ok::<_, BrokerError>(
                    with_caller(current_caller(), async move {
                        inner.exchange(&slot, cred, exchange, expiry).await
                    })
                    .instrument(tracing::Span::current()),
                )
            })?;
        match deadline {
            Some(d) => tokio::time::timeout_at(d, fetch)
                .await
                .map_err(|_| BrokerError::DeadlineExceeded)?,
            None => fetch.await,
        }
    }

    /// The credential, when it may exchange: known, ACTIVE, token exchange enabled, and
    /// the scopes within its policy.
    async fn exchanging_credential(
        &self,
        req: &ExchangeRequest,
    ) -> Result<Arc<CredentialRuntime>, BrokerError> {
        let creds = &self.inner.credentials;
        let cred = creds
            .get(&req.tenant, &req.credential_id)
            .ok_or_else(|| BrokerError::not_found(&req.tenant, &req.credential_id))?;
        if cred.status() != CredentialStatus::Active {
            return Err(creds.not_active(&cred).await);
        }
        if !cred.provider.capabilities().token_exchange {
            return Err(BrokerError::Misconfigured(format!(
                "credential `{}` of tenant `{}` does not do token exchange; for an `oauth2` credential set token_exchange = true in its settings (docs/grants/token_exchange.md)",
                cred.id, cred.tenant
            )));
        }
        if let Some(scope) = cred.policy.refused_scope(req.exchange.scopes.iter()) {
            return Err(BrokerError::PermissionDenied(format!(
                "scope {scope:?} is not in credential `{}`'s settings.gateway.allowed_scopes",
                cred.id
            )));
        }
        Ok(cred)
    }

    /// How many exchanged tokens a credential has cached (tests, bounds).
    pub fn exchanged_len(&self, tenant: &str, id: &str) -> usize {
        self.inner.exchanges.len_of(tenant, id)
    }
}

impl Inner {
    /// The upstream exchange of one key, within the credential's upstream budget and the
    /// fetch timeout, recorded under the credential with the tokens redacted.
    async fn exchange(
        &self,
        slot: &ExchangeSlot,
        cred: Arc<CredentialRuntime>,
        exchange: TokenExchange,
        expiry: SubjectExpiry,
    ) -> ExchangeResult {
        if let Err(wait) = cred.policy.take_upstream_request() {
            let limit = cred.policy.upstream_limit_per_minute().unwrap_or_default();
            return Err(BrokerError::RateLimited {
                message: format!(
                    "credential `{}` reached its limit of {limit} upstream token requests per minute (settings.gateway.max_token_requests_per_minute); retry after {} ms",
                    cred.id,
                    wait.as_millis()
                ),
                retry_after: wait,
            });
        }
        let call = self.credentials.upstream_call(&cred);
        exchange.register_secrets(&call);
        self.metrics.counters().upstream_fetches.inc();
        let sent_at = self.clock.now_ms();
        let timeout = self.settings.fetch_timeout;
        let outcome = tokio::time::timeout(timeout, cred.provider.exchange_token(&call, &exchange))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::TimedOut {
                    step: "token_exchange".into(),
                    after: timeout,
                })
            });
        match outcome {
            Ok(x) => {
                self.accept_exchanged(slot, &cred, &exchange, x, expiry, sent_at)
                    .await
            }
            Err(e) if e.rejects_credential() => Err(self.rejected(&cred, &e).await),
            Err(e) => {
                self.metrics.counters().upstream_failures.inc();
                self.credentials
                    .record(
                        &cred,
                        EventKind::TokenFailed,
                        format!("token exchange failed: {e}"),
                    )
                    .await;
                Err(BrokerError::from_provider(&e, &cred))
            }
        }
    }

    async fn accept_exchanged(
        &self,
        slot: &ExchangeSlot,
        cred: &CredentialRuntime,
        exchange: &TokenExchange,
        x: authgate_plugin_sdk::ExchangedToken,
        expiry: SubjectExpiry,
        sent_at: UnixMillis,
    ) -> ExchangeResult {
        let now = self.clock.now_ms();
        let issued = x.token;
        let issued_exp = match (issued.expires_in, issued.expires_at_unix) {
            (Some(d), _) => sent_at.min(now) + d.as_millis() as i64,
            (None, Some(exp)) => (exp as i64).saturating_mul(1000),
            (None, None) => now + 3_600_000,
        };
        let expires_at_ms = expiry.earliest_ms.map_or(issued_exp, |s| s.min(issued_exp));
        if expires_at_ms <= now {
            return Err(if expiry.earliest_ms.is_some_and(|s| s <= now) {
                BrokerError::InvalidArgument(
                    "subject_token: expired while it was being exchanged; exchange a current token"
                        .into(),
                )
            } else {
                BrokerError::Unavailable {
                    message: "the provider issued an exchanged token that has already expired; check the provider's clock and token lifetime".into(),
                    retry_after: None,
                }
            });
        }
        let opaque_bound = self.settings.exchange_opaque_subject_cache;
        let cache_until_ms = if expiry.subject_opaque {
            expires_at_ms.min(now + opaque_bound.as_millis() as i64)
        } else {
            expires_at_ms
        };
        let scopes = issued
            .scopes
            .unwrap_or_else(|| exchange.scopes.as_slice().to_vec());
        let tok = Arc::new(ExchangedToken {
            access_token: issued.access_token,
            token_type: issued.token_type,
            issued_token_type: x.issued_token_type,
            expires_at_ms,
            scopes,
            cache_until_ms,
        });
        if cache_until_ms > now {
            *slot.current.lock() = Some(tok.clone());
        }
        let list = |v: &[String]| v.join(" ");
        self.credentials
            .record(
                cred,
                EventKind::TokenIssued,
                format!(
                    "token exchange: {} issued for audience [{}], resource [{}], scopes [{}], valid {} s",
                    tok.issued_token_type,
                    list(&exchange.audience),
                    list(&exchange.resource),
                    list(&tok.scopes),
                    (expires_at_ms - now) / 1000
                ),
            )
            .await;
        Ok(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authgate_plugin_sdk::exchange::token_type;
    use authgate_plugin_sdk::ScopeSet;

    fn x(subject: &str, audience: &[&str]) -> TokenExchange {
        TokenExchange {
            subject_token: Secret::from(subject),
            subject_token_type: token_type::ACCESS_TOKEN.into(),
            actor_token: None,
            audience: audience.iter().map(|s| s.to_string()).collect(),
            resource: vec![],
            scopes: ScopeSet::new(["read"]),
            requested_token_type: None,
        }
    }

    fn jwt(exp: i64) -> String {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"none"}"#),
            e.encode(format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn keys_differ_by_every_field_and_show_no_token() {
        let c = ExchangeCache::new(8);
        let base = c.key(&x("canary-subject", &["a"]));
        assert_eq!(base, c.key(&x("canary-subject", &["a"])));
        assert_ne!(base, c.key(&x("canary-subject-2", &["a"])));
        assert_ne!(base, c.key(&x("canary-subject", &["b"])));
        assert_ne!(base, c.key(&x("canary-subject", &[])));
        let mut with_resource = x("canary-subject", &["a"]);
        with_resource.resource = vec!["a".into()];
        with_resource.audience.clear();
        assert_ne!(c.key(&with_resource), c.key(&x("canary-subject", &["a"])));
        let mut scoped = x("canary-subject", &["a"]);
        scoped.scopes = ScopeSet::new(["write"]);
        assert_ne!(base, c.key(&scoped));
        let mut typed = x("canary-subject", &["a"]);
        typed.requested_token_type = Some(token_type::JWT.into());
        assert_ne!(base, c.key(&typed));
        // Another process (another salt) keys the same request differently.
        assert_ne!(
            base,
            ExchangeCache::new(8).key(&x("canary-subject", &["a"]))
        );
        let shown = format!("{base:?} {:?}", x("canary-subject", &["a"]));
        assert!(!shown.contains("canary"), "{shown}");
    }

    #[test]
    fn least_recently_used_keys_go_first_at_the_bound() {
        let c = ExchangeCache::new(2);
        let k = |s: &str| c.key(&x(s, &[]));
        let first = c.slot("acme", "tx", k("1"));
        c.slot("acme", "tx", k("2"));
        // Touch 1, so 2 is the least recently used when 3 arrives.
        assert!(Arc::ptr_eq(&first, &c.slot("acme", "tx", k("1"))));
        c.slot("acme", "tx", k("3"));
        assert_eq!(c.len_of("acme", "tx"), 2);
        assert!(Arc::ptr_eq(&first, &c.slot("acme", "tx", k("1"))));
        assert_eq!(c.len_of("acme", "other"), 0, "bounds are per credential");
        assert_eq!(c.evict_idle(0), 2, "no valid token held");
        assert_eq!(c.len_of("acme", "tx"), 0);
    }

    #[test]
    fn expired_or_soon_expiring_subjects_are_refused() {
        let now = 1_700_000_000_000;
        let past = x(&jwt(now / 1000 - 5), &[]);
        let e = subject_expiry(&past, now, 0).unwrap_err();
        assert!(
            matches!(&e, BrokerError::InvalidArgument(m) if m.starts_with("subject_token: expired")),
            "{e}"
        );
        let soon = x(&jwt(now / 1000 + 30), &[]);
        assert!(subject_expiry(&soon, now, 0).is_ok());
        let e = subject_expiry(&soon, now, 60_000).unwrap_err();
        assert!(e.to_string().contains("min_ttl_seconds"), "{e}");
        let ok = subject_expiry(&soon, now, 0).unwrap();
        assert_eq!(ok.earliest_ms, Some(now + 30_000));
        assert!(!ok.subject_opaque);
        let opaque = subject_expiry(&x("opaque", &[]), now, 0).unwrap();
        assert!(opaque.subject_opaque && opaque.earliest_ms.is_none());
        let mut acted = x("opaque", &[]);
        acted.actor_token = Some((Secret::from(jwt(now / 1000 - 1)), token_type::JWT.into()));
        let e = subject_expiry(&acted, now, 0).unwrap_err();
        assert!(e.to_string().starts_with("actor_token: expired"), "{e}");
    }
}
