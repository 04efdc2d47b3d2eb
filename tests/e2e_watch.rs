//! `TokenService.WatchEvents` end to end: a real gateway (SQLite, and two replicas on
//! PostgreSQL), a real OAuth server (oidc-provider) whose token calls cause the events, and
//! real gRPC clients.
//!
//! Replay from a cursor then live events; reconnecting with the last cursor (an event id,
//! a heartbeat's cursor, a ListEvents page token) misses and repeats nothing; an event
//! caused on replica B reaches a watcher on replica A; a watcher that stops reading is ended
//! with its resume cursor while other callers' GetTokens go on; heartbeats on idle streams,
//! streams outliving `request_timeout_seconds`; roles, tenants and the per-caller cap;
//! shutdown ends open streams; no secret or token in a streamed event.

// A test harness: it waits on and measures real time, outside any clock the gateway uses.
#![allow(clippy::disallowed_methods)]
// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::api::watch::RESUME_AFTER;
use authgate::config::Config;
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::watch_events_response::Item;
use authgate::proto::v1::{
    Event, EventKind, GetTokenRequest, ListEventsRequest, WatchEventsRequest, WatchEventsResponse,
};
use authgate::server::StartOptions;
use authgate::store::sqlite::SqliteStore;
use authgate::store::{EventRecord, Store};
use common::pg::PgTestDb;
use common::*;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

const CLIENT_SECRET: &str = "watch-canary-client-secret-7f3a";
const WATCH_KEY: &str = "watch-key-1";
const TOKEN_KEY: &str = "token-key-1";
const OTHER_KEY: &str = "other-tenant-key-1";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Callers: `watcher` (events on acme), `tokens` (token on acme, no events role), `other`
/// (events on beta only).
fn callers() -> String {
    [
        ("watcher", WATCH_KEY, "acme", "events"),
        ("tokens", TOKEN_KEY, "acme", "token"),
        ("other", OTHER_KEY, "beta", "events"),
    ]
    .iter()
    .map(|(name, key, tenant, role)| {
        format!(
            "[[callers]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\ntenants = [\"{tenant}\"]\nroles = [\"{role}\"]\n",
            sha256_hex(key)
        )
    })
    .collect()
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

/// A gateway with the oidc-provider `cc-basic` credential acme/idp, the callers above, 1 s
/// heartbeats, a 2 s request timeout and at most `max_streams` watch streams per caller.
async fn gateway(
    dir: &std::path::Path,
    oidc: &OidcServer,
    store_url: Option<&str>,
    max_streams: usize,
) -> Gateway {
    let env = env_secret(CLIENT_SECRET);
    let extra = callers() + &cc_credential("acme", "idp", &oidc.token_url(), &env, "");
    let mut cfg = Config::parse(&config_text(dir, &extra)).unwrap();
    cfg.server.watch_heartbeat_seconds = 1;
    cfg.server.request_timeout_seconds = 2;
    cfg.server.max_watch_streams_per_caller = max_streams;
    if let Some(url) = store_url {
        cfg.store.url = url.to_owned();
    }
    Gateway::start_config(dir, cfg, StartOptions::default()).await
}

async fn client_of(addr: std::net::SocketAddr) -> TokenServiceClient<Channel> {
    TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A fresh token from the provider: two events (upstream_call, token_issued).
async fn refresh(client: &mut TokenServiceClient<Channel>) -> String {
    let r = GetTokenRequest {
        force_refresh: true,
        ..get_token_request("acme", "idp", &[])
    };
    client
        .get_token(with_key(r, TOKEN_KEY))
        .await
        .unwrap()
        .into_inner()
        .access_token
}

async fn watch(
    client: &mut TokenServiceClient<Channel>,
    after: &str,
) -> Result<Streaming<WatchEventsResponse>, Status> {
    let r = WatchEventsRequest {
        tenant: "acme".into(),
        after: after.into(),
        ..Default::default()
    };
    client
        .watch_events(with_key(r, WATCH_KEY))
        .await
        .map(tonic::Response::into_inner)
}

/// The next item within `within`: `Ok(None)` when the stream ended cleanly.
async fn next(
    s: &mut Streaming<WatchEventsResponse>,
    within: Duration,
) -> Result<Option<Item>, Status> {
    match tokio::time::timeout(within, s.message()).await {
        Ok(Ok(Some(m))) => Ok(m.item),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("nothing on the stream within {within:?}"),
    }
}

/// The next `n` events, skipping heartbeats, within 15 s.
async fn events(s: &mut Streaming<WatchEventsResponse>, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} events within 15 s",
            out.len()
        );
        match next(s, Duration::from_secs(10)).await {
            Ok(Some(Item::Event(e))) => out.push(e),
            Ok(Some(Item::Heartbeat(_))) => {}
            other => panic!("after {} events: {other:?}", out.len()),
        }
    }
    out
}

/// Every acme event id, oldest first, through ListEvents (all pages).
async fn listed_ids(client: &mut TokenServiceClient<Channel>) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = ListEventsRequest {
            tenant: "acme".into(),
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let page = client
            .list_events(with_key(r, WATCH_KEY))
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.events.iter().map(|e| e.id.parse::<i64>().unwrap()));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    ids.sort_unstable();
    ids
}

fn ids(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.id.parse().unwrap()).collect()
}

/// No secret, token or key in anything streamed.
fn assert_no_secret(events: &[Event], tokens: &[String]) {
    let text = format!("{events:?}");
    for canary in [CLIENT_SECRET, WATCH_KEY, TOKEN_KEY]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(!text.contains(canary), "{canary} streamed in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_replay_then_live_then_resume_without_gaps_or_repeats() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", CLIENT_SECRET)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway(dir.path(), &oidc, None, 4).await;
    let mut c = client_of(gw.addr()).await;
    let mut tokens = vec![refresh(&mut c).await, refresh(&mut c).await];
    let before = listed_ids(&mut c).await;
    assert!(before.len() >= 4, "{before:?}");

    // Replay from the first event: everything after it, oldest first.
    let mut s = watch(&mut c, &before[0].to_string()).await.unwrap();
    let replay = events(&mut s, before.len() - 1).await;
    assert_eq!(ids(&replay), before[1..]);
    // Then live: one GetToken's events arrive on the open stream.
    tokens.push(refresh(&mut c).await);
    let live = events(&mut s, 2).await;
    let kinds: Vec<_> = live.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&(EventKind::TokenIssued as i32)), "{live:?}");
    assert!(live
        .iter()
        .all(|e| e.tenant == "acme" && e.credential_id == "idp"));
    assert!(live[0].caller.contains("tokens"), "{:?}", live[0].caller);

    // Idle: heartbeats carry the cursor; the stream outlives request_timeout_seconds (2 s).
    let last = ids(&live)[1];
    let started = std::time::Instant::now();
    let mut beats = 0;
    while started.elapsed() < Duration::from_millis(3_500) {
        match next(&mut s, Duration::from_secs(3)).await {
            Ok(Some(Item::Heartbeat(h))) => {
                assert_eq!(h.cursor, last.to_string());
                assert!(h.server_time.is_some());
                beats += 1;
            }
            other => panic!("idle stream sent {other:?}"),
        }
    }
    assert!(beats >= 2, "{beats} heartbeats in 3.5 s at 1 s");

    // Disconnect; events happen meanwhile; reconnecting after the last cursor gets exactly
    // those.
    drop(s);
    tokens.push(refresh(&mut c).await);
    tokens.push(refresh(&mut c).await);
    let all = listed_ids(&mut c).await;
    let missed: Vec<i64> = all.iter().copied().filter(|&id| id > last).collect();
    assert_eq!(missed.len(), 4, "{all:?}");
    let mut s = watch(&mut c, &last.to_string()).await.unwrap();
    let resumed = events(&mut s, missed.len()).await;
    assert_eq!(ids(&resumed), missed);
    // Nothing else is pending: the next item is a heartbeat.
    assert!(matches!(
        next(&mut s, Duration::from_secs(3)).await,
        Ok(Some(Item::Heartbeat(_)))
    ));
    drop(s);

    // A ListEvents page token is a cursor too: the events after that page's last (oldest)
    // one, so the page's newer events come again and nothing is missed.
    let page = c
        .list_events(with_key(
            ListEventsRequest {
                tenant: "acme".into(),
                page_size: 2,
                ..Default::default()
            },
            WATCH_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    let newest: i64 = page.events[0].id.parse().unwrap();
    let mut s = watch(&mut c, &page.next_page_token).await.unwrap();
    assert_eq!(ids(&events(&mut s, 1).await), vec![newest]);
    drop(s);

    // "0" replays everything retained; empty starts with live events only.
    let mut s = watch(&mut c, "0").await.unwrap();
    let everything = events(&mut s, all.len()).await;
    assert_eq!(ids(&everything), all);
    assert_no_secret(&everything, &tokens);
    let mut s = watch(&mut c, "").await.unwrap();
    assert!(matches!(
        next(&mut s, Duration::from_secs(3)).await,
        Ok(Some(Item::Heartbeat(h))) if h.cursor == all.last().unwrap().to_string()
    ));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_event_on_replica_b_reaches_a_watcher_on_replica_a() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", CLIENT_SECRET)]).await;
    let db = PgTestDb::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = gateway(dir_a.path(), &oidc, Some(&db.url), 4).await;
    let mut b = gateway(dir_b.path(), &oidc, Some(&db.url), 4).await;
    let (mut ca, mut cb) = (client_of(a.addr()).await, client_of(b.addr()).await);

    let first = refresh(&mut cb).await;
    let before = listed_ids(&mut ca).await;
    let mut s = watch(&mut ca, &before[0].to_string()).await.unwrap();
    assert_eq!(ids(&events(&mut s, before.len() - 1).await), before[1..]);

    // Live, caused on B, seen on A; then on A too.
    let t1 = refresh(&mut cb).await;
    let from_b = events(&mut s, 2).await;
    let t2 = refresh(&mut ca).await;
    let from_a = events(&mut s, 2).await;
    let all = listed_ids(&mut cb).await;
    let streamed: Vec<i64> = ids(&from_b).into_iter().chain(ids(&from_a)).collect();
    assert_eq!(streamed, all[before.len()..], "in id order, each once");
    assert_no_secret(&from_b, &[first, t1, t2]);

    // Reconnect to B with A's last cursor: nothing is repeated.
    drop(s);
    let mut s = watch(&mut cb, &streamed.last().unwrap().to_string())
        .await
        .unwrap();
    refresh(&mut ca).await;
    let next_two = events(&mut s, 2).await;
    assert!(ids(&next_two)
        .iter()
        .all(|id| id > streamed.last().unwrap()));
    drop(s);
    a.stop().await;
    b.stop().await;
}

/// Appends `n` events of acme/idp with a 1 KiB message through a second handle on the
/// gateway's SQLite file (another "replica" in this process: its appends are announced to
/// the gateway's watchers like its own).
async fn append_directly(dir: &std::path::Path, n: usize) {
    let url = format!("sqlite://{}", dir.join("authgate.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    for i in 0..n {
        store
            .append_event(&EventRecord {
                id: 0,
                tenant: "acme".into(),
                credential_id: "idp".into(),
                kind: "upstream_call".into(),
                occurred_at_ms: 1_700_000_000_000 + i as i64,
                caller: None,
                message: format!("{i} {}", "x".repeat(1024)),
                http: None,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_with_its_cursor_and_slows_nobody() {
    const EVENTS: usize = 3_000;
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", CLIENT_SECRET)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway(dir.path(), &oidc, None, 4).await;
    let mut c = client_of(gw.addr()).await;
    refresh(&mut c).await;
    let start = *listed_ids(&mut c).await.last().unwrap();

    // The stuck watcher: a small HTTP/2 window, and it reads nothing.
    let stuck_channel = Endpoint::from_shared(format!("http://{}", gw.addr()))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut stuck = TokenServiceClient::new(stuck_channel);
    let mut s = watch(&mut stuck, &start.to_string()).await.unwrap();

    // Other callers meanwhile: 500 GetTokens (cache hits) all succeed while the events
    // flood the stuck stream.
    let flood = tokio::spawn({
        let dir = dir.path().to_owned();
        async move { append_directly(&dir, EVENTS).await }
    });
    let mut ok = 0;
    for _ in 0..500 {
        let r = get_token_request("acme", "idp", &[]);
        if c.get_token(with_key(r, TOKEN_KEY)).await.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 500);
    flood.await.unwrap();
    // Give the pump time to fill its buffer and give up.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Reading now: the buffered events in order, then RESOURCE_EXHAUSTED with the cursor.
    let mut got = Vec::new();
    let status = loop {
        match next(&mut s, Duration::from_secs(10)).await {
            Ok(Some(Item::Event(e))) => got.push(e.id.parse::<i64>().unwrap()),
            Ok(Some(Item::Heartbeat(_))) => {}
            Ok(None) => panic!("stream ended without a status after {} events", got.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let cursor = status
        .metadata()
        .get(RESUME_AFTER)
        .expect("resume cursor in the trailers")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        status.message().contains(&format!("after = \"{cursor}\"")),
        "{status:?}"
    );
    assert!(
        !got.is_empty() && got.len() < EVENTS,
        "{} events before the cut",
        got.len()
    );
    eprintln!(
        "stuck watcher: {} of {EVENTS} events delivered before the cut at {cursor}",
        got.len()
    );
    assert_eq!(cursor, got.last().unwrap().to_string());
    assert!(got.windows(2).all(|w| w[0] < w[1]));

    // Resuming from the cursor delivers the rest: all of them, none twice.
    let mut s = watch(&mut c, &cursor).await.unwrap();
    let rest = events(&mut s, EVENTS - got.len()).await;
    got.extend(ids(&rest));
    let all: Vec<i64> = listed_ids(&mut c)
        .await
        .into_iter()
        .filter(|&id| id > start)
        .collect();
    assert_eq!(all.len(), EVENTS, "cache hits record no events");
    assert_eq!(got, all);
    drop(s);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_tenants_bad_cursors_and_the_per_caller_cap() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", CLIENT_SECRET)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway(dir.path(), &oidc, None, 2).await;
    let mut c = client_of(gw.addr()).await;
    let req = |tenant: &str, after: &str| WatchEventsRequest {
        tenant: tenant.into(),
        after: after.into(),
        ..Default::default()
    };

    // Without the events role, for another tenant, without a key: refused before a stream.
    let code = |r: Result<tonic::Response<Streaming<WatchEventsResponse>>, Status>| {
        r.map(|_| ()).unwrap_err()
    };
    let e = code(c.watch_events(with_key(req("acme", ""), TOKEN_KEY)).await);
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = code(c.watch_events(with_key(req("acme", ""), OTHER_KEY)).await);
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = code(c.watch_events(Request::new(req("acme", ""))).await);
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = code(
        c.watch_events(with_key(req("acme", "yesterday"), WATCH_KEY))
            .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("after: "), "{e:?}");

    // Two streams per caller here; the third is refused until one closes.
    let s1 = watch(&mut c, "").await.unwrap();
    let _s2 = watch(&mut c, "").await.unwrap();
    let e = watch(&mut c, "").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("max_watch_streams_per_caller"),
        "{e:?}"
    );
    // Another caller has slots of its own.
    let other = WatchEventsRequest {
        tenant: "beta".into(),
        ..Default::default()
    };
    assert!(c.watch_events(with_key(other, OTHER_KEY)).await.is_ok());
    drop(s1);
    let mut reopened = None;
    for _ in 0..50 {
        match watch(&mut c, "").await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reopened.is_some(),
        "a closed stream's slot was not given back"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_their_cursor() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", CLIENT_SECRET)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway(dir.path(), &oidc, None, 4).await;
    let mut c = client_of(gw.addr()).await;
    refresh(&mut c).await;
    let last = *listed_ids(&mut c).await.last().unwrap();
    let mut s = watch(&mut c, "").await.unwrap();
    let stopping = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), gw.stop())
        .await
        .expect("shutdown waited on an open stream");
    eprintln!("shutdown with an open stream took {:?}", stopping.elapsed());
    let mut ended = None;
    for _ in 0..5 {
        match next(&mut s, Duration::from_secs(5)).await {
            Ok(Some(Item::Heartbeat(_))) => {}
            Err(status) => {
                ended = Some(status);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let status = ended.expect("the stream ended with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(RESUME_AFTER)
            .unwrap()
            .to_str()
            .unwrap(),
        last.to_string()
    );
}
