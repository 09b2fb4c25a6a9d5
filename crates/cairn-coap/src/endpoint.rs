//! The sans-IO CoAP endpoint: message layer (RFC 7252 §4), request/response matching (§5.3),
//! block-wise transfer (RFC 7959) and observe (RFC 7641), for both roles at once.
//!
//! Input: [`Endpoint::handle`] with `(now, peer, datagram)` and [`Endpoint::handle_timeout`].
//! Output: [`Endpoint::poll_transmit`], [`Endpoint::poll_event`] and [`Endpoint::poll_timeout`].
//! Time is a [`Duration`] since an origin the driver chooses; nothing here reads a clock.
//!
//! Server role: every request arrives as [`Event::Request`] (Block1 bodies already reassembled,
//! duplicates already answered from the cache) and is answered with [`Endpoint::respond`],
//! which picks a piggybacked, separate or non-confirmable response and slices Block2 bodies.
//! Client role: [`Endpoint::request`] sends a request (in Block1 blocks if large), retransmits,
//! fetches the remaining Block2 blocks of a response, and reports [`Event::Response`] once per
//! complete response or fresh notification.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use core::cmp::Reverse;
use core::hash::BuildHasher;

use hashbrown::HashTable;

use crate::dedup::{Chain, DedupQueue};
use crate::message::{Code, FormatError, Message, MessageType, MessageView, RawHeader, Token};
use crate::observe::{ObserveSequence, is_fresh};
use crate::option::{BlockValue, OptionNumber};
use crate::peer_table::{Addressed, PeerTable};
use crate::request_table::{ClientRequest, ObservationRecord, RequestTable};

/// Transmission parameters and resource limits (RFC 7252 §4.8 defaults).
#[derive(Clone, Debug)]
pub struct Config {
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR as a ratio (numerator, denominator); the default is 3/2.
    pub ack_random_factor: (u32, u32),
    pub max_retransmit: u32,
    /// Outstanding confirmable requests per peer (NSTART).
    pub nstart: usize,
    pub exchange_lifetime: Duration,
    /// How long a client waits for a response after its request was acknowledged or sent NON.
    pub response_timeout: Duration,
    /// How long the server waits for the application before acknowledging a CON request empty.
    pub piggyback_window: Duration,
    /// Confirmable notifications at least this often (RFC 7641 §4.5: 24 hours).
    pub observe_con_interval: Duration,
    /// Preferred block size (16..=1024) for Block1 and Block2.
    pub block_size: usize,
    /// Largest body reassembled from blocks, either role.
    pub max_body_size: usize,
    pub max_peers: usize,
    pub dedup_capacity_per_peer: usize,
    pub max_block1_transfers_per_peer: usize,
    pub max_observations_per_peer: usize,
    /// Block2 representations kept per peer so that later blocks match the first
    /// (and so that the blocks of a POST or PUT response can be fetched at all).
    pub max_representations_per_peer: usize,
    /// Bytes of such representations kept across all peers.
    pub max_representation_bytes: usize,
    pub max_queued_requests_per_peer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: (3, 2),
            max_retransmit: 4,
            nstart: 1,
            exchange_lifetime: Duration::from_secs(247),
            response_timeout: Duration::from_secs(93),
            piggyback_window: Duration::from_millis(1000),
            observe_con_interval: Duration::from_secs(24 * 3600),
            block_size: 1024,
            max_body_size: 1 << 20,
            max_peers: 100_000,
            dedup_capacity_per_peer: 64,
            max_block1_transfers_per_peer: 4,
            max_observations_per_peer: 64,
            max_representations_per_peer: 2,
            max_representation_bytes: 16 << 20,
            max_queued_requests_per_peer: 64,
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

/// A request received, awaiting [`Endpoint::respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(u64);

/// A request sent by [`Endpoint::request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The request's position in the endpoint's table: small, unique among the requests in
    /// progress and reused after them, so tables beside the endpoint's can be vectors
    /// indexed by it (keeping the whole id to tell a request from an earlier one).
    pub fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    /// Tells this request from the earlier ones at the same [`RequestId::index`].
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// An observation registered by a peer on this endpoint (server role).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservationId(u64);

/// Why a request of ours failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no acknowledgement after {0} retransmissions")]
    Timeout(u32),
    #[error("no response within the response timeout")]
    NoResponse,
    #[error("the peer answered with a Reset")]
    Reset,
    #[error("the response body exceeds the configured limit")]
    BodyTooLarge,
    #[error("the peer sent an inconsistent block-wise transfer")]
    BlockMismatch,
    #[error("request cancelled")]
    Cancelled,
    #[error("the secure session with the peer failed")]
    SessionFailed,
}

/// Errors of the endpoint's API (never of network input, which is answered or dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("no such exchange (already answered or expired)")]
    UnknownExchange,
    #[error("no such observation")]
    UnknownObservation,
    #[error("no such request")]
    UnknownRequest,
    #[error("the message code {0} is not a request method")]
    NotARequest(Code),
    #[error("the message code {0} is not a response code")]
    NotAResponse(Code),
    #[error("too many requests queued for this peer")]
    QueueFull,
    #[error("the peer table is full")]
    TooManyPeers,
    #[error("the body is larger than the configured limit")]
    BodyTooLarge,
}

/// Why an observation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservationEnd {
    /// The observer answered a notification with Reset.
    Reset,
    /// A confirmable notification was never acknowledged.
    Timeout,
    /// The observer deregistered (GET with Observe = 1) or re-registered.
    Deregistered,
    /// The security context the observer registered in is gone (see
    /// [`Endpoint::forget_peer`]).
    SessionEnded,
}

/// What the endpoint reports to the application.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A complete request; answer it with [`Endpoint::respond`].
    Request {
        id: ExchangeId,
        peer: SocketAddr,
        message: Message,
        observe: ObserveRequest,
    },
    /// A complete response, or a fresh notification of an observe request.
    Response {
        id: RequestId,
        peer: SocketAddr,
        message: Message,
    },
    /// A request of ours failed; no further events come for it.
    RequestFailed { id: RequestId, error: RequestError },
    /// A ping of ours was answered.
    Pong { id: RequestId },
    /// An observation of this endpoint's resources ended.
    ObservationEnded {
        id: ObservationId,
        peer: SocketAddr,
        reason: ObservationEnd,
    },
}

/// What a GET asked of observe (RFC 7641 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObserveRequest {
    None,
    Register,
    Deregister,
}

/// Why a datagram was dropped or rejected; returned by [`Endpoint::handle`] for diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Accepted,
    Duplicate,
    Rejected(FormatError),
    Ignored,
}

const EMPTY_ACK_LEN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Retransmit(SocketAddr, u16),
    ResponseTimeout(RequestId),
    Sweep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConPurpose {
    Request(RequestId),
    Ping(RequestId),
    SeparateResponse,
    Notification(ObservationId),
}

#[derive(Debug)]
struct OutgoingCon {
    message_id: u16,
    bytes: Vec<u8>,
    retransmissions: u32,
    timeout: Duration,
    deadline: Duration,
    purpose: ConPurpose,
}

#[derive(Debug)]
struct Block1Transfer {
    key: Vec<u8>,
    body: Vec<u8>,
    expires: Duration,
}

#[derive(Debug)]
struct Representation {
    key: u64,
    response: Message,
    expires: Duration,
}

/// What a peer holds while it is idle is kept small (a server holds one per device):
/// the rarely used collections sit in [`PeerExtra`], allocated when first needed, and its
/// duplicate-detection entries in the endpoint's [`DedupQueue`].
#[derive(Debug)]
struct Peer {
    address: SocketAddr,
    next_message_id: u16,
    /// Its entries in the duplicate-detection queue (see [`Chain`]).
    dedup_len: u16,
    dedup_last: u32,
    outgoing: Vec<OutgoingCon>,
    extra: Option<Box<PeerExtra>>,
}

impl Addressed for Peer {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn set_address(&mut self, address: SocketAddr) {
        self.address = address;
    }
}

#[derive(Debug, Default)]
struct PeerExtra {
    queued: VecDeque<RequestId>,
    block1: Vec<Block1Transfer>,
    representations: Vec<Representation>,
    observations: Vec<ObservationId>,
}

impl PeerExtra {
    const EMPTY: PeerExtra = PeerExtra {
        queued: VecDeque::new(),
        block1: Vec::new(),
        representations: Vec::new(),
        observations: Vec::new(),
    };

    fn is_empty(&self) -> bool {
        self.queued.is_empty()
            && self.block1.is_empty()
            && self.representations.is_empty()
            && self.observations.is_empty()
    }
}

impl Peer {
    fn new(address: SocketAddr, first_message_id: u16) -> Self {
        Peer {
            address,
            next_message_id: first_message_id,
            dedup_len: 0,
            dedup_last: Chain::EMPTY.last,
            outgoing: Vec::new(),
            extra: None,
        }
    }

    fn chain(&self) -> Chain {
        Chain {
            last: self.dedup_last,
            len: self.dedup_len,
        }
    }

    fn set_chain(&mut self, chain: Chain) {
        self.dedup_last = chain.last;
        self.dedup_len = chain.len;
    }

    /// Nothing left to keep: no duplicate-detection entry, exchange or other state.
    fn holds_nothing(&self) -> bool {
        self.dedup_len == 0 && self.outgoing.is_empty() && self.extra.is_none()
    }

    /// Holds state that eviction must not drop (exchanges, observations, transfers).
    fn is_busy(&self) -> bool {
        let extra = self.extra();
        !self.outgoing.is_empty()
            || !extra.queued.is_empty()
            || !extra.observations.is_empty()
            || !extra.block1.is_empty()
    }

    fn extra(&self) -> &PeerExtra {
        static EMPTY: PeerExtra = PeerExtra::EMPTY;
        self.extra.as_deref().unwrap_or(&EMPTY)
    }

    fn extra_mut(&mut self) -> &mut PeerExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Frees the extra collections once they are all empty.
    fn release_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    fn allocate_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = id.wrapping_add(1);
        id
    }

    fn in_flight_requests(&self) -> usize {
        self.outgoing
            .iter()
            .filter(|o| matches!(o.purpose, ConPurpose::Request(_) | ConPurpose::Ping(_)))
            .count()
    }
}

#[derive(Debug)]
struct ServerExchange {
    peer: SocketAddr,
    token: Token,
    request_type: MessageType,
    message_id: u16,
    acknowledged: bool,
    block2: Option<BlockValue>,
    block1_final: Option<BlockValue>,
    observe: ObserveRequest,
    /// Set for observe and Block1 requests only (the others never need it).
    path_key: Vec<u8>,
    representation_key: u64,
}

#[derive(Debug)]
struct Observation {
    peer: SocketAddr,
    token: Token,
    path_key: Vec<u8>,
    sequence: ObserveSequence,
    last_confirmable: Duration,
    last_message_id: u16,
}

/// The endpoint's hash maps: foldhash, seeded per map from the process's random state, so
/// keys a peer chooses (its address, its tokens) cannot be aimed at one bucket, at a
/// fraction of SipHash's cost on every datagram.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Room for server exchanges that a shrink of the map keeps.
const EXCHANGES_KEPT: usize = 1024;

/// A small deterministic generator for message IDs, tokens and jitter.
///
/// Seed it from the operating system: tokens are the only defence of unsecured CoAP against
/// off-path response spoofing (RFC 7252 §5.3.1).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A CoAP endpoint serving and requesting on one socket.
#[derive(Debug)]
pub struct Endpoint {
    config: Config,
    block_szx: u8,
    rng: SplitMix64,
    next_id: u64,
    /// Peers in a slab indexed by address.
    peers: PeerTable<Peer>,
    /// Duplicate detection for all peers, in arrival (and so expiry) order.
    dedup: DedupQueue,
    /// Where the next eviction looks when the oldest duplicate-detection entries belong to
    /// busy peers.
    eviction_hand: u32,
    timers: BinaryHeap<Reverse<(Duration, TimerKind)>>,
    /// Piggyback windows end in arrival order, so a queue serves them without a heap.
    piggyback_deadlines: VecDeque<(Duration, ExchangeId)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    exchanges: Map<ExchangeId, ServerExchange>,
    /// Our requests in progress; an established observation is a compact record there.
    requests: RequestTable,
    /// Requests by peer and token: the ids, hashed by `(peer, token)`; the key is the one in
    /// the request, not a second copy.
    tokens: HashTable<RequestId>,
    token_hasher: foldhash::fast::RandomState,
    observations: Map<ObservationId, Observation>,
    representation_bytes: usize,
    sweep_scheduled: bool,
}

impl Endpoint {
    /// A new endpoint; `seed` must come from a good random source.
    pub fn new(config: Config, seed: u64) -> Self {
        let block_szx = BlockValue::szx_for_size(config.block_size).unwrap_or(6);
        Endpoint {
            config,
            block_szx,
            rng: SplitMix64(seed),
            next_id: 1,
            peers: PeerTable::default(),
            dedup: DedupQueue::default(),
            eviction_hand: 0,
            timers: BinaryHeap::new(),
            piggyback_deadlines: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            exchanges: Map::default(),
            requests: RequestTable::default(),
            tokens: HashTable::new(),
            token_hasher: foldhash::fast::RandomState::default(),
            observations: Map::default(),
            representation_bytes: 0,
            sweep_scheduled: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of peers with state (dedup cache, exchanges, observations).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time at which [`Endpoint::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let timer = self.timers.peek().map(|Reverse((deadline, _))| *deadline);
        let piggyback = self
            .piggyback_deadlines
            .front()
            .map(|(deadline, _)| *deadline);
        match (timer, piggyback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The request sent to `peer` with `token`, if it is still waiting for responses.
    fn request_by_token(&self, peer: SocketAddr, token: Token) -> Option<RequestId> {
        let requests = &self.requests;
        self.tokens
            .find(self.token_hasher.hash_one((peer, token)), |id| {
                requests.peer_and_token(*id) == Some((peer, token))
            })
            .copied()
    }

    /// Indexes request `id` (already in `requests`) by its peer and token.
    fn index_token(&mut self, id: RequestId, peer: SocketAddr, token: Token) {
        let (requests, hasher) = (&self.requests, &self.token_hasher);
        let hash = hasher.hash_one((peer, token));
        self.tokens.insert_unique(hash, id, |id| {
            requests
                .peer_and_token(*id)
                .map_or(0, |key| hasher.hash_one(key))
        });
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn schedule(&mut self, deadline: Duration, kind: TimerKind) {
        self.timers.push(Reverse((deadline, kind)));
    }

    fn send(&mut self, destination: SocketAddr, payload: Vec<u8>) {
        self.transmits.push_back(Transmit {
            destination,
            payload,
        });
    }

    fn initial_timeout(&mut self) -> Duration {
        let (num, den) = self.config.ack_random_factor;
        let base = self.config.ack_timeout;
        let max = base * num / den.max(1);
        let spread = max.saturating_sub(base).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            self.rng.next() % spread
        };
        base + Duration::from_nanos(jitter)
    }

    fn peer_mut(&mut self, now: Duration, address: SocketAddr) -> Option<&mut Peer> {
        let position = match self.peers.position(&address) {
            Some(position) => position,
            None => {
                if self.peers.len() >= self.config.max_peers && !self.evict_a_peer() {
                    return None;
                }
                let first_message_id = self.rng.next() as u16;
                let position = self.peers.insert(Peer::new(address, first_message_id));
                if !self.sweep_scheduled {
                    self.sweep_scheduled = true;
                    let at = now + self.config.exchange_lifetime / 8;
                    self.schedule(at, TimerKind::Sweep);
                }
                position
            }
        };
        self.peers.at_mut(position)
    }

    /// Makes room for a new peer by dropping one that holds nothing but duplicate detection
    /// state (losing that only weakens deduplication for it): the peer of the oldest such
    /// state first, then the next ones of a hand going round the table. Looks at a bounded
    /// number of candidates, so a full table costs O(1) per new peer, not a scan.
    fn evict_a_peer(&mut self) -> bool {
        const CANDIDATES: usize = 16;
        let peers = &self.peers;
        let oldest = self
            .dedup
            .oldest_peers(CANDIDATES)
            .find(|&position| peers.at(position).is_some_and(|p| !p.is_busy()));
        if let Some(position) = oldest {
            self.remove_peer_at(position);
            return true;
        }
        let slots = self.peers.slot_count();
        if slots == 0 {
            return false;
        }
        for _ in 0..CANDIDATES {
            let position = self.eviction_hand % slots as u32;
            self.eviction_hand = position.wrapping_add(1);
            if self.peers.at(position).is_some_and(|p| !p.is_busy()) {
                self.remove_peer_at(position);
                return true;
            }
        }
        false
    }

    /// Forgets a peer and everything it holds.
    fn remove_peer_at(&mut self, position: u32) {
        if let Some(peer) = self.peers.remove_at(position) {
            self.dedup.forget(peer.chain());
            let freed: usize = peer
                .extra()
                .representations
                .iter()
                .map(|r| r.response.payload.len())
                .sum();
            self.representation_bytes = self.representation_bytes.saturating_sub(freed);
        }
    }

    /// Pops the duplicate-detection entries expired at `now`; a peer left holding nothing is
    /// dropped at once.
    fn expire_dedup(&mut self, now: Duration) {
        while let Some((position, next)) = self.dedup.pop_expired(now) {
            let Some(peer) = self.peers.at_mut(position) else {
                continue;
            };
            let mut chain = peer.chain();
            self.dedup.expired_oldest(&mut chain, next);
            peer.set_chain(chain);
            if peer.holds_nothing() {
                self.peers.remove_at(position);
            }
        }
        if self.dedup.needs_compaction() {
            let remap = self.dedup.compact();
            for position in 0..self.peers.slot_count() as u32 {
                if let Some(peer) = self.peers.at_mut(position) {
                    peer.set_chain(remap.chain(peer.chain()));
                }
            }
        }
    }

    /// The periodic sweep: expired duplicate-detection entries (the queue's front only),
    /// then one pass over the slab for expired Block1 transfers and representations and for
    /// peers that hold nothing any more.
    fn remove_idle_peers(&mut self, now: Duration) {
        self.expire_dedup(now);
        let mut freed = 0;
        for position in 0..self.peers.slot_count() as u32 {
            let Some(peer) = self.peers.at_mut(position) else {
                continue;
            };
            if let Some(extra) = peer.extra.as_mut() {
                extra.block1.retain(|t| t.expires > now);
                extra.representations.retain(|r| {
                    let keep = r.expires > now;
                    if !keep {
                        freed += r.response.payload.len();
                    }
                    keep
                });
            }
            peer.release_extra();
            if peer.outgoing.is_empty() && peer.outgoing.capacity() > 0 {
                peer.outgoing = Vec::new();
            }
            if peer.holds_nothing() {
                self.peers.remove_at(position);
            }
        }
        self.representation_bytes = self.representation_bytes.saturating_sub(freed);
        self.shrink_maps();
    }

    /// Gives back the room of the maps a burst left mostly empty (a hash map never shrinks on
    /// its own): after a registration storm, the idle fleet should cost what it holds.
    fn shrink_maps(&mut self) {
        fn shrink<K: Eq + core::hash::Hash, V>(map: &mut Map<K, V>) {
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to(map.len() * 2);
            }
        }
        self.peers.shrink();
        self.dedup.shrink();
        shrink(&mut self.exchanges);
        self.requests.shrink();
        if self.tokens.capacity() > 64 && self.tokens.len() < self.tokens.capacity() / 4 {
            let (requests, hasher) = (&self.requests, &self.token_hasher);
            self.tokens.shrink_to(self.tokens.len() * 2, |id| {
                requests
                    .peer_and_token(*id)
                    .map_or(0, |key| hasher.hash_one(key))
            });
        }
        shrink(&mut self.observations);
        fn shrink_queue<T>(queue: &mut VecDeque<T>) {
            if queue.capacity() > 64 && queue.len() < queue.capacity() / 4 {
                queue.shrink_to(queue.len() * 2);
            }
        }
        shrink_queue(&mut self.piggyback_deadlines);
        shrink_queue(&mut self.transmits);
        shrink_queue(&mut self.events);
        if self.timers.capacity() > 64 && self.timers.len() < self.timers.capacity() / 4 {
            self.timers.shrink_to(self.timers.len() * 2);
        }
    }

    // ----- input -----

    /// Processes one datagram from `peer`.
    pub fn handle(&mut self, now: Duration, peer: SocketAddr, datagram: &[u8]) -> Disposition {
        let Some(header) = RawHeader::read(datagram) else {
            return Disposition::Ignored;
        };
        let message = match MessageView::parse(datagram) {
            Ok(_) => match Message::decode(datagram) {
                Ok(message) => message,
                Err(error) => return Disposition::Rejected(error),
            },
            Err(error) => {
                // RFC 7252 §4.2: a malformed Confirmable message is rejected with a Reset;
                // §4.3: other malformed messages are silently ignored.
                if header.message_type == MessageType::Confirmable {
                    self.send_reset(peer, header.message_id);
                }
                return Disposition::Rejected(error);
            }
        };
        match (message.message_type, message.code) {
            (MessageType::Confirmable, Code::EMPTY) => {
                self.send_reset(peer, message.message_id);
                Disposition::Accepted
            }
            (MessageType::NonConfirmable, Code::EMPTY) => Disposition::Ignored,
            (MessageType::Acknowledgement, Code::EMPTY) => {
                self.handle_empty_ack(now, peer, message.message_id)
            }
            (MessageType::Reset, _) => self.handle_reset(now, peer, message.message_id),
            (_, code) if code.is_request() => self.handle_request(now, peer, message),
            (_, code) if code.is_response() => self.handle_response(now, peer, message),
            _ => {
                if message.message_type == MessageType::Confirmable {
                    self.send_reset(peer, message.message_id);
                }
                Disposition::Ignored
            }
        }
    }

    fn send_reset(&mut self, peer: SocketAddr, message_id: u16) {
        let reset = Message::new(MessageType::Reset, Code::EMPTY, message_id);
        self.send(peer, reset.to_bytes());
    }

    fn take_outgoing(&mut self, peer: SocketAddr, message_id: u16) -> Option<OutgoingCon> {
        let state = self.peers.get_mut(&peer)?;
        let index = state
            .outgoing
            .iter()
            .position(|o| o.message_id == message_id)?;
        let outgoing = state.outgoing.swap_remove(index);
        if state.outgoing.is_empty() {
            // Most peers have one exchange at a time: give the memory back between them.
            state.outgoing = Vec::new();
        }
        Some(outgoing)
    }

    fn handle_empty_ack(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        message_id: u16,
    ) -> Disposition {
        let Some(outgoing) = self.take_outgoing(peer, message_id) else {
            return Disposition::Ignored;
        };
        if let ConPurpose::Request(id) = outgoing.purpose {
            // A separate response follows (RFC 7252 §5.2.2).
            let deadline = now + self.config.response_timeout;
            self.schedule(deadline, TimerKind::ResponseTimeout(id));
            self.start_queued(now, peer);
        } else if let ConPurpose::Ping(id) = outgoing.purpose {
            self.requests.remove(id, self.block_szx);
            self.events.push_back(Event::Pong { id });
            self.start_queued(now, peer);
        }
        Disposition::Accepted
    }

    fn handle_reset(&mut self, now: Duration, peer: SocketAddr, message_id: u16) -> Disposition {
        if let Some(outgoing) = self.take_outgoing(peer, message_id) {
            match outgoing.purpose {
                ConPurpose::Request(id) => {
                    self.fail_request(id, RequestError::Reset);
                    self.start_queued(now, peer);
                }
                ConPurpose::Ping(id) => {
                    self.requests.remove(id, self.block_szx);
                    self.events.push_back(Event::Pong { id });
                    self.start_queued(now, peer);
                }
                ConPurpose::Notification(id) => self.end_observation(id, ObservationEnd::Reset),
                ConPurpose::SeparateResponse => {}
            }
            return Disposition::Accepted;
        }
        // A Reset may answer a non-confirmable notification (RFC 7641 §3.6).
        let observation = self.peers.get(&peer).and_then(|state| {
            state.extra().observations.iter().copied().find(|id| {
                self.observations
                    .get(id)
                    .is_some_and(|o| o.last_message_id == message_id)
            })
        });
        match observation {
            Some(id) => {
                self.end_observation(id, ObservationEnd::Reset);
                Disposition::Accepted
            }
            None => Disposition::Ignored,
        }
    }

    /// Looks `message_id` up in the duplicate cache; records it when new.
    /// Returns `true` for a duplicate (already answered from the cache).
    fn deduplicate(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        message: &Message,
    ) -> Result<bool, ()> {
        let lifetime = self.config.exchange_lifetime;
        let capacity =
            u16::try_from(self.config.dedup_capacity_per_peer.max(1)).unwrap_or(u16::MAX);
        self.expire_dedup(now);
        if self.peer_mut(now, peer).is_none() {
            return Err(());
        }
        let Some(position) = self.peers.position(&peer) else {
            return Err(());
        };
        let Some(state) = self.peers.at_mut(position) else {
            return Err(());
        };
        let mut chain = state.chain();
        let found = self.dedup.find_or_push(
            &mut chain,
            position,
            message.message_id,
            now + lifetime,
            capacity,
        );
        state.set_chain(chain);
        if let Some(reply) = found {
            if message.message_type == MessageType::Confirmable {
                if let Some(reply) = reply {
                    self.send(peer, reply);
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn cache_reply(&mut self, peer: SocketAddr, message_id: u16, reply: &[u8]) {
        if let Some(state) = self.peers.get(&peer) {
            self.dedup.set_reply(state.chain(), message_id, reply);
        }
    }

    /// Sends a response to a request that never reaches the application.
    fn reply_directly(&mut self, peer: SocketAddr, request: &Message, mut response: Message) {
        response.token = request.token;
        if request.message_type == MessageType::Confirmable {
            response.message_type = MessageType::Acknowledgement;
            response.message_id = request.message_id;
        } else {
            response.message_type = MessageType::NonConfirmable;
            response.message_id = self
                .peers
                .get_mut(&peer)
                .map(|p| p.allocate_message_id())
                .unwrap_or(0);
        }
        let bytes = response.to_bytes();
        self.cache_reply(peer, request.message_id, &bytes);
        self.send(peer, bytes);
    }

    fn handle_request(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        mut message: Message,
    ) -> Disposition {
        if message.message_type == MessageType::Acknowledgement {
            return Disposition::Ignored;
        }
        match self.deduplicate(now, peer, &message) {
            Ok(true) => return Disposition::Duplicate,
            Ok(false) => {}
            Err(()) => {
                // Peer table full: answer without keeping state rather than serve nobody new.
                let busy = Message::response(Code::SERVICE_UNAVAILABLE);
                self.reply_directly(peer, &message, busy);
                return Disposition::Accepted;
            }
        }
        if let Some(option) = message.unknown_critical_option() {
            let mut response = Message::response(Code::BAD_OPTION);
            response.payload = format!("unknown critical option {}", option.0).into_bytes();
            self.reply_directly(peer, &message, response);
            return Disposition::Accepted;
        }
        let observing = matches!(message.code, Code::GET | Code::FETCH)
            && message.options.contains(OptionNumber::OBSERVE);
        let path_key = if observing || message.options.contains(OptionNumber::BLOCK1) {
            let mut key = path_key(&message);
            if observing
                && message.code == Code::FETCH
                && !message.options.contains(OptionNumber::BLOCK1)
            {
                // A FETCH observation is identified by its body too (RFC 8132 §2.4): two
                // Observe-Composite requests for different paths are two observations.
                key.push(0);
                key.extend_from_slice(&message.payload);
            }
            key
        } else {
            Vec::new()
        };
        let representation_key = representation_key(&message);
        let requested_block2 = message
            .options
            .get(OptionNumber::BLOCK2)
            .map(BlockValue::decode);
        if let Some(Some(block)) = requested_block2.filter(|b| b.is_some_and(|b| b.num > 0)) {
            if let Some(mut response) = self.cached_representation(now, peer, representation_key) {
                let code = self.slice_block2(&mut response, Some(block)).err();
                self.reply_directly(peer, &message, code.map_or(response, Message::response));
                return Disposition::Accepted;
            }
            if !matches!(message.code, Code::GET | Code::FETCH) {
                self.reply_directly(
                    peer,
                    &message,
                    Message::response(Code::REQUEST_ENTITY_INCOMPLETE),
                );
                return Disposition::Accepted;
            }
        }
        let mut block1_final = None;
        if let Some(raw) = message.options.get(OptionNumber::BLOCK1) {
            let Some(block) = BlockValue::decode(raw) else {
                self.reply_directly(peer, &message, Message::response(Code::BAD_OPTION));
                return Disposition::Accepted;
            };
            match self.reassemble_block1(now, peer, &message, &path_key, block) {
                Block1Outcome::Continue(response) | Block1Outcome::Error(response) => {
                    self.reply_directly(peer, &message, response);
                    return Disposition::Accepted;
                }
                Block1Outcome::Complete(body) => {
                    message.payload = body;
                    block1_final = Some(block);
                }
            }
        }
        let block2 = match requested_block2 {
            Some(Some(block)) => Some(block),
            Some(None) => {
                self.reply_directly(peer, &message, Message::response(Code::BAD_OPTION));
                return Disposition::Accepted;
            }
            None => None,
        };
        let observe = match (message.code, message.observe()) {
            (Code::GET | Code::FETCH, Some(0)) => ObserveRequest::Register,
            (Code::GET | Code::FETCH, Some(1)) => ObserveRequest::Deregister,
            _ => ObserveRequest::None,
        };
        if observe != ObserveRequest::None {
            self.remove_observation_by_token(peer, message.token);
        }
        let id = ExchangeId(self.next_id());
        self.exchanges.insert(
            id,
            ServerExchange {
                peer,
                token: message.token,
                request_type: message.message_type,
                message_id: message.message_id,
                acknowledged: false,
                block2,
                block1_final,
                observe,
                path_key,
                representation_key,
            },
        );
        if message.message_type == MessageType::Confirmable {
            let at = now + self.config.piggyback_window;
            self.piggyback_deadlines.push_back((at, id));
        }
        self.events.push_back(Event::Request {
            id,
            peer,
            message,
            observe,
        });
        Disposition::Accepted
    }

    fn reassemble_block1(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        message: &Message,
        path_key: &[u8],
        block: BlockValue,
    ) -> Block1Outcome {
        let max_body = self.config.max_body_size;
        let max_transfers = self.config.max_block1_transfers_per_peer;
        let lifetime = self.config.exchange_lifetime;
        let preferred_szx = self.block_szx;
        let too_large = || {
            let mut response = Message::response(Code::REQUEST_ENTITY_TOO_LARGE);
            response
                .options
                .set_uint(OptionNumber::SIZE1, max_body as u32);
            Block1Outcome::Error(response)
        };
        if message
            .options
            .get_uint(OptionNumber::SIZE1)
            .is_some_and(|size| size as usize > max_body)
        {
            return too_large();
        }
        let Some(state) = self.peers.get_mut(&peer) else {
            return Block1Outcome::Error(Message::response(Code::SERVICE_UNAVAILABLE));
        };
        let state = state.extra_mut();
        state.block1.retain(|t| t.expires > now);
        let mut key = Vec::with_capacity(path_key.len() + 1);
        key.push(message.code.0);
        key.extend_from_slice(path_key);
        let existing = state.block1.iter().position(|t| t.key == key);
        let offset = block.offset();
        let index = match (existing, block.num) {
            (Some(index), 0) => {
                state.block1[index].body.clear();
                index
            }
            (Some(index), _) => index,
            (None, 0) => {
                if state.block1.len() >= max_transfers {
                    state.block1.remove(0);
                }
                state.block1.push(Block1Transfer {
                    key,
                    body: Vec::new(),
                    expires: now + lifetime,
                });
                state.block1.len() - 1
            }
            (None, _) => {
                return Block1Outcome::Error(Message::response(Code::REQUEST_ENTITY_INCOMPLETE));
            }
        };
        let transfer = &mut state.block1[index];
        if offset != transfer.body.len() || (block.more && message.payload.len() != block.size()) {
            state.block1.swap_remove(index);
            return Block1Outcome::Error(Message::response(Code::REQUEST_ENTITY_INCOMPLETE));
        }
        if transfer.body.len() + message.payload.len() > max_body {
            state.block1.swap_remove(index);
            return too_large();
        }
        transfer.body.extend_from_slice(&message.payload);
        transfer.expires = now + lifetime;
        if block.more {
            let mut response = Message::response(Code::CONTINUE);
            // Late negotiation (RFC 7959 §2.3): answer with our smaller size if we prefer one.
            let szx = block.szx.min(preferred_szx);
            let acknowledged = BlockValue {
                num: block.num,
                more: true,
                szx: block.szx,
            };
            let echoed = if szx < block.szx {
                BlockValue {
                    num: (acknowledged.offset() / (16 << szx)) as u32,
                    more: true,
                    szx,
                }
            } else {
                acknowledged
            };
            response
                .options
                .set_uint(OptionNumber::BLOCK1, echoed.to_uint());
            return Block1Outcome::Continue(response);
        }
        let transfer = state.block1.swap_remove(index);
        Block1Outcome::Complete(transfer.body)
    }

    fn handle_response(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        message: Message,
    ) -> Disposition {
        let Some(id) = self.request_by_token(peer, message.token) else {
            // A response nobody waits for: reject confirmable and non-confirmable ones
            // so that an observing server stops sending (RFC 7641 §3.6). A piggybacked one
            // still settles our confirmable message (e.g. a deregistration).
            if message.message_type == MessageType::Acknowledgement {
                self.take_outgoing(peer, message.message_id);
            } else {
                self.send_reset(peer, message.message_id);
            }
            return Disposition::Ignored;
        };
        match message.message_type {
            MessageType::Acknowledgement => {
                let matched = self.take_outgoing(peer, message.message_id);
                if !matches!(matched.map(|o| o.purpose), Some(ConPurpose::Request(r)) if r == id) {
                    return Disposition::Ignored;
                }
                self.start_queued(now, peer);
            }
            MessageType::Confirmable | MessageType::NonConfirmable => {
                match self.deduplicate(now, peer, &message) {
                    Ok(true) => return Disposition::Duplicate,
                    Ok(false) => {}
                    Err(()) => return Disposition::Ignored,
                }
                if message.message_type == MessageType::Confirmable {
                    let ack = Message::new(
                        MessageType::Acknowledgement,
                        Code::EMPTY,
                        message.message_id,
                    );
                    let bytes = ack.to_bytes();
                    self.cache_reply(peer, message.message_id, &bytes);
                    self.send(peer, bytes);
                }
                // A separate response also settles a request still being retransmitted.
                if let Some(state) = self.peers.get_mut(&peer) {
                    let before = state.outgoing.len();
                    state
                        .outgoing
                        .retain(|o| o.purpose != ConPurpose::Request(id));
                    if state.outgoing.len() != before {
                        self.start_queued(now, peer);
                    }
                }
            }
            MessageType::Reset => return Disposition::Ignored,
        }
        self.process_response(now, id, peer, message);
        Disposition::Accepted
    }

    fn process_response(
        &mut self,
        now: Duration,
        id: RequestId,
        peer: SocketAddr,
        mut message: Message,
    ) {
        let max_body = self.config.max_body_size;
        let block2 = message
            .options
            .get(OptionNumber::BLOCK2)
            .and_then(BlockValue::decode);
        let observe = message.observe();
        // An established observation: a notification in one message needs only its record.
        if let Some(record) = self.requests.observation_mut(id) {
            if let (Some(sequence), None, true) = (observe, block2, message.code.is_success()) {
                if let Some((last, at)) = record.last_notification() {
                    if !is_fresh(last, at, sequence, now) {
                        return;
                    }
                }
                record.set_last_notification(sequence, now);
                self.events.push_back(Event::Response { id, peer, message });
                return;
            }
        }
        let block_szx = self.block_szx;
        let Some(request) = self.requests.active_mut(id, block_szx) else {
            return;
        };
        // Block1: the server asks for the next block of our request body.
        if message.code == Code::CONTINUE && request.block1_offset < request.body.len() {
            let szx = match message
                .options
                .get(OptionNumber::BLOCK1)
                .and_then(BlockValue::decode)
            {
                Some(block) => block.szx.min(request.block1_szx),
                None => request.block1_szx,
            };
            request.block1_szx = szx;
            self.send_request_block(now, id);
            return;
        }
        if request.single_block {
            self.finish_request(id);
            self.events.push_back(Event::Response { id, peer, message });
            return;
        }
        if let Some(block) = block2 {
            if block.offset() != request.block2_body.len() {
                if block.num == 0 {
                    // A newer notification restarts the representation.
                    request.block2_body.clear();
                } else {
                    self.fail_request(id, RequestError::BlockMismatch);
                    return;
                }
            }
            if request.block2_body.len() + message.payload.len() > max_body {
                self.fail_request(id, RequestError::BodyTooLarge);
                return;
            }
            request.block2_body.extend_from_slice(&message.payload);
            if block.more {
                if block.num == 0 {
                    if let Some(sequence) = observe {
                        request.last_notification =
                            freshest(request.last_notification, sequence, now);
                    }
                }
                let next = BlockValue {
                    num: block.num + 1,
                    more: false,
                    szx: block.szx,
                };
                let Ok(mut template) = Message::decode(&request.template) else {
                    self.fail_request(id, RequestError::BlockMismatch);
                    return;
                };
                template
                    .options
                    .set_uint(OptionNumber::BLOCK2, next.to_uint());
                template.options.remove(OptionNumber::OBSERVE);
                template.payload.clear();
                request.template = template.to_bytes().into();
                self.send_request_block(now, id);
                return;
            }
            message.payload = core::mem::take(&mut request.block2_body);
            message.options.remove(OptionNumber::BLOCK2);
        }
        if request.observing && message.code.is_success() && (observe.is_some() || block2.is_some())
        {
            if let Some(sequence) = observe {
                if let Some((last, at)) = request.last_notification {
                    if !is_fresh(last, at, sequence, now) {
                        self.requests.compact(id);
                        return;
                    }
                }
                request.last_notification = Some((sequence, now));
            }
            self.requests.compact(id);
            self.events.push_back(Event::Response { id, peer, message });
            return;
        }
        self.finish_request(id);
        self.events.push_back(Event::Response { id, peer, message });
    }

    // ----- timers -----

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        while let Some(&(deadline, id)) = self.piggyback_deadlines.front() {
            if deadline > now {
                break;
            }
            self.piggyback_deadlines.pop_front();
            self.acknowledge_early(id);
        }
        while let Some(&Reverse((deadline, kind))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            match kind {
                TimerKind::Retransmit(peer, message_id) => {
                    self.retransmit(now, peer, message_id, deadline)
                }
                TimerKind::ResponseTimeout(id) => {
                    let waiting = self
                        .requests
                        .observing(id)
                        .is_some_and(|(observing, last)| !observing || last.is_none());
                    let acknowledged = self
                        .requests
                        .peer_and_token(id)
                        .and_then(|(peer, _)| self.peers.get(&peer))
                        .is_some_and(|p| {
                            !p.outgoing
                                .iter()
                                .any(|o| o.purpose == ConPurpose::Request(id))
                        });
                    if waiting && acknowledged {
                        self.fail_request(id, RequestError::NoResponse);
                    }
                }
                TimerKind::Sweep => {
                    self.remove_idle_peers(now);
                    self.sweep_scheduled = !self.peers.is_empty();
                    if self.sweep_scheduled {
                        let at = now + self.config.exchange_lifetime / 8;
                        self.schedule(at, TimerKind::Sweep);
                    }
                }
            }
        }
    }

    fn retransmit(&mut self, now: Duration, peer: SocketAddr, message_id: u16, deadline: Duration) {
        let max_retransmit = self.config.max_retransmit;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(index) = state
            .outgoing
            .iter()
            .position(|o| o.message_id == message_id && o.deadline == deadline)
        else {
            return;
        };
        let outgoing = &mut state.outgoing[index];
        if outgoing.retransmissions >= max_retransmit {
            let outgoing = state.outgoing.swap_remove(index);
            match outgoing.purpose {
                ConPurpose::Request(id) | ConPurpose::Ping(id) => {
                    self.fail_request(id, RequestError::Timeout(max_retransmit));
                    self.start_queued(now, peer);
                }
                ConPurpose::Notification(id) => self.end_observation(id, ObservationEnd::Timeout),
                ConPurpose::SeparateResponse => {}
            }
            return;
        }
        outgoing.retransmissions += 1;
        outgoing.timeout *= 2;
        outgoing.deadline = now + outgoing.timeout;
        let (bytes, next) = (outgoing.bytes.clone(), outgoing.deadline);
        self.send(peer, bytes);
        self.schedule(next, TimerKind::Retransmit(peer, message_id));
    }

    fn acknowledge_early(&mut self, id: ExchangeId) {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        if exchange.acknowledged || exchange.request_type != MessageType::Confirmable {
            return;
        }
        exchange.acknowledged = true;
        let (peer, message_id) = (exchange.peer, exchange.message_id);
        let ack = Message::new(MessageType::Acknowledgement, Code::EMPTY, message_id).to_bytes();
        debug_assert_eq!(ack.len(), EMPTY_ACK_LEN);
        self.cache_reply(peer, message_id, &ack);
        self.send(peer, ack);
    }

    // ----- server role -----

    /// Answers a request. Returns the observation established, if the request registered one
    /// and the response is a success.
    pub fn respond(
        &mut self,
        now: Duration,
        id: ExchangeId,
        mut response: Message,
    ) -> Result<Option<ObservationId>, EndpointError> {
        if !response.code.is_response() {
            return Err(EndpointError::NotAResponse(response.code));
        }
        let exchange = self
            .exchanges
            .remove(&id)
            .ok_or(EndpointError::UnknownExchange)?;
        // A registration storm leaves thousands of slots behind; the sweep would give them
        // back only much later. Room for a busy server's bursts stays: giving it back after
        // each one made every next burst grow the map again, entry by entry.
        if self.exchanges.capacity() > 4 * EXCHANGES_KEPT
            && self.exchanges.len() < self.exchanges.capacity() / 8
        {
            self.exchanges
                .shrink_to((self.exchanges.len() * 2).max(EXCHANGES_KEPT));
        }
        let peer = exchange.peer;
        response.token = exchange.token;
        if let Some(block) = exchange.block1_final {
            response.options.set_uint(
                OptionNumber::BLOCK1,
                BlockValue {
                    more: false,
                    ..block
                }
                .to_uint(),
            );
        }
        let mut observation = None;
        if exchange.observe == ObserveRequest::Register && response.code.is_success() {
            observation = self.register_observation(now, &exchange);
        }
        if let Some(obs) = observation.and_then(|id| self.observations.get_mut(&id)) {
            let sequence = obs.sequence.next_value();
            response.options.set_uint(OptionNumber::OBSERVE, sequence);
        } else {
            response.options.remove(OptionNumber::OBSERVE);
        }
        // A handler that cut its own block (a large resource served from shared memory) is
        // passed through: no copy of the whole representation is kept per peer.
        let sliced_by_handler = response.options.contains(OptionNumber::BLOCK2);
        if !sliced_by_handler
            && exchange.block2.is_none_or(|b| b.num == 0)
            && response.payload.len() > 16usize << self.block_szx
        {
            self.keep_representation(now, peer, exchange.representation_key, &mut response);
        }
        if !sliced_by_handler {
            if let Err(code) = self.slice_block2(&mut response, exchange.block2) {
                response = Message::response(code);
                response.token = exchange.token;
            }
        }
        let message_id = match (exchange.request_type, exchange.acknowledged) {
            (MessageType::Confirmable, false) => {
                response.message_type = MessageType::Acknowledgement;
                response.message_id = exchange.message_id;
                let bytes = response.to_bytes();
                self.cache_reply(peer, exchange.message_id, &bytes);
                self.send(peer, bytes);
                exchange.message_id
            }
            (MessageType::Confirmable, true) => self
                .send_confirmable(now, peer, response, ConPurpose::SeparateResponse)
                .unwrap_or(0),
            _ => {
                response.message_type = MessageType::NonConfirmable;
                response.message_id = self
                    .peers
                    .get_mut(&peer)
                    .map(|p| p.allocate_message_id())
                    .unwrap_or(0);
                self.send(peer, response.to_bytes());
                response.message_id
            }
        };
        if let Some(obs) = observation.and_then(|id| self.observations.get_mut(&id)) {
            obs.last_message_id = message_id;
            obs.last_confirmable = now;
        }
        Ok(observation)
    }

    /// Remembers a response too large for one block, tagged with an ETag, for the requests
    /// of its later blocks.
    fn keep_representation(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        key: u64,
        response: &mut Message,
    ) {
        if !response.options.contains(OptionNumber::ETAG) {
            response
                .options
                .set(OptionNumber::ETAG, etag(&response.payload).to_vec());
        }
        let size = response.payload.len();
        let per_peer = self.config.max_representations_per_peer;
        let lifetime = self.config.exchange_lifetime;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let state = state.extra_mut();
        let mut freed = 0;
        state.representations.retain(|r| {
            let keep = r.key != key && r.expires > now;
            if !keep {
                freed += r.response.payload.len();
            }
            keep
        });
        while !state.representations.is_empty() && state.representations.len() >= per_peer {
            freed += state.representations.remove(0).response.payload.len();
        }
        self.representation_bytes = self.representation_bytes.saturating_sub(freed);
        if per_peer == 0 || self.representation_bytes + size > self.config.max_representation_bytes
        {
            return;
        }
        self.representation_bytes += size;
        state.representations.push(Representation {
            key,
            response: response.clone(),
            expires: now + lifetime,
        });
    }

    fn cached_representation(&self, now: Duration, peer: SocketAddr, key: u64) -> Option<Message> {
        let state = self.peers.get(&peer)?;
        state
            .extra()
            .representations
            .iter()
            .find(|r| r.key == key && r.expires > now)
            .map(|r| r.response.clone())
    }

    /// Cuts a response body into the requested block (RFC 7959 §2.4), or into the first block
    /// when it does not fit one.
    fn slice_block2(
        &self,
        response: &mut Message,
        requested: Option<BlockValue>,
    ) -> Result<(), Code> {
        let szx = requested.map_or(self.block_szx, |b| b.szx.min(self.block_szx));
        let size = 16usize << szx;
        if requested.is_none() && response.payload.len() <= size {
            return Ok(());
        }
        let requested_offset = requested.map_or(0, BlockValue::offset);
        let num = (requested_offset / size) as u32;
        let offset = num as usize * size;
        let total = response.payload.len();
        if offset > total || (offset == total && total != 0) {
            return Err(Code::BAD_OPTION);
        }
        let end = (offset + size).min(total);
        let more = end < total;
        response.payload = response.payload[offset..end].to_vec();
        response.options.set_uint(
            OptionNumber::BLOCK2,
            BlockValue { num, more, szx }.to_uint(),
        );
        if num == 0 {
            response.options.set_uint(OptionNumber::SIZE2, total as u32);
        }
        Ok(())
    }

    fn register_observation(
        &mut self,
        now: Duration,
        exchange: &ServerExchange,
    ) -> Option<ObservationId> {
        let limit = self.config.max_observations_per_peer;
        let state = self.peers.get(&exchange.peer)?;
        if state.extra().observations.len() >= limit {
            return None;
        }
        let id = ObservationId(self.next_id());
        self.observations.insert(
            id,
            Observation {
                peer: exchange.peer,
                token: exchange.token,
                path_key: exchange.path_key.clone(),
                sequence: ObserveSequence::new(self.rng.next() as u32),
                last_confirmable: now,
                last_message_id: 0,
            },
        );
        self.peers
            .get_mut(&exchange.peer)?
            .extra_mut()
            .observations
            .push(id);
        Some(id)
    }

    fn remove_observation_by_token(&mut self, peer: SocketAddr, token: Token) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let found = state
            .extra()
            .observations
            .iter()
            .copied()
            .find(|id| self.observations.get(id).is_some_and(|o| o.token == token));
        if let Some(id) = found {
            self.end_observation(id, ObservationEnd::Deregistered);
        }
    }

    fn end_observation(&mut self, id: ObservationId, reason: ObservationEnd) {
        let Some(observation) = self.observations.remove(&id) else {
            return;
        };
        if let Some(state) = self.peers.get_mut(&observation.peer) {
            if let Some(extra) = state.extra.as_mut() {
                extra.observations.retain(|o| *o != id);
            }
            state.release_extra();
            state
                .outgoing
                .retain(|o| o.purpose != ConPurpose::Notification(id));
        }
        self.events.push_back(Event::ObservationEnded {
            id,
            peer: observation.peer,
            reason,
        });
    }

    /// The observations registered on a resource path (as in [`Message::uri_path`]).
    pub fn observers(&self, path: &str) -> Vec<ObservationId> {
        self.observers_by_key(path_key_of(path))
    }

    /// The observations registered by a FETCH on `path` with `body` (RFC 8132 §2.4).
    pub fn observers_of_fetch(&self, path: &str, body: &[u8]) -> Vec<ObservationId> {
        let mut key = path_key_of(path);
        key.push(0);
        key.extend_from_slice(body);
        self.observers_by_key(key)
    }

    fn observers_by_key(&self, key: Vec<u8>) -> Vec<ObservationId> {
        let mut ids: Vec<_> = self
            .observations
            .iter()
            .filter(|(_, o)| o.path_key == key)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Sends a notification (RFC 7641 §4.2). The message is confirmable if `response` says so,
    /// or if no confirmable notification went out within `observe_con_interval`.
    pub fn notify(
        &mut self,
        now: Duration,
        id: ObservationId,
        mut response: Message,
    ) -> Result<(), EndpointError> {
        if !response.code.is_response() {
            return Err(EndpointError::NotAResponse(response.code));
        }
        let interval = self.config.observe_con_interval;
        let observation = self
            .observations
            .get_mut(&id)
            .ok_or(EndpointError::UnknownObservation)?;
        let peer = observation.peer;
        response.token = observation.token;
        let success = response.code.is_success();
        if success {
            let sequence = observation.sequence.next_value();
            response.options.set_uint(OptionNumber::OBSERVE, sequence);
        } else {
            response.options.remove(OptionNumber::OBSERVE);
        }
        let confirmable = response.message_type == MessageType::Confirmable
            || now.saturating_sub(observation.last_confirmable) >= interval;
        if confirmable {
            observation.last_confirmable = now;
        }
        if self.slice_block2(&mut response, None).is_err() {
            return Err(EndpointError::BodyTooLarge);
        }
        // A newer state replaces a confirmable notification still being retransmitted
        // (RFC 7641 §4.5.2), keeping its retransmission count.
        let pending = self.peers.get_mut(&peer).and_then(|state| {
            let index = state
                .outgoing
                .iter()
                .position(|o| o.purpose == ConPurpose::Notification(id))?;
            Some(state.outgoing.swap_remove(index))
        });
        let message_id = if confirmable || pending.is_some() {
            response.message_type = MessageType::Confirmable;
            self.send_confirmable(now, peer, response, ConPurpose::Notification(id))
        } else {
            response.message_type = MessageType::NonConfirmable;
            let message_id = self
                .peers
                .get_mut(&peer)
                .map(|p| p.allocate_message_id())
                .unwrap_or(0);
            response.message_id = message_id;
            self.send(peer, response.to_bytes());
            Some(message_id)
        };
        if let (Some(pending), Some(message_id)) = (pending, message_id) {
            if let Some(outgoing) = self
                .peers
                .get_mut(&peer)
                .and_then(|s| s.outgoing.iter_mut().find(|o| o.message_id == message_id))
            {
                outgoing.retransmissions = pending.retransmissions;
            }
        }
        if let Some(observation) = self.observations.get_mut(&id) {
            observation.last_message_id = message_id.unwrap_or(0);
        }
        if !success {
            // A non-2.xx notification ends the observation (RFC 7641 §3.2).
            self.end_observation(id, ObservationEnd::Deregistered);
        }
        Ok(())
    }

    /// Sends `message` as a confirmable message with a fresh message ID and retransmits it.
    fn send_confirmable(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        mut message: Message,
        purpose: ConPurpose,
    ) -> Option<u16> {
        let timeout = self.initial_timeout();
        let state = self.peer_mut(now, peer)?;
        let message_id = state.allocate_message_id();
        message.message_id = message_id;
        message.message_type = MessageType::Confirmable;
        let bytes = message.to_bytes();
        let deadline = now + timeout;
        state.outgoing.push(OutgoingCon {
            message_id,
            bytes: bytes.clone(),
            retransmissions: 0,
            timeout,
            deadline,
            purpose,
        });
        self.send(peer, bytes);
        self.schedule(deadline, TimerKind::Retransmit(peer, message_id));
        Some(message_id)
    }

    // ----- client role -----

    /// Sends a request. A confirmable request waits for NSTART; a body larger than the block
    /// size goes in Block1 blocks. An Observe option of 0 keeps the request open for
    /// notifications until [`Endpoint::cancel`]. A request that carries a Block2 option asks
    /// for that one block: its response comes back as received (Block2, ETag and Size2
    /// included) and the caller fetches the next block when it is ready for it.
    pub fn request(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        mut message: Message,
    ) -> Result<RequestId, EndpointError> {
        if !message.code.is_request() {
            return Err(EndpointError::NotARequest(message.code));
        }
        if message.payload.len() > self.config.max_body_size {
            return Err(EndpointError::BodyTooLarge);
        }
        let queue_limit = self.config.max_queued_requests_per_peer;
        let nstart = self.config.nstart.max(1);
        let block_szx = self.block_szx;
        let token = loop {
            let token = Token::from_u64(self.rng.next());
            if self.request_by_token(peer, token).is_none() {
                break token;
            }
        };
        let state = self
            .peer_mut(now, peer)
            .ok_or(EndpointError::TooManyPeers)?;
        let must_wait = message.message_type == MessageType::Confirmable
            && (state.in_flight_requests() >= nstart || !state.extra().queued.is_empty());
        if must_wait && state.extra().queued.len() >= queue_limit {
            return Err(EndpointError::QueueFull);
        }
        message.token = token;
        let body = core::mem::take(&mut message.payload);
        let observing = message.observe() == Some(0);
        let single_block = !observing && message.options.get(OptionNumber::BLOCK2).is_some();
        let id = self.requests.insert(ClientRequest {
            peer,
            token,
            template: message.to_bytes().into(),
            body,
            block1_offset: 0,
            block1_szx: block_szx,
            block2_body: Vec::new(),
            single_block,
            observing,
            last_notification: None,
            sent: false,
        });
        self.index_token(id, peer, token);
        if must_wait {
            if let Some(state) = self.peers.get_mut(&peer) {
                state.extra_mut().queued.push_back(id);
            }
        } else {
            self.send_request_block(now, id);
        }
        Ok(id)
    }

    /// Sends a CoAP ping (an empty confirmable message); answered by [`Event::Pong`].
    pub fn ping(&mut self, now: Duration, peer: SocketAddr) -> Result<RequestId, EndpointError> {
        let ping = Message::new(MessageType::Confirmable, Code::EMPTY, 0);
        self.peer_mut(now, peer)
            .ok_or(EndpointError::TooManyPeers)?;
        let id = self.requests.insert(ClientRequest {
            peer,
            token: Token::EMPTY,
            template: ping.to_bytes().into(),
            body: Vec::new(),
            block1_offset: 0,
            block1_szx: self.block_szx,
            block2_body: Vec::new(),
            single_block: false,
            observing: false,
            last_notification: None,
            sent: true,
        });
        self.send_confirmable(now, peer, ping, ConPurpose::Ping(id));
        Ok(id)
    }

    /// Sends the next message of a request: the whole request, its next Block1 block, or a
    /// request for its next Block2 block.
    fn send_request_block(&mut self, now: Duration, id: RequestId) {
        let block_szx = self.block_szx;
        let Some(request) = self.requests.active_mut(id, block_szx) else {
            return;
        };
        let Ok(mut message) = Message::decode(&request.template) else {
            self.fail_request(id, RequestError::Cancelled);
            return;
        };
        let size = 16usize << request.block1_szx;
        let in_blocks = request.body.len() > size || request.block1_offset > 0;
        if in_blocks && request.block1_offset < request.body.len() {
            let offset = request.block1_offset;
            let end = (offset + size).min(request.body.len());
            let more = end < request.body.len();
            let block = BlockValue {
                num: (offset / size) as u32,
                more,
                szx: request.block1_szx,
            };
            message
                .options
                .set_uint(OptionNumber::BLOCK1, block.to_uint());
            if offset == 0 {
                message
                    .options
                    .set_uint(OptionNumber::SIZE1, request.body.len() as u32);
            }
            message.payload = request.body[offset..end].to_vec();
            request.block1_offset = end;
        } else if !request.sent {
            message.payload.clone_from(&request.body);
        }
        request.sent = true;
        let peer = request.peer;
        if message.message_type == MessageType::Confirmable {
            if self
                .send_confirmable(now, peer, message, ConPurpose::Request(id))
                .is_none()
            {
                self.fail_request(id, RequestError::Cancelled);
            }
        } else {
            let Some(state) = self.peer_mut(now, peer) else {
                self.fail_request(id, RequestError::Cancelled);
                return;
            };
            message.message_id = state.allocate_message_id();
            self.send(peer, message.to_bytes());
            let deadline = now + self.config.response_timeout;
            self.schedule(deadline, TimerKind::ResponseTimeout(id));
        }
    }

    fn start_queued(&mut self, now: Duration, peer: SocketAddr) {
        let nstart = self.config.nstart.max(1);
        while let Some(state) = self.peers.get_mut(&peer) {
            if state.in_flight_requests() >= nstart {
                return;
            }
            let Some(id) = state.extra.as_mut().and_then(|e| e.queued.pop_front()) else {
                return;
            };
            state.release_extra();
            if self.requests.contains(id) {
                self.send_request_block(now, id);
            }
        }
    }

    fn finish_request(&mut self, id: RequestId) -> Option<ClientRequest> {
        let request = self.requests.remove(id, self.block_szx)?;
        let hash = self.token_hasher.hash_one((request.peer, request.token));
        if let Ok(entry) = self.tokens.find_entry(hash, |other| *other == id) {
            entry.remove();
        }
        if let Some(state) = self.peers.get_mut(&request.peer) {
            state
                .outgoing
                .retain(|o| o.purpose != ConPurpose::Request(id));
            if let Some(extra) = state.extra.as_mut() {
                extra.queued.retain(|q| *q != id);
            }
            state.release_extra();
        }
        Some(request)
    }

    fn fail_request(&mut self, id: RequestId, error: RequestError) {
        if self.finish_request(id).is_some() {
            self.events.push_back(Event::RequestFailed { id, error });
        }
    }

    /// Fails every request of ours to `peer` at once, e.g. when the secure session to it
    /// could not be established, rather than letting each one time out.
    pub fn abort_requests(&mut self, peer: SocketAddr, error: RequestError) {
        for id in self.requests.ids_of_peer(peer) {
            self.fail_request(id, error);
        }
    }

    /// Forgets everything bound to `peer`'s security context (RFC 7252 §9.1), e.g. when a
    /// new DTLS session from its address authenticated another identity: every request of
    /// ours to it fails with `error` (observations of its resources included), observations
    /// it registered on our resources end ([`ObservationEnd::SessionEnded`]), its requests
    /// still waiting for [`Endpoint::respond`] are dropped (answering them returns
    /// [`EndpointError::UnknownExchange`] and sends nothing), and its duplicate-detection
    /// entries, cached replies, transfers and message IDs go. Nothing is sent.
    ///
    /// It scans the requests and exchanges in progress: meant for rare events, not for every
    /// datagram.
    pub fn forget_peer(&mut self, peer: SocketAddr, error: RequestError) {
        self.abort_requests(peer, error);
        let observations = self
            .peers
            .get(&peer)
            .map(|state| state.extra().observations.clone())
            .unwrap_or_default();
        for id in observations {
            self.end_observation(id, ObservationEnd::SessionEnded);
        }
        self.exchanges.retain(|_, exchange| exchange.peer != peer);
        // Its requests not polled yet are not served, and what was queued for it is not
        // sent (a new session at the address would carry it to another identity).
        let exchanges = &self.exchanges;
        self.events.retain(|event| match event {
            Event::Request { id, .. } => exchanges.contains_key(id),
            _ => true,
        });
        self.transmits
            .retain(|transmit| transmit.destination != peer);
        if let Some(position) = self.peers.position(&peer) {
            self.remove_peer_at(position);
        }
    }

    /// The peer at `old` now sends from `new`: a DTLS session that moved by its connection
    /// ID (RFC 9146 §6, a NAT that rebound the device's address). Everything bound to the
    /// peer follows it: requests of ours and their tokens (observations of its resources
    /// included), observations it registered on our resources, its requests waiting for
    /// [`Endpoint::respond`], retransmissions, duplicate detection, transfers and datagrams
    /// not yet polled. What `new` held before is forgotten, as [`Endpoint::forget_peer`]
    /// does. Nothing is sent.
    ///
    /// It scans the requests and exchanges in progress: meant for rare events.
    pub fn move_peer(&mut self, old: SocketAddr, new: SocketAddr) {
        if old == new {
            return;
        }
        self.forget_peer(new, RequestError::SessionFailed);
        for id in self.requests.ids_of_peer(old) {
            let Some((_, token)) = self.requests.peer_and_token(id) else {
                continue;
            };
            let hash = self.token_hasher.hash_one((old, token));
            // Pings are not in the token index.
            let indexed = match self.tokens.find_entry(hash, |other| *other == id) {
                Ok(entry) => {
                    entry.remove();
                    true
                }
                Err(_) => false,
            };
            self.requests.set_peer(id, new);
            if indexed {
                self.index_token(id, new, token);
            }
        }
        for exchange in self.exchanges.values_mut() {
            if exchange.peer == old {
                exchange.peer = new;
            }
        }
        if let Some(position) = self.peers.position(&old) {
            self.peers.rekey(position, new);
            let (observations, retransmissions) = match self.peers.at(position) {
                Some(state) => (
                    state.extra().observations.clone(),
                    state
                        .outgoing
                        .iter()
                        .map(|o| (o.deadline, o.message_id))
                        .collect::<Vec<_>>(),
                ),
                None => (Vec::new(), Vec::new()),
            };
            for id in observations {
                if let Some(observation) = self.observations.get_mut(&id) {
                    observation.peer = new;
                }
            }
            // The timers of `old` find no peer there any more.
            for (deadline, message_id) in retransmissions {
                self.schedule(deadline, TimerKind::Retransmit(new, message_id));
            }
        }
        for transmit in &mut self.transmits {
            if transmit.destination == old {
                transmit.destination = new;
            }
        }
        for event in &mut self.events {
            match event {
                Event::Request { peer, .. }
                | Event::Response { peer, .. }
                | Event::ObservationEnded { peer, .. }
                    if *peer == old =>
                {
                    *peer = new;
                }
                _ => {}
            }
        }
    }

    /// The token of a request of ours (to persist an observation).
    pub fn request_token(&self, id: RequestId) -> Option<Token> {
        self.requests.peer_and_token(id).map(|(_, token)| token)
    }

    /// Bytes that request `id` holds in the endpoint: its slot with what that owns on the
    /// heap, and its entry in the token index. For memory figures; `None` when it is over.
    pub fn request_bytes(&self, id: RequestId) -> Option<usize> {
        let index_entry = core::mem::size_of::<RequestId>() + 1;
        Some(self.requests.accounted_bytes(id)? + index_entry)
    }

    /// Takes over an observation established earlier (e.g. before a restart): notifications
    /// from `peer` with `token` are accepted as [`Event::Response`] of the returned request,
    /// which `template` describes (the original GET, for cancelling). Nothing is sent.
    pub fn resume_observation(
        &mut self,
        now: Duration,
        peer: SocketAddr,
        token: Token,
        mut template: Message,
    ) -> Result<RequestId, EndpointError> {
        if !template.code.is_request() {
            return Err(EndpointError::NotARequest(template.code));
        }
        self.peer_mut(now, peer)
            .ok_or(EndpointError::TooManyPeers)?;
        if let Some(previous) = self.request_by_token(peer, token) {
            self.finish_request(previous);
        }
        template.token = token;
        template.options.set_uint(OptionNumber::OBSERVE, 0);
        let id = self
            .requests
            .insert_observation(ObservationRecord::new(peer, template.to_bytes().into()));
        self.index_token(id, peer, token);
        Ok(id)
    }

    /// Stops a request. For an observation, `deregister` sends a GET with Observe = 1
    /// (RFC 7641 §3.6); otherwise later notifications are answered with Reset.
    pub fn cancel(
        &mut self,
        now: Duration,
        id: RequestId,
        deregister: bool,
    ) -> Result<(), EndpointError> {
        let request = self
            .finish_request(id)
            .ok_or(EndpointError::UnknownRequest)?;
        if deregister && request.observing {
            let Ok(mut message) = Message::decode(&request.template) else {
                return Ok(());
            };
            message.options.set_uint(OptionNumber::OBSERVE, 1);
            message.options.remove(OptionNumber::BLOCK2);
            message.token = request.token;
            let peer = request.peer;
            self.send_confirmable(now, peer, message, ConPurpose::SeparateResponse);
        }
        Ok(())
    }
}

enum Block1Outcome {
    Continue(Message),
    Error(Message),
    Complete(Vec<u8>),
}

fn freshest(
    last: Option<(u32, Duration)>,
    sequence: u32,
    now: Duration,
) -> Option<(u32, Duration)> {
    match last {
        Some((previous, at)) if !is_fresh(previous, at, sequence, now) => Some((previous, at)),
        _ => Some((sequence, now)),
    }
}

/// The Uri-Path options joined with `/`, the identity of a resource for observe and Block1.
fn path_key(message: &Message) -> Vec<u8> {
    let mut key = Vec::new();
    for segment in message.options.get_all(OptionNumber::URI_PATH) {
        key.push(b'/');
        key.extend_from_slice(segment);
    }
    if key.is_empty() {
        key.push(b'/');
    }
    key
}

/// The method, path and query of a request, hashed (64-bit FNV-1a): what identifies the
/// representation whose blocks a client fetches one by one. Computed for every request, so
/// it allocates nothing.
fn representation_key(message: &Message) -> u64 {
    let mut hash = fnv1a(0xcbf2_9ce4_8422_2325, &[message.code.0]);
    for (number, value) in message.options.iter() {
        let separator = match number {
            OptionNumber::URI_PATH => b'/',
            OptionNumber::URI_QUERY => b'?',
            _ => continue,
        };
        hash = fnv1a(fnv1a(hash, &[separator]), value);
    }
    hash
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An entity tag for a representation: 64-bit FNV-1a of the body.
fn etag(body: &[u8]) -> [u8; 8] {
    fnv1a(0xcbf2_9ce4_8422_2325, body).to_be_bytes()
}

fn path_key_of(path: &str) -> Vec<u8> {
    let mut key = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        key.push(b'/');
        key.extend_from_slice(segment.as_bytes());
    }
    if key.is_empty() {
        key.push(b'/');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server holds one peer per device and one request per observation: both stay small.
    #[test]
    fn per_device_records_are_compact() {
        assert!(
            core::mem::size_of::<Peer>() <= 72,
            "{}",
            core::mem::size_of::<Peer>()
        );
        assert!(
            core::mem::size_of::<ClientRequest>() <= 144,
            "{}",
            core::mem::size_of::<ClientRequest>()
        );
        let get = Message::new(MessageType::Confirmable, Code::GET, 1);
        let mut observe = get.clone();
        observe.options.set_uint(OptionNumber::OBSERVE, 0);
        for segment in ["3", "0", "9"] {
            observe
                .options
                .push(OptionNumber::URI_PATH, segment.as_bytes().to_vec());
        }
        // The encoded template an observation keeps.
        assert!(observe.to_bytes().len() <= 16);
    }

    #[test]
    fn peer_extra_is_allocated_on_demand_and_freed_when_empty() {
        let mut peer = Peer::new(SocketAddr::from(([127, 0, 0, 1], 5683)), 7);
        assert!(peer.extra.is_none());
        assert!(peer.extra().queued.is_empty());
        peer.extra_mut().observations.push(ObservationId(1));
        assert!(peer.extra.is_some());
        peer.release_extra();
        assert!(peer.extra.is_some());
        peer.extra_mut().observations.clear();
        peer.release_extra();
        assert!(peer.extra.is_none());
    }
}
