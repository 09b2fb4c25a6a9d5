//! The stored records and their on-disk encoding.
//!
//! The vocabulary is LwM2M's (OMA-TS-LightweightM2M_Core 1.2): a [`Registration`] is what the
//! Register operation (§6.2.1) creates and Update (§6.2.2) refreshes, [`SecurityInfo`] is what a
//! server knows to authenticate an endpoint (the Security object's modes, §E.1), and an
//! [`Observation`] is an Observe (§6.3.5) the server holds open on a device.
//!
//! Every record is stored as one format-version byte followed by a CBOR array (RFC 8949) whose
//! elements are the fields in a fixed order. New optional fields are appended at the end (an old
//! record decodes with them absent); an incompatible change takes a new version byte, and the
//! decoder keeps reading the old ones. Decoding never panics: bytes that are not a record of the
//! expected kind give a [`DecodeError`].

use std::net::SocketAddr;

use minicbor::{Decode, Encode};
use sha2::{Digest, Sha256};

use crate::error::{DecodeError, StoreError};
use crate::secret::{MasterKey, SecretBytes};

/// The record format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u8 = 1;

/// How a device authenticated the DTLS session it registered over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No DTLS (NoSec mode).
    Unsecured,
    /// A pre-shared key identity (RFC 4279).
    Psk(Vec<u8>),
    /// A raw public key (RFC 7250), as its SubjectPublicKeyInfo DER.
    Rpk(Vec<u8>),
    /// An X.509 certificate, by its subject common name.
    X509(String),
    /// An X.509 certificate, by its subject common name and the SHA-256 fingerprint of its
    /// DER encoding (which tells it from another certificate with the same name).
    X509Certificate {
        common_name: String,
        fingerprint: [u8; 32],
    },
}

/// A registered LwM2M client (Register, Core §6.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The registration id: the location `/rd/{id}` the server handed back. Unique, random.
    pub id: String,
    /// The endpoint client name (`ep`).
    pub endpoint: String,
    /// Lifetime in seconds (`lt`).
    pub lifetime_s: u32,
    /// LwM2M version (`lwm2m`), for example `1.1`.
    pub lwm2m_version: String,
    /// Binding mode (`b`), for example `U` or `UQ`.
    pub binding: String,
    /// Whether the client is in queue mode (`Q`).
    pub queue_mode: bool,
    /// MSISDN for SMS binding (`sms`).
    pub sms_number: Option<String>,
    /// The registration's payload as received: objects and instances in CoRE link format.
    pub object_links: String,
    /// The paths of the links in `object_links`, for example `/3/0`.
    pub object_paths: Vec<String>,
    /// Where the registration came from (stored in its textual form: an IPv6 flow label is not
    /// kept).
    pub peer_address: SocketAddr,
    /// The DTLS identity the client registered with.
    pub identity: PeerIdentity,
    /// When the client registered (Unix milliseconds).
    pub registered_at_ms: u64,
    /// When the client last registered or updated (Unix milliseconds).
    pub last_update_ms: u64,
}

impl Registration {
    /// When the registration expires without an update (Unix milliseconds).
    pub fn expires_at_ms(&self) -> u64 {
        self.last_update_ms
            .saturating_add(u64::from(self.lifetime_s).saturating_mul(1000))
    }
}

/// What a server expects of an X.509 client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum X509Expectation {
    /// The subject common name must be this (usually the endpoint name).
    CommonName(String),
    /// The certificate's SHA-256 fingerprint must be this.
    Fingerprint([u8; 32]),
}

/// How an endpoint authenticates to the server (the Security object's Security Mode, Core §E.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityMode {
    /// Pre-shared key (RFC 4279). The key is encrypted at rest.
    Psk {
        /// The PSK identity.
        identity: Vec<u8>,
        /// The key.
        key: SecretBytes,
    },
    /// Raw public key (RFC 7250).
    Rpk {
        /// The client's SubjectPublicKeyInfo, DER.
        public_key_der: Vec<u8>,
    },
    /// X.509 certificate.
    X509(X509Expectation),
    /// The endpoint may connect without DTLS.
    NoSec,
}

/// The kind of a [`SecurityMode`], without its material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityModeKind {
    /// Pre-shared key.
    Psk,
    /// Raw public key.
    Rpk,
    /// X.509 certificate.
    X509,
    /// No security.
    NoSec,
}

/// What the server knows to authenticate one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityInfo {
    /// The endpoint client name.
    pub endpoint: String,
    /// How it authenticates.
    pub mode: SecurityMode,
    /// When this was created (Unix milliseconds).
    pub created_at_ms: u64,
}

/// A [`SecurityInfo`] without secrets, for the web side: the identity and a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityInfoSummary {
    /// The endpoint client name.
    pub endpoint: String,
    /// The kind of security.
    pub mode: SecurityModeKind,
    /// The PSK identity (lossy UTF-8) or the expected X.509 common name.
    pub identity: Option<String>,
    /// `sha256:` and the first 8 bytes, in hex, of the SHA-256 of the PSK or of the public key
    /// DER, or of the expected certificate fingerprint itself.
    pub key_fingerprint: Option<String>,
    /// When the security info was created (Unix milliseconds).
    pub created_at_ms: u64,
}

/// An observation the server holds on a device (Observe, Core §6.3.5; RFC 7641).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The observation id.
    pub id: String,
    /// The registration it belongs to.
    pub registration_id: String,
    /// The endpoint client name.
    pub endpoint: String,
    /// The CoAP token notifications carry.
    pub token: Vec<u8>,
    /// The observed paths (one, or several for a composite observe).
    pub paths: Vec<String>,
    /// The content format requested, if any.
    pub content_format: Option<u16>,
    /// The device's address when the observation was established.
    pub peer_address: SocketAddr,
    /// When the observation was established (Unix milliseconds).
    pub created_at_ms: u64,
}

/// A fresh random id (12 characters of the URL-safe base64 alphabet, 71 bits), for
/// registrations, observations, firmware images and campaigns. It starts with a letter, so
/// that a command line never takes it for an option (`-x`).
pub fn random_id() -> Result<String, StoreError> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| crate::error::MasterKeyError::Random(e.to_string()))?;
    Ok(bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            // The first 32 characters of the alphabet are letters.
            let mask = if i == 0 { 31 } else { 63 };
            char::from(ALPHABET[usize::from(b & mask)])
        })
        .collect())
}

/// `sha256:` and the first 8 bytes of SHA-256(`material`) in hex.
pub fn fingerprint(material: &[u8]) -> String {
    digest_prefix(&Sha256::digest(material))
}

/// `sha256:` and the first 8 bytes of a SHA-256 digest in hex.
fn digest_prefix(digest: &[u8]) -> String {
    let mut text = String::from("sha256:");
    for byte in digest.iter().take(8) {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

// ---- on-disk encoding -------------------------------------------------------------------------

const REGISTRATION: &str = "registration";
const SECURITY: &str = "security info";
const OBSERVATION: &str = "observation";

#[derive(Encode, Decode)]
enum WireIdentity {
    #[n(0)]
    Unsecured,
    #[n(1)]
    Psk(#[cbor(n(0), with = "minicbor::bytes")] Vec<u8>),
    #[n(2)]
    Rpk(#[cbor(n(0), with = "minicbor::bytes")] Vec<u8>),
    #[n(3)]
    X509(#[n(0)] String),
    #[n(4)]
    X509Certificate(
        #[n(0)] String,
        #[cbor(n(1), with = "minicbor::bytes")] [u8; 32],
    ),
}

#[derive(Encode, Decode)]
struct WireRegistration {
    #[n(0)]
    id: String,
    #[n(1)]
    endpoint: String,
    #[n(2)]
    lifetime_s: u32,
    #[n(3)]
    lwm2m_version: String,
    #[n(4)]
    binding: String,
    #[n(5)]
    queue_mode: bool,
    #[n(6)]
    sms_number: Option<String>,
    #[n(7)]
    object_links: String,
    #[n(8)]
    object_paths: Vec<String>,
    #[n(9)]
    peer_address: String,
    #[n(10)]
    identity: WireIdentity,
    #[n(11)]
    registered_at_ms: u64,
    #[n(12)]
    last_update_ms: u64,
}

#[derive(Encode, Decode)]
enum WireSecurityMode {
    #[n(0)]
    Psk {
        #[cbor(n(0), with = "minicbor::bytes")]
        identity: Vec<u8>,
        #[cbor(n(1), with = "minicbor::bytes")]
        sealed_key: Vec<u8>,
        #[n(2)]
        fingerprint: String,
    },
    #[n(1)]
    Rpk {
        #[cbor(n(0), with = "minicbor::bytes")]
        public_key_der: Vec<u8>,
    },
    #[n(2)]
    X509CommonName {
        #[n(0)]
        common_name: String,
    },
    #[n(3)]
    X509Fingerprint {
        #[cbor(n(0), with = "minicbor::bytes")]
        sha256: Vec<u8>,
    },
    #[n(4)]
    NoSec,
}

#[derive(Encode, Decode)]
struct WireSecurityInfo {
    #[n(0)]
    endpoint: String,
    #[n(1)]
    mode: WireSecurityMode,
    #[n(2)]
    created_at_ms: u64,
}

#[derive(Encode, Decode)]
struct WireObservation {
    #[n(0)]
    id: String,
    #[n(1)]
    registration_id: String,
    #[n(2)]
    endpoint: String,
    #[cbor(n(3), with = "minicbor::bytes")]
    token: Vec<u8>,
    #[n(4)]
    paths: Vec<String>,
    #[n(5)]
    content_format: Option<u16>,
    #[n(6)]
    peer_address: String,
    #[n(7)]
    created_at_ms: u64,
}

fn encode_versioned<T: Encode<()>>(wire: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    // Writing CBOR into a Vec cannot fail.
    let _ = minicbor::encode(wire, &mut bytes);
    bytes
}

fn decode_versioned<'b, T: Decode<'b, ()>>(
    kind: &'static str,
    bytes: &'b [u8],
) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty { kind })?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            kind,
            version,
            supported: FORMAT_VERSION,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed { kind, reason };
    let mut decoder = minicbor::Decoder::new(body);
    let wire = decoder.decode().map_err(|e| malformed(e.to_string()))?;
    if decoder.position() != body.len() {
        return Err(malformed(format!(
            "{} trailing bytes",
            body.len() - decoder.position()
        )));
    }
    Ok(wire)
}

fn parse_address(kind: &'static str, text: &str) -> Result<SocketAddr, DecodeError> {
    text.parse().map_err(|_| DecodeError::InvalidField {
        kind,
        field: "peer address",
    })
}

/// Encodes a registration.
pub fn encode_registration(registration: &Registration) -> Vec<u8> {
    let identity = match &registration.identity {
        PeerIdentity::Unsecured => WireIdentity::Unsecured,
        PeerIdentity::Psk(identity) => WireIdentity::Psk(identity.clone()),
        PeerIdentity::Rpk(der) => WireIdentity::Rpk(der.clone()),
        PeerIdentity::X509(common_name) => WireIdentity::X509(common_name.clone()),
        PeerIdentity::X509Certificate {
            common_name,
            fingerprint,
        } => WireIdentity::X509Certificate(common_name.clone(), *fingerprint),
    };
    encode_versioned(&WireRegistration {
        id: registration.id.clone(),
        endpoint: registration.endpoint.clone(),
        lifetime_s: registration.lifetime_s,
        lwm2m_version: registration.lwm2m_version.clone(),
        binding: registration.binding.clone(),
        queue_mode: registration.queue_mode,
        sms_number: registration.sms_number.clone(),
        object_links: registration.object_links.clone(),
        object_paths: registration.object_paths.clone(),
        peer_address: registration.peer_address.to_string(),
        identity,
        registered_at_ms: registration.registered_at_ms,
        last_update_ms: registration.last_update_ms,
    })
}

/// Decodes a registration.
pub fn decode_registration(bytes: &[u8]) -> Result<Registration, DecodeError> {
    let wire: WireRegistration = decode_versioned(REGISTRATION, bytes)?;
    let identity = match wire.identity {
        WireIdentity::Unsecured => PeerIdentity::Unsecured,
        WireIdentity::Psk(identity) => PeerIdentity::Psk(identity),
        WireIdentity::Rpk(der) => PeerIdentity::Rpk(der),
        WireIdentity::X509(common_name) => PeerIdentity::X509(common_name),
        WireIdentity::X509Certificate(common_name, fingerprint) => PeerIdentity::X509Certificate {
            common_name,
            fingerprint,
        },
    };
    Ok(Registration {
        peer_address: parse_address(REGISTRATION, &wire.peer_address)?,
        id: wire.id,
        endpoint: wire.endpoint,
        lifetime_s: wire.lifetime_s,
        lwm2m_version: wire.lwm2m_version,
        binding: wire.binding,
        queue_mode: wire.queue_mode,
        sms_number: wire.sms_number,
        object_links: wire.object_links,
        object_paths: wire.object_paths,
        identity,
        registered_at_ms: wire.registered_at_ms,
        last_update_ms: wire.last_update_ms,
    })
}

/// The associated data that binds a sealed PSK to its endpoint.
pub(crate) fn psk_context(endpoint: &str) -> Vec<u8> {
    let mut context = b"cairn-store/security/psk\0".to_vec();
    context.extend_from_slice(endpoint.as_bytes());
    context
}

/// Encodes security info, sealing the PSK under `master_key`.
pub fn encode_security_info(
    info: &SecurityInfo,
    master_key: &MasterKey,
) -> Result<Vec<u8>, StoreError> {
    let mode = match &info.mode {
        SecurityMode::Psk { identity, key } => WireSecurityMode::Psk {
            identity: identity.clone(),
            sealed_key: master_key.seal(key.expose(), &psk_context(&info.endpoint))?,
            fingerprint: fingerprint(key.expose()),
        },
        SecurityMode::Rpk { public_key_der } => WireSecurityMode::Rpk {
            public_key_der: public_key_der.clone(),
        },
        SecurityMode::X509(X509Expectation::CommonName(common_name)) => {
            WireSecurityMode::X509CommonName {
                common_name: common_name.clone(),
            }
        }
        SecurityMode::X509(X509Expectation::Fingerprint(sha256)) => {
            WireSecurityMode::X509Fingerprint {
                sha256: sha256.to_vec(),
            }
        }
        SecurityMode::NoSec => WireSecurityMode::NoSec,
    };
    Ok(encode_versioned(&WireSecurityInfo {
        endpoint: info.endpoint.clone(),
        mode,
        created_at_ms: info.created_at_ms,
    }))
}

/// Decodes security info, opening the PSK with `master_key`.
pub fn decode_security_info(
    bytes: &[u8],
    master_key: &MasterKey,
) -> Result<SecurityInfo, StoreError> {
    let wire: WireSecurityInfo = decode_versioned(SECURITY, bytes)?;
    let mode = match wire.mode {
        WireSecurityMode::Psk {
            identity,
            sealed_key,
            ..
        } => {
            let key = master_key
                .open(&sealed_key, &psk_context(&wire.endpoint))
                .ok_or_else(|| StoreError::SecretTampered {
                    record: format!("security info of endpoint {:?}", wire.endpoint),
                })?;
            SecurityMode::Psk { identity, key }
        }
        WireSecurityMode::Rpk { public_key_der } => SecurityMode::Rpk { public_key_der },
        WireSecurityMode::X509CommonName { common_name } => {
            SecurityMode::X509(X509Expectation::CommonName(common_name))
        }
        WireSecurityMode::X509Fingerprint { sha256 } => {
            let sha256 = sha256.try_into().map_err(|_| DecodeError::InvalidField {
                kind: SECURITY,
                field: "certificate fingerprint",
            })?;
            SecurityMode::X509(X509Expectation::Fingerprint(sha256))
        }
        WireSecurityMode::NoSec => SecurityMode::NoSec,
    };
    Ok(SecurityInfo {
        endpoint: wire.endpoint,
        mode,
        created_at_ms: wire.created_at_ms,
    })
}

/// Decodes security info into its summary, without opening the PSK.
pub fn decode_security_summary(bytes: &[u8]) -> Result<SecurityInfoSummary, DecodeError> {
    Ok(summarize(decode_versioned(SECURITY, bytes)?))
}

fn summarize(wire: WireSecurityInfo) -> SecurityInfoSummary {
    let (mode, identity, key_fingerprint) = match wire.mode {
        WireSecurityMode::Psk {
            identity,
            fingerprint,
            ..
        } => (
            SecurityModeKind::Psk,
            Some(String::from_utf8_lossy(&identity).into_owned()),
            Some(fingerprint),
        ),
        WireSecurityMode::Rpk { public_key_der } => (
            SecurityModeKind::Rpk,
            None,
            Some(fingerprint(&public_key_der)),
        ),
        WireSecurityMode::X509CommonName { common_name } => {
            (SecurityModeKind::X509, Some(common_name), None)
        }
        WireSecurityMode::X509Fingerprint { sha256 } => {
            (SecurityModeKind::X509, None, Some(digest_prefix(&sha256)))
        }
        WireSecurityMode::NoSec => (SecurityModeKind::NoSec, None, None),
    };
    SecurityInfoSummary {
        endpoint: wire.endpoint,
        mode,
        identity,
        key_fingerprint,
        created_at_ms: wire.created_at_ms,
    }
}

/// Decodes security info into its summary and, for a PSK, its identity (to maintain the
/// identity index without opening the key).
pub(crate) fn decode_stored_psk_identity(
    bytes: &[u8],
) -> Result<(SecurityInfoSummary, Option<Vec<u8>>), DecodeError> {
    let wire: WireSecurityInfo = decode_versioned(SECURITY, bytes)?;
    let identity = match &wire.mode {
        WireSecurityMode::Psk { identity, .. } => Some(identity.clone()),
        _ => None,
    };
    Ok((summarize(wire), identity))
}

/// Encodes an observation.
pub fn encode_observation(observation: &Observation) -> Vec<u8> {
    encode_versioned(&WireObservation {
        id: observation.id.clone(),
        registration_id: observation.registration_id.clone(),
        endpoint: observation.endpoint.clone(),
        token: observation.token.clone(),
        paths: observation.paths.clone(),
        content_format: observation.content_format,
        peer_address: observation.peer_address.to_string(),
        created_at_ms: observation.created_at_ms,
    })
}

/// Decodes an observation.
pub fn decode_observation(bytes: &[u8]) -> Result<Observation, DecodeError> {
    let wire: WireObservation = decode_versioned(OBSERVATION, bytes)?;
    Ok(Observation {
        peer_address: parse_address(OBSERVATION, &wire.peer_address)?,
        id: wire.id,
        registration_id: wire.registration_id,
        endpoint: wire.endpoint,
        token: wire.token,
        paths: wire.paths,
        content_format: wire.content_format,
        created_at_ms: wire.created_at_ms,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn registration(endpoint: &str, id: &str) -> Registration {
        Registration {
            id: id.to_owned(),
            endpoint: endpoint.to_owned(),
            lifetime_s: 300,
            lwm2m_version: "1.1".to_owned(),
            binding: "UQ".to_owned(),
            queue_mode: true,
            sms_number: Some("+15550100".to_owned()),
            object_links: "</1/0>,</3/0>".to_owned(),
            object_paths: vec!["/1/0".to_owned(), "/3/0".to_owned()],
            peer_address: "192.0.2.1:5684".parse().unwrap(),
            identity: PeerIdentity::Psk(b"device-1".to_vec()),
            registered_at_ms: 1_700_000_000_000,
            last_update_ms: 1_700_000_000_000,
        }
    }

    fn key() -> MasterKey {
        MasterKey::from_bytes(&[7; 32])
    }

    #[test]
    fn registration_round_trips() {
        let registration = registration("ep", "id1");
        let bytes = encode_registration(&registration);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_registration(&bytes).unwrap(), registration);
        assert_eq!(registration.expires_at_ms(), 1_700_000_300_000);
    }

    #[test]
    fn observation_round_trips() {
        let observation = Observation {
            id: "o1".to_owned(),
            registration_id: "r1".to_owned(),
            endpoint: "ep".to_owned(),
            token: vec![1, 2, 3, 4],
            paths: vec!["/3/0/13".to_owned()],
            content_format: Some(112),
            peer_address: "[2001:db8::1]:5683".parse().unwrap(),
            created_at_ms: 5,
        };
        let bytes = encode_observation(&observation);
        assert_eq!(decode_observation(&bytes).unwrap(), observation);
    }

    #[test]
    fn every_security_mode_round_trips() {
        let modes = [
            SecurityMode::Psk {
                identity: b"id".to_vec(),
                key: SecretBytes::new(vec![1, 2, 3]),
            },
            SecurityMode::Rpk {
                public_key_der: vec![0x30, 0x59],
            },
            SecurityMode::X509(X509Expectation::CommonName("ep".to_owned())),
            SecurityMode::X509(X509Expectation::Fingerprint([9; 32])),
            SecurityMode::NoSec,
        ];
        for mode in modes {
            let info = SecurityInfo {
                endpoint: "ep".to_owned(),
                mode,
                created_at_ms: 1,
            };
            let bytes = encode_security_info(&info, &key()).unwrap();
            assert_eq!(decode_security_info(&bytes, &key()).unwrap(), info);
            assert!(decode_security_summary(&bytes).is_ok());
        }
        let info = SecurityInfo {
            endpoint: "ep".to_owned(),
            mode: SecurityMode::X509(X509Expectation::Fingerprint([0xab; 32])),
            created_at_ms: 1,
        };
        let bytes = encode_security_info(&info, &key()).unwrap();
        let summary = decode_security_summary(&bytes).unwrap();
        assert_eq!(summary.key_fingerprint.unwrap(), "sha256:abababababababab");
    }

    #[test]
    fn psk_summary_has_identity_and_fingerprint_but_no_key() {
        let info = SecurityInfo {
            endpoint: "ep".to_owned(),
            mode: SecurityMode::Psk {
                identity: b"device-1".to_vec(),
                key: SecretBytes::new(b"0123456789abcdef".to_vec()),
            },
            created_at_ms: 1,
        };
        let summary = decode_security_summary(&encode_security_info(&info, &key()).unwrap());
        let summary = summary.unwrap();
        assert_eq!(summary.mode, SecurityModeKind::Psk);
        assert_eq!(summary.identity.as_deref(), Some("device-1"));
        assert_eq!(
            summary.key_fingerprint.as_deref(),
            Some(fingerprint(b"0123456789abcdef").as_str())
        );
        assert!(!format!("{info:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn psk_sealed_for_one_endpoint_does_not_open_for_another() {
        let info = SecurityInfo {
            endpoint: "ep-a".to_owned(),
            mode: SecurityMode::Psk {
                identity: b"id".to_vec(),
                key: SecretBytes::new(vec![1; 16]),
            },
            created_at_ms: 1,
        };
        let mut wire: WireSecurityInfo =
            decode_versioned(SECURITY, &encode_security_info(&info, &key()).unwrap()).unwrap();
        wire.endpoint = "ep-b".to_owned();
        let swapped = encode_versioned(&wire);
        assert!(matches!(
            decode_security_info(&swapped, &key()),
            Err(StoreError::SecretTampered { .. })
        ));
    }

    #[test]
    fn unknown_version_empty_and_trailing_bytes_are_typed_errors() {
        let mut bytes = encode_registration(&registration("ep", "id"));
        assert_eq!(
            decode_registration(&[]),
            Err(DecodeError::Empty { kind: REGISTRATION })
        );
        bytes[0] = 9;
        assert!(matches!(
            decode_registration(&bytes),
            Err(DecodeError::UnsupportedVersion { version: 9, .. })
        ));
        bytes[0] = FORMAT_VERSION;
        bytes.push(0);
        assert!(matches!(
            decode_registration(&bytes),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn random_ids_are_short_and_distinct() {
        let a = random_id().unwrap();
        let b = random_id().unwrap();
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
    }

    #[test]
    fn random_ids_start_with_a_letter() {
        for _ in 0..10_000 {
            let id = random_id().unwrap();
            assert!(id.starts_with(|c: char| c.is_ascii_alphabetic()), "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
        }
    }

    fn arbitrary_identity() -> impl Strategy<Value = PeerIdentity> {
        prop_oneof![
            Just(PeerIdentity::Unsecured),
            any::<Vec<u8>>().prop_map(PeerIdentity::Psk),
            any::<Vec<u8>>().prop_map(PeerIdentity::Rpk),
            any::<String>().prop_map(PeerIdentity::X509),
            (any::<String>(), any::<[u8; 32]>()).prop_map(|(common_name, fingerprint)| {
                PeerIdentity::X509Certificate {
                    common_name,
                    fingerprint,
                }
            }),
        ]
    }

    /// The textual form keeps an IPv6 scope id but not the flow label.
    fn without_flow_label(mut address: SocketAddr) -> SocketAddr {
        if let SocketAddr::V6(v6) = &mut address {
            v6.set_flowinfo(0);
        }
        address
    }

    fn arbitrary_registration() -> impl Strategy<Value = Registration> {
        (
            (
                any::<String>(),
                any::<String>(),
                any::<u32>(),
                any::<String>(),
            ),
            (any::<String>(), any::<bool>(), any::<Option<String>>()),
            (any::<String>(), any::<Vec<String>>(), any::<SocketAddr>()),
            (arbitrary_identity(), any::<u64>(), any::<u64>()),
        )
            .prop_map(|(a, b, c, d)| Registration {
                id: a.0,
                endpoint: a.1,
                lifetime_s: a.2,
                lwm2m_version: a.3,
                binding: b.0,
                queue_mode: b.1,
                sms_number: b.2,
                object_links: c.0,
                object_paths: c.1,
                peer_address: without_flow_label(c.2),
                identity: d.0,
                registered_at_ms: d.1,
                last_update_ms: d.2,
            })
    }

    proptest! {
        #[test]
        fn any_registration_round_trips(registration in arbitrary_registration()) {
            let bytes = encode_registration(&registration);
            prop_assert_eq!(decode_registration(&bytes), Ok(registration));
        }

        #[test]
        fn any_psk_round_trips_sealed(
            endpoint in any::<String>(),
            identity in any::<Vec<u8>>(),
            key_bytes in any::<Vec<u8>>(),
        ) {
            let info = SecurityInfo {
                endpoint,
                mode: SecurityMode::Psk { identity, key: SecretBytes::new(key_bytes) },
                created_at_ms: 0,
            };
            let bytes = encode_security_info(&info, &key()).unwrap();
            prop_assert_eq!(decode_security_info(&bytes, &key()).unwrap(), info);
        }

        #[test]
        fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_registration(&bytes);
            let _ = decode_observation(&bytes);
            let _ = decode_security_summary(&bytes);
            let _ = decode_security_info(&bytes, &key());
        }

        #[test]
        fn mutated_records_never_panic_the_decoders(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode_registration(&registration("endpoint", "id"));
            for (index, value) in flips {
                let i = index.index(bytes.len());
                bytes[i] = value;
            }
            let _ = decode_registration(&bytes);
            let _ = decode_registration(&bytes[..cut.index(bytes.len())]);
        }
    }
}
