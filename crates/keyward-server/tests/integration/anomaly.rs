//! `keyward anomaly backtest`: the detector over a CSV series, as a user runs it.

use std::fmt::Write as _;

use crate::helpers::command;

/// Three weeks of a market-data key's minutes (an open surge, quiet nights and weekends)
/// from Monday 2026-11-02 (ET), then a labelled ten-fold spike on Tuesday 2026-11-24 at
/// 11:00 ET.
fn labelled_series() -> String {
    let start = 1_793_595_600i64; // 2026-11-02T05:00:00Z, midnight ET
    let mut csv = String::from("timestamp,value,label\n");
    for minute in 0..(23 * 1440) {
        let at = start + minute * 60;
        let day = minute / 1440;
        let minute_of_day = minute % 1440;
        // Weekends, and Thanksgiving (day 24 from the start, a Thursday), are closed.
        let weekday = day % 7 < 5;
        let value = match minute_of_day {
            _ if !weekday => 0,
            m if (570..585).contains(&m) => 60,
            m if (585..960).contains(&m) => 20 + m % 3,
            _ => 0,
        };
        let spike = (day == 22) && (660..690).contains(&minute_of_day);
        let (value, label) = if spike {
            (value * 10, "spike")
        } else {
            (value, "")
        };
        writeln!(csv, "{at},{value},{label}").unwrap();
    }
    csv
}

#[test]
fn backtest_prints_alerts_and_scores_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busy.csv");
    std::fs::write(&file, labelled_series()).unwrap();
    let out = command(dir.path(), &[])
        .args(["anomaly", "backtest", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one alert, then the scores: {lines:?}");
    let alert = &lines[0];
    assert_eq!(alert["signal"], "request_spike");
    let at: jiff::Timestamp = alert["timestamp"].as_str().unwrap().parse().unwrap();
    let spike_start: jiff::Timestamp = "2026-11-24T16:00:00Z".parse().unwrap();
    let delay = at.as_second() - spike_start.as_second();
    assert!(
        (0..=300).contains(&delay),
        "alerted {delay} s after the spike began"
    );
    assert!(alert["score"].as_f64().unwrap() > 5.0);
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .contains("in 5 min; usual for a trading day at 11:00 ET is"),
        "{alert}"
    );
    let scores = &lines[1]["scores"];
    assert_eq!(scores["precision"], 1.0);
    assert_eq!(scores["recall"], 1.0);
    assert_eq!(scores["false_alerts"], 0);
}

#[test]
fn backtest_refuses_bad_rows_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str, extra: &[&str]| {
        let file = dir.path().join("series.csv");
        std::fs::write(&file, text).unwrap();
        command(dir.path(), &[])
            .args(["anomaly", "backtest"])
            .args(extra)
            .arg(&file)
            .output()
            .unwrap()
    };
    let irregular = run(
        "timestamp,value\n2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,2\n2026-11-30T14:31:30Z,3\n",
        &[],
    );
    assert!(!irregular.status.success());
    let stderr = String::from_utf8_lossy(&irregular.stderr);
    assert!(stderr.contains("line 4: irregular step"), "{stderr}");
    let negative = run("2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,-2\n", &[]);
    assert!(!negative.status.success());
    assert!(String::from_utf8_lossy(&negative.stderr).contains("line 2:"));
    let unknown = run(
        "2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,2\n",
        &["--series", "latency"],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("is not a series"));
    // A series too short to have learned anything says so instead of alerting.
    let short = run("2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,9000\n", &[]);
    assert!(short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stdout)
            .contains("0 alerts over 2 steps of 60 s (2 learning)")
    );
}
