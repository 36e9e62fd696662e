//! The short tier of the fault-injection runs (`truc chaos`, RELIABILITY.md): each
//! scenario with real node processes, a few faults and a few hundred documents,
//! and the checker's verdict. The long tier is `scripts/chaos-long`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

fn run(scenario: &str) {
    let out = Command::new(common::bin())
        .args([
            "chaos", scenario, "--docs", "150", "--faults", "3", "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reports: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    let r = &reports[0];
    assert_eq!(r["scenario"], scenario);
    for k in [
        "lost",
        "duplicated",
        "corrupted",
        "phantom",
        "misrouted",
        "order_violations",
        "unaccepted",
    ] {
        assert_eq!(r[k], 0, "{k} in {scenario}:\n{r:#}");
    }
    assert!(r["faults"].as_u64().unwrap() >= 3, "{r:#}");
    assert!(r["documents"].as_u64().unwrap() >= 150, "{r:#}");
    assert_eq!(
        r["delivered"], r["accepted"],
        "every accepted document delivered: {r:#}"
    );
    assert!(
        r["unexpected_exits"].as_array().unwrap().is_empty(),
        "{r:#}"
    );
    assert!(
        r["integrity_errors"].as_array().unwrap().is_empty(),
        "{r:#}"
    );
    assert_eq!(r["ok"], true, "{r:#}");
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn kill_hub() {
    run("kill-hub");
}

#[test]
fn kill_relay() {
    run("kill-relay");
}

#[test]
fn kill_edges() {
    run("kill-edges");
}

#[test]
fn crash_between_stored_and_acked() {
    run("crash-before-ack");
}

#[test]
fn partitions_latency_bandwidth_and_resets() {
    run("partition");
}

#[test]
fn disk_full() {
    run("disk-full");
}

#[test]
fn corrupted_partial_files() {
    run("corrupt-partials");
}

#[test]
fn clock_skew_of_two_hours() {
    run("clock-skew");
}

#[test]
fn certificate_revocation_and_rotation_under_load() {
    run("cert-rotation");
}
