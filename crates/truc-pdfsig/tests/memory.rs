//! How much memory `verify_pdf` takes for a file with many large `/Contents`,
//! counted by a global allocator (its own test binary, one test: nothing else
//! allocates meanwhile).

#![allow(unsafe_code)] // the counting allocator only

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
    // 32 signature dictionaries with 128 KiB of /Contents hex each (4 MiB).
    let mut pdf = truc_pdfsig::simple_pdf(&["x"]);
    for n in 6..38 {
        pdf.extend_from_slice(
            format!("{n} 0 obj\n<< /Type /Sig /ByteRange [0 1 2 3] /Contents <").as_bytes(),
        );
        pdf.resize(pdf.len() + (128 << 10), b'7');
        pdf.extend_from_slice(b">\n>>\nendobj\n");
    }
    pdf.extend_from_slice(b"%%EOF\n");
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    let anchors = truc_pdfsig::TrustAnchors::from_der(&[ca.cert.der().to_vec()]).unwrap();

    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let report = truc_pdfsig::verify_pdf(&pdf, &anchors, 0).unwrap();
    let extra = PEAK.load(Ordering::SeqCst) - before;
    assert_eq!(report.signatures.len(), 32);
    // Decoding every /Contents up front held 32 x 64 KiB at once.
    assert!(extra < 512 << 10, "{extra} bytes");
}
