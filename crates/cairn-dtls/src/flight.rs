//! Writing records and handshake flights (RFC 6347 §4.2.4): fragmentation of handshake
//! messages to the path MTU (§4.2.3), packing several records per datagram (§4.1.1), and the
//! retransmission timer (1 s initial, doubled on each retransmission up to 60 s, §4.2.4.1).

use core::time::Duration;

use crate::Error;
use crate::cid::ConnectionId;
use crate::message::{HANDSHAKE_HEADER_LEN, HandshakeType, put_fragment_header};
use crate::record::{self, ContentType, DTLS_1_2, HEADER_LEN, MAX_SEQUENCE, Protection};

/// Initial retransmission timeout (RFC 6347 §4.2.4.1).
pub const INITIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest retransmission timeout (RFC 6347 §4.2.4.1).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Sequence numbers and protection of the sending direction.
#[derive(Debug, Clone)]
pub struct RecordWriter {
    /// Next sequence number in epoch 0.
    pub epoch0_seq: u64,
    /// Next sequence number in epoch 1.
    pub epoch1_seq: u64,
    /// Protection of epoch 1, once keys exist.
    pub protection: Option<Protection>,
    /// The peer's CID, written on epoch 1 records when not empty.
    pub cid: ConnectionId,
}

impl RecordWriter {
    /// A writer starting epoch 0 at `epoch0_seq`.
    pub fn new(epoch0_seq: u64) -> Self {
        Self {
            epoch0_seq,
            epoch1_seq: 0,
            protection: None,
            cid: ConnectionId::EMPTY,
        }
    }

    /// Bytes a record of `epoch` adds around its payload.
    pub fn overhead(&self, epoch: u16) -> usize {
        match (&self.protection, epoch) {
            (Some(protection), 1) => {
                let cid_extra = if self.cid.is_empty() {
                    0
                } else {
                    self.cid.len() + 1
                };
                HEADER_LEN + protection.suite.overhead() + cid_extra
            }
            _ => HEADER_LEN,
        }
    }

    /// Appends one record of `epoch` (0 or 1).
    pub fn write(
        &mut self,
        out: &mut Vec<u8>,
        epoch: u16,
        content_type: ContentType,
        payload: &[u8],
    ) -> Result<(), Error> {
        if epoch == 0 {
            let seq = self.epoch0_seq;
            self.epoch0_seq = next_seq(seq)?;
            record::write_plaintext(out, content_type, DTLS_1_2, seq, payload);
            return Ok(());
        }
        let protection = self.protection.as_ref().ok_or(Error::NotConnected)?;
        let seq = self.epoch1_seq;
        self.epoch1_seq = next_seq(seq)?;
        protection.write(out, content_type, 1, seq, self.cid.as_bytes(), payload)
    }
}

fn next_seq(seq: u64) -> Result<u64, Error> {
    if seq >= MAX_SEQUENCE {
        return Err(Error::Limit {
            what: "record sequence numbers exhausted",
        });
    }
    Ok(seq + 1)
}

/// One item of a flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightItem {
    /// A handshake message and the epoch it is sent in.
    Handshake {
        /// Epoch.
        epoch: u16,
        /// Type.
        msg_type: HandshakeType,
        /// message_seq.
        message_seq: u16,
        /// Body.
        body: Vec<u8>,
    },
    /// ChangeCipherSpec (always epoch 0 here: no renegotiation).
    ChangeCipherSpec,
}

/// Builds the datagrams of a flight, fragmenting messages so that no datagram exceeds `mtu`.
pub fn write_flight(
    writer: &mut RecordWriter,
    items: &[FlightItem],
    mtu: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut datagrams = Vec::new();
    let mut current = Vec::new();
    let mut push_record = |record: Vec<u8>, current: &mut Vec<u8>| {
        if !current.is_empty() && current.len() + record.len() > mtu {
            datagrams.push(core::mem::take(current));
        }
        current.extend_from_slice(&record);
    };
    for item in items {
        match item {
            FlightItem::ChangeCipherSpec => {
                let mut record = Vec::new();
                writer.write(&mut record, 0, ContentType::ChangeCipherSpec, &[1])?;
                push_record(record, &mut current);
            }
            FlightItem::Handshake {
                epoch,
                msg_type,
                message_seq,
                body,
            } => {
                let room = mtu
                    .saturating_sub(writer.overhead(*epoch) + HANDSHAKE_HEADER_LEN)
                    .max(16);
                let mut offset = 0;
                loop {
                    let chunk = &body[offset..(offset + room).min(body.len())];
                    let mut payload = Vec::with_capacity(HANDSHAKE_HEADER_LEN + chunk.len());
                    put_fragment_header(
                        &mut payload,
                        *msg_type,
                        body.len(),
                        *message_seq,
                        offset,
                        chunk.len(),
                    );
                    payload.extend_from_slice(chunk);
                    let mut record = Vec::new();
                    writer.write(&mut record, *epoch, ContentType::Handshake, &payload)?;
                    push_record(record, &mut current);
                    offset += chunk.len();
                    if offset >= body.len() {
                        break;
                    }
                }
            }
        }
    }
    if !current.is_empty() {
        datagrams.push(current);
    }
    Ok(datagrams)
}

/// The retransmission timer of one flight (RFC 6347 §4.2.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitTimer {
    deadline: Duration,
    interval: Duration,
    retransmissions: u8,
}

impl RetransmitTimer {
    /// Starts the timer for a flight sent at `now`.
    pub fn start(now: Duration) -> Self {
        Self {
            deadline: now + INITIAL_TIMEOUT,
            interval: INITIAL_TIMEOUT,
            retransmissions: 0,
        }
    }

    /// When the flight is retransmitted next.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub fn expired(&self, now: Duration) -> bool {
        now >= self.deadline
    }

    /// Backs off after a retransmission at `now`; `false` once `max` retransmissions were made.
    pub fn back_off(&mut self, now: Duration, max: u8) -> bool {
        if self.retransmissions >= max {
            return false;
        }
        self.retransmissions += 1;
        self.interval = (self.interval * 2).min(MAX_TIMEOUT);
        self.deadline = now + self.interval;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Reader;
    use crate::message::Fragment;
    use crate::record::Records;

    #[test]
    fn timer_doubles_from_one_second_up_to_sixty() {
        let mut timer = RetransmitTimer::start(Duration::ZERO);
        assert_eq!(timer.deadline(), Duration::from_secs(1));
        let mut now = timer.deadline();
        let mut intervals = Vec::new();
        while timer.back_off(now, 8) {
            intervals.push((timer.deadline() - now).as_secs());
            now = timer.deadline();
        }
        assert_eq!(intervals, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn large_message_is_fragmented_under_the_mtu() {
        let mut writer = RecordWriter::new(0);
        let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let items = [FlightItem::Handshake {
            epoch: 0,
            msg_type: HandshakeType::ClientHello,
            message_seq: 0,
            body: body.clone(),
        }];
        let datagrams = write_flight(&mut writer, &items, 200).unwrap();
        assert!(datagrams.len() >= 5);
        let mut rebuilt = vec![0u8; 1000];
        for datagram in &datagrams {
            assert!(datagram.len() <= 200);
            for record in Records::new(datagram, 0) {
                let fragment = Fragment::parse(&mut Reader::new(record.fragment)).unwrap();
                let start = fragment.offset as usize;
                rebuilt[start..start + fragment.body.len()].copy_from_slice(fragment.body);
            }
        }
        assert_eq!(rebuilt, body);
        assert_eq!(
            writer.epoch0_seq,
            datagrams
                .iter()
                .map(|d| Records::new(d, 0).count() as u64)
                .sum::<u64>()
        );
    }

    #[test]
    fn epoch_one_without_keys_is_an_error() {
        let mut writer = RecordWriter::new(0);
        assert_eq!(
            writer.write(&mut Vec::new(), 1, ContentType::ApplicationData, b"x"),
            Err(Error::NotConnected)
        );
    }
}
