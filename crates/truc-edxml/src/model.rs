//! A package as plain data. Fields follow the standard's element names.

use serde::{Deserialize, Serialize};

/// Document package or status package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Kind {
    #[default]
    Document,
    Status,
}

/// `From`, `To`, `ResponseFor` agencies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Organ {
    pub organ_id: String,
    pub organization_in_charge: String,
    pub organ_name: String,
    pub organ_add: String,
    pub email: String,
    pub telephone: String,
    pub fax: String,
    pub website: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponseFor {
    pub organ_id: String,
    pub code: String,
    pub promulgation_date: String,
    pub document_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Staff {
    pub department: String,
    pub staff: String,
    pub mobile: String,
    pub email: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Trace {
    pub organ_id: String,
    /// `yyyy/MM/dd HH:mm:ss`, local time.
    pub timestamp: String,
}

/// `TraceHeaderList/Bussiness`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Business {
    pub document_id: String,
    /// 0 new, 1 revoke, 2 update, 3 replace.
    pub doc_type: u8,
    pub reason: String,
    pub paper: String,
    pub staff: Staff,
    /// Update: (OrganId, added) from `BussinessDocumentInfo/ReceiverList`.
    pub receivers: Vec<(String, bool)>,
    /// Replace: (DocumentId, OrganIds) from `ReplacementInfoList`.
    pub replacements: Vec<(String, Vec<String>)>,
}

/// One attachment: manifest reference and decoded bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attachment {
    pub content_id: String,
    pub name: String,
    pub description: String,
    /// The manifest Reference's own Description, when it has one.
    pub manifest_description: String,
    /// As the manifest says (may differ from `content_type`).
    pub manifest_content_type: String,
    /// As the attachment says (often application/zip).
    pub content_type: String,
    /// The file inside the ZIP.
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// A document or status package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Package {
    pub kind: Kind,
    pub from: Organ,
    /// The routing list (documents).
    pub to: Vec<Organ>,
    pub document_id: String,
    pub code_number: String,
    pub code_notation: String,
    pub promulgation_place: String,
    /// `yyyy/MM/dd`.
    pub promulgation_date: String,
    pub document_type: String,
    pub document_type_detail: String,
    pub document_type_name: String,
    pub subject: String,
    pub content: String,
    pub signer_competence: String,
    pub signer_position: String,
    pub signer_full_name: String,
    pub due_date: String,
    pub to_places: Vec<String>,
    /// `OtherInfo`: 0 normal … 4 timed express.
    pub priority: Option<u32>,
    pub sphere_of_promulgation: String,
    pub typer_notation: String,
    pub promulgation_amount: String,
    pub page_amount: String,
    pub direction: String,
    pub appendixes: String,
    pub response_for: Vec<ResponseFor>,
    pub steering_type: String,
    pub traces: Vec<Trace>,
    pub business: Option<Business>,
    // Status packages.
    pub status_code: String,
    pub description: String,
    pub timestamp: String,
    pub staff: Staff,
    pub attachments: Vec<Attachment>,
}

impl Package {
    /// The agency a package goes to: the `To` list, or for a status the
    /// `ResponseFor` agency.
    pub fn recipients(&self) -> Vec<String> {
        match self.kind {
            Kind::Document => self.to.iter().map(|o| o.organ_id.clone()).collect(),
            Kind::Status => self
                .response_for
                .iter()
                .map(|r| r.organ_id.clone())
                .take(1)
                .collect(),
        }
    }
}
