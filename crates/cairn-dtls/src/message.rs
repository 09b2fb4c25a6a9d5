//! Handshake messages (RFC 5246 §7.4, RFC 6347 §4.2.2 and §4.3.2, RFC 4279 §2).
//!
//! Each message has a parse function over a [`Reader`] and an `encode` appending its body.
//! Hello extensions (RFC 5246 §7.4.1.4) understood here: `extended_master_secret` (RFC 7627
//! §5.1), `renegotiation_info` (RFC 5746 §3.2) and `connection_id` (RFC 9146 §3); any other
//! extension is skipped, as RFC 5246 §7.4.1.4 requires of a server.

use crate::Error;
use crate::codec::{Reader, put_u24, put_vec8, put_vec16, with_len16};

/// Length of the DTLS handshake header (RFC 6347 §4.2.2).
pub const HANDSHAKE_HEADER_LEN: usize = 12;
/// `extended_master_secret` extension type (RFC 7627).
pub const EXT_EXTENDED_MASTER_SECRET: u16 = 23;
/// `connection_id` extension type (RFC 9146).
pub const EXT_CONNECTION_ID: u16 = 54;
/// `renegotiation_info` extension type (RFC 5746).
pub const EXT_RENEGOTIATION_INFO: u16 = 0xFF01;
/// TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746 §3.3).
pub const EMPTY_RENEGOTIATION_INFO_SCSV: u16 = 0x00FF;

/// Handshake message type (RFC 5246 §7.4, RFC 6347 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeType {
    /// hello_request (0).
    HelloRequest,
    /// client_hello (1).
    ClientHello,
    /// server_hello (2).
    ServerHello,
    /// hello_verify_request (3).
    HelloVerifyRequest,
    /// server_key_exchange (12).
    ServerKeyExchange,
    /// server_hello_done (14).
    ServerHelloDone,
    /// client_key_exchange (16).
    ClientKeyExchange,
    /// finished (20).
    Finished,
    /// Any other type.
    Unknown(u8),
}

impl HandshakeType {
    /// Decodes the type byte.
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::HelloRequest,
            1 => Self::ClientHello,
            2 => Self::ServerHello,
            3 => Self::HelloVerifyRequest,
            12 => Self::ServerKeyExchange,
            14 => Self::ServerHelloDone,
            16 => Self::ClientKeyExchange,
            20 => Self::Finished,
            other => Self::Unknown(other),
        }
    }

    /// Encodes the type byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::HelloRequest => 0,
            Self::ClientHello => 1,
            Self::ServerHello => 2,
            Self::HelloVerifyRequest => 3,
            Self::ServerKeyExchange => 12,
            Self::ServerHelloDone => 14,
            Self::ClientKeyExchange => 16,
            Self::Finished => 20,
            Self::Unknown(other) => other,
        }
    }
}

/// A handshake fragment as found in a record (RFC 6347 §4.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// Message type.
    pub msg_type: HandshakeType,
    /// Length of the whole message body.
    pub length: u32,
    /// Handshake message sequence number.
    pub message_seq: u16,
    /// Offset of this fragment in the body.
    pub offset: u32,
    /// The fragment bytes.
    pub body: &'a [u8],
}

impl<'a> Fragment<'a> {
    /// Reads one fragment header and its bytes.
    pub fn parse(reader: &mut Reader<'a>) -> Result<Self, Error> {
        let msg_type = HandshakeType::from_u8(reader.u8("handshake header")?);
        let length = reader.u24("handshake header")?;
        let message_seq = reader.u16("handshake header")?;
        let offset = reader.u24("handshake header")?;
        let fragment_length = reader.u24("handshake header")?;
        let end = offset
            .checked_add(fragment_length)
            .ok_or(Error::Invalid { what: "fragment" })?;
        if end > length {
            return Err(Error::Invalid {
                what: "fragment beyond message length",
            });
        }
        let body = reader.take(fragment_length as usize, "handshake fragment")?;
        Ok(Self {
            msg_type,
            length,
            message_seq,
            offset,
            body,
        })
    }

    /// Whether this fragment is a whole message.
    pub fn is_complete(&self) -> bool {
        self.offset == 0 && self.body.len() == self.length as usize
    }
}

/// Appends a handshake header for a fragment.
pub fn put_fragment_header(
    out: &mut Vec<u8>,
    msg_type: HandshakeType,
    length: usize,
    message_seq: u16,
    offset: usize,
    fragment_length: usize,
) {
    out.push(msg_type.to_u8());
    put_u24(out, u32::try_from(length).unwrap_or(u32::MAX));
    out.extend_from_slice(&message_seq.to_be_bytes());
    put_u24(out, u32::try_from(offset).unwrap_or(u32::MAX));
    put_u24(out, u32::try_from(fragment_length).unwrap_or(u32::MAX));
}

/// A whole message with its header, as it enters the handshake hash (RFC 6347 §4.2.6).
pub fn whole_message(msg_type: HandshakeType, message_seq: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_HEADER_LEN + body.len());
    put_fragment_header(&mut out, msg_type, body.len(), message_seq, 0, body.len());
    out.extend_from_slice(body);
    out
}

/// The hello extensions this engine acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloExtensions {
    /// `extended_master_secret` present.
    pub extended_master_secret: bool,
    /// `renegotiation_info` and its `renegotiated_connection`.
    pub renegotiation_info: Option<Vec<u8>>,
    /// `connection_id` and the CID the sender wants to receive.
    pub connection_id: Option<Vec<u8>>,
}

impl HelloExtensions {
    fn parse(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut extensions = Self::default();
        if reader.is_empty() {
            return Ok(extensions);
        }
        let mut list = Reader::new(reader.vec16("extensions")?);
        let mut seen: Vec<u16> = Vec::new();
        while !list.is_empty() {
            let extension_type = list.u16("extension type")?;
            let mut data = Reader::new(list.vec16("extension data")?);
            if seen.contains(&extension_type) {
                return Err(Error::Invalid {
                    what: "duplicate extension",
                });
            }
            seen.push(extension_type);
            match extension_type {
                EXT_EXTENDED_MASTER_SECRET => {
                    if !data.is_empty() {
                        return Err(Error::Invalid {
                            what: "extended_master_secret",
                        });
                    }
                    extensions.extended_master_secret = true;
                }
                EXT_RENEGOTIATION_INFO => {
                    extensions.renegotiation_info = Some(data.vec8("renegotiation_info")?.to_vec());
                }
                EXT_CONNECTION_ID => {
                    extensions.connection_id = Some(data.vec8("connection_id")?.to_vec());
                }
                _ => continue,
            }
            if !data.is_empty() {
                return Err(Error::Invalid {
                    what: "extension trailing bytes",
                });
            }
        }
        Ok(extensions)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        if *self == Self::default() {
            return;
        }
        with_len16(out, |out| {
            if self.extended_master_secret {
                out.extend_from_slice(&EXT_EXTENDED_MASTER_SECRET.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            if let Some(info) = &self.renegotiation_info {
                out.extend_from_slice(&EXT_RENEGOTIATION_INFO.to_be_bytes());
                with_len16(out, |out| put_vec8(out, info));
            }
            if let Some(cid) = &self.connection_id {
                out.extend_from_slice(&EXT_CONNECTION_ID.to_be_bytes());
                with_len16(out, |out| put_vec8(out, cid));
            }
        });
    }
}

/// ClientHello (RFC 6347 §4.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// client_version.
    pub version: u16,
    /// Client random.
    pub random: [u8; 32],
    /// Session ID to resume (empty for a full handshake).
    pub session_id: Vec<u8>,
    /// Cookie from a HelloVerifyRequest.
    pub cookie: Vec<u8>,
    /// Offered cipher suites.
    pub cipher_suites: Vec<u16>,
    /// Offered compression methods.
    pub compression_methods: Vec<u8>,
    /// Extensions.
    pub extensions: HelloExtensions,
}

impl ClientHello {
    /// Parses a ClientHello body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(body);
        let version = reader.u16("client_version")?;
        let random = reader.array("client random")?;
        let session_id = reader.vec8("session_id")?.to_vec();
        if session_id.len() > 32 {
            return Err(Error::Invalid { what: "session_id" });
        }
        let cookie = reader.vec8("cookie")?.to_vec();
        let suites = reader.vec16("cipher_suites")?;
        if suites.is_empty() || suites.len() % 2 != 0 {
            return Err(Error::Invalid {
                what: "cipher_suites",
            });
        }
        let cipher_suites = suites
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect();
        let compression_methods = reader.vec8("compression_methods")?.to_vec();
        let extensions = HelloExtensions::parse(&mut reader)?;
        if !reader.is_empty() {
            return Err(Error::Invalid {
                what: "ClientHello trailing bytes",
            });
        }
        Ok(Self {
            version,
            random,
            session_id,
            cookie,
            cipher_suites,
            compression_methods,
            extensions,
        })
    }

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.random);
        put_vec8(out, &self.session_id);
        put_vec8(out, &self.cookie);
        with_len16(out, |out| {
            for suite in &self.cipher_suites {
                out.extend_from_slice(&suite.to_be_bytes());
            }
        });
        put_vec8(out, &self.compression_methods);
        self.extensions.encode(out);
    }
}

/// HelloVerifyRequest (RFC 6347 §4.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloVerifyRequest {
    /// server_version.
    pub version: u16,
    /// The cookie.
    pub cookie: Vec<u8>,
}

impl HelloVerifyRequest {
    /// Parses the body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(body);
        let version = reader.u16("server_version")?;
        let cookie = reader.vec8("cookie")?.to_vec();
        Ok(Self { version, cookie })
    }

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_be_bytes());
        put_vec8(out, &self.cookie);
    }
}

/// ServerHello (RFC 5246 §7.4.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// server_version.
    pub version: u16,
    /// Server random.
    pub random: [u8; 32],
    /// Session ID.
    pub session_id: Vec<u8>,
    /// Chosen suite code.
    pub cipher_suite: u16,
    /// Chosen compression method.
    pub compression_method: u8,
    /// Extensions.
    pub extensions: HelloExtensions,
}

impl ServerHello {
    /// Parses the body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(body);
        let version = reader.u16("server_version")?;
        let random = reader.array("server random")?;
        let session_id = reader.vec8("session_id")?.to_vec();
        if session_id.len() > 32 {
            return Err(Error::Invalid { what: "session_id" });
        }
        let cipher_suite = reader.u16("cipher_suite")?;
        let compression_method = reader.u8("compression_method")?;
        let extensions = HelloExtensions::parse(&mut reader)?;
        if !reader.is_empty() {
            return Err(Error::Invalid {
                what: "ServerHello trailing bytes",
            });
        }
        Ok(Self {
            version,
            random,
            session_id,
            cipher_suite,
            compression_method,
            extensions,
        })
    }

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.random);
        put_vec8(out, &self.session_id);
        out.extend_from_slice(&self.cipher_suite.to_be_bytes());
        out.push(self.compression_method);
        self.extensions.encode(out);
    }
}

/// Reads an opaque `<0..2^16-1>` body that must fill the message: the PSK ServerKeyExchange
/// (`psk_identity_hint`) and ClientKeyExchange (`psk_identity`) of RFC 4279 §2.
pub fn parse_psk_identity(body: &[u8], what: &'static str) -> Result<Vec<u8>, Error> {
    let mut reader = Reader::new(body);
    let identity = reader.vec16(what)?.to_vec();
    if !reader.is_empty() {
        return Err(Error::Invalid { what });
    }
    Ok(identity)
}

/// Encodes a PSK identity or identity hint body (RFC 4279 §2).
pub fn encode_psk_identity(identity: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + identity.len());
    put_vec16(&mut out, identity);
    out
}

/// Reads a Finished body (RFC 5246 §7.4.9).
pub fn parse_finished(body: &[u8]) -> Result<[u8; 12], Error> {
    let mut reader = Reader::new(body);
    let verify_data = reader.array("verify_data")?;
    if !reader.is_empty() {
        return Err(Error::Invalid {
            what: "Finished length",
        });
    }
    Ok(verify_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client_hello() -> ClientHello {
        ClientHello {
            version: 0xFEFD,
            random: [7; 32],
            session_id: vec![1; 32],
            cookie: vec![2; 16],
            cipher_suites: vec![0xC0A8, 0x00FF],
            compression_methods: vec![0],
            extensions: HelloExtensions {
                extended_master_secret: true,
                renegotiation_info: Some(Vec::new()),
                connection_id: Some(vec![9, 9]),
            },
        }
    }

    #[test]
    fn client_hello_round_trip() {
        let hello = client_hello();
        let mut body = Vec::new();
        hello.encode(&mut body);
        assert_eq!(ClientHello::parse(&body).unwrap(), hello);
    }

    #[test]
    fn unknown_extensions_are_ignored() {
        let mut body = Vec::new();
        ClientHello {
            extensions: HelloExtensions::default(),
            ..client_hello()
        }
        .encode(&mut body);
        // use_srtp (14) with a profile list, as WebRTC stacks send it.
        body.extend_from_slice(&[0, 9, 0, 14, 0, 5, 0, 2, 0, 1, 0]);
        let hello = ClientHello::parse(&body).unwrap();
        assert_eq!(hello.extensions, HelloExtensions::default());
    }

    #[test]
    fn duplicate_extension_is_rejected() {
        let mut body = Vec::new();
        ClientHello {
            extensions: HelloExtensions::default(),
            ..client_hello()
        }
        .encode(&mut body);
        body.extend_from_slice(&[0, 8, 0, 23, 0, 0, 0, 23, 0, 0]);
        assert!(ClientHello::parse(&body).is_err());
    }

    #[test]
    fn server_hello_round_trip() {
        let hello = ServerHello {
            version: 0xFEFD,
            random: [3; 32],
            session_id: vec![4; 32],
            cipher_suite: 0xC0A8,
            compression_method: 0,
            extensions: HelloExtensions {
                extended_master_secret: true,
                renegotiation_info: Some(Vec::new()),
                connection_id: None,
            },
        };
        let mut body = Vec::new();
        hello.encode(&mut body);
        assert_eq!(ServerHello::parse(&body).unwrap(), hello);
    }

    #[test]
    fn fragment_beyond_length_is_rejected() {
        let mut bytes = Vec::new();
        put_fragment_header(&mut bytes, HandshakeType::Finished, 12, 3, 8, 8);
        bytes.extend_from_slice(&[0; 8]);
        assert!(Fragment::parse(&mut Reader::new(&bytes)).is_err());
    }

    #[test]
    fn psk_identity_round_trip() {
        let body = encode_psk_identity(b"device-1");
        assert_eq!(
            parse_psk_identity(&body, "psk_identity").unwrap(),
            b"device-1"
        );
        assert!(parse_psk_identity(&body[..4], "psk_identity").is_err());
    }

    proptest! {
        #[test]
        fn handshake_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ClientHello::parse(&bytes);
            let _ = ServerHello::parse(&bytes);
            let _ = HelloVerifyRequest::parse(&bytes);
            let _ = parse_finished(&bytes);
            let _ = parse_psk_identity(&bytes, "x");
            let mut reader = Reader::new(&bytes);
            while let Ok(fragment) = Fragment::parse(&mut reader) {
                prop_assert!(fragment.offset as usize + fragment.body.len() <= fragment.length as usize);
            }
        }
    }
}
