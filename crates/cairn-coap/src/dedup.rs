//! Duplicate detection (RFC 7252 §4.5) for all peers in one queue.
//!
//! Every entry lives EXCHANGE_LIFETIME from its message's arrival, so entries expire in the
//! order they arrived: one queue for the whole endpoint, popped at the front, replaces a
//! queue per peer. A peer keeps only its newest entry's position and its entry count
//! ([`Chain`]); each entry links to the same peer's next one, and the newest entry holds the
//! chain's oldest position and a 64-bit filter of its message IDs ([`Filter`]). A new
//! message ID is usually known new from the filter alone, and the oldest entry, dropped when
//! a peer is at its capacity, is found without a walk; a walk of the peer's own entries (at
//! most the per-peer capacity) is left for IDs the filter cannot rule out.
//!
//! An entry's cached reply is held in the entry: nothing for a message not answered yet or
//! answered with an empty ACK (rebuilt from the message ID), up to [`INLINE_REPLY`] bytes
//! inline (a piggybacked LwM2M registration response fits), boxed beyond.
//!
//! Entries dropped before their time (a peer over its capacity, or a peer evicted) stay in
//! the queue as tombstones until they reach the front; once tombstones outnumber the live
//! entries the queue is compacted, so it never holds more than about twice the live ones.

use std::collections::VecDeque;
use std::time::Duration;

/// No entry (the end of a chain).
pub(crate) const NONE: u32 = u32::MAX;
/// The peer of a tombstone.
const DEAD: u32 = u32::MAX;
/// Reply bytes kept without a heap allocation.
pub(crate) const INLINE_REPLY: usize = 30;
/// Tombstones tolerated before a compaction is considered.
const MIN_DEAD_FOR_COMPACTION: usize = 256;

/// A peer's entries: the position of its newest and how many it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) last: u32,
    pub(crate) len: u16,
}

impl Chain {
    pub(crate) const EMPTY: Chain = Chain { last: NONE, len: 0 };
}

#[derive(Debug)]
enum Reply {
    None,
    EmptyAck,
    Inline { len: u8, bytes: [u8; INLINE_REPLY] },
    Boxed(Box<[u8]>),
}

/// The 4 bytes of an empty ACK (version 1, type ACK, no token, code 0.00).
pub(crate) fn empty_ack(message_id: u16) -> [u8; 4] {
    let [high, low] = message_id.to_be_bytes();
    [0x60, 0x00, high, low]
}

impl Reply {
    fn new(message_id: u16, bytes: &[u8]) -> Self {
        if bytes == empty_ack(message_id) {
            return Reply::EmptyAck;
        }
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE_REPLY => {
                let mut inline = [0; INLINE_REPLY];
                inline[..bytes.len()].copy_from_slice(bytes);
                Reply::Inline { len, bytes: inline }
            }
            _ => Reply::Boxed(bytes.into()),
        }
    }

    fn to_bytes(&self, message_id: u16) -> Option<Vec<u8>> {
        match self {
            Reply::None => None,
            Reply::EmptyAck => Some(empty_ack(message_id).to_vec()),
            Reply::Inline { len, bytes } => Some(bytes[..usize::from(*len)].to_vec()),
            Reply::Boxed(bytes) => Some(bytes.to_vec()),
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Milliseconds since the time origin, rounded up.
    expires_ms: u64,
    reply: Reply,
    /// Which message IDs the chain may hold, as of this entry (read from the newest).
    filter: u64,
    /// The peer's position in the peer table, or [`DEAD`].
    peer: u32,
    /// The same peer's next (newer) entry, [`NONE`] for its newest.
    next: u32,
    /// The same peer's previous (older) entry (meaningful only while the chain counts it).
    prev: u32,
    /// The chain's oldest entry, as of this entry (read from the newest).
    first: u32,
    message_id: u16,
    /// The filter has one bit per entry of the chain (none shares its bit with another):
    /// dropping an entry may clear its bit.
    exact: bool,
}

/// Bit `message_id % 64` of each entry of a chain, so that a new message ID whose bit is
/// clear is known new without walking the chain. Bits of entries gone are cleared only
/// while every bit stands for one entry at most; any walk of the chain builds it again.
#[derive(Clone, Copy, Debug)]
struct Filter {
    bits: u64,
    exact: bool,
}

impl Filter {
    const EMPTY: Filter = Filter {
        bits: 0,
        exact: true,
    };

    fn bit(message_id: u16) -> u64 {
        1 << (message_id % 64)
    }

    fn may_hold(self, message_id: u16) -> bool {
        self.bits & Filter::bit(message_id) != 0
    }

    fn add(&mut self, message_id: u16) {
        let bit = Filter::bit(message_id);
        if self.bits & bit != 0 {
            self.exact = false;
        }
        self.bits |= bit;
    }

    fn remove(&mut self, message_id: u16) {
        if self.exact {
            self.bits &= !Filter::bit(message_id);
        }
    }
}

fn millis_ceil(time: Duration) -> u64 {
    let millis = u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
    millis.saturating_add(u64::from(time.subsec_nanos() % 1_000_000 != 0))
}

fn millis_floor(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// New positions after a compaction, for the chains kept by the peers.
pub(crate) struct Remap {
    old_base: u32,
    new_positions: Vec<u32>,
}

impl Remap {
    fn position(&self, position: u32) -> u32 {
        if position == NONE {
            return NONE;
        }
        let index = position.wrapping_sub(self.old_base) as usize;
        self.new_positions.get(index).copied().unwrap_or(NONE)
    }

    pub(crate) fn chain(&self, chain: Chain) -> Chain {
        if chain.len == 0 {
            return Chain::EMPTY;
        }
        Chain {
            last: self.position(chain.last),
            len: chain.len,
        }
    }
}

/// A message ID to record, with its peer's position and its expiry.
struct Recorded {
    peer: u32,
    message_id: u16,
    expires: Duration,
}

/// The duplicate-detection entries of every peer, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct DedupQueue {
    entries: VecDeque<Entry>,
    /// Position of `entries[0]`; positions only grow (wrapping), so a peer's chain survives pops.
    base: u32,
    dead: usize,
}

impl DedupQueue {
    fn index(&self, position: u32) -> Option<usize> {
        let index = position.wrapping_sub(self.base) as usize;
        (index < self.entries.len()).then_some(index)
    }

    /// Live entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len() - self.dead
    }

    /// Entries held, tombstones included.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.entries.len()
    }

    /// A chain's oldest position and filter, from its newest entry.
    fn head(&self, chain: Chain) -> (u32, Filter) {
        match self.index(chain.last).filter(|_| chain.len > 0) {
            Some(index) => {
                let newest = &self.entries[index];
                let filter = Filter {
                    bits: newest.filter,
                    exact: newest.exact,
                };
                (newest.first, filter)
            }
            None => (NONE, Filter::EMPTY),
        }
    }

    /// Indexes of a chain's entries, newest first (a repeated message is usually recent).
    fn walk(&self, chain: Chain) -> impl Iterator<Item = usize> + '_ {
        let mut at = chain.last;
        (0..chain.len).map_while(move |_| {
            let index = self.index(at)?;
            at = self.entries[index].prev;
            Some(index)
        })
    }

    /// If `message_id` is a duplicate in `chain`: `Some` with the reply to send again, if any.
    #[cfg(test)]
    pub(crate) fn find(&self, chain: Chain, message_id: u16) -> Option<Option<Vec<u8>>> {
        self.walk(chain)
            .map(|index| &self.entries[index])
            .find(|entry| entry.message_id == message_id)
            .map(|entry| entry.reply.to_bytes(message_id))
    }

    /// Records `message_id`, new to the chain, for the peer at `peer`, dropping its oldest
    /// entry when it has `capacity` already.
    #[cfg(test)]
    pub(crate) fn push(
        &mut self,
        chain: &mut Chain,
        peer: u32,
        message_id: u16,
        expires: Duration,
        capacity: u16,
    ) {
        let repeated = self.find_or_push(chain, peer, message_id, expires, capacity);
        assert!(repeated.is_none(), "push takes new message IDs only");
    }

    /// Looks for `message_id` among the peer's entries and, if it is new, records it as
    /// [`DedupQueue::push`] does. The chain is walked only when its filter says the ID may
    /// be in it; the oldest entry, dropped when the peer is at `capacity`, is known without
    /// a walk. `Some` with the reply to send again for a duplicate (as [`DedupQueue::find`]).
    pub(crate) fn find_or_push(
        &mut self,
        chain: &mut Chain,
        peer: u32,
        message_id: u16,
        expires: Duration,
        capacity: u16,
    ) -> Option<Option<Vec<u8>>> {
        let (first, mut filter) = self.head(*chain);
        let mut walk = filter.may_hold(message_id);
        // An exact filter's bit stands for one entry: when the oldest has it (as it has when
        // a peer counts its message IDs up through a full chain), no walk.
        if walk && filter.exact {
            if let Some(oldest) = self.index(first).map(|index| &self.entries[index]) {
                if oldest.message_id == message_id {
                    return Some(oldest.reply.to_bytes(message_id));
                }
                walk = Filter::bit(oldest.message_id) != Filter::bit(message_id);
            }
        }
        if walk {
            let mut rebuilt = Filter::EMPTY;
            for index in self.walk(*chain) {
                let entry = &self.entries[index];
                if entry.message_id == message_id {
                    return Some(entry.reply.to_bytes(message_id));
                }
                rebuilt.add(entry.message_id);
            }
            filter = rebuilt;
        }
        let new = Recorded {
            peer,
            message_id,
            expires,
        };
        self.append(chain, first, filter, new, capacity);
        None
    }

    /// Appends a new entry to a chain whose oldest position and filter are `first` and
    /// `filter`, dropping its oldest entries first while it holds `capacity`.
    fn append(
        &mut self,
        chain: &mut Chain,
        mut first: u32,
        mut filter: Filter,
        new: Recorded,
        capacity: u16,
    ) {
        while chain.len >= capacity.max(1) {
            self.drop_oldest(chain, &mut first, &mut filter);
        }
        let Recorded {
            peer,
            message_id,
            expires,
        } = new;
        filter.add(message_id);
        let position = self.base.wrapping_add(self.entries.len() as u32);
        let (first, prev) = match self.index(chain.last).filter(|_| chain.len > 0) {
            Some(index) => {
                self.entries[index].next = position;
                (first, chain.last)
            }
            None => {
                *chain = Chain::EMPTY;
                (position, NONE)
            }
        };
        self.entries.push_back(Entry {
            expires_ms: millis_ceil(expires),
            reply: Reply::None,
            filter: filter.bits,
            peer,
            next: NONE,
            prev,
            first,
            message_id,
            exact: filter.exact,
        });
        chain.last = position;
        chain.len += 1;
    }

    /// Drops a chain's oldest entry, at `first`; `first` and `filter` follow.
    fn drop_oldest(&mut self, chain: &mut Chain, first: &mut u32, filter: &mut Filter) {
        let Some(index) = self.index(*first).filter(|_| chain.len > 1) else {
            // The last entry (or a chain that lost its way): the chain starts again empty.
            if let Some(index) = self.index(*first).filter(|_| chain.len == 1) {
                self.kill(index);
            }
            *chain = Chain::EMPTY;
            *first = NONE;
            *filter = Filter::EMPTY;
            return;
        };
        filter.remove(self.entries[index].message_id);
        *first = self.entries[index].next;
        self.kill(index);
        chain.len -= 1;
    }

    fn kill(&mut self, index: usize) {
        let entry = &mut self.entries[index];
        if entry.peer != DEAD {
            entry.peer = DEAD;
            entry.reply = Reply::None;
            self.dead += 1;
        }
    }

    /// The chain's oldest entry expired and was popped ([`DedupQueue::pop_expired`] gave
    /// `next`, the entry after it): the chain starts there.
    pub(crate) fn expired_oldest(&mut self, chain: &mut Chain, next: u32) {
        if chain.len <= 1 {
            *chain = Chain::EMPTY;
            return;
        }
        chain.len -= 1;
        if let Some(index) = self.index(chain.last) {
            self.entries[index].first = next;
        }
    }

    /// Caches the reply sent to `message_id`.
    pub(crate) fn set_reply(&mut self, chain: Chain, message_id: u16, reply: &[u8]) {
        let found = self
            .walk(chain)
            .find(|&index| self.entries[index].message_id == message_id);
        if let Some(index) = found {
            self.entries[index].reply = Reply::new(message_id, reply);
        }
    }

    /// Drops every entry of a chain (its peer is gone).
    pub(crate) fn forget(&mut self, chain: Chain) {
        let indexes: Vec<usize> = self.walk(chain).collect();
        for index in indexes {
            self.kill(index);
        }
    }

    /// Pops the next entry expired at `now` (and any tombstone in front of it): the position
    /// of its peer, whose chain loses its oldest entry, and the position of the entry after
    /// it in that chain (for [`DedupQueue::expired_oldest`]).
    pub(crate) fn pop_expired(&mut self, now: Duration) -> Option<(u32, u32)> {
        let now = millis_floor(now);
        while let Some(front) = self.entries.front() {
            if front.peer != DEAD && front.expires_ms > now {
                return None;
            }
            let entry = self.entries.pop_front()?;
            self.base = self.base.wrapping_add(1);
            if entry.peer == DEAD {
                self.dead -= 1;
            } else {
                return Some((entry.peer, entry.next));
            }
        }
        None
    }

    /// Peers of the oldest live entries, oldest first (candidates for eviction).
    pub(crate) fn oldest_peers(&self, count: usize) -> impl Iterator<Item = u32> + '_ {
        self.entries
            .iter()
            .filter(|entry| entry.peer != DEAD)
            .map(|entry| entry.peer)
            .take(count)
    }

    pub(crate) fn needs_compaction(&self) -> bool {
        self.dead > MIN_DEAD_FOR_COMPACTION && self.dead * 2 > self.entries.len()
    }

    /// Drops the tombstones; the peers' chains must then go through the returned [`Remap`].
    pub(crate) fn compact(&mut self) -> Remap {
        let old_base = self.base;
        let mut new_positions = Vec::with_capacity(self.entries.len());
        let mut kept_count = 0u32;
        for entry in &self.entries {
            if entry.peer == DEAD {
                new_positions.push(NONE);
            } else {
                new_positions.push(old_base.wrapping_add(kept_count));
                kept_count += 1;
            }
        }
        let remap = Remap {
            old_base,
            new_positions,
        };
        let mut kept = VecDeque::with_capacity(self.len());
        for mut entry in self.entries.drain(..) {
            if entry.peer == DEAD {
                continue;
            }
            entry.next = remap.position(entry.next);
            entry.prev = remap.position(entry.prev);
            entry.first = remap.position(entry.first);
            kept.push_back(entry);
        }
        self.entries = kept;
        self.dead = 0;
        remap
    }

    /// Gives back the room a burst left behind.
    pub(crate) fn shrink(&mut self) {
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Code, Message, MessageType};

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn entries_are_compact() {
        assert!(
            core::mem::size_of::<Entry>() <= 72,
            "{}",
            core::mem::size_of::<Entry>()
        );
        assert_eq!(
            empty_ack(0x1234).to_vec(),
            Message::new(MessageType::Acknowledgement, Code::EMPTY, 0x1234).to_bytes()
        );
    }

    #[test]
    fn duplicates_are_found_with_their_replies() {
        let mut queue = DedupQueue::default();
        let (mut a, mut b) = (Chain::EMPTY, Chain::EMPTY);
        queue.push(&mut a, 0, 7, 10 * S, 8);
        queue.push(&mut b, 1, 7, 10 * S, 8);
        queue.push(&mut a, 0, 8, 11 * S, 8);
        assert_eq!(queue.find(a, 7), Some(None));
        assert_eq!(queue.find(a, 9), None);
        queue.set_reply(a, 7, &empty_ack(7));
        queue.set_reply(b, 7, b"short reply");
        queue.set_reply(a, 8, &[5; 100]);
        assert_eq!(queue.find(a, 7), Some(Some(empty_ack(7).to_vec())));
        assert_eq!(queue.find(b, 7), Some(Some(b"short reply".to_vec())));
        assert_eq!(queue.find(a, 8), Some(Some(vec![5; 100])));
        // Expiry in arrival order: a's first entry, then b's.
        assert_eq!(queue.pop_expired(9 * S), None);
        let (peer, next) = queue.pop_expired(10 * S).unwrap();
        assert_eq!(peer, 0);
        queue.expired_oldest(&mut a, next);
        assert_eq!(queue.pop_expired(10 * S).map(|(peer, _)| peer), Some(1));
        assert_eq!(queue.find(a, 7), None);
        assert_eq!(queue.find(a, 8), Some(Some(vec![5; 100])));
        assert_eq!(queue.pop_expired(11 * S).map(|(peer, _)| peer), Some(0));
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn find_or_push_walks_once_and_keeps_what_find_and_push_keep() {
        let mut fused = DedupQueue::default();
        let mut apart = DedupQueue::default();
        let (mut a, mut b) = (Chain::EMPTY, Chain::EMPTY);
        let (mut other_a, mut other_b) = (Chain::EMPTY, Chain::EMPTY);
        for round in 0..300u16 {
            // A chatty peer over its capacity, a repeat now and then, and a second peer.
            let id = if round % 7 == 6 { round - 2 } else { round };
            let found = fused.find_or_push(&mut a, 0, id, S, 5);
            let expected = apart.find(b, id);
            if expected.is_none() {
                apart.push(&mut b, 0, id, S, 5);
            }
            assert_eq!(found, expected, "round {round}");
            assert_eq!(a, b, "round {round}");
            fused.find_or_push(&mut other_a, 1, round, S, 3);
            apart.push(&mut other_b, 1, round, S, 3);
            assert_eq!(other_a, other_b);
            if fused.needs_compaction() {
                let remap = fused.compact();
                a = remap.chain(a);
                other_a = remap.chain(other_a);
            }
            if apart.needs_compaction() {
                let remap = apart.compact();
                b = remap.chain(b);
                other_b = remap.chain(other_b);
            }
        }
        assert_eq!(fused.len(), apart.len());
        assert_eq!(a.len, 5);
        for id in 0..300u16 {
            assert_eq!(
                fused.find(a, id).is_some(),
                apart.find(b, id).is_some(),
                "{id}"
            );
        }
    }

    #[test]
    fn capacity_drops_the_oldest_of_the_peer_and_compaction_keeps_chains() {
        let mut queue = DedupQueue::default();
        let mut chatty = Chain::EMPTY;
        let mut quiet = Chain::EMPTY;
        queue.push(&mut quiet, 1, 1, S, 4);
        for id in 0..2000u16 {
            queue.push(&mut chatty, 0, id, S, 4);
            if queue.needs_compaction() {
                let remap = queue.compact();
                chatty = remap.chain(chatty);
                quiet = remap.chain(quiet);
            }
        }
        assert_eq!(chatty.len, 4);
        assert_eq!(queue.len(), 5);
        assert!(
            queue.held() <= 2 * MIN_DEAD_FOR_COMPACTION + 10,
            "{}",
            queue.held()
        );
        for id in 1996..2000 {
            assert!(queue.find(chatty, id).is_some(), "{id}");
        }
        assert!(queue.find(chatty, 1995).is_none());
        assert!(queue.find(quiet, 1).is_some());
        queue.forget(chatty);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop_expired(S).map(|(peer, _)| peer), Some(1));
        assert_eq!(queue.pop_expired(S), None);
        assert_eq!(queue.held(), 0);
    }

    /// Against a plain model (a list of message IDs per peer): random arrivals, repeats,
    /// IDs that share filter bits, expiry, compaction and forgotten peers.
    #[test]
    fn agrees_with_a_plain_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let capacity = 1 + (next() % 70) as u16;
            // Random IDs over a narrow or a wide range, or IDs counted up with now and then a
            // repeat of a recent one (how peers number their messages).
            let spread = [64u64, 200, 65_536, 0][round % 4];
            let mut counter = [0u16; 4];
            let mut queue = DedupQueue::default();
            let mut chains = [Chain::EMPTY; 4];
            let mut model: [VecDeque<(u16, u64)>; 4] = Default::default();
            let mut now_ms = 0u64;
            for step in 0..3000u32 {
                now_ms += next() % 3;
                let now = Duration::from_millis(now_ms);
                while let Some((peer, after)) = queue.pop_expired(now) {
                    queue.expired_oldest(&mut chains[peer as usize], after);
                }
                for entries in &mut model {
                    while entries
                        .front()
                        .is_some_and(|&(_, expires)| expires <= now_ms)
                    {
                        entries.pop_front();
                    }
                }
                let peer = (next() % 4) as usize;
                if next() % 500 == 0 {
                    queue.forget(chains[peer]);
                    chains[peer] = Chain::EMPTY;
                    model[peer].clear();
                    continue;
                }
                let id = if spread == 0 {
                    counter[peer] = counter[peer].wrapping_add(1);
                    counter[peer].wrapping_sub((next() % 4 / 3 * (next() % 80)) as u16)
                } else {
                    (next() % spread) as u16
                };
                let expires_ms = now_ms + 100;
                let found = queue.find_or_push(
                    &mut chains[peer],
                    peer as u32,
                    id,
                    Duration::from_millis(expires_ms),
                    capacity,
                );
                let expected = model[peer].iter().any(|&(held, _)| held == id);
                assert_eq!(found.is_some(), expected, "round {round} step {step}");
                if !expected {
                    while model[peer].len() >= usize::from(capacity) {
                        model[peer].pop_front();
                    }
                    model[peer].push_back((id, expires_ms));
                }
                if queue.needs_compaction() {
                    let remap = queue.compact();
                    for chain in &mut chains {
                        *chain = remap.chain(*chain);
                    }
                }
                for (chain, entries) in chains.iter().zip(&model) {
                    assert_eq!(
                        usize::from(chain.len),
                        entries.len(),
                        "round {round} step {step}"
                    );
                }
            }
            assert_eq!(queue.len(), model.iter().map(VecDeque::len).sum::<usize>());
        }
    }
}
