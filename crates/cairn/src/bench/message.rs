//! The CoAP bytes the load generator sends, and the few fields it reads back from a
//! response: the fixed header and the token (RFC 7252 §3) and the Uri-Path option
//! (§5.10.1, encoded as in §3.1).
//!
//! This is deliberately independent of `cairn-coap`, so that the benchmark does not
//! judge Cairn's codec with Cairn's codec. Parsing never panics.

/// Length of the tokens the generator uses.
pub const TOKEN_LEN: usize = 4;

/// Code 0.01 (GET).
const CODE_GET: u8 = 0x01;
/// Option number of Uri-Path.
const OPTION_URI_PATH: u16 = 11;
/// Offset of the token in a message: right after the 4-byte header.
const TOKEN_OFFSET: usize = 4;

/// The type of a CoAP message (RFC 7252 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Confirmable,
    NonConfirmable,
    Acknowledgement,
    Reset,
}

impl MessageType {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => Self::Confirmable,
            1 => Self::NonConfirmable,
            2 => Self::Acknowledgement,
            _ => Self::Reset,
        }
    }
}

/// A confirmable GET of one path, with a 4-byte token. The message ID and the token
/// are rewritten in place for each request, so every request has the same length.
#[derive(Debug, Clone)]
pub struct GetRequest {
    bytes: Vec<u8>,
}

impl GetRequest {
    /// A GET of `path` (`/` or `/a/b`): one Uri-Path option per non-empty segment.
    pub fn new(path: &str) -> Self {
        let mut bytes = vec![0x40 | TOKEN_LEN as u8, CODE_GET, 0, 0];
        bytes.extend_from_slice(&[0; TOKEN_LEN]);
        let mut previous_option = 0;
        for segment in path.split('/').filter(|segment| !segment.is_empty()) {
            encode_option(
                &mut bytes,
                OPTION_URI_PATH - previous_option,
                segment.as_bytes(),
            );
            previous_option = OPTION_URI_PATH;
        }
        Self { bytes }
    }

    /// The request with this message ID and token.
    pub fn with_identity(&self, message_id: u16, token: [u8; TOKEN_LEN]) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        set_identity(&mut bytes, message_id, token);
        bytes
    }
}

/// Rewrites the message ID and the token of a request built by [`GetRequest`].
pub fn set_identity(request: &mut [u8], message_id: u16, token: [u8; TOKEN_LEN]) {
    request[2..4].copy_from_slice(&message_id.to_be_bytes());
    request[TOKEN_OFFSET..TOKEN_OFFSET + TOKEN_LEN].copy_from_slice(&token);
}

/// Appends one option (RFC 7252 §3.1): delta and length nibbles with their extensions.
fn encode_option(out: &mut Vec<u8>, delta: u16, value: &[u8]) {
    let (delta_nibble, delta_extension) = option_nibble(delta as usize);
    let (length_nibble, length_extension) = option_nibble(value.len());
    out.push(delta_nibble << 4 | length_nibble);
    out.extend_from_slice(&delta_extension);
    out.extend_from_slice(&length_extension);
    out.extend_from_slice(value);
}

/// The 4-bit field for an option delta or length, and its extended bytes.
fn option_nibble(value: usize) -> (u8, Vec<u8>) {
    match value {
        0..=12 => (value as u8, Vec::new()),
        13..=268 => (13, vec![(value - 13) as u8]),
        _ => (14, ((value - 269) as u16).to_be_bytes().to_vec()),
    }
}

/// The fields of a received message the generator matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub message_type: MessageType,
    /// The code byte: class in the top 3 bits, detail in the low 5.
    pub code: u8,
    pub message_id: u16,
    pub token: &'a [u8],
}

impl Header<'_> {
    /// A success response (2.xx), or the request itself as an echo server returns it.
    pub fn is_expected_answer(&self) -> bool {
        self.code >> 5 == 2 || self.code == CODE_GET
    }

    /// A separate response sent confirmable (§5.2.2), which the client must acknowledge.
    pub fn needs_acknowledgement(&self) -> bool {
        self.message_type == MessageType::Confirmable && self.code >> 5 >= 2
    }
}

/// The empty Acknowledgement of message `message_id` (§4.2).
pub fn empty_acknowledgement(message_id: u16) -> [u8; 4] {
    let [high, low] = message_id.to_be_bytes();
    [0x60, 0x00, high, low]
}

/// Reads the header and token of a CoAP message; `None` when it is not CoAP version 1
/// or is too short for its token.
pub fn parse_header(datagram: &[u8]) -> Option<Header<'_>> {
    let first = *datagram.first()?;
    let token_len = usize::from(first & 0x0f);
    if first >> 6 != 1 || token_len > 8 || datagram.len() < TOKEN_OFFSET + token_len {
        return None;
    }
    Some(Header {
        message_type: MessageType::from_bits(first >> 4),
        code: datagram[1],
        message_id: u16::from_be_bytes([datagram[2], datagram[3]]),
        token: &datagram[TOKEN_OFFSET..TOKEN_OFFSET + token_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_of_root_has_no_uri_path() {
        let request = GetRequest::new("/").with_identity(0x1234, [1, 2, 3, 4]);
        assert_eq!(request, [0x44, 0x01, 0x12, 0x34, 1, 2, 3, 4]);
    }

    #[test]
    fn get_encodes_one_uri_path_per_segment() {
        let request = GetRequest::new("/time/now").with_identity(7, [0; 4]);
        let mut expected = vec![0x44, 0x01, 0x00, 0x07, 0, 0, 0, 0];
        expected.extend_from_slice(&[0xb4, b't', b'i', b'm', b'e']);
        expected.extend_from_slice(&[0x03, b'n', b'o', b'w']);
        assert_eq!(request, expected);
    }

    #[test]
    fn long_segments_use_extended_lengths() {
        let segment = "a".repeat(300);
        let request = GetRequest::new(&segment).with_identity(0, [0; 4]);
        assert_eq!(&request[8..11], &[0xbe, 0x00, 31]);
        assert_eq!(request.len(), 11 + 300);
        let request = GetRequest::new(&segment[..20]).with_identity(0, [0; 4]);
        assert_eq!(&request[8..10], &[0xbd, 20 - 13]);
    }

    #[test]
    fn parses_a_piggybacked_response() {
        let response = [0x64, 0x45, 0xbe, 0xef, 9, 8, 7, 6, 0xff, b'h', b'i'];
        let header = parse_header(&response).unwrap();
        assert_eq!(header.message_type, MessageType::Acknowledgement);
        assert_eq!(header.code, 0x45);
        assert_eq!(header.message_id, 0xbeef);
        assert_eq!(header.token, &[9, 8, 7, 6]);
        assert!(header.is_expected_answer());
    }

    #[test]
    fn a_confirmable_separate_response_is_acknowledged() {
        let separate = [0x44, 0x45, 0x12, 0x34, 1, 2, 3, 4];
        assert!(parse_header(&separate).unwrap().needs_acknowledgement());
        assert_eq!(empty_acknowledgement(0x1234), [0x60, 0x00, 0x12, 0x34]);
        let echoed_request = GetRequest::new("/").with_identity(1, [1; 4]);
        assert!(
            !parse_header(&echoed_request)
                .unwrap()
                .needs_acknowledgement()
        );
    }

    #[test]
    fn an_echoed_request_is_an_expected_answer() {
        let request = GetRequest::new("/").with_identity(1, [1; 4]);
        let header = parse_header(&request).unwrap();
        assert_eq!(header.message_type, MessageType::Confirmable);
        assert!(header.is_expected_answer());
        let not_found = [0x64, 0x84, 0, 1, 1, 1, 1, 1];
        assert!(!parse_header(&not_found).unwrap().is_expected_answer());
    }

    #[test]
    fn rejects_what_is_not_coap() {
        assert_eq!(parse_header(&[]), None);
        assert_eq!(parse_header(&[0x84, 0x45, 0, 0, 1, 2, 3, 4]), None);
        assert_eq!(parse_header(&[0x44, 0x45, 0, 0, 1, 2]), None);
        assert_eq!(
            parse_header(&[0x49, 0x45, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            None
        );
    }
}
