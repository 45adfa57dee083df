//! A real browser for the tests of the hub's pages: Debian's `chromium`, headless, driven
//! through `chromedriver` over the W3C WebDriver protocol (a handful of its calls, over
//! HTTP on loopback).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{wait_for, TIMEOUT};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether a browser can be driven here (`chromium` and `chromedriver`).
pub fn available() -> bool {
    ["chromium", "chromedriver"].iter().all(|program| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A headless Chromium with one window.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
}

impl Browser {
    /// Starts chromedriver and a browser session `width` × `height` pixels.
    pub fn start(width: u32, height: u32) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        wait_for("chromedriver to answer", TIMEOUT, || {
            http.get(format!("{base}/status")).call().ok().map(drop)
        });
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update",
                         "--no-first-run", format!("--window-size={width},{height}")]
            }
        }}});
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            http,
        };
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match body {
            Some(body) => self
                .http
                .post(&url)
                .content_type("application/json")
                .send(body.to_string()),
            None if method == "DELETE" => self.http.delete(&url).call(),
            None => self.http.get(&url).call(),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        value.get("value").cloned().unwrap_or(value)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` in the page; what it returns.
    pub fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `script` returns something other than null or false; that.
    pub fn wait(&self, what: &str, script: &str) -> Value {
        wait_for(what, TIMEOUT, || {
            let value = self.eval(script);
            (!value.is_null() && value != Value::Bool(false)).then_some(value)
        })
    }

    /// The first element `css` finds, once there is one.
    fn element(&self, css: &str) -> String {
        let query = json!({ "using": "css selector", "value": css });
        wait_for(&format!("an element {css}"), TIMEOUT, || {
            let found = self.session_call("POST", "/element", Some(query.clone()));
            found[ELEMENT].as_str().map(str::to_owned)
        })
    }

    /// Clicks the first element `css` finds (again, should the page have replaced it
    /// between finding and clicking).
    pub fn click(&self, css: &str) {
        wait_for(&format!("a click on {css}"), TIMEOUT, || {
            let id = self.element(css);
            let answer =
                self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
            answer.get("error").is_none().then_some(())
        });
    }

    /// Types `text` into the first element `css` finds.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Accepts the page's `confirm()`.
    pub fn accept_alert(&self) {
        wait_for("a dialog", TIMEOUT, || {
            let answer = self.session_call("POST", "/alert/accept", Some(json!({})));
            answer.is_null().then_some(())
        });
    }

    /// The window as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self.session_call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
