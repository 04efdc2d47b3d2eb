//! The scale-out backend: PostgreSQL, shared by any number of authgate replicas.
//!
//! Besides what SQLite stores, the database is where replicas coordinate: the refresh
//! lease row of a credential decides which replica may call the provider (its fencing number
//! is checked, under a row lock, when the result is written), and every revocation or
//! credential change is announced with NOTIFY in the transaction that makes it, so other
//! replicas hear of it exactly when it commits.

use super::changes::{
    new_event_hub, new_hub, new_instance_id, EventAppended, EventHub, Hub, Notice,
};
use super::outbox;
use super::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

mod listener;
mod webhooks;
use listener::{listen, run_listener};

/// The NOTIFY channel. Each database is its own namespace, so one name is enough.
const CHANNEL: &str = "authgate_changes";

/// The NOTIFY channel of appended events ([`EventAppended`] as JSON: tenant, credential and
/// id, far below the 8000-byte payload limit since ids are at most 128 characters).
const EVENTS_CHANNEL: &str = "authgate_events";

/// The transaction-level advisory lock every event append takes (an arbitrary constant,
/// `authgate` in ASCII). A sequence hands out ids in call order, not commit order: without
/// it, id 6 could be visible before id 5, and a watcher that read "after 5" would skip 5
/// forever. Under the lock, id and commit happen in one order, and the lock is released only
/// once the commit is visible, so `id > cursor` never skips an event. The cost is that
/// appends are serialized across replicas: one short insert each, made on the slow path
/// only (an upstream call or a status change), never on a cache hit.
const EVENTS_APPEND_LOCK: i64 = 0x6175_7468_6761_7465;

/// The database server's clock in SQL, Unix milliseconds: lease expiry is judged by it, so
/// replicas' clocks may disagree without two of them holding one lease.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// How old a lease must be before its holder's missing sessions free it. A replica whose
/// connections dropped with the database (a restart, a failover) reconnects within this and
/// keeps its lease; most fetches are over by then. A killed replica's lease is free this
/// long after it was taken instead of after the whole lease time.
const DEAD_HOLDER_GRACE_MS: i64 = 5_000;

/// `application_name` of a replica's sessions: `authgate ` and its instance id.
fn application_name(instance: &str) -> String {
    format!("authgate {instance}")
}

/// In SQL, whether the lease row `l`'s holder still has a session with the database:
/// `pg_stat_activity.application_name` is shown to every role. A holder whose name matches
/// no session (its process died, or it is not a replica's id) holds nothing; a name collision
/// only delays the free lease until it expires.
const HOLDER_IS_ALIVE: &str =
    "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = 'authgate ' || l.holder)";

/// Longest wait for a pooled connection. When PostgreSQL is unreachable, a call that needs
/// the store answers UNAVAILABLE after this instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest any one store operation may take, connection included. Bounds a call against a
/// server that accepted the connection and then stopped answering.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per replica. The hot path never touches the store, so few are needed; one
/// more is held by the change listener.
const MAX_CONNECTIONS: u32 = 8;

/// PostgreSQL-backed [`Store`]. Cheap to clone; the listener stops with the last clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    instance: Arc<str>,
    hub: Hub,
    events: EventHub,
    _listener: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PgStore {
    /// Connects, applies migrations and starts listening for other replicas' changes.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let instance = new_instance_id();
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?
            // Every session of this replica carries its instance id, so another replica can
            // tell a lease holder that is gone (its sessions ended) from one still working.
            .application_name(&application_name(&instance));
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS + 1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Connections that died while PostgreSQL was down are found and replaced before
            // a query is sent on them, so recovery needs no retry by the caller.
            .test_before_acquire(true)
            .connect_with(opts)
            .await?;
        // Replicas starting together: sqlx's migrator takes `pg_advisory_lock` (keyed by the
        // database name) around the whole run (sqlx-postgres 0.8 `migrate.rs`, `lock()`),
        // so one replica applies the migrations while the others wait, then find them applied.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;

        // LISTEN before anything is read, so no change committed after `open` can be missed.
        let listener = listen(&pool).await?;
        let hub = new_hub();
        let events = new_event_hub();
        let task = tokio::spawn(run_listener(
            pool.clone(),
            listener,
            hub.clone(),
            events.clone(),
        ));
        Ok(Self {
            pool,
            instance,
            hub,
            events,
            _listener: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }

    /// Runs one store operation within [`OPERATION_TIMEOUT`].
    async fn bounded<T>(&self, op: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        tokio::time::timeout(OPERATION_TIMEOUT, op)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                )))
            })
    }

    /// Announces a change in the transaction that makes it: delivered on commit, never for
    /// a rolled-back change.
    async fn notify(&self, conn: &mut PgConnection, change: StoreChange) -> StoreResult<()> {
        let payload = serde_json::to_string(&Notice::new(&self.instance, change))
            .map_err(|e| StoreError::Data(e.to_string()))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    fn credential_changed(tenant: &str, id: &str) -> StoreChange {
        StoreChange::CredentialChanged {
            tenant: tenant.to_owned(),
            credential_id: id.to_owned(),
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn put_credential(&self, rec: &CredentialRecord) -> StoreResult<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            rows::upsert_credential(&mut *tx, rec).await?;
            self.notify(&mut tx, Self::credential_changed(&rec.tenant, &rec.id))
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn replace_credential_notifying(
        &self,
        rec: &CredentialRecord,
        refresh_token: Option<Option<&[u8]>>,
        notify: Notify<'_>,
    ) -> StoreResult<()> {
        self.bounded(async {
            let (tenant, id) = (rec.tenant.as_str(), rec.id.as_str());
            let mut tx = self.pool.begin().await?;
            let before: Option<String> = sqlx::query_scalar(
                "SELECT status FROM credentials WHERE tenant = $1 AND id = $2 FOR UPDATE",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            rows::upsert_credential(&mut *tx, rec).await?;
            rows::delete_all_tokens(&mut *tx, tenant, id).await?;
            match refresh_token {
                Some(Some(rt)) => {
                    rows::upsert_refresh_token(&mut *tx, tenant, id, rt, rec.updated_at_ms).await?
                }
                Some(None) => rows::delete_refresh_token(&mut *tx, tenant, id).await?,
                None => {}
            }
            for n in notify.written(before.as_deref() != Some(rec.status.as_str())) {
                outbox::fan_out(&mut *tx, n).await?;
            }
            self.notify(&mut tx, Self::credential_changed(tenant, id))
                .await?;
            let deleted = StoreChange::TokensDeleted {
                tenant: tenant.to_owned(),
                credential_id: id.to_owned(),
                scope_key: None,
            };
            self.notify(&mut tx, deleted).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn get_credential(
        &self,
        tenant: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        self.bounded(async {
            let row = sqlx::query("SELECT * FROM credentials WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(rows::credential_from_row).transpose()
        })
        .await
    }

    async fn list_credentials(&self) -> StoreResult<Vec<CredentialRecord>> {
        self.bounded(async {
            let rows = sqlx::query("SELECT * FROM credentials ORDER BY tenant, id")
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(rows::credential_from_row).collect()
        })
        .await
    }

    async fn delete_credential_notifying(
        &self,
        tenant: &str,
        id: &str,
        notify: Notify<'_>,
    ) -> StoreResult<bool> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let mut n = 0;
            for sql in rows::DELETE_CREDENTIAL {
                n = rows::delete_by_id(&mut *tx, sql, tenant, id).await?;
            }
            if n > 0 {
                for note in notify.always {
                    outbox::fan_out(&mut *tx, note).await?;
                }
            }
            self.notify(&mut tx, Self::credential_changed(tenant, id))
                .await?;
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_credential_status_notifying(
        &self,
        tenant: &str,
        id: &str,
        status: CredentialStatus,
        last_error: Option<&str>,
        now: UnixMillis,
        notify: Notify<'_>,
    ) -> StoreResult<bool> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let status = status.as_str();
            // A concurrent writer of the same transition waits for this row, then finds
            // the status set: only one of them changes it and announces it.
            let changed =
                outbox::set_status(&mut *tx, true, tenant, id, status, last_error, now).await?;
            if !changed {
                outbox::set_status(&mut *tx, false, tenant, id, status, last_error, now).await?;
            }
            for n in notify.written(changed) {
                outbox::fan_out(&mut *tx, n).await?;
            }
            self.notify(&mut tx, Self::credential_changed(tenant, id))
                .await?;
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }

    async fn get_refresh_token(&self, tenant: &str, id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT sealed FROM refresh_tokens WHERE tenant = $1 AND credential_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| r.try_get("sealed")).transpose()?)
        })
        .await
    }

    async fn refresh_token_written_at(
        &self,
        tenant: &str,
        id: &str,
    ) -> StoreResult<Option<UnixMillis>> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT updated_at_ms FROM refresh_tokens WHERE tenant = $1 AND credential_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| r.try_get("updated_at_ms")).transpose()?)
        })
        .await
    }

    async fn put_refresh_token(
        &self,
        tenant: &str,
        id: &str,
        sealed: Option<&[u8]>,
        now: UnixMillis,
    ) -> StoreResult<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            match sealed {
                Some(bytes) => rows::upsert_refresh_token(&mut *tx, tenant, id, bytes, now).await?,
                None => {
                    sqlx::query(
                        "DELETE FROM refresh_tokens WHERE tenant = $1 AND credential_id = $2",
                    )
                    .bind(tenant)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            self.notify(&mut tx, Self::credential_changed(tenant, id))
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn put_token(&self, rec: &TokenRecord) -> StoreResult<()> {
        self.bounded(async {
            let mut conn = self.pool.acquire().await?;
            rows::upsert_token(&mut *conn, rec).await
        })
        .await
    }

    async fn list_tokens(&self, now: UnixMillis) -> StoreResult<Vec<TokenRecord>> {
        self.bounded(async {
            let rows = sqlx::query("SELECT * FROM tokens WHERE expires_at_ms > $1")
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(rows::token_from_row).collect()
        })
        .await
    }

    async fn delete_tokens(
        &self,
        tenant: &str,
        id: &str,
        scope_key: Option<&str>,
    ) -> StoreResult<u64> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let n = match scope_key {
                Some(k) => sqlx::query(
                    "DELETE FROM tokens WHERE tenant = $1 AND credential_id = $2 AND scope_key = $3",
                )
                .bind(tenant)
                .bind(id)
                .bind(k)
                .execute(&mut *tx)
                .await?,
                None => {
                    sqlx::query("DELETE FROM tokens WHERE tenant = $1 AND credential_id = $2")
                        .bind(tenant)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                }
            }
            .rows_affected();
            // Announced even when nothing was stored: another replica may still hold the
            // token in memory (say, one it fetched while this store was unreachable).
            self.notify(
                &mut tx,
                StoreChange::TokensDeleted {
                    tenant: tenant.to_owned(),
                    credential_id: id.to_owned(),
                    scope_key: scope_key.map(str::to_owned),
                },
            )
            .await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    async fn get_token(
        &self,
        tenant: &str,
        id: &str,
        scope_key: &str,
    ) -> StoreResult<Option<TokenRecord>> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT * FROM tokens WHERE tenant = $1 AND credential_id = $2 AND scope_key = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(scope_key)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(rows::token_from_row).transpose()
        })
        .await
    }

    async fn acquire_refresh_lease(
        &self,
        tenant: &str,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<RefreshLease>> {
        // One statement. Two replicas racing for a free lease: the second waits on the row
        // (or the unique index) until the first commits, then re-checks the WHERE against
        // the row the first wrote, finds it held, and gets no row back.
        // A lease is free when it ran out, or when its holder has no session left (the
        // process was killed: PostgreSQL ends its sessions when the sockets close) and it
        // was taken more than the grace ago (its start estimated with this asker's ttl).
        let sql = format!(
            "INSERT INTO refresh_leases AS l (tenant, credential_id, holder, fence, expires_at_ms)
             VALUES ($1, $2, $3, 1, {NOW_MS} + $4)
             ON CONFLICT (tenant, credential_id) DO UPDATE SET holder = excluded.holder,
               fence = l.fence + 1, expires_at_ms = excluded.expires_at_ms
             WHERE l.expires_at_ms <= {NOW_MS}
               OR (l.expires_at_ms - $4 + {DEAD_HOLDER_GRACE_MS} <= {NOW_MS} AND NOT {HOLDER_IS_ALIVE})
             RETURNING fence, expires_at_ms"
        );
        self.bounded(async {
            let row = sqlx::query(&sql)
                .bind(tenant)
                .bind(id)
                .bind(holder)
                .bind(ttl.as_millis() as i64)
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| {
                Ok(RefreshLease {
                    fence: r.try_get("fence")?,
                    expires_at_ms: r.try_get("expires_at_ms")?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn release_refresh_lease(&self, tenant: &str, id: &str, fence: i64) -> StoreResult<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let n = sqlx::query(
                "UPDATE refresh_leases SET expires_at_ms = 0 WHERE tenant = $1 AND credential_id = $2 AND fence = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(fence)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                self.notify(
                    &mut tx,
                    StoreChange::LeaseReleased {
                        tenant: tenant.to_owned(),
                        credential_id: id.to_owned(),
                    },
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn commit_refresh(
        &self,
        tenant: &str,
        id: &str,
        fence: i64,
        refresh_token: Option<&[u8]>,
        token: Option<&TokenRecord>,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            // The row lock keeps the lease from being granted anew until this commits, so
            // the fence checked here is still the current one when the writes land.
            let current: Option<i64> = sqlx::query_scalar(
                "SELECT fence FROM refresh_leases WHERE tenant = $1 AND credential_id = $2 FOR UPDATE",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if current != Some(fence) {
                tx.rollback().await?;
                return Ok(false);
            }
            if let Some(rt) = refresh_token {
                rows::upsert_refresh_token(&mut *tx, tenant, id, rt, now).await?;
            }
            if let Some(rec) = token {
                rows::upsert_token(&mut *tx, rec).await?;
                // Adoption elsewhere is an optimization: a key too long for a NOTIFY
                // payload is adopted when those replicas next refresh.
                if rec.scope_key.len() <= super::changes::MAX_SCOPE_KEY_IN_NOTICE {
                    let stored = StoreChange::TokenStored {
                        tenant: tenant.to_owned(),
                        credential_id: id.to_owned(),
                        scope_key: rec.scope_key.clone(),
                    };
                    self.notify(&mut tx, stored).await?;
                }
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    fn instance_id(&self) -> &str {
        &self.instance
    }

    fn subscribe(&self) -> ChangeStream {
        ChangeStream::new(&self.hub, self.instance.clone())
    }

    async fn append_event(&self, ev: &EventRecord) -> StoreResult<i64> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            // Ids in commit order (see EVENTS_APPEND_LOCK).
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(EVENTS_APPEND_LOCK)
                .execute(&mut *tx)
                .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO events (tenant, credential_id, kind, occurred_at_ms, caller, message, http)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(&ev.tenant)
            .bind(&ev.credential_id)
            .bind(&ev.kind)
            .bind(ev.occurred_at_ms)
            .bind(&ev.caller)
            .bind(&ev.message)
            .bind(&ev.http)
            .fetch_one(&mut *tx)
            .await?;
            let payload = serde_json::to_string(&EventAppended {
                tenant: ev.tenant.clone(),
                credential_id: ev.credential_id.clone(),
                id,
            })
            .map_err(|e| StoreError::Data(e.to_string()))?;
            // Delivered on commit to every replica's listener, this one's included.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    async fn events_after(
        &self,
        q: &EventQuery,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        self.bounded(async {
            let rows = rows::events_after_query::<Postgres>(q, after_id, limit)
                .build()
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(rows::event_from_row).collect()
        })
        .await
    }

    async fn last_event_id(&self) -> StoreResult<i64> {
        self.bounded(async {
            Ok(
                sqlx::query_scalar("SELECT COALESCE(MAX(id), 0)::bigint FROM events")
                    .fetch_one(&self.pool)
                    .await?,
            )
        })
        .await
    }

    fn subscribe_events(&self) -> EventFeed {
        EventFeed::new(&self.events)
    }

    async fn list_events(&self, q: &EventQuery) -> StoreResult<Vec<EventRecord>> {
        self.bounded(async {
            let mut qb: QueryBuilder<Postgres> =
                QueryBuilder::new("SELECT * FROM events WHERE tenant = ");
            qb.push_bind(&q.tenant);
            if let Some(c) = &q.credential_id {
                qb.push(" AND credential_id = ").push_bind(c);
            }
            if let Some(s) = q.since_ms {
                qb.push(" AND occurred_at_ms >= ").push_bind(s);
            }
            if let Some(u) = q.until_ms {
                qb.push(" AND occurred_at_ms < ").push_bind(u);
            }
            if !q.kinds.is_empty() {
                qb.push(" AND kind IN (");
                let mut sep = qb.separated(", ");
                for k in &q.kinds {
                    sep.push_bind(k);
                }
                qb.push(")");
            }
            if let Some((at, id)) = q.before {
                qb.push(" AND (occurred_at_ms < ")
                    .push_bind(at)
                    .push(" OR (occurred_at_ms = ")
                    .push_bind(at)
                    .push(" AND id < ")
                    .push_bind(id)
                    .push("))");
            }
            qb.push(" ORDER BY occurred_at_ms DESC, id DESC LIMIT ")
                .push_bind(i64::from(q.limit));
            let rows = qb.build().fetch_all(&self.pool).await?;
            rows.iter().map(rows::event_from_row).collect()
        })
        .await
    }

    async fn purge_events(&self, before: UnixMillis) -> StoreResult<u64> {
        self.bounded(async {
            let res = sqlx::query("DELETE FROM events WHERE occurred_at_ms < $1")
                .bind(before)
                .execute(&self.pool)
                .await?;
            Ok(res.rows_affected())
        })
        .await
    }
}
