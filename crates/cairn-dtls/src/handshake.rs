//! The PSK handshake as explicit state types (RFC 6347 §4.2, RFC 5246 §7.3–7.4, RFC 4279 §2).
//!
//! Full handshake (RFC 6347 §4.2.4, flights 1–6):
//!
//! ```text
//! client                                         server
//! ClientHello                      -->                          (flight 1)
//!                                  <--   HelloVerifyRequest     (flight 2, stateless)
//! ClientHello + cookie             -->                          (flight 3)
//!                                        ServerHello
//!                                        ServerKeyExchange*     (PSK identity hint)
//!                                  <--   ServerHelloDone        (flight 4)
//! ClientKeyExchange, [CCS], Finished -->                        (flight 5)
//!                                  <--   [CCS], Finished        (flight 6)
//! ```
//!
//! Abbreviated handshake (session resumption by session ID, RFC 5246 §7.3): the server answers
//! the cookie ClientHello with ServerHello, CCS, Finished and the client ends with CCS, Finished.
//!
//! Each state is a type that consumes one message and yields the next state, so a message out of
//! order is refused by construction (e.g. Finished before ChangeCipherSpec, CVE-2017-7243 style
//! early ChangeCipherSpec). The extended master secret (RFC 7627) is negotiated when both sides
//! offer it, `renegotiation_info` (RFC 5746) is answered on the initial handshake, and the
//! `connection_id` extension (RFC 9146 §3) is negotiated when configured.

use core::time::Duration;

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cid::ConnectionId;
use crate::crypto::{CipherSuite, KeyBlock, MasterSecret, Psk};
use crate::flight::{FlightItem, RecordWriter, RetransmitTimer, write_flight};
use crate::message::{
    ClientHello, EMPTY_RENEGOTIATION_INFO_SCSV, HandshakeType, HelloExtensions, HelloVerifyRequest,
    ServerHello, encode_psk_identity, parse_finished, parse_psk_identity, whole_message,
};
use crate::reassembly::{Message, Reassembler};
use crate::record::{ContentType, DTLS_1_2, Protection, Record, ReplayWindow};
use crate::session::{FinalFlight, Session};
use crate::{Error, PskResolver};

/// Most HelloVerifyRequests a client follows in one handshake.
const MAX_HELLO_VERIFY_REQUESTS: u8 = 4;

/// Which side of the handshake this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends the ClientHello.
    Client,
    /// Answers it.
    Server,
}

/// Limits and sizes shared by both roles.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest datagram written.
    pub mtu: usize,
    /// Retransmissions of one flight before the handshake fails.
    pub max_retransmissions: u8,
    /// Largest handshake message reassembled.
    pub max_handshake_message: usize,
}

/// A session that can be resumed (RFC 5246 §7.3).
#[derive(Debug, Clone)]
pub struct ResumableSession {
    /// The session ID.
    pub session_id: Vec<u8>,
    /// Its master secret.
    pub master: MasterSecret,
    /// Its suite.
    pub suite: CipherSuite,
    /// Whether the master secret is an extended one (RFC 7627 §5.3).
    pub extended_master_secret: bool,
    /// The PSK identity it was authenticated with.
    pub identity: Vec<u8>,
}

/// What a server needs from its endpoint during a handshake.
pub struct ServerEnv<'a> {
    /// Identity → key.
    pub resolver: &'a dyn PskResolver,
    /// Identity hint for ServerKeyExchange.
    pub identity_hint: Option<&'a [u8]>,
    /// Suites in order of preference.
    pub suites: &'a [CipherSuite],
    /// The CID this server assigns to the peer, if CIDs are on.
    pub cid: Option<ConnectionId>,
    /// A resumable session matching the ClientHello's session ID.
    pub resumable: Option<ResumableSession>,
    /// Whether completed sessions are cached for resumption (then a session ID is issued).
    pub issue_session_id: bool,
}

/// What a client offers.
pub struct ClientParams<'a> {
    /// PSK identity.
    pub identity: Vec<u8>,
    /// The key.
    pub psk: Psk,
    /// Suites in order of preference.
    pub suites: &'a [CipherSuite],
    /// The CID to receive with, when the `connection_id` extension is offered.
    pub cid: Option<ConnectionId>,
    /// A session to resume.
    pub offered: Option<ResumableSession>,
}

/// The result of feeding a handshake.
#[derive(Debug)]
pub enum Progress {
    /// More messages are needed.
    Continue,
    /// The handshake completed.
    Complete(Box<Completed>),
}

/// A completed handshake.
#[derive(Debug)]
pub struct Completed {
    /// The established session.
    pub session: Session,
    /// The PSK identity used.
    pub identity: Vec<u8>,
    /// Whether this was an abbreviated handshake.
    pub resumed: bool,
    /// The session for resumption, when it has a session ID.
    pub resumable: Option<ResumableSession>,
}

/// Client: waiting for HelloVerifyRequest or ServerHello.
#[derive(Debug)]
pub struct ClientExpectServerHello {
    hello: ClientHello,
    psk: Psk,
    identity: Vec<u8>,
    offered: Option<ResumableSession>,
    hello_verify_requests: u8,
}

/// Client: got ServerHello of a full handshake, waiting for ServerHelloDone.
#[derive(Debug)]
pub struct ClientExpectServerHelloDone {
    psk: Psk,
    identity: Vec<u8>,
    session_id: Vec<u8>,
}

/// Server: sent flight 4, waiting for ClientKeyExchange.
#[derive(Debug)]
pub struct ServerExpectClientKeyExchange {
    session_id: Vec<u8>,
}

/// Either side: keys are derived, waiting for the peer's ChangeCipherSpec.
#[derive(Debug)]
pub struct ExpectChangeCipherSpec {
    secrets: Secrets,
    pending_read: Protection,
}

/// Either side: the peer's ChangeCipherSpec is in, waiting for its Finished.
#[derive(Debug)]
pub struct ExpectFinished {
    secrets: Secrets,
}

/// What the last two states carry.
#[derive(Debug)]
struct Secrets {
    master: MasterSecret,
    identity: Vec<u8>,
    session_id: Vec<u8>,
    resumed: bool,
    /// Whether this side sends the last flight (CCS, Finished) after verifying the peer's.
    answer_with_finished: bool,
}

/// The handshake state. It lives inside the boxed [`Handshake`], so variant sizes matter little.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum State {
    /// See [`ClientExpectServerHello`].
    ClientExpectServerHello(ClientExpectServerHello),
    /// See [`ClientExpectServerHelloDone`].
    ClientExpectServerHelloDone(ClientExpectServerHelloDone),
    /// See [`ServerExpectClientKeyExchange`].
    ServerExpectClientKeyExchange(ServerExpectClientKeyExchange),
    /// See [`ExpectChangeCipherSpec`].
    ExpectChangeCipherSpec(ExpectChangeCipherSpec),
    /// See [`ExpectFinished`].
    ExpectFinished(ExpectFinished),
    /// A message was refused; the handshake is over.
    Failed,
    /// The handshake completed; the session took over.
    Complete,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::ClientExpectServerHello(_) => "ClientExpectServerHello",
            Self::ClientExpectServerHelloDone(_) => "ClientExpectServerHelloDone",
            Self::ServerExpectClientKeyExchange(_) => "ServerExpectClientKeyExchange",
            Self::ExpectChangeCipherSpec(_) => "ExpectChangeCipherSpec",
            Self::ExpectFinished(_) => "ExpectFinished",
            Self::Failed => "Failed",
            Self::Complete => "Complete",
        }
    }
}

fn unexpected(what: &'static str, state: &State) -> Error {
    Error::UnexpectedMessage {
        what,
        state: state.name(),
    }
}

fn message_name(msg_type: HandshakeType) -> &'static str {
    match msg_type {
        HandshakeType::HelloRequest => "HelloRequest",
        HandshakeType::ClientHello => "ClientHello",
        HandshakeType::ServerHello => "ServerHello",
        HandshakeType::HelloVerifyRequest => "HelloVerifyRequest",
        HandshakeType::ServerKeyExchange => "ServerKeyExchange",
        HandshakeType::ServerHelloDone => "ServerHelloDone",
        HandshakeType::ClientKeyExchange => "ClientKeyExchange",
        HandshakeType::Finished => "Finished",
        HandshakeType::Unknown(_) => "unknown handshake message",
    }
}

/// State shared by all handshake states: transcript, flights, record state.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    role: Role,
    limits: Limits,
    /// Sending side of the record layer.
    pub writer: RecordWriter,
    /// Epoch the peer's records are read in (0 until its ChangeCipherSpec).
    pub read_epoch: u16,
    read: Option<Protection>,
    replay: ReplayWindow,
    reassembler: Reassembler,
    transcript: Sha256,
    next_send_seq: u16,
    flight: Vec<FlightItem>,
    timer: Option<RetransmitTimer>,
    client_random: [u8; 32],
    server_random: [u8; 32],
    suite: CipherSuite,
    extended_master_secret: bool,
    /// The CID the peer writes on records to us.
    pub cid_in: ConnectionId,
    write_epoch: u16,
    outgoing: Vec<Vec<u8>>,
}

impl Handshake {
    fn new(role: Role, limits: Limits, state: State, epoch0_seq: u64, next_recv: u16) -> Self {
        Self {
            state,
            role,
            limits,
            writer: RecordWriter::new(epoch0_seq),
            read_epoch: 0,
            read: None,
            replay: ReplayWindow::default(),
            reassembler: Reassembler::new(next_recv, limits.max_handshake_message),
            transcript: Sha256::new(),
            next_send_seq: 0,
            flight: Vec::new(),
            timer: None,
            client_random: [0; 32],
            server_random: [0; 32],
            suite: CipherSuite::PskWithAes128Ccm8,
            extended_master_secret: false,
            cid_in: ConnectionId::EMPTY,
            write_epoch: 0,
            outgoing: Vec::new(),
        }
    }

    /// The client random of this handshake.
    pub fn client_random(&self) -> &[u8; 32] {
        &self.client_random
    }

    /// Starts a client handshake; the first flight waits in [`Handshake::take_outgoing`].
    pub fn client_start(
        now: Duration,
        limits: Limits,
        rng: &mut dyn CryptoRng,
        params: ClientParams<'_>,
    ) -> Result<Self, Error> {
        let ClientParams {
            identity,
            psk,
            suites,
            cid,
            offered,
        } = params;
        let mut random = [0u8; 32];
        rng.fill_bytes(&mut random);
        let mut cipher_suites: Vec<u16> = suites.iter().map(|suite| suite.code()).collect();
        cipher_suites.push(EMPTY_RENEGOTIATION_INFO_SCSV);
        let hello = ClientHello {
            version: DTLS_1_2,
            random,
            session_id: offered
                .as_ref()
                .map(|session| session.session_id.clone())
                .unwrap_or_default(),
            cookie: Vec::new(),
            cipher_suites,
            compression_methods: vec![0],
            extensions: HelloExtensions {
                extended_master_secret: true,
                renegotiation_info: None,
                connection_id: cid.map(|cid| cid.as_bytes().to_vec()),
            },
        };
        let state = State::ClientExpectServerHello(ClientExpectServerHello {
            hello: hello.clone(),
            psk,
            identity,
            offered,
            hello_verify_requests: 0,
        });
        let mut handshake = Self::new(Role::Client, limits, state, 0, 0);
        handshake.client_random = random;
        handshake.cid_in = cid.unwrap_or_default();
        let mut body = Vec::new();
        hello.encode(&mut body);
        handshake.queue(HandshakeType::ClientHello, body);
        handshake.flush(now)?;
        Ok(handshake)
    }

    /// Starts a server handshake from a ClientHello whose cookie was verified; flight 4 (or the
    /// abbreviated flight) waits in [`Handshake::take_outgoing`].
    pub fn server_start(
        now: Duration,
        limits: Limits,
        rng: &mut dyn CryptoRng,
        env: &ServerEnv<'_>,
        hello_message: &Message,
        record_seq: u64,
    ) -> Result<Self, Error> {
        let hello = ClientHello::parse(&hello_message.body)?;
        // DTLS versions count down: 0xFEFD is 1.2, 0xFEFF is 1.0.
        if hello.version > DTLS_1_2 {
            return Err(Error::ProtocolVersion);
        }
        if !hello.compression_methods.contains(&0) {
            return Err(Error::Invalid {
                what: "compression_methods without null",
            });
        }
        let suite = env
            .suites
            .iter()
            .copied()
            .find(|suite| hello.cipher_suites.contains(&suite.code()))
            .ok_or(Error::NoCommonCipherSuite)?;
        let secure_renegotiation = hello.cipher_suites.contains(&EMPTY_RENEGOTIATION_INFO_SCSV)
            || hello.extensions.renegotiation_info.is_some();
        if hello
            .extensions
            .renegotiation_info
            .as_ref()
            .is_some_and(|info| !info.is_empty())
        {
            return Err(Error::RenegotiationRefused);
        }
        let mut handshake = Self::new(
            Role::Server,
            limits,
            State::Failed,
            record_seq,
            hello_message.message_seq.wrapping_add(1),
        );
        handshake.next_send_seq = hello_message.message_seq;
        handshake.client_random = hello.random;
        rng.fill_bytes(&mut handshake.server_random);
        handshake.suite = suite;
        handshake.extended_master_secret = hello.extensions.extended_master_secret;
        handshake.add_to_transcript(hello_message);

        let mut cid_extension = None;
        if let (Some(our_cid), Some(peer_cid)) = (env.cid, &hello.extensions.connection_id) {
            handshake.writer.cid = ConnectionId::new(peer_cid)?;
            handshake.cid_in = our_cid;
            cid_extension = Some(our_cid.as_bytes().to_vec());
        }
        let resumable = env.resumable.as_ref().filter(|session| {
            !hello.session_id.is_empty()
                && session.session_id == hello.session_id
                && session.extended_master_secret == hello.extensions.extended_master_secret
                && hello.cipher_suites.contains(&session.suite.code())
        });
        let session_id = match resumable {
            Some(session) => session.session_id.clone(),
            None if env.issue_session_id => {
                let mut id = vec![0u8; 32];
                rng.fill_bytes(&mut id);
                id
            }
            None => Vec::new(),
        };
        if let Some(session) = resumable {
            handshake.suite = session.suite;
        }
        let server_hello = ServerHello {
            version: DTLS_1_2,
            random: handshake.server_random,
            session_id: session_id.clone(),
            cipher_suite: handshake.suite.code(),
            compression_method: 0,
            extensions: HelloExtensions {
                extended_master_secret: handshake.extended_master_secret,
                renegotiation_info: secure_renegotiation.then(Vec::new),
                connection_id: cid_extension,
            },
        };
        let mut body = Vec::new();
        server_hello.encode(&mut body);
        handshake.queue(HandshakeType::ServerHello, body);
        match resumable {
            Some(session) => {
                let master = session.master.clone();
                let keys = master.key_block(&handshake.client_random, &handshake.server_random);
                let pending_read = handshake.install_keys(&keys);
                handshake.queue_change_cipher_spec_and_finished(&master);
                handshake.state = State::ExpectChangeCipherSpec(ExpectChangeCipherSpec {
                    secrets: Secrets {
                        master,
                        identity: session.identity.clone(),
                        session_id,
                        resumed: true,
                        answer_with_finished: false,
                    },
                    pending_read,
                });
            }
            None => {
                if let Some(hint) = env.identity_hint {
                    handshake.queue(HandshakeType::ServerKeyExchange, encode_psk_identity(hint));
                }
                handshake.queue(HandshakeType::ServerHelloDone, Vec::new());
                handshake.state =
                    State::ServerExpectClientKeyExchange(ServerExpectClientKeyExchange {
                        session_id,
                    });
            }
        }
        handshake.flush(now)?;
        Ok(handshake)
    }

    fn add_to_transcript(&mut self, message: &Message) {
        self.transcript.update(whole_message(
            message.msg_type,
            message.message_seq,
            &message.body,
        ));
    }

    fn transcript_hash(&self) -> [u8; 32] {
        self.transcript.clone().finalize().into()
    }

    fn queue(&mut self, msg_type: HandshakeType, body: Vec<u8>) {
        let message_seq = self.next_send_seq;
        self.next_send_seq = self.next_send_seq.wrapping_add(1);
        self.transcript
            .update(whole_message(msg_type, message_seq, &body));
        self.flight.push(FlightItem::Handshake {
            epoch: self.write_epoch,
            msg_type,
            message_seq,
            body,
        });
    }

    fn queue_change_cipher_spec_and_finished(&mut self, master: &MasterSecret) {
        self.flight.push(FlightItem::ChangeCipherSpec);
        self.write_epoch = 1;
        let verify_data = master.verify_data(self.role == Role::Client, &self.transcript_hash());
        self.queue(HandshakeType::Finished, verify_data.to_vec());
    }

    /// Installs the write key of this side and returns the read protection for the peer's CCS.
    fn install_keys(&mut self, keys: &KeyBlock) -> Protection {
        let (write, read) = match self.role {
            Role::Client => (&keys.client_write, &keys.server_write),
            Role::Server => (&keys.server_write, &keys.client_write),
        };
        self.writer.protection = Some(Protection {
            suite: self.suite,
            key: write.clone(),
        });
        Protection {
            suite: self.suite,
            key: read.clone(),
        }
    }

    fn send_flight(&mut self, now: Duration) -> Result<Vec<Vec<u8>>, Error> {
        self.timer = Some(RetransmitTimer::start(now));
        write_flight(&mut self.writer, &self.flight, self.limits.mtu)
    }

    /// The retransmission deadline, if a flight is waiting for an answer.
    pub fn deadline(&self) -> Option<Duration> {
        self.timer.map(|timer| timer.deadline())
    }

    /// Retransmits the flight if its timer expired; an error once retransmissions run out.
    pub fn on_timeout(&mut self, now: Duration) -> Result<Vec<Vec<u8>>, Error> {
        let Some(timer) = self.timer.as_mut() else {
            return Ok(Vec::new());
        };
        if !timer.expired(now) {
            return Ok(Vec::new());
        }
        if !timer.back_off(now, self.limits.max_retransmissions) {
            return Err(Error::Limit {
                what: "handshake retransmissions",
            });
        }
        write_flight(&mut self.writer, &self.flight, self.limits.mtu)
    }

    /// Retransmits the current flight because the peer retransmitted its previous one
    /// (RFC 6347 §4.2.4).
    pub fn retransmit(&mut self) -> Result<Vec<Vec<u8>>, Error> {
        if self.flight.is_empty() {
            return Ok(Vec::new());
        }
        write_flight(&mut self.writer, &self.flight, self.limits.mtu)
    }

    /// The reassembler, fed by the connection with handshake fragments of the read epoch.
    pub fn reassembler(&mut self) -> &mut Reassembler {
        &mut self.reassembler
    }

    /// Opens a record of epoch 1 with the peer's keys, if its ChangeCipherSpec was processed.
    pub fn open(&mut self, record: &Record<'_>) -> Option<(ContentType, Vec<u8>)> {
        let read = self.read.as_ref()?;
        let cid_matches = if record.content_type == ContentType::Tls12Cid {
            !self.cid_in.is_empty() && record.cid == self.cid_in.as_bytes()
        } else {
            self.cid_in.is_empty()
        };
        if !cid_matches || !self.replay.is_fresh(record.sequence) {
            return None;
        }
        let opened = read.open(record).ok()?;
        self.replay.accept(record.sequence);
        Some(opened)
    }

    /// Epoch this side's alerts go out in.
    pub fn write_epoch(&self) -> u16 {
        self.write_epoch
    }

    /// Handles the peer's ChangeCipherSpec. A CCS in any state but
    /// [`ExpectChangeCipherSpec`] is refused.
    pub fn on_change_cipher_spec(&mut self) -> Result<(), Error> {
        match core::mem::replace(&mut self.state, State::Failed) {
            State::ExpectChangeCipherSpec(state) => {
                self.read = Some(state.pending_read);
                self.read_epoch = 1;
                self.state = State::ExpectFinished(ExpectFinished {
                    secrets: state.secrets,
                });
                Ok(())
            }
            other => {
                let error = unexpected("ChangeCipherSpec", &other);
                self.state = other;
                Err(error)
            }
        }
    }

    /// Datagrams produced since the last call.
    pub fn take_outgoing(&mut self) -> Vec<Vec<u8>> {
        core::mem::take(&mut self.outgoing)
    }

    fn flush(&mut self, now: Duration) -> Result<(), Error> {
        let datagrams = self.send_flight(now)?;
        self.outgoing.extend(datagrams);
        Ok(())
    }

    /// Handles a complete handshake message of the peer's next flight.
    pub fn on_message(
        &mut self,
        now: Duration,
        message: Message,
        resolver: Option<&dyn PskResolver>,
    ) -> Result<Progress, Error> {
        let hash_before = self.transcript_hash();
        self.add_to_transcript(&message);
        // A message of the peer's next flight acknowledges ours (RFC 6347 §4.2.4).
        self.timer = None;
        self.flight.clear();
        let state = core::mem::replace(&mut self.state, State::Failed);
        let name = message_name(message.msg_type);
        let (next, progress) = match (state, message.msg_type) {
            (State::ClientExpectServerHello(state), HandshakeType::HelloVerifyRequest) => {
                self.client_hello_verify_request(now, state, &message.body)?
            }
            (State::ClientExpectServerHello(state), HandshakeType::ServerHello) => {
                self.client_server_hello(state, &message.body)?
            }
            (State::ClientExpectServerHelloDone(state), HandshakeType::ServerKeyExchange) => {
                parse_psk_identity(&message.body, "psk_identity_hint")?;
                (
                    State::ClientExpectServerHelloDone(state),
                    Progress::Continue,
                )
            }
            (State::ClientExpectServerHelloDone(state), HandshakeType::ServerHelloDone) => {
                self.client_server_hello_done(now, state, &message.body)?
            }
            (State::ServerExpectClientKeyExchange(state), HandshakeType::ClientKeyExchange) => {
                let resolver = resolver.ok_or(Error::UnknownPskIdentity)?;
                self.server_client_key_exchange(state, &message.body, resolver)?
            }
            (State::ExpectFinished(state), HandshakeType::Finished) => {
                self.finished(now, state, &message.body, &hash_before)?
            }
            (other, _) => return Err(unexpected(name, &other)),
        };
        self.state = next;
        // Waiting for the rest of the peer's flight is bounded by the same timer even when
        // there is nothing to retransmit.
        if self.timer.is_none() {
            self.timer = Some(RetransmitTimer::start(now));
        }
        Ok(progress)
    }

    fn client_hello_verify_request(
        &mut self,
        now: Duration,
        mut state: ClientExpectServerHello,
        body: &[u8],
    ) -> Result<(State, Progress), Error> {
        let request = HelloVerifyRequest::parse(body)?;
        state.hello_verify_requests += 1;
        if state.hello_verify_requests > MAX_HELLO_VERIFY_REQUESTS {
            return Err(Error::Limit {
                what: "HelloVerifyRequests",
            });
        }
        // The first ClientHello and the HelloVerifyRequest are not hashed (RFC 6347 §4.2.6).
        self.transcript = Sha256::new();
        state.hello.cookie = request.cookie;
        let mut body = Vec::new();
        state.hello.encode(&mut body);
        self.queue(HandshakeType::ClientHello, body);
        self.flush(now)?;
        Ok((State::ClientExpectServerHello(state), Progress::Continue))
    }

    fn client_server_hello(
        &mut self,
        state: ClientExpectServerHello,
        body: &[u8],
    ) -> Result<(State, Progress), Error> {
        let hello = ServerHello::parse(body)?;
        if hello.version != DTLS_1_2 {
            return Err(Error::ProtocolVersion);
        }
        let suite = CipherSuite::from_code(hello.cipher_suite)
            .filter(|suite| state.hello.cipher_suites.contains(&suite.code()))
            .ok_or(Error::Invalid {
                what: "cipher_suite not offered",
            })?;
        if hello.compression_method != 0 {
            return Err(Error::Invalid {
                what: "compression_method",
            });
        }
        if hello
            .extensions
            .renegotiation_info
            .as_ref()
            .is_some_and(|info| !info.is_empty())
        {
            return Err(Error::RenegotiationRefused);
        }
        if let Some(cid) = &hello.extensions.connection_id {
            if state.hello.extensions.connection_id.is_none() {
                return Err(Error::Invalid {
                    what: "connection_id not offered",
                });
            }
            self.writer.cid = ConnectionId::new(cid)?;
        }
        self.suite = suite;
        self.server_random = hello.random;
        self.extended_master_secret = hello.extensions.extended_master_secret;
        let resumed = state.offered.filter(|offered| {
            !hello.session_id.is_empty() && offered.session_id == hello.session_id
        });
        let Some(offered) = resumed else {
            let next = ClientExpectServerHelloDone {
                psk: state.psk,
                identity: state.identity,
                session_id: hello.session_id,
            };
            return Ok((State::ClientExpectServerHelloDone(next), Progress::Continue));
        };
        if offered.suite != suite || offered.extended_master_secret != self.extended_master_secret {
            return Err(Error::Invalid {
                what: "resumed session parameters",
            });
        }
        let keys = offered
            .master
            .key_block(&self.client_random, &self.server_random);
        let pending_read = self.install_keys(&keys);
        let next = ExpectChangeCipherSpec {
            secrets: Secrets {
                master: offered.master,
                identity: offered.identity,
                session_id: offered.session_id,
                resumed: true,
                answer_with_finished: true,
            },
            pending_read,
        };
        Ok((State::ExpectChangeCipherSpec(next), Progress::Continue))
    }

    fn derive_master(&self, psk: &Psk) -> MasterSecret {
        let premaster = psk.premaster_secret();
        let session_hash = self.transcript_hash();
        MasterSecret::derive(
            &premaster,
            &self.client_random,
            &self.server_random,
            self.extended_master_secret.then_some(&session_hash),
        )
    }

    fn client_server_hello_done(
        &mut self,
        now: Duration,
        state: ClientExpectServerHelloDone,
        body: &[u8],
    ) -> Result<(State, Progress), Error> {
        if !body.is_empty() {
            return Err(Error::Invalid {
                what: "ServerHelloDone length",
            });
        }
        self.queue(
            HandshakeType::ClientKeyExchange,
            encode_psk_identity(&state.identity),
        );
        let master = self.derive_master(&state.psk);
        let keys = master.key_block(&self.client_random, &self.server_random);
        let pending_read = self.install_keys(&keys);
        self.queue_change_cipher_spec_and_finished(&master);
        self.flush(now)?;
        let next = ExpectChangeCipherSpec {
            secrets: Secrets {
                master,
                identity: state.identity,
                session_id: state.session_id,
                resumed: false,
                answer_with_finished: false,
            },
            pending_read,
        };
        Ok((State::ExpectChangeCipherSpec(next), Progress::Continue))
    }

    fn server_client_key_exchange(
        &mut self,
        state: ServerExpectClientKeyExchange,
        body: &[u8],
        resolver: &dyn PskResolver,
    ) -> Result<(State, Progress), Error> {
        let identity = parse_psk_identity(body, "psk_identity")?;
        let psk = resolver.key(&identity).ok_or(Error::UnknownPskIdentity)?;
        let master = self.derive_master(&psk);
        let keys = master.key_block(&self.client_random, &self.server_random);
        let pending_read = self.install_keys(&keys);
        let next = ExpectChangeCipherSpec {
            secrets: Secrets {
                master,
                identity,
                session_id: state.session_id,
                resumed: false,
                answer_with_finished: true,
            },
            pending_read,
        };
        Ok((State::ExpectChangeCipherSpec(next), Progress::Continue))
    }

    fn finished(
        &mut self,
        now: Duration,
        state: ExpectFinished,
        body: &[u8],
        hash_before: &[u8; 32],
    ) -> Result<(State, Progress), Error> {
        let received = parse_finished(body)?;
        let secrets = state.secrets;
        let peer_is_client = self.role == Role::Server;
        let expected = secrets.master.verify_data(peer_is_client, hash_before);
        if !bool::from(received.ct_eq(&expected)) {
            return Err(Error::DecryptError);
        }
        let mut final_flight = None;
        if secrets.answer_with_finished {
            let message_seq = self.next_send_seq;
            self.queue_change_cipher_spec_and_finished(&secrets.master);
            if let Some(FlightItem::Handshake { body, .. }) = self.flight.last() {
                final_flight = FinalFlight::new(body, message_seq);
            }
            self.flush(now)?;
        }
        let read = self.read.take().ok_or(Error::UnexpectedMessage {
            what: "Finished",
            state: "ExpectFinished without keys",
        })?;
        let writer = core::mem::replace(&mut self.writer, RecordWriter::new(0));
        let session = Session::new(
            self.role,
            read,
            writer,
            self.replay,
            self.cid_in,
            final_flight,
            &secrets.identity,
        );
        let resumable = (!secrets.session_id.is_empty()).then(|| ResumableSession {
            session_id: secrets.session_id.clone(),
            master: secrets.master.clone(),
            suite: self.suite,
            extended_master_secret: self.extended_master_secret,
            identity: secrets.identity.clone(),
        });
        let completed = Completed {
            session,
            identity: secrets.identity.clone(),
            resumed: secrets.resumed,
            resumable,
        };
        Ok((State::Complete, Progress::Complete(Box::new(completed))))
    }
}
