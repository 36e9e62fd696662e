//! Property-based fuzzing of everything that reads untrusted edXML: the parser
//! on arbitrary and on mutated valid packages, the base64+ZIP attachment decoder,
//! and the attachment-name check. None may panic; what they accept must be
//! sound. Failing inputs are kept by proptest under `proptest-regressions/` and
//! replayed by every run. `PROPTEST_CASES=200000 scripts/fuzz-long` runs longer.

use base64::Engine;
use proptest::prelude::*;

use crate::{Limits, check_name, parse::parse, zipped};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/edxml/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn small_limits() -> Limits {
    Limits {
        max_package_bytes: 1 << 20,
        max_attachment_bytes: 1 << 20,
        ..Limits::default()
    }
}

proptest! {
    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096)
    ) {
        let _ = parse(&bytes, &small_limits());
    }

    #[test]
    fn the_parser_never_panics_on_a_mutated_valid_package(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
    ) {
        let name = ["new-document.xml", "revoke.xml", "replace.xml", "status-01.xml"][which];
        let mut bytes = fixture(name);
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        let _ = parse(&bytes, &small_limits());
    }

    #[test]
    fn the_attachment_decoder_never_panics_on_arbitrary_base64(
        text in "[A-Za-z0-9+/=\\s]{0,3000}"
    ) {
        let l = small_limits();
        let _ = zipped::decode("DocumentAttachment", &text, l.max_attachment_bytes, &l);
    }

    #[test]
    fn a_mutated_attachment_zip_is_refused_or_decoded_within_limits(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)
    ) {
        let encoded = zipped::encode("phu-luc.pdf", &data);
        let mut zip = base64::engine::general_purpose::STANDARD.decode(encoded.as_bytes()).unwrap_or_default();
        for (at, byte) in edits {
            if !zip.is_empty() {
                let i = at.index(zip.len());
                zip[i] = byte;
            }
        }
        let text = base64::engine::general_purpose::STANDARD.encode(&zip);
        let l = small_limits();
        if let Ok(out) = zipped::decode("DocumentAttachment", &text, l.max_attachment_bytes, &l) {
            prop_assert!(out.len() as u64 <= l.max_attachment_bytes);
        }
    }

    #[test]
    fn an_accepted_attachment_name_is_never_a_path(name in any::<String>()) {
        if check_name(&name).is_ok() {
            prop_assert!(!name.contains('/') && !name.contains('\\'));
            prop_assert!(name != "." && name != "..");
            prop_assert!(!name.chars().any(char::is_control));
            prop_assert!(!name.trim().is_empty());
            prop_assert!(name.chars().count() <= 255);
        }
    }

    #[test]
    fn path_tricks_are_refused(
        prefix in "[a-z]{0,5}",
        trick in prop::sample::select(vec!["../", "..\\", "/", "C:", "\u{0}", "\n", "\u{1b}["]),
        suffix in "[a-z]{0,5}"
    ) {
        let name = format!("{prefix}{trick}{suffix}");
        let refused = check_name(&name).is_err();
        prop_assert!(refused || (trick == "C:" && !prefix.is_empty()), "{name:?} accepted");
    }
}
