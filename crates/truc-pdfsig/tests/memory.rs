//! How much memory `verify_pdf` takes for a file with many large `/Contents`,
//! counted by a global allocator (its own test binary, one test: nothing else
//! allocates meanwhile).

#![allow(unsafe_code)] // the counting allocator only
#![cfg(feature = "sign")] // `sign_pdf` makes the CMS

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn contents_are_decoded_one_signature_at_a_time() {
    // 32 signature dictionaries with 128 KiB of /Contents hex each (4 MiB): a
    // real CMS padded with zeros, and byte ranges that pass every check (each
    // signs the file up to the end of its own dictionary, the last one all
    // of it), so that every /Contents is decoded and its CMS checked.
    // A signature's CMS (DER, in hex) by a self-signed P-256 certificate, of
    // a document other than the one it is put in.
    let cms = {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["signer.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pdf = truc_pdfsig::simple_pdf(&["other"]);
        let signed = truc_pdfsig::sign_pdf(
            &pdf,
            &[cert.der().to_vec()],
            &key.serialize_der(),
            1_748_736_000_000,
        )
        .unwrap();
        let hex = signed
            .windows(11)
            .position(|w| w == b"/Contents <")
            .unwrap()
            + 11;
        let header = std::str::from_utf8(&signed[hex..hex + 8]).unwrap();
        assert!(header.starts_with("3082"), "{header}");
        let der_len = 4 + usize::from_str_radix(&header[4..], 16).unwrap();
        std::str::from_utf8(&signed[hex..hex + 2 * der_len])
            .unwrap()
            .to_string()
    };
    let mut pdf = truc_pdfsig::simple_pdf(&["x"]);
    let mut dicts = Vec::new();
    for n in 6..38 {
        pdf.extend_from_slice(format!("{n} 0 obj\n<< /Type /Sig /ByteRange [").as_bytes());
        let numbers = pdf.len();
        pdf.extend_from_slice(b"0 0000000000 0000000000 0000000000] /Contents <");
        let open = pdf.len() - 1;
        pdf.extend_from_slice(cms.as_bytes());
        pdf.resize(open + 1 + (128 << 10), b'0');
        pdf.extend_from_slice(b">");
        let close = pdf.len();
        pdf.extend_from_slice(b"\n>>\nendobj\n");
        dicts.push((numbers, open, close, pdf.len()));
    }
    pdf.extend_from_slice(b"%%EOF\n");
    let len = pdf.len();
    if let Some(last) = dicts.last_mut() {
        last.3 = len;
    }
    for (at, b, c, end) in dicts {
        let numbers = format!("0 {b:010} {c:010} {:010}", end - c);
        pdf[at..at + numbers.len()].copy_from_slice(numbers.as_bytes());
    }
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    let anchors = truc_pdfsig::TrustAnchors::from_der(&[ca.cert.der().to_vec()]).unwrap();

    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let report = truc_pdfsig::verify_pdf(&pdf, &anchors, 0).unwrap();
    let extra = PEAK.load(Ordering::SeqCst) - before;
    assert_eq!(report.signatures.len(), 32);
    for v in &report.signatures {
        // Decoded, its CMS read, its signed bytes hashed.
        match v {
            truc_pdfsig::Verdict::Invalid { reason, .. } => {
                assert!(reason.starts_with("digest mismatch"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Decoding every /Contents up front held 32 x 64 KiB at once.
    assert!(extra < 512 << 10, "{extra} bytes");
}
