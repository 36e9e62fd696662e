//! Property-based fuzzing of the decoders and the verifier every byte from a peer
//! goes through: link frames and headers from arbitrary bytes, and `verify` on
//! arbitrary envelopes and on valid ones with any byte changed. Nothing may
//! panic, and nothing changed may verify. Failing inputs are kept by proptest
//! under `proptest-regressions/`; `scripts/fuzz-long` runs many more cases.

use std::sync::OnceLock;

use proptest::prelude::*;
use prost::Message;
use rustls::pki_types::UnixTime;
use truc_proto::v1 as pb;

use crate::{
    config::Limits,
    envelope::{self, FORMAT_VERSION, Verifiers},
    state::testing::Fixture,
};

struct Keys {
    verifiers: Verifiers,
    valid: pb::SignedEnvelope,
}

/// One fixture for every case: generating keys per case would be the whole run.
fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let f = Fixture::new();
        let signer = f.signer("000.00.00.G22");
        let header = pb::Header {
            format_version: FORMAT_VERSION,
            doc_id: truc_core::DocId::new_v7().to_string(),
            kind: pb::Kind::Document as i32,
            from: "000.00.00.G22".into(),
            to: vec!["000.00.00.H41".into()],
            created_at_ms: 1,
            subject: "Công văn gốc".into(),
            attachments: vec![pb::AttachmentRef {
                name: "phu-luc.pdf".into(),
                content_type: "application/pdf".into(),
                size: 3,
                sha256: truc_store::Digest::of(b"pdf").0.to_vec(),
            }],
            ..Default::default()
        };
        let valid = envelope::seal(&header, &signer).unwrap();
        Keys {
            verifiers: f.verifiers(),
            valid,
        }
    })
}

fn verify(env: pb::SignedEnvelope) -> bool {
    envelope::verify(env, &keys().verifiers, &Limits::default(), UnixTime::now()).is_ok()
}

#[test]
fn the_unchanged_envelope_verifies() {
    assert!(verify(keys().valid.clone()));
}

proptest! {
    #[test]
    fn link_frames_and_headers_decode_or_refuse_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let _ = pb::LinkFrame::decode(bytes.as_slice());
        let _ = pb::Header::decode(bytes.as_slice());
        let _ = pb::SendRequest::decode(bytes.as_slice());
        if let Ok(env) = pb::SignedEnvelope::decode(bytes.as_slice()) {
            prop_assert!(!verify(env));
        }
    }

    #[test]
    fn an_arbitrary_header_under_the_real_signature_does_not_verify(
        header in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let mut env = keys().valid.clone();
        prop_assume!(header != env.header_bytes);
        env.header_bytes = header;
        prop_assert!(!verify(env));
    }

    #[test]
    fn any_changed_byte_of_a_valid_envelope_fails_verification(
        part in 0u8..3,
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut env = keys().valid.clone();
        let target = match part {
            0 => &mut env.header_bytes,
            1 => &mut env.signature,
            _ => env.signer_chain.first_mut().unwrap(),
        };
        let i = at.index(target.len());
        target[i] ^= xor;
        prop_assert!(!verify(env), "a changed byte (part {part}, offset {i}) verified");
    }

    #[test]
    fn a_truncated_or_extended_envelope_does_not_verify(
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..16),
        extend in any::<bool>(),
    ) {
        let mut env = keys().valid.clone();
        if extend {
            env.header_bytes.extend_from_slice(&extra);
        } else {
            let n = cut.index(env.header_bytes.len());
            env.header_bytes.truncate(n);
        }
        prop_assert!(!verify(env));
    }
}
