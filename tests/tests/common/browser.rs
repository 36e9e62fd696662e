//! A real headless Chromium driven over the Chrome DevTools Protocol: enough to
//! load a page, run JavaScript in it, wait for conditions and take screenshots.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

use super::DEADLINE;

pub struct Browser {
    child: Chromium,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    profile: tempfile::TempDir,
}

/// The Chromium binary: `TRUC_CHROMIUM`, or the first of the usual names on PATH.
pub fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("TRUC_CHROMIUM") {
        return p.into();
    }
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            && out.status.success()
        {
            return String::from_utf8(out.stdout).unwrap().trim().into();
        }
    }
    panic!(
        "no chromium found: ./scripts/test installs Debian's chromium when missing, or set TRUC_CHROMIUM"
    );
}

impl Browser {
    /// Starts headless Chromium trusting exactly the TLS key `spki_sha256_b64`
    /// (the node's: its certificate is from the federation's own CA).
    pub fn launch(spki_sha256_b64: &str) -> Self {
        let profile = tempfile::Builder::new()
            .prefix("truc-chromium-")
            .tempdir()
            .unwrap();
        // Chromium's own temporary files (its singleton socket) go into the
        // profile too, so that nothing of a run is left in /tmp.
        let tmp = profile.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let child = Command::new(chromium())
            .env("TMPDIR", &tmp)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--window-size=1400,1100",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                &format!("--ignore-certificate-errors-spki-list={spki_sha256_b64}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Ended even if what follows panics.
        let child = Chromium(child);
        // Chromium writes the port it chose into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + DEADLINE;
        let port: u16 = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file)
                && let Some(p) = s.lines().next().and_then(|l| l.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        );
        let page_ws = loop {
            let list: Value = agent
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json().ok())
                .unwrap_or(Value::Null);
            if let Some(url) = list.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            }) {
                break url.to_owned();
            }
            assert!(Instant::now() < deadline, "chromium shows no page");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (ws, _) = tungstenite::connect(page_ws.as_str()).unwrap();
        let mut b = Self {
            child,
            ws,
            next_id: 0,
            profile,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// One CDP command; returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// One CDP command; Err with the protocol's error (e.g. while navigating).
    pub fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .unwrap();
        loop {
            let msg = self.ws.read().unwrap();
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    return Err(e.clone());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    pub fn goto(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigate {url}: {r}");
        self.wait_for("the page to load", "document.readyState === 'complete'");
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is truthy; returns its value.
    pub fn wait_for(&mut self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            // Mid-navigation the page has no context yet: try again.
            let r = self
                .try_call(
                    "Runtime.evaluate",
                    json!({"expression": js, "returnByValue": true}),
                )
                .unwrap_or(Value::Null);
            let v = r["result"]["value"].clone();
            let truthy = match &v {
                Value::Bool(b) => *b,
                Value::Null => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy && r.get("exceptionDetails").is_none() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({js})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

/// The Chromium process, killed when dropped.
struct Chromium(Child);

impl Chromium {
    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.end();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closed as a user would: Chromium ends its helper processes (the
        // renderer, the zygote) itself, which a kill leaves writing into the
        // profile for a moment. Killed if it takes long.
        // (Sent without waiting for the answer: a drop must not panic.)
        let _ = self.ws.send(Message::text(
            json!({"id": 0, "method": "Browser.close"}).to_string(),
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.end();
        // A helper still exiting may yet add a file: a few tries remove what
        // it left.
        for _ in 0..20 {
            match std::fs::remove_dir_all(self.profile.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                _ => break,
            }
        }
    }
}

/// Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo, as Chromium's
/// `--ignore-certificate-errors-spki-list` wants it.
pub fn spki_sha256_b64(cert_pem_path: &Path) -> String {
    let der = truc_pki::load_certs(cert_pem_path).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    base64::engine::general_purpose::STANDARD
        .encode(ring::digest::digest(&ring::digest::SHA256, spki).as_ref())
}
