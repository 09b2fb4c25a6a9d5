//! Observe sequence numbers and freshness (RFC 7641 §3.4 and §4.4).

use std::time::Duration;

/// Notifications older than this are fresh again whatever their number (RFC 7641 §3.4).
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(128);

const SEQUENCE_MASK: u32 = 0x00ff_ffff;

/// The 24-bit Observe value a server puts in successive notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObserveSequence(u32);

impl ObserveSequence {
    pub fn new(start: u32) -> Self {
        ObserveSequence(start & SEQUENCE_MASK)
    }

    /// The value for the next notification; values wrap at 2^24.
    pub fn next_value(&mut self) -> u32 {
        let value = self.0;
        self.0 = (self.0 + 1) & SEQUENCE_MASK;
        value
    }
}

/// Whether notification `(v2, t2)` is newer than `(v1, t1)` (RFC 7641 §3.4).
pub fn is_fresh(v1: u32, t1: Duration, v2: u32, t2: Duration) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || t2 > t1 + FRESHNESS_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_rfc() {
        let t = Duration::from_secs(10);
        assert!(is_fresh(5, t, 6, t));
        assert!(!is_fresh(6, t, 5, t));
        assert!(!is_fresh(5, t, 5, t));
        // Wrap-around: 0xffffff followed by 0 is newer.
        assert!(is_fresh(0x00ff_ffff, t, 0, t));
        // After 128 s anything is fresh.
        assert!(is_fresh(6, t, 5, t + Duration::from_secs(129)));
    }

    #[test]
    fn sequence_wraps_at_24_bits() {
        let mut sequence = ObserveSequence::new(0x00ff_fffe);
        assert_eq!(sequence.next_value(), 0x00ff_fffe);
        assert_eq!(sequence.next_value(), 0x00ff_ffff);
        assert_eq!(sequence.next_value(), 0);
    }
}
