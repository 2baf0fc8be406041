//! `AlertStore`: anomaly alerts (one unresolved per subject and signal, by a partial unique
//! index) and mutes.

use super::*;
use keyward_core::alert::{Alert, AlertFilter, AlertMute, AlertNote, AlertStatus, AlertSubject};
use keyward_core::id::AppTokenId;
use keyward_core::id::{AlertId, MuteId};
use keyward_core::ports::{AlertStore, AlertWrite};
use keyward_core::response::{Containment, Measure, Stage};
use keyward_core::sighting::{Sighting, SightingKind};

const ALERT_COLUMNS: &str = "id, subject_kind, subject_id, signal, severity, status, score, reason, opened_at, \
     last_seen_at, acknowledged_by, acknowledged_at, acknowledged_comment, resolved_by, resolved_at, resolved_comment, stage";
const MUTE_COLUMNS: &str =
    "id, subject_kind, subject_id, signal, until, reason, created_by, created_at";

fn note(r: &DbRow, prefix: &str) -> Result<Option<AlertNote>, Error> {
    let by: Option<String> = get(r, &format!("{prefix}_by"))?;
    let at: Option<i64> = get(r, &format!("{prefix}_at"))?;
    Ok(match (by, at) {
        (Some(by), Some(at)) => Some(AlertNote {
            by,
            at: timestamp(at)?,
            comment: get(r, &format!("{prefix}_comment"))?,
        }),
        _ => None,
    })
}

fn alert_row(r: &DbRow) -> Result<Alert, Error> {
    Ok(Alert {
        id: parse("alert id", &get::<String>(r, "id")?)?,
        subject: AlertSubject::parse(
            &get::<String>(r, "subject_kind")?,
            &get::<String>(r, "subject_id")?,
        )
        .map_err(|e| corrupt("alert subject", e.message))?,
        signal: parse("alert signal", &get::<String>(r, "signal")?)?,
        severity: parse("alert severity", &get::<String>(r, "severity")?)?,
        status: parse("alert status", &get::<String>(r, "status")?)?,
        score: get(r, "score")?,
        reason: get(r, "reason")?,
        opened_at: timestamp(get(r, "opened_at")?)?,
        last_seen_at: timestamp(get(r, "last_seen_at")?)?,
        acknowledged: note(r, "acknowledged")?,
        resolved: note(r, "resolved")?,
        stage: parse("alert stage", &get::<String>(r, "stage")?)?,
    })
}

const CONTAINMENT_COLUMNS: &str = "subject_kind, subject_id, measure, requests, per_seconds, alert_id, reason, created_by, created_at";

fn containment_row(r: &DbRow) -> Result<Containment, Error> {
    let measure = match get::<String>(r, "measure")?.as_str() {
        "freeze" => Measure::Freeze,
        "throttle" => {
            let count = |name: &str| -> Result<u32, Error> {
                get::<Option<i64>>(r, name)?
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        corrupt("throttle", format!("{name} is missing or out of range"))
                    })
            };
            Measure::Throttle(keyward_core::app_token::RateLimit {
                requests: count("requests")?,
                per_seconds: count("per_seconds")?,
            })
        }
        other => return Err(corrupt("containment measure", other.to_owned())),
    };
    Ok(Containment {
        subject: AlertSubject::parse(
            &get::<String>(r, "subject_kind")?,
            &get::<String>(r, "subject_id")?,
        )
        .map_err(|e| corrupt("containment subject", e.message))?,
        measure,
        alert: get::<Option<String>>(r, "alert_id")?
            .map(|a| parse("alert id", &a))
            .transpose()?,
        reason: get(r, "reason")?,
        by: get(r, "created_by")?,
        at: timestamp(get(r, "created_at")?)?,
    })
}

fn mute_row(r: &DbRow) -> Result<AlertMute, Error> {
    Ok(AlertMute {
        id: parse("mute id", &get::<String>(r, "id")?)?,
        subject: AlertSubject::parse(
            &get::<String>(r, "subject_kind")?,
            &get::<String>(r, "subject_id")?,
        )
        .map_err(|e| corrupt("mute subject", e.message))?,
        signal: get::<Option<String>>(r, "signal")?
            .map(|s| parse("mute signal", &s))
            .transpose()?,
        until: timestamp(get(r, "until")?)?,
        reason: get(r, "reason")?,
        created_by: get(r, "created_by")?,
        created_at: timestamp(get(r, "created_at")?)?,
    })
}

#[async_trait]
impl AlertStore for ThisStore {
    async fn insert_alert(&self, a: &Alert) -> Result<AlertWrite, Error> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, NULL, NULL, NULL, $11) \
             ON CONFLICT (subject_kind, subject_id, signal) WHERE status <> 'resolved' DO NOTHING"
        )))
        .bind(a.id.as_str())
        .bind(a.subject.kind())
        .bind(a.subject.id())
        .bind(a.signal.as_str())
        .bind(a.severity.as_str())
        .bind(a.status.as_str())
        .bind(a.score)
        .bind(&a.reason)
        .bind(millis(a.opened_at))
        .bind(millis(a.last_seen_at))
        .bind(a.stage.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        let written = if inserted.rows_affected() == 1 {
            AlertWrite::Opened
        } else {
            let existing: (String,) = sqlx::query_as(
                "UPDATE alerts SET last_seen_at = CASE WHEN last_seen_at > $4 THEN last_seen_at ELSE $4 END \
                 WHERE subject_kind = $1 AND subject_id = $2 AND signal = $3 AND status <> 'resolved' RETURNING id",
            )
            .bind(a.subject.kind())
            .bind(a.subject.id())
            .bind(a.signal.as_str())
            .bind(millis(a.last_seen_at))
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
            AlertWrite::Refreshed(parse("alert id", &existing.0)?)
        };
        commit(tx).await?;
        Ok(written)
    }

    async fn alert(&self, id: &AlertId) -> Result<Option<Alert>, Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?
        .as_ref()
        .map(alert_row)
        .transpose()
    }

    async fn alerts(
        &self,
        filter: &AlertFilter,
        before: Option<&AlertId>,
        limit: u32,
    ) -> Result<Vec<Alert>, Error> {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new(format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1 = 1"));
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(signal) = filter.signal {
            q.push(" AND signal = ").push_bind(signal.as_str());
        }
        if let Some(subject) = &filter.subject {
            q.push(" AND subject_kind = ").push_bind(subject.kind());
            q.push(" AND subject_id = ")
                .push_bind(subject.id().to_owned());
        }
        if let Some(before) = before {
            q.push(" AND id < ").push_bind(before.as_str().to_owned());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        q.build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .iter()
            .map(alert_row)
            .collect()
    }

    async fn update_alert_status(&self, a: &Alert, from: &[AlertStatus]) -> Result<bool, Error> {
        let mut q: QueryBuilder<Db> = QueryBuilder::new("UPDATE alerts SET status = ");
        q.push_bind(a.status.as_str());
        for (prefix, note) in [("acknowledged", &a.acknowledged), ("resolved", &a.resolved)] {
            q.push(format!(", {prefix}_by = "))
                .push_bind(note.as_ref().map(|n| n.by.clone()));
            q.push(format!(", {prefix}_at = "))
                .push_bind(note.as_ref().map(|n| millis(n.at)));
            q.push(format!(", {prefix}_comment = "))
                .push_bind(note.as_ref().and_then(|n| n.comment.clone()));
        }
        q.push(" WHERE id = ").push_bind(a.id.as_str().to_owned());
        q.push(" AND status IN (");
        let mut statuses = q.separated(", ");
        for status in from {
            statuses.push_bind(status.as_str());
        }
        q.push(")");
        let mut tx = self.begin_write().await?;
        let done = q
            .build()
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_mute(&self, m: &AlertMute) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO alert_mutes ({MUTE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )))
        .bind(m.id.as_str())
        .bind(m.subject.kind())
        .bind(m.subject.id())
        .bind(m.signal.map(|s| s.as_str()))
        .bind(millis(m.until))
        .bind(&m.reason)
        .bind(&m.created_by)
        .bind(millis(m.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        commit(tx).await
    }

    async fn mutes(&self, now: Timestamp) -> Result<Vec<AlertMute>, Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MUTE_COLUMNS} FROM alert_mutes WHERE until > $1 ORDER BY id"
        )))
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?
        .iter()
        .map(mute_row)
        .collect()
    }

    async fn advance_alert_stage(
        &self,
        id: &AlertId,
        from: Stage,
        to: Stage,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE alerts SET stage = $1 WHERE id = $2 AND stage = $3")
            .bind(to.as_str())
            .bind(id.as_str())
            .bind(from.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn contain(&self, c: &Containment) -> Result<bool, Error> {
        let (requests, per_seconds) = match c.measure {
            Measure::Throttle(limit) => (
                Some(i64::from(limit.requests)),
                Some(i64::from(limit.per_seconds)),
            ),
            Measure::Freeze => (None, None),
        };
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO containments ({CONTAINMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (subject_kind, subject_id, measure) DO NOTHING"
        )))
        .bind(c.subject.kind())
        .bind(c.subject.id())
        .bind(c.measure.name())
        .bind(requests)
        .bind(per_seconds)
        .bind(c.alert.as_ref().map(|a| a.as_str()))
        .bind(&c.reason)
        .bind(&c.by)
        .bind(millis(c.at))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn containments(&self) -> Result<Vec<Containment>, Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONTAINMENT_COLUMNS} FROM containments ORDER BY created_at, subject_id, measure"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?
        .iter()
        .map(containment_row)
        .collect()
    }

    async fn lift_containment(&self, subject: &AlertSubject, measure: &str) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM containments WHERE subject_kind = $1 AND subject_id = $2 AND measure = $3",
        )
        .bind(subject.kind())
        .bind(subject.id())
        .bind(measure)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_sightings(&self, sightings: &[Sighting]) -> Result<Vec<Sighting>, Error> {
        let mut tx = self.begin_write().await?;
        let mut new = Vec::new();
        for s in sightings {
            let done = sqlx::query(
                "INSERT INTO token_sightings (token_id, kind, value, first_seen) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (token_id, kind, value) DO NOTHING",
            )
            .bind(s.token.as_str())
            .bind(s.kind.as_str())
            .bind(&s.value)
            .bind(millis(s.at))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
            if done.rows_affected() == 1 {
                new.push(s.clone());
            }
        }
        commit(tx).await?;
        Ok(new)
    }

    async fn token_sightings(
        &self,
        token: &AppTokenId,
        kind: SightingKind,
    ) -> Result<Vec<(String, Timestamp)>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT value, first_seen FROM token_sightings WHERE token_id = $1 AND kind = $2 \
             ORDER BY first_seen, value",
        )
        .bind(token.as_str())
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(value, at)| Ok((value, timestamp(at)?)))
            .collect()
    }

    async fn delete_mute(&self, id: &MuteId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM alert_mutes WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }
}
