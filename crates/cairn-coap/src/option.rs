//! CoAP option numbers and values (RFC 7252 §5.4, §5.10 and §12.2; RFC 7641 §2; RFC 7959 §2).
//!
//! Option numbers are a newtype: an unregistered number is data, and its class (critical or
//! elective, safe or unsafe to forward) follows from the number itself (§5.4.6).

use core::fmt;

/// A CoAP option number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OptionNumber(pub u16);

/// How an option's value is encoded (RFC 7252 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionFormat {
    Empty,
    Opaque,
    Uint,
    String,
}

macro_rules! option_numbers {
    ($($name:ident = $value:literal, $text:literal, $format:ident, $min:literal, $max:literal, $repeatable:literal;)*) => {
        impl OptionNumber {
            $(
                #[doc = $text]
                pub const $name: OptionNumber = OptionNumber($value);
            )*

            /// The registered name of this option, if it is registered.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }

            /// The value format and length bounds of a registered option.
            pub const fn definition(self) -> Option<OptionDefinition> {
                match self.0 {
                    $($value => Some(OptionDefinition {
                        format: OptionFormat::$format,
                        min_len: $min,
                        max_len: $max,
                        repeatable: $repeatable,
                    }),)*
                    _ => None,
                }
            }
        }
    };
}

/// The registered shape of an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionDefinition {
    pub format: OptionFormat,
    pub min_len: usize,
    pub max_len: usize,
    pub repeatable: bool,
}

option_numbers! {
    IF_MATCH = 1, "If-Match", Opaque, 0, 8, true;
    URI_HOST = 3, "Uri-Host", String, 1, 255, false;
    ETAG = 4, "ETag", Opaque, 1, 8, true;
    IF_NONE_MATCH = 5, "If-None-Match", Empty, 0, 0, false;
    OBSERVE = 6, "Observe", Uint, 0, 3, false;
    URI_PORT = 7, "Uri-Port", Uint, 0, 2, false;
    LOCATION_PATH = 8, "Location-Path", String, 0, 255, true;
    OSCORE = 9, "OSCORE", Opaque, 0, 255, false;
    URI_PATH = 11, "Uri-Path", String, 0, 255, true;
    CONTENT_FORMAT = 12, "Content-Format", Uint, 0, 2, false;
    MAX_AGE = 14, "Max-Age", Uint, 0, 4, false;
    URI_QUERY = 15, "Uri-Query", String, 0, 255, true;
    HOP_LIMIT = 16, "Hop-Limit", Uint, 1, 1, false;
    ACCEPT = 17, "Accept", Uint, 0, 2, false;
    Q_BLOCK1 = 19, "Q-Block1", Uint, 0, 3, false;
    LOCATION_QUERY = 20, "Location-Query", String, 0, 255, true;
    EDHOC = 21, "EDHOC", Empty, 0, 0, false;
    BLOCK2 = 23, "Block2", Uint, 0, 3, false;
    BLOCK1 = 27, "Block1", Uint, 0, 3, false;
    SIZE2 = 28, "Size2", Uint, 0, 4, false;
    Q_BLOCK2 = 31, "Q-Block2", Uint, 0, 3, true;
    PROXY_URI = 35, "Proxy-Uri", String, 1, 1034, false;
    PROXY_SCHEME = 39, "Proxy-Scheme", String, 1, 255, false;
    SIZE1 = 60, "Size1", Uint, 0, 4, false;
    ECHO = 252, "Echo", Opaque, 1, 40, false;
    NO_RESPONSE = 258, "No-Response", Uint, 0, 1, false;
    REQUEST_TAG = 292, "Request-Tag", Opaque, 0, 8, true;
}

impl OptionNumber {
    /// Critical options must be understood by the recipient (RFC 7252 §5.4.1).
    pub const fn is_critical(self) -> bool {
        self.0 & 1 == 1
    }

    /// Unsafe-to-forward options (RFC 7252 §5.4.2).
    pub const fn is_unsafe(self) -> bool {
        self.0 & 2 == 2
    }

    /// Options that are not part of the cache key (RFC 7252 §5.4.6).
    pub const fn is_no_cache_key(self) -> bool {
        self.0 & 0x1e == 0x1c
    }

    /// Whether this implementation knows the option.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }
}

impl fmt::Debug for OptionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "Option({})", self.0),
        }
    }
}

/// Encodes `value` as a minimal-length big-endian unsigned integer (RFC 7252 §3.2).
pub fn encode_uint(value: u32) -> ([u8; 4], usize) {
    let bytes = value.to_be_bytes();
    let len = 4 - (value.leading_zeros() / 8) as usize;
    let mut out = [0u8; 4];
    out[..len].copy_from_slice(&bytes[4 - len..]);
    (out, len)
}

/// Decodes an unsigned integer option value of at most four bytes.
pub fn decode_uint(value: &[u8]) -> Option<u32> {
    if value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// The value of a Block1 or Block2 option (RFC 7959 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockValue {
    /// Block number (up to 2^20 - 1).
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: the block size is 2^(szx + 4), 16 to 1024 bytes.
    pub szx: u8,
}

impl BlockValue {
    /// Largest block number representable in three bytes.
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    /// Builds a block value for a block size given in bytes (rounded down to a power of two).
    pub fn new(num: u32, more: bool, size: usize) -> Option<Self> {
        let szx = Self::szx_for_size(size)?;
        (num <= Self::MAX_NUM).then_some(BlockValue { num, more, szx })
    }

    /// The size exponent for a size in bytes, rounded down, or `None` below 16 bytes.
    pub fn szx_for_size(size: usize) -> Option<u8> {
        if size < 16 {
            return None;
        }
        let size = size.min(1024);
        Some((usize::BITS - 1 - size.leading_zeros()) as u8 - 4)
    }

    /// Decodes the option value; SZX 7 (reserved, BERT over TCP only) is rejected.
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() > 3 {
            return None;
        }
        let raw = decode_uint(value)?;
        let szx = (raw & 0x7) as u8;
        if szx == 7 {
            return None;
        }
        Some(BlockValue {
            num: raw >> 4,
            more: raw & 0x8 != 0,
            szx,
        })
    }

    /// The option value as an unsigned integer.
    pub fn to_uint(self) -> u32 {
        (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx)
    }

    /// Block size in bytes.
    pub fn size(self) -> usize {
        16usize << self.szx
    }

    /// Offset of this block in the whole body.
    pub fn offset(self) -> usize {
        self.num as usize * self.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_classes_follow_the_number() {
        assert!(OptionNumber::URI_PATH.is_critical());
        assert!(!OptionNumber::CONTENT_FORMAT.is_critical());
        assert!(OptionNumber::URI_HOST.is_unsafe());
        assert!(OptionNumber::SIZE1.is_no_cache_key());
        assert!(!OptionNumber::ETAG.is_no_cache_key());
        assert!(!OptionNumber(9999).is_known());
    }

    #[test]
    fn uint_is_minimal_length() {
        assert_eq!(encode_uint(0).1, 0);
        assert_eq!(encode_uint(255).1, 1);
        assert_eq!(encode_uint(256).1, 2);
        let (bytes, len) = encode_uint(0x01_02_03);
        assert_eq!(&bytes[..len], &[1, 2, 3]);
        assert_eq!(decode_uint(&[1, 2, 3]), Some(0x01_02_03));
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn block_values_round_trip() {
        let block = BlockValue::new(5, true, 1024).unwrap();
        assert_eq!(block.szx, 6);
        assert_eq!(block.offset(), 5120);
        let (bytes, len) = encode_uint(block.to_uint());
        assert_eq!(BlockValue::decode(&bytes[..len]), Some(block));
        assert_eq!(BlockValue::decode(&[0x0f]), None);
        assert_eq!(BlockValue::szx_for_size(100), Some(2));
        assert_eq!(BlockValue::szx_for_size(15), None);
    }
}
