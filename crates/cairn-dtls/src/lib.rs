//! Sans-IO DTLS 1.2 engine (RFC 6347) with pre-shared keys (RFC 4279, RFC 6655 AES-CCM
//! suites) and connection IDs (RFC 9146).
//!
//! Two endpoints in the shape of `quinn-proto`: [`ServerEndpoint`] (many peers on one socket,
//! found by address or by connection ID) and [`ClientEndpoint`] (one session). Neither touches
//! a socket or a clock: the driver feeds datagrams with [`ServerEndpoint::handle`], calls
//! `handle_timeout` at the instant `poll_timeout` returns, and drains `poll_transmit` and
//! `poll_event` after every call. Time is a [`core::time::Duration`] since an origin the driver
//! picks; randomness comes from the `rand_core::CryptoRng` handed to the constructor.
#![forbid(unsafe_code)]

pub mod cid;
mod client;
pub mod codec;
mod connection;
pub mod cookie;
pub mod crypto;
mod endpoint;
mod error;
pub mod flight;
pub mod handshake;
pub mod message;
pub mod reassembly;
pub mod record;
mod server;
pub mod session;

pub use cid::ConnectionId;
pub use client::{ClientConfig, ClientEndpoint};
pub use crypto::{CipherSuite, Psk};
pub use endpoint::{Event, PskResolver, Transmit};
pub use error::{AlertDescription, AlertLevel, CloseReason, Error};
pub use server::{CidConfig, ServerConfig, ServerEndpoint, SessionInfo};
