//! A node refuses to start on a bad config and says what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn start_fails(c: &Cluster, node: &str) -> String {
    let out = c.cli(&["node", "--config", c.config(node).to_str().unwrap()]);
    assert!(!out.status.success(), "truc node started on a bad config");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_field_is_named() {
    let c = Cluster::new();
    c.edit("hub", |t| {
        t.insert("colour".into(), "red".into());
    });
    let err = start_fails(&c, "hub");
    assert!(err.contains("unknown field `colour`"), "{err}");
}

#[test]
fn a_missing_certificate_file_is_named() {
    let c = Cluster::new();
    std::fs::remove_file(c.path("nodes/nghean.crt")).unwrap();
    let err = start_fails(&c, "nghean");
    assert!(
        err.contains("tls.cert file") && err.contains("nghean.crt"),
        "{err}"
    );
}

#[test]
fn a_certificate_for_another_node_is_refused() {
    let c = Cluster::new();
    c.edit("nghean", |t| {
        let tls = t["tls"].as_table_mut().unwrap();
        tls.insert("cert".into(), "nodes/caobang.crt".into());
        tls.insert("key".into(), "nodes/caobang.key".into());
    });
    let err = start_fails(&c, "nghean");
    assert!(err.contains("names node caobang"), "{err}");
}

#[test]
fn a_malformed_file_and_a_wrong_version_are_refused() {
    let c = Cluster::new();
    std::fs::write(c.config("hub"), "version = 1\nnode_id = \n").unwrap();
    let err = start_fails(&c, "hub");
    assert!(err.contains("hub.toml"), "{err}");
    let c = Cluster::new();
    c.edit("hub", |t| {
        t.insert("version".into(), 2.into());
    });
    assert!(start_fails(&c, "hub").contains("version 2 is not supported"));
}

/// Two REST applications by one name would share their uploads (an upload
/// is its application's own, by name): refused, naming it.
#[test]
fn two_rest_applications_by_one_name_are_refused() {
    let c = Cluster::new();
    c.edit("vpcp", |t| {
        let apps = t["rest"]["apps"].as_array_mut().unwrap();
        let mut twin = apps[0].as_table().unwrap().clone();
        twin.insert("token_sha256".into(), "ab".repeat(32).into());
        apps.push(toml::Value::Table(twin));
    });
    let err = start_fails(&c, "vpcp");
    assert!(err.contains("two applications are named"), "{err}");
}
