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

fn yaml_docs(rel: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(&deploy(rel))
        .map(|d| {
            let mut v: serde_yaml_ng::Value = serde::de::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{rel} does not parse: {e}"));
            v.apply_merge().unwrap();
            v
        })
        .collect()
}

/// Node ids of a topology file in deploy/.
fn topology_nodes(rel: &str) -> Vec<String> {
    let t: toml::Table = deploy(rel).parse().unwrap();
    t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `truc certs init` accepts a deploy topology; its configs load, children dial
/// their parent by name, and every node has the probe port.
fn configs_of(rel: &str) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel);
    let status = std::process::Command::new(bin())
        .args(["certs", "init", "--topology"])
        .arg(&path)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for n in topology_nodes(rel) {
        let cfg = truc_node::Config::load(&out.path().join(format!("{n}.toml")))
            .unwrap_or_else(|e| panic!("{rel}: {n}: {e}"));
        assert!(cfg.health_listen.is_some(), "{rel}: {n} has no health port");
        if let Some((address, _)) = &cfg.parent {
            assert!(
                !address.starts_with("0.0.0.0") && !address.starts_with("127."),
                "{rel}: {n} dials its parent at {address}"
            );
        }
    }
    out
}

#[test]
fn compose_runs_every_node_of_its_topology_hardened_with_monitoring() {
    let docs = yaml_docs("compose.yaml");
    assert_eq!(docs.len(), 1);
    let services = docs[0]["services"].as_mapping().unwrap();
    let _configs = configs_of("topology.compose.toml");
    for n in topology_nodes("topology.compose.toml") {
        let s = &services[n.as_str()];
        assert!(s.is_mapping(), "compose.yaml has no service {n}");
        let cmd: Vec<&str> = s["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(cmd, ["node", "--config", &format!("/etc/truc/{n}.toml")]);
        assert_eq!(s["read_only"].as_bool(), Some(true), "{n}");
        assert_eq!(s["user"].as_str(), Some("65532:65532"), "{n}");
        assert!(
            s["healthcheck"]["test"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| v.as_str() == Some("health")),
            "{n}: health check uses `truc health`"
        );
    }
    for extra in ["pki", "prometheus", "grafana"] {
        assert!(services[extra].is_mapping(), "compose.yaml has no {extra}");
    }
    // Prometheus scrapes every node by its service name.
    let scrape = deploy("prometheus/prometheus.compose.yml");
    for n in topology_nodes("topology.compose.toml") {
        assert!(scrape.contains(&format!("\"{n}:7790\"")), "{n} not scraped");
    }
    // The Dockerfile builds truc and runs it as non-root.
    let dockerfile = deploy("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked -p truc"));
    assert!(dockerfile.contains("USER nonroot"));
}

#[test]
fn kubernetes_manifests_parse_and_probe_the_health_port() {
    let docs = yaml_docs("k8s/truc.yaml");
    let _configs = configs_of("k8s/topology.k8s.toml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"Namespace"));
    let sets: Vec<&serde_yaml_ng::Value> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("StatefulSet"))
        .collect();
    let names: Vec<&str> = sets
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, topology_nodes("k8s/topology.k8s.toml"));
    // A node not ready (short of disk space) stays reachable by its children.
    for svc in docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Service"))
    {
        assert_eq!(
            svc["spec"]["publishNotReadyAddresses"].as_bool(),
            Some(true),
            "{:?}",
            svc["metadata"]["name"]
        );
    }
    for s in sets {
        let spec = &s["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe]["grpc"]["port"].as_u64(), Some(7799), "{probe}");
        }
        // Restarts only for what a restart cures (not a full disk, not a
        // standby); readiness is the store's writability.
        for probe in ["startupProbe", "livenessProbe"] {
            assert_eq!(
                c[probe]["grpc"]["service"].as_str(),
                Some(truc_node::node::LIVE),
                "{probe}"
            );
        }
        assert!(c["readinessProbe"]["grpc"]["service"].is_null());
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true)
        );
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true)
        );
        let secrets: Vec<&str> = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert!(!secrets.is_empty(), "keys come from Secrets");
        assert!(s["spec"]["volumeClaimTemplates"].is_sequence());
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = deploy("systemd/truc-node@.service");
    for needle in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "ReadWritePaths=/var/lib/truc",
        "User=truc",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle:?}");
    }
    // systemd-analyze checks the unit for real where it is installed (it also
    // wants the executable to exist: point it at the built binary).
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: the unit is checked by content only");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truc-node@hub.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/truc", bin().to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
