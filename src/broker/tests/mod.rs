//! Broker behaviour against a scripted provider and a manual clock: counts, not timings.

use super::*;
use crate::clock::ManualClock;
use crate::credentials::CredentialManager;
use crate::events::EventLog;
use crate::plugins::Registry;
use crate::store::crypto::Cipher;
use crate::store::secrets::Vault;
use crate::store::sqlite::SqliteStore;
use crate::store::{CredentialRecord, CredentialSource, Store};
use async_trait::async_trait;
use authgate_plugin_sdk::{
    Capabilities, FetchRequest, Provider, ProviderError, ProviderFactory, RejectKind,
    SettingsError, UpstreamClient, UpstreamLimits,
};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use tokio::sync::Mutex as AsyncMutex;

/// What the scripted provider answers next.
#[derive(Clone)]
enum Answer {
    Token {
        lifetime: Duration,
        rotate: bool,
    },
    Transient,
    Rejected,
    ScopeRejected,
    /// A token exchange's subject token refused (`invalid_request`).
    SubjectRejected,
}

struct Scripted {
    calls: AtomicUsize,
    delay: Duration,
    answers: AsyncMutex<Vec<Answer>>,
    seen_refresh_tokens: AsyncMutex<Vec<Option<String>>>,
    needs_rt: bool,
}

impl Scripted {
    fn new(delay: Duration, answers: Vec<Answer>) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            delay,
            answers: AsyncMutex::new(answers),
            seen_refresh_tokens: AsyncMutex::new(Vec::new()),
            needs_rt: false,
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for Scripted {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            token_exchange: true,
            ..Capabilities::default()
        }
    }
    fn secrets(&self) -> Vec<Secret> {
        vec![Secret::from("canary-broker-secret")]
    }
    async fn exchange_token(
        &self,
        call: &authgate_plugin_sdk::UpstreamCall,
        req: &authgate_plugin_sdk::TokenExchange,
    ) -> Result<authgate_plugin_sdk::ExchangedToken, ProviderError> {
        assert!(
            !call
                .redactor()
                .scrub(req.subject_token.expose())
                .contains("canary"),
            "the subject token is registered with the redactor before the call"
        );
        let token = self
            .fetch(FetchRequest {
                scopes: &req.scopes,
                refresh_token: None,
                call,
            })
            .await?;
        Ok(authgate_plugin_sdk::ExchangedToken {
            token,
            issued_token_type: authgate_plugin_sdk::exchange::token_type::ACCESS_TOKEN.into(),
        })
    }
    fn requires_refresh_token(&self) -> bool {
        self.needs_rt
    }
    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen_refresh_tokens
            .lock()
            .await
            .push(req.refresh_token.map(|s| s.expose().to_owned()));
        tokio::time::sleep(self.delay).await;
        let answer = {
            let mut a = self.answers.lock().await;
            if a.len() > 1 {
                a.remove(0)
            } else {
                a[0].clone()
            }
        };
        match answer {
            Answer::Token { lifetime, rotate } => Ok(IssuedToken {
                access_token: Secret::from(format!("tok-{n}")),
                token_type: "Bearer".into(),
                expires_in: Some(lifetime),
                expires_at_unix: None,
                scopes: None,
                refresh_token: rotate.then(|| Secret::from(format!("rt-{n}"))),
                metadata: BTreeMap::new(),
            }),
            Answer::Transient => Err(ProviderError::transient("token", "HTTP 503")),
            Answer::Rejected => Err(ProviderError::Rejected {
                kind: RejectKind::Credential,
                step: "token".into(),
                code: "invalid_grant".into(),
                description: None,
            }),
            Answer::ScopeRejected => Err(ProviderError::Rejected {
                kind: RejectKind::Scope,
                step: "token".into(),
                code: "invalid_scope".into(),
                description: None,
            }),
            Answer::SubjectRejected => Err(ProviderError::Rejected {
                kind: RejectKind::Subject,
                step: "token_exchange".into(),
                code: "invalid_request".into(),
                description: Some("subject token rejected".into()),
            }),
        }
    }
}

struct Harness {
    broker: TokenBroker,
    clock: ManualClock,
    store: Arc<dyn Store>,
    provider: Arc<Scripted>,
    _manager: CredentialManager,
    _dir: tempfile::TempDir,
}

/// Builds the scripted provider for any settings: how the test's provider reaches the
/// broker through the registry, like every plugin.
struct ScriptedFactory(Arc<Scripted>);

impl ProviderFactory for ScriptedFactory {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn secret_fields(&self) -> &'static [&'static str] {
        &[]
    }
    fn build(&self, _: serde_json::Value) -> Result<Arc<dyn Provider>, SettingsError> {
        Ok(self.0.clone())
    }
}

/// A broker (and the credential manager that loads and follows its credentials) on the
/// SQLite file `url`, with the scripted provider registered.
async fn replica(
    url: &str,
    clock: &ManualClock,
    provider: Arc<Scripted>,
    settings: BrokerSettings,
) -> (TokenBroker, CredentialManager, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(url).await.unwrap());
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(clock.clone());
    let vault = Vault::new(Arc::new(Cipher::from_key(&[3; 32])));
    let set = CredentialSet::new(
        store.clone(),
        vault,
        EventLog::new(store.clone(), clock.clone()),
        UpstreamClient::new(UpstreamLimits::default()).unwrap(),
        Registry::builtin().with(Arc::new(ScriptedFactory(provider))),
        clock,
    );
    let broker = TokenBroker::new(set, settings);
    let manager = CredentialManager::new(
        broker.clone(),
        url::Url::parse("http://127.0.0.1/oauth/callback").unwrap(),
    );
    manager.load().await.unwrap();
    (broker, manager, store)
}

async fn harness(provider: Arc<Scripted>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let clock = ManualClock::default();
    {
        let store = SqliteStore::open(&url).await.unwrap();
        let vault = Vault::new(Arc::new(Cipher::from_key(&[3; 32])));
        let now = clock.now_ms();
        store
            .put_credential(&CredentialRecord {
                tenant: "acme".into(),
                id: "idp".into(),
                provider: "scripted".into(),
                settings_sealed: vault.seal_settings("acme", "idp", &serde_json::json!({})),
                settings_digest: String::new(),
                status: CredentialStatus::Active,
                last_error: None,
                source: CredentialSource::Api,
                created_at_ms: now,
                updated_at_ms: now,
            })
            .await
            .unwrap();
    }
    let settings = BrokerSettings {
        backoff_initial: Duration::from_secs(10),
        ..BrokerSettings::default()
    };
    let (broker, manager, store) = replica(&url, &clock, provider.clone(), settings).await;
    Harness {
        broker,
        clock,
        store,
        provider,
        _manager: manager,
        _dir: dir,
    }
}

impl Harness {
    fn cred(&self) -> Arc<CredentialRuntime> {
        self.broker.credentials().get("acme", "idp").unwrap()
    }

    fn seal_refresh_token(&self, rt: &str) -> Vec<u8> {
        self.broker
            .credentials()
            .vault()
            .seal_refresh_token("acme", "idp", &Secret::from(rt))
    }
}

fn req() -> TokenRequest {
    TokenRequest {
        tenant: "acme".into(),
        credential_id: "idp".into(),
        scopes: ScopeSet::new(["read"]),
        min_ttl: Duration::ZERO,
        force_refresh: false,
    }
}

fn token(lifetime_s: u64) -> Answer {
    Answer::Token {
        lifetime: Duration::from_secs(lifetime_s),
        rotate: false,
    }
}

#[tokio::test]
async fn second_call_is_a_cache_hit() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(3600)])).await;
    let a = h.broker.get_token(&req(), None).await.unwrap();
    let b = h.broker.get_token(&req(), None).await.unwrap();
    assert_eq!(a.access_token, b.access_token);
    assert_eq!(h.provider.calls(), 1);
    // Scope order and duplicates do not make a new key.
    let mut r = req();
    r.scopes = ScopeSet::new(["read", "read"]);
    h.broker.get_token(&r, None).await.unwrap();
    assert_eq!(h.provider.calls(), 1);
}

#[tokio::test]
async fn concurrent_cold_callers_share_one_fetch() {
    let h = harness(Scripted::new(Duration::from_millis(100), vec![token(3600)])).await;
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let b = h.broker.clone();
        tasks.push(tokio::spawn(async move { b.get_token(&req(), None).await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().access_token.expose().to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(h.provider.calls(), 1);
}

#[tokio::test]
async fn refresh_window_serves_current_token_and_refreshes_once() {
    let h = harness(Scripted::new(Duration::from_millis(50), vec![token(100)])).await;
    let first = h.broker.get_token(&req(), None).await.unwrap();
    // 100 s lifetime: window starts 10 s before expiry minus up to 20 s jitter.
    h.clock.advance(Duration::from_secs(91));
    for _ in 0..50 {
        let t = h.broker.get_token(&req(), None).await.unwrap();
        assert_eq!(
            t.access_token, first.access_token,
            "current token served during refresh"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.provider.calls(), 2, "exactly one background refresh");
    let t = h.broker.get_token(&req(), None).await.unwrap();
    assert_ne!(t.access_token, first.access_token);
}

#[tokio::test]
async fn expired_token_is_never_returned() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(100)])).await;
    let first = h.broker.get_token(&req(), None).await.unwrap();
    h.clock.advance(Duration::from_secs(100));
    let t = h.broker.get_token(&req(), None).await.unwrap();
    assert_ne!(t.access_token, first.access_token);
    assert!(t.expires_at_ms > h.clock.now_ms());
}

#[tokio::test]
async fn min_ttl_and_force_refresh_fetch_anew() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(100)])).await;
    h.broker.get_token(&req(), None).await.unwrap();
    let mut r = req();
    r.min_ttl = Duration::from_secs(200);
    h.broker.get_token(&r, None).await.unwrap();
    assert_eq!(h.provider.calls(), 2);
    let mut r = req();
    r.force_refresh = true;
    h.broker.get_token(&r, None).await.unwrap();
    assert_eq!(h.provider.calls(), 3);
}

#[tokio::test]
async fn transient_failure_backs_off_and_keeps_serving_valid_token() {
    let h = harness(Scripted::new(
        Duration::ZERO,
        vec![token(100), Answer::Transient],
    ))
    .await;
    let first = h.broker.get_token(&req(), None).await.unwrap();
    h.clock.advance(Duration::from_secs(95));
    // In the refresh window: background refresh fails, the valid token keeps coming.
    for _ in 0..20 {
        let t = h.broker.get_token(&req(), None).await.unwrap();
        assert_eq!(t.access_token, first.access_token);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.provider.calls(), 2, "no retry during backoff");
    // Expired and still in backoff: UNAVAILABLE without calling the provider again.
    h.clock.advance(Duration::from_secs(5));
    let e = h.broker.get_token(&req(), None).await.unwrap_err();
    assert!(
        matches!(
            e,
            BrokerError::Unavailable {
                retry_after: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(h.provider.calls(), 2);
}

#[tokio::test]
async fn rejection_marks_credential_invalid() {
    let h = harness(Scripted::new(Duration::ZERO, vec![Answer::Rejected])).await;
    let e = h.broker.get_token(&req(), None).await.unwrap_err();
    assert!(matches!(e, BrokerError::Rejected(_)), "{e:?}");
    let e = h.broker.get_token(&req(), None).await.unwrap_err();
    assert!(
        matches!(
            e,
            BrokerError::NotActive {
                status: CredentialStatus::Invalid,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(h.provider.calls(), 1);
    let rec = h
        .store
        .get_credential("acme", "idp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CredentialStatus::Invalid);
    assert!(rec.last_error.unwrap().contains("invalid_grant"));
}

#[tokio::test]
async fn rejection_after_a_lost_race_retries_with_the_stored_refresh_token() {
    let h = harness(Scripted::new(
        Duration::from_millis(300),
        vec![Answer::Rejected, token(100)],
    ))
    .await;
    let cred = h.cred();
    let seal = |rt: &str| h.seal_refresh_token(rt);
    h.store
        .put_refresh_token("acme", "idp", Some(&seal("rt-old")), 0)
        .await
        .unwrap();
    // While the provider answers, someone else rotates it (which the lease normally
    // prevents): the store holds a newer one by the time the rejection arrives.
    let (store, newer) = (h.store.clone(), seal("rt-new"));
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .put_refresh_token("acme", "idp", Some(&newer), 0)
            .await
            .unwrap();
    });
    h.broker.get_token(&req(), None).await.unwrap();
    let seen = h.provider.seen_refresh_tokens.lock().await.clone();
    assert_eq!(seen, vec![Some("rt-old".into()), Some("rt-new".into())]);
    assert_eq!(cred.status(), CredentialStatus::Active);
}

#[tokio::test]
async fn lease_holder_uses_the_stored_refresh_token_not_its_stale_copy() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(100)])).await;
    let cred = h.cred();
    cred.set_refresh_token(Some(Secret::from("rt-old")));
    // Another replica rotated it: the store holds a newer one.
    let sealed = h.seal_refresh_token("rt-new");
    h.store
        .put_refresh_token("acme", "idp", Some(&sealed), 0)
        .await
        .unwrap();
    h.broker.get_token(&req(), None).await.unwrap();
    let seen = h.provider.seen_refresh_tokens.lock().await.clone();
    assert_eq!(seen, vec![Some("rt-new".into())]);
}

#[tokio::test]
async fn rotated_refresh_token_is_stored_before_the_token_is_returned() {
    let h = harness(Scripted::new(
        Duration::ZERO,
        vec![Answer::Token {
            lifetime: Duration::from_secs(100),
            rotate: true,
        }],
    ))
    .await;
    h.broker.get_token(&req(), None).await.unwrap();
    let stored = h
        .broker
        .credentials()
        .stored_refresh_token("acme", "idp")
        .await
        .unwrap();
    assert_eq!(stored.unwrap().expose(), "rt-1");
    // The next fetch presents it.
    h.clock.advance(Duration::from_secs(100));
    h.broker.get_token(&req(), None).await.unwrap();
    let seen = h.provider.seen_refresh_tokens.lock().await.clone();
    assert_eq!(seen[1].as_deref(), Some("rt-1"));
}

#[tokio::test]
async fn caller_deadline_does_not_cancel_the_fetch() {
    let h = harness(Scripted::new(Duration::from_millis(300), vec![token(3600)])).await;
    let deadline = crate::clock::monotonic_now() + Duration::from_millis(50);
    let e = h
        .broker
        .get_token(&req(), Some(deadline))
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::DeadlineExceeded));
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.broker.get_token(&req(), None).await.unwrap();
    assert_eq!(h.provider.calls(), 1, "the late token was cached");
}

#[tokio::test]
async fn revoke_drops_and_next_call_fetches() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(3600)])).await;
    h.broker.get_token(&req(), None).await.unwrap();
    let (dropped, upstream) = h.broker.revoke("acme", "idp", None, true).await.unwrap();
    assert_eq!((dropped, upstream), (1, 0));
    assert!(h.store.list_tokens(0).await.unwrap().is_empty());
    h.broker.get_token(&req(), None).await.unwrap();
    assert_eq!(h.provider.calls(), 2);
}

#[tokio::test]
async fn unknown_credential_is_not_found_and_creates_no_slot() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(3600)])).await;
    let mut r = req();
    r.credential_id = "nope".into();
    assert!(matches!(
        h.broker.get_token(&r, None).await.unwrap_err(),
        BrokerError::NotFound { .. }
    ));
    assert_eq!(h.broker.cache_len(), 0);
}

#[tokio::test]
async fn backoff_retries_before_the_cached_token_expires() {
    let h = harness(Scripted::new(
        Duration::ZERO,
        vec![
            token(1000),
            Answer::Transient,
            Answer::Transient,
            Answer::Transient,
            Answer::Transient,
            token(1000),
        ],
    ))
    .await;
    let first = h.broker.get_token(&req(), None).await.unwrap();
    // From 941 s the token is surely in its refresh window; the provider fails four times.
    // Plain exponential backoff (10, 20, 40, 80 s) would push a retry past expiry at
    // 1,000 s; retries capped at half the remaining life get the new token in time.
    h.clock.advance(Duration::from_secs(940));
    for _ in 0..58 {
        h.clock.advance(Duration::from_secs(1));
        let t = h.broker.get_token(&req(), None).await.unwrap();
        assert!(t.expires_at_ms > h.clock.now_ms());
        // Let a background refresh this call started finish before the clock moves on.
        tokio::time::sleep(Duration::from_millis(15)).await;
        for _ in 0..400 {
            if !h.broker.fetching(&req()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let t = h.broker.get_token(&req(), None).await.unwrap();
    assert_ne!(
        t.access_token, first.access_token,
        "refreshed before expiry"
    );
    assert_eq!(h.provider.calls(), 6);
}

#[tokio::test]
async fn a_stored_secret_that_does_not_decrypt_is_internal_not_retryable() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(3600)])).await;
    // A refresh token row that is not what this key sealed (corrupt, or another key's).
    h.store
        .put_refresh_token("acme", "idp", Some(b"not a sealed value"), 0)
        .await
        .unwrap();
    let e = h.broker.get_token(&req(), None).await.unwrap_err();
    assert!(matches!(e, BrokerError::Internal { .. }), "{e:?}");
    assert!(
        e.to_string().contains("server log"),
        "the caller is told where the cause is: {e}"
    );
    assert_eq!(
        h.provider.calls(),
        0,
        "nothing was sent with a broken secret"
    );
}

mod bounds;
mod exchange;
mod replicas;
