//! Stored records: `[format version: u8][crc32 of payload: u32 BE][protobuf payload]`.
//!
//! Protobuf gives field-level evolution; the version byte marks layout changes that
//! protobuf cannot express; the checksum turns silent corruption into a named error.

use prost::Message;

use crate::{Space, StoreError};

/// The record layout written today.
pub const FORMAT: u8 = 1;

pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    let payload = m.encode_to_vec();
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(FORMAT);
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode<M: Message + Default>(
    space: Space,
    key: &[u8],
    bytes: &[u8],
) -> Result<M, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        space,
        key: crate::keys::display(key),
        reason,
    };
    if bytes.len() < 5 {
        return Err(corrupt(format!(
            "{} bytes is too short for a record",
            bytes.len()
        )));
    }
    if bytes[0] != FORMAT {
        return Err(corrupt(format!("unknown record format {}", bytes[0])));
    }
    let crc = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[5..];
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    M::decode(payload).map_err(|e| corrupt(e.to_string()))
}

/// A stored document: its signed envelope and where it came from.
#[derive(Clone, PartialEq, Message)]
pub struct DocRecord {
    /// The encoded `SignedEnvelope`, exactly as received — or empty, when it is
    /// kept as a blob named by `envelope_sha256` (documents and what arrives
    /// over a link: immutable bytes stay out of the key-value store, whose
    /// records are rewritten as deliveries progress).
    #[prost(bytes = "vec", tag = "1")]
    pub envelope: Vec<u8>,
    /// SHA-256 of the header bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub header_sha256: Vec<u8>,
    /// `local`, `parent` or `child:<node>`.
    #[prost(string, tag = "3")]
    pub origin: String,
    #[prost(int64, tag = "4")]
    pub received_at_ms: i64,
    /// SHA-256 of each attachment, in manifest order (blob names).
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub attachments: Vec<Vec<u8>>,
    /// Signer certificate subject, as verified on arrival.
    #[prost(string, tag = "6")]
    pub signer: String,
    /// Deliveries still outstanding here (queue entries and unacknowledged local
    /// inbox entries); at zero the attachments are released after the retention period.
    #[prost(uint32, tag = "7")]
    pub pending: u32,
    /// Total attachment bytes (0: nothing to release).
    #[prost(uint64, tag = "8")]
    pub bytes: u64,
    /// When the attachment files were released (0: still held).
    #[prost(int64, tag = "9")]
    pub released_at_ms: i64,
    /// When `envelope` was emptied at the end of the envelope retention period
    /// (0: still here). The record itself stays: dedup, trace and receipts name it.
    #[prost(int64, tag = "10")]
    pub envelope_removed_at_ms: i64,
    /// The message kind (truc.v1.Kind); only documents' envelopes are removed
    /// after retention (receipts and statuses are the proof and stay).
    #[prost(int32, tag = "11")]
    pub kind: i32,
    /// SHA-256 of the encoded envelope, stored as a blob with one reference,
    /// when `envelope` is empty.
    #[prost(bytes = "vec", tag = "12")]
    pub envelope_sha256: Vec<u8>,
    /// The recipients this node took a document for (the ones its transfers
    /// asked this hop to serve). Empty in records from before it was kept:
    /// the document is then taken as a whole when it comes again.
    #[prost(string, repeated, tag = "13")]
    pub routed: Vec<String>,
    /// Whether `pending` counts this document's deliveries (decided at its
    /// first arrival: attachments, or an envelope retention then), so that
    /// one taken again for more recipients counts them the same way.
    #[prost(bool, tag = "14")]
    pub pending_counted: bool,
    /// When the release of its attachments and the removal of its envelope
    /// were last scheduled for (unix ms; 0: not scheduled since these were
    /// kept). A schedule made before it was taken or requeued again, and
    /// done again since, is not acted on: retention runs from the last.
    #[prost(int64, tag = "15")]
    pub attachments_due_ms: i64,
    #[prost(int64, tag = "16")]
    pub envelope_due_ms: i64,
}

/// One transfer waiting on a link.
#[derive(Clone, PartialEq, Message)]
pub struct QueueEntry {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, tag = "2")]
    pub doc_id: String,
    /// The recipients this destination serves.
    #[prost(string, repeated, tag = "3")]
    pub recipients: Vec<String>,
    #[prost(int64, tag = "4")]
    pub enqueued_at_ms: i64,
    /// The message kind (truc.v1.Kind).
    #[prost(int32, tag = "5")]
    pub kind: i32,
    /// Priority of the document (0–4), for its delivery deadline.
    #[prost(uint32, tag = "6")]
    pub priority: u32,
    /// Unix ms after which an undelivered entry is parked (0: never).
    #[prost(int64, tag = "7")]
    pub deadline_ms: i64,
}

/// A document delivered to one local agency.
#[derive(Clone, PartialEq, Message)]
pub struct InboxEntry {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, tag = "2")]
    pub doc_id: String,
    #[prost(string, tag = "3")]
    pub organ: String,
    #[prost(string, tag = "4")]
    pub subject: String,
    #[prost(int64, tag = "5")]
    pub received_at_ms: i64,
    #[prost(bool, tag = "6")]
    pub acked: bool,
    #[prost(int64, tag = "7")]
    pub acked_at_ms: i64,
    #[prost(uint32, tag = "8")]
    pub priority: u32,
    #[prost(string, tag = "9")]
    pub code_number: String,
    #[prost(string, tag = "10")]
    pub code_notation: String,
    #[prost(uint32, tag = "11")]
    pub attachments: u32,
    /// "document" or "status".
    #[prost(string, tag = "12")]
    pub kind: String,
    #[prost(string, tag = "13")]
    pub status_code: String,
    #[prost(string, tag = "14")]
    pub for_doc_id: String,
    #[prost(string, tag = "15")]
    pub note: String,
    #[prost(int32, tag = "16")]
    pub business_type: i32,
    #[prost(string, tag = "17")]
    pub target_doc_id: String,
    /// The last status code this agency sent about it.
    #[prost(string, tag = "18")]
    pub replied: String,
    /// This agency accepted a recall of it (15).
    #[prost(bool, tag = "19")]
    pub recalled: bool,
    /// A recall or recall request names it and waits for 15/16.
    #[prost(bool, tag = "20")]
    pub recall_requested: bool,
    /// The application could not process it (Nack): why.
    #[prost(string, tag = "21")]
    pub nacked: String,
}

/// A recipient's state as the sender sees it.
#[derive(Clone, PartialEq, Message)]
pub struct RecipientRecord {
    #[prost(string, tag = "1")]
    pub organ: String,
    /// `truc_core::DeliveryState` as a number.
    #[prost(uint32, tag = "2")]
    pub state: u32,
    #[prost(int64, tag = "3")]
    pub updated_at_ms: i64,
    #[prost(string, tag = "4")]
    pub detail: String,
    #[prost(int64, tag = "5")]
    pub accepted_at_ms: i64,
    #[prost(int64, tag = "6")]
    pub delivered_at_ms: i64,
    #[prost(int64, tag = "7")]
    pub acked_at_ms: i64,
    #[prost(string, tag = "8")]
    pub last_status: String,
    #[prost(int64, tag = "9")]
    pub last_status_at_ms: i64,
    #[prost(string, tag = "10")]
    pub status_note: String,
    /// Keys (`Docs` space) of the signed receipts kept for this recipient.
    #[prost(bytes = "vec", repeated, tag = "11")]
    pub receipts: Vec<Vec<u8>>,
}

/// A document sent from this node, with per-recipient state.
#[derive(Clone, PartialEq, Message)]
pub struct SentRecord {
    #[prost(string, tag = "1")]
    pub doc_id: String,
    #[prost(string, tag = "2")]
    pub from: String,
    #[prost(string, tag = "3")]
    pub subject: String,
    #[prost(int64, tag = "4")]
    pub created_at_ms: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub header_sha256: Vec<u8>,
    #[prost(message, repeated, tag = "6")]
    pub recipients: Vec<RecipientRecord>,
    #[prost(int32, tag = "7")]
    pub business_type: i32,
    #[prost(string, tag = "8")]
    pub target_doc_id: String,
    #[prost(uint32, tag = "9")]
    pub priority: u32,
    #[prost(int64, tag = "10")]
    pub due_at_ms: i64,
}

/// One entry of the hash-chained audit log.
#[derive(Clone, PartialEq, Message)]
pub struct AuditEntry {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
    /// What happened: received, stored, queued, forwarded, delivered, acked, …
    #[prost(string, tag = "3")]
    pub event: String,
    #[prost(string, tag = "4")]
    pub doc_id: String,
    #[prost(string, tag = "5")]
    pub from: String,
    #[prost(string, tag = "6")]
    pub detail: String,
    /// Hash of the previous entry (zeros for the first).
    #[prost(bytes = "vec", tag = "7")]
    pub prev: Vec<u8>,
    /// SHA-256 of `prev` followed by this entry encoded with an empty `hash`.
    #[prost(bytes = "vec", tag = "8")]
    pub hash: Vec<u8>,
}

/// Audit entries one batch appended (up to 64 of them), stored under one key
/// (the number of the last): one write per block instead of one per entry. Every entry after
/// the first is kept with an empty `prev` (it is the hash of the entry before
/// it in the block); the reader puts it back before the chain is walked.
#[derive(Clone, PartialEq, Message)]
pub struct AuditBlock {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<AuditEntry>,
}

/// A transfer refused for good by the peer.
#[derive(Clone, PartialEq, Message)]
pub struct DeadEntry {
    #[prost(message, optional, tag = "1")]
    pub entry: Option<QueueEntry>,
    #[prost(int32, tag = "2")]
    pub code: i32,
    #[prost(string, tag = "3")]
    pub reason: String,
    #[prost(int64, tag = "4")]
    pub at_ms: i64,
    /// This node could not send it (what it must read for it is gone), or
    /// keeps it back itself (the part of a requeue that cannot go), where
    /// `reason` already says so; not refused by the peer (any more).
    #[prost(bool, tag = "5")]
    pub here: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_any_flipped_byte_is_named_corrupt() {
        let r = QueueEntry {
            from: "000.00.00.G22".into(),
            doc_id: "x".into(),
            recipients: vec!["000.00.00.H41".into()],
            enqueued_at_ms: 7,
            kind: 1,
            priority: 3,
            deadline_ms: 9,
        };
        let bytes = encode(&r);
        assert_eq!(decode::<QueueEntry>(Space::Queue, b"k", &bytes).unwrap(), r);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = decode::<QueueEntry>(Space::Queue, b"k", &bad).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "byte {i}: {err}");
        }
    }
}
