//! The checks of one signature: byte range, CMS, digest, signature, chain.

use std::time::Duration;

use cms::{
    content_info::ContentInfo,
    signed_data::{SignedData, SignerIdentifier, SignerInfo},
};
use der::{
    Decode, Encode,
    asn1::{ObjectIdentifier, OctetString},
};
use ring::{digest, signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyPurposeIdIter};
use x509_cert::{Certificate, ext::pkix::SubjectKeyIdentifier, time::Time};

use crate::{Signer, TrustAnchors, Verdict, pdf::SigDict, tlv};

pub(crate) const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
pub(crate) const ID_SIGNED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
pub(crate) const ID_CONTENT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
pub(crate) const ID_MESSAGE_DIGEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
pub(crate) const ID_SIGNING_TIME: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
pub(crate) const ID_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
pub(crate) const ID_SHA384: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
pub(crate) const ID_SHA512: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub(crate) const ECDSA_WITH_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

/// A claimed signing time may be this far ahead of `now` (clock skew).
const FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: &ObjectIdentifier) -> Result<Self, String> {
        match *oid {
            ID_SHA256 => Ok(Hash::Sha256),
            ID_SHA384 => Ok(Hash::Sha384),
            ID_SHA512 => Ok(Hash::Sha512),
            ID_SHA1 => Err("SHA-1 digests are not accepted".into()),
            other => Err(format!("unsupported digest algorithm {other}")),
        }
    }

    pub(crate) fn ring(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        }
    }
}

fn invalid(reason: impl Into<String>) -> Verdict {
    Verdict::Invalid {
        reason: reason.into(),
        revocation_unknown: false,
    }
}

/// The signed ranges `[0, b)` and `[c, c + d)`, if sane for a file of `len` bytes.
pub(crate) fn ranges(sig: &SigDict, len: usize) -> Result<[(usize, usize); 2], String> {
    let [a, b, c, d] = sig.byte_range;
    if a != 0 {
        return Err(format!("the byte range starts at {a}, not at 0"));
    }
    let len64 = len as u64;
    let end = c
        .checked_add(d)
        .filter(|e| *e <= len64)
        .ok_or_else(|| {
            format!(
                "the byte range [{a} {b} {c} {d}] ends beyond the end of the file ({len} bytes): truncated?"
            )
        })?;
    if b >= c {
        return Err(format!("the byte range [{a} {b} {c} {d}] overlaps itself"));
    }
    let (b, c, end) = (b as usize, c as usize, end as usize);
    if (b, c) != sig.contents_span {
        return Err(format!(
            "the unsigned hole [{b}, {c}) of the byte range is not the /Contents hex string at [{}, {})",
            sig.contents_span.0, sig.contents_span.1
        ));
    }
    let (s, e) = sig.byte_range_span;
    if e > end {
        return Err("the /ByteRange entry itself is not covered by the signature".into());
    }
    debug_assert!(s < b || s >= c);
    Ok([(0, b), (c, end)])
}

#[cfg(test)]
thread_local! {
    /// How many bytes the digests of this thread have hashed (tests only).
    pub(crate) static HASHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_hashed(n: usize) {
    #[cfg(test)]
    HASHED.with(|h| h.set(h.get().saturating_add(n as u64)));
    #[cfg(not(test))]
    let _ = n;
}

fn update(ctx: &mut digest::Context, bytes: &[u8]) {
    count_hashed(bytes.len());
    ctx.update(bytes);
}

/// A signature's CMS, decoded and checked as far as the signer's
/// certificate; `hash` is its digest algorithm, or why that is not supported
/// (reported by `check`, which names the signer first).
struct Cms<'a> {
    sd: SignedData,
    si: SignerInfo,
    raw: tlv::RawSignedData<'a>,
    signer_der: &'a [u8],
    signer_cert: Certificate,
    hash: Result<Hash, String>,
}

impl Cms<'_> {
    /// Whether the signature is over signed attributes, whose messageDigest
    /// the digest of the signed bytes must equal. Without them (or when they
    /// cannot be located, which `check` refuses) no digest is needed.
    fn needs_digest(&self) -> bool {
        self.si.signed_attrs.is_some() && self.raw.signed_attrs.is_some()
    }
}

fn decode_cms(contents: &[u8]) -> Result<Cms<'_>, Verdict> {
    if contents.iter().all(|b| *b == 0) {
        return Err(invalid(
            "/Contents is empty: the signature placeholder was never filled in",
        ));
    }
    // The CMS is the first TLV; the rest of /Contents is zero padding.
    let (ci_tlv, padding) = tlv::read(contents)
        .ok_or_else(|| invalid("/Contents does not hold a DER-encoded CMS ContentInfo"))?;
    if padding.iter().any(|b| *b != 0) {
        return Err(invalid("/Contents has data after the CMS ContentInfo"));
    }
    let ci = ContentInfo::from_der(ci_tlv.raw)
        .map_err(|e| invalid(format!("/Contents is not a CMS ContentInfo: {e}")))?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(invalid(format!(
            "the CMS content is {}, not SignedData",
            ci.content_type
        )));
    }
    let sd: SignedData = ci
        .content
        .decode_as()
        .map_err(|e| invalid(format!("the CMS SignedData cannot be decoded: {e}")))?;
    let raw = tlv::raw_signed_data(ci_tlv.raw)
        .ok_or_else(|| invalid("the CMS SignedData must hold exactly one SignerInfo"))?;
    let infos: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    let [si] = infos.as_slice() else {
        return Err(invalid(format!(
            "the CMS SignedData holds {} SignerInfos, expected one",
            infos.len()
        )));
    };
    let si = (*si).clone();
    if sd.encap_content_info.econtent_type != ID_DATA {
        return Err(invalid(format!(
            "the signed content type is {}, not id-data",
            sd.encap_content_info.econtent_type
        )));
    }
    if sd.encap_content_info.econtent.is_some() {
        return Err(invalid(
            "the CMS SignedData encapsulates its content: not a detached signature",
        ));
    }

    // The signer's certificate.
    let (signer_der, signer_cert) = raw
        .certificates
        .iter()
        .find_map(|c| {
            Certificate::from_der(c)
                .ok()
                .filter(|cert| is_signer(cert, &si.sid))
                .map(|cert| (*c, cert))
        })
        .ok_or_else(|| invalid("the signer's certificate is not in the CMS"))?;
    let hash = Hash::from_oid(&si.digest_alg.oid);
    Ok(Cms {
        sd,
        si,
        raw,
        signer_der,
        signer_cert,
        hash,
    })
}

/// The first look at one signature dictionary, before anything is hashed:
/// `Err` with its verdict when that is already decided (bad byte range or CMS),
/// else the algorithm its signed bytes must be hashed with
/// ([`signed_digests`]), `None` when it needs no digest (no signed
/// attributes: `check` verifies the signature over the signed bytes) or has
/// one that is not supported (`check` says so, naming the signer).
pub(crate) fn prepare(pdf: &[u8], sig: &SigDict) -> Result<Option<Hash>, Verdict> {
    ranges(sig, pdf.len()).map_err(invalid)?;
    // Decoded here and again in `check`, one signature at a time.
    let contents = sig.contents(pdf);
    let cms = decode_cms(&contents)?;
    Ok(cms
        .hash
        .as_ref()
        .ok()
        .filter(|_| cms.needs_digest())
        .copied())
}

/// The digest of the signed bytes `[0, b) + [c, c + d)` of every signature
/// whose `wanted` entry names an algorithm (the others get `None`).
///
/// Every byte range starts with a prefix `[0, b)` of the file, so the
/// prefixes are hashed together: for each algorithm in use, one context reads
/// the file once, in increasing `b`, and is cloned at each signature's `b` to
/// add that signature's tail `[c, c + d)`. Hashed in all: at most the file once
/// per algorithm, plus the tails.
pub(crate) fn signed_digests(
    pdf: &[u8],
    dicts: &[SigDict],
    wanted: &[Option<Hash>],
) -> Vec<Option<digest::Digest>> {
    let mut out = vec![None; dicts.len()];
    for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
        let mut todo: Vec<(usize, [(usize, usize); 2])> = dicts
            .iter()
            .zip(wanted)
            .enumerate()
            .filter(|(_, (_, w))| **w == Some(hash))
            .filter_map(|(i, (d, _))| ranges(d, pdf.len()).ok().map(|r| (i, r)))
            .collect();
        if todo.is_empty() {
            continue;
        }
        todo.sort_by_key(|(_, [(_, b), _])| *b);
        let mut prefix = digest::Context::new(hash.ring());
        let mut hashed_to = 0;
        for (i, [(_, b), (c, e)]) in todo {
            update(&mut prefix, &pdf[hashed_to..b]);
            hashed_to = b;
            let mut ctx = prefix.clone();
            update(&mut ctx, &pdf[c..e]);
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(ctx.finish());
            }
        }
    }
    out
}

/// Checks one signature dictionary of `pdf` (everything but what depends on the
/// other signatures: whether bytes after its range are covered by a later one),
/// once [`prepare`] found nothing wrong with it. `digest`: the digest of its
/// signed bytes, with the algorithm `prepare` gave ([`signed_digests`]). A signature without signed
/// attributes is verified over a copy of its signed bytes, taken from
/// `copy_budget` (bytes; none left: invalid, not checked). With the verdict,
/// the signer's certificate when the CMS names one that can be read.
pub(crate) fn check(
    pdf: &[u8],
    sig: &SigDict,
    anchors: &TrustAnchors,
    now_ms: i64,
    content_digest: Option<&[u8]>,
    copy_budget: &mut u64,
) -> (Verdict, Option<Signer>) {
    let mut signer = None;
    let verdict = check_inner(
        pdf,
        sig,
        anchors,
        now_ms,
        content_digest,
        copy_budget,
        &mut signer,
    )
    .unwrap_or_else(|v| v);
    (verdict, signer)
}

fn check_inner(
    pdf: &[u8],
    sig: &SigDict,
    anchors: &TrustAnchors,
    now_ms: i64,
    content_digest: Option<&[u8]>,
    copy_budget: &mut u64,
    signer_out: &mut Option<Signer>,
) -> Result<Verdict, Verdict> {
    let ranges = ranges(sig, pdf.len()).map_err(invalid)?;
    // Decoded here, one signature at a time (not kept for every dictionary);
    // `prepare` decoded it the same way.
    let contents = sig.contents(pdf);
    let Cms {
        sd,
        si,
        raw,
        signer_der,
        signer_cert,
        hash,
    } = decode_cms(&contents)?;
    let si = &si;
    let signer = signer_name(signer_der);
    *signer_out = Some(Signer {
        name: signer.clone(),
        certificate: signer_der.to_vec(),
    });
    let hash = hash.map_err(invalid)?;

    // 4. The signature, over the signed attributes or the content itself.
    let alg = verification_alg(si, &signer_cert, hash).map_err(invalid)?;
    let spki = &signer_cert.tbs_certificate.subject_public_key_info;
    let key = signature::UnparsedPublicKey::new(alg, spki.subject_public_key.raw_bytes());
    let mut signing_time_ms = None;
    match (&si.signed_attrs, raw.signed_attrs) {
        (Some(attrs), Some(raw_attrs)) => {
            let mut content_type = None;
            let mut message_digest = None;
            for a in attrs.iter() {
                let mut values = a.values.iter();
                let (Some(v), None) = (values.next(), values.next()) else {
                    return Err(invalid(format!(
                        "signed attribute {} must have exactly one value",
                        a.oid
                    )));
                };
                match a.oid {
                    ID_CONTENT_TYPE => content_type = Some(v.decode_as::<ObjectIdentifier>()),
                    ID_MESSAGE_DIGEST => message_digest = Some(v.decode_as::<OctetString>()),
                    ID_SIGNING_TIME => {
                        let t = v
                            .to_der()
                            .and_then(|d| Time::from_der(&d))
                            .map_err(|e| invalid(format!("signingTime: {e}")))?;
                        signing_time_ms = Some(
                            i64::try_from(t.to_unix_duration().as_millis()).unwrap_or(i64::MAX),
                        );
                    }
                    _ => {}
                }
            }
            match content_type {
                Some(Ok(ct)) if ct == sd.encap_content_info.econtent_type => {}
                Some(Ok(ct)) => {
                    return Err(invalid(format!(
                        "the contentType attribute ({ct}) differs from the content's type"
                    )));
                }
                Some(Err(e)) => return Err(invalid(format!("contentType: {e}"))),
                None => return Err(invalid("the contentType signed attribute is missing")),
            }
            let md = match message_digest {
                Some(Ok(md)) => md,
                Some(Err(e)) => return Err(invalid(format!("messageDigest: {e}"))),
                None => return Err(invalid("the messageDigest signed attribute is missing")),
            };
            let Some(content_digest) = content_digest else {
                return Err(invalid("internal error: the signed bytes were not hashed"));
            };
            if md.as_bytes() != content_digest {
                return Err(invalid(
                    "digest mismatch: the signed bytes of the PDF differ from what was signed (messageDigest)",
                ));
            }
            let mut to_verify = raw_attrs.to_vec();
            if let Some(t) = to_verify.first_mut() {
                *t = 0x31; // signed as SET OF, stored with the implicit [0] tag
            }
            key.verify(&to_verify, si.signature.as_bytes())
                .map_err(|_| invalid("the signature over the signed attributes does not verify"))?;
        }
        (None, None) => {
            // ring hashes the message itself: a copy of the signed bytes, one
            // such signature at a time, the copies bounded together.
            let len: usize = ranges.iter().map(|(s, e)| e - s).sum();
            *copy_budget = copy_budget.checked_sub(len as u64).ok_or_else(|| {
                invalid(format!(
                    "not checked: a signature without signed attributes is verified over a copy of its signed bytes, and those of this file's signatures add up to more than {} times its length",
                    crate::MAX_COPIED_PER_BYTE
                ))
            })?;
            let mut content = Vec::with_capacity(len);
            for (s, e) in ranges {
                content.extend_from_slice(&pdf[s..e]);
            }
            count_hashed(len);
            key.verify(&content, si.signature.as_bytes()).map_err(|_| {
                invalid("digest mismatch: the signature over the signed bytes does not verify")
            })?;
        }
        _ => {
            return Err(invalid(
                "the signed attributes cannot be located in the CMS",
            ));
        }
    }

    // PAdES (ETSI.CAdES.detached) forbids signingTime: its claim is /M.
    let signing_time_ms = signing_time_ms.or(sig.signing_date_ms);
    if let Some(t) = signing_time_ms
        && t > now_ms.saturating_add(FUTURE_SKEW_MS)
    {
        return Err(invalid(format!(
            "the signing time ({t} ms) is in the future"
        )));
    }
    key_usage_allows_signing(signer_der).map_err(invalid)?;

    // 5. The chain, now: without a trusted timestamp the signing time is only
    // the signer's claim, and a key whose certificate has expired or been
    // revoked could claim any earlier one.
    let time = UnixTime::since_unix_epoch(Duration::from_millis(now_ms.max(0) as u64));
    let crls = anchors.crls();
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
        .ok()
        .map(|b| {
            b.with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .build()
        });
    let leaf_der = CertificateDer::from(signer_der);
    let leaf = EndEntityCert::try_from(&leaf_der).map_err(|e| Verdict::SignerUnknown {
        signer: signer.clone(),
        reason: format!("the signer's certificate cannot be validated: {e}"),
    })?;
    let intermediates: Vec<CertificateDer<'_>> = raw
        .certificates
        .iter()
        .filter(|c| **c != signer_der)
        .map(|c| CertificateDer::from(*c))
        .collect();
    match leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors.anchors,
        &intermediates,
        time,
        AnyEku,
        revocation,
        None,
    ) {
        Ok(_) => Ok(Verdict::Valid {
            signer,
            signing_time_ms,
            covers_whole_file: false, // set by the caller
        }),
        Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })) => {
            Err(invalid(format!(
                "the certificate of {signer} is not valid now, and no trusted timestamp proves an earlier signing time: {e}"
            )))
        }
        Err(webpki::Error::CertRevoked) => {
            Err(invalid(format!("the certificate of {signer} is revoked")))
        }
        Err(e @ (webpki::Error::CrlExpired { .. } | webpki::Error::UnknownRevocationStatus)) => {
            Err(Verdict::Invalid {
                reason: format!(
                    "the revocation status of {signer}'s certificate cannot be known: {e}"
                ),
                revocation_unknown: true,
            })
        }
        Err(e) => Err(Verdict::SignerUnknown {
            signer,
            reason: format!("the certificate chain does not lead to a trusted CA: {e}"),
        }),
    }
}

fn is_signer(cert: &Certificate, sid: &SignerIdentifier) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(is) => {
            cert.tbs_certificate.issuer == is.issuer
                && cert.tbs_certificate.serial_number == is.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == ObjectIdentifier::new_unwrap("2.5.29.14"))
            .any(|e| {
                SubjectKeyIdentifier::from_der(e.extn_value.as_bytes())
                    .is_ok_and(|k| k.0.as_bytes() == ski.0.as_bytes())
            }),
    }
}

/// The subject's CN, or the whole subject.
pub(crate) fn signer_name(cert_der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(cert_der) {
        Ok((_, cert)) => cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok().map(str::to_owned))
            .unwrap_or_else(|| cert.subject().to_string()),
        Err(_) => "(unreadable certificate)".into(),
    }
}

/// A key usage extension, when present, must allow digital signatures or
/// non-repudiation (content commitment).
fn key_usage_allows_signing(cert_der: &[u8]) -> Result<(), String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Err("the signer's certificate cannot be parsed".into());
    };
    match cert.key_usage() {
        Ok(Some(ku)) if !(ku.value.digital_signature() || ku.value.non_repudiation()) => {
            Err("the signer's certificate does not allow digital signatures (key usage)".into())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the signer's key usage cannot be read: {e}")),
    }
}

fn verification_alg(
    si: &SignerInfo,
    cert: &Certificate,
    digest: Hash,
) -> Result<&'static dyn signature::VerificationAlgorithm, String> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let sig_oid = si.signature_algorithm.oid;
    match spki.algorithm.oid {
        ID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or("the signer's EC key names no curve")?;
            let hash = match sig_oid {
                ECDSA_WITH_SHA256 => Hash::Sha256,
                ECDSA_WITH_SHA384 => Hash::Sha384,
                ECDSA_WITH_SHA512 => Hash::Sha512,
                ID_EC_PUBLIC_KEY => digest,
                other => {
                    return Err(format!(
                        "signature algorithm {other} does not fit an EC key"
                    ));
                }
            };
            match (curve, hash) {
                (SECP256R1, Hash::Sha256) => Ok(&signature::ECDSA_P256_SHA256_ASN1),
                (SECP256R1, Hash::Sha384) => Ok(&signature::ECDSA_P256_SHA384_ASN1),
                (SECP384R1, Hash::Sha256) => Ok(&signature::ECDSA_P384_SHA256_ASN1),
                (SECP384R1, Hash::Sha384) => Ok(&signature::ECDSA_P384_SHA384_ASN1),
                (c, h) => Err(format!("unsupported ECDSA curve/hash {c} with {h:?}")),
            }
        }
        RSA_ENCRYPTION => match sig_oid {
            SHA256_WITH_RSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA256),
            SHA384_WITH_RSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA384),
            SHA512_WITH_RSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA512),
            RSA_ENCRYPTION => Ok(match digest {
                Hash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Hash::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Hash::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            }),
            // PSS parameters are not read: the digest algorithm is taken for the
            // hash, MGF1 and a salt of the hash's length (what ring verifies).
            RSA_PSS => Ok(match digest {
                Hash::Sha256 => &signature::RSA_PSS_2048_8192_SHA256,
                Hash::Sha384 => &signature::RSA_PSS_2048_8192_SHA384,
                Hash::Sha512 => &signature::RSA_PSS_2048_8192_SHA512,
            }),
            other => Err(format!(
                "signature algorithm {other} does not fit an RSA key"
            )),
        },
        other => Err(format!("unsupported public key algorithm {other}")),
    }
}

/// Accepts any well-formed extended key usage, like `truc-pki`: signing
/// certificates from the government CA carry various EKUs.
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ring::digest;

    use super::{Hash, SigDict, signed_digests};

    #[test]
    fn shared_prefixes_give_each_signature_its_own_digest_in_any_order() {
        let pdf: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let len = pdf.len() as u64;
        // Byte ranges [0, b) + [c, len), not in increasing b, three algorithms.
        let holes = [
            (9_000, 9_100),
            (1_000, 1_010),
            (5_000, 5_500),
            (1_000, 1_010),
        ];
        let dicts: Vec<SigDict> = holes
            .iter()
            .map(|&(b, c)| SigDict {
                byte_range: [0, b as u64, c as u64, len - c as u64],
                byte_range_span: (0, 1),
                contents_span: (b, c),
                sub_filter: None,
                signing_date_ms: None,
            })
            .collect();
        let wanted = [
            Some(Hash::Sha384),
            Some(Hash::Sha256),
            Some(Hash::Sha384),
            Some(Hash::Sha512),
        ];
        let got = signed_digests(&pdf, &dicts, &wanted);
        for (i, ((b, c), hash)) in holes.iter().zip(wanted).enumerate() {
            let hash = hash.unwrap();
            let want = digest::digest(hash.ring(), &[&pdf[..*b], &pdf[*c..]].concat());
            assert_eq!(got[i].unwrap().as_ref(), want.as_ref(), "signature {i}");
        }
        // Nothing for a signature that wants no digest.
        let got = signed_digests(&pdf, &dicts, &[None, Some(Hash::Sha256), None, None]);
        assert!(got[0].is_none() && got[1].is_some() && got[2].is_none());
    }
}
