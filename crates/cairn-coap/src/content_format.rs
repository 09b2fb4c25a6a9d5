//! CoAP Content-Format numbers (RFC 7252 §12.3 and the IANA "CoAP Content-Formats" registry).
//!
//! A content format is a plain 16-bit number on the wire; an unregistered number is data,
//! not an error, so the type is a newtype with named constants for the registered values.

use core::fmt;

/// A CoAP Content-Format code (the value of the Content-Format and Accept options).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentFormat(pub u16);

macro_rules! content_formats {
    ($($name:ident = $value:literal, $media:literal;)*) => {
        impl ContentFormat {
            $(
                #[doc = $media]
                pub const $name: ContentFormat = ContentFormat($value);
            )*

            /// The media type (with parameters) registered for this number, if any.
            pub const fn media_type(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($media),)*
                    _ => None,
                }
            }
        }
    };
}

content_formats! {
    TEXT_PLAIN = 0, "text/plain;charset=utf-8";
    COSE_ENCRYPT0 = 16, "application/cose; cose-type=\"cose-encrypt0\"";
    COSE_MAC0 = 17, "application/cose; cose-type=\"cose-mac0\"";
    COSE_SIGN1 = 18, "application/cose; cose-type=\"cose-sign1\"";
    LINK_FORMAT = 40, "application/link-format";
    XML = 41, "application/xml";
    OCTET_STREAM = 42, "application/octet-stream";
    EXI = 47, "application/exi";
    JSON = 50, "application/json";
    JSON_PATCH_JSON = 51, "application/json-patch+json";
    MERGE_PATCH_JSON = 52, "application/merge-patch+json";
    CBOR = 60, "application/cbor";
    CWT = 61, "application/cwt";
    MULTIPART_CORE = 62, "application/multipart-core";
    CBOR_SEQ = 63, "application/cbor-seq";
    COSE_ENCRYPT = 96, "application/cose; cose-type=\"cose-encrypt\"";
    COSE_MAC = 97, "application/cose; cose-type=\"cose-mac\"";
    COSE_SIGN = 98, "application/cose; cose-type=\"cose-sign\"";
    COSE_KEY = 101, "application/cose-key";
    COSE_KEY_SET = 102, "application/cose-key-set";
    SENML_JSON = 110, "application/senml+json";
    SENSML_JSON = 111, "application/sensml+json";
    SENML_CBOR = 112, "application/senml+cbor";
    SENSML_CBOR = 113, "application/sensml+cbor";
    SENML_EXI = 114, "application/senml-exi";
    SENSML_EXI = 115, "application/sensml-exi";
    COAP_GROUP_JSON = 256, "application/coap-group+json";
    DOTS_CBOR = 271, "application/dots+cbor";
    MISSING_BLOCKS_CBOR_SEQ = 272, "application/missing-blocks+cbor-seq";
    PKCS7_SERVER_GENERATED_KEY = 280, "application/pkcs7-mime; smime-type=server-generated-key";
    PKCS7_CERTS_ONLY = 281, "application/pkcs7-mime; smime-type=certs-only";
    PKCS8 = 284, "application/pkcs8";
    CSRATTRS = 285, "application/csrattrs";
    PKCS10 = 286, "application/pkcs10";
    PKIX_CERT = 287, "application/pkix-cert";
    SENML_XML = 310, "application/senml+xml";
    SENSML_XML = 311, "application/sensml+xml";
    SENML_ETCH_JSON = 320, "application/senml-etch+json";
    SENML_ETCH_CBOR = 322, "application/senml-etch+cbor";
    YANG_DATA_CBOR = 340, "application/yang-data+cbor";
    TD_JSON = 432, "application/td+json";
    LWM2M_TLV_LEGACY = 1542, "application/vnd.oma.lwm2m+tlv (pre-registration number)";
    LWM2M_JSON_LEGACY = 1543, "application/vnd.oma.lwm2m+json (pre-registration number)";
    OCF_CBOR = 10000, "application/vnd.ocf+cbor";
    LWM2M_TLV = 11542, "application/vnd.oma.lwm2m+tlv";
    LWM2M_JSON = 11543, "application/vnd.oma.lwm2m+json";
    LWM2M_CBOR = 11544, "application/vnd.oma.lwm2m+cbor";
}

impl ContentFormat {
    /// The number as carried in the Content-Format or Accept option.
    pub const fn value(self) -> u16 {
        self.0
    }
}

impl From<u16> for ContentFormat {
    fn from(value: u16) -> Self {
        ContentFormat(value)
    }
}

impl fmt::Debug for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.media_type() {
            Some(media) => write!(f, "ContentFormat({} {media})", self.0),
            None => write!(f, "ContentFormat({})", self.0),
        }
    }
}

impl fmt::Display for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_numbers_have_media_types() {
        assert_eq!(ContentFormat::LWM2M_TLV.value(), 11542);
        assert_eq!(
            ContentFormat(40).media_type(),
            Some("application/link-format")
        );
        assert_eq!(ContentFormat(65000).media_type(), None);
    }
}
