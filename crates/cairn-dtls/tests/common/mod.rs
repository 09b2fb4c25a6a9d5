//! Shared helpers for the behaviour tests: a PSK table, seeded randomness and an in-memory
//! network with a fake clock that can drop datagrams.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_dtls::{
    ClientConfig, ClientEndpoint, Event, Psk, PskResolver, ServerConfig, ServerEndpoint,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub const IDENTITY: &[u8] = b"device-1";
pub const KEY: &[u8] = b"0123456789abcdef";

/// Identity → key table.
#[derive(Default)]
pub struct PskTable(pub HashMap<Vec<u8>, Vec<u8>>);

impl PskResolver for PskTable {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        self.0.get(identity).map(|key| Psk::new(key.clone()))
    }
}

pub fn table() -> Arc<PskTable> {
    let mut table = PskTable::default();
    table.0.insert(IDENTITY.to_vec(), KEY.to_vec());
    table
        .0
        .insert(b"device-2".to_vec(), b"another key 1234".to_vec());
    Arc::new(table)
}

pub fn rng(seed: u64) -> Box<StdRng> {
    Box::new(StdRng::seed_from_u64(seed))
}

pub fn server_addr() -> SocketAddr {
    "10.0.0.1:5684".parse().unwrap()
}

pub fn client_addr(n: u16) -> SocketAddr {
    SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 40000 + n))
}

pub fn server(config: ServerConfig) -> ServerEndpoint {
    ServerEndpoint::new(config, rng(1), Duration::ZERO).unwrap()
}

pub fn client(config: ClientConfig, seed: u64) -> ClientEndpoint {
    ClientEndpoint::new(config, rng(seed), server_addr()).unwrap()
}

/// Direction of a datagram on the simulated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

/// Decides per datagram (direction, index in that direction) whether it is lost.
pub type LossFn = Box<dyn FnMut(Direction, usize, &[u8]) -> bool>;

/// One client and one server joined by a lossy in-memory link with a fake clock.
pub struct Link {
    pub now: Duration,
    pub server: ServerEndpoint,
    pub client: ClientEndpoint,
    pub client_addr: SocketAddr,
    pub loss: LossFn,
    pub sent: [usize; 2],
    pub server_events: Vec<Event>,
    pub client_events: Vec<Event>,
    /// (time, direction, datagram) of everything sent, lost or not.
    pub trace: Vec<(Duration, Direction, Vec<u8>)>,
}

impl Link {
    pub fn new(server: ServerEndpoint, client: ClientEndpoint) -> Self {
        Self {
            now: Duration::ZERO,
            server,
            client,
            client_addr: client_addr(1),
            loss: Box::new(|_, _, _| false),
            sent: [0, 0],
            server_events: Vec::new(),
            client_events: Vec::new(),
            trace: Vec::new(),
        }
    }

    /// Moves datagrams until both sides are idle; then advances the clock to the next timer.
    /// Stops after `max_time` of simulated time.
    pub fn run(&mut self, max_time: Duration) {
        loop {
            let mut moved = false;
            while let Some(transmit) = self.client.poll_transmit() {
                moved = true;
                let index = self.sent[0];
                self.sent[0] += 1;
                self.trace
                    .push((self.now, Direction::ToServer, transmit.payload.clone()));
                if !(self.loss)(Direction::ToServer, index, &transmit.payload) {
                    self.server
                        .handle(self.now, self.client_addr, &transmit.payload);
                }
            }
            while let Some(transmit) = self.server.poll_transmit() {
                moved = true;
                let index = self.sent[1];
                self.sent[1] += 1;
                self.trace
                    .push((self.now, Direction::ToClient, transmit.payload.clone()));
                if transmit.destination == self.client_addr
                    && !(self.loss)(Direction::ToClient, index, &transmit.payload)
                {
                    self.client.handle(
                        self.now,
                        transmit.destination_as_server(),
                        &transmit.payload,
                    );
                }
            }
            while let Some(event) = self.server.poll_event() {
                self.server_events.push(event);
            }
            while let Some(event) = self.client.poll_event() {
                self.client_events.push(event);
            }
            if moved {
                continue;
            }
            let next = [self.server.poll_timeout(), self.client.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(next) if next <= max_time => {
                    self.now = self.now.max(next);
                    self.server.handle_timeout(self.now);
                    self.client.handle_timeout(self.now);
                }
                _ => return,
            }
        }
    }

    pub fn client_connected(&self) -> bool {
        self.client_events
            .iter()
            .any(|event| matches!(event, Event::Connected { .. }))
    }

    pub fn server_connected(&self) -> bool {
        self.server_events
            .iter()
            .any(|event| matches!(event, Event::Connected { .. }))
    }
}

trait ServerSource {
    fn destination_as_server(&self) -> SocketAddr;
}

impl ServerSource for cairn_dtls::Transmit {
    fn destination_as_server(&self) -> SocketAddr {
        server_addr()
    }
}

pub fn client_config() -> ClientConfig {
    ClientConfig::new(IDENTITY, Psk::new(KEY.to_vec()))
}

pub fn server_config() -> ServerConfig {
    ServerConfig::new(table())
}

/// A connected link (handshake done, events drained into the link's lists).
pub fn connected(server_config: ServerConfig, client_config: ClientConfig) -> Link {
    let mut link = Link::new(server(server_config), client(client_config, 7));
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(10));
    assert!(
        link.client_connected(),
        "client events: {:?}",
        link.client_events
    );
    assert!(
        link.server_connected(),
        "server events: {:?}",
        link.server_events
    );
    link
}
