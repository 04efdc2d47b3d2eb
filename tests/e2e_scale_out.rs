//! Scale-out end to end: several real `authgate` processes on one PostgreSQL database (a
//! database of its own per test), a real OAuth server whose refresh tokens rotate and are
//! single-use (oidc-provider: a reused one gets `invalid_grant` and kills the grant).
//!
//! One refresh per credential across replicas, takeover from a replica killed while it
//! held the refresh lease (and its late write refused), revocations reaching every replica,
//! and a PostgreSQL outage (a TCP proxy between authgate and PostgreSQL is cut, so other
//! tests keep their server).

// A test harness: it waits on and measures real time, outside any clock the gateway uses.
#![allow(clippy::disallowed_methods)]
// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::credential_service_client::CredentialServiceClient;
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::{
    DeleteCredentialRequest, GetTokenResponse, ListEventsRequest, PutCredentialRequest,
    RevokeRequest,
};
use authgate::store::postgres::PgStore;
use authgate::store::{Store, TokenRecord};
use common::pg::{PgTestDb, TcpProxy};
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

/// authgate processes sharing one store, killed on drop.
struct Cluster {
    replicas: Vec<GatewayProcess>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` replicas one after the other (each listening before the next starts).
    async fn start(n: usize, store_url: &str, extra_config: &str) -> Self {
        let mut replicas = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            replicas.push(
                GatewayProcess::start(
                    dir.path(),
                    extra_config,
                    &[
                        ("AUTHGATE_STORE_URL", store_url),
                        ("AUTHGATE_KEY", TEST_KEY),
                        ("AUTHGATE_LOG", "info,authgate=debug"),
                    ],
                )
                .await,
            );
            dirs.push(dir);
        }
        Self {
            replicas,
            _dirs: dirs,
        }
    }

    async fn client(&self, i: usize) -> TokenServiceClient<Channel> {
        TokenServiceClient::connect(format!("http://{}", self.replicas[i].grpc_addr))
            .await
            .unwrap()
    }

    async fn admin(&self, i: usize) -> CredentialServiceClient<Channel> {
        CredentialServiceClient::connect(format!("http://{}", self.replicas[i].grpc_addr))
            .await
            .unwrap()
    }

    /// A counter from replica `i`'s `/metrics`.
    async fn metric(&self, i: usize, name: &str) -> u64 {
        let cfg = std::fs::read_to_string(self._dirs[i].path().join("authgate.toml")).unwrap();
        let http = cfg
            .lines()
            .find_map(|l| l.strip_prefix("http_listen = "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        let body = reqwest::get(format!("http://{http}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in /metrics: {body}"))
            .parse()
            .unwrap()
    }

    /// The replicas' logs, for assertion messages.
    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {i} ---\n{}", r.log_text()))
            .collect()
    }
}

/// `[[credentials]]` for oidc-provider's `rt-client`: refresh_token grant, rotating,
/// single-use refresh tokens.
fn rt_credential(oidc: &OidcServer, client_secret: &str, refresh_token: &str) -> String {
    format!(
        "[[credentials]]\ntenant = \"acme\"\nid = \"user\"\nprovider = \"oauth2\"\n[credentials.settings]\ntoken_url = \"{}\"\ngrant = \"refresh_token\"\nclient_id = \"rt-client\"\nclient_secret = \"${{env:{}}}\"\nrefresh_token = \"${{env:{}}}\"\n",
        oidc.token_url(),
        env_secret(client_secret),
        env_secret(refresh_token)
    )
}

async fn get(
    c: &mut TokenServiceClient<Channel>,
    scopes: &[&str],
) -> Result<GetTokenResponse, tonic::Status> {
    let mut req = tonic::Request::new(get_token_request("acme", "user", scopes));
    req.set_timeout(Duration::from_secs(30));
    c.get_token(req).await.map(|r| r.into_inner())
}

fn expires_ms(t: &GetTokenResponse) -> i64 {
    let e = t.expires_at.unwrap();
    e.seconds * 1000 + i64::from(e.nanos) / 1_000_000
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// (token requests, refresh_token grants, errors) the OAuth server saw.
async fn upstream(oidc: &OidcServer) -> (u64, u64, u64) {
    let s = oidc.stats().await;
    (
        s["token_requests"].as_u64().unwrap(),
        s["by_grant"]["refresh_token"].as_u64().unwrap_or(0),
        s["errors"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_make_one_refresh_for_a_thousand_concurrent_callers() {
    let oidc = OidcServer::start(&[
        ("OIDC_RT_SECRET", "rt-secret-s1"),
        ("OIDC_ACCESS_TOKEN_TTL", "8"),
    ])
    .await;
    let rt0 = oidc.mint_refresh_token("openid offline_access read").await;
    let db = PgTestDb::create().await;
    let cluster = Cluster::start(3, &db.url, &rt_credential(&oidc, "rt-secret-s1", &rt0)).await;
    let mut c: Vec<_> = Vec::new();
    for i in 0..3 {
        c.push(cluster.client(i).await);
    }

    // One replica refreshes; the other two reuse its token from the store.
    let t1 = get(&mut c[0], &[]).await.unwrap();
    for client in c.iter_mut().skip(1) {
        assert_eq!(
            get(client, &[]).await.unwrap().access_token,
            t1.access_token
        );
    }
    assert_eq!(upstream(&oidc).await, (1, 1, 0), "one refresh so far");

    // Let it expire everywhere.
    let wait = expires_ms(&t1) - now_ms() + 300;
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;

    // 1,000 concurrent callers over 12 connections, four per replica.
    let mut conns = Vec::new();
    for _ in 0..4 {
        for i in 0..3 {
            conns.push(cluster.client(i).await);
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut client = conns[i % conns.len()].clone();
        tasks.push(tokio::spawn(async move { get(&mut client, &[]).await }));
    }
    let mut tokens = HashSet::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                tokens.insert(r.access_token);
            }
            Err(s) => failures.push(format!("{:?}: {}", s.code(), s.message())),
        }
    }
    let took = started.elapsed();
    let (requests, refreshes, errors) = upstream(&oidc).await;
    eprintln!(
        "1000 concurrent GetToken over 3 replicas in {took:?}: {} distinct token(s), {} failure(s); upstream: {requests} token requests in total, {refreshes} refresh_token grants, {errors} errors",
        tokens.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", cluster.logs());
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(
        (requests, refreshes, errors),
        (2, 2, 0),
        "exactly one more upstream refresh and no invalid_grant\n{}",
        cluster.logs()
    );
    let mut fetched = Vec::new();
    let mut adopted = Vec::new();
    for i in 0..3 {
        fetched.push(cluster.metric(i, "authgate_upstream_fetches_total").await);
        adopted.push(cluster.metric(i, "authgate_tokens_adopted_total").await);
    }
    let mut pg = db.connect().await;
    let fence: i64 = sqlx::query_scalar("SELECT fence FROM refresh_leases")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    eprintln!(
        "per replica: upstream fetches {fetched:?}, tokens adopted from the store {adopted:?}; refresh leases granted: {fence}"
    );
    assert_eq!(
        fetched.iter().sum::<u64>(),
        2,
        "one upstream fetch per expiry"
    );
    assert_eq!(
        adopted.iter().sum::<u64>(),
        4,
        "two replicas adopted, twice"
    );
    // One lease grant per refresh; a waiter whose poll woke it between the holder's write
    // and its release may take the released lease too, and adopts under it (no upstream
    // call: the fetch count above says so).
    assert!(
        (2..=4).contains(&fence),
        "one lease grant per refresh, at most one more per waiter: {fence}"
    );
    let t2 = tokens.into_iter().next().unwrap();
    assert_ne!(t2, t1.access_token);
    assert!(
        oidc.is_active(&t2, "cc-basic-secret").await,
        "the shared token is valid at the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_while_holding_the_lease_is_taken_over_and_its_late_write_refused() {
    let oidc = OidcServer::start(&[("OIDC_RT_SECRET", "rt-secret-s2")]).await;
    let rt0 = oidc.mint_refresh_token("openid offline_access read").await;
    let db = PgTestDb::create().await;
    // Short lease so the test is quick; the fetch timeout must stay below it.
    let config = format!(
        "[broker]\nfetch_timeout_seconds = 3\nrefresh_lease_seconds = 4\n\n{}",
        rt_credential(&oidc, "rt-secret-s2", &rt0)
    );
    let mut cluster = Cluster::start(3, &db.url, &config).await;
    let mut c1 = cluster.client(1).await;
    let mut c2 = cluster.client(2).await;

    // Replica 0's refresh hangs at the provider (and, answered after its death, fails
    // without using the refresh token); the next request is slow but succeeds.
    oidc.faults(serde_json::json!({"delay_ms": 2000, "fail_count": 1}))
        .await;
    let mut c0 = cluster.client(0).await;
    let doomed = tokio::spawn(async move { get(&mut c0, &[]).await });
    let deadline = Instant::now() + Duration::from_secs(15);
    while upstream(&oidc).await.0 < 1 {
        assert!(
            Instant::now() < deadline,
            "replica 0 never called the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pg = db.connect().await;
    let (holder, dead_fence, remaining_ms): (String, i64, i64) = sqlx::query_as(
        "SELECT holder, fence, expires_at_ms - (extract(epoch from clock_timestamp()) * 1000)::bigint FROM refresh_leases",
    )
    .fetch_one(&mut pg)
    .await
    .unwrap();
    let pid0 = cluster.replicas[0].child.id();
    assert!(
        holder.contains(&format!(":{pid0}:")),
        "replica 0 (pid {pid0}) holds the lease: {holder}"
    );
    assert!(remaining_ms > 1000, "lease still runs {remaining_ms} ms");

    // SIGKILL: no release, no goodbye.
    cluster.replicas[0].child.kill().unwrap();
    cluster.replicas[0].child.wait().unwrap();
    let killed_at = Instant::now();
    assert!(doomed.await.unwrap().is_err());

    // Replica 1 waits for the dead holder's lease to expire, then refreshes.
    let t = get(&mut c1, &[])
        .await
        .unwrap_or_else(|s| panic!("{:?} {}\n{}", s.code(), s.message(), cluster.logs()));
    let waited = killed_at.elapsed();
    eprintln!(
        "lease held by the killed replica for {remaining_ms} ms more; replica 1 got a token {waited:?} after the kill"
    );
    assert!(
        waited.as_millis() as i64 >= remaining_ms - 100,
        "replica 1 did not wait for the lease to expire ({waited:?} < {remaining_ms} ms)"
    );
    let pid1 = cluster.replicas[1].child.id();
    let (holder, fence): (String, i64) = sqlx::query_as("SELECT holder, fence FROM refresh_leases")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert!(holder.contains(&format!(":{pid1}:")), "{holder}");
    assert_eq!(fence, dead_fence + 1, "taken over exactly once");
    // The dead replica's request (answered 503 after its death; the test server counts
    // that as an error only if the answer could still be written) and one refresh.
    let (requests, refreshes, errors_after_takeover) = upstream(&oidc).await;
    assert_eq!((requests, refreshes), (2, 2));
    assert!(errors_after_takeover <= 1);
    oidc.faults(serde_json::json!({})).await;

    // The dead holder's result arrives late, with its old fence: refused, nothing changes.
    let store = PgStore::open(&db.url).await.unwrap();
    let before_token = store.get_token("acme", "user", "").await.unwrap().unwrap();
    let before_rt = store.get_refresh_token("acme", "user").await.unwrap();
    let late = TokenRecord {
        access_sealed: b"late token from a dead replica".to_vec(),
        issued_at_ms: now_ms(),
        expires_at_ms: now_ms() + 3_600_000,
        metadata: BTreeMap::new(),
        ..before_token.clone()
    };
    let written = store
        .commit_refresh(
            "acme",
            "user",
            dead_fence,
            Some(b"late refresh token"),
            Some(&late),
            now_ms(),
        )
        .await
        .unwrap();
    assert!(!written, "a stale fence cannot write");
    assert_eq!(
        store.get_token("acme", "user", "").await.unwrap(),
        Some(before_token)
    );
    assert_eq!(
        store.get_refresh_token("acme", "user").await.unwrap(),
        before_rt
    );

    // Replica 2 serves the new holder's token from the store, and the refresh-token chain
    // is intact: a forced refresh works, still without invalid_grant.
    assert_eq!(
        get(&mut c2, &[]).await.unwrap().access_token,
        t.access_token
    );
    assert_eq!(upstream(&oidc).await.0, 2);
    let mut forced = tonic::Request::new(get_token_request("acme", "user", &[]));
    forced.get_mut().force_refresh = true;
    let t3 = c2.get_token(forced).await.unwrap().into_inner();
    assert_ne!(t3.access_token, t.access_token);
    assert_eq!(
        upstream(&oidc).await,
        (3, 3, errors_after_takeover),
        "no invalid_grant\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_on_one_replica_stops_the_others_within_a_second() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "cc-secret-s3")]).await;
    let secret = env_secret("cc-secret-s3");
    let db = PgTestDb::create().await;
    let cred = cc_credential("acme", "user", &oidc.token_url(), &secret, "");
    let cluster = Cluster::start(3, &db.url, &cred).await;
    let mut c = Vec::new();
    for i in 0..3 {
        c.push(cluster.client(i).await);
    }
    let t1 = get(&mut c[0], &[]).await.unwrap().access_token;
    for client in c.iter_mut().skip(1) {
        assert_eq!(get(client, &[]).await.unwrap().access_token, t1);
    }
    assert_eq!(oidc.token_requests().await, 1);

    let r = c[0]
        .revoke(RevokeRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
            scopes: vec![],
            upstream: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.dropped, 1);
    let revoked_at = Instant::now();
    for (i, client) in c.iter_mut().enumerate().skip(1) {
        loop {
            let t = get(client, &[]).await.unwrap().access_token;
            if t != t1 {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "replica {i} still serves the revoked token {:?} after the revoke\n{}",
                revoked_at.elapsed(),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "replica {i} stopped serving the revoked token within {:?}",
            revoked_at.elapsed()
        );
    }
    // And never again.
    for _ in 0..20 {
        for client in c.iter_mut() {
            assert_ne!(get(client, &[]).await.unwrap().access_token, t1);
        }
    }
    assert_eq!(
        oidc.token_requests().await,
        2,
        "one new token for all replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_serves_cached_tokens_fails_store_calls_and_recovers() {
    let oidc = OidcServer::start(&[("OIDC_RT_SECRET", "rt-secret-s4")]).await;
    let rt0 = oidc.mint_refresh_token("openid offline_access read").await;
    let db = PgTestDb::create().await;
    let proxy = TcpProxy::start(common::pg::server_addr()).await;
    let cluster = Cluster::start(
        2,
        &db.url_via(&proxy),
        &rt_credential(&oidc, "rt-secret-s4", &rt0),
    )
    .await;
    let (mut a, mut b) = (cluster.client(0).await, cluster.client(1).await);
    let t1 = get(&mut a, &[]).await.unwrap().access_token;
    assert_eq!(get(&mut b, &[]).await.unwrap().access_token, t1);
    let events = |c: &mut TokenServiceClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.list_events(ListEventsRequest {
                tenant: "acme".into(),
                credential_id: "user".into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().events)
        }
    };
    let events_before = events(&mut a).await.unwrap();
    assert!(!events_before.is_empty());

    proxy.cut();
    let cut_at = Instant::now();
    // Cached tokens keep being served, from both replicas.
    while cut_at.elapsed() < Duration::from_secs(3) {
        assert_eq!(get(&mut a, &[]).await.unwrap().access_token, t1);
        assert_eq!(get(&mut b, &[]).await.unwrap().access_token, t1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What needs the store answers UNAVAILABLE, promptly.
    let t = Instant::now();
    let e = get(&mut a, &["read"]).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = b
        .revoke(RevokeRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
            scopes: vec![],
            upstream: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = events(&mut a).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    eprintln!(
        "three store-bound calls answered UNAVAILABLE in {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    // The failed revoke changed nothing: both still serve the cached token.
    assert_eq!(get(&mut a, &[]).await.unwrap().access_token, t1);
    assert_eq!(get(&mut b, &[]).await.unwrap().access_token, t1);

    proxy.restore();
    let restored_at = Instant::now();
    let t2 = loop {
        match get(&mut a, &["read"]).await {
            Ok(t) => break t.access_token,
            Err(e) if e.code() == Code::Unavailable => {
                assert!(
                    restored_at.elapsed() < Duration::from_secs(20),
                    "no recovery: {e:?}\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}\n{}", cluster.logs()),
        }
    };
    eprintln!(
        "store-bound GetToken succeeded again {:?} after PostgreSQL came back",
        restored_at.elapsed()
    );
    assert_ne!(t2, t1);
    // Nothing lost: the rotated refresh token worked (no invalid_grant), the stored token
    // is still served, and every event from before is still there.
    let (_, refreshes, errors) = upstream(&oidc).await;
    assert_eq!((refreshes, errors), (2, 0));
    assert_eq!(get(&mut b, &[]).await.unwrap().access_token, t1);
    let ids_after: HashSet<_> = events(&mut a)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(events_before.iter().all(|e| ids_after.contains(&e.id)));

    // Change notifications flow again once the listeners are back (they retry every 2 s
    // at most, then resync): a revoke on b reaches a.
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.revoke(RevokeRequest {
        tenant: "acme".into(),
        credential_id: "user".into(),
        scopes: vec![],
        upstream: false,
    })
    .await
    .unwrap();
    let revoked_at = Instant::now();
    while get(&mut a, &[]).await.unwrap().access_token == t1 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "replica a still serves the revoked token\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream(&oidc).await.2, 0, "no invalid_grant at any point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_changes_on_one_replica_reach_the_others_within_a_second() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "cc-secret-s5")]).await;
    let db = PgTestDb::create().await;
    let cluster = Cluster::start(2, &db.url, "").await;
    let mut admin = cluster.admin(0).await;
    let mut other = cluster.client(1).await;
    let settings = match authgate::api::credential_service::json_to_prost(serde_json::json!({
        "token_url": oidc.token_url(), "client_id": "cc-basic",
        "client_secret": "cc-secret-s5", "scopes": ["read"],
    }))
    .kind
    {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => unreachable!("an object"),
    };
    assert_eq!(
        get(&mut other, &[]).await.unwrap_err().code(),
        Code::NotFound
    );

    // Created through replica 0: replica 1 serves it at once.
    admin
        .put_credential(PutCredentialRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
            provider: "oauth2".into(),
            settings: Some(settings),
        })
        .await
        .unwrap();
    let created_at = Instant::now();
    loop {
        match get(&mut other, &[]).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound, "{e:?}");
                assert!(
                    created_at.elapsed() < Duration::from_secs(1),
                    "replica 1 does not know the new credential\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    eprintln!(
        "replica 1 served the credential created on replica 0 after {:?}",
        created_at.elapsed()
    );

    // Deleted through replica 0: replica 1 stops serving its cached token.
    admin
        .delete_credential(DeleteCredentialRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
            revoke_upstream: false,
        })
        .await
        .unwrap();
    let deleted_at = Instant::now();
    loop {
        match get(&mut other, &[]).await {
            Err(e) if e.code() == Code::NotFound => break,
            Ok(_) => {
                // Until the change arrives replica 1 may serve the old token, or one it
                // fetched in the instant between dropping tokens and forgetting the
                // credential; either way only within the second.
                assert!(
                    deleted_at.elapsed() < Duration::from_secs(1),
                    "replica 1 still serves a deleted credential's token\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    eprintln!(
        "replica 1 answered NOT_FOUND {:?} after the delete on replica 0",
        deleted_at.elapsed()
    );
}
