//! The PostgreSQL side of [`WebhookStore`]: the statements are shared with SQLite
//! (`store::outbox`); claims skip rows another replica has locked, so replicas polling at
//! once split the due notifications instead of delivering one twice.

use super::super::*;
use super::super::{outbox, rows};
use super::PgStore;
use std::time::Duration;

/// A claim whose holder has no session with the database any more (a replica that was
/// killed) is free at once rather than when it expires: `application_name` names each
/// replica's sessions (see `postgres.rs`).
const CLAIM_HOLDER_IS_GONE: &str = " OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = 'authgate ' || webhook_outbox.claimed_by)";

#[async_trait]
impl WebhookStore for PgStore {
    async fn put_webhook(&self, rec: &WebhookRecord) -> StoreResult<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let created: Option<i64> = sqlx::query_scalar(
                "SELECT created_at_ms FROM webhooks WHERE tenant = $1 AND id = $2 FOR UPDATE",
            )
            .bind(&rec.tenant)
            .bind(&rec.id)
            .fetch_optional(&mut *tx)
            .await?;
            let rec = WebhookRecord {
                created_at_ms: created.unwrap_or(rec.created_at_ms),
                ..rec.clone()
            };
            outbox::upsert_webhook(&mut *tx, &rec).await?;
            rows::delete_by_id(&mut *tx, outbox::DELETE_WEBHOOK[1], &rec.tenant, &rec.id).await?;
            for kind in &rec.kinds {
                outbox::insert_webhook_kind(&mut *tx, &rec.tenant, &rec.id, kind).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn list_webhooks(&self, tenant: Option<&str>) -> StoreResult<Vec<WebhookRecord>> {
        self.bounded(async {
            let kinds = sqlx::query_as::<_, (String, String, String)>(outbox::WEBHOOK_KINDS)
                .fetch_all(&self.pool)
                .await?;
            let rows = sqlx::query(outbox::LIST_WEBHOOKS)
                .bind(tenant)
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
            outbox::webhooks_from_rows(&rows, kinds)
        })
        .await
    }

    async fn delete_webhook(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let mut n = 0;
            for sql in outbox::DELETE_WEBHOOK {
                n = rows::delete_by_id(&mut *tx, sql, tenant, id).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    async fn append_notifications(&self, notifications: &[Notification]) -> StoreResult<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            for n in notifications {
                outbox::fan_out(&mut *tx, n).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        holder: &str,
        now: UnixMillis,
        claim: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        self.bounded(async {
            let until = now + claim.as_millis() as i64;
            let mut tx = self.pool.begin().await?;
            let sql = outbox::claim_sql(" FOR UPDATE SKIP LOCKED", CLAIM_HOLDER_IS_GONE);
            let claimed = outbox::claim(&mut *tx, &sql, holder, until, now, limit).await?;
            let rows = if claimed == 0 {
                Vec::new()
            } else {
                sqlx::query(outbox::CLAIMED)
                    .bind(holder)
                    .bind(until)
                    .fetch_all(&mut *tx)
                    .await?
            };
            tx.commit().await?;
            rows.iter().map(outbox::delivery_from_row).collect()
        })
        .await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        holder: &str,
        outcome: &DeliveryOutcome,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        self.bounded(outbox::finish(&self.pool, id, holder, outcome, now))
            .await
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        self.bounded(async {
            let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(outbox::PENDING_STATS)
                .fetch_one(&self.pool)
                .await?;
            let failed: i64 = sqlx::query_scalar(outbox::FAILED_COUNT)
                .fetch_one(&self.pool)
                .await?;
            Ok(OutboxStats {
                pending: pending.max(0) as u64,
                oldest_pending_at_ms: oldest,
                failed: failed.max(0) as u64,
            })
        })
        .await
    }

    async fn purge_outbox(&self, before: UnixMillis) -> StoreResult<u64> {
        self.bounded(outbox::purge(&self.pool, before)).await
    }
}
