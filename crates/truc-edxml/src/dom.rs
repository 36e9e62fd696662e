//! A small element tree read with quick-xml under hard limits. Names are local
//! (prefixes dropped), so `edXML:From` and `From` are the same element.

use quick_xml::{Reader, events::Event};

use crate::{EdxmlError, Limits};

#[derive(Debug, Clone, Default)]
pub struct El {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<El>,
}

impl El {
    /// The first child with this local name (case-sensitive, as the standard).
    pub fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Trimmed text of a child, or "".
    pub fn text_of(&self, name: &str) -> String {
        self.child(name)
            .map(|c| c.text.trim().to_owned())
            .unwrap_or_default()
    }

    /// A descendant found by path of local names.
    pub fn at(&self, path: &[&str]) -> Option<&El> {
        let mut cur = self;
        for p in path {
            cur = cur.child(p)?;
        }
        Some(cur)
    }
}

/// Most attributes on one element: edXML uses only `xmlns*` and `version`,
/// and the reader checks each new one against every earlier one.
const MAX_ATTRIBUTES: usize = 32;

/// A character XML 1.0 allows (`Char`): what a strict receiver accepts.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Refuses text holding characters XML does not allow.
fn xml_text(element: impl FnOnce() -> String, s: &str) -> Result<(), EdxmlError> {
    match s.chars().find(|c| !is_xml_char(*c)) {
        Some(c) => Err(EdxmlError::new(
            element(),
            format!("character U+{:04X} is not allowed in XML", c as u32),
        )),
        None => Ok(()),
    }
}

fn local(qname: &[u8]) -> String {
    let s = String::from_utf8_lossy(qname);
    match s.rsplit_once(':') {
        Some((_, l)) => l.to_owned(),
        None => s.into_owned(),
    }
}

/// Parses `xml` into its root element.
pub fn parse(xml: &[u8], limits: &Limits) -> Result<El, EdxmlError> {
    if xml.len() > limits.max_package_bytes {
        return Err(EdxmlError::new(
            "edXML",
            format!(
                "package of {} bytes is over the limit of {}",
                xml.len(),
                limits.max_package_bytes
            ),
        ));
    }
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<El> = Vec::new();
    let mut root: Option<El> = None;
    let mut count = 0usize;
    let mut buf = Vec::new();
    let path = |stack: &Vec<El>| {
        if stack.is_empty() {
            "document".to_owned()
        } else {
            stack
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join("/")
        }
    };
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(|e| {
            EdxmlError::new(
                path(&stack),
                format!("malformed XML at byte {}: {e}", reader.buffer_position()),
            )
        })?;
        match ev {
            Event::DocType(_) => {
                // No DTD: nothing to expand, nothing external to fetch.
                return Err(EdxmlError::new(
                    path(&stack),
                    "DOCTYPE declarations are not accepted",
                ));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                count += 1;
                if count > limits.max_elements {
                    return Err(EdxmlError::new(
                        path(&stack),
                        format!("more than {} elements", limits.max_elements),
                    ));
                }
                if stack.len() >= limits.max_depth {
                    return Err(EdxmlError::new(
                        path(&stack),
                        format!("nested deeper than {} elements", limits.max_depth),
                    ));
                }
                if root.is_some() {
                    return Err(EdxmlError::new(
                        "document",
                        "content after the root element",
                    ));
                }
                let mut el = El {
                    name: local(e.name().as_ref()),
                    ..Default::default()
                };
                for (i, a) in e.attributes().enumerate() {
                    if i >= MAX_ATTRIBUTES {
                        return Err(EdxmlError::new(
                            path(&stack),
                            format!("more than {MAX_ATTRIBUTES} attributes on one element"),
                        ));
                    }
                    let a = a.map_err(|err| {
                        EdxmlError::new(path(&stack), format!("bad attribute: {err}"))
                    })?;
                    let v = a.unescape_value().map_err(|err| {
                        EdxmlError::new(path(&stack), format!("bad attribute value: {err}"))
                    })?;
                    xml_text(|| path(&stack), &v)?;
                    el.attrs.push((local(a.key.as_ref()), v.into_owned()));
                }
                if matches!(ev, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => root = Some(el),
                    }
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| {
                    EdxmlError::new("document", "closing tag without an opening one")
                })?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let text = t
                    .decode()
                    .map_err(|err| {
                        EdxmlError::new(path(&stack), format!("text is not UTF-8: {err}"))
                    })?
                    .into_owned();
                xml_text(|| path(&stack), &text)?;
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&text);
                }
            }
            Event::CData(t) => {
                let text = std::str::from_utf8(&t).map_err(|err| {
                    EdxmlError::new(path(&stack), format!("CDATA is not UTF-8: {err}"))
                })?;
                xml_text(|| path(&stack), text)?;
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(text);
                }
            }
            Event::GeneralRef(r) => {
                // Only the predefined and numeric references exist without a DTD.
                let name = String::from_utf8_lossy(&r).into_owned();
                let ch = match name.as_str() {
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "amp" => Some('&'),
                    "apos" => Some('\''),
                    "quot" => Some('"'),
                    n if n.starts_with("#x") => u32::from_str_radix(&n[2..], 16)
                        .ok()
                        .and_then(char::from_u32),
                    n if n.starts_with('#') => n[1..].parse::<u32>().ok().and_then(char::from_u32),
                    _ => None,
                };
                if let Some(c) = ch.filter(|c| !is_xml_char(*c)) {
                    return Err(EdxmlError::new(
                        path(&stack),
                        format!(
                            "&{name}; is U+{:04X}, which is not allowed in XML",
                            c as u32
                        ),
                    ));
                }
                match (ch, stack.last_mut()) {
                    (Some(c), Some(cur)) => cur.text.push(c),
                    (Some(_), None) => {}
                    (None, _) => {
                        return Err(EdxmlError::new(
                            path(&stack),
                            format!("unknown entity &{name};"),
                        ));
                    }
                }
            }
            Event::Eof => break,
            Event::Decl(ref d) => {
                // Only UTF-8 is read: a package declaring another encoding
                // would otherwise lose its Vietnamese letters.
                if let Some(Ok(enc)) = d.encoding()
                    && !enc.eq_ignore_ascii_case(b"utf-8")
                    && !enc.eq_ignore_ascii_case(b"utf8")
                {
                    return Err(EdxmlError::new(
                        "document",
                        format!(
                            "encoding {:?} is not accepted: send the package in UTF-8",
                            String::from_utf8_lossy(&enc)
                        ),
                    ));
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(EdxmlError::new(
            path(&stack),
            "the document ends inside this element",
        ));
    }
    root.ok_or_else(|| EdxmlError::new("document", "no root element"))
}
