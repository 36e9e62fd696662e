//! From [`Package`] to XML: prefixed envelope children (some receivers insist),
//! unprefixed `AttachmentEncoded` children, base64 ZIP attachments.

use quick_xml::escape::escape;

use crate::{Kind, NS, Organ, Package, Staff, zipped};

struct W {
    out: String,
}

impl W {
    fn open(&mut self, name: &str) {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
    }
    fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }
    fn leaf(&mut self, name: &str, text: &str) {
        if text.is_empty() {
            return;
        }
        self.open(name);
        // Characters XML does not allow (a vertical tab pasted from a word
        // processor) are left out: a strict receiver refuses the whole package.
        if text.chars().all(crate::dom::is_xml_char) {
            self.out.push_str(&escape(text));
        } else {
            let clean: String = text
                .chars()
                .filter(|c| crate::dom::is_xml_char(*c))
                .collect();
            self.out.push_str(&escape(&clean));
        }
        self.close(name);
    }
    fn organ(&mut self, tag: &str, o: &Organ) {
        self.open(tag);
        self.leaf("edXML:OrganId", &o.organ_id);
        self.leaf("edXML:OrganizationInCharge", &o.organization_in_charge);
        self.leaf("edXML:OrganName", &o.organ_name);
        self.leaf("edXML:OrganAdd", &o.organ_add);
        self.leaf("edXML:Email", &o.email);
        self.leaf("edXML:Telephone", &o.telephone);
        self.leaf("edXML:Fax", &o.fax);
        self.leaf("edXML:Website", &o.website);
        self.close(tag);
    }
    fn staff(&mut self, s: &Staff) {
        if s == &Staff::default() {
            return;
        }
        self.open("edXML:StaffInfo");
        self.leaf("edXML:Department", &s.department);
        self.leaf("edXML:Staff", &s.staff);
        self.leaf("edXML:Mobile", &s.mobile);
        self.leaf("edXML:Email", &s.email);
        self.close("edXML:StaffInfo");
    }
}

/// Writes a package.
pub fn emit(p: &Package) -> Vec<u8> {
    let mut w = W {
        out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
    };
    w.out.push_str(&format!(
        "<edXML xmlns=\"{NS}\"><edXML:edXMLEnvelope xmlns:edXML=\"{NS}\">"
    ));
    w.open("edXML:edXMLHeader");
    w.open("edXML:MessageHeader");
    w.organ("edXML:From", &p.from);
    if p.kind == Kind::Document {
        for t in &p.to {
            w.organ("edXML:To", t);
        }
    }
    for r in &p.response_for {
        w.open("edXML:ResponseFor");
        w.leaf("edXML:OrganId", &r.organ_id);
        w.leaf("edXML:Code", &r.code);
        w.leaf("edXML:PromulgationDate", &r.promulgation_date);
        w.leaf("edXML:DocumentId", &r.document_id);
        w.close("edXML:ResponseFor");
    }
    match p.kind {
        Kind::Status => {
            w.staff(&p.staff);
            w.leaf("edXML:StatusCode", &p.status_code);
            w.leaf("edXML:Description", &p.description);
            w.leaf("edXML:Timestamp", &p.timestamp);
        }
        Kind::Document => {
            w.leaf("edXML:DocumentId", &p.document_id);
            if !p.code_number.is_empty() || !p.code_notation.is_empty() {
                w.open("edXML:Code");
                w.leaf("edXML:CodeNumber", &p.code_number);
                w.leaf("edXML:CodeNotation", &p.code_notation);
                w.close("edXML:Code");
            }
            if !p.promulgation_place.is_empty() || !p.promulgation_date.is_empty() {
                w.open("edXML:PromulgationInfo");
                w.leaf("edXML:Place", &p.promulgation_place);
                w.leaf("edXML:PromulgationDate", &p.promulgation_date);
                w.close("edXML:PromulgationInfo");
            }
            if !p.document_type.is_empty()
                || !p.document_type_detail.is_empty()
                || !p.document_type_name.is_empty()
            {
                w.open("edXML:DocumentType");
                w.leaf("edXML:Type", &p.document_type);
                w.leaf("edXML:TypeDetail", &p.document_type_detail);
                w.leaf("edXML:TypeName", &p.document_type_name);
                w.close("edXML:DocumentType");
            }
            w.leaf("edXML:Subject", &p.subject);
            w.leaf("edXML:Content", &p.content);
            if !p.signer_full_name.is_empty()
                || !p.signer_position.is_empty()
                || !p.signer_competence.is_empty()
            {
                w.open("edXML:SignerInfo");
                w.leaf("edXML:Competence", &p.signer_competence);
                w.leaf("edXML:Position", &p.signer_position);
                w.leaf("edXML:FullName", &p.signer_full_name);
                w.close("edXML:SignerInfo");
            }
            w.leaf("edXML:DueDate", &p.due_date);
            if !p.to_places.is_empty() {
                w.open("edXML:ToPlaces");
                for pl in &p.to_places {
                    w.leaf("edXML:Place", pl);
                }
                w.close("edXML:ToPlaces");
            }
            w.open("edXML:OtherInfo");
            if let Some(priority) = p.priority {
                w.leaf("edXML:Priority", &priority.to_string());
            }
            w.leaf("edXML:SphereOfPromulgation", &p.sphere_of_promulgation);
            w.leaf("edXML:TyperNotation", &p.typer_notation);
            w.leaf("edXML:PromulgationAmount", &p.promulgation_amount);
            w.leaf("edXML:PageAmount", &p.page_amount);
            w.leaf("edXML:Direction", &p.direction);
            w.leaf("edXML:Appendixes", &p.appendixes);
            w.close("edXML:OtherInfo");
            w.leaf("edXML:SteeringType", &p.steering_type);
        }
    }
    w.close("edXML:MessageHeader");
    w.open("edXML:TraceHeaderList");
    for t in &p.traces {
        w.open("edXML:TraceHeader");
        w.leaf("edXML:OrganId", &t.organ_id);
        w.leaf("edXML:Timestamp", &t.timestamp);
        w.close("edXML:TraceHeader");
    }
    if let Some(b) = &p.business {
        w.open("edXML:Bussiness");
        w.leaf("edXML:DocumentId", &b.document_id);
        w.leaf("edXML:BussinessDocType", &b.doc_type.to_string());
        w.leaf("edXML:BussinessDocReason", &b.reason);
        w.leaf("edXML:Paper", &b.paper);
        w.staff(&b.staff);
        if !b.receivers.is_empty() {
            w.open("edXML:BussinessDocumentInfo");
            w.open("edXML:ReceiverList");
            for (o, added) in &b.receivers {
                w.open("edXML:Receiver");
                w.leaf("edXML:ReceiverType", if *added { "1" } else { "0" });
                w.leaf("edXML:OrganId", o);
                w.close("edXML:Receiver");
            }
            w.close("edXML:ReceiverList");
            w.close("edXML:BussinessDocumentInfo");
        }
        if !b.replacements.is_empty() {
            w.open("edXML:ReplacementInfoList");
            for (d, organs) in &b.replacements {
                w.open("edXML:ReplacementInfo");
                w.leaf("edXML:DocumentId", d);
                w.open("edXML:OrganIdList");
                for o in organs {
                    w.leaf("edXML:OrganId", o);
                }
                w.close("edXML:OrganIdList");
                w.close("edXML:ReplacementInfo");
            }
            w.close("edXML:ReplacementInfoList");
        }
        w.close("edXML:Bussiness");
    }
    w.close("edXML:TraceHeaderList");
    w.close("edXML:edXMLHeader");
    w.open("edXML:edXMLBody");
    w.out.push_str("<edXML:edXMLManifest version=\"1.0\">");
    for (i, a) in p.attachments.iter().enumerate() {
        let cid = if a.content_id.is_empty() {
            format!("cid:{}", i + 1)
        } else {
            a.content_id.clone()
        };
        w.open("edXML:Reference");
        w.leaf("edXML:ContentId", &cid);
        w.leaf(
            "edXML:ContentType",
            if a.manifest_content_type.is_empty() {
                "application/octet-stream"
            } else {
                &a.manifest_content_type
            },
        );
        // Packages kept before the manifest's own Description was: the
        // attachment's, as they were written then.
        w.leaf(
            "edXML:Description",
            if a.manifest_description.is_empty() {
                &a.description
            } else {
                &a.manifest_description
            },
        );
        w.leaf("edXML:AttachmentName", &a.name);
        w.close("edXML:Reference");
    }
    w.out.push_str("</edXML:edXMLManifest>");
    w.close("edXML:edXMLBody");
    w.out.push_str("</edXML:edXMLEnvelope>");
    if !p.attachments.is_empty() {
        w.open("AttachmentEncoded");
        for (i, a) in p.attachments.iter().enumerate() {
            let cid = if a.content_id.is_empty() {
                format!("cid:{}", i + 1)
            } else {
                a.content_id.clone()
            };
            w.open("Attachment");
            w.leaf("ContentId", &cid);
            w.leaf("AttachmentName", &a.name);
            w.leaf("Description", &a.description);
            w.leaf("ContentType", "application/zip");
            w.open("edXML:ContentTransferEncoded");
            w.out.push_str(&zipped::encode(&a.name, &a.data));
            w.close("edXML:ContentTransferEncoded");
            w.close("Attachment");
        }
        w.close("AttachmentEncoded");
    }
    w.out.push_str("</edXML>\n");
    w.out.into_bytes()
}
