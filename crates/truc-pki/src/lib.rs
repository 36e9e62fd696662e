//! truc's trust layer.
//!
//! Two PKIs (DESIGN §3): the *transport* CA issues node certificates
//! (`urn:truc:node:<id>`) used for mTLS; the *signing* CA issues one certificate per
//! agency (`urn:truc:organ:<OrganId>`) whose key signs envelope header bytes.
//! The hub never holds an agency key; it only verifies.
//!
//! - [`dev`]: generate a development PKI with rcgen (`truc certs init`).
//! - [`tls`]: rustls configs, TLS 1.3 only, client certificates required, CRLs honoured.
//! - [`identity`]: read who a certificate names.
//! - [`sign`]: sign and verify envelope bytes against the signing CA.

#![forbid(unsafe_code)]

pub mod dev;
pub mod identity;
pub mod sign;
pub mod tls;

use std::path::{Path, PathBuf};

use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject,
};

/// Everything that can go wrong in this crate, each naming what it failed on.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: invalid PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("signing key: {0}")]
    Key(String),
    #[error(transparent)]
    Signature(#[from] sign::VerifyError),
}

/// The process-wide crypto provider: ring, and only ring (see STACK.md trap 1).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default provider; harmless if already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads every certificate of a PEM file, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoPem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Loads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PkiError::NoPem {
            path: path.to_owned(),
            what: "private key",
        },
        other => PkiError::BadPem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// Loads every CRL of a PEM file, or the one CRL of a DER file (as CAs
/// publish them). A file with none is an error, not an empty list: an empty
/// list would check no revocation at all (a wrong file, or one caught
/// half-rewritten).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let bytes = read(path)?;
    // DER: one ASN.1 SEQUENCE. PEM is text and never starts with 0x30.
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(PkiError::NoPem {
            path: path.to_owned(),
            what: "certificate revocation list",
        });
    }
    Ok(crls)
}
