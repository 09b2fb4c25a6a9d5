//! Handshake message reassembly (RFC 6347 §4.2.3) with bounded buffers.
//!
//! Only the next expected message (by `message_seq`) is buffered; fragments of later messages
//! are dropped and come back with the peer's retransmission. Overlapping fragments are accepted
//! (§4.2.3 allows them); a fragment whose type or total length disagrees with the first one, or
//! a message larger than the configured bound, is dropped.

use crate::message::{Fragment, HandshakeType};

/// Most distinct byte ranges kept for one message before further fragments are dropped.
const MAX_RANGES: usize = 16;

/// A complete handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Type.
    pub msg_type: HandshakeType,
    /// message_seq.
    pub message_seq: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// What became of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassembled {
    /// A message is complete.
    Complete(Message),
    /// Kept; the message is not complete yet.
    Pending,
    /// The fragment belongs to a message already processed (a retransmission by the peer).
    Old,
    /// Dropped (a later message, inconsistent or over a limit).
    Dropped,
}

#[derive(Debug)]
struct Partial {
    msg_type: HandshakeType,
    body: Vec<u8>,
    ranges: Vec<(usize, usize)>,
}

/// Reassembles the messages of one handshake in `message_seq` order.
#[derive(Debug)]
pub struct Reassembler {
    next_seq: u16,
    max_message: usize,
    partial: Option<Partial>,
}

impl Reassembler {
    /// A reassembler expecting `next_seq` first and bounding messages to `max_message` bytes.
    pub fn new(next_seq: u16, max_message: usize) -> Self {
        Self {
            next_seq,
            max_message,
            partial: None,
        }
    }

    /// The next message_seq expected.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// Adds a fragment.
    pub fn push(&mut self, fragment: &Fragment<'_>) -> Reassembled {
        if fragment.message_seq < self.next_seq {
            return Reassembled::Old;
        }
        let length = fragment.length as usize;
        if fragment.message_seq > self.next_seq || length > self.max_message {
            return Reassembled::Dropped;
        }
        if fragment.is_complete() {
            return self.complete(fragment.msg_type, fragment.body.to_vec());
        }
        let partial = self.partial.get_or_insert_with(|| Partial {
            msg_type: fragment.msg_type,
            body: vec![0; length],
            ranges: Vec::new(),
        });
        if partial.msg_type != fragment.msg_type || partial.body.len() != length {
            return Reassembled::Dropped;
        }
        let start = fragment.offset as usize;
        let end = start + fragment.body.len();
        let Some(target) = partial.body.get_mut(start..end) else {
            return Reassembled::Dropped;
        };
        if partial.ranges.len() >= MAX_RANGES {
            return Reassembled::Dropped;
        }
        target.copy_from_slice(fragment.body);
        partial.ranges.push((start, end));
        partial.ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(partial.ranges.len());
        for &(start, end) in &partial.ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        partial.ranges = merged;
        if partial.ranges == [(0, length)] {
            let msg_type = partial.msg_type;
            let body = core::mem::take(&mut partial.body);
            return self.complete(msg_type, body);
        }
        Reassembled::Pending
    }

    fn complete(&mut self, msg_type: HandshakeType, body: Vec<u8>) -> Reassembled {
        let message_seq = self.next_seq;
        self.partial = None;
        self.next_seq = self.next_seq.wrapping_add(1);
        Reassembled::Complete(Message {
            msg_type,
            message_seq,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fragment(seq: u16, length: u32, offset: u32, body: &[u8]) -> Fragment<'_> {
        Fragment {
            msg_type: HandshakeType::ClientHello,
            length,
            message_seq: seq,
            offset,
            body,
        }
    }

    #[test]
    fn whole_message_completes_at_once() {
        let mut reassembler = Reassembler::new(0, 100);
        let done = reassembler.push(&fragment(0, 3, 0, b"abc"));
        assert!(matches!(done, Reassembled::Complete(m) if m.body == b"abc"));
        assert_eq!(reassembler.next_seq(), 1);
        assert_eq!(
            reassembler.push(&fragment(0, 3, 0, b"abc")),
            Reassembled::Old
        );
    }

    #[test]
    fn out_of_order_and_overlapping_fragments() {
        let mut reassembler = Reassembler::new(2, 100);
        assert_eq!(
            reassembler.push(&fragment(2, 6, 3, b"def")),
            Reassembled::Pending
        );
        assert_eq!(
            reassembler.push(&fragment(2, 6, 1, b"bcd")),
            Reassembled::Pending
        );
        let done = reassembler.push(&fragment(2, 6, 0, b"ab"));
        assert!(matches!(done, Reassembled::Complete(m) if m.body == b"abcdef"));
    }

    #[test]
    fn inconsistent_or_oversized_fragments_are_dropped() {
        let mut reassembler = Reassembler::new(0, 10);
        assert_eq!(
            reassembler.push(&fragment(0, 11, 0, b"a")),
            Reassembled::Dropped
        );
        assert_eq!(
            reassembler.push(&fragment(0, 6, 0, b"ab")),
            Reassembled::Pending
        );
        assert_eq!(
            reassembler.push(&fragment(0, 7, 2, b"cd")),
            Reassembled::Dropped
        );
        assert_eq!(
            reassembler.push(&fragment(1, 6, 2, b"cd")),
            Reassembled::Dropped
        );
        let mut other_type = fragment(0, 6, 2, b"cd");
        other_type.msg_type = HandshakeType::Finished;
        assert_eq!(reassembler.push(&other_type), Reassembled::Dropped);
    }

    #[test]
    fn range_list_is_bounded() {
        let mut reassembler = Reassembler::new(0, 1000);
        for offset in 0..MAX_RANGES as u32 {
            assert_eq!(
                reassembler.push(&fragment(0, 1000, offset * 10, b"x")),
                Reassembled::Pending
            );
        }
        assert_eq!(
            reassembler.push(&fragment(0, 1000, 999, b"x")),
            Reassembled::Dropped
        );
    }

    proptest! {
        #[test]
        fn any_fragment_order_reassembles(cuts in proptest::collection::vec(0usize..40, 0..6), seed in any::<u64>()) {
            let message: Vec<u8> = (0..40u8).collect();
            let mut points = cuts.clone();
            points.push(0);
            points.push(40);
            points.sort_unstable();
            points.dedup();
            let mut pieces: Vec<(usize, usize)> = points.windows(2).map(|w| (w[0], w[1])).collect();
            let len = pieces.len();
            pieces.rotate_left((seed as usize) % len);
            let mut reassembler = Reassembler::new(0, 100);
            let mut result = None;
            for (start, end) in pieces {
                if let Reassembled::Complete(m) = reassembler.push(&fragment(0, 40, start as u32, &message[start..end])) {
                    result = Some(m.body);
                }
            }
            prop_assert_eq!(result, Some(message));
        }
    }
}
