//! Attachments travel as base64 of a ZIP holding one file. Both layers are
//! decoded under limits checked before the bytes exist: the base64 length bounds the
//! ZIP, the ZIP's entry count and each entry's size and ratio bound what is read,
//! and reading stops at the limit whatever the headers claim.

use std::io::{Cursor, Read, Write};

use base64::Engine;

use crate::{EdxmlError, Limits};

/// Why [`decode`] refused an attachment.
#[derive(Debug)]
pub enum DecodeError {
    /// The attachment is larger than the `max_bytes` it was given (its
    /// encoded form already, or the entry it expands to): the caller knows
    /// which of its limits that was and may say so.
    OverLimit {
        element: String,
        /// What is over, e.g. "ZIP entry expands to 5000 bytes".
        what: String,
        max_bytes: u64,
    },
    /// Any other refusal, said as it is.
    Refused(EdxmlError),
}

impl From<EdxmlError> for DecodeError {
    fn from(e: EdxmlError) -> Self {
        Self::Refused(e)
    }
}

impl From<DecodeError> for EdxmlError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::OverLimit {
                element,
                what,
                max_bytes,
            } => EdxmlError::new(element, format!("{what}, over the limit of {max_bytes}")),
            DecodeError::Refused(e) => e,
        }
    }
}

/// The one file of the ZIP in `encoded`, at most `max_bytes` unzipped. The
/// entry's own name is not used (the manifest names the attachment).
pub fn decode(
    element: &str,
    encoded: &str,
    max_bytes: u64,
    limits: &Limits,
) -> Result<Vec<u8>, DecodeError> {
    let compact: String = encoded
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    // A ZIP's own bytes add little to what it holds: 1 MiB is room enough.
    let max_zip = max_bytes.saturating_add(1 << 20);
    let zip_len = (compact.len() as u64 / 4) * 3;
    if zip_len > max_zip {
        // Over the limit by more than any ZIP's own bytes: said against the
        // limit itself, not the room allowed for them.
        return Err(DecodeError::OverLimit {
            element: element.to_owned(),
            what: format!("encoded attachment is a ZIP of about {zip_len} bytes"),
            max_bytes,
        });
    }
    let zip_bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| EdxmlError::new(element, format!("invalid base64: {e}")))?;
    let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes))
        .map_err(|e| EdxmlError::new(element, format!("not a ZIP archive: {e}")))?;
    if archive.len() > limits.max_zip_entries {
        return Err(EdxmlError::new(
            element,
            format!(
                "ZIP holds {} entries, more than {}",
                archive.len(),
                limits.max_zip_entries
            ),
        )
        .into());
    }
    let mut found: Option<Vec<u8>> = None;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| EdxmlError::new(element, format!("ZIP entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        if found.is_some() {
            return Err(EdxmlError::new(element, "ZIP holds more than one file").into());
        }
        let declared = entry.size();
        let compressed = entry.compressed_size().max(1);
        if declared > max_bytes {
            return Err(DecodeError::OverLimit {
                element: element.to_owned(),
                what: format!("ZIP entry expands to {declared} bytes"),
                max_bytes,
            });
        }
        if declared / compressed > limits.max_zip_ratio {
            return Err(EdxmlError::new(
                element,
                format!(
                    "ZIP entry expands {}:1, over the limit of {}:1",
                    declared / compressed,
                    limits.max_zip_ratio
                ),
            )
            .into());
        }
        let name = entry.name().to_owned();
        let mut data = Vec::with_capacity(declared.min(1 << 20) as usize);
        // The header may lie: never read more than it declares (itself under
        // the limit), plus one byte to catch the lie.
        let read = (&mut entry)
            .take(declared + 1)
            .read_to_end(&mut data)
            .map_err(|e| EdxmlError::new(element, format!("ZIP entry {name}: {e}")))?;
        if read as u64 != declared {
            return Err(EdxmlError::new(
                element,
                format!("ZIP entry {name} is not the size it declares"),
            )
            .into());
        }
        found = Some(data);
    }
    found.ok_or_else(|| EdxmlError::new(element, "ZIP holds no file").into())
}

/// Base64 of a ZIP holding `data` as `name`.
pub fn encode(name: &str, data: &[u8]) -> String {
    let mut buf = Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        // Writing into memory cannot fail but for allocation.
        if w.start_file(name, opts).is_ok() {
            let _ = w.write_all(data);
        }
        let _ = w.finish();
    }
    base64::engine::general_purpose::STANDARD.encode(buf.into_inner())
}
