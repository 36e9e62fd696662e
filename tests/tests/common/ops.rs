//! Clients of a node's operator port (admin gRPC, /metrics, dashboard, health)
//! with a chosen identity: an operator certificate, a node certificate, or none.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, sync::Arc, time::Duration};

use super::{Cluster, DEADLINE};

/// An HTTPS client of one node's operator port.
pub struct Ops {
    pub base: String,
    agent: ureq::Agent,
    cookie: Option<String>,
}

/// The answer to one request: status, body, and the session cookie if one was set.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub set_cookie: Option<String>,
    /// The whole Set-Cookie header, attributes included.
    pub set_cookie_attrs: Option<String>,
    pub content_type: String,
    pub frame_options: Option<String>,
}

impl Cluster {
    /// `identity`: "operators/viewer", "nodes/vpcp", … (a .crt/.key pair under
    /// the PKI directory), or None for no client certificate.
    pub fn ops(&self, node: &str, identity: Option<&str>) -> Ops {
        let addr = self.admin_addr(node);
        let ca = std::fs::read(self.path("transport-ca.crt")).unwrap();
        let mut tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(
            Arc::new(vec![ureq::tls::Certificate::from_pem(&ca).unwrap()]),
        ));
        if let Some(id) = identity {
            let crt = std::fs::read(self.path(&format!("{id}.crt"))).unwrap();
            let key = std::fs::read(self.path(&format!("{id}.key"))).unwrap();
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(
                &[ureq::tls::Certificate::from_pem(&crt).unwrap()],
                ureq::tls::PrivateKey::from_pem(&key).unwrap(),
            )));
        }
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(DEADLINE))
                .tls_config(tls.build())
                .build(),
        );
        Ops {
            base: format!("https://{addr}"),
            agent,
            cookie: None,
        }
    }
}

impl Ops {
    pub fn with_cookie(mut self, cookie: &str) -> Self {
        self.cookie = Some(cookie.to_owned());
        self
    }

    fn answer(mut r: ureq::http::Response<ureq::Body>) -> Answer {
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let set_cookie_attrs = header("set-cookie");
        let set_cookie = set_cookie_attrs
            .as_deref()
            .and_then(|c| c.split(';').next().map(str::to_owned));
        let content_type = header("content-type").unwrap_or_default();
        let frame_options = header("x-frame-options");
        Answer {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().unwrap(),
            set_cookie,
            set_cookie_attrs,
            content_type,
            frame_options,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        Self::answer(req.call().unwrap())
    }

    /// A POST with the headers a browser would add, as a web page could make it.
    pub fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::answer(req.send(body).unwrap())
    }

    /// A GET with the headers a browser would add.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::answer(req.call().unwrap())
    }

    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        Self::answer(req.send_form(form.iter().copied()).unwrap())
    }
}

/// A gRPC channel to a node's operator port as `identity` (see [`Cluster::ops`]).
pub fn admin_channel(c: &Cluster, node: &str, identity: Option<&str>) -> tonic::transport::Channel {
    let pki = c.dir.path();
    let ca = truc_pki::load_certs(&pki.join("transport-ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(truc_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                truc_pki::load_certs(&pki.join(format!("{id}.crt"))).unwrap(),
                truc_pki::load_key(&pki.join(format!("{id}.key"))).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    truc_node::transport::tls_channel(
        &c.admin_addr(node).to_string(),
        node,
        Arc::new(cfg),
        Duration::from_secs(5),
        Duration::from_secs(30),
        1 << 20,
    )
    .unwrap()
}

/// Checks Prometheus/OpenMetrics text line by line (names, label syntax,
/// values, `# EOF` last) and returns it parsed by an independent parser.
pub fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    for line in &lines {
        if line.starts_with('#') {
            let mut w = line.split_whitespace();
            assert_eq!(w.next(), Some("#"));
            assert!(
                matches!(w.next(), Some("HELP" | "TYPE" | "UNIT" | "EOF")),
                "bad comment line: {line}"
            );
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"),
            "bad value in {line}"
        );
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, rest)) => (
                n,
                Some(
                    rest.strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels: {line}")),
                ),
            ),
            None => (name_labels, None),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line}"
        );
        if let Some(labels) = labels {
            // name="value" pairs; values may hold escaped quotes.
            let mut rest = labels;
            while !rest.is_empty() {
                let (k, v) = rest
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line}"
                );
                let mut end = None;
                let mut escaped = false;
                for (i, ch) in v.char_indices() {
                    match (escaped, ch) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.unwrap_or_else(|| panic!("unterminated label value in {line}"));
                rest = v[end + 1..].trim_start_matches(',');
            }
        }
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include every `labels` pair.
pub fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|m| {
            m.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| m.labels.get(k).is_some_and(|x| x == *v))
        })
        .map(|m| match m.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => h.last().map(|b| b.count).unwrap_or(0.0),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// `size` bytes of zeros really written and synced (not a sparse file): disk
/// space taken, for the tests that fill the disk up to a node's reserve.
pub fn zero_file(path: &Path, size: u64) {
    use std::io::Read;
    let mut dst = std::fs::File::create(path).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(size), &mut dst).unwrap();
    dst.sync_all().unwrap();
}

/// Free bytes of the filesystem holding `dir` (as `df` reports them).
pub fn free_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
