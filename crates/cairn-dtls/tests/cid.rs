//! Connection IDs (RFC 9146): negotiation on both sides, `tls12_cid` records, a device that
//! changes address keeps its session, and only the newest authentic record moves it (§6).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cairn_dtls::record::Records;
use cairn_dtls::{CidConfig, Event};
use common::*;

fn cid_server_config() -> cairn_dtls::ServerConfig {
    let mut config = server_config();
    config.connection_id = Some(CidConfig {
        length: 6,
        node_prefix: vec![0xCA],
    });
    config
}

fn cid_client_config(own: Vec<u8>) -> cairn_dtls::ClientConfig {
    let mut config = client_config();
    config.connection_id = Some(own);
    config
}

fn data(events: &[Event]) -> Vec<(SocketAddr, Vec<u8>)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::ApplicationData { peer, data } => Some((*peer, data.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn server_issued_cid_with_node_prefix_is_used_by_the_client() {
    let mut link = connected(cid_server_config(), cid_client_config(Vec::new()));
    let info = link.server.session(link.client_addr).unwrap();
    assert_eq!(info.connection_id.len(), 6);
    assert_eq!(info.connection_id[0], 0xCA);
    link.client
        .send(link.now, server_addr(), b"via cid")
        .unwrap();
    let datagram = link.client.poll_transmit().unwrap().payload;
    assert_eq!(datagram[0], 25, "tls12_cid record");
    assert_eq!(&datagram[11..17], info.connection_id.as_slice());
    link.server.handle(link.now, link.client_addr, &datagram);
    link.run(link.now);
    assert_eq!(
        data(&link.server_events),
        [(link.client_addr, b"via cid".to_vec())]
    );
}

#[test]
fn cids_are_random_per_session() {
    let first = connected(cid_server_config(), cid_client_config(Vec::new()));
    let mut link = Link::new(first.server, client(cid_client_config(Vec::new()), 8));
    link.client_addr = client_addr(2);
    link.client.connect(link.now).unwrap();
    link.run(Duration::from_secs(10));
    let a = link.server.session(client_addr(1)).unwrap().connection_id;
    let b = link.server.session(client_addr(2)).unwrap().connection_id;
    assert_ne!(a, b);
    assert_eq!(a[0], b[0]);
}

#[test]
fn device_that_changes_address_keeps_its_session() {
    let mut link = connected(cid_server_config(), cid_client_config(Vec::new()));
    let old = link.client_addr;
    let new = client_addr(77);
    link.client_addr = new;
    link.client
        .send(link.now, server_addr(), b"from new address")
        .unwrap();
    link.run(link.now);
    assert!(link.server_events.contains(&Event::PeerMoved { old, new }));
    assert_eq!(
        data(&link.server_events),
        [(new, b"from new address".to_vec())]
    );
    assert!(link.server.session(old).is_none());
    link.server.send(link.now, new, b"reply").unwrap();
    link.run(link.now);
    assert_eq!(
        data(&link.client_events),
        [(server_addr(), b"reply".to_vec())]
    );
}

#[test]
fn an_older_record_from_a_new_address_does_not_move_the_peer() {
    let mut link = connected(cid_server_config(), cid_client_config(Vec::new()));
    let home = link.client_addr;
    link.client.send(link.now, server_addr(), b"older").unwrap();
    link.client.send(link.now, server_addr(), b"newer").unwrap();
    let older = link.client.poll_transmit().unwrap().payload;
    let newer = link.client.poll_transmit().unwrap().payload;
    link.server.handle(link.now, home, &newer);
    link.server.handle(link.now, client_addr(88), &older);
    link.run(link.now);
    assert!(
        !link
            .server_events
            .iter()
            .any(|event| matches!(event, Event::PeerMoved { .. }))
    );
    assert_eq!(
        data(&link.server_events),
        [(home, b"newer".to_vec()), (home, b"older".to_vec())]
    );
}

#[test]
fn forged_cid_records_do_not_move_or_disturb_the_session() {
    let mut link = connected(cid_server_config(), cid_client_config(Vec::new()));
    let home = link.client_addr;
    link.client
        .send(link.now, server_addr(), b"genuine")
        .unwrap();
    let genuine = link.client.poll_transmit().unwrap().payload;
    let mut bad_mac = genuine.clone();
    let last = bad_mac.len() - 1;
    bad_mac[last] ^= 1;
    let mut unknown_cid = genuine.clone();
    unknown_cid[12] ^= 0xFF;
    let thief = client_addr(99);
    link.server.handle(link.now, thief, &bad_mac);
    link.server.handle(link.now, thief, &unknown_cid);
    link.server.handle(link.now, thief, &genuine[..20]);
    link.run(link.now);
    assert!(data(&link.server_events).is_empty());
    assert!(
        !link
            .server_events
            .iter()
            .any(|event| matches!(event, Event::PeerMoved { .. }))
    );
    assert!(link.server.session(home).is_some());
    link.server.handle(link.now, home, &genuine);
    link.run(link.now);
    assert_eq!(data(&link.server_events), [(home, b"genuine".to_vec())]);
}

#[test]
fn client_chosen_cid_is_put_on_server_records() {
    let mut link = connected(
        cid_server_config(),
        cid_client_config(vec![0xD1, 0xD2, 0xD3]),
    );
    link.server
        .send(link.now, link.client_addr, b"down")
        .unwrap();
    let datagram = link.server.poll_transmit().unwrap().payload;
    assert_eq!(datagram[0], 25);
    let record = Records::new(&datagram, 3).next().unwrap();
    assert_eq!(record.cid, [0xD1, 0xD2, 0xD3]);
    link.client.handle(link.now, server_addr(), &datagram);
    link.run(link.now);
    assert_eq!(
        data(&link.client_events),
        [(server_addr(), b"down".to_vec())]
    );
}

#[test]
fn cid_is_not_used_unless_both_sides_want_it() {
    let mut link = connected(server_config(), cid_client_config(Vec::new()));
    assert!(
        link.server
            .session(link.client_addr)
            .unwrap()
            .connection_id
            .is_empty()
    );
    link.client.send(link.now, server_addr(), b"plain").unwrap();
    let datagram = link.client.poll_transmit().unwrap().payload;
    assert_eq!(datagram[0], 23);
    let mut link = connected(cid_server_config(), client_config());
    link.client.send(link.now, server_addr(), b"plain").unwrap();
    assert_eq!(link.client.poll_transmit().unwrap().payload[0], 23);
}
