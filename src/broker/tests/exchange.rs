//! Token exchange in the broker: one upstream exchange per key for concurrent callers, a
//! result that never outlives its subject token, a refused subject token that leaves the
//! credential ACTIVE, `invalid_client` that does not, and the per-credential bound.

use super::*;
use crate::broker::ExchangeRequest;
use authgate_plugin_sdk::exchange::token_type;
use authgate_plugin_sdk::TokenExchange;

fn jwt_expiring_at(exp_ms: i64) -> String {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        e.encode(r#"{"alg":"none"}"#),
        e.encode(format!(
            r#"{{"exp":{},"sub":"canary-user"}}"#,
            exp_ms / 1000
        ))
    )
}

fn exchange(subject: &str) -> ExchangeRequest {
    ExchangeRequest {
        tenant: "acme".into(),
        credential_id: "idp".into(),
        exchange: TokenExchange {
            subject_token: Secret::from(subject),
            subject_token_type: token_type::ACCESS_TOKEN.into(),
            actor_token: None,
            audience: vec!["orders-api".into()],
            resource: vec![],
            scopes: ScopeSet::new(["read"]),
            requested_token_type: None,
        },
        min_ttl: Duration::ZERO,
    }
}

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
async fn concurrent_callers_of_one_subject_share_one_exchange() {
    let h = harness(Scripted::new(Duration::from_millis(100), vec![token(3600)])).await;
    let subject = jwt_expiring_at(h.clock.now_ms() + 600_000);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let b = h.broker.clone();
        let r = exchange(&subject);
        tasks.push(tokio::spawn(async move { b.exchange_token(r, None).await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().access_token.expose().to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(h.provider.calls(), 1);
    // Another subject is another exchange; the first is still a hit.
    let other = jwt_expiring_at(h.clock.now_ms() + 600_000) + "x";
    h.broker
        .exchange_token(exchange(&other), None)
        .await
        .unwrap();
    h.broker
        .exchange_token(exchange(&subject), None)
        .await
        .unwrap();
    assert_eq!(h.provider.calls(), 2);
    let m = h.broker.metrics();
    assert_eq!(m.counters().exchange_misses.get(), 101);
    assert_eq!(m.counters().exchange_hits.get(), 1);
}

#[tokio::test]
async fn a_result_never_outlives_its_subject_token() {
    let h = harness(Scripted::new(Duration::ZERO, vec![token(3600)])).await;
    let exp = (h.clock.now_ms() / 1000 + 30) * 1000; // JWT exp is in whole seconds
    let subject = jwt_expiring_at(exp);
    let t = h
        .broker
        .exchange_token(exchange(&subject), None)
        .await
        .unwrap();
    assert_eq!(t.expires_at_ms, exp, "capped at the subject's exp");
    h.clock.advance(Duration::from_secs(31));
    let e = h
        .broker
        .exchange_token(exchange(&subject), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BrokerError::InvalidArgument(m) if m.starts_with("subject_token: expired")),
        "{e:?}"
    );
    assert_eq!(h.provider.calls(), 1, "refused before any upstream call");

    // An opaque subject's result is served for the configured bound only (60 s).
    let t = h
        .broker
        .exchange_token(exchange("canary-opaque"), None)
        .await
        .unwrap();
    assert_eq!(h.provider.calls(), 2);
    h.clock.advance(Duration::from_secs(59));
    let again = h
        .broker
        .exchange_token(exchange("canary-opaque"), None)
        .await
        .unwrap();
    assert_eq!(again.access_token, t.access_token);
    h.clock.advance(Duration::from_secs(2));
    h.broker
        .exchange_token(exchange("canary-opaque"), None)
        .await
        .unwrap();
    assert_eq!(h.provider.calls(), 3);
}

#[tokio::test]
async fn a_refused_subject_is_the_callers_problem_and_invalid_client_the_credentials() {
    let h = harness(Scripted::new(
        Duration::ZERO,
        vec![Answer::SubjectRejected, token(3600), Answer::Rejected],
    ))
    .await;
    let e = h
        .broker
        .exchange_token(exchange("canary-bad"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BrokerError::InvalidArgument(m) if m.starts_with("subject_token:")),
        "{e:?}"
    );
    assert!(!e.to_string().contains("canary"), "{e}");
    assert_eq!(h.cred().status(), CredentialStatus::Active);
    h.broker
        .exchange_token(exchange("canary-good"), None)
        .await
        .unwrap();
    assert_eq!(h.broker.exchanged_len("acme", "idp"), 2);
    let e = h
        .broker
        .exchange_token(exchange("canary-other"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::Rejected(_)), "{e:?}");
    assert_eq!(h.cred().status(), CredentialStatus::Invalid);
    assert_eq!(
        h.broker.exchanged_len("acme", "idp"),
        0,
        "dropped with the credential's tokens"
    );
    let e = h
        .broker
        .exchange_token(exchange("canary-good"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::NotActive { .. }), "{e:?}");
    assert_eq!(h.provider.calls(), 3);
}

#[tokio::test]
async fn each_credential_holds_a_bounded_number_of_exchanged_tokens() {
    let settings = BrokerSettings {
        max_exchanged_tokens_per_credential: 3,
        ..BrokerSettings::default()
    };
    let h = harness_with(Scripted::new(Duration::ZERO, vec![token(3600)]), settings).await;
    for i in 0..20 {
        h.broker
            .exchange_token(exchange(&format!("canary-subject-{i}")), None)
            .await
            .unwrap();
    }
    assert_eq!(h.broker.exchanged_len("acme", "idp"), 3);
    // The most recent ones are kept.
    h.broker
        .exchange_token(exchange("canary-subject-19"), None)
        .await
        .unwrap();
    assert_eq!(h.provider.calls(), 20);
    // Revoke drops them (and counts them).
    let (dropped, _) = h.broker.revoke("acme", "idp", None, false).await.unwrap();
    assert_eq!(dropped, 3);
    assert_eq!(h.broker.exchanged_len("acme", "idp"), 0);
}
