//! ONE store test suite, run against every backend: each test below is generated once for
//! SQLite and once for PostgreSQL (`store_conformance::sqlite::*`,
//! `store_conformance::postgres::*`), so the two cannot drift apart.
//!
//! "Two replicas" are two store handles on one database: two `PgStore`s on one PostgreSQL
//! database, or two `SqliteStore`s on one file in this process.

// A test harness: it waits on and measures real time, outside any clock the gateway uses.
#![allow(clippy::disallowed_methods)]

mod common;

use authgate::store::postgres::PgStore;
use authgate::store::sqlite::SqliteStore;
use authgate::store::{
    CredentialRecord, CredentialSource, CredentialStatus, DeliveryOutcome, EventQuery, EventRecord,
    Notification, Notify, Store, StoreChange, TokenRecord, WebhookRecord,
};
use common::pg::PgTestDb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One fresh database of one backend, removed on drop.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgTestDb),
}

impl Db {
    /// Makes the database refuse every write of a refresh token (a trigger), so a failure
    /// lands in the middle of a multi-statement change; `false` lifts it.
    async fn fail_refresh_token_writes(&self, fail: bool) {
        use sqlx::Connection;
        match self {
            Db::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("store.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let sql = if fail {
                    "CREATE TRIGGER injected_fault BEFORE INSERT ON refresh_tokens \
                     BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                } else {
                    "DROP TRIGGER injected_fault"
                };
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
            Db::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                let sqls: &[&str] = if fail {
                    &[
                        "CREATE FUNCTION injected_fault() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql",
                        "CREATE TRIGGER injected_fault BEFORE INSERT OR UPDATE ON refresh_tokens FOR EACH ROW EXECUTE FUNCTION injected_fault()",
                    ]
                } else {
                    &[
                        "DROP TRIGGER injected_fault ON refresh_tokens",
                        "DROP FUNCTION injected_fault()",
                    ]
                };
                for sql in sqls {
                    sqlx::query(sql).execute(&mut c).await.unwrap();
                }
            }
        }
    }

    async fn sqlite() -> Self {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Self {
        Db::Postgres(PgTestDb::create().await)
    }

    /// A new handle on the database (another "replica").
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("store.db").display());
                Arc::new(SqliteStore::open(&url).await.unwrap())
            }
            Db::Postgres(db) => Arc::new(PgStore::open(&db.url).await.unwrap()),
        }
    }
}

macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}

store_suite!(
    credentials_round_trip,
    deleting_a_credential_takes_its_secrets_tokens_and_events,
    refresh_token_is_stored_replaced_and_removed,
    tokens_by_key_expiry_and_deletion,
    events_newest_first_filtered_paginated_and_purged,
    refresh_lease_is_exclusive_until_released,
    refresh_lease_expires_when_its_holder_is_gone,
    stale_fence_cannot_write,
    concurrent_acquires_grant_one_lease,
    changes_reach_other_handles_not_their_own,
    replacing_a_credential_is_one_change,
    a_replace_that_fails_midway_leaves_the_old_credential_whole,
    events_after_a_cursor_oldest_first_and_announced_to_every_handle,
    concurrent_appends_never_slip_behind_a_cursor,
    notifications_fan_out_to_subscribers_with_their_change,
    each_notification_is_claimed_by_one_holder_until_finished,
);

fn cred(tenant: &str, id: &str, at: i64) -> CredentialRecord {
    CredentialRecord {
        tenant: tenant.into(),
        id: id.into(),
        provider: "oauth2".into(),
        settings_sealed: vec![1, 2, 3, 0, 255],
        settings_digest: format!("digest-{at}"),
        status: CredentialStatus::Active,
        last_error: None,
        source: CredentialSource::Api,
        created_at_ms: at,
        updated_at_ms: at,
    }
}

fn token(tenant: &str, id: &str, scope_key: &str, issued: i64, expires: i64) -> TokenRecord {
    TokenRecord {
        tenant: tenant.into(),
        credential_id: id.into(),
        scope_key: scope_key.into(),
        access_sealed: format!("sealed-{issued}").into_bytes(),
        token_type: "Bearer".into(),
        expires_at_ms: expires,
        issued_at_ms: issued,
        scopes: scope_key.split(' ').map(str::to_owned).collect(),
        metadata: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
    }
}

fn event(tenant: &str, id: &str, kind: &str, at: i64) -> EventRecord {
    EventRecord {
        id: 0,
        tenant: tenant.into(),
        credential_id: id.into(),
        kind: kind.into(),
        occurred_at_ms: at,
        caller: Some("svc".into()),
        message: format!("{kind} at {at}"),
        http: Some("{\"status\":200}".into()),
    }
}

const LONG: Duration = Duration::from_secs(60);

async fn credentials_round_trip(db: &Db) {
    let s = db.open().await;
    assert_eq!(s.get_credential("acme", "idp").await.unwrap(), None);
    s.put_credential(&cred("acme", "idp", 100)).await.unwrap();
    s.put_credential(&cred("acme", "b", 100)).await.unwrap();
    s.put_credential(&cred("beta", "a", 100)).await.unwrap();
    assert_eq!(
        s.get_credential("acme", "idp").await.unwrap(),
        Some(cred("acme", "idp", 100))
    );

    // Replacing keeps the creation time.
    let mut newer = cred("acme", "idp", 200);
    newer.provider = "trimble_connect".into();
    s.put_credential(&newer).await.unwrap();
    let got = s.get_credential("acme", "idp").await.unwrap().unwrap();
    assert_eq!((got.created_at_ms, got.updated_at_ms), (100, 200));
    assert_eq!(got.provider, "trimble_connect");

    s.set_credential_status(
        "acme",
        "idp",
        CredentialStatus::Invalid,
        Some("invalid_grant"),
        300,
    )
    .await
    .unwrap();
    let got = s.get_credential("acme", "idp").await.unwrap().unwrap();
    assert_eq!(got.status, CredentialStatus::Invalid);
    assert_eq!(got.last_error.as_deref(), Some("invalid_grant"));
    assert_eq!(got.updated_at_ms, 300);

    let keys: Vec<_> = s
        .list_credentials()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.tenant, c.id))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("acme".into(), "b".into()),
            ("acme".into(), "idp".into()),
            ("beta".into(), "a".into())
        ]
    );
}

async fn deleting_a_credential_takes_its_secrets_tokens_and_events(db: &Db) {
    let s = db.open().await;
    for id in ["gone", "kept"] {
        s.put_credential(&cred("acme", id, 1)).await.unwrap();
        s.put_refresh_token("acme", id, Some(b"rt"), 1)
            .await
            .unwrap();
        s.put_token(&token("acme", id, "read", 1, i64::MAX))
            .await
            .unwrap();
        s.append_event(&event("acme", id, "token_issued", 1))
            .await
            .unwrap();
    }
    assert!(s.delete_credential("acme", "gone").await.unwrap());
    assert!(!s.delete_credential("acme", "gone").await.unwrap());
    assert_eq!(s.get_credential("acme", "gone").await.unwrap(), None);
    assert_eq!(s.get_refresh_token("acme", "gone").await.unwrap(), None);
    assert_eq!(s.get_token("acme", "gone", "read").await.unwrap(), None);
    let q = |id: &str| EventQuery {
        tenant: "acme".into(),
        credential_id: Some(id.into()),
        limit: 10,
        ..EventQuery::default()
    };
    assert!(s.list_events(&q("gone")).await.unwrap().is_empty());
    // The other credential is untouched.
    assert!(s.get_credential("acme", "kept").await.unwrap().is_some());
    assert!(s.get_refresh_token("acme", "kept").await.unwrap().is_some());
    assert!(s.get_token("acme", "kept", "read").await.unwrap().is_some());
    assert_eq!(s.list_events(&q("kept")).await.unwrap().len(), 1);
}

async fn refresh_token_is_stored_replaced_and_removed(db: &Db) {
    let s = db.open().await;
    assert_eq!(s.get_refresh_token("acme", "idp").await.unwrap(), None);
    s.put_refresh_token("acme", "idp", Some(&[0, 1, 2]), 1)
        .await
        .unwrap();
    s.put_refresh_token("acme", "idp", Some(&[9, 9]), 2)
        .await
        .unwrap();
    assert_eq!(
        s.get_refresh_token("acme", "idp").await.unwrap(),
        Some(vec![9, 9])
    );
    s.put_refresh_token("acme", "idp", None, 3).await.unwrap();
    assert_eq!(s.get_refresh_token("acme", "idp").await.unwrap(), None);
}

async fn tokens_by_key_expiry_and_deletion(db: &Db) {
    let s = db.open().await;
    s.put_token(&token("acme", "idp", "read", 1, 1_000))
        .await
        .unwrap();
    s.put_token(&token("acme", "idp", "read write", 1, 5_000))
        .await
        .unwrap();
    s.put_token(&token("acme", "other", "read", 1, 5_000))
        .await
        .unwrap();
    // The last token per key replaces the previous one.
    s.put_token(&token("acme", "idp", "read", 2, 6_000))
        .await
        .unwrap();
    assert_eq!(
        s.get_token("acme", "idp", "read").await.unwrap(),
        Some(token("acme", "idp", "read", 2, 6_000))
    );
    assert_eq!(s.get_token("acme", "idp", "admin").await.unwrap(), None);

    // Expired ones are not listed (but stay readable by key, for the caller to judge).
    s.put_token(&token("acme", "idp", "admin", 1, 10))
        .await
        .unwrap();
    let mut live: Vec<_> = s
        .list_tokens(100)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.credential_id, t.scope_key))
        .collect();
    live.sort();
    assert_eq!(
        live,
        vec![
            ("idp".into(), "read".into()),
            ("idp".into(), "read write".into()),
            ("other".into(), "read".into())
        ]
    );
    assert!(s.get_token("acme", "idp", "admin").await.unwrap().is_some());

    assert_eq!(
        s.delete_tokens("acme", "idp", Some("read")).await.unwrap(),
        1
    );
    assert_eq!(s.get_token("acme", "idp", "read").await.unwrap(), None);
    assert_eq!(s.delete_tokens("acme", "idp", None).await.unwrap(), 2);
    assert_eq!(
        s.list_tokens(0).await.unwrap().len(),
        1,
        "other credential kept"
    );
}

async fn events_newest_first_filtered_paginated_and_purged(db: &Db) {
    let s = db.open().await;
    let mut ids = Vec::new();
    for (i, kind) in ["upstream_call", "token_issued", "upstream_call", "revoked"]
        .iter()
        .enumerate()
    {
        ids.push(
            s.append_event(&event("acme", "idp", kind, 1_000 + i as i64))
                .await
                .unwrap(),
        );
    }
    s.append_event(&event("acme", "other", "token_issued", 1_001))
        .await
        .unwrap();
    s.append_event(&event("beta", "idp", "token_issued", 1_001))
        .await
        .unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");

    let all = s
        .list_events(&EventQuery {
            tenant: "acme".into(),
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 5, "tenant boundary");
    assert!(all
        .windows(2)
        .all(|w| (w[0].occurred_at_ms, w[0].id) > (w[1].occurred_at_ms, w[1].id)));
    assert_eq!(all[0].message, "revoked at 1003");
    assert_eq!(all[0].caller.as_deref(), Some("svc"));
    assert_eq!(all[0].http.as_deref(), Some("{\"status\":200}"));

    let q = EventQuery {
        tenant: "acme".into(),
        credential_id: Some("idp".into()),
        kinds: vec!["upstream_call".into(), "token_issued".into()],
        since_ms: Some(1_000),
        until_ms: Some(1_003),
        limit: 2,
        before: None,
    };
    let page1 = s.list_events(&q).await.unwrap();
    assert_eq!(
        page1.iter().map(|e| e.occurred_at_ms).collect::<Vec<_>>(),
        vec![1_002, 1_001]
    );
    let last = page1.last().unwrap();
    let page2 = s
        .list_events(&EventQuery {
            before: Some((last.occurred_at_ms, last.id)),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|e| e.occurred_at_ms).collect::<Vec<_>>(),
        vec![1_000]
    );

    assert_eq!(s.purge_events(1_002).await.unwrap(), 4);
    let left = s
        .list_events(&EventQuery {
            tenant: "acme".into(),
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
}

async fn refresh_lease_is_exclusive_until_released(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    let la = a
        .acquire_refresh_lease("acme", "idp", a.instance_id(), LONG)
        .await
        .unwrap()
        .expect("a free lease is granted");
    assert!(
        b.acquire_refresh_lease("acme", "idp", b.instance_id(), LONG)
            .await
            .unwrap()
            .is_none(),
        "held by a"
    );
    assert!(
        a.acquire_refresh_lease("acme", "idp", a.instance_id(), LONG)
            .await
            .unwrap()
            .is_none(),
        "not re-entrant: one refresh per credential even within one holder"
    );
    // Leases are per credential.
    assert!(b
        .acquire_refresh_lease("acme", "other", b.instance_id(), LONG)
        .await
        .unwrap()
        .is_some());
    // Releasing with a wrong fence does nothing.
    b.release_refresh_lease("acme", "idp", la.fence + 7)
        .await
        .unwrap();
    assert!(b
        .acquire_refresh_lease("acme", "idp", b.instance_id(), LONG)
        .await
        .unwrap()
        .is_none());
    a.release_refresh_lease("acme", "idp", la.fence)
        .await
        .unwrap();
    let lb = b
        .acquire_refresh_lease("acme", "idp", b.instance_id(), LONG)
        .await
        .unwrap()
        .expect("released lease is granted again");
    assert!(lb.fence > la.fence, "fences grow: {la:?} then {lb:?}");
}

async fn refresh_lease_expires_when_its_holder_is_gone(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    let ttl = Duration::from_millis(400);
    let la = a
        .acquire_refresh_lease("acme", "idp", a.instance_id(), ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(b
        .acquire_refresh_lease("acme", "idp", b.instance_id(), ttl)
        .await
        .unwrap()
        .is_none());
    drop(a); // the holder dies without releasing
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    let lb = b
        .acquire_refresh_lease("acme", "idp", b.instance_id(), LONG)
        .await
        .unwrap()
        .expect("an expired lease is granted to the next asker");
    assert!(lb.fence > la.fence);
    assert!(lb.expires_at_ms > la.expires_at_ms);
}

/// PostgreSQL knows a replica's sessions: once a holder's process is gone (its sessions
/// ended, as on `kill -9`), its lease is granted 5 s after it was taken (the grace for a
/// replica that is only reconnecting), long before it would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frees_the_lease_of_a_replica_that_is_gone() {
    let db = Db::postgres().await;
    let (a, b) = (db.open().await, db.open().await);
    let la = a
        .acquire_refresh_lease("acme", "idp", a.instance_id(), LONG)
        .await
        .unwrap()
        .expect("a free lease is granted");
    assert!(
        b.acquire_refresh_lease("acme", "idp", b.instance_id(), LONG)
            .await
            .unwrap()
            .is_none(),
        "a live holder keeps its lease"
    );
    drop(a); // the holder's pool and listener close: its sessions end
    let asked = std::time::Instant::now();
    let lb = loop {
        if let Some(l) = b
            .acquire_refresh_lease("acme", "idp", b.instance_id(), LONG)
            .await
            .unwrap()
        {
            break l;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "the dead holder's lease (ttl {LONG:?}) was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(lb.fence > la.fence);
    assert!(asked.elapsed() < LONG / 2, "freed before it expired");
}

async fn stale_fence_cannot_write(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    let ttl = Duration::from_millis(300);
    // No lease at all: nothing may be written.
    assert!(!a
        .commit_refresh(
            "acme",
            "idp",
            1,
            Some(b"rt-x"),
            Some(&token("acme", "idp", "read", 1, i64::MAX)),
            1
        )
        .await
        .unwrap());

    let stale = a
        .acquire_refresh_lease("acme", "idp", a.instance_id(), ttl)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    let current = b
        .acquire_refresh_lease("acme", "idp", b.instance_id(), LONG)
        .await
        .unwrap()
        .unwrap();
    let newer = token("acme", "idp", "read", 2_000, i64::MAX);
    assert!(b
        .commit_refresh(
            "acme",
            "idp",
            current.fence,
            Some(b"rt-new"),
            Some(&newer),
            2_000
        )
        .await
        .unwrap());

    // The presumed-dead holder's result arrives late: refused, nothing overwritten.
    let late = token("acme", "idp", "read", 1_000, i64::MAX);
    assert!(!a
        .commit_refresh(
            "acme",
            "idp",
            stale.fence,
            Some(b"rt-late"),
            Some(&late),
            3_000
        )
        .await
        .unwrap());
    assert_eq!(
        a.get_token("acme", "idp", "read").await.unwrap(),
        Some(newer)
    );
    assert_eq!(
        a.get_refresh_token("acme", "idp").await.unwrap(),
        Some(b"rt-new".to_vec())
    );

    // A refresh whose token must not be kept (revoked meanwhile) still stores its rotated
    // refresh token.
    assert!(b
        .commit_refresh("acme", "idp", current.fence, Some(b"rt-3"), None, 4_000)
        .await
        .unwrap());
    assert_eq!(
        b.get_refresh_token("acme", "idp").await.unwrap(),
        Some(b"rt-3".to_vec())
    );
    assert_eq!(
        b.get_token("acme", "idp", "read")
            .await
            .unwrap()
            .unwrap()
            .issued_at_ms,
        2_000
    );
}

async fn concurrent_acquires_grant_one_lease(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.acquire_refresh_lease("acme", "idp", s.instance_id(), LONG)
                .await
                .unwrap()
        }));
    }
    let mut granted = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            granted += 1;
        }
    }
    assert_eq!(
        granted, 1,
        "exactly one of 20 concurrent askers holds the lease"
    );
}

async fn next_change(
    stream: &mut authgate::store::ChangeStream,
    within: Duration,
) -> Option<StoreChange> {
    tokio::time::timeout(within, stream.next())
        .await
        .ok()
        .flatten()
}

async fn changes_reach_other_handles_not_their_own(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    let mut a_sees = a.subscribe();
    let mut b_sees = b.subscribe();
    let wait = Duration::from_secs(5);

    a.put_credential(&cred("acme", "idp", 1)).await.unwrap();
    assert_eq!(
        next_change(&mut b_sees, wait).await,
        Some(StoreChange::CredentialChanged {
            tenant: "acme".into(),
            credential_id: "idp".into()
        })
    );
    a.delete_tokens("acme", "idp", Some("read write"))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut b_sees, wait).await,
        Some(StoreChange::TokensDeleted {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scope_key: Some("read write".into())
        })
    );
    a.put_refresh_token("acme", "idp", Some(b"rt"), 2)
        .await
        .unwrap();
    assert!(matches!(
        next_change(&mut b_sees, wait).await,
        Some(StoreChange::CredentialChanged { .. })
    ));
    a.set_credential_status("acme", "idp", CredentialStatus::NeedsAuthorization, None, 2)
        .await
        .unwrap();
    assert!(matches!(
        next_change(&mut b_sees, wait).await,
        Some(StoreChange::CredentialChanged { .. })
    ));
    let lease = a
        .acquire_refresh_lease("acme", "idp", a.instance_id(), LONG)
        .await
        .unwrap()
        .unwrap();
    a.release_refresh_lease("acme", "idp", lease.fence)
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut b_sees, wait).await,
        Some(StoreChange::LeaseReleased {
            tenant: "acme".into(),
            credential_id: "idp".into()
        })
    );
    a.delete_credential("acme", "idp").await.unwrap();
    assert!(matches!(
        next_change(&mut b_sees, wait).await,
        Some(StoreChange::CredentialChanged { .. })
    ));

    // a heard none of its own changes; the first thing it hears is b's.
    b.delete_tokens("beta", "x", None).await.unwrap();
    assert_eq!(
        next_change(&mut a_sees, wait).await,
        Some(StoreChange::TokensDeleted {
            tenant: "beta".into(),
            credential_id: "x".into(),
            scope_key: None
        })
    );
}

/// PostgreSQL only: what has no SQLite counterpart.
mod postgres_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_together_apply_migrations_once() {
        let db = PgTestDb::create().await;
        let mut opens = Vec::new();
        for _ in 0..5 {
            let url = db.url.clone();
            opens.push(tokio::spawn(async move { PgStore::open(&url).await }));
        }
        for o in opens {
            o.await.unwrap().expect("every replica starts");
        }
        let mut c = db.connect().await;
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&mut c)
            .await
            .unwrap();
        let files = std::fs::read_dir(common::repo_root().join("migrations/postgres"))
            .unwrap()
            .count();
        assert_eq!(applied as usize, files);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_server_is_unavailable_quickly() {
        // Nothing listens on port 1.
        let started = std::time::Instant::now();
        let e = PgStore::open("postgres://postgres@127.0.0.1:1/test")
            .await
            .unwrap_err();
        assert!(
            matches!(e, authgate::store::StoreError::Unavailable(_)),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

async fn replacing_a_credential_is_one_change(db: &Db) {
    let a = db.open().await;
    let b = db.open().await;
    let mut b_sees = b.subscribe();
    a.put_credential(&cred("acme", "idp", 1)).await.unwrap();
    a.put_refresh_token("acme", "idp", Some(b"old-rt"), 1)
        .await
        .unwrap();
    a.put_token(&token("acme", "idp", "read", 1, i64::MAX / 2))
        .await
        .unwrap();
    while next_change(&mut b_sees, Duration::from_millis(300))
        .await
        .is_some()
    {}

    // New settings with a refresh token: record, tokens and refresh token change together.
    let mut new = cred("acme", "idp", 2);
    new.settings_digest = "digest-new".into();
    a.replace_credential(&new, Some(Some(b"new-rt")))
        .await
        .unwrap();
    let got = a.get_credential("acme", "idp").await.unwrap().unwrap();
    assert_eq!(got.settings_digest, "digest-new");
    assert_eq!(got.created_at_ms, 1, "creation time is kept");
    assert_eq!(
        a.get_refresh_token("acme", "idp").await.unwrap(),
        Some(b"new-rt".to_vec())
    );
    assert!(a.list_tokens(0).await.unwrap().is_empty());
    let mut seen = Vec::new();
    while let Some(c) = next_change(&mut b_sees, Duration::from_secs(2)).await {
        seen.push(c);
        if seen.len() == 2 {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|c| matches!(c, StoreChange::CredentialChanged { .. })),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|c| matches!(
            c,
            StoreChange::TokensDeleted {
                scope_key: None,
                ..
            }
        )),
        "{seen:?}"
    );

    // Kept, then removed.
    a.replace_credential(&cred("acme", "idp", 3), None)
        .await
        .unwrap();
    assert_eq!(
        a.get_refresh_token("acme", "idp").await.unwrap(),
        Some(b"new-rt".to_vec())
    );
    a.replace_credential(&cred("acme", "idp", 4), Some(None))
        .await
        .unwrap();
    assert_eq!(a.get_refresh_token("acme", "idp").await.unwrap(), None);
}

async fn a_replace_that_fails_midway_leaves_the_old_credential_whole(db: &Db) {
    let a = db.open().await;
    a.put_credential(&cred("acme", "idp", 1)).await.unwrap();
    a.put_refresh_token("acme", "idp", Some(b"old-rt"), 1)
        .await
        .unwrap();
    a.put_token(&token("acme", "idp", "read", 1, i64::MAX / 2))
        .await
        .unwrap();

    // The record is written and the tokens deleted before the refresh token fails.
    db.fail_refresh_token_writes(true).await;
    let mut new = cred("acme", "idp", 2);
    new.settings_digest = "digest-new".into();
    assert!(a
        .replace_credential(&new, Some(Some(b"new-rt")))
        .await
        .is_err());
    let got = a.get_credential("acme", "idp").await.unwrap().unwrap();
    assert_eq!(got.settings_digest, "digest-1", "the old settings stand");
    assert_eq!(
        a.get_refresh_token("acme", "idp").await.unwrap(),
        Some(b"old-rt".to_vec()),
        "beside the old refresh token"
    );
    assert_eq!(
        a.list_tokens(0).await.unwrap().len(),
        1,
        "and the old token"
    );

    // Without the fault, the new one lands whole.
    db.fail_refresh_token_writes(false).await;
    a.replace_credential(&new, Some(Some(b"new-rt")))
        .await
        .unwrap();
    let got = a.get_credential("acme", "idp").await.unwrap().unwrap();
    assert_eq!(got.settings_digest, "digest-new");
    assert_eq!(
        a.get_refresh_token("acme", "idp").await.unwrap(),
        Some(b"new-rt".to_vec())
    );
    assert!(a.list_tokens(0).await.unwrap().is_empty());
}

async fn events_after_a_cursor_oldest_first_and_announced_to_every_handle(db: &Db) {
    use authgate::store::EventSignal;
    let (a, b) = (db.open().await, db.open().await);
    assert_eq!(a.last_event_id().await.unwrap(), 0);
    let mut a_feed = a.subscribe_events();
    let mut ids = Vec::new();
    for (i, (store, cred, kind)) in [
        (&a, "idp", "upstream_call"),
        (&b, "idp", "token_issued"),
        (&b, "other", "token_issued"),
        (&a, "idp", "revoked"),
    ]
    .into_iter()
    .enumerate()
    {
        // Times out of order: the cursor is the id, not the time.
        let at = 5_000 - i as i64;
        ids.push(
            store
                .append_event(&event("acme", cred, kind, at))
                .await
                .unwrap(),
        );
    }
    b.append_event(&event("beta", "idp", "token_issued", 1))
        .await
        .unwrap();
    assert_eq!(a.last_event_id().await.unwrap(), ids[3] + 1);

    // Every append is announced to a, its own included, in commit order.
    let mut announced = Vec::new();
    while announced.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(5), a_feed.next()).await {
            Ok(Some(EventSignal::Appended(e))) => announced.push((e.tenant.clone(), e.id)),
            other => panic!("announcement missing after {announced:?}: {other:?}"),
        }
    }
    let expected: Vec<_> = ids.iter().map(|&id| ("acme".to_owned(), id)).collect();
    assert_eq!(announced[..4], expected[..]);
    assert_eq!(announced[4].0, "beta");

    let acme = EventQuery {
        tenant: "acme".into(),
        ..EventQuery::default()
    };
    let all = b.events_after(&acme, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids,
        "tenant boundary, ascending"
    );
    assert_eq!(all[0].message, "upstream_call at 5000");
    let after = b.events_after(&acme, ids[1], 100).await.unwrap();
    assert_eq!(after.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    let page = b.events_after(&acme, 0, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
    let filtered = a
        .events_after(
            &EventQuery {
                credential_id: Some("idp".into()),
                kinds: vec!["token_issued".into(), "revoked".into()],
                ..acme.clone()
            },
            0,
            100,
        )
        .await
        .unwrap();
    assert_eq!(
        filtered.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[1], ids[3]]
    );
    assert!(a.events_after(&acme, ids[3], 100).await.unwrap().is_empty());
}

/// Appends from two handles race a reader that only ever asks for `id > last seen`: it must
/// end with every event exactly once (on PostgreSQL this needs ids in commit order).
async fn concurrent_appends_never_slip_behind_a_cursor(db: &Db) {
    const WRITERS: usize = 6;
    const EACH: usize = 40;
    let (a, b) = (db.open().await, db.open().await);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .append_event(&event("acme", "idp", "upstream_call", i as i64))
                    .await
                    .unwrap();
            }
        }));
    }
    let q = EventQuery {
        tenant: "acme".into(),
        ..EventQuery::default()
    };
    let mut seen = Vec::new();
    let mut cursor = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < WRITERS * EACH && std::time::Instant::now() < deadline {
        for e in a.events_after(&q, cursor, 7).await.unwrap() {
            cursor = e.id;
            seen.push(e.id);
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    for e in a.events_after(&q, cursor, 1000).await.unwrap() {
        seen.push(e.id);
    }
    let mut all: Vec<i64> = a
        .list_events(&EventQuery {
            limit: 1000,
            ..q.clone()
        })
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    all.sort_unstable();
    assert_eq!(all.len(), WRITERS * EACH);
    assert_eq!(seen, all, "the cursor reader skipped or repeated an event");
}

fn webhook(tenant: &str, id: &str, kinds: &[&str]) -> WebhookRecord {
    WebhookRecord {
        tenant: tenant.into(),
        id: id.into(),
        url: format!("https://hooks.example/{id}"),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        secret_sealed: vec![1, 2, 3],
        source: CredentialSource::Api,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

fn notification(tenant: &str, kind: &str, n: u32) -> Notification {
    Notification {
        tenant: tenant.into(),
        credential_id: "idp".into(),
        kind: kind.into(),
        message_id: format!("msg_{kind}_{n}"),
        payload: format!("{{\"n\":{n}}}"),
        created_at_ms: 1_000 + i64::from(n),
    }
}

/// Every pending notification, claimed by a throwaway holder: (webhook, message id).
async fn claim_all(s: &dyn Store, holder: &str, now: i64) -> Vec<(String, String)> {
    let mut got: Vec<_> = s
        .claim_deliveries(holder, now, Duration::from_secs(60), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.webhook_id, d.message_id))
        .collect();
    got.sort();
    got
}

async fn notifications_fan_out_to_subscribers_with_their_change(db: &Db) {
    let s = db.open().await;
    s.put_webhook(&webhook("acme", "all", &["*"]))
        .await
        .unwrap();
    s.put_webhook(&webhook("acme", "deletions", &["credential.deleted"]))
        .await
        .unwrap();
    s.put_webhook(&webhook("other", "all", &["*"]))
        .await
        .unwrap();
    let listed = s.list_webhooks(Some("acme")).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].kinds, vec!["credential.deleted".to_owned()]);
    s.put_credential(&cred("acme", "idp", 10)).await.unwrap();

    // A status change writes its notification once: the second writer finds it set.
    let invalid = notification("acme", "credential.status_changed", 1);
    let notify = Notify {
        always: &[],
        on_status_change: Some(&invalid),
    };
    let status = CredentialStatus::Invalid;
    assert!(s
        .set_credential_status_notifying("acme", "idp", status, Some("bad"), 20, notify)
        .await
        .unwrap());
    let again = notification("acme", "credential.status_changed", 2);
    let notify = Notify {
        always: &[],
        on_status_change: Some(&again),
    };
    assert!(!s
        .set_credential_status_notifying("acme", "idp", status, Some("bad"), 21, notify)
        .await
        .unwrap());
    let rec = s.get_credential("acme", "idp").await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.updated_at_ms),
        (status, 21),
        "the write itself still happens"
    );

    // A change that fails writes no notification.
    db.fail_refresh_token_writes(true).await;
    let replaced = notification("acme", "credential.replaced", 3);
    let notify = Notify {
        always: std::slice::from_ref(&replaced),
        on_status_change: None,
    };
    assert!(s
        .replace_credential_notifying(&cred("acme", "idp", 30), Some(Some(b"rt")), notify)
        .await
        .is_err());
    db.fail_refresh_token_writes(false).await;

    let deleted = notification("acme", "credential.deleted", 4);
    let notify = Notify {
        always: std::slice::from_ref(&deleted),
        on_status_change: None,
    };
    assert!(s
        .delete_credential_notifying("acme", "idp", notify)
        .await
        .unwrap());
    assert_eq!(
        claim_all(&*s, "h", 10_000).await,
        vec![
            ("all".to_owned(), "msg_credential.deleted_4".to_owned()),
            (
                "all".to_owned(),
                "msg_credential.status_changed_1".to_owned()
            ),
            (
                "deletions".to_owned(),
                "msg_credential.deleted_4".to_owned()
            ),
        ]
    );
    // Deleting a webhook takes what is queued for it.
    assert!(s.delete_webhook("acme", "all").await.unwrap());
    assert_eq!(s.outbox_stats().await.unwrap().pending, 1);
}

#[allow(clippy::too_many_lines)] // One outbox row's life, read top to bottom.
async fn each_notification_is_claimed_by_one_holder_until_finished(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    a.put_webhook(&webhook("acme", "all", &["*"]))
        .await
        .unwrap();
    let batch: Vec<_> = (0..40)
        .map(|n| notification("acme", "token.fetch_failing", n))
        .collect();
    a.append_notifications(&batch).await.unwrap();

    // Two replicas claiming at once split the notifications between them.
    let (ha, hb) = (a.instance_id().to_owned(), b.instance_id().to_owned());
    let (got_a, got_b) = tokio::join!(
        a.claim_deliveries(&ha, 5_000, Duration::from_secs(60), 25),
        b.claim_deliveries(&hb, 5_000, Duration::from_secs(60), 25),
    );
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    let mut ids: Vec<i64> = got_a.iter().chain(&got_b).map(|d| d.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        got_a.len() + got_b.len(),
        "no notification claimed twice"
    );
    let rest = a
        .claim_deliveries(&ha, 5_000, Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(got_a.len() + got_b.len() + rest.len(), 40);

    // Who got what at once depends on timing (either may get none); take one of them.
    let (d, (h, other), (hs, os)) = match got_a.first() {
        Some(d) => (d, (&a, &b), (&ha, &hb)),
        None => (&got_b[0], (&b, &a), (&hb, &ha)),
    };
    assert_eq!(
        (d.url.as_str(), d.secret_sealed.as_slice()),
        ("https://hooks.example/all", &[1u8, 2, 3][..])
    );
    // Only the holder finishes it; a retry is due again at its time, not before.
    let retry = DeliveryOutcome::Retry {
        next_attempt_at_ms: 9_000,
        error: "HTTP 503".into(),
    };
    assert!(!other
        .finish_delivery(d.id, os, &retry, 6_000)
        .await
        .unwrap());
    assert!(h.finish_delivery(d.id, hs, &retry, 6_000).await.unwrap());
    assert!(a
        .claim_deliveries(&ha, 8_999, Duration::from_secs(60), 100)
        .await
        .unwrap()
        .is_empty());
    let again = a
        .claim_deliveries(&ha, 9_000, Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|d| (d.id, d.attempts)).collect::<Vec<_>>(),
        vec![(d.id, 1)]
    );

    // An expired claim is anyone's.
    let stolen = b
        .claim_deliveries(&hb, 5_000 + 61_000, Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(
        stolen.len(),
        39,
        "every claim but the one renewed at 9 s has expired"
    );
    for (i, d) in stolen.iter().enumerate() {
        let outcome = if i == 0 {
            DeliveryOutcome::Failed {
                error: "gave up".into(),
            }
        } else {
            DeliveryOutcome::Delivered
        };
        assert!(b
            .finish_delivery(d.id, &hb, &outcome, 70_000)
            .await
            .unwrap());
    }
    let stats = a.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.failed), (1, 1), "{stats:?}");
    assert_eq!(a.purge_outbox(70_001).await.unwrap(), 39);
}
