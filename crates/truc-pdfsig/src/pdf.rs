//! Locating signature dictionaries in a PDF without a full object parser.
//!
//! A signature dictionary is found by its `/ByteRange [a b c d]` entry; its
//! `/Contents <hex>` is the nearest `/Contents` hex string before or after it that
//! lies in the same dictionary (no `obj`, `endobj`, `stream`... keyword and
//! balanced `<<`/`>>` in between, strings skipped). Signature dictionaries cannot
//! live in compressed object streams (their `/Contents` must be a hole in the file
//! bytes), so scanning the raw bytes finds them all.

use crate::Error;

/// At most this many signatures are examined.
pub(crate) const MAX_SIGNATURES: usize = 64;
/// The largest `/Contents` hex string accepted (bytes of text, 2 MiB of CMS).
pub(crate) const MAX_CONTENTS_HEX: usize = 4 << 20;
/// The largest distance between `/ByteRange` and `/Contents` (other entries).
const MAX_GAP: usize = 64 << 10;

/// One signature dictionary as found in the file.
#[derive(Debug, Clone)]
pub(crate) struct SigDict {
    /// `[a, b, c, d]` as written.
    pub byte_range: [u64; 4],
    /// Where the `[ ... ]` of /ByteRange lies (start, end exclusive).
    pub byte_range_span: (usize, usize),
    /// Where the `<...>` of /Contents lies (start, end exclusive).
    pub contents_span: (usize, usize),
    /// The decoded /Contents (CMS plus padding).
    pub contents: Vec<u8>,
    /// The /SubFilter name, if any was found in the dictionary.
    pub sub_filter: Option<String>,
    /// The /M signing time of the dictionary (the signer's claim), Unix ms.
    pub signing_date_ms: Option<i64>,
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

fn is_regular(b: u8) -> bool {
    !is_whitespace(b) && !is_delimiter(b)
}

/// Positions of `needle` in `hay` as a whole name (not a prefix of a longer one).
pub(crate) fn find_names(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    if needle.is_empty() || hay.len() < needle.len() {
        return out;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if hay[i] == first && hay[i..].starts_with(needle) {
            let next = hay.get(i + needle.len()).copied();
            if next.is_none_or(|b| !is_regular(b)) {
                out.push(i);
            }
            i += needle.len();
        } else {
            i += 1;
        }
    }
    out
}

pub(crate) fn skip_ws(pdf: &[u8], mut i: usize) -> usize {
    while pdf.get(i).is_some_and(|b| is_whitespace(*b)) {
        i += 1;
    }
    i
}

/// A non-negative integer at `i`: its value and the index after it.
fn integer(pdf: &[u8], i: usize) -> Result<(u64, usize), Error> {
    let mut j = i;
    let mut v: u64 = 0;
    while let Some(d) = pdf.get(j).filter(|b| b.is_ascii_digit()) {
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
    if pdf.get(j).is_some_and(|b| is_regular(*b)) {
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
    if pdf.get(open) != Some(&b'[') {
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
    if pdf.get(i) != Some(&b']') {
        return Err(malformed(
            name_at,
            "/ByteRange must hold exactly four integers",
        ));
    }
    Ok((v, (open, i + 1)))
}

/// The hex string `<...>` starting at `open`: its end (exclusive) and bytes.
fn hex_string(pdf: &[u8], open: usize) -> Result<(usize, Vec<u8>), Error> {
    if pdf.get(open) != Some(&b'<') || pdf.get(open + 1) == Some(&b'<') {
        return Err(malformed(open, "/Contents is not a hex string"));
    }
    let mut out = Vec::new();
    let mut half: Option<u8> = None;
    let mut i = open + 1;
    loop {
        let Some(&b) = pdf.get(i) else {
            return Err(malformed(open, "/Contents hex string is not terminated"));
        };
        if i - open > MAX_CONTENTS_HEX {
            return Err(malformed(open, "/Contents hex string is too large"));
        }
        i += 1;
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b'>' => break,
            b if is_whitespace(b) => continue,
            _ => {
                return Err(malformed(
                    i - 1,
                    "/Contents is not a hex string (non-hex character)",
                ));
            }
        };
        match half.take() {
            None => half = Some(nibble),
            Some(h) => out.push(h << 4 | nibble),
        }
    }
    if let Some(h) = half {
        out.push(h << 4); // a final odd digit is followed by an implied 0
    }
    Ok((i, out))
}

/// Whether `s` (the bytes between two entries) stays inside one dictionary.
fn same_dictionary(s: &[u8]) -> bool {
    let mut depth: i64 = 0;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'(' => {
                let mut nest = 1u32;
                i += 1;
                while nest > 0 {
                    match s.get(i) {
                        None => return false,
                        Some(b'\\') => i += 1,
                        Some(b'(') => nest += 1,
                        Some(b')') => nest -= 1,
                        Some(_) => {}
                    }
                    i += 1;
                }
                continue;
            }
            b'<' if s.get(i + 1) == Some(&b'<') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'<' => match s[i..].iter().position(|c| *c == b'>') {
                Some(p) => i += p,
                None => return false,
            },
            b'>' if s.get(i + 1) == Some(&b'>') => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
                i += 2;
                continue;
            }
            b'%' => {
                while s.get(i).is_some_and(|c| *c != b'\n' && *c != b'\r') {
                    i += 1;
                }
            }
            b'/' => {
                i += 1;
                while s.get(i).is_some_and(|c| is_regular(*c)) {
                    i += 1;
                }
                continue;
            }
            b if is_regular(b) => {
                let start = i;
                while s.get(i).is_some_and(|c| is_regular(*c)) {
                    i += 1;
                }
                if matches!(
                    &s[start..i],
                    b"obj" | b"endobj" | b"stream" | b"endstream" | b"xref" | b"trailer"
                ) {
                    return false;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    depth == 0
}

/// The `/Contents <...>` that belongs to the dictionary holding `span`.
fn contents_for(pdf: &[u8], span: (usize, usize)) -> Result<((usize, usize), Vec<u8>), Error> {
    // After: `/ByteRange [...] ... /Contents <...>`.
    let after_end = pdf.len().min(span.1.saturating_add(MAX_GAP));
    if let Some(&p) = find_names(&pdf[span.1..after_end], b"/Contents").first() {
        let name = span.1 + p;
        let open = skip_ws(pdf, name + b"/Contents".len());
        if pdf.get(open) == Some(&b'<')
            && pdf.get(open + 1) != Some(&b'<')
            && same_dictionary(&pdf[span.1..name])
        {
            let (end, bytes) = hex_string(pdf, open)?;
            return Ok(((open, end), bytes));
        }
    }
    // Before: `/Contents <...> ... /ByteRange [...]`.
    let window = MAX_CONTENTS_HEX + MAX_GAP;
    let before_start = span.0.saturating_sub(window);
    if let Some(&p) = find_names(&pdf[before_start..span.0], b"/Contents").last() {
        let name = before_start + p;
        let open = skip_ws(pdf, name + b"/Contents".len());
        if pdf.get(open) == Some(&b'<') && pdf.get(open + 1) != Some(&b'<') {
            let (end, bytes) = hex_string(pdf, open)?;
            if end <= span.0 && same_dictionary(&pdf[end..span.0]) {
                return Ok(((open, end), bytes));
            }
        }
    }
    Err(malformed(
        span.0,
        "no /Contents hex string in the dictionary of this /ByteRange",
    ))
}

/// Where the value of the entry `name` of the dictionary spanning `span`
/// starts (searched 4 KiB around it, same-dictionary checked).
fn dict_entry(pdf: &[u8], span: (usize, usize), name: &[u8]) -> Option<usize> {
    let start = span.0.saturating_sub(4096);
    let end = pdf.len().min(span.1.saturating_add(4096));
    let mut found = find_names(&pdf[start..end], name)
        .into_iter()
        .map(|p| start + p);
    let at = found.find(|p| {
        if *p < span.0 {
            same_dictionary(&pdf[*p..span.0])
        } else {
            *p >= span.1 && same_dictionary(&pdf[span.1..*p])
        }
    })?;
    Some(skip_ws(pdf, at + name.len()))
}

/// The `/SubFilter /Name` of the dictionary, for reasons only.
fn sub_filter(pdf: &[u8], span: (usize, usize)) -> Option<String> {
    let i = dict_entry(pdf, span, b"/SubFilter")?;
    if pdf.get(i) != Some(&b'/') {
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

/// The `/M (D:YYYYMMDDHHmmSSOHH'mm')` signing time of the dictionary, Unix ms.
fn signing_date(pdf: &[u8], span: (usize, usize)) -> Option<i64> {
    let i = dict_entry(pdf, span, b"/M")?;
    if pdf.get(i) != Some(&b'(') {
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

/// Every signature dictionary of the file, in file order.
pub(crate) fn signature_dicts(pdf: &[u8]) -> Result<Vec<SigDict>, Error> {
    let names = find_names(pdf, b"/ByteRange");
    if names.len() > MAX_SIGNATURES {
        return Err(Error::Malformed(format!(
            "{} /ByteRange entries: more than {MAX_SIGNATURES} signatures",
            names.len()
        )));
    }
    let mut out = Vec::new();
    for name_at in names {
        let (byte_range, byte_range_span) = byte_range(pdf, name_at)?;
        let (contents_span, contents) = contents_for(pdf, byte_range_span)?;
        let lo = byte_range_span.0.min(contents_span.0);
        let hi = byte_range_span.1.max(contents_span.1);
        out.push(SigDict {
            byte_range,
            byte_range_span,
            contents_span,
            contents,
            sub_filter: sub_filter(pdf, (lo, hi)),
            signing_date_ms: signing_date(pdf, (lo, hi)),
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
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}endstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
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
        assert_eq!(d[0].contents, vec![0x0a, 0x0b, 0xc0]);
        let b = b"1 0 obj << /Contents <00ff> /M (D:2024) /Ref [<< /X 1 >>] /ByteRange [ 0 1 2 3 ] >> endobj";
        let d = signature_dicts(b).unwrap();
        assert_eq!(d[0].contents, vec![0, 255]);
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
}
