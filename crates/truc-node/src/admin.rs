//! The admin API (gRPC) for operators: nodes, queues, trace, stats, audit check
//! (role viewer), requeue, discard and directory changes (role operator). Served on the
//! operator port, where every call needs an operator certificate (see `operator`), and
//! to the node's own user on `run/admin.sock`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use truc_core::DocId;
use truc_proto::v1::{self as pb, admin_server::Admin};

use truc_pki::identity::Role;

use crate::{
    audit,
    error::{NodeError, blocking, reworded},
    operator::Caller,
    state::NodeState,
};

/// Days of per-agency statistics `truc stats` shows.
const STATS_DAYS: usize = 7;

/// How long `truc queues` waits for the store: past it, UNAVAILABLE with the
/// reason (it reads every parked entry, so longer than a scrape's wait).
const ADMIN_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Who called: on the node's admin socket, the peer's user
/// ([`Caller::local`]); on the operator port, the operator certificate of
/// the TLS connection, if any.
fn caller<T>(req: &Request<T>) -> Caller {
    if let Some(uds) = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
    {
        return Caller::local(uds.peer_cred.map(|c| c.uid()));
    }
    Caller::from_certs(req.peer_certs().as_deref().map(|v| &v[..]))
}

/// Where a node serves its admin API to its own user, beside the operator
/// port: a Unix socket of mode 600 in its `run/`. `truc queues`, `requeue`
/// and the other operator commands run as the node's user (`sudo -u truc`,
/// `kubectl exec`) use it and need no operator certificate.
pub fn socket_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("run").join("admin.sock")
}

#[derive(Clone)]
pub struct AdminService {
    state: Arc<NodeState>,
}

impl AdminService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

/// The audit report as the API returns it.
pub fn report_pb(r: audit::Report) -> pb::AuditVerifyResponse {
    pb::AuditVerifyResponse {
        entries: r.entries,
        ok: r.first_bad.is_none(),
        first_bad: r.first_bad.as_ref().map(|(s, _)| *s).unwrap_or(0),
        reason: r.first_bad.map(|(_, why)| why).unwrap_or_default(),
        head: hex::encode(r.head),
        pruned_through: r.pruned_through,
    }
}

/// What a requeue or a discard takes: one document (of one sender), or all
/// (of one queue); a request that mixes them is refused, not half read.
fn scope(all: bool, doc_id: &str, from: &str, queue: &str) -> Result<(), Status> {
    match (all, doc_id.is_empty(), from.is_empty(), queue.is_empty()) {
        (true, false, _, _) => Err(Status::invalid_argument("give a doc_id or all, not both")),
        (true, _, false, _) => Err(Status::invalid_argument(
            "from names the sender of one doc_id; with all, name a queue",
        )),
        (false, _, _, false) => Err(Status::invalid_argument(
            "queue goes with all; one doc_id is found on any queue",
        )),
        _ => Ok(()),
    }
}

/// The one document a requeue or a discard names, and its sender if named.
fn one_doc(doc_id: &str, from: &str) -> Result<(DocId, Option<String>), Status> {
    let doc_id = doc_id
        .parse()
        .map_err(|e| Status::invalid_argument(format!("doc_id: {e}")))?;
    let from = crate::agency::opt_organ("from", from)?.map(|o| o.to_string());
    Ok((doc_id, from))
}

/// A link queue an operator names ("parent", "child:NODE"), or none.
fn link_queue(q: String) -> Result<Option<String>, Status> {
    match q.as_str() {
        "" => Ok(None),
        "parent" => Ok(Some(q)),
        _ if q.starts_with("child:") => Ok(Some(q)),
        _ => Err(Status::invalid_argument(format!(
            "queue {q:?}: a link queue is \"parent\" or \"child:NODE\" (truc queues lists them)"
        ))),
    }
}

/// A queue an operator named with all that held nothing and is no link of
/// this node (a typo, `child:quangnma`): said so, where "requeued 0" would
/// let the operator believe what waits went. (A child no longer configured
/// whose queue still holds entries is found by them.)
fn unknown_queue(st: &NodeState, queue: Option<&str>) -> Result<(), Status> {
    let Some(q) = queue else { return Ok(()) };
    let routing = st.routing();
    let known = match q.strip_prefix("child:") {
        Some(node) => routing.child_nodes().any(|n| n.as_str() == node),
        None => routing.has_parent(),
    };
    if known {
        return Ok(());
    }
    Err(Status::not_found(format!(
        "nothing is held on queue {q}, and this node has no such link (truc queues lists its queues)"
    )))
}

/// Runs `act` (an operator's requeue or discard) off the async threads and
/// answers once what it wrote is durable: an answer that says "requeued" or
/// "discarded", or how many went before a failure, holds after a crash. One
/// that wrote nothing (not found, refused) answers at once.
async fn once_durable<T: Send + 'static>(
    state: &NodeState,
    act: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, Status> {
    let done = tokio::task::spawn_blocking(act)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    if matches!(&done, Ok(_) | Err(NodeError::Partly { .. }))
        && let Err(e) = state.durable(state.commit().current()).await
    {
        return Err(reworded(e.into(), |m| {
            format!("{m}: what this request changed may not have been kept")
        }));
    }
    done.map_err(|e| match e {
        NodeError::Partly { error, done, also } => reworded((*error).into(), |m| {
            format!("{m} ({done} before it, and kept{also})")
        }),
        other => other.into(),
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn requeue(
        &self,
        req: Request<pb::RequeueRequest>,
    ) -> Result<Response<pb::RequeueResponse>, Status> {
        let (operator, _) = caller(&req).require(Role::Operator)?;
        let r = req.into_inner();
        scope(r.all, &r.doc_id, &r.from, &r.queue)?;
        let st = self.state.clone();
        let done = if r.all {
            let queue = link_queue(r.queue)?;
            let q = queue.clone();
            let done = once_durable(&self.state, move || st.requeue_all(q.as_deref())).await?;
            if done.entries == 0 && done.refused_total == 0 {
                unknown_queue(&self.state, queue.as_deref())?;
            }
            tracing::info!(queue = queue.as_deref().unwrap_or("(all)"), entries = done.entries,
                refused = done.refused_total, %operator, "everything held requeued by an operator");
            done
        } else {
            let (doc_id, from) = one_doc(&r.doc_id, &r.from)?;
            let done =
                once_durable(&self.state, move || st.requeue(&doc_id, from.as_deref())).await?;
            tracing::info!(%doc_id, entries = done.entries, kept = done.refused_total, %operator,
                "requeued by an operator");
            done
        };
        Ok(Response::new(pb::RequeueResponse {
            requeued: done.entries as u32,
            refused_total: done.refused_total as u32,
            refused: done
                .refused
                .into_iter()
                .map(|(doc_id, from, reason)| pb::RequeueRefused {
                    doc_id,
                    from,
                    reason,
                })
                .collect(),
        }))
    }

    async fn discard(
        &self,
        req: Request<pb::DiscardRequest>,
    ) -> Result<Response<pb::DiscardResponse>, Status> {
        let (operator, _) = caller(&req).require(Role::Operator)?;
        let r = req.into_inner();
        scope(r.all, &r.doc_id, &r.from, &r.queue)?;
        let reason = r.reason.trim().to_owned();
        if reason.is_empty() {
            return Err(Status::invalid_argument(
                "reason: say why these are dropped (it is audited, and told to their senders here)",
            ));
        }
        let st = self.state.clone();
        let why = format!("{reason}; by {operator}");
        let n = if r.all {
            let queue = link_queue(r.queue)?;
            let q = queue.clone();
            let n = once_durable(&self.state, move || st.discard_all(q.as_deref(), &why)).await?;
            if n == 0 {
                unknown_queue(&self.state, queue.as_deref())?;
            }
            n
        } else {
            let (doc_id, from) = one_doc(&r.doc_id, &r.from)?;
            once_durable(&self.state, move || {
                st.discard(&doc_id, from.as_deref(), &why)
            })
            .await?
        };
        tracing::warn!(entries = n, %operator, %reason, "held entries discarded by an operator");
        Ok(Response::new(pb::DiscardResponse {
            discarded: n as u32,
        }))
    }

    async fn audit_verify(
        &self,
        req: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        caller(&req).require(Role::Viewer)?;
        let st = self.state.clone();
        let r = blocking(move || Ok(audit::verify(st.store().as_ref())?)).await?;
        Ok(Response::new(report_pb(r)))
    }

    async fn trace(
        &self,
        req: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        caller(&req).require(Role::Viewer)?;
        let r = req.into_inner();
        let doc_id: DocId = r
            .doc_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("doc_id: {e}")))?;
        let from = crate::agency::opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let steps = blocking(move || crate::agency::trace(&st, &doc_id, from.as_ref())).await?;
        Ok(Response::new(pb::TraceResponse { steps }))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        caller(&req).require(Role::Viewer)?;
        let st = self.state.clone();
        let (daily, dead, parked) = blocking(move || {
            Ok((
                st.daily_stats(STATS_DAYS)?,
                st.dead_count(),
                st.parked_count(),
            ))
        })
        .await?;
        let (count, p50_s, p90_s, p99_s) = self.state.telemetry.latency_percentiles();
        Ok(Response::new(pb::StatsResponse {
            counters: self
                .state
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            daily: daily
                .into_iter()
                .map(|d| pb::DailyStat {
                    day: d.day,
                    organ: d.organ,
                    direction: d.direction,
                    documents: d.documents,
                    bytes: d.bytes,
                })
                .collect(),
            latency: Some(pb::LatencySummary {
                count,
                p50_s,
                p90_s,
                p99_s,
            }),
            dead_letters: dead,
            parked,
        }))
    }

    async fn change_directory(
        &self,
        req: Request<pb::DirectoryChange>,
    ) -> Result<Response<pb::ChangeDirectoryResponse>, Status> {
        let (operator, _) = caller(&req).require(Role::Operator)?;
        let c = req.into_inner();
        let bad = |what: &str, e: String| Status::invalid_argument(format!("{what}: {e}"));
        let fact = crate::envelope::DirectoryFact {
            remove: c.remove,
            organ: c
                .organ
                .parse()
                .map_err(|e: truc_core::IdError| bad("organ", e.to_string()))?,
            name: c.name,
            parent: if c.parent.is_empty() {
                None
            } else {
                Some(
                    c.parent
                        .parse()
                        .map_err(|e: truc_core::IdError| bad("parent", e.to_string()))?,
                )
            },
            node: if c.node.is_empty() {
                None
            } else {
                Some(
                    c.node
                        .parse()
                        .map_err(|e: truc_core::IdError| bad("node", e.to_string()))?,
                )
            },
        };
        let st = self.state.clone();
        let what = format!(
            "{} {}",
            if fact.remove { "remove" } else { "add" },
            fact.organ
        );
        let (id, ticket) = blocking(move || st.change_directory(fact)).await?;
        self.state.durable(ticket).await.map_err(Status::from)?;
        tracing::info!(%operator, change = %what, "directory changed by an operator");
        Ok(Response::new(pb::ChangeDirectoryResponse {
            doc_id: id.to_string(),
            version: self.state.directory().version,
        }))
    }

    async fn list_directory(
        &self,
        req: Request<pb::ListAgenciesRequest>,
    ) -> Result<Response<pb::ListAgenciesResponse>, Status> {
        caller(&req).require(Role::Viewer)?;
        let prefix = req.into_inner().prefix;
        let d = self.state.directory();
        Ok(Response::new(pb::ListAgenciesResponse {
            version: d.version,
            agencies: d
                .entries
                .values()
                .filter(|a| a.organ.starts_with(&prefix))
                .cloned()
                .collect(),
        }))
    }

    async fn nodes(
        &self,
        req: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesResponse>, Status> {
        caller(&req).require(Role::Viewer)?;
        Ok(Response::new(pb::NodesResponse {
            nodes: self.state.node_tree(),
        }))
    }

    async fn queues(
        &self,
        req: Request<pb::QueuesRequest>,
    ) -> Result<Response<pb::QueuesResponse>, Status> {
        caller(&req).require(Role::Viewer)?;
        let st = self.state.clone();
        // A store that hangs: UNAVAILABLE with the reason, not a command that
        // waits as long as it does.
        let (queues, snap) = blocking(move || {
            st.read_within(ADMIN_READ_WAIT, |st| {
                Ok((st.queues()?, st.queue_snapshot()?))
            })
        })
        .await?;
        let overdue_total = snap.overdue_total();
        Ok(Response::new(pb::QueuesResponse {
            recipients: snap
                .recipients
                .into_iter()
                .map(|q| pb::RecipientQueueView {
                    recipient: q.organ,
                    depth: q.depth,
                    oldest_ms: q.oldest_ms,
                })
                .collect(),
            overdue_total,
            overdue: snap
                .overdue
                .into_iter()
                .map(|o| pb::OverdueView {
                    doc_id: o.doc_id,
                    from: o.from,
                    recipient: o.recipient,
                    priority: o.priority,
                    deadline_ms: o.deadline_ms,
                    parked: o.parked,
                    queue: o.queue,
                })
                .collect(),
            queues: queues
                .into_iter()
                .map(|(queue, depth, oldest_ms)| pb::QueueView {
                    queue,
                    depth,
                    oldest_ms,
                })
                .collect(),
            parked: snap
                .parked
                .into_iter()
                .map(|(queue, d)| {
                    let e = d.entry.unwrap_or_default();
                    pb::ParkedView {
                        queue,
                        doc_id: e.doc_id,
                        from: e.from,
                        recipients: e.recipients,
                        reason: d.reason,
                        at_ms: d.at_ms,
                        code: String::new(),
                    }
                })
                .collect(),
            dead: snap
                .dead
                .into_iter()
                .map(|d| pb::ParkedView {
                    queue: d.queue,
                    doc_id: d.doc_id,
                    from: d.from,
                    recipients: d.recipients,
                    reason: d.reason,
                    at_ms: d.at_ms,
                    code: d.code,
                })
                .collect(),
            dead_total: snap.dead_total,
            parked_total: self.state.parked_count(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use tonic::Code;
    use truc_store::{Batch, FaultyStore, MemoryStore, Space};

    use super::once_durable;
    use crate::{error::NodeError, state::testing::Fixture};

    /// An operator's requeue or discard is answered once what it wrote is
    /// durable: a flush that fails says so, where the answer would have said
    /// "done"; what wrote nothing is answered as it is, at once; a walk that
    /// stopped part way says what it kept.
    #[tokio::test]
    async fn an_operators_change_is_answered_once_durable() {
        let f = Fixture::new();
        let (store, faults) = FaultyStore::new(MemoryStore::new());
        let hub = f.hub(Arc::new(store));
        let write = |st: Arc<crate::state::NodeState>| {
            move || {
                let mut b = Batch::new();
                b.put(Space::Meta, b"operator".to_vec(), vec![1]);
                st.commit().apply(b)?;
                Ok::<_, NodeError>(())
            }
        };
        let partly = |st: Arc<crate::state::NodeState>| {
            move || -> Result<(), NodeError> {
                write(st)()?;
                Err(NodeError::Other("disk gone".into()).after_done("3 entries requeued".into()))
            }
        };
        once_durable(&hub, write(hub.clone())).await.unwrap();
        let s = once_durable(&hub, partly(hub.clone())).await.unwrap_err();
        assert!(
            s.message()
                .ends_with("(3 entries requeued before it, and kept)"),
            "{s:?}"
        );

        faults.fail_flush.store(true, Ordering::SeqCst);
        let s = once_durable(&hub, partly(hub.clone())).await.unwrap_err();
        assert!(s.message().ends_with("may not have been kept"), "{s:?}");
        // The store takes no write after a failed flush: refused as such.
        let s = once_durable(&hub, write(hub.clone())).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        let s = once_durable(&hub, || -> Result<(), NodeError> {
            Err(
                crate::error::Refusal::not_found("no parked entry or dead letter for document x")
                    .into(),
            )
        })
        .await
        .unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
    }

    /// A requeue or discard request that mixes one document with all is
    /// refused, not half read (a script meaning "all of one sender" would
    /// otherwise act on everything).
    #[test]
    fn a_request_mixing_one_document_and_all_is_refused() {
        use super::scope;
        assert!(scope(true, "x", "", "").is_err());
        assert!(scope(true, "", "000.00.00.G22", "").is_err());
        assert!(scope(false, "x", "", "parent").is_err());
        assert!(scope(false, "x", "000.00.00.G22", "").is_ok());
        assert!(scope(true, "", "", "child:nghean").is_ok());
    }
}
