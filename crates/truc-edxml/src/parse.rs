//! From XML to [`Package`], tolerant of order, prefixes and missing optional parts.

use crate::{
    Attachment, Business, EdxmlError, Kind, Limits, Organ, Package, ResponseFor, Staff, Trace,
    check_name,
    dom::{self, El},
    zipped,
};

fn organ(e: &El) -> Organ {
    Organ {
        organ_id: e.text_of("OrganId"),
        organization_in_charge: e.text_of("OrganizationInCharge"),
        organ_name: e.text_of("OrganName"),
        organ_add: e.text_of("OrganAdd"),
        email: e.text_of("Email"),
        telephone: e.text_of("Telephone"),
        fax: e.text_of("Fax"),
        website: e.text_of("Website"),
    }
}

fn staff(e: Option<&El>) -> Staff {
    e.map(|e| Staff {
        department: e.text_of("Department"),
        staff: e.text_of("Staff"),
        mobile: e.text_of("Mobile"),
        email: e.text_of("Email"),
    })
    .unwrap_or_default()
}

/// Parses a package and decodes its attachments.
pub fn parse(xml: &[u8], limits: &Limits) -> Result<Package, EdxmlError> {
    let root = dom::parse(xml, limits)?;
    if root.name != "edXML" && root.name != "edXMLEnvelope" {
        return Err(EdxmlError::new(
            &root.name,
            "the root element must be edXML",
        ));
    }
    let envelope = if root.name == "edXMLEnvelope" {
        &root
    } else {
        root.child("edXMLEnvelope")
            .ok_or_else(|| EdxmlError::new("edXML", "no edXMLEnvelope"))?
    };
    let header = envelope
        .child("edXMLHeader")
        .ok_or_else(|| EdxmlError::new("edXMLEnvelope", "no edXMLHeader"))?;
    let mh = header
        .child("MessageHeader")
        .ok_or_else(|| EdxmlError::new("edXMLHeader", "no MessageHeader"))?;
    let from = mh
        .child("From")
        .map(organ)
        .ok_or_else(|| EdxmlError::new("MessageHeader", "no From"))?;
    if from.organ_id.is_empty() {
        return Err(EdxmlError::new("MessageHeader/From/OrganId", "empty"));
    }
    let mut p = Package {
        from,
        to: mh.all("To").map(organ).collect(),
        document_id: mh.text_of("DocumentId"),
        subject: mh.text_of("Subject"),
        content: mh.text_of("Content"),
        due_date: mh.text_of("DueDate"),
        steering_type: mh.text_of("SteeringType"),
        response_for: mh
            .all("ResponseFor")
            .map(|r| ResponseFor {
                organ_id: r.text_of("OrganId"),
                code: r.text_of("Code"),
                promulgation_date: r.text_of("PromulgationDate"),
                document_id: r.text_of("DocumentId"),
            })
            .collect(),
        status_code: mh.text_of("StatusCode"),
        description: mh.text_of("Description"),
        timestamp: mh.text_of("Timestamp"),
        staff: staff(mh.child("StaffInfo")),
        ..Default::default()
    };
    if let Some(c) = mh.child("Code") {
        p.code_number = c.text_of("CodeNumber");
        p.code_notation = c.text_of("CodeNotation");
    }
    if let Some(c) = mh.child("PromulgationInfo") {
        p.promulgation_place = c.text_of("Place");
        p.promulgation_date = c.text_of("PromulgationDate");
    }
    if let Some(c) = mh.child("DocumentType") {
        p.document_type = c.text_of("Type");
        p.document_type_detail = c.text_of("TypeDetail");
        p.document_type_name = c.text_of("TypeName");
    }
    if let Some(c) = mh.child("SignerInfo") {
        p.signer_competence = c.text_of("Competence");
        p.signer_position = c.text_of("Position");
        p.signer_full_name = c.text_of("FullName");
    }
    if let Some(c) = mh.child("ToPlaces") {
        p.to_places = c.all("Place").map(|e| e.text.trim().to_owned()).collect();
    }
    if let Some(o) = mh.child("OtherInfo") {
        let pr = o.text_of("Priority");
        if !pr.is_empty() {
            let n: u32 = pr.parse().map_err(|_| {
                EdxmlError::new(
                    "MessageHeader/OtherInfo/Priority",
                    format!("{pr:?} is not a number"),
                )
            })?;
            if n > 4 {
                return Err(EdxmlError::new(
                    "MessageHeader/OtherInfo/Priority",
                    format!("{n} is not 0-4"),
                ));
            }
            p.priority = Some(n);
        }
        p.sphere_of_promulgation = o.text_of("SphereOfPromulgation");
        p.typer_notation = o.text_of("TyperNotation");
        p.promulgation_amount = o.text_of("PromulgationAmount");
        p.page_amount = o.text_of("PageAmount");
        p.direction = o.text_of("Direction");
        p.appendixes = o.text_of("Appendixes");
    }
    if let Some(tl) = header.child("TraceHeaderList") {
        p.traces = tl
            .all("TraceHeader")
            .map(|t| Trace {
                organ_id: t.text_of("OrganId"),
                timestamp: t.text_of("Timestamp"),
            })
            .collect();
        if let Some(b) = tl.child("Bussiness") {
            let t = b.text_of("BussinessDocType");
            let doc_type: u8 = if t.is_empty() {
                0
            } else {
                t.parse().ok().filter(|n| *n <= 3).ok_or_else(|| {
                    EdxmlError::new(
                        "TraceHeaderList/Bussiness/BussinessDocType",
                        format!("{t:?} is not 0-3"),
                    )
                })?
            };
            let mut business = Business {
                document_id: b.text_of("DocumentId"),
                doc_type,
                reason: b.text_of("BussinessDocReason"),
                paper: b.text_of("Paper"),
                staff: staff(b.child("StaffInfo")),
                ..Default::default()
            };
            if let Some(list) = b.at(&["BussinessDocumentInfo", "ReceiverList"]) {
                for r in list.all("Receiver") {
                    let added = match r.text_of("ReceiverType").as_str() {
                        "0" => false,
                        "1" => true,
                        other => {
                            return Err(EdxmlError::new(
                                "Bussiness/BussinessDocumentInfo/ReceiverList/Receiver/ReceiverType",
                                format!("{other:?} is neither 1 (added) nor 0 (removed)"),
                            ));
                        }
                    };
                    business.receivers.push((r.text_of("OrganId"), added));
                }
            }
            if let Some(list) = b.child("ReplacementInfoList") {
                for r in list.all("ReplacementInfo") {
                    let organs = r
                        .child("OrganIdList")
                        .map(|l| l.all("OrganId").map(|o| o.text.trim().to_owned()).collect())
                        .unwrap_or_default();
                    business
                        .replacements
                        .push((r.text_of("DocumentId"), organs));
                }
            }
            p.business = Some(business);
        }
    }
    p.kind = if !p.status_code.is_empty() {
        Kind::Status
    } else {
        Kind::Document
    };
    match p.kind {
        Kind::Status => {
            if p.response_for.is_empty() || p.response_for[0].organ_id.is_empty() {
                return Err(EdxmlError::new(
                    "MessageHeader/ResponseFor",
                    "a status package names the document it answers",
                ));
            }
        }
        Kind::Document => {
            if p.to.is_empty() || p.to.iter().any(|o| o.organ_id.is_empty()) {
                return Err(EdxmlError::new(
                    "MessageHeader/To",
                    "a document names its recipients (To/OrganId)",
                ));
            }
        }
    }

    // Attachments: the manifest names them, AttachmentEncoded carries them.
    let refs: Vec<&El> = envelope
        .at(&["edXMLBody", "edXMLManifest"])
        .map(|m| m.all("Reference").collect())
        .unwrap_or_default();
    let encoded = root.child("AttachmentEncoded");
    let blobs: Vec<&El> = encoded
        .map(|e| e.all("Attachment").collect())
        .unwrap_or_default();
    if blobs.len() > limits.max_attachments {
        return Err(EdxmlError::new(
            "AttachmentEncoded",
            format!(
                "{} attachments, more than {}",
                blobs.len(),
                limits.max_attachments
            ),
        ));
    }
    // Every file the manifest names travels with the package.
    for (i, r) in refs.iter().enumerate() {
        let id = r.text_of("ContentId");
        if !id.is_empty() && !blobs.iter().any(|a| a.text_of("ContentId") == id) {
            return Err(EdxmlError::new(
                format!("edXMLManifest/Reference[{}]", i + 1),
                format!("no AttachmentEncoded/Attachment with ContentId {id}"),
            ));
        }
    }
    let mut total: u64 = 0;
    for (i, a) in blobs.iter().enumerate() {
        let element = format!("AttachmentEncoded/Attachment[{}]", i + 1);
        let content_id = a.text_of("ContentId");
        let reference = refs
            .iter()
            .find(|r| !content_id.is_empty() && r.text_of("ContentId") == content_id);
        let name = {
            let n = a.text_of("AttachmentName");
            if n.is_empty() {
                reference
                    .map(|r| r.text_of("AttachmentName"))
                    .unwrap_or_default()
            } else {
                n
            }
        };
        check_name(&name).map_err(|e| EdxmlError::new(format!("{element}/AttachmentName"), e))?;
        let payload = a
            .child("ContentTransferEncoded")
            .map(|e| e.text.as_str())
            .ok_or_else(|| EdxmlError::new(&element, "no ContentTransferEncoded"))?;
        // What is left of the package's budget bounds this one too.
        let left = limits.max_total_attachment_bytes.saturating_sub(total);
        let data = zipped::decode(
            &format!("{element}/ContentTransferEncoded"),
            payload,
            limits.max_attachment_bytes.min(left),
            limits,
        )
        .map_err(|e| match e {
            // The budget left, not the attachment's own limit, was the bound.
            zipped::DecodeError::OverLimit { element, .. }
                if left < limits.max_attachment_bytes =>
            {
                EdxmlError::new(
                    element,
                    format!(
                        "the attachments together are over the package's limit of {} bytes",
                        limits.max_total_attachment_bytes
                    ),
                )
            }
            e => e.into(),
        })?;
        total += data.len() as u64;
        p.attachments.push(Attachment {
            content_id,
            name,
            description: a.text_of("Description"),
            manifest_description: reference
                .map(|r| r.text_of("Description"))
                .unwrap_or_default(),
            manifest_content_type: reference
                .map(|r| r.text_of("ContentType"))
                .unwrap_or_default(),
            content_type: a.text_of("ContentType"),
            data,
        });
    }
    Ok(p)
}
