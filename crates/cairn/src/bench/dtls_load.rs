//! The load generator of `cairn bench dtls`: many in-process DTLS 1.2 clients
//! (`cairn_dtls::ClientEndpoint`, offering TLS_PSK_WITH_AES_128_CCM_8 only, RFC 6655) in
//! one thread, each over its own UDP socket, all behind one `epoll` (`mio`).
//!
//! Three loads:
//! - **handshakes**: each client runs full PSK handshakes one after the other from its
//!   socket, one session at a time: a new session (cookie exchange included, RFC 6347
//!   §4.2.1, no resumption), one confirmable GET, then close_notify. A client whose
//!   handshake fails takes a new socket; source addresses rotate over
//!   127.0.0.2–127.0.0.201;
//! - **requests**: each client keeps one session and several confirmable GETs in flight
//!   (closed loop, as in `cairn bench coap`), read with `recvmmsg` and written with
//!   `sendmmsg`;
//! - **held sessions**: handshakes from distinct addresses whose sockets are closed, with
//!   no close_notify, once the session is established, so that the server keeps an idle
//!   session per address that nobody uses.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_dtls::{CipherSuite, ClientCertificateConfig, ClientConfig, ClientEndpoint, Event, Psk};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token};
use quinn_udp::UdpSocketState;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};

use super::cpu::CpuSample;
use super::load::{RECEIVE_BUFFER_LEN, Receiver};
use super::message::{GetRequest, TOKEN_LEN, empty_acknowledgement, parse_header, set_identity};
use super::server::ServerProcess;

/// How often retransmission timers, stalled handshakes, lost requests and the server's
/// health are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(20);
/// A handshake (with its GET) not done after this long is counted failed and abandoned.
/// The engine's first retransmission comes after 1 s, so one lost datagram still fits.
const HANDSHAKE_GIVE_UP: Duration = Duration::from_secs(3);
/// A GET without an answer after this long is counted lost and sent anew.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Source addresses of the handshake load: 127.0.0.2 onwards.
const SOURCE_ADDRESSES: u32 = 200;
/// Ports of the held sessions, on each of 127.0.0.2, 127.0.0.3, ...
const HELD_PORTS: std::ops::RangeInclusive<u16> = 10_000..=65_000;
/// The held-sessions load stops when no session was established for this long.
const HOLD_STALL: Duration = Duration::from_secs(10);

/// How the clients authenticate.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A PSK identity and key; TLS_PSK_WITH_AES_128_CCM_8 only.
    Psk { identity: Vec<u8>, key: Vec<u8> },
    /// Certificate mode (X.509 or raw public key); the ECDHE-ECDSA suites.
    Certificate(Arc<ClientCertificateConfig>),
}

impl Credentials {
    /// The mode and suite, for messages.
    fn describe(&self) -> &'static str {
        match self {
            Credentials::Psk { .. } => "DTLS-PSK handshake (TLS_PSK_WITH_AES_128_CCM_8)",
            Credentials::Certificate(_) => "ECDHE-ECDSA handshake",
        }
    }
}

/// Warm-up and measured window lengths.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub measured: Duration,
}

/// What one measured window saw.
#[derive(Debug, Clone)]
pub struct Window {
    pub length: Duration,
    /// Handshakes done (with their GET answered), or GETs answered.
    pub completed: u64,
    /// Handshakes abandoned, or GETs counted lost.
    pub failures: u64,
    /// Answers that were not 2.xx.
    pub unexpected_answers: u64,
    pub server_cpu: Duration,
    pub generator_cpu: Duration,
}

impl Window {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.length.as_secs_f64()
    }

    /// Server CPU time per completed unit, in microseconds.
    pub fn server_cpu_us(&self) -> Option<f64> {
        per_unit_us(self.server_cpu, self.completed)
    }

    /// Load generator CPU time per completed unit, in microseconds.
    pub fn generator_cpu_us(&self) -> Option<f64> {
        per_unit_us(self.generator_cpu, self.completed)
    }

    /// Cores the server kept busy on average.
    pub fn server_cores(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.length.as_secs_f64()
    }

    /// `earlier` and `later` as one window: lengths, counts and CPU times added up.
    pub fn merge(earlier: Option<Window>, later: Window) -> Window {
        let Some(earlier) = earlier else {
            return later;
        };
        Window {
            length: earlier.length + later.length,
            completed: earlier.completed + later.completed,
            failures: earlier.failures + later.failures,
            unexpected_answers: earlier.unexpected_answers + later.unexpected_answers,
            server_cpu: earlier.server_cpu + later.server_cpu,
            generator_cpu: earlier.generator_cpu + later.generator_cpu,
        }
    }
}

fn per_unit_us(cpu: Duration, units: u64) -> Option<f64> {
    (units > 0).then(|| cpu.as_secs_f64() * 1e6 / units as f64)
}

/// Counters of the current phase.
#[derive(Debug, Default)]
struct Tally {
    completed: u64,
    failures: u64,
    unexpected_answers: u64,
}

/// Warm-up, then the measured window, with the server's CPU time and the generator's own
/// sampled at both edges of the window.
struct Phases {
    server_pid: u32,
    window_start: Instant,
    window_end: Instant,
    opened: Option<(Instant, CpuSample, CpuSample)>,
}

impl Phases {
    fn new(timing: Timing, server_pid: u32) -> Self {
        let window_start = Instant::now() + timing.warmup;
        Self {
            server_pid,
            window_start,
            window_end: window_start + timing.measured,
            opened: None,
        }
    }

    fn measuring(&self) -> bool {
        self.opened.is_some()
    }

    /// The next instant the phase changes.
    fn next_edge(&self) -> Instant {
        if self.measuring() {
            self.window_end
        } else {
            self.window_start
        }
    }

    /// Opens the window or closes it as time passes; the window's figures once closed.
    fn advance(&mut self, now: Instant, tally: &mut Tally) -> anyhow::Result<Option<Window>> {
        match self.opened {
            None if now >= self.window_start => {
                let server = CpuSample::read(self.server_pid)?;
                let own = CpuSample::read(std::process::id())?;
                *tally = Tally::default();
                self.opened = Some((Instant::now(), server, own));
                Ok(None)
            }
            Some((opened, server_start, own_start)) if now >= self.window_end => {
                let server_end = CpuSample::read(self.server_pid)?;
                let own_end = CpuSample::read(std::process::id())?;
                Ok(Some(Window {
                    length: opened.elapsed(),
                    completed: tally.completed,
                    failures: tally.failures,
                    unexpected_answers: tally.unexpected_answers,
                    server_cpu: server_start.until(&server_end),
                    generator_cpu: own_start.until(&own_end),
                }))
            }
            _ => Ok(None),
        }
    }
}

/// The engine's clock: time since the generator started.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn at(self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.0)
    }
}

/// A client endpoint for `server` that offers TLS_PSK_WITH_AES_128_CCM_8 only (PSK), or
/// the ECDHE-ECDSA suites (certificate mode).
fn client_endpoint(
    credentials: &Credentials,
    server: SocketAddr,
    seed: u64,
) -> anyhow::Result<ClientEndpoint> {
    let config = match credentials {
        Credentials::Psk { identity, key } => {
            let mut config = ClientConfig::new(identity.clone(), Psk::new(key.clone()));
            config.cipher_suites = vec![CipherSuite::PskWithAes128Ccm8];
            config
        }
        Credentials::Certificate(certificate) => {
            ClientConfig::with_certificate(ClientCertificateConfig::clone(certificate))
        }
    };
    ClientEndpoint::new(config, Box::new(StdRng::seed_from_u64(seed)), server)
        .map_err(|error| anyhow::anyhow!("cannot make a DTLS client: {error}"))
}

/// A non-blocking socket bound to `local` and connected to `server`.
fn open_socket(local: SocketAddr, server: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    Ok(socket)
}

/// Datagrams an endpoint wrote that its socket has not taken yet.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Vec<u8>>,
}

impl Outbox {
    fn collect(&mut self, endpoint: &mut ClientEndpoint) {
        self.queue.extend(
            std::iter::from_fn(|| endpoint.poll_transmit()).map(|transmit| transmit.payload),
        );
    }

    /// Sends the queued datagrams, as many per `sendmmsg` as the kernel takes. A full send
    /// buffer leaves the rest queued for the next turn of the loop.
    fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        while !self.queue.is_empty() {
            let (front, back) = self.queue.as_slices();
            let buffers: Vec<[IoSlice<'_>; 1]> = front
                .iter()
                .chain(back)
                .map(|datagram| [IoSlice::new(datagram)])
                .collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = buffers
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut messages: Vec<MMsgHdr<'_>> = buffers
                .iter()
                .zip(controls.iter_mut())
                .map(|(buffer, control)| MMsgHdr::new(buffer, control))
                .collect();
            match sendmmsg(socket, &mut messages, SendFlags::empty()) {
                Ok(sent) => drop(self.queue.drain(..sent)),
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }
}

/// How a handshake ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Done,
    Failed,
}

/// What a [`Handshaker`] does once its session is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterConnect {
    /// One GET, then close_notify.
    RequestAndClose,
    /// Nothing: the socket is closed and the server keeps the session.
    Leave,
}

/// One client running handshakes one after the other, each from a new socket.
struct Handshaker {
    index: usize,
    endpoint: ClientEndpoint,
    socket: Option<UdpSocket>,
    outbox: Outbox,
    after_connect: AfterConnect,
    request: GetRequest,
    /// Token of the GET sent on the current session.
    sent_token: Option<[u8; TOKEN_LEN]>,
    next_message_id: u16,
    started: Instant,
}

impl Handshaker {
    fn new(
        index: usize,
        credentials: &Credentials,
        server: SocketAddr,
        after_connect: AfterConnect,
        request: &GetRequest,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            index,
            endpoint: client_endpoint(credentials, server, index as u64 + 1)?,
            socket: None,
            outbox: Outbox::default(),
            after_connect,
            request: request.clone(),
            sent_token: None,
            next_message_id: (index as u16).wrapping_mul(7919),
            started: Instant::now(),
        })
    }

    /// Starts a full handshake, from the current socket or, without one, from a new
    /// socket bound to `local`.
    fn start(
        &mut self,
        registry: &Registry,
        local: SocketAddr,
        now: Instant,
        clock: Clock,
    ) -> anyhow::Result<()> {
        if self.socket.is_none() {
            let mut socket = open_socket(local, self.endpoint.server())?;
            registry.register(&mut socket, Token(self.index), Interest::READABLE)?;
            self.socket = Some(socket);
        }
        while self.endpoint.poll_event().is_some() {}
        self.outbox.queue.clear();
        self.endpoint.forget_session();
        self.endpoint
            .connect(clock.at(now))
            .map_err(|error| anyhow::anyhow!("cannot start a handshake: {error}"))?;
        self.sent_token = None;
        self.started = now;
        self.send()?;
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        self.outbox.collect(&mut self.endpoint);
        match &self.socket {
            Some(socket) => self.outbox.flush(socket),
            None => Ok(()),
        }
    }

    /// Reads what the server sent and advances the handshake.
    fn on_readable(
        &mut self,
        now: Instant,
        clock: Clock,
        buffer: &mut [u8],
    ) -> io::Result<Outcome> {
        let Some(socket) = &self.socket else {
            return Ok(Outcome::Running);
        };
        let server = self.endpoint.server();
        loop {
            match socket.recv(buffer) {
                Ok(len) => self.endpoint.handle(clock.at(now), server, &buffer[..len]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.after_input(clock.at(now))
    }

    /// Runs the retransmission timer; gives up on a handshake that takes too long.
    fn on_housekeeping(&mut self, now: Instant, clock: Clock) -> io::Result<Outcome> {
        if self.socket.is_none() {
            return Ok(Outcome::Running);
        }
        if now.saturating_duration_since(self.started) >= HANDSHAKE_GIVE_UP {
            return Ok(Outcome::Failed);
        }
        if self
            .endpoint
            .poll_timeout()
            .is_some_and(|deadline| deadline <= clock.at(now))
        {
            self.endpoint.handle_timeout(clock.at(now));
            return self.after_input(clock.at(now));
        }
        Ok(Outcome::Running)
    }

    fn after_input(&mut self, now: Duration) -> io::Result<Outcome> {
        let mut outcome = Outcome::Running;
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Connected { .. } => match self.after_connect {
                    AfterConnect::Leave => outcome = Outcome::Done,
                    AfterConnect::RequestAndClose => self.send_request(now),
                },
                Event::ApplicationData { data, .. } => {
                    let answered = parse_header(&data).is_some_and(|header| {
                        Some(header.token) == self.sent_token.as_ref().map(|t| &t[..])
                    });
                    if answered {
                        outcome = Outcome::Done;
                    }
                }
                Event::Closed { .. } if outcome == Outcome::Running => outcome = Outcome::Failed,
                Event::Closed { .. } | Event::PeerMoved { .. } => {}
            }
        }
        self.send()?;
        Ok(outcome)
    }

    fn send_request(&mut self, now: Duration) {
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let [high, low] = message_id.to_be_bytes();
        let token = [(self.index >> 8) as u8, self.index as u8, high, low];
        let request = self.request.with_identity(message_id, token);
        if self
            .endpoint
            .send(now, self.endpoint.server(), &request)
            .is_ok()
        {
            self.sent_token = Some(token);
        }
    }

    /// Ends the current session. A session that did its GET is closed with close_notify
    /// and its socket kept for the next handshake (one session per socket at a time, so
    /// the server sees no more addresses than there are clients). Otherwise the socket is
    /// closed: a held session stays on the server, and a failed handshake's address is not
    /// used again.
    fn finish(&mut self, outcome: Outcome) -> io::Result<()> {
        if outcome == Outcome::Done && self.after_connect == AfterConnect::RequestAndClose {
            self.endpoint.close(self.endpoint.server());
            self.send()
        } else {
            self.socket = None;
            Ok(())
        }
    }
}

/// Runs back-to-back full handshakes from `clients` clients against the DTLS server at
/// `dtls` (of process `server`): warm-up, then the measured window.
pub fn run_handshakes(
    server: &mut ServerProcess,
    dtls: SocketAddr,
    credentials: &Credentials,
    request: &GetRequest,
    clients: usize,
    timing: Timing,
    stop: &AtomicBool,
) -> anyhow::Result<Window> {
    let name = server.name();
    let talking = move || format!("running handshakes with the {name} server at {dtls}");
    let clock = Clock(Instant::now());
    let mut poll = Poll::new()?;
    let mut handshakers = Vec::with_capacity(clients);
    let mut started: u32 = 0;
    let mut next_source = || {
        started = started.wrapping_add(1);
        SocketAddr::from((
            Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + started % SOURCE_ADDRESSES),
            0,
        ))
    };
    let now = Instant::now();
    for index in 0..clients {
        let mut handshaker = Handshaker::new(
            index,
            credentials,
            dtls,
            AfterConnect::RequestAndClose,
            request,
        )?;
        handshaker
            .start(poll.registry(), next_source(), now, clock)
            .with_context(talking)?;
        handshakers.push(handshaker);
    }
    let mut phases = Phases::new(timing, server.pid());
    let mut tally = Tally::default();
    let mut events = Events::with_capacity(clients);
    let mut buffer = vec![0u8; RECEIVE_BUFFER_LEN];
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let now = Instant::now();
        if let Some(window) = phases.advance(now, &mut tally)? {
            return Ok(window);
        }
        let measuring = phases.measuring();
        let mut ended = Vec::new();
        if now >= next_housekeeping {
            server.ensure_running()?;
            for handshaker in &mut handshakers {
                let outcome = handshaker
                    .on_housekeeping(now, clock)
                    .with_context(talking)?;
                ended.push((handshaker.index, outcome));
            }
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        if ended.is_empty() {
            let timeout = phases
                .next_edge()
                .min(next_housekeeping)
                .saturating_duration_since(now);
            match poll.poll(&mut events, Some(timeout)) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => result?,
            }
            let now = Instant::now();
            for event in &events {
                let handshaker = &mut handshakers[event.token().0];
                let outcome = handshaker
                    .on_readable(now, clock, &mut buffer)
                    .with_context(talking)?;
                ended.push((handshaker.index, outcome));
            }
        }
        let now = Instant::now();
        for (index, outcome) in ended {
            let handshaker = &mut handshakers[index];
            match outcome {
                Outcome::Running => continue,
                Outcome::Done => {
                    tally.completed += u64::from(measuring);
                    handshaker.finish(Outcome::Done).with_context(talking)?;
                }
                Outcome::Failed => {
                    tally.failures += u64::from(measuring);
                    handshaker.finish(outcome).with_context(talking)?;
                }
            }
            handshaker
                .start(poll.registry(), next_source(), now, clock)
                .with_context(talking)?;
        }
        for handshaker in handshakers
            .iter_mut()
            .filter(|handshaker| !handshaker.outbox.queue.is_empty())
        {
            handshaker.send().with_context(talking)?;
        }
    }
}

/// Runs one handshake and one GET against `dtls`, so that a server that cannot do DTLS
/// with PSK fails with a clear message before any measurement.
pub fn probe(
    server: &mut ServerProcess,
    dtls: SocketAddr,
    credentials: &Credentials,
    request: &GetRequest,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4);
    let mut buffer = vec![0u8; RECEIVE_BUFFER_LEN];
    let mut handshaker =
        Handshaker::new(0, credentials, dtls, AfterConnect::RequestAndClose, request)?;
    handshaker.start(
        poll.registry(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        Instant::now(),
        clock,
    )?;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        server.ensure_running()?;
        poll.poll(&mut events, Some(HOUSEKEEPING_INTERVAL))?;
        let now = Instant::now();
        let mut outcome = handshaker.on_readable(now, clock, &mut buffer)?;
        if outcome == Outcome::Running {
            outcome = handshaker.on_housekeeping(now, clock)?;
        }
        match outcome {
            Outcome::Running => {}
            Outcome::Done => return handshaker.finish(Outcome::Done).map_err(Into::into),
            Outcome::Failed => bail!(
                "the {} server did not complete a {} and a GET on {dtls} within {} s",
                server.name(),
                credentials.describe(),
                HANDSHAKE_GIVE_UP.as_secs()
            ),
        }
    }
}

/// The distinct local addresses of held sessions: every port of [`HELD_PORTS`] on
/// 127.0.0.2, then on 127.0.0.3, and so on.
#[derive(Debug)]
struct HeldAddresses {
    host: u8,
    port: u16,
}

impl HeldAddresses {
    fn new() -> Self {
        Self {
            host: 2,
            port: *HELD_PORTS.start(),
        }
    }

    fn next(&mut self) -> Option<SocketAddr> {
        if self.host == 255 {
            return None;
        }
        let address = SocketAddr::from((Ipv4Addr::new(127, 0, 0, self.host), self.port));
        if self.port == *HELD_PORTS.end() {
            self.host += 1;
            self.port = *HELD_PORTS.start();
        } else {
            self.port += 1;
        }
        Some(address)
    }
}

/// A key table without keys, to read the server's default settings.
struct NoKeys;

impl cairn_dtls::PskResolver for NoKeys {
    fn key(&self, _identity: &[u8]) -> Option<Psk> {
        None
    }
}

/// What holding sessions achieved.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub established: usize,
    pub failures: usize,
    pub elapsed: Duration,
}

/// Establishes `count` sessions with the DTLS server at `dtls`, each from its own
/// address, `clients` handshakes at a time, and leaves them idle on the server.
pub fn hold_sessions(
    server: &mut ServerProcess,
    dtls: SocketAddr,
    credentials: &Credentials,
    count: usize,
    clients: usize,
    stop: &AtomicBool,
) -> anyhow::Result<Held> {
    let name = server.name();
    let talking = move || format!("establishing sessions with the {name} server at {dtls}");
    let clock = Clock(Instant::now());
    let begun = Instant::now();
    let mut poll = Poll::new()?;
    let mut addresses = HeldAddresses::new();
    let request = GetRequest::new("/");
    let clients = clients.min(count);
    let mut handshakers = Vec::with_capacity(clients);
    let mut held = Held {
        established: 0,
        failures: 0,
        elapsed: Duration::ZERO,
    };
    let mut running = 0;
    for index in 0..clients {
        let mut handshaker =
            Handshaker::new(index, credentials, dtls, AfterConnect::Leave, &request)?;
        if start_held(&mut handshaker, poll.registry(), &mut addresses, clock)
            .with_context(talking)?
        {
            running += 1;
        }
        handshakers.push(handshaker);
    }
    let mut events = Events::with_capacity(clients.max(1));
    let mut buffer = vec![0u8; RECEIVE_BUFFER_LEN];
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
    let mut last_progress = Instant::now();
    while running > 0 {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now.saturating_duration_since(last_progress) >= HOLD_STALL {
            bail!(
                "the {name} server established no session for {} s ({} established so far; \
                 `cairn coap serve` keeps at most {} DTLS peers)",
                HOLD_STALL.as_secs(),
                held.established,
                cairn_dtls::ServerConfig::new(std::sync::Arc::new(NoKeys)).max_peers
            );
        }
        let mut ended = Vec::new();
        if now >= next_housekeeping {
            server.ensure_running()?;
            for handshaker in &mut handshakers {
                ended.push((
                    handshaker.index,
                    handshaker
                        .on_housekeeping(now, clock)
                        .with_context(talking)?,
                ));
            }
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        } else {
            let timeout = next_housekeeping.saturating_duration_since(now);
            match poll.poll(&mut events, Some(timeout)) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => result?,
            }
            let now = Instant::now();
            for event in &events {
                let handshaker = &mut handshakers[event.token().0];
                ended.push((
                    handshaker.index,
                    handshaker
                        .on_readable(now, clock, &mut buffer)
                        .with_context(talking)?,
                ));
            }
        }
        for (index, outcome) in ended {
            let handshaker = &mut handshakers[index];
            match outcome {
                Outcome::Running => continue,
                Outcome::Done => {
                    held.established += 1;
                    last_progress = Instant::now();
                }
                Outcome::Failed => held.failures += 1,
            }
            handshaker.finish(outcome).with_context(talking)?;
            running -= 1;
            let wanted = held.established + running < count;
            if wanted
                && start_held(handshaker, poll.registry(), &mut addresses, clock)
                    .with_context(talking)?
            {
                running += 1;
            }
        }
        for handshaker in handshakers
            .iter_mut()
            .filter(|handshaker| !handshaker.outbox.queue.is_empty())
        {
            handshaker.send().with_context(talking)?;
        }
    }
    held.elapsed = begun.elapsed();
    Ok(held)
}

/// Starts a handshake from the next local address that can be bound; `false` when the
/// addresses ran out.
fn start_held(
    handshaker: &mut Handshaker,
    registry: &Registry,
    addresses: &mut HeldAddresses,
    clock: Clock,
) -> anyhow::Result<bool> {
    while let Some(local) = addresses.next() {
        match handshaker.start(registry, local, Instant::now(), clock) {
            Ok(()) => return Ok(true),
            // Some other program has this port: take the next one.
            Err(error)
                if error
                    .downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::AddrInUse) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}

/// One GET in flight on a session.
#[derive(Debug)]
struct Slot {
    bytes: Vec<u8>,
    token: [u8; TOKEN_LEN],
    message_id: u16,
    sent_at: Instant,
}

/// One client with a long-lived session and several GETs in flight.
struct SessionClient {
    socket: UdpSocket,
    state: UdpSocketState,
    endpoint: ClientEndpoint,
    outbox: Outbox,
    slots: Vec<Slot>,
    next_message_id: u16,
    next_sequence: u32,
    connected: bool,
    connecting_since: Instant,
    /// Answers read in the current `receive`, handled once the socket is drained.
    answers: Vec<Vec<u8>>,
}

impl SessionClient {
    fn new(
        index: usize,
        credentials: &Credentials,
        server: SocketAddr,
        request: &GetRequest,
        in_flight: usize,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let socket = open_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), server)?;
        let state = UdpSocketState::new((&socket).into())?;
        let now = Instant::now();
        let slots = (0..in_flight)
            .map(|_| Slot {
                bytes: request.with_identity(0, [0; TOKEN_LEN]),
                token: [0; TOKEN_LEN],
                message_id: 0,
                sent_at: now,
            })
            .collect();
        let mut client = Self {
            socket,
            state,
            endpoint: client_endpoint(credentials, server, 1_000_000 + index as u64)?,
            outbox: Outbox::default(),
            slots,
            next_message_id: (index as u16).wrapping_mul(997),
            next_sequence: 0,
            connected: false,
            connecting_since: now,
            answers: Vec::new(),
        };
        client.connect(now, clock)?;
        Ok(client)
    }

    fn connect(&mut self, now: Instant, clock: Clock) -> anyhow::Result<()> {
        self.connected = false;
        self.connecting_since = now;
        self.endpoint
            .connect(clock.at(now))
            .map_err(|error| anyhow::anyhow!("cannot start a handshake: {error}"))?;
        self.outbox.collect(&mut self.endpoint);
        Ok(())
    }

    /// Gives `slot` a fresh message ID and token and encrypts it for sending.
    fn renew(&mut self, slot_index: usize, now: Instant, clock: Clock) {
        let sequence = self.next_sequence.to_be_bytes();
        self.next_sequence = self.next_sequence.wrapping_add(1);
        let token = [slot_index as u8, sequence[1], sequence[2], sequence[3]];
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let slot = &mut self.slots[slot_index];
        set_identity(&mut slot.bytes, message_id, token);
        slot.token = token;
        slot.message_id = message_id;
        slot.sent_at = now;
        // Fails only without a session; the slot is sent again once reconnected.
        let _ = self
            .endpoint
            .send(clock.at(now), self.endpoint.server(), &slot.bytes);
    }

    /// Reads every datagram waiting on the socket and handles what they carry.
    fn receive(
        &mut self,
        receiver: &mut Receiver,
        now: Instant,
        clock: Clock,
        tally: &mut Tally,
        measuring: bool,
    ) -> anyhow::Result<()> {
        let server = self.endpoint.server();
        loop {
            let received = match self.state.recv(
                (&self.socket).into(),
                &mut receiver.buffers,
                &mut receiver.metas,
            ) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            for (buffer, meta) in receiver.buffers.iter().zip(&receiver.metas).take(received) {
                for datagram in buffer[..meta.len].chunks(meta.stride.max(1)) {
                    self.endpoint.handle(clock.at(now), server, datagram);
                }
            }
            if received < receiver.buffers.len() {
                break;
            }
        }
        self.after_input(now, clock, tally, measuring)
    }

    fn after_input(
        &mut self,
        now: Instant,
        clock: Clock,
        tally: &mut Tally,
        measuring: bool,
    ) -> anyhow::Result<()> {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Connected { .. } => {
                    self.connected = true;
                    for slot in 0..self.slots.len() {
                        self.renew(slot, now, clock);
                    }
                }
                Event::ApplicationData { data, .. } => self.answers.push(data),
                Event::Closed { .. } => {
                    tally.failures += u64::from(measuring);
                    self.connect(now, clock)?;
                }
                Event::PeerMoved { .. } => {}
            }
        }
        let answers = std::mem::take(&mut self.answers);
        for answer in &answers {
            self.on_answer(answer, now, clock, tally, measuring);
        }
        self.answers = answers;
        self.answers.clear();
        self.outbox.collect(&mut self.endpoint);
        self.outbox.flush(&self.socket)?;
        Ok(())
    }

    fn on_answer(
        &mut self,
        answer: &[u8],
        now: Instant,
        clock: Clock,
        tally: &mut Tally,
        measuring: bool,
    ) {
        let Some(header) = parse_header(answer) else {
            return;
        };
        if header.needs_acknowledgement() {
            let _ = self.endpoint.send(
                clock.at(now),
                self.endpoint.server(),
                &empty_acknowledgement(header.message_id),
            );
        }
        let Some(&slot_index) = header.token.first() else {
            return;
        };
        let Some(slot) = self.slots.get(usize::from(slot_index)) else {
            return;
        };
        let piggybacked = header.message_type == super::message::MessageType::Acknowledgement;
        if header.token != slot.token || (piggybacked && header.message_id != slot.message_id) {
            return;
        }
        if measuring {
            tally.completed += 1;
            tally.unexpected_answers += u64::from(!header.is_expected_answer());
        }
        self.renew(usize::from(slot_index), now, clock);
    }

    /// Runs the handshake timer, and counts GETs unanswered for too long as lost.
    fn housekeeping(
        &mut self,
        now: Instant,
        clock: Clock,
        tally: &mut Tally,
        measuring: bool,
    ) -> anyhow::Result<()> {
        if !self.connected {
            if now.saturating_duration_since(self.connecting_since) >= HANDSHAKE_GIVE_UP {
                tally.failures += u64::from(measuring);
                self.connect(now, clock)?;
            } else if self
                .endpoint
                .poll_timeout()
                .is_some_and(|deadline| deadline <= clock.at(now))
            {
                self.endpoint.handle_timeout(clock.at(now));
            }
            return self.after_input(now, clock, tally, measuring);
        }
        for slot_index in 0..self.slots.len() {
            if now.saturating_duration_since(self.slots[slot_index].sent_at) >= RESPONSE_TIMEOUT {
                tally.failures += u64::from(measuring);
                self.renew(slot_index, now, clock);
            }
        }
        self.after_input(now, clock, tally, measuring)
    }
}

/// The shape of the GET load: sessions and requests in flight on each.
#[derive(Debug, Clone, Copy)]
pub struct RequestLoad {
    pub clients: usize,
    pub in_flight: usize,
}

/// Runs GETs over `load.clients` long-lived sessions with the DTLS server at `dtls`, each
/// with `load.in_flight` requests outstanding: warm-up (which includes the handshakes),
/// then the measured window.
pub fn run_requests(
    server: &mut ServerProcess,
    dtls: SocketAddr,
    credentials: &Credentials,
    request: &GetRequest,
    load: RequestLoad,
    timing: Timing,
    stop: &AtomicBool,
) -> anyhow::Result<Window> {
    let RequestLoad { clients, in_flight } = load;
    let name = server.name();
    let talking = move || format!("sending GETs over DTLS to the {name} server at {dtls}");
    let clock = Clock(Instant::now());
    let mut poll = Poll::new()?;
    let mut sessions = Vec::with_capacity(clients);
    for index in 0..clients {
        let mut session = SessionClient::new(index, credentials, dtls, request, in_flight, clock)
            .context("cannot open the client sockets")?;
        poll.registry()
            .register(&mut session.socket, Token(index), Interest::READABLE)?;
        session
            .outbox
            .flush(&session.socket)
            .with_context(talking)?;
        sessions.push(session);
    }
    let batch = (in_flight + 1).min(quinn_udp::BATCH_SIZE);
    let mut storage = vec![0u8; batch * RECEIVE_BUFFER_LEN];
    let mut receiver = Receiver::new(&mut storage);
    let mut events = Events::with_capacity(clients);
    let mut phases = Phases::new(timing, server.pid());
    let mut tally = Tally::default();
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let now = Instant::now();
        if let Some(window) = phases.advance(now, &mut tally)? {
            return Ok(window);
        }
        let measuring = phases.measuring();
        if now >= next_housekeeping {
            server.ensure_running()?;
            for session in &mut sessions {
                session
                    .housekeeping(now, clock, &mut tally, measuring)
                    .with_context(talking)?;
            }
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        let timeout = phases
            .next_edge()
            .min(next_housekeeping)
            .saturating_duration_since(now);
        match poll.poll(&mut events, Some(timeout)) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        let now = Instant::now();
        for event in &events {
            let session = &mut sessions[event.token().0];
            session
                .receive(&mut receiver, now, clock, &mut tally, measuring)
                .with_context(talking)?;
        }
        for session in sessions
            .iter_mut()
            .filter(|session| !session.outbox.queue.is_empty())
        {
            session
                .outbox
                .flush(&session.socket)
                .with_context(talking)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_addresses_are_distinct_and_move_to_the_next_host() {
        let mut addresses = HeldAddresses::new();
        let first = addresses.next().unwrap();
        assert_eq!(first, SocketAddr::from(([127, 0, 0, 2], 10_000)));
        let per_host = usize::from(HELD_PORTS.end() - HELD_PORTS.start()) + 1;
        let last_of_first_host = (1..per_host).map(|_| addresses.next().unwrap()).last();
        assert_eq!(
            last_of_first_host,
            Some(SocketAddr::from(([127, 0, 0, 2], 65_000)))
        );
        assert_eq!(
            addresses.next(),
            Some(SocketAddr::from(([127, 0, 0, 3], 10_000)))
        );
    }

    #[test]
    fn held_addresses_run_out_after_127_0_0_254() {
        let mut addresses = HeldAddresses {
            host: 254,
            port: *HELD_PORTS.end(),
        };
        assert_eq!(
            addresses.next(),
            Some(SocketAddr::from(([127, 0, 0, 254], 65_000)))
        );
        assert_eq!(addresses.next(), None);
    }

    #[test]
    fn merged_windows_add_up() {
        let window = |completed, millis| Window {
            length: Duration::from_secs(1),
            completed,
            failures: 1,
            unexpected_answers: 0,
            server_cpu: Duration::from_millis(millis),
            generator_cpu: Duration::from_millis(millis),
        };
        let merged = Window::merge(Some(window(1_000, 100)), window(3_000, 300));
        assert_eq!(merged.completed, 4_000);
        assert_eq!(merged.failures, 2);
        assert_eq!(merged.per_second(), 2_000.0);
        assert_eq!(merged.server_cpu_us(), Some(100.0));
        assert!((merged.server_cores() - 0.2).abs() < 1e-9);
        assert_eq!(Window::merge(None, window(5, 1)).completed, 5);
    }
}
