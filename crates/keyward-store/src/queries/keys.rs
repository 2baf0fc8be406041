//! `KeyStore`: keys, their versions and tags, listing with filters and cursors, deletion, purge and emergency revocation.

use super::*;

#[async_trait]
impl KeyStore for ThisStore {
    async fn insert_keys(&self, batch: &[(Key, KeyVersion)]) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        for (key, first) in batch {
            sqlx::query(
                "INSERT INTO keys (id, service_id, environment, alias, alias_lower, description, owner, tags, criticality, enabled, \
                 expires_at, current_version, current_hint, created_by, created_at, updated_at, last_used_at, deleted_at, deleted_by, controls, \
                 revoked_at, revoked_by, revoke_reason, rotated_at, revocation_check) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)",
            )
            .bind(key.id.as_str())
            .bind(&key.service_id)
            .bind(&key.environment)
            .bind(&key.alias)
            .bind(key.alias.to_lowercase())
            .bind(&key.description)
            .bind(&key.owner)
            .bind(tags_json(&key.tags)?)
            .bind(key.criticality.as_str())
            .bind(key.enabled)
            .bind(key.expires_at.map(millis))
            .bind(i64::from(key.current_version))
            .bind(&key.current_hint)
            .bind(&key.created_by)
            .bind(millis(key.created_at))
            .bind(millis(key.updated_at))
            .bind(key.last_used_at.map(millis))
            .bind(key.deleted_at.map(millis))
            .bind(&key.deleted_by)
            .bind(controls_json(key)?)
            .bind(key.revoked.as_ref().map(|r| millis(r.at)))
            .bind(key.revoked.as_ref().map(|r| r.by.clone()))
            .bind(key.revoked.as_ref().map(|r| r.reason.clone()))
            .bind(millis(key.rotated_at))
            .bind(revocation_check_json(key)?)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, Some(ALIAS_TAKEN)))?;
            Self::write_tags(&mut tx, &key.id, &key.tags).await?;
            Self::insert_version(&mut tx, first).await?;
        }
        commit(tx).await
    }

    async fn key(&self, id: &KeyId) -> Result<Option<Key>, Error> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: &PageRequest,
        now: Timestamp,
    ) -> Result<Page<Key>, Error> {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new(format!("SELECT {KEY_COLUMNS} FROM keys WHERE "));
        match filter.status {
            None => q.push("deleted_at IS NULL"),
            Some(KeyStatus::Deleted) => q.push("deleted_at IS NOT NULL"),
            Some(KeyStatus::Revoked) => q.push("deleted_at IS NULL AND revoked_at IS NOT NULL"),
            Some(KeyStatus::Disabled) => q
                .push("deleted_at IS NULL AND revoked_at IS NULL AND enabled = ")
                .push_bind(false),
            Some(KeyStatus::Expired) => q
                .push("deleted_at IS NULL AND revoked_at IS NULL AND enabled = ")
                .push_bind(true)
                .push(" AND expires_at <= ")
                .push_bind(millis(now)),
            Some(KeyStatus::Active) => q
                .push("deleted_at IS NULL AND revoked_at IS NULL AND enabled = ")
                .push_bind(true)
                .push(" AND (expires_at IS NULL OR expires_at > ")
                .push_bind(millis(now))
                .push(")"),
        };
        if let Some(services) = &filter.service_ids {
            if services.is_empty() {
                return Ok(Page {
                    items: vec![],
                    next: None,
                });
            }
            q.push(" AND service_id IN (");
            let mut list = q.separated(", ");
            for service in services {
                list.push_bind(service.clone());
            }
            q.push(")");
        }
        if let Some(environment) = &filter.environment {
            q.push(" AND environment = ").push_bind(environment.clone());
        }
        if let Some(areas) = &filter.areas {
            // An empty list (or an area naming no services) matches nothing.
            q.push(" AND (1 = 0");
            for area in areas {
                q.push(" OR (1 = 1");
                for (column, values) in [
                    ("service_id", &area.service_ids),
                    ("environment", &area.environments),
                ] {
                    let Some(values) = values else { continue };
                    if values.is_empty() {
                        q.push(" AND 1 = 0");
                        continue;
                    }
                    q.push(format!(" AND {column} IN ("));
                    let mut list = q.separated(", ");
                    for value in values {
                        list.push_bind(value.clone());
                    }
                    q.push(")");
                }
                q.push(")");
            }
            q.push(")");
        }
        if let Some(tag) = &filter.tag {
            q.push(" AND id IN (SELECT key_id FROM key_tags WHERE tag = ")
                .push_bind(tag.clone())
                .push(")");
        }
        if let Some(text) = filter.text.as_deref().filter(|t| !t.is_empty()) {
            let pattern = like_pattern(text);
            q.push(" AND (alias_lower LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR LOWER(COALESCE(description, '')) LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        if let Some(after) = &page.after {
            q.push(" AND id < ").push_bind(after.as_str().to_owned());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(page.limit) + 1);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        let mut items = rows
            .iter()
            .map(key_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|k| k.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn update_key(&self, key: &Key, expected_updated_at: Timestamp) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE keys SET alias = $1, alias_lower = $2, description = $3, owner = $4, tags = $5, criticality = $6, \
             enabled = $7, expires_at = $8, updated_at = $9, deleted_at = $10, deleted_by = $11, controls = $14, \
             revoked_at = $15, revoked_by = $16, revoke_reason = $17, revocation_check = $18 \
             WHERE id = $12 AND updated_at = $13",
        )
        .bind(&key.alias)
        .bind(key.alias.to_lowercase())
        .bind(&key.description)
        .bind(&key.owner)
        .bind(tags_json(&key.tags)?)
        .bind(key.criticality.as_str())
        .bind(key.enabled)
        .bind(key.expires_at.map(millis))
        .bind(millis(key.updated_at))
        .bind(key.deleted_at.map(millis))
        .bind(&key.deleted_by)
        .bind(key.id.as_str())
        .bind(millis(expected_updated_at))
        .bind(controls_json(key)?)
        .bind(key.revoked.as_ref().map(|r| millis(r.at)))
        .bind(key.revoked.as_ref().map(|r| r.by.clone()))
        .bind(key.revoked.as_ref().map(|r| r.reason.clone()))
        .bind(revocation_check_json(key)?)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, Some(ALIAS_TAKEN)))?;
        if updated.rows_affected() == 0 {
            return Err(Error::conflict(
                "concurrent_update",
                format!(
                    "key {} was changed or removed by someone else; reload and retry",
                    key.id
                ),
            ));
        }
        Self::write_tags(&mut tx, &key.id, &key.tags).await?;
        commit(tx).await
    }

    async fn add_version(&self, version: &KeyVersion, now: Timestamp) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let rotating: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM rotations WHERE key_id = $1 AND {ACTIVE_ROTATION}"
        )))
        .bind(version.key_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        if let Some((id,)) = rotating {
            return Err(Error::conflict(
                "rotation_in_progress",
                format!("rotation {id} is replacing this key's value; finish or cancel it first"),
            ));
        }
        if version.state == VersionState::Current {
            for (from, to) in [
                (VersionState::Previous, VersionState::Retired),
                (VersionState::Current, VersionState::Previous),
            ] {
                sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2 AND state = $3")
                    .bind(to.as_str())
                    .bind(version.key_id.as_str())
                    .bind(from.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
            }
            let updated = sqlx::query(
                "UPDATE keys SET current_version = $1, current_hint = $2, updated_at = $3, rotated_at = $5 \
                 WHERE id = $4 AND deleted_at IS NULL",
            )
            .bind(i64::from(version.version))
            .bind(&version.hint)
            .bind(millis(now))
            .bind(version.key_id.as_str())
            .bind(millis(version.created_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
            if updated.rows_affected() == 0 {
                return Err(Error::not_found(
                    "key_not_found",
                    format!("there is no live key {}", version.key_id),
                ));
            }
        }
        Self::insert_version(&mut tx, version).await?;
        commit(tx).await
    }

    async fn record_key_use(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), Error> {
        self.record_use("keys", uses.iter().map(|(id, at)| (id.as_str(), *at)))
            .await
    }

    async fn live_keys(&self) -> Result<Vec<(Key, KeyVersion)>, Error> {
        let keys_sql =
            format!("SELECT {KEY_COLUMNS} FROM keys WHERE deleted_at IS NULL ORDER BY id");
        let versions_sql = format!(
            "SELECT {} FROM key_versions v JOIN keys k ON k.id = v.key_id \
             WHERE k.deleted_at IS NULL AND v.version = k.current_version ORDER BY v.key_id",
            VERSION_COLUMNS
                .split(", ")
                .map(|c| format!("v.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // One read transaction, so keys and versions come from the same instant.
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, None))?;
        let keys = sqlx::query(sqlx::AssertSqlSafe(keys_sql))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        let versions = sqlx::query(sqlx::AssertSqlSafe(versions_sql))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        tx.commit().await.map_err(|e| db_error(e, None))?;
        let mut versions = versions
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .peekable();
        let mut out = Vec::with_capacity(keys.len());
        for row in &keys {
            let key = key_from_row(row)?;
            match versions.next_if(|v| v.key_id == key.id) {
                Some(version) => out.push((key, version)),
                None => return Err(corrupt("key", format!("{} has no current version", key.id))),
            }
        }
        Ok(out)
    }

    async fn versions(&self, key_id: &KeyId) -> Result<Vec<KeyVersion>, Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_id = $1 ORDER BY version DESC"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key_id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .iter()
            .map(version_from_row)
            .collect()
    }

    async fn purge_key(&self, id: &KeyId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        // Explicit deletes rather than relying on ON DELETE CASCADE being enabled.
        for sql in [
            "DELETE FROM rotations WHERE key_id = $1",
            "DELETE FROM key_probes WHERE key_id = $1",
            "DELETE FROM key_versions WHERE key_id = $1",
            "DELETE FROM key_tags WHERE key_id = $1",
            "DELETE FROM key_flags WHERE key_id = $1",
            "DELETE FROM health_states WHERE subject = 'key:' || $1",
        ] {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        let deleted = sqlx::query("DELETE FROM keys WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn purge_deleted_before(&self, cutoff: Timestamp) -> Result<Vec<KeyId>, Error> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM keys WHERE deleted_at IS NOT NULL AND deleted_at <= $1")
                .bind(millis(cutoff))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        let mut purged = Vec::with_capacity(ids.len());
        for (id,) in ids {
            let id: KeyId = parse("key id", &id)?;
            if self.purge_key(&id).await? {
                purged.push(id);
            }
        }
        Ok(purged)
    }

    async fn key_flags(&self) -> Result<Vec<KeyFlag>, Error> {
        let rows =
            sqlx::query("SELECT key_id, kind, reason, since, until FROM key_flags ORDER BY key_id")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|row| {
                Ok(KeyFlag {
                    key_id: parse("key id", &get::<String>(row, "key_id")?)?,
                    kind: parse("flag kind", &get::<String>(row, "kind")?)?,
                    reason: get(row, "reason")?,
                    since: timestamp(get(row, "since")?)?,
                    until: opt_timestamp(get(row, "until")?)?,
                })
            })
            .collect()
    }

    async fn set_key_flags(&self, flags: &[KeyFlag]) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        for flag in flags {
            sqlx::query(
                "INSERT INTO key_flags (key_id, kind, reason, since, until) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key_id) DO UPDATE SET kind = excluded.kind, reason = excluded.reason, \
                 since = excluded.since, until = excluded.until",
            )
            .bind(flag.key_id.as_str())
            .bind(flag.kind.as_str())
            .bind(&flag.reason)
            .bind(millis(flag.since))
            .bind(flag.until.map(millis))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }

    async fn clear_key_flag(&self, key_id: &KeyId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM key_flags WHERE key_id = $1")
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(deleted.rows_affected() > 0)
    }
}
