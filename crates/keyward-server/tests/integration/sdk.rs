//! The official `openai` and `anthropic` Python SDKs, unmodified, pointed at Keyward with an
//! app token: normal and streamed calls reach a fake provider that accepts only the real
//! keys, and the streamed and normal calls record the same cost.
//!
//! Needs a Python with both SDKs (`tests/sdk/requirements.txt`): `KEYWARD_TEST_PYTHON`, or
//! `python3`. `.ci/run` installs them into a venv; elsewhere the test skips loudly.

use std::path::Path;
use std::process::Command;

use keyward_store::testing::service_missing;
use serde_json::{Value, json};

use crate::fake_llm::usage;
use crate::llm::Llms;

fn python() -> String {
    std::env::var("KEYWARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn sdks_installed(python: &str) -> Result<(), String> {
    let check = Command::new(python)
        .args(["-c", "import openai, anthropic"])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if check.status.success() {
        Ok(())
    } else {
        // The traceback's last line names the missing module.
        let stderr = String::from_utf8_lossy(&check.stderr);
        Err(stderr.trim().lines().last().unwrap_or_default().to_owned())
    }
}

#[tokio::test]
async fn official_python_sdks_work_unmodified_through_the_proxy() {
    let python = python();
    if let Err(why) = sdks_installed(&python) {
        service_missing(
            "the openai and anthropic Python SDKs",
            &format!(
                "{why}; pip install -r crates/keyward-server/tests/sdk/requirements.txt and set KEYWARD_TEST_PYTHON"
            ),
        );
        return;
    }
    let s = Llms::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/official_sdks.py");
    let (base, token) = (s.app.base.clone(), s.token.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("KEYWARD_URL", base)
            .env("KEYWARD_APP_TOKEN", token)
            // The SDKs must not find a real key or proxy in the environment.
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("ANTHROPIC_BASE_URL")
            .env("NO_PROXY", "*")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        seen,
        json!({
            "openai_plain": "Bullish", "openai_plain_usage": [5, 1],
            "openai_streamed": "Bullish", "openai_streamed_usage_chunks": 0,
            "anthropic_plain": "Bullish", "anthropic_plain_usage": [12, 3],
            "anthropic_streamed": "Bullish", "anthropic_streamed_usage": [12, 3],
        })
    );
    assert_eq!(
        s.fake.completions.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "every call reached the provider with the real key"
    );

    for (key, cost) in [
        (&s.openai_key, usage::OPENAI_COST),
        (&s.anthropic_key, usage::ANTHROPIC_COST),
    ] {
        let totals = s.usage(&format!("key={key}"), 2).await;
        assert_eq!(totals["errors"], 0, "{totals}");
        let recorded = totals["cost_usd"].as_f64().unwrap();
        assert!(
            (recorded - 2.0 * cost).abs() < 1e-12,
            "streamed + plain = 2 × ${cost} from the pricing table, recorded ${recorded}"
        );
    }
}
