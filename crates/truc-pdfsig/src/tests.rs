//! What a recipient notices: valid, tampered, appended, untrusted, unsigned,
//! expired and malformed PDFs.

#![cfg(feature = "sign")]

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

use crate::{
    Error, Report, TrustAnchors, Verdict, sign::sign_pdf_with, sign_pdf, simple_pdf, verify::Hash,
    verify_pdf,
};

/// 2025-06-01T00:00:00Z, in Unix ms.
pub(crate) const SIGNED_AT: i64 = 1_748_736_000_000;
/// A day later.
pub(crate) const NOW: i64 = SIGNED_AT + 86_400_000;

pub(crate) struct Ca {
    pub der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

pub(crate) struct Leaf {
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Ban Co yeu Chinh phu (test)");
    dn.push(DnType::CommonName, cn);
    dn
}

impl Ca {
    pub fn new(cn: &str) -> Self {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = date_time_ymd(2024, 1, 1);
        p.not_after = date_time_ymd(2034, 1, 1);
        let key = KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().to_vec();
        Self {
            der,
            issuer: Issuer::new(p, key),
        }
    }

    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_der(std::slice::from_ref(&self.der)).unwrap()
    }

    pub fn leaf_valid(&self, cn: &str, from: i32, to: i32) -> Leaf {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        p.not_before = date_time_ymd(from, 1, 1);
        p.not_after = date_time_ymd(to, 1, 1);
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().to_vec()],
            key_pkcs8: key.serialize_der(),
        }
    }

    pub fn leaf(&self, cn: &str) -> Leaf {
        self.leaf_valid(cn, 2024, 2030)
    }
}

pub(crate) fn signed_pdf(leaf: &Leaf) -> Vec<u8> {
    let pdf = simple_pdf(&["Quyet dinh so 1234/QD-UBND", "Ha Noi, ngay 1 thang 6"]);
    sign_pdf(&pdf, &leaf.chain, &leaf.key_pkcs8, SIGNED_AT).unwrap()
}

fn invalid_reason(v: &Verdict) -> &str {
    match v {
        Verdict::Invalid { reason, .. } => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_signed_pdf_verifies_with_the_signer_and_the_time() {
    let ca = Ca::new("CA A");
    let pdf = signed_pdf(&ca.leaf("Nguyen Van A"));
    let report = verify_pdf(&pdf, &ca.anchors(), NOW).unwrap();
    let want = Verdict::Valid {
        signer: "Nguyen Van A".into(),
        signing_time_ms: Some(SIGNED_AT),
        covers_whole_file: true,
    };
    assert_eq!(report.signatures, vec![want.clone()]);
    assert_eq!(report.summary(), want);
    assert_eq!(
        report.summary().describe(),
        "valid signature by Nguyen Van A"
    );
    // PEM anchors work the same.
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64(&ca.der)
    );
    let anchors = TrustAnchors::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(verify_pdf(&pdf, &anchors, NOW).unwrap().summary(), want);
}

/// A digest algorithm truc does not check (SHA-224 here) makes the signature
/// invalid, and the report still says whose signature it is.
#[test]
fn an_unsupported_digest_algorithm_is_invalid_and_names_the_signer() {
    let ca = Ca::new("CA A");
    let mut pdf = signed_pdf(&ca.leaf("Nguyen Van A"));
    // SHA-256's OID (2.16.840.1.101.3.4.2.1) made SHA-224's (…2.4), the same
    // length, wherever the CMS names it (in its hex /Contents, digits only).
    let (from, to) = (b"0609608648016503040201", b"0609608648016503040204");
    let mut n = 0;
    while let Some(at) = pdf.windows(from.len()).position(|w| w == from) {
        pdf[at..at + to.len()].copy_from_slice(to);
        n += 1;
    }
    assert!(n >= 1, "the CMS names SHA-256");
    let report = verify_pdf(&pdf, &ca.anchors(), NOW).unwrap();
    assert!(
        invalid_reason(&report.signatures[0])
            .contains("unsupported digest algorithm 2.16.840.1.101.3.4.2.4"),
        "{report:?}"
    );
    assert_eq!(
        report.signers[0].as_ref().map(|s| s.name.as_str()),
        Some("Nguyen Van A")
    );
}

#[test]
fn one_changed_byte_in_the_signed_range_is_a_digest_mismatch() {
    let ca = Ca::new("CA A");
    let mut pdf = signed_pdf(&ca.leaf("Nguyen Van A"));
    let at = pdf.windows(4).position(|w| w == b"1234").unwrap();
    pdf[at] = b'9'; // "Quyet dinh so 9234"
    let report = verify_pdf(&pdf, &ca.anchors(), NOW).unwrap();
    assert!(
        invalid_reason(&report.summary()).contains("digest mismatch"),
        "{report:?}"
    );
}

#[test]
fn a_changed_signature_does_not_verify() {
    let ca = Ca::new("CA A");
    let pdf = signed_pdf(&ca.leaf("Nguyen Van A"));
    // The last byte of the CMS is the ECDSA signature's: change it.
    let hex = pdf.windows(11).position(|w| w == b"/Contents <").unwrap() + 11;
    let header = std::str::from_utf8(&pdf[hex..hex + 8]).unwrap();
    assert!(header.starts_with("3082"), "{header}");
    let der_len = 4 + usize::from_str_radix(&header[4..], 16).unwrap();
    let last = hex + 2 * der_len - 1;
    let mut bad = pdf.clone();
    bad[last] = if bad[last] == b'1' { b'2' } else { b'1' };
    let report = verify_pdf(&bad, &ca.anchors(), NOW).unwrap();
    assert!(
        invalid_reason(&report.summary()).contains("does not verify"),
        "{report:?}"
    );
}

#[test]
fn bytes_appended_after_signing_are_reported() {
    let ca = Ca::new("CA A");
    let mut pdf = signed_pdf(&ca.leaf("Nguyen Van A"));
    let update = b"3 0 obj\n<< /Type /Page /Contents 9 0 R >>\nendobj\n%%EOF\n";
    pdf.extend_from_slice(update);
    let report = verify_pdf(&pdf, &ca.anchors(), NOW).unwrap();
    let reason = invalid_reason(&report.summary()).to_string();
    assert!(reason.contains("changed after signing"), "{reason}");
    assert!(
        reason.contains(&format!("{} bytes appended", update.len())),
        "{reason}"
    );
}

#[test]
fn an_unknown_ca_gives_signer_unknown_with_the_name() {
    let (a, b) = (Ca::new("CA A"), Ca::new("CA B"));
    let pdf = signed_pdf(&a.leaf("Tran Thi B"));
    match verify_pdf(&pdf, &b.anchors(), NOW).unwrap().summary() {
        Verdict::SignerUnknown { signer, reason } => {
            assert_eq!(signer, "Tran Thi B");
            assert!(reason.contains("trusted CA"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_certificate_expired_at_signing_time_is_invalid() {
    let ca = Ca::new("CA A");
    let pdf = signed_pdf(&ca.leaf_valid("Le Van C", 2024, 2025)); // signed mid 2025
    let reason =
        invalid_reason(&verify_pdf(&pdf, &ca.anchors(), NOW).unwrap().summary()).to_string();
    assert!(reason.contains("not valid now"), "{reason}");
}

/// Without a trusted timestamp the signing time is the signer's claim: a
/// certificate that has expired since, or been revoked, signs nothing valid,
/// however early the signature says it was made.
#[test]
fn an_expired_or_revoked_signer_signs_nothing_valid_whatever_time_it_claims() {
    let ca = Ca::new("CA A");
    let leaf = ca.leaf_valid("Tran Van E", 2024, 2026);
    let pdf = signed_pdf(&leaf); // claims mid 2025, inside the validity
    let anchors = ca.anchors();
    assert!(matches!(
        verify_pdf(&pdf, &anchors, NOW).unwrap().summary(),
        Verdict::Valid { .. }
    ));
    let in_2027 = NOW + 2 * 365 * 86_400_000;
    let reason =
        invalid_reason(&verify_pdf(&pdf, &anchors, in_2027).unwrap().summary()).to_string();
    assert!(reason.contains("not valid now"), "{reason}");

    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
    let crl = |serials: &[&[u8]], next_update| {
        rcgen::CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 5, 1),
            next_update,
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: date_time_ymd(2025, 5, 2),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
        .der()
        .clone()
    };
    anchors
        .set_crls(&[crl(&[cert.raw_serial()], date_time_ymd(2025, 7, 1))])
        .unwrap();
    let report = verify_pdf(&pdf, &anchors, NOW).unwrap();
    let reason = invalid_reason(&report.summary()).to_string();
    assert!(reason.contains("revoked"), "{reason}");
    assert!(report.is_final());
    // A list past its next update: nothing can be known.
    anchors
        .set_crls(&[crl(&[], date_time_ymd(2025, 5, 15))])
        .unwrap();
    let report = verify_pdf(&pdf, &anchors, NOW).unwrap();
    let reason = invalid_reason(&report.summary()).to_string();
    assert!(reason.contains("cannot be known"), "{reason}");
    assert!(!report.is_final(), "a fresh list may change it");
    assert!(matches!(
        report.summary(),
        Verdict::Invalid {
            revocation_unknown: true,
            ..
        }
    ));
    // A current list that does not name it.
    anchors
        .set_crls(&[crl(&[], date_time_ymd(2025, 7, 1))])
        .unwrap();
    assert!(matches!(
        verify_pdf(&pdf, &anchors, NOW).unwrap().summary(),
        Verdict::Valid { .. }
    ));
}

#[test]
fn an_unsigned_pdf_is_unsigned() {
    let ca = Ca::new("CA A");
    let report = verify_pdf(&simple_pdf(&["x"]), &ca.anchors(), NOW).unwrap();
    assert!(report.signatures.is_empty());
    assert_eq!(report.summary(), Verdict::Unsigned);
}

#[test]
fn two_signatures_each_get_a_verdict() {
    let ca = Ca::new("CA A");
    let first = signed_pdf(&ca.leaf("Nguyen Van A"));
    let second = ca.leaf("Pham Van D");
    let pdf = sign_pdf(&first, &second.chain, &second.key_pkcs8, SIGNED_AT + 1000).unwrap();
    let report = verify_pdf(&pdf, &ca.anchors(), NOW).unwrap();
    assert_eq!(
        report.signatures,
        vec![
            Verdict::Valid {
                signer: "Nguyen Van A".into(),
                signing_time_ms: Some(SIGNED_AT),
                covers_whole_file: false,
            },
            Verdict::Valid {
                signer: "Pham Van D".into(),
                signing_time_ms: Some(SIGNED_AT + 1000),
                covers_whole_file: true,
            }
        ]
    );
    assert!(matches!(
        report.summary(),
        Verdict::Valid { signer, .. } if signer == "Pham Van D"
    ));
    // The second signature by an untrusted CA makes the document untrusted.
    let other = Ca::new("CA B").leaf("Mallory");
    let pdf = sign_pdf(&first, &other.chain, &other.key_pkcs8, SIGNED_AT).unwrap();
    assert!(matches!(
        verify_pdf(&pdf, &ca.anchors(), NOW).unwrap().summary(),
        Verdict::SignerUnknown { signer, .. } if signer == "Mallory"
    ));
}

#[test]
fn every_signature_names_its_signer_certificate_even_when_invalid() {
    let ca = Ca::new("CA A");
    let drafter = ca.leaf("Nguyen Van A");
    let minister = ca.leaf("Pham Van D");
    let first = signed_pdf(&drafter);
    let pdf = sign_pdf(
        &first,
        &minister.chain,
        &minister.key_pkcs8,
        SIGNED_AT + 1000,
    )
    .unwrap();
    let report = verify_pdf(&pdf, &ca.anchors(), NOW).unwrap();
    let signers: Vec<(&str, &[u8])> = report
        .signers
        .iter()
        .map(|s| {
            let s = s.as_ref().expect("a readable signer");
            (s.name.as_str(), s.certificate.as_slice())
        })
        .collect();
    assert_eq!(
        signers,
        vec![
            ("Nguyen Van A", drafter.chain[0].as_slice()),
            ("Pham Van D", minister.chain[0].as_slice())
        ]
    );
    // Changed after the last signature: both invalid, their signers still named.
    let mut changed = pdf.clone();
    changed.extend_from_slice(b"\n% appended\n");
    let report = verify_pdf(&changed, &ca.anchors(), NOW).unwrap();
    assert!(
        report
            .signatures
            .iter()
            .all(|v| invalid_reason(v).contains("changed after signing"))
    );
    let names: Vec<Option<&str>> = report
        .signers
        .iter()
        .map(|s| s.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(names, vec![Some("Nguyen Van A"), Some("Pham Van D")]);
}

#[test]
fn only_a_verdict_marked_revocation_unknown_may_change() {
    let v = |reason: &str, revocation_unknown| Report {
        signatures: vec![Verdict::Invalid {
            reason: reason.into(),
            revocation_unknown,
        }],
        signers: vec![None],
    };
    // The mark decides, not the wording.
    assert!(!v("whatever it says", true).is_final());
    assert!(
        v(
            "the revocation status of X's certificate cannot be known",
            false
        )
        .is_final()
    );
}

#[test]
fn a_signing_time_in_the_future_is_invalid() {
    let ca = Ca::new("CA A");
    let pdf = signed_pdf(&ca.leaf("Nguyen Van A"));
    let report = verify_pdf(&pdf, &ca.anchors(), SIGNED_AT - 3_600_000).unwrap();
    assert!(invalid_reason(&report.summary()).contains("future"));
}

#[test]
fn signature_like_text_in_streams_and_strings_is_no_signature() {
    let ca = Ca::new("CA A");
    let leaf = ca.leaf("Nguyen Van A");
    let fake = "/ByteRange [0 1 2 3] /Contents <00>";
    // A content stream showing it, holding it as operands, in a marked-content
    // property dictionary, a bare /ByteRange, and binary bytes with an
    // unbalanced `(`; the catalog holds it in a literal string.
    let mut content = format!(
        "BT /F1 12 Tf 56 780 Td ({fake}) Tj ET\n{fake}\n/P << {fake} >> BDC EMC\n<< /ByteRange >>\n"
    )
    .into_bytes();
    content.extend_from_slice(b"\x00\x9c(\xff<<\x01\n");
    let catalog = format!("/Note ({fake})");
    let pdf = crate::pdf::one_page_pdf(catalog.as_bytes(), &content);
    let anchors = ca.anchors();
    assert_eq!(
        verify_pdf(&pdf, &anchors, NOW).unwrap().summary(),
        Verdict::Unsigned
    );
    let signed = sign_pdf(&pdf, &leaf.chain, &leaf.key_pkcs8, SIGNED_AT).unwrap();
    let report = verify_pdf(&signed, &anchors, NOW).unwrap();
    assert_eq!(
        report.signatures,
        vec![Verdict::Valid {
            signer: "Nguyen Van A".into(),
            signing_time_ms: Some(SIGNED_AT),
            covers_whole_file: true,
        }]
    );
}

/// A file of `n` signature dictionaries whose /Contents hold `contents_hex`,
/// each of whose byte ranges signs the whole file but its own /Contents, and
/// `padding` bytes of comment after the dictionaries, or before them if
/// `padding_first`.
fn whole_file_signatures(
    n: usize,
    contents_hex: &str,
    padding: usize,
    padding_first: bool,
) -> Vec<u8> {
    let comment = format!("%{}\n", "x".repeat(padding));
    let mut pdf = b"%PDF-1.7\n".to_vec();
    if padding_first {
        pdf.extend_from_slice(comment.as_bytes());
    }
    let mut holes = Vec::new();
    for i in 1..=n {
        pdf.extend_from_slice(format!("{i} 0 obj\n<< /Type /Sig /ByteRange [").as_bytes());
        let numbers = pdf.len();
        pdf.extend_from_slice(b"0 0000000000 0000000000 0000000000] /Contents ");
        let open = pdf.len();
        pdf.extend_from_slice(format!("<{contents_hex}>").as_bytes());
        holes.push((numbers, open, pdf.len()));
        pdf.extend_from_slice(b"\n>>\nendobj\n");
    }
    if !padding_first {
        pdf.extend_from_slice(comment.as_bytes());
    }
    pdf.extend_from_slice(b"%%EOF\n");
    let len = pdf.len();
    for (at, b, c) in holes {
        let numbers = format!("0 {b:010} {c:010} {:010}", len - c);
        pdf[at..at + numbers.len()].copy_from_slice(numbers.as_bytes());
    }
    pdf
}

/// The DER of the CMS of the (first) signature of `pdf`, in hex, without the
/// zero padding of /Contents.
fn cms_hex(pdf: &[u8]) -> String {
    let hex = pdf.windows(11).position(|w| w == b"/Contents <").unwrap() + 11;
    let header = std::str::from_utf8(&pdf[hex..hex + 8]).unwrap();
    assert!(header.starts_with("3082"), "{header}");
    let der_len = 4 + usize::from_str_radix(&header[4..], 16).unwrap();
    std::str::from_utf8(&pdf[hex..hex + 2 * der_len])
        .unwrap()
        .to_string()
}

/// What `verify_pdf` returns and how many bytes it hashed.
fn verify_counting(pdf: &[u8], anchors: &TrustAnchors) -> (Result<Report, Error>, u64) {
    crate::verify::HASHED.with(|h| h.set(0));
    let result = verify_pdf(pdf, anchors, NOW);
    (result, crate::verify::HASHED.with(|h| h.get()))
}

/// The sum of the tails `[c, c + d)` of the byte ranges of `pdf`.
fn tails(pdf: &[u8]) -> u64 {
    crate::pdf::signature_dicts(pdf)
        .unwrap()
        .iter()
        .map(|d| d.byte_range[3])
        .sum()
}

#[test]
fn a_pdf_signed_by_twelve_people_in_turn_verifies_hashing_it_about_once() {
    let ca = Ca::new("CA A");
    // A document of some size (each signature covers nearly all of it).
    let articles: Vec<String> = (1..=5000)
        .map(|i| format!("Dieu {i}. Quy dinh chi tiet thi hanh."))
        .collect();
    let lines: Vec<&str> = articles.iter().map(String::as_str).collect();
    let mut pdf = simple_pdf(&lines);
    let names: Vec<String> = (1..=12).map(|i| format!("Signer {i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let leaf = ca.leaf(name);
        pdf = sign_pdf(
            &pdf,
            &leaf.chain,
            &leaf.key_pkcs8,
            SIGNED_AT + 1000 * i as i64,
        )
        .unwrap();
    }
    let (report, hashed) = verify_counting(&pdf, &ca.anchors());
    let report = report.unwrap();
    let want: Vec<Verdict> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Verdict::Valid {
            signer: name.clone(),
            signing_time_ms: Some(SIGNED_AT + 1000 * i as i64),
            covers_whole_file: i == 11,
        })
        .collect();
    assert_eq!(report.signatures, want);
    assert_eq!(report.summary(), want[11]);
    // The shared prefix once, then each signature's own tail.
    let len = pdf.len() as u64;
    assert!(
        hashed <= len + tails(&pdf),
        "{hashed} bytes hashed, file {len}"
    );
    assert!(hashed < 2 * len, "{hashed} bytes hashed, file {len}");
}

#[test]
fn signatures_in_turn_with_different_digests_or_no_signed_attributes_all_verify() {
    let ca = Ca::new("CA A");
    let mut pdf = simple_pdf(&["Quyet dinh so 1234/QD-UBND"]);
    let hashes = [Hash::Sha256, Hash::Sha384, Hash::Sha512];
    let mut want = Vec::new();
    for i in 0..12 {
        let name = format!("Signer {i}");
        let leaf = ca.leaf(&name);
        let signed_attrs = i % 4 != 3;
        pdf = sign_pdf_with(
            &pdf,
            &leaf.chain,
            &leaf.key_pkcs8,
            SIGNED_AT + 1000 * i,
            hashes[i as usize % 3],
            signed_attrs,
        )
        .unwrap();
        want.push(Verdict::Valid {
            signer: name,
            signing_time_ms: signed_attrs.then_some(SIGNED_AT + 1000 * i),
            covers_whole_file: i == 11,
        });
    }
    let anchors = ca.anchors();
    let (report, hashed) = verify_counting(&pdf, &anchors);
    assert_eq!(report.unwrap().signatures, want);
    // A prefix per digest algorithm, the tails, and the copies of the signed
    // bytes of the three signatures without signed attributes.
    let len = pdf.len() as u64;
    assert!(
        hashed < 3 * len + tails(&pdf) + 3 * len,
        "{hashed}, file {len}"
    );

    // A changed byte is seen by every kind of signature.
    let at = pdf.windows(4).position(|w| w == b"1234").unwrap();
    pdf[at] = b'9';
    let report = verify_pdf(&pdf, &anchors, NOW).unwrap();
    for (i, v) in report.signatures.iter().enumerate() {
        let reason = invalid_reason(v);
        assert!(reason.contains("digest mismatch"), "{i}: {reason}");
        if i % 4 == 3 {
            assert!(reason.contains("over the signed bytes"), "{i}: {reason}");
        }
    }
}

#[test]
fn many_byte_ranges_over_the_whole_file_hash_it_about_once() {
    let ca = Ca::new("CA A");
    let anchors = ca.anchors();
    // 32 real CMS (each decoded and checked: digest mismatch), every byte
    // range over the whole file but its own /Contents: hashed one by one,
    // 32 times the file.
    let cms = cms_hex(&signed_pdf(&ca.leaf("Mallory")));
    let pdf = whole_file_signatures(32, &cms, 1 << 20, true);
    let (report, hashed) = verify_counting(&pdf, &anchors);
    let report = report.unwrap();
    assert_eq!(report.signatures.len(), 32);
    for v in &report.signatures {
        assert!(invalid_reason(v).contains("digest mismatch"), "{v:?}");
    }
    let len = pdf.len() as u64;
    assert!(
        hashed <= len + tails(&pdf),
        "{hashed} bytes hashed, file {len}"
    );
    assert!(hashed <= 3 * len, "{hashed} bytes hashed, file {len}");

    // The same with the dictionaries first: their tails are the whole file.
    let pdf = whole_file_signatures(32, &cms, 1 << 20, false);
    let (result, hashed) = verify_counting(&pdf, &anchors);
    match result {
        Err(Error::Malformed(r)) => assert!(r.contains("2 times the file"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(hashed, 0);
}

#[test]
fn tails_of_byte_ranges_adding_up_to_more_than_twice_the_file_are_malformed() {
    let anchors = Ca::new("CA A").anchors();
    let (report, hashed) =
        verify_counting(&whole_file_signatures(2, "0000", 4096, false), &anchors);
    let report = report.unwrap();
    assert_eq!(report.signatures.len(), 2);
    assert!(invalid_reason(&report.summary()).contains("empty"));
    assert_eq!(hashed, 0, "an empty /Contents needs no digest");
    match verify_pdf(
        &whole_file_signatures(3, "0000", 4096, false),
        &anchors,
        NOW,
    ) {
        Err(Error::Malformed(r)) => assert!(r.contains("2 times the file"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn copies_for_signatures_without_signed_attributes_are_bounded() {
    let ca = Ca::new("CA A");
    let leaf = ca.leaf("Mallory");
    let pdf = simple_pdf(&["x"]);
    let signed = sign_pdf_with(
        &pdf,
        &leaf.chain,
        &leaf.key_pkcs8,
        SIGNED_AT,
        Hash::Sha256,
        false,
    )
    .unwrap();
    let anchors = ca.anchors();
    assert!(matches!(
        verify_pdf(&signed, &anchors, NOW).unwrap().summary(),
        Verdict::Valid {
            signing_time_ms: None,
            ..
        }
    ));
    // 12 signatures without signed attributes over the whole file: eight are
    // checked (and do not verify), the others are not.
    let pdf = whole_file_signatures(12, &cms_hex(&signed), 1 << 20, true);
    let (report, hashed) = verify_counting(&pdf, &anchors);
    let report = report.unwrap();
    let reasons: Vec<&str> = report.signatures.iter().map(invalid_reason).collect();
    for r in &reasons[..8] {
        assert!(r.contains("over the signed bytes does not verify"), "{r}");
    }
    for r in &reasons[8..] {
        assert!(r.starts_with("not checked"), "{r}");
        assert!(r.contains("8 times its length"), "{r}");
    }
    let len = pdf.len() as u64;
    assert!(hashed <= 8 * len, "{hashed} bytes hashed, file {len}");
}

#[test]
fn signing_refuses_a_newest_revision_with_a_cross_reference_stream() {
    let leaf = Ca::new("CA A").leaf("Nguyen Van A");
    let mut pdf = simple_pdf(&["x"]);
    let old_xref = pdf.windows(5).rposition(|w| w == b"xref\n").unwrap();
    // An update whose cross-reference section is a stream (object 6, the
    // /Size of the older classic trailer).
    let stream_at = pdf.len();
    let mut entry = vec![1u8];
    entry.extend_from_slice(&u32::try_from(stream_at).unwrap().to_be_bytes());
    entry.extend_from_slice(&[0, 0]);
    pdf.extend_from_slice(
        format!(
            "6 0 obj\n<< /Type /XRef /Size 7 /Root 1 0 R /Prev {old_xref} /W [1 4 2] /Index [6 1] /Length {} >>\nstream\n",
            entry.len()
        )
        .as_bytes(),
    );
    pdf.extend_from_slice(&entry);
    pdf.extend_from_slice(
        format!("\nendstream\nendobj\nstartxref\n{stream_at}\n%%EOF\n").as_bytes(),
    );
    match sign_pdf(&pdf, &leaf.chain, &leaf.key_pkcs8, SIGNED_AT) {
        Err(Error::Sign(r)) => assert!(
            r.contains("cross-reference streams are not supported for signing"),
            "{r}"
        ),
        other => panic!("{:?}", other.map(|signed| signed.len())),
    }
}

#[test]
fn signing_copies_the_catalog_byte_for_byte() {
    let ca = Ca::new("CA A");
    let leaf = ca.leaf("Nguyen Van A");
    // A catalog entry that is not UTF-8 (PDFDocEncoding: "Lê").
    let note = b"/Note (L\xea)";
    let pdf = crate::pdf::one_page_pdf(note, b"BT ET\n");
    let signed = sign_pdf(&pdf, &leaf.chain, &leaf.key_pkcs8, SIGNED_AT).unwrap();
    let count = signed.windows(note.len()).filter(|w| w == note).count();
    assert_eq!(count, 2, "the new revision of the catalog lost its bytes");
    assert!(matches!(
        verify_pdf(&signed, &ca.anchors(), NOW).unwrap().summary(),
        Verdict::Valid { .. }
    ));
}

fn malformed(pdf: &[u8], anchors: &TrustAnchors) -> String {
    match verify_pdf(pdf, anchors, NOW) {
        Err(Error::Malformed(r)) => r,
        Ok(r) => match r.summary() {
            Verdict::Invalid { reason, .. } => reason,
            other => panic!("expected Malformed or Invalid, got {other:?}"),
        },
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn malformed_inputs_are_refused_with_a_reason() {
    let ca = Ca::new("CA A");
    let anchors = ca.anchors();
    let pdf = signed_pdf(&ca.leaf("Nguyen Van A"));
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);

    assert!(malformed(b"", &anchors).contains("not a PDF"));
    assert!(malformed(b"PK\x03\x04 a zip file", &anchors).contains("not a PDF"));
    let unsigned = simple_pdf(&["x"]);
    assert!(malformed(&unsigned[..unsigned.len() - 20], &anchors).contains("truncated"));
    // A truncated signed file: the byte range ends beyond it.
    assert!(malformed(&pdf[..pdf.len() - 10], &anchors).contains("beyond the end"));
    // Cut inside the /Contents hex string.
    let contents = find(&pdf, b"/Contents <").unwrap();
    assert!(malformed(&pdf[..contents + 40], &anchors).contains("not terminated"));

    // The four numbers of /ByteRange, as written (fixed width).
    let br = find(&pdf, b"/ByteRange [").unwrap() + b"/ByteRange [".len();
    let close = br + find(&pdf[br..], b"]").unwrap();
    let numbers: Vec<(usize, String)> = {
        let mut out = Vec::new();
        let mut at = br;
        for n in std::str::from_utf8(&pdf[br..close]).unwrap().split(' ') {
            out.push((at, n.to_string()));
            at += n.len() + 1;
        }
        out
    };
    let edit = |which: usize, to: &str| -> Vec<u8> {
        let (at, old) = &numbers[which];
        let mut out = pdf[..*at].to_vec();
        out.extend_from_slice(to.as_bytes());
        out.extend_from_slice(&pdf[at + old.len()..]);
        out
    };
    // The last number points outside the file (same width: offsets unchanged).
    let huge = "9".repeat(numbers[3].1.len());
    assert!(malformed(&edit(3, &huge), &anchors).contains("beyond the end"));
    assert!(malformed(&edit(0, "1"), &anchors).contains("not at 0"));
    assert!(malformed(&edit(0, "99999999999999999999999"), &anchors).contains("too"));
    // The hole moved off the /Contents string.
    let moved = format!(
        "{:0width$}",
        numbers[1].1.parse::<u64>().unwrap() - 1,
        width = numbers[1].1.len()
    );
    assert!(malformed(&edit(1, &moved), &anchors).contains("not the /Contents"));

    // /Contents not hex.
    let mut bad = pdf.clone();
    bad[contents + 12] = b'G';
    assert!(malformed(&bad, &anchors).contains("not a hex string"));
    // Garbage CMS (hex, but not DER), same length.
    let mut bad = pdf.clone();
    bad[contents + 11..contents + 19].copy_from_slice(b"DEADBEEF");
    assert!(malformed(&bad, &anchors).contains("CMS"));
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
