//! The rotation form posts on the key page — rotate now, start a guided rotation, take its
//! next step — each through the use case the API runs; a refusal shows the key page again
//! with the reason and what was typed (never the value).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Redirect, Response};
use keyward_app::App;
use keyward_app::keys::versions::NewVersion;
use keyward_app::lifecycle::guided_rotation::NewValue;
use keyward_core::Error;
use keyward_core::id::RotationId;

use super::frame::{error_page, field};
use super::guard::form_post;
use super::key::refused_on_page;
use super::key_form::{Refused, Typed, parse_id};

pub async fn rotate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let secret =
        secrecy::SecretString::from(field(&fields, "secret").unwrap_or_default().to_owned());
    let result = async {
        let key_id = parse_id(&id)?;
        app.add_version(
            &viewer.caller.actor,
            &key_id,
            NewVersion {
                secret,
                force: false,
                state: None,
                validate: true,
            },
        )
        .await
    }
    .await;
    match result {
        Ok(_) => Redirect::to(&format!("/keys/{id}?notice=rotated")).into_response(),
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to(&format!("/keys/{id}?notice=approval_requested")).into_response()
        }
        Err(error) => {
            let refused = Refused {
                form: "rotate",
                typed: Typed::default(),
                error,
            };
            refused_on_page(&app, viewer, &id, refused).await
        }
    }
}

/// `POST /keys/{id}/rotations`: starts a guided rotation.
pub async fn start(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let key_id = parse_id(&id)?;
        let secret = field(&fields, "secret").unwrap_or_default();
        let admin = field(&fields, "admin_key").unwrap_or_default();
        let value = match (secret.trim().is_empty(), admin.is_empty()) {
            (false, true) => NewValue::Given {
                value: secrecy::SecretString::from(secret.to_owned()),
                force: false,
            },
            (true, false) => NewValue::Managed {
                admin_key: parse_id(admin)?,
                project: field(&fields, "project")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            },
            _ => {
                return Err(Error::invalid(
                    "rotation_value_required",
                    "give either the new value or an admin key (Keyward creates the key), not both",
                ));
            }
        };
        let window = match field(&fields, "window_minutes").map(str::trim) {
            None | Some("") => None,
            // The upper bound is the domain's (`Rotation::start`).
            Some(text) => Some(jiff::SignedDuration::from_mins(i64::from(
                text.parse::<u32>().map_err(|_| {
                    Error::invalid("invalid_window", "the window is a whole number of minutes")
                })?,
            ))),
        };
        app.start_rotation(&viewer.caller.actor, &key_id, value, window)
            .await
    }
    .await;
    match result {
        Ok(_) => Redirect::to(&format!("/keys/{id}#rotation")).into_response(),
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to(&format!("/keys/{id}?notice=approval_requested")).into_response()
        }
        Err(error) => {
            let typed = Typed {
                window_minutes: field(&fields, "window_minutes")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                project: field(&fields, "project")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                admin_key: field(&fields, "admin_key")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                ..Typed::default()
            };
            let refused = Refused {
                form: "rotation",
                typed,
                error,
            };
            refused_on_page(&app, viewer, &id, refused).await
        }
    }
}

/// `POST /rotations/{id}/{action}`: one step, then back to the key page.
pub async fn step(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(String, String)>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let rotation_id: RotationId = id
            .parse()
            .map_err(|_| Error::not_found("rotation_not_found", "there is no such rotation"))?;
        let actor = &viewer.caller.actor;
        let done = match action.as_str() {
            "validate" => app.validate_rotation(actor, &rotation_id).await?,
            "canary" => {
                let percent = field(&fields, "percent")
                    .and_then(|p| p.trim().parse::<u8>().ok())
                    .ok_or_else(|| {
                        Error::invalid(
                            "invalid_canary_percent",
                            "the canary share must be between 1 and 50 percent",
                        )
                    })?;
                app.canary_rotation(actor, &rotation_id, percent).await?
            }
            "promote" => app.promote_rotation(actor, &rotation_id).await?,
            "retire" => {
                let confirm = field(&fields, "confirm") == Some("yes");
                app.retire_rotation(actor, &rotation_id, confirm).await?
            }
            "verify" => app.verify_rotation(actor, &rotation_id).await?,
            "cancel" => app.cancel_rotation(actor, &rotation_id).await?,
            _ => {
                return Err(Error::not_found(
                    "no_such_step",
                    "a rotation has no such step",
                ));
            }
        };
        Ok(done)
    }
    .await;
    match result {
        Ok(r) => Redirect::to(&format!("/keys/{}#rotation", r.key_id)).into_response(),
        Err(e) => error_page(&viewer, "/", "Rotation step not taken", e),
    }
}
