//! Locating signature dictionaries in a PDF without a full object parser.
//!
//! One pass over the file's tokens follows the nesting of dictionaries
//! (`<<`/`>>`), skipping comments, literal strings and the bodies of streams
//! (`stream` ... `endstream`: page content, fonts, images); a dictionary with a
//! `/ByteRange` entry is a signature dictionary, and its `/Contents`,
//! `/SubFilter` and `/M` are the entries of that same dictionary (not of one
//! nested in it). The keywords `obj`, `endobj`, `stream`, `xref`, `trailer`...
//! end every open dictionary. Signature dictionaries cannot live in compressed
//! object streams (their `/Contents` must be a hole in the file bytes), so
//! scanning the raw bytes finds them all.

use crate::Error;

/// At most this many signatures are examined.
pub(crate) const MAX_SIGNATURES: usize = 64;
/// The largest `/Contents` hex string accepted (bytes of text, 2 MiB of CMS).
pub(crate) const MAX_CONTENTS_HEX: usize = 4 << 20;
/// Dictionaries nested deeper than this are not followed (a `/ByteRange`
/// inside one is malformed).
const MAX_DEPTH: usize = 256;

/// One signature dictionary as found in the file.
#[derive(Debug, Clone)]
pub(crate) struct SigDict {
    /// `[a, b, c, d]` as written.
    pub byte_range: [u64; 4],
    /// Where the `[ ... ]` of /ByteRange lies (start, end exclusive).
    pub byte_range_span: (usize, usize),
    /// Where the `<...>` of /Contents lies (start, end exclusive), checked to
    /// be a hex string; decoded by [`SigDict::contents`] when needed.
    pub contents_span: (usize, usize),
    /// The /SubFilter name, if any was found in the dictionary.
    pub sub_filter: Option<String>,
    /// The /M signing time of the dictionary (the signer's claim), Unix ms.
    pub signing_date_ms: Option<i64>,
}

impl SigDict {
    /// The decoded /Contents (CMS plus padding) of this dictionary in `pdf`.
    pub(crate) fn contents(&self, pdf: &[u8]) -> Vec<u8> {
        decode_hex(pdf, self.contents_span)
    }
}

/// The byte at `i`: every index read of the scan goes through here, so
/// that a test can count the reads the scan makes (`READS`).
#[inline]
fn byte_at(pdf: &[u8], i: usize) -> Option<&u8> {
    #[cfg(test)]
    READS.with(|r| r.set(r.get() + 1));
    pdf.get(i)
}

#[cfg(test)]
thread_local! {
    /// Index reads made on this thread by [`byte_at`].
    static READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub(crate) fn is_whitespace(b: u8) -> bool {
    matches!(b, b'\0' | b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%'
    )
}

pub(crate) fn is_regular(b: u8) -> bool {
    !is_whitespace(b) && !is_delimiter(b)
}

pub(crate) fn skip_ws(pdf: &[u8], mut i: usize) -> usize {
    while byte_at(pdf, i).is_some_and(|b| is_whitespace(*b)) {
        i += 1;
    }
    i
}

/// A non-negative integer at `i`: its value and the index after it.
fn integer(pdf: &[u8], i: usize) -> Result<(u64, usize), Error> {
    let mut j = i;
    let mut v: u64 = 0;
    while let Some(d) = byte_at(pdf, j).filter(|b| b.is_ascii_digit()) {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| malformed(i, "/ByteRange number is too large"))?;
        j += 1;
        if j - i > 20 {
            return Err(malformed(i, "/ByteRange number is too long"));
        }
    }
    if j == i {
        return Err(malformed(
            i,
            "/ByteRange must hold four non-negative integers",
        ));
    }
    if byte_at(pdf, j).is_some_and(|b| is_regular(*b)) {
        return Err(malformed(i, "/ByteRange numbers must be plain integers"));
    }
    Ok((v, j))
}

fn malformed(at: usize, what: &str) -> Error {
    Error::Malformed(format!("{what} (at byte {at})"))
}

/// Parses `[a b c d]` after the `/ByteRange` name at `name_at`.
fn byte_range(pdf: &[u8], name_at: usize) -> Result<([u64; 4], (usize, usize)), Error> {
    let open = skip_ws(pdf, name_at + b"/ByteRange".len());
    if byte_at(pdf, open) != Some(&b'[') {
        return Err(malformed(name_at, "/ByteRange is not followed by an array"));
    }
    let mut i = open + 1;
    let mut v = [0u64; 4];
    for slot in &mut v {
        i = skip_ws(pdf, i);
        let (n, next) = integer(pdf, i)?;
        *slot = n;
        i = next;
    }
    i = skip_ws(pdf, i);
    if byte_at(pdf, i) != Some(&b']') {
        return Err(malformed(
            name_at,
            "/ByteRange must hold exactly four integers",
        ));
    }
    Ok((v, (open, i + 1)))
}

/// The end (exclusive) of the hex string `<...>` starting at `open`, checked
/// (hex digits and whitespace only, terminated, not too large).
fn hex_string_end(pdf: &[u8], open: usize) -> Result<usize, Error> {
    if byte_at(pdf, open) != Some(&b'<') || byte_at(pdf, open + 1) == Some(&b'<') {
        return Err(malformed(open, "/Contents is not a hex string"));
    }
    let mut i = open + 1;
    loop {
        let Some(&b) = byte_at(pdf, i) else {
            return Err(malformed(open, "/Contents hex string is not terminated"));
        };
        if i - open > MAX_CONTENTS_HEX {
            return Err(malformed(open, "/Contents hex string is too large"));
        }
        i += 1;
        match b {
            b'>' => return Ok(i),
            b if b.is_ascii_hexdigit() || is_whitespace(b) => {}
            _ => {
                return Err(malformed(
                    i - 1,
                    "/Contents is not a hex string (non-hex character)",
                ));
            }
        }
    }
}

/// The bytes of the hex string `<...>` at `span` (checked by `hex_string_end`).
fn decode_hex(pdf: &[u8], span: (usize, usize)) -> Vec<u8> {
    let text = pdf
        .get(span.0 + 1..span.1.saturating_sub(1))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(text.len() / 2 + 1);
    let mut half: Option<u8> = None;
    for &b in text {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => continue,
        };
        match half.take() {
            None => half = Some(nibble),
            Some(h) => out.push(h << 4 | nibble),
        }
    }
    if let Some(h) = half {
        out.push(h << 4); // a final odd digit is followed by an implied 0
    }
    out
}

/// The `/SubFilter /Name` at `i` (the entry's value), for reasons only.
fn sub_filter(pdf: &[u8], i: usize) -> Option<String> {
    if byte_at(pdf, i) != Some(&b'/') {
        return None;
    }
    let name: Vec<u8> = pdf[i + 1..]
        .iter()
        .take_while(|b| is_regular(**b))
        .take(64)
        .copied()
        .collect();
    Some(String::from_utf8_lossy(&name).into_owned())
}

/// The `/M (D:YYYYMMDDHHmmSSOHH'mm')` signing time at `i` (the entry's
/// value), Unix ms.
fn signing_date(pdf: &[u8], i: usize) -> Option<i64> {
    if byte_at(pdf, i) != Some(&b'(') {
        return None;
    }
    let text: Vec<u8> = pdf[i + 1..]
        .iter()
        .take_while(|b| **b != b')')
        .take(40)
        .copied()
        .collect();
    pdf_date_ms(&text)
}

/// A PDF date (ISO 32000-1 7.9.4) in Unix ms.
pub(crate) fn pdf_date_ms(text: &[u8]) -> Option<i64> {
    let t = text.strip_prefix(b"D:").unwrap_or(text);
    let digits = t.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits < 4 || digits % 2 == 1 || digits > 14 {
        return None;
    }
    let num = |from: usize, len: usize, default: i64| -> i64 {
        if from + len > digits {
            return default;
        }
        t[from..from + len]
            .iter()
            .fold(0, |n, d| n * 10 + i64::from(d - b'0'))
    };
    let (y, mo, d) = (num(0, 4, 0), num(4, 2, 1), num(6, 2, 1));
    let (h, mi, sec) = (num(8, 2, 0), num(10, 2, 0), num(12, 2, 0));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = &t[digits..];
    let offset_min = match rest.first() {
        Some(sign @ (b'+' | b'-')) => {
            let oh: Vec<u8> = rest[1..]
                .iter()
                .filter(|b| b.is_ascii_digit())
                .copied()
                .collect();
            let v = |s: &[u8]| s.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
            let m = v(oh.get(..2)?) * 60 + oh.get(2..4).map_or(0, v);
            if *sign == b'-' { -m } else { m }
        }
        _ => 0,
    };
    // Days from 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000)
}

/// Where the entries that matter of one dictionary are (their names).
#[derive(Debug, Default)]
struct Entries {
    byte_range: Option<usize>,
    contents: Option<usize>,
    contents_twice: bool,
    sub_filter: Option<usize>,
    m: Option<usize>,
}

/// The end (exclusive) of the literal string `(...)` opening at `open`.
fn literal_string_end(pdf: &[u8], open: usize) -> Option<usize> {
    let mut nest = 0u32;
    let mut i = open;
    loop {
        match byte_at(pdf, i)? {
            b'\\' => i += 1,
            b'(' => nest += 1,
            b')' => {
                nest -= 1;
                if nest == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// The entries of every dictionary holding a `/ByteRange`, in file order of
/// that entry: one pass over the tokens of the file.
fn signature_entries(pdf: &[u8]) -> Result<Vec<Entries>, Error> {
    let mut open: Vec<Entries> = Vec::new();
    // Dictionaries open beyond MAX_DEPTH, counted only.
    let mut untracked = 0usize;
    let mut found = Vec::new();
    let mut close = |e: Entries| {
        if e.byte_range.is_some() {
            found.push(e);
        }
    };
    // Cleared at the first literal string without an end: from there on `(`
    // is read as any other byte (each string is then scanned once at most).
    let mut strings = true;
    let mut i = 0;
    while let Some(&b) = byte_at(pdf, i) {
        match b {
            b'%' => {
                while byte_at(pdf, i).is_some_and(|c| *c != b'\n' && *c != b'\r') {
                    i += 1;
                }
                continue;
            }
            b'(' if strings => match literal_string_end(pdf, i) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => strings = false,
            },
            b'<' if byte_at(pdf, i + 1) == Some(&b'<') => {
                if untracked == 0 && open.len() < MAX_DEPTH {
                    open.push(Entries::default());
                } else {
                    untracked += 1;
                }
                i += 2;
                continue;
            }
            b'<' => {
                // A hex string: its closing `>` is not half of a `>>`.
                i += 1;
                while pdf
                    .get(i)
                    .is_some_and(|c| c.is_ascii_hexdigit() || is_whitespace(*c))
                {
                    i += 1;
                }
                if byte_at(pdf, i) == Some(&b'>') {
                    i += 1;
                }
                continue;
            }
            b'>' if byte_at(pdf, i + 1) == Some(&b'>') => {
                if untracked > 0 {
                    untracked -= 1;
                } else if let Some(e) = open.pop() {
                    close(e);
                }
                i += 2;
                continue;
            }
            b'/' => {
                let at = i;
                i += 1;
                while byte_at(pdf, i).is_some_and(|c| is_regular(*c)) {
                    i += 1;
                }
                let name = &pdf[at..i];
                if untracked > 0 {
                    if name == b"/ByteRange" {
                        return Err(malformed(
                            at,
                            "/ByteRange in dictionaries nested too deeply",
                        ));
                    }
                } else if let Some(top) = open.last_mut() {
                    match name {
                        b"/ByteRange" if top.byte_range.is_some() => {
                            return Err(malformed(
                                at,
                                "duplicate /ByteRange in one signature dictionary",
                            ));
                        }
                        b"/ByteRange" => top.byte_range = Some(at),
                        b"/Contents" => {
                            top.contents_twice |= top.contents.is_some();
                            top.contents.get_or_insert(at);
                        }
                        b"/SubFilter" => _ = top.sub_filter.get_or_insert(at),
                        b"/M" => _ = top.m.get_or_insert(at),
                        _ => {}
                    }
                }
                // A `/ByteRange` outside any dictionary is no signature.
                continue;
            }
            b if is_regular(b) => {
                let at = i;
                while byte_at(pdf, i).is_some_and(|c| is_regular(*c)) {
                    i += 1;
                }
                let word = &pdf[at..i];
                if matches!(
                    word,
                    b"obj"
                        | b"endobj"
                        | b"stream"
                        | b"endstream"
                        | b"xref"
                        | b"trailer"
                        | b"startxref"
                ) {
                    open.drain(..).rev().for_each(&mut close);
                    untracked = 0;
                }
                if word == b"stream" {
                    // The body, to its `endstream` (or the end of the file):
                    // content operators, binary data, nothing of the file's
                    // own structure.
                    i = pdf[i..]
                        .windows(b"endstream".len())
                        .position(|w| w == b"endstream")
                        .map_or(pdf.len(), |p| i + p);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    open.drain(..).rev().for_each(&mut close);
    found.sort_by_key(|e| e.byte_range);
    Ok(found)
}

/// Every signature dictionary of the file, in file order.
pub(crate) fn signature_dicts(pdf: &[u8]) -> Result<Vec<SigDict>, Error> {
    let found = signature_entries(pdf)?;
    if found.len() > MAX_SIGNATURES {
        return Err(Error::Malformed(format!(
            "{} /ByteRange entries: more than {MAX_SIGNATURES} signatures",
            found.len()
        )));
    }
    let mut out = Vec::new();
    for e in found {
        let Some(name_at) = e.byte_range else {
            continue;
        };
        let (byte_range, byte_range_span) = byte_range(pdf, name_at)?;
        let Some(contents_at) = e.contents else {
            return Err(malformed(
                name_at,
                "no /Contents hex string in the dictionary of this /ByteRange",
            ));
        };
        if e.contents_twice {
            return Err(malformed(
                contents_at,
                "two /Contents in one signature dictionary",
            ));
        }
        let value = |name_at: usize, name: &[u8]| skip_ws(pdf, name_at + name.len());
        let open = value(contents_at, b"/Contents");
        let end = hex_string_end(pdf, open)?;
        out.push(SigDict {
            byte_range,
            byte_range_span,
            contents_span: (open, end),
            sub_filter: e
                .sub_filter
                .and_then(|at| sub_filter(pdf, value(at, b"/SubFilter"))),
            signing_date_ms: e.m.and_then(|at| signing_date(pdf, value(at, b"/M"))),
        });
    }
    Ok(out)
}

/// A minimal, valid one-page PDF showing `lines` (ASCII text, Helvetica), one
/// per line, top of an A4 page.
pub fn simple_pdf(lines: &[&str]) -> Vec<u8> {
    let mut content = String::from("BT /F1 12 Tf 56 780 Td 16 TL\n");
    for l in lines {
        let escaped: String = l
            .chars()
            .filter(|c| c.is_ascii() && !c.is_control())
            .flat_map(|c| match c {
                '(' | ')' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        content.push_str(&format!("({escaped}) Tj T*\n"));
    }
    content.push_str("ET\n");
    one_page_pdf(b"", content.as_bytes())
}

/// A one-page PDF with a classic cross-reference table: `catalog_extra`
/// entries in its catalog, `content` as the page's content stream.
pub(crate) fn one_page_pdf(catalog_extra: &[u8], content: &[u8]) -> Vec<u8> {
    let mut catalog = b"<< /Type /Catalog /Pages 2 0 R ".to_vec();
    catalog.extend_from_slice(catalog_extra);
    if !catalog_extra.is_empty() {
        catalog.push(b' ');
    }
    catalog.extend_from_slice(b">>");
    let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
    stream.extend_from_slice(content);
    stream.extend_from_slice(b"endstream");
    let objects = [
        catalog,
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_vec(),
        stream,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
    ];
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simple_pdf_has_a_consistent_xref() {
        let pdf = simple_pdf(&["Quyet dinh (so 1234)"]);
        let text = String::from_utf8_lossy(&pdf);
        let startxref: usize = text
            .rsplit("startxref\n")
            .next()
            .and_then(|t| t.lines().next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(pdf[startxref..].starts_with(b"xref"));
        assert!(text.contains("\\(so 1234\\)"));
    }

    #[test]
    fn dictionaries_are_found_with_any_whitespace_and_order() {
        let a = b"1 0 obj\n<</Type/Sig/ByteRange[0\r\n10 20\t5]/Contents<0a0B\n c>>>\nendobj";
        let d = signature_dicts(a).unwrap();
        assert_eq!(d[0].byte_range, [0, 10, 20, 5]);
        assert_eq!(d[0].contents(a), vec![0x0a, 0x0b, 0xc0]);
        let b = b"1 0 obj << /Contents <00ff> /M (D:2024) /Ref [<< /X 1 >>] /ByteRange [ 0 1 2 3 ] >> endobj";
        let d = signature_dicts(b).unwrap();
        assert_eq!(d[0].contents(b), vec![0, 255]);
        // A /Contents in another object is not this dictionary's.
        let c = b"1 0 obj << /Contents <00> >> endobj 2 0 obj << /ByteRange [0 1 2 3] >> endobj";
        assert!(matches!(signature_dicts(c), Err(Error::Malformed(_))));
    }

    #[test]
    fn pdf_dates_are_read() {
        // 2025-06-01T00:00:00Z
        assert_eq!(pdf_date_ms(b"D:20250601000000Z"), Some(1_748_736_000_000));
        assert_eq!(
            pdf_date_ms(b"D:20250601070000+07'00'"),
            Some(1_748_736_000_000)
        );
        assert_eq!(pdf_date_ms(b"D:2025"), Some(1_735_689_600_000));
        assert_eq!(pdf_date_ms(b"D:20251301"), None);
        assert_eq!(pdf_date_ms(b"yesterday"), None);
        let d = b"1 0 obj << /Type /Sig /M (D:20250601000000Z) /ByteRange [0 1 2 3] /Contents <00> >> endobj";
        assert_eq!(
            signature_dicts(d).unwrap()[0].signing_date_ms,
            Some(1_748_736_000_000)
        );
    }

    #[test]
    fn bad_byte_ranges_are_malformed_with_a_reason() {
        for (pdf, want) in [
            (&b"<< /ByteRange [0 1 2] /Contents <00> >>"[..], "four"),
            (
                b"<< /ByteRange [0 -1 2 3] /Contents <00> >>",
                "non-negative",
            ),
            (
                b"<< /ByteRange [0 99999999999999999999999 2 3] /Contents <00> >>",
                "too",
            ),
            (b"<< /ByteRange [0 1.5 2 3] /Contents <00> >>", "plain"),
            (b"<< /ByteRange [0 1 2 3] /Contents <0x> >>", "hex"),
            (b"<< /ByteRange [0 1 2 3] /Contents <00", "terminated"),
            (b"<< /ByteRange 5 /Contents <00> >>", "array"),
        ] {
            match signature_dicts(pdf) {
                Err(Error::Malformed(r)) => assert!(r.contains(want), "{r}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn two_byte_ranges_in_one_dictionary_are_malformed() {
        // 64 entries sharing one /Contents: each would decode and hash its own copy.
        let mut pdf = b"1 0 obj\n<< /Type /Sig ".to_vec();
        for _ in 0..MAX_SIGNATURES {
            pdf.extend_from_slice(b"/ByteRange [0 10 20 30] ");
        }
        pdf.extend_from_slice(b"/Contents <");
        pdf.resize(pdf.len() + (64 << 10), b'0');
        pdf.extend_from_slice(b"> >>\nendobj\n");
        let nested = b"<< /ByteRange [0 1 2 3] /Contents <00> /X << /ByteRange [0 1 2 3] /Contents <01> >> /ByteRange [0 1 2 3] >>";
        let apart = b"<< /ByteRange [0 1 2 3] /Contents <00> /Contents <01> /ByteRange [0 1 2 3] /Contents <02> >>";
        for pdf in [&pdf[..], nested, apart] {
            match signature_dicts(pdf) {
                Err(Error::Malformed(r)) => assert!(r.contains("duplicate /ByteRange"), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        let twice = b"<< /ByteRange [0 1 2 3] /Contents <00> /Contents <01> >>";
        match signature_dicts(twice) {
            Err(Error::Malformed(r)) => assert!(r.contains("two /Contents"), "{r}"),
            other => panic!("{other:?}"),
        }
        let mut deep = b"<<".repeat(MAX_DEPTH + 1);
        deep.extend_from_slice(b"/ByteRange [0 1 2 3] /Contents <00>");
        match signature_dicts(&deep) {
            Err(Error::Malformed(r)) => assert!(r.contains("nested too deeply"), "{r}"),
            other => panic!("{other:?}"),
        }
        // A nested dictionary is another dictionary.
        let two = b"<< /ByteRange [0 1 2 3] /Contents <00> /X << /ByteRange [0 1 2 3] /Contents <01> >> >>";
        let d = signature_dicts(two).unwrap();
        assert_eq!(d.len(), 2);
        assert_ne!(d[0].contents_span, d[1].contents_span);
    }

    #[test]
    fn dictionary_entries_are_found_in_linear_time() {
        // Names of a nested dictionary around each signature dictionary: every
        // one of them is a candidate that is not of the same dictionary.
        let mut pdf = Vec::new();
        for n in 1..=MAX_SIGNATURES {
            pdf.extend_from_slice(format!("{n} 0 obj << /Type /Sig /K << ").as_bytes());
            pdf.extend_from_slice(&b"/M".repeat(2000));
            pdf.extend_from_slice(b" >> /M (D:2025) /ByteRange [0 1 2 3] /Contents <00> /L << ");
            pdf.extend_from_slice(&b"/M".repeat(2000));
            pdf.extend_from_slice(b" >> >> endobj\n");
        }
        let before = READS.with(std::cell::Cell::get);
        let d = signature_dicts(&pdf).unwrap();
        let reads = READS.with(std::cell::Cell::get) - before;
        assert_eq!(d.len(), MAX_SIGNATURES);
        assert!(
            d.iter()
                .all(|d| d.signing_date_ms == Some(1_735_689_600_000))
        );
        // One pass: about 1.5 reads per byte (a name's end is read by its
        // own loop and again by the main one), whatever the number of
        // candidate names. Looking back from each `/M` for its dictionary's
        // `<<` reads about 1,000 per byte here.
        assert!(
            reads <= 3 * pdf.len(),
            "{reads} reads for {} bytes",
            pdf.len()
        );
    }
}
