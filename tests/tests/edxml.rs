//! edXML through real edges: every fixture imports, routes and exports, and
//! the export parses back to the same fields and attachment bytes; hostile
//! packages are refused with a reason, in bounded memory, and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use base64::Engine;
use common::{rest::*, *};
use serde_json::{Value, json};
use truc_edxml::{Limits, Package};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/edxml")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap()
}

fn parse(xml: &[u8]) -> Package {
    truc_edxml::parse(xml, &Limits::default()).unwrap()
}

/// The fields a package carries from one system to the next (not the trace,
/// to which each hop appends).
fn fields(p: &Package) -> Value {
    let mut v = serde_json::to_value(p).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("traces");
    o.insert(
        "attachment_bytes".into(),
        p.attachments
            .iter()
            .map(|a| {
                json!([
                    a.name,
                    hex::encode(ring::digest::digest(&ring::digest::SHA256, &a.data))
                ])
            })
            .collect(),
    );
    // The transfer form of an attachment is always a ZIP on export.
    for a in o["attachments"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("content_type");
    }
    v
}

fn import(api: &Rest, package: &[u8]) -> Value {
    let (s, v) = api.post_bytes("/v1/edxml", "application/xml", package);
    assert_eq!(s, 201, "{v}");
    v
}

/// Exports `doc_id` at `api`, checks it against `sent`, returns the export.
fn export_matches(api: &Rest, doc_id: &str, sent: &[u8], hop_organ: &str) -> Vec<u8> {
    let (s, out) = api.get_bytes(&format!("/v1/inbox/{doc_id}/edxml"));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&out));
    let (a, b) = (parse(sent), parse(&out));
    assert_eq!(
        fields(&b),
        fields(&a),
        "export of {doc_id} keeps every field"
    );
    assert_eq!(
        b.traces[..a.traces.len()],
        a.traces[..],
        "the sender's trace is kept"
    );
    assert!(
        b.traces.len() > a.traces.len() && b.traces.last().unwrap().organ_id == hop_organ,
        "a TraceHeader for the receiving hop: {:?}",
        b.traces
    );
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.contains("<edXML:MessageHeader>"),
        "prefixed envelope children"
    );
    out
}

#[test]
fn every_fixture_imports_routes_and_exports_with_the_same_fields_and_bytes() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean", "caobang"] {
        c.start(n);
    }
    let vpcp = c.rest("vpcp");
    let nghean = c.rest("nghean");
    let caobang = c.rest("caobang");

    // A new document, through the CLI as an operator would.
    let out = c.cli_ok(&[
        "import",
        "--config",
        &c.cfg("vpcp"),
        fixture_path("new-document.xml").to_str().unwrap(),
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["kind"].as_str(), r["duplicate"].as_bool()),
        (Some("document"), Some(false))
    );
    let doc = r["doc_id"].as_str().unwrap().to_owned();
    let item = nghean.wait_inbox(H41, &doc, "document");
    assert_eq!(
        item["subject"],
        "Về việc triển khai Nghị định 30/2020/NĐ-CP"
    );
    assert_eq!(item["priority"], 1);
    caobang.wait_inbox(H14, &doc, "document");
    let exported = export_matches(&nghean, &doc, &fixture("new-document.xml"), H41);
    export_matches(&caobang, &doc, &fixture("new-document.xml"), H14);
    // The CLI export is the same package.
    let path = c.path("exported.edxml");
    c.cli_ok(&[
        "export",
        "--config",
        &c.cfg("nghean"),
        &doc,
        "--out",
        path.to_str().unwrap(),
    ]);
    assert_eq!(
        fields(&parse(&std::fs::read(&path).unwrap())),
        fields(&parse(&exported))
    );
    // At the sender, the original, byte for byte (REST and CLI).
    let (s, original) = vpcp.get_bytes(&format!("/v1/documents/{doc}/edxml"));
    assert_eq!(s, 200);
    assert_eq!(original, fixture("new-document.xml"));
    let orig = c.path("original.edxml");
    c.cli_ok(&[
        "export",
        "--config",
        &c.cfg("vpcp"),
        &doc,
        "--original",
        "--out",
        orig.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&orig).unwrap(), fixture("new-document.xml"));
    // Re-importing the export at the sender is the same document, not a second one.
    let again = import(&vpcp, &exported);
    assert_eq!(
        (again["doc_id"].as_str(), again["duplicate"].as_bool()),
        (Some(doc.as_str()), Some(true))
    );
    // And inspect reads the export as it read the fixture.
    std::fs::write(c.path("again.edxml"), &exported).unwrap();
    let inspect = |p: &str| -> Value {
        let mut v: Value =
            serde_json::from_str(&c.cli_ok(&["edxml", "inspect", p, "--json"])).unwrap();
        v.as_object_mut().unwrap().remove("traces");
        v
    };
    assert_eq!(
        inspect(c.path("again.edxml").to_str().unwrap()),
        inspect(fixture_path("new-document.xml").to_str().unwrap())
    );

    // One status per code from the recipient, each routed to the sender; 13
    // (a recall request) comes from the sender to every recipient, and 15/16
    // answer it.
    let status_from_h41 = |code: &str| {
        let name = format!("status-{code}.xml");
        let r = import(&nghean, &fixture(&name));
        assert_eq!(r["kind"], "status", "{name}: {r}");
        let id = r["doc_id"].as_str().unwrap().to_owned();
        let got = vpcp.wait_inbox(G22, &id, "status");
        assert_eq!(
            (got["status_code"].as_str(), got["for_doc_id"].as_str()),
            (Some(code), Some(doc.as_str())),
            "{name}"
        );
        export_matches(&vpcp, &id, &fixture(&name), G22);
    };
    for code in ["01", "02", "03", "04", "05", "06"] {
        status_from_h41(code);
    }
    let r = import(&vpcp, &fixture("status-13.xml"));
    let id = r["doc_id"].as_str().unwrap();
    nghean.wait_inbox(H41, id, "status");
    caobang.wait_inbox(H14, id, "status");
    export_matches(&nghean, id, &fixture("status-13.xml"), H41);
    for code in ["16", "15"] {
        status_from_h41(code);
    }
    // The sender sees the last one on its document.
    let (_, st) = vpcp.get(&format!("/v1/documents/{doc}"));
    let h41 = st["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["organ"] == H41)
        .unwrap();
    assert_eq!(h41["last_status"], "15", "{st}");

    // A status from an agency that did not receive the document is refused.
    let (s, e) = caobang.post_bytes("/v1/edxml", "application/xml", &fixture("status-05.xml"));
    assert_eq!(s, 403, "caobang's application may not speak for H41: {e}");

    // Update (adds H41, removes H14), replace, revoke: each routes to its To
    // list and names the document it changes.
    for (name, to) in [
        ("update.xml", vec![(&nghean, H41)]),
        ("replace.xml", vec![(&nghean, H41), (&caobang, H14)]),
        ("revoke.xml", vec![(&nghean, H41), (&caobang, H14)]),
    ] {
        let r = import(&vpcp, &fixture(name));
        let id = r["doc_id"].as_str().unwrap().to_owned();
        for (api, organ) in to {
            let got = api.wait_inbox(organ, &id, "document");
            assert_eq!(got["target_doc_id"], doc.as_str(), "{name}: {got}");
            export_matches(api, &id, &fixture(name), organ);
        }
    }

    // A producer that leaves envelope children unprefixed: exported prefixed.
    let r = import(&vpcp, &fixture("new-document-unprefixed.xml"));
    let id = r["doc_id"].as_str().unwrap();
    nghean.wait_inbox(H41, id, "document");
    export_matches(&nghean, id, &fixture("new-document-unprefixed.xml"), H41);
}

/// Software on either side may send natively or as edXML: a status package
/// answering a document sent natively names it by the id the export wrote,
/// and a status sent natively about an imported document names it by its
/// package's DocumentId, as the sender's software knows it.
#[test]
fn native_and_edxml_senders_name_the_same_document() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let vpcp = c.rest("vpcp");
    let nghean = c.rest("nghean");
    let fixture_id = "000.00.00.G22,2026/11/28,7816/VPCP-TTĐT";

    // Sent natively, answered with a package.
    let (s, sent) = vpcp.post(
        "/v1/documents",
        json!({"from": G22, "to": [H41], "subject": "Công văn gửi thẳng"}),
    );
    assert_eq!(s, 201, "{sent}");
    let id = sent["doc_id"].as_str().unwrap().to_owned();
    nghean.wait_inbox(H41, &id, "document");
    let (s, out) = nghean.get_bytes(&format!("/v1/inbox/{id}/edxml"));
    assert_eq!(s, 200);
    assert_eq!(parse(&out).document_id, id, "the export names the truc id");
    let answer = String::from_utf8(fixture("status-03.xml"))
        .unwrap()
        .replace(fixture_id, &id);
    let r = import(&nghean, answer.as_bytes());
    let got = vpcp.wait_inbox(G22, r["doc_id"].as_str().unwrap(), "status");
    assert_eq!(got["for_doc_id"], id.as_str(), "{got}");

    // Imported, answered natively.
    let r = import(&vpcp, &fixture("new-document.xml"));
    let doc = r["doc_id"].as_str().unwrap().to_owned();
    nghean.wait_inbox(H41, &doc, "document");
    let (s, st) = nghean.post(&format!("/v1/inbox/{doc}/status"), json!({"code": "03"}));
    assert_eq!(s, 201, "{st}");
    let st_id = st["doc_id"].as_str().unwrap();
    vpcp.wait_inbox(G22, st_id, "status");
    let (s, out) = vpcp.get_bytes(&format!("/v1/inbox/{st_id}/edxml"));
    assert_eq!(s, 200);
    let p = parse(&out);
    assert_eq!(
        p.response_for[0].document_id, fixture_id,
        "{:?}",
        p.response_for
    );
}

/// A ZIP holding `name`, whose sizes say `declared` whatever the data is:
/// written by hand so that the header can lie (ZIP64 for sizes over 4 GiB).
fn lying_zip(name: &str, data: &[u8], declared: u64) -> Vec<u8> {
    // Deflate through the zip crate, then lift the compressed stream out.
    let mut honest = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut honest);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file(name, o).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
    }
    let h = honest.into_inner();
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
    let crc = u32_at(14);
    let comp = u32_at(18) as u64;
    let start = 30 + u16_at(26) + u16_at(28);
    let deflated = &h[start..start + comp as usize];

    let zip64 = declared > u32::MAX as u64 - 1;
    let mut extra = Vec::new();
    if zip64 {
        extra.extend(1u16.to_le_bytes());
        extra.extend(16u16.to_le_bytes());
        extra.extend(declared.to_le_bytes());
        extra.extend(comp.to_le_bytes());
    }
    let (c32, u32_) = if zip64 {
        (u32::MAX, u32::MAX)
    } else {
        (comp as u32, declared as u32)
    };
    let mut z = Vec::new();
    z.extend(0x0403_4b50u32.to_le_bytes());
    z.extend(45u16.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z.extend(8u16.to_le_bytes());
    z.extend([0u8; 4]);
    z.extend(crc.to_le_bytes());
    z.extend(c32.to_le_bytes());
    z.extend(u32_.to_le_bytes());
    z.extend((name.len() as u16).to_le_bytes());
    z.extend((extra.len() as u16).to_le_bytes());
    z.extend(name.as_bytes());
    z.extend(&extra);
    z.extend(deflated);
    let cd = z.len() as u32;
    z.extend(0x0201_4b50u32.to_le_bytes());
    z.extend(45u16.to_le_bytes());
    z.extend(45u16.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z.extend(8u16.to_le_bytes());
    z.extend([0u8; 4]);
    z.extend(crc.to_le_bytes());
    z.extend(c32.to_le_bytes());
    z.extend(u32_.to_le_bytes());
    z.extend((name.len() as u16).to_le_bytes());
    z.extend((extra.len() as u16).to_le_bytes());
    z.extend([0u8; 8]); // comment length, disk, internal attributes
    z.extend([0u8; 4]); // external attributes
    z.extend(0u32.to_le_bytes()); // local header offset
    z.extend(name.as_bytes());
    z.extend(&extra);
    let cd_len = z.len() as u32 - cd;
    z.extend(0x0605_4b50u32.to_le_bytes());
    z.extend([0u8; 4]);
    z.extend(1u16.to_le_bytes());
    z.extend(1u16.to_le_bytes());
    z.extend(cd_len.to_le_bytes());
    z.extend(cd.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The new-document fixture with one attachment of our making (and its
/// manifest naming only that one).
fn with_attachment(name: &str, encoded: &str) -> Vec<u8> {
    let mut doc = String::from_utf8(fixture("new-document.xml")).unwrap();
    let second = doc.find("<edXML:Reference><edXML:ContentId>cid:2").unwrap();
    let end = second + doc[second..].find("</edXML:Reference>").unwrap();
    doc.replace_range(second..end + "</edXML:Reference>".len(), "");
    let start = doc.find("<AttachmentEncoded>").unwrap();
    format!(
        "{}<AttachmentEncoded><Attachment><ContentId>cid:1</ContentId><AttachmentName>{name}</AttachmentName><ContentType>application/zip</ContentType><edXML:ContentTransferEncoded>{encoded}</edXML:ContentTransferEncoded></Attachment></AttachmentEncoded></edXML>",
        &doc[..start]
    )
    .into_bytes()
}

#[test]
fn hostile_packages_are_refused_with_a_reason_and_the_edge_keeps_serving() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let vpcp = c.rest("vpcp");
    let sent_before = vpcp.get(&format!("/v1/sent?from={G22}")).1["documents"]
        .as_array()
        .unwrap()
        .len();
    let rss_before = c.peak_rss_kib("vpcp");

    let laughs = {
        let mut d = String::from("<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">");
        for i in 1..10 {
            let prev = if i == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", i - 1)
            };
            d.push_str(&format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&{prev};").repeat(10)
            ));
        }
        d.push_str("]><edXML>&lol9;</edXML>");
        d.into_bytes()
    };
    let xxe = b"<?xml version=\"1.0\"?><!DOCTYPE edXML [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><edXML><edXML:edXMLEnvelope>&xxe;</edXML:edXMLEnvelope></edXML>".to_vec();
    let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000)).into_bytes();
    // 10 MiB of zeros deflate to ~10 KiB; the header claims 10 GiB.
    let zeros = vec![0u8; 10 << 20];
    let bomb_10g = lying_zip("bomb.pdf", &zeros, 10 << 30);
    assert!(bomb_10g.len() < 16 << 10, "{} bytes", bomb_10g.len());
    // The same stream with a header that claims 1 KiB.
    let bomb_small_lie = lying_zip("bomb.pdf", &zeros, 1024);
    // Honest headers: 10 MiB from ~10 KiB is over the expansion ratio.
    let bomb_ratio = lying_zip("bomb.pdf", &zeros, zeros.len() as u64);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("billion laughs", laughs, "DOCTYPE"),
        ("external entity", xxe, "DOCTYPE"),
        ("100k-deep nesting", deep, "nested deeper"),
        (
            "10 KiB → 10 GiB zip",
            with_attachment("a.pdf", &b64(&bomb_10g)),
            "expands to",
        ),
        (
            "zip whose header lies",
            with_attachment("a.pdf", &b64(&bomb_small_lie)),
            "not the size it declares",
        ),
        (
            "zip over the ratio",
            with_attachment("a.pdf", &b64(&bomb_ratio)),
            ":1",
        ),
        (
            "../ name",
            with_attachment("../../etc/cron.d/x", &b64(&lying_zip("x", b"x", 1))),
            "path",
        ),
        (
            "bidi name",
            with_attachment("hop-dong\u{202E}fdp.exe", &b64(&lying_zip("x", b"x", 1))),
            "bidirectional override characters",
        ),
        (
            "absolute name",
            with_attachment("/etc/shadow", &b64(&lying_zip("x", b"x", 1))),
            "path",
        ),
        (
            "invalid base64",
            with_attachment("a.pdf", "%%%not*base64%%%"),
            "invalid base64",
        ),
        ("not XML", b"\x00\x01PK binary".to_vec(), ""),
    ];
    let mut reasons = BTreeMap::new();
    for (what, package, needle) in &cases {
        let (s, e) = vpcp.post_bytes("/v1/edxml", "application/xml", package);
        assert_eq!(s, 400, "{what}: {e}");
        assert_eq!(e["code"], "INVALID_ARGUMENT", "{what}: {e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.starts_with("edXML "), "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg}");
        reasons.insert(*what, msg.to_owned());
        // The CLI refuses it the same way, offline and through the edge.
        let path = c.path("hostile.edxml");
        std::fs::write(&path, package).unwrap();
        let (ok, out) = c.cli_any(&["edxml", "inspect", path.to_str().unwrap()]);
        assert!(
            !ok && out.contains("not a valid edXML package") && out.contains(needle),
            "{what}: {out}"
        );
        let (ok, out) = c.cli_any(&["import", "--config", &c.cfg("vpcp"), path.to_str().unwrap()]);
        assert!(
            !ok && out.contains("was not imported") && out.contains(needle),
            "{what}: {out}"
        );
    }
    // The element is named where there is one.
    assert!(
        reasons["../ name"].contains("AttachmentName"),
        "{reasons:?}"
    );
    assert!(
        reasons["invalid base64"].contains("ContentTransferEncoded"),
        "{reasons:?}"
    );

    // Bounded memory: the bombs were never expanded (10 MiB each at most, by
    // the lying header, against 10 GiB claimed).
    let grown = c.peak_rss_kib("vpcp").saturating_sub(rss_before);
    assert!(grown < 200 << 10, "vpcp grew by {grown} KiB");
    // Nothing was stored, and the edge still serves.
    let after = vpcp.get(&format!("/v1/sent?from={G22}")).1["documents"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, sent_before, "a refused package leaves no trace");
    let r = import(&vpcp, &fixture("new-document.xml"));
    assert_eq!(r["duplicate"], false);
    let nghean = c.rest("nghean");
    nghean.wait_inbox(H41, r["doc_id"].as_str().unwrap(), "document");
    // Each refusal is counted and logged with its reason.
    assert_eq!(c.stat("vpcp", "edxml_refused"), 2 * cases.len() as u64);
    c.wait_log("vpcp", &["edXML package refused", "nested deeper"]);
}
