//! Property-based fuzzing of `verify_pdf`: arbitrary bytes, and a signed PDF
//! mutated at random (byte changes, insertions, deletions, truncation). It must
//! never panic, and a document whose signed bytes were changed must never come
//! out valid. Failing inputs are kept by proptest
//! under `proptest-regressions/` and replayed by every run.

#![cfg(feature = "sign")]

use std::sync::OnceLock;

use proptest::prelude::*;

use crate::{TrustAnchors, Verdict, verify_pdf};

fn fixture() -> &'static (Vec<u8>, TrustAnchors) {
    static F: OnceLock<(Vec<u8>, TrustAnchors)> = OnceLock::new();
    F.get_or_init(|| {
        let ca = crate::tests::Ca::new("CA A");
        let pdf = crate::tests::signed_pdf(&ca.leaf("Nguyen Van A"));
        (pdf, ca.anchors())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        prefix in prop::bool::ANY,
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let (_, anchors) = fixture();
        let mut pdf = if prefix { b"%PDF-1.7\n".to_vec() } else { Vec::new() };
        pdf.extend_from_slice(&bytes);
        let _ = verify_pdf(&pdf, anchors, crate::tests::NOW);
    }

    #[test]
    fn a_mutated_signed_pdf_never_panics(
        edits in proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), 0u8..4),
            1..6,
        ),
    ) {
        let (signed, anchors) = fixture();
        let mut pdf = signed.clone();
        // Replacements outside the /Contents hole change signed bytes: the
        // document must not come out valid. (Inside the hole, some changes are
        // harmless: hex case, the unsigned digestAlgorithms set of the CMS.)
        let (hole_start, hole_end) = hole(signed);
        let mut signed_bytes_replaced = true;
        for (at, byte, op) in edits {
            if pdf.is_empty() {
                break;
            }
            let i = at.index(pdf.len());
            match op {
                0 => {
                    signed_bytes_replaced &= i < hole_start || i >= hole_end;
                    pdf[i] = byte;
                }
                1 => {
                    signed_bytes_replaced = false;
                    pdf.insert(i, byte);
                }
                2 => {
                    signed_bytes_replaced = false;
                    pdf.remove(i);
                }
                _ => {
                    signed_bytes_replaced = false;
                    pdf.truncate(i);
                }
            }
        }
        let result = verify_pdf(&pdf, anchors, crate::tests::NOW);
        if let Ok(report) = &result {
            prop_assert_eq!(report.signers.len(), report.signatures.len());
        }
        if pdf != *signed && signed_bytes_replaced
            && let Ok(report) = &result
        {
            prop_assert!(
                !matches!(report.summary(), Verdict::Valid { .. }),
                "a mutated PDF came out valid: {report:?}"
            );
        }
    }
}

/// The `<...>` of /Contents in the fixture.
fn hole(pdf: &[u8]) -> (usize, usize) {
    let start = pdf
        .windows(11)
        .position(|w| w == b"/Contents <")
        .map_or(0, |p| p + 10);
    let end = pdf[start..]
        .iter()
        .position(|b| *b == b'>')
        .map_or(pdf.len(), |p| start + p + 1);
    (start, end)
}
