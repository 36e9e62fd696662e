//! A province relay (Quảng Nam's LGSP, `quangnam`) between the hub and its
//! districts (`duyxuyen` 001.00.10.H47, `dienban` 002.00.10.H47): every route
//! delivers with receipts, traffic inside the province stays there and keeps
//! flowing without the hub, a relay killed in a loop loses nothing, and the
//! delegated directory stays inside the relay's grant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use common::{raw::*, *};
use tonic::Code;
use truc_proto::v1 as pb;

const H47: &str = "000.00.00.H47";
const DUYXUYEN: &str = "001.00.10.H47";
const DIENBAN: &str = "002.00.10.H47";

fn send_from(c: &Cluster, node: &str, from: &str, to: &str, subject: &str) -> String {
    c.cli_ok(&[
        "send",
        "--config",
        &c.cfg(node),
        "--from",
        from,
        "--to",
        to,
        "--subject",
        subject,
    ])
    .trim()
    .to_owned()
}

/// Waits until duyxuyen knows the national directory (G22 in it).
async fn national_directory_at_the_district(c: &Cluster) {
    eventually("national directory at the district", || {
        let out = c.cli_ok(&[
            "directory",
            "list",
            "--config",
            &c.cfg("duyxuyen"),
            "--json",
        ]);
        async move { out.contains(G22).then_some(()) }
    })
    .await;
}

/// Waits until `id`, sent from `node`, shows its first recipient failed.
async fn failed(c: &Cluster, node: &str, id: &str) -> serde_json::Value {
    eventually(&format!("{id} failed at {node}"), || {
        let out = c.cli_ok(&["status", "--config", &c.cfg(node), id, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let failed = v["recipients"][0]["state"] == "failed";
        async move { failed.then_some(v) }
    })
    .await
}

async fn delivered(c: &Cluster, node: &str, id: &str) -> serde_json::Value {
    eventually(&format!("{id} delivered"), || {
        let out = c.cli_ok(&["status", "--config", &c.cfg(node), id, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let done = v["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "delivered");
        async move { done.then_some(v) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_through_a_province_delivers_and_its_own_traffic_stays_inside() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean", "quangnam", "duyxuyen", "dienban"] {
        c.start(n);
    }
    let up = send_from(
        &c,
        "duyxuyen",
        DUYXUYEN,
        G22,
        "Báo cáo giải ngân (huyện → Chính phủ)",
    );
    let down = send_from(
        &c,
        "vpcp",
        G22,
        DUYXUYEN,
        "Công văn hướng dẫn (Chính phủ → huyện)",
    );
    let across = send_from(
        &c,
        "duyxuyen",
        DUYXUYEN,
        H41,
        "Công văn phối hợp (huyện → tỉnh khác)",
    );
    let inside = send_from(
        &c,
        "duyxuyen",
        DUYXUYEN,
        DIENBAN,
        "Giấy mời họp liên huyện (huyện → huyện)",
    );
    for (node, id) in [
        ("duyxuyen", &up),
        ("vpcp", &down),
        ("duyxuyen", &across),
        ("duyxuyen", &inside),
    ] {
        let v = delivered(&c, node, id).await;
        assert!(
            v["recipients"][0]["accepted_at_ms"].as_i64().unwrap() > 0,
            "{v}"
        );
    }
    assert!(inbox(&c, "vpcp", G22).await.iter().any(|i| i.doc_id == up));
    assert!(
        inbox(&c, "duyxuyen", DUYXUYEN)
            .await
            .iter()
            .any(|i| i.doc_id == down)
    );
    assert!(
        inbox(&c, "nghean", H41)
            .await
            .iter()
            .any(|i| i.doc_id == across)
    );
    assert!(
        inbox(&c, "dienban", DIENBAN)
            .await
            .iter()
            .any(|i| i.doc_id == inside)
    );

    // Going up, the relay and the hub each sign an accepted receipt.
    let trace = c.cli_ok(&["trace", "--config", &c.cfg("duyxuyen"), &up]);
    assert!(
        trace.contains("signed by node quangnam") && trace.contains("signed by node hub"),
        "{trace}"
    );
    // Inside the province, the hub never sees it.
    let trace = c.cli_ok(&["trace", "--config", &c.cfg("duyxuyen"), &inside]);
    assert!(trace.contains("signed by node quangnam"), "{trace}");
    assert!(!trace.contains("node hub"), "{trace}");
    let (ok, text) = c.cli_any(&["trace", "--config", &c.cfg("hub"), &inside]);
    assert!(
        !ok && text.contains("nothing is known"),
        "the hub knows of {inside}: {text}"
    );

    // The tree as the hub sees it. Deeper nodes come from the relay's
    // report, sent each heartbeat: wait for one made after the district
    // connected.
    let nodes_at_hub = || {
        serde_json::from_str::<serde_json::Value>(&c.cli_ok(&[
            "nodes",
            "--config",
            &c.cfg("hub"),
            "--json",
        ]))
        .unwrap()
    };
    let nodes = eventually("the relay to report dienban up", || {
        let nodes = nodes_at_hub();
        let up = nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["node"] == "dienban" && r["link"] == "up");
        async move { up.then_some(nodes) }
    })
    .await;
    let row = |n: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("quangnam")["role"], "relay");
    assert_eq!(row("quangnam")["link"], "up");
    // Deeper nodes as the relay reports them: its own link to each district.
    assert_eq!(row("dienban")["parent"], "quangnam");
    assert_eq!(row("dienban")["link"], "up");
    assert!(row("dienban")["reported_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(row("dienban")["agencies"][0], DIENBAN);
}

/// A district that stays away: its relay gives up at the deadline and signs
/// the undeliverable notice, which travels up through the hub to a sender
/// outside the province (the hub takes a relay's own receipts for the
/// agencies below it, and only those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_gives_up_on_a_district_tells_a_sender_beyond_the_hub() {
    let mut c = Cluster::new();
    c.edit("quangnam", |t| {
        let mut d = toml::Table::new();
        d.insert(
            "deadline_ms".into(),
            toml::Value::Array((0..5).map(|_| toml::Value::Integer(500)).collect()),
        );
        d.insert("sweep_interval_ms".into(), 100.into());
        t.insert("delivery".into(), d.into());
    });
    // dienban never connects.
    for n in ["hub", "vpcp", "quangnam"] {
        c.start(n);
    }
    let id = send_from(&c, "vpcp", G22, DIENBAN, "Công điện gửi huyện");
    let v = failed(&c, "vpcp", &id).await;
    let detail = v["recipients"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("undeliverable"), "{v}");
    c.wait_log("quangnam", &["delivery deadline missed"]);
}

/// What the hub refuses from a relay's district reaches the district's
/// sender: the relay, which has no record of the document's sending, gives
/// it up with a signed undeliverable notice carrying the hub's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_beyond_the_relay_reaches_the_districts_sender() {
    let mut c = Cluster::new();
    // The hub takes smaller attachments than the province does.
    c.set("hub", "limits", "max_attachment_bytes", 1000);
    for n in ["hub", "vpcp", "quangnam", "duyxuyen"] {
        c.start(n);
    }
    national_directory_at_the_district(&c).await;
    let big = c.path("bao-cao.pdf");
    std::fs::write(&big, vec![b'x'; 4000]).unwrap();
    let id = c
        .cli_ok(&[
            "send",
            "--config",
            &c.cfg("duyxuyen"),
            "--from",
            DUYXUYEN,
            "--to",
            G22,
            "--subject",
            "Báo cáo có phụ lục lớn",
            "--attach",
            big.to_str().unwrap(),
        ])
        .trim()
        .to_owned();
    let v = failed(&c, "duyxuyen", &id).await;
    let detail = v["recipients"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("undeliverable") && detail.contains("max_attachment_bytes"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_hub_the_province_keeps_delivering_and_the_rest_waits() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "quangnam", "duyxuyen", "dienban"] {
        c.start(n);
    }
    // Wait until the district knows the national directory, then cut the hub.
    national_directory_at_the_district(&c).await;
    c.kill("hub");
    let inside = send_from(
        &c,
        "duyxuyen",
        DUYXUYEN,
        DIENBAN,
        "Họp khẩn (trong tỉnh, trục quốc gia đang dừng)",
    );
    delivered(&c, "duyxuyen", &inside).await;
    let out = send_from(&c, "duyxuyen", DUYXUYEN, G22, "Báo cáo chờ trục quốc gia");
    // It waits at the relay ("at hub": stored by the parent), not lost, not refused.
    eventually("stored at the relay", || {
        let v = c.cli_ok(&["status", "--config", &c.cfg("duyxuyen"), &out, "--json"]);
        async move { v.contains("\"at hub\"").then_some(()) }
    })
    .await;
    c.start("hub");
    delivered(&c, "duyxuyen", &out).await;
    let got: Vec<String> = inbox(&c, "vpcp", G22)
        .await
        .into_iter()
        .map(|i| i.doc_id)
        .filter(|d| d == &out)
        .collect();
    assert_eq!(got.len(), 1, "delivered exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_again_and_again_loses_and_duplicates_nothing() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "quangnam", "duyxuyen", "dienban"] {
        c.start(n);
    }
    const EACH: usize = 334;
    let progress = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (node, from, to) in [
        ("vpcp", G22, DUYXUYEN),
        ("duyxuyen", DUYXUYEN, G22),
        ("dienban", DIENBAN, DUYXUYEN),
    ] {
        let mut a = c.agency(node).await;
        let p = progress.clone();
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let r = a
                    .send(doc(from, &[to], &format!("{from} → {to} số {i:03}")))
                    .await
                    .unwrap();
                ids.push(r.into_inner().doc_id);
                p.fetch_add(1, Ordering::SeqCst);
            }
            (from, to, ids)
        }));
    }
    tokio::task::block_in_place(|| {
        for k in 1..=5 {
            let deadline = std::time::Instant::now() + DEADLINE;
            while progress.load(Ordering::SeqCst) < k * 3 * EACH / 6 {
                assert!(std::time::Instant::now() < deadline, "senders stalled");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            c.kill("quangnam");
            c.start("quangnam");
        }
    });
    let mut expected: std::collections::BTreeMap<(String, String), Vec<String>> =
        Default::default();
    for s in senders {
        let (from, to, ids) = s.await.unwrap();
        expected.insert((from.to_owned(), to.to_owned()), ids);
    }
    for ((from, to), ids) in &expected {
        let (node, organ) = match to.as_str() {
            G22 => ("vpcp", G22),
            _ => ("duyxuyen", DUYXUYEN),
        };
        let got = eventually(
            &format!("{} documents {from} → {to}", ids.len()),
            || async {
                let got: Vec<String> = inbox(&c, node, organ)
                    .await
                    .into_iter()
                    .filter(|i| &i.from == from)
                    .map(|i| i.doc_id)
                    .collect();
                (got.len() >= ids.len()).then_some(got)
            },
        )
        .await;
        assert_eq!(&got, ids, "{from} → {to}: lost, duplicated or out of order");
    }
    assert!(
        c.logs("duyxuyen").contains("link to parent down"),
        "the relay was never noticed gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_registers_inside_its_grant_only_and_everyone_hears_of_it() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean", "quangnam", "duyxuyen", "dienban"] {
        c.start(n);
    }
    let relay = c.cfg("quangnam");
    let out = c.cli_ok(&[
        "directory",
        "add",
        "--config",
        &relay,
        "--organ",
        "003.00.10.H47",
        "--name",
        "UBND huyện Đại Lộc",
        "--parent",
        H47,
        "--node",
        "dienban",
    ]);
    assert!(out.contains("registered 003.00.10.H47"), "{out}");
    for node in ["hub", "duyxuyen", "nghean"] {
        let entry = eventually(&format!("the new agency at {node}"), || {
            let list = c.cli_ok(&["directory", "list", "--config", &c.cfg(node), "--json"]);
            async move {
                let v: serde_json::Value = serde_json::from_str(&list).unwrap();
                v.as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["organ"] == "003.00.10.H47")
                    .cloned()
            }
        })
        .await;
        assert_eq!(entry["node"], "dienban", "{node}: {entry}");
        assert_eq!(entry["parent"], H47);
    }
    // The hub routes to it through the relay: a ministry can write to it now.
    let id = send_from(
        &c,
        "vpcp",
        G22,
        "003.00.10.H47",
        "Công văn gửi huyện mới đăng ký",
    );
    // It reaches the relay and goes on to dienban, which was not configured
    // to serve the agency (the registration names it, its own config does
    // not) and refuses it; the sender hears that from the relay.
    eventually("routed through the relay to dienban", || {
        let v = c.cli_ok(&["status", "--config", &c.cfg("vpcp"), &id, "--json"]);
        async move { v.contains("refused by child:dienban").then_some(()) }
    })
    .await;

    // Outside the grant: refused at the relay...
    let (ok, text) = c.cli_any(&[
        "directory",
        "add",
        "--config",
        &relay,
        "--organ",
        "001.00.10.H41",
        "--name",
        "x",
        "--parent",
        H41,
        "--node",
        "dienban",
    ]);
    assert!(!ok && text.contains("outside the grant"), "{text}");
    let (ok, text) = c.cli_any(&[
        "directory",
        "add",
        "--config",
        &relay,
        "--organ",
        H41,
        "--name",
        "x",
        "--parent",
        H41,
        "--node",
        "dienban",
    ]);
    assert!(!ok, "{text}");
    // A ministry's agency claimed inside the grant (its parent named H47):
    // the national directory already places it, so the relay refuses.
    let (ok, text) = c.cli_any(&[
        "directory",
        "add",
        "--config",
        &relay,
        "--organ",
        G22,
        "--name",
        "giả danh Văn phòng Chính phủ",
        "--parent",
        H47,
        "--node",
        "dienban",
    ]);
    assert!(
        !ok && text.contains("already in the directory, served by node vpcp"),
        "{text}"
    );
    // ...and at the hub, for a relay that signs such a change anyway.
    c.stop("quangnam");
    let pki = c.dir.path().to_owned();
    let mut link = raw_link(&pki, "quangnam", &c.hub_addr()).await.unwrap();
    let forged = pb::Header {
        format_version: 1,
        doc_id: truc_core::DocId::new_v7().to_string(),
        kind: pb::Kind::Directory as i32,
        from_node: "quangnam".into(),
        directory: Some(pb::DirectoryChanges {
            changes: vec![pb::DirectoryChange {
                remove: false,
                organ: "001.00.10.H41".into(),
                name: "ngoài vùng".into(),
                parent: H41.into(),
                node: "dienban".into(),
            }],
        }),
        ..Default::default()
    };
    let (code, reason) = link
        .offer(seal_as_node(&pki, "quangnam", &forged), &[])
        .await
        .unwrap_err();
    assert_eq!(code, Code::PermissionDenied, "{reason}");
    assert!(reason.contains("outside the grant"), "{reason}");
    drop(link);

    // A district sending from an agency the relay does not bind to it is refused there.
    c.start("quangnam");
    c.stop("duyxuyen");
    let mut link = raw_link_to(&pki, "duyxuyen", "quangnam", &c.listen_addr("quangnam"))
        .await
        .unwrap();
    let (code, reason) = link
        .offer(sealed(&pki, DIENBAN, &[G22], "giả mạo Điện Bàn"), &[G22])
        .await
        .unwrap_err();
    assert_eq!(code, Code::PermissionDenied, "{reason}");
    assert!(
        reason.contains("may not send from agency 002.00.10.H47"),
        "{reason}"
    );
    drop(link);

    // Removing it propagates as well.
    let out = c.cli_ok(&[
        "directory",
        "remove",
        "--config",
        &relay,
        "--organ",
        "003.00.10.H47",
    ]);
    assert!(out.contains("removed"), "{out}");
    eventually("removal at the hub", || {
        let list = c.cli_ok(&["directory", "list", "--config", &c.cfg("hub"), "--json"]);
        async move { (!list.contains("003.00.10.H47")).then_some(()) }
    })
    .await;
}
