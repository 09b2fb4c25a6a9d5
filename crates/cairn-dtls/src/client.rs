//! The client endpoint: one session with one server (RFC 6347 §4.2, RFC 4279 PSK, RFC 9146
//! connection ID, RFC 5246 §7.3 resumption of the previous session on reconnect).

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;

use rand_core::CryptoRng;

use crate::Error;
use crate::cid::ConnectionId;
use crate::connection::{Connection, ConnectionEvent, Output};
use crate::crypto::{CipherSuite, Psk};
use crate::endpoint::{
    DEFAULT_MAX_HANDSHAKE_MESSAGE, DEFAULT_MAX_RETRANSMISSIONS, DEFAULT_MTU, Event, Transmit,
};
use crate::error::{AlertDescription, AlertLevel, CloseReason};
use crate::handshake::{ClientParams, Handshake, Limits, ResumableSession};
use crate::pki::ClientCertificateConfig;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// PSK identity.
    pub identity: Vec<u8>,
    /// The key.
    pub psk: Psk,
    /// Suites offered, in order of preference.
    pub cipher_suites: Vec<CipherSuite>,
    /// Offer the `connection_id` extension with this CID for records the server sends to us
    /// (empty: use the server's CID but receive without one). `None`: no CID.
    pub connection_id: Option<Vec<u8>>,
    /// Largest datagram written.
    pub mtu: usize,
    /// Retransmissions of one flight before the handshake fails.
    pub max_retransmissions: u8,
    /// Largest handshake message reassembled.
    pub max_handshake_message: usize,
    /// Certificate mode (ECDHE-ECDSA suites), when set.
    pub certificate: Option<Arc<ClientCertificateConfig>>,
}

impl ClientConfig {
    /// Defaults: both PSK CCM suites (CCM-8 first), no CID.
    pub fn new(identity: impl Into<Vec<u8>>, psk: Psk) -> Self {
        Self {
            identity: identity.into(),
            psk,
            cipher_suites: CipherSuite::PSK.to_vec(),
            connection_id: None,
            mtu: DEFAULT_MTU,
            max_retransmissions: DEFAULT_MAX_RETRANSMISSIONS,
            max_handshake_message: DEFAULT_MAX_HANDSHAKE_MESSAGE,
            certificate: None,
        }
    }

    /// A client in certificate mode: the ECDHE-ECDSA suites (CCM-8 first), no PSK.
    pub fn with_certificate(certificate: ClientCertificateConfig) -> Self {
        Self {
            cipher_suites: CipherSuite::ECDHE_ECDSA.to_vec(),
            certificate: Some(Arc::new(certificate)),
            ..Self::new(Vec::new(), Psk::new(Vec::new()))
        }
    }
}

/// A DTLS client for one server.
pub struct ClientEndpoint {
    config: ClientConfig,
    rng: Box<dyn CryptoRng + Send>,
    server: SocketAddr,
    connection: Option<Connection>,
    resumable: Option<ResumableSession>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl core::fmt::Debug for ClientEndpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientEndpoint")
            .field("server", &self.server)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl ClientEndpoint {
    /// A client for `server`; call [`ClientEndpoint::connect`] to start.
    pub fn new(
        config: ClientConfig,
        rng: Box<dyn CryptoRng + Send>,
        server: SocketAddr,
    ) -> Result<Self, Error> {
        if config.cipher_suites.is_empty() {
            return Err(Error::Config {
                what: "no cipher suite",
            });
        }
        if config.certificate.is_none()
            && config
                .cipher_suites
                .iter()
                .any(|suite| suite.is_ecdhe_ecdsa())
        {
            return Err(Error::Config {
                what: "ECDHE-ECDSA suites without a certificate configuration",
            });
        }
        if let Some(cid) = &config.connection_id {
            ConnectionId::new(cid).map_err(|_| Error::Config {
                what: "CID longer than 32 bytes",
            })?;
        }
        Ok(Self {
            config,
            rng,
            server,
            connection: None,
            resumable: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// Starts a handshake (abbreviated if a previous session can be resumed); any current
    /// connection is dropped.
    pub fn connect(&mut self, now: Duration) -> Result<(), Error> {
        let limits = Limits {
            mtu: self.config.mtu,
            max_retransmissions: self.config.max_retransmissions,
            max_handshake_message: self.config.max_handshake_message,
        };
        let cid = match &self.config.connection_id {
            Some(cid) => Some(ConnectionId::new(cid)?),
            None => None,
        };
        let params = ClientParams {
            identity: self.config.identity.clone(),
            psk: self.config.psk.clone(),
            suites: &self.config.cipher_suites,
            cid,
            offered: self.resumable.clone(),
            certificate: self.config.certificate.clone(),
        };
        let mut handshake = Handshake::client_start(now, limits, &mut *self.rng, params)?;
        for payload in handshake.take_outgoing() {
            self.transmits.push_back(Transmit {
                destination: self.server,
                payload,
            });
        }
        self.connection = Some(Connection::Handshaking(Box::new(handshake)));
        Ok(())
    }

    /// Forgets the session kept for resumption, so the next `connect` does a full handshake.
    pub fn forget_session(&mut self) {
        self.resumable = None;
    }

    /// Whether a session is established.
    pub fn is_connected(&self) -> bool {
        matches!(self.connection, Some(Connection::Established(_)))
    }

    /// Bytes one application data record adds to its plaintext, once connected.
    pub fn record_overhead(&self) -> Option<usize> {
        Some(self.connection.as_ref()?.session()?.record_overhead())
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    fn cid_len(&self) -> usize {
        self.config.connection_id.as_ref().map_or(0, Vec::len)
    }

    /// Handles a datagram; datagrams from anyone but the server are ignored.
    pub fn handle(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        if from != self.server {
            return;
        }
        let cid_len = self.cid_len();
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let mut output = Output::default();
        connection.handle_datagram(now, datagram, cid_len, None, &mut output);
        self.apply(output);
    }

    fn apply(&mut self, output: Output) {
        let peer = self.server;
        for payload in output.transmits {
            self.transmits.push_back(Transmit {
                destination: peer,
                payload,
            });
        }
        for event in output.events {
            match event {
                ConnectionEvent::Connected {
                    identity,
                    resumed,
                    resumable,
                } => {
                    self.resumable = resumable;
                    self.events.push_back(Event::Connected {
                        peer,
                        identity,
                        resumed,
                    });
                }
                ConnectionEvent::ApplicationData(data) => {
                    self.events.push_back(Event::ApplicationData { peer, data });
                }
                ConnectionEvent::Closed(reason) => {
                    let identity = self
                        .connection
                        .take()
                        .and_then(|connection| connection.identity().cloned());
                    self.events.push_back(Event::Closed {
                        peer,
                        reason,
                        identity,
                    });
                }
            }
        }
    }

    /// The next instant `handle_timeout` must be called at, if any.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.connection.as_ref().and_then(Connection::deadline)
    }

    /// Retransmits the flight if its timer expired.
    pub fn handle_timeout(&mut self, now: Duration) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let mut output = Output::default();
        connection.handle_timeout(now, &mut output);
        self.apply(output);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Encrypts `plaintext` as one application data record; `peer` must be the server.
    pub fn send(
        &mut self,
        _now: Duration,
        peer: SocketAddr,
        plaintext: &[u8],
    ) -> Result<(), Error> {
        let Some(Connection::Established(session)) = self.connection.as_mut() else {
            return Err(Error::NotConnected);
        };
        if peer != self.server {
            return Err(Error::NotConnected);
        }
        let payload = session.seal(plaintext)?;
        self.transmits.push_back(Transmit {
            destination: peer,
            payload,
        });
        Ok(())
    }

    /// Sends close_notify (if established) and ends the connection.
    pub fn close(&mut self, peer: SocketAddr) {
        if peer != self.server {
            return;
        }
        let Some(connection) = self.connection.take() else {
            return;
        };
        let identity = connection.identity().cloned();
        if let Connection::Established(mut session) = connection {
            let payload = session.alert(AlertLevel::Warning, AlertDescription::CloseNotify);
            self.transmits.push_back(Transmit {
                destination: peer,
                payload,
            });
        }
        self.events.push_back(Event::Closed {
            peer,
            reason: CloseReason::LocalClosed,
            identity,
        });
    }
}
