//! The benchmark's counts as ordinary tests, end to end through gRPC against a counting
//! token endpoint: single-flight (one upstream request for 1,000 callers on a cold key, K
//! requests for K cold keys) and refresh (requests per key over ten token lifetimes, and
//! how 200 keys issued at once spread their refreshes). Time is a manual clock, so these
//! assert counts, never timings.

use authgate::clock::{Clock, ManualClock};
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::{GetTokenRequest, GetTokenResponse};
use authgate::server::RunningServer;
use authgate_bench::endpoint::Endpoint;
use authgate_bench::gateway::{self, BrokerKnobs};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

struct Setup {
    endpoint: Arc<Endpoint>,
    server: RunningServer,
    clients: Vec<TokenServiceClient<Channel>>,
    _dir: tempfile::TempDir,
}

async fn setup(credentials: usize, clock: Arc<dyn Clock>) -> Setup {
    let endpoint = Endpoint::start(200).await.unwrap();
    let dir = gateway::scratch_dir().unwrap();
    let server = gateway::start_in_process(
        dir.path(),
        &endpoint.token_url(),
        credentials,
        &BrokerKnobs::default(),
        clock,
    )
    .await
    .unwrap();
    let mut clients = Vec::new();
    // Several HTTP/2 connections, as many callers would have.
    for _ in 0..8 {
        clients.push(
            TokenServiceClient::connect(format!("http://{}", server.grpc_addr))
                .await
                .unwrap(),
        );
    }
    Setup {
        endpoint,
        server,
        clients,
        _dir: dir,
    }
}

fn request(cred: usize, scope: &str) -> GetTokenRequest {
    GetTokenRequest {
        tenant: gateway::TENANT.into(),
        credential_id: gateway::credential_id(cred),
        scopes: vec![scope.into()],
        min_ttl_seconds: 0,
        force_refresh: false,
    }
}

/// Sends all requests at once, spread over the connections; every one must succeed.
async fn all_at_once(s: &Setup, requests: Vec<GetTokenRequest>) -> Vec<GetTokenResponse> {
    let mut tasks = Vec::new();
    for (i, r) in requests.into_iter().enumerate() {
        let mut c = s.clients[i % s.clients.len()].clone();
        tasks.push(tokio::spawn(async move { c.get_token(r).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            t.await
                .unwrap()
                .expect("every caller gets a token")
                .into_inner(),
        );
    }
    out
}

fn expires_ms(r: &GetTokenResponse) -> i64 {
    let t = r.expires_at.as_ref().expect("expires_at");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_one_cold_key_make_one_upstream_request() {
    let s = setup(1, Arc::new(ManualClock::default())).await;
    s.endpoint.set_delay(Duration::from_millis(200));
    let replies = all_at_once(&s, (0..1000).map(|_| request(0, "cold")).collect()).await;
    assert_eq!(replies.len(), 1000);
    let tokens: HashSet<_> = replies.iter().map(|r| r.access_token.clone()).collect();
    assert_eq!(tokens.len(), 1, "every caller gets the same token");
    assert_eq!(s.endpoint.requests(), 1);
    assert_eq!(
        s.endpoint.counts_by_key(),
        BTreeMap::from([(gateway::endpoint_key(0, "cold"), 1)])
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_cold_keys_with_a_hundred_callers_each_make_k_upstream_requests() {
    const K: usize = 6;
    // Three keys on one credential (scope sets) and three on others.
    let keys: Vec<(usize, String)> = (0..K)
        .map(|k| (if k < 3 { 0 } else { k - 2 }, format!("k{k}")))
        .collect();
    let s = setup(4, Arc::new(ManualClock::default())).await;
    s.endpoint.set_delay(Duration::from_millis(50));
    let requests = (0..K * 100)
        .map(|i| {
            let (c, scope) = &keys[i % K];
            request(*c, scope)
        })
        .collect();
    let replies = all_at_once(&s, requests).await;
    let tokens: HashSet<_> = replies.iter().map(|r| r.access_token.clone()).collect();
    assert_eq!(tokens.len(), K, "one token per key");
    assert_eq!(s.endpoint.requests(), K as u64);
    let by_key = s.endpoint.counts_by_key();
    for (c, scope) in &keys {
        assert_eq!(
            by_key.get(&gateway::endpoint_key(*c, scope)),
            Some(&1),
            "{c} {scope}"
        );
    }
    s.server.shutdown().await;
}

/// Waits until the gateway serves a token other than `old` for `req` (a background refresh
/// finished), calling GetToken meanwhile as callers would.
async fn until_new_token(s: &Setup, req: &GetTokenRequest, old: &str) -> GetTokenResponse {
    let mut c = s.clients[0].clone();
    for _ in 0..2_000 {
        let r = c.get_token(req.clone()).await.unwrap().into_inner();
        if r.access_token != old {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the background refresh did not finish within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_token_lifetimes_stay_within_the_refresh_bound_and_never_serve_short_tokens() {
    const LIFETIME_S: i64 = 60;
    const KEYS: usize = 3;
    let clock = ManualClock::default();
    let s = setup(KEYS, Arc::new(clock.clone())).await;
    s.endpoint.set_expires_in(LIFETIME_S as u64);
    let reqs: Vec<GetTokenRequest> = (0..KEYS).map(|k| request(k, "refresh")).collect();
    let mut current: Vec<GetTokenResponse> = all_at_once(&s, reqs.clone()).await;
    let t0 = clock.now_ms();
    let http = reqwest::Client::new();
    let metrics = format!("http://{}/metrics", s.server.http_addr);
    let key = |k: usize| gateway::endpoint_key(k, "refresh");
    let mut least_left = i64::MAX;
    let mut c = s.clients[0].clone();
    for _ in 0..10 * LIFETIME_S {
        clock.advance(Duration::from_secs(1));
        let counts_before = s.endpoint.counts_by_key();
        for (req, cur) in reqs.iter().zip(&current) {
            let r = c.get_token(req.clone()).await.unwrap().into_inner();
            least_left = least_left.min(expires_ms(&r) - clock.now_ms());
            assert!(
                r.access_token == cur.access_token,
                "a cached token is served while valid"
            );
        }
        // Refreshes started in this second must finish before time moves on.
        let started = background_refreshes(&http, &metrics).await;
        wait_for_requests(&s.endpoint, KEYS as u64 + started).await;
        let counts = s.endpoint.counts_by_key();
        for k in 0..KEYS {
            if counts.get(&key(k)) != counts_before.get(&key(k)) {
                current[k] = until_new_token(&s, &reqs[k], &current[k].access_token).await;
            }
        }
    }
    let t = (clock.now_ms() - t0) as f64 / 1000.0;
    let lead = BrokerKnobs::default().max_refresh_lead_ms(LIFETIME_S * 1000) as f64 / 1000.0;
    let bound = (t / (LIFETIME_S as f64 - lead)).ceil() as u64 + 1;
    let by_key = s.endpoint.counts_by_key();
    for k in 0..KEYS {
        let n = by_key[&gateway::endpoint_key(k, "refresh")];
        assert!(
            n <= bound,
            "key {k}: {n} upstream requests over {t} s, bound {bound}"
        );
        // Each token lives 60 s, so 600 s need at least 10 refreshes after the first fetch.
        assert!(n >= 11, "key {k}: only {n} upstream requests over {t} s");
    }
    assert!(
        least_left >= 5_000,
        "a token was served with {least_left} ms left"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_keys_issued_at_once_spread_their_refreshes() {
    const KEYS: usize = 200;
    const CREDS: usize = 8;
    let clock = ManualClock::default();
    let s = setup(CREDS, Arc::new(clock.clone())).await;
    s.endpoint.set_expires_in(60);
    let reqs: Vec<GetTokenRequest> = (0..KEYS)
        .map(|i| request(i % CREDS, &format!("w{i}")))
        .collect();
    all_at_once(&s, reqs.clone()).await;
    assert_eq!(s.endpoint.requests(), KEYS as u64);
    let http = reqwest::Client::new();
    let metrics = format!("http://{}/metrics", s.server.http_addr);
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    // Every token was issued at the same instant; by 56 s each must have been refreshed.
    for second in 1..=56u64 {
        clock.advance(Duration::from_secs(1));
        let before = s.endpoint.requests();
        all_at_once(&s, reqs.clone()).await;
        // Background refreshes started by this round must reach the endpoint before the
        // clock moves on, so each is counted in the second that started it.
        let started = background_refreshes(&http, &metrics).await;
        wait_for_requests(&s.endpoint, KEYS as u64 + started).await;
        let new = s.endpoint.requests() - before;
        if new > 0 {
            per_second.insert(second, new);
        }
    }
    let total: u64 = per_second.values().sum();
    assert_eq!(
        total, KEYS as u64,
        "each key refreshed exactly once: {per_second:?}"
    );
    let busiest = per_second.values().copied().max().unwrap_or(0);
    assert!(
        busiest * 5 <= total,
        "{busiest} of {total} refreshes fell in one second: {per_second:?}"
    );
    s.server.shutdown().await;
}

async fn background_refreshes(http: &reqwest::Client, url: &str) -> u64 {
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("authgate_background_refreshes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("authgate_background_refreshes_total in /metrics")
}

/// Waits until the endpoint has received and answered exactly `n` requests.
async fn wait_for_requests(endpoint: &Endpoint, n: u64) {
    for _ in 0..2_000 {
        if endpoint.answered() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(endpoint.requests(), n, "upstream requests");
}
