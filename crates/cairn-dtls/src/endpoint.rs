//! Types shared by the server and client endpoints: what they hand back to the driver.
//!
//! Driving an endpoint (quinn-proto shape): feed every received datagram to `handle`, call
//! `handle_timeout` when the instant from `poll_timeout` has passed, and after each call drain
//! `poll_transmit` (send each payload to its destination) and `poll_event`. Time is a
//! [`core::time::Duration`] since an origin the driver chooses; the engine never reads a clock.

use core::net::SocketAddr;
use std::sync::Arc;

use crate::crypto::Psk;
use crate::error::CloseReason;

/// Looks up the key of a PSK identity (RFC 4279 §2).
pub trait PskResolver: Send + Sync {
    /// The key for `identity`, or `None` if the identity is unknown.
    fn key(&self, identity: &[u8]) -> Option<Psk>;
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram (one or more DTLS records).
    pub payload: Vec<u8>,
}

/// Something the driver (and the layers above) should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed.
    Connected {
        /// The peer's address.
        peer: SocketAddr,
        /// The PSK identity the peer authenticated with.
        identity: Vec<u8>,
        /// Whether this was an abbreviated handshake (session resumption).
        resumed: bool,
    },
    /// Decrypted application data.
    ApplicationData {
        /// The peer's address.
        peer: SocketAddr,
        /// The plaintext.
        data: Vec<u8>,
    },
    /// The connection with `peer` ended.
    Closed {
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        reason: CloseReason,
        /// The identity the closed session had authenticated with; `None` if it never
        /// completed a handshake. Lets the layers above tell whether a new session at the
        /// same address belongs to the same peer.
        identity: Option<Arc<[u8]>>,
    },
    /// A peer with a connection ID now sends from another address (RFC 9146 §6); later events
    /// and transmits use `new`.
    PeerMoved {
        /// The address used so far.
        old: SocketAddr,
        /// The address of the newest authentic record.
        new: SocketAddr,
    },
}

/// Default largest datagram written.
pub const DEFAULT_MTU: usize = 1200;
/// Default retransmissions of one flight before a handshake fails (1+2+4+8+16+32+60 s).
pub const DEFAULT_MAX_RETRANSMISSIONS: u8 = 6;
/// Default largest handshake message reassembled.
pub const DEFAULT_MAX_HANDSHAKE_MESSAGE: usize = 4096;
