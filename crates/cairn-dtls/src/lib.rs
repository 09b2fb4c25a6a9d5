//! Sans-IO DTLS 1.2 engine (RFC 6347) with pre-shared keys and connection IDs.
#![forbid(unsafe_code)]

pub mod codec;
pub mod crypto;
mod error;
pub mod message;
pub mod record;

pub use crypto::{CipherSuite, Psk};
pub use error::{AlertDescription, AlertLevel, CloseReason, Error};
