//! Who a certificate names: `urn:truc:node:<id>`, `urn:truc:organ:<OrganId>` or
//! `urn:truc:operator:<name>` in its subject alternative names.

use truc_core::{NodeId, OrganId};
use x509_parser::prelude::*;

use crate::PkiError;

pub const NODE_URN: &str = "urn:truc:node:";
pub const ORGAN_URN: &str = "urn:truc:organ:";
pub const OPERATOR_URN: &str = "urn:truc:operator:";
/// An operator certificate's role, in a second URI SAN; none means viewer.
pub const ROLE_URN: &str = "urn:truc:role:";

/// What an operator may do. Ordered: an operator may do what a viewer may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: nodes, queues, traces, stats, metrics, the dashboard.
    Viewer,
    /// Also acts: requeue, discard, directory changes.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("unknown role {other:?} (viewer or operator)")),
        }
    }
}

/// The identity a certificate carries. A certificate names exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Node(NodeId),
    Organ(OrganId),
    Operator(String),
}

/// Facts read off a certificate for display and checks.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub identity: Identity,
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
    /// For operator certificates: the role it grants (viewer when it names none).
    pub role: Option<Role>,
    /// Its key usage (if it has one) allows digitalSignature or nonRepudiation.
    pub may_sign: bool,
}

/// The DNS names and IP addresses a DER certificate is issued for, in its
/// order (a node's certificate: its id, localhost and loopback, and the
/// names its children and operators dial).
pub fn host_names(der: &[u8]) -> Result<Vec<String>, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse: {e}")))?;
    let san = cert.subject_alternative_name().map_err(|e| {
        PkiError::BadCertificate(format!(
            "{}: unreadable subject alternative names: {e}",
            cert.subject()
        ))
    })?;
    let mut out = Vec::new();
    for name in san.iter().flat_map(|s| &s.value.general_names) {
        match name {
            GeneralName::DNSName(d) => out.push((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => out.push(
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                        .to_string(),
                ),
                16 => out.push(
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                        .to_string(),
                ),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(out)
}

/// Reads the identity of a DER certificate. Fails if it names none or several.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse: {e}")))?;
    let mut found = Vec::new();
    let mut roles = Vec::new();
    let san = cert.subject_alternative_name().map_err(|e| {
        PkiError::BadCertificate(format!(
            "{}: unreadable subject alternative names: {e}",
            cert.subject()
        ))
    })?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(r) = uri.strip_prefix(ROLE_URN) {
                    roles.push(r.parse::<Role>().map_err(PkiError::BadCertificate)?);
                } else if let Some(id) = parse_urn(uri)? {
                    found.push(id);
                }
            }
        }
    }
    let identity = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(PkiError::BadCertificate(format!(
                "{} names no urn:truc identity",
                cert.subject()
            )));
        }
        _ => {
            return Err(PkiError::BadCertificate(format!(
                "{} names several urn:truc identities",
                cert.subject()
            )));
        }
    };
    let role = match (&identity, roles.as_slice()) {
        (Identity::Operator(_), []) => Some(Role::Viewer),
        (Identity::Operator(_), [r]) => Some(*r),
        (Identity::Operator(_), _) => {
            return Err(PkiError::BadCertificate(format!(
                "{} names several roles",
                cert.subject()
            )));
        }
        // A role on a node or agency certificate grants nothing; refuse the oddity.
        (_, []) => None,
        (_, _) => {
            return Err(PkiError::BadCertificate(format!(
                "{} is not an operator certificate but names a role",
                cert.subject()
            )));
        }
    };
    let may_sign = match cert.key_usage() {
        Ok(Some(ku)) => ku.value.digital_signature() || ku.value.non_repudiation(),
        Ok(None) => true,
        Err(e) => {
            return Err(PkiError::BadCertificate(format!(
                "{}: unreadable key usage: {e}",
                cert.subject()
            )));
        }
    };
    Ok(CertInfo {
        identity,
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
        role,
        may_sign,
    })
}

fn parse_urn(uri: &str) -> Result<Option<Identity>, PkiError> {
    let bad = |e: truc_core::IdError| PkiError::BadCertificate(format!("{uri}: {e}"));
    Ok(if let Some(id) = uri.strip_prefix(NODE_URN) {
        Some(Identity::Node(id.parse().map_err(bad)?))
    } else if let Some(id) = uri.strip_prefix(ORGAN_URN) {
        Some(Identity::Organ(id.parse().map_err(bad)?))
    } else {
        uri.strip_prefix(OPERATOR_URN)
            .map(|name| Identity::Operator(name.to_owned()))
    })
}

/// The node a certificate names, or why it names none.
pub fn node_id(der: &[u8]) -> Result<NodeId, PkiError> {
    match cert_info(der)?.identity {
        Identity::Node(id) => Ok(id),
        other => Err(PkiError::BadCertificate(format!(
            "expected a node certificate, got {other:?}"
        ))),
    }
}

/// The operator a certificate names and its role, or why it names none.
pub fn operator(der: &[u8]) -> Result<(String, Role), PkiError> {
    let info = cert_info(der)?;
    match (info.identity, info.role) {
        (Identity::Operator(name), Some(role)) => Ok((name, role)),
        (other, _) => Err(PkiError::BadCertificate(format!(
            "expected an operator certificate, got {other:?}"
        ))),
    }
}

/// The raw serial number of a DER certificate (for revocation lists).
pub fn serial(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse: {e}")))?;
    Ok(cert.tbs_certificate.raw_serial().to_vec())
}

/// What a CRL says, read in one parse.
pub struct CrlFacts {
    /// Revoked serial numbers (raw big-endian).
    pub revoked: Vec<Vec<u8>>,
    /// When it is due to be replaced (Unix seconds), if it says.
    pub next_update: Option<i64>,
}

/// Parses a DER certificate revocation list: the serial numbers it revokes
/// and when it is due to be replaced.
pub fn crl_facts(crl_der: &[u8]) -> Result<CrlFacts, PkiError> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der)
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse revocation list: {e}")))?;
    Ok(CrlFacts {
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect(),
        next_update: crl.next_update().map(|t| t.timestamp()),
    })
}
