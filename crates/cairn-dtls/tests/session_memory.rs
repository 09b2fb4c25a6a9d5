//! Memory per established idle PSK session, a design figure (at most 192 bytes: 240 before
//! the session's compact layout). Builds many sessions in one server, has each client send
//! one record (as a device's registration does, which frees the server's final flight), and
//! sums what each holds once its handshake state is freed: the peer-table entry (address +
//! connection), the heap of the session (its PSK identity) and the CID table entry. The release-mode example `session_memory` reports the
//! same for 10,000 sessions together with the process's resident-memory growth.

mod common;

use std::time::Duration;

use cairn_dtls::{CidConfig, ClientConfig, ClientEndpoint, Psk, ServerEndpoint};
use common::*;

fn establish(server: &mut ServerEndpoint, count: u16) {
    for n in 0..count {
        let from = client_addr(n);
        let mut config = ClientConfig::new(IDENTITY, Psk::new(KEY.to_vec()));
        config.connection_id = Some(Vec::new());
        let mut client = ClientEndpoint::new(config, rng(u64::from(n)), server_addr()).unwrap();
        client.connect(Duration::ZERO).unwrap();
        for _ in 0..4 {
            while let Some(transmit) = client.poll_transmit() {
                server.handle(Duration::ZERO, from, &transmit.payload);
            }
            while let Some(transmit) = server.poll_transmit() {
                client.handle(Duration::ZERO, server_addr(), &transmit.payload);
            }
        }
        assert!(client.is_connected());
        client
            .send(Duration::ZERO, server_addr(), b"register")
            .unwrap();
        while let Some(transmit) = client.poll_transmit() {
            server.handle(Duration::ZERO, from, &transmit.payload);
        }
        while server.poll_transmit().is_some() {}
        let mut delivered = false;
        while let Some(event) = server.poll_event() {
            delivered |= matches!(event, cairn_dtls::Event::ApplicationData { .. });
        }
        assert!(delivered, "application data reached the server");
    }
}

#[test]
fn idle_psk_session_fits_in_192_bytes() {
    let mut config = server_config();
    config.connection_id = Some(CidConfig {
        length: 8,
        node_prefix: vec![1],
    });
    config.session_cache_size = 0;
    let mut server = ServerEndpoint::new(config, rng(1), Duration::ZERO).unwrap();
    let count = 1_000;
    establish(&mut server, count);
    assert_eq!(server.peer_count(), usize::from(count));
    assert_eq!(server.handshake_count(), 0, "handshake state freed");
    let total: usize = (0..count)
        .map(|n| server.session_bytes(client_addr(n)).unwrap())
        .sum();
    let per_session = total / usize::from(count);
    println!("bytes per established session: {per_session}");
    assert!(per_session <= 192, "{per_session} bytes per session");
}
