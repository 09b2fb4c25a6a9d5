//! Property tests: endpoints fed arbitrary or mutated datagrams never panic and never hold
//! more state than their limits allow. These run on stable; the cargo-fuzz targets in
//! `fuzz/` explore the same inputs further where a nightly toolchain exists.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cairn_dtls::{CidConfig, Event};
use common::*;
use proptest::prelude::*;

/// The datagrams of one full handshake plus data, each tagged with its direction.
fn honest_trace() -> Vec<(Direction, Vec<u8>)> {
    let mut config = server_config();
    config.connection_id = Some(CidConfig {
        length: 4,
        node_prefix: vec![9],
    });
    let mut client_config = client_config();
    client_config.connection_id = Some(Vec::new());
    let mut link = connected(config, client_config);
    link.client
        .send(link.now, server_addr(), b"payload")
        .unwrap();
    link.server
        .send(link.now, link.client_addr, b"payload")
        .unwrap();
    link.run(link.now);
    link.trace
        .iter()
        .map(|(_, direction, datagram)| (*direction, datagram.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn server_survives_arbitrary_datagrams(
        datagrams in proptest::collection::vec((0u8..4, proptest::collection::vec(any::<u8>(), 0..300)), 1..20)
    ) {
        let mut config = server_config();
        config.connection_id = Some(CidConfig { length: 4, node_prefix: vec![9] });
        let mut server = server(config);
        let mut now = Duration::ZERO;
        for (address, datagram) in datagrams {
            let from = SocketAddr::from(([127, 0, 0, address], 5000));
            server.handle(now, from, &datagram);
            now += Duration::from_millis(500);
            server.handle_timeout(now);
            while server.poll_transmit().is_some() {}
            while server.poll_event().is_some() {}
        }
        prop_assert_eq!(server.peer_count(), 0);
    }

    #[test]
    fn endpoints_survive_mutated_handshakes(index in any::<prop::sample::Index>(),
                                            byte in any::<prop::sample::Index>(),
                                            value in any::<u8>(),
                                            truncate in any::<bool>()) {
        let trace = honest_trace();
        let target = index.index(trace.len());
        let mut config = server_config();
        config.connection_id = Some(CidConfig { length: 4, node_prefix: vec![9] });
        let mut server = server(config);
        let mut client_config = client_config();
        client_config.connection_id = Some(Vec::new());
        let mut client = client(client_config, 7);
        let mut now = Duration::ZERO;
        for (position, (direction, datagram)) in trace.iter().enumerate() {
            let mut datagram = datagram.clone();
            if position == target && !datagram.is_empty() {
                let at = byte.index(datagram.len());
                if truncate {
                    datagram.truncate(at);
                } else {
                    datagram[at] = value;
                }
            }
            match direction {
                Direction::ToServer => server.handle(now, client_addr(1), &datagram),
                Direction::ToClient => client.handle(now, server_addr(), &datagram),
            }
            now += Duration::from_millis(10);
            while server.poll_transmit().is_some() {}
            while client.poll_transmit().is_some() {}
            while let Some(event) = server.poll_event() {
                if let Event::ApplicationData { data, .. } = event {
                    prop_assert_eq!(data, b"payload".to_vec());
                }
            }
            while client.poll_event().is_some() {}
        }
        prop_assert!(server.peer_count() <= 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any pattern of up to four lost datagrams per direction among the first twelve is
    /// recovered by retransmission (RFC 6347 §4.2.4), with and without CID, and data flows.
    #[test]
    fn handshake_recovers_from_any_small_loss_pattern(
        to_server in proptest::collection::btree_set(0usize..12, 0..=4),
        to_client in proptest::collection::btree_set(0usize..12, 0..=4),
        use_cid in any::<bool>(),
    ) {
        let mut config = server_config();
        let mut client_config = client_config();
        if use_cid {
            config.connection_id = Some(CidConfig { length: 5, node_prefix: vec![] });
            client_config.connection_id = Some(vec![7]);
        }
        let mut link = Link::new(server(config), client(client_config, 17));
        link.loss = Box::new(move |direction, index, _| match direction {
            Direction::ToServer => to_server.contains(&index),
            Direction::ToClient => to_client.contains(&index),
        });
        link.client.connect(link.now).unwrap();
        link.run(Duration::from_secs(200));
        prop_assert!(link.client_connected(), "{:?}", link.client_events);
        // Data may be lost too: send until it arrives (DTLS does not retransmit data).
        let mut delivered = false;
        for _ in 0..20 {
            link.client.send(link.now, server_addr(), b"ping").unwrap();
            link.run(link.now);
            if link.server_events.iter().any(|event| matches!(event, Event::ApplicationData { .. })) {
                delivered = true;
                break;
            }
        }
        prop_assert!(delivered);
        prop_assert!(link.server_connected());
        prop_assert_eq!(link.server.peer_count(), 1);
    }
}
