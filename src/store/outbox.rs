//! The webhook tables and the outbox, written once for both backends (the SQL uses `$n`
//! placeholders in ascending order, which both accept): a notification is fanned out to
//! its subscribers in the transaction of the change it reports, claimed by one replica at a
//! time, and finished as delivered, retried later or failed.

use super::rows::{generic_over_backends, source_from_row, Columns, RowsAffected};
use super::{Delivery, DeliveryOutcome, Notification, StoreResult, WebhookRecord};
use crate::clock::UnixMillis;
use sqlx::{Database, Encode, Executor, Type};

const STATE_PENDING: &str = "pending";
const STATE_DELIVERED: &str = "delivered";
const STATE_FAILED: &str = "failed";

/// One row per subscribed webhook: a webhook subscribes to named types or to `*`, never
/// both (see `webhooks::Subscription`), so no webhook gets a notification twice.
const FAN_OUT: &str = "INSERT INTO webhook_outbox (tenant, webhook_id, message_id, kind, credential_id, payload, created_at_ms, state, attempts, next_attempt_at_ms, claimed_by, claim_until_ms)
     SELECT k.tenant, k.webhook_id, $1, $2, $3, $4, $5, 'pending', 0, $6, NULL, 0
     FROM webhook_kinds k WHERE k.tenant = $7 AND (k.kind = $8 OR k.kind = '*')";

const UPSERT_WEBHOOK: &str = "INSERT INTO webhooks (tenant, id, url, secret_sealed, source, created_at_ms, updated_at_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (tenant, id) DO UPDATE SET url = excluded.url, secret_sealed = excluded.secret_sealed,
       source = excluded.source, updated_at_ms = excluded.updated_at_ms";

/// One tenant's webhooks (`$1`, `$2`: the tenant), or all with NULL; their types come from
/// [`WEBHOOK_KINDS`].
pub(super) const LIST_WEBHOOKS: &str =
    "SELECT w.tenant, w.id, w.url, w.secret_sealed, w.source, w.created_at_ms, w.updated_at_ms
     FROM webhooks w WHERE ($1 IS NULL OR w.tenant = $2) ORDER BY w.tenant, w.id";

pub(super) const WEBHOOK_KINDS: &str =
    "SELECT tenant, webhook_id, kind FROM webhook_kinds ORDER BY tenant, webhook_id, kind";

/// Claims due rows; `{lock}` is PostgreSQL's `FOR UPDATE SKIP LOCKED` (SQLite has one
/// writer), `{dead}` a condition under which a claim that has not expired is free anyway
/// (PostgreSQL: its holder has no session left). The outer conditions are checked again on
/// the locked row, so a row another replica claimed meanwhile is not taken.
pub(super) fn claim_sql(lock: &str, dead: &str) -> String {
    format!(
        "UPDATE webhook_outbox SET claimed_by = $1, claim_until_ms = $2
         WHERE id IN (SELECT id FROM webhook_outbox
                      WHERE state = 'pending' AND next_attempt_at_ms <= $3
                        AND (claim_until_ms <= $4{dead})
                      ORDER BY id LIMIT $5{lock})
           AND state = 'pending' AND (claim_until_ms <= $6{dead})"
    )
}

/// The rows a claim took (the holder's claims end at a time it never reuses).
pub(super) const CLAIMED: &str =
    "SELECT o.id, o.tenant, o.webhook_id, o.message_id, o.kind, o.credential_id, o.payload,
       o.created_at_ms, o.attempts, w.url, w.secret_sealed, w.source
     FROM webhook_outbox o JOIN webhooks w ON w.tenant = o.tenant AND w.id = o.webhook_id
     WHERE o.claimed_by = $1 AND o.claim_until_ms = $2 AND o.state = 'pending'
     ORDER BY o.id";

const FINISH: &str =
    "UPDATE webhook_outbox SET state = $1, attempts = attempts + 1, next_attempt_at_ms = $2,
       last_error = $3, finished_at_ms = $4, claimed_by = NULL, claim_until_ms = 0
     WHERE id = $5 AND claimed_by = $6";

pub(super) const PENDING_STATS: &str =
    "SELECT COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM webhook_outbox WHERE state = 'pending'";
pub(super) const FAILED_COUNT: &str =
    "SELECT COUNT(*) AS n FROM webhook_outbox WHERE state = 'failed'";

/// Webhook rows ([`LIST_WEBHOOKS`]) with their types ([`WEBHOOK_KINDS`] rows).
pub(super) fn webhooks_from_rows(
    rows: &[impl Columns],
    kinds: Vec<(String, String, String)>,
) -> StoreResult<Vec<WebhookRecord>> {
    let mut kinds = kinds_by_webhook(kinds);
    rows.iter()
        .map(|r| {
            let key = (r.text("tenant")?, r.text("id")?);
            webhook_from_row(r, kinds.remove(&key).unwrap_or_default())
        })
        .collect()
}

fn webhook_from_row(row: &impl Columns, kinds: Vec<String>) -> StoreResult<WebhookRecord> {
    Ok(WebhookRecord {
        tenant: row.text("tenant")?,
        id: row.text("id")?,
        url: row.text("url")?,
        kinds,
        secret_sealed: row.bytes("secret_sealed")?,
        source: source_from_row(row)?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

pub(super) fn delivery_from_row(row: &impl Columns) -> StoreResult<Delivery> {
    Ok(Delivery {
        id: row.int("id")?,
        tenant: row.text("tenant")?,
        webhook_id: row.text("webhook_id")?,
        message_id: row.text("message_id")?,
        kind: row.text("kind")?,
        credential_id: row.text("credential_id")?,
        payload: row.text("payload")?,
        created_at_ms: row.int("created_at_ms")?,
        attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
        url: row.text("url")?,
        secret_sealed: row.bytes("secret_sealed")?,
        source: source_from_row(row)?,
    })
}

/// Groups `(tenant, webhook_id, kind)` rows by webhook.
fn kinds_by_webhook(
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> std::collections::HashMap<(String, String), Vec<String>> {
    let mut out: std::collections::HashMap<(String, String), Vec<String>> = Default::default();
    for (tenant, id, kind) in rows {
        out.entry((tenant, id)).or_default().push(kind);
    }
    out
}

/// The state, next attempt time, error and finish time an outcome writes.
fn finish_columns(
    outcome: &DeliveryOutcome,
    now: UnixMillis,
) -> (&'static str, UnixMillis, Option<&str>, Option<UnixMillis>) {
    match outcome {
        DeliveryOutcome::Delivered => (STATE_DELIVERED, now, None, Some(now)),
        DeliveryOutcome::Retry {
            next_attempt_at_ms,
            error,
        } => (STATE_PENDING, *next_attempt_at_ms, Some(error), None),
        DeliveryOutcome::Failed { error } => (STATE_FAILED, now, Some(error), Some(now)),
    }
}

generic_over_backends! {
    /// Queues `n` for every webhook of its tenant subscribed to its type.
    pub(super) async fn fan_out<'e, DB, E>(conn: E, n: &Notification) -> StoreResult<u64> {
        let done = sqlx::query::<DB>(FAN_OUT)
            .bind(n.message_id.as_str())
            .bind(n.kind.as_str())
            .bind(n.credential_id.as_str())
            .bind(n.payload.as_str())
            .bind(n.created_at_ms)
            .bind(n.created_at_ms)
            .bind(n.tenant.as_str())
            .bind(n.kind.as_str())
            .execute(conn)
            .await?;
        Ok(done.rows())
    }

    /// Creates or replaces a webhook's row (not its types).
    pub(super) async fn upsert_webhook<'e, DB, E>(conn: E, rec: &WebhookRecord) -> StoreResult<()> {
        sqlx::query::<DB>(UPSERT_WEBHOOK)
            .bind(rec.tenant.as_str())
            .bind(rec.id.as_str())
            .bind(rec.url.as_str())
            .bind(rec.secret_sealed.as_slice())
            .bind(rec.source.as_str())
            .bind(rec.created_at_ms)
            .bind(rec.updated_at_ms)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Adds one subscribed type to a webhook.
    pub(super) async fn insert_webhook_kind<'e, DB, E>(
        conn: E,
        tenant: &str,
        id: &str,
        kind: &str,
    ) -> StoreResult<()> {
        sqlx::query::<DB>("INSERT INTO webhook_kinds (tenant, webhook_id, kind) VALUES ($1, $2, $3)")
            .bind(tenant)
            .bind(id)
            .bind(kind)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Claims due rows for `holder` until `until` (see [`claim_sql`]).
    pub(super) async fn claim<'e, DB, E>(
        conn: E,
        sql: &str,
        holder: &str,
        until: UnixMillis,
        now: UnixMillis,
        limit: u32,
    ) -> StoreResult<u64> {
        let done = sqlx::query::<DB>(sql)
            .bind(holder)
            .bind(until)
            .bind(now)
            .bind(now)
            .bind(i64::from(limit))
            .bind(now)
            .execute(conn)
            .await?;
        Ok(done.rows())
    }

    /// Writes an attempt's outcome if `holder` still holds the row's claim.
    pub(super) async fn finish<'e, DB, E>(
        conn: E,
        id: i64,
        holder: &str,
        outcome: &DeliveryOutcome,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let (state, next, error, finished) = finish_columns(outcome, now);
        let done = sqlx::query::<DB>(FINISH)
            .bind(state)
            .bind(next)
            .bind(error)
            .bind(finished)
            .bind(id)
            .bind(holder)
            .execute(conn)
            .await?;
        Ok(done.rows() > 0)
    }

    /// Sets a credential's status: with `only_if_changed`, only when the stored one differs.
    /// `true` when a row was written.
    pub(super) async fn set_status<'e, DB, E>(
        conn: E,
        only_if_changed: bool,
        tenant: &str,
        id: &str,
        status: &str,
        last_error: Option<&str>,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let q = if only_if_changed {
            sqlx::query::<DB>(SET_STATUS_IF_CHANGED)
        } else {
            sqlx::query::<DB>(SET_STATUS)
        };
        let q = q.bind(status).bind(last_error).bind(now).bind(tenant).bind(id);
        let q = if only_if_changed { q.bind(status) } else { q };
        Ok(q.execute(conn).await?.rows() > 0)
    }

    /// Deletes finished rows older than `before`.
    pub(super) async fn purge<'e, DB, E>(conn: E, before: UnixMillis) -> StoreResult<u64> {
        let done = sqlx::query::<DB>(
            "DELETE FROM webhook_outbox WHERE state <> 'pending' AND finished_at_ms < $1",
        )
        .bind(before)
        .execute(conn)
        .await?;
        Ok(done.rows())
    }
}

/// The statements that delete a webhook: its queued notifications, its types, its row
/// (the last one's count says whether there was one).
pub(super) const DELETE_WEBHOOK: [&str; 3] = [
    "DELETE FROM webhook_outbox WHERE tenant = $1 AND webhook_id = $2",
    "DELETE FROM webhook_kinds WHERE tenant = $1 AND webhook_id = $2",
    "DELETE FROM webhooks WHERE tenant = $1 AND id = $2",
];

/// The status-changing write: only when the stored status differs, so concurrent writers
/// of the same transition change it (and announce it) once.
const SET_STATUS_IF_CHANGED: &str =
    "UPDATE credentials SET status = $1, last_error = $2, updated_at_ms = $3
     WHERE tenant = $4 AND id = $5 AND status <> $6";
const SET_STATUS: &str =
    "UPDATE credentials SET status = $1, last_error = $2, updated_at_ms = $3 WHERE tenant = $4 AND id = $5";
