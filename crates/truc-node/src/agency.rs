//! The agency API (gRPC): what document software and the CLI call on their edge.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use truc_core::{DeliveryState, DocId, OrganId};
use truc_proto::v1::{self as pb, agency_server::Agency};
use truc_store::Digest;

use crate::{
    error::{NodeError, Refusal},
    state::{Accepted, NodeState, Submission},
};

#[derive(Clone)]
pub struct AgencyService {
    state: Arc<NodeState>,
}

impl AgencyService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

fn opt_organ(what: &str, s: &str) -> Result<Option<OrganId>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(what, s).map(Some)
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

fn state_pb(s: u32) -> i32 {
    match DeliveryState::from_u8(s as u8) {
        Some(DeliveryState::Queued) => pb::DeliveryState::Queued as i32,
        Some(DeliveryState::AtHub) => pb::DeliveryState::AtHub as i32,
        Some(DeliveryState::Delivered) => pb::DeliveryState::Delivered as i32,
        Some(DeliveryState::Acked) => pb::DeliveryState::Acked as i32,
        Some(DeliveryState::Failed) => pb::DeliveryState::Failed as i32,
        None => pb::DeliveryState::Unspecified as i32,
    }
}

#[tonic::async_trait]
impl Agency for AgencyService {
    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let r = req.into_inner();
        let sub = Submission {
            from: r.from,
            to: r.to,
            subject: r.subject,
            code_number: r.code_number,
            code_notation: r.code_notation,
            priority: r.priority,
            due_at_ms: r.due_at_ms,
            attachments: r
                .attachments
                .into_iter()
                .map(|a| (a.name, a.content_type, a.data))
                .collect(),
            doc_id: Some(r.doc_id).filter(|s| !s.is_empty()),
        };
        let st = self.state.clone();
        let (doc_id, accepted) = blocking(move || st.submit(sub)).await?;
        // Invariant 1: the application hears "sent" only once the outbox is fsynced.
        self.state
            .durable(accepted.ticket())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::SendResponse {
            doc_id: doc_id.to_string(),
            duplicate: matches!(accepted, Accepted::Duplicate(_)),
        }))
    }

    async fn list_inbox(
        &self,
        req: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let r = req.into_inner();
        let organ: OrganId = parse("organ", &r.organ)?;
        if !self.state.routing.is_local(&organ) {
            return Err(Status::not_found(format!(
                "this edge does not serve agency {organ}"
            )));
        }
        let max = self.state.limits.max_list;
        let limit = if r.limit == 0 {
            max
        } else {
            (r.limit as usize).min(max)
        };
        let st = self.state.clone();
        let items = blocking(move || st.inbox(&organ, r.include_acked, limit)).await?;
        Ok(Response::new(pb::ListInboxResponse {
            items: items
                .into_iter()
                .map(|e| pb::InboxItem {
                    doc_id: e.doc_id,
                    from: e.from,
                    organ: e.organ,
                    subject: e.subject,
                    received_at_ms: e.received_at_ms,
                    acked: e.acked,
                    priority: e.priority,
                    code_number: e.code_number,
                    code_notation: e.code_notation,
                    attachments: e.attachments,
                })
                .collect(),
        }))
    }

    async fn get_document(
        &self,
        req: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::GetDocumentResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let resp = blocking(move || {
            let (doc, entries) = st.received(&doc_id, from.as_ref())?;
            let envelope = <pb::SignedEnvelope as prost::Message>::decode(doc.envelope.as_slice())
                .map_err(|e| NodeError::Other(format!("stored envelope: {e}")))?;
            let header = <pb::Header as prost::Message>::decode(envelope.header_bytes.as_slice())
                .map_err(|e| NodeError::Other(format!("stored header: {e}")))?;
            let mut attachments = Vec::new();
            for a in &header.attachments {
                let d = Digest::from_slice(&a.sha256)
                    .ok_or_else(|| Refusal::invalid("stored attachment digest"))?;
                attachments.push(pb::Attachment {
                    name: a.name.clone(),
                    content_type: a.content_type.clone(),
                    data: st.blobs.read(&d)?,
                });
            }
            let document = pb::DocumentView {
                doc_id: header.doc_id.clone(),
                from: header.from.clone(),
                to: header.to.clone(),
                subject: header.subject.clone(),
                code_number: header.code_number.clone(),
                code_notation: header.code_notation.clone(),
                priority: header.priority,
                created_at_ms: header.created_at_ms,
                due_at_ms: header.due_at_ms,
                received_at_ms: doc.received_at_ms,
                attachments: header.attachments.clone(),
                signer: doc.signer.clone(),
                delivered_to: entries.iter().map(|e| e.organ.clone()).collect(),
                acked: entries.iter().all(|e| e.acked),
            };
            Ok(pb::GetDocumentResponse {
                document: Some(document),
                envelope: Some(envelope),
                attachments,
            })
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let organ = opt_organ("organ", &r.organ)?;
        let st = self.state.clone();
        let (acked, ticket) =
            blocking(move || st.ack(&doc_id, from.as_ref(), organ.as_ref())).await?;
        self.state.durable(ticket).await.map_err(Status::from)?;
        Ok(Response::new(pb::AckResponse {
            acked: acked.into_iter().map(|o| o.to_string()).collect(),
        }))
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let doc_id: DocId = parse("doc_id", &req.into_inner().doc_id)?;
        let st = self.state.clone();
        let mut records = blocking(move || st.sent(&doc_id)).await?;
        let Some(rec) = records.pop() else {
            return Err(Status::not_found(format!(
                "no document {doc_id} was sent from this edge"
            )));
        };
        Ok(Response::new(pb::GetStatusResponse {
            doc_id: rec.doc_id,
            from: rec.from,
            subject: rec.subject,
            created_at_ms: rec.created_at_ms,
            recipients: rec
                .recipients
                .into_iter()
                .map(|r| pb::RecipientStatus {
                    organ: r.organ,
                    state: state_pb(r.state),
                    updated_at_ms: r.updated_at_ms,
                    detail: r.detail,
                })
                .collect(),
        }))
    }
}
