//! LwM2M operations as typed requests and responses, mapped to and from CoAP request and
//! response parts (OMA LwM2M Core 1.2 §6 "Interfaces" and the operation-to-CoAP mapping
//! tables of Transport Binding 1.2).
//!
//! - [`server`]: Device Management and Information Reporting requests a LwM2M Server
//!   sends (Read, Discover, Write, Write-Attributes, Execute, Create, Delete,
//!   Read-Composite, Write-Composite, Observe, Observe-Composite, Cancel Observation);
//! - [`bootstrap`]: Bootstrap-Server requests (Discover, Read, Write, Delete, Finish);
//! - [`client`]: requests a client sends (Bootstrap-Request, Register, Update,
//!   De-register, Send).
//!
//! Every request type has `to_coap` and `from_coap`; responses go through
//! [`Lwm2mResponse`] and the request's `encode_response` / `decode_response`.

pub mod bootstrap;
pub mod client;
pub mod server;

use std::collections::BTreeMap;

use cairn_coap::ContentFormat;
use cairn_coap::link_format::LinkFormatError;
use thiserror::Error;

use crate::attributes::AttributeError;
use crate::coap::{CoapRequest, CoapResponse, Method, ResponseCode};
use crate::content::CodecError;
use crate::content::link::{DiscoverEntry, DiscoverError};
use crate::node::LwM2mNode;
use crate::path::{LwM2mPath, PathError};

/// Why a CoAP message is not the LwM2M operation expected, or an operation cannot be
/// expressed.
#[derive(Debug, Error, PartialEq, Clone)]
pub enum OperationError {
    /// Method, path and options match no operation of this interface.
    #[error("{method:?} {path} is not an LwM2M operation here: {why}")]
    NotAnOperation {
        /// Method.
        method: Method,
        /// Uri-Path joined with '/'.
        path: String,
        /// Why.
        why: &'static str,
    },
    /// A required option, query or payload is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A Uri-Query option is invalid.
    #[error("query {query:?}: {why}")]
    Query {
        /// The query (truncated).
        query: String,
        /// Why.
        why: String,
    },
    /// The operation does not apply to this path.
    #[error("{operation} does not apply to {path}")]
    BadPath {
        /// Operation name.
        operation: &'static str,
        /// The path.
        path: LwM2mPath,
    },
    /// The Uri-Path is not an LwM2M path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The payload could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Invalid attributes.
    #[error(transparent)]
    Attribute(#[from] AttributeError),
    /// Invalid Discover payload.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// Invalid registration payload.
    #[error("registration payload: {0}")]
    LinkFormat(#[from] LinkFormatError),
    /// Invalid Execute arguments.
    #[error("execute arguments: {what} at byte {at}")]
    Arguments {
        /// What was wrong.
        what: &'static str,
        /// Byte offset.
        at: usize,
    },
    /// A success code other than the operation's.
    #[error("unexpected response code {0}")]
    UnexpectedResponse(ResponseCode),
}

/// What a successful response carries.
#[derive(Clone, PartialEq, Debug)]
pub enum ResponseContent {
    /// Nothing (Write, Execute, Delete, ...).
    Empty,
    /// A node (Read, Observe, Bootstrap-Read).
    Node(LwM2mNode),
    /// Nodes by path (Read-Composite, Observe-Composite).
    Nodes(BTreeMap<LwM2mPath, LwM2mNode>),
    /// Discover and Bootstrap-Discover.
    Links(Vec<DiscoverEntry>),
    /// Location-Path of a created resource (Register: `rd/<id>`, Create: `o/i`).
    Location(Vec<String>),
}

/// An LwM2M response: a code, what it carries and how it is encoded.
#[derive(Clone, PartialEq, Debug)]
pub struct Lwm2mResponse {
    /// Response code.
    pub code: ResponseCode,
    /// Content (empty for errors).
    pub content: ResponseContent,
    /// Format of a node or nodes content.
    pub content_format: Option<ContentFormat>,
    /// Observe sequence number of a notification.
    pub observe: Option<u32>,
    /// Diagnostic text of an error response.
    pub diagnostic: Option<String>,
}

impl Lwm2mResponse {
    /// A success with no content.
    pub fn empty(code: ResponseCode) -> Lwm2mResponse {
        Lwm2mResponse {
            code,
            content: ResponseContent::Empty,
            content_format: None,
            observe: None,
            diagnostic: None,
        }
    }

    /// An error with an optional diagnostic payload.
    pub fn error(code: ResponseCode, diagnostic: Option<String>) -> Lwm2mResponse {
        Lwm2mResponse {
            diagnostic,
            ..Lwm2mResponse::empty(code)
        }
    }

    /// A success carrying content in `format`.
    pub fn with_content(
        code: ResponseCode,
        content: ResponseContent,
        format: Option<ContentFormat>,
    ) -> Lwm2mResponse {
        Lwm2mResponse {
            content,
            content_format: format,
            ..Lwm2mResponse::empty(code)
        }
    }
}

/// Parses Uri-Path segments as an LwM2M path.
pub(crate) fn path_of(request: &CoapRequest) -> Result<LwM2mPath, OperationError> {
    Ok(LwM2mPath::from_segments(&request.path)?)
}

/// Uri-Path segments of an LwM2M path (none for the root).
pub(crate) fn segments(path: &LwM2mPath) -> Vec<String> {
    path.ids().iter().map(u16::to_string).collect()
}

pub(crate) fn not_an_operation(request: &CoapRequest, why: &'static str) -> OperationError {
    OperationError::NotAnOperation {
        method: request.method,
        path: format!("/{}", request.path.join("/")),
        why,
    }
}

/// The error part of a response, or `None` for a success; a success other than
/// `expected` is an error.
pub(crate) fn error_response(
    coap: &CoapResponse,
    expected: ResponseCode,
) -> Result<Option<Lwm2mResponse>, OperationError> {
    if coap.code.is_error() {
        let text = String::from_utf8_lossy(&coap.payload).into_owned();
        return Ok(Some(Lwm2mResponse::error(
            coap.code,
            (!text.is_empty()).then_some(text),
        )));
    }
    if coap.code != expected {
        return Err(OperationError::UnexpectedResponse(coap.code));
    }
    Ok(None)
}

/// The common part of turning an [`Lwm2mResponse`] into CoAP response parts: code,
/// observe, diagnostic payload of errors, Location-Path.
pub(crate) fn base_response(response: &Lwm2mResponse) -> CoapResponse {
    let mut coap = CoapResponse::new(response.code);
    coap.observe = response.observe;
    if let Some(diagnostic) = &response.diagnostic {
        coap.payload = diagnostic.clone().into_bytes();
    }
    if let ResponseContent::Location(location) = &response.content {
        coap.location_path = location.clone();
    }
    coap
}

/// Puts a client's alternate root path (`/lwm2m` from `</lwm2m>;rt="oma.lwm2m"` at
/// registration) in front of a request's Uri-Path.
pub fn with_alternate_path(mut coap: CoapRequest, alternate_path: &str) -> CoapRequest {
    let mut path: Vec<String> = alternate_segments(alternate_path)
        .map(str::to_owned)
        .collect();
    path.append(&mut coap.path);
    coap.path = path;
    coap
}

/// Removes a client's alternate root path from a request's Uri-Path; `None` when the
/// request is not under it.
pub fn strip_alternate_path(coap: &CoapRequest, alternate_path: &str) -> Option<CoapRequest> {
    let prefix: Vec<&str> = alternate_segments(alternate_path).collect();
    let matches =
        coap.path.len() >= prefix.len() && coap.path.iter().zip(&prefix).all(|(a, b)| a == b);
    matches.then(|| CoapRequest {
        path: coap.path.get(prefix.len()..).unwrap_or_default().to_vec(),
        ..coap.clone()
    })
}

fn alternate_segments(alternate_path: &str) -> impl Iterator<Item = &str> {
    alternate_path.split('/').filter(|s| !s.is_empty())
}

/// One argument of an Execute (Core 1.1 and 1.2, Execute operation):
/// a digit and an optional quoted value, `0='on',1`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExecuteArgument {
    /// The argument digit, 0 to 9.
    pub digit: u8,
    /// Its value, if any.
    pub value: Option<String>,
}

/// Parses Execute arguments (`0='v',1`); an empty payload has no arguments.
pub fn parse_execute_arguments(text: &str) -> Result<Vec<ExecuteArgument>, OperationError> {
    let bytes = text.as_bytes();
    let mut args = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let err = |what, at| OperationError::Arguments { what, at };
        let digit = match bytes.get(pos) {
            Some(b) if b.is_ascii_digit() => b - b'0',
            _ => return Err(err("expected a digit", pos)),
        };
        pos += 1;
        let mut value = None;
        if bytes.get(pos) == Some(&b'=') {
            if bytes.get(pos + 1) != Some(&b'\'') {
                return Err(err("expected a quoted value", pos + 1));
            }
            let start = pos + 2;
            let len = bytes
                .get(start..)
                .and_then(|rest| rest.iter().position(|b| *b == b'\''))
                .ok_or(err("unterminated value", pos + 1))?;
            value = Some(text.get(start..start + len).unwrap_or_default().to_owned());
            pos = start + len + 1;
        }
        args.push(ExecuteArgument { digit, value });
        match bytes.get(pos) {
            None => {}
            Some(b',') if pos + 1 < bytes.len() => pos += 1,
            Some(_) => return Err(err("expected ',' between arguments", pos)),
        }
    }
    Ok(args)
}

/// Writes Execute arguments.
pub fn format_execute_arguments(args: &[ExecuteArgument]) -> String {
    args.iter()
        .map(|arg| match &arg.value {
            Some(value) => format!("{}='{value}'", arg.digit),
            None => arg.digit.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn execute_arguments() {
        let args = parse_execute_arguments("0='on',1,2='a,b'").expect("valid");
        assert_eq!(
            args,
            vec![
                ExecuteArgument {
                    digit: 0,
                    value: Some("on".into())
                },
                ExecuteArgument {
                    digit: 1,
                    value: None
                },
                ExecuteArgument {
                    digit: 2,
                    value: Some("a,b".into())
                },
            ]
        );
        assert_eq!(format_execute_arguments(&args), "0='on',1,2='a,b'");
        assert_eq!(parse_execute_arguments(""), Ok(vec![]));
        assert_eq!(
            parse_execute_arguments("x"),
            Err(OperationError::Arguments {
                what: "expected a digit",
                at: 0
            })
        );
        assert!(matches!(
            parse_execute_arguments("0='x"),
            Err(OperationError::Arguments { at: 2, .. })
        ));
        assert!(matches!(
            parse_execute_arguments("0,"),
            Err(OperationError::Arguments { at: 1, .. })
        ));
        assert!(matches!(
            parse_execute_arguments("01"),
            Err(OperationError::Arguments { at: 1, .. })
        ));
    }

    #[test]
    fn alternate_paths() {
        let read = CoapRequest::new(Method::Get, &["3", "0"]);
        let prefixed = with_alternate_path(read.clone(), "/lwm2m/");
        assert_eq!(prefixed.path, ["lwm2m", "3", "0"]);
        assert_eq!(
            strip_alternate_path(&prefixed, "/lwm2m"),
            Some(read.clone())
        );
        assert_eq!(strip_alternate_path(&read, "/lwm2m"), None);
        assert_eq!(strip_alternate_path(&read, "/"), Some(read));
    }

    proptest! {
        #[test]
        fn execute_arguments_round_trip(args in proptest::collection::vec((0u8..10, proptest::option::of("[a-z0-9 ,]{0,8}")), 0..5)) {
            let args: Vec<ExecuteArgument> = args.into_iter().map(|(digit, value)| ExecuteArgument { digit, value }).collect();
            prop_assert_eq!(parse_execute_arguments(&format_execute_arguments(&args)), Ok(args));
        }

        #[test]
        fn execute_arguments_never_panic(text in ".{0,24}") {
            let _ = parse_execute_arguments(&text);
        }
    }
}
