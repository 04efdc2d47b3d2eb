//! The embedded default backend: one SQLite file (bundled libsqlite3), WAL journal and
//! `synchronous=FULL`, so a refresh token is on disk before the token it came with is used.
//!
//! Refresh leases live in the file like everything else, so they work between processes
//! too; change notifications reach the handles of the same file in this process only (see
//! [`changes`](super::changes)): SQLite is for one authgate process, PostgreSQL for several.

use super::changes::{
    new_instance_id, process_event_hub, process_hub, EventAppended, EventHub, EventSignal, Hub,
    Notice,
};
use super::outbox;
use super::*;

mod webhooks;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    instance: Arc<str>,
    hub: Arc<Hub>,
    /// Announcements of appended events, shared like `hub`.
    events: Arc<EventHub>,
    /// This process's exclusive lock on the file, shared by its handles.
    _lock: Option<Arc<std::fs::File>>,
}

/// The lock each database file's handles in this process share; remembered weakly, so it is
/// released when the last handle goes.
static FILE_LOCKS: std::sync::LazyLock<
    parking_lot::Mutex<
        std::collections::HashMap<std::path::PathBuf, std::sync::Weak<std::fs::File>>,
    >,
> = std::sync::LazyLock::new(Default::default);

/// Takes the process's exclusive lock on `db` (`<db>.lock`, via `flock`), or joins the one
/// this process already holds. `true` when it was just taken: no handle of this process had
/// the file open, and no other process can, so every refresh lease in it is a dead
/// process's.
fn lock_file(db: &std::path::Path) -> StoreResult<(Arc<std::fs::File>, bool)> {
    let mut locks = FILE_LOCKS.lock();
    locks.retain(|_, l| l.strong_count() > 0);
    if let Some(l) = locks.get(db).and_then(std::sync::Weak::upgrade) {
        return Ok((l, false));
    }
    let path = std::path::PathBuf::from(format!("{}.lock", db.display()));
    let file = private_file(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StoreError::Unavailable(format!(
                "another process has {} open (it holds {}): the SQLite store serves one authgate \
                 process; stop the other one, or use PostgreSQL for several replicas",
                db.display(),
                path.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::Unavailable(format!(
                "cannot lock {}: {e}",
                path.display()
            )))
        }
    }
    let file = Arc::new(file);
    locks.insert(db.to_owned(), Arc::downgrade(&file));
    Ok((file, true))
}

/// Opens (creating it mode 0600 if needed) a file only this user may read: the database
/// holds sealed secrets, and SQLite gives its WAL and shared-memory files the database
/// file's mode.
fn private_file(path: &std::path::Path) -> StoreResult<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))
}

/// The store's clock in SQL: Unix milliseconds. Lease expiry is judged by it, as PostgreSQL
/// judges it by the server's clock.
const NOW_MS: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// Frees the refresh leases (and webhook claims) a previous process left behind (killed
/// mid-refresh), so a restart refreshes at once instead of waiting for them to expire. Fences stay: a write
/// under an old fence is still refused.
async fn clear_dead_leases(pool: &SqlitePool) -> StoreResult<()> {
    let cleared = sqlx::query(&format!(
        "UPDATE refresh_leases SET expires_at_ms = 0 WHERE expires_at_ms > {NOW_MS}"
    ))
    .execute(pool)
    .await?
    .rows_affected();
    if cleared > 0 {
        tracing::warn!(
            cleared,
            "freed refresh leases left by a previous process that did not stop cleanly"
        );
    }
    // Its webhook claims too: what it was sending when it died is sent again now.
    sqlx::query(
        "UPDATE webhook_outbox SET claimed_by = NULL, claim_until_ms = 0 WHERE state = 'pending' AND claimed_by IS NOT NULL",
    )
    .execute(pool)
    .await?;
    Ok(())
}

impl SqliteStore {
    pub async fn open(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?;
        let file = opts.get_filename().to_owned();
        let in_memory = file.to_str() == Some(":memory:");
        let lock = if in_memory {
            None
        } else {
            private_file(&file)?;
            let canonical = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            Some(lock_file(&canonical)?)
        };
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Writers queue instead of failing while another connection holds the lock.
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A store call that cannot get a connection soon is reported as unavailable
            // instead of hanging the caller.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        if let Some((_, true)) = &lock {
            clear_dead_leases(&pool).await?;
        }
        // Handles of the same file share a hub; the file exists now, so its canonical path
        // names it however the URL spelled it. An in-memory database is private to its pool.
        let hub_key = match std::fs::canonicalize(&file) {
            Ok(p) if file.to_str() != Some(":memory:") => p.display().to_string(),
            _ => format!("memory:{}", new_instance_id()),
        };
        Ok(Self {
            pool,
            instance: new_instance_id(),
            hub: process_hub(&hub_key),
            events: process_event_hub(&hub_key),
            _lock: lock.map(|(l, _)| l),
        })
    }

    /// Tells the other handles of this file about a committed change.
    fn announce(&self, change: StoreChange) {
        // No receiver is fine: nobody else has the file open.
        let _ = self.hub.send(Arc::new(Notice::new(&self.instance, change)));
    }

    fn credential_changed(&self, tenant: &str, id: &str) {
        self.announce(StoreChange::CredentialChanged {
            tenant: tenant.to_owned(),
            credential_id: id.to_owned(),
        });
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_credential(&self, rec: &CredentialRecord) -> StoreResult<()> {
        rows::upsert_credential(&self.pool, rec).await?;
        self.credential_changed(&rec.tenant, &rec.id);
        Ok(())
    }

    async fn replace_credential_notifying(
        &self,
        rec: &CredentialRecord,
        refresh_token: Option<Option<&[u8]>>,
        notify: Notify<'_>,
    ) -> StoreResult<()> {
        // Read before the transaction: a deferred transaction that reads first cannot take
        // the write lock while another connection writes (SQLITE_BUSY at once, no busy
        // wait). One process owns the file, so no other writer changes the status between.
        let before: Option<String> =
            sqlx::query_scalar("SELECT status FROM credentials WHERE tenant = ? AND id = ?")
                .bind(&rec.tenant)
                .bind(&rec.id)
                .fetch_optional(&self.pool)
                .await?;
        let mut tx = self.pool.begin().await?;
        rows::upsert_credential(&mut *tx, rec).await?;
        rows::delete_all_tokens(&mut *tx, &rec.tenant, &rec.id).await?;
        match refresh_token {
            Some(Some(rt)) => {
                rows::upsert_refresh_token(&mut *tx, &rec.tenant, &rec.id, rt, rec.updated_at_ms)
                    .await?
            }
            Some(None) => rows::delete_refresh_token(&mut *tx, &rec.tenant, &rec.id).await?,
            None => {}
        }
        let status_changed = before.as_deref() != Some(rec.status.as_str());
        for n in notify.written(status_changed) {
            outbox::fan_out(&mut *tx, n).await?;
        }
        tx.commit().await?;
        self.credential_changed(&rec.tenant, &rec.id);
        self.announce(StoreChange::TokensDeleted {
            tenant: rec.tenant.clone(),
            credential_id: rec.id.clone(),
            scope_key: None,
        });
        Ok(())
    }

    async fn get_credential(
        &self,
        tenant: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        let row = sqlx::query("SELECT * FROM credentials WHERE tenant = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::credential_from_row).transpose()
    }

    async fn list_credentials(&self) -> StoreResult<Vec<CredentialRecord>> {
        let rows = sqlx::query("SELECT * FROM credentials ORDER BY tenant, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::credential_from_row).collect()
    }

    async fn delete_credential_notifying(
        &self,
        tenant: &str,
        id: &str,
        notify: Notify<'_>,
    ) -> StoreResult<bool> {
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
        tx.commit().await?;
        self.credential_changed(tenant, id);
        Ok(n > 0)
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
        let mut tx = self.pool.begin().await?;
        let status = status.as_str();
        let changed =
            outbox::set_status(&mut *tx, true, tenant, id, status, last_error, now).await?;
        if !changed {
            outbox::set_status(&mut *tx, false, tenant, id, status, last_error, now).await?;
        }
        for n in notify.written(changed) {
            outbox::fan_out(&mut *tx, n).await?;
        }
        tx.commit().await?;
        self.credential_changed(tenant, id);
        Ok(changed)
    }

    async fn get_refresh_token(&self, tenant: &str, id: &str) -> StoreResult<Option<Vec<u8>>> {
        let row =
            sqlx::query("SELECT sealed FROM refresh_tokens WHERE tenant = ? AND credential_id = ?")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("sealed")).transpose()?)
    }

    async fn refresh_token_written_at(
        &self,
        tenant: &str,
        id: &str,
    ) -> StoreResult<Option<UnixMillis>> {
        let row = sqlx::query(
            "SELECT updated_at_ms FROM refresh_tokens WHERE tenant = ? AND credential_id = ?",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("updated_at_ms")).transpose()?)
    }

    async fn put_refresh_token(
        &self,
        tenant: &str,
        id: &str,
        sealed: Option<&[u8]>,
        now: UnixMillis,
    ) -> StoreResult<()> {
        match sealed {
            Some(bytes) => {
                let mut conn = self.pool.acquire().await?;
                rows::upsert_refresh_token(&mut *conn, tenant, id, bytes, now).await?;
            }
            None => {
                sqlx::query("DELETE FROM refresh_tokens WHERE tenant = ? AND credential_id = ?")
                    .bind(tenant)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        self.credential_changed(tenant, id);
        Ok(())
    }

    async fn put_token(&self, rec: &TokenRecord) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        rows::upsert_token(&mut *conn, rec).await
    }

    async fn list_tokens(&self, now: UnixMillis) -> StoreResult<Vec<TokenRecord>> {
        let rows = sqlx::query("SELECT * FROM tokens WHERE expires_at_ms > ?")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::token_from_row).collect()
    }

    async fn delete_tokens(
        &self,
        tenant: &str,
        id: &str,
        scope_key: Option<&str>,
    ) -> StoreResult<u64> {
        let res =
            match scope_key {
                Some(k) => sqlx::query(
                    "DELETE FROM tokens WHERE tenant = ? AND credential_id = ? AND scope_key = ?",
                )
                .bind(tenant)
                .bind(id)
                .bind(k)
                .execute(&self.pool)
                .await?,
                None => {
                    sqlx::query("DELETE FROM tokens WHERE tenant = ? AND credential_id = ?")
                        .bind(tenant)
                        .bind(id)
                        .execute(&self.pool)
                        .await?
                }
            };
        self.announce(StoreChange::TokensDeleted {
            tenant: tenant.to_owned(),
            credential_id: id.to_owned(),
            scope_key: scope_key.map(str::to_owned),
        });
        Ok(res.rows_affected())
    }

    async fn get_token(
        &self,
        tenant: &str,
        id: &str,
        scope_key: &str,
    ) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT * FROM tokens WHERE tenant = ? AND credential_id = ? AND scope_key = ?",
        )
        .bind(tenant)
        .bind(id)
        .bind(scope_key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::token_from_row).transpose()
    }

    async fn acquire_refresh_lease(
        &self,
        tenant: &str,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<RefreshLease>> {
        // One statement: SQLite runs it under the database write lock, so two handles
        // (or processes) cannot both see the lease free.
        let sql = format!(
            "INSERT INTO refresh_leases AS l (tenant, credential_id, holder, fence, expires_at_ms)
             VALUES (?, ?, ?, 1, {NOW_MS} + ?)
             ON CONFLICT (tenant, credential_id) DO UPDATE SET holder = excluded.holder,
               fence = l.fence + 1, expires_at_ms = excluded.expires_at_ms
             WHERE l.expires_at_ms <= {NOW_MS}
             RETURNING fence, expires_at_ms"
        );
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
    }

    async fn release_refresh_lease(&self, tenant: &str, id: &str, fence: i64) -> StoreResult<()> {
        let n = sqlx::query(
            "UPDATE refresh_leases SET expires_at_ms = 0 WHERE tenant = ? AND credential_id = ? AND fence = ?",
        )
        .bind(tenant)
        .bind(id)
        .bind(fence)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n > 0 {
            self.announce(StoreChange::LeaseReleased {
                tenant: tenant.to_owned(),
                credential_id: id.to_owned(),
            });
        }
        Ok(())
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
        let mut tx = self.pool.begin().await?;
        // A write first, so this transaction holds the write lock from here on: nobody can
        // grant the lease anew between this check and the commit.
        let current = sqlx::query(
            "UPDATE refresh_leases SET fence = fence WHERE tenant = ? AND credential_id = ? AND fence = ?",
        )
        .bind(tenant)
        .bind(id)
        .bind(fence)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if current == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(rt) = refresh_token {
            rows::upsert_refresh_token(&mut *tx, tenant, id, rt, now).await?;
        }
        if let Some(rec) = token {
            rows::upsert_token(&mut *tx, rec).await?;
        }
        tx.commit().await?;
        if let Some(rec) = token {
            self.announce(StoreChange::TokenStored {
                tenant: tenant.to_owned(),
                credential_id: id.to_owned(),
                scope_key: rec.scope_key.clone(),
            });
        }
        Ok(true)
    }

    fn instance_id(&self) -> &str {
        &self.instance
    }

    fn subscribe(&self) -> ChangeStream {
        ChangeStream::new(&self.hub, self.instance.clone())
    }

    async fn append_event(&self, ev: &EventRecord) -> StoreResult<i64> {
        let res = sqlx::query(
            "INSERT INTO events (tenant, credential_id, kind, occurred_at_ms, caller, message, http) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&ev.tenant)
        .bind(&ev.credential_id)
        .bind(&ev.kind)
        .bind(ev.occurred_at_ms)
        .bind(&ev.caller)
        .bind(&ev.message)
        .bind(&ev.http)
        .execute(&self.pool)
        .await?;
        let id = res.last_insert_rowid();
        // Committed: SQLite has one writer, so ids become visible in increasing order.
        let _ = self
            .events
            .send(EventSignal::Appended(Arc::new(EventAppended {
                tenant: ev.tenant.clone(),
                credential_id: ev.credential_id.clone(),
                id,
            })));
        Ok(id)
    }

    async fn events_after(
        &self,
        q: &EventQuery,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let rows = rows::events_after_query::<Sqlite>(q, after_id, limit)
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::event_from_row).collect()
    }

    async fn last_event_id(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    fn subscribe_events(&self) -> EventFeed {
        EventFeed::new(&self.events)
    }

    async fn list_events(&self, q: &EventQuery) -> StoreResult<Vec<EventRecord>> {
        let mut qb: QueryBuilder<Sqlite> =
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
    }

    async fn purge_events(&self, before: UnixMillis) -> StoreResult<u64> {
        let res = sqlx::query("DELETE FROM events WHERE occurred_at_ms < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }
}
