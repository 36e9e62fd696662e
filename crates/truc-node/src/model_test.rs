//! Model-based test of an edge's outgoing queue, dedup and recall against a
//! reference model a reader can check by eye: random sequences of submissions
//! (often of an id already used), recalls (of sent and unsent documents, once or
//! twice), acknowledgements by the parent and restarts over the same sled store.
//! After every step the queue must hold exactly what the model says, in order.

use std::sync::Arc;

use proptest::prelude::*;
use truc_core::DocId;
use truc_store::SledStore;

use crate::state::{NodeState, Submission, testing::Fixture};

#[derive(Debug, Clone)]
enum Op {
    Submit(usize),
    Recall(usize),
    Ack(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..6).prop_map(Op::Submit),
        2 => (0usize..6).prop_map(Op::Recall),
        2 => (0usize..4).prop_map(Op::Ack),
        1 => Just(Op::Restart),
    ]
}

/// What the edge must hold: the queue in order, what was sent, what was recalled.
#[derive(Debug, Default)]
struct Model {
    queue: Vec<String>,
    sent: [bool; 6],
    recalled: [bool; 6],
}

/// Opens the edge over the sled store in `dir` (the store waits for the
/// previous handle's lock, which sled's threads let go of after the drop).
fn open(f: &Fixture, dir: &std::path::Path) -> Arc<NodeState> {
    f.edge(Arc::new(SledStore::open(dir, 1 << 20).unwrap()))
}

fn queue(edge: &NodeState) -> Vec<(u64, String)> {
    edge.queue_peek("parent", None, 1000)
        .unwrap()
        .into_iter()
        .map(|(seq, e)| (seq, e.doc_id))
        .collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_outgoing_queue_dedup_and_recall_follow_the_model(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let f = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..6).map(|_| DocId::new_v7().to_string()).collect();
        let mut edge = open(&f, dir.path());
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Submit(k) => {
                    let (id, accepted) = edge
                        .submit(Submission {
                            from: "000.00.00.G22".into(),
                            to: vec!["000.00.00.H41".into()],
                            subject: format!("văn bản {k}"),
                            doc_id: Some(ids[k].clone()),
                            ..Default::default()
                        })
                        .unwrap();
                    prop_assert_eq!(id.to_string(), ids[k].clone());
                    let dup = matches!(accepted, crate::state::Accepted::Duplicate(_));
                    prop_assert_eq!(dup, m.sent[k], "dedup of document {}", k);
                    if !m.sent[k] {
                        m.sent[k] = true;
                        m.queue.push(ids[k].clone());
                    }
                }
                Op::Recall(k) => {
                    let r = edge.submit(Submission {
                        from: "000.00.00.G22".into(),
                        business_type: truc_core::BusinessType::Revoke as i32,
                        target_doc_id: ids[k].clone(),
                        reason: "thu hồi".into(),
                        ..Default::default()
                    });
                    match (m.sent[k], r) {
                        (false, Err(e)) => {
                            prop_assert!(e.to_string().contains("only the original sender"), "{e}");
                        }
                        (false, Ok(_)) => prop_assert!(false, "recalled {} that was never sent", k),
                        (true, Err(e)) => prop_assert!(false, "recall of sent {} refused: {e}", k),
                        (true, Ok((id, accepted))) => {
                            let dup = matches!(accepted, crate::state::Accepted::Duplicate(_));
                            prop_assert_eq!(dup, m.recalled[k], "second recall of {}", k);
                            if !m.recalled[k] {
                                m.recalled[k] = true;
                                m.queue.push(id.to_string());
                            }
                        }
                    }
                }
                Op::Ack(n) => {
                    let q = queue(&edge);
                    if n > 0 && !q.is_empty() {
                        let n = n.min(q.len());
                        edge.queue_ack("parent", q[n - 1].0).unwrap();
                        m.queue.drain(..n);
                    }
                }
                Op::Restart => {
                    edge.close().unwrap();
                    drop(edge);
                    edge = open(&f, dir.path());
                }
            }
            let now: Vec<String> = queue(&edge).into_iter().map(|(_, id)| id).collect();
            prop_assert_eq!(&now, &m.queue);
        }
        edge.close().unwrap();
    }
}

fn doc(k: usize) -> Submission {
    Submission {
        from: "000.00.00.G22".into(),
        to: vec!["000.00.00.H41".into()],
        subject: format!("văn bản {k}"),
        ..Default::default()
    }
}

/// A store that refuses its N-th write and every one after (a disk gone bad),
/// for every N: what was accepted before stays whole, the refused submission
/// gets an error and leaves nothing behind, and nothing is half-written.
#[tokio::test]
async fn a_store_failing_at_the_nth_write_leaves_only_whole_documents() {
    use std::sync::atomic::Ordering;
    for n in 1..=6u64 {
        let f = Fixture::new();
        let (store, plan) = truc_store::FaultyStore::new(truc_store::MemoryStore::new());
        let store = Arc::new(store);
        let edge = f.edge(store.clone());
        plan.fail_apply_from.store(n, Ordering::SeqCst);
        let mut accepted = Vec::new();
        for k in 0..8 {
            match edge.submit(doc(k)) {
                Ok((id, a)) => {
                    edge.durable(a.ticket()).await.unwrap();
                    accepted.push(id.to_string());
                }
                Err(e) => {
                    assert!(e.to_string().contains("no space left"), "write {n}: {e}");
                }
            }
        }
        let queued: Vec<String> = queue(&edge).into_iter().map(|(_, id)| id).collect();
        assert_eq!(queued, accepted, "failing from write {n}");
        assert!(accepted.len() < 8, "write {n} never failed");
        // Every accepted document is readable whole; the audit chain holds.
        for id in &accepted {
            assert!(
                !edge.audit_trail(id).unwrap().is_empty(),
                "{id} after write {n} failed"
            );
        }
        assert_eq!(
            crate::audit::verify(store.as_ref()).unwrap().first_bad,
            None
        );
    }
}

/// A write that hangs delays its own acknowledgement, not correctness: every
/// submission lands, in the order its write was applied (its ticket), once
/// the disk answers. (Which submission's write comes first is the threads'
/// business: on a loaded machine one may overtake another.)
#[tokio::test]
async fn a_store_stalling_at_the_nth_write_loses_and_reorders_nothing() {
    use std::sync::atomic::Ordering;
    let f = Fixture::new();
    let (store, plan) = truc_store::FaultyStore::new(truc_store::MemoryStore::new());
    let edge = f.edge(Arc::new(store));
    plan.stall_apply_at.store(3, Ordering::SeqCst);
    plan.stall_ms.store(300, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for k in 0..6 {
        let e = edge.clone();
        tasks.push(tokio::task::spawn_blocking(move || e.submit(doc(k))));
        // Submissions arrive one after the other.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut accepted = Vec::new();
    for t in tasks {
        let (id, a) = t.await.unwrap().unwrap();
        edge.durable(a.ticket()).await.unwrap();
        accepted.push((a.ticket(), id.to_string()));
    }
    accepted.sort();
    let accepted: Vec<String> = accepted.into_iter().map(|(_, id)| id).collect();
    let queued: Vec<String> = queue(&edge).into_iter().map(|(_, id)| id).collect();
    assert_eq!(queued, accepted);
}
