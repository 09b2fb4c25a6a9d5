//! In-process interoperability with the `rtc-dtls` crate (webrtc-rs, sans-IO), DTLS 1.2
//! PSK-AES128-CCM8, both directions, on a fake clock.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn_dtls::{CipherSuite, ClientEndpoint, Event, ServerEndpoint};
use common::*;
use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::{ConfigBuilder, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_shared::TransportProtocol;

fn rtc_config(client: bool, remote: SocketAddr) -> Arc<HandshakeConfig> {
    let provider = rtc_dtls::crypto_provider::default_provider().expect("rtc crypto provider");
    let builder = ConfigBuilder::default()
        .with_psk(Some(Arc::new(|_: &[u8]| Ok(KEY.to_vec()))))
        .with_cipher_suites(vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8])
        .with_crypto_provider(provider);
    // rtc-dtls sends its `psk_identity_hint` as the client's identity.
    let builder = if client {
        builder.with_psk_identity_hint(Some(IDENTITY.to_vec()))
    } else {
        builder
    };
    Arc::new(
        builder
            .build(client, Some(remote))
            .expect("rtc-dtls config"),
    )
}

#[derive(Default)]
struct RtcOutput {
    data: Vec<Vec<u8>>,
    connected: bool,
}

fn collect(events: Vec<EndpointEvent>, out: &mut RtcOutput) {
    for event in events {
        match event {
            EndpointEvent::HandshakeComplete => out.connected = true,
            EndpointEvent::ApplicationData(data) => out.data.push(data.to_vec()),
            _ => {}
        }
    }
}

#[test]
fn rtc_dtls_client_against_our_server() {
    let base = Instant::now();
    let peer = client_addr(1);
    let mut server = ServerEndpoint::new(server_config(), rng(60), Duration::ZERO).unwrap();
    let mut rtc = Endpoint::new(peer, TransportProtocol::UDP, None);
    rtc.connect(base, server_addr(), rtc_config(true, server_addr()), None)
        .unwrap();
    let mut rtc_out = RtcOutput::default();
    let mut server_data = Vec::new();
    let mut server_identity = None;
    let mut sent = false;
    for step in 0..40u64 {
        let now = Duration::from_millis(step * 100);
        while let Some(transmit) = rtc.poll_transmit() {
            server.handle(now, peer, &transmit.message);
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected { identity, .. } => server_identity = Some(identity),
                Event::ApplicationData { data, .. } => server_data.push(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(transmit) = server.poll_transmit() {
            let events = rtc
                .read(
                    base + now,
                    server_addr(),
                    None,
                    BytesMut::from(&transmit.payload[..]),
                )
                .unwrap();
            collect(events, &mut rtc_out);
        }
        if rtc_out.connected && server_identity.is_some() && !sent {
            sent = true;
            rtc.write(base + now, server_addr(), b"from rtc-dtls")
                .unwrap();
            server.send(now, peer, b"from cairn").unwrap();
        }
        if !rtc_out.data.is_empty() && !server_data.is_empty() {
            break;
        }
        rtc.handle_timeout(server_addr(), base + now).unwrap();
        server.handle_timeout(now);
    }
    assert_eq!(server_identity.as_deref(), Some(IDENTITY));
    assert_eq!(server_data, [b"from rtc-dtls".to_vec()]);
    assert_eq!(rtc_out.data, [b"from cairn".to_vec()]);
}

#[test]
fn our_client_against_rtc_dtls_server() {
    let base = Instant::now();
    let peer = client_addr(1);
    let mut rtc = Endpoint::new(
        server_addr(),
        TransportProtocol::UDP,
        Some(rtc_config(false, peer)),
    );
    let mut config = client_config();
    config.cipher_suites = vec![CipherSuite::PskWithAes128Ccm8];
    let mut client = ClientEndpoint::new(config, rng(61), server_addr()).unwrap();
    client.connect(Duration::ZERO).unwrap();
    let mut rtc_out = RtcOutput::default();
    let mut client_data = Vec::new();
    let mut connected = false;
    let mut sent = false;
    for step in 0..40u64 {
        let now = Duration::from_millis(step * 100);
        while let Some(transmit) = client.poll_transmit() {
            let events = rtc
                .read(
                    base + now,
                    peer,
                    None,
                    BytesMut::from(&transmit.payload[..]),
                )
                .unwrap();
            collect(events, &mut rtc_out);
        }
        while let Some(transmit) = rtc.poll_transmit() {
            client.handle(now, server_addr(), &transmit.message);
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connected { .. } => connected = true,
                Event::ApplicationData { data, .. } => client_data.push(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        if connected && rtc_out.connected && !sent {
            sent = true;
            client.send(now, server_addr(), b"from cairn").unwrap();
            rtc.write(base + now, peer, b"from rtc-dtls").unwrap();
        }
        if !rtc_out.data.is_empty() && !client_data.is_empty() {
            break;
        }
        let _ = rtc.handle_timeout(peer, base + now);
        client.handle_timeout(now);
    }
    assert!(connected);
    assert_eq!(rtc_out.data, [b"from cairn".to_vec()]);
    assert_eq!(client_data, [b"from rtc-dtls".to_vec()]);
}
