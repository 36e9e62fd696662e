//! A small PDF signer for tests and demos (`sign` feature).
//!
//! It appends an incremental update to a PDF with a classic cross-reference
//! table: a signature dictionary (`/Adobe.PPKLite`, `/adbe.pkcs7.detached`,
//! fixed-size `/Contents`), an invisible signature field, and a new revision of
//! the catalog with an `/AcroForm` listing the field; then a CMS SignedData
//! (contentType, messageDigest, signingTime; ECDSA P-256 with SHA-256 by *ring*)
//! over the byte ranges. The field is not added to a page's `/Annots`, which
//! viewers tolerate for invisible signatures. The newest revision must end
//! with a classic `xref` table (startxref points at it) followed by its
//! trailer. Not supported: cross-reference streams (refused by name),
//! encrypted PDFs, an indirect `/AcroForm`.

use std::time::Duration;

use cms::{
    cert::{CertificateChoices, IssuerAndSerialNumber},
    content_info::{CmsVersion, ContentInfo},
    signed_data::{
        CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo,
        SignerInfos,
    },
};
use der::{
    Any, Decode, Encode,
    asn1::{GeneralizedTime, OctetString, SetOfVec, UtcTime},
};
use ring::{
    digest,
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
};
use x509_cert::{Certificate, attr::Attribute, spki::AlgorithmIdentifierOwned, time::Time};

use crate::{
    Error,
    pdf::{is_regular, is_whitespace, skip_ws},
    verify::{
        ECDSA_WITH_SHA256, Hash, ID_CONTENT_TYPE, ID_DATA, ID_MESSAGE_DIGEST, ID_SHA256, ID_SHA384,
        ID_SHA512, ID_SIGNED_DATA, ID_SIGNING_TIME,
    },
};

fn err(e: impl std::fmt::Display) -> Error {
    Error::Sign(e.to_string())
}

/// Positions of `needle` in `hay` as a whole name (not a prefix of a longer one).
fn find_names(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    if needle.is_empty() || hay.len() < needle.len() {
        return out;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if hay[i] == first && hay[i..].starts_with(needle) {
            let next = hay.get(i + needle.len()).copied();
            if next.is_none_or(|b| !is_regular(b)) {
                out.push(i);
            }
            i += needle.len();
        } else {
            i += 1;
        }
    }
    out
}

/// `N G R` after `key` in `dict`.
fn reference(dict: &[u8], key: &[u8]) -> Option<(u64, u64)> {
    let at = *find_names(dict, key).last()?;
    let mut i = skip_ws(dict, at + key.len());
    let mut nums = [0u64; 2];
    for n in &mut nums {
        let start = i;
        while dict.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        *n = std::str::from_utf8(dict.get(start..i)?)
            .ok()?
            .parse()
            .ok()?;
        i = skip_ws(dict, i);
    }
    (dict.get(i) == Some(&b'R')).then_some((nums[0], nums[1]))
}

fn integer_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = *find_names(text, key).last()?;
    let i = skip_ws(text, at + key.len());
    let digits: Vec<u8> = text[i..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// The newest body of object `num gen` (between `obj` and `endobj`).
fn object_body(pdf: &[u8], num: u64, generation: u64) -> Option<&[u8]> {
    let header = format!("{num} {generation} obj");
    let mut search_end = pdf.len();
    while let Some(at) = rfind(&pdf[..search_end], header.as_bytes()) {
        let whole = at == 0 || !pdf[at - 1].is_ascii_digit();
        if whole {
            let body_start = at + header.len();
            let end = body_start + rfind_first(&pdf[body_start..], b"endobj")?;
            return Some(&pdf[body_start..end]);
        }
        search_end = at;
    }
    None
}

fn rfind_first(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Appends a signature by the first certificate of `cert_chain_der` (the chain
/// is embedded in the CMS), with the PKCS#8 P-256 key `key_pkcs8_der`, claiming
/// `signing_time_ms` (Unix ms) as the signing time.
pub fn sign_pdf(
    pdf: &[u8],
    cert_chain_der: &[Vec<u8>],
    key_pkcs8_der: &[u8],
    signing_time_ms: i64,
) -> Result<Vec<u8>, Error> {
    sign_pdf_with(
        pdf,
        cert_chain_der,
        key_pkcs8_der,
        signing_time_ms,
        Hash::Sha256,
        true,
    )
}

/// [`sign_pdf`] with `hash` as the digest algorithm of the signed bytes (the
/// signed attributes are still signed with ECDSA P-256 and SHA-256), and
/// without signed attributes unless `signed_attrs` (the signature is then over
/// the signed bytes themselves, with SHA-256, and claims no signing time).
pub(crate) fn sign_pdf_with(
    pdf: &[u8],
    cert_chain_der: &[Vec<u8>],
    key_pkcs8_der: &[u8],
    signing_time_ms: i64,
    hash: Hash,
    signed_attrs: bool,
) -> Result<Vec<u8>, Error> {
    let signer_der = cert_chain_der
        .first()
        .ok_or_else(|| err("no signer certificate"))?;
    let signer = Certificate::from_der(signer_der).map_err(|e| err(format!("certificate: {e}")))?;
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8_der, &rng)
        .map_err(|e| err(format!("P-256 PKCS#8 key: {e}")))?;
    if Some(key.public_key().as_ref())
        != signer
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .as_bytes()
    {
        return Err(err("the key does not belong to the signer certificate"));
    }
    let signing_time = u64::try_from(signing_time_ms)
        .map(Duration::from_millis)
        .map_err(|_| err("negative signing time"))?;

    let tail = &pdf[pdf.len().saturating_sub(1024)..];
    if !pdf.starts_with(b"%PDF-") || rfind(tail, b"%%EOF").is_none() {
        return Err(err("not a complete PDF (%PDF- ... %%EOF)"));
    }
    // The document's newest trailer: the one after the classic cross-reference
    // table that the last startxref points at.
    let sx = rfind(pdf, b"startxref").ok_or_else(|| err("no startxref"))?;
    let prev = integer_after(&pdf[sx..], b"startxref").ok_or_else(|| err("bad startxref"))?;
    let table = usize::try_from(prev)
        .ok()
        .filter(|at| pdf.get(*at..).is_some_and(|t| t.starts_with(b"xref")))
        .ok_or_else(|| {
            err(format!(
                "startxref {prev} does not point at a classic cross-reference table (`xref`): cross-reference streams are not supported for signing"
            ))
        })?;
    // Subsection headers and entries: numbers, `f`/`n`, whitespace.
    let entries = table + b"xref".len();
    let tr = entries
        + pdf[entries..]
            .iter()
            .position(|b| !(b.is_ascii_digit() || is_whitespace(*b) || matches!(b, b'f' | b'n')))
            .unwrap_or(pdf.len() - entries);
    if !pdf[tr..].starts_with(b"trailer") {
        return Err(err(format!(
            "the cross-reference table at {prev} is not followed by its trailer"
        )));
    }
    let trailer_end = tr
        + rfind_first(&pdf[tr..], b"startxref")
            .ok_or_else(|| err("no startxref after the trailer"))?;
    let trailer = &pdf[tr..trailer_end];
    if !find_names(trailer, b"/Encrypt").is_empty() {
        return Err(err("encrypted PDFs are not supported"));
    }
    let (root, root_gen) = reference(trailer, b"/Root").ok_or_else(|| err("no /Root"))?;
    let size = integer_after(trailer, b"/Size").ok_or_else(|| err("no /Size"))?;
    let info = reference(trailer, b"/Info");

    // The catalog's new revision, with the field in /AcroForm: its bytes as
    // they are (strings in it need not be UTF-8).
    let (sig_num, field_num) = (size, size + 1);
    let body = object_body(pdf, root, root_gen).ok_or_else(|| err("catalog not found"))?;
    let catalog = body.trim_ascii();
    let catalog = if find_names(catalog, b"/AcroForm").is_empty() {
        let close = rfind(catalog, b">>").ok_or_else(|| err("the catalog is not a dictionary"))?;
        let mut out = catalog[..close].trim_ascii_end().to_vec();
        out.extend_from_slice(
            format!(" /AcroForm << /Fields [{field_num} 0 R] /SigFlags 3 >> >>").as_bytes(),
        );
        out
    } else {
        let at = rfind_first(catalog, b"/Fields [")
            .ok_or_else(|| err("an /AcroForm without an inline /Fields array"))?
            + b"/Fields [".len();
        let mut out = catalog[..at].to_vec();
        out.extend_from_slice(format!("{field_num} 0 R ").as_bytes());
        out.extend_from_slice(&catalog[at..]);
        out
    };

    // Room for the CMS: the certificates plus attributes and signature.
    let room = 1024 + cert_chain_der.iter().map(Vec::len).sum::<usize>();
    let mut out = pdf.to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let sig_off = out.len();
    out.extend_from_slice(
        format!(
            "{sig_num} 0 obj\n<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /adbe.pkcs7.detached /ByteRange ["
        )
        .as_bytes(),
    );
    let br_at = out.len();
    out.extend_from_slice(b"0 0000000000 0000000000 0000000000] /Contents ");
    let contents_at = out.len();
    out.push(b'<');
    out.resize(out.len() + 2 * room, b'0');
    out.extend_from_slice(b">\n>>\nendobj\n");
    let contents_end = contents_at + 2 * room + 2;
    let field_off = out.len();
    out.extend_from_slice(
        format!(
            "{field_num} 0 obj\n<< /FT /Sig /T (Signature{sig_num}) /V {sig_num} 0 R /Type /Annot /Subtype /Widget /Rect [0 0 0 0] /F 132 >>\nendobj\n"
        )
        .as_bytes(),
    );
    let catalog_off = out.len();
    out.extend_from_slice(format!("{root} {root_gen} obj\n").as_bytes());
    out.extend_from_slice(&catalog);
    out.extend_from_slice(b"\nendobj\n");
    let xref = out.len();
    let info = info
        .map(|(n, g)| format!(" /Info {n} {g} R"))
        .unwrap_or_default();
    out.extend_from_slice(
        format!(
            "xref\n{root} 1\n{catalog_off:010} {root_gen:05} n \n{sig_num} 2\n{sig_off:010} 00000 n \n{field_off:010} 00000 n \ntrailer\n<< /Size {} /Root {root} {root_gen} R{info} /Prev {prev} >>\nstartxref\n{xref}\n%%EOF\n",
            size + 2
        )
        .as_bytes(),
    );
    let ranges = format!(
        "0 {contents_at:010} {contents_end:010} {:010}]",
        out.len() - contents_end
    );
    out[br_at..br_at + ranges.len()].copy_from_slice(ranges.as_bytes());

    // The digest of the signed bytes, and the CMS.
    let mut ctx = digest::Context::new(hash.ring());
    ctx.update(&out[..contents_at]);
    ctx.update(&out[contents_end..]);
    let content = (!signed_attrs).then(|| [&out[..contents_at], &out[contents_end..]].concat());
    let cms = cms_signed_data(
        &signer,
        cert_chain_der,
        &key,
        &rng,
        &ctx.finish(),
        content.as_deref(),
        signing_time,
    )?;
    if cms.len() > room {
        return Err(err("the CMS does not fit its placeholder"));
    }
    let hex: String = cms.iter().map(|b| format!("{b:02X}")).collect();
    out[contents_at + 1..contents_at + 1 + hex.len()].copy_from_slice(hex.as_bytes());
    Ok(out)
}

fn attribute(oid: der::asn1::ObjectIdentifier, value: Any) -> Result<Attribute, Error> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value]).map_err(err)?,
    })
}

fn cms_signed_data(
    signer: &Certificate,
    chain: &[Vec<u8>],
    key: &EcdsaKeyPair,
    rng: &SystemRandom,
    message_digest: &digest::Digest,
    // Signed directly, without signed attributes, when given.
    content: Option<&[u8]>,
    signing_time: Duration,
) -> Result<Vec<u8>, Error> {
    let time: Time = match UtcTime::from_unix_duration(signing_time) {
        Ok(t) => t.into(),
        Err(_) => GeneralizedTime::from_unix_duration(signing_time)
            .map_err(err)?
            .into(),
    };
    let attrs = SetOfVec::try_from(vec![
        attribute(ID_CONTENT_TYPE, Any::encode_from(&ID_DATA).map_err(err)?)?,
        attribute(
            ID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(message_digest.as_ref()).map_err(err)?)
                .map_err(err)?,
        )?,
        attribute(ID_SIGNING_TIME, Any::encode_from(&time).map_err(err)?)?,
    ])
    .map_err(err)?;
    let attrs_der = attrs.to_der().map_err(err)?;
    let (signed_attrs, to_sign) = match content {
        None => (Some(attrs), attrs_der.as_slice()),
        Some(content) => (None, content),
    };
    let signature = key
        .sign(rng, to_sign)
        .map_err(|_| err("ECDSA signing failed"))?;
    let digest_alg = AlgorithmIdentifierOwned {
        oid: if *message_digest.algorithm() == digest::SHA512 {
            ID_SHA512
        } else if *message_digest.algorithm() == digest::SHA384 {
            ID_SHA384
        } else {
            ID_SHA256
        },
        parameters: None,
    };
    let info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: signer.tbs_certificate.issuer.clone(),
            serial_number: signer.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: digest_alg.clone(),
        signed_attrs,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        },
        signature: OctetString::new(signature.as_ref()).map_err(err)?,
        unsigned_attrs: None,
    };
    let certs = chain
        .iter()
        .map(|c| Certificate::from_der(c).map(CertificateChoices::Certificate))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("certificate chain: {e}")))?;
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![digest_alg]).map_err(err)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(certs).map_err(err)?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![info]).map_err(err)?),
    };
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(err)?,
    }
    .to_der()
    .map_err(err)
}
