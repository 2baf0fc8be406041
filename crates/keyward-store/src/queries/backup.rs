//! Backups at the table level: every table a vault is made of, read in one snapshot as
//! portable [`Cell`]s and written back in one transaction, on either backend.
//!
//! Which tables a backup holds is stated once, for both backends, in the crate root
//! ([`crate::BACKED_UP`], in the order foreign keys need, next to [`crate::LEFT_OUT`]); the
//! conformance suite fails when a migration adds a table named in neither list.

use super::super::{backup_column_kinds, backup_read_cell, backup_snapshot, backup_tidy_sql};
use super::{Db, ThisStore};
use keyward_core::Error;
use keyward_core::backup::{Cell, ChunkSink, ChunkSource, TableChunk};

use futures_util::TryStreamExt;
use sqlx::{Column, QueryBuilder, Row};

use crate::{BACKED_UP, ColumnKind, LEFT_OUT, db_error};

/// Raw usage records: in a backup only when asked for (rollups always are).
const RAW_USAGE: &str = "usage_records";

/// Rows per chunk of a backup, and per insert statement while restoring (well inside both
/// backends' bind-parameter limits at the widest table's ~40 columns).
const ROWS_PER_CHUNK: usize = 200;

impl ThisStore {
    pub(super) async fn export_backup_tables(
        &self,
        raw_usage: bool,
        sink: &mut dyn ChunkSink,
    ) -> Result<i64, Error> {
        let mut tx = backup_snapshot(&self.pool).await?;
        let (schema,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        for table in BACKED_UP {
            if *table == RAW_USAGE && !raw_usage {
                continue;
            }
            let sql = format!("SELECT * FROM {table}");
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .fetch(&mut *tx);
            let mut columns: Option<Vec<String>> = None;
            let mut batch = Vec::with_capacity(ROWS_PER_CHUNK);
            while let Some(row) = rows.try_next().await.map_err(|e| db_error(e, None))? {
                let names = columns.get_or_insert_with(|| {
                    row.columns().iter().map(|c| c.name().to_owned()).collect()
                });
                let cells = (0..names.len())
                    .map(|i| backup_read_cell(&row, i))
                    .collect::<Result<Vec<_>, _>>()?;
                batch.push(cells);
                if batch.len() == ROWS_PER_CHUNK {
                    sink.put(TableChunk {
                        table: (*table).to_owned(),
                        columns: names.clone(),
                        rows: std::mem::take(&mut batch),
                    })
                    .await?;
                }
            }
            if let (Some(columns), false) = (columns, batch.is_empty()) {
                sink.put(TableChunk {
                    table: (*table).to_owned(),
                    columns,
                    rows: batch,
                })
                .await?;
            }
        }
        tx.rollback().await.map_err(|e| db_error(e, None))?;
        Ok(schema)
    }

    pub(super) async fn store_holds_a_vault(&self) -> Result<bool, Error> {
        if !self.schema_exists().await? {
            return Ok(false);
        }
        let (found,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM master_keys) + (SELECT COUNT(*) FROM users) \
             + (SELECT COUNT(*) FROM keys) + (SELECT COUNT(*) FROM audit_events)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(found > 0)
    }

    pub(super) async fn import_backup_tables(
        &self,
        source: &mut dyn ChunkSource,
    ) -> Result<u64, Error> {
        let mut tx = self.begin_write().await?;
        let mut kinds = std::collections::HashMap::new();
        for table in BACKED_UP.iter().rev().chain(&LEFT_OUT[..2]) {
            let columns = backup_column_kinds(&mut tx, table).await?;
            if columns.is_empty() {
                // Not in this schema version (the backup's is older; later migrations
                // create it).
                continue;
            }
            let sql = format!("DELETE FROM {table}");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
            kinds.insert(*table, columns);
        }
        let mut inserted = 0u64;
        while let Some(chunk) = source.next_chunk().await? {
            let Some((table, columns)) = kinds.get_key_value(chunk.table.as_str()) else {
                return Err(Error::invalid(
                    "backup_unknown_table",
                    format!(
                        "the backup holds table `{}`, which this store's schema does not have",
                        keyward_core::label::printable(&chunk.table)
                    ),
                ));
            };
            let targets = chunk
                .columns
                .iter()
                .map(|name| {
                    columns
                        .iter()
                        .find(|(column, _)| column == name)
                        .map(|(_, kind)| *kind)
                        .ok_or_else(|| {
                            Error::invalid(
                                "backup_unknown_column",
                                format!(
                                    "the backup's table `{table}` has column `{}`, which this store's schema does not have",
                                    keyward_core::label::printable(name)
                                ),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let column_list = chunk.columns.join(", ");
            for rows in chunk.rows.chunks(ROWS_PER_CHUNK) {
                let mut insert: QueryBuilder<Db> =
                    QueryBuilder::new(format!("INSERT INTO {table} ({column_list}) "));
                let mut refused = None;
                insert.push_values(rows, |mut values, row: &Vec<Cell>| {
                    if row.len() != targets.len() {
                        refused.get_or_insert_with(|| width_error(table));
                        return;
                    }
                    for ((cell, kind), name) in row.iter().zip(&targets).zip(&chunk.columns) {
                        if let Err(e) = bind_cell(&mut values, cell, *kind) {
                            refused.get_or_insert_with(|| {
                                Error::invalid(
                                    "backup_bad_value",
                                    format!(
                                        "the backup's `{table}.{}` {e}",
                                        keyward_core::label::printable(name)
                                    ),
                                )
                            });
                        }
                    }
                });
                if let Some(e) = refused {
                    return Err(e);
                }
                insert
                    .build()
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
                inserted += rows.len() as u64;
            }
        }
        for sql in backup_tidy_sql() {
            sqlx::query(*sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        tx.commit().await.map_err(|e| db_error(e, None))?;
        Ok(inserted)
    }
}

fn width_error(table: &str) -> Error {
    Error::invalid(
        "backup_bad_row",
        format!("a row of the backup's `{table}` does not have one value per column"),
    )
}

/// Binds `cell` as the target column wants it; booleans arrive as 0/1.
fn bind_cell(
    values: &mut sqlx::query_builder::Separated<'_, Db, &'static str>,
    cell: &Cell,
    kind: ColumnKind,
) -> Result<(), String> {
    use ColumnKind as K;
    let narrow = |v: i64, what: &str| format!("value {v} does not fit a {what} column");
    match (cell, kind) {
        (Cell::Null, K::Any | K::BigInt) => values.push_bind(None::<i64>),
        (Cell::Null, K::Int) => values.push_bind(None::<i32>),
        (Cell::Null, K::SmallInt) => values.push_bind(None::<i16>),
        (Cell::Null, K::Bool) => values.push_bind(None::<bool>),
        (Cell::Null, K::Real) => values.push_bind(None::<f64>),
        (Cell::Null, K::Text) => values.push_bind(None::<String>),
        (Cell::Null, K::Bytes) => values.push_bind(None::<Vec<u8>>),
        (Cell::Integer(v), K::Any | K::BigInt) => values.push_bind(*v),
        (Cell::Integer(v), K::Int) => {
            values.push_bind(i32::try_from(*v).map_err(|_| narrow(*v, "32-bit"))?)
        }
        (Cell::Integer(v), K::SmallInt) => {
            values.push_bind(i16::try_from(*v).map_err(|_| narrow(*v, "16-bit"))?)
        }
        (Cell::Integer(v), K::Bool) => values.push_bind(*v != 0),
        #[allow(clippy::cast_precision_loss, reason = "an integer in a float column")]
        (Cell::Integer(v), K::Real) => values.push_bind(*v as f64),
        (Cell::Real(v), K::Any | K::Real) => values.push_bind(*v),
        (Cell::Text(v), K::Any | K::Text) => values.push_bind(v.as_str()),
        (Cell::Bytes(v), K::Any | K::Bytes) => values.push_bind(v.as_slice()),
        (cell, kind) => {
            let held = match cell {
                Cell::Null => "null",
                Cell::Integer(_) => "an integer",
                Cell::Real(_) => "a number",
                Cell::Text(_) => "text",
                Cell::Bytes(_) => "bytes",
            };
            return Err(format!("holds {held} where the store keeps {kind:?}"));
        }
    };
    Ok(())
}
