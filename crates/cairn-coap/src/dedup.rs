//! Duplicate detection (RFC 7252 §4.5) for all peers in one queue.
//!
//! Every entry lives EXCHANGE_LIFETIME from its message's arrival, so entries expire in the
//! order they arrived: one queue for the whole endpoint, popped at the front, replaces a
//! queue per peer. A peer keeps only its newest entry's position and its entry count
//! ([`Chain`]); each entry links to the same peer's previous one, so a duplicate is found
//! by walking the peer's own entries, newest first (at most the per-peer capacity).
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
    /// The peer's position in the peer table, or [`DEAD`].
    peer: u32,
    /// The same peer's previous entry (meaningful only while the chain counts it).
    prev: u32,
    message_id: u16,
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
    pub(crate) fn chain(&self, chain: Chain) -> Chain {
        if chain.len == 0 {
            return Chain::EMPTY;
        }
        let index = chain.last.wrapping_sub(self.old_base) as usize;
        Chain {
            last: self.new_positions.get(index).copied().unwrap_or(NONE),
            len: chain.len,
        }
    }
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

    /// Indexes of a chain's entries, newest first.
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

    /// Records `message_id` for the peer at `peer`, dropping its oldest entry when it has
    /// `capacity` already.
    #[cfg(test)]
    pub(crate) fn push(
        &mut self,
        chain: &mut Chain,
        peer: u32,
        message_id: u16,
        expires: Duration,
        capacity: u16,
    ) {
        while chain.len >= capacity.max(1) {
            self.drop_oldest(chain);
        }
        self.append(chain, peer, message_id, expires);
    }

    /// Looks for `message_id` among the peer's entries and, if it is new, records it as
    /// [`DedupQueue::push`] does, with one walk of the chain for both: the oldest entry,
    /// dropped when the peer is at `capacity`, is the walk's last. `Some` with the reply to
    /// send again for a duplicate (as [`DedupQueue::find`]).
    pub(crate) fn find_or_push(
        &mut self,
        chain: &mut Chain,
        peer: u32,
        message_id: u16,
        expires: Duration,
        capacity: u16,
    ) -> Option<Option<Vec<u8>>> {
        let mut newer = None;
        let mut oldest = None;
        for index in self.walk(*chain) {
            let entry = &self.entries[index];
            if entry.message_id == message_id {
                return Some(entry.reply.to_bytes(message_id));
            }
            newer = oldest;
            oldest = Some(index);
        }
        let capacity = capacity.max(1);
        if chain.len == capacity {
            self.kill_oldest(chain, newer, oldest);
        }
        while chain.len >= capacity {
            self.drop_oldest(chain);
        }
        self.append(chain, peer, message_id, expires);
        None
    }

    fn append(&mut self, chain: &mut Chain, peer: u32, message_id: u16, expires: Duration) {
        let position = self.base.wrapping_add(self.entries.len() as u32);
        self.entries.push_back(Entry {
            expires_ms: millis_ceil(expires),
            reply: Reply::None,
            peer,
            prev: if chain.len == 0 { NONE } else { chain.last },
            message_id,
        });
        chain.last = position;
        chain.len += 1;
    }

    fn drop_oldest(&mut self, chain: &mut Chain) {
        let mut newer = None;
        let mut oldest = None;
        for index in self.walk(*chain) {
            newer = oldest;
            oldest = Some(index);
        }
        self.kill_oldest(chain, newer, oldest);
    }

    /// Drops a chain's oldest entry, given its index and the index of the entry after it
    /// (both found by walking the chain).
    fn kill_oldest(&mut self, chain: &mut Chain, newer: Option<usize>, oldest: Option<usize>) {
        if let Some(index) = oldest {
            let entry = &mut self.entries[index];
            entry.peer = DEAD;
            entry.reply = Reply::None;
            self.dead += 1;
        }
        match newer {
            Some(index) => self.entries[index].prev = NONE,
            None => chain.last = NONE,
        }
        chain.len = chain.len.saturating_sub(1);
        if oldest.is_none() {
            *chain = Chain::EMPTY;
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
            let entry = &mut self.entries[index];
            entry.peer = DEAD;
            entry.reply = Reply::None;
            self.dead += 1;
        }
    }

    /// Pops the next entry expired at `now` (and any tombstone in front of it): the position
    /// of its peer, whose chain loses its oldest entry.
    pub(crate) fn pop_expired(&mut self, now: Duration) -> Option<u32> {
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
                return Some(entry.peer);
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
        let mut kept = VecDeque::with_capacity(self.len());
        for mut entry in self.entries.drain(..) {
            if entry.peer == DEAD {
                new_positions.push(NONE);
                continue;
            }
            let position = old_base.wrapping_add(kept.len() as u32);
            new_positions.push(position);
            let prev = entry.prev.wrapping_sub(old_base) as usize;
            entry.prev = new_positions.get(prev).copied().unwrap_or(NONE);
            kept.push_back(entry);
        }
        self.entries = kept;
        self.dead = 0;
        Remap {
            old_base,
            new_positions,
        }
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
            core::mem::size_of::<Entry>() <= 56,
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
        assert_eq!(queue.pop_expired(10 * S), Some(0));
        a.len -= 1;
        assert_eq!(queue.pop_expired(10 * S), Some(1));
        assert_eq!(queue.find(a, 7), None);
        assert_eq!(queue.find(a, 8), Some(Some(vec![5; 100])));
        assert_eq!(queue.pop_expired(11 * S), Some(0));
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
        assert_eq!(queue.pop_expired(S), Some(1));
        assert_eq!(queue.pop_expired(S), None);
        assert_eq!(queue.held(), 0);
    }
}
