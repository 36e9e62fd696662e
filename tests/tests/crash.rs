//! Store and forward under crashes: a hub SIGKILLed mid-stream, a recipient that is
//! down, a sender killed right after `send` returned. Every document the sender was
//! told about is delivered exactly once, in the order it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let (progress, sender) = send_in_background(&c, 1000).await;
    tokio::task::block_in_place(|| {
        wait_progress(&progress, 200);
        c.kill("hub");
        wait_progress(&progress, 400);
        c.start("hub");
        wait_progress(&progress, 600);
        c.kill("hub");
        c.start("hub");
    });
    let ids = sender.await.unwrap();
    assert_exactly_once_in_order(&c, "nghean", H41, &ids).await;
    assert!(
        c.logs("vpcp").contains("link to parent down"),
        "the hub restarts were not noticed by the sender: the test did not test anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_that_was_down_gets_all_500_once() {
    let mut c = Cluster::new();
    c.start("hub");
    c.start("vpcp");
    let mut a = c.agency("vpcp").await;
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(
            a.send(doc(G22, &[H41], &format!("Báo cáo {i:03}")))
                .await
                .unwrap()
                .into_inner()
                .doc_id,
        );
    }
    // All of them wait at the hub for the offline edge.
    let last = ids.last().unwrap().clone();
    eventually("queued at the hub", || {
        let c = &c;
        let last = last.clone();
        async move { (recipient_states(c, "vpcp", &last).await[0].1 == 2).then_some(()) }
    })
    .await;
    c.start("nghean");
    assert_exactly_once_in_order(&c, "nghean", H41, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_right_after_send_returned_still_delivers_once() {
    let mut c = Cluster::new();
    c.start("nghean");
    c.start("vpcp");
    let mut ids = Vec::new();

    // With the hub down everything sits in the sender's outbox when it dies.
    {
        let mut a = c.agency("vpcp").await;
        for i in 0..250 {
            ids.push(
                a.send(doc(G22, &[H41], &format!("Tờ trình {i:03}")))
                    .await
                    .unwrap()
                    .into_inner()
                    .doc_id,
            );
        }
    }
    c.kill("vpcp");
    c.start("hub");
    c.start("vpcp");

    // With the hub up, part of it is in flight when the sender dies.
    {
        let mut a = c.agency("vpcp").await;
        for i in 250..500 {
            ids.push(
                a.send(doc(G22, &[H41], &format!("Tờ trình {i:03}")))
                    .await
                    .unwrap()
                    .into_inner()
                    .doc_id,
            );
        }
    }
    c.kill("vpcp");
    c.start("vpcp");
    assert_exactly_once_in_order(&c, "nghean", H41, &ids).await;
}

/// The embedded store's engine (storage.engine): a hub that ran on sled refuses
/// to start on redb beside it and says how to convert; `truc store convert`
/// moves everything, and the converted hub still knows the first document
/// (dedup, trace, audit chain) and carries new ones. A SIGTERM closes redb
/// cleanly (no repair at the next start); a SIGKILL makes it repair, and the
/// log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_hub_converted_to_redb_keeps_everything_and_says_when_it_repairs() {
    let mut c = Cluster::new();
    c.edit("hub", |t| {
        let storage = t
            .entry("storage")
            .or_insert(toml::Value::Table(Default::default()));
        storage
            .as_table_mut()
            .unwrap()
            .insert("engine".into(), "sled".into());
    });
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let first = c.send_from_vpcp(H41, "Trước khi chuyển", &[]);
    c.wait_delivered("vpcp", &first);
    // nghean's ack reaches the hub apart from the receipt vpcp has seen: the
    // hub's own line is waited for, so the converted store must carry it.
    rest::poll("the hub to record nghean's ack", || {
        let (_, trace) = c.cli_any(&["trace", "--config", &c.cfg("hub"), &first]);
        trace.contains("stored by child:nghean").then_some(())
    });
    assert!(c.stop("hub").success());
    assert!(c.path("data/hub/store").is_dir(), "the sled store");

    // Configured for redb, the hub refuses the sled store and names the way out.
    c.set("hub", "storage", "engine", "redb");
    let out = std::process::Command::new(bin())
        .args(["node", "--config", &c.cfg("hub")])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started beside a sled store: {text}");
    assert!(
        text.contains("holds a sled store") && text.contains("truc store convert"),
        "{text}"
    );
    assert!(
        !c.path("data/hub/store.redb").exists(),
        "an empty redb store was created: {text}"
    );

    let done = c.cli_ok(&["store", "convert", "--config", &c.cfg("hub")]);
    assert!(done.contains("from sled to redb"), "{done}");
    assert!(c.path("data/hub/store.redb").is_file());
    assert!(
        c.path("data/hub/store.sled-old").is_dir(),
        "the old store is kept"
    );

    c.start("hub");
    let trace = c.cli_ok(&["trace", "--config", &c.cfg("hub"), &first]);
    assert!(trace.contains("stored by child:nghean"), "{trace}");
    let second = c.send_from_vpcp(H41, "Sau khi chuyển", &[]);
    c.wait_delivered("vpcp", &second);
    let audit = c.cli_ok(&["audit", "verify", "--config", &c.cfg("hub")]);
    assert!(audit.contains("intact"), "{audit}");

    assert!(c.stop("hub").success());
    c.start("hub");
    assert!(
        !c.logs("hub").contains("not closed cleanly"),
        "a SIGTERM left redb to repair"
    );
    c.kill("hub");
    c.start("hub");
    assert!(
        c.logs("hub")
            .contains("store not closed cleanly: repairing")
    );
    // A killed node's chain is checked on disk, though its address file is
    // still there and nothing answers at it.
    c.kill("hub");
    assert!(c.path("data/hub/run/endpoints.json").exists());
    let audit = c.cli_ok(&["audit", "verify", "--config", &c.cfg("hub")]);
    assert!(audit.contains("intact"), "{audit}");
    c.start("hub");
    let third = c.send_from_vpcp(H41, "Sau khi sửa", &[]);
    c.wait_delivered("vpcp", &third);
}
