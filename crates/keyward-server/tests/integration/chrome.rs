//! Headless Chromium for the browser tests: Debian's `chromium` driven through
//! `chromedriver` (WebDriver) with fantoccini. Without them the tests skip loudly — and
//! fail under `KEYWARD_TEST_REQUIRE_SERVICES=1`, as in CI.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser (and its driver), closed when dropped.
pub struct Chrome {
    pub client: Client,
    driver: Child,
    driver_url: String,
    _profile: tempfile::TempDir,
}

impl Chrome {
    /// A browser with a window of `width` × `height`, or `None` (with a loud notice) when
    /// Chromium is not installed and services are not required.
    pub async fn start(width: u32, height: u32) -> Option<Self> {
        if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists()
        {
            assert!(
                std::env::var_os("KEYWARD_TEST_REQUIRE_SERVICES").is_none(),
                "Chromium is required: apt-get install -y chromium chromium-driver"
            );
            eprintln!(
                "\n*** SKIPPED browser test: {CHROMIUM} or {CHROMEDRIVER} missing (apt-get install -y chromium chromium-driver) ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver_url = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("profile dir");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let mut last_error = None;
        for _ in 0..50 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&driver_url)
                .await
            {
                Ok(client) => {
                    return Some(Self {
                        client,
                        driver,
                        driver_url,
                        _profile: profile,
                    });
                }
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a browser: {last_error:?}");
    }

    /// Console messages since the last call (CSP violations land here).
    pub async fn console(&self) -> Vec<String> {
        let Ok(session) = self.client.session_id().await else {
            return Vec::new();
        };
        let Some(session) = session else {
            return Vec::new();
        };
        let url = format!("{}/session/{session}/se/log", self.driver_url);
        let response = reqwest::Client::new()
            .post(url)
            .json(&json!({"type": "browser"}))
            .send()
            .await;
        let Ok(response) = response else {
            return Vec::new();
        };
        let body: Value = response.json().await.unwrap_or(Value::Null);
        body["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the page as `<target>/ui-screenshots/<name>.png`; returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Ends the browser session; dropping then stops the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// `$CARGO_TARGET_DIR/ui-screenshots`, or `target/ui-screenshots` in the workspace.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("ui-screenshots")
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
