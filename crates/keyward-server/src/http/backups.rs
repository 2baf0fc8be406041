//! `POST /api/v1/backups`: a backup of the whole vault, downloaded (the same use case as
//! `keyward backup create` and the settings page's button).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use keyward_app::App;
use keyward_app::backup::Protection;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{Authorized, perm};
use super::error::ApiResult;
use super::extract::ApiJson;

/// Who can open the backup: age recipients, else a passphrase.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// age recipients (`age1…`) the backup is encrypted to.
    #[serde(default)]
    recipients: Vec<String>,
    /// Used when there are no recipients: at least 12 characters.
    #[schema(value_type = Option<String>, format = Password)]
    passphrase: Option<SecretString>,
    /// Include raw usage records (rollups are always included).
    #[serde(default)]
    raw_usage: bool,
}

impl std::fmt::Debug for BackupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupRequest")
            .field("recipients", &self.recipients.len())
            .field("raw_usage", &self.raw_usage)
            .finish_non_exhaustive()
    }
}

impl BackupRequest {
    pub(crate) fn protection(
        recipients: &[String],
        passphrase: Option<SecretString>,
    ) -> Result<Protection, keyward_core::Error> {
        match passphrase {
            _ if !recipients.is_empty() => Protection::recipients(recipients),
            Some(passphrase) => Protection::passphrase(passphrase),
            None => Err(keyward_core::Error::invalid(
                "backup_no_recipient",
                "a backup must be encrypted: give `recipients` (age1…) or a `passphrase`",
            )),
        }
    }
}

/// Writes an encrypted backup of the whole vault (keys stay sealed, tokens hashed; the
/// manifest is signed with the vault's audit key) and answers it as a download. Owners
/// only, after a recent MFA check; the approval policy may cover it as `export`; audited as
/// `backup.create`.
#[utoipa::path(post, path = "/api/v1/backups", tag = "backups", request_body = BackupRequest,
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "the backup file (age-encrypted)")),
    security(("bearer" = [])))]
pub async fn create_backup(
    auth: Authorized<perm::VaultBackup>,
    State(app): State<Arc<App>>,
    ApiJson(request): ApiJson<BackupRequest>,
) -> ApiResult<Response> {
    let protection = BackupRequest::protection(&request.recipients, request.passphrase)?;
    Ok(crate::backups::download(&app, auth.actor(), protection, request.raw_usage).await?)
}
