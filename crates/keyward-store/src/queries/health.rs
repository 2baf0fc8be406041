//! `HealthStore`: key flags, call statistics, probes and health state.

use super::*;

#[async_trait]
impl HealthStore for ThisStore {
    async fn claim_probe(
        &self,
        key_id: &KeyId,
        now: Timestamp,
        last_before: Timestamp,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO key_probes (key_id, probed_at) VALUES ($1, $2) \
             ON CONFLICT (key_id) DO UPDATE SET probed_at = $2, verdict = NULL \
             WHERE key_probes.probed_at <= $3",
        )
        .bind(key_id.as_str())
        .bind(millis(now))
        .bind(millis(last_before))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_probe_verdict(&self, key_id: &KeyId, verdict: &str) -> Result<(), Error> {
        sqlx::query("UPDATE key_probes SET verdict = $1 WHERE key_id = $2")
            .bind(verdict)
            .bind(key_id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn probes(&self) -> Result<Vec<(KeyId, Timestamp, Option<String>)>, Error> {
        let rows: Vec<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT key_id, probed_at, verdict FROM key_probes ORDER BY key_id")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(id, at, verdict)| Ok((parse("key id", &id)?, timestamp(at)?, verdict)))
            .collect()
    }

    async fn recent_calls(&self, since: Timestamp) -> Result<Vec<KeyCalls>, Error> {
        let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
            // The last minutes first (by the time index), then the grouping: otherwise the
            // planner may walk the key index through every record ever kept.
            "WITH recent AS MATERIALIZED (SELECT * FROM usage_records WHERE at >= $1) \
             SELECT key_id, service_id, CAST(COUNT(*) AS BIGINT), \
                    CAST(SUM(CASE WHEN outcome = 'failed' OR answer = 'outage' OR (answer IS NULL AND status >= 500) THEN 1 ELSE 0 END) AS BIGINT), \
                    CAST(SUM(CASE WHEN answer = 'unclassified' THEN 1 ELSE 0 END) AS BIGINT), \
                    CAST(SUM(latency_ms) AS BIGINT) \
             FROM recent \
             WHERE key_id IS NOT NULL AND outcome <> 'refused' AND cache <> 'hit' \
             GROUP BY key_id, service_id ORDER BY key_id",
        )
        .bind(millis(since))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(
                |(key, service_id, calls, failures, unclassified, latency)| {
                    let count = |what: &str, n: i64| u64::try_from(n).map_err(|e| corrupt(what, e));
                    Ok(KeyCalls {
                        key_id: parse("key id", &key)?,
                        service_id,
                        stats: CallStats {
                            calls: count("calls", calls)?,
                            failures: count("failures", failures)?,
                            unclassified: count("unclassified", unclassified)?,
                            latency_ms_total: count("latency", latency)?,
                        },
                    })
                },
            )
            .collect()
    }

    async fn health_states(&self) -> Result<Vec<HealthState>, Error> {
        let rows: Vec<(String, String, bool, i64)> = sqlx::query_as(
            "SELECT subject, status, disruption, since FROM health_states ORDER BY subject",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(subject, status, disruption, since)| {
                Ok(HealthState {
                    subject,
                    status: parse("health status", &status)?,
                    disruption,
                    since: timestamp(since)?,
                })
            })
            .collect()
    }

    async fn set_health_state(
        &self,
        next: &HealthState,
        expected: Option<(HealthStatus, bool)>,
    ) -> Result<bool, Error> {
        let done = match expected {
            None => sqlx::query(
                "INSERT INTO health_states (subject, status, disruption, since) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (subject) DO NOTHING",
            )
            .bind(&next.subject)
            .bind(next.status.as_str())
            .bind(next.disruption)
            .bind(millis(next.since)),
            Some((status, disruption)) => sqlx::query(
                "UPDATE health_states SET status = $2, disruption = $3, since = $4 \
                 WHERE subject = $1 AND status = $5 AND disruption = $6",
            )
            .bind(&next.subject)
            .bind(next.status.as_str())
            .bind(next.disruption)
            .bind(millis(next.since))
            .bind(status.as_str())
            .bind(disruption),
        }
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }
}
