//! The parts of a CoAP message that LwM2M operations are made of (RFC 7252 §5 and the
//! operation mapping of the LwM2M Transport Binding 1.2): method,
//! Uri-Path segments, Uri-Query options, Content-Format, Accept, Observe, Location-Path,
//! payload and response code. The CoAP message codec converts these to and from bytes.

use core::fmt;

use cairn_coap::ContentFormat;

/// A CoAP request method (RFC 7252 §12.1.1, RFC 8132 for FETCH and iPATCH).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Method {
    /// 0.01
    Get,
    /// 0.02
    Post,
    /// 0.03
    Put,
    /// 0.04
    Delete,
    /// 0.05
    Fetch,
    /// 0.06
    Patch,
    /// 0.07
    IPatch,
}

/// The request parts an LwM2M operation maps to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CoapRequest {
    /// Method.
    pub method: Method,
    /// Uri-Path options, one per segment.
    pub path: Vec<String>,
    /// Uri-Query options (`ep=name`, `pmin=10`, `Q`).
    pub queries: Vec<String>,
    /// Content-Format option.
    pub content_format: Option<ContentFormat>,
    /// Accept option.
    pub accept: Option<ContentFormat>,
    /// Observe option (0 register, 1 deregister).
    pub observe: Option<u32>,
    /// Payload.
    pub payload: Vec<u8>,
}

impl CoapRequest {
    /// A request without options or payload.
    pub fn new(method: Method, path: &[&str]) -> CoapRequest {
        CoapRequest {
            method,
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            queries: Vec::new(),
            content_format: None,
            accept: None,
            observe: None,
            payload: Vec::new(),
        }
    }
}

/// A response code `class.detail` (RFC 7252 §5.9, §12.1.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ResponseCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// Two-digit detail.
    pub detail: u8,
}

impl ResponseCode {
    /// 2.01
    pub const CREATED: ResponseCode = ResponseCode::new(2, 1);
    /// 2.02
    pub const DELETED: ResponseCode = ResponseCode::new(2, 2);
    /// 2.03
    pub const VALID: ResponseCode = ResponseCode::new(2, 3);
    /// 2.04
    pub const CHANGED: ResponseCode = ResponseCode::new(2, 4);
    /// 2.05
    pub const CONTENT: ResponseCode = ResponseCode::new(2, 5);
    /// 2.31
    pub const CONTINUE: ResponseCode = ResponseCode::new(2, 31);
    /// 4.00
    pub const BAD_REQUEST: ResponseCode = ResponseCode::new(4, 0);
    /// 4.01
    pub const UNAUTHORIZED: ResponseCode = ResponseCode::new(4, 1);
    /// 4.02
    pub const BAD_OPTION: ResponseCode = ResponseCode::new(4, 2);
    /// 4.03
    pub const FORBIDDEN: ResponseCode = ResponseCode::new(4, 3);
    /// 4.04
    pub const NOT_FOUND: ResponseCode = ResponseCode::new(4, 4);
    /// 4.05
    pub const METHOD_NOT_ALLOWED: ResponseCode = ResponseCode::new(4, 5);
    /// 4.06
    pub const NOT_ACCEPTABLE: ResponseCode = ResponseCode::new(4, 6);
    /// 4.08
    pub const REQUEST_ENTITY_INCOMPLETE: ResponseCode = ResponseCode::new(4, 8);
    /// 4.09
    pub const CONFLICT: ResponseCode = ResponseCode::new(4, 9);
    /// 4.12
    pub const PRECONDITION_FAILED: ResponseCode = ResponseCode::new(4, 12);
    /// 4.13
    pub const REQUEST_ENTITY_TOO_LARGE: ResponseCode = ResponseCode::new(4, 13);
    /// 4.15
    pub const UNSUPPORTED_CONTENT_FORMAT: ResponseCode = ResponseCode::new(4, 15);
    /// 5.00
    pub const INTERNAL_SERVER_ERROR: ResponseCode = ResponseCode::new(5, 0);
    /// 5.01
    pub const NOT_IMPLEMENTED: ResponseCode = ResponseCode::new(5, 1);
    /// 5.03
    pub const SERVICE_UNAVAILABLE: ResponseCode = ResponseCode::new(5, 3);

    /// `class.detail`.
    pub const fn new(class: u8, detail: u8) -> ResponseCode {
        ResponseCode { class, detail }
    }

    /// 2.xx?
    pub fn is_success(self) -> bool {
        self.class == 2
    }

    /// 4.xx or 5.xx?
    pub fn is_error(self) -> bool {
        self.class == 4 || self.class == 5
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class, self.detail)
    }
}

/// The response parts an LwM2M operation result maps to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CoapResponse {
    /// Response code.
    pub code: ResponseCode,
    /// Content-Format option.
    pub content_format: Option<ContentFormat>,
    /// Observe option (notifications).
    pub observe: Option<u32>,
    /// Location-Path options (Register, Create).
    pub location_path: Vec<String>,
    /// Payload.
    pub payload: Vec<u8>,
}

impl CoapResponse {
    /// A response with a code only.
    pub fn new(code: ResponseCode) -> CoapResponse {
        CoapResponse {
            code,
            content_format: None,
            observe: None,
            location_path: Vec::new(),
            payload: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_display_as_coap_writes_them() {
        assert_eq!(ResponseCode::CONTENT.to_string(), "2.05");
        assert_eq!(ResponseCode::UNSUPPORTED_CONTENT_FORMAT.to_string(), "4.15");
        assert!(ResponseCode::NOT_FOUND.is_error() && !ResponseCode::NOT_FOUND.is_success());
        assert!(ResponseCode::CHANGED.is_success());
    }
}
