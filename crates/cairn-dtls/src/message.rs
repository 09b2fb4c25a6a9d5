//! Handshake messages (RFC 5246 §7.4, RFC 6347 §4.2.2 and §4.3.2, RFC 4279 §2).
//!
//! Each message has a parse function over a [`Reader`] and an `encode` appending its body.
//! Hello extensions (RFC 5246 §7.4.1.4) understood here: `extended_master_secret` (RFC 7627
//! §5.1), `renegotiation_info` (RFC 5746 §3.2), `connection_id` (RFC 9146 §3),
//! `supported_groups` and `ec_point_formats` (RFC 8422 §5.1), `signature_algorithms` (RFC 5246
//! §7.4.1.4.1) and `client_certificate_type`/`server_certificate_type` (RFC 7250 §3); any other
//! extension is skipped, as RFC 5246 §7.4.1.4 requires of a server.
//!
//! The certificate-mode messages: Certificate (RFC 5246 §7.4.2, RFC 7250 §3 for a raw public
//! key), ECDHE ServerKeyExchange and ClientKeyExchange (RFC 8422 §5.4 and §5.7),
//! CertificateRequest (RFC 5246 §7.4.4) and CertificateVerify (RFC 5246 §7.4.8).

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
/// `supported_groups` extension type (RFC 8422 §5.1.1).
pub const EXT_SUPPORTED_GROUPS: u16 = 10;
/// `ec_point_formats` extension type (RFC 8422 §5.1.2).
pub const EXT_EC_POINT_FORMATS: u16 = 11;
/// `signature_algorithms` extension type (RFC 5246 §7.4.1.4.1).
pub const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
/// `client_certificate_type` extension type (RFC 7250 §3).
pub const EXT_CLIENT_CERTIFICATE_TYPE: u16 = 19;
/// `server_certificate_type` extension type (RFC 7250 §3).
pub const EXT_SERVER_CERTIFICATE_TYPE: u16 = 20;
/// The secp256r1 named group (RFC 8422 §5.1.1).
pub const GROUP_SECP256R1: u16 = 23;
/// The uncompressed point format (RFC 8422 §5.1.2).
pub const POINT_FORMAT_UNCOMPRESSED: u8 = 0;
/// ecdsa_secp256r1_sha256: hash sha256 (4), signature ecdsa (3) (RFC 5246 §7.4.1.4.1).
pub const ECDSA_SECP256R1_SHA256: u16 = 0x0403;
/// Certificate type X.509 (RFC 7250 §3).
pub const CERTIFICATE_TYPE_X509: u8 = 0;
/// Certificate type RawPublicKey (RFC 7250 §3).
pub const CERTIFICATE_TYPE_RAW_PUBLIC_KEY: u8 = 2;
/// ClientCertificateType ecdsa_sign (RFC 8422 §5.5).
pub const CLIENT_CERTIFICATE_TYPE_ECDSA_SIGN: u8 = 64;
/// ECCurveType named_curve (RFC 8422 §5.4).
const CURVE_TYPE_NAMED_CURVE: u8 = 3;

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
    /// certificate (11).
    Certificate,
    /// server_key_exchange (12).
    ServerKeyExchange,
    /// certificate_request (13).
    CertificateRequest,
    /// server_hello_done (14).
    ServerHelloDone,
    /// certificate_verify (15).
    CertificateVerify,
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
            11 => Self::Certificate,
            12 => Self::ServerKeyExchange,
            13 => Self::CertificateRequest,
            14 => Self::ServerHelloDone,
            15 => Self::CertificateVerify,
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
            Self::Certificate => 11,
            Self::ServerKeyExchange => 12,
            Self::CertificateRequest => 13,
            Self::ServerHelloDone => 14,
            Self::CertificateVerify => 15,
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
    /// `supported_groups` (only in a ClientHello).
    pub supported_groups: Option<Vec<u16>>,
    /// `ec_point_formats`.
    pub ec_point_formats: Option<Vec<u8>>,
    /// `signature_algorithms` (only in a ClientHello).
    pub signature_algorithms: Option<Vec<u16>>,
    /// `client_certificate_type`: the types offered (ClientHello) or the one chosen
    /// (ServerHello, one entry).
    pub client_certificate_type: Option<Vec<u8>>,
    /// `server_certificate_type`, as `client_certificate_type`.
    pub server_certificate_type: Option<Vec<u8>>,
}

fn u16_list(bytes: &[u8], what: &'static str) -> Result<Vec<u16>, Error> {
    if bytes.is_empty() || bytes.len() % 2 != 0 {
        return Err(Error::Invalid { what });
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect())
}

fn put_u16_list(out: &mut Vec<u8>, values: &[u16]) {
    with_len16(out, |out| {
        for value in values {
            out.extend_from_slice(&value.to_be_bytes());
        }
    });
}

/// Which hello a set of extensions belongs to (the certificate type extensions differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientHello,
    ServerHello,
}

impl HelloExtensions {
    fn certificate_types(
        data: &mut Reader<'_>,
        direction: Direction,
        what: &'static str,
    ) -> Result<Vec<u8>, Error> {
        match direction {
            Direction::ClientHello => {
                let types = data.vec8(what)?;
                if types.is_empty() {
                    return Err(Error::Invalid { what });
                }
                Ok(types.to_vec())
            }
            Direction::ServerHello => Ok(vec![data.u8(what)?]),
        }
    }

    fn encode_certificate_types(out: &mut Vec<u8>, types: &[u8], direction: Direction) {
        match direction {
            Direction::ClientHello => put_vec8(out, types),
            Direction::ServerHello => out.extend_from_slice(&types[..types.len().min(1)]),
        }
    }

    fn parse(reader: &mut Reader<'_>, direction: Direction) -> Result<Self, Error> {
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
                EXT_SUPPORTED_GROUPS if direction == Direction::ClientHello => {
                    extensions.supported_groups = Some(u16_list(
                        data.vec16("supported_groups")?,
                        "supported_groups",
                    )?);
                }
                EXT_EC_POINT_FORMATS => {
                    extensions.ec_point_formats = Some(data.vec8("ec_point_formats")?.to_vec());
                }
                EXT_SIGNATURE_ALGORITHMS if direction == Direction::ClientHello => {
                    extensions.signature_algorithms = Some(u16_list(
                        data.vec16("signature_algorithms")?,
                        "signature_algorithms",
                    )?);
                }
                EXT_CLIENT_CERTIFICATE_TYPE => {
                    extensions.client_certificate_type = Some(Self::certificate_types(
                        &mut data,
                        direction,
                        "client_certificate_type",
                    )?);
                }
                EXT_SERVER_CERTIFICATE_TYPE => {
                    extensions.server_certificate_type = Some(Self::certificate_types(
                        &mut data,
                        direction,
                        "server_certificate_type",
                    )?);
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

    fn encode(&self, out: &mut Vec<u8>, direction: Direction) {
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
            if let Some(groups) = &self.supported_groups {
                out.extend_from_slice(&EXT_SUPPORTED_GROUPS.to_be_bytes());
                with_len16(out, |out| put_u16_list(out, groups));
            }
            if let Some(formats) = &self.ec_point_formats {
                out.extend_from_slice(&EXT_EC_POINT_FORMATS.to_be_bytes());
                with_len16(out, |out| put_vec8(out, formats));
            }
            if let Some(algorithms) = &self.signature_algorithms {
                out.extend_from_slice(&EXT_SIGNATURE_ALGORITHMS.to_be_bytes());
                with_len16(out, |out| put_u16_list(out, algorithms));
            }
            if let Some(types) = &self.client_certificate_type {
                out.extend_from_slice(&EXT_CLIENT_CERTIFICATE_TYPE.to_be_bytes());
                with_len16(out, |out| {
                    Self::encode_certificate_types(out, types, direction);
                });
            }
            if let Some(types) = &self.server_certificate_type {
                out.extend_from_slice(&EXT_SERVER_CERTIFICATE_TYPE.to_be_bytes());
                with_len16(out, |out| {
                    Self::encode_certificate_types(out, types, direction);
                });
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
        let extensions = HelloExtensions::parse(&mut reader, Direction::ClientHello)?;
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
        self.extensions.encode(out, Direction::ClientHello);
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
        let extensions = HelloExtensions::parse(&mut reader, Direction::ServerHello)?;
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
        self.extensions.encode(out, Direction::ServerHello);
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

/// Most bytes of one certificate in a Certificate message.
const MAX_CERTIFICATE_LEN: usize = 4096;

/// Reads a Certificate body (RFC 5246 §7.4.2): DER certificates, sender's first; at most
/// `max_certificates` are accepted. With `raw_public_key`, the body is one
/// `SubjectPublicKeyInfo` (RFC 7250 §3), returned as the only entry.
pub fn parse_certificate(
    body: &[u8],
    raw_public_key: bool,
    max_certificates: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut reader = Reader::new(body);
    let len = reader.u24("certificate_list")? as usize;
    let list = reader.take(len, "certificate_list")?;
    if !reader.is_empty() {
        return Err(Error::Invalid {
            what: "Certificate trailing bytes",
        });
    }
    if raw_public_key {
        return Ok(if list.is_empty() {
            Vec::new()
        } else {
            vec![list.to_vec()]
        });
    }
    let mut list = Reader::new(list);
    let mut certificates = Vec::new();
    while !list.is_empty() {
        let len = list.u24("ASN.1Cert")? as usize;
        if len == 0 || len > MAX_CERTIFICATE_LEN {
            return Err(Error::Invalid { what: "ASN.1Cert" });
        }
        if certificates.len() == max_certificates {
            return Err(Error::Limit {
                what: "certificates in a chain",
            });
        }
        certificates.push(list.take(len, "ASN.1Cert")?.to_vec());
    }
    Ok(certificates)
}

/// Encodes a Certificate body; with `raw_public_key`, `certificates` holds one
/// `SubjectPublicKeyInfo` (or none, for an empty answer to a CertificateRequest).
pub fn encode_certificate(certificates: &[Vec<u8>], raw_public_key: bool) -> Vec<u8> {
    let mut list = Vec::new();
    for certificate in certificates {
        if !raw_public_key {
            put_u24(
                &mut list,
                u32::try_from(certificate.len()).unwrap_or(u32::MAX),
            );
        }
        list.extend_from_slice(certificate);
    }
    let mut out = Vec::with_capacity(3 + list.len());
    put_u24(&mut out, u32::try_from(list.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&list);
    out
}

/// The ECDHE parameters of a ServerKeyExchange on secp256r1 (RFC 8422 §5.4): the bytes that
/// are signed after the two randoms.
pub fn encode_ecdh_params(point: &[u8]) -> Vec<u8> {
    let mut out = vec![CURVE_TYPE_NAMED_CURVE];
    out.extend_from_slice(&GROUP_SECP256R1.to_be_bytes());
    put_vec8(&mut out, point);
    out
}

/// A signature with its algorithm (RFC 5246 §4.7 `digitally-signed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigitallySigned {
    /// SignatureAndHashAlgorithm.
    pub algorithm: u16,
    /// The DER signature.
    pub signature: Vec<u8>,
}

impl DigitallySigned {
    fn read(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let algorithm = reader.u16("SignatureAndHashAlgorithm")?;
        let signature = reader.vec16("signature")?.to_vec();
        Ok(Self {
            algorithm,
            signature,
        })
    }

    /// Appends the structure.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.algorithm.to_be_bytes());
        put_vec16(out, &self.signature);
    }

    /// Parses a CertificateVerify body (RFC 5246 §7.4.8).
    pub fn parse_certificate_verify(body: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(body);
        let signed = Self::read(&mut reader)?;
        if !reader.is_empty() {
            return Err(Error::Invalid {
                what: "CertificateVerify trailing bytes",
            });
        }
        Ok(signed)
    }
}

/// An ECDHE ServerKeyExchange (RFC 8422 §5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcdheServerKeyExchange {
    /// The signed `ServerECDHParams` bytes.
    pub params: Vec<u8>,
    /// The server's ephemeral point.
    pub point: Vec<u8>,
    /// The signature over both randoms and `params`.
    pub signed: DigitallySigned,
}

impl EcdheServerKeyExchange {
    /// Parses the body; only named_curve secp256r1 is accepted.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(body);
        let curve_type = reader.u8("ECCurveType")?;
        let group = reader.u16("NamedCurve")?;
        if curve_type != CURVE_TYPE_NAMED_CURVE || group != GROUP_SECP256R1 {
            return Err(Error::Invalid {
                what: "ServerKeyExchange curve",
            });
        }
        let point = reader.vec8("ECPoint")?.to_vec();
        let params = encode_ecdh_params(&point);
        let signed = DigitallySigned::read(&mut reader)?;
        if !reader.is_empty() {
            return Err(Error::Invalid {
                what: "ServerKeyExchange trailing bytes",
            });
        }
        Ok(Self {
            params,
            point,
            signed,
        })
    }

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.params);
        self.signed.encode(out);
    }
}

/// Reads an ECDHE ClientKeyExchange body (RFC 8422 §5.7): the client's point.
pub fn parse_ecdhe_client_key_exchange(body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut reader = Reader::new(body);
    let point = reader.vec8("ECPoint")?.to_vec();
    if !reader.is_empty() {
        return Err(Error::Invalid {
            what: "ClientKeyExchange trailing bytes",
        });
    }
    Ok(point)
}

/// Encodes an ECDHE ClientKeyExchange body.
pub fn encode_ecdhe_client_key_exchange(point: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + point.len());
    put_vec8(&mut out, point);
    out
}

/// CertificateRequest (RFC 5246 §7.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    /// ClientCertificateType values.
    pub certificate_types: Vec<u8>,
    /// supported_signature_algorithms.
    pub signature_algorithms: Vec<u16>,
    /// DER distinguished names of acceptable authorities (sent empty here).
    pub certificate_authorities: Vec<u8>,
}

impl CertificateRequest {
    /// The request this engine sends: ecdsa_sign with ecdsa_secp256r1_sha256, any authority.
    pub fn ecdsa() -> Self {
        Self {
            certificate_types: vec![CLIENT_CERTIFICATE_TYPE_ECDSA_SIGN],
            signature_algorithms: vec![ECDSA_SECP256R1_SHA256],
            certificate_authorities: Vec::new(),
        }
    }

    /// Parses the body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(body);
        let certificate_types = reader.vec8("certificate_types")?.to_vec();
        let signature_algorithms = u16_list(
            reader.vec16("supported_signature_algorithms")?,
            "supported_signature_algorithms",
        )?;
        let certificate_authorities = reader.vec16("certificate_authorities")?.to_vec();
        if !reader.is_empty() {
            return Err(Error::Invalid {
                what: "CertificateRequest trailing bytes",
            });
        }
        Ok(Self {
            certificate_types,
            signature_algorithms,
            certificate_authorities,
        })
    }

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_vec8(out, &self.certificate_types);
        put_u16_list(out, &self.signature_algorithms);
        put_vec16(out, &self.certificate_authorities);
    }
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
                supported_groups: Some(vec![GROUP_SECP256R1]),
                ec_point_formats: Some(vec![0]),
                signature_algorithms: Some(vec![ECDSA_SECP256R1_SHA256]),
                client_certificate_type: Some(vec![2, 0]),
                server_certificate_type: Some(vec![2]),
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
                server_certificate_type: Some(vec![2]),
                ..HelloExtensions::default()
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
            let _ = parse_certificate(&bytes, false, 8);
            let _ = EcdheServerKeyExchange::parse(&bytes);
            let _ = CertificateRequest::parse(&bytes);
            let _ = DigitallySigned::parse_certificate_verify(&bytes);
            let _ = parse_ecdhe_client_key_exchange(&bytes);
            let mut reader = Reader::new(&bytes);
            while let Ok(fragment) = Fragment::parse(&mut reader) {
                prop_assert!(fragment.offset as usize + fragment.body.len() <= fragment.length as usize);
            }
        }
    }
}
