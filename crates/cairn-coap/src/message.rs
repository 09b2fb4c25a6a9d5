//! CoAP message format (RFC 7252 §3): header, token, options and payload.
//!
//! Two levels, as for every wire format here: [`MessageView`] is a zero-copy view whose
//! constructor validates the whole message once, after which its accessors never panic;
//! [`Message`] is an owned representation that the endpoint and the layers above use,
//! with [`Message::decode`] and [`Message::encode`].

use core::fmt;

use crate::option::{OptionNumber, decode_uint, encode_uint};

/// Largest token length (RFC 7252 §3).
pub const MAX_TOKEN_LEN: usize = 8;

/// The message type (RFC 7252 §3 and §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Confirmable,
    NonConfirmable,
    Acknowledgement,
    Reset,
}

impl MessageType {
    fn from_bits(bits: u8) -> Self {
        match bits & 0x3 {
            0 => MessageType::Confirmable,
            1 => MessageType::NonConfirmable,
            2 => MessageType::Acknowledgement,
            _ => MessageType::Reset,
        }
    }

    fn bits(self) -> u8 {
        match self {
            MessageType::Confirmable => 0,
            MessageType::NonConfirmable => 1,
            MessageType::Acknowledgement => 2,
            MessageType::Reset => 3,
        }
    }
}

/// A request method or response code, `class.detail` (RFC 7252 §3 and §12.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    pub const EMPTY: Code = Code::new(0, 0);
    pub const GET: Code = Code::new(0, 1);
    pub const POST: Code = Code::new(0, 2);
    pub const PUT: Code = Code::new(0, 3);
    pub const DELETE: Code = Code::new(0, 4);
    pub const FETCH: Code = Code::new(0, 5);
    pub const PATCH: Code = Code::new(0, 6);
    pub const IPATCH: Code = Code::new(0, 7);
    pub const CREATED: Code = Code::new(2, 1);
    pub const DELETED: Code = Code::new(2, 2);
    pub const VALID: Code = Code::new(2, 3);
    pub const CHANGED: Code = Code::new(2, 4);
    pub const CONTENT: Code = Code::new(2, 5);
    pub const CONTINUE: Code = Code::new(2, 31);
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    pub const BAD_OPTION: Code = Code::new(4, 2);
    pub const FORBIDDEN: Code = Code::new(4, 3);
    pub const NOT_FOUND: Code = Code::new(4, 4);
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    pub const NOT_ACCEPTABLE: Code = Code::new(4, 6);
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    pub const CONFLICT: Code = Code::new(4, 9);
    pub const PRECONDITION_FAILED: Code = Code::new(4, 12);
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code::new(4, 15);
    pub const UNPROCESSABLE_ENTITY: Code = Code::new(4, 22);
    pub const TOO_MANY_REQUESTS: Code = Code::new(4, 29);
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    pub const NOT_IMPLEMENTED: Code = Code::new(5, 1);
    pub const BAD_GATEWAY: Code = Code::new(5, 2);
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    pub const GATEWAY_TIMEOUT: Code = Code::new(5, 4);
    pub const PROXYING_NOT_SUPPORTED: Code = Code::new(5, 5);
    pub const HOP_LIMIT_REACHED: Code = Code::new(5, 8);

    /// Builds a code from its class (0..=7) and detail (0..=31).
    pub const fn new(class: u8, detail: u8) -> Code {
        Code(((class & 0x7) << 5) | (detail & 0x1f))
    }

    pub const fn class(self) -> u8 {
        self.0 >> 5
    }

    pub const fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn is_request(self) -> bool {
        self.class() == 0 && self.detail() != 0
    }

    pub const fn is_response(self) -> bool {
        matches!(self.class(), 2..=5)
    }

    pub const fn is_success(self) -> bool {
        self.class() == 2
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A token of 0 to 8 bytes, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Token {
    len: u8,
    bytes: [u8; MAX_TOKEN_LEN],
}

impl Token {
    /// The empty token.
    pub const EMPTY: Token = Token {
        len: 0,
        bytes: [0; MAX_TOKEN_LEN],
    };

    /// A token from up to eight bytes; `None` if longer.
    pub fn new(value: &[u8]) -> Option<Token> {
        if value.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut bytes = [0; MAX_TOKEN_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Some(Token {
            len: value.len() as u8,
            bytes,
        })
    }

    /// An eight-byte token from a 64-bit number.
    pub fn from_u64(value: u64) -> Token {
        Token {
            len: 8,
            bytes: value.to_be_bytes(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Why a datagram is not a well-formed CoAP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("message shorter than the 4-byte header")]
    TooShort,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("token length {0} is reserved (RFC 7252 §3)")]
    TokenLength(u8),
    #[error("token truncated")]
    TruncatedToken,
    #[error("option at byte {offset}: reserved nibble 15 in delta or length")]
    ReservedNibble { offset: usize },
    #[error("option at byte {offset}: extended delta or length truncated")]
    TruncatedOptionHeader { offset: usize },
    #[error("option at byte {offset}: value runs past the end of the message")]
    TruncatedOptionValue { offset: usize },
    #[error("option number overflows 16 bits at byte {offset}")]
    OptionNumberOverflow { offset: usize },
    #[error("payload marker at byte {offset} followed by an empty payload")]
    EmptyPayload { offset: usize },
    #[error("empty message (code 0.00) with a token, options or payload")]
    NonEmptyEmptyMessage,
    #[error("code {0} is in a reserved class")]
    ReservedClass(Code),
}

/// The parts of a header that could be read even when the rest is malformed,
/// so that the endpoint can answer a bad Confirmable message with a Reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHeader {
    pub message_type: MessageType,
    pub code: Code,
    pub message_id: u16,
}

impl RawHeader {
    /// Reads the fixed header, if the datagram has four bytes of version 1.
    pub fn read(datagram: &[u8]) -> Option<RawHeader> {
        let header = datagram.get(..4)?;
        (header[0] >> 6 == 1).then(|| RawHeader {
            message_type: MessageType::from_bits(header[0] >> 4),
            code: Code(header[1]),
            message_id: u16::from_be_bytes([header[2], header[3]]),
        })
    }
}

/// A validated, zero-copy view of a CoAP message.
#[derive(Clone, Copy)]
pub struct MessageView<'a> {
    bytes: &'a [u8],
    options_start: usize,
    options_end: usize,
}

impl<'a> MessageView<'a> {
    /// Validates the whole message (header, token, every option, payload marker).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        if bytes.len() < 4 {
            return Err(FormatError::TooShort);
        }
        let version = bytes[0] >> 6;
        if version != 1 {
            return Err(FormatError::Version(version));
        }
        let token_len = bytes[0] & 0x0f;
        if usize::from(token_len) > MAX_TOKEN_LEN {
            return Err(FormatError::TokenLength(token_len));
        }
        let options_start = 4 + usize::from(token_len);
        if bytes.len() < options_start {
            return Err(FormatError::TruncatedToken);
        }
        let code = Code(bytes[1]);
        if matches!(code.class(), 1 | 6 | 7) {
            return Err(FormatError::ReservedClass(code));
        }
        let mut reader = OptionReader {
            bytes,
            pos: options_start,
            number: 0,
        };
        while reader.next_option()?.is_some() {}
        let options_end = reader.pos;
        if options_end < bytes.len() && options_end + 1 == bytes.len() {
            return Err(FormatError::EmptyPayload {
                offset: options_end,
            });
        }
        if code.is_empty() && bytes.len() > 4 {
            return Err(FormatError::NonEmptyEmptyMessage);
        }
        Ok(MessageView {
            bytes,
            options_start,
            options_end,
        })
    }

    pub fn message_type(&self) -> MessageType {
        MessageType::from_bits(self.bytes[0] >> 4)
    }

    pub fn code(&self) -> Code {
        Code(self.bytes[1])
    }

    pub fn message_id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    pub fn token(&self) -> Token {
        Token::new(&self.bytes[4..self.options_start]).unwrap_or_default()
    }

    /// The options in order; the message was validated, so iteration ends cleanly.
    pub fn options(&self) -> OptionIter<'a> {
        OptionIter {
            reader: OptionReader {
                bytes: &self.bytes[..self.options_end],
                pos: self.options_start,
                number: 0,
            },
        }
    }

    pub fn payload(&self) -> &'a [u8] {
        self.bytes.get(self.options_end + 1..).unwrap_or(&[])
    }
}

struct OptionReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    number: u16,
}

impl<'a> OptionReader<'a> {
    fn next_option(&mut self) -> Result<Option<(OptionNumber, &'a [u8])>, FormatError> {
        let offset = self.pos;
        let Some(&first) = self.bytes.get(offset) else {
            return Ok(None);
        };
        if first == 0xff {
            return Ok(None);
        }
        let mut pos = offset + 1;
        let delta = self.extended(first >> 4, &mut pos, offset)?;
        let len = self.extended(first & 0x0f, &mut pos, offset)?;
        let number = u32::from(self.number) + delta;
        let number =
            u16::try_from(number).map_err(|_| FormatError::OptionNumberOverflow { offset })?;
        let end = pos
            .checked_add(len as usize)
            .ok_or(FormatError::TruncatedOptionValue { offset })?;
        let value = self
            .bytes
            .get(pos..end)
            .ok_or(FormatError::TruncatedOptionValue { offset })?;
        self.number = number;
        self.pos = end;
        Ok(Some((OptionNumber(number), value)))
    }

    fn extended(&self, nibble: u8, pos: &mut usize, offset: usize) -> Result<u32, FormatError> {
        let truncated = FormatError::TruncatedOptionHeader { offset };
        match nibble {
            0..=12 => Ok(u32::from(nibble)),
            13 => {
                let b = *self.bytes.get(*pos).ok_or(truncated)?;
                *pos += 1;
                Ok(u32::from(b) + 13)
            }
            14 => {
                let b = self.bytes.get(*pos..*pos + 2).ok_or(truncated)?;
                *pos += 2;
                Ok(u32::from(u16::from_be_bytes([b[0], b[1]])) + 269)
            }
            _ => Err(FormatError::ReservedNibble { offset }),
        }
    }
}

/// Iterator over the options of a validated message.
pub struct OptionIter<'a> {
    reader: OptionReader<'a>,
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = (OptionNumber, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next_option().ok().flatten()
    }
}

/// The options of an owned message, kept sorted by number (insertion order among equals).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options {
    entries: Vec<(OptionNumber, Vec<u8>)>,
}

impl Options {
    pub fn new() -> Self {
        Options::default()
    }

    /// Adds an option after any existing options of the same number.
    pub fn push(&mut self, number: OptionNumber, value: impl Into<Vec<u8>>) {
        let at = self.entries.partition_point(|(n, _)| *n <= number);
        self.entries.insert(at, (number, value.into()));
    }

    /// Replaces every option of this number with a single value.
    pub fn set(&mut self, number: OptionNumber, value: impl Into<Vec<u8>>) {
        self.remove(number);
        self.push(number, value);
    }

    pub fn set_uint(&mut self, number: OptionNumber, value: u32) {
        let (bytes, len) = encode_uint(value);
        self.set(number, &bytes[..len]);
    }

    pub fn remove(&mut self, number: OptionNumber) {
        self.entries.retain(|(n, _)| *n != number);
    }

    /// The first value of an option.
    pub fn get(&self, number: OptionNumber) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, v)| v.as_slice())
    }

    pub fn get_uint(&self, number: OptionNumber) -> Option<u32> {
        self.get(number).and_then(decode_uint)
    }

    pub fn contains(&self, number: OptionNumber) -> bool {
        self.get(number).is_some()
    }

    /// Every value of a (repeatable) option, in order.
    pub fn get_all(&self, number: OptionNumber) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .filter(move |(n, _)| *n == number)
            .map(|(_, v)| v.as_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = (OptionNumber, &[u8])> {
        self.entries.iter().map(|(n, v)| (*n, v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, v)| (n, OptionBytes(v))))
            .finish()
    }
}

struct OptionBytes<'a>(&'a [u8]);

impl fmt::Debug for OptionBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(text) if !text.is_empty() && text.chars().all(|c| !c.is_control()) => {
                write!(f, "{text:?}")
            }
            _ => write!(
                f,
                "0x{}",
                self.0
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
        }
    }
}

/// An owned CoAP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub message_type: MessageType,
    pub code: Code,
    pub message_id: u16,
    pub token: Token,
    pub options: Options,
    pub payload: Vec<u8>,
}

impl Message {
    /// A message with no token, options or payload.
    pub fn new(message_type: MessageType, code: Code, message_id: u16) -> Self {
        Message {
            message_type,
            code,
            message_id,
            token: Token::EMPTY,
            options: Options::new(),
            payload: Vec::new(),
        }
    }

    /// A request of the given method; the endpoint fills in type, message ID and token.
    pub fn request(method: Code) -> Self {
        Message::new(MessageType::Confirmable, method, 0)
    }

    /// A response with the given code; the endpoint fills in type, message ID and token.
    pub fn response(code: Code) -> Self {
        Message::new(MessageType::Acknowledgement, code, 0)
    }

    /// Parses and copies a datagram.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let view = MessageView::parse(bytes)?;
        let mut options = Options::new();
        options.entries.reserve(view.options().count());
        for (number, value) in view.options() {
            options.entries.push((number, value.to_vec()));
        }
        Ok(Message {
            message_type: view.message_type(),
            code: view.code(),
            message_id: view.message_id(),
            token: view.token(),
            options,
            payload: view.payload().to_vec(),
        })
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let token = self.token.as_bytes();
        out.push(0x40 | (self.message_type.bits() << 4) | token.len() as u8);
        out.push(self.code.0);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(token);
        let mut previous = 0u16;
        for (number, value) in self.options.iter() {
            encode_option_header(out, number.0 - previous, value.len());
            out.extend_from_slice(value);
            previous = number.0;
        }
        if !self.payload.is_empty() {
            out.push(0xff);
            out.extend_from_slice(&self.payload);
        }
    }

    /// The encoded message as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.payload.len());
        self.encode(&mut out);
        out
    }

    /// The Uri-Path as a `/`-separated string (`/` for an empty path).
    pub fn uri_path(&self) -> String {
        let mut path = String::new();
        for segment in self.options.get_all(OptionNumber::URI_PATH) {
            path.push('/');
            path.push_str(&String::from_utf8_lossy(segment));
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }

    /// Sets Uri-Path options from a `/`-separated path.
    pub fn set_uri_path(&mut self, path: &str) {
        self.options.remove(OptionNumber::URI_PATH);
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            self.options
                .push(OptionNumber::URI_PATH, segment.as_bytes());
        }
    }

    /// The Uri-Query options as strings.
    pub fn uri_queries(&self) -> impl Iterator<Item = String> + '_ {
        self.options
            .get_all(OptionNumber::URI_QUERY)
            .map(|q| String::from_utf8_lossy(q).into_owned())
    }

    pub fn content_format(&self) -> Option<crate::ContentFormat> {
        self.options
            .get_uint(OptionNumber::CONTENT_FORMAT)
            .and_then(|v| u16::try_from(v).ok())
            .map(Into::into)
    }

    pub fn set_content_format(&mut self, format: crate::ContentFormat) {
        self.options
            .set_uint(OptionNumber::CONTENT_FORMAT, u32::from(format.value()));
    }

    /// The Observe option value, if present.
    pub fn observe(&self) -> Option<u32> {
        self.options.get_uint(OptionNumber::OBSERVE)
    }

    /// The first critical option this implementation does not know (RFC 7252 §5.4.1).
    pub fn unknown_critical_option(&self) -> Option<OptionNumber> {
        self.options
            .iter()
            .map(|(n, _)| n)
            .find(|n| n.is_critical() && !n.is_known())
    }
}

fn encode_option_header(out: &mut Vec<u8>, delta: u16, len: usize) {
    let (delta_nibble, delta_ext) = extended_field(u32::from(delta));
    let (len_nibble, len_ext) = extended_field(len as u32);
    out.push((delta_nibble << 4) | len_nibble);
    delta_ext.write(out);
    len_ext.write(out);
}

enum Extended {
    None,
    One(u8),
    Two(u16),
}

impl Extended {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Extended::None => {}
            Extended::One(b) => out.push(b),
            Extended::Two(v) => out.extend_from_slice(&v.to_be_bytes()),
        }
    }
}

fn extended_field(value: u32) -> (u8, Extended) {
    match value {
        0..=12 => (value as u8, Extended::None),
        13..=268 => (13, Extended::One((value - 13) as u8)),
        _ => (
            14,
            Extended::Two((value - 269).min(u32::from(u16::MAX)) as u16),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_get_with_uri_path() {
        // CON GET, MID 0x7d34, token 0x20, Uri-Path "temperature" (RFC 7252 Appendix A style).
        let mut bytes = vec![0x41, 0x01, 0x7d, 0x34, 0x20, 0xbb];
        bytes.extend_from_slice(b"temperature");
        let message = Message::decode(&bytes).unwrap();
        assert_eq!(message.message_type, MessageType::Confirmable);
        assert_eq!(message.code, Code::GET);
        assert_eq!(message.message_id, 0x7d34);
        assert_eq!(message.token.as_bytes(), &[0x20]);
        assert_eq!(message.uri_path(), "/temperature");
        assert_eq!(message.to_bytes(), bytes);
    }

    #[test]
    fn extended_option_deltas_and_lengths() {
        let mut message = Message::new(MessageType::NonConfirmable, Code::CONTENT, 1);
        message
            .options
            .push(OptionNumber::URI_PATH, vec![b'a'; 300]);
        message.options.push(OptionNumber(2000), vec![1]);
        message.options.push(OptionNumber::SIZE1, vec![]);
        message.payload = b"hello".to_vec();
        let bytes = message.to_bytes();
        assert_eq!(Message::decode(&bytes).unwrap(), message);
    }

    #[test]
    fn rejects_malformed_messages() {
        assert_eq!(Message::decode(&[0x40, 0x01]), Err(FormatError::TooShort));
        assert_eq!(
            Message::decode(&[0x80, 0x01, 0, 0]),
            Err(FormatError::Version(2))
        );
        assert_eq!(
            Message::decode(&[0x49, 0x01, 0, 0]),
            Err(FormatError::TokenLength(9))
        );
        assert_eq!(
            Message::decode(&[0x42, 0x01, 0, 0, 1]),
            Err(FormatError::TruncatedToken)
        );
        assert_eq!(
            Message::decode(&[0x40, 0x01, 0, 0, 0xff]),
            Err(FormatError::EmptyPayload { offset: 4 })
        );
        assert_eq!(
            Message::decode(&[0x40, 0x01, 0, 0, 0xf1]),
            Err(FormatError::ReservedNibble { offset: 4 })
        );
        assert_eq!(
            Message::decode(&[0x40, 0x01, 0, 0, 0xb3, b'a']),
            Err(FormatError::TruncatedOptionValue { offset: 4 })
        );
        assert_eq!(
            Message::decode(&[0x40, 0x01, 0, 0, 0xe0, 1]),
            Err(FormatError::TruncatedOptionHeader { offset: 4 })
        );
        assert_eq!(
            Message::decode(&[0x41, 0x00, 0, 0, 7]),
            Err(FormatError::NonEmptyEmptyMessage)
        );
        assert_eq!(
            Message::decode(&[0x40, 0x20, 0, 0]),
            Err(FormatError::ReservedClass(Code::new(1, 0)))
        );
        // Delta overflow: 0xffff + 269 exceeds 16 bits.
        assert_eq!(
            Message::decode(&[0x40, 0x01, 0, 0, 0xe0, 0xff, 0xff]),
            Err(FormatError::OptionNumberOverflow { offset: 4 })
        );
    }

    #[test]
    fn header_is_readable_from_malformed_messages() {
        let header = RawHeader::read(&[0x40, 0x01, 0x12, 0x34, 0xf1]).unwrap();
        assert_eq!(header.message_type, MessageType::Confirmable);
        assert_eq!(header.message_id, 0x1234);
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            0u8..4,
            prop_oneof![Just(0u8), 1u8..8, 64u8..192],
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..=8),
            proptest::collection::vec(
                (0u16..2000, proptest::collection::vec(any::<u8>(), 0..300)),
                0..6,
            ),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(ty, code, mid, token, options, payload)| {
                let mut message = Message::new(MessageType::from_bits(ty), Code(code), mid);
                if code != 0 {
                    message.token = Token::new(&token).unwrap();
                    for (number, value) in options {
                        message.options.push(OptionNumber(number), value);
                    }
                    message.payload = payload;
                }
                message
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(message in arb_message()) {
            let bytes = message.to_bytes();
            prop_assert_eq!(Message::decode(&bytes).unwrap(), message);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(view) = MessageView::parse(&bytes) {
                let _ = view.options().count();
                let _ = view.payload();
                let message = Message::decode(&bytes).unwrap();
                prop_assert_eq!(Message::decode(&message.to_bytes()).unwrap(), message);
            }
        }
    }
}
