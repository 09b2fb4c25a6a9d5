//! Our client against our server in one thread with a fake clock: full and abbreviated
//! handshakes, both suites, loss and retransmission (RFC 6347 §4.2.4), wrong keys.

mod common;

use std::time::Duration;

use cairn_dtls::{AlertDescription, CipherSuite, CloseReason, Event, Psk};
use common::*;

fn data_events(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::ApplicationData { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn exchange(link: &mut Link) {
    let server = server_addr();
    let client = link.client_addr;
    link.client.send(link.now, server, b"hello server").unwrap();
    link.server.send(link.now, client, b"hello client").unwrap();
    link.run(link.now);
    assert_eq!(data_events(&link.server_events), [b"hello server".to_vec()]);
    assert_eq!(data_events(&link.client_events), [b"hello client".to_vec()]);
}

#[test]
fn full_handshake_and_data_both_ways() {
    let mut link = connected(server_config(), client_config());
    assert!(link.server_events.contains(&Event::Connected {
        peer: link.client_addr,
        identity: IDENTITY.to_vec(),
        resumed: false,
    }));
    assert_eq!(link.server.handshake_count(), 0);
    assert_eq!(
        link.server.session(link.client_addr).unwrap().identity,
        IDENTITY
    );
    exchange(&mut link);
    // CH, CH+cookie, flight 5 and one record of data from the client; HVR, flight 4,
    // flight 6 and one record of data from the server.
    assert_eq!(link.sent, [4, 4]);
}

#[test]
fn each_suite_negotiates() {
    for suite in CipherSuite::PSK {
        let mut config = client_config();
        config.cipher_suites = vec![suite];
        let mut link = connected(server_config(), config);
        exchange(&mut link);
    }
}

#[test]
fn identity_hint_is_sent_and_accepted() {
    let mut config = server_config();
    config.identity_hint = Some(b"cairn".to_vec());
    let mut link = connected(config, client_config());
    exchange(&mut link);
}

#[test]
fn lost_flights_are_retransmitted_with_doubling_timer() {
    let mut link = Link::new(server(server_config()), client(client_config(), 3));
    // Lose the first two ClientHellos and the first flight 6.
    link.loss = Box::new(|direction, index, _| {
        matches!(
            (direction, index),
            (Direction::ToServer, 0 | 1) | (Direction::ToClient, 2)
        )
    });
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(30));
    assert!(link.client_connected() && link.server_connected());
    let client_sends: Vec<Duration> = link
        .trace
        .iter()
        .filter(|(_, direction, _)| *direction == Direction::ToServer)
        .map(|(time, _, _)| *time)
        .take(3)
        .collect();
    assert_eq!(
        client_sends,
        [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(3)
        ]
    );
    exchange(&mut link);
}

#[test]
fn lost_final_flight_is_answered_from_the_session() {
    let mut link = Link::new(server(server_config()), client(client_config(), 3));
    // Server datagrams: 0 HVR, 1 flight 4, 2 flight 6 (lost twice).
    link.loss = Box::new(|direction, index, _| {
        direction == Direction::ToClient && (index == 2 || index == 3)
    });
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(30));
    assert!(link.server_connected());
    assert!(link.client_connected(), "{:?}", link.client_events);
    exchange(&mut link);
}

#[test]
fn handshake_gives_up_after_max_retransmissions() {
    let mut link = Link::new(server(server_config()), client(client_config(), 3));
    link.loss = Box::new(|direction, _, _| direction == Direction::ToServer);
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(600));
    assert_eq!(
        link.client_events,
        [Event::Closed {
            peer: server_addr(),
            reason: CloseReason::HandshakeTimeout,
            identity: None,
        }]
    );
    // 1 + 6 retransmissions, at 0, 1, 3, 7, 15, 31, 63 s; the end at 123 s.
    assert_eq!(link.sent[0], 7);
    assert_eq!(link.now, Duration::from_secs(123));
}

#[test]
fn resumption_by_session_id() {
    let mut link = connected(server_config(), client_config());
    link.client.close(server_addr());
    link.run(link.now);
    assert!(link.server_events.iter().any(|event| matches!(
        event,
        Event::Closed {
            reason: CloseReason::PeerClosed,
            identity: Some(identity),
            ..
        } if **identity == *IDENTITY
    )));
    link.server_events.clear();
    link.client_events.clear();
    link.client.connect(link.now).unwrap();
    link.run(link.now + Duration::from_secs(10));
    assert!(
        link.client_events
            .iter()
            .any(|event| matches!(event, Event::Connected { resumed: true, .. }))
    );
    assert!(link.server_events.iter().any(|event| matches!(
        event,
        Event::Connected { resumed: true, identity, .. } if identity == IDENTITY
    )));
    exchange(&mut link);
}

#[test]
fn resumption_survives_loss_of_the_client_finished() {
    let mut link = connected(server_config(), client_config());
    link.client.close(server_addr());
    link.run(link.now);
    link.server_events.clear();
    link.client_events.clear();
    let first = link.sent[0];
    // Abbreviated: CH, CH+cookie, then CCS+Finished from the client; lose that last one.
    link.loss =
        Box::new(move |direction, index, _| direction == Direction::ToServer && index == first + 2);
    link.client.connect(link.now).unwrap();
    link.run(link.now + Duration::from_secs(20));
    assert!(link.server_connected(), "{:?}", link.server_events);
    exchange(&mut link);
}

#[test]
fn wrong_key_fails_the_handshake_on_both_sides() {
    let mut config = client_config();
    config.psk = Psk::new(b"wrong key wrong!".to_vec());
    let mut link = Link::new(server(server_config()), client(config, 5));
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(600));
    assert!(!link.client_connected() && !link.server_connected());
    assert!(
        link.client_events
            .iter()
            .any(|event| matches!(event, Event::Closed { .. }))
    );
    assert_eq!(link.server.peer_count(), 0);
}

#[test]
fn unknown_identity_is_refused_with_an_alert() {
    let config = cairn_dtls::ClientConfig::new(b"stranger".to_vec(), Psk::new(KEY.to_vec()));
    let mut link = Link::new(server(server_config()), client(config, 5));
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(10));
    assert_eq!(
        link.client_events,
        [Event::Closed {
            peer: server_addr(),
            reason: CloseReason::PeerAlert(AlertDescription::UnknownPskIdentity),
            identity: None,
        }]
    );
    assert_eq!(link.server.peer_count(), 0);
}

#[test]
fn close_notify_ends_both_sides() {
    let mut link = connected(server_config(), client_config());
    link.server.close(link.client_addr);
    link.run(link.now);
    assert!(link.client_events.contains(&Event::Closed {
        peer: server_addr(),
        reason: CloseReason::PeerClosed,
        identity: Some(IDENTITY.into()),
    }));
    assert!(!link.client.is_connected());
    assert_eq!(
        link.client.send(link.now, server_addr(), b"x"),
        Err(cairn_dtls::Error::NotConnected)
    );
}

#[test]
fn fragmented_flights_reassemble_under_a_small_mtu() {
    let long_identity = vec![b'i'; 600];
    let mut table = PskTable::default();
    table.0.insert(long_identity.clone(), KEY.to_vec());
    let mut config = cairn_dtls::ServerConfig::new(std::sync::Arc::new(table));
    config.identity_hint = Some(vec![b'h'; 500]);
    config.mtu = 256;
    let mut client_config =
        cairn_dtls::ClientConfig::new(long_identity.clone(), Psk::new(KEY.to_vec()));
    client_config.mtu = 256;
    let mut link = Link::new(server(config), client(client_config, 4));
    // Lose the second datagram of flight 4 once and the first of flight 5 once.
    link.loss = Box::new(|direction, index, _| {
        matches!(
            (direction, index),
            (Direction::ToClient, 2) | (Direction::ToServer, 2)
        )
    });
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(30));
    assert!(link.server_events.iter().any(|event| matches!(
        event,
        Event::Connected { identity, .. } if *identity == long_identity
    )));
    assert!(link.client_connected());
    assert!(
        link.trace
            .iter()
            .all(|(_, _, datagram)| datagram.len() <= 256)
    );
    let fragments = link
        .trace
        .iter()
        .filter(|(_, direction, _)| *direction == Direction::ToClient)
        .count();
    assert!(fragments >= 4, "flight 4 took {fragments} datagrams");
    exchange(&mut link);
}

#[test]
fn reordered_and_duplicated_datagrams_still_complete() {
    let mut link = Link::new(server(server_config()), client(client_config(), 6));
    let mut held: Option<Vec<u8>> = None;
    let mut deliveries = Vec::new();
    link.client.connect(link.now).unwrap();
    // Manual pump: every datagram is delivered twice, and server datagrams are swapped in pairs.
    for _ in 0..20 {
        while let Some(transmit) = link.client.poll_transmit() {
            for _ in 0..2 {
                link.server
                    .handle(link.now, link.client_addr, &transmit.payload);
            }
        }
        while let Some(transmit) = link.server.poll_transmit() {
            match held.take() {
                Some(earlier) => {
                    deliveries.push(transmit.payload.clone());
                    deliveries.push(earlier);
                }
                None => held = Some(transmit.payload),
            }
        }
        for datagram in deliveries.drain(..) {
            for _ in 0..2 {
                link.client.handle(link.now, server_addr(), &datagram);
            }
        }
        if link.client.is_connected() {
            break;
        }
        if let Some(datagram) = held.take() {
            link.client.handle(link.now, server_addr(), &datagram);
        }
        link.now += Duration::from_secs(2);
        link.client.handle_timeout(link.now);
        link.server.handle_timeout(link.now);
    }
    assert!(link.client.is_connected());
    link.run(link.now);
    assert!(link.server_connected());
    let connected = link
        .server_events
        .iter()
        .filter(|event| matches!(event, Event::Connected { .. }))
        .count();
    assert_eq!(connected, 1);
    exchange(&mut link);
}

#[test]
fn client_restarting_mid_handshake_replaces_its_old_handshake() {
    let mut link = Link::new(server(server_config()), client(client_config(), 3));
    // Lose flight 5 so the server keeps waiting; then the device reboots.
    link.loss = Box::new(|direction, index, _| direction == Direction::ToServer && index == 2);
    link.client.connect(link.now).unwrap();
    link.run(link.now);
    assert_eq!(link.server.handshake_count(), 1);
    link.client = client(client_config(), 4);
    link.client.connect(link.now).unwrap();
    link.run(link.now + Duration::from_millis(10));
    assert!(link.client_connected(), "{:?}", link.client_events);
    assert!(link.server_events.iter().any(|event| matches!(
        event,
        Event::Closed {
            reason: CloseReason::NewHandshake,
            ..
        }
    )));
    assert_eq!(link.server.peer_count(), 1);
    exchange(&mut link);
}

#[test]
fn configs_and_endpoints_do_not_print_keys() {
    let link = connected(server_config(), client_config());
    let printed = format!(
        "{:?} {:?} {:?} {:?}",
        client_config(),
        server_config(),
        link.client,
        link.server
    );
    assert!(!printed.contains("0123456789abcdef"), "{printed}");
    assert!(!printed.contains("48, 49, 50, 51"), "{printed}");
    assert!(printed.contains("Psk(16 bytes)"));
}

#[test]
fn forgotten_session_means_a_full_handshake() {
    let mut link = connected(server_config(), client_config());
    link.client.close(server_addr());
    link.run(link.now);
    link.client.forget_session();
    link.server_events.clear();
    link.client_events.clear();
    link.client.connect(link.now).unwrap();
    link.run(link.now + Duration::from_secs(10));
    assert!(
        link.client_events
            .iter()
            .any(|event| matches!(event, Event::Connected { resumed: false, .. }))
    );
    exchange(&mut link);
}

#[test]
fn server_can_forget_the_sessions_of_an_identity() {
    let mut link = connected(server_config(), client_config());
    link.client.close(server_addr());
    link.run(link.now);
    link.server.forget_sessions_of(IDENTITY);
    link.server_events.clear();
    link.client_events.clear();
    link.client.connect(link.now).unwrap();
    link.run(link.now + Duration::from_secs(10));
    assert!(
        link.server_events
            .iter()
            .any(|event| matches!(event, Event::Connected { resumed: false, .. }))
    );
    exchange(&mut link);
}
