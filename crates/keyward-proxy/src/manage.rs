//! Providers' key-management APIs: creating a new key and revoking an old one during a
//! managed rotation, with an admin key the vault holds. The admin key goes where the
//! service puts keys (same injection as the proxy); the created key's value arrives once,
//! in the answer, and is handed back only as a `SecretString` — Keyward's copy of the
//! answer is zeroized, and no error quotes it.

use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderValue};
use keyward_core::service::{KeyManagementApi, ServiceDefinition};
use keyward_core::{Error, ErrorKind};
use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::Proxy;
use crate::forward::{upstream_headers, upstream_url};
use crate::upstream::{SendError, full_body};

/// The largest management answer read (a created key with its metadata is far smaller).
const ANSWER_MAX: usize = 256 * 1024;

/// A key the provider created.
pub struct CreatedKey {
    /// The provider's id for it (what revoking names).
    pub provider_id: String,
    pub value: SecretString,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("provider_id", &self.provider_id)
            .finish_non_exhaustive()
    }
}

fn provider_failed(service: &ServiceDefinition, what: &str, status: Option<u16>) -> Error {
    let said = status.map_or_else(
        || "did not answer".to_owned(),
        |s| format!("answered HTTP {s}"),
    );
    Error::new(
        ErrorKind::Unavailable,
        "key_management_failed",
        format!("{} {said} when asked to {what}", service.name),
    )
}

/// An id as it may appear in a URL path segment.
fn project_segment(id: &str) -> Result<&str, Error> {
    keyward_core::guided_rotation::Managed::project_id(id)
}

impl Proxy {
    /// Asks the provider for a new key named `name` in `project`.
    pub async fn create_provider_key(
        &self,
        service: &ServiceDefinition,
        admin: &SecretString,
        project: &str,
        name: &str,
    ) -> Result<CreatedKey, Error> {
        match api(service)? {
            KeyManagementApi::OpenaiServiceAccounts => {
                #[derive(Deserialize)]
                struct Account {
                    id: String,
                    api_key: ApiKey,
                }
                #[derive(Deserialize)]
                struct ApiKey {
                    value: SecretString,
                }
                let path = format!(
                    "/v1/organization/projects/{}/service_accounts",
                    project_segment(project)?
                );
                let body = serde_json::to_vec(&serde_json::json!({ "name": name }))
                    .map_err(|e| Error::internal(format!("cannot encode a request: {e}")))?;
                let (status, answer) = self
                    .management_call(service, admin, http::Method::POST, &path, Some(body))
                    .await?;
                if !(200..300).contains(&status) {
                    return Err(provider_failed(service, "create a key", Some(status)));
                }
                let account: Account = serde_json::from_slice(&answer)
                    .map_err(|_| provider_failed(service, "create a key", Some(status)))?;
                Ok(CreatedKey {
                    provider_id: account.id,
                    value: account.api_key.value,
                })
            }
        }
    }

    /// Revokes the provider's key `provider_id` in `project`. A key already gone counts as
    /// revoked.
    pub async fn revoke_provider_key(
        &self,
        service: &ServiceDefinition,
        admin: &SecretString,
        project: &str,
        provider_id: &str,
    ) -> Result<(), Error> {
        match api(service)? {
            KeyManagementApi::OpenaiServiceAccounts => {
                let id = project_segment(provider_id)?;
                let path = format!(
                    "/v1/organization/projects/{}/service_accounts/{id}",
                    project_segment(project)?
                );
                let (status, _) = self
                    .management_call(service, admin, http::Method::DELETE, &path, None)
                    .await?;
                if (200..300).contains(&status) || status == 404 {
                    Ok(())
                } else {
                    Err(provider_failed(service, "revoke a key", Some(status)))
                }
            }
        }
    }

    /// Removes keys a crashed attempt may have created under `name` (so resuming a
    /// rotation never leaves a second new key alive at the provider).
    pub async fn remove_provider_keys_named(
        &self,
        service: &ServiceDefinition,
        admin: &SecretString,
        project: &str,
        name: &str,
    ) -> Result<u32, Error> {
        match api(service)? {
            KeyManagementApi::OpenaiServiceAccounts => {
                #[derive(Deserialize)]
                struct List {
                    data: Vec<Listed>,
                }
                #[derive(Deserialize)]
                struct Listed {
                    id: String,
                    name: String,
                }
                let path = format!(
                    "/v1/organization/projects/{}/service_accounts?limit=100",
                    project_segment(project)?
                );
                let (status, answer) = self
                    .management_call(service, admin, http::Method::GET, &path, None)
                    .await?;
                if !(200..300).contains(&status) {
                    return Err(provider_failed(service, "list keys", Some(status)));
                }
                let list: List = serde_json::from_slice(&answer)
                    .map_err(|_| provider_failed(service, "list keys", Some(status)))?;
                let mut removed = 0;
                for account in list.data.into_iter().filter(|a| a.name == name) {
                    self.revoke_provider_key(service, admin, project, &account.id)
                        .await?;
                    removed += 1;
                }
                Ok(removed)
            }
        }
    }

    /// One call to the management API: the admin key injected like any key, a JSON body,
    /// the answer read whole (bounded) into memory that is wiped afterwards.
    async fn management_call(
        &self,
        service: &ServiceDefinition,
        admin: &SecretString,
        method: http::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), Error> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let query: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let url = upstream_url(service, path, &query, admin)?;
        let mut extra = HeaderMap::new();
        if body.is_some() {
            extra.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let headers = upstream_headers(service, &extra, admin)?;
        let mut outgoing = http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .body(full_body(bytes::Bytes::from(body.unwrap_or_default())))
            .map_err(|_| Error::internal("the key-management request cannot be built"))?;
        *outgoing.headers_mut() = headers;
        let (parts, mut answer) = match self.clients[0].send(outgoing).await {
            Ok(answer) => answer,
            Err(SendError::Timeout | SendError::Failed(_)) => {
                return Err(provider_failed(service, "manage keys", None));
            }
        };
        let mut read = Zeroizing::new(Vec::new());
        loop {
            match tokio::time::timeout(Duration::from_secs(30), answer.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if read.len() + chunk.len() > ANSWER_MAX {
                        return Err(provider_failed(
                            service,
                            "manage keys",
                            Some(parts.status.as_u16()),
                        ));
                    }
                    read.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                _ => return Err(provider_failed(service, "manage keys", None)),
            }
        }
        Ok((parts.status.as_u16(), read))
    }
}

fn api(service: &ServiceDefinition) -> Result<KeyManagementApi, Error> {
    service.key_management.ok_or_else(|| {
        Error::invalid(
            "no_key_management",
            format!(
                "{} has no key-management API Keyward can use; rotate with a new value instead",
                service.name
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_reach_a_path() {
        assert!(project_segment("proj_abc-123").is_ok());
        for bad in ["", "../admin", "a/b", "a?b", "proj abc", "a%2F"] {
            assert_eq!(
                project_segment(bad).map_err(|e| e.code),
                Err("invalid_project"),
                "{bad}"
            );
        }
    }
}
