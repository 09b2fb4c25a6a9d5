//! The load generator of `cairn bench coap`: one thread drives many client sockets,
//! each keeping several confirmable GETs in flight (closed loop: an answer, or a
//! timeout, sends the next request at once).
//!
//! It shares the machine with the server under test, so it is built to be cheap: one
//! `epoll` (through `mio`) over all sockets, `recvmmsg` to read every answer waiting on a
//! socket in one call (`quinn-udp`), and `sendmmsg` to send all of a socket's next
//! requests in one call (`rustix`). Each request is its own datagram, as from real
//! devices: no segmentation offload, so no server sees coalesced requests.
//!
//! Answers are matched by token (and by message ID for piggybacked ones); the token
//! carries the request's slot, so matching costs an index and a compare. A separate
//! response sent confirmable is acknowledged.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{RecvMeta, UdpSocketState};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};

use super::cpu::CpuSample;
use super::message::{
    GetRequest, MessageType, TOKEN_LEN, empty_acknowledgement, parse_header, set_identity,
};
use super::server::ServerProcess;

/// A request without an answer after this long is counted lost and sent anew. Far
/// above any round trip seen on loopback (milliseconds), short enough that a datagram
/// the server dropped does not idle its slot for long.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often lost requests and the server's health are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// Room for one received datagram (or a coalesced batch of them).
pub const RECEIVE_BUFFER_LEN: usize = 64 * 1024;
/// The most requests in flight per client: the slot number is one byte of the token.
pub const MAX_IN_FLIGHT: usize = 64;

/// What to run: the load shape and its phases.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub request: GetRequest,
    pub clients: usize,
    pub in_flight: usize,
    pub warmup: Duration,
    pub measured: Duration,
}

/// What one measured window saw.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub window: Duration,
    /// Answers received in the window.
    pub answers: u64,
    /// Answers that were neither 2.xx nor the echoed request.
    pub unexpected_answers: u64,
    /// Requests counted lost in the window.
    pub timeouts: u64,
    /// Round-trip times of the window's answers, sorted, in nanoseconds.
    latencies_ns: Vec<u32>,
    pub server_cpu: Duration,
    pub generator_cpu: Duration,
}

impl Measurement {
    pub fn requests_per_second(&self) -> f64 {
        self.answers as f64 / self.window.as_secs_f64()
    }

    /// Server CPU time per answered request, in microseconds.
    pub fn server_cpu_per_request_us(&self) -> Option<f64> {
        per_request_us(self.server_cpu, self.answers)
    }

    /// Load generator CPU time per answered request, in microseconds.
    pub fn generator_cpu_per_request_us(&self) -> Option<f64> {
        per_request_us(self.generator_cpu, self.answers)
    }

    /// Cores the server kept busy on average.
    pub fn server_cores(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// This window and a later one of the same load, as one: counts and CPU times add
    /// up, and the latencies of both are ranked together.
    pub fn merge(mut self, later: Measurement) -> Measurement {
        self.window += later.window;
        self.answers += later.answers;
        self.unexpected_answers += later.unexpected_answers;
        self.timeouts += later.timeouts;
        self.latencies_ns.extend(later.latencies_ns);
        self.latencies_ns.sort_unstable();
        self.server_cpu += later.server_cpu;
        self.generator_cpu += later.generator_cpu;
        self
    }

    /// The latency at `percentile` (0–100), nearest rank, in microseconds.
    pub fn latency_us(&self, percentile: f64) -> Option<f64> {
        let count = self.latencies_ns.len();
        if count == 0 {
            return None;
        }
        let rank = ((percentile / 100.0 * count as f64).ceil() as usize).clamp(1, count);
        Some(f64::from(self.latencies_ns[rank - 1]) / 1000.0)
    }
}

fn per_request_us(cpu: Duration, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu.as_secs_f64() * 1e6 / requests as f64)
}

/// Counters of the current phase.
#[derive(Debug, Default)]
struct Tally {
    answers: u64,
    unexpected_answers: u64,
    timeouts: u64,
    latencies_ns: Vec<u32>,
}

/// One request in flight.
#[derive(Debug)]
struct Slot {
    bytes: Vec<u8>,
    token: [u8; TOKEN_LEN],
    message_id: u16,
    sent_at: Instant,
}

/// One client socket and its requests in flight.
struct Client {
    socket: mio::net::UdpSocket,
    state: UdpSocketState,
    slots: Vec<Slot>,
    next_message_id: u16,
    next_sequence: u32,
    /// Slots whose new request is written but not yet sent.
    unsent: Vec<usize>,
}

impl Client {
    fn new(
        server: SocketAddr,
        request: &GetRequest,
        in_flight: usize,
        seed: u16,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.connect(server)?;
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
            socket: mio::net::UdpSocket::from_std(socket),
            state,
            slots,
            next_message_id: seed.wrapping_mul(997),
            next_sequence: 0,
            unsent: Vec::with_capacity(in_flight),
        };
        for slot in 0..in_flight {
            client.renew(slot, now);
        }
        Ok(client)
    }

    /// Gives `slot` a fresh message ID and token, and queues it for sending.
    fn renew(&mut self, slot_index: usize, now: Instant) {
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
        self.unsent.push(slot_index);
    }

    /// Sends the queued requests, as many per `sendmmsg` as the kernel takes. A full
    /// send buffer leaves the rest queued for the next turn of the loop.
    fn flush(&mut self) -> io::Result<()> {
        while !self.unsent.is_empty() {
            let buffers: Vec<[IoSlice<'_>; 1]> = self
                .unsent
                .iter()
                .map(|&slot| [IoSlice::new(&self.slots[slot].bytes)])
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
            match sendmmsg(&self.socket, &mut messages, SendFlags::empty()) {
                Ok(sent) => drop(self.unsent.drain(..sent)),
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }

    /// Reads every datagram waiting on the socket and renews the answered slots.
    fn receive(
        &mut self,
        receiver: &mut Receiver,
        tally: &mut Tally,
        measuring: bool,
    ) -> io::Result<()> {
        loop {
            let received = match self.state.recv(
                (&self.socket).into(),
                &mut receiver.buffers,
                &mut receiver.metas,
            ) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            let now = Instant::now();
            for (buffer, meta) in receiver.buffers.iter().zip(&receiver.metas).take(received) {
                for datagram in buffer[..meta.len].chunks(meta.stride.max(1)) {
                    self.on_datagram(datagram, now, tally, measuring);
                }
            }
            // A short batch means the queue was empty: a later datagram raises a new
            // edge, so no extra `recvmmsg` is needed to see `EAGAIN`.
            if received < receiver.buffers.len() {
                return Ok(());
            }
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], now: Instant, tally: &mut Tally, measuring: bool) {
        let Some(header) = parse_header(datagram) else {
            return;
        };
        if header.needs_acknowledgement() {
            // Rare (the servers piggyback), so one plain send, also for a repeated
            // response; a lost ACK only means the server sends the response again.
            let _ = self.socket.send(&empty_acknowledgement(header.message_id));
        }
        let Some(&slot_index) = header.token.first() else {
            return;
        };
        let Some(slot) = self.slots.get(usize::from(slot_index)) else {
            return;
        };
        let piggybacked = header.message_type == MessageType::Acknowledgement;
        if header.token != slot.token || (piggybacked && header.message_id != slot.message_id) {
            return;
        }
        if measuring {
            tally.answers += 1;
            tally.unexpected_answers += u64::from(!header.is_expected_answer());
            let latency = now.saturating_duration_since(slot.sent_at);
            tally
                .latencies_ns
                .push(u32::try_from(latency.as_nanos()).unwrap_or(u32::MAX));
        }
        self.renew(usize::from(slot_index), now);
    }

    /// Counts requests unanswered for too long as lost and sends them anew.
    fn expire(&mut self, now: Instant, tally: &mut Tally, measuring: bool) {
        for slot_index in 0..self.slots.len() {
            let slot = &self.slots[slot_index];
            if now.saturating_duration_since(slot.sent_at) >= RESPONSE_TIMEOUT
                && !self.unsent.contains(&slot_index)
            {
                tally.timeouts += u64::from(measuring);
                self.renew(slot_index, now);
            }
        }
    }
}

/// Receive buffers shared by all clients (one thread reads one socket at a time).
pub struct Receiver<'a> {
    pub buffers: Vec<IoSliceMut<'a>>,
    pub metas: Vec<RecvMeta>,
}

impl<'a> Receiver<'a> {
    pub fn new(storage: &'a mut [u8]) -> Self {
        let buffers: Vec<_> = storage
            .chunks_mut(RECEIVE_BUFFER_LEN)
            .map(IoSliceMut::new)
            .collect();
        let metas = vec![RecvMeta::default(); buffers.len()];
        Self { buffers, metas }
    }
}

/// Drives `server` with `spec`'s load: warm-up, then the measured window, with the
/// server's CPU time and the generator's own sampled at both edges of the window.
pub fn run(
    spec: &LoadSpec,
    server: &mut ServerProcess,
    stop: &AtomicBool,
) -> anyhow::Result<Measurement> {
    let (name, address) = (server.name(), server.address());
    let talking = move || format!("talking to the {name} server at {address}");
    let mut poll = Poll::new()?;
    let mut clients = Vec::with_capacity(spec.clients);
    for index in 0..spec.clients {
        let mut client = Client::new(address, &spec.request, spec.in_flight, index as u16)
            .context("cannot open the client sockets")?;
        poll.registry()
            .register(&mut client.socket, Token(index), Interest::READABLE)?;
        clients.push(client);
    }
    // One more buffer than requests in flight, so that a full drain reads short.
    let batch = (spec.in_flight + 1).min(quinn_udp::BATCH_SIZE);
    let mut storage = vec![0u8; batch * RECEIVE_BUFFER_LEN];
    let mut receiver = Receiver::new(&mut storage);
    let mut events = Events::with_capacity(spec.clients);
    let mut tally = Tally::default();

    let started = Instant::now();
    let window_start = started + spec.warmup;
    let window_end = window_start + spec.measured;
    let mut window: Option<(Instant, CpuSample, CpuSample)> = None;
    let mut next_housekeeping = started + HOUSEKEEPING_INTERVAL;
    for client in &mut clients {
        client.flush().with_context(talking)?;
    }
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let now = Instant::now();
        match window {
            None if now >= window_start => {
                let server_cpu = CpuSample::read(server.pid())?;
                let own_cpu = CpuSample::read(std::process::id())?;
                tally = Tally::default();
                window = Some((Instant::now(), server_cpu, own_cpu));
            }
            Some((opened, server_start, own_start)) if now >= window_end => {
                let server_end = CpuSample::read(server.pid())?;
                let own_end = CpuSample::read(std::process::id())?;
                let window = opened.elapsed();
                let mut latencies_ns = std::mem::take(&mut tally.latencies_ns);
                latencies_ns.sort_unstable();
                return Ok(Measurement {
                    window,
                    answers: tally.answers,
                    unexpected_answers: tally.unexpected_answers,
                    timeouts: tally.timeouts,
                    latencies_ns,
                    server_cpu: server_start.until(&server_end),
                    generator_cpu: own_start.until(&own_end),
                });
            }
            _ => {}
        }
        let measuring = window.is_some();
        if now >= next_housekeeping {
            server.ensure_running()?;
            for client in &mut clients {
                client.expire(now, &mut tally, measuring);
            }
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        let next_phase = if measuring { window_end } else { window_start };
        let timeout = next_phase
            .min(next_housekeeping)
            .saturating_duration_since(now);
        match poll.poll(&mut events, Some(timeout)) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in &events {
            let client = &mut clients[event.token().0];
            client
                .receive(&mut receiver, &mut tally, measuring)
                .with_context(talking)?;
            client.flush().with_context(talking)?;
        }
        for client in clients
            .iter_mut()
            .filter(|client| !client.unsent.is_empty())
        {
            client.flush().with_context(talking)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(latencies_ns: Vec<u32>, answers: u64) -> Measurement {
        Measurement {
            window: Duration::from_secs(2),
            answers,
            unexpected_answers: 0,
            timeouts: 0,
            latencies_ns,
            server_cpu: Duration::from_millis(500),
            generator_cpu: Duration::from_millis(250),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let measured = measurement((1..=100).map(|us| us * 1000).collect(), 100);
        assert_eq!(measured.latency_us(50.0), Some(50.0));
        assert_eq!(measured.latency_us(99.0), Some(99.0));
        assert_eq!(measured.latency_us(100.0), Some(100.0));
        assert_eq!(measured.latency_us(0.0), Some(1.0));
        assert_eq!(measurement(Vec::new(), 0).latency_us(50.0), None);
    }

    #[test]
    fn merged_windows_add_up() {
        let first = measurement(vec![1000, 3000], 2);
        let merged = first.merge(measurement(vec![2000, 4000], 2));
        assert_eq!(merged.window, Duration::from_secs(4));
        assert_eq!(merged.answers, 4);
        assert_eq!(merged.latencies_ns, [1000, 2000, 3000, 4000]);
        assert_eq!(merged.server_cpu, Duration::from_secs(1));
        assert_eq!(merged.server_cpu_per_request_us(), Some(250_000.0));
    }

    #[test]
    fn rates_are_per_answer_and_per_second() {
        let measured = measurement(vec![1000; 1000], 1000);
        assert_eq!(measured.requests_per_second(), 500.0);
        assert_eq!(measured.server_cpu_per_request_us(), Some(500.0));
        assert_eq!(measured.generator_cpu_per_request_us(), Some(250.0));
        assert_eq!(measured.server_cores(), 0.25);
        assert_eq!(measurement(Vec::new(), 0).server_cpu_per_request_us(), None);
    }
}
