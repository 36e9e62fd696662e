//! `truc bench` end to end on a small load: real node processes, the report's
//! shape, and figures a user reads (documents counted, latencies, per-node usage).
//! No wall-clock assertion: speed is for BENCHMARKS.md, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

/// `truc bench ARGS --json`, which must succeed; its report.
fn report(args: &[&str]) -> serde_json::Value {
    let out = Command::new(common::bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    r
}

#[test]
fn bench_reports_every_document_with_latency_and_per_node_usage() {
    let r = report(&[
        "edge-hub-edge",
        "one-hop",
        "--docs",
        "40",
        "--window",
        "8",
        "--runs",
        "1",
        "--no-peer",
    ]);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r:#}");
    for run in runs {
        assert_eq!(run["system"], "truc");
        assert_eq!(run["docs"], 40);
        assert!(run["fsync_per_s"].as_f64().unwrap() > 0.0, "{run:#}");
        assert!(run["docs_per_s"].as_f64().unwrap() > 0.0, "{run:#}");
        let lat = &run["latency"];
        assert!(lat["p50_ms"].as_f64().unwrap() > 0.0, "{run:#}");
        assert!(
            lat["p50_ms"].as_f64().unwrap() <= lat["p99_ms"].as_f64().unwrap(),
            "{run:#}"
        );
        let mut nodes: Vec<&str> = run["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["hub", "nghean", "vpcp"], "{run:#}");
        for n in run["nodes"].as_array().unwrap() {
            assert!(n["rss_peak_mib"].as_f64().unwrap() > 1.0, "{n:#}");
        }
    }
    let summary = r["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 2, "{r:#}");
}

/// The queue scenario on a small load: every document queued at the hub while
/// the recipient is away, then drained to it, and the hub's growth reported
/// both on a warm hub (the queue's own cost) and from cold.
#[test]
fn queued_drain_delivers_every_queued_document_and_reports_the_hubs_growth() {
    let r = report(&[
        "queued-drain",
        "--queued",
        "30",
        "--window",
        "8",
        "--runs",
        "1",
        "--no-peer",
    ]);
    let run = &r["runs"][0];
    assert_eq!(run["system"], "truc", "{r:#}");
    assert_eq!(run["docs"], 30, "{run:#}");
    assert!(run["docs_per_s"].as_f64().unwrap() > 0.0, "{run:#}");
    for k in [
        "queued_rss_growth_mib",
        "queued_rss_growth_cold_mib",
        "hub_rss_before_mib",
    ] {
        assert!(run["extra"][k].as_f64().is_some(), "no {k}: {run:#}");
    }
    assert!(
        run["extra"]["hub_rss_before_mib"].as_f64().unwrap() > 1.0,
        "{run:#}"
    );
}

/// A sending edge cut from the hub keeps what its application sends; once
/// the link is back every document goes up and arrives, and the run says how
/// long the first took and what the queue cost the edge.
#[test]
fn outbox_drain_delivers_what_the_sender_kept_through_an_outage() {
    let r = report(&[
        "outbox-drain",
        "--queued",
        "30",
        "--window",
        "8",
        "--runs",
        "1",
        "--no-peer",
    ]);
    let run = &r["runs"][0];
    assert_eq!(run["system"], "truc", "{r:#}");
    assert_eq!(run["docs"], 30, "{run:#}");
    assert!(run["docs_per_s"].as_f64().unwrap() > 0.0, "{run:#}");
    assert!(
        run["extra"]["first_arrival_s"].as_f64().unwrap() > 0.0,
        "{run:#}"
    );
    assert!(
        run["extra"]["sender_queued_rss_growth_mib"]
            .as_f64()
            .is_some(),
        "{run:#}"
    );
    let targets = r["targets"].as_array().unwrap();
    assert!(
        targets.iter().any(|t| t["target"]
            .as_str()
            .unwrap()
            .starts_with("the sender's backlog drained")),
        "{r:#}"
    );
}

#[test]
fn bench_refuses_an_unknown_scenario_and_names_the_known_ones() {
    let out = Command::new(common::bin())
        .args(["bench", "warp-speed", "--no-peer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown scenario warp-speed"), "{stderr}");
    assert!(stderr.contains("edge-hub-edge"), "{stderr}");
}

#[test]
fn the_postgresql_hub_scenario_compares_it_with_the_embedded_store_hub_in_the_same_run() {
    let r = report(&["pg-hub", "--docs", "40", "--window", "8", "--runs", "1"]);
    let systems: Vec<&str> = r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems, ["truc", "truc-pg"], "{r:#}");
    let pg = r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|run| run["system"] == "truc-pg")
        .unwrap();
    assert_eq!(pg["docs"], 40, "{pg:#}");
    assert!(
        pg["extra"]["postgresql_cpu_s"]
            .as_f64()
            .is_some_and(|s| s >= 0.0),
        "the database's own CPU is reported: {pg:#}"
    );
    let summary = r["summary"].as_array().unwrap();
    let row = summary.iter().find(|s| s["system"] == "truc-pg").unwrap();
    assert!(row["vs_embedded_hub"].as_f64().unwrap() > 0.0, "{row:#}");
}
