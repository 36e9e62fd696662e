//! The monitoring files in deploy/ stay true to what nodes export: every truc
//! metric named by an alerting rule or a Grafana panel exists in a real node's
//! /metrics, and the files are well formed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{ops::*, *};

fn deploy(rel: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(rel),
    )
    .unwrap()
}

/// `truc_*` names in an expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("truc_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_metric_the_alerts_and_the_grafana_board_use_is_exported() {
    let mut c = Cluster::new();
    // Short deadlines and alert thresholds, so that overdue documents and
    // alerts exist within the test.
    c.edit("hub", |t| {
        let mut d = toml::Table::new();
        d.insert(
            "deadline_ms".into(),
            // Normal documents wait a minute; express ones (priority 3) 500 ms.
            toml::Value::Array(
                [60_000, 60_000, 60_000, 500, 500]
                    .into_iter()
                    .map(toml::Value::Integer)
                    .collect(),
            ),
        );
        d.insert("sweep_interval_ms".into(), 100.into());
        t.insert("delivery".into(), d.into());
        let mut a = toml::Table::new();
        a.insert("link_down_ms".into(), 200.into());
        t.insert("alerts".into(), a.into());
    });
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    // Traffic, a waiting queue and a delivered receipt, so that every family
    // has samples.
    let id = c
        .cli_ok(&[
            "send",
            "--config",
            &c.cfg("vpcp"),
            "--from",
            G22,
            "--to",
            H41,
            "--subject",
            "x",
        ])
        .trim()
        .to_owned();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&c.cli_ok(&["status", "--config", &c.cfg("vpcp"), &id, "--json"]))
                .unwrap();
        if v["recipients"][0]["state"] == "delivered" {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    c.stop("nghean");
    let attachment = c.path("nodes/vpcp.crt");
    c.cli_ok(&[
        "send",
        "--config",
        &c.cfg("vpcp"),
        "--from",
        G22,
        "--to",
        H41,
        "--subject",
        "y",
        "--priority",
        "3",
        "--attach",
        attachment.to_str().unwrap(),
    ]);
    // And one that stays queued.
    c.cli_ok(&[
        "send",
        "--config",
        &c.cfg("vpcp"),
        "--from",
        G22,
        "--to",
        H41,
        "--subject",
        "w",
    ]);
    // A refusal, counted by reason.
    let (ok, _) = c.cli_any(&[
        "send",
        "--config",
        &c.cfg("vpcp"),
        "--from",
        G22,
        "--to",
        "000.00.00.Z99",
        "--subject",
        "z",
    ]);
    assert!(!ok);
    // Past its deadline at the hub (parked), and the link-down alert raised.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let text = c.ops("hub", Some("operators/viewer")).get("/metrics").body;
        if text.contains("truc_overdue_documents{") && text.contains("truc_alert_active{") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no overdue document at the hub:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut exported = BTreeSet::new();
    for node in ["hub", "vpcp"] {
        let text = c.ops(node, Some("operators/viewer")).get("/metrics").body;
        for s in parse_metrics(&text).samples {
            exported.insert(s.metric.clone());
        }
        // Histogram and counter series as Prometheus names them.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            exported.insert(name.to_owned());
        }
    }
    // Families that only exist once something happened are declared anyway.
    let mut used = BTreeSet::new();
    let rules = deploy("prometheus/alerts.yml");
    let mut n_rules = 0;
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            n_rules += 1;
            used.extend(metric_names(expr));
        }
    }
    assert!(n_rules >= 7, "{n_rules} rules");
    let board: serde_json::Value =
        serde_json::from_str(&deploy("grafana/truc-dashboard.json")).unwrap();
    let panels = board["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            used.extend(metric_names(t["expr"].as_str().unwrap()));
        }
    }
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| {
            !exported.contains(*m)
                && !exported.contains(&format!("{m}_total"))
                && !exported.iter().any(|e| e.starts_with(&format!("{m}_")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The scrape config scrapes over TLS with an operator certificate.
    let scrape = deploy("prometheus/prometheus.yml");
    for needle in [
        "scheme: https",
        "cert_file:",
        "key_file:",
        "ca_file:",
        "alerts.yml",
    ] {
        assert!(scrape.contains(needle), "prometheus.yml: {needle}");
    }
}
