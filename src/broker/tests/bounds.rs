//! What a hostile caller cannot make the cache do: keys for credentials that cannot issue
//! tokens, unbounded scope sets per credential, a refused scope set asked for again at
//! once, idle keys kept forever.

use super::*;

fn scoped(scope: &str) -> TokenRequest {
    TokenRequest {
        scopes: ScopeSet::new([scope]),
        ..req()
    }
}

/// The harness, but with its own broker settings.
async fn harness_with(provider: Arc<Scripted>, settings: BrokerSettings) -> Harness {
    let h = harness(provider.clone()).await;
    let url = format!("sqlite://{}", h._dir.path().join("t.db").display());
    let (broker, manager, store) = replica(&url, &h.clock, provider.clone(), settings).await;
    Harness {
        broker,
        store,
        _manager: manager,
        ..h
    }
}

#[tokio::test]
async fn a_credential_that_cannot_issue_tokens_gets_no_new_cache_keys() {
    let h = harness(Scripted::new(Duration::ZERO, vec![Answer::Rejected])).await;
    assert!(h.broker.get_token(&req(), None).await.is_err());
    assert_eq!(h.cred().status(), CredentialStatus::Invalid);
    let before = h.broker.cache_len();
    for i in 0..50 {
        let e = h
            .broker
            .get_token(&scoped(&format!("s{i}")), None)
            .await
            .unwrap_err();
        assert!(matches!(e, BrokerError::NotActive { .. }), "{e:?}");
    }
    assert_eq!(h.broker.cache_len(), before, "no slot per new scope set");
    assert_eq!(h.provider.calls(), 1);
}

#[tokio::test]
async fn scope_sets_per_credential_are_bounded_and_freed_by_revoke() {
    let settings = BrokerSettings {
        max_scope_sets_per_credential: 3,
        ..BrokerSettings::default()
    };
    let h = harness_with(Scripted::new(Duration::ZERO, vec![token(3600)]), settings).await;
    for s in ["a", "b", "c"] {
        h.broker.get_token(&scoped(s), None).await.unwrap();
    }
    let e = h.broker.get_token(&scoped("d"), None).await.unwrap_err();
    assert!(matches!(e, BrokerError::ResourceExhausted(_)), "{e:?}");
    assert!(
        e.to_string().contains("max_scope_sets_per_credential"),
        "{e}"
    );
    // Scope sets already cached are still served.
    h.broker.get_token(&scoped("a"), None).await.unwrap();
    assert_eq!(h.provider.calls(), 3);
    h.broker
        .revoke("acme", "idp", Some(&ScopeSet::new(["b"])), false)
        .await
        .unwrap();
    h.broker.get_token(&scoped("d"), None).await.unwrap();
    assert_eq!(h.cred().slot_count(), 3);
}

#[tokio::test]
async fn a_refused_scope_set_is_answered_from_memory_while_it_backs_off() {
    let h = harness(Scripted::new(
        Duration::ZERO,
        vec![Answer::ScopeRejected, token(3600)],
    ))
    .await;
    for _ in 0..5 {
        let e = h
            .broker
            .get_token(&scoped("admin"), None)
            .await
            .unwrap_err();
        assert!(matches!(e, BrokerError::InvalidArgument(_)), "{e:?}");
    }
    assert_eq!(
        h.provider.calls(),
        1,
        "the refusal is not asked again at once"
    );
    // The harness's backoff starts at 10 s: after at most that, the provider is asked again.
    h.clock.advance(Duration::from_secs(11));
    h.broker.get_token(&scoped("admin"), None).await.unwrap();
    assert_eq!(h.provider.calls(), 2);
}

#[tokio::test]
async fn keys_without_a_valid_token_are_evicted_once_their_backoff_ends() {
    let h = harness(Scripted::new(
        Duration::ZERO,
        vec![Answer::ScopeRejected, token(100)],
    ))
    .await;
    assert!(h.broker.get_token(&scoped("x"), None).await.is_err());
    h.broker.get_token(&scoped("y"), None).await.unwrap();
    let now = h.clock.now_ms();
    assert_eq!(
        h.broker.inner.cache.evict_idle(now),
        0,
        "backing off, and valid"
    );
    assert_eq!(
        h.broker.inner.cache.evict_idle(now + 11_000),
        1,
        "x's backoff ended"
    );
    assert_eq!(h.broker.cache_len(), 1);
    assert_eq!(
        h.broker.inner.cache.evict_idle(now + 101_000),
        1,
        "y expired"
    );
    assert_eq!(h.broker.cache_len(), 0);
    assert_eq!(h.cred().slot_count(), 0);
}
