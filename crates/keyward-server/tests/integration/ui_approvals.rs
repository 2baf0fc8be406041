//! Approvals through the pages, as the API does them: a key manager asks for approval of a
//! rotation and of a purge from the forms that were refused, another person approves in the
//! inbox, and the requester completes each from the page the inbox links to. Four eyes means
//! two people: an account or a token the requester made cannot approve.

use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::browser::{PASSWORD, enrol, enrolled_user, sign_in};
use crate::helpers::{Backend, OPENAI_KEY, TestApp};
use crate::ui::{approval_id, get_page, post_form};

/// The first approval request id in a page (the inbox lists the newest first).
fn first_approval(html: &str) -> String {
    approval_id(html).expect("an approval request on the page")
}

#[tokio::test]
async fn rotation_and_purge_are_requested_approved_and_completed_from_the_pages() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (_provider, base) = crate::validation::Provider::start().await;
    app.point_service("openai", &base).await;
    let (status, policy) = app
        .call(
            Method::PUT,
            "/api/v1/policies/approvals",
            Some(
                json!({"rules": [{"actions": ["rotate", "purge"], "approvals": 1,
                                   "approver_roles": ["owner"]}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let old_value = OPENAI_KEY.replace("WXYZ", "BBBB");
    let key = app
        .create_key("openai", "production", "main", &old_value)
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let (kim_id, kim, _) = enrolled_user(&app, "kim", Role::KeyManager).await;
    let (_, otto, _) = enrolled_user(&app, "otto", Role::Owner).await;
    // Key managers do not purge by default: a custom role adds it.
    let (status, role) = app
        .call(
            Method::POST,
            "/api/v1/roles",
            Some(json!({"id": "purger", "permissions": ["keys_read", "keys_purge"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let (status, grant) = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{kim_id}/grants"),
            Some(json!({"role": "purger"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");

    // Rotate now: refused for want of approval, the form offers to ask.
    let rotate = format!("/keys/{id}/rotate");
    let (status, _, html) = post_form(&app, &kim, &rotate, &[("secret", OPENAI_KEY)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("Request approval"), "{html}");
    assert!(
        !html.contains(OPENAI_KEY),
        "the typed value is not sent back"
    );
    let (status, location, _) = post_form(
        &app,
        &kim,
        &rotate,
        &[
            ("secret", OPENAI_KEY),
            ("approval", "request"),
            ("reason", "quarterly rotation"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("/keys/{id}?notice=approval_requested"));
    let (_, inbox) = (0, get_page(&app, &otto.cookie, "/approvals").await.2);
    let rotation_request = first_approval(&inbox);
    let (status, _, html) = post_form(
        &app,
        &otto,
        &format!("/approvals/{rotation_request}/decide"),
        &[("comment", "go ahead"), ("decision", "approve")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");

    // The requester continues from "mine"; the page carries the approval.
    let (_, _, mine) = get_page(&app, &kim.cookie, "/approvals?view=mine").await;
    let continue_at = format!("/keys/{id}?approval={rotation_request}&amp;form=rotate#rotate");
    assert!(mine.contains(&continue_at), "{mine}");
    let (status, _, page) = get_page(
        &app,
        &kim.cookie,
        &format!("/keys/{id}?approval={rotation_request}&form=rotate"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!("name=\"approval\" value=\"{rotation_request}\"")),
        "{page}"
    );
    // Another value than the approved one: the API's refusal, on the page.
    let other = OPENAI_KEY.replace("WXYZ", "CCCC");
    let (status, _, html) = post_form(
        &app,
        &kim,
        &rotate,
        &[("secret", &other), ("approval", &rotation_request)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("Not rotated"), "{html}");
    let (_, versions) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/versions"), None)
        .await;
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    let (status, location, html) = post_form(
        &app,
        &kim,
        &rotate,
        &[("secret", OPENAI_KEY), ("approval", &rotation_request)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, format!("/keys/{id}?notice=rotated"));
    let (_, after) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(after["current_version"], 2, "{after}");

    // Purge: delete first (not covered), then the purge asks for approval.
    let (status, _, html) = post_form(&app, &kim, &format!("/keys/{id}/delete"), &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    let purge = format!("/keys/{id}/purge");
    let (status, _, html) = post_form(&app, &kim, &purge, &[("confirm", "main")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("Request approval"), "{html}");
    assert!(
        html.contains("value=\"main\""),
        "the typed alias is kept: {html}"
    );
    let (status, location, _) = post_form(
        &app,
        &kim,
        &purge,
        &[
            ("confirm", "main"),
            ("approval", "request"),
            ("reason", "leaked in a log"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, "/keys/deleted?notice=approval_requested");
    let (_, _, inbox) = get_page(&app, &otto.cookie, "/approvals").await;
    let purge_request = first_approval(&inbox);
    assert_ne!(purge_request, rotation_request);
    let (status, _, _) = post_form(
        &app,
        &otto,
        &format!("/approvals/{purge_request}/decide"),
        &[("comment", "confirmed"), ("decision", "approve")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, mine) = get_page(&app, &kim.cookie, "/approvals?view=mine").await;
    let continue_at = format!("/keys/deleted?approval={purge_request}&amp;key={id}#purge-{id}");
    assert!(mine.contains(&continue_at), "{mine}");
    let (_, _, page) = get_page(
        &app,
        &kim.cookie,
        &format!("/keys/deleted?approval={purge_request}&key={id}"),
    )
    .await;
    assert!(
        page.contains(&format!("name=\"approval\" value=\"{purge_request}\"")),
        "{page}"
    );
    let (status, location, html) = post_form(
        &app,
        &kim,
        &purge,
        &[("confirm", "main"), ("approval", &purge_request)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, "/keys/deleted");
    let (status, _) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "purged");
}

#[tokio::test]
async fn an_account_or_token_the_requester_made_cannot_approve() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (status, policy) = app
        .call(
            Method::PUT,
            "/api/v1/policies/approvals",
            Some(json!({"rules": [{"actions": ["delete"], "approvals": 1,
                                   "approver_roles": ["owner", "admin"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let (_, ada, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let (status, location, _) = post_form(
        &app,
        &ada,
        &format!("/keys/{id}/delete"),
        &[("approval", "request"), ("reason", "no longer used")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("/keys/{id}?notice=approval_requested"));
    let (_, _, mine) = get_page(&app, &ada.cookie, "/approvals?view=mine").await;
    let request = first_approval(&mine);

    // While it is open, Ada adds an admin from the users page and mints a token.
    let (status, location, html) = post_form(
        &app,
        &ada,
        "/users",
        &[
            ("username", "sock"),
            ("password", PASSWORD),
            ("role", "admin"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, "/users");
    let (status, minted) = crate::browser::browse(
        &app,
        &ada,
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "ada-bot", "role": "admin"})),
        Some(&ada.csrf),
        Some("same-origin"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();

    // The new account, signed in and enrolled, is refused in the inbox.
    let sock = sign_in(&app, "sock", PASSWORD).await.unwrap();
    let (sock, _, _) = enrol(&app, &sock).await;
    let (status, _, html) = post_form(
        &app,
        &sock,
        &format!("/approvals/{request}/decide"),
        &[("comment", "fine by me"), ("decision", "approve")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("the requester made"), "{html}");
    // The token, through the API.
    let response = app
        .client
        .post(format!("{}/api/v1/approvals/{request}/approve", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "self_approval", "{body}");
    let (_, still) = app
        .call(Method::GET, &format!("/api/v1/approvals/{request}"), None)
        .await;
    assert_eq!(still["status"], "pending", "{still}");
    let (_, key) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert!(key["deleted_at"].is_null(), "{key}");
}

/// A key frozen from its page stays frozen until someone else approves lifting it; the
/// requester completes the lift from the page the inbox links to. An app token the same way.
#[tokio::test]
async fn a_freeze_is_set_from_the_page_and_lifted_only_under_someone_elses_approval() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let token = app
        .app_token(json!({"name": "web", "services": ["openai"], "environments": ["production"]}))
        .await;
    let token_id = token["id"].as_str().unwrap().to_owned();
    let (_, kim, _) = enrolled_user(&app, "kim", Role::Admin).await;
    let (_, otto, _) = enrolled_user(&app, "otto", Role::Owner).await;

    let (status, _, page) = get_page(&app, &kim.cookie, &format!("/keys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Freeze…"), "{page}");
    // A reason is required, and a refusal keeps what was typed.
    let freeze = format!("/keys/{id}/freeze");
    let (status, _, html) = post_form(&app, &kim, &freeze, &[("reason", "x")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(html.contains("reason_required"), "{html}");
    let (status, location, html) =
        post_form(&app, &kim, &freeze, &[("reason", "seen in a public repo")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, format!("/keys/{id}?notice=frozen"));
    let (_, _, page) = get_page(&app, &kim.cookie, &location).await;
    assert!(page.contains("data-containment=\"freeze\""), "{page}");
    assert!(page.contains("seen in a public repo"), "{page}");
    assert!(page.contains("Lift the freeze…"), "{page}");
    let (_, containments) = app.call(Method::GET, "/api/v1/containments", None).await;
    assert_eq!(containments[0]["measure"], "freeze", "{containments}");
    assert_eq!(containments[0]["by"], "kim", "{containments}");

    // Lifting: refused for want of approval, the page offers to ask.
    let unfreeze = format!("/keys/{id}/unfreeze");
    let (status, _, html) = post_form(&app, &kim, &unfreeze, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("Request approval"), "{html}");
    let (status, _, html) = post_form(
        &app,
        &kim,
        &unfreeze,
        &[
            ("approval", "request"),
            ("reason", "rotated at the provider"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("Approval requested"), "{html}");
    let (_, _, inbox) = get_page(&app, &otto.cookie, "/approvals").await;
    let request = first_approval(&inbox);
    // The requester cannot approve their own request.
    let (status, _, _) = post_form(
        &app,
        &kim,
        &format!("/approvals/{request}/decide"),
        &[("comment", "mine"), ("decision", "approve")],
    )
    .await;
    assert_ne!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = post_form(
        &app,
        &otto,
        &format!("/approvals/{request}/decide"),
        &[("comment", "checked the rotation"), ("decision", "approve")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, mine) = get_page(&app, &kim.cookie, "/approvals?view=mine").await;
    let continue_at = format!("/keys/{id}/freeze?approval={request}");
    assert!(mine.contains(&continue_at), "{mine}");
    let (_, _, page) = get_page(&app, &kim.cookie, &continue_at).await;
    assert!(
        page.contains(&format!("name=\"approval\" value=\"{request}\"")),
        "{page}"
    );
    let (status, location, html) =
        post_form(&app, &kim, &unfreeze, &[("approval", &request)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, format!("/keys/{id}?notice=unfrozen"));
    let (_, containments) = app.call(Method::GET, "/api/v1/containments", None).await;
    assert_eq!(containments, json!([]));
    // Used once: the same approval does not lift a second freeze.
    let (status, _, _) = post_form(&app, &kim, &freeze, &[("reason", "again, to test")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, html) = post_form(&app, &kim, &unfreeze, &[("approval", &request)]).await;
    assert_ne!(status, StatusCode::SEE_OTHER, "{html}");

    // An app token: frozen from its freeze page, shown on the list, lifted the same way.
    let (status, location, html) = post_form(
        &app,
        &kim,
        &format!("/app-tokens/{token_id}/freeze"),
        &[("reason", "calls from an unknown network")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, format!("/app-tokens#token-{token_id}"));
    let (_, _, list) = get_page(&app, &kim.cookie, "/app-tokens").await;
    assert!(list.contains("data-containment=\"freeze\""), "{list}");
    assert!(list.contains("Lift freeze…"), "{list}");
    let (status, _, html) = post_form(
        &app,
        &kim,
        &format!("/app-tokens/{token_id}/unfreeze"),
        &[
            ("approval", "request"),
            ("reason", "network is our new office"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (_, _, inbox) = get_page(&app, &otto.cookie, "/approvals").await;
    let token_request = first_approval(&inbox);
    let (status, _, _) = post_form(
        &app,
        &otto,
        &format!("/approvals/{token_request}/decide"),
        &[("comment", "known office"), ("decision", "approve")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, mine) = get_page(&app, &kim.cookie, "/approvals?view=mine").await;
    assert!(
        mine.contains(&format!(
            "/app-tokens/{token_id}/freeze?approval={token_request}"
        )),
        "{mine}"
    );
    let (status, location, html) = post_form(
        &app,
        &kim,
        &format!("/app-tokens/{token_id}/unfreeze"),
        &[("approval", &token_request)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, format!("/app-tokens#token-{token_id}"));
    let (_, containments) = app.call(Method::GET, "/api/v1/containments", None).await;
    let left: Vec<&str> = containments
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["subject_kind"].as_str())
        .collect();
    assert_eq!(
        left,
        ["key"],
        "only the key's second freeze: {containments}"
    );
}
