//! A hostile server against our client: the client fails closed and never panics
//! (RFC 6347 §4.1.2.7, §4.2.1; RFC 5246 §7.4.1.3; CVE-2019-20786 style plaintext data).

mod common;

use std::time::Duration;

use cairn_dtls::codec::put_u48;
use cairn_dtls::message::{
    HandshakeType, HelloExtensions, HelloVerifyRequest, ServerHello, put_fragment_header,
};
use cairn_dtls::{AlertDescription, ClientEndpoint, CloseReason, Event};
use common::*;

fn raw_record(content_type: u8, epoch: u16, seq: u64, fragment: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type, 0xFE, 0xFD];
    out.extend_from_slice(&epoch.to_be_bytes());
    put_u48(&mut out, seq);
    out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
    out.extend_from_slice(fragment);
    out
}

fn handshake(msg_type: HandshakeType, seq: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_fragment_header(&mut out, msg_type, body.len(), seq, 0, body.len());
    out.extend_from_slice(body);
    raw_record(22, 0, u64::from(seq), &out)
}

fn events(client: &mut ClientEndpoint) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(event) = client.poll_event() {
        events.push(event);
    }
    events
}

fn started_client() -> ClientEndpoint {
    let mut client = client(client_config(), 70);
    client.connect(Duration::ZERO).unwrap();
    while client.poll_transmit().is_some() {}
    client
}

fn server_hello(suite: u16) -> Vec<u8> {
    let mut body = Vec::new();
    ServerHello {
        version: 0xFEFD,
        random: [1; 32],
        session_id: Vec::new(),
        cipher_suite: suite,
        compression_method: 0,
        extensions: HelloExtensions::default(),
    }
    .encode(&mut body);
    body
}

#[test]
fn early_change_cipher_spec_and_epoch_1_junk_are_ignored() {
    let mut client = started_client();
    client.handle(Duration::ZERO, server_addr(), &raw_record(20, 0, 0, &[1]));
    client.handle(
        Duration::ZERO,
        server_addr(),
        &raw_record(23, 1, 0, &[0; 40]),
    );
    client.handle(
        Duration::ZERO,
        server_addr(),
        &raw_record(23, 0, 1, b"plaintext"),
    );
    assert!(events(&mut client).is_empty());
    assert!(client.poll_transmit().is_none());
    assert!(
        client.poll_timeout().is_some(),
        "still waiting for the server"
    );
}

#[test]
fn server_hello_with_a_suite_not_offered_aborts() {
    let mut client = started_client();
    client.handle(
        Duration::ZERO,
        server_addr(),
        &handshake(HandshakeType::ServerHello, 0, &server_hello(0x002F)),
    );
    assert_eq!(
        events(&mut client),
        [Event::Closed {
            peer: server_addr(),
            reason: CloseReason::LocalAlert(AlertDescription::IllegalParameter),
            identity: None,
        }]
    );
    let alert = client.poll_transmit().unwrap().payload;
    assert_eq!(alert[0], 21);
    assert_eq!(alert[13..], [2, 47]);
}

#[test]
fn endless_hello_verify_requests_end_the_handshake() {
    let mut client = started_client();
    for seq in 0..6u16 {
        let mut body = Vec::new();
        HelloVerifyRequest {
            version: 0xFEFF,
            cookie: vec![seq as u8; 16],
        }
        .encode(&mut body);
        client.handle(
            Duration::ZERO,
            server_addr(),
            &handshake(HandshakeType::HelloVerifyRequest, seq, &body),
        );
    }
    let events = events(&mut client);
    assert!(
        matches!(
            events.as_slice(),
            [Event::Closed {
                reason: CloseReason::LocalAlert(_),
                ..
            }]
        ),
        "{events:?}"
    );
}

#[test]
fn finished_before_change_cipher_spec_aborts_the_client() {
    let mut client = started_client();
    client.handle(
        Duration::ZERO,
        server_addr(),
        &handshake(HandshakeType::ServerHello, 0, &server_hello(0xC0A8)),
    );
    client.handle(
        Duration::ZERO,
        server_addr(),
        &handshake(HandshakeType::ServerHelloDone, 1, &[]),
    );
    assert!(client.poll_transmit().is_some(), "flight 5 sent");
    client.handle(
        Duration::ZERO,
        server_addr(),
        &handshake(HandshakeType::Finished, 2, &[0; 12]),
    );
    assert_eq!(
        events(&mut client),
        [Event::Closed {
            peer: server_addr(),
            reason: CloseReason::LocalAlert(AlertDescription::UnexpectedMessage),
            identity: None,
        }]
    );
}

#[test]
fn plaintext_data_after_the_handshake_is_dropped_by_the_client() {
    let mut link = connected(server_config(), client_config());
    link.client
        .handle(link.now, server_addr(), &raw_record(23, 0, 40, b"forged"));
    link.client
        .handle(link.now, server_addr(), &raw_record(21, 0, 41, &[2, 40]));
    assert!(
        events(&mut link.client).is_empty(),
        "epoch 0 is ignored once connected"
    );
    assert!(link.client.is_connected());
    link.server
        .send(link.now, link.client_addr, b"real")
        .unwrap();
    link.run(link.now);
    assert!(link.client_events.iter().any(|event| matches!(
        event,
        Event::ApplicationData { data, .. } if data == b"real"
    )));
}

#[test]
fn datagrams_from_other_addresses_are_ignored() {
    let mut link = connected(server_config(), client_config());
    link.server
        .send(link.now, link.client_addr, b"real")
        .unwrap();
    let datagram = link.server.poll_transmit().unwrap().payload;
    link.client
        .handle(link.now, "10.99.0.1:5684".parse().unwrap(), &datagram);
    assert!(events(&mut link.client).is_empty());
    link.client.handle(link.now, server_addr(), &datagram);
    assert_eq!(
        events(&mut link.client),
        [Event::ApplicationData {
            peer: server_addr(),
            data: b"real".to_vec()
        }]
    );
}
