//! A plain HTTP client for an edge's REST API, as a document-management
//! application would use it: bearer token, JSON in and out, SSE for events.

use std::{
    io::{BufRead, BufReader},
    time::Duration,
};

use serde_json::Value;

use super::{Cluster, DEADLINE};

pub struct Rest {
    pub base: String,
    pub token: String,
    agent: ureq::Agent,
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

/// An open event stream; dropping it closes the connection.
pub struct Sse {
    lines: std::io::Lines<BufReader<ureq::BodyReader<'static>>>,
}

impl Iterator for Sse {
    type Item = SseEvent;

    /// The next event (comments and keep-alives skipped); None when the
    /// server closes the stream.
    fn next(&mut self) -> Option<SseEvent> {
        let (mut id, mut event, mut data) = (None, String::new(), String::new());
        loop {
            let line = self.lines.next()?.ok()?;
            if line.is_empty() {
                if let Some(id) = id.take() {
                    return Some(SseEvent {
                        id,
                        event: std::mem::take(&mut event),
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }
}

impl Cluster {
    /// The REST API of a running edge, with the token `truc certs init` made for it.
    pub fn rest(&self, node: &str) -> Rest {
        let addr = self.procs[node].rest.expect("no REST API on this node");
        let token = std::fs::read_to_string(self.path(&format!("tokens/{node}.token")))
            .unwrap()
            .trim()
            .to_owned();
        Rest::new(format!("http://{addr}"), token)
    }
}

impl Rest {
    pub fn new(base: String, token: String) -> Self {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                // A safety net against a hung test, not a performance assertion.
                .timeout_global(Some(DEADLINE))
                .build(),
        );
        Self { base, token, agent }
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self::new(self.base.clone(), token.to_owned())
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn json_of(mut r: ureq::http::Response<ureq::Body>) -> (u16, Value) {
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
        };
        (status, v)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .call()
            .unwrap();
        Self::json_of(r)
    }

    /// Without any Authorization header.
    pub fn get_anonymous(&self, path: &str) -> (u16, Value) {
        let r = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        Self::json_of(r)
    }

    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let mut r = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .call()
            .unwrap();
        (r.status().as_u16(), Self::bytes_of(&mut r))
    }

    /// A whole answer's bytes (an attachment: up to 1 GiB).
    fn bytes_of(r: &mut ureq::http::Response<ureq::Body>) -> Vec<u8> {
        r.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap()
    }

    /// GET `path` with `Range: range`: the status, the Content-Range, the bytes.
    pub fn get_range(&self, path: &str, range: &str) -> (u16, String, Vec<u8>) {
        let mut r = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .header("Range", range)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        let content_range = r
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (r.status().as_u16(), content_range, Self::bytes_of(&mut r))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .send_json(&body)
            .unwrap();
        Self::json_of(r)
    }

    pub fn post_bytes(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .content_type(content_type)
            .send(body)
            .unwrap();
        Self::json_of(r)
    }

    pub fn put_bytes(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let r = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .content_type("application/octet-stream")
            .send(body)
            .unwrap();
        Self::json_of(r)
    }

    /// The inbox entry of `doc_id` for `organ` (acked or not), if there is one;
    /// `kind` is "document", "status" or "" for both.
    pub fn inbox_item(&self, organ: &str, doc_id: &str, kind: &str) -> Option<Value> {
        let (s, v) = self.get(&format!("/v1/inbox?organ={organ}&all=true&kind={kind}"));
        assert_eq!(s, 200, "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["doc_id"] == doc_id)
            .cloned()
    }

    /// Waits until `doc_id` is in the inbox of `organ`.
    pub fn wait_inbox(&self, organ: &str, doc_id: &str, kind: &str) -> Value {
        poll(&format!("{doc_id} in the inbox of {organ}"), || {
            self.inbox_item(organ, doc_id, kind)
        })
    }

    /// Opens the event stream of `organ`, resuming after `last_event_id`.
    pub fn events(&self, organ: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = self
            .agent
            .get(format!("{}/v1/events?organ={organ}", self.base))
            .header("Authorization", self.auth())
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let r = req
            .config()
            .timeout_global(None)
            .timeout_recv_body(Some(DEADLINE))
            .build()
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "event stream refused");
        Sse {
            lines: BufReader::new(r.into_body().into_reader()).lines(),
        }
    }
}

/// Waits (polling the API) until `f` returns Some.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
