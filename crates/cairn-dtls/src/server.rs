//! The server endpoint: many peers on one socket (RFC 6347 §4.2.1 stateless cookie exchange,
//! RFC 9146 §6 peers found by connection ID, RFC 5246 §7.3 session resumption cache).
//!
//! No state is kept for a client before it returns a valid cookie: a ClientHello without one
//! is answered with a HelloVerifyRequest no larger than the ClientHello itself, computed from
//! the rotating secret in [`crate::cookie`]. Because nothing is buffered for an unverified
//! client, a ClientHello must arrive unfragmented (a PSK ClientHello is far below any MTU);
//! later messages may be fragmented.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use rand_core::CryptoRng;

use crate::Error;
use crate::cid::{ConnectionId, MAX_CID};
use crate::codec::Reader;
use crate::connection::{Connection, ConnectionEvent, Output};
use crate::cookie::CookieJar;
use crate::crypto::CipherSuite;
use crate::endpoint::{
    DEFAULT_MAX_HANDSHAKE_MESSAGE, DEFAULT_MAX_RETRANSMISSIONS, DEFAULT_MTU, Event, PskResolver,
    Transmit,
};
use crate::error::{AlertDescription, AlertLevel, CloseReason};
use crate::handshake::{Handshake, Limits, ResumableSession, ServerEnv};
use crate::message::{
    ClientHello, Fragment, HandshakeType, HelloVerifyRequest, put_fragment_header,
};
use crate::peers::PeerTable;
use crate::pki::ServerCertificateConfig;
use crate::reassembly::Message;
use crate::record::{self, ContentType, DTLS_1_0, Records};

/// Connection ID settings of a server (RFC 9146).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidConfig {
    /// Length of the CIDs issued, prefix included (1 to 32 bytes).
    pub length: usize,
    /// Fixed leading bytes (e.g. a node id for a load balancer); the rest is random.
    pub node_prefix: Vec<u8>,
}

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// Identity → key.
    pub psk_resolver: Arc<dyn PskResolver>,
    /// Sent in ServerKeyExchange when set (RFC 4279 §2).
    pub identity_hint: Option<Vec<u8>>,
    /// Suites in order of preference.
    pub cipher_suites: Vec<CipherSuite>,
    /// Connection IDs, when enabled.
    pub connection_id: Option<CidConfig>,
    /// Most peers (handshaking or established) at once.
    pub max_peers: usize,
    /// Largest handshake message reassembled.
    pub max_handshake_message: usize,
    /// Largest datagram written.
    pub mtu: usize,
    /// Retransmissions of one flight before the handshake fails.
    pub max_retransmissions: u8,
    /// Sessions kept for resumption (0 turns resumption off).
    pub session_cache_size: usize,
    /// Certificate mode (ECDHE-ECDSA suites), when set.
    pub certificate: Option<Arc<ServerCertificateConfig>>,
}

impl core::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("identity_hint", &self.identity_hint)
            .field("cipher_suites", &self.cipher_suites)
            .field("connection_id", &self.connection_id)
            .field("max_peers", &self.max_peers)
            .field("max_handshake_message", &self.max_handshake_message)
            .field("mtu", &self.mtu)
            .field("max_retransmissions", &self.max_retransmissions)
            .field("session_cache_size", &self.session_cache_size)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults: both PSK CCM suites (CCM-8 first), no hint, no CID, 100 000 peers.
    pub fn new(psk_resolver: Arc<dyn PskResolver>) -> Self {
        Self {
            psk_resolver,
            identity_hint: None,
            cipher_suites: CipherSuite::PSK.to_vec(),
            connection_id: None,
            max_peers: 100_000,
            max_handshake_message: DEFAULT_MAX_HANDSHAKE_MESSAGE,
            mtu: DEFAULT_MTU,
            max_retransmissions: DEFAULT_MAX_RETRANSMISSIONS,
            session_cache_size: 1024,
            certificate: None,
        }
    }

    /// A server in certificate mode only: the ECDHE-ECDSA suites (CCM-8 first), no PSK.
    /// Add PSK suites to `cipher_suites` and a `psk_resolver` to serve both modes.
    pub fn with_certificate(certificate: ServerCertificateConfig) -> Self {
        Self {
            cipher_suites: CipherSuite::ECDHE_ECDSA.to_vec(),
            certificate: Some(Arc::new(certificate)),
            ..Self::new(Arc::new(NoPsk))
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.cipher_suites.is_empty() {
            return Err(Error::Config {
                what: "no cipher suite",
            });
        }
        if self.certificate.is_none() && self.cipher_suites.iter().all(|s| s.is_ecdhe_ecdsa()) {
            return Err(Error::Config {
                what: "ECDHE-ECDSA suites without a certificate configuration",
            });
        }
        if let Some(cid) = &self.connection_id {
            if cid.length == 0 || cid.length > MAX_CID || cid.node_prefix.len() >= cid.length {
                return Err(Error::Config {
                    what: "CID length must be 1..=32 and longer than the node prefix",
                });
            }
        }
        if self.mtu < 256 {
            return Err(Error::Config {
                what: "MTU below 256",
            });
        }
        Ok(())
    }
}

/// The PSK resolver of a certificate-only server: knows no identity.
struct NoPsk;

impl PskResolver for NoPsk {
    fn key(&self, _identity: &[u8]) -> Option<crate::Psk> {
        None
    }
}

/// Sessions kept for resumption, oldest evicted first.
#[derive(Debug, Default)]
struct SessionCache {
    sessions: HashMap<Vec<u8>, ResumableSession>,
    order: VecDeque<Vec<u8>>,
}

impl SessionCache {
    fn insert(&mut self, session: ResumableSession, capacity: usize) {
        if capacity == 0 {
            return;
        }
        while self.sessions.len() >= capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.sessions.remove(&oldest);
        }
        self.order.push_back(session.session_id.clone());
        self.sessions.insert(session.session_id.clone(), session);
    }
}

impl SessionCache {
    fn forget_identity(&mut self, identity: &[u8]) {
        self.sessions
            .retain(|_, session| session.identity != identity);
        let sessions = &self.sessions;
        self.order.retain(|id| sessions.contains_key(id));
    }
}

/// Read-only facts about an established session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The peer's PSK identity.
    pub identity: Vec<u8>,
    /// The CID the peer puts on its records (empty without CID).
    pub connection_id: Vec<u8>,
}

/// A DTLS server for many peers on one socket.
pub struct ServerEndpoint {
    config: ServerConfig,
    rng: Box<dyn CryptoRng + Send>,
    cookies: CookieJar,
    peers: PeerTable,
    /// Handshaking peers and their retransmission deadlines, mirrored in `timers`.
    handshaking: HashMap<SocketAddr, Option<Duration>>,
    timers: BTreeSet<(Duration, SocketAddr)>,
    /// Peers by the CID they write: their positions in `peers`, hashed by CID; the CID itself
    /// is the one in the peer's connection, not a second copy.
    cids: HashTable<u32>,
    cid_hasher: std::collections::hash_map::RandomState,
    cache: SessionCache,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl core::fmt::Debug for ServerEndpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerEndpoint")
            .field("config", &self.config)
            .field("peers", &self.peers.len())
            .field("handshaking", &self.handshaking.len())
            .finish_non_exhaustive()
    }
}

impl ServerEndpoint {
    /// A server with `config`, drawing randomness from `rng`; `now` starts the cookie secret.
    pub fn new(
        config: ServerConfig,
        mut rng: Box<dyn CryptoRng + Send>,
        now: Duration,
    ) -> Result<Self, Error> {
        config.validate()?;
        let cookies = CookieJar::new(&mut *rng, now);
        Ok(Self {
            config,
            rng,
            cookies,
            peers: PeerTable::default(),
            handshaking: HashMap::new(),
            timers: BTreeSet::new(),
            cids: HashTable::new(),
            cid_hasher: std::collections::hash_map::RandomState::new(),
            cache: SessionCache::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    fn cid_hash(&self, cid: &ConnectionId) -> u64 {
        self.cid_hasher.hash_one(cid.as_bytes())
    }

    /// The address of the peer whose connection has `cid`.
    fn peer_of_cid(&self, cid: &ConnectionId) -> Option<SocketAddr> {
        let peers = &self.peers;
        let position = self.cids.find(self.cid_hash(cid), |&position| {
            peers
                .at(position)
                .is_some_and(|(_, c)| c.cid_in_bytes() == cid.as_bytes())
        })?;
        Some(peers.at(*position)?.0)
    }

    /// Indexes the connection at `peer` by its CID (it must be in `peers` already).
    fn index_cid(&mut self, cid: &ConnectionId, peer: SocketAddr) {
        let Some(position) = self.peers.position(&peer) else {
            return;
        };
        let hasher = &self.cid_hasher;
        let peers = &self.peers;
        let hash = self.cid_hash(cid);
        self.cids.insert_unique(hash, position, |&position| {
            let cid = peers
                .at(position)
                .map_or(&[][..], |(_, c)| c.cid_in_bytes());
            hasher.hash_one(cid)
        });
    }

    /// Removes the index entry of `cid` pointing at `peer` (still in `peers`), if any.
    fn unindex_cid(&mut self, cid: &ConnectionId, peer: SocketAddr) {
        let Some(position) = self.peers.position(&peer) else {
            return;
        };
        if let Ok(entry) = self
            .cids
            .find_entry(self.cid_hash(cid), |&other| other == position)
        {
            entry.remove();
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            mtu: self.config.mtu,
            max_retransmissions: self.config.max_retransmissions,
            max_handshake_message: self.config.max_handshake_message,
        }
    }

    fn cid_len(&self) -> usize {
        self.config
            .connection_id
            .as_ref()
            .map_or(0, |cid| cid.length)
    }

    /// Peers with a connection (handshaking or established).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Peers still in a handshake.
    pub fn handshake_count(&self) -> usize {
        self.handshaking.len()
    }

    /// Facts about the established session with `peer`.
    pub fn session(&self, peer: SocketAddr) -> Option<SessionInfo> {
        let session = self.peers.get(&peer)?.session()?;
        Some(SessionInfo {
            identity: session.identity().to_vec(),
            connection_id: session.cid_in().as_bytes().to_vec(),
        })
    }

    /// The PSK identity (or certificate identity) of the established session with `peer`.
    pub fn identity(&self, peer: SocketAddr) -> Option<Arc<[u8]>> {
        Some(self.peers.get(&peer)?.session()?.shared_identity().clone())
    }

    /// Bytes one application data record to `peer` adds to its plaintext (see
    /// [`crate::session::Session::record_overhead`]).
    pub fn record_overhead(&self, peer: SocketAddr) -> Option<usize> {
        Some(self.peers.get(&peer)?.session()?.record_overhead())
    }

    /// Bytes held per established session: the connection record itself plus its heap, its
    /// slot in the peer table and its index entries (for capacity planning; hash table slack
    /// is not counted).
    pub fn session_bytes(&self, peer: SocketAddr) -> Option<usize> {
        let connection = self.peers.get(&peer)?;
        let session = connection.session()?;
        let index_entry = core::mem::size_of::<u32>();
        let cid_entry = if session.cid_in().is_empty() {
            0
        } else {
            index_entry
        };
        Some(
            core::mem::size_of::<Option<(SocketAddr, Connection)>>()
                + index_entry
                + session.heap_bytes()
                + cid_entry,
        )
    }

    /// Drops the cached sessions of `identity` so that it cannot resume them, e.g. after its key
    /// was changed or revoked. Established sessions are not touched: `close` them as needed.
    pub fn forget_sessions_of(&mut self, identity: &[u8]) {
        self.cache.forget_identity(identity);
    }

    /// Handles a datagram from `from`.
    pub fn handle(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        self.cookies.rotate(&mut *self.rng, now);
        let cid_len = self.cid_len();
        if cid_len > 0 {
            if let Some(cid) = record::Record::peek_cid(datagram, cid_len) {
                let owner = ConnectionId::new(cid)
                    .ok()
                    .and_then(|cid| self.peer_of_cid(&cid));
                if let Some(owner) = owner {
                    self.drive(now, owner, from, datagram);
                }
                return;
            }
        }
        let hello_random = client_hello_random(datagram);
        match self.peers.get(&from) {
            // A ClientHello on an established session, or a new one (another random) during a
            // handshake, is a client that restarted: it goes through the cookie exchange and
            // replaces the old connection only with a valid cookie (RFC 6347 §4.2.8).
            Some(Connection::Established(_)) if hello_random.is_some() => {
                self.stateless(now, from, datagram);
            }
            Some(Connection::Handshaking(handshake))
                if hello_random.is_some_and(|random| random != *handshake.client_random()) =>
            {
                self.stateless(now, from, datagram);
            }
            Some(_) => self.drive(now, from, from, datagram),
            None => self.stateless(now, from, datagram),
        }
    }

    fn stateless(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        let Some(record) = Records::new(datagram, 0).next() else {
            return;
        };
        if record.epoch != 0 || record.content_type != ContentType::Handshake {
            return;
        }
        let Ok(fragment) = Fragment::parse(&mut Reader::new(record.fragment)) else {
            return;
        };
        if fragment.msg_type != HandshakeType::ClientHello || !fragment.is_complete() {
            return;
        }
        let Ok(hello) = ClientHello::parse(fragment.body) else {
            return;
        };
        if hello.cookie.is_empty() || !self.cookies.verify(from, &hello) {
            self.send_hello_verify_request(from, &hello, record.sequence, datagram.len());
            return;
        }
        if !self.peers.contains_key(&from) && self.peers.len() >= self.config.max_peers {
            return;
        }
        let message = Message {
            msg_type: fragment.msg_type,
            message_seq: fragment.message_seq,
            body: fragment.body.to_vec(),
        };
        self.start_handshake(now, from, &hello, &message, record.sequence);
    }

    fn send_hello_verify_request(
        &mut self,
        to: SocketAddr,
        hello: &ClientHello,
        record_seq: u64,
        request_len: usize,
    ) {
        let request = HelloVerifyRequest {
            version: DTLS_1_0,
            cookie: self.cookies.issue(to, hello).to_vec(),
        };
        let mut body = Vec::new();
        request.encode(&mut body);
        let mut fragment = Vec::new();
        put_fragment_header(
            &mut fragment,
            HandshakeType::HelloVerifyRequest,
            body.len(),
            0,
            0,
            body.len(),
        );
        fragment.extend_from_slice(&body);
        let mut payload = Vec::new();
        // RFC 6347 §4.2.1: the record sequence number of the ClientHello is reused.
        record::write_plaintext(
            &mut payload,
            ContentType::Handshake,
            DTLS_1_0,
            record_seq,
            &fragment,
        );
        if payload.len() <= request_len {
            self.transmits.push_back(Transmit {
                destination: to,
                payload,
            });
        }
    }

    fn new_cid(&mut self) -> Option<ConnectionId> {
        let config = self.config.connection_id.as_ref()?;
        for _ in 0..8 {
            let mut bytes = [0u8; MAX_CID];
            let (prefix, random) = bytes[..config.length].split_at_mut(config.node_prefix.len());
            prefix.copy_from_slice(&config.node_prefix);
            self.rng.fill_bytes(random);
            let cid = ConnectionId::new(&bytes[..config.length]).ok()?;
            if self.peer_of_cid(&cid).is_none() {
                return Some(cid);
            }
        }
        None
    }

    fn start_handshake(
        &mut self,
        now: Duration,
        from: SocketAddr,
        hello: &ClientHello,
        message: &Message,
        record_seq: u64,
    ) {
        let cid = if hello.extensions.connection_id.is_some() {
            self.new_cid()
        } else {
            None
        };
        let env = ServerEnv {
            resolver: &*self.config.psk_resolver,
            identity_hint: self.config.identity_hint.as_deref(),
            suites: &self.config.cipher_suites,
            cid,
            resumable: self.cache.sessions.get(&hello.session_id).cloned(),
            issue_session_id: self.config.session_cache_size > 0,
            certificate: self.config.certificate.clone(),
        };
        let limits = self.limits();
        match Handshake::server_start(now, limits, &mut *self.rng, &env, message, record_seq) {
            Ok(mut handshake) => {
                if self.peers.contains_key(&from) {
                    self.remove(from, CloseReason::NewHandshake);
                }
                for payload in handshake.take_outgoing() {
                    self.transmits.push_back(Transmit {
                        destination: from,
                        payload,
                    });
                }
                self.peers
                    .insert(from, Connection::Handshaking(Box::new(handshake)));
                if let Some(cid) = cid {
                    self.index_cid(&cid, from);
                }
                self.sync_timer(from);
            }
            Err(error) => {
                let description = error.alert().unwrap_or(AlertDescription::HandshakeFailure);
                let mut payload = Vec::new();
                record::write_plaintext(
                    &mut payload,
                    ContentType::Alert,
                    record::DTLS_1_2,
                    record_seq,
                    &[AlertLevel::Fatal.to_u8(), description.to_u8()],
                );
                self.transmits.push_back(Transmit {
                    destination: from,
                    payload,
                });
            }
        }
    }

    fn remove(&mut self, peer: SocketAddr, reason: CloseReason) {
        let cid = self.peers.get(&peer).map(Connection::cid_in);
        if let Some(cid) = cid.filter(|cid| !cid.is_empty()) {
            self.unindex_cid(&cid, peer);
        }
        if let Some(connection) = self.peers.remove(&peer) {
            self.sync_timer(peer);
            let identity = connection.identity().cloned();
            self.events.push_back(Event::Closed {
                peer,
                reason,
                identity,
            });
        }
    }

    /// Brings `handshaking` and `timers` in line with the peer's connection.
    fn sync_timer(&mut self, peer: SocketAddr) {
        if let Some(Some(old)) = self.handshaking.remove(&peer) {
            self.timers.remove(&(old, peer));
        }
        if let Some(Connection::Handshaking(handshake)) = self.peers.get(&peer) {
            let deadline = handshake.deadline();
            self.handshaking.insert(peer, deadline);
            if let Some(deadline) = deadline {
                self.timers.insert((deadline, peer));
            }
        }
    }

    fn drive(&mut self, now: Duration, addr: SocketAddr, from: SocketAddr, datagram: &[u8]) {
        let cid_len = self.cid_len();
        let resolver = Arc::clone(&self.config.psk_resolver);
        let Some(connection) = self.peers.get_mut(&addr) else {
            return;
        };
        let mut output = Output::default();
        connection.handle_datagram(now, datagram, cid_len, Some(&*resolver), &mut output);
        let mut peer = addr;
        if from != addr && output.newest_authentic_cid_record {
            peer = self.move_peer(addr, from);
        }
        self.apply(peer, output);
    }

    fn move_peer(&mut self, old: SocketAddr, new: SocketAddr) -> SocketAddr {
        if self.peers.contains_key(&new) {
            self.remove(new, CloseReason::NewHandshake);
        }
        // The connection keeps its position in the table, which the CID index refers to.
        if !self.peers.rekey(&old, new) {
            return old;
        }
        self.events.push_back(Event::PeerMoved { old, new });
        new
    }

    fn apply(&mut self, peer: SocketAddr, output: Output) {
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
                    if let Some(session) = resumable {
                        self.cache.insert(session, self.config.session_cache_size);
                    }
                    self.events.push_back(Event::Connected {
                        peer,
                        identity,
                        resumed,
                    });
                }
                ConnectionEvent::ApplicationData(data) => {
                    self.events.push_back(Event::ApplicationData { peer, data });
                }
                ConnectionEvent::Closed(reason) => self.remove(peer, reason),
            }
        }
        if self.peers.get(&peer).is_some_and(Connection::is_closed) {
            self.remove(peer, CloseReason::LocalClosed);
        }
        self.sync_timer(peer);
    }

    /// The next instant `handle_timeout` must be called at, if any.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.first().map(|(deadline, _)| *deadline)
    }

    /// Retransmits flights whose timers expired and ends handshakes that ran out of them.
    pub fn handle_timeout(&mut self, now: Duration) {
        let due: Vec<SocketAddr> = self
            .timers
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, peer)| *peer)
            .collect();
        for peer in due {
            let Some(connection) = self.peers.get_mut(&peer) else {
                continue;
            };
            let mut output = Output::default();
            connection.handle_timeout(now, &mut output);
            self.apply(peer, output);
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Encrypts `plaintext` as one application data record to `peer`.
    pub fn send(
        &mut self,
        _now: Duration,
        peer: SocketAddr,
        plaintext: &[u8],
    ) -> Result<(), Error> {
        let Some(Connection::Established(session)) = self.peers.get_mut(&peer) else {
            return Err(Error::NotConnected);
        };
        let payload = session.seal(plaintext)?;
        self.transmits.push_back(Transmit {
            destination: peer,
            payload,
        });
        Ok(())
    }

    /// Sends close_notify to `peer` (if established) and forgets it.
    pub fn close(&mut self, peer: SocketAddr) {
        if let Some(Connection::Established(session)) = self.peers.get_mut(&peer) {
            let payload = session.alert(AlertLevel::Warning, AlertDescription::CloseNotify);
            self.transmits.push_back(Transmit {
                destination: peer,
                payload,
            });
        }
        self.remove(peer, CloseReason::LocalClosed);
    }
}

/// The client random of a ClientHello starting the datagram in epoch 0.
fn client_hello_random(datagram: &[u8]) -> Option<[u8; 32]> {
    let record = Records::new(datagram, 0).next()?;
    if record.epoch != 0 || record.content_type != ContentType::Handshake {
        return None;
    }
    let fragment = Fragment::parse(&mut Reader::new(record.fragment)).ok()?;
    if fragment.msg_type != HandshakeType::ClientHello || fragment.offset != 0 {
        return None;
    }
    fragment.body.get(2..34)?.try_into().ok()
}
