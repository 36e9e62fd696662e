//! Key encodings. Text parts end with a 0x00 separator (never valid in ids), numbers
//! are big-endian, so byte order is the logical order and prefixes select groups.

/// Builds a key from parts.
#[derive(Debug, Default, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

/// Reads the trailing big-endian u64 of a key.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Splits the text parts off the front of a key.
pub fn str_parts(key: &[u8], n: usize) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    let mut rest = key;
    for _ in 0..n {
        let end = rest.iter().position(|b| *b == 0)?;
        out.push(String::from_utf8(rest[..end].to_vec()).ok()?);
        rest = &rest[end + 1..];
    }
    Some(out)
}

/// A key for error messages: text parts as text, the rest as hex.
pub fn display(key: &[u8]) -> String {
    key.split(|b| *b == 0)
        .map(|part| match std::str::from_utf8(part) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_owned(),
            _ => hex::encode(part),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_sequence_within_a_prefix() {
        let a = Key::new().str("q").u64(2).build();
        let b = Key::new().str("q").u64(10).build();
        assert!(a < b);
        assert_eq!(trailing_u64(&b), Some(10));
        assert_eq!(str_parts(&b, 1).unwrap(), vec!["q".to_string()]);
    }
}
