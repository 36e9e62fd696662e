//! edXML (QCVN 102:2016), the package format of Vietnam's document exchange.
//!
//! [`parse`] reads a document or status package tolerantly (element order and
//! namespace prefixes vary between producers, optional parts go missing, the
//! manifest's content type may differ from the attachment's) and safely: no DTD is
//! accepted (so no entity expansion), depth, size, element count, ZIP entry count,
//! expansion ratio and attachment size are bounded, and attachment names that could
//! act as paths are refused. Every refusal names the element and the reason.
//! [`emit`] writes a package that today's software accepts (prefixed envelope
//! children, base64 ZIP attachments).

#![forbid(unsafe_code)]

mod dom;
mod emit;
#[cfg(test)]
mod fuzz;
mod model;
mod parse;
mod zipped;

pub use emit::emit;
pub use model::*;
pub use parse::parse;

/// The edXML namespace.
pub const NS: &str = "http://www.mic.gov.vn/TBT/QCVN_102_2016";

/// Why a package was refused: the element (a path) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{element}: {reason}")]
pub struct EdxmlError {
    pub element: String,
    pub reason: String,
}

impl EdxmlError {
    pub fn new(element: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            element: element.into(),
            reason: reason.into(),
        }
    }
}

/// Bounds on what a package may make the parser do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest package, bytes.
    pub max_package_bytes: usize,
    /// Deepest element nesting.
    pub max_depth: usize,
    /// Most elements in the whole document.
    pub max_elements: usize,
    pub max_attachments: usize,
    /// Largest attachment once unzipped.
    pub max_attachment_bytes: u64,
    /// Largest sum of every attachment once unzipped: what one package may
    /// make the parser hold in memory.
    pub max_total_attachment_bytes: u64,
    /// Most entries in one attachment ZIP.
    pub max_zip_entries: usize,
    /// Largest unzipped/zipped ratio of one entry.
    pub max_zip_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_package_bytes: 64 << 20,
            max_depth: 48,
            max_elements: 200_000,
            max_attachments: 100,
            max_attachment_bytes: 48 << 20,
            max_total_attachment_bytes: 256 << 20,
            max_zip_entries: 8,
            max_zip_ratio: 200,
        }
    }
}

/// Refuses attachment names that could act as paths, control sequences or
/// display as another name: the check every hop makes
/// ([`truc_core::check_attachment_name`]), plus one of edXML's own (a name of
/// white space only, which the element text would otherwise carry).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("attachment name is empty".into());
    }
    truc_core::check_attachment_name(name).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use base64::Engine;

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../tests/fixtures/edxml/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn ok(name: &str) -> Package {
        parse(&fixture(name), &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn a_document_package_maps_every_field() {
        let p = ok("new-document.xml");
        assert_eq!(p.kind, Kind::Document);
        assert_eq!(p.from.organ_id, "000.00.00.G22");
        assert_eq!(p.from.organ_name, "Văn phòng Chính phủ");
        assert_eq!(p.recipients(), vec!["000.00.00.H41", "000.00.00.H14"]);
        assert_eq!(p.document_id, "000.00.00.G22,2026/11/28,7816/VPCP-TTĐT");
        assert_eq!(
            (p.code_number.as_str(), p.code_notation.as_str()),
            ("7816", "VPCP-TTĐT")
        );
        assert_eq!(p.promulgation_place, "Hà Nội");
        assert_eq!(p.document_type_name, "Công văn");
        assert_eq!(p.signer_full_name, "Trần Văn B");
        assert_eq!(p.priority, Some(1));
        assert_eq!(p.due_date, "2026/12/15");
        assert_eq!(p.traces.len(), 1);
        assert_eq!(p.attachments.len(), 2);
        assert_eq!(p.attachments[0].name, "7816-VPCP-TTDT.pdf");
        assert!(p.attachments[0].data.starts_with(b"%PDF"));
        assert_eq!(p.attachments[0].manifest_content_type, "application/pdf");
        assert_eq!(p.attachments[0].content_type, "application/zip");
    }

    #[test]
    fn producers_that_differ_in_prefixes_and_order_parse_alike() {
        let p = ok("new-document-unprefixed.xml");
        assert_eq!(p.subject, "Giấy mời họp");
        assert_eq!(p.attachments[0].name, "giay-moi.pdf");
        let r = ok("revoke.xml");
        let b = r.business.unwrap();
        assert_eq!(
            (b.doc_type, b.document_id.as_str()),
            (1, "000.00.00.G22,2026/11/28,7816/VPCP-TTĐT")
        );
        assert_eq!(r.traces.len(), 1, "Bussiness before TraceHeader");
        let u = ok("update.xml").business.unwrap();
        assert_eq!(
            u.receivers,
            vec![
                ("000.00.00.H41".into(), true),
                ("000.00.00.H14".into(), false)
            ]
        );
        let rep = ok("replace.xml").business.unwrap();
        assert_eq!(rep.doc_type, 3);
        assert_eq!(rep.replacements[0].1.len(), 2);
    }

    #[test]
    fn every_status_code_parses_as_a_status_for_its_document() {
        for code in ["01", "02", "03", "04", "05", "06", "13", "15", "16"] {
            let p = ok(&format!("status-{code}.xml"));
            assert_eq!(p.kind, Kind::Status);
            assert_eq!(p.status_code, code);
            assert_eq!(p.recipients(), vec!["000.00.00.G22"]);
            assert_eq!(
                p.response_for[0].document_id,
                "000.00.00.G22,2026/11/28,7816/VPCP-TTĐT"
            );
        }
    }

    #[test]
    fn emitting_and_parsing_again_gives_the_same_package() {
        for name in [
            "new-document.xml",
            "new-document-unprefixed.xml",
            "revoke.xml",
            "update.xml",
            "replace.xml",
            "status-05.xml",
            "status-13.xml",
        ] {
            let p = ok(name);
            let again = parse(&emit(&p), &Limits::default()).unwrap();
            assert_eq!(again, p, "{name}");
        }
        // Fields that travel alone, and their absence, survive too.
        let mut p = ok("new-document.xml");
        p.document_type.clear();
        p.document_type_name.clear();
        p.document_type_detail = "Công văn hành chính".into();
        p.signer_full_name.clear();
        p.signer_position.clear();
        p.signer_competence = "TL. Bộ trưởng".into();
        p.priority = None;
        p.attachments[0].manifest_description = "Bản chính".into();
        p.attachments[0].description = "Bản scan".into();
        assert_eq!(parse(&emit(&p), &Limits::default()).unwrap(), p);
        let out = String::from_utf8(emit(&ok("new-document.xml"))).unwrap();
        assert!(
            out.contains("<edXML:MessageHeader><edXML:From><edXML:OrganId>"),
            "prefixed envelope children"
        );
        assert!(
            out.contains("<AttachmentEncoded><Attachment><ContentId>"),
            "unprefixed attachment children"
        );
    }

    fn err(xml: &[u8]) -> EdxmlError {
        parse(xml, &Limits::default()).unwrap_err()
    }

    fn with_attachment(name: &str, payload: &str) -> Vec<u8> {
        let doc = String::from_utf8(fixture("new-document-unprefixed.xml")).unwrap();
        let start = doc.find("<AttachmentEncoded>").unwrap();
        format!(
            "{}<AttachmentEncoded><Attachment><ContentId>cid:1</ContentId><AttachmentName>{name}</AttachmentName><ContentTransferEncoded>{payload}</ContentTransferEncoded></Attachment></AttachmentEncoded></edXML>",
            &doc[..start]
        )
        .into_bytes()
    }

    fn zip_of(name: &str, data: &[u8]) -> String {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let o = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            w.start_file(name, o).unwrap();
            w.write_all(data).unwrap();
            w.finish().unwrap();
        }
        base64::engine::general_purpose::STANDARD.encode(buf.into_inner())
    }

    #[test]
    fn hostile_packages_are_refused_with_the_element_and_reason() {
        let laughs = b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;\">]><edXML>&lol2;</edXML>";
        assert!(err(laughs).reason.contains("DOCTYPE"));
        let xxe = b"<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><edXML>&xxe;</edXML>";
        assert!(err(xxe).reason.contains("DOCTYPE"));
        let undeclared = b"<edXML><edXMLEnvelope>&xxe;</edXMLEnvelope></edXML>";
        assert!(err(undeclared).reason.contains("unknown entity"));
        let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
        assert!(err(deep.as_bytes()).reason.contains("nested deeper"));
        for bad in ["../../etc/passwd", "/etc/shadow", "C:evil.exe", "a\\b.pdf"] {
            let e = err(&with_attachment(bad, &zip_of("x", b"x")));
            assert!(
                e.element.ends_with("AttachmentName") && e.reason.contains("path"),
                "{bad}: {e}"
            );
        }
        let e = err(&with_attachment("a.pdf", "%%%not base64%%%"));
        assert!(e.reason.contains("invalid base64"), "{e}");
        // A bomb: 100 MiB of zeros in a few hundred KiB, over the size limit.
        let e = err(&with_attachment(
            "bomb.pdf",
            &zip_of("bomb", &vec![0u8; 100 << 20]),
        ));
        assert!(e.reason.contains("expands to"), "{e}");
        // Small enough in total but expanding 1000:1.
        let e = err(&with_attachment(
            "bomb.pdf",
            &zip_of("bomb", &vec![0u8; 10 << 20]),
        ));
        assert!(e.reason.contains(":1"), "{e}");
        let e = err(b"<edXML><edXMLEnvelope><edXMLHeader><MessageHeader><To><OrganId>x</OrganId></To></MessageHeader></edXMLHeader></edXMLEnvelope></edXML>");
        assert_eq!(e.element, "MessageHeader");
        assert!(e.reason.contains("From"));
        let e = err(b"<edXML><edXMLEnvelope><edXMLHeader><MessageHeader><From><OrganId>a</OrganId></From></MessageHeader></edXMLHeader></edXMLEnvelope></edXML>");
        assert!(e.element.contains("To"), "{e}");
        assert!(
            err(b"<edXML><unclosed></edXML>")
                .reason
                .contains("malformed")
        );
    }

    /// `n` bytes that do not compress (a ratio limit is not what refuses
    /// them), from `seed`.
    fn noise(seed: u32, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    /// Many attachments each under the limit are refused once together they
    /// are over the package's: what one package may make the parser hold.
    #[test]
    fn the_attachments_together_are_bounded() {
        let doc = String::from_utf8(fixture("new-document-unprefixed.xml")).unwrap();
        let start = doc.find("<AttachmentEncoded>").unwrap();
        let one = zip_of("x", &noise(1, 600 << 10));
        let attachments: String = (1..=4)
            .map(|i| format!("<Attachment><ContentId>cid:{i}</ContentId><AttachmentName>{i}.pdf</AttachmentName><ContentTransferEncoded>{one}</ContentTransferEncoded></Attachment>"))
            .collect();
        let xml = format!(
            "{}<AttachmentEncoded>{attachments}</AttachmentEncoded></edXML>",
            &doc[..start]
        );
        let limits = Limits {
            max_attachment_bytes: 1 << 20,
            max_total_attachment_bytes: 2 << 20,
            ..Limits::default()
        };
        let e = parse(xml.as_bytes(), &limits).unwrap_err();
        assert!(e.reason.contains("together"), "{e}");
        assert_eq!(
            e.reason,
            format!(
                "the attachments together are over the package's limit of {} bytes",
                2 << 20
            )
        );
        assert!(e.element.contains("Attachment[4]"), "{e}");
        let roomy = Limits {
            max_total_attachment_bytes: 4 << 20,
            ..limits
        };
        assert_eq!(parse(xml.as_bytes(), &roomy).unwrap().attachments.len(), 4);
    }

    /// An attachment whose encoded form alone is over what is left of the
    /// package's budget is refused for the package's limit too, not for a
    /// limit the sender never set.
    #[test]
    fn an_encoded_attachment_over_the_budget_left_names_the_packages_limit() {
        let doc = String::from_utf8(fixture("new-document-unprefixed.xml")).unwrap();
        let start = doc.find("<AttachmentEncoded>").unwrap();
        let (first, second) = (
            zip_of("a", &noise(7, 1536 << 10)),
            zip_of("b", &noise(8, 1843 << 10)),
        );
        let xml = format!(
            "{}<AttachmentEncoded><Attachment><ContentId>cid:1</ContentId><AttachmentName>1.pdf</AttachmentName><ContentTransferEncoded>{first}</ContentTransferEncoded></Attachment><Attachment><ContentId>cid:2</ContentId><AttachmentName>2.pdf</AttachmentName><ContentTransferEncoded>{second}</ContentTransferEncoded></Attachment></AttachmentEncoded></edXML>",
            &doc[..start]
        );
        let limits = Limits {
            max_attachment_bytes: 4 << 20,
            max_total_attachment_bytes: 2 << 20,
            ..Limits::default()
        };
        let e = parse(xml.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            e.reason,
            format!(
                "the attachments together are over the package's limit of {} bytes",
                2 << 20
            ),
            "{e}"
        );
    }

    #[test]
    fn what_strict_receivers_refuse_is_refused_or_left_out() {
        // Thousands of attributes: each is checked against every earlier one.
        let attrs: String = (0..200_000).map(|i| format!(" a{i}=\"\"")).collect();
        let e = err(format!("<edXML{attrs}/>").as_bytes());
        assert!(e.reason.contains("attributes"), "{e}");
        // Characters XML does not allow, as a reference, raw or in CDATA.
        for bad in ["A&#1;B", "A\u{b}B", "<![CDATA[A\u{0}B]]>", "&#xFFFE;"] {
            let e = err(format!("<edXML><Subject>{bad}</Subject></edXML>").as_bytes());
            assert!(e.reason.contains("not allowed"), "{bad}: {e}");
        }
        let e = err(b"<edXML><Subject><![CDATA[\xe0]]></Subject></edXML>");
        assert!(e.reason.contains("not UTF-8"), "{e}");
        let e = err(b"<?xml version=\"1.0\" encoding=\"windows-1258\"?><edXML/>");
        assert!(e.reason.contains("UTF-8"), "{e}");
        // A subject pasted with a vertical tab is written without it.
        let mut p = ok("new-document.xml");
        p.subject = "Giấy\u{b} mời".into();
        let xml = emit(&p);
        assert!(!xml.contains(&0x0b), "a vertical tab was written");
        assert_eq!(parse(&xml, &Limits::default()).unwrap().subject, "Giấy mời");
    }

    #[test]
    fn a_manifest_names_only_attachments_that_travel_and_receivers_are_added_or_removed() {
        let doc = String::from_utf8(with_attachment("a.pdf", &zip_of("x", b"x"))).unwrap();
        let two = doc.replace(
            "</edXMLManifest>",
            "<Reference><ContentId>cid:2</ContentId><AttachmentName>b.pdf</AttachmentName></Reference></edXMLManifest>",
        );
        assert_ne!(two, doc, "the fixture has a manifest");
        let e = err(two.as_bytes());
        assert!(e.reason.contains("cid:2"), "{e}");
        let update = String::from_utf8(fixture("update.xml")).unwrap();
        let garbled = update.replacen(
            "<edXML:ReceiverType>1</edXML:ReceiverType>",
            "<edXML:ReceiverType>x</edXML:ReceiverType>",
            1,
        );
        assert_ne!(garbled, update, "the fixture adds a receiver");
        let e = err(garbled.as_bytes());
        assert!(e.element.ends_with("ReceiverType"), "{e}");
    }

    #[test]
    fn a_name_that_displays_as_another_is_refused() {
        assert!(
            check_name("hop-dong\u{202E}fdp.exe")
                .unwrap_err()
                .contains("bidirectional")
        );
        assert!(check_name("Quyết định số 12.pdf").is_ok());
    }
}
