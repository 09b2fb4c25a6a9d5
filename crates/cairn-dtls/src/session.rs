//! An established session: the compact state kept per peer once the handshake is over
//! (RFC 6347 §4.1 record state, §4.1.2.6 replay window, §4.2.4 last-flight retransmission,
//! RFC 9146 §6 address updates, RFC 5746 §4.4/§4.2 renegotiation refused).
//!
//! Only the two traffic keys (20 bytes each) and the suite, the write sequence number, the
//! replay window, the connection IDs (ours inline, the peer's boxed when it has one) and the
//! PSK identity remain: 112 bytes; the AES key schedule is rebuilt per record.
//! Until the peer proves it has the keys (its first application data), the verify data of the
//! last flight is kept, boxed, so that the flight can be sent again when the peer retransmits.

use std::sync::Arc;

use crate::Error;
use crate::cid::{ConnectionId, StoredCid};
use crate::codec::Reader;
use crate::crypto::{CipherSuite, TrafficKey};
use crate::endpoint::DEFAULT_MTU;
use crate::error::{AlertDescription, AlertLevel, CloseReason};
use crate::flight::{FlightItem, RecordWriter, write_flight};
use crate::handshake::Role;
use crate::message::{Fragment, HandshakeType};
use crate::record::{
    self, ContentType, HEADER_LEN, MAX_SEQUENCE, Protection, Record, ReplayWindow,
};

/// The last flight of a handshake (CCS, Finished), kept as its verify data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalFlight {
    verify_data: [u8; 12],
    message_seq: u16,
    /// Next epoch 0 sequence number (for the ChangeCipherSpec of a retransmission).
    epoch0_seq: u64,
}

impl FinalFlight {
    /// From the Finished body sent.
    pub fn new(finished_body: &[u8], message_seq: u16) -> Option<Self> {
        Some(Self {
            verify_data: finished_body.try_into().ok()?,
            message_seq,
            epoch0_seq: 0,
        })
    }
}

/// What one record did to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Decrypted application data.
    ApplicationData(Vec<u8>),
    /// The session ended.
    Closed(CloseReason),
}

/// An established DTLS session.
///
/// A server keeps one per device, so the layout is the point: keys, suite, role and the
/// 48-bit write sequence number pack into 48 bytes; the peer's CID (usually none) and the
/// final flight (gone after the peer's first application data) are boxed.
#[derive(Debug)]
pub struct Session {
    read_key: TrafficKey,
    write_key: TrafficKey,
    suite: CipherSuite,
    role: Role,
    /// Next epoch 1 sequence number, 48 bits big-endian (RFC 6347 §4.1).
    write_seq: [u8; 6],
    replay: ReplayWindow,
    /// The CID the peer writes on its records (ours; empty if none).
    cid_in: StoredCid,
    /// The CID written on our records (the peer's), if it has one.
    cid_out: Option<Box<ConnectionId>>,
    final_flight: Option<Box<FinalFlight>>,
    /// Shared, so that the layer above can tag requests with it without a copy.
    identity: Arc<[u8]>,
}

impl Session {
    /// A session from the handshake's end state: `read` and `writer` must have the same suite
    /// (the writer's protection is the epoch 1 write key).
    pub fn new(
        role: Role,
        read: Protection,
        writer: RecordWriter,
        replay: ReplayWindow,
        cid_in: ConnectionId,
        final_flight: Option<FinalFlight>,
        identity: &[u8],
    ) -> Self {
        let RecordWriter {
            epoch0_seq,
            epoch1_seq,
            protection,
            cid,
        } = writer;
        let write_key = match protection {
            Some(protection) => protection.key,
            // Not reached: a handshake completes only with keys. A session without a write key
            // would only produce records the peer cannot open.
            None => TrafficKey::new([0; 16], [0; 4]),
        };
        let mut session = Self {
            read_key: read.key,
            write_key,
            suite: read.suite,
            role,
            write_seq: [0; 6],
            replay,
            cid_in: StoredCid::new(&cid_in),
            cid_out: (!cid.is_empty()).then(|| Box::new(cid)),
            final_flight: final_flight.map(|flight| {
                Box::new(FinalFlight {
                    epoch0_seq,
                    ..flight
                })
            }),
            identity: identity.into(),
        };
        session.set_write_seq(epoch1_seq);
        session
    }

    fn write_seq(&self) -> u64 {
        let mut bytes = [0; 8];
        bytes[2..].copy_from_slice(&self.write_seq);
        u64::from_be_bytes(bytes)
    }

    fn set_write_seq(&mut self, seq: u64) {
        self.write_seq
            .copy_from_slice(&(seq & MAX_SEQUENCE).to_be_bytes()[2..]);
    }

    fn cid_out(&self) -> &[u8] {
        self.cid_out.as_deref().map_or(&[], ConnectionId::as_bytes)
    }

    /// The peer's PSK identity.
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// The peer's PSK identity, shared.
    pub fn shared_identity(&self) -> &Arc<[u8]> {
        &self.identity
    }

    /// The CID the peer writes on its records (empty if none).
    pub fn cid_in(&self) -> ConnectionId {
        self.cid_in.to_cid()
    }

    /// The bytes of [`Session::cid_in`], without a copy.
    pub(crate) fn cid_in_bytes(&self) -> &[u8] {
        self.cid_in.as_bytes()
    }

    pub(crate) fn stored_cid_in(&self) -> &StoredCid {
        &self.cid_in
    }

    /// Bytes one application data record adds to its plaintext (header, explicit nonce, tag,
    /// CID and inner content type): the largest `send` for a path MTU is `mtu - overhead`.
    pub fn record_overhead(&self) -> usize {
        let cid = self.cid_out();
        let cid_extra = if cid.is_empty() { 0 } else { cid.len() + 1 };
        HEADER_LEN + self.suite.overhead() + cid_extra
    }

    /// Heap bytes owned by the session (for memory accounting): the identity and the two
    /// reference counts beside it, and what is boxed (CIDs, final flight).
    pub fn heap_bytes(&self) -> usize {
        self.identity.len()
            + 2 * core::mem::size_of::<usize>()
            + self.cid_in.heap_bytes()
            + self
                .cid_out
                .as_ref()
                .map_or(0, |_| core::mem::size_of::<ConnectionId>())
            + self
                .final_flight
                .as_ref()
                .map_or(0, |_| core::mem::size_of::<FinalFlight>())
    }

    /// Appends one epoch 1 record.
    fn write(
        &mut self,
        out: &mut Vec<u8>,
        content_type: ContentType,
        payload: &[u8],
    ) -> Result<(), Error> {
        let seq = self.write_seq();
        if seq >= MAX_SEQUENCE {
            return Err(Error::Limit {
                what: "record sequence numbers exhausted",
            });
        }
        self.set_write_seq(seq + 1);
        record::write_protected(
            self.suite,
            &self.write_key,
            out,
            content_type,
            1,
            seq,
            self.cid_out(),
            payload,
        )
    }

    /// Encrypts application data into one record.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.write(&mut out, ContentType::ApplicationData, plaintext)?;
        Ok(out)
    }

    /// An alert record.
    pub fn alert(&mut self, level: AlertLevel, description: AlertDescription) -> Vec<u8> {
        let mut out = Vec::new();
        let body = [level.to_u8(), description.to_u8()];
        match self.write(&mut out, ContentType::Alert, &body) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    /// Handles one record. `transmit` collects datagrams to send back. Returns the output and
    /// whether the record was authentic and the newest so far (RFC 9146 §6).
    pub fn on_record(
        &mut self,
        record: &Record<'_>,
        transmit: &mut Vec<Vec<u8>>,
    ) -> (Option<SessionOutput>, bool) {
        if record.epoch != 1 || !self.replay.is_fresh(record.sequence) {
            return (None, false);
        }
        if record.content_type == ContentType::Tls12Cid {
            if self.cid_in.is_empty() || record.cid != self.cid_in.as_bytes() {
                return (None, false);
            }
        } else if !self.cid_in.is_empty() {
            // RFC 9146 §6: once a CID is negotiated, the peer must use tls12_cid records.
            return (None, false);
        }
        let Ok((content_type, plaintext)) =
            record::open_protected(self.suite, &self.read_key, record)
        else {
            return (None, false);
        };
        let newest = self.replay.is_newest(record.sequence);
        self.replay.accept(record.sequence);
        let output = match content_type {
            ContentType::ApplicationData => {
                self.final_flight = None;
                Some(SessionOutput::ApplicationData(plaintext))
            }
            ContentType::Alert => self.on_alert(&plaintext, transmit),
            ContentType::Handshake => {
                self.on_handshake(&plaintext, transmit);
                None
            }
            _ => None,
        };
        (output, newest)
    }

    fn on_alert(&mut self, body: &[u8], transmit: &mut Vec<Vec<u8>>) -> Option<SessionOutput> {
        let [level, description] = body else {
            return None;
        };
        let description = AlertDescription::from_u8(*description);
        match (AlertLevel::from_u8(*level), description) {
            (_, AlertDescription::CloseNotify) => {
                transmit.push(self.alert(AlertLevel::Warning, AlertDescription::CloseNotify));
                Some(SessionOutput::Closed(CloseReason::PeerClosed))
            }
            (AlertLevel::Fatal, description) => {
                Some(SessionOutput::Closed(CloseReason::PeerAlert(description)))
            }
            _ => None,
        }
    }

    fn on_handshake(&mut self, body: &[u8], transmit: &mut Vec<Vec<u8>>) {
        let mut reader = Reader::new(body);
        let Ok(fragment) = Fragment::parse(&mut reader) else {
            return;
        };
        match (fragment.msg_type, self.role) {
            (HandshakeType::Finished, _) => {
                if let Some(flight) = self.final_flight.as_deref().copied() {
                    let items = [
                        FlightItem::ChangeCipherSpec,
                        FlightItem::Handshake {
                            epoch: 1,
                            msg_type: HandshakeType::Finished,
                            message_seq: flight.message_seq,
                            body: flight.verify_data.to_vec(),
                        },
                    ];
                    let mut writer = RecordWriter {
                        epoch0_seq: flight.epoch0_seq,
                        epoch1_seq: self.write_seq(),
                        protection: Some(Protection {
                            suite: self.suite,
                            key: self.write_key.clone(),
                        }),
                        cid: self.cid_out.as_deref().copied().unwrap_or_default(),
                    };
                    let written = write_flight(&mut writer, &items, DEFAULT_MTU);
                    self.set_write_seq(writer.epoch1_seq);
                    if let Some(kept) = self.final_flight.as_deref_mut() {
                        kept.epoch0_seq = writer.epoch0_seq;
                    }
                    if let Ok(datagrams) = written {
                        transmit.extend(datagrams);
                    }
                }
            }
            (HandshakeType::ClientHello, Role::Server)
            | (HandshakeType::HelloRequest, Role::Client) => {
                transmit.push(self.alert(AlertLevel::Warning, AlertDescription::NoRenegotiation));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::put_fragment_header;
    use crate::record::Records;

    fn pair() -> (Session, Session) {
        let suite = CipherSuite::PskWithAes128Ccm8;
        let client_key = TrafficKey::new([1; 16], [1; 4]);
        let server_key = TrafficKey::new([2; 16], [2; 4]);
        let protection = |key: &TrafficKey| Protection {
            suite,
            key: key.clone(),
        };
        let writer = |key: &TrafficKey| {
            let mut writer = RecordWriter::new(0);
            writer.protection = Some(protection(key));
            writer
        };
        let server = Session::new(
            Role::Server,
            protection(&client_key),
            writer(&server_key),
            ReplayWindow::default(),
            ConnectionId::EMPTY,
            None,
            b"device",
        );
        let client = Session::new(
            Role::Client,
            protection(&server_key),
            writer(&client_key),
            ReplayWindow::default(),
            ConnectionId::EMPTY,
            None,
            b"device",
        );
        (server, client)
    }

    #[test]
    fn renegotiation_is_refused_with_a_warning() {
        let (mut server, mut client) = pair();
        let mut hello = Vec::new();
        put_fragment_header(&mut hello, HandshakeType::ClientHello, 4, 0, 0, 4);
        hello.extend_from_slice(&[0xFE, 0xFD, 0, 0]);
        let mut record = Vec::new();
        client
            .write(&mut record, ContentType::Handshake, &hello)
            .unwrap();
        let mut transmit = Vec::new();
        let parsed = Records::new(&record, 0).next().unwrap();
        assert_eq!(server.on_record(&parsed, &mut transmit), (None, true));
        assert_eq!(transmit.len(), 1);
        let alert = Records::new(&transmit[0], 0).next().unwrap();
        let (content_type, body) =
            record::open_protected(client.suite, &client.read_key, &alert).unwrap();
        assert_eq!(content_type, ContentType::Alert);
        assert_eq!(body, [1, 100]);
        // The client keeps its session after the warning.
        let mut none = Vec::new();
        assert_eq!(client.on_record(&alert, &mut none), (None, true));
        let data = server.seal(b"still up").unwrap();
        let data = Records::new(&data, 0).next().unwrap();
        assert_eq!(
            client.on_record(&data, &mut none).0,
            Some(SessionOutput::ApplicationData(b"still up".to_vec()))
        );
    }

    #[test]
    fn hello_request_to_a_client_is_refused() {
        let (mut server, mut client) = pair();
        let mut request = Vec::new();
        put_fragment_header(&mut request, HandshakeType::HelloRequest, 0, 0, 0, 0);
        let mut record = Vec::new();
        server
            .write(&mut record, ContentType::Handshake, &request)
            .unwrap();
        let mut transmit = Vec::new();
        let parsed = Records::new(&record, 0).next().unwrap();
        client.on_record(&parsed, &mut transmit);
        assert_eq!(transmit.len(), 1);
    }

    #[test]
    fn idle_session_is_compact() {
        let (server, _) = pair();
        assert!(
            core::mem::size_of::<Session>() <= 112,
            "{}",
            core::mem::size_of::<Session>()
        );
        assert_eq!(server.heap_bytes(), 6 + 16);
        assert!(!format!("{server:?}").contains("[1, 1, 1"));
    }
}
