//! Attachment names: display text, never a path or a control sequence.
//!
//! One check for every way a name enters (gRPC `Send`, REST, edXML import) and
//! every hop that verifies an envelope, and again before a client writes a file.

/// Why an attachment name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("attachment name is empty")]
    Empty,
    #[error("attachment name {start:?}… is longer than {MAX_NAME_CHARS} characters")]
    TooLong {
        /// The name's first 32 characters.
        start: String,
    },
    #[error("attachment name {0:?} is a path; names are display text")]
    Path(String),
    #[error("attachment name {0:?} contains control characters")]
    Control(String),
    #[error("attachment name {0:?} contains bidirectional override characters")]
    Bidi(String),
    #[error("attachment name {0:?} looks like a drive path")]
    Drive(String),
}

/// Longest attachment name, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// Refuses names that could act as paths or control sequences when written to
/// disk, or display as another name (bidirectional overrides make
/// "hop-dong\u{202E}fdp.exe" display as "hop-dongexe.pdf"): what every node
/// refuses.
pub fn check_attachment_name(name: &str) -> Result<(), NameError> {
    check_attachment_path(name)?;
    if name.chars().any(is_bidi_override) {
        return Err(NameError::Bidi(name.to_owned()));
    }
    Ok(())
}

/// A character that reorders the text around it when displayed.
pub fn is_bidi_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `name` with `_` for each bidirectional override: how a name sent before
/// nodes refused them is saved or offered as a file, so that it does not
/// display as another.
pub fn plain_file_name(name: &str) -> String {
    name.chars()
        .map(|c| if is_bidi_override(c) { '_' } else { c })
        .collect()
}

/// Refuses names that could act as paths or control sequences when written to
/// disk: what a name must pass to be a file's name. Nodes refused only these
/// before they refused bidirectional overrides too, so a document that
/// already travelled (checked offline, saved by a client) needs only these.
pub fn check_attachment_path(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong {
            start: name.chars().take(32).collect(),
        });
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\\') {
        return Err(NameError::Path(name.to_owned()));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control(name.to_owned()));
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Err(NameError::Drive(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_that_act_as_paths_are_refused() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "C:evil",
            "..",
            "x\u{0}y",
            "x\ny",
            "",
        ] {
            assert!(check_attachment_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["Quyết định 123.pdf", "phu-luc.xlsx", ".hidden", "a..b.pdf"] {
            assert!(check_attachment_name(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn a_name_that_displays_as_another_is_refused() {
        for bad in ["hop-dong\u{202E}fdp.exe", "a\u{2066}b.pdf", "\u{202A}x"] {
            assert_eq!(
                check_attachment_name(bad),
                Err(NameError::Bidi(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert!(
            check_attachment_name("hop-dong\u{202E}fdp.exe")
                .unwrap_err()
                .to_string()
                .contains("bidirectional override")
        );
        // A file may still be given such a name, once it travelled.
        assert_eq!(check_attachment_path("hop-dong\u{202E}fdp.exe"), Ok(()));
        assert!(check_attachment_path("../x").is_err());
    }
}
