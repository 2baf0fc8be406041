//! Approval workflows through the API: a policy puts deletes and rotations behind
//! approvals; a request is filed from the very request it covers, decided by someone else,
//! used once by its requester for exactly that operation, and expires. Break-glass skips
//! it and is flagged for review. Every refusal is audited and changes nothing.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::ManualClock;
use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::{Browser, PASSWORD, code_now, enrolled_user, sign_in_with};
use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error};

const OTHER_OPENAI_KEY: &str =
    "sk-proj-Zyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUTSRQPONMLKJIHGFEDCBA_-9876543210ABCD";

/// A request with a session, optionally carrying approval headers (`X-Keyward-Approval`
/// and `X-Keyward-Reason`).
pub(crate) async fn act(
    app: &TestApp,
    b: &Browser,
    method: Method,
    path: &str,
    body: Option<Value>,
    approval: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.base))
        .header("cookie", &b.cookie)
        .header("x-csrf-token", &b.csrf);
    if let Some((value, reason)) = approval {
        request = request
            .header("x-keyward-approval", value)
            .header("x-keyward-reason", reason);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn key_state(app: &TestApp, id: &str) -> Value {
    app.call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await
        .1
}

#[tokio::test]
async fn a_delete_needs_another_persons_approval_and_runs_once() {
    let start = Timestamp::from_second(1_796_000_010).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let app = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone())
        .await
        .unwrap();
    let (status, policy) = app
        .call(
            Method::PUT,
            "/api/v1/policies/approvals",
            Some(json!({"rules": [
                {"actions": ["delete", "rotate"], "categories": ["llm-providers"],
                 "approvals": 1, "approver_roles": ["admin", "owner"]}
            ], "ttl_hours": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let key = app
        .create_key("openai", "production", "llm", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let other = app
        .create_key("openai", "staging", "llm-2", OPENAI_KEY)
        .await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    let delete_path = format!("/api/v1/keys/{id}");
    let (_, kim, kim_phone) = enrolled_user(&app, "kim", Role::KeyManager).await;
    let (_, ada, _) = enrolled_user(&app, "ada", Role::Admin).await;

    // Without an approval: refused, nothing changes.
    let refused = act(&app, &kim, Method::DELETE, &delete_path, None, None).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "approval_required");
    assert!(key_state(&app, &id).await["deleted_at"].is_null());

    // Asking: 202, a request for exactly this delete, and still nothing deleted.
    let (status, asked) = act(
        &app,
        &kim,
        Method::DELETE,
        &delete_path,
        None,
        Some(("request", "retiring the old OpenAI project")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    assert_eq!(asked["error"]["code"], "approval_requested");
    let approval = asked["error"]["reference"].as_str().unwrap().to_owned();
    assert!(key_state(&app, &id).await["deleted_at"].is_null());

    // Approvers see exactly what will run.
    let (_, inbox) = act(
        &app,
        &ada,
        Method::GET,
        "/api/v1/approvals?status=pending",
        None,
        None,
    )
    .await;
    let item = &inbox[0];
    assert_eq!(
        (
            item["id"].as_str(),
            item["action"].as_str(),
            item["target"].as_str()
        ),
        (
            Some(approval.as_str()),
            Some("delete"),
            Some(format!("key:{id}").as_str())
        )
    );
    assert_eq!(item["reason"], "retiring the old OpenAI project");
    assert_eq!(item["operation_hash"].as_str().unwrap().len(), 64);

    // The requester cannot approve their own request (even as an approver they would not
    // be one: key managers are not in the policy's roles).
    let approve_path = format!("/api/v1/approvals/{approval}/approve");
    let own = act(&app, &kim, Method::POST, &approve_path, None, None).await;
    assert_error(&own, StatusCode::FORBIDDEN, "forbidden");
    // Using it before approval: refused.
    let early = act(
        &app,
        &kim,
        Method::DELETE,
        &delete_path,
        None,
        Some((&approval, "")),
    )
    .await;
    assert_error(&early, StatusCode::FORBIDDEN, "approval_pending");

    let (status, decided) = act(
        &app,
        &ada,
        Method::POST,
        &approve_path,
        Some(json!({"comment": "ok, the project is gone"})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["status"], "approved");
    let twice = act(&app, &ada, Method::POST, &approve_path, None, None).await;
    assert_error(&twice, StatusCode::CONFLICT, "approval_closed");

    // A different operation under this approval: refused (the hash does not match).
    let tampered = act(
        &app,
        &kim,
        Method::DELETE,
        &format!("/api/v1/keys/{other_id}"),
        None,
        Some((&approval, "")),
    )
    .await;
    assert_error(&tampered, StatusCode::FORBIDDEN, "approval_mismatch");
    assert!(key_state(&app, &other_id).await["deleted_at"].is_null());
    // Someone else cannot use it.
    let stolen = act(
        &app,
        &ada,
        Method::DELETE,
        &delete_path,
        None,
        Some((&approval, "")),
    )
    .await;
    assert_error(&stolen, StatusCode::FORBIDDEN, "not_the_requester");

    // An approver's own request: they cannot approve it themselves either.
    let (status, own_request) = act(
        &app,
        &ada,
        Method::DELETE,
        &format!("/api/v1/keys/{other_id}"),
        None,
        Some(("request", "cleaning up staging")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let own_id = own_request["error"]["reference"].as_str().unwrap();
    let self_approval = act(
        &app,
        &ada,
        Method::POST,
        &format!("/api/v1/approvals/{own_id}/approve"),
        None,
        None,
    )
    .await;
    assert_error(&self_approval, StatusCode::FORBIDDEN, "self_approval");

    // The requester uses it: done once.
    let (status, _) = act(
        &app,
        &kim,
        Method::DELETE,
        &delete_path,
        None,
        Some((&approval, "")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!key_state(&app, &id).await["deleted_at"].is_null());
    let (status, _) = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/restore"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let again = act(
        &app,
        &kim,
        Method::DELETE,
        &delete_path,
        None,
        Some((&approval, "")),
    )
    .await;
    assert_error(&again, StatusCode::CONFLICT, "approval_used");
    assert!(
        key_state(&app, &id).await["deleted_at"].is_null(),
        "not deleted twice"
    );

    // Rotation is bound to the new value: approved for one value, refused for another.
    let versions = format!("/api/v1/keys/{other_id}/versions");
    let (status, asked) = act(
        &app,
        &kim,
        Method::POST,
        &versions,
        Some(json!({"secret": OTHER_OPENAI_KEY})),
        Some(("request", "quarterly rotation")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    let rotation = asked["error"]["reference"].as_str().unwrap().to_owned();
    let (_, detail) = app
        .call(Method::GET, &format!("/api/v1/approvals/{rotation}"), None)
        .await;
    assert!(
        detail["payload"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac:")
    );
    assert!(
        !detail.to_string().contains(OTHER_OPENAI_KEY),
        "never the value"
    );
    let (_, olga, _) = enrolled_user(&app, "olga", Role::Owner).await;
    let (status, _) = act(
        &app,
        &olga,
        Method::POST,
        &format!("/api/v1/approvals/{rotation}/approve"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let swapped = act(
        &app,
        &kim,
        Method::POST,
        &versions,
        Some(json!({"secret": OPENAI_KEY})),
        Some((&rotation, "")),
    )
    .await;
    assert_error(&swapped, StatusCode::FORBIDDEN, "approval_mismatch");

    // Expiry: two hours later the approval is worth nothing.
    clock.advance(SignedDuration::from_hours(2));
    // (The session idled out meanwhile: sign in again.)
    let kim = sign_in_with(
        &app,
        json!({"username": "kim", "password": PASSWORD, "code": code_now(&app, &kim_phone)}),
    )
    .await
    .unwrap();
    let late = act(
        &app,
        &kim,
        Method::POST,
        &versions,
        Some(json!({"secret": OTHER_OPENAI_KEY})),
        Some((&rotation, "")),
    )
    .await;
    assert_error(&late, StatusCode::CONFLICT, "approval_expired");
    let (_, listed) = app
        .call(
            Method::GET,
            &format!("/api/v1/keys/{other_id}/versions"),
            None,
        )
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "no version was added");

    // Every refusal is in the trail.
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=approval", None)
        .await;
    let text = trail.to_string();
    for reason in [
        "self_approval",
        "approval_pending",
        "approval_mismatch",
        "not_the_requester",
        "approval_used",
        "approval_expired",
    ] {
        assert!(text.contains(reason), "{reason} audited");
    }
}

/// Break-glass: an emergency disable skips the approval policy, takes effect at once, and
/// waits in the inbox for someone else to review it.
#[tokio::test]
async fn emergency_disable_skips_approval_and_is_flagged_for_review() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    app.call(
        Method::PUT,
        "/api/v1/policies/approvals",
        Some(json!({"rules": [{"actions": ["disable"], "approvals": 2,
                               "approver_roles": ["owner"]}]})),
    )
    .await;
    let key = app
        .create_key("openai", "production", "leaked", OPENAI_KEY)
        .await;
    let path = format!("/api/v1/keys/{}/disable", key["id"].as_str().unwrap());
    let (_, kim, _) = enrolled_user(&app, "kim", Role::KeyManager).await;
    let normal = act(&app, &kim, Method::POST, &path, None, None).await;
    assert_error(&normal, StatusCode::FORBIDDEN, "approval_required");
    let no_reason = act(
        &app,
        &kim,
        Method::POST,
        &path,
        Some(json!({"emergency": true})),
        None,
    )
    .await;
    assert_error(
        &no_reason,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reason_required",
    );
    let (status, disabled) = act(
        &app,
        &kim,
        Method::POST,
        &path,
        Some(json!({"emergency": true, "reason": "key posted on a public forum"})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{disabled}");
    assert_eq!(disabled["enabled"], false);
    let (_, inbox) = app
        .call(
            Method::GET,
            "/api/v1/approvals?status=review_required",
            None,
        )
        .await;
    let review = &inbox[0];
    assert!(review.is_object(), "{inbox}");
    assert_eq!(review["action"], "disable");
    assert_eq!(review["reason"], "key posted on a public forum");
    let review_path = format!(
        "/api/v1/approvals/{}/approve",
        review["id"].as_str().unwrap()
    );
    let (status, reviewed) = app
        .call(
            Method::POST,
            &review_path,
            Some(json!({"comment": "confirmed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reviewed}");
    assert_eq!(reviewed["status"], "reviewed");
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=key.disable", None)
        .await;
    assert_eq!(trail["events"][0]["details"]["break_glass"], true);
}
