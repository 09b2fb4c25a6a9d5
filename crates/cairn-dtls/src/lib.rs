//! Sans-IO DTLS 1.2 engine (RFC 6347) with pre-shared keys (RFC 4279, RFC 6655 AES-CCM
//! suites), ECDHE-ECDSA on secp256r1 with X.509 certificates or raw public keys (RFC 8422,
//! RFC 7251, RFC 7250; see [`pki`]) and connection IDs (RFC 9146).
//!
//! Two endpoints in the shape of `quinn-proto`: [`ServerEndpoint`] (many peers on one socket,
//! found by address or by connection ID) and [`ClientEndpoint`] (one session). Neither touches
//! a socket or a clock: the driver feeds datagrams with [`ServerEndpoint::handle`], calls
//! `handle_timeout` at the instant `poll_timeout` returns, and drains `poll_transmit` and
//! `poll_event` after every call. Time is a [`core::time::Duration`] since an origin the driver
//! picks; randomness comes from the `rand_core::CryptoRng` handed to the constructor.
//!
//! # Driving an endpoint
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use cairn_dtls::{ClientConfig, ClientEndpoint, Event, Psk, PskResolver, ServerConfig, ServerEndpoint};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! struct Keys;
//! impl PskResolver for Keys {
//!     fn key(&self, identity: &[u8]) -> Option<Psk> {
//!         (identity == b"device-1").then(|| Psk::new(b"0123456789abcdef".to_vec()))
//!     }
//! }
//!
//! let server_addr: SocketAddr = "192.0.2.1:5684".parse().unwrap();
//! let device_addr: SocketAddr = "192.0.2.2:40000".parse().unwrap();
//! let mut server = ServerEndpoint::new(
//!     ServerConfig::new(Arc::new(Keys)),
//!     Box::new(StdRng::from_os_rng()),
//!     Duration::ZERO,
//! )
//! .unwrap();
//! let config = ClientConfig::new(b"device-1".to_vec(), Psk::new(b"0123456789abcdef".to_vec()));
//! let mut client = ClientEndpoint::new(config, Box::new(StdRng::from_os_rng()), server_addr).unwrap();
//!
//! let now = Duration::ZERO;
//! client.connect(now).unwrap();
//! // A driver would loop on socket reads and on `poll_timeout`; here the "network" is a loop.
//! for _ in 0..4 {
//!     while let Some(transmit) = client.poll_transmit() {
//!         server.handle(now, device_addr, &transmit.payload);
//!     }
//!     while let Some(transmit) = server.poll_transmit() {
//!         client.handle(now, server_addr, &transmit.payload);
//!     }
//! }
//! assert!(matches!(server.poll_event(), Some(Event::Connected { identity, .. }) if identity == b"device-1"));
//! client.send(now, server_addr, b"</1/0>").unwrap();
//! let datagram = client.poll_transmit().unwrap().payload;
//! server.handle(now, device_addr, &datagram);
//! assert_eq!(
//!     server.poll_event(),
//!     Some(Event::ApplicationData { peer: device_addr, data: b"</1/0>".to_vec() })
//! );
//! ```
//!
//! `poll_transmit` returns an owned [`Transmit`] (one allocation per datagram); each payload
//! goes to `destination` as one UDP datagram. After a [`Event::PeerMoved`] (connection ID in
//! use and the device's address changed) the peer is known by its new address.
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
mod peers;
pub mod pki;
pub mod reassembly;
pub mod record;
mod server;
pub mod session;

pub use cid::ConnectionId;
pub use client::{ClientConfig, ClientEndpoint};
pub use crypto::{CipherSuite, Psk};
pub use endpoint::{Event, PskResolver, Transmit};
pub use error::{AlertDescription, AlertLevel, CertificateError, CloseReason, Error};
pub use pki::{
    CertificateUsage, ClientCertificateConfig, Credentials, PeerVerifier, PrivateKey,
    RawPublicKeyResolver, RawPublicKeys, RevocationPolicy, ServerCertificateConfig, X509Verifier,
};
pub use server::{CidConfig, ServerConfig, ServerEndpoint, SessionInfo};
