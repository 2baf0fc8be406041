//! The anomaly watcher on an injected clock: a week of a market-data token's usual traffic
//! (seeded into the store as the proxy would have written it), then a ten-fold spike of
//! real calls through the proxy raises one alert within five minutes, announced to a
//! webhook and in the audit trail; it is acknowledged and resolved with comments, and a
//! mute silences the next one.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use keyward_core::ManualClock;
use keyward_core::usage::{CacheOutcome, Outcome, TokenUsage, UsageRecord};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, audit_actions, serve_fake};
use crate::notifications::Receiver;

const FINNHUB_KEY: &str = "abcdefghij0123456789";

/// A usage record as the proxy writes one for a successful Finnhub call.
fn call(at: Timestamp, key: &str, token: &str) -> UsageRecord {
    UsageRecord {
        at,
        token_id: Some(token.parse().unwrap()),
        key_id: Some(key.parse().unwrap()),
        service_id: "finnhub".into(),
        environment: Some("production".into()),
        method: "GET".into(),
        endpoint: "/api/v1/quote".into(),
        status: 200,
        outcome: Outcome::Success,
        error_code: None,
        latency_ms: 40,
        request_bytes: 0,
        response_bytes: 120,
        cache: CacheOutcome::Miss,
        retries: 0,
        model: None,
        tokens: TokenUsage::default(),
        credits: 1,
        cost_nanos: 0,
        answer: Some(keyward_core::answer::AnswerClass::Success),
        unpriced: false,
        source: Some("203.0.113.7".parse().unwrap()),
        saved_credits: 0,
    }
}

async fn alerts(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app
        .call(Method::GET, &format!("/api/v1/alerts?{query}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["alerts"].as_array().unwrap().clone()
}

/// Lets the watcher judge what has settled by the clock (its own loop may get there first).
async fn watch(app: &TestApp) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.app.watch_usage().await.unwrap();
}

#[tokio::test]
async fn a_spike_raises_one_alert_within_five_minutes_that_is_announced_acknowledged_and_resolved()
{
    // Monday 2026-11-30, midnight in New York.
    let start: Timestamp = "2026-11-30T05:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let app = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone())
        .await
        .unwrap();
    let upstream = serve_fake(
        axum::Router::new()
            .fallback(|| async { axum::Json(json!({"c": 189.5, "d": 0.4, "t": 1796655600})) }),
    )
    .await;
    app.point_service("finnhub", &upstream).await;
    let key = app
        .create_key("finnhub", "production", "quotes", FINNHUB_KEY)
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = app
        .app_token(
            json!({"name": "pulse", "services": ["finnhub"], "environments": ["production"]}),
        )
        .await;
    let (token_id, token) = (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    );
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let (status, hook) = app
        .call(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": url, "kinds": ["anomaly_detected"], "allow_private_network": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");

    // Six trading days (Monday to the next Monday) of two calls a minute in the session,
    // and Tuesday's until 11:00.
    let store = app.db().store().await;
    let mut history = Vec::new();
    for day in [0, 1, 2, 3, 4, 7, 8] {
        let end = if day == 8 { 11 * 60 } else { 16 * 60 };
        for minute in (9 * 60 + 30)..end {
            let at = start
                .checked_add(SignedDuration::from_mins(day * 1440 + minute))
                .unwrap();
            history.push(call(at, &key, &token_id));
            history.push(call(
                at.checked_add(SignedDuration::from_secs(20)).unwrap(),
                &key,
                &token_id,
            ));
        }
    }
    store.record_usage(&history).await.unwrap();

    // Tuesday 2026-12-08, 10:50 ET: the watcher catches up on the week, quietly.
    let tuesday = |minute: i64| {
        "2026-12-08T16:00:00Z"
            .parse::<Timestamp>()
            .unwrap()
            .checked_add(SignedDuration::from_mins(minute))
            .unwrap()
    };
    clock.set(tuesday(-10));
    for _ in 0..10 {
        app.app.watch_usage().await.unwrap();
    }
    assert!(
        alerts(&app, "").await.is_empty(),
        "a normal week raises nothing"
    );

    // From 11:00 ET, twenty calls a minute through the proxy: ten times the usual.
    let proxy = |i: i64| {
        app.client
            .get(format!(
                "{}/proxy/finnhub/api/v1/quote?symbol=S{i}",
                app.base
            ))
            .header("x-keyward-token", &token)
            .send()
    };
    let mut alerted_at = None;
    for minute in 0..10 {
        clock.set(
            tuesday(minute)
                .checked_add(SignedDuration::from_secs(10))
                .unwrap(),
        );
        for i in 0..20 {
            let answer = proxy(minute * 100 + i).await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
        }
        clock.set(
            tuesday(minute + 1)
                .checked_add(SignedDuration::from_secs(5))
                .unwrap(),
        );
        watch(&app).await;
        let found = alerts(&app, "status=open").await;
        if !found.is_empty() {
            alerted_at = Some(minute + 1);
            break;
        }
    }
    let alerted_at = alerted_at.expect("the spike raised an alert");
    assert!(
        alerted_at <= 5,
        "alerted {alerted_at} minutes after the spike began"
    );
    let open = alerts(&app, "status=open").await;
    assert_eq!(
        open.len(),
        2,
        "one for the key, one for the token: {open:?}"
    );
    let by_token = alerts(&app, &format!("token={token_id}")).await;
    assert_eq!(by_token.len(), 1);
    let alert = &by_token[0];
    assert_eq!(alert["signal"], "request_spike");
    assert_eq!(alert["subject_kind"], "token");
    let reason = alert["reason"].as_str().unwrap();
    assert!(reason.contains("requests in 5 min; usual for"), "{reason}");
    assert!(reason.contains("11:00 ET is"), "{reason}");

    // Announced once per alert, signed like every notification.
    let delivered = receiver.wait_for(2).await;
    assert!(delivered.iter().all(|d| d.event == "anomaly_detected"));
    let body: Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert!(body.to_string().contains("request_spike"), "{body}");

    // More of the spike refreshes the alerts instead of opening new ones.
    clock.set(
        tuesday(alerted_at + 1)
            .checked_add(SignedDuration::from_secs(10))
            .unwrap(),
    );
    for i in 0..30 {
        proxy(5_000 + i).await.unwrap();
    }
    clock.set(
        tuesday(alerted_at + 2)
            .checked_add(SignedDuration::from_secs(5))
            .unwrap(),
    );
    watch(&app).await;
    assert_eq!(alerts(&app, "").await.len(), 2);

    // The key's alert is on the dashboard and acknowledged from there, with a comment.
    let (_, ada, _) =
        crate::browser::enrolled_user(&app, "ada", keyward_core::access::Role::Admin).await;
    let (status, _, dashboard) = crate::ui::get_page(&app, &ada.cookie, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(dashboard.contains("data-open-alerts=\"2\""), "{dashboard}");
    let key_alert = alerts(&app, &format!("key={key}")).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, location, _) = crate::ui::post_form(
        &app,
        &ada,
        &format!("/alerts/{key_alert}/note"),
        &[
            ("to", "acknowledged"),
            ("comment", "checking with the data team"),
            ("next", "/"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, "/");
    let (_, acked) = app
        .call(Method::GET, &format!("/api/v1/alerts/{key_alert}"), None)
        .await;
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "ada");
    let (_, _, page) = crate::ui::get_page(&app, &ada.cookie, "/alerts?view=acknowledged").await;
    assert!(page.contains("checking with the data team"), "{page}");

    // Acknowledged, then resolved, each with a comment and audited.
    let id = alert["id"].as_str().unwrap();
    let (status, acked) = app
        .call(
            Method::POST,
            &format!("/api/v1/alerts/{id}/acknowledge"),
            Some(json!({"comment": "load test by the data team?"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(
        acked["acknowledged"]["comment"],
        "load test by the data team?"
    );
    let (status, again) = app
        .call(
            Method::POST,
            &format!("/api/v1/alerts/{id}/acknowledge"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let (status, resolved) = app
        .call(
            Method::POST,
            &format!("/api/v1/alerts/{id}/resolve"),
            Some(json!({"comment": "confirmed: a backfill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    let (_, trail) = app.call(Method::GET, "/api/v1/audit?limit=200", None).await;
    let actions = audit_actions(&trail);
    for action in ["alert.raised", "alert.acknowledge", "alert.resolve"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }

    // A mute on the token keeps the next spike quiet; a bad mute is refused.
    let (status, bad) = app
        .call(
            Method::POST,
            "/api/v1/alert-mutes",
            Some(json!({"token": token_id, "minutes": 0, "reason": "backfill"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_mute");
    let (status, mute) = app
        .call(
            Method::POST,
            "/api/v1/alert-mutes",
            Some(json!({"token": token_id, "signal": "request_spike", "minutes": 600, "reason": "backfill all day"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{mute}");
    let (_, mutes) = app.call(Method::GET, "/api/v1/alert-mutes", None).await;
    assert_eq!(mutes.as_array().unwrap().len(), 1);
    // An hour later, a new spike: only the key's alert (still open) sees it.
    for minute in 60..66 {
        clock.set(
            tuesday(minute)
                .checked_add(SignedDuration::from_secs(10))
                .unwrap(),
        );
        for i in 0..25 {
            proxy(minute * 100 + i).await.unwrap();
        }
        clock.set(
            tuesday(minute + 1)
                .checked_add(SignedDuration::from_secs(5))
                .unwrap(),
        );
        watch(&app).await;
    }
    assert!(
        alerts(&app, &format!("token={token_id}&status=open"))
            .await
            .is_empty(),
        "muted"
    );
}

#[tokio::test]
async fn forecasts_say_when_a_daily_quota_runs_out_from_the_shared_sums() {
    // Wednesday 2026-12-02, 09:00 in New York: before the session opens.
    let now: Timestamp = "2026-12-02T14:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let app = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone())
        .await
        .unwrap();
    let (status, key) = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(
                json!({"service": "finnhub", "environment": "production", "alias": "quotes",
                        "secret": FINNHUB_KEY,
                        "limits": [{"max": 500, "unit": "requests", "window_seconds": 86400}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["id"].as_str().unwrap().to_owned();
    let created = app
        .app_token(
            json!({"name": "pulse", "services": ["finnhub"], "environments": ["production"],
                          "budget": {"limit_usd": 5.0, "period": "day"}}),
        )
        .await;
    let token_id = created["id"].as_str().unwrap().to_owned();
    // Two weeks of 100 calls an hour in the session (hours 09–15 ET), as every instance's
    // writer would have added them to the rollups.
    let store = app.db().store().await;
    let mut history = Vec::new();
    let mut hour: Timestamp = "2026-11-18T05:00:00Z".parse().unwrap();
    let calendar = keyward_core::market::MarketCalendar::nyse().unwrap();
    while hour < now {
        let m = calendar.moment(hour);
        if m.trades() && (9..16).contains(&m.market_hour) {
            for n in 0..100 {
                let at = hour.checked_add(SignedDuration::from_secs(n * 30)).unwrap();
                history.push(call(at, &key, &token_id));
            }
        }
        hour = hour.checked_add(SignedDuration::from_hours(1)).unwrap();
    }
    store.record_usage(&history).await.unwrap();

    let (status, forecasts) = app.call(Method::GET, "/api/v1/forecasts", None).await;
    assert_eq!(status, StatusCode::OK, "{forecasts}");
    let all = forecasts.as_array().unwrap();
    assert_eq!(all.len(), 2, "{forecasts}");
    let quota = &all[0];
    assert_eq!(quota["subject_id"], key.as_str());
    assert_eq!(
        (quota["allowance"].as_str(), quota["unit"].as_str()),
        (Some("quota"), Some("requests"))
    );
    // Finnhub's quota is rolling: UTC days. 09:00 ET is 14:00Z; nothing used yet today.
    assert_eq!(quota["window_start"], "2026-12-02T00:00:00Z");
    assert_eq!(quota["used"], 0.0);
    let runs_out: Timestamp = quota["runs_out_at"].as_str().unwrap().parse().unwrap();
    // About 100 an hour from 09:00 ET: five hours, so about 14:00 ET (19:00Z).
    assert!(
        ("2026-12-02T18:00:00Z".parse::<Timestamp>().unwrap()
            ..="2026-12-02T21:00:00Z".parse().unwrap())
            .contains(&runs_out),
        "{quota}"
    );
    // The same sums as a usage view split by key, and as CSV; bad choices are refused.
    let view = "from=2026-11-18T00:00:00Z&to=2026-12-02T00:00:00Z&granularity=week";
    let (status, usage) = app
        .call(
            Method::GET,
            &format!("/api/v1/usage?{view}&group_by=key"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let groups = usage["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["group"], key.as_str());
    assert_eq!(groups[0]["totals"]["requests"], usage["totals"]["requests"]);
    assert_eq!(usage["totals"]["success_rate"], 1.0);
    // Every call took 40 ms: the histogram places the median inside (25, 50] ms.
    let p50 = usage["totals"]["latency_p50_ms"].as_u64().unwrap();
    assert!((25..=50).contains(&p50), "{p50}");
    let csv = app
        .client
        .get(format!(
            "{}/api/v1/usage?{view}&group_by=network&format=csv",
            app.base
        ))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("group,start,requests,errors,success_rate"),
        "{text}"
    );
    assert!(lines[1].starts_with("203.0.113.0/24,2026-11-"), "{text}");
    for (query, code) in [
        ("group_by=colour", "invalid_group_by"),
        ("format=xml", "invalid_format"),
    ] {
        let (status, body) = app
            .call(Method::GET, &format!("/api/v1/usage?{view}&{query}"), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], code);
    }

    let budget = &all[1];
    assert_eq!(
        (budget["subject_kind"].as_str(), budget["period"].as_str()),
        (Some("token"), Some("day"))
    );
    assert_eq!(budget["limit"], 5.0);
    assert!(
        budget["runs_out_at"].is_null(),
        "free calls never spend the budget: {budget}"
    );
}
