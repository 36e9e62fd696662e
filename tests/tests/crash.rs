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
