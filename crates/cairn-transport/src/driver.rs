//! The task that owns one UDP socket and one sans-IO endpoint.
//!
//! Receive is batched (`recvmmsg` through `quinn-udp`); every datagram of a batch goes
//! through the endpoint before its transmits are flushed, so a burst of requests costs one
//! receive system call per batch.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::Arc;
use std::time::Duration;

use cairn_coap::{Config, Endpoint, Event, Message, RequestId};
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSocketState};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::security::{Identities, Layer, Security};
use crate::{
    Command, FirstResponse, Handler, NotificationSink, Reply, Request, ResponseSink, TransportError,
};

/// Largest datagram accepted; CoAP over UDP stays well below (RFC 7252 §4.6).
const MAX_DATAGRAM: usize = 64 * 1024;
/// Receive batch of a DTLS client socket.
const CLIENT_BATCH: usize = 4;
/// Batches processed before the driver yields to timers and commands.
const BATCHES_PER_TURN: usize = 8;
/// Datagrams per `sendmmsg` call.
const SEND_BATCH: usize = 64;
/// Socket buffer sizes asked for, so that bursts are not dropped.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

thread_local! {
    /// The receive buffers of the DTLS client sockets whose drivers run on this thread. A
    /// driver handles what it received before it can yield, so one set serves every client
    /// socket of the thread: a fleet of thousands of clients (each with a socket per server,
    /// opened and closed as it bootstraps and registers) does not allocate and zero
    /// `CLIENT_BATCH * MAX_DATAGRAM` bytes per socket.
    static CLIENT_STORAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) struct Driver {
    socket: UdpSocket,
    state: UdpSocketState,
    endpoint: Endpoint,
    layer: Layer,
    identities: Identities,
    handler: Option<Arc<dyn Handler>>,
    commands: mpsc::Receiver<Command>,
    loopback: mpsc::Sender<Command>,
    origin: Instant,
    sinks: Sinks,
    pings: HashMap<RequestId, oneshot::Sender<Result<(), TransportError>>>,
    /// Receive buffers, `MAX_DATAGRAM` bytes each, in one allocation: large enough to come
    /// straight from the kernel zeroed, so only the pages datagrams touch become resident.
    /// Empty for a DTLS client, which uses its thread's [`CLIENT_STORAGE`].
    storage: Vec<u8>,
    meta: Vec<RecvMeta>,
    outbox: Vec<cairn_coap::Transmit>,
}

impl Driver {
    pub(crate) fn new(
        socket: UdpSocket,
        config: Config,
        security: Security,
        handler: Option<Arc<dyn Handler>>,
        commands: mpsc::Receiver<Command>,
        loopback: mpsc::Sender<Command>,
    ) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        // A DTLS client talks to one server: a short batch serves it, and a fleet of
        // thousands of clients in one process stays small.
        let security_is_client = matches!(security, Security::DtlsClient { .. });
        let batch = if security_is_client {
            CLIENT_BATCH
        } else {
            BATCH_SIZE
        };
        quiet_ancillary_data(&socket);
        // Smaller buffers only mean drops under bursts, which retransmission covers.
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Driver {
            socket,
            state,
            endpoint: Endpoint::new(config, u64::from_ne_bytes(seed)),
            layer: Layer::new(security, Duration::ZERO)?,
            identities: Identities::default(),
            handler,
            commands,
            loopback,
            origin: Instant::now(),
            sinks: Sinks::default(),
            pings: HashMap::new(),
            storage: if security_is_client {
                Vec::new()
            } else {
                vec![0u8; batch * MAX_DATAGRAM]
            },
            meta: vec![RecvMeta::default(); batch],
            outbox: Vec::new(),
        })
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub(crate) async fn run(mut self) {
        let idle = Duration::from_secs(24 * 3600);
        let sleep = tokio::time::sleep_until(self.origin + idle);
        tokio::pin!(sleep);
        loop {
            let deadline = [self.endpoint.poll_timeout(), self.layer.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let at = match deadline {
                Some(deadline) => self.origin + deadline,
                None => Instant::now() + idle,
            };
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                ready = self.socket.ready(Interest::READABLE) => {
                    if ready.is_ok() {
                        self.receive();
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.command(command),
                },
                () = &mut sleep => {
                    let now = self.now();
                    self.endpoint.handle_timeout(now);
                    self.layer.handle_timeout(now, &mut self.endpoint, &mut self.identities, &mut self.outbox);
                }
            }
            self.process_events();
            self.flush().await;
        }
        for sink in self.sinks.drain() {
            if let ResponseSink::Stream { rest, .. } = sink {
                rest.closed();
            }
        }
    }

    fn receive(&mut self) {
        if !self.storage.is_empty() {
            let mut storage = std::mem::take(&mut self.storage);
            self.receive_into(&mut storage);
            self.storage = storage;
            return;
        }
        CLIENT_STORAGE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut storage) => {
                if storage.is_empty() {
                    storage.resize(self.meta.len() * MAX_DATAGRAM, 0);
                }
                self.receive_into(&mut storage);
            }
            // Not reached (a receive never runs inside another); a buffer of its own then.
            Err(_) => self.receive_into(&mut vec![0u8; self.meta.len() * MAX_DATAGRAM]),
        });
    }

    fn receive_into(&mut self, storage: &mut [u8]) {
        for _ in 0..BATCHES_PER_TURN {
            let mut slices: Vec<IoSliceMut<'_>> = storage
                .chunks_mut(MAX_DATAGRAM)
                .take(self.meta.len())
                .map(IoSliceMut::new)
                .collect();
            let state = &self.state;
            let meta = &mut self.meta;
            let received = self.socket.try_io(Interest::READABLE, || {
                state.recv((&self.socket).into(), &mut slices, meta)
            });
            let count = match received {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::debug!(%error, "receive failed");
                    return;
                }
            };
            let now = self.now();
            for (meta, buffer) in self
                .meta
                .iter()
                .zip(storage.chunks(MAX_DATAGRAM))
                .take(count)
            {
                let stride = meta.stride.max(1);
                for datagram in buffer[..meta.len].chunks(stride) {
                    self.layer.receive(
                        now,
                        meta.addr,
                        datagram,
                        &mut self.endpoint,
                        &mut self.identities,
                        &mut self.outbox,
                    );
                }
            }
            self.process_events();
        }
    }

    /// Sends every queued transmit with as few `sendmmsg` calls as the kernel allows.
    async fn flush(&mut self) {
        let now = self.now();
        while let Some(transmit) = self.endpoint.poll_transmit() {
            self.layer.send(now, transmit, &mut self.outbox);
        }
        let mut sent = 0;
        while sent < self.outbox.len() {
            let batch = &self.outbox[sent..self.outbox.len().min(sent + SEND_BATCH)];
            let result = self
                .socket
                .try_io(Interest::WRITABLE, || send_batch(&self.socket, batch));
            match result {
                Ok(count) => sent += count.max(1),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    // One bad destination (e.g. unreachable) must not hold up the others.
                    tracing::debug!(%error, destination = %self.outbox[sent].destination, "send failed");
                    sent += 1;
                }
            }
        }
        self.outbox.clear();
    }

    fn process_events(&mut self) {
        for peer in std::mem::take(&mut self.identities.failed) {
            self.endpoint
                .abort_requests(peer, cairn_coap::RequestError::SessionFailed);
        }
        for (old, new) in std::mem::take(&mut self.identities.moved) {
            if let Some(handler) = &self.handler {
                handler.peer_moved(old, new);
            }
        }
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request {
                    id,
                    peer,
                    message,
                    observe,
                } => {
                    let identity = self.layer.identity(peer);
                    let request = Request {
                        peer,
                        message,
                        observe,
                        identity,
                    };
                    self.serve(id, request);
                }
                Event::Response { id, message, .. } => self.deliver(id, message),
                Event::RequestFailed { id, error } => {
                    if let Some(sink) = self.sinks.remove(id) {
                        fail(sink, TransportError::Request(error));
                    }
                    if let Some(done) = self.pings.remove(&id) {
                        let _ = done.send(Err(TransportError::Request(error)));
                    }
                }
                Event::Pong { id } => {
                    if let Some(done) = self.pings.remove(&id) {
                        let _ = done.send(Ok(()));
                    }
                }
                Event::ObservationEnded { id, peer, reason } => {
                    tracing::debug!(?id, %peer, ?reason, "observation ended");
                }
            }
        }
    }

    fn serve(&mut self, exchange: cairn_coap::ExchangeId, request: Request) {
        let now = self.now();
        let Some(handler) = &self.handler else {
            let _ = self.endpoint.respond(
                now,
                exchange,
                Message::response(cairn_coap::Code::NOT_FOUND),
            );
            return;
        };
        match handler.handle(&request) {
            Reply::Ready(response) => {
                if let Err(error) = self.endpoint.respond(now, exchange, response) {
                    tracing::debug!(%error, "response dropped");
                }
            }
            Reply::Pending(future) => {
                let loopback = self.loopback.clone();
                tokio::spawn(async move {
                    let response = future.await;
                    let _ = loopback.send(Command::Respond { exchange, response }).await;
                });
            }
        }
    }

    fn deliver(&mut self, id: RequestId, message: Message) {
        let Some(sink) = self.sinks.remove(id) else {
            return;
        };
        match sink {
            ResponseSink::Once(sender) => {
                let _ = sender.send(Ok(message));
            }
            ResponseSink::Stream {
                first: Some(first),
                rest,
            } => {
                let observing = message.observe().is_some() && message.code.is_success();
                let token = self.endpoint.request_token(id);
                let waiting = first.send(Ok((id, token, message))).is_ok();
                if observing && waiting {
                    self.sinks
                        .insert(id, ResponseSink::Stream { first: None, rest });
                } else {
                    if observing {
                        let _ = self.endpoint.cancel(self.now(), id, false);
                    }
                    rest.closed();
                }
            }
            ResponseSink::Stream { first: None, rest } => {
                let ended = message.observe().is_none() || !message.code.is_success();
                if !rest.deliver(message) {
                    let _ = self.endpoint.cancel(self.now(), id, false);
                    rest.closed();
                } else if ended {
                    rest.closed();
                } else {
                    self.sinks
                        .insert(id, ResponseSink::Stream { first: None, rest });
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Request {
                peer,
                message,
                sink,
            } => match self.endpoint.request(now, peer, message) {
                Ok(id) => {
                    self.sinks.insert(id, sink);
                }
                Err(error) => fail(sink, TransportError::Endpoint(error)),
            },
            Command::Ping { peer, done } => match self.endpoint.ping(now, peer) {
                Ok(id) => {
                    self.pings.insert(id, done);
                }
                Err(error) => {
                    let _ = done.send(Err(TransportError::Endpoint(error)));
                }
            },
            Command::Cancel { id, deregister } => {
                if let Some(ResponseSink::Stream { rest, .. }) = self.sinks.remove(id) {
                    rest.closed();
                }
                let _ = self.endpoint.cancel(now, id, deregister);
            }
            Command::Resume {
                peer,
                token,
                message,
                rest,
                done,
            } => {
                let resumed = self.endpoint.resume_observation(now, peer, token, message);
                if let Ok(id) = resumed {
                    self.sinks
                        .insert(id, ResponseSink::Stream { first: None, rest });
                }
                let _ = done.send(resumed.map_err(TransportError::Endpoint));
            }
            Command::Respond { exchange, response } => {
                if let Err(error) = self.endpoint.respond(now, exchange, response) {
                    tracing::debug!(%error, "late response dropped");
                }
            }
            Command::Notify {
                path,
                fetch_body,
                response,
                done,
            } => {
                let observers = match fetch_body {
                    Some(body) => self.endpoint.observers_of_fetch(&path, &body),
                    None => self.endpoint.observers(&path),
                };
                let mut count = 0;
                for id in observers {
                    if self.endpoint.notify(now, id, response.clone()).is_ok() {
                        count += 1;
                    }
                }
                let _ = done.send(count);
            }
            Command::Measure { id, done } => {
                let memory = match self.endpoint.request_bytes(id) {
                    Some(coap) if self.sinks.holds(id) => Some(crate::ObservationMemory {
                        coap,
                        transport: Sinks::SLOT_BYTES,
                        sink: 0,
                    }),
                    _ => None,
                };
                let _ = done.send(memory);
            }
            Command::Shutdown => {}
        }
    }
}

/// The callers waiting for the responses of our requests, by the request's index in the
/// endpoint's table: an established observation costs one 24-byte slot here (its generation
/// and its sink), no hash-map entry. A slot is taken when the request is made and emptied
/// when the caller is done.
#[derive(Default)]
struct Sinks {
    slots: Vec<Option<Held>>,
}

/// A [`ResponseSink`] as kept, with the generation of its request.
enum Held {
    Once {
        generation: u32,
        sender: oneshot::Sender<Result<Message, TransportError>>,
    },
    /// An observe request waiting for its first response.
    First {
        generation: u32,
        waiting: Box<(FirstResponse, Arc<dyn NotificationSink>)>,
    },
    Stream {
        generation: u32,
        sink: Arc<dyn NotificationSink>,
    },
}

impl Held {
    fn new(generation: u32, sink: ResponseSink) -> Self {
        match sink {
            ResponseSink::Once(sender) => Held::Once { generation, sender },
            ResponseSink::Stream {
                first: Some(first),
                rest,
            } => Held::First {
                generation,
                waiting: Box::new((first, rest)),
            },
            ResponseSink::Stream { first: None, rest } => Held::Stream {
                generation,
                sink: rest,
            },
        }
    }

    fn generation(&self) -> u32 {
        match self {
            Held::Once { generation, .. }
            | Held::First { generation, .. }
            | Held::Stream { generation, .. } => *generation,
        }
    }

    fn into_sink(self) -> ResponseSink {
        match self {
            Held::Once { sender, .. } => ResponseSink::Once(sender),
            Held::First { waiting, .. } => {
                let (first, rest) = *waiting;
                ResponseSink::Stream {
                    first: Some(first),
                    rest,
                }
            }
            Held::Stream { sink, .. } => ResponseSink::Stream {
                first: None,
                rest: sink,
            },
        }
    }
}

impl Sinks {
    /// Bytes a request's entry takes here.
    const SLOT_BYTES: usize = core::mem::size_of::<Option<Held>>();

    fn insert(&mut self, id: RequestId, sink: ResponseSink) {
        let index = id.index();
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        // A sink left in the slot belongs to a request the endpoint has already forgotten.
        let previous = self.slots[index].replace(Held::new(id.generation(), sink));
        if let Some(ResponseSink::Stream { rest, .. }) = previous.map(Held::into_sink) {
            rest.closed();
        }
    }

    fn holds(&self, id: RequestId) -> bool {
        self.slots
            .get(id.index())
            .and_then(Option::as_ref)
            .is_some_and(|held| held.generation() == id.generation())
    }

    fn remove(&mut self, id: RequestId) -> Option<ResponseSink> {
        if !self.holds(id) {
            return None;
        }
        let held = self.slots[id.index()].take()?;
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(self.slots.len() * 2);
        }
        Some(held.into_sink())
    }

    fn drain(&mut self) -> impl Iterator<Item = ResponseSink> + '_ {
        self.slots.drain(..).flatten().map(Held::into_sink)
    }
}

/// Turns off the per-datagram ancillary data `quinn-udp` asks the kernel for (destination
/// address and TOS/ECN bits): nothing here reads it, and the kernel builds it for every
/// datagram received. Errors are ignored: the data is then only unused.
fn quiet_ancillary_data(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    match socket.local_addr() {
        Ok(std::net::SocketAddr::V4(_)) => {
            let _ = setsockopt(socket, sockopt::Ipv4PacketInfo, &false);
            let _ = setsockopt(socket, sockopt::IpRecvTos, &false);
        }
        Ok(std::net::SocketAddr::V6(_)) => {
            let _ = setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &false);
            let _ = setsockopt(socket, sockopt::Ipv6RecvTClass, &false);
            let _ = setsockopt(socket, sockopt::Ipv4PacketInfo, &false);
            let _ = setsockopt(socket, sockopt::IpRecvTos, &false);
        }
        Err(_) => {}
    }
}

/// One `sendmmsg` call; returns how many datagrams the kernel took.
fn send_batch(socket: &UdpSocket, batch: &[cairn_coap::Transmit]) -> io::Result<usize> {
    let addresses: Vec<SocketAddrAny> = batch
        .iter()
        .map(|t| SocketAddrAny::from(t.destination))
        .collect();
    let payloads: Vec<[IoSlice<'_>; 1]> =
        batch.iter().map(|t| [IoSlice::new(&t.payload)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = addresses
        .iter()
        .zip(&payloads)
        .zip(controls.iter_mut())
        .map(|((address, payload), control)| MMsgHdr::new_with_addr(address, payload, control))
        .collect();
    loop {
        match sendmmsg(socket, &mut messages, SendFlags::empty()) {
            Ok(count) => return Ok(count),
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

fn fail(sink: ResponseSink, error: TransportError) {
    match sink {
        ResponseSink::Once(sender) => {
            let _ = sender.send(Err(error));
        }
        ResponseSink::Stream {
            first: Some(first),
            rest,
        } => {
            let _ = first.send(Err(error));
            rest.closed();
        }
        ResponseSink::Stream { first: None, rest } => rest.closed(),
    }
}
