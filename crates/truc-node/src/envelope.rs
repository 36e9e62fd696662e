//! Envelopes: building and signing them where they start, and checking them
//! everywhere else. Only bytes that passed [`verify`] are processed further.

use std::fmt;

use prost::Message;
use rustls::pki_types::UnixTime;
use truc_core::{
    BusinessType, DocId, Kind, NodeId, OrganId, ReceiptType, StatusCode, check_attachment_name,
    check_attachment_path,
};
use truc_pki::{
    identity::Identity,
    sign::{Algorithm, SignatureVerifier, Signer, VerifyError},
};
use truc_proto::v1 as pb;
use truc_store::Digest;

use crate::{config::Limits, error::Refusal};

/// The header layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Who signed a message: an agency (documents, statuses, delivered/acked receipts)
/// or a node (accepted/undeliverable receipts of hubs and relays).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    Agency(OrganId),
    Node(NodeId),
}

impl Sender {
    pub fn agency(&self) -> Option<&OrganId> {
        match self {
            Sender::Agency(o) => Some(o),
            Sender::Node(_) => None,
        }
    }
}

impl fmt::Display for Sender {
    /// The key used in stores: the OrganId, or `node:<id>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Agency(o) => write!(f, "{o}"),
            Sender::Node(n) => write!(f, "node:{n}"),
        }
    }
}

/// Both trust roots: agencies sign against the signing CA, nodes against the
/// transport CA.
#[derive(Debug, Clone)]
pub struct Verifiers {
    pub agencies: SignatureVerifier,
    pub nodes: SignatureVerifier,
}

/// An envelope whose signature, signer and header passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub envelope: pb::SignedEnvelope,
    pub header: pb::Header,
    pub header_sha256: Digest,
    pub doc_id: DocId,
    pub kind: Kind,
    pub from: Sender,
    pub to: Vec<OrganId>,
    /// Subject of the signer certificate.
    pub signer: String,
    /// Attachment digests, in manifest order.
    pub attachments: Vec<Digest>,
    pub business: BusinessType,
    /// Revoke/update/replace: the document acted on.
    pub target: Option<DocId>,
    /// Update: recipients added (true) or removed (false).
    pub changes: Vec<(OrganId, bool)>,
    pub receipt: Option<ReceiptFacts>,
    pub status: Option<StatusFacts>,
    /// Kind::Directory: the changes.
    pub directory: Vec<DirectoryFact>,
    /// Set by whoever stored the encoded envelope durably as a blob before
    /// handing it on: the record then names the blob instead of holding the
    /// bytes.
    pub envelope_blob: Option<Digest>,
}

impl Verified {
    /// The encoded envelope and its digest, for the caller to store durably
    /// as a blob before the record is written; the record will name it.
    pub fn keep_envelope_as_blob(&mut self) -> (Digest, Vec<u8>) {
        let bytes = self.envelope.encode_to_vec();
        let d = Digest::of(&bytes);
        self.envelope_blob = Some(d);
        (d, bytes)
    }
}

/// One change of a directory message.
#[derive(Debug, Clone)]
pub struct DirectoryFact {
    pub remove: bool,
    pub organ: OrganId,
    pub name: String,
    pub parent: Option<OrganId>,
    pub node: Option<NodeId>,
}

/// What a receipt acknowledges.
#[derive(Debug, Clone)]
pub struct ReceiptFacts {
    pub kind: ReceiptType,
    pub for_from: OrganId,
    pub for_doc_id: DocId,
    pub envelope_sha256: Digest,
    /// Node-signed receipts: the recipients they speak for.
    pub recipients: Vec<OrganId>,
    pub at_ms: i64,
    pub detail: String,
}

/// What a business status says, and about which document.
#[derive(Debug, Clone)]
pub struct StatusFacts {
    pub code: StatusCode,
    pub for_from: OrganId,
    pub for_doc_id: DocId,
    pub envelope_sha256: Digest,
    pub note: String,
}

pub fn kind_of(k: i32) -> Option<Kind> {
    match pb::Kind::try_from(k).ok()? {
        pb::Kind::Document => Some(Kind::Document),
        pb::Kind::Status => Some(Kind::Status),
        pb::Kind::Receipt => Some(Kind::Receipt),
        pb::Kind::Directory => Some(Kind::Directory),
        pb::Kind::Unspecified => None,
    }
}

pub fn receipt_type(t: i32) -> Option<ReceiptType> {
    Some(match pb::ReceiptType::try_from(t).ok()? {
        pb::ReceiptType::Delivered => ReceiptType::Delivered,
        pb::ReceiptType::Acked => ReceiptType::Acked,
        pb::ReceiptType::Accepted => ReceiptType::Accepted,
        pb::ReceiptType::Undeliverable => ReceiptType::Undeliverable,
        pb::ReceiptType::Unspecified => return None,
    })
}

fn receipt_type_pb(t: ReceiptType) -> pb::ReceiptType {
    match t {
        ReceiptType::Delivered => pb::ReceiptType::Delivered,
        ReceiptType::Acked => pb::ReceiptType::Acked,
        ReceiptType::Accepted => pb::ReceiptType::Accepted,
        ReceiptType::Undeliverable => pb::ReceiptType::Undeliverable,
    }
}

/// The signature algorithm a wire value names (None: unspecified or unknown).
pub fn algorithm(a: i32) -> Option<Algorithm> {
    match pb::SignatureAlgorithm::try_from(a).ok()? {
        pb::SignatureAlgorithm::EcdsaP256Sha256 => Some(Algorithm::EcdsaP256Sha256),
        pb::SignatureAlgorithm::Ed25519 => Some(Algorithm::Ed25519),
        pb::SignatureAlgorithm::RsaPkcs1Sha256 => Some(Algorithm::RsaPkcs1Sha256),
        pb::SignatureAlgorithm::RsaPssSha256 => Some(Algorithm::RsaPssSha256),
        pb::SignatureAlgorithm::Unspecified => None,
    }
}

/// An attachment's content type goes into HTTP headers where it is handed out:
/// printable ASCII, at most 255 bytes (empty: not given). Checked where a
/// document is written (Send, edXML import), not on the way: a document sealed
/// before this check, or by an older edge, is still carried, and downloads as
/// application/octet-stream.
pub fn check_content_type(ct: &str) -> Result<(), String> {
    if ct.len() > 255 {
        return Err(format!(
            "content type {:?}… is longer than 255 bytes",
            ct.chars().take(32).collect::<String>()
        ));
    }
    if !ct.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(format!(
            "content type {ct:?} has characters other than printable ASCII"
        ));
    }
    Ok(())
}

fn organ(what: &str, s: &str) -> Result<OrganId, Refusal> {
    s.parse()
        .map_err(|e| Refusal::invalid(format!("{what}: {e}")))
}

fn doc_id(what: &str, s: &str) -> Result<DocId, Refusal> {
    s.parse()
        .map_err(|e| Refusal::invalid(format!("{what}: {e}")))
}

fn digest(what: &str, b: &[u8]) -> Result<Digest, Refusal> {
    Digest::from_slice(b).ok_or_else(|| Refusal::invalid(format!("{what}: digest is not 32 bytes")))
}

/// Who a header says sent it: an agency (`from`) or a node (`from_node`),
/// exactly one.
pub fn sender_of(header: &pb::Header) -> Result<Sender, Refusal> {
    match (header.from.is_empty(), header.from_node.is_empty()) {
        (false, true) => Ok(Sender::Agency(organ("from", &header.from)?)),
        (true, false) => {
            Ok(Sender::Node(header.from_node.parse().map_err(|e| {
                Refusal::invalid(format!("from_node: {e}"))
            })?))
        }
        _ => Err(Refusal::invalid(
            "exactly one of from and from_node must be set",
        )),
    }
}

/// Checks an envelope: header shape, signature over the exact header bytes, signer
/// chained to the right CA, and signer == `from` (or `from_node`).
pub fn verify(
    envelope: pb::SignedEnvelope,
    verifiers: &Verifiers,
    limits: &Limits,
    now: UnixTime,
) -> Result<Verified, Refusal> {
    check(envelope, verifiers, limits, now, false)
}

/// [`verify`] for an envelope this node has just made with [`seal`]: everything
/// but the signature arithmetic, which a key checked against its certificate at
/// load cannot get wrong. The header, the limits, the signer's chain and its
/// validity now are checked as for anyone's: an expired or untrusted signing
/// certificate is refused at the source, not three hops later.
pub fn verify_own(
    envelope: pb::SignedEnvelope,
    verifiers: &Verifiers,
    limits: &Limits,
    now: UnixTime,
) -> Result<Verified, Refusal> {
    check(envelope, verifiers, limits, now, true)
}

fn check(
    envelope: pb::SignedEnvelope,
    verifiers: &Verifiers,
    limits: &Limits,
    now: UnixTime,
    own: bool,
) -> Result<Verified, Refusal> {
    let header = pb::Header::decode(envelope.header_bytes.as_slice())
        .map_err(|e| Refusal::invalid(format!("malformed header: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(Refusal::invalid(format!(
            "header format version {} is not supported",
            header.format_version
        )));
    }
    let id = doc_id("doc_id", &header.doc_id)?;
    let kind = kind_of(header.kind)
        .ok_or_else(|| Refusal::invalid(format!("unknown message kind {}", header.kind)))?;
    let from = sender_of(&header)?;
    if header.to.len() > limits.max_recipients {
        return Err(Refusal::over_limit(format!(
            "{} recipients exceed the limit of {} (limits.max_recipients)",
            header.to.len(),
            limits.max_recipients
        )));
    }
    let to = header
        .to
        .iter()
        .map(|t| organ("to", t))
        .collect::<Result<Vec<_>, _>>()?;
    if to.is_empty() && kind != Kind::Directory {
        return Err(Refusal::invalid("no recipients"));
    }
    if header.subject.chars().count() > limits.max_subject_chars {
        return Err(Refusal::invalid(format!(
            "subject is longer than {} characters",
            limits.max_subject_chars
        )));
    }
    if header.attachments.len() > limits.max_attachments {
        return Err(Refusal::over_limit(format!(
            "{} attachments exceed the limit of {} (limits.max_attachments)",
            header.attachments.len(),
            limits.max_attachments
        )));
    }
    let mut attachments = Vec::with_capacity(header.attachments.len());
    for a in &header.attachments {
        if limits.refuse_disguised_names {
            check_attachment_name(&a.name)
        } else {
            check_attachment_path(&a.name)
        }
        .map_err(|e| Refusal::invalid(e.to_string()))?;
        if a.size > limits.max_attachment_bytes {
            return Err(Refusal::over_limit(format!(
                "attachment {:?} is {} bytes, over the limit of {} (limits.max_attachment_bytes)",
                a.name, a.size, limits.max_attachment_bytes
            )));
        }
        attachments.push(digest(&format!("attachment {:?}", a.name), &a.sha256)?);
    }
    // Checked: sizes are the sender's to choose, and where every single size
    // is allowed (offline checks) a sum could wrap round to a small one.
    let total = header
        .attachments
        .iter()
        .try_fold(0u64, |t, a| t.checked_add(a.size))
        .unwrap_or(u64::MAX);
    if total > limits.max_document_bytes {
        return Err(Refusal::over_limit(format!(
            "attachments total {total} bytes, over the limit of {} per document (limits.max_document_bytes)",
            limits.max_document_bytes
        )));
    }
    let business = BusinessType::from_i32(header.business_type).ok_or_else(|| {
        Refusal::invalid(format!("unknown business type {}", header.business_type))
    })?;
    let target = match (business, header.target_doc_id.is_empty()) {
        (BusinessType::New, true) => None,
        (BusinessType::New, false) => {
            return Err(Refusal::invalid("a new document names no target"));
        }
        (_, true) => {
            return Err(Refusal::invalid(format!(
                "a {} names the document it acts on (target_doc_id)",
                business.as_str()
            )));
        }
        (_, false) => Some(doc_id("target_doc_id", &header.target_doc_id)?),
    };
    if kind != Kind::Document && business != BusinessType::New {
        return Err(Refusal::invalid("only documents revoke, update or replace"));
    }
    if business != BusinessType::Update && !header.recipient_changes.is_empty() {
        return Err(Refusal::invalid(
            "only an update adds or removes recipients",
        ));
    }
    let changes = header
        .recipient_changes
        .iter()
        .map(|c| Ok((organ("recipient_changes", &c.organ)?, c.added)))
        .collect::<Result<Vec<_>, Refusal>>()?;

    let mut receipt = None;
    let mut status = None;
    let mut directory = Vec::new();
    match kind {
        Kind::Directory => {
            if !matches!(from, Sender::Node(_)) {
                return Err(Refusal::invalid("directory changes are signed by nodes"));
            }
            if !to.is_empty() {
                return Err(Refusal::invalid("a directory change names no recipients"));
            }
            let d = header
                .directory
                .as_ref()
                .ok_or_else(|| Refusal::invalid("directory change without changes"))?;
            if d.changes.is_empty() {
                return Err(Refusal::invalid("directory change without changes"));
            }
            for c in &d.changes {
                let o = organ("directory organ", &c.organ)?;
                let parent = if c.parent.is_empty() {
                    None
                } else {
                    Some(organ("directory parent", &c.parent)?)
                };
                let node = if c.node.is_empty() && c.remove {
                    None
                } else {
                    Some(
                        c.node
                            .parse::<NodeId>()
                            .map_err(|e| Refusal::invalid(format!("directory node: {e}")))?,
                    )
                };
                directory.push(DirectoryFact {
                    remove: c.remove,
                    organ: o,
                    name: c.name.clone(),
                    parent,
                    node,
                });
            }
        }
        Kind::Document => {
            if header.receipt.is_some() || header.status.is_some() {
                return Err(Refusal::invalid("a document carries no receipt or status"));
            }
            if matches!(from, Sender::Node(_)) {
                return Err(Refusal::invalid(
                    "documents are signed by agencies, not nodes",
                ));
            }
        }
        Kind::Receipt => {
            let r = header
                .receipt
                .as_ref()
                .ok_or_else(|| Refusal::invalid("receipt without receipt details"))?;
            let rt = receipt_type(r.r#type)
                .ok_or_else(|| Refusal::invalid(format!("unknown receipt type {}", r.r#type)))?;
            if rt.node_signed() != matches!(from, Sender::Node(_)) {
                return Err(Refusal::invalid(format!(
                    "a {} receipt is signed by {}",
                    rt.as_str(),
                    if rt.node_signed() {
                        "a node"
                    } else {
                        "the recipient agency"
                    }
                )));
            }
            if to.len() != 1 || to[0].as_str() != r.for_from {
                return Err(Refusal::invalid(
                    "a receipt goes to the sender of what it acknowledges, only",
                ));
            }
            receipt = Some(ReceiptFacts {
                kind: rt,
                for_from: organ("receipt for_from", &r.for_from)?,
                for_doc_id: doc_id("receipt for_doc_id", &r.for_doc_id)?,
                envelope_sha256: digest("receipt", &r.envelope_sha256)?,
                recipients: r
                    .recipients
                    .iter()
                    .map(|o| organ("receipt recipients", o))
                    .collect::<Result<_, _>>()?,
                at_ms: r.at_ms,
                detail: r.detail.clone(),
            });
        }
        Kind::Status => {
            let st = header
                .status
                .as_ref()
                .ok_or_else(|| Refusal::invalid("status without status details"))?;
            let code: StatusCode = st.code.parse().map_err(Refusal::invalid)?;
            let for_from = organ("status for_from", &st.for_from)?;
            let sender = from
                .agency()
                .ok_or_else(|| Refusal::invalid("statuses are signed by agencies, not nodes"))?;
            if code.from_original_sender() {
                if sender != &for_from {
                    return Err(Refusal::denied(format!(
                        "status {} comes only from the original sender {for_from}",
                        code.code()
                    )));
                }
            } else if to.len() != 1 || to[0] != for_from {
                return Err(Refusal::invalid(format!(
                    "status {} goes to the sender of the document, {for_from}, only",
                    code.code()
                )));
            }
            status = Some(StatusFacts {
                code,
                for_from,
                for_doc_id: doc_id("status for_doc_id", &st.for_doc_id)?,
                envelope_sha256: digest("status", &st.envelope_sha256)?,
                note: st.note.clone(),
            });
        }
    }

    let alg = algorithm(envelope.algorithm).ok_or_else(|| {
        Refusal::unauthenticated(format!(
            "unsupported signature algorithm {}",
            envelope.algorithm
        ))
    })?;
    let (verifier, expected) = match &from {
        Sender::Agency(o) => (&verifiers.agencies, Identity::Organ(o.clone())),
        Sender::Node(n) => (&verifiers.nodes, Identity::Node(n.clone())),
    };
    let signer = if own {
        verifier.verify_own(&envelope.signer_chain, now)
    } else {
        verifier.verify(
            &envelope.header_bytes,
            &envelope.signature,
            alg,
            &envelope.signer_chain,
            now,
        )
    }
    .map_err(|e: VerifyError| match e {
        VerifyError::NotNow(_) => Refusal::not_now(format!("envelope {id} from {from}: {e}")),
        e => Refusal::unauthenticated(format!("envelope {id} from {from}: {e}")),
    })?;
    if signer.identity != expected {
        return Err(Refusal::denied(format!(
            "envelope {id} says from {from} but is signed by {:?}",
            signer.identity
        )));
    }
    let header_sha256 = Digest::of(&envelope.header_bytes);
    Ok(Verified {
        envelope,
        header,
        header_sha256,
        doc_id: id,
        kind,
        from,
        to,
        signer: signer.subject,
        attachments,
        business,
        target,
        changes,
        receipt,
        status,
        directory,
        envelope_blob: None,
    })
}

/// Serializes `header` once, signs those bytes and wraps them.
pub fn seal(
    header: &pb::Header,
    signer: &Signer,
) -> Result<pb::SignedEnvelope, truc_pki::PkiError> {
    let header_bytes = header.encode_to_vec();
    let sig = signer.sign(&header_bytes)?;
    Ok(pb::SignedEnvelope {
        header_bytes,
        signature: sig.bytes,
        algorithm: pb::SignatureAlgorithm::EcdsaP256Sha256 as i32,
        signer_chain: sig.chain,
    })
}

/// What a receipt says, for [`receipt_header`].
#[derive(Debug, Clone)]
pub struct ReceiptSpec<'a> {
    pub kind: ReceiptType,
    pub for_from: &'a OrganId,
    pub for_doc_id: &'a DocId,
    pub envelope_sha256: &'a Digest,
    pub recipients: &'a [OrganId],
    pub detail: &'a str,
}

/// A receipt header signed by `signer` (an agency for delivered/acked, this node
/// for accepted/undeliverable).
pub fn receipt_header(signer: &Sender, r: &ReceiptSpec<'_>, now_ms: i64) -> pb::Header {
    let (from, from_node) = match signer {
        Sender::Agency(o) => (o.to_string(), String::new()),
        Sender::Node(n) => (String::new(), n.to_string()),
    };
    pb::Header {
        format_version: FORMAT_VERSION,
        doc_id: DocId::new_v7().to_string(),
        kind: pb::Kind::Receipt as i32,
        from,
        from_node,
        to: vec![r.for_from.to_string()],
        created_at_ms: now_ms,
        receipt: Some(pb::Receipt {
            r#type: receipt_type_pb(r.kind) as i32,
            for_from: r.for_from.to_string(),
            for_doc_id: r.for_doc_id.to_string(),
            envelope_sha256: r.envelope_sha256.0.to_vec(),
            recipients: r.recipients.iter().map(|o| o.to_string()).collect(),
            at_ms: now_ms,
            detail: r.detail.to_owned(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G22: &str = "000.00.00.G22";

    /// A document from G22 to H41 with attachments `(name, size)`, sealed by
    /// G22, and the verifiers that trust its CA.
    fn sealed_with(attachments: &[(&str, u64)]) -> (pb::SignedEnvelope, Verifiers) {
        let ca = truc_pki::dev::DevCa::generate("signing").unwrap();
        let verifiers = Verifiers {
            agencies: ca.signature_verifier().unwrap(),
            nodes: ca.signature_verifier().unwrap(),
        };
        let header = pb::Header {
            format_version: FORMAT_VERSION,
            doc_id: truc_core::DocId::new_v7().to_string(),
            kind: pb::Kind::Document as i32,
            from: G22.into(),
            to: vec!["000.00.00.H41".into()],
            attachments: attachments
                .iter()
                .map(|(name, size)| pb::AttachmentRef {
                    name: (*name).into(),
                    size: *size,
                    sha256: vec![7; 32],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let signer = ca.agency_signer(&G22.parse().unwrap(), "").unwrap();
        (seal(&header, &signer).unwrap(), verifiers)
    }

    /// Attachment sizes are the sender's to choose: where any single size is
    /// allowed (offline checks), their sum must not wrap round to a small one.
    #[test]
    fn attachment_sizes_that_overflow_their_total_are_over_the_limit() {
        let (env, verifiers) = sealed_with(&[("a.pdf", u64::MAX), ("b.pdf", 2)]);
        let limits = Limits {
            max_attachment_bytes: u64::MAX,
            ..Limits::default()
        };
        let err = verify(env, &verifiers, &limits, UnixTime::now()).unwrap_err();
        assert!(err.reason.contains("max_document_bytes"), "{err:?}");
    }

    /// Every node refuses a name that displays as another; a document that
    /// travelled before nodes did still verifies offline.
    #[test]
    fn a_disguised_name_is_refused_by_nodes_and_verifies_offline() {
        let (env, verifiers) = sealed_with(&[("hop-dong\u{202E}fdp.exe", 3)]);
        let err = verify(env.clone(), &verifiers, &Limits::default(), UnixTime::now()).unwrap_err();
        assert!(err.reason.contains("bidirectional"), "{err:?}");
        let offline = Limits {
            refuse_disguised_names: false,
            ..Limits::default()
        };
        verify(env, &verifiers, &offline, UnixTime::now()).unwrap();
    }

    #[test]
    fn content_types_that_would_break_a_header_are_refused() {
        for bad in [
            "application/pdf\n",
            "text/plain\r\nX-Evil: 1",
            "ảnh/png",
            &"a".repeat(256),
        ] {
            assert!(check_content_type(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "application/pdf", "text/plain; charset=utf-8"] {
            assert!(check_content_type(ok).is_ok(), "{ok:?}");
        }
    }
}
