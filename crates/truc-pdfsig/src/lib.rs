//! Verification of the signatures embedded in a PDF (PAdES baseline B /
//! `adbe.pkcs7.detached` / `ETSI.CAdES.detached`): bytes in, verdict out.
//!
//! Vietnamese official documents carry their legally binding signature inside
//! the attached PDF. [`verify_pdf`] finds every signature dictionary and checks,
//! for each:
//!
//! 1. **Byte range**: `/ByteRange [a b c d]` starts at 0, stays inside the file,
//!    does not overlap itself, its hole is exactly the `<...>` hex string of the
//!    same dictionary's `/Contents`, and the `/ByteRange` entry itself is signed.
//!    If bytes follow `c + d` (an incremental update after signing) and no
//!    other signature covers the whole file, the verdict is
//!    [`Verdict::Invalid`] "changed after signing: N bytes appended after the
//!    signed range". When a later signature does cover the whole file, the
//!    earlier one stays valid with `covers_whole_file: false`: what the later
//!    revisions changed is **not** examined (no DocMDP/FieldMDP check).
//! 2. **CMS**: `/Contents` is a DER ContentInfo holding a detached SignedData
//!    with exactly one SignerInfo, whose certificate (by issuer and serial
//!    number, or subject key identifier) is in `certificates`.
//! 3. **Digest**: SHA-256, SHA-384 or SHA-512 over the signed ranges equals the
//!    `messageDigest` signed attribute (SHA-1 is refused). Without signed
//!    attributes the signature is checked over the signed bytes directly.
//! 4. **Signature** over the original DER of the signed attributes (as a SET
//!    OF): ECDSA P-256/P-384 with SHA-256/384, RSA PKCS#1 v1.5 with SHA-256/384/
//!    512 (2048 bits or more) and RSA-PSS (salt of the hash's length; the PSS
//!    parameters are not read), verified with *ring*. A key usage extension must
//!    allow digital signatures or non-repudiation.
//! 5. **Chain**: with rustls-webpki from the signer's certificate through the
//!    other certificates of the CMS to one of the [`TrustAnchors`], any extended
//!    key usage accepted, at `now` (the claimed signing time, the `signingTime`
//!    signed attribute or the dictionary's `/M`, is only reported: without a
//!    trusted timestamp a key whose certificate expired or was revoked could
//!    claim any earlier time), against the anchors' revocation lists
//!    ([`TrustAnchors::set_crls`]) where they hold one for the issuer. An
//!    expired, not yet valid or revoked certificate, or a list past its next
//!    update, makes the signature [`Verdict::Invalid`] (for a list past its
//!    next update marked `revocation_unknown`: [`Report::is_final`] is false,
//!    a fresh list may change it); any other chain failure makes it
//!    [`Verdict::SignerUnknown`] with the signer's name. A signing time more
//!    than five minutes after `now` is invalid.
//!
//! The [`Report`] has one verdict per signature, oldest revision first, and
//! beside each the [`Signer`] its CMS names (name and certificate, for the
//! caller to read what this crate does not, such as an agency id in a
//! subject alternative name), and [`Report::summary`], the document's verdict.
//!
//! **Not checked** (left to a fuller PAdES validator): OCSP and the DSS
//! dictionary, signature time-stamps (so a signature whose certificate has
//! expired since is invalid, however early it claims to be), what incremental updates between two signatures changed
//! (DocMDP/FieldMDP, certification levels), the ESS signing-certificate
//! attribute of CAdES, document time-stamps (`/ETSI.RFC3161`, PAdES-LTA:
//! reported as [`Verdict::Invalid`] "not supported"), SHA-1 and RSA keys under
//! 2048 bits (refused), BER (indefinite length) CMS, and the visual
//! appearance. The PDF is not parsed as objects: signature dictionaries
//! are the dictionaries holding a `/ByteRange` entry, found in one pass over
//! the file's tokens that skips comments, strings and stream bodies (see the
//! `pdf` module notes in the source), which works because a signature's
//! `/Contents` must be a hole in the raw file bytes.
//!
//! Hostile input: nothing panics, numbers are checked, at most
//! 64 signatures and 4 MiB of `/Contents` hex per signature are examined, one
//! `/Contents` is decoded at a time (twice: once to learn its digest algorithm
//! before anything is hashed, once to check it), finding the signatures is one
//! linear pass, and the file is hashed about once whatever the number of
//! signatures: every byte range is a prefix `[0, b)` of the file and a tail
//! `[c, c + d)`, the prefixes are hashed together (once per digest algorithm
//! in use) and only the tails one by one. The tails of all signatures together
//! may be at most twice the file's length (beyond that the file is
//! [`Error::Malformed`]; those of signatures made in turn lie each in its own
//! revision, together at most the file). A signature without signed
//! attributes is verified over a copy of its signed bytes, hashed anew: such
//! copies may add up to eight times the file's length, signatures beyond that
//! are [`Verdict::Invalid`] "not checked".
//!
//! With the `sign` feature, [`sign_pdf`] appends a signature to a PDF (for tests
//! and demos; it is not a production signer) and [`simple_pdf`] makes a
//! one-page PDF.

#![forbid(unsafe_code)]

mod pdf;
#[cfg(feature = "sign")]
mod sign;
mod tlv;
mod verify;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};

use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, TrustAnchor, pem::PemObject,
};
use webpki::CertRevocationList;

pub use pdf::simple_pdf;
#[cfg(feature = "sign")]
pub use sign::sign_pdf;

/// Why a PDF could not be examined (a verdict could not be reached).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a PDF, or a signature dictionary that cannot be parsed.
    #[error("malformed PDF: {0}")]
    Malformed(String),
    /// A CA certificate that cannot serve as a trust anchor.
    #[error("trust anchors: {0}")]
    Anchors(String),
    /// `sign_pdf` could not sign.
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The CA certificates that signatures must chain to (the government's CAs),
/// and the revocation lists their certificates are checked against.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
    /// Shared by clones, replaced by [`Self::set_crls`].
    crls: Arc<RwLock<Arc<Vec<CertRevocationList<'static>>>>>,
}

impl TrustAnchors {
    /// Every `CERTIFICATE` of a PEM file (other PEM sections are ignored).
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Anchors(format!("PEM: {e}")))?;
        Self::from_der(&certs)
    }

    /// DER certificates, at least one.
    pub fn from_der(certs: &[Vec<u8>]) -> Result<Self, Error> {
        if certs.is_empty() {
            return Err(Error::Anchors("no CA certificate given".into()));
        }
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(c.as_slice()))
                    .map(|a| a.to_owned())
                    .map_err(|e| Error::Anchors(format!("certificate {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anchors,
            crls: Arc::default(),
        })
    }

    /// Checks signers' chains against `crls` from now on (for every clone):
    /// a revoked certificate signs nothing valid, and nothing is valid once
    /// a list is past its next update. A certificate whose issuer has no
    /// list here is checked for its chain only (PDF signers may come from
    /// CAs whose lists this node does not hold). Empty: no revocation check.
    pub fn set_crls(&self, crls: &[CertificateRevocationListDer<'_>]) -> Result<(), Error> {
        let parsed = crls
            .iter()
            .map(|c| webpki::OwnedCertRevocationList::from_der(c).map(CertRevocationList::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Anchors(format!("revocation list: {e:?}")))?;
        *self.crls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parsed);
        Ok(())
    }

    pub(crate) fn crls(&self) -> Arc<Vec<CertRevocationList<'static>>> {
        self.crls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many CAs are trusted.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Never true for anchors built by this crate.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// The verdict on one signature, or on the whole document ([`Report::summary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A well-formed PDF without any signature dictionary.
    Unsigned,
    /// The signature verifies and chains to a trust anchor.
    Valid {
        /// The signer certificate's subject CN (or whole subject).
        signer: String,
        /// The signer's claimed signing time, Unix ms: the `signingTime` signed
        /// attribute, else the dictionary's `/M`.
        signing_time_ms: Option<i64>,
        /// Whether the signature covers the whole file (else a later
        /// signature covers what was appended after it).
        covers_whole_file: bool,
    },
    /// Digest mismatch, bad signature, bad byte range, changed after signing,
    /// certificate expired or revoked, unsupported algorithm...
    Invalid {
        reason: String,
        /// The signer's revocation status cannot be known now (a revocation
        /// list past its next update): a fresh list may change this verdict.
        revocation_unknown: bool,
    },
    /// The signature verifies but its chain does not lead to a trust anchor.
    SignerUnknown { signer: String, reason: String },
}

impl Verdict {
    /// A short human sentence.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Unsigned => "not signed".into(),
            Verdict::Valid {
                signer,
                covers_whole_file,
                ..
            } => {
                if *covers_whole_file {
                    format!("valid signature by {signer}")
                } else {
                    format!("valid signature by {signer} (of an earlier revision)")
                }
            }
            Verdict::Invalid { reason, .. } => format!("invalid signature: {reason}"),
            Verdict::SignerUnknown { signer, reason } => {
                format!("signature by {signer}, who is not trusted: {reason}")
            }
        }
    }
}

/// The verdicts on every signature of a PDF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One per signature dictionary, in file order (oldest revision first).
    pub signatures: Vec<Verdict>,
    /// Who made each signature, in the same order as `signatures`: `None`
    /// where its CMS or certificate could not be read (the verdict says why).
    /// Known for some invalid signatures too (a changed file, a bad
    /// signature, a revoked key, a digest algorithm not supported), not where
    /// the byte range or the CMS could not be read; trustworthy only where the
    /// verdict is [`Verdict::Valid`].
    pub signers: Vec<Option<Signer>>,
}

/// The certificate a signature names as its signer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The certificate's subject CN (or whole subject).
    pub name: String,
    /// The certificate, DER: for what this crate does not read (the
    /// caller's identifiers in its subject alternative names).
    pub certificate: Vec<u8>,
}

impl Report {
    /// Whether the verdicts hold for good: none of them waits on a
    /// revocation list past its next update.
    pub fn is_final(&self) -> bool {
        !self.signatures.iter().any(|v| {
            matches!(
                v,
                Verdict::Invalid {
                    revocation_unknown: true,
                    ..
                }
            )
        })
    }

    /// The document's verdict: the first invalid signature if any, else the
    /// first untrusted one, else the valid signature that covers the whole file
    /// (the last valid one otherwise), and [`Verdict::Unsigned`] if none.
    pub fn summary(&self) -> Verdict {
        let s = &self.signatures;
        if let Some(v) = s.iter().find(|v| matches!(v, Verdict::Invalid { .. })) {
            return v.clone();
        }
        if let Some(v) = s
            .iter()
            .find(|v| matches!(v, Verdict::SignerUnknown { .. }))
        {
            return v.clone();
        }
        s.iter()
            .rev()
            .find(|v| {
                matches!(
                    v,
                    Verdict::Valid {
                        covers_whole_file: true,
                        ..
                    }
                )
            })
            .or_else(|| s.last())
            .cloned()
            .unwrap_or(Verdict::Unsigned)
    }
}

/// The tails `[c, c + d)` of the byte ranges of all signatures, which cannot
/// be hashed together, may add up to at most this many times the file's
/// length. The tail of a signature made by an incremental update lies in its
/// own revision (after its `/Contents`, up to the end of that revision), so
/// those of signatures made in turn are disjoint and add up to at most the
/// file, however many there are: twice leaves room for odd layouts (a leftover
/// placeholder dictionary) while a hostile file cannot make the verifier hash
/// its tail many times over.
const MAX_TAILS_PER_BYTE: u64 = 2;

/// A signature without signed attributes is verified by *ring* over a copy of
/// its signed bytes, hashed anew (no shared prefix): such copies may add up to
/// at most this many times the file's length (the others are invalid, "not
/// checked"). PAdES signatures always have signed attributes.
pub(crate) const MAX_COPIED_PER_BYTE: u64 = 8;

/// Whether `bytes` start as a PDF does: a `%PDF-` header in the first KiB
/// (where readers look for it), as [`verify_pdf`] requires.
pub fn has_pdf_header(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(1024)]
        .windows(5)
        .any(|w| w == b"%PDF-")
}

/// Verifies every signature of `pdf` against `anchors`, at `now_ms` (Unix ms;
/// a claimed signing time after it is refused).
///
/// `Err(Error::Malformed)` when `pdf` is not a PDF (no `%PDF-` header in its
/// first KiB; an unsigned one must also end with `%%EOF`) or a signature
/// dictionary cannot be parsed (`/ByteRange` not four integers or given twice,
/// `/Contents` missing or not hex), or the tails `[c, c + d)` of the byte
/// ranges of all signatures add up to more than twice the file's length (see
/// the crate documentation). Everything wrong with a parsed signature is a
/// [`Verdict::Invalid`] in the report.
pub fn verify_pdf(pdf: &[u8], anchors: &TrustAnchors, now_ms: i64) -> Result<Report, Error> {
    if !has_pdf_header(pdf) {
        return Err(Error::Malformed(
            "not a PDF: no %PDF- header in the first 1024 bytes".into(),
        ));
    }
    let dicts = pdf::signature_dicts(pdf)?;
    if dicts.is_empty() {
        let tail = &pdf[pdf.len().saturating_sub(1024)..];
        if !tail.windows(5).any(|w| w == b"%%EOF") {
            return Err(Error::Malformed(
                "no %%EOF in the last 1024 bytes: truncated file?".into(),
            ));
        }
        return Ok(Report {
            signatures: Vec::new(),
            signers: Vec::new(),
        });
    }
    // The prefixes [0, b) of the byte ranges are hashed together, the tails
    // [c, c + d) one by one: together a bounded number of times the file.
    let len = pdf.len() as u64;
    let tails: u64 = dicts
        .iter()
        .filter_map(|d| verify::ranges(d, pdf.len()).ok())
        .map(|[_, (c, e)]| (e - c) as u64)
        .sum();
    if tails > MAX_TAILS_PER_BYTE.saturating_mul(len) {
        return Err(Error::Malformed(format!(
            "the byte ranges of the {} signatures end in tails ([c, c + d)) that add up to {tails} bytes to hash one by one, more than {MAX_TAILS_PER_BYTE} times the file's {len} bytes",
            dicts.len()
        )));
    }
    // A first look at each signature (one /Contents decoded at a time) tells
    // which digest algorithm its signed bytes need, then all are hashed.
    let prepared: Vec<Result<Option<verify::Hash>, Verdict>> =
        dicts.iter().map(|d| verify::prepare(pdf, d)).collect();
    let wanted: Vec<Option<verify::Hash>> = prepared
        .iter()
        .map(|p| p.as_ref().ok().copied().flatten())
        .collect();
    let digests = verify::signed_digests(pdf, &dicts, &wanted);
    let mut copy_budget = MAX_COPIED_PER_BYTE.saturating_mul(len);
    let ends: Vec<Option<u64>> = dicts
        .iter()
        .map(|d| d.byte_range[2].checked_add(d.byte_range[3]))
        .collect();
    let someone_covers_all = ends.contains(&Some(len));
    let (signatures, signers) = dicts
        .iter()
        .zip(&ends)
        .zip(prepared.into_iter().zip(&digests))
        .map(|((d, end), (prepared, digest))| {
            let (mut verdict, signer) = match prepared {
                Ok(_) => verify::check(
                    pdf,
                    d,
                    anchors,
                    now_ms,
                    digest.as_ref().map(|d| d.as_ref()),
                    &mut copy_budget,
                ),
                Err(verdict) => (verdict, None),
            };
            let sub = d.sub_filter.as_deref().unwrap_or("");
            let covers = *end == Some(len);
            if !covers
                && !someone_covers_all
                && !matches!(verdict, Verdict::Invalid { .. })
                && let Some(e) = end
            {
                verdict = Verdict::Invalid {
                    reason: format!(
                        "changed after signing: {} bytes appended after the signed range",
                        len.saturating_sub(*e)
                    ),
                    revocation_unknown: false,
                };
            }
            if let Verdict::Valid {
                covers_whole_file, ..
            } = &mut verdict
            {
                *covers_whole_file = covers;
            }
            if let Verdict::Invalid { reason, .. } = &mut verdict
                && !sub.is_empty()
                && !matches!(sub, "adbe.pkcs7.detached" | "ETSI.CAdES.detached")
            {
                reason.push_str(&format!(" (/SubFilter /{sub} is not supported)"));
            }
            (verdict, signer)
        })
        .unzip();
    Ok(Report {
        signatures,
        signers,
    })
}
