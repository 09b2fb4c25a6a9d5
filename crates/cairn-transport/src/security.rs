//! The security layer between the socket and the CoAP endpoint: nothing (`coap://`), or a
//! DTLS 1.2 server or client (`coaps://`, RFC 7252 §9.1) from `cairn-dtls`.
//!
//! Datagrams from the socket go through [`Layer::receive`], which hands decrypted CoAP
//! messages to the endpoint; CoAP transmits go through [`Layer::send`], which encrypts them
//! (a client queues them while it connects).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_coap::{Endpoint, RequestError, Transmit};
use cairn_dtls::{ClientConfig, ClientEndpoint, Event as DtlsEvent, ServerConfig, ServerEndpoint};
use rand::SeedableRng;

/// CoAP messages a DTLS client holds while its handshake runs.
const MAX_PENDING: usize = 256;
/// Addresses whose closed DTLS session's identity a server remembers (see [`ClosedSessions`]).
const MAX_CLOSED_SESSIONS: usize = 4096;

/// How a socket's datagrams are protected.
#[derive(Clone, Default)]
pub enum Security {
    /// Plain CoAP over UDP.
    #[default]
    NoSec,
    /// A DTLS server for every peer of the socket.
    DtlsServer(ServerConfig),
    /// A DTLS client of one server.
    DtlsClient {
        config: ClientConfig,
        server: SocketAddr,
    },
}

/// What the DTLS layer reports to the driver: the peers that moved since the driver last
/// looked, and the servers whose session a client lost. (A peer's identity lives in its DTLS
/// session, see [`Layer::identity`].)
#[derive(Default)]
pub(crate) struct Identities {
    pub(crate) moved: Vec<(SocketAddr, SocketAddr)>,
    /// Servers whose session a client lost: requests to them fail at once.
    pub(crate) failed: Vec<SocketAddr>,
}

pub(crate) enum Layer {
    Plain,
    Server(Box<ServerSide>),
    Client(Box<ClientSide>),
}

pub(crate) struct ServerSide {
    endpoint: ServerEndpoint,
    closed: ClosedSessions,
}

/// The identities of DTLS sessions a server lost, by address, until the next session from
/// that address is established.
///
/// CoAP state is keyed by address, but its exchanges belong to the security context they
/// ran in (RFC 7252 §9.1): when the next session from the address authenticates another
/// identity (a new device behind the same NAT port), the CoAP endpoint forgets the address
/// before any of the new session's data is handled, so that a request meant for the old
/// device is neither retransmitted to the new one nor matched with its answers. The same
/// identity coming back (a device re-handshaking) keeps its CoAP state, observations
/// included. Entries are bounded: the oldest is dropped, and its address forgotten by CoAP,
/// when the table is full.
#[derive(Default)]
struct ClosedSessions {
    /// Address → (insertion number, identity of its last authenticated session).
    identities: HashMap<SocketAddr, (u64, Arc<[u8]>)>,
    /// Insertion order; entries superseded or taken since are skipped.
    order: VecDeque<(u64, SocketAddr)>,
    next: u64,
}

impl ClosedSessions {
    /// Remembers the identity of the session `peer` lost.
    fn insert(&mut self, peer: SocketAddr, identity: Arc<[u8]>, coap: &mut Endpoint) {
        let number = self.next;
        self.next += 1;
        self.identities.insert(peer, (number, identity));
        self.order.push_back((number, peer));
        while self.identities.len() > MAX_CLOSED_SESSIONS {
            let Some((number, oldest)) = self.order.pop_front() else {
                break;
            };
            if self
                .identities
                .get(&oldest)
                .is_some_and(|(n, _)| *n == number)
            {
                self.identities.remove(&oldest);
                coap.forget_peer(oldest, RequestError::SessionFailed);
            }
        }
        if self.order.len() > 2 * MAX_CLOSED_SESSIONS {
            let identities = &self.identities;
            self.order
                .retain(|(number, peer)| identities.get(peer).is_some_and(|(n, _)| n == number));
        }
    }

    /// A session with `identity` was established at `peer`: the CoAP state of the address
    /// goes unless its previous session had the same identity.
    fn established(&mut self, peer: SocketAddr, identity: &[u8], coap: &mut Endpoint) {
        let Some((_, previous)) = self.identities.remove(&peer) else {
            return;
        };
        if *previous != *identity {
            tracing::debug!(%peer, "a DTLS session of another identity: CoAP state of the address dropped");
            coap.forget_peer(peer, RequestError::SessionFailed);
        }
        if self.identities.is_empty() {
            self.order.clear();
        }
    }
}

pub(crate) struct ClientSide {
    endpoint: ClientEndpoint,
    server: SocketAddr,
    /// The identity of the session with the server, while it is up.
    identity: Option<Arc<[u8]>>,
    pending: VecDeque<Vec<u8>>,
    connecting: bool,
}

fn rng() -> Box<rand::rngs::StdRng> {
    Box::new(rand::rngs::StdRng::from_os_rng())
}

impl Layer {
    pub(crate) fn new(security: Security, now: Duration) -> io::Result<Layer> {
        let invalid =
            |e: cairn_dtls::Error| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        Ok(match security {
            Security::NoSec => Layer::Plain,
            Security::DtlsServer(config) => Layer::Server(Box::new(ServerSide {
                endpoint: ServerEndpoint::new(config, rng(), now).map_err(invalid)?,
                closed: ClosedSessions::default(),
            })),
            Security::DtlsClient { config, server } => Layer::Client(Box::new(ClientSide {
                endpoint: ClientEndpoint::new(config, rng(), server).map_err(invalid)?,
                server,
                identity: None,
                pending: VecDeque::new(),
                connecting: false,
            })),
        })
    }

    /// Processes one datagram from the socket.
    pub(crate) fn receive(
        &mut self,
        now: Duration,
        from: SocketAddr,
        datagram: &[u8],
        coap: &mut Endpoint,
        identities: &mut Identities,
        outbox: &mut Vec<Transmit>,
    ) {
        match self {
            Layer::Plain => {
                coap.handle(now, from, datagram);
            }
            Layer::Server(server) => {
                server.endpoint.handle(now, from, datagram);
                self.drain(now, coap, identities, outbox);
            }
            Layer::Client(client) => {
                client.endpoint.handle(now, from, datagram);
                self.drain(now, coap, identities, outbox);
            }
        }
    }

    /// The authenticated identity of `peer`'s DTLS session, if it has one.
    pub(crate) fn identity(&self, peer: SocketAddr) -> Option<Arc<[u8]>> {
        match self {
            Layer::Plain => None,
            Layer::Server(server) => server.endpoint.identity(peer),
            Layer::Client(client) if peer == client.server => client.identity.clone(),
            Layer::Client(_) => None,
        }
    }

    /// Protects and queues one CoAP datagram.
    pub(crate) fn send(&mut self, now: Duration, transmit: Transmit, outbox: &mut Vec<Transmit>) {
        match self {
            Layer::Plain => outbox.push(transmit),
            Layer::Server(server) => {
                let server = &mut server.endpoint;
                if let Err(error) = server.send(now, transmit.destination, &transmit.payload) {
                    tracing::debug!(%error, peer = %transmit.destination, "no DTLS session for a CoAP message");
                }
                outbox.extend(std::iter::from_fn(|| server.poll_transmit()).map(convert));
            }
            Layer::Client(client) => {
                if transmit.destination != client.server {
                    tracing::debug!(peer = %transmit.destination, "a DTLS client talks to its server only");
                    return;
                }
                if client.endpoint.is_connected() {
                    if let Err(error) = client.endpoint.send(now, client.server, &transmit.payload)
                    {
                        tracing::debug!(%error, "DTLS send failed");
                    }
                } else {
                    if client.pending.len() < MAX_PENDING {
                        client.pending.push_back(transmit.payload);
                    }
                    if !client.connecting {
                        client.connecting = client.endpoint.connect(now).is_ok();
                    }
                }
                outbox.extend(std::iter::from_fn(|| client.endpoint.poll_transmit()).map(convert));
            }
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Duration> {
        match self {
            Layer::Plain => None,
            Layer::Server(server) => server.endpoint.poll_timeout(),
            Layer::Client(client) => client.endpoint.poll_timeout(),
        }
    }

    pub(crate) fn handle_timeout(
        &mut self,
        now: Duration,
        coap: &mut Endpoint,
        identities: &mut Identities,
        outbox: &mut Vec<Transmit>,
    ) {
        match self {
            Layer::Plain => return,
            Layer::Server(server) => server.endpoint.handle_timeout(now),
            Layer::Client(client) => client.endpoint.handle_timeout(now),
        }
        self.drain(now, coap, identities, outbox);
    }

    /// Hands decrypted data to CoAP, tracks identities and queues DTLS datagrams.
    fn drain(
        &mut self,
        now: Duration,
        coap: &mut Endpoint,
        identities: &mut Identities,
        outbox: &mut Vec<Transmit>,
    ) {
        loop {
            let event = match self {
                Layer::Plain => None,
                Layer::Server(server) => server.endpoint.poll_event(),
                Layer::Client(client) => client.endpoint.poll_event(),
            };
            let Some(event) = event else {
                break;
            };
            match event {
                DtlsEvent::ApplicationData { peer, data } => {
                    coap.handle(now, peer, &data);
                }
                DtlsEvent::Connected {
                    peer,
                    identity,
                    resumed,
                } => {
                    tracing::debug!(%peer, resumed, "DTLS session established");
                    if let Layer::Server(server) = self {
                        server.closed.established(peer, &identity, coap);
                    }
                    if let Layer::Client(client) = self {
                        client.identity = Some(identity.into());
                        client.connecting = false;
                        while let Some(payload) = client.pending.pop_front() {
                            if let Err(error) = client.endpoint.send(now, client.server, &payload) {
                                tracing::debug!(%error, "DTLS send failed");
                            }
                        }
                    }
                }
                DtlsEvent::Closed {
                    peer,
                    reason,
                    identity,
                } => {
                    tracing::debug!(%peer, ?reason, "DTLS session closed");
                    // A session that never authenticated leaves the last identity in place.
                    if let (Layer::Server(server), Some(identity)) = (&mut *self, identity) {
                        server.closed.insert(peer, identity, coap);
                    }
                    if let Layer::Client(client) = self {
                        client.identity = None;
                        client.connecting = false;
                        client.pending.clear();
                        identities.failed.push(peer);
                    }
                }
                DtlsEvent::PeerMoved { old, new } => {
                    tracing::debug!(%old, %new, "DTLS peer moved");
                    // A session moving (by its CID) onto an address replaces the one there.
                    if let Layer::Server(server) = self {
                        if let Some(identity) = server.endpoint.identity(new) {
                            server.closed.established(new, &identity, coap);
                        }
                    }
                    // CoAP state follows the session, before its data (queued after this
                    // event) reaches CoAP from the new address.
                    coap.move_peer(old, new);
                    identities.moved.push((old, new));
                }
            }
        }
        match self {
            Layer::Plain => {}
            Layer::Server(server) => {
                outbox.extend(std::iter::from_fn(|| server.endpoint.poll_transmit()).map(convert))
            }
            Layer::Client(client) => {
                outbox.extend(std::iter::from_fn(|| client.endpoint.poll_transmit()).map(convert))
            }
        }
    }
}

fn convert(transmit: cairn_dtls::Transmit) -> Transmit {
    Transmit {
        destination: transmit.destination,
        payload: transmit.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_coap::{Code, Config, Event, Message};

    fn address(n: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 5684))
    }

    fn pending_request(coap: &mut Endpoint, peer: SocketAddr) -> cairn_coap::RequestId {
        coap.request(Duration::ZERO, peer, Message::request(Code::GET))
            .unwrap()
    }

    fn failed(coap: &mut Endpoint) -> Vec<(cairn_coap::RequestId, RequestError)> {
        std::iter::from_fn(|| coap.poll_event())
            .filter_map(|event| match event {
                Event::RequestFailed { id, error } => Some((id, error)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn another_identity_drops_the_state_and_the_same_one_keeps_it() {
        let mut coap = Endpoint::new(Config::default(), 1);
        let mut closed = ClosedSessions::default();
        let (same, other) = (address(1), address(2));
        let kept = pending_request(&mut coap, same);
        let dropped = pending_request(&mut coap, other);
        closed.insert(same, Arc::from(&b"a"[..]), &mut coap);
        closed.insert(other, Arc::from(&b"a"[..]), &mut coap);
        closed.established(same, b"a", &mut coap);
        closed.established(other, b"b", &mut coap);
        assert_eq!(failed(&mut coap), [(dropped, RequestError::SessionFailed)]);
        assert!(coap.request_token(kept).is_some());
        assert!(closed.identities.is_empty() && closed.order.is_empty());
        // A session with no closed predecessor changes nothing.
        closed.established(same, b"b", &mut coap);
        assert!(failed(&mut coap).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_an_evicted_address_is_forgotten() {
        let mut coap = Endpoint::new(Config::default(), 1);
        let mut closed = ClosedSessions::default();
        let oldest = pending_request(&mut coap, address(0));
        let identity: Arc<[u8]> = Arc::from(&b"a"[..]);
        for n in 0..=MAX_CLOSED_SESSIONS {
            closed.insert(address(n), identity.clone(), &mut coap);
        }
        assert_eq!(closed.identities.len(), MAX_CLOSED_SESSIONS);
        assert!(!closed.identities.contains_key(&address(0)));
        assert_eq!(failed(&mut coap), [(oldest, RequestError::SessionFailed)]);
        // Closes and reconnects of the same addresses do not grow the order queue.
        for round in 0..3 {
            for n in 0..MAX_CLOSED_SESSIONS {
                closed.insert(address(n), identity.clone(), &mut coap);
                if round > 0 {
                    closed.established(address(n), b"a", &mut coap);
                }
            }
        }
        assert!(closed.order.len() <= 2 * MAX_CLOSED_SESSIONS + 1);
        assert!(failed(&mut coap).is_empty());
    }
}
