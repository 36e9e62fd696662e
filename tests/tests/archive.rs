//! Archival packages: `truc archive export` on a sender's and a recipient's edge,
//! `truc archive verify` offline with only the CA certificates; a byte changed
//! in any part makes the check fail and name that part.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Starts hub, vpcp and nghean, sends a one-page PDF (`name`, saying `text`)
/// from G22 to H41 and waits until it is delivered; returns its doc_id.
fn deliver_pdf(c: &mut Cluster, name: &str, text: &str, subject: &str) -> String {
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let pdf = c.path(name);
    std::fs::write(&pdf, truc::pdf::simple_pdf(&[text])).unwrap();
    let id = c.send_from_vpcp(H41, subject, &["--attach", pdf.to_str().unwrap()]);
    c.wait_delivered("vpcp", &id);
    id
}

/// The one package an export wrote into `out`.
fn package_in(out: &Path) -> PathBuf {
    let pkgs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pkgs.len(), 1, "{pkgs:?}");
    pkgs[0].clone()
}

fn verify(c: &Cluster, pkg: &Path) -> (bool, String) {
    c.cli_any(&[
        "archive",
        "verify",
        pkg.to_str().unwrap(),
        "--signing-ca",
        c.path("signing-ca.crt").to_str().unwrap(),
        "--transport-ca",
        c.path("transport-ca.crt").to_str().unwrap(),
    ])
}

/// `truc archive export` of one document at `node` into `out`.
fn export(c: &Cluster, node: &str, id: &str, out: &Path) -> String {
    c.cli_ok(&[
        "archive",
        "export",
        "--config",
        &c.cfg(node),
        id,
        "--out",
        out.to_str().unwrap(),
    ])
}

/// The manifests of the package at `dir` made to match what is there now
/// (what someone who changed the payload would do: they are not signed).
fn remanifest(dir: &Path) {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &dir.join("data"), &mut files);
    files.sort();
    let manifest: String = files
        .iter()
        .map(|rel| format!("{}  {rel}\n", sha256_hex(&dir.join(rel))))
        .collect();
    std::fs::write(dir.join("manifest-sha256.txt"), manifest).unwrap();
    let tags: String = std::fs::read_to_string(dir.join("tagmanifest-sha256.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(_, rel)| format!("{}  {rel}\n", sha256_hex(&dir.join(rel))))
        .collect();
    std::fs::write(dir.join("tagmanifest-sha256.txt"), tags).unwrap();
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(path).unwrap(),
    ))
}

#[test]
fn an_exported_package_verifies_offline_and_a_changed_byte_is_named() {
    let mut c = Cluster::new();
    let id = deliver_pdf(
        &mut c,
        "to-trinh.pdf",
        "To trinh so 12/TTr-VPCP",
        "Tờ trình phê duyệt",
    );
    c.cli_ok(&["ack", "--config", &c.cfg("nghean"), &id]);
    c.cli_ok(&[
        "reply",
        "--config",
        &c.cfg("nghean"),
        &id,
        "--status",
        "03",
        "--note",
        "Đã tiếp nhận",
    ]);
    rest::poll("acked, status 03 back at the sender", || {
        let v: serde_json::Value =
            serde_json::from_str(&c.cli_ok(&["status", "--config", &c.cfg("vpcp"), &id, "--json"]))
                .unwrap();
        let r = &v["recipients"][0];
        (r["state"] == "acked" && r["last_status"] == "03").then_some(())
    });

    let out = c.path("archive");
    let listed = export(&c, "vpcp", &id, &out);
    assert!(listed.contains(&id), "{listed}");
    let pkg = package_in(&out);
    for f in [
        "bagit.txt",
        "bag-info.txt",
        "manifest-sha256.txt",
        "tagmanifest-sha256.txt",
    ] {
        assert!(pkg.join(f).exists(), "{f} missing");
    }
    let (ok, said) = verify(&c, &pkg);
    assert!(ok, "{said}");
    for proof in [
        "Tờ trình phê duyệt",
        "000.00.00.G22",
        "attachment to-trinh.pdf",
        "accepted",
        "delivered",
        "acked",
        "status 03",
        "audit log are about it",
    ] {
        assert!(said.contains(proof), "{proof} not shown:\n{said}");
    }

    // An archive is never overwritten: a second run keeps it as it is (and
    // goes on, so that a period's run stopped halfway can be run again).
    let before = sha256_hex(&pkg.join("tagmanifest-sha256.txt"));
    let (ok, again) = c.cli_any(&[
        "archive",
        "export",
        "--config",
        &c.cfg("vpcp"),
        &id,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok && again.contains("never overwritten"), "{again}");
    assert_eq!(sha256_hex(&pkg.join("tagmanifest-sha256.txt")), before);

    // One byte changed in each part: the check fails and names it.
    let receipt = std::fs::read_dir(pkg.join("data/receipts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("delivered"))
        .unwrap();
    let receipt_rel = format!(
        "data/receipts/{}",
        receipt.file_name().unwrap().to_string_lossy()
    );
    for (rel, part) in [
        ("data/envelope.pb", "envelope"),
        ("data/attachments/to-trinh.pdf", "attachment to-trinh.pdf"),
        (receipt_rel.as_str(), "receipt"),
        ("data/audit/entries.pb", "audit proof"),
        ("data/audit/checkpoint.pb", "audit proof"),
    ] {
        let copy = c.path(&format!("tampered-{}", rel.replace('/', "_")));
        copy_dir(&pkg, &copy);
        let file = copy.join(rel);
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
        let (ok, said) = verify(&c, &copy);
        assert!(!ok, "{rel} changed and the package still verifies:\n{said}");
        assert!(
            said.contains(rel),
            "the manifest check does not name {rel}:\n{said}"
        );
        assert!(said.contains(part), "{part} not named for {rel}:\n{said}");
    }

    // Changing an attachment and its manifest lines together still fails: the
    // envelope signs the attachment's digest.
    let copy = c.path("tampered-resealed");
    copy_dir(&pkg, &copy);
    let att = copy.join("data/attachments/to-trinh.pdf");
    let mut bytes = std::fs::read(&att).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&att, bytes).unwrap();
    remanifest(&copy);
    let (ok, said) = verify(&c, &copy);
    assert!(!ok, "{said}");
    assert!(
        said.contains("attachment to-trinh.pdf: its bytes are not the ones the envelope signs"),
        "{said}"
    );
    assert!(
        !said.contains("sha-256 is not the one in the manifest"),
        "the manifests were made to match:\n{said}"
    );

    // A file added beside the signed attachment, manifests made to match:
    // the envelope does not name it, so it is no part of the document.
    let copy = c.path("tampered-added");
    copy_dir(&pkg, &copy);
    let forged = copy.join("data/attachments/quyet-dinh.pdf");
    std::fs::write(&forged, b"%PDF-1.7 not signed by anyone").unwrap();
    remanifest(&copy);
    let (ok, said) = verify(&c, &copy);
    assert!(!ok, "an added attachment passed:\n{said}");
    assert!(
        said.contains(
            "data/attachments/quyet-dinh.pdf: an attachment the signed envelope does not name"
        ),
        "{said}"
    );
    assert!(
        !said.contains("not in the manifest"),
        "the manifests were made to match:\n{said}"
    );

    // The first audit entry of the segment dropped (say, "submitted" at the
    // time it was sent), the manifests made to match: the rest still chains
    // to the signed end, but the node signed where the segment starts.
    let copy = c.path("tampered-audit-start");
    copy_dir(&pkg, &copy);
    let entries_pb = copy.join("data/audit/entries.pb");
    let bytes = std::fs::read(&entries_pb).unwrap();
    let mut buf = bytes.as_slice();
    let mut entries = Vec::new();
    while !buf.is_empty() {
        entries.push(
            <truc_store::record::AuditEntry as prost::Message>::decode_length_delimited(&mut buf)
                .unwrap(),
        );
    }
    assert!(entries.len() > 1, "{} entries", entries.len());
    let mut rest = Vec::new();
    for e in &entries[1..] {
        prost::Message::encode_length_delimited(e, &mut rest).unwrap();
    }
    std::fs::write(&entries_pb, rest).unwrap();
    remanifest(&copy);
    let (ok, said) = verify(&c, &copy);
    assert!(!ok, "a segment without its first entry passed:\n{said}");
    assert!(said.contains("entries were removed"), "{said}");

    // The recipient's edge exports its own package of the same document.
    let out2 = c.path("archive-nghean");
    export(&c, "nghean", &id, &out2);
    let (ok, said) = verify(&c, &package_in(&out2));
    assert!(ok, "{said}");
    assert!(said.contains("node nghean's audit log"), "{said}");

    // A period: every document the edge's agencies sent or received in it.
    let out3 = c.path("archive-period");
    let listed = c.cli_ok(&[
        "archive",
        "export",
        "--config",
        &c.cfg("vpcp"),
        "--from",
        "2000-01-01",
        "--out",
        out3.to_str().unwrap(),
    ]);
    assert!(listed.contains(&id), "{listed}");
    let (ok, said) = verify(&c, &package_in(&out3));
    assert!(ok, "{said}");
    let (ok, said) = c.cli_any(&[
        "archive",
        "export",
        "--config",
        &c.cfg("vpcp"),
        "--from",
        "2000-01-01",
        "--to",
        "2000-01-31",
        "--out",
        c.path("archive-empty").to_str().unwrap(),
    ]);
    assert!(ok && said.contains("0 package(s)"), "{said}");
}

/// `node` under a records duty, with each of `periods` (retention settings)
/// at 1 ms and a sweep every 100 ms.
fn records_duty(c: &Cluster, node: &str, periods: &[&str]) {
    c.edit(node, |t| {
        let s = t
            .entry("storage")
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
        for p in periods {
            s.insert((*p).into(), 1.into());
        }
        s.insert("keep_until_archived".into(), true.into());
        let d = t
            .entry("delivery")
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
        d.insert("sweep_interval_ms".into(), 100.into());
    });
}

/// The steps `truc trace` shows for a document at a node.
fn steps(c: &Cluster, node: &str, id: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["trace", "--config", &c.cfg(node), id, "--json"]))
            .unwrap();
    v.as_array()
        .or_else(|| v["steps"].as_array())
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A package copied by a tool that writes names decomposed (NFD, as macOS
/// tools do) still verifies: the same names, in another Unicode form.
#[test]
fn a_package_whose_names_were_decomposed_by_a_copy_still_verifies() {
    let (composed, decomposed) = ("Tờ trình.pdf", "To\u{31B}\u{300} tri\u{300}nh.pdf");
    assert_ne!(composed.as_bytes(), decomposed.as_bytes());
    let mut c = Cluster::new();
    let id = deliver_pdf(&mut c, composed, "To trinh so 3", "Tờ trình");
    let out = c.path("archive");
    export(&c, "vpcp", &id, &out);
    let pkg = package_in(&out);
    let copy = c.path("copied");
    copy_dir(&pkg, &copy);
    let attachments = copy.join("data").join("attachments");
    std::fs::rename(attachments.join(composed), attachments.join(decomposed)).unwrap();
    let (ok, said) = verify(&c, &copy);
    assert!(ok, "{said}");
    assert!(said.contains(&format!("attachment {composed}")), "{said}");
}

#[test]
fn with_a_records_duty_attachments_outlive_retention_until_archived() {
    let mut c = Cluster::new();
    records_duty(&c, "vpcp", &["retention_ms"]);
    let id = deliver_pdf(&mut c, "bao-cao.pdf", "Bao cao quy IV", "Báo cáo quý IV");
    rest::poll("retention over, attachments kept", || {
        steps(&c, "vpcp", &id)
            .iter()
            .any(|s| s == "retention-deferred")
            .then_some(())
    });
    assert!(
        !steps(&c, "vpcp", &id).iter().any(|s| s == "released"),
        "released before it was archived"
    );
    // The attachment is still there: the export fetches it.
    let out = c.path("archive");
    export(&c, "vpcp", &id, &out);
    let (ok, said) = verify(&c, &package_in(&out));
    assert!(ok, "{said}");
    // Archived, then released at the next sweep; both audited.
    rest::poll("released after the export", || {
        let s = steps(&c, "vpcp", &id);
        (s.iter().any(|s| s == "archived") && s.iter().any(|s| s == "released")).then_some(())
    });
}

/// Retention of everything a recipient keeps, under a records duty: past
/// every period, the received document stays whole (`truc get` works, its
/// audit entries are there) until it is exported; then its envelope and
/// attachments go, `truc get` says so, the old audit entries are pruned and
/// the chain still verifies from its anchor, and the package verifies offline.
#[test]
fn past_every_retention_a_received_document_stays_whole_until_exported() {
    let mut c = Cluster::new();
    records_duty(
        &c,
        "nghean",
        &[
            "retention_ms",
            "envelope_retention_ms",
            "audit_retention_ms",
        ],
    );
    let id = deliver_pdf(
        &mut c,
        "quyet-dinh.pdf",
        "Quyet dinh so 7/QD-UBND",
        "Quyết định khen thưởng",
    );
    let nghean = c.cfg("nghean");
    c.cli_ok(&["ack", "--config", &nghean, &id]);
    rest::poll("both retentions over, both deferred", || {
        let s = steps(&c, "nghean", &id);
        (s.iter().filter(|s| *s == "retention-deferred").count() == 2).then_some(())
    });
    // Its audit entries are all there, the first one included.
    let audit = |c: &Cluster| -> serde_json::Value {
        serde_json::from_str(&c.cli_ok(&["audit", "verify", "--config", &nghean, "--json"]))
            .unwrap()
    };
    assert_eq!(audit(&c)["pruned_through"], 0);
    let s = steps(&c, "nghean", &id);
    assert_eq!(s.first().map(String::as_str), Some("received"), "{s:?}");
    let got = c.path("got");
    let dir = c.cli_ok(&[
        "get",
        "--config",
        &nghean,
        &id,
        "--out",
        got.to_str().unwrap(),
    ]);
    assert!(
        Path::new(dir.trim())
            .join("attachments")
            .join("quyet-dinh.pdf")
            .exists(),
        "{dir}"
    );

    let out = c.path("archive-nghean");
    export(&c, "nghean", &id, &out);
    let pkg = package_in(&out);
    let (ok, said) = verify(&c, &pkg);
    assert!(ok, "{said}");

    rest::poll("envelope removed after the export", || {
        let (ok, said) = c.cli_any(&[
            "get",
            "--config",
            &nghean,
            &id,
            "--out",
            got.to_str().unwrap(),
        ]);
        (!ok && said.contains("removed on")).then_some(said)
    });
    rest::poll("the document's entries pruned after the export", || {
        steps(&c, "nghean", &id).is_empty().then_some(())
    });
    let a = audit(&c);
    assert_eq!(a["ok"], true, "{a}");
    assert!(a["pruned_through"].as_u64() > Some(0), "{a}");
    // The counters move after the commit the polls above saw: waited for
    // until they reach what is expected, then asserted exactly.
    let want = [2, 1, 1];
    let got = rest::poll("the retention counters", || {
        let got = [
            "retention_deferred",
            "retention_envelopes_removed",
            "retention_released",
        ]
        .map(|n| c.stat("nghean", n));
        got.iter().zip(want).all(|(g, w)| *g >= w).then_some(got)
    });
    assert_eq!(got, want, "deferred, envelopes removed, released");
    assert!(c.stat("nghean", "audit_entries_pruned") > 0);
    // Still a record of the document: the inbox lists it.
    let inbox = c.inbox("nghean", H41, &["--all"]).to_string();
    assert!(inbox.contains(&id), "{inbox}");
    // The package needs nothing from the node.
    let (ok, said) = verify(&c, &pkg);
    assert!(ok, "{said}");
}

/// A document's audit proof is the node's log from the first entry about it to
/// the last, that last one signed: not every entry written since. An old
/// document archived at a busy node would otherwise carry its whole log since
/// (and other documents' entries with it).
#[test]
fn a_documents_audit_proof_ends_at_its_last_entry_not_at_the_logs_head() {
    use prost::Message;
    let mut c = Cluster::new();
    let first = deliver_pdf(&mut c, "cong-van.pdf", "Cong van so 1", "Công văn thứ nhất");
    let later = c.send_from_vpcp(H41, "Công văn sau", &[]);
    c.wait_delivered("vpcp", &later);

    let out = c.path("archive-first");
    export(&c, "nghean", &first, &out);
    let pkg = package_in(&out);
    let (ok, said) = verify(&c, &pkg);
    assert!(ok, "{said}");
    let bytes = std::fs::read(pkg.join("data/audit/entries.pb")).unwrap();
    let mut buf = bytes.as_slice();
    let mut entries = Vec::new();
    while !buf.is_empty() {
        entries.push(truc_store::record::AuditEntry::decode_length_delimited(&mut buf).unwrap());
    }
    let events: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.doc_id.clone(), e.event.clone()))
        .collect();
    assert_eq!(entries.first().unwrap().doc_id, first, "{events:?}");
    assert_eq!(entries.last().unwrap().doc_id, first, "{events:?}");
    assert!(
        entries.iter().all(|e| e.doc_id != later),
        "entries about the later document in the first one's proof: {events:?}"
    );
    let last = entries.last().unwrap().seq;
    assert!(
        said.contains(&format!("chained to entry #{last} ")),
        "{said}"
    );
}
