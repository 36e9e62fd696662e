//! The signatures inside PDF attachments (the legally binding ones, DESIGN §4's
//! envelope only proves transport): the recipient edge checks each PDF against
//! its trust anchors on arrival and shows the verdict in `truc get`, `truc
//! inbox` and the agency API. A malformed PDF gets a reason and the edge keeps
//! serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, pem::PemObject};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A one-page PDF signed with `chain` and `key` (PKCS#8 DER).
fn signed(text: &str, chain: &[Vec<u8>], key: &[u8]) -> Vec<u8> {
    truc_pdfsig::sign_pdf(
        &truc::pdf::simple_pdf(&[text]),
        chain,
        key,
        now_ms() - 60_000,
    )
    .unwrap()
}

/// A signer from a CA nobody configured.
fn stranger() -> (Vec<Vec<u8>>, Vec<u8>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "CA la (không tin cậy)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name
        .push(DnType::CommonName, "Người ký lạ");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (vec![cert.der().to_vec()], key.serialize_der())
}

/// An agency's signing chain and key (PKCS#8 DER) from the cluster's PKI.
fn agency_key(c: &Cluster, organ: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let chain = CertificateDer::pem_file_iter(c.path(&format!("agencies/{organ}.crt")))
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect();
    let key = PrivatePkcs8KeyDer::from_pem_file(c.path(&format!("agencies/{organ}.key")))
        .unwrap()
        .secret_pkcs8_der()
        .to_vec();
    (chain, key)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn pdf_signatures_are_checked_on_arrival_and_shown_with_the_document() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    // The agency's own signing certificate from the dev signing CA, which is
    // the edges' default PDF trust anchor.
    let (chain, key) = agency_key(&c, G22);
    let dir = c.path("pdfs");
    std::fs::create_dir_all(&dir).unwrap();
    let good = signed("Quyet dinh so 12/QD-VPCP", &chain, &key);
    let mut changed = good.clone();
    // A byte of the page content, inside the signed range.
    let at = changed.windows(7).position(|w| w == b"Quyet d").unwrap();
    changed[at] = b'X';
    let (sc, sk) = stranger();
    // A decree signed by another agency (H14), then countersigned by the sender.
    let (other_chain, other_key) = agency_key(&c, H14);
    let decree = truc_pdfsig::sign_pdf(
        &signed("Nghi dinh so 30", &other_chain, &other_key),
        &chain,
        &key,
        now_ms() - 30_000,
    )
    .unwrap();
    let files = [
        write(&dir, "quyet-dinh.pdf", &good),
        write(&dir, "sua-doi.pdf", &changed),
        write(&dir, "nguoi-la.pdf", &signed("Van ban la", &sc, &sk)),
        write(&dir, "khong-ky.pdf", &truc::pdf::simple_pdf(&["Ban nhap"])),
        write(
            &dir,
            "hong.pdf",
            b"%PDF-1.7\n/ByteRange [0 10 99999999 5] /Contents <zz>\n",
        ),
        write(&dir, "nghi-dinh.pdf", &decree),
    ];
    let mut args = vec![];
    for f in &files {
        args.push("--attach");
        args.push(f.as_str());
    }
    let id = c.send_from_vpcp(H41, "Quyết định kèm văn bản ký số", &args);
    c.wait_delivered("vpcp", &id);

    // Checked on arrival: the inbox shows it without anyone opening the document.
    let items = rest::poll("the PDF verdicts in the inbox", || {
        let v = c.inbox("nghean", H41, &[]);
        let s = v[0]["pdf_signatures"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (!s.is_empty()).then_some(s)
    });
    assert!(
        items.contains("quyet-dinh.pdf: valid (Văn phòng Chính phủ)"),
        "{items}"
    );
    assert!(
        items.contains("nghi-dinh.pdf: valid (Văn phòng Chính phủ), 2 signatures, signed by another agency than the sender (000.00.00.H14)"),
        "{items}"
    );

    let out = c.path("received");
    let (ok, said) = c.cli_any(&[
        "get",
        "--config",
        &c.cfg("nghean"),
        &id,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(&id).join("document.json")).unwrap(),
    )
    .unwrap();
    let verdict = |name: &str| {
        meta["pdf_signatures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["attachment"] == name)
            .unwrap_or_else(|| panic!("no check for {name}: {meta:#}"))
            .clone()
    };
    let v = verdict("quyet-dinh.pdf");
    assert_eq!(v["verdict"], "valid", "{v}");
    assert_eq!(v["signer"], "Văn phòng Chính phủ", "{v}");
    assert!(v["signing_time_ms"].as_i64().unwrap() > 0, "{v}");
    let v = verdict("sua-doi.pdf");
    assert_eq!(v["verdict"], "invalid", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("digest"), "{v}");
    let v = verdict("nguoi-la.pdf");
    assert_eq!(v["verdict"], "signer unknown", "{v}");
    assert_eq!(v["signer"], "Người ký lạ", "{v}");
    assert_eq!(verdict("khong-ky.pdf")["verdict"], "unsigned");
    let v = verdict("hong.pdf");
    assert_eq!(v["verdict"], "malformed", "{v}");
    assert!(!v["detail"].as_str().unwrap().is_empty(), "{v}");
    // Every signature of the decree: the other agency's over the first
    // revision, marked (not an error), the sender's over the whole file.
    let each = |v: &serde_json::Value| -> Vec<(String, String, bool, bool)> {
        v["signatures"]
            .as_array()
            .unwrap_or_else(|| panic!("no signatures: {v}"))
            .iter()
            .map(|s| {
                assert!(s["signing_time_ms"].as_i64().unwrap() > 0, "{s}");
                assert!(!s["signer"].as_str().unwrap().is_empty(), "{s}");
                (
                    s["verdict"].as_str().unwrap().to_owned(),
                    s["signer_organ"].as_str().unwrap().to_owned(),
                    s["covers_whole_file"].as_bool().unwrap(),
                    s["other_agency"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let want = vec![
        ("valid".to_owned(), H14.to_owned(), false, true),
        ("valid".to_owned(), G22.to_owned(), true, false),
    ];
    let v = verdict("nghi-dinh.pdf");
    assert_eq!(v["verdict"], "valid", "{v}");
    assert_eq!(each(&v), want, "{v}");
    assert_eq!(each(&verdict("quyet-dinh.pdf")).len(), 1);
    // The REST API shows the same, from the record kept across a restart.
    c.stop("nghean");
    c.start("nghean");
    let (status, doc) = c.rest("nghean").get(&format!("/v1/inbox/{id}"));
    assert_eq!(status, 200, "{doc}");
    let rest_check = doc["pdf_signatures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["attachment"] == "nghi-dinh.pdf")
        .unwrap_or_else(|| panic!("{doc:#}"))
        .clone();
    assert_eq!(each(&rest_check), want, "{rest_check}");
    // `truc get` says it too, for people.
    assert!(
        said.contains("quyet-dinh.pdf: signature valid, signed by Văn phòng Chính phủ"),
        "{said}"
    );
    assert!(said.contains("sua-doi.pdf: signature invalid"), "{said}");
    assert!(
        said.contains("  signature 1 of 2: valid, signed by ")
            && said.contains("(agency 000.00.00.H14)")
            && said.contains("over an earlier revision, signed by another agency than the sender"),
        "{said}"
    );
    assert!(
        said.contains(
            "  signature 2 of 2: valid, signed by Văn phòng Chính phủ (agency 000.00.00.G22)"
        ),
        "{said}"
    );

    // The edXML export for today's software carries the verdicts beside the package.
    let pkg = c.path("quyet-dinh.edxml");
    let (ok, said) = c.cli_any(&[
        "export",
        "--config",
        &c.cfg("nghean"),
        &id,
        "--out",
        pkg.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    assert!(
        said.contains("quyet-dinh.pdf: signature valid, signed by Văn phòng Chính phủ"),
        "{said}"
    );
    assert!(
        said.contains("nguoi-la.pdf: signature signer unknown"),
        "{said}"
    );

    // Recorded with the document: in its trace (the audit log).
    let trace = c.cli_ok(&["trace", "--config", &c.cfg("nghean"), &id]);
    assert!(trace.contains("pdf-checked"), "{trace}");

    // The malformed PDF did not hurt the edge: the next document arrives.
    let next = c.send_from_vpcp(H41, "Văn bản tiếp theo", &[]);
    c.wait_delivered("vpcp", &next);

    // A spreadsheet its sender's software labelled application/pdf (as
    // edXML manifests often do) is not a PDF: not checked, not "malformed".
    let (s, sent) = c.rest("vpcp").post(
        "/v1/documents",
        serde_json::json!({"from": G22, "to": [H41], "subject": "Bảng số liệu",
            "attachments": [{"name": "bang-so-lieu.xlsx", "content_type": "application/pdf",
                             "data_base64": "UEsDBBQAAAAIAA=="}]}),
    );
    assert_eq!(s, 201, "{sent}");
    let xlsx = sent["doc_id"].as_str().unwrap();
    c.wait_delivered("vpcp", xlsx);
    let (_, doc) = c.rest("nghean").get(&format!("/v1/inbox/{xlsx}"));
    let check = &doc["pdf_signatures"][0];
    assert_eq!(check["verdict"], "not checked", "{doc:#}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .starts_with("labelled application/pdf but not a PDF"),
        "{check}"
    );
}

/// A PDF signed with an agency key that is revoked since is not valid at a
/// recipient that has read the list, whatever signing time it claims; the
/// same PDF was valid before.
#[test]
fn a_pdf_signed_with_a_revoked_key_is_not_valid() {
    let mut c = Cluster::new();
    c.set("nghean", "tls", "crl_reload_ms", 100);
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    // Signed by another agency (H14), forwarded by G22.
    let (chain, key) = agency_key(&c, H14);
    let dir = c.path("pdfs");
    std::fs::create_dir_all(&dir).unwrap();
    let pdf = write(&dir, "cong-van.pdf", &signed("Cong van so 7", &chain, &key));
    let verdict = |c: &Cluster, id: &str| {
        rest::poll("the PDF verdict in the inbox", || {
            c.inbox("nghean", H41, &[])
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["doc_id"] == id)
                .and_then(|i| i["pdf_signatures"].as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
    };
    let before = c.send_from_vpcp(H41, "Trước khi thu hồi", &["--attach", &pdf]);
    let v = verdict(&c, &before);
    assert!(v.contains("cong-van.pdf: valid"), "{v}");

    c.cli_ok(&[
        "certs",
        "revoke",
        "--out",
        c.dir.path().to_str().unwrap(),
        "000.00.00.H14",
    ]);
    c.wait_log("nghean", &["signing revocation lists reloaded"]);
    let after = c.send_from_vpcp(H41, "Sau khi thu hồi", &["--attach", &pdf]);
    let v = verdict(&c, &after);
    assert!(
        v.contains("cong-van.pdf: invalid") && v.contains("revoked"),
        "{v}"
    );
}
