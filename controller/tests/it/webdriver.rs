//! A headless Chromium driven through chromedriver's WebDriver HTTP API.
//!
//! A small in-tree client over reqwest (already a test dependency) rather
//! than fantoccini or thirtyfour: the tests need a dozen commands, and
//! either crate would add a second HTTP stack (hyper-rustls, cookie,
//! webdriver types) to build on two shared cores.
//!
//! chromedriver runs in its own process group, so dropping the [`Browser`]
//! ends it and the Chromium it started, by that group's id.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The Debian packages the browser tests need.
const PACKAGES: [(&str, &str); 2] = [
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

/// Every wait for the page is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// Run in every page before its own scripts: keeps uncaught errors and
/// unhandled promise rejections in `window.__errors`.
const RECORD_ERRORS: &str = "window.__errors = []; \
    addEventListener('error', (e) => window.__errors.push(String(e.message))); \
    addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// with a `width` x `height` viewport. Fails (never skips) when a
    /// package is missing.
    pub async fn start(width: u32, height: u32) -> Browser {
        let mut found = Vec::new();
        for (program, package) in PACKAGES {
            let path = crate::support::find_program(program).unwrap_or_else(|| {
                panic!(
                    "`{program}` is not installed: the dashboard tests need the Debian package \
                     `{package}` (apt-get install -y chromium chromium-driver; scripts/test installs it)"
                )
            });
            found.push(path);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(&found[1])
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts")
        };
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            http,
            base,
            session: String::new(),
            driver,
            _profile: profile,
        };
        // Ready when /status says so (bounded).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(body) = ready {
                if body.await.is_ok_and(|b| b["value"]["ready"] == true) {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not become ready within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": found[0],
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                    "--disable-breakpad", "--disable-crash-reporter",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                    format!("--window-size={width},{height}"),
                ]
            }
        }}});
        let created = browser.command("POST", "/session", capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        browser.viewport(width, height).await;
        // Every page records its uncaught errors, for `script_errors`.
        browser
            .command(
                "POST",
                &browser.session_path("/goog/cdp/execute"),
                json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": RECORD_ERRORS}}),
            )
            .await;
        browser
    }

    /// One WebDriver command: its `value`, or a panic naming the error.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request.send().await.expect("chromedriver answers");
        let status = response.status();
        let body: Value = response.json().await.expect("WebDriver JSON");
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {body}"
        );
        body["value"].clone()
    }

    fn session_path(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Sets the layout viewport (phones are narrower than a desktop window may be).
    pub async fn viewport(&self, width: u32, height: u32) {
        let mobile = width < 700;
        self.command(
            "POST",
            &self.session_path("/goog/cdp/execute"),
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}}),
        )
        .await;
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", &self.session_path("/url"), json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            &self.session_path("/execute/sync"),
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The element's id for `css`, waiting for it to exist (bounded).
    pub async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let response = self
                .http
                .post(format!("{}{}", self.base, self.session_path("/element")))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .expect("chromedriver answers");
            if response.status().is_success() {
                let body: Value = response.json().await.unwrap();
                let element = body["value"]
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .expect("an element reference");
                return element.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no element `{css}` within {WAIT:?}; page text: {}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css`. Live pages redraw: an element replaced between finding
    /// and clicking it is found again (bounded).
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let element = self.find(css).await;
            let path = self.session_path(&format!("/element/{element}/click"));
            let response = self
                .http
                .post(format!("{}{path}", self.base))
                .json(&json!({}))
                .send()
                .await
                .expect("chromedriver answers");
            let status = response.status();
            let body: Value = response.json().await.expect("WebDriver JSON");
            if status.is_success() {
                return;
            }
            assert!(
                body["value"]["error"] == "stale element reference"
                    && tokio::time::Instant::now() < deadline,
                "WebDriver POST {path}: {status} {body}"
            );
        }
    }

    /// Replaces the text of the input `css` with `text`, typed as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        // WebDriver's clear fires no `input` event; the page listens for one.
        self.execute(
            "const e = document.querySelector(arguments[0]); e.value = ''; \
             e.dispatchEvent(new Event('input', {bubbles: true}));",
            json!([css]),
        )
        .await;
        if !text.is_empty() {
            self.command(
                "POST",
                &self.session_path(&format!("/element/{element}/value")),
                json!({ "text": text }),
            )
            .await;
        }
    }

    /// Chooses the option with `value` in the select `css` (and tells the page).
    pub async fn select(&self, css: &str, value: &str) {
        self.find(css).await;
        self.execute(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1]; \
             s.dispatchEvent(new Event('change', {bubbles: true}));",
            json!([css, value]),
        )
        .await;
    }

    /// The text of the first element `css` (empty when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The attribute `name` of the first element `css` (None: no element or no attribute).
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            json!([css, name]),
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Whether the first element `css` exists and is rendered (not
    /// `display: none`, nor inside something that is).
    pub async fn is_shown(&self, css: &str) -> bool {
        self.execute(
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0;",
            json!([css]),
        )
        .await
            == true
    }

    /// The uncaught errors of the page on screen (see [`RECORD_ERRORS`]).
    pub async fn script_errors(&self) -> Vec<String> {
        let errors = self
            .execute("return window.__errors || [];", json!([]))
            .await;
        serde_json::from_value(errors).unwrap_or_default()
    }

    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    /// Waits (bounded) until the text of `css` satisfies `check`; returns it.
    pub async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{css}` did not show {what} within {WAIT:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let encoded = self
            .command("GET", &self.session_path("/screenshot"), Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 PNG"))
            .unwrap()
    }

    /// A PNG of the whole page, below the fold too (at the viewport's width).
    pub async fn screenshot_full_page(&self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .command(
                "POST",
                &self.session_path("/goog/cdp/execute"),
                json!({"cmd": "Page.captureScreenshot", "params": {
                    "format": "png", "captureBeyondViewport": true}}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("base64 PNG"))
            .unwrap()
    }

    /// Ends the session and chromedriver (dropping does the latter too).
    pub async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}
