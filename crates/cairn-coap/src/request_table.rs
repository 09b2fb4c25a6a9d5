//! The client role's requests in progress (RFC 7252 §5.3, RFC 7641 §3), in a slab.
//!
//! A server keeps one observation per device for as long as the device is registered, so an
//! established observation between notifications is kept as a compact
//! [`ObservationRecord`] inside its slot: peer, token, the encoded request (for the later
//! blocks of a notification and for deregistering) and the last notification's sequence
//! number and time. Only while a request is being sent, answered or reassembled does it hold
//! a boxed [`ClientRequest`] with its body and block-wise state. A [`RequestId`] is the slot
//! index and a generation, so the table needs no hash map and a stale id finds nothing.

use std::net::{SocketAddr, SocketAddrV6};
use std::time::Duration;

use crate::endpoint::RequestId;
use crate::message::Token;

/// A request of ours while it is sent, answered, or its response reassembled.
#[derive(Debug)]
pub(crate) struct ClientRequest {
    pub(crate) peer: SocketAddr,
    pub(crate) token: Token,
    /// The request without its body, encoded (a fraction of a decoded message's size).
    pub(crate) template: Box<[u8]>,
    pub(crate) body: Vec<u8>,
    pub(crate) block1_offset: usize,
    pub(crate) block1_szx: u8,
    pub(crate) block2_body: Vec<u8>,
    /// The caller asked for one Block2 block itself: the response is delivered as it
    /// came, Block2 option included, and the endpoint does not fetch the next block.
    pub(crate) single_block: bool,
    pub(crate) observing: bool,
    pub(crate) last_notification: Option<(u32, Duration)>,
    pub(crate) sent: bool,
}

impl ClientRequest {
    /// Nothing is being sent or reassembled: all that is left is waiting for notifications.
    fn is_idle_observation(&self) -> bool {
        self.observing
            && self.sent
            && !self.single_block
            && self.block2_body.is_empty()
            && self.block1_offset >= self.body.len()
    }
}

/// Encoded requests up to this size are kept inside the record (an LwM2M Observe of a
/// resource with an 8-byte token and an Accept option takes about 20 bytes).
const INLINE_TEMPLATE: usize = 22;

/// An encoded request, inline when short.
#[derive(Debug)]
enum Template {
    Inline {
        len: u8,
        bytes: [u8; INLINE_TEMPLATE],
    },
    Boxed(Box<[u8]>),
}

impl Template {
    fn new(encoded: Box<[u8]>) -> Self {
        if encoded.len() <= INLINE_TEMPLATE {
            let mut bytes = [0; INLINE_TEMPLATE];
            bytes[..encoded.len()].copy_from_slice(&encoded);
            Template::Inline {
                len: encoded.len() as u8,
                bytes,
            }
        } else {
            Template::Boxed(encoded)
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Template::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Template::Boxed(bytes) => bytes,
        }
    }

    fn into_boxed(self) -> Box<[u8]> {
        match self {
            Template::Inline { .. } => self.as_bytes().into(),
            Template::Boxed(bytes) => bytes,
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Template::Inline { .. } => 0,
            Template::Boxed(bytes) => bytes.len(),
        }
    }
}

/// A peer address in 8 bytes when it is IPv4 (a `SocketAddr` takes 32).
#[derive(Debug)]
enum CompactAddr {
    V4 { ip: [u8; 4], port: u16 },
    V6(Box<SocketAddrV6>),
}

impl CompactAddr {
    fn new(address: SocketAddr) -> Self {
        match address {
            SocketAddr::V4(v4) => CompactAddr::V4 {
                ip: v4.ip().octets(),
                port: v4.port(),
            },
            SocketAddr::V6(v6) => CompactAddr::V6(Box::new(v6)),
        }
    }

    fn get(&self) -> SocketAddr {
        match self {
            CompactAddr::V4 { ip, port } => SocketAddr::from((*ip, *port)),
            CompactAddr::V6(v6) => SocketAddr::V6(**v6),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            CompactAddr::V4 { .. } => 0,
            CompactAddr::V6(_) => core::mem::size_of::<SocketAddrV6>(),
        }
    }
}

/// No notification yet, in [`ObservationRecord::last_at`].
const NEVER: u64 = u64::MAX;

/// An established observation between notifications. Its token is the one in its encoded
/// request.
#[derive(Debug)]
pub(crate) struct ObservationRecord {
    peer: CompactAddr,
    template: Template,
    last_sequence: u32,
    /// When the last fresh notification came, in nanoseconds; [`NEVER`] before the first.
    last_at: u64,
}

impl ObservationRecord {
    /// `template` is the request encoded with its token.
    pub(crate) fn new(peer: SocketAddr, template: Box<[u8]>) -> Self {
        ObservationRecord {
            peer: CompactAddr::new(peer),
            template: Template::new(template),
            last_sequence: 0,
            last_at: NEVER,
        }
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer.get()
    }

    /// The token, read from the encoded request (RFC 7252 §3: after the 4-byte header,
    /// as long as the header's TKL says).
    pub(crate) fn token(&self) -> Token {
        let bytes = self.template.as_bytes();
        let length = usize::from(bytes.first().map_or(0, |b| b & 0x0f));
        bytes
            .get(4..4 + length)
            .and_then(Token::new)
            .unwrap_or(Token::EMPTY)
    }

    pub(crate) fn last_notification(&self) -> Option<(u32, Duration)> {
        (self.last_at != NEVER).then(|| (self.last_sequence, Duration::from_nanos(self.last_at)))
    }

    pub(crate) fn set_last_notification(&mut self, sequence: u32, at: Duration) {
        self.last_sequence = sequence;
        self.last_at = u64::try_from(at.as_nanos())
            .unwrap_or(NEVER - 1)
            .min(NEVER - 1);
    }

    fn from_request(request: ClientRequest) -> Self {
        let mut record = ObservationRecord::new(request.peer, request.template);
        if let Some((sequence, at)) = request.last_notification {
            record.set_last_notification(sequence, at);
        }
        record
    }

    fn into_request(self, block1_szx: u8) -> ClientRequest {
        ClientRequest {
            peer: self.peer(),
            token: self.token(),
            last_notification: self.last_notification(),
            template: self.template.into_boxed(),
            body: Vec::new(),
            block1_offset: 0,
            block1_szx,
            block2_body: Vec::new(),
            single_block: false,
            observing: true,
            sent: true,
        }
    }
}

#[derive(Debug)]
enum Entry {
    Vacant { next_free: u32 },
    Active(Box<ClientRequest>),
    Observing(ObservationRecord),
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    entry: Entry,
}

/// No free slot, in [`RequestTable::free`] and [`Entry::Vacant`].
const NO_SLOT: u32 = u32::MAX;

/// The requests in progress, by [`RequestId`].
#[derive(Debug)]
pub(crate) struct RequestTable {
    slots: Vec<Slot>,
    /// The first vacant slot; each vacant slot names the next.
    free: u32,
    len: usize,
    next_generation: u32,
}

impl Default for RequestTable {
    fn default() -> Self {
        RequestTable {
            slots: Vec::new(),
            free: NO_SLOT,
            len: 0,
            next_generation: 0,
        }
    }
}

fn split(id: RequestId) -> (usize, u32) {
    ((id.0 & 0xffff_ffff) as usize, (id.0 >> 32) as u32)
}

impl RequestTable {
    fn slot(&self, id: RequestId) -> Option<&Entry> {
        let (index, generation) = split(id);
        self.slots
            .get(index)
            .filter(|slot| slot.generation == generation)
            .map(|slot| &slot.entry)
            .filter(|entry| !matches!(entry, Entry::Vacant { .. }))
    }

    fn slot_mut(&mut self, id: RequestId) -> Option<&mut Entry> {
        let (index, generation) = split(id);
        self.slots
            .get_mut(index)
            .filter(|slot| slot.generation == generation)
            .map(|slot| &mut slot.entry)
            .filter(|entry| !matches!(entry, Entry::Vacant { .. }))
    }

    fn insert_entry(&mut self, entry: Entry) -> RequestId {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let index = if self.free == NO_SLOT {
            self.slots.push(Slot { generation, entry });
            self.slots.len() - 1
        } else {
            let index = self.free as usize;
            let slot = &mut self.slots[index];
            if let Entry::Vacant { next_free } = slot.entry {
                self.free = next_free;
            }
            *slot = Slot { generation, entry };
            index
        };
        self.len += 1;
        RequestId((u64::from(generation) << 32) | index as u64)
    }

    /// Adds a request; ids are never reused before 2³² more requests.
    pub(crate) fn insert(&mut self, request: ClientRequest) -> RequestId {
        self.insert_entry(Entry::Active(Box::new(request)))
    }

    /// Adds an established observation (one taken over after a restart).
    pub(crate) fn insert_observation(&mut self, record: ObservationRecord) -> RequestId {
        self.insert_entry(Entry::Observing(record))
    }

    pub(crate) fn contains(&self, id: RequestId) -> bool {
        self.slot(id).is_some()
    }

    pub(crate) fn peer_and_token(&self, id: RequestId) -> Option<(SocketAddr, Token)> {
        match self.slot(id)? {
            Entry::Active(request) => Some((request.peer, request.token)),
            Entry::Observing(record) => Some((record.peer(), record.token())),
            Entry::Vacant { .. } => None,
        }
    }

    /// Points the request at `peer` (its peer moved to that address).
    pub(crate) fn set_peer(&mut self, id: RequestId, peer: SocketAddr) {
        match self.slot_mut(id) {
            Some(Entry::Active(request)) => request.peer = peer,
            Some(Entry::Observing(record)) => record.peer = CompactAddr::new(peer),
            _ => {}
        }
    }

    /// Whether the request observes, and its last notification.
    pub(crate) fn observing(&self, id: RequestId) -> Option<(bool, Option<(u32, Duration)>)> {
        match self.slot(id)? {
            Entry::Active(request) => Some((request.observing, request.last_notification)),
            Entry::Observing(record) => Some((true, record.last_notification())),
            Entry::Vacant { .. } => None,
        }
    }

    /// The record of an established observation between notifications.
    pub(crate) fn observation_mut(&mut self, id: RequestId) -> Option<&mut ObservationRecord> {
        match self.slot_mut(id)? {
            Entry::Observing(record) => Some(record),
            _ => None,
        }
    }

    /// The request in full, restoring an idle observation's block-wise state (a notification
    /// in blocks is coming, or the request must be sent again).
    pub(crate) fn active_mut(
        &mut self,
        id: RequestId,
        block1_szx: u8,
    ) -> Option<&mut ClientRequest> {
        let entry = self.slot_mut(id)?;
        if let Entry::Observing(_) = entry {
            let Entry::Observing(record) =
                core::mem::replace(entry, Entry::Vacant { next_free: NO_SLOT })
            else {
                return None;
            };
            *entry = Entry::Active(Box::new(record.into_request(block1_szx)));
        }
        match entry {
            Entry::Active(request) => Some(request),
            _ => None,
        }
    }

    /// Keeps an observation that waits for nothing but notifications as a compact record.
    pub(crate) fn compact(&mut self, id: RequestId) {
        let Some(entry) = self.slot_mut(id) else {
            return;
        };
        if !matches!(entry, Entry::Active(request) if request.is_idle_observation()) {
            return;
        }
        if let Entry::Active(request) =
            core::mem::replace(entry, Entry::Vacant { next_free: NO_SLOT })
        {
            *entry = Entry::Observing(ObservationRecord::from_request(*request));
        }
    }

    /// Removes a request; an idle observation comes back in full.
    pub(crate) fn remove(&mut self, id: RequestId, block1_szx: u8) -> Option<ClientRequest> {
        self.slot(id)?;
        let (index, _) = split(id);
        let entry = core::mem::replace(
            &mut self.slots[index].entry,
            Entry::Vacant {
                next_free: self.free,
            },
        );
        self.free = index as u32;
        self.len -= 1;
        match entry {
            Entry::Active(request) => Some(*request),
            Entry::Observing(record) => Some(record.into_request(block1_szx)),
            Entry::Vacant { .. } => None,
        }
    }

    /// The ids of the requests to `peer`.
    pub(crate) fn ids_of_peer(&self, peer: SocketAddr) -> Vec<RequestId> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let to = match &slot.entry {
                    Entry::Active(request) => request.peer,
                    Entry::Observing(record) => record.peer(),
                    Entry::Vacant { .. } => return None,
                };
                (to == peer).then(|| RequestId((u64::from(slot.generation) << 32) | index as u64))
            })
            .collect()
    }

    /// Gives back the room a burst of requests left: the vacant slots at the end go, and the
    /// others are chained again.
    pub(crate) fn shrink(&mut self) {
        if self.slots.capacity() <= 64 || self.len >= self.slots.capacity() / 4 {
            return;
        }
        while matches!(
            self.slots.last(),
            Some(Slot {
                entry: Entry::Vacant { .. },
                ..
            })
        ) {
            self.slots.pop();
        }
        self.free = NO_SLOT;
        for (index, slot) in self.slots.iter_mut().enumerate().rev() {
            if let Entry::Vacant { next_free } = &mut slot.entry {
                *next_free = self.free;
                self.free = index as u32;
            }
        }
        self.slots.shrink_to(self.slots.len() * 2);
    }

    /// What request `id` holds: its slot and what the slot owns on the heap.
    pub(crate) fn accounted_bytes(&self, id: RequestId) -> Option<usize> {
        let heap = match self.slot(id)? {
            Entry::Active(request) => {
                core::mem::size_of::<ClientRequest>()
                    + request.template.len()
                    + request.body.capacity()
                    + request.block2_body.capacity()
            }
            Entry::Observing(record) => record.template.heap_bytes() + record.peer.heap_bytes(),
            Entry::Vacant { .. } => 0,
        };
        Some(core::mem::size_of::<Slot>() + heap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GET with an 8-byte token, encoded.
    fn template(token: u64) -> Box<[u8]> {
        let mut bytes = vec![0x48, 1, 0, 0];
        bytes.extend_from_slice(&token.to_be_bytes());
        bytes.into_boxed_slice()
    }

    fn request(peer: SocketAddr, token: u64) -> ClientRequest {
        ClientRequest {
            peer,
            token: Token::from_u64(token),
            template: template(token),
            body: Vec::new(),
            block1_offset: 0,
            block1_szx: 6,
            block2_body: Vec::new(),
            single_block: false,
            observing: true,
            last_notification: Some((7, Duration::from_secs(3))),
            sent: true,
        }
    }

    #[test]
    fn an_idle_observation_is_a_small_slot() {
        assert!(
            core::mem::size_of::<Slot>() <= 64,
            "{}",
            core::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn ids_are_not_reused_and_slots_are() {
        let peer: SocketAddr = "127.0.0.1:5683".parse().unwrap();
        let mut table = RequestTable::default();
        let first = table.insert(request(peer, 1));
        assert!(table.remove(first, 6).is_some());
        assert!(table.remove(first, 6).is_none());
        let second = table.insert(request(peer, 2));
        assert_ne!(first, second);
        assert_eq!(split(first).0, split(second).0, "the slot is reused");
        assert!(!table.contains(first));
        assert_eq!(
            table.peer_and_token(second),
            Some((peer, Token::from_u64(2)))
        );
        assert_eq!(table.len, 1);
    }

    #[test]
    fn compacting_keeps_what_an_observation_needs() {
        let peer: SocketAddr = "[::1]:5683".parse().unwrap();
        let mut table = RequestTable::default();
        let id = table.insert(request(peer, 9));
        table.compact(id);
        assert!(table.observation_mut(id).is_some());
        assert_eq!(
            table.accounted_bytes(id),
            Some(core::mem::size_of::<Slot>() + 28),
            "an IPv6 peer is boxed"
        );
        assert_eq!(
            table.observing(id),
            Some((true, Some((7, Duration::from_secs(3)))))
        );
        let active = table.active_mut(id, 6).unwrap();
        assert_eq!(active.template, template(9));
        assert_eq!(active.peer, peer);
        assert_eq!(active.token, Token::from_u64(9));
        let removed = table.remove(id, 6).unwrap();
        assert_eq!(removed.last_notification, Some((7, Duration::from_secs(3))));
    }

    #[test]
    fn a_request_being_sent_is_not_compacted() {
        let peer: SocketAddr = "127.0.0.1:5683".parse().unwrap();
        let mut table = RequestTable::default();
        let mut pending = request(peer, 1);
        pending.block2_body = vec![1, 2, 3];
        let id = table.insert(pending);
        table.compact(id);
        assert!(table.observation_mut(id).is_none());
    }

    #[test]
    fn shrinking_keeps_the_live_requests() {
        let peer: SocketAddr = "127.0.0.1:5683".parse().unwrap();
        let mut table = RequestTable::default();
        let ids: Vec<RequestId> = (0..1000).map(|n| table.insert(request(peer, n))).collect();
        for id in &ids[10..] {
            table.remove(*id, 6);
        }
        table.remove(ids[3], 6);
        table.shrink();
        assert!(table.slots.capacity() < 100);
        for (n, id) in ids[..10].iter().enumerate() {
            assert_eq!(table.contains(*id), n != 3);
        }
        let again: Vec<RequestId> = (0..5).map(|n| table.insert(request(peer, n))).collect();
        assert_eq!(split(again[0]).0, 3, "the hole is reused first");
        assert_eq!(table.len, 14);
    }
}
