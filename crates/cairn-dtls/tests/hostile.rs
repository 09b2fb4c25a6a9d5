//! Hostile peers: each attack fails closed, nothing panics, and the server goes on serving an
//! honest client afterwards. RFC 6347 §4.1.2.7 (invalid records dropped), §4.2.1 (no state
//! before the cookie), §4.1.2.6 (replay), RFC 5746 (no renegotiation), CVE-2017-7243
//! (early ChangeCipherSpec), CVE-2019-20786 (plaintext application data).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cairn_dtls::codec::put_u48;
use cairn_dtls::message::{
    ClientHello, HandshakeType, HelloExtensions, encode_psk_identity, put_fragment_header,
};
use cairn_dtls::record::{ContentType, Records};
use cairn_dtls::{ClientEndpoint, Event, ServerEndpoint};
use common::*;

fn attacker() -> SocketAddr {
    "10.66.0.1:6666".parse().unwrap()
}

fn raw_record(content_type: u8, epoch: u16, seq: u64, fragment: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type, 0xFE, 0xFD];
    out.extend_from_slice(&epoch.to_be_bytes());
    put_u48(&mut out, seq);
    out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
    out.extend_from_slice(fragment);
    out
}

fn handshake_fragment(msg_type: HandshakeType, seq: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_fragment_header(&mut out, msg_type, body.len(), seq, 0, body.len());
    out.extend_from_slice(body);
    out
}

fn client_hello(cookie: Vec<u8>) -> ClientHello {
    ClientHello {
        version: 0xFEFD,
        random: [0x42; 32],
        session_id: Vec::new(),
        cookie,
        cipher_suites: vec![0xC0A8],
        compression_methods: vec![0],
        extensions: HelloExtensions::default(),
    }
}

fn client_hello_datagram(hello: &ClientHello, seq: u16) -> Vec<u8> {
    let mut body = Vec::new();
    hello.encode(&mut body);
    raw_record(
        22,
        0,
        0,
        &handshake_fragment(HandshakeType::ClientHello, seq, &body),
    )
}

fn drain(server: &mut ServerEndpoint) -> (Vec<Vec<u8>>, Vec<Event>) {
    let mut transmits = Vec::new();
    while let Some(transmit) = server.poll_transmit() {
        transmits.push(transmit.payload);
    }
    let mut events = Vec::new();
    while let Some(event) = server.poll_event() {
        events.push(event);
    }
    (transmits, events)
}

/// Runs an honest client through `server` and checks data flows.
fn serves_honest_client(server: ServerEndpoint, now: Duration) -> ServerEndpoint {
    let mut link = Link::new(server, client(client_config(), 99));
    link.now = now;
    link.client_addr = client_addr(500);
    link.client.connect(link.now).unwrap();
    link.run(now + Duration::from_secs(10));
    assert!(link.client_connected(), "{:?}", link.client_events);
    link.client
        .send(link.now, server_addr(), b"still here")
        .unwrap();
    link.run(link.now);
    assert!(link.server_events.iter().any(|event| matches!(
        event,
        Event::ApplicationData { data, .. } if data == b"still here"
    )));
    link.server
}

/// A cookie exchange done by hand from `from`; returns the valid-cookie ClientHello datagram.
fn cookie_round(server: &mut ServerEndpoint, from: SocketAddr) -> Vec<u8> {
    let first = client_hello(Vec::new());
    server.handle(Duration::ZERO, from, &client_hello_datagram(&first, 0));
    let (transmits, _) = drain(server);
    let hvr = Records::new(&transmits[0], 0).next().unwrap();
    let cookie = hvr.fragment[12 + 3..].to_vec();
    client_hello_datagram(&client_hello(cookie), 1)
}

/// Drives our client up to its flight 5, which is returned instead of delivered.
fn up_to_flight_5(
    server: &mut ServerEndpoint,
    client: &mut ClientEndpoint,
    from: SocketAddr,
) -> Vec<u8> {
    client.connect(Duration::ZERO).unwrap();
    for _ in 0..2 {
        let datagram = client.poll_transmit().unwrap().payload;
        server.handle(Duration::ZERO, from, &datagram);
        while let Some(transmit) = server.poll_transmit() {
            client.handle(Duration::ZERO, server_addr(), &transmit.payload);
        }
    }
    client.poll_transmit().unwrap().payload
}

/// Splits a datagram into its raw records.
fn split(datagram: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = 0;
    for record in Records::new(datagram, 0) {
        let len = 13 + record.fragment.len();
        out.push(datagram[offset..offset + len].to_vec());
        offset += len;
    }
    out
}

#[test]
fn change_cipher_spec_before_the_handshake_is_ignored() {
    let mut server = server(server_config());
    server.handle(Duration::ZERO, attacker(), &raw_record(20, 0, 0, &[1]));
    let mut flight3 = cookie_round(&mut server, attacker());
    flight3.extend(raw_record(20, 0, 1, &[1]));
    server.handle(Duration::ZERO, attacker(), &raw_record(20, 0, 2, &[1]));
    server.handle(Duration::ZERO, attacker(), &flight3);
    server.handle(Duration::ZERO, attacker(), &raw_record(20, 0, 3, &[1]));
    // Epoch 1 data right after the early CCS must not be read either.
    server.handle(Duration::ZERO, attacker(), &raw_record(23, 1, 0, &[0; 40]));
    let (_, events) = drain(&mut server);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(server.handshake_count(), 1);
    serves_honest_client(server, Duration::ZERO);
}

#[test]
fn finished_before_change_cipher_spec_aborts_the_handshake() {
    let mut server = server(server_config());
    let mut client = client(client_config(), 21);
    let flight5 = up_to_flight_5(&mut server, &mut client, attacker());
    let records = split(&flight5);
    assert_eq!(records.len(), 3, "CKE, CCS, Finished");
    // Keep the ClientKeyExchange, drop the CCS, send a plaintext Finished in epoch 0.
    let mut forged = records[0].clone();
    forged.extend(raw_record(
        22,
        0,
        9,
        &handshake_fragment(HandshakeType::Finished, 3, &[0; 12]),
    ));
    server.handle(Duration::ZERO, attacker(), &forged);
    let (transmits, events) = drain(&mut server);
    assert_eq!(
        events,
        [Event::Closed {
            peer: attacker(),
            reason: cairn_dtls::CloseReason::LocalAlert(
                cairn_dtls::AlertDescription::UnexpectedMessage
            ),
            identity: None,
        }]
    );
    assert_eq!(transmits.len(), 1, "one fatal alert");
    assert_eq!(transmits[0][0], 21);
    assert_eq!(server.peer_count(), 0);
    serves_honest_client(server, Duration::ZERO);
}

#[test]
fn encrypted_finished_without_change_cipher_spec_is_not_read() {
    let mut server = server(server_config());
    let mut client = client(client_config(), 22);
    let flight5 = up_to_flight_5(&mut server, &mut client, attacker());
    let records = split(&flight5);
    let mut without_ccs = records[0].clone();
    without_ccs.extend_from_slice(&records[2]);
    server.handle(Duration::ZERO, attacker(), &without_ccs);
    let (_, events) = drain(&mut server);
    assert!(events.is_empty());
    // The CCS then arrives with the retransmission: the handshake completes.
    server.handle(Duration::ZERO, attacker(), &flight5);
    let (_, events) = drain(&mut server);
    assert!(
        matches!(events.as_slice(), [Event::Connected { .. }]),
        "{events:?}"
    );
}

#[test]
fn client_key_exchange_without_a_cookie_round_keeps_no_state() {
    let mut server = server(server_config());
    let cke = handshake_fragment(
        HandshakeType::ClientKeyExchange,
        2,
        &encode_psk_identity(IDENTITY),
    );
    server.handle(Duration::ZERO, attacker(), &raw_record(22, 0, 0, &cke));
    let hello = client_hello_datagram(&client_hello(vec![7; 16]), 1);
    server.handle(Duration::ZERO, attacker(), &hello);
    server.handle(Duration::ZERO, attacker(), &raw_record(22, 0, 1, &cke));
    let (transmits, events) = drain(&mut server);
    assert!(events.is_empty());
    assert_eq!(
        transmits.len(),
        1,
        "only a HelloVerifyRequest for the forged cookie"
    );
    assert_eq!(server.peer_count(), 0);
    serves_honest_client(server, Duration::ZERO);
}

#[test]
fn client_hello_flood_from_spoofed_addresses_keeps_the_table_flat() {
    let mut server = server(server_config());
    for n in 0..10_000u32 {
        let from = SocketAddr::from(([10, 9, (n >> 8) as u8, n as u8], 1000 + (n % 50000) as u16));
        let datagram = client_hello_datagram(&client_hello(Vec::new()), 0);
        server.handle(Duration::from_millis(u64::from(n)), from, &datagram);
        while let Some(transmit) = server.poll_transmit() {
            assert!(transmit.payload.len() <= datagram.len());
        }
    }
    assert_eq!(server.peer_count(), 0);
    assert_eq!(server.poll_timeout(), None);
    serves_honest_client(server, Duration::from_secs(10));
}

#[test]
fn hello_verify_request_is_never_larger_than_the_client_hello() {
    let mut server = server(server_config());
    let datagram = client_hello_datagram(&client_hello(Vec::new()), 0);
    server.handle(Duration::ZERO, attacker(), &datagram);
    let (transmits, _) = drain(&mut server);
    assert_eq!(transmits.len(), 1);
    assert!(transmits[0].len() <= datagram.len());
    // A ClientHello padded down to nothing gets no answer at all.
    server.handle(Duration::ZERO, attacker(), &datagram[..40]);
    assert!(server.poll_transmit().is_none());
}

#[test]
fn plaintext_application_data_after_the_handshake_is_dropped() {
    let mut link = connected(server_config(), client_config());
    let from = link.client_addr;
    link.server
        .handle(link.now, from, &raw_record(23, 0, 50, b"forged plaintext"));
    link.server.handle(
        link.now,
        from,
        &raw_record(23, 1, 50, b"forged plaintext in epoch 1"),
    );
    link.run(link.now);
    assert!(
        !link
            .server_events
            .iter()
            .any(|event| matches!(event, Event::ApplicationData { .. }))
    );
    link.client.send(link.now, server_addr(), b"real").unwrap();
    link.run(link.now);
    assert!(link.server_events.iter().any(|event| matches!(
        event,
        Event::ApplicationData { data, .. } if data == b"real"
    )));
}

#[test]
fn client_hello_in_epoch_1_is_dropped() {
    let mut link = connected(server_config(), client_config());
    let hello = client_hello_datagram(&client_hello(Vec::new()), 5);
    let mut in_epoch_1 = hello.clone();
    in_epoch_1[4] = 1;
    link.server.handle(link.now, link.client_addr, &in_epoch_1);
    link.run(link.now);
    assert!(link.server.session(link.client_addr).is_some());
    link.client.send(link.now, server_addr(), b"after").unwrap();
    link.run(link.now);
    assert!(link.server_events.iter().any(|event| matches!(
        event,
        Event::ApplicationData { data, .. } if data == b"after"
    )));
}

#[test]
fn replayed_records_are_delivered_once() {
    let mut link = connected(server_config(), client_config());
    link.client.send(link.now, server_addr(), b"once").unwrap();
    let datagram = link.client.poll_transmit().unwrap().payload;
    for _ in 0..3 {
        link.server.handle(link.now, link.client_addr, &datagram);
    }
    let (_, events) = drain(&mut link.server);
    let deliveries = events
        .iter()
        .filter(|event| matches!(event, Event::ApplicationData { .. }))
        .count();
    assert_eq!(deliveries, 1);
}

#[test]
fn truncated_and_corrupted_records_are_dropped_silently() {
    let mut link = connected(server_config(), client_config());
    link.client
        .send(link.now, server_addr(), b"integrity")
        .unwrap();
    let datagram = link.client.poll_transmit().unwrap().payload;
    for len in 0..datagram.len() {
        link.server
            .handle(link.now, link.client_addr, &datagram[..len]);
    }
    for index in 0..datagram.len() {
        for bit in [0x01, 0x80] {
            let mut corrupted = datagram.clone();
            corrupted[index] ^= bit;
            link.server.handle(link.now, link.client_addr, &corrupted);
        }
    }
    let (transmits, events) = drain(&mut link.server);
    assert!(transmits.is_empty(), "no alert for bad records");
    assert!(events.is_empty(), "{events:?}");
    link.server.handle(link.now, link.client_addr, &datagram);
    let (_, events) = drain(&mut link.server);
    assert_eq!(
        events,
        [Event::ApplicationData {
            peer: link.client_addr,
            data: b"integrity".to_vec()
        }]
    );
}

#[test]
fn oversized_and_overlapping_fragments_are_bounded() {
    let mut server = server(server_config());
    let flight3 = cookie_round(&mut server, attacker());
    server.handle(Duration::ZERO, attacker(), &flight3);
    drain(&mut server);
    // A ClientKeyExchange claiming 16 MiB, then overlapping pieces that disagree.
    let mut huge = Vec::new();
    put_fragment_header(
        &mut huge,
        HandshakeType::ClientKeyExchange,
        0xFF_FFFF,
        2,
        0,
        4,
    );
    huge.extend_from_slice(&[0, 2, b'a', b'b']);
    server.handle(Duration::ZERO, attacker(), &raw_record(22, 0, 2, &huge));
    for (seq, offset, length) in [
        (3u64, 0usize, 100usize),
        (4, 50, 100),
        (5, 10, 120),
        (6, 99, 7),
    ] {
        let mut piece = Vec::new();
        put_fragment_header(
            &mut piece,
            HandshakeType::ClientKeyExchange,
            length,
            2,
            offset,
            10,
        );
        piece.extend_from_slice(&[0xEE; 10]);
        server.handle(Duration::ZERO, attacker(), &raw_record(22, 0, seq, &piece));
    }
    // A fragment reaching past its message, and a fragment of a pre-cookie ClientHello.
    let mut past = Vec::new();
    put_fragment_header(&mut past, HandshakeType::ClientKeyExchange, 10, 2, 8, 10);
    past.extend_from_slice(&[0; 10]);
    server.handle(Duration::ZERO, attacker(), &raw_record(22, 0, 7, &past));
    let mut partial_hello = Vec::new();
    put_fragment_header(
        &mut partial_hello,
        HandshakeType::ClientHello,
        500,
        0,
        0,
        10,
    );
    partial_hello.extend_from_slice(&[0; 10]);
    server.handle(
        Duration::ZERO,
        "10.66.0.2:1".parse().unwrap(),
        &raw_record(22, 0, 0, &partial_hello),
    );
    let (_, events) = drain(&mut server);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        server.peer_count(),
        1,
        "only the attacker's cookie-verified handshake"
    );
    serves_honest_client(server, Duration::ZERO);
}

#[test]
fn wrong_psk_and_unknown_identity_do_not_disturb_other_peers() {
    let mut server = server(server_config());
    let mut bad = client(
        cairn_dtls::ClientConfig::new(IDENTITY, cairn_dtls::Psk::new(b"bad".to_vec())),
        31,
    );
    let flight5 = up_to_flight_5(&mut server, &mut bad, attacker());
    server.handle(Duration::ZERO, attacker(), &flight5);
    let (_, events) = drain(&mut server);
    assert!(
        events.is_empty(),
        "bad Finished is dropped, not answered: {events:?}"
    );
    let mut stranger = client(
        cairn_dtls::ClientConfig::new(b"nobody".to_vec(), cairn_dtls::Psk::new(KEY.to_vec())),
        32,
    );
    let other: SocketAddr = "10.66.0.3:3".parse().unwrap();
    let flight5 = up_to_flight_5(&mut server, &mut stranger, other);
    server.handle(Duration::ZERO, other, &flight5);
    let (_, events) = drain(&mut server);
    assert_eq!(
        events,
        [Event::Closed {
            peer: other,
            reason: cairn_dtls::CloseReason::LocalAlert(
                cairn_dtls::AlertDescription::UnknownPskIdentity
            ),
            identity: None,
        }]
    );
    let server = serves_honest_client(server, Duration::ZERO);
    assert!(server.peer_count() >= 1);
}

#[test]
fn unknown_content_types_and_epochs_are_ignored() {
    let mut link = connected(server_config(), client_config());
    for content_type in [0u8, 19, 24, 25, 26, 255] {
        for epoch in [0u16, 1, 2, 0xFFFF] {
            link.server.handle(
                link.now,
                link.client_addr,
                &raw_record(content_type, epoch, 1, &[1, 2, 3]),
            );
        }
    }
    let (transmits, events) = drain(&mut link.server);
    assert!(transmits.is_empty() && events.is_empty());
    assert!(link.server.session(link.client_addr).is_some());
    let _ = ContentType::Tls12Cid;
}

#[test]
fn peer_table_is_capped_by_max_peers() {
    let mut config = server_config();
    config.max_peers = 2;
    let mut server = server(config);
    for n in 0..5u16 {
        let from = client_addr(600 + n);
        let flight3 = cookie_round(&mut server, from);
        server.handle(Duration::ZERO, from, &flight3);
        drain(&mut server);
    }
    assert_eq!(server.peer_count(), 2);
    // The handshakes time out and free their slots; then an honest client gets in.
    let mut now = Duration::ZERO;
    while let Some(deadline) = server.poll_timeout() {
        now = deadline;
        server.handle_timeout(now);
        drain(&mut server);
    }
    assert_eq!(server.peer_count(), 0);
    serves_honest_client(server, now);
}

#[test]
fn dtls_1_0_only_client_and_no_common_suite_are_refused_statelessly() {
    let mut server = server(server_config());
    let from = attacker();
    let first = client_hello(Vec::new());
    server.handle(Duration::ZERO, from, &client_hello_datagram(&first, 0));
    let (transmits, _) = drain(&mut server);
    let hvr = Records::new(&transmits[0], 0).next().unwrap();
    let cookie = hvr.fragment[12 + 3..].to_vec();
    for (version, suites, alert) in [
        (0xFEFFu16, vec![0xC0A8u16], 70u8),
        (0xFEFD, vec![0x002F], 40),
    ] {
        let mut hello = client_hello(cookie.clone());
        hello.version = version;
        hello.cipher_suites = suites;
        // The cookie covers the version and suites: get a matching one first.
        let mut probe = hello.clone();
        probe.cookie.clear();
        server.handle(Duration::ZERO, from, &client_hello_datagram(&probe, 0));
        let (transmits, _) = drain(&mut server);
        let hvr = Records::new(&transmits[0], 0).next().unwrap();
        hello.cookie = hvr.fragment[12 + 3..].to_vec();
        server.handle(Duration::ZERO, from, &client_hello_datagram(&hello, 1));
        let (transmits, _) = drain(&mut server);
        assert_eq!(transmits.len(), 1);
        assert_eq!(transmits[0][0], 21, "alert record");
        assert_eq!(transmits[0][13..], [2, alert]);
        assert_eq!(server.peer_count(), 0);
    }
}

#[test]
fn timers_of_many_half_open_handshakes_fire_in_order_and_expire() {
    let mut server = server(server_config());
    for n in 0..200u16 {
        let from = client_addr(700 + n);
        let at = Duration::from_millis(u64::from(n) * 10);
        let first = client_hello(Vec::new());
        server.handle(at, from, &client_hello_datagram(&first, 0));
        let (transmits, _) = drain(&mut server);
        let hvr = Records::new(&transmits[0], 0).next().unwrap();
        let cookie = hvr.fragment[12 + 3..].to_vec();
        server.handle(at, from, &client_hello_datagram(&client_hello(cookie), 1));
        drain(&mut server);
    }
    assert_eq!(server.handshake_count(), 200);
    assert_eq!(server.poll_timeout(), Some(Duration::from_secs(1)));
    server.handle_timeout(Duration::from_millis(1_005));
    let (transmits, _) = drain(&mut server);
    assert_eq!(transmits.len(), 1, "only the first handshake is due");
    assert_eq!(server.poll_timeout(), Some(Duration::from_millis(1_010)));
    let mut now = Duration::ZERO;
    let mut closed = 0;
    while let Some(deadline) = server.poll_timeout() {
        assert!(deadline >= now, "timers go forward");
        now = deadline;
        server.handle_timeout(now);
        let (_, events) = drain(&mut server);
        closed += events.len();
    }
    assert_eq!(closed, 200);
    assert_eq!(server.peer_count(), 0);
    assert_eq!(server.handshake_count(), 0);
}
