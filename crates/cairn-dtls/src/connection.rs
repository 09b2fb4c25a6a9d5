//! One peer's connection: dispatches the records of a datagram (RFC 6347 §4.1) to the
//! handshake or to the established session, and applies the rules for records that arrive in
//! the wrong epoch or state (§4.1.2.7: invalid records are dropped silently; §4.2.4: a
//! retransmitted flight from the peer triggers ours).
//!
//! Unprotected application data is never delivered (the flaw of CVE-2019-20786), epoch 1
//! records are read only after the peer's ChangeCipherSpec, and after the handshake every
//! epoch 0 record is ignored.

use core::time::Duration;
use std::sync::Arc;

use crate::cid::{ConnectionId, StoredCid};
use crate::codec::Reader;
use crate::error::{AlertDescription, AlertLevel, CloseReason};
use crate::handshake::{Completed, Handshake, Progress, ResumableSession};
use crate::message::Fragment;
use crate::reassembly::{Message, Reassembled};
use crate::record::{ContentType, Record, Records};
use crate::session::{Session, SessionOutput};
use crate::{Error, PskResolver};

/// Something a connection reports to its endpoint.
#[derive(Debug)]
pub enum ConnectionEvent {
    /// The handshake completed.
    Connected {
        /// The PSK identity.
        identity: Vec<u8>,
        /// Whether the session was resumed.
        resumed: bool,
        /// The session for later resumption.
        resumable: Option<ResumableSession>,
    },
    /// Application data arrived.
    ApplicationData(Vec<u8>),
    /// The connection ended.
    Closed(CloseReason),
}

/// Output of one call into a connection.
#[derive(Debug, Default)]
pub struct Output {
    /// Datagrams for the peer.
    pub transmits: Vec<Vec<u8>>,
    /// Events in order.
    pub events: Vec<ConnectionEvent>,
    /// An authentic `tls12_cid` record that is the newest so far was seen (RFC 9146 §6).
    pub newest_authentic_cid_record: bool,
}

/// A peer's connection.
#[derive(Debug)]
pub enum Connection {
    /// Handshake in progress.
    Handshaking(Box<Handshake>),
    /// Session established.
    Established(Session),
    /// Ended, keeping the CID it had so the endpoint can unregister it, and the identity of
    /// its session if it was established (reported with the close).
    Closed(StoredCid, Option<Arc<[u8]>>),
}

impl Connection {
    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(..))
    }

    /// The CID the peer puts on its records (empty without CID).
    pub fn cid_in(&self) -> ConnectionId {
        match self {
            Self::Handshaking(handshake) => handshake.cid_in,
            Self::Established(session) => session.cid_in(),
            Self::Closed(cid, _) => cid.to_cid(),
        }
    }

    /// The bytes of [`Connection::cid_in`], without a copy.
    pub(crate) fn cid_in_bytes(&self) -> &[u8] {
        match self {
            Self::Handshaking(handshake) => handshake.cid_in.as_bytes(),
            Self::Established(session) => session.cid_in_bytes(),
            Self::Closed(cid, _) => cid.as_bytes(),
        }
    }

    fn close(&mut self) {
        let (cid, identity) = match self {
            Self::Handshaking(handshake) => (StoredCid::new(&handshake.cid_in), None),
            Self::Established(session) => (
                session.stored_cid_in().clone(),
                Some(session.shared_identity().clone()),
            ),
            Self::Closed(cid, identity) => (cid.clone(), identity.clone()),
        };
        *self = Self::Closed(cid, identity);
    }

    /// The authenticated identity of the session, established or closed after it was.
    pub fn identity(&self) -> Option<&Arc<[u8]>> {
        match self {
            Self::Established(session) => Some(session.shared_identity()),
            Self::Closed(_, identity) => identity.as_ref(),
            Self::Handshaking(_) => None,
        }
    }

    /// The session, if established.
    pub fn session(&self) -> Option<&Session> {
        match self {
            Self::Established(session) => Some(session),
            _ => None,
        }
    }

    /// The retransmission deadline.
    pub fn deadline(&self) -> Option<Duration> {
        match self {
            Self::Handshaking(handshake) => handshake.deadline(),
            _ => None,
        }
    }

    /// Handles the retransmission timer.
    pub fn handle_timeout(&mut self, now: Duration, output: &mut Output) {
        if let Self::Handshaking(handshake) = self {
            match handshake.on_timeout(now) {
                Ok(datagrams) => output.transmits.extend(datagrams),
                Err(_) => {
                    self.close();
                    output
                        .events
                        .push(ConnectionEvent::Closed(CloseReason::HandshakeTimeout));
                }
            }
        }
    }

    /// Handles a datagram from the peer.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        datagram: &[u8],
        cid_len: usize,
        resolver: Option<&dyn PskResolver>,
        output: &mut Output,
    ) {
        let mut retransmitted = false;
        for record in Records::new(datagram, cid_len) {
            match self {
                Self::Closed(..) => return,
                Self::Established(session) => {
                    let (event, newest) = session.on_record(&record, &mut output.transmits);
                    if newest && record.content_type == ContentType::Tls12Cid {
                        output.newest_authentic_cid_record = true;
                    }
                    match event {
                        Some(SessionOutput::ApplicationData(data)) => {
                            output.events.push(ConnectionEvent::ApplicationData(data));
                        }
                        Some(SessionOutput::Closed(reason)) => {
                            self.close();
                            output.events.push(ConnectionEvent::Closed(reason));
                        }
                        None => {}
                    }
                }
                Self::Handshaking(handshake) => {
                    let step = handshake_record(
                        handshake,
                        now,
                        &record,
                        resolver,
                        &mut retransmitted,
                        output,
                    );
                    output.transmits.extend(handshake.take_outgoing());
                    match step {
                        Ok(Some(completed)) => {
                            let Completed {
                                session,
                                identity,
                                resumed,
                                resumable,
                            } = completed;
                            *self = Self::Established(session);
                            output.events.push(ConnectionEvent::Connected {
                                identity,
                                resumed,
                                resumable,
                            });
                        }
                        Ok(None) => {}
                        Err(Failure::PeerAlert(reason)) => {
                            self.close();
                            output.events.push(ConnectionEvent::Closed(reason));
                        }
                        Err(Failure::Local(error)) => {
                            let description =
                                error.alert().unwrap_or(AlertDescription::HandshakeFailure);
                            let mut alert = Vec::new();
                            let body = [AlertLevel::Fatal.to_u8(), description.to_u8()];
                            let epoch = handshake.write_epoch();
                            if handshake
                                .writer
                                .write(&mut alert, epoch, ContentType::Alert, &body)
                                .is_ok()
                            {
                                output.transmits.push(alert);
                            }
                            self.close();
                            output
                                .events
                                .push(ConnectionEvent::Closed(CloseReason::LocalAlert(
                                    description,
                                )));
                        }
                    }
                }
            }
        }
    }
}

enum Failure {
    PeerAlert(CloseReason),
    Local(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Local(error)
    }
}

fn handshake_record(
    handshake: &mut Handshake,
    now: Duration,
    record: &Record<'_>,
    resolver: Option<&dyn PskResolver>,
    retransmitted: &mut bool,
    output: &mut Output,
) -> Result<Option<Completed>, Failure> {
    let (content_type, body) = match record.epoch {
        0 if record.content_type != ContentType::Tls12Cid => {
            (record.content_type, record.fragment.to_vec())
        }
        1 if handshake.read_epoch == 1 => match handshake.open(record) {
            Some(opened) => opened,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    match content_type {
        ContentType::Handshake if record.epoch == handshake.read_epoch => {
            let mut reader = Reader::new(&body);
            while !reader.is_empty() {
                let Ok(fragment) = Fragment::parse(&mut reader) else {
                    return Ok(None);
                };
                match handshake.reassembler().push(&fragment) {
                    Reassembled::Complete(message) => {
                        if let Some(completed) =
                            complete_message(handshake, now, message, resolver)?
                        {
                            return Ok(Some(completed));
                        }
                    }
                    Reassembled::Old if !*retransmitted => {
                        *retransmitted = true;
                        output.transmits.extend(handshake.retransmit()?);
                    }
                    _ => {}
                }
            }
            Ok(None)
        }
        ContentType::ChangeCipherSpec if record.epoch == 0 && body == [1] => {
            // An early or duplicate ChangeCipherSpec is dropped: it may be reordered.
            let _ = handshake.on_change_cipher_spec();
            Ok(None)
        }
        ContentType::Alert => match body.as_slice() {
            [level, description] => {
                let description = AlertDescription::from_u8(*description);
                match (AlertLevel::from_u8(*level), description) {
                    (_, AlertDescription::CloseNotify) => {
                        Err(Failure::PeerAlert(CloseReason::PeerClosed))
                    }
                    (AlertLevel::Fatal, description) => {
                        Err(Failure::PeerAlert(CloseReason::PeerAlert(description)))
                    }
                    _ => Ok(None),
                }
            }
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

fn complete_message(
    handshake: &mut Handshake,
    now: Duration,
    message: Message,
    resolver: Option<&dyn PskResolver>,
) -> Result<Option<Completed>, Error> {
    match handshake.on_message(now, message, resolver)? {
        Progress::Continue => Ok(None),
        Progress::Complete(completed) => Ok(Some(*completed)),
    }
}
