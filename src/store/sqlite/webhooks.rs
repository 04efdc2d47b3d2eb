//! The SQLite side of [`WebhookStore`]: the statements are shared with PostgreSQL
//! (`store::outbox`); SQLite has one writer, so a claim needs no row locks.

use super::super::*;
use super::super::{outbox, rows};
use super::SqliteStore;
use std::time::Duration;

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn put_webhook(&self, rec: &WebhookRecord) -> StoreResult<()> {
        // Read before the transaction, which then starts with a write (see
        // `replace_credential_notifying`).
        let created: Option<i64> =
            sqlx::query_scalar("SELECT created_at_ms FROM webhooks WHERE tenant = ? AND id = ?")
                .bind(&rec.tenant)
                .bind(&rec.id)
                .fetch_optional(&self.pool)
                .await?;
        let mut tx = self.pool.begin().await?;
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
    }

    async fn list_webhooks(&self, tenant: Option<&str>) -> StoreResult<Vec<WebhookRecord>> {
        let kinds = sqlx::query_as::<_, (String, String, String)>(outbox::WEBHOOK_KINDS)
            .fetch_all(&self.pool)
            .await?;
        let rows = sqlx::query(outbox::LIST_WEBHOOKS)
            .bind(tenant)
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        outbox::webhooks_from_rows(&rows, kinds)
    }

    async fn delete_webhook(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let mut n = 0;
        for sql in outbox::DELETE_WEBHOOK {
            n = rows::delete_by_id(&mut *tx, sql, tenant, id).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn append_notifications(&self, notifications: &[Notification]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for n in notifications {
            outbox::fan_out(&mut *tx, n).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        holder: &str,
        now: UnixMillis,
        claim: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let until = now + claim.as_millis() as i64;
        let mut tx = self.pool.begin().await?;
        let claimed = outbox::claim(
            &mut *tx,
            &outbox::claim_sql("", ""),
            holder,
            until,
            now,
            limit,
        )
        .await?;
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
    }

    async fn finish_delivery(
        &self,
        id: i64,
        holder: &str,
        outcome: &DeliveryOutcome,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        outbox::finish(&self.pool, id, holder, outcome, now).await
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
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
    }

    async fn purge_outbox(&self, before: UnixMillis) -> StoreResult<u64> {
        outbox::purge(&self.pool, before).await
    }
}
