//! Row mapping and upserts shared by the SQLite and PostgreSQL backends: both schemas have
//! the same tables and columns, so a record is read from a row and written by a statement
//! in exactly one place. The SQL uses `$n` placeholders, which both databases accept.

use super::{
    CredentialRecord, CredentialSource, CredentialStatus, EventQuery, EventRecord, StoreError,
    StoreResult, TokenRecord,
};
use crate::clock::UnixMillis;
use sqlx::{Database, Encode, Executor, QueryBuilder, Row, Type};

/// Typed column access over either backend's row type.
pub(super) trait Columns {
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>>;
    fn int(&self, col: &str) -> StoreResult<i64>;
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, col: &str) -> StoreResult<String> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
                Ok(self.try_get(col)?)
            }
            fn bytes(&self, col: &str) -> StoreResult<Vec<u8>> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> StoreResult<i64> {
                Ok(self.try_get(col)?)
            }
        }
    };
}

columns_for!(sqlx::sqlite::SqliteRow);
columns_for!(sqlx::postgres::PgRow);

fn data_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Data(format!("{what}: {e}"))
}

/// A row's `source` column (`config` or `api`).
pub(super) fn source_from_row(row: &impl Columns) -> StoreResult<CredentialSource> {
    let source = row.text("source")?;
    CredentialSource::parse(&source)
        .ok_or_else(|| StoreError::Data(format!("unknown source `{source}`")))
}

/// The statements that delete a credential: its tokens, refresh token, events and row
/// (the last one's count says whether there was one).
pub(super) const DELETE_CREDENTIAL: [&str; 4] = [
    "DELETE FROM tokens WHERE tenant = $1 AND credential_id = $2",
    "DELETE FROM refresh_tokens WHERE tenant = $1 AND credential_id = $2",
    "DELETE FROM events WHERE tenant = $1 AND credential_id = $2",
    "DELETE FROM credentials WHERE tenant = $1 AND id = $2",
];

pub(super) fn credential_from_row(row: &impl Columns) -> StoreResult<CredentialRecord> {
    let status = row.text("status")?;
    Ok(CredentialRecord {
        tenant: row.text("tenant")?,
        id: row.text("id")?,
        provider: row.text("provider")?,
        settings_sealed: row.bytes("settings_sealed")?,
        settings_digest: row.text("settings_digest")?,
        status: CredentialStatus::parse(&status)
            .ok_or_else(|| StoreError::Data(format!("unknown credential status `{status}`")))?,
        last_error: row.opt_text("last_error")?,
        source: source_from_row(row)?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

pub(super) fn token_from_row(row: &impl Columns) -> StoreResult<TokenRecord> {
    let scopes = row.text("scopes")?;
    let metadata = row.text("metadata")?;
    Ok(TokenRecord {
        tenant: row.text("tenant")?,
        credential_id: row.text("credential_id")?,
        scope_key: row.text("scope_key")?,
        access_sealed: row.bytes("access_sealed")?,
        token_type: row.text("token_type")?,
        expires_at_ms: row.int("expires_at_ms")?,
        issued_at_ms: row.int("issued_at_ms")?,
        scopes: serde_json::from_str(&scopes).map_err(|e| data_error("token scopes", e))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| data_error("token metadata", e))?,
    })
}

pub(super) fn event_from_row(row: &impl Columns) -> StoreResult<EventRecord> {
    Ok(EventRecord {
        id: row.int("id")?,
        tenant: row.text("tenant")?,
        credential_id: row.text("credential_id")?,
        kind: row.text("kind")?,
        occurred_at_ms: row.int("occurred_at_ms")?,
        caller: row.opt_text("caller")?,
        message: row.text("message")?,
        http: row.opt_text("http")?,
    })
}

/// The events of `q`'s tenant (credential, kinds) with an id above `after_id`, ascending
/// by id: the primary key, so the read is an index range whatever the filter.
pub(super) fn events_after_query<'a, DB>(
    q: &'a EventQuery,
    after_id: i64,
    limit: u32,
) -> QueryBuilder<'a, DB>
where
    DB: Database,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
    <DB as Database>::Arguments<'a>: Default,
{
    let mut qb = QueryBuilder::new("SELECT * FROM events WHERE id > ");
    qb.push_bind(after_id).push(" AND tenant = ");
    qb.push_bind(q.tenant.as_str());
    if let Some(c) = &q.credential_id {
        qb.push(" AND credential_id = ").push_bind(c.as_str());
    }
    if !q.kinds.is_empty() {
        qb.push(" AND kind IN (");
        let mut sep = qb.separated(", ");
        for k in &q.kinds {
            sep.push_bind(k.as_str());
        }
        qb.push(")");
    }
    qb.push(" ORDER BY id ASC LIMIT ")
        .push_bind(i64::from(limit));
    qb
}

const UPSERT_CREDENTIAL: &str = "INSERT INTO credentials (tenant, id, provider, settings_sealed, settings_digest, status, last_error, source, created_at_ms, updated_at_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (tenant, id) DO UPDATE SET provider = excluded.provider,
       settings_sealed = excluded.settings_sealed, settings_digest = excluded.settings_digest,
       status = excluded.status, last_error = excluded.last_error, source = excluded.source,
       updated_at_ms = excluded.updated_at_ms";

const UPSERT_REFRESH_TOKEN: &str = "INSERT INTO refresh_tokens (tenant, credential_id, sealed, updated_at_ms) VALUES ($1, $2, $3, $4)
     ON CONFLICT (tenant, credential_id) DO UPDATE SET sealed = excluded.sealed, updated_at_ms = excluded.updated_at_ms";

const UPSERT_TOKEN: &str = "INSERT INTO tokens (tenant, credential_id, scope_key, access_sealed, token_type, expires_at_ms, issued_at_ms, scopes, metadata)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (tenant, credential_id, scope_key) DO UPDATE SET access_sealed = excluded.access_sealed,
       token_type = excluded.token_type, expires_at_ms = excluded.expires_at_ms,
       issued_at_ms = excluded.issued_at_ms, scopes = excluded.scopes, metadata = excluded.metadata";

/// Both backends' query results, for the count of deleted rows.
pub(super) trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// Declares backend-generic statement functions with the bounds every one of them needs,
/// written once: the database binds strings, bytes and integers, and counts rows.
macro_rules! generic_over_backends {
    ($($(#[$meta:meta])* pub(super) async fn $name:ident<'e, DB, E>($($args:tt)*) -> $ret:ty $body:block)*) => {
        $(
            $(#[$meta])*
            pub(super) async fn $name<'e, DB, E>($($args)*) -> $ret
            where
                DB: Database,
                E: Executor<'e, Database = DB>,
                for<'q> &'q str: Encode<'q, DB> + Type<DB>,
                for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
                for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
                for<'q> String: Encode<'q, DB> + Type<DB>,
                for<'q> i64: Encode<'q, DB> + Type<DB>,
                for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
                for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
                <DB as Database>::QueryResult: RowsAffected,
            $body
        )*
    };
}

pub(super) use generic_over_backends;

generic_over_backends! {
    /// Creates or replaces a credential row (keeps `created_at_ms` of an existing one).
    pub(super) async fn upsert_credential<'e, DB, E>(conn: E, rec: &CredentialRecord) -> StoreResult<()> {
        sqlx::query::<DB>(UPSERT_CREDENTIAL)
            .bind(rec.tenant.as_str())
            .bind(rec.id.as_str())
            .bind(rec.provider.as_str())
            .bind(rec.settings_sealed.as_slice())
            .bind(rec.settings_digest.as_str())
            .bind(rec.status.as_str())
            .bind(rec.last_error.as_deref())
            .bind(rec.source.as_str())
            .bind(rec.created_at_ms)
            .bind(rec.updated_at_ms)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Runs `sql`, a deletion by tenant (`$1`) and id (`$2`); how many rows went.
    pub(super) async fn delete_by_id<'e, DB, E>(
        conn: E,
        sql: &str,
        tenant: &str,
        id: &str,
    ) -> StoreResult<u64> {
        let done = sqlx::query::<DB>(sql).bind(tenant).bind(id).execute(conn).await?;
        Ok(done.rows())
    }

    /// Deletes every token of a credential.
    pub(super) async fn delete_all_tokens<'e, DB, E>(
        conn: E,
        tenant: &str,
        id: &str,
    ) -> StoreResult<u64> {
        let done = sqlx::query::<DB>("DELETE FROM tokens WHERE tenant = $1 AND credential_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(conn)
            .await?;
        Ok(done.rows())
    }

    /// Deletes a credential's refresh token.
    pub(super) async fn delete_refresh_token<'e, DB, E>(
        conn: E,
        tenant: &str,
        id: &str,
    ) -> StoreResult<()> {
        sqlx::query::<DB>("DELETE FROM refresh_tokens WHERE tenant = $1 AND credential_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Creates or replaces a credential's refresh token row.
    pub(super) async fn upsert_refresh_token<'e, DB, E>(
        conn: E,
        tenant: &str,
        id: &str,
        sealed: &[u8],
        now: UnixMillis,
    ) -> StoreResult<()> {
        sqlx::query::<DB>(UPSERT_REFRESH_TOKEN)
            .bind(tenant)
            .bind(id)
            .bind(sealed)
            .bind(now)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Creates or replaces the stored token of one cache key.
    pub(super) async fn upsert_token<'e, DB, E>(conn: E, rec: &TokenRecord) -> StoreResult<()> {
        let scopes = serde_json::to_string(&rec.scopes).map_err(|e| data_error("token scopes", e))?;
        let metadata =
            serde_json::to_string(&rec.metadata).map_err(|e| data_error("token metadata", e))?;
        sqlx::query::<DB>(UPSERT_TOKEN)
            .bind(rec.tenant.as_str())
            .bind(rec.credential_id.as_str())
            .bind(rec.scope_key.as_str())
            .bind(rec.access_sealed.as_slice())
            .bind(rec.token_type.as_str())
            .bind(rec.expires_at_ms)
            .bind(rec.issued_at_ms)
            .bind(scopes)
            .bind(metadata)
            .execute(conn)
            .await?;
        Ok(())
    }
}
