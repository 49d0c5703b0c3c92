//! A small XML reader that keeps byte positions.
//!
//! libvirt domain XML is plain XML 1.0 without DTDs. Ferry must change a few attribute values
//! and leave every other byte of the document as it was, so this reader records, for every
//! element and attribute, where it stands in the input — the name's and the value's byte
//! ranges and the quote character — and the caller edits the original text by those ranges (see
//! [`crate::rewrite`]). Values are read as libxml2 (libvirt's parser) reads them.
//!
//! Why not a general parser (roxmltree reports byte ranges too): the rewrite needs, per
//! attribute, the value's range *and* its quote character, and per element the start tag's
//! range, which this reader gives directly; what hardening needed — no DTD, bounded depth, no
//! duplicate attributes, XML's character rules, attribute-value normalisation — is a few lines
//! here. The decision rests on the tests: all 79 corpus documents rewritten byte-exactly, the
//! property tests over the corpus, and random bytes and mutated corpus documents
//! (`tests/reader_fuzz.rs`) that never panic the reader and are either refused or rewritten
//! byte-exactly. A parser swap would have to pass the same.

use std::ops::Range;

/// An attribute with its unescaped value and the byte ranges of its name and of its value
/// (the value range excludes the quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub name: String,
    pub value: String,
    pub name_span: Range<usize>,
    pub value_span: Range<usize>,
    /// The quote character used in the input: `'` or `"`.
    pub quote: char,
}

/// An element: name, attributes, children and direct text, with its byte ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Element>,
    /// The element's direct character data (CDATA included), unescaped and concatenated.
    pub text: String,
    /// From `<` of the start tag to the end of the end tag (or of the empty-element tag).
    pub span: Range<usize>,
    /// From `<` to `>` of the start tag (the whole tag for an empty element).
    pub start_tag: Range<usize>,
}

impl Element {
    /// The value of the attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attr_full(name).map(|a| a.value.as_str())
    }

    /// The attribute `name` with its positions, if present.
    pub fn attr_full(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child element called `name`, in document order.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of the first child called `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

/// Why a document could not be read. The offset is a byte offset into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("XML is not well-formed at byte {offset} (line {line}): {what}")]
pub struct XmlError {
    pub offset: usize,
    pub line: usize,
    pub what: String,
}

/// How deep elements may nest. libvirt's domain XML nests a dozen levels; a document nested
/// deeper is refused instead of exhausting the stack.
pub const MAX_DEPTH: usize = 256;

/// Whether XML 1.0 allows the character at all (raw or as a character reference).
fn allowed(c: char) -> bool {
    !matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// Read a whole document and return its root element.
///
/// Attribute values are read as an XML processor (libxml2, which libvirt uses) reads them:
/// literal tabs, newlines and carriage returns become spaces, character references are kept.
/// Refused: a DOCTYPE (Ferry expands no entities; libvirt never writes one), nesting deeper than
/// [`MAX_DEPTH`], an attribute given twice, and characters XML 1.0 does not allow.
pub fn parse(doc: &str) -> Result<Element, XmlError> {
    let p = Parser {
        src: doc,
        pos: 0,
        depth: 0,
    };
    if let Some((i, c)) = doc.char_indices().find(|(_, c)| !allowed(*c)) {
        return Err(p.err(
            i,
            format!("character U+{:04X} is not allowed in XML", c as u32),
        ));
    }
    p.document()
}

/// Escape `s` for use inside an attribute value quoted with `quote`.
pub fn escape_attr(s: &str, quote: char) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if quote == '\'' => out.push_str("&apos;"),
            '"' if quote == '"' => out.push_str("&quot;"),
            // Written raw, these would be read back as spaces (attribute-value normalisation).
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, at: usize, what: impl Into<String>) -> XmlError {
        let line = self.src.as_bytes()[..at.min(self.src.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        XmlError {
            offset: at,
            line,
            what: what.into(),
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let n = self
            .rest()
            .bytes()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        self.pos += n;
    }

    /// Skip up to and including `end`; error if it never comes.
    fn skip_past(&mut self, end: &str, what: &str) -> Result<(), XmlError> {
        match self.rest().find(end) {
            Some(i) => {
                self.pos += i + end.len();
                Ok(())
            }
            None => Err(self.err(self.pos, format!("unterminated {what}"))),
        }
    }

    /// Skip comments, processing instructions, a doctype and whitespace outside the root.
    fn misc(&mut self) -> Result<(), XmlError> {
        loop {
            self.skip_ws();
            let r = self.rest();
            if r.starts_with("<!--") {
                self.skip_past("-->", "comment")?;
            } else if r.starts_with("<?") {
                self.skip_past("?>", "processing instruction")?;
            } else if r.starts_with("<!DOCTYPE") {
                return Err(self.err(
                    self.pos,
                    "a DOCTYPE is not accepted: libvirt never writes one, and Ferry expands no \
                     entities (remove the <!DOCTYPE …> declaration)",
                ));
            } else {
                return Ok(());
            }
        }
    }

    fn document(mut self) -> Result<Element, XmlError> {
        if self.rest().starts_with('\u{feff}') {
            self.pos += '\u{feff}'.len_utf8();
        }
        self.misc()?;
        if !self.rest().starts_with('<') {
            return Err(self.err(self.pos, "expected the root element"));
        }
        let root = self.element()?;
        self.misc()?;
        if self.pos != self.src.len() {
            return Err(self.err(self.pos, "content after the root element"));
        }
        Ok(root)
    }

    fn name(&mut self) -> Result<String, XmlError> {
        let start = self.pos;
        let n = self
            .rest()
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || matches!(c, '=' | '>' | '/' | '<' | '\'' | '"'))
            .map(|(i, _)| i)
            .unwrap_or(self.rest().len());
        if n == 0 {
            return Err(self.err(start, "expected a name"));
        }
        self.pos += n;
        Ok(self.src[start..self.pos].to_string())
    }

    fn element(&mut self) -> Result<Element, XmlError> {
        let start = self.pos;
        if self.depth >= MAX_DEPTH {
            return Err(self.err(
                start,
                format!("elements nest more than {MAX_DEPTH} deep: not a libvirt domain"),
            ));
        }
        self.depth += 1;
        let e = self.element_inner(start);
        self.depth -= 1;
        e
    }

    fn element_inner(&mut self, start: usize) -> Result<Element, XmlError> {
        self.pos += 1; // '<'
        let name = self.name()?;
        let mut attrs = Vec::new();
        loop {
            self.skip_ws();
            let r = self.rest();
            if r.starts_with("/>") {
                self.pos += 2;
                return Ok(Element {
                    name,
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                    span: start..self.pos,
                    start_tag: start..self.pos,
                });
            }
            if r.starts_with('>') {
                self.pos += 1;
                break;
            }
            if r.is_empty() {
                return Err(self.err(start, format!("unterminated start tag <{name}>")));
            }
            let a = self.attribute()?;
            if attrs.iter().any(|o: &Attr| o.name == a.name) {
                return Err(self.err(
                    a.name_span.start,
                    format!("attribute {} is given twice in <{name}>", a.name),
                ));
            }
            attrs.push(a);
        }
        let start_tag = start..self.pos;
        let mut children = Vec::new();
        let mut text = String::new();
        loop {
            let r = self.rest();
            if r.is_empty() {
                return Err(self.err(start, format!("element <{name}> is never closed")));
            }
            if r.starts_with("</") {
                let close_at = self.pos;
                self.pos += 2;
                let close = self.name()?;
                if close != name {
                    return Err(self.err(
                        close_at,
                        format!("</{close}> closes <{name}> opened at byte {start}"),
                    ));
                }
                self.skip_ws();
                if !self.rest().starts_with('>') {
                    return Err(self.err(self.pos, format!("expected '>' after </{close}")));
                }
                self.pos += 1;
                break;
            } else if r.starts_with("<!--") {
                self.skip_past("-->", "comment")?;
            } else if r.starts_with("<![CDATA[") {
                let body_start = self.pos + 9;
                self.skip_past("]]>", "CDATA section")?;
                text.push_str(&self.src[body_start..self.pos - 3]);
            } else if r.starts_with("<?") {
                self.skip_past("?>", "processing instruction")?;
            } else if r.starts_with('<') {
                children.push(self.element()?);
            } else {
                let n = r.find('<').unwrap_or(r.len());
                let raw_at = self.pos;
                self.pos += n;
                text.push_str(&self.unescape(&self.src[raw_at..self.pos], raw_at)?);
            }
        }
        Ok(Element {
            name,
            attrs,
            children,
            text,
            span: start..self.pos,
            start_tag,
        })
    }

    fn attribute(&mut self) -> Result<Attr, XmlError> {
        let name_start = self.pos;
        let name = self.name()?;
        let name_span = name_start..self.pos;
        self.skip_ws();
        if !self.rest().starts_with('=') {
            return Err(self.err(self.pos, format!("attribute {name} has no '='")));
        }
        self.pos += 1;
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err(self.pos, format!("attribute {name} is not quoted"))),
        };
        self.pos += 1;
        let vstart = self.pos;
        let Some(len) = self.rest().find(quote) else {
            return Err(self.err(vstart, format!("attribute {name} is never closed")));
        };
        let raw = &self.src[vstart..vstart + len];
        if raw.contains('<') {
            return Err(self.err(vstart, format!("'<' in the value of attribute {name}")));
        }
        // Attribute-value normalisation: literal whitespace characters read as spaces.
        let value = if raw.contains(['\t', '\n', '\r']) {
            self.unescape(
                &raw.replace("\r\n", " ").replace(['\t', '\n', '\r'], " "),
                vstart,
            )?
        } else {
            self.unescape(raw, vstart)?
        };
        self.pos = vstart + len + 1;
        Ok(Attr {
            name,
            value,
            name_span,
            value_span: vstart..vstart + len,
            quote,
        })
    }

    fn unescape(&self, raw: &str, at: usize) -> Result<String, XmlError> {
        if !raw.contains('&') {
            return Ok(raw.to_string());
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(i) = rest.find('&') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let Some(end) = tail.find(';') else {
                return Err(self.err(at, "'&' without ';'"));
            };
            let ent = &tail[1..end];
            let ch = match ent {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ if ent.starts_with("#x") => u32::from_str_radix(&ent[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            match ch {
                Some(c) if allowed(c) => out.push(c),
                Some(_) => {
                    return Err(
                        self.err(at, format!("&{ent}; names a character XML does not allow"))
                    )
                }
                None => return Err(self.err(at, format!("unknown entity &{ent};"))),
            }
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_spans_of_attributes_and_elements() {
        let doc = "<?xml version='1.0'?>\n<a x='1' y=\"t&amp;u\"><!-- c --><b/>text<c k = 'v'>in</c></a>\n";
        let a = parse(doc).unwrap();
        assert_eq!(a.name, "a");
        let y = a.attr_full("y").unwrap();
        assert_eq!(y.value, "t&u");
        assert_eq!(&doc[y.value_span.clone()], "t&amp;u");
        assert_eq!(y.quote, '"');
        assert_eq!(&doc[a.attr_full("x").unwrap().name_span.clone()], "x");
        let c = a.child("c").unwrap();
        assert_eq!(&doc[c.span.clone()], "<c k = 'v'>in</c>");
        assert_eq!(&doc[c.start_tag.clone()], "<c k = 'v'>");
        assert_eq!(c.text, "in");
        assert_eq!(a.text, "text");
        assert_eq!(&doc[a.child("b").unwrap().span.clone()], "<b/>");
    }

    #[test]
    fn rejects_mismatched_tags_with_a_position() {
        let e = parse("<a>\n<b></a>").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.what.contains("</a> closes <b>"), "{e}");
    }

    #[test]
    fn rejects_unquoted_attributes_and_trailing_content() {
        assert!(parse("<a x=1/>").is_err());
        assert!(parse("<a/><b/>").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn unescapes_character_references_and_cdata() {
        let a = parse("<a v='&#65;&#x42;&lt;'><![CDATA[<raw>]]></a>").unwrap();
        assert_eq!(a.attr("v"), Some("AB<"));
        assert_eq!(a.text, "<raw>");
    }

    #[test]
    fn escape_round_trips_through_the_reader() {
        for q in ['\'', '"'] {
            let v = "a&b<c>'d\"e";
            let doc = format!("<a v={q}{}{q}/>", escape_attr(v, q));
            assert_eq!(parse(&doc).unwrap().attr("v"), Some(v));
        }
    }
}
