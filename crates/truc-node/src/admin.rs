//! The admin API (gRPC) for operators: requeue, audit check, trace, queues.
//! Loopback only for now; operator certificates come with the operator surface.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use truc_core::DocId;
use truc_proto::v1::{self as pb, admin_server::Admin};

use crate::{audit, error::NodeError, state::NodeState};

#[derive(Clone)]
pub struct AdminService {
    state: Arc<NodeState>,
}

impl AdminService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

/// The audit report as the API returns it.
pub fn report_pb(r: audit::Report) -> pb::AuditVerifyResponse {
    pb::AuditVerifyResponse {
        entries: r.entries,
        ok: r.first_bad.is_none(),
        first_bad: r.first_bad.as_ref().map(|(s, _)| *s).unwrap_or(0),
        reason: r.first_bad.map(|(_, why)| why).unwrap_or_default(),
        head: r.head.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn requeue(
        &self,
        req: Request<pb::RequeueRequest>,
    ) -> Result<Response<pb::RequeueResponse>, Status> {
        let doc_id: DocId = req
            .into_inner()
            .doc_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("doc_id: {e}")))?;
        let st = self.state.clone();
        let n = blocking(move || st.requeue(&doc_id)).await?;
        tracing::info!(%doc_id, entries = n, "requeued by an operator");
        Ok(Response::new(pb::RequeueResponse { requeued: n as u32 }))
    }

    async fn audit_verify(
        &self,
        _: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        let st = self.state.clone();
        let r = blocking(move || Ok(audit::verify(st.store().as_ref())?)).await?;
        Ok(Response::new(report_pb(r)))
    }

    async fn trace(
        &self,
        req: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        let doc_id: DocId = req
            .into_inner()
            .doc_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("doc_id: {e}")))?;
        let st = self.state.clone();
        let steps = blocking(move || crate::agency::trace(&st, &doc_id)).await?;
        Ok(Response::new(pb::TraceResponse { steps }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(pb::StatsResponse {
            counters: self
                .state
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }))
    }

    async fn change_directory(
        &self,
        req: Request<pb::DirectoryChange>,
    ) -> Result<Response<pb::ChangeDirectoryResponse>, Status> {
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
        let (id, ticket) = blocking(move || st.change_directory(fact)).await?;
        self.state.durable(ticket).await.map_err(Status::from)?;
        Ok(Response::new(pb::ChangeDirectoryResponse {
            doc_id: id.to_string(),
            version: self.state.directory().version,
        }))
    }

    async fn list_directory(
        &self,
        req: Request<pb::ListAgenciesRequest>,
    ) -> Result<Response<pb::ListAgenciesResponse>, Status> {
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
        _: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesResponse>, Status> {
        Ok(Response::new(pb::NodesResponse {
            nodes: self.state.node_tree(),
        }))
    }

    async fn queues(
        &self,
        _: Request<pb::QueuesRequest>,
    ) -> Result<Response<pb::QueuesResponse>, Status> {
        let st = self.state.clone();
        let (queues, parked) = blocking(move || Ok((st.queues()?, st.parked()?))).await?;
        Ok(Response::new(pb::QueuesResponse {
            queues: queues
                .into_iter()
                .map(|(queue, depth, oldest_ms)| pb::QueueView {
                    queue,
                    depth,
                    oldest_ms,
                })
                .collect(),
            parked: parked
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
                    }
                })
                .collect(),
        }))
    }
}
