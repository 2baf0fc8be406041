//! `UsageStore`: usage records, their rollups, and the queries over them.

use super::*;

/// Integers the database stores as signed 64-bit.
fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The summed measures of a rollup row, in the order `totals_from` reads them.
const MEASURES: [&str; 27] = [
    "requests",
    "errors",
    "cache_hits",
    "saved_credits",
    "rejected",
    "throttled",
    "outages",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "credits",
    "cost_nanos",
    "unpriced",
    "latency_ms_sum",
    "lat_0",
    "lat_1",
    "lat_2",
    "lat_3",
    "lat_4",
    "lat_5",
    "lat_6",
    "lat_7",
    "lat_8",
    "lat_9",
    "lat_10",
    "lat_11",
    "cache_misses",
];

/// The rollup dimension a grouping splits by.
fn dimension(by: UsageGrouping) -> &'static str {
    match by {
        UsageGrouping::Key => "key_id",
        UsageGrouping::Service => "service_id",
        UsageGrouping::Token => "token_id",
        UsageGrouping::Model => "model",
        UsageGrouping::Environment => "environment",
        UsageGrouping::Network => "network",
    }
}

/// The usage sums query over the rollups of the query's granularity: per bucket, or per
/// `group` column (rows without one, e.g. refusals before a key was chosen, are left out)
/// and bucket. Binds: grain, from, to, key, token, service, model, environment, network.
/// The filters a usage query sets, as (column, value): only these go into the statement,
/// so the planner can use the index on the one it has (`key_id`, `token_id`). A generic
/// `($n IS NULL OR column = $n)` hid them: one key's 30 days scanned every key's rows.
fn usage_filters(query: &UsageQuery) -> Vec<(&'static str, String)> {
    [
        (
            "key_id",
            query.key_id.as_ref().map(|k| k.as_str().to_owned()),
        ),
        (
            "token_id",
            query.token_id.as_ref().map(|t| t.as_str().to_owned()),
        ),
        ("service_id", query.service_id.clone()),
        ("model", query.model.clone()),
        ("environment", query.environment.clone()),
        ("network", query.network.clone()),
    ]
    .into_iter()
    .filter_map(|(column, value)| value.map(|v| (column, v)))
    .collect()
}

/// The headline measures (`UsageHeadline`), in the order `usage_headlines` reads them.
const HEADLINE_MEASURES: [&str; 4] = ["requests", "errors", "cost_nanos", "unpriced"];

/// The sums of `measures` per bucket (and per value of `group`) for `query`, its statement
/// built from the filters it sets (a few dozen shapes, each cached once per connection),
/// over the key-level rollups whenever the query splits no further than the key.
fn usage_statement(
    query: &UsageQuery,
    group: Option<&str>,
    measures: &[&str],
) -> sqlx::query::Query<'static, Db, <Db as sqlx::Database>::Arguments> {
    let sums: Vec<String> = measures
        .iter()
        .map(|m| format!("CAST(SUM({m}) AS BIGINT)"))
        .collect();
    let sums = sums.join(", ");
    let columns = measures.join(", ");
    let filters = usage_filters(query);
    let table = RollupTable::for_query(&filters, group);
    let mut filter = format!(
        "FROM {} WHERE grain = $1 AND bucket >= $2 AND bucket < $3",
        table.name()
    );
    for (i, (column, _)) in filters.iter().enumerate() {
        filter.push_str(&format!(" AND {column} = ${}", i + 4));
    }
    let sql = match group {
        None => format!("SELECT bucket, {sums} {filter} GROUP BY bucket ORDER BY bucket"),
        // The range first, then the grouping: left to itself the planner walks the index
        // that leads with the grouped column (it delivers rows in group order) through every
        // grain and bucket of every key — 140 ms instead of a few for a week by key at
        // 2 M records on SQLite.
        Some(column) => format!(
            "WITH r AS MATERIALIZED (SELECT {column}, bucket, {columns} {filter}) \
             SELECT {column}, bucket, {sums} FROM r WHERE {column} <> '' \
             GROUP BY {column}, bucket ORDER BY {column}, bucket"
        ),
    };
    let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(query.granularity as i16)
        .bind(millis(query.from))
        .bind(millis(query.to));
    for (_, value) in filters {
        statement = statement.bind(value);
    }
    statement
}

/// One summed measure (NULL where nothing was summed).
fn sum_at(row: &DbRow, column: usize) -> Result<u64, Error> {
    let value: Option<i64> = row.try_get(column).map_err(|e| corrupt("usage sums", e))?;
    Ok(from_db_int(value.unwrap_or(0)))
}

impl ThisStore {
    /// The rows of a grouped usage statement as (group, what `read` makes of the sums
    /// from column 2 on, given the bucket's start).
    async fn grouped<T>(
        &self,
        query: &UsageQuery,
        by: UsageGrouping,
        measures: &[&str],
        read: impl Fn(&DbRow, Timestamp) -> Result<T, Error>,
    ) -> Result<Vec<(String, T)>, Error> {
        let rows = usage_statement(query, Some(dimension(by)), measures)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|row| {
                let group: String = row.try_get(0).map_err(|e| corrupt("usage group", e))?;
                let start = timestamp(row.try_get(1).map_err(|e| corrupt("bucket", e))?)?;
                Ok((group, read(row, start)?))
            })
            .collect()
    }
}

/// Reads the measures of `MEASURES` from the columns starting at `first`.
fn totals_from(row: &DbRow, first: usize) -> Result<UsageTotals, Error> {
    let at = |i: usize| sum_at(row, first + i);
    let mut latency = keyward_core::usage::LatencyHistogram::default();
    for (i, slot) in latency.0.iter_mut().enumerate() {
        *slot = at(14 + i)?;
    }
    Ok(UsageTotals {
        requests: at(0)?,
        errors: at(1)?,
        cache_hits: at(2)?,
        saved_credits: at(3)?,
        rejected: at(4)?,
        throttled: at(5)?,
        outages: at(6)?,
        input_tokens: at(7)?,
        cached_tokens: at(8)?,
        output_tokens: at(9)?,
        credits: at(10)?,
        cost_nanos: at(11)?,
        unpriced: at(12)?,
        latency_ms_sum: at(13)?,
        latency,
        cache_misses: at(26)?,
    })
}

/// The measures of one rollup, in `MEASURES` order.
fn measures(t: &UsageTotals) -> [i64; 27] {
    let mut out = [0i64; 27];
    let head = [
        t.requests,
        t.errors,
        t.cache_hits,
        t.saved_credits,
        t.rejected,
        t.throttled,
        t.outages,
        t.input_tokens,
        t.cached_tokens,
        t.output_tokens,
        t.credits,
        t.cost_nanos,
        t.unpriced,
        t.latency_ms_sum,
    ];
    for (slot, value) in out.iter_mut().zip(
        head.iter()
            .chain(t.latency.0.iter())
            .chain([t.cache_misses].iter()),
    ) {
        *slot = db_int(*value);
    }
    out
}

/// Rows per multi-row usage insert (24 binds each; SQLite allows 32,766 per statement).
const USAGE_ROWS_PER_INSERT: usize = 100;
/// Rows per multi-row rollup upsert (35 binds each).
const ROLLUP_ROWS_PER_UPSERT: usize = 50;

/// The two rollup tables: the full one, and the one collapsed to the key (with the service
/// and environment a key belongs to) that questions splitting no further read instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RollupTable {
    Full,
    ByKey,
}

impl RollupTable {
    fn name(self) -> &'static str {
        match self {
            Self::Full => "usage_rollups",
            Self::ByKey => "usage_key_rollups",
        }
    }

    fn dimensions(self) -> &'static [&'static str] {
        match self {
            Self::Full => &[
                "key_id",
                "token_id",
                "service_id",
                "model",
                "environment",
                "network",
            ],
            Self::ByKey => &["key_id", "service_id", "environment"],
        }
    }

    /// The table a query reads: the key-level one when every filter and the grouping are
    /// dimensions it keeps (it holds the same sums in far fewer rows).
    fn for_query(filters: &[(&'static str, String)], group: Option<&str>) -> Self {
        let kept = |column: &str| Self::ByKey.dimensions().contains(&column);
        if filters.iter().all(|(column, _)| kept(column)) && group.is_none_or(kept) {
            Self::ByKey
        } else {
            Self::Full
        }
    }

    /// `INSERT … ON CONFLICT DO UPDATE` adding each measure to the stored row: rollups of
    /// the same bucket written by several instances (or batches) add up.
    fn upsert_head_and_tail(self) -> (String, String) {
        let table = self.name();
        let dims = self.dimensions().join(", ");
        let sets: Vec<String> = MEASURES
            .iter()
            .map(|m| format!("{m} = {table}.{m} + excluded.{m}"))
            .collect();
        (
            format!(
                "INSERT INTO {table} (grain, bucket, {dims}, {}) ",
                MEASURES.join(", ")
            ),
            format!(
                " ON CONFLICT (grain, bucket, {dims}) DO UPDATE SET {}",
                sets.join(", ")
            ),
        )
    }

    /// Adds `rollups` to this table, in fixed-size chunks so the prepared statement is
    /// reused.
    async fn add(
        self,
        tx: &mut sqlx::Transaction<'_, Db>,
        rollups: &[keyward_core::rollup::Rollup],
    ) -> Result<(), Error> {
        let (head, tail) = self.upsert_head_and_tail();
        for chunk in rollups.chunks(ROLLUP_ROWS_PER_UPSERT) {
            let mut upsert = QueryBuilder::<Db>::new(&head);
            upsert.push_values(chunk, |mut row, r| {
                row.push_bind(r.granularity as i16)
                    .push_bind(millis(r.bucket))
                    .push_bind(r.dims.key_id.clone());
                if self == Self::Full {
                    row.push_bind(r.dims.token_id.clone());
                }
                row.push_bind(r.dims.service_id.clone());
                if self == Self::Full {
                    row.push_bind(r.dims.model.clone());
                }
                row.push_bind(r.dims.environment.clone());
                if self == Self::Full {
                    row.push_bind(r.dims.network.clone());
                }
                for value in measures(&r.totals) {
                    row.push_bind(value);
                }
            });
            upsert.push(&tail);
            upsert
                .build()
                .persistent(chunk.len() == ROLLUP_ROWS_PER_UPSERT)
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        Ok(())
    }
}

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
        let rollups = keyward_core::rollup::rollups(records);
        RollupTable::Full.add(&mut tx, &rollups).await?;
        RollupTable::ByKey
            .add(&mut tx, &keyward_core::rollup::by_key(&rollups))
            .await?;
        commit(tx).await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>, Error> {
        let rows = usage_statement(query, None, &MEASURES)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|row| {
                Ok(UsageBucket {
                    start: timestamp(row.try_get(0).map_err(|e| corrupt("bucket", e))?)?,
                    totals: totals_from(row, 1)?,
                })
            })
            .collect()
    }

    async fn usage_grouped(
        &self,
        query: &UsageQuery,
        by: UsageGrouping,
    ) -> Result<Vec<(String, UsageBucket)>, Error> {
        self.grouped(query, by, &MEASURES, |row, start| {
            Ok(UsageBucket {
                start,
                totals: totals_from(row, 2)?,
            })
        })
        .await
    }

    async fn usage_headlines(
        &self,
        query: &UsageQuery,
        by: UsageGrouping,
    ) -> Result<Vec<(String, UsageHeadline)>, Error> {
        self.grouped(query, by, &HEADLINE_MEASURES, |row, start| {
            Ok(UsageHeadline {
                start,
                requests: sum_at(row, 2)?,
                errors: sum_at(row, 3)?,
                cost_nanos: sum_at(row, 4)?,
                unpriced: sum_at(row, 5)?,
            })
        })
        .await
    }

    async fn hourly_use_since(&self, since: Timestamp) -> Result<Vec<HourlyUse>, Error> {
        let mut out = Vec::new();
        for column in ["key_id", "token_id"] {
            let table = RollupTable::for_query(&[], Some(column)).name();
            let sql = format!(
                "SELECT {column}, bucket, CAST(SUM(requests) AS BIGINT), CAST(SUM(credits) AS BIGINT), \
                 CAST(SUM(input_tokens + cached_tokens + output_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT) \
                 FROM {table} WHERE grain = 1 AND bucket >= $1 AND {column} <> '' GROUP BY {column}, bucket"
            );
            let rows: Vec<(String, i64, i64, i64, i64, i64)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(millis(
                        keyward_core::usage::Granularity::Hour.bucket_start(since),
                    ))
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

    async fn prune_usage(
        &self,
        records_before: Timestamp,
        minutes_before: Timestamp,
        rollups_before: Option<Timestamp>,
    ) -> Result<(u64, u64), Error> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM usage_records WHERE at < $1")
            .bind(millis(records_before))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        for table in [RollupTable::Full, RollupTable::ByKey] {
            let sql = format!(
                "DELETE FROM {} WHERE grain = 0 AND bucket < $1",
                table.name()
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(millis(minutes_before))
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        let mut rollups = 0;
        if let Some(before) = rollups_before {
            for table in [RollupTable::Full, RollupTable::ByKey] {
                let sql = format!(
                    "DELETE FROM {} WHERE grain IN (1, 2) AND bucket < $1",
                    table.name()
                );
                rollups += sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(millis(before))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(e, None))?
                    .rows_affected();
            }
        }
        commit(tx).await?;
        Ok((deleted.rows_affected(), rollups))
    }
}
