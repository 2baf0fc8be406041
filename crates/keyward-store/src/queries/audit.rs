//! `AuditStore`: the hash-chained audit trail and its checkpoints.

use super::*;

const AUDIT_COLUMNS: &str =
    "seq, at, actor_kind, actor_id, actor_name, source, action, target, outcome, details, hash";

fn audit_seq(v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|e| corrupt("audit sequence number", e))
}

fn audit_event(r: &DbRow) -> Result<AuditEvent, Error> {
    Ok(AuditEvent {
        seq: audit_seq(get(r, "seq")?)?,
        entry: AuditDraft {
            at: timestamp(get(r, "at")?)?,
            actor_kind: parse("actor kind", &get::<String>(r, "actor_kind")?)?,
            actor_id: get(r, "actor_id")?,
            actor_name: get(r, "actor_name")?,
            source: get(r, "source")?,
            action: get(r, "action")?,
            target: get(r, "target")?,
            outcome: parse("outcome", &get::<String>(r, "outcome")?)?,
            details: get(r, "details")?,
        },
        hash: get(r, "hash")?,
    })
}

#[async_trait]
impl AuditStore for ThisStore {
    async fn append_audit(&self, entry: &AuditDraft) -> Result<AuditEvent, Error> {
        let mut tx = self.begin_write().await?;
        // Taking the head row first serializes appends (row lock on PostgreSQL).
        let (seq, prev): (i64, String) = sqlx::query_as(
            "UPDATE audit_chain_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        let seq = audit_seq(seq)?;
        let prev = parse_hash(&prev).ok_or_else(|| corrupt("audit chain head", "not a hash"))?;
        let hash = hash_hex(&chain_hash(&prev, seq, entry));
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor_kind, actor_id, actor_name, source, action, target, outcome, details, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(i64::try_from(seq).map_err(|e| corrupt("audit sequence number", e))?)
        .bind(millis(entry.at))
        .bind(entry.actor_kind.as_str())
        .bind(&entry.actor_id)
        .bind(&entry.actor_name)
        .bind(&entry.source)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.outcome.as_str())
        .bind(&entry.details)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        sqlx::query("UPDATE audit_chain_head SET hash = $1 WHERE id = 1")
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(AuditEvent {
            seq,
            entry: entry.clone(),
            hash,
        })
    }

    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
        let mut q = QueryBuilder::<Db>::new(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE 1 = 1"
        ));
        if let Some(actor) = &filter.actor {
            q.push(" AND (actor_id = ")
                .push_bind(actor.clone())
                .push(" OR actor_name = ")
                .push_bind(actor.clone())
                .push(")");
        }
        if let Some(action) = &filter.action {
            // `key` matches `key.create`, `key.delete`, …; an exact name matches itself.
            q.push(" AND (action = ")
                .push_bind(action.clone())
                .push(" OR action LIKE ")
                .push_bind(format!("{}.%", action.replace(['%', '_'], "")))
                .push(")");
        }
        if let Some(target) = &filter.target {
            q.push(" AND target = ").push_bind(target.clone());
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        if let Some(from) = filter.from {
            q.push(" AND at >= ").push_bind(millis(from));
        }
        if let Some(until) = filter.until {
            q.push(" AND at < ").push_bind(millis(until));
        }
        if let Some(after) = filter.after_seq {
            q.push(" AND seq > ")
                .push_bind(i64::try_from(after).unwrap_or(i64::MAX));
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter().map(audit_event).collect()
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, Error> {
        let (seq, hash): (i64, String) =
            sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        let seq = audit_seq(seq)?;
        Ok((seq > 0).then_some((seq, hash)))
    }

    async fn insert_audit_checkpoint(&self, c: &AuditCheckpoint) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(i64::try_from(c.seq).map_err(|e| corrupt("audit sequence number", e))?)
        .bind(&c.hash)
        .bind(millis(c.at))
        .bind(&c.key_id)
        .bind(&c.signature)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            db_error(
                e,
                Some(("checkpoint_exists", "a checkpoint for this entry already exists")),
            )
        })?;
        Ok(())
    }

    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, Error> {
        let rows = sqlx::query(
            "SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|r| {
                Ok(AuditCheckpoint {
                    seq: audit_seq(get(r, "seq")?)?,
                    hash: get(r, "hash")?,
                    at: timestamp(get(r, "at")?)?,
                    key_id: get(r, "key_id")?,
                    signature: get(r, "signature")?,
                })
            })
            .collect()
    }

    async fn audit_action_counts(
        &self,
        action: &str,
    ) -> Result<Vec<(String, u64, Timestamp)>, Error> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT target, CAST(COUNT(*) AS BIGINT), MAX(at) FROM audit_events \
             WHERE action = $1 AND outcome = 'success' AND target IS NOT NULL \
             GROUP BY target ORDER BY target",
        )
        .bind(action)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(target, count, at)| {
                Ok((
                    target,
                    u64::try_from(count).map_err(|e| corrupt("count", e))?,
                    timestamp(at)?,
                ))
            })
            .collect()
    }

    async fn prune_audit_through(&self, through: u64) -> Result<u64, Error> {
        let through = i64::try_from(through).map_err(|e| corrupt("seq", e))?;
        let mut tx = self.begin_write().await?;
        let removed = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        sqlx::query("DELETE FROM audit_checkpoints WHERE seq < $1")
            .bind(through)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(removed.rows_affected())
    }
}
