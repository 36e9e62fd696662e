//! The JSON shapes of the agency views, shared by the REST API and the CLI's
//! `--json` so that a script sees the same fields whichever it uses (the REST
//! schemas in `openapi.json` describe these).

use serde_json::{Value, json};
use truc_proto::v1 as pb;

/// A delivery state's name, as shown to people and in JSON.
pub fn state_name(s: i32) -> &'static str {
    match pb::DeliveryState::try_from(s) {
        Ok(pb::DeliveryState::Queued) => "queued",
        Ok(pb::DeliveryState::AtHub) => "at hub",
        Ok(pb::DeliveryState::Delivered) => "delivered",
        Ok(pb::DeliveryState::Acked) => "acked",
        Ok(pb::DeliveryState::Failed) => "failed",
        _ => "unknown",
    }
}

/// `new`, `revoke`, `update` or `replace` (edXML BussinessDocType 0–3).
pub fn business_name(b: i32) -> &'static str {
    match pb::BusinessType::try_from(b) {
        Ok(pb::BusinessType::Revoke) => "revoke",
        Ok(pb::BusinessType::Update) => "update",
        Ok(pb::BusinessType::Replace) => "replace",
        _ => "new",
    }
}

/// The sender's view of one document: per-recipient state and statuses.
pub fn sent_document(s: &pb::GetStatusResponse) -> Value {
    json!({
        "doc_id": s.doc_id,
        "from": s.from,
        "subject": s.subject,
        "created_at_ms": s.created_at_ms,
        "priority": s.priority,
        "deadline_ms": s.deadline_ms,
        "business_type": business_name(s.business_type),
        "target_doc_id": s.target_doc_id,
        "recipients": s.recipients.iter().map(|r| json!({
            "organ": r.organ,
            "state": state_name(r.state),
            "updated_at_ms": r.updated_at_ms,
            "detail": r.detail,
            "accepted_at_ms": r.accepted_at_ms,
            "delivered_at_ms": r.delivered_at_ms,
            "acked_at_ms": r.acked_at_ms,
            "last_status": r.last_status,
            "last_status_at_ms": r.last_status_at_ms,
            "status_note": r.status_note,
        })).collect::<Vec<_>>(),
    })
}

/// One entry of an agency's inbox.
pub fn inbox_item(i: &pb::InboxItem) -> Value {
    json!({
        "doc_id": i.doc_id,
        "kind": i.kind,
        "from": i.from,
        "organ": i.organ,
        "subject": i.subject,
        "received_at_ms": i.received_at_ms,
        "acked": i.acked,
        "priority": i.priority,
        "code_number": i.code_number,
        "code_notation": i.code_notation,
        "attachments": i.attachments,
        "status_code": i.status_code,
        "for_doc_id": i.for_doc_id,
        "note": i.note,
        "business_type": business_name(i.business_type),
        "target_doc_id": i.target_doc_id,
        "replied": i.replied,
        "recalled": i.recalled,
        "nacked": !i.nacked.is_empty(),
        "nack_reason": i.nacked,
        "pdf_signatures": i.pdf_signatures,
        "seq": i.seq,
    })
}

/// The signatures inside a document's PDF attachments (REST
/// `/v1/inbox/{doc_id}`, `document.json` of `truc get`): per attachment the
/// document's verdict and every signature.
pub fn pdf_checks(checks: &[pb::PdfSignatureCheck]) -> Value {
    Value::Array(
        checks
            .iter()
            .map(|c| {
                json!({
                    "attachment": c.attachment,
                    "verdict": c.verdict,
                    "signer": c.signer,
                    "signing_time_ms": c.signing_time_ms,
                    "detail": c.detail,
                    "signatures": c.signatures.iter().map(|s| json!({
                        "verdict": s.verdict,
                        "signer": s.signer,
                        "signing_time_ms": s.signing_time_ms,
                        "covers_whole_file": s.covers_whole_file,
                        "detail": s.detail,
                        "signer_organ": s.signer_organ,
                        "other_agency": s.other_agency,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// One node of the federation tree (`truc nodes --json`, the dashboard).
pub fn node_view(n: &pb::NodeView) -> Value {
    json!({
        "node": n.node,
        "parent": n.parent,
        "role": n.role,
        "agencies": n.agencies,
        "link": n.link,
        "last_seen_ms": n.last_seen_ms,
        "queue_depth": n.queue_depth,
        "version": n.version,
        "cert_not_after_ms": n.cert_not_after_ms,
        "reported_at_ms": n.reported_at_ms,
        "down_since_ms": n.down_since_ms,
    })
}
