//! `ApprovalStore`: approval requests and the policy.

use super::*;

const APPROVAL_COLUMNS: &str = "id, status, operation, operation_hash, reason, requested_by, required, approver_roles, decisions, created_at, expires_at, executed_at, revision";

fn approval_row(r: &DbRow) -> Result<ApprovalRequest, Error> {
    let required: i64 = get(r, "required")?;
    let revision: i64 = get(r, "revision")?;
    Ok(ApprovalRequest {
        id: parse("approval id", &get::<String>(r, "id")?)?,
        status: parse("approval status", &get::<String>(r, "status")?)?,
        operation: from_json("approval operation", &get::<String>(r, "operation")?)?,
        operation_hash: get(r, "operation_hash")?,
        reason: get(r, "reason")?,
        requested_by: from_json("approval requester", &get::<String>(r, "requested_by")?)?,
        required: u8::try_from(required).map_err(|e| corrupt("approvals required", e))?,
        approver_roles: from_json("approver roles", &get::<String>(r, "approver_roles")?)?,
        decisions: from_json("approval decisions", &get::<String>(r, "decisions")?)?,
        created_at: timestamp(get(r, "created_at")?)?,
        expires_at: timestamp(get(r, "expires_at")?)?,
        executed_at: opt_timestamp(get(r, "executed_at")?)?,
        revision: u32::try_from(revision).map_err(|e| corrupt("approval revision", e))?,
    })
}

#[async_trait]
impl ApprovalStore for ThisStore {
    async fn insert_approval(&self, a: &ApprovalRequest) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO approvals (id, status, operation, operation_hash, reason, requested_by_id, requested_by, required, \
             approver_roles, decisions, created_at, expires_at, executed_at, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(a.id.as_str())
        .bind(a.status.as_str())
        .bind(json_text("operation", &a.operation)?)
        .bind(&a.operation_hash)
        .bind(&a.reason)
        .bind(&a.requested_by.id)
        .bind(json_text("requester", &a.requested_by)?)
        .bind(i64::from(a.required))
        .bind(json_text("approver roles", &a.approver_roles)?)
        .bind(json_text("decisions", &a.decisions)?)
        .bind(millis(a.created_at))
        .bind(millis(a.expires_at))
        .bind(a.executed_at.map(millis))
        .bind(i64::from(a.revision))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, Some(("approval_exists", "an approval with this id exists"))))?;
        Ok(())
    }

    async fn approval(&self, id: &ApprovalId) -> Result<Option<ApprovalRequest>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(approval_row).transpose()
    }

    async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        requested_by: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApprovalRequest>, Error> {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE 1 = 1"
        ));
        if let Some(status) = status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(who) = requested_by {
            q.push(" AND requested_by_id = ").push_bind(who.to_owned());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter().map(approval_row).collect()
    }

    async fn update_approval(&self, a: &ApprovalRequest, expected: u32) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE approvals SET status = $1, decisions = $2, executed_at = $3, revision = $4 \
             WHERE id = $5 AND revision = $6",
        )
        .bind(a.status.as_str())
        .bind(json_text("decisions", &a.decisions)?)
        .bind(a.executed_at.map(millis))
        .bind(i64::from(a.revision))
        .bind(a.id.as_str())
        .bind(i64::from(expected))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }
}
