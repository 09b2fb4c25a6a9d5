//! Sans-IO CoAP (RFC 7252) with block-wise transfer (RFC 7959), observe (RFC 7641) and
//! link format (RFC 6690).
//!
//! Nothing here touches a socket, a clock or a thread: the endpoint takes bytes and the
//! current time and hands back bytes to send, events and the next deadline.
#![forbid(unsafe_code)]

pub mod content_format;
mod dedup;
pub mod endpoint;
pub mod link_format;
pub mod message;
pub mod observe;
pub mod option;
mod peer_table;
mod request_table;
pub mod uri;

pub use content_format::ContentFormat;
pub use endpoint::{
    Config, Disposition, Endpoint, EndpointError, Event, ExchangeId, ObservationEnd, ObservationId,
    ObserveRequest, RequestError, RequestId, Transmit,
};
pub use message::{Code, FormatError, Message, MessageType, MessageView, Options, Token};
pub use option::{BlockValue, OptionNumber};
pub use uri::CoapUri;
