//! CoRE Link Format (RFC 6690 §2): parse and emit `</a/b>;rt="x";ct=40;obs,</c>`.
//!
//! The parser is bounded ([`ParseLimits`]): the input length, the number of links and the
//! number of attributes per link are capped before anything is allocated for them, so a
//! hostile payload cannot make it allocate more than a small multiple of its own size.
//! Errors carry the byte offset where parsing stopped. Emitting then parsing gives back
//! the same links.

use core::fmt;

use thiserror::Error;

/// One link: a target URI reference and its attributes, in the order they were given.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Link {
    /// The URI reference between `<` and `>`.
    pub target: String,
    /// Attributes as (name, value); `None` for a bare attribute such as `obs`.
    pub attributes: Vec<(String, Option<String>)>,
}

/// Caps applied while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Longest accepted input, in bytes.
    pub max_len: usize,
    /// Most links accepted.
    pub max_links: usize,
    /// Most attributes accepted on one link.
    pub max_attributes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_len: 64 * 1024,
            max_links: 4096,
            max_attributes: 64,
        }
    }
}

/// Why a link-format document could not be parsed.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum LinkFormatError {
    /// The input is longer than [`ParseLimits::max_len`].
    #[error("link format document of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More links than [`ParseLimits::max_links`].
    #[error("more than {0} links")]
    TooManyLinks(usize),
    /// More attributes on one link than [`ParseLimits::max_attributes`].
    #[error("more than {max} attributes on the link at byte {at}")]
    TooManyAttributes {
        /// The limit.
        max: usize,
        /// Offset of the link.
        at: usize,
    },
    /// A character other than the one the grammar requires.
    #[error("expected {expected} at byte {at}")]
    Expected {
        /// What was expected.
        expected: &'static str,
        /// Byte offset.
        at: usize,
    },
    /// A quoted string or a target without its closing delimiter.
    #[error("unterminated {what} starting at byte {at}")]
    Unterminated {
        /// `"quoted string"` or `"target"`.
        what: &'static str,
        /// Byte offset of the opening delimiter.
        at: usize,
    },
    /// The payload is not UTF-8.
    #[error("link format payload is not UTF-8 (byte {0})")]
    NotUtf8(usize),
}

impl Link {
    /// A link to `target` without attributes.
    pub fn new(target: impl Into<String>) -> Link {
        Link {
            target: target.into(),
            attributes: Vec::new(),
        }
    }

    /// Adds an attribute (builder style).
    pub fn with(mut self, name: impl Into<String>, value: Option<impl Into<String>>) -> Link {
        self.attributes.push((name.into(), value.map(Into::into)));
        self
    }

    /// The first attribute called `name`: `Some(None)` for a bare attribute.
    pub fn attribute(&self, name: &str) -> Option<Option<&str>> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }
}

/// Parses a link-format payload with the default limits.
pub fn parse(text: &str) -> Result<Vec<Link>, LinkFormatError> {
    parse_with_limits(text, &ParseLimits::default())
}

/// Parses a link-format payload given as bytes (CoAP payloads are bytes).
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<Link>, LinkFormatError> {
    let text =
        core::str::from_utf8(bytes).map_err(|e| LinkFormatError::NotUtf8(e.valid_up_to()))?;
    parse(text)
}

/// Parses a link-format payload. An empty (or all-whitespace) payload has no links.
pub fn parse_with_limits(text: &str, limits: &ParseLimits) -> Result<Vec<Link>, LinkFormatError> {
    if text.len() > limits.max_len {
        return Err(LinkFormatError::TooLong {
            len: text.len(),
            max: limits.max_len,
        });
    }
    let mut parser = Parser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    let mut links = Vec::new();
    parser.skip_whitespace();
    if parser.at_end() {
        return Ok(links);
    }
    loop {
        if links.len() == limits.max_links {
            return Err(LinkFormatError::TooManyLinks(limits.max_links));
        }
        links.push(parser.link(limits)?);
        parser.skip_whitespace();
        if parser.at_end() {
            return Ok(links);
        }
        parser.expect(b',', "',' between links")?;
        parser.skip_whitespace();
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), LinkFormatError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(LinkFormatError::Expected {
                expected,
                at: self.pos,
            })
        }
    }

    fn link(&mut self, limits: &ParseLimits) -> Result<Link, LinkFormatError> {
        let start = self.pos;
        self.expect(b'<', "'<' opening a link")?;
        let target_len = self.bytes[self.pos..]
            .iter()
            .position(|b| *b == b'>')
            .ok_or(LinkFormatError::Unterminated {
                what: "target",
                at: start,
            })?;
        let target = self.slice(self.pos, self.pos + target_len).to_owned();
        self.pos += target_len + 1;
        let mut link = Link::new(target);
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b';') {
                return Ok(link);
            }
            self.pos += 1;
            self.skip_whitespace();
            if link.attributes.len() == limits.max_attributes {
                return Err(LinkFormatError::TooManyAttributes {
                    max: limits.max_attributes,
                    at: start,
                });
            }
            link.attributes.push(self.attribute()?);
        }
    }

    fn slice(&self, from: usize, to: usize) -> &str {
        self.text.get(from..to).unwrap_or_default()
    }

    fn attribute(&mut self) -> Result<(String, Option<String>), LinkFormatError> {
        let name_start = self.pos;
        while self.peek().is_some_and(is_parmname_char) {
            self.pos += 1;
        }
        if self.pos == name_start {
            return Err(LinkFormatError::Expected {
                expected: "an attribute name",
                at: self.pos,
            });
        }
        let name = self.slice(name_start, self.pos).to_owned();
        self.skip_whitespace();
        if self.peek() != Some(b'=') {
            return Ok((name, None));
        }
        self.pos += 1;
        self.skip_whitespace();
        let value = if self.peek() == Some(b'"') {
            self.quoted_string()?
        } else {
            self.token()?
        };
        Ok((name, Some(value)))
    }

    fn token(&mut self) -> Result<String, LinkFormatError> {
        let start = self.pos;
        while self.peek().is_some_and(is_ptoken_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(LinkFormatError::Expected {
                expected: "a token or a quoted string",
                at: self.pos,
            });
        }
        Ok(self.slice(start, self.pos).to_owned())
    }

    fn quoted_string(&mut self) -> Result<String, LinkFormatError> {
        let open = self.pos;
        self.pos += 1;
        let mut value = String::new();
        let mut chunk_start = self.pos;
        loop {
            match self.peek() {
                None => {
                    return Err(LinkFormatError::Unterminated {
                        what: "quoted string",
                        at: open,
                    });
                }
                Some(b'"') => {
                    value.push_str(self.slice(chunk_start, self.pos));
                    self.pos += 1;
                    return Ok(value);
                }
                Some(b'\\') => {
                    value.push_str(self.slice(chunk_start, self.pos));
                    self.pos += 1;
                    let escaped = self.text.get(self.pos..).and_then(|s| s.chars().next());
                    let escaped = escaped.ok_or(LinkFormatError::Unterminated {
                        what: "quoted string",
                        at: open,
                    })?;
                    value.push(escaped);
                    self.pos += escaped.len_utf8();
                    chunk_start = self.pos;
                }
                Some(_) => self.pos += 1,
            }
        }
    }
}

fn is_parmname_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'&'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
                | b'*'
        )
}

/// RFC 6690 `ptokenchar`.
fn is_ptoken_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b'<'
                | b'='
                | b'>'
                | b'?'
                | b'@'
                | b'['
                | b']'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        )
}

/// Attributes RFC 6690 writes as quoted strings even when they are tokens.
const QUOTED_ATTRIBUTES: &[&str] = &["rt", "if", "rel", "rev", "anchor", "title", "type"];

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URI reference cannot hold '>'; percent-encoding keeps the output parseable.
        write!(f, "<{}>", self.target.replace('>', "%3E"))?;
        for (name, value) in &self.attributes {
            write!(f, ";{name}")?;
            let Some(value) = value else { continue };
            let is_token = !value.is_empty() && value.bytes().all(is_ptoken_char);
            if is_token && !QUOTED_ATTRIBUTES.contains(&name.as_str()) {
                write!(f, "={value}")?;
            } else {
                f.write_str("=\"")?;
                for c in value.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")?;
            }
        }
        Ok(())
    }
}

/// Emits links as a link-format document (links separated by ',').
pub fn emit(links: &[Link]) -> String {
    let mut out = String::new();
    for (index, link) in links.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&link.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rfc6690_example() {
        let links = parse("</sensors/temp>;rt=\"temperature-c\";if=\"sensor\";ct=40;obs,</c>")
            .expect("valid document");
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].target, "/sensors/temp");
        assert_eq!(links[0].attribute("rt"), Some(Some("temperature-c")));
        assert_eq!(links[0].attribute("ct"), Some(Some("40")));
        assert_eq!(links[0].attribute("obs"), Some(None));
        assert_eq!(links[1], Link::new("/c"));
    }

    #[test]
    fn tolerates_whitespace_escapes_and_commas_in_quotes() {
        let links =
            parse(" </a> ; title=\"x, \\\"y\\\" \\\\ z\" ,\n</b>;rt=\"a b\" ").expect("valid");
        assert_eq!(links[0].attribute("title"), Some(Some("x, \"y\" \\ z")));
        assert_eq!(links[1].attribute("rt"), Some(Some("a b")));
        assert_eq!(parse("").map(|l| l.len()), Ok(0));
    }

    #[test]
    fn reports_what_and_where() {
        assert_eq!(
            parse("</a>,x"),
            Err(LinkFormatError::Expected {
                expected: "'<' opening a link",
                at: 5
            })
        );
        assert_eq!(
            parse("</a>;t=\"open"),
            Err(LinkFormatError::Unterminated {
                what: "quoted string",
                at: 7
            })
        );
        assert!(matches!(
            parse("</a"),
            Err(LinkFormatError::Unterminated { what: "target", .. })
        ));
        assert!(matches!(
            parse("</a></b>"),
            Err(LinkFormatError::Expected { at: 4, .. })
        ));
        assert!(matches!(
            parse("</a>;=1"),
            Err(LinkFormatError::Expected { at: 5, .. })
        ));
        assert!(matches!(
            parse_bytes(&[b'<', 0xff]),
            Err(LinkFormatError::NotUtf8(1))
        ));
    }

    #[test]
    fn enforces_limits() {
        let limits = ParseLimits {
            max_len: 100,
            max_links: 2,
            max_attributes: 1,
        };
        assert!(matches!(
            parse_with_limits("</a>,</b>,</c>", &limits),
            Err(LinkFormatError::TooManyLinks(2))
        ));
        assert!(matches!(
            parse_with_limits("</a>;x;y", &limits),
            Err(LinkFormatError::TooManyAttributes { .. })
        ));
        let long = "</a>,".repeat(30);
        assert!(matches!(
            parse_with_limits(&long, &limits),
            Err(LinkFormatError::TooLong { .. })
        ));
    }

    #[test]
    fn emit_percent_encodes_a_closing_bracket_in_the_target() {
        let text = emit(&[Link::new("/a>b")]);
        assert_eq!(text, "</a%3Eb>");
        assert_eq!(parse(&text), Ok(vec![Link::new("/a%3Eb")]));
    }

    #[test]
    fn emits_lwm2m_registration_payload() {
        let links = vec![
            Link::new("/")
                .with("rt", Some("oma.lwm2m"))
                .with("ct", Some("11543")),
            Link::new("/3/0"),
            Link::new("/1/0").with("ver", Some("1.1")),
        ];
        let text = emit(&links);
        assert_eq!(text, "</>;rt=\"oma.lwm2m\";ct=11543,</3/0>,</1/0>;ver=1.1");
        assert_eq!(parse(&text), Ok(links));
    }

    fn link_strategy() -> impl Strategy<Value = Link> {
        let name = "[a-z][a-z0-9._-]{0,8}";
        let value = proptest::option::of("[ -~]{0,12}");
        (
            "[!-;=?-~]{0,20}",
            proptest::collection::vec((name, value), 0..5),
        )
            .prop_map(|(target, attributes)| Link { target, attributes })
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(links in proptest::collection::vec(link_strategy(), 0..6)) {
            prop_assert_eq!(parse(&emit(&links)), Ok(links));
        }

        #[test]
        fn never_panics(text in "[<>;=\",a-z0-9 \\\\/é]{0,64}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_bytes(&bytes);
        }
    }
}
