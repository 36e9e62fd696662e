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
    // Short deadlines (express documents) and alert thresholds, so that
    // overdue documents and alerts exist within the test.
    c.set_deadlines("hub", [60_000, 60_000, 60_000, 500, 500]);
    c.edit("hub", |t| {
        let mut a = toml::Table::new();
        a.insert("link_down_ms".into(), 200.into());
        t.insert("alerts".into(), a.into());
    });
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    // Traffic, a waiting queue and a delivered receipt, so that every family
    // has samples.
    let id = c.send_from_vpcp(H41, "x", &[]);
    c.wait_delivered("vpcp", &id);
    c.stop("nghean");
    let attachment = c.path("nodes/vpcp.crt");
    let attachment = attachment.to_str().unwrap();
    c.send_from_vpcp(H41, "y", &["--priority", "3", "--attach", attachment]);
    // And one that stays queued.
    c.send_from_vpcp(H41, "w", &[]);
    // A refusal, counted by reason.
    let (ok, _) = c.send_as("vpcp", G22, "000.00.00.Z99", "z", &[]);
    assert!(!ok);
    // Past its deadline at the hub (parked), and the link-down alert raised.
    rest::poll("an overdue document and an alert at the hub", || {
        let text = c.ops("hub", Some("operators/viewer")).get("/metrics").body;
        (text.contains("truc_overdue_documents{") && text.contains("truc_alert_active{"))
            .then_some(())
    });
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
