//! In-process interoperability with the `dimpl` crate (DTLS 1.2, PSK-AES128-CCM8), both
//! directions, on a fake clock. dimpl offers `use_srtp` and other WebRTC extensions in its
//! ClientHello, which our server must ignore (RFC 5246 §7.4.1.4).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_dtls::codec::Reader;
use cairn_dtls::record::Records;
use cairn_dtls::{CipherSuite, ClientEndpoint, Event, ServerEndpoint};
use common::*;
use dimpl::{Config, Dtls, Output};

struct DimplKeys;

impl dimpl::PskResolver for DimplKeys {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        (identity == IDENTITY).then(|| KEY.to_vec())
    }
}

fn dimpl_config(client: bool) -> Arc<Config> {
    let builder = Config::builder();
    let builder = if client {
        builder.with_psk_client(IDENTITY.to_vec(), Arc::new(DimplKeys))
    } else {
        builder.with_psk_server(Some(b"cairn".to_vec()), Arc::new(DimplKeys))
    };
    Arc::new(builder.build().expect("dimpl config"))
}

/// Everything dimpl wants to say right now: datagrams, received data, whether it connected.
#[derive(Default)]
struct DimplOutput {
    packets: Vec<Vec<u8>>,
    data: Vec<Vec<u8>>,
    connected: bool,
}

fn drain_dimpl(dtls: &mut Dtls) -> DimplOutput {
    let mut out = DimplOutput::default();
    let mut buffer = vec![0u8; 4096];
    loop {
        match dtls.poll_output(&mut buffer) {
            Output::Packet(packet) => out.packets.push(packet.to_vec()),
            Output::ApplicationData(data) => out.data.push(data.to_vec()),
            Output::Connected => out.connected = true,
            Output::Timeout(_) => return out,
            _ => {}
        }
    }
}

/// Extension types of the ClientHello in the first record of `datagram`.
fn client_hello_extensions(datagram: &[u8]) -> Vec<u16> {
    let record = Records::new(datagram, 0).next().unwrap();
    let mut reader = Reader::new(&record.fragment[12..]);
    reader.take(2 + 32, "version, random").unwrap();
    reader.vec8("session_id").unwrap();
    reader.vec8("cookie").unwrap();
    reader.vec16("cipher_suites").unwrap();
    reader.vec8("compression_methods").unwrap();
    let mut list = Reader::new(reader.vec16("extensions").unwrap());
    let mut types = Vec::new();
    while !list.is_empty() {
        types.push(list.u16("type").unwrap());
        list.vec16("data").unwrap();
    }
    types
}

#[test]
fn dimpl_client_against_our_server() {
    let base = Instant::now();
    let mut server = ServerEndpoint::new(server_config(), rng(40), Duration::ZERO).unwrap();
    let mut dimpl = Dtls::new_12_psk(dimpl_config(true), base);
    dimpl.set_active(true);
    dimpl.handle_timeout(base).unwrap();
    let peer = client_addr(1);
    let mut dimpl_connected = false;
    let mut server_identity = None;
    let mut server_data = Vec::new();
    let mut dimpl_data = Vec::new();
    let mut sent = false;
    for step in 0..40u64 {
        let now = Duration::from_millis(step * 100);
        let output = drain_dimpl(&mut dimpl);
        dimpl_connected |= output.connected;
        dimpl_data.extend(output.data);
        for packet in output.packets {
            if step == 0 {
                assert!(
                    client_hello_extensions(&packet).contains(&14),
                    "use_srtp offered"
                );
            }
            server.handle(now, peer, &packet);
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected { identity, .. } => server_identity = Some(identity),
                Event::ApplicationData { data, .. } => server_data.push(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(transmit) = server.poll_transmit() {
            dimpl.handle_packet(&transmit.payload).unwrap();
        }
        if dimpl_connected && server_identity.is_some() && !sent {
            sent = true;
            dimpl.send_application_data(b"from dimpl").unwrap();
            server.send(now, peer, b"from cairn").unwrap();
        }
        if !dimpl_data.is_empty() && !server_data.is_empty() {
            break;
        }
        dimpl.handle_timeout(base + now).unwrap();
        server.handle_timeout(now);
    }
    assert_eq!(server_identity.as_deref(), Some(IDENTITY));
    assert!(dimpl_connected);
    assert_eq!(server_data, [b"from dimpl".to_vec()]);
    assert_eq!(dimpl_data, [b"from cairn".to_vec()]);
}

#[test]
fn our_client_against_dimpl_server() {
    let base = Instant::now();
    let mut dimpl = Dtls::new_12_psk(dimpl_config(false), base);
    dimpl.set_active(false);
    let mut config = client_config();
    config.cipher_suites = vec![CipherSuite::PskWithAes128Ccm8];
    let mut client = ClientEndpoint::new(config, rng(41), server_addr()).unwrap();
    client.connect(Duration::ZERO).unwrap();
    let mut connected = false;
    let mut client_data = Vec::new();
    let mut dimpl_data = Vec::new();
    let mut sent = false;
    for step in 0..40u64 {
        let now = Duration::from_millis(step * 100);
        while let Some(transmit) = client.poll_transmit() {
            dimpl.handle_packet(&transmit.payload).unwrap();
        }
        let output = drain_dimpl(&mut dimpl);
        dimpl_data.extend(output.data);
        for packet in output.packets {
            client.handle(now, server_addr(), &packet);
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connected { .. } => connected = true,
                Event::ApplicationData { data, .. } => client_data.push(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        if connected && !sent {
            sent = true;
            client.send(now, server_addr(), b"from cairn").unwrap();
            dimpl.send_application_data(b"from dimpl").unwrap();
        }
        if !dimpl_data.is_empty() && !client_data.is_empty() {
            break;
        }
        dimpl.handle_timeout(base + now).unwrap();
        client.handle_timeout(now);
    }
    assert!(connected);
    assert_eq!(dimpl_data, [b"from cairn".to_vec()]);
    assert_eq!(client_data, [b"from dimpl".to_vec()]);
}
