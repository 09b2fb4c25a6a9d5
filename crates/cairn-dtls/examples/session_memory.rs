//! Measures memory per established idle PSK session for 10,000 in-process sessions:
//! `cargo run --release -p cairn-dtls --example session_memory [COUNT] [cache]`; with `cache`
//! every session is also kept in the resumption cache.
//!
//! Prints the structural figure (peer-table entry + session heap + CID entry, from
//! `ServerEndpoint::session_bytes`) and the growth of the resident set (Linux `/proc`), which
//! also counts hash-table slack and allocator overhead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_dtls::{
    CidConfig, ClientConfig, ClientEndpoint, Psk, PskResolver, ServerConfig, ServerEndpoint,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Table(HashMap<Vec<u8>, Vec<u8>>);

impl PskResolver for Table {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        self.0.get(identity).map(|key| Psk::new(key.clone()))
    }
}

fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    let count: u32 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(10_000);
    let key = b"0123456789abcdef".to_vec();
    let server_addr: SocketAddr = "10.0.0.1:5684".parse().unwrap();
    let mut table = HashMap::new();
    table.insert(b"device-1".to_vec(), key.clone());
    let mut config = ServerConfig::new(Arc::new(Table(table)));
    config.connection_id = Some(CidConfig {
        length: 8,
        node_prefix: vec![1],
    });
    let with_cache = std::env::args().nth(2).as_deref() == Some("cache");
    config.session_cache_size = if with_cache { count as usize } else { 0 };
    println!(
        "resumption cache: {}",
        if with_cache { "on" } else { "off" }
    );
    let mut server =
        ServerEndpoint::new(config, Box::new(StdRng::seed_from_u64(1)), Duration::ZERO).unwrap();
    let before = resident_bytes();
    let started = Instant::now();
    let mut peers = Vec::new();
    for n in 0..count {
        let from = SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 40000 + (n % 20000) as u16));
        let mut client_config = ClientConfig::new(b"device-1".to_vec(), Psk::new(key.clone()));
        client_config.connection_id = Some(Vec::new());
        let mut client = ClientEndpoint::new(
            client_config,
            Box::new(StdRng::seed_from_u64(u64::from(n) + 10)),
            server_addr,
        )
        .unwrap();
        client.connect(Duration::ZERO).unwrap();
        for _ in 0..4 {
            while let Some(transmit) = client.poll_transmit() {
                server.handle(Duration::ZERO, from, &transmit.payload);
            }
            while let Some(transmit) = server.poll_transmit() {
                client.handle(Duration::ZERO, server_addr, &transmit.payload);
            }
        }
        assert!(client.is_connected(), "session {n} did not connect");
        while server.poll_event().is_some() {}
        peers.push(from);
    }
    let elapsed = started.elapsed();
    let after = resident_bytes();
    let structural: usize = peers
        .iter()
        .filter_map(|peer| server.session_bytes(*peer))
        .sum();
    println!("sessions: {}", server.peer_count());
    println!("handshakes still open: {}", server.handshake_count());
    println!(
        "handshakes per second (client and server in one thread): {:.0}",
        f64::from(count) / elapsed.as_secs_f64()
    );
    println!(
        "structural bytes per session: {}",
        structural / peers.len().max(1)
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "resident-set growth per session: {}",
            after.saturating_sub(before) / peers.len().max(1)
        );
    }
    println!(
        "size_of::<Session>(): {}",
        std::mem::size_of::<cairn_dtls::session::Session>()
    );
    println!(
        "size_of::<Handshake>() (boxed, per peer while handshaking): {}",
        std::mem::size_of::<cairn_dtls::handshake::Handshake>()
    );
    record_throughput(&mut server, peers[0]);
}

/// Seals 64-byte records for one session: the AES key schedule is rebuilt per record.
fn record_throughput(server: &mut ServerEndpoint, peer: SocketAddr) {
    let rounds = 200_000u32;
    let payload = [0x5Au8; 64];
    let started = Instant::now();
    for _ in 0..rounds {
        server.send(Duration::ZERO, peer, &payload).unwrap();
        let _ = server.poll_transmit();
    }
    let per_record = started.elapsed() / rounds;
    println!("seal of a 64-byte record (CCM-8, key schedule per record): {per_record:?}");
}
