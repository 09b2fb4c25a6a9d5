//! Many clients on one server at once, over a lossy in-memory network with a fake clock:
//! interleaved handshakes, retransmissions (RFC 6347 §4.2.4) and per-peer data routing.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_dtls::{ClientEndpoint, Event};
use common::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

#[test]
fn fifty_clients_with_twenty_percent_loss() {
    let mut server = server(server_config());
    let mut clients: Vec<(SocketAddr, ClientEndpoint)> = (0..50)
        .map(|n| (client_addr(n), client(client_config(), 1000 + u64::from(n))))
        .collect();
    let mut net = StdRng::seed_from_u64(99);
    let mut now = Duration::ZERO;
    for (_, client) in &mut clients {
        client.connect(now).unwrap();
    }
    let mut echoed: HashMap<SocketAddr, Vec<u8>> = HashMap::new();
    let mut sent_data = false;
    for _ in 0..2_000 {
        for (addr, client) in &mut clients {
            while let Some(transmit) = client.poll_transmit() {
                if net.random_bool(0.8) {
                    server.handle(now, *addr, &transmit.payload);
                }
            }
        }
        while let Some(transmit) = server.poll_transmit() {
            if !net.random_bool(0.8) {
                continue;
            }
            if let Some((_, client)) = clients
                .iter_mut()
                .find(|(addr, _)| *addr == transmit.destination)
            {
                client.handle(now, server_addr(), &transmit.payload);
            }
        }
        while let Some(event) = server.poll_event() {
            if let Event::ApplicationData { peer, data } = event {
                server.send(now, peer, &data).unwrap();
            }
        }
        for (addr, client) in &mut clients {
            while let Some(event) = client.poll_event() {
                if let Event::ApplicationData { data, .. } = event {
                    echoed.insert(*addr, data);
                }
            }
        }
        let all_connected = clients.iter().all(|(_, client)| client.is_connected());
        if all_connected && !sent_data {
            sent_data = true;
            for (addr, client) in &mut clients {
                client
                    .send(now, server_addr(), addr.to_string().as_bytes())
                    .unwrap();
            }
        }
        if echoed.len() == clients.len() {
            break;
        }
        // Lost data is not retransmitted by DTLS: resend until echoed.
        if sent_data {
            for (addr, client) in &mut clients {
                if !echoed.contains_key(addr) {
                    client
                        .send(now, server_addr(), addr.to_string().as_bytes())
                        .unwrap();
                }
            }
        }
        now += Duration::from_millis(250);
        server.handle_timeout(now);
        for (_, client) in &mut clients {
            client.handle_timeout(now);
        }
    }
    assert_eq!(echoed.len(), clients.len(), "after {now:?}");
    for (addr, data) in &echoed {
        assert_eq!(data, addr.to_string().as_bytes());
    }
    assert_eq!(server.peer_count(), clients.len());
    assert_eq!(server.handshake_count(), 0);
}
