//! `RotationStore`: guided rotations and their version moves.

use super::*;

const ROTATION_COLUMNS: &str = "id, key_id, step, old_version, new_version, managed, canary_percent, window_ms, \
    window_ends_at, validation, verification, canary_served, canary_rejected, fallback_served, new_rejected_at, \
    created_by, created_at, updated_at, revision";

fn opt_json<T: serde::de::DeserializeOwned>(
    what: &str,
    text: Option<String>,
) -> Result<Option<T>, Error> {
    text.as_deref().map(|t| from_json(what, t)).transpose()
}

fn opt_json_text<T: serde::Serialize>(
    what: &str,
    value: Option<&T>,
) -> Result<Option<String>, Error> {
    value.map(|v| json_text(what, v)).transpose()
}

fn rotation_row(r: &DbRow) -> Result<Rotation, Error> {
    let percent = get::<i64>(r, "canary_percent")?;
    Ok(Rotation {
        id: parse("rotation id", &get::<String>(r, "id")?)?,
        key_id: parse("key id", &get::<String>(r, "key_id")?)?,
        step: parse("rotation step", &get::<String>(r, "step")?)?,
        old_version: version_number(get(r, "old_version")?)?,
        new_version: version_number(get(r, "new_version")?)?,
        managed: opt_json("rotation management", get(r, "managed")?)?,
        canary_percent: u8::try_from(percent).map_err(|e| corrupt("canary percent", e))?,
        window: jiff::SignedDuration::from_millis(get(r, "window_ms")?),
        window_ends_at: opt_timestamp(get(r, "window_ends_at")?)?,
        validation: opt_json("rotation validation", get(r, "validation")?)?,
        verification: opt_json("rotation verification", get(r, "verification")?)?,
        traffic: RotationTraffic {
            canary_served: count(r, "canary_served")?,
            canary_rejected: count(r, "canary_rejected")?,
            fallback_served: count(r, "fallback_served")?,
            new_rejected_at: opt_timestamp(get(r, "new_rejected_at")?)?,
        },
        created_by: get(r, "created_by")?,
        created_at: timestamp(get(r, "created_at")?)?,
        updated_at: timestamp(get(r, "updated_at")?)?,
        revision: count(r, "revision")?,
    })
}

fn window_ms(rotation: &Rotation) -> i64 {
    i64::try_from(rotation.window.as_millis()).unwrap_or(i64::MAX)
}

impl ThisStore {
    /// Moves version states (and the key's current version) for one rotation step.
    async fn move_versions(
        tx: &mut sqlx::Transaction<'static, Db>,
        key_id: &KeyId,
        moves: VersionMove,
        now: Timestamp,
    ) -> Result<(), Error> {
        let set_state = |state: VersionState, version: u32, from: VersionState| {
            sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2 AND version = $3 AND state = $4")
                .bind(state.as_str())
                .bind(key_id.as_str())
                .bind(i64::from(version))
                .bind(from.as_str())
        };
        match moves {
            VersionMove::Promote { new, old } => {
                sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2 AND state = $3")
                    .bind(VersionState::Retired.as_str())
                    .bind(key_id.as_str())
                    .bind(VersionState::Previous.as_str())
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
                set_state(VersionState::Previous, old, VersionState::Current)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
                let promoted = set_state(VersionState::Current, new, VersionState::Pending)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
                let key = sqlx::query(
                    "UPDATE keys SET current_version = $1, updated_at = $2, rotated_at = $2, \
                     current_hint = (SELECT hint FROM key_versions WHERE key_id = $3 AND version = $1) \
                     WHERE id = $3 AND deleted_at IS NULL AND revoked_at IS NULL",
                )
                .bind(i64::from(new))
                .bind(millis(now))
                .bind(key_id.as_str())
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error(e, None))?;
                if promoted.rows_affected() != 1 || key.rows_affected() != 1 {
                    return Err(Error::not_found(
                        "key_not_found",
                        format!(
                            "key {key_id} is no longer live, or its pending version {new} is gone"
                        ),
                    ));
                }
            }
            VersionMove::Retire { version } => {
                for from in [VersionState::Previous, VersionState::Pending] {
                    set_state(VersionState::Retired, version, from)
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| db_error(e, None))?;
                }
                sqlx::query("UPDATE keys SET updated_at = $1 WHERE id = $2")
                    .bind(millis(now))
                    .bind(key_id.as_str())
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RotationStore for ThisStore {
    async fn insert_rotation(
        &self,
        r: &Rotation,
        pending: Option<&KeyVersion>,
    ) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rotations ({ROTATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        )))
        .bind(r.id.as_str())
        .bind(r.key_id.as_str())
        .bind(r.step.as_str())
        .bind(i64::from(r.old_version))
        .bind(i64::from(r.new_version))
        .bind(opt_json_text("rotation management", r.managed.as_ref())?)
        .bind(i64::from(r.canary_percent))
        .bind(window_ms(r))
        .bind(r.window_ends_at.map(millis))
        .bind(opt_json_text("rotation validation", r.validation.as_ref())?)
        .bind(opt_json_text("rotation verification", r.verification.as_ref())?)
        .bind(0_i64)
        .bind(0_i64)
        .bind(0_i64)
        .bind(Option::<i64>::None)
        .bind(&r.created_by)
        .bind(millis(r.created_at))
        .bind(millis(r.updated_at))
        .bind(i64::try_from(r.revision).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            db_error(
                e,
                Some(("rotation_in_progress", "this key already has a rotation in progress; finish or cancel it first")),
            )
        })?;
        if let Some(version) = pending {
            Self::insert_version(&mut tx, version).await?;
        }
        commit(tx).await
    }

    async fn rotation(&self, id: &RotationId) -> Result<Option<Rotation>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(rotation_row).transpose()
    }

    async fn rotations_of_key(&self, key_id: &KeyId, limit: u32) -> Result<Vec<Rotation>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE key_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(key_id.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(rotation_row).collect()
    }

    async fn active_rotations(&self) -> Result<Vec<Rotation>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE {ACTIVE_ROTATION} ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(rotation_row).collect()
    }

    async fn advance_rotation(
        &self,
        next: &Rotation,
        expected: u64,
        pending: Option<&KeyVersion>,
        moves: Option<VersionMove>,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE rotations SET step = $1, managed = $2, canary_percent = $3, window_ends_at = $4, \
             validation = $5, verification = $6, updated_at = $7, revision = $8 \
             WHERE id = $9 AND revision = $10",
        )
        .bind(next.step.as_str())
        .bind(opt_json_text("rotation management", next.managed.as_ref())?)
        .bind(i64::from(next.canary_percent))
        .bind(next.window_ends_at.map(millis))
        .bind(opt_json_text("rotation validation", next.validation.as_ref())?)
        .bind(opt_json_text("rotation verification", next.verification.as_ref())?)
        .bind(millis(next.updated_at))
        .bind(i64::try_from(next.revision).unwrap_or(i64::MAX))
        .bind(next.id.as_str())
        .bind(i64::try_from(expected).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(version) = pending {
            Self::insert_version(&mut tx, version).await?;
        }
        if let Some(moves) = moves {
            Self::move_versions(&mut tx, &next.key_id, moves, now).await?;
        }
        commit(tx).await?;
        Ok(true)
    }

    async fn add_rotation_traffic(
        &self,
        traffic: &[(KeyId, RotationTraffic)],
    ) -> Result<(), Error> {
        if traffic.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (key_id, t) in traffic {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE rotations SET canary_served = canary_served + $1, canary_rejected = canary_rejected + $2, \
                 fallback_served = fallback_served + $3, \
                 new_rejected_at = CASE WHEN $4 IS NULL THEN new_rejected_at \
                     WHEN new_rejected_at IS NULL OR new_rejected_at < $4 THEN $4 ELSE new_rejected_at END \
                 WHERE key_id = $5 AND {ACTIVE_ROTATION}"
            )))
            .bind(i64::try_from(t.canary_served).unwrap_or(i64::MAX))
            .bind(i64::try_from(t.canary_rejected).unwrap_or(i64::MAX))
            .bind(i64::try_from(t.fallback_served).unwrap_or(i64::MAX))
            .bind(t.new_rejected_at.map(millis))
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }
}
