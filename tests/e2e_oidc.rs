//! End to end against a real OAuth 2.0 server (oidc-provider): the real gateway serves
//! GetToken / Revoke / ListEvents over gRPC.

// A test harness: it waits on and measures real time, outside any clock the gateway uses.
#![allow(clippy::disallowed_methods)]
// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::{EventKind, ListEventsRequest, RevokeRequest};
use common::*;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_token_is_valid_and_then_served_from_cache() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "cc-secret-1")]).await;
    let env = env_secret("cc-secret-1");
    let gw = Gateway::start(&cc_credential("acme", "idp", &oidc.token_url(), &env, "")).await;
    let mut c = gw.client().await;

    let t1 = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t1.token_type, "Bearer");
    assert_eq!(t1.scopes, vec!["read"]);
    assert!(t1.expires_at.unwrap().seconds > now_unix() + 3000);
    assert!(
        oidc.is_active(&t1.access_token, "cc-secret-1").await,
        "the OAuth server accepts the token"
    );
    assert_eq!(oidc.token_requests().await, 1);

    let t2 = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t2.access_token, t1.access_token);
    assert_eq!(oidc.token_requests().await, 1, "second call is a cache hit");

    // Explicit scopes are another cache key: one more upstream call, then cached too.
    let t3 = c
        .get_token(get_token_request("acme", "idp", &["write", "read"]))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(t3.access_token, t1.access_token);
    assert_eq!(t3.scopes, vec!["read", "write"]);
    c.get_token(get_token_request("acme", "idp", &["read", "write", "read"]))
        .await
        .unwrap();
    assert_eq!(oidc.token_requests().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_callers_on_a_cold_key_make_one_upstream_request() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "cc-secret-2")]).await;
    oidc.faults(serde_json::json!({"delay_ms": 300})).await;
    let env = env_secret("cc-secret-2");
    let gw = Gateway::start(&cc_credential("acme", "idp", &oidc.token_url(), &env, "")).await;
    let clients = gw.clients(8).await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let mut c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            c.get_token(get_token_request("acme", "idp", &["read"]))
                .await
                .map(|r| r.into_inner().access_token)
        }));
    }
    let mut tokens = HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().expect("every caller gets a token"));
    }
    assert_eq!(tokens.len(), 1, "all callers got the same token");
    assert_eq!(
        oidc.token_requests().await,
        1,
        "exactly one upstream token request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_before_expiry_and_never_served_expired() {
    let oidc = OidcServer::start(&[
        ("OIDC_CC_BASIC_SECRET", "cc-secret-3"),
        ("OIDC_ACCESS_TOKEN_TTL", "4"),
    ])
    .await;
    let env = env_secret("cc-secret-3");
    let gw = Gateway::start(&cc_credential("acme", "idp", &oidc.token_url(), &env, "")).await;
    let mut c = gw.client().await;
    let mut seen = HashSet::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let t = c
            .get_token(get_token_request("acme", "idp", &[]))
            .await
            .unwrap()
            .into_inner();
        let exp = t.expires_at.unwrap();
        let exp_ms = exp.seconds * 1000 + i64::from(exp.nanos) / 1_000_000;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(exp_ms > now_ms, "an expired token was served");
        if seen.insert(t.access_token.clone()) {
            assert!(oidc.is_active(&t.access_token, "cc-secret-3").await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upstream = oidc.token_requests().await;
    // 10 s of 4 s tokens: refreshed ahead of time, roughly every 3 to 3.6 s.
    assert!(
        seen.len() >= 3,
        "tokens were refreshed: {} distinct",
        seen.len()
    );
    assert_eq!(upstream as usize, seen.len(), "one upstream call per token");
    assert!(
        upstream <= 5,
        "{upstream} upstream requests for 10 s of 4 s tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_survives_a_restart() {
    let oidc = OidcServer::start(&[("OIDC_RT_SECRET", "rt-secret-4")]).await;
    let first_rt = oidc.mint_refresh_token("openid offline_access read").await;
    let secret_env = env_secret("rt-secret-4");
    let rt_env = env_secret(&first_rt);
    let cred = format!(
        "[[credentials]]\ntenant = \"acme\"\nid = \"user\"\nprovider = \"oauth2\"\n[credentials.settings]\ntoken_url = \"{}\"\ngrant = \"refresh_token\"\nclient_id = \"rt-client\"\nclient_secret = \"${{env:{secret_env}}}\"\nrefresh_token = \"${{env:{rt_env}}}\"\n",
        oidc.token_url()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_in(tmp.path(), &cred).await;
    let t1 = gw
        .client()
        .await
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap()
        .into_inner();
    gw.stop().await;

    // The first refresh rotated the token; presenting the original again would be refused
    // (and would revoke the grant). After a restart the gateway must use the rotated one.
    let gw = Gateway::start_in(tmp.path(), &cred).await;
    let mut c = gw.client().await;
    let cached = c
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cached.access_token, t1.access_token,
        "a restart reuses the stored valid token"
    );
    let mut req = get_token_request("acme", "user", &[]);
    req.force_refresh = true;
    let t2 = c.get_token(req).await.unwrap().into_inner();
    assert_ne!(t2.access_token, t1.access_token);
    assert!(oidc.is_active(&t2.access_token, "cc-basic-secret").await);
    let stats = oidc.stats().await;
    assert_eq!(stats["by_grant"]["refresh_token"], 2, "{stats}");
    assert_eq!(stats["errors"], 0, "no invalid_grant: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_drops_the_token_and_revokes_it_upstream() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "cc-secret-5")]).await;
    let env = env_secret("cc-secret-5");
    let cred = cc_credential("acme", "idp", &oidc.token_url(), &env, "")
        + &format!("revocation_url = \"{}/token/revocation\"\n", oidc.issuer);
    let gw = Gateway::start(&cred).await;
    let mut c = gw.client().await;
    let t1 = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    let r = c
        .revoke(RevokeRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scopes: vec![],
            upstream: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.dropped, r.upstream_revoked), (1, 1));
    assert!(
        !oidc.is_active(&t1.access_token, "cc-secret-5").await,
        "the OAuth server reports it inactive"
    );
    let t2 = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(t2.access_token, t1.access_token);
    assert_eq!(
        oidc.token_requests().await,
        2,
        "the next GetToken fetched anew"
    );

    let events = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![EventKind::Revoked as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert!(
        events[0].message.contains("dropped 1"),
        "{}",
        events[0].message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_events_shows_each_upstream_call_redacted_and_pages() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "cc-canary-secret-6")]).await;
    let env = env_secret("cc-canary-secret-6");
    let gw = Gateway::start(&cc_credential("acme", "idp", &oidc.token_url(), &env, "")).await;
    let mut c = gw.client().await;
    let mut issued = Vec::new();
    for _ in 0..3 {
        let t = c
            .get_token(get_token_request("acme", "idp", &["read"]))
            .await
            .unwrap()
            .into_inner();
        issued.push(t.access_token);
        let mut req = get_token_request("acme", "idp", &["read"]);
        req.force_refresh = true;
        issued.push(c.get_token(req).await.unwrap().into_inner().access_token);
    }
    let upstream = oidc.token_requests().await;
    let resp = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            kinds: vec![EventKind::UpstreamCall as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.events.len() as u64,
        upstream,
        "one event per upstream call"
    );
    for e in &resp.events {
        let http = e
            .http
            .as_ref()
            .expect("upstream events carry the HTTP exchange");
        assert_eq!(http.status, 200);
        assert_eq!(http.method, "POST");
        assert!(http.url.ends_with("/token"));
        assert!(http.request_body.contains("grant_type=client_credentials"));
        assert!(http.request_headers["authorization"].starts_with("Basic hmac-sha256:"));
        assert!(http
            .response_body
            .contains("\"access_token\":\"hmac-sha256:"));
        let all = format!("{e:?}");
        assert!(
            !all.contains("cc-canary-secret-6"),
            "client secret leaked: {all}"
        );
        for t in &issued {
            assert!(!all.contains(t.as_str()), "access token leaked: {all}");
        }
    }
    // Newest first, and paging walks all of them exactly once.
    let times: Vec<_> = resp
        .events
        .iter()
        .map(|e| e.occurred_at.unwrap().seconds)
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]));
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_events(ListEventsRequest {
                tenant: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        ids.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let all = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(ids, all.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
    // Another tenant sees nothing of acme's.
    let other = c
        .list_events(ListEventsRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.events.is_empty());
}
