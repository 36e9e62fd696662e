//! A minimal, valid one-page PDF for the demo's attachments (ASCII text,
//! Helvetica). The generator lives in `truc-pdfsig`, next to the PDF signer and
//! verifier, so that it exists once.

pub use truc_pdfsig::simple_pdf;
