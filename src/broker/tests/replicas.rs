//! Two brokers on one store ("replicas"): one upstream fetch between them, adoption of the
//! stored token, revocations and status changes reaching the other.

use super::*;

/// Another "replica": a second broker (with its own provider instance) on the first one's
/// SQLite file, following the store's changes as `load` makes it.
async fn second_replica(h: &Harness, provider: Arc<Scripted>) -> (TokenBroker, CredentialManager) {
    let url = format!("sqlite://{}", h._dir.path().join("t.db").display());
    let (broker, manager, _) = replica(&url, &h.clock, provider, BrokerSettings::default()).await;
    (broker, manager)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_cold_make_one_upstream_fetch_and_share_the_token() {
    let h = harness(Scripted::new(Duration::from_millis(200), vec![token(3600)])).await;
    let other = Scripted::new(Duration::from_millis(200), vec![token(3600)]);
    let (b, _b_manager) = second_replica(&h, other.clone()).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let broker = if i % 2 == 0 {
            h.broker.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(
            async move { broker.get_token(&req(), None).await },
        ));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().access_token.expose().to_owned());
    }
    assert_eq!(tokens.len(), 1, "both replicas serve the same token");
    assert_eq!(h.provider.calls() + other.calls(), 1, "one upstream fetch");
    let adopted = h.broker.metrics().counters().tokens_adopted.get()
        + b.metrics().counters().tokens_adopted.get();
    assert_eq!(
        adopted, 1,
        "the replica that waited adopted the stored token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_missing_in_memory_adopts_the_stored_token() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(3600)])).await;
    let other = Scripted::new(Duration::ZERO, vec![token(3600)]);
    // Started (and loaded) before the first replica fetches: it holds no token in memory.
    let (b, _b_manager) = second_replica(&h, other.clone()).await;
    let first = h.broker.get_token(&req(), None).await.unwrap();
    let t = b.get_token(&req(), None).await.unwrap();
    assert_eq!(t.access_token, first.access_token);
    assert_eq!(other.calls(), 0);
    // Cached now: no store read either.
    b.get_token(&req(), None).await.unwrap();
    assert_eq!(b.metrics().counters().tokens_adopted.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_on_one_replica_drops_the_token_on_the_other() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(3600)])).await;
    let other = Scripted::new(Duration::ZERO, vec![token(3600)]);
    let (b, _b_manager) = second_replica(&h, other.clone()).await;
    let first = h.broker.get_token(&req(), None).await.unwrap();
    assert_eq!(
        b.get_token(&req(), None).await.unwrap().access_token,
        first.access_token
    );
    h.broker.revoke("acme", "idp", None, false).await.unwrap();
    let deadline = crate::clock::monotonic_now() + Duration::from_secs(1);
    while !b.cached_tokens("acme", "idp").is_empty() {
        assert!(
            crate::clock::monotonic_now() < deadline,
            "the other replica still holds the revoked token after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.get_token(&req(), None).await.unwrap();
    assert_eq!(other.calls(), 1, "the next call fetched anew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_marked_invalid_on_one_replica_is_not_served_by_the_other() {
    let h = harness(Scripted::new(Duration::ZERO, vec![Answer::Rejected])).await;
    let other = Scripted::new(Duration::ZERO, vec![token(3600)]);
    let (b, _b_manager) = second_replica(&h, other.clone()).await;
    b.get_token(&req(), None).await.unwrap();
    let mut r = req();
    r.force_refresh = true;
    assert!(matches!(
        h.broker.get_token(&r, None).await.unwrap_err(),
        BrokerError::Rejected(_)
    ));
    // b reloads the credential from the store (INVALID now); the change already dropped
    // b's cached tokens.
    let deadline = crate::clock::monotonic_now() + Duration::from_secs(1);
    while !b.cached_tokens("acme", "idp").is_empty() {
        assert!(crate::clock::monotonic_now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_token_stored_by_one_replica_is_adopted_by_the_other() {
    let h = harness(Scripted::new(
        Duration::ZERO,
        vec![token(3600), token(3600)],
    ))
    .await;
    let other = Scripted::new(Duration::ZERO, vec![token(3600)]);
    let (b, _b_manager) = second_replica(&h, other.clone()).await;
    let first = h.broker.get_token(&req(), None).await.unwrap();
    assert_eq!(
        b.get_token(&req(), None).await.unwrap().access_token,
        first.access_token
    );
    h.clock.advance(Duration::from_secs(1));
    let forced = TokenRequest {
        force_refresh: true,
        ..req()
    };
    let newer = h.broker.get_token(&forced, None).await.unwrap();
    assert_ne!(newer.access_token, first.access_token);
    let deadline = crate::clock::monotonic_now() + Duration::from_secs(1);
    while b.get_token(&req(), None).await.unwrap().access_token != newer.access_token {
        assert!(
            crate::clock::monotonic_now() < deadline,
            "the other replica still serves its older token after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(other.calls(), 0, "adopted, not fetched");
}
