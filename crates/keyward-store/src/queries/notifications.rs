//! `NotificationStore`: webhooks, subscriptions and deliveries.

use super::*;

const WEBHOOK_COLUMNS: &str =
    "id, url, kinds, categories, allow_private_network, created_by, created_at, owner_id";
const DELIVERY_COLUMNS: &str = "id, webhook_id, kind, dedupe, body, attempts, status, next_attempt_at, last_status, last_error, created_at, updated_at";

fn webhook_row(r: &DbRow) -> Result<Webhook, Error> {
    Ok(Webhook {
        id: parse("webhook id", &get::<String>(r, "id")?)?,
        url: get(r, "url")?,
        kinds: from_json("webhook kinds", &get::<String>(r, "kinds")?)?,
        categories: from_json("webhook categories", &get::<String>(r, "categories")?)?,
        allow_private_network: get(r, "allow_private_network")?,
        created_by: get(r, "created_by")?,
        created_at: timestamp(get(r, "created_at")?)?,
        owner: get::<Option<String>>(r, "owner_id")?
            .map(|id| parse("user id", &id))
            .transpose()?,
    })
}

fn delivery_row(r: &DbRow) -> Result<Delivery, Error> {
    let last_status: Option<i64> = get(r, "last_status")?;
    Ok(Delivery {
        id: parse("delivery id", &get::<String>(r, "id")?)?,
        webhook_id: parse("webhook id", &get::<String>(r, "webhook_id")?)?,
        kind: parse("notification kind", &get::<String>(r, "kind")?)?,
        dedupe: get(r, "dedupe")?,
        body: get(r, "body")?,
        attempts: u32::try_from(get::<i64>(r, "attempts")?).map_err(|e| corrupt("attempts", e))?,
        status: parse("delivery status", &get::<String>(r, "status")?)?,
        next_attempt_at: opt_timestamp(get(r, "next_attempt_at")?)?,
        last_status: last_status
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt("last status", e))?,
        last_error: get(r, "last_error")?,
        created_at: timestamp(get(r, "created_at")?)?,
        updated_at: timestamp(get(r, "updated_at")?)?,
    })
}

async fn insert_webhook<'e, E>(executor: E, w: &Webhook) -> Result<(), Error>
where
    E: sqlx::Executor<'e, Database = Db>,
{
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )))
    .bind(w.id.as_str())
    .bind(&w.url)
    .bind(json_text("webhook kinds", &w.kinds)?)
    .bind(json_text("webhook categories", &w.categories)?)
    .bind(w.allow_private_network)
    .bind(&w.created_by)
    .bind(millis(w.created_at))
    .bind(w.owner.as_ref().map(|o| o.as_str().to_owned()))
    .execute(executor)
    .await
    .map_err(|e| db_error(e, Some(("webhook_exists", "a webhook with this id exists"))))?;
    Ok(())
}

#[async_trait]
impl NotificationStore for ThisStore {
    async fn insert_webhook(&self, w: &Webhook) -> Result<(), Error> {
        insert_webhook(&self.pool, w).await
    }

    async fn put_subscription(&self, w: &Webhook) -> Result<(), Error> {
        let owner = w
            .owner
            .as_ref()
            .ok_or_else(|| Error::internal("a subscription without an owner"))?;
        let mut tx = self.begin_write().await?;
        // Its deliveries go with it, as when a webhook is deleted.
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE webhook_id IN (SELECT id FROM webhooks WHERE owner_id = $1)",
        )
        .bind(owner.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        sqlx::query("DELETE FROM webhooks WHERE owner_id = $1")
            .bind(owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        insert_webhook(&mut *tx, w).await?;
        commit(tx).await
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(webhook_row).collect()
    }

    async fn delete_webhook(&self, id: &WebhookId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue_deliveries(&self, deliveries: &[Delivery]) -> Result<u64, Error> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut queued = 0;
        for d in deliveries {
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (webhook_id, dedupe) DO NOTHING"
            )))
            .bind(d.id.as_str())
            .bind(d.webhook_id.as_str())
            .bind(d.kind.as_str())
            .bind(&d.dedupe)
            .bind(&d.body)
            .bind(i64::from(d.attempts))
            .bind(d.status.as_str())
            .bind(d.next_attempt_at.map(millis))
            .bind(d.last_status.map(i64::from))
            .bind(&d.last_error)
            .bind(millis(d.created_at))
            .bind(millis(d.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
            queued += done.rows_affected();
        }
        commit(tx).await?;
        Ok(queued)
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Delivery>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt_at <= $1 \
             AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY next_attempt_at, id LIMIT $2"
        )))
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        let mut claimed = Vec::new();
        for row in &rows {
            let delivery = delivery_row(row)?;
            let won = sqlx::query(
                "UPDATE webhook_deliveries SET claimed_until = $1 \
                 WHERE id = $2 AND status = 'pending' AND (claimed_until IS NULL OR claimed_until < $3)",
            )
            .bind(millis(lease_until))
            .bind(delivery.id.as_str())
            .bind(millis(now))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
            if won.rows_affected() == 1 {
                claimed.push(delivery);
            }
        }
        Ok(claimed)
    }

    async fn save_delivery(&self, d: &Delivery) -> Result<(), Error> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = $1, status = $2, next_attempt_at = $3, \
             last_status = $4, last_error = $5, updated_at = $6, claimed_until = NULL WHERE id = $7",
        )
        .bind(i64::from(d.attempts))
        .bind(d.status.as_str())
        .bind(d.next_attempt_at.map(millis))
        .bind(d.last_status.map(i64::from))
        .bind(&d.last_error)
        .bind(millis(d.updated_at))
        .bind(d.id.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn deliveries(&self, webhook_id: &WebhookId, limit: u32) -> Result<Vec<Delivery>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(webhook_id.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(delivery_row).collect()
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64, Error> {
        let deleted = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'failed') AND updated_at < $1",
        )
        .bind(millis(before))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(deleted.rows_affected())
    }
}
