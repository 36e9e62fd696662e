//! edXML at the agency API: an imported package becomes a truc message (its header
//! fields mapped, the rest kept in the signed header's `meta` so an export gives
//! them back); a received document or status becomes a package today's software
//! accepts, with a TraceHeader for this hop.

use std::collections::BTreeMap;

use truc_core::{DocId, OrganId};
use truc_edxml::{Attachment, Business, Kind, Organ, Package, ResponseFor, Trace};
use truc_proto::v1 as pb;
use truc_store::Digest;

use crate::{
    error::Refusal,
    state::{Body, Reply, Submission, SubmittedAttachment},
};

/// The meta key holding the package's header fields as JSON.
pub const META_KEY: &str = "edxml";

/// The truc doc_id of an edXML DocumentId: the same package imported twice is
/// the same document (edXML dedups by sender + DocumentId).
pub fn derive_doc_id(from: &str, document_id: &str) -> DocId {
    let d = Digest::of(format!("truc-edxml\0{from}\0{document_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.0[..16]);
    DocId::from_uuid(uuid::Uuid::new_v8(b))
}

/// The truc doc_id of the document sent by `from` that a package refers to
/// by `document_id` (answering or recalling it): a truc id as it is when a
/// document of that id from `from` is known here (truc exported it with its
/// own id), else derived as at import. A package's own DocumentId is always
/// derived ([`derive_doc_id`]): another sender keeping a forwarded id must
/// not make a second document of the same doc_id.
pub fn doc_id_of(from: &str, document_id: &str, known: impl Fn(&str, &DocId) -> bool) -> DocId {
    match document_id.parse::<DocId>() {
        Ok(id) if id.to_string() == document_id && known(from, &id) => id,
        _ => derive_doc_id(from, document_id),
    }
}

/// The DocumentId of the package a document was imported from, kept in its
/// signed header's meta; none for a document sent natively.
pub fn document_id_in(header: &pb::Header) -> Option<String> {
    let json = header.meta.get(META_KEY)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("document_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// What an imported package asks for.
#[derive(Debug)]
pub enum Imported {
    Document(Box<Submission>),
    Status(Reply),
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const VN_OFFSET_MS: i64 = 7 * 3_600_000;

/// `yyyy/MM/dd` (local time, UTC+7; a time after the date is ignored) →
/// Unix ms at the end of that day. A day the month does not have, or a year
/// outside 1900–9999, is no date.
pub fn parse_date(s: &str) -> Option<i64> {
    let date = s.trim().split([' ', 'T']).next()?;
    let mut it = date.split(['/', '-']);
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(1900..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // 31 November comes back as 1 December.
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    Some((days + 1) * 86_400_000 - 1 - VN_OFFSET_MS)
}

/// Unix ms → `yyyy/MM/dd HH:mm:ss` in UTC+7, as edXML timestamps are written.
pub fn timestamp(ms: i64) -> String {
    let local = ms + VN_OFFSET_MS;
    let (y, m, d) = civil_from_days(local.div_euclid(86_400_000));
    let secs = local.rem_euclid(86_400_000) / 1000;
    format!(
        "{y:04}/{m:02}/{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Maps a parsed package onto a submission or a status reply; its attachments'
/// bytes move into the submission. `known(from, doc_id)`: whether such a
/// document is known here (see [`doc_id_of`]).
pub fn to_truc(mut p: Package, known: impl Fn(&str, &DocId) -> bool) -> Result<Imported, Refusal> {
    let json = serde_json::to_string(&p).map_err(|e| Refusal::invalid(format!("edXML: {e}")))?;
    let due_at_ms = match p.due_date.trim() {
        "" => 0,
        d => parse_date(d).ok_or_else(|| {
            Refusal::invalid(format!("edXML DueDate: {d:?} is not a date (yyyy/MM/dd)"))
        })?,
    };
    let meta: BTreeMap<String, String> = [(META_KEY.to_owned(), json)].into();
    match p.kind {
        Kind::Document => {
            let from = &p.from.organ_id;
            let (business_type, target, reason, changes) = match &p.business {
                Some(b) if b.doc_type != 0 => {
                    if b.document_id.is_empty() {
                        return Err(Refusal::invalid(
                            "edXML TraceHeaderList/Bussiness/DocumentId: a revoke, update or replace names its document",
                        ));
                    }
                    (
                        i32::from(b.doc_type),
                        doc_id_of(from, &b.document_id, &known).to_string(),
                        b.reason.clone(),
                        b.receivers.clone(),
                    )
                }
                _ => (0, String::new(), String::new(), Vec::new()),
            };
            let attachments = std::mem::take(&mut p.attachments)
                .into_iter()
                .map(|a| SubmittedAttachment {
                    name: a.name,
                    content_type: if a.manifest_content_type.is_empty() {
                        a.content_type
                    } else {
                        a.manifest_content_type
                    },
                    body: Body::Inline(a.data),
                })
                .collect();
            Ok(Imported::Document(Box::new(Submission {
                from: from.clone(),
                to: p.recipients(),
                subject: p.subject.clone(),
                code_number: p.code_number.clone(),
                code_notation: p.code_notation.clone(),
                priority: p.priority.unwrap_or(0),
                due_at_ms,
                attachments,
                doc_id: (!p.document_id.is_empty())
                    .then(|| derive_doc_id(from, &p.document_id).to_string()),
                business_type,
                target_doc_id: target,
                reason,
                changes,
                meta,
                // A package keeps the dates it carries.
                api_checks: false,
            })))
        }
        Kind::Status => {
            let r = p
                .response_for
                .first()
                .ok_or_else(|| Refusal::invalid("edXML MessageHeader/ResponseFor: missing"))?;
            if r.document_id.is_empty() {
                return Err(Refusal::invalid(
                    "edXML MessageHeader/ResponseFor/DocumentId: empty",
                ));
            }
            Ok(Imported::Status(Reply {
                doc_id: doc_id_of(&r.organ_id, &r.document_id, &known).to_string(),
                from: r.organ_id.clone(),
                organ: p.from.organ_id.clone(),
                code: p.status_code.clone(),
                note: p.description.clone(),
                staff: p.staff.staff.clone(),
                meta,
            }))
        }
    }
}

/// A received message as a package; `here` is the agency that received it.
/// `package_id(from, doc_id)` gives the DocumentId of a document imported
/// from a package, so that a status or recall sent natively about it names
/// the document as its sender's software knows it.
pub fn from_truc(
    header: &pb::Header,
    attachments: Vec<Vec<u8>>,
    here: &OrganId,
    received_at_ms: i64,
    names: impl Fn(&str) -> String,
    package_id: impl Fn(&str, &str) -> Option<String>,
) -> Package {
    let imported: Option<Package> = header
        .meta
        .get(META_KEY)
        .and_then(|j| serde_json::from_str(j).ok());
    // A message sent natively (not from a package) gets the sender's hop and
    // the business fields its header carries.
    let native = imported.is_none();
    let mut p = imported.unwrap_or_default();
    if native {
        p.traces.push(Trace {
            organ_id: header.from.clone(),
            timestamp: timestamp(header.created_at_ms),
        });
        if header.status.is_none() {
            p.promulgation_date = timestamp(header.created_at_ms)[..10].to_owned();
            if header.business_type != 0 {
                p.business = Some(Business {
                    document_id: package_id(&header.from, &header.target_doc_id)
                        .unwrap_or_else(|| header.target_doc_id.clone()),
                    doc_type: u8::try_from(header.business_type).unwrap_or(0),
                    reason: header.reason.clone(),
                    receivers: header
                        .recipient_changes
                        .iter()
                        .map(|c| (c.organ.clone(), c.added))
                        .collect(),
                    ..Default::default()
                });
            }
        }
    }
    let organ = |id: &str| Organ {
        organ_id: id.to_owned(),
        organ_name: names(id),
        ..Default::default()
    };
    if p.from.organ_id.is_empty() {
        p.from = organ(&header.from);
    }
    if let Some(st) = &header.status {
        p.kind = Kind::Status;
        if p.status_code.is_empty() {
            p.status_code = st.code.clone();
            p.description = st.note.clone();
            p.timestamp = timestamp(header.created_at_ms);
            p.staff.staff = st.staff.clone();
        }
        if p.response_for.is_empty() {
            p.response_for = vec![ResponseFor {
                organ_id: st.for_from.clone(),
                document_id: package_id(&st.for_from, &st.for_doc_id)
                    .unwrap_or_else(|| st.for_doc_id.clone()),
                ..Default::default()
            }];
        }
    } else {
        p.kind = Kind::Document;
        if p.to.is_empty() {
            p.to = header.to.iter().map(|t| organ(t)).collect();
        }
        if p.document_id.is_empty() {
            p.document_id = header.doc_id.clone();
            p.subject = header.subject.clone();
            p.code_number = header.code_number.clone();
            p.code_notation = header.code_notation.clone();
            p.priority = Some(header.priority);
            if header.due_at_ms > 0 {
                p.due_date = timestamp(header.due_at_ms)[..10].to_owned();
            }
        }
        if p.attachments.len() != header.attachments.len() {
            p.attachments = header
                .attachments
                .iter()
                .enumerate()
                .map(|(i, a)| Attachment {
                    content_id: format!("cid:{}", i + 1),
                    name: a.name.clone(),
                    manifest_content_type: a.content_type.clone(),
                    content_type: "application/zip".into(),
                    ..Default::default()
                })
                .collect();
        }
        for (a, data) in p.attachments.iter_mut().zip(attachments) {
            a.data = data;
        }
    }
    // Each hop appends one: this agency received it now.
    p.traces.push(Trace {
        organ_id: here.to_string(),
        timestamp: timestamp(received_at_ms),
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps_are_vietnam_local_time() {
        // 2026/11/28 00:00:00 UTC+7 = 2026-11-27T17:00:00Z.
        let end = parse_date("2026/11/28").unwrap();
        assert_eq!(timestamp(end), "2026/11/28 23:59:59");
        assert_eq!(timestamp(1_795_798_800_000), "2026/11/28 00:00:00");
        assert_eq!(parse_date("2026/13/01"), None);
        assert_eq!(parse_date("hôm qua"), None);
        assert_eq!(
            parse_date("2026/12/5"),
            Some(parse_date("2026/12/05").unwrap())
        );
        assert_eq!(parse_date("2026/12/05 17:00:00"), parse_date("2026/12/05"));
        assert_eq!(parse_date("2026/02/30"), None, "not 2 March");
        assert_eq!(parse_date("05/12/2026"), None, "not the year 5");
        assert_eq!(parse_date("99999999999/01/01"), None);
    }

    #[test]
    fn the_same_document_id_from_the_same_sender_is_the_same_doc_id() {
        let a = derive_doc_id("000.00.00.G22", "000.00.00.G22,2026/11/28,7816/VPCP-TTĐT");
        assert_eq!(
            a,
            derive_doc_id("000.00.00.G22", "000.00.00.G22,2026/11/28,7816/VPCP-TTĐT")
        );
        assert_ne!(
            a,
            derive_doc_id("000.00.00.H41", "000.00.00.G22,2026/11/28,7816/VPCP-TTĐT")
        );
    }

    #[test]
    fn a_native_recall_exports_with_its_business_fields_and_both_hops() {
        let h = pb::Header {
            doc_id: "01a22465-0eea-7770-8f2c-30e818cd8cad".into(),
            from: "000.00.00.G22".into(),
            to: vec!["000.00.00.H41".into()],
            created_at_ms: 1_795_798_800_000,
            business_type: pb::BusinessType::Revoke as i32,
            target_doc_id: "01a22465-0000-7000-8000-000000000001".into(),
            reason: "Ban hành nhầm".into(),
            subject: "Thu hồi".into(),
            ..Default::default()
        };
        let here: OrganId = "000.00.00.H41".parse().unwrap();
        let p = from_truc(
            &h,
            Vec::new(),
            &here,
            1_795_798_860_000,
            |_| String::new(),
            |_, _| None,
        );
        let b = p.business.as_ref().unwrap();
        assert_eq!(
            (b.doc_type, b.document_id.as_str(), b.reason.as_str()),
            (1, h.target_doc_id.as_str(), "Ban hành nhầm")
        );
        assert_eq!(p.promulgation_date, "2026/11/28");
        let hops: Vec<(&str, &str)> = p
            .traces
            .iter()
            .map(|t| (t.organ_id.as_str(), t.timestamp.as_str()))
            .collect();
        assert_eq!(
            hops,
            [
                ("000.00.00.G22", "2026/11/28 00:00:00"),
                ("000.00.00.H41", "2026/11/28 00:01:00")
            ]
        );
        // And it parses back as what it says.
        let back =
            truc_edxml::parse(&truc_edxml::emit(&p), &truc_edxml::Limits::default()).unwrap();
        assert_eq!(back.business.unwrap().doc_type, 1);
    }
}
