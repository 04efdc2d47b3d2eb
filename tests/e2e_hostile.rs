//! What floods cannot do: forged `/oauth/callback` redirects cost a bounded number of
//! stored rows and do not get in the way of a refresh token's rotation being stored; a
//! caller asking for endless new scope sets cannot grow the gateway's memory without bound
//! nor keep the tenant's real key from being refreshed.

// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::GetTokenRequest;
use common::*;
use futures::StreamExt;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Measures how long the flood lasted, on the real clock.
async fn forged_callbacks_cost_bounded_rows_and_a_rotation_during_them_is_durable() {
    let oidc = OidcServer::start(&[("OIDC_RT_SECRET", "rt-secret-flood")]).await;
    let rt = oidc.mint_refresh_token("openid offline_access read").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_in(tmp.path(), "").await;
    gw.admin()
        .await
        .put_credential(put(
            "acme",
            "user",
            "oauth2",
            json!({
                "token_url": oidc.token_url(), "grant": "refresh_token", "client_id": "rt-client",
                "client_secret": "rt-secret-flood", "refresh_token": rt,
            }),
        ))
        .await
        .unwrap();
    let mut c = gw.client().await;
    let t1 = c
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap()
        .into_inner();

    // 10,000 redirects with random states, 50 at a time.
    let callback = format!("http://{}/oauth/callback", gw.http_addr());
    let sent = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let flood = tokio::spawn({
        let sent = sent.clone();
        async move {
            let http = reqwest::Client::new();
            let statuses: Vec<u16> = futures::stream::iter(0..10_000)
                .map(|_| {
                    let url = format!("{callback}?code=x&state={:032x}", rand::random::<u128>());
                    let (http, sent) = (http.clone(), sent.clone());
                    async move {
                        let r = http.get(url).send().await.unwrap();
                        sent.fetch_add(1, Ordering::Relaxed);
                        r.status().as_u16()
                    }
                })
                .buffer_unordered(50)
                .collect()
                .await;
            statuses
        }
    });
    while sent.load(Ordering::Relaxed) < 2_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Mid-flood: a refresh that rotates the refresh token.
    let t2 = c
        .get_token(GetTokenRequest {
            force_refresh: true,
            ..get_token_request("acme", "user", &[])
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(t2.access_token, t1.access_token);
    assert!(
        sent.load(Ordering::Relaxed) < 10_000,
        "the refresh ran during the flood"
    );
    let statuses = flood.await.unwrap();
    let flood_secs = started.elapsed().as_secs_f64();
    assert_eq!(statuses.len(), 10_000);
    assert!(
        statuses.iter().all(|s| *s == 400),
        "every forged state refused"
    );
    gw.stop().await;

    // At most one row per 10 s of flood (plus the first).
    let db = tmp.path().join("authgate.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE message LIKE 'authorization callback rejected%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let bound = 1 + (flood_secs / 10.0).ceil() as i64;
    println!("10,000 forged callbacks in {flood_secs:.1} s: {rows} event rows (bound {bound}), {total} events in all");
    assert!(rows >= 1, "the forgeries are on record");
    assert!(rows <= bound, "{rows} rows for {flood_secs:.1} s of flood");
    assert!(total < 30, "{total} events in all");

    // After a restart the rotated refresh token is the one presented: the provider takes
    // only the newest (replaying an older one is invalid_grant and revokes the grant).
    let gw = Gateway::start_in(tmp.path(), "").await;
    let t3 = gw
        .client()
        .await
        .get_token(GetTokenRequest {
            force_refresh: true,
            ..get_token_request("acme", "user", &[])
        })
        .await
        .unwrap()
        .into_inner();
    assert!(oidc.is_active(&t3.access_token, "cc-basic-secret").await);
    let stats = oidc.stats().await;
    assert_eq!(stats["by_grant"]["refresh_token"], 3, "{stats}");
    assert_eq!(stats["errors"], 0, "no invalid_grant: {stats}");
}

/// A token endpoint that refuses every scope starting with `bad` (`invalid_scope`) and
/// issues 2-second tokens for any other, each a new one.
struct ScopedProvider {
    issued: AtomicUsize,
}

impl wiremock::Respond for ScopedProvider {
    fn respond(&self, req: &wiremock::Request) -> wiremock::ResponseTemplate {
        let scope = url::form_urlencoded::parse(&req.body)
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if scope.starts_with("bad") {
            return wiremock::ResponseTemplate::new(400).set_body_json(json!({
                "error": "invalid_scope", "error_description": "unknown scope"
            }));
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        wiremock::ResponseTemplate::new(200).set_body_json(json!({
            "access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 2
        }))
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The resident memory the gateway may gain while 100,000 new scope sets are asked for.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;
/// `broker.max_scope_sets_per_credential` for this test, above the default 64 so the flood
/// fills a larger cache (the default behaves the same, with fewer upstream fetches).
const CAP: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Paces the legitimate caller on the real clock.
async fn endless_new_scope_sets_bound_memory_and_spare_the_real_key() {
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ScopedProvider {
            issued: AtomicUsize::new(0),
        })
        .mount(&provider)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = env_secret("scope-flood-secret");
    let cred = format!("[broker]\nmax_scope_sets_per_credential = {CAP}\n\n")
        + &cc_credential(
            "acme",
            "idp",
            &format!("{}/token", provider.uri()),
            &secret,
            "",
        );
    let gw = GatewayProcess::start(dir.path(), &cred, &[]).await;
    let pid = gw.child.id();
    let url = format!("http://{}", gw.grpc_addr);
    let legit_req = || get_token_request("acme", "idp", &["legit"]);

    // The tenant's real key exists before the flood.
    let mut legit = TokenServiceClient::connect(url.clone()).await.unwrap();
    let first = legit.get_token(legit_req()).await.unwrap().into_inner();
    let rss_before = rss_kib(pid);

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let legit_task = tokio::spawn({
        let done = done.clone();
        async move {
            let mut tokens = HashSet::from([first.access_token]);
            let mut failures = Vec::new();
            let started = std::time::Instant::now();
            while !done.load(Ordering::Relaxed) {
                match legit.get_token(legit_req()).await {
                    Ok(t) => {
                        tokens.insert(t.into_inner().access_token);
                    }
                    Err(e) => failures.push(format!("{:?}: {}", e.code(), e.message())),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (tokens.len(), failures, started.elapsed())
        }
    });

    // 100,000 distinct scope sets from one caller over 4 connections, 256 in flight on each;
    // half of them scopes the provider refuses.
    let started = std::time::Instant::now();
    let mut floods = Vec::new();
    for conn in 0..4u64 {
        let c = TokenServiceClient::connect(url.clone()).await.unwrap();
        floods.push(tokio::spawn(async move {
            let mut codes: BTreeMap<String, u64> = BTreeMap::new();
            let results: Vec<Code> = futures::stream::iter(0..25_000u64)
                .map(|i| {
                    let mut c = c.clone();
                    let scope = format!(
                        "{}{conn}x{i}x{:x}",
                        if i % 2 == 0 { "bad" } else { "ok" },
                        rand::random::<u32>()
                    );
                    async move {
                        match c
                            .get_token(get_token_request("acme", "idp", &[scope.as_str()]))
                            .await
                        {
                            Ok(_) => Code::Ok,
                            Err(e) => e.code(),
                        }
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            for code in results {
                *codes.entry(format!("{code:?}")).or_default() += 1;
            }
            codes
        }));
    }
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for f in floods {
        for (k, v) in f.await.unwrap() {
            *codes.entry(k).or_default() += v;
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let rss_after = rss_kib(pid);
    // The real key over two more token lifetimes after the flood, then its tally.
    tokio::time::sleep(Duration::from_secs(4)).await;
    done.store(true, Ordering::Relaxed);
    let (distinct, failures, legit_for) = legit_task.await.unwrap();
    let upstream = provider.received_requests().await.unwrap().len();
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "100,000 scope sets in {flood_secs:.1} s: {codes:?}; {upstream} upstream calls; \
         RSS {rss_before} KiB -> {rss_after} KiB (+{growth} KiB); real key: {distinct} \
         distinct tokens in {legit_for:?}, {} failures",
        failures.len()
    );

    assert_eq!(codes.values().sum::<u64>(), 100_000);
    // Beyond the cap: RESOURCE_EXHAUSTED. Idle keys (the refused scope sets once their
    // backoff ends, expired tokens) are evicted every 60 s, the first time at start.
    let admitted = 100_000 - codes.get("ResourceExhausted").copied().unwrap_or(0) as usize;
    let cap_windows = 1 + (flood_secs / 60.0).ceil() as usize;
    assert!(
        admitted <= CAP * cap_windows,
        "{admitted} scope sets admitted, cap {CAP}: {codes:?}"
    );
    // One upstream call per admitted scope set, plus the real key's; plus, on a machine so
    // loaded that a 2 s token arrives expired (answered UNAVAILABLE), one more fetch for each
    // such key, and the real key's last background refresh, which its caller stopped before
    // seeing.
    let slack = codes.get("Unavailable").copied().unwrap_or(0) as usize + 1;
    assert!(
        upstream <= admitted + distinct + slack,
        "{upstream} upstream calls for {admitted} admitted scope sets and {distinct} real tokens"
    );
    assert!(
        growth < RSS_GROWTH_BOUND_KIB,
        "RSS grew {growth} KiB (bound {RSS_GROWTH_BOUND_KIB} KiB)"
    );
    assert!(failures.is_empty(), "the real key failed: {failures:?}");
    // Every answer is a token valid when returned, and tokens last 2 s: a caller asking
    // every 200 ms throughout sees a new token per 2 s (less one: the first was issued
    // before its count started). A refresh stuck behind the flood's fetches shows as far
    // fewer; a quarter of slack covers a loaded machine, where the caller's own loop (in
    // this process, beside the flood) stalls past a token's life now and then.
    let expected = ((legit_for.as_secs_f64() / 2.0).floor() as usize - 1) * 3 / 4;
    assert!(
        distinct >= expected,
        "{distinct} distinct tokens in {legit_for:?} of 2 s tokens (expected {expected})"
    );
}
