//! Envelopes: building and signing them on the sending edge, and checking them
//! everywhere else. Only bytes that passed [`verify`] are processed further.

use prost::Message;
use rustls::pki_types::UnixTime;
use tonic::Code;
use truc_core::{DocId, Kind, OrganId, ReceiptType};
use truc_pki::sign::{AgencySigner, Algorithm, SignatureVerifier, VerifyError};
use truc_proto::v1 as pb;
use truc_store::Digest;

use crate::{config::Limits, error::Refusal};

/// The header layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// An envelope whose signature, signer and header passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub envelope: pb::SignedEnvelope,
    pub header: pb::Header,
    pub header_sha256: Digest,
    pub doc_id: DocId,
    pub kind: Kind,
    pub from: OrganId,
    pub to: Vec<OrganId>,
    /// Subject of the signer certificate.
    pub signer: String,
    /// Attachment digests, in manifest order.
    pub attachments: Vec<Digest>,
    pub receipt: Option<ReceiptFacts>,
}

/// What a receipt acknowledges.
#[derive(Debug, Clone)]
pub struct ReceiptFacts {
    pub kind: ReceiptType,
    pub for_from: OrganId,
    pub for_doc_id: DocId,
    pub envelope_sha256: Digest,
}

pub fn kind_of(k: i32) -> Option<Kind> {
    match pb::Kind::try_from(k).ok()? {
        pb::Kind::Document => Some(Kind::Document),
        pb::Kind::Status => Some(Kind::Status),
        pb::Kind::Receipt => Some(Kind::Receipt),
        pb::Kind::Unspecified => None,
    }
}

fn algorithm(a: i32) -> Option<Algorithm> {
    match pb::SignatureAlgorithm::try_from(a).ok()? {
        pb::SignatureAlgorithm::EcdsaP256Sha256 => Some(Algorithm::EcdsaP256Sha256),
        pb::SignatureAlgorithm::Ed25519 => Some(Algorithm::Ed25519),
        pb::SignatureAlgorithm::RsaPkcs1Sha256 => Some(Algorithm::RsaPkcs1Sha256),
        pb::SignatureAlgorithm::RsaPssSha256 => Some(Algorithm::RsaPssSha256),
        pb::SignatureAlgorithm::Unspecified => None,
    }
}

/// Refuses names that could act as paths or control sequences when written to disk.
pub fn check_attachment_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("attachment name is empty".into());
    }
    if name.chars().count() > 255 {
        return Err(format!(
            "attachment name {:?}… is longer than 255 characters",
            name.chars().take(32).collect::<String>()
        ));
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\\') {
        return Err(format!(
            "attachment name {name:?} is a path; names are display text"
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!(
            "attachment name {name:?} contains control characters"
        ));
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Err(format!("attachment name {name:?} looks like a drive path"));
    }
    Ok(())
}

/// Checks an envelope: header shape, signature over the exact header bytes, signer
/// chained to the signing CA, and signer agency == `from`.
pub fn verify(
    envelope: pb::SignedEnvelope,
    verifier: &SignatureVerifier,
    limits: &Limits,
    now: UnixTime,
) -> Result<Verified, Refusal> {
    let header = pb::Header::decode(envelope.header_bytes.as_slice())
        .map_err(|e| Refusal::invalid(format!("malformed header: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(Refusal::invalid(format!(
            "header format version {} is not supported",
            header.format_version
        )));
    }
    let doc_id: DocId = header
        .doc_id
        .parse()
        .map_err(|e| Refusal::invalid(format!("{e}")))?;
    let kind = kind_of(header.kind)
        .ok_or_else(|| Refusal::invalid(format!("unknown message kind {}", header.kind)))?;
    let from: OrganId = header
        .from
        .parse()
        .map_err(|e| Refusal::invalid(format!("from: {e}")))?;
    if header.to.len() > limits.max_recipients {
        return Err(Refusal::exhausted(format!(
            "{} recipients exceed the limit of {}",
            header.to.len(),
            limits.max_recipients
        )));
    }
    let to = header
        .to
        .iter()
        .map(|t| {
            t.parse::<OrganId>()
                .map_err(|e| Refusal::invalid(format!("to: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if to.is_empty() {
        return Err(Refusal::invalid("no recipients"));
    }
    if header.subject.chars().count() > limits.max_subject_chars {
        return Err(Refusal::invalid(format!(
            "subject is longer than {} characters",
            limits.max_subject_chars
        )));
    }
    if header.attachments.len() > limits.max_attachments {
        return Err(Refusal::exhausted(format!(
            "{} attachments exceed the limit of {}",
            header.attachments.len(),
            limits.max_attachments
        )));
    }
    let mut attachments = Vec::with_capacity(header.attachments.len());
    for a in &header.attachments {
        check_attachment_name(&a.name).map_err(Refusal::invalid)?;
        if a.size > limits.max_attachment_bytes {
            return Err(Refusal::exhausted(format!(
                "attachment {:?} is {} bytes, over the limit of {} (limits.max_attachment_bytes)",
                a.name, a.size, limits.max_attachment_bytes
            )));
        }
        attachments.push(Digest::from_slice(&a.sha256).ok_or_else(|| {
            Refusal::invalid(format!("attachment {:?}: sha256 is not 32 bytes", a.name))
        })?);
    }
    let receipt = match (kind, &header.receipt) {
        (Kind::Receipt, Some(r)) => {
            let kind = match pb::ReceiptType::try_from(r.r#type) {
                Ok(pb::ReceiptType::Delivered) => ReceiptType::Delivered,
                Ok(pb::ReceiptType::Acked) => ReceiptType::Acked,
                _ => {
                    return Err(Refusal::invalid(format!(
                        "unknown receipt type {}",
                        r.r#type
                    )));
                }
            };
            if to.len() != 1 || to[0].as_str() != r.for_from {
                return Err(Refusal::invalid(
                    "a receipt goes to the sender of what it acknowledges, only",
                ));
            }
            Some(ReceiptFacts {
                kind,
                for_from: r
                    .for_from
                    .parse()
                    .map_err(|e| Refusal::invalid(format!("receipt: {e}")))?,
                for_doc_id: r
                    .for_doc_id
                    .parse()
                    .map_err(|e| Refusal::invalid(format!("receipt: {e}")))?,
                envelope_sha256: Digest::from_slice(&r.envelope_sha256)
                    .ok_or_else(|| Refusal::invalid("receipt: envelope digest is not 32 bytes"))?,
            })
        }
        (Kind::Receipt, None) => return Err(Refusal::invalid("receipt without receipt details")),
        (Kind::Status, _) => {
            return Err(Refusal::new(
                Code::Unimplemented,
                "business statuses are not supported yet",
            ));
        }
        (Kind::Document, Some(_)) => {
            return Err(Refusal::invalid("a document cannot carry receipt details"));
        }
        (Kind::Document, None) => None,
    };
    let alg = algorithm(envelope.algorithm).ok_or_else(|| {
        Refusal::unauthenticated(format!(
            "unsupported signature algorithm {}",
            envelope.algorithm
        ))
    })?;
    let signer = verifier
        .verify(
            &envelope.header_bytes,
            &envelope.signature,
            alg,
            &envelope.signer_chain,
            now,
        )
        .map_err(|e: VerifyError| {
            Refusal::unauthenticated(format!("envelope {doc_id} from {from}: {e}"))
        })?;
    if signer.organ != from {
        return Err(Refusal::denied(format!(
            "envelope {doc_id} says from {from} but is signed by {}",
            signer.organ
        )));
    }
    let header_sha256 = Digest::of(&envelope.header_bytes);
    Ok(Verified {
        envelope,
        header,
        header_sha256,
        doc_id,
        kind,
        from,
        to,
        signer: signer.subject,
        attachments,
        receipt,
    })
}

/// Serializes `header` once, signs those bytes and wraps them.
pub fn seal(
    header: &pb::Header,
    signer: &AgencySigner,
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

/// A receipt header from `recipient` for a document it received.
pub fn receipt_header(
    recipient: &OrganId,
    kind: ReceiptType,
    for_from: &OrganId,
    for_doc_id: &DocId,
    envelope_sha256: &Digest,
    now_ms: i64,
) -> pb::Header {
    pb::Header {
        format_version: FORMAT_VERSION,
        doc_id: DocId::new_v7().to_string(),
        kind: pb::Kind::Receipt as i32,
        from: recipient.to_string(),
        to: vec![for_from.to_string()],
        created_at_ms: now_ms,
        receipt: Some(pb::Receipt {
            r#type: match kind {
                ReceiptType::Delivered => pb::ReceiptType::Delivered as i32,
                ReceiptType::Acked => pb::ReceiptType::Acked as i32,
            },
            for_from: for_from.to_string(),
            for_doc_id: for_doc_id.to_string(),
            envelope_sha256: envelope_sha256.0.to_vec(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_that_act_as_paths_are_refused() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "C:evil",
            "..",
            "x\u{0}y",
            "x\ny",
            "",
        ] {
            assert!(check_attachment_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["Quyết định 123.pdf", "phu-luc.xlsx", ".hidden", "a..b.pdf"] {
            assert!(check_attachment_name(ok).is_ok(), "{ok:?}");
        }
    }
}
