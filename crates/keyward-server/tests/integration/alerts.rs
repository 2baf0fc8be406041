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

use keyward_core::access::Role;

use crate::approvals::act;
use crate::helpers::{Backend, TestApp, assert_error, audit_actions, serve_fake};
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

/// Tuesday 2026-12-08, `minute` minutes after 11:00 ET.
fn tuesday(minute: i64) -> Timestamp {
    "2026-12-08T16:00:00Z"
        .parse::<Timestamp>()
        .unwrap()
        .checked_add(SignedDuration::from_mins(minute))
        .unwrap()
}

/// A server on an injected clock with a Finnhub key and a market-data token that has a
/// week of usual traffic behind it: two calls a minute in every session since Monday
/// 2026-11-30 and on Tuesday 2026-12-08 until 11:00 ET, which the watcher has learned
/// (clock at 10:50 ET). Returns the app, its clock, the key id, the token's id and secret.
async fn watched_token() -> (TestApp, Arc<ManualClock>, String, String, String) {
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
    // The watcher catches up on the week, quietly.
    clock.set(tuesday(-10));
    for _ in 0..10 {
        app.app.watch_usage().await.unwrap();
    }
    assert!(
        alerts(&app, "").await.is_empty(),
        "a normal week raises nothing"
    );
    (app, clock, key, token_id, token)
}

/// One quote through the proxy at `base` (an instance) with the app token.
async fn quote(app: &TestApp, base: &str, token: &str, i: i64) -> reqwest::Response {
    app.client
        .get(format!("{base}/proxy/finnhub/api/v1/quote?symbol=S{i}"))
        .header("x-keyward-token", token)
        .send()
        .await
        .unwrap()
}

/// Ten times the usual — twenty calls a minute from 11:00 ET — until an alert opens;
/// returns the minute it did (after the spike began).
async fn spike(app: &TestApp, clock: &ManualClock, token: &str) -> i64 {
    for minute in 0..10 {
        clock.set(
            tuesday(minute)
                .checked_add(SignedDuration::from_secs(10))
                .unwrap(),
        );
        for i in 0..20 {
            let answer = quote(app, &app.base, token, minute * 100 + i).await;
            assert_eq!(answer.status(), StatusCode::OK);
        }
        clock.set(
            tuesday(minute + 1)
                .checked_add(SignedDuration::from_secs(5))
                .unwrap(),
        );
        watch(app).await;
        if !alerts(app, "status=open").await.is_empty() {
            return minute + 1;
        }
    }
    panic!("the spike raised no alert in ten minutes");
}

#[tokio::test]
async fn a_spike_raises_one_alert_within_five_minutes_that_is_announced_acknowledged_and_resolved()
{
    let (app, clock, key, token_id, token) = watched_token().await;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let (status, hook) = app
        .call(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": url, "kinds": ["anomaly_detected"], "allow_private_network": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let proxy = |i: i64| {
        app.client
            .get(format!(
                "{}/proxy/finnhub/api/v1/quote?symbol=S{i}",
                app.base
            ))
            .header("x-keyward-token", &token)
            .send()
    };
    let alerted_at = spike(&app, &clock, &token).await;
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
    // Announced six hours ahead.
    let settings = keyward_server::config::RawSettings {
        forecast_lead_minutes: Some("360".into()),
        ..Default::default()
    };
    let app = TestApp::spawn_with_clock(Backend::Sqlite, settings, clock.clone())
        .await
        .unwrap();
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let (status, hook) = app
        .call(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": url, "kinds": ["quota_forecast", "budget_forecast"], "allow_private_network": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
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

    // Running out in about five hours, within the six-hour lead: announced once, however
    // often the forecasts are looked at.
    assert_eq!(app.app.announce_forecasts().await.unwrap(), 1);
    assert_eq!(app.app.announce_forecasts().await.unwrap(), 1);
    let delivered = receiver.wait_for(1).await;
    assert_eq!(delivered[0].event, "quota_forecast");
    let body: Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert!(body.to_string().contains(&key), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1, "not twice");

    // The same forecast on the analytics page, the dashboard and the key's page; the
    // analytics page draws its charts and links its CSV.
    let (_, ada, _) =
        crate::browser::enrolled_user(&app, "ada", keyward_core::access::Role::Admin).await;
    for view in ["day", "week", "month", "quarter"] {
        let (status, _, page) =
            crate::ui::get_page(&app, &ada.cookie, &format!("/usage?view={view}")).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        for chart in ["requests", "latency", "cost", "saved"] {
            assert!(
                page.contains(&format!("data-chart=\"{chart}\"")),
                "{view}: {chart}"
            );
        }
        assert!(page.contains("data-forecasts=\"2\""), "{view}: {page}");
        assert!(page.contains("format=csv"), "{view}");
    }
    let (_, _, dashboard) = crate::ui::get_page(&app, &ada.cookie, "/").await;
    assert!(dashboard.contains("data-pressing=\"1\""), "{dashboard}");
    let (_, _, key_page) = crate::ui::get_page(&app, &ada.cookie, &format!("/keys/{key}")).await;
    assert!(key_page.contains("data-forecasts=\"1\""), "{key_page}");
    // And each day's use of the daily quota against its limit, over the 30 days.
    assert!(
        key_page.contains("data-quota-history=\"requests\""),
        "{key_page}"
    );
    let words = key_page
        .split("requests per UTC day against a limit of 500: at most 700, at the limit on ")
        .nth(1)
        .unwrap_or_else(|| panic!("{key_page}"));
    let full_days: u32 = words.split(' ').next().unwrap().parse().unwrap();
    assert!((8..=11).contains(&full_days), "{full_days}");
    assert!(
        words.starts_with(&format!("{full_days} of 30 days")),
        "{words}"
    );

    // 700 calls a day against a quota of 500: the plan is too small, said in the API and
    // on the page.
    let (status, found) = app.call(Method::GET, "/api/v1/recommendations", None).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let small = found
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "plan_too_small")
        .unwrap_or_else(|| panic!("{found}"));
    assert_eq!(small["key_id"], key.as_str());
    assert_eq!(small["risk"], "high");
    assert!(
        small["detail"]
            .as_str()
            .unwrap()
            .starts_with("reached 90 % of its 500 requests a day on "),
        "{small}"
    );
    let (status, _, page) = crate::ui::get_page(&app, &ada.cookie, "/recommendations").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("data-kind=\"plan_too_small\""), "{page}");

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

/// Polls `base` (an instance) until a quote with `token` answers `status` (every instance
/// re-reads the vault every half second), for at most five seconds.
async fn until_answer(app: &TestApp, base: &str, token: &str, status: StatusCode) -> Value {
    for attempt in 0..50 {
        let answer = quote(app, base, token, 9_000 + attempt).await;
        if answer.status() == status {
            return answer.json().await.unwrap_or(Value::Null);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} never answered {status}");
}

#[tokio::test]
async fn under_a_response_policy_a_spike_throttles_then_freezes_the_token_everywhere_and_unfreezing_needs_another_persons_approval()
 {
    let (app, clock, key, token_id, token) = watched_token().await;
    let sibling = app.sibling().await;
    let (status, policy) = app
        .call(
            Method::PUT,
            "/api/v1/policies/response",
            Some(
                json!({"rules": [{"subjects": ["token"], "signals": ["request_spike"],
                "throttle_after_minutes": 0, "throttle_percent": 10, "freeze_after_minutes": 10}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let (status, bad) = app
        .call(
            Method::PUT,
            "/api/v1/policies/response",
            Some(json!({"rules": [{"throttle_after_minutes": 30, "freeze_after_minutes": 5}]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_rule");
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let (status, hook) = app
        .call(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": url, "kinds": ["alert_escalated"], "allow_private_network": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    // Both instances serve the token before anything happens.
    until_answer(&app, &sibling.base, &token, StatusCode::OK).await;

    let alerted_at = spike(&app, &clock, &token).await;
    assert!(alerted_at <= 5, "alerted after {alerted_at} minutes");
    let alert = alerts(&app, &format!("token={token_id}")).await[0].clone();
    let alert_id = alert["id"].as_str().unwrap().to_owned();

    // At once: the token is throttled to a tenth of its busiest usual hour (120 an hour is
    // 2 a minute; a tenth rounds up to 1 a minute), on this instance and the other.
    app.app.escalate_alerts().await.unwrap();
    let (_, alert) = app
        .call(Method::GET, &format!("/api/v1/alerts/{alert_id}"), None)
        .await;
    assert_eq!(alert["stage"], "throttled");
    let (_, held) = app.call(Method::GET, "/api/v1/containments", None).await;
    let held = held.as_array().unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (
            held[0]["measure"].as_str(),
            held[0]["subject_id"].as_str(),
            held[0]["alert"].as_str(),
            held[0]["requests"].as_u64(),
            held[0]["per_seconds"].as_u64()
        ),
        (
            Some("throttle"),
            Some(token_id.as_str()),
            Some(alert_id.as_str()),
            Some(1),
            Some(60)
        )
    );
    for base in [&app.base, &sibling.base] {
        let limited = until_answer(&app, base, &token, StatusCode::TOO_MANY_REQUESTS).await;
        assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    }
    // The key was not in the policy: its own alert stays an alert.
    let (_, key_alerts) = app
        .call(Method::GET, &format!("/api/v1/alerts?key={key}"), None)
        .await;
    assert_eq!(key_alerts["alerts"][0]["stage"], "alerted");

    // Ten minutes on, still unanswered: frozen, refused by every instance.
    clock.set(tuesday(alerted_at + 10));
    app.app.escalate_alerts().await.unwrap();
    for base in [&app.base, &sibling.base] {
        let refused = until_answer(&app, base, &token, StatusCode::FORBIDDEN).await;
        assert_eq!(refused["error"]["code"], "frozen", "{refused}");
    }
    let (_, alert) = app
        .call(Method::GET, &format!("/api/v1/alerts/{alert_id}"), None)
        .await;
    assert_eq!(alert["stage"], "frozen");
    // Each step audited with the alert, and announced once.
    let (_, trail) = app.call(Method::GET, "/api/v1/audit?limit=200", None).await;
    let steps: Vec<&Value> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "alert.escalated")
        .collect();
    assert_eq!(steps.len(), 2, "{trail}");
    assert!(
        steps
            .iter()
            .all(|e| e["details"]["alert"] == alert_id.as_str()),
        "{steps:?}"
    );
    let delivered = receiver.wait_for(2).await;
    assert!(delivered.iter().all(|d| d.event == "alert_escalated"));
    // Escalating again changes nothing.
    assert_eq!(app.app.escalate_alerts().await.unwrap(), 0);

    // Lifting the freeze: refused without an approval, filed as a request, not approvable
    // by the requester, approved by someone else, then done once by the requester.
    let (_, ada, _) = crate::browser::enrolled_user(&app, "ada", Role::Admin).await;
    let (_, bob, _) = crate::browser::enrolled_user(&app, "bob", Role::Owner).await;
    let path = format!("/api/v1/app-tokens/{token_id}/unfreeze");
    let refused = act(&app, &ada, Method::POST, &path, None, None).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "approval_required");
    let (status, asked) = act(
        &app,
        &ada,
        Method::POST,
        &path,
        None,
        Some(("request", "the spike was a backfill by the data team")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    let approval = asked["error"]["reference"].as_str().unwrap().to_owned();
    let approve = format!("/api/v1/approvals/{approval}/approve");
    let own = act(&app, &ada, Method::POST, &approve, None, None).await;
    assert_error(&own, StatusCode::FORBIDDEN, "self_approval");
    until_answer(&app, &app.base, &token, StatusCode::FORBIDDEN).await;
    let (status, decided) = act(
        &app,
        &bob,
        Method::POST,
        &approve,
        Some(json!({"comment": "confirmed with the data team"})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    let (status, done) = act(&app, &ada, Method::POST, &path, None, Some((&approval, ""))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{done}");
    for base in [&app.base, &sibling.base] {
        until_answer(&app, base, &token, StatusCode::OK).await;
    }
    let (_, held) = app.call(Method::GET, "/api/v1/containments", None).await;
    assert_eq!(held, json!([]));
    let again = act(&app, &ada, Method::POST, &path, None, None).await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_frozen");
    let (_, trail) = app.call(Method::GET, "/api/v1/audit?limit=200", None).await;
    let actions = audit_actions(&trail);
    assert!(
        actions.iter().any(|a| a == "containment.unfreeze"),
        "{actions:?}"
    );
}

/// Whether the page is wider than the window (something would scroll sideways).
async fn overflows(chrome: &crate::chrome::Chrome) -> bool {
    chrome
        .client
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap()
        .as_bool()
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn in_chromium_the_analytics_page_draws_its_charts_and_an_alert_is_acknowledged_from_the_dashboard()
 {
    use fantoccini::Locator;
    let Some(chrome) = crate::chrome::Chrome::start(1280, 900).await else {
        return;
    };
    let (app, clock, _key, _token_id, token) = watched_token().await;
    spike(&app, &clock, &token).await;
    let (_, _, phone) = crate::browser::enrolled_user(&app, "ada", Role::Admin).await;
    // The next TOTP step (the enrolment used this one's code).
    clock.set(
        app.app
            .now()
            .checked_add(SignedDuration::from_secs(30))
            .unwrap(),
    );
    let c = &chrome.client;
    c.goto(&format!("{}/login", app.base)).await.unwrap();
    for (field, value) in [
        ("username", "ada".to_owned()),
        ("password", crate::browser::PASSWORD.to_owned()),
        ("code", crate::browser::code_now(&app, &phone)),
    ] {
        c.find(Locator::Id(field))
            .await
            .unwrap()
            .send_keys(&value)
            .await
            .unwrap();
    }
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Css("#open-alerts"))
        .await
        .unwrap_or_else(|_| panic!("not signed in"));

    // The week: requests, latency, cost and cache charts, each saying what it shows.
    c.goto(&format!("{}/usage?view=week", app.base))
        .await
        .unwrap();
    let charts = c
        .find_all(Locator::Css("figure[data-chart] svg[role=img]"))
        .await
        .unwrap();
    assert_eq!(charts.len(), 4);
    let words = charts[0].attr("aria-label").await.unwrap().unwrap();
    assert!(words.starts_with("Requests per day: "), "{words}");
    let bars = c
        .find_all(Locator::Css("figure[data-chart=requests] rect.ok"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 8, "a bar for each day of the week and today");
    let p50 = c
        .find(Locator::Css("figure[data-chart=latency] polyline.p50"))
        .await
        .unwrap()
        .attr("points")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(p50.contains(','), "a median line: {p50:?}");
    chrome.screenshot("analytics-1280").await;
    c.set_window_size(390, 844).await.unwrap();
    chrome.screenshot("analytics-390").await;
    let wide = c
        .execute(
            "return [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        !overflows(&chrome).await,
        "the analytics page fits a phone: {wide}"
    );
    c.set_window_size(1280, 900).await.unwrap();

    // The dashboard's open alerts: acknowledged there, with a comment.
    c.goto(&app.base).await.unwrap();
    let panel = c.find(Locator::Css("#open-alerts")).await.unwrap();
    assert_eq!(
        panel.attr("data-open-alerts").await.unwrap().as_deref(),
        Some("2")
    );
    chrome.screenshot("dashboard-alerts-1280").await;
    let first = c.find(Locator::Css("#open-alerts tbody tr")).await.unwrap();
    let row = first.attr("id").await.unwrap().unwrap();
    let alert_id = row.trim_start_matches("alert-").to_owned();
    first
        .find(Locator::Css("input[name=comment]"))
        .await
        .unwrap()
        .send_keys("looking at it: a backfill?")
        .await
        .unwrap();
    first
        .find(Locator::Css("button[value=acknowledged]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mut status = Value::Null;
    for _ in 0..50 {
        status = app
            .call(Method::GET, &format!("/api/v1/alerts/{alert_id}"), None)
            .await
            .1;
        if status["status"] == "acknowledged" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "acknowledged", "{status}");
    assert_eq!(status["acknowledged"]["by"], "ada");
    assert_eq!(
        status["acknowledged"]["comment"],
        "looking at it: a backfill?"
    );
    let panel = c.find(Locator::Css("#open-alerts")).await.unwrap();
    assert_eq!(
        panel.attr("data-open-alerts").await.unwrap().as_deref(),
        Some("1"),
        "back on the dashboard, one still open"
    );
    c.set_window_size(390, 844).await.unwrap();
    assert!(!overflows(&chrome).await, "the dashboard fits a phone");
    chrome.screenshot("dashboard-alerts-390").await;
    let violations: Vec<String> = chrome
        .console()
        .await
        .into_iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Refused to"))
        .collect();
    assert!(violations.is_empty(), "CSP violations: {violations:?}");
    chrome.close().await;
}

#[tokio::test]
async fn a_settled_token_calling_from_a_new_network_or_endpoint_and_any_call_for_a_disabled_or_deleted_key_raise_alerts()
 {
    let start: Timestamp = "2026-12-01T15:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let settings = keyward_server::config::RawSettings {
        trusted_proxies: Some("127.0.0.1/32".into()),
        ..Default::default()
    };
    let app = TestApp::spawn_with_clock(Backend::Sqlite, settings, clock.clone())
        .await
        .unwrap();
    let upstream =
        serve_fake(axum::Router::new().fallback(|| async { axum::Json(json!({"c": 189.5})) }))
            .await;
    app.point_service("finnhub", &upstream).await;
    let key = app
        .create_key("finnhub", "production", "quotes", FINNHUB_KEY)
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token_for = |name: &str| {
        let app = &app;
        let name = name.to_owned();
        async move {
            let created = app
                .app_token(
                    json!({"name": name, "services": ["finnhub"], "environments": ["production"]}),
                )
                .await;
            (
                created["id"].as_str().unwrap().to_owned(),
                created["token"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (token_id, token) = token_for("pulse").await;
    let call = |token: &str, from: &str, path: &str| {
        app.client
            .get(format!("{}/proxy/finnhub{path}", app.base))
            .header("x-keyward-token", token)
            .header("x-forwarded-for", from)
            .send()
    };
    // Waits until the writer has judged what was sent (it writes every quarter second).
    let open = |query: String| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            alerts(app, &format!("status=open&{query}")).await
        }
    };

    // A day of the token's habits: quotes from the office network.
    for symbol in ["AAPL", "MSFT"] {
        let answer = call(
            &token,
            "203.0.113.7",
            &format!("/api/v1/quote?symbol={symbol}"),
        )
        .await
        .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }
    // Learning: a second network within the first day is a habit, not an alert.
    call(&token, "203.0.113.200", "/api/v1/quote?symbol=IBM")
        .await
        .unwrap();
    assert!(open(format!("token={token_id}")).await.is_empty());

    // A day later: the usual is quiet, a new network and a new endpoint are not.
    clock.set(start.checked_add(SignedDuration::from_hours(25)).unwrap());
    call(&token, "203.0.113.9", "/api/v1/quote?symbol=NVDA")
        .await
        .unwrap();
    assert!(open(format!("token={token_id}")).await.is_empty());
    call(&token, "198.51.100.23", "/api/v1/quote?symbol=NVDA")
        .await
        .unwrap();
    let found = open(format!("token={token_id}&signal=new_network")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["severity"], "critical");
    assert_eq!(
        found[0]["reason"],
        "first call from 198.51.100.0/24; this token calls from 203.0.113.0/24"
    );
    call(&token, "203.0.113.7", "/api/v1/stock/profile2?symbol=NVDA")
        .await
        .unwrap();
    let found = open(format!("token={token_id}&signal=new_endpoint")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let reason = found[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "first call to finnhub /api/v1/stock/profile2; this token calls finnhub /api/v1/quote"
        ),
        "{reason}"
    );
    // Seen again: the alert is not repeated.
    call(&token, "198.51.100.23", "/api/v1/quote?symbol=NVDA")
        .await
        .unwrap();
    assert_eq!(open(format!("token={token_id}")).await.len(), 2);

    // A new token is still learning: its second network is no alert.
    let (fresh_id, fresh) = token_for("fresh").await;
    call(&fresh, "203.0.113.7", "/api/v1/quote?symbol=AAPL")
        .await
        .unwrap();
    call(&fresh, "192.0.2.1", "/api/v1/quote?symbol=AAPL")
        .await
        .unwrap();
    assert!(open(format!("token={fresh_id}")).await.is_empty());

    // The key is disabled: a call for it is refused, and its use is an alert about the key.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{key}/disable"),
            Some(json!({"reason": "moving to the new plan"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = call(&token, "203.0.113.7", "/api/v1/quote?symbol=AAPL")
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let found = open(format!("key={key}&signal=dormant_key_use")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let reason = found[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&token_id) && reason.contains("while it is disabled"),
        "{reason}"
    );

    // Deleted, in its recovery window: a call finds no key, and wanting it is an alert too.
    let alert = found[0]["id"].as_str().unwrap();
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/alerts/{alert}/resolve"),
            Some(json!({"comment": "the app moved to the new plan"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .call(Method::DELETE, &format!("/api/v1/keys/{key}"), None)
        .await;
    assert!(status.is_success(), "{body}");
    let refused = call(&token, "203.0.113.7", "/api/v1/quote?symbol=AAPL")
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let found = open(format!("key={key}&signal=dormant_key_use")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let reason = found[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&token_id)
            && reason.contains("while it is deleted (in its recovery window)"),
        "{reason}"
    );
}
