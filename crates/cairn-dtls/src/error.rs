//! Errors and alerts (RFC 5246 §7.2, RFC 6347 §4.1.2.7).
//!
//! Every alert description of RFC 5246 §7.2 that this engine can send or receive is a named
//! variant of [`AlertDescription`]; an unknown code is kept as data in `Unknown`.

/// Alert level (RFC 5246 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertLevel {
    /// The connection may continue.
    Warning,
    /// The connection is terminated.
    Fatal,
    /// A level this engine does not know.
    Unknown(u8),
}

impl AlertLevel {
    /// Decodes a level byte.
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Warning,
            2 => Self::Fatal,
            other => Self::Unknown(other),
        }
    }

    /// Encodes the level byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Warning => 1,
            Self::Fatal => 2,
            Self::Unknown(other) => other,
        }
    }
}

macro_rules! alert_descriptions {
    ($($name:ident = $code:literal $wire:literal,)*) => {
        /// Alert description (RFC 5246 §7.2; `unknown_psk_identity` from RFC 4279 §2).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum AlertDescription {
            $(
                #[doc = concat!("`", $wire, "` (", stringify!($code), ")")]
                $name,
            )*
            /// A code this engine does not know.
            Unknown(u8),
        }

        impl AlertDescription {
            /// Decodes a description byte.
            pub fn from_u8(value: u8) -> Self {
                match value {
                    $($code => Self::$name,)*
                    other => Self::Unknown(other),
                }
            }

            /// Encodes the description byte.
            pub fn to_u8(self) -> u8 {
                match self {
                    $(Self::$name => $code,)*
                    Self::Unknown(other) => other,
                }
            }
        }
    };
}

alert_descriptions! {
    CloseNotify = 0 "close_notify",
    UnexpectedMessage = 10 "unexpected_message",
    BadRecordMac = 20 "bad_record_mac",
    RecordOverflow = 22 "record_overflow",
    DecompressionFailure = 30 "decompression_failure",
    HandshakeFailure = 40 "handshake_failure",
    BadCertificate = 42 "bad_certificate",
    UnsupportedCertificate = 43 "unsupported_certificate",
    CertificateRevoked = 44 "certificate_revoked",
    CertificateExpired = 45 "certificate_expired",
    CertificateUnknown = 46 "certificate_unknown",
    IllegalParameter = 47 "illegal_parameter",
    UnknownCa = 48 "unknown_ca",
    AccessDenied = 49 "access_denied",
    DecodeError = 50 "decode_error",
    DecryptError = 51 "decrypt_error",
    ProtocolVersion = 70 "protocol_version",
    InsufficientSecurity = 71 "insufficient_security",
    InternalError = 80 "internal_error",
    UserCanceled = 90 "user_canceled",
    NoRenegotiation = 100 "no_renegotiation",
    UnsupportedExtension = 110 "unsupported_extension",
    UnknownPskIdentity = 115 "unknown_psk_identity",
}

/// Why a connection ended, as reported in [`crate::Event::Closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer sent close_notify.
    PeerClosed,
    /// The local side called `close`.
    LocalClosed,
    /// The peer sent a fatal alert.
    PeerAlert(AlertDescription),
    /// This side aborted with a fatal alert (sent to the peer when the record layer allowed it).
    LocalAlert(AlertDescription),
    /// The peer started a new handshake from the same address (RFC 6347 §4.2.8), or another
    /// session moved onto this address.
    NewHandshake,
    /// The handshake flight was retransmitted the maximum number of times without an answer.
    HandshakeTimeout,
}

/// Errors of the DTLS engine.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Input ended before a field was complete.
    #[error("truncated {what}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
    },
    /// A field held a value that is not allowed.
    #[error("invalid {what}")]
    Invalid {
        /// The field that was wrong.
        what: &'static str,
    },
    /// A handshake message came that the current state does not accept.
    #[error("unexpected {what} in state {state}")]
    UnexpectedMessage {
        /// The message.
        what: &'static str,
        /// The handshake state that refused it.
        state: &'static str,
    },
    /// Record protection failed to open (bad MAC); such records are dropped silently.
    #[error("bad record MAC")]
    BadRecordMac,
    /// The record was a replay or older than the replay window.
    #[error("replayed record")]
    Replay,
    /// The peer's Finished verify data did not match.
    #[error("Finished verify data mismatch")]
    DecryptError,
    /// The peer does not speak DTLS 1.2.
    #[error("peer does not speak DTLS 1.2")]
    ProtocolVersion,
    /// No cipher suite in common.
    #[error("no cipher suite in common")]
    NoCommonCipherSuite,
    /// The PSK identity is not known to the resolver.
    #[error("unknown PSK identity")]
    UnknownPskIdentity,
    /// The peer asked for a renegotiation, which this engine refuses.
    #[error("renegotiation refused")]
    RenegotiationRefused,
    /// A configured limit was reached.
    #[error("limit reached: {what}")]
    Limit {
        /// The limit.
        what: &'static str,
    },
    /// There is no established session with this peer.
    #[error("no established session with this peer")]
    NotConnected,
    /// A plaintext does not fit into one record.
    #[error("record overflow")]
    RecordOverflow,
    /// The configuration is not usable.
    #[error("bad configuration: {what}")]
    Config {
        /// What was wrong.
        what: &'static str,
    },
    /// The peer sent a fatal alert.
    #[error("peer sent fatal alert {0:?}")]
    PeerAlert(AlertDescription),
}

impl Error {
    /// The alert this error is answered with, if any (RFC 5246 §7.2.2).
    pub fn alert(&self) -> Option<AlertDescription> {
        match self {
            Self::Truncated { .. } => Some(AlertDescription::DecodeError),
            Self::Invalid { .. } => Some(AlertDescription::IllegalParameter),
            Self::UnexpectedMessage { .. } => Some(AlertDescription::UnexpectedMessage),
            Self::DecryptError => Some(AlertDescription::DecryptError),
            Self::ProtocolVersion => Some(AlertDescription::ProtocolVersion),
            Self::NoCommonCipherSuite => Some(AlertDescription::HandshakeFailure),
            Self::UnknownPskIdentity => Some(AlertDescription::UnknownPskIdentity),
            Self::RenegotiationRefused => Some(AlertDescription::NoRenegotiation),
            Self::RecordOverflow => Some(AlertDescription::RecordOverflow),
            Self::Limit { .. } => Some(AlertDescription::InternalError),
            Self::BadRecordMac
            | Self::Replay
            | Self::NotConnected
            | Self::Config { .. }
            | Self::PeerAlert(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_codes_round_trip() {
        for code in 0..=255u8 {
            assert_eq!(AlertDescription::from_u8(code).to_u8(), code);
            assert_eq!(AlertLevel::from_u8(code).to_u8(), code);
        }
        assert_eq!(
            AlertDescription::from_u8(115),
            AlertDescription::UnknownPskIdentity
        );
        assert_eq!(AlertDescription::from_u8(1), AlertDescription::Unknown(1));
    }
}
