//! `UsageStore`: usage records, hourly sums, pools and last use.

use super::*;

/// Integers the database stores as signed 64-bit.
fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The sums a usage query returns, in the column order of `USAGE_SUMS`.
type SumsRow = (i64, i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// The usage sums query: minutes from the records, hours and days from the hourly sums;
/// per bucket, or per `group` column (rows without one, e.g. refusals before a key was
/// chosen, are left out) and bucket. Binds: from, to, bucket size, key, token, service.
fn usage_sql(query: &UsageQuery, group: Option<&str>) -> String {
    let sums = |time: &str, requests: &str, errors: &str, hits: &str| {
        format!(
            "SELECT ({time} / $3) * $3 AS bucket, CAST(COALESCE({requests}, 0) AS BIGINT), \
             CAST(COALESCE({errors}, 0) AS BIGINT), CAST(COALESCE({hits}, 0) AS BIGINT), \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(credits), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT), CAST(COALESCE(SUM(unpriced), 0) AS BIGINT)"
        )
    };
    let (select, table, time) = if query.granularity == keyward_core::usage::Granularity::Minute {
        (
            sums(
                "at",
                "COUNT(*)",
                "SUM(CASE WHEN outcome <> 'success' THEN 1 ELSE 0 END)",
                "SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END)",
            ),
            "usage_records",
            "at",
        )
    } else {
        (
            sums("hour", "SUM(requests)", "SUM(errors)", "SUM(cache_hits)"),
            "usage_hourly",
            "hour",
        )
    };
    let filter = format!(
        "FROM {table} WHERE {time} >= $1 AND {time} < $2 \
         AND ($4 IS NULL OR key_id = $4) AND ($5 IS NULL OR token_id = $5) AND ($6 IS NULL OR service_id = $6)"
    );
    match group {
        None => format!("{select} {filter} GROUP BY bucket ORDER BY bucket"),
        Some(column) => {
            let select = select.replacen("SELECT ", &format!("SELECT {column}, "), 1);
            format!(
                "{select} {filter} AND {column} IS NOT NULL AND {column} <> '' \
                 GROUP BY {column}, bucket ORDER BY {column}, bucket"
            )
        }
    }
}

fn bind_usage<Row>(
    query: &UsageQuery,
    sql: String,
) -> sqlx::query::QueryAs<'static, Db, Row, <Db as sqlx::Database>::Arguments>
where
    Row: for<'r> sqlx::FromRow<'r, DbRow>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(millis(query.from))
        .bind(millis(query.to))
        .bind(query.granularity.millis())
        .bind(query.key_id.as_ref().map(|k| k.as_str().to_owned()))
        .bind(query.token_id.as_ref().map(|t| t.as_str().to_owned()))
        .bind(query.service_id.clone())
}

fn totals(row: &SumsRow) -> UsageTotals {
    UsageTotals {
        requests: from_db_int(row.1),
        errors: from_db_int(row.2),
        cache_hits: from_db_int(row.3),
        input_tokens: from_db_int(row.4),
        cached_tokens: from_db_int(row.5),
        output_tokens: from_db_int(row.6),
        credits: from_db_int(row.7),
        cost_nanos: from_db_int(row.8),
        unpriced: from_db_int(row.9),
    }
}

/// One hourly-sum row being accumulated from a batch.
#[derive(Default)]
struct HourlySums {
    requests: i64,
    errors: i64,
    cache_hits: i64,
    input_tokens: i64,
    cached_tokens: i64,
    output_tokens: i64,
    credits: i64,
    cost_nanos: i64,
    unpriced: i64,
}

const HOUR_MS: i64 = 3_600_000;
/// Rows per multi-row usage insert (24 binds each; SQLite allows 32,766 per statement).
const USAGE_ROWS_PER_INSERT: usize = 100;

#[async_trait]
impl UsageStore for ThisStore {
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Fixed-size chunks so the prepared statement is reused; only a full chunk's statement
        // is kept in the per-connection statement cache. (Caching a statement per batch size
        // grew memory with every batch: each is a program for thousands of parameters.)
        for chunk in records.chunks(USAGE_ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Db>::new(
                "INSERT INTO usage_records (at, token_id, key_id, service_id, environment, method, endpoint, status, \
                 outcome, error_code, latency_ms, request_bytes, response_bytes, cache, retries, model, input_tokens, \
                 cached_tokens, cache_write_tokens, output_tokens, credits, cost_nanos, answer, unpriced) ",
            );
            // Placeholders come from the builder: `?` for SQLite, whose `$N` parameters are
            // named and looked up one by one (measured: with `$N`, binding 2,200 of them made
            // the usage writer cost as much CPU as a serving thread).
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(millis(r.at))
                    .push_bind(r.token_id.as_ref().map(|t| t.as_str().to_owned()))
                    .push_bind(r.key_id.as_ref().map(|k| k.as_str().to_owned()))
                    .push_bind(r.service_id.clone())
                    .push_bind(r.environment.clone())
                    .push_bind(r.method.clone())
                    .push_bind(r.endpoint.clone())
                    .push_bind(i64::from(r.status))
                    .push_bind(r.outcome.as_str())
                    .push_bind(r.error_code.clone())
                    .push_bind(i64::from(r.latency_ms))
                    .push_bind(db_int(r.request_bytes))
                    .push_bind(db_int(r.response_bytes))
                    .push_bind(r.cache.as_str())
                    .push_bind(i64::from(r.retries))
                    .push_bind(r.model.clone())
                    .push_bind(db_int(r.tokens.input))
                    .push_bind(db_int(r.tokens.cached_input))
                    .push_bind(db_int(r.tokens.cache_write))
                    .push_bind(db_int(r.tokens.output))
                    .push_bind(i64::from(r.credits))
                    .push_bind(db_int(r.cost_nanos))
                    .push_bind(r.answer.map(keyward_core::answer::AnswerClass::as_str))
                    .push_bind(i64::from(r.unpriced));
            });
            insert
                .build()
                .persistent(chunk.len() == USAGE_ROWS_PER_INSERT)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        let mut hourly: std::collections::BTreeMap<(i64, &str, &str, &str), HourlySums> =
            std::collections::BTreeMap::new();
        for r in records {
            let hour = millis(r.at).div_euclid(HOUR_MS) * HOUR_MS;
            let key = r.key_id.as_ref().map_or("", |k| k.as_str());
            let token = r.token_id.as_ref().map_or("", |t| t.as_str());
            let sums = hourly
                .entry((hour, r.service_id.as_str(), key, token))
                .or_default();
            sums.requests += 1;
            sums.errors += i64::from(r.outcome != Outcome::Success);
            sums.cache_hits += i64::from(r.cache == keyward_core::usage::CacheOutcome::Hit);
            sums.input_tokens += db_int(r.tokens.input.saturating_add(r.tokens.cache_write));
            sums.cached_tokens += db_int(r.tokens.cached_input);
            sums.output_tokens += db_int(r.tokens.output);
            sums.credits += i64::from(r.credits);
            sums.cost_nanos = sums.cost_nanos.saturating_add(db_int(r.cost_nanos));
            sums.unpriced += i64::from(r.unpriced);
        }
        for ((hour, service, key, token), s) in hourly {
            sqlx::query(
                "INSERT INTO usage_hourly (hour, service_id, key_id, token_id, requests, errors, cache_hits, input_tokens, \
                 cached_tokens, output_tokens, credits, cost_nanos, unpriced) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (hour, service_id, key_id, token_id) DO UPDATE SET \
                 requests = usage_hourly.requests + excluded.requests, errors = usage_hourly.errors + excluded.errors, \
                 cache_hits = usage_hourly.cache_hits + excluded.cache_hits, \
                 input_tokens = usage_hourly.input_tokens + excluded.input_tokens, \
                 cached_tokens = usage_hourly.cached_tokens + excluded.cached_tokens, \
                 output_tokens = usage_hourly.output_tokens + excluded.output_tokens, \
                 credits = usage_hourly.credits + excluded.credits, cost_nanos = usage_hourly.cost_nanos + excluded.cost_nanos, \
                 unpriced = usage_hourly.unpriced + excluded.unpriced",
            )
            .bind(hour)
            .bind(service)
            .bind(key)
            .bind(token)
            .bind(s.requests)
            .bind(s.errors)
            .bind(s.cache_hits)
            .bind(s.input_tokens)
            .bind(s.cached_tokens)
            .bind(s.output_tokens)
            .bind(s.credits)
            .bind(s.cost_nanos)
            .bind(s.unpriced)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>, Error> {
        let rows: Vec<SumsRow> = bind_usage(query, usage_sql(query, None))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|row| {
                Ok(UsageBucket {
                    start: timestamp(row.0)?,
                    totals: totals(row),
                })
            })
            .collect()
    }

    async fn usage_grouped(
        &self,
        query: &UsageQuery,
        by: UsageGrouping,
    ) -> Result<Vec<(String, UsageBucket)>, Error> {
        let column = match by {
            UsageGrouping::Key => "key_id",
            UsageGrouping::Service => "service_id",
            UsageGrouping::Token => "token_id",
        };
        let rows: Vec<(String, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64)> =
            bind_usage(query, usage_sql(query, Some(column)))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(group, a, b, c, d, e, f, g, h, i, j)| {
                let row: SumsRow = (a, b, c, d, e, f, g, h, i, j);
                Ok((
                    group,
                    UsageBucket {
                        start: timestamp(row.0)?,
                        totals: totals(&row),
                    },
                ))
            })
            .collect()
    }

    async fn hourly_use_since(&self, since: Timestamp) -> Result<Vec<HourlyUse>, Error> {
        let mut out = Vec::new();
        for column in ["key_id", "token_id"] {
            let sql = format!(
                "SELECT {column}, hour, CAST(SUM(requests) AS BIGINT), CAST(SUM(credits) AS BIGINT), \
                 CAST(SUM(input_tokens + cached_tokens + output_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT) \
                 FROM usage_hourly WHERE hour >= $1 AND {column} <> '' GROUP BY {column}, hour"
            );
            let rows: Vec<(String, i64, i64, i64, i64, i64)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(millis(since).div_euclid(HOUR_MS) * HOUR_MS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| db_error(e, None))?;
            for (id, hour, requests, credits, tokens, cost) in rows {
                let subject = if column == "key_id" {
                    Subject::Key(parse("key id", &id)?)
                } else {
                    Subject::Token(parse("app token id", &id)?)
                };
                out.push(HourlyUse {
                    subject,
                    hour: timestamp(hour)?,
                    requests: from_db_int(requests),
                    credits: from_db_int(credits),
                    tokens: from_db_int(tokens),
                    cost_nanos: from_db_int(cost),
                });
            }
        }
        Ok(out)
    }

    async fn prune_usage(&self, before: Timestamp) -> Result<u64, Error> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM usage_records WHERE at < $1")
            .bind(millis(before))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(deleted.rows_affected())
    }
}
