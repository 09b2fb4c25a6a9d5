//! In-process certificate-mode interoperability with the `rtc-dtls` crate (webrtc-rs, sans-IO):
//! TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 with X.509 certificates and mutual authentication, both
//! directions, on a fake clock.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn_dtls::{
    CipherSuite, ClientCertificateConfig, ClientConfig, ClientEndpoint, Credentials, Event,
    PeerVerifier, ServerCertificateConfig, ServerConfig, ServerEndpoint, X509Verifier,
};
use common::certs::{Issued, Leaf, TestCa};
use common::{client_addr, rng, server_addr};
use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, HandshakeConfig};
use rtc_dtls::crypto::{Certificate, CryptoPrivateKey};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_shared::TransportProtocol;

const DEVICE: &str = "urn:imei:350000000000099";

fn rtc_config(client: bool, remote: SocketAddr, issued: &Issued) -> Arc<HandshakeConfig> {
    let provider = rtc_dtls::crypto_provider::default_provider().expect("rtc crypto provider");
    let key = rcgen::KeyPair::from_pem(&issued.key_pem).unwrap();
    let certificate = Certificate {
        certificate: vec![issued.cert_der.clone().into()],
        private_key: CryptoPrivateKey::from_key_pair(&key, provider.crypto()).unwrap(),
    };
    let builder = ConfigBuilder::default()
        .with_certificates(vec![certificate])
        .with_cipher_suites(vec![CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8])
        .with_insecure_skip_verify(true)
        .with_client_auth(ClientAuthType::RequireAnyClientCert)
        .with_crypto_provider(provider);
    Arc::new(
        builder
            .build(client, Some(remote))
            .expect("rtc-dtls config"),
    )
}

fn credentials(issued: &Issued) -> Credentials {
    Credentials::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap()
}

fn verifier(ca: &TestCa) -> PeerVerifier {
    PeerVerifier::x509(X509Verifier::new(std::slice::from_ref(&ca.cert_der)).unwrap())
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
fn rtc_dtls_client_with_certificate_against_our_server() {
    let ca = TestCa::new("Cairn rtc CA");
    let mut server_leaf = Leaf::new("localhost", 2);
    server_leaf.dns_names = vec!["localhost".to_string()];
    let server_issued = ca.issue(server_leaf);
    let device_issued = ca.issue(Leaf::new(DEVICE, 3));
    let base = Instant::now();
    let peer = client_addr(1);
    let config = ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: credentials(&server_issued),
        client_auth: Some(verifier(&ca)),
    });
    let mut server = ServerEndpoint::new(config, rng(70), Duration::ZERO).unwrap();
    let mut rtc = Endpoint::new(peer, TransportProtocol::UDP, None);
    rtc.connect(
        base,
        server_addr(),
        rtc_config(true, server_addr(), &device_issued),
        None,
    )
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
    assert_eq!(server_identity.as_deref(), Some(DEVICE.as_bytes()));
    assert_eq!(server_data, [b"from rtc-dtls".to_vec()]);
    assert_eq!(rtc_out.data, [b"from cairn".to_vec()]);
}

#[test]
fn our_client_with_certificate_against_rtc_dtls_server() {
    let ca = TestCa::new("Cairn rtc CA");
    let mut server_leaf = Leaf::new("localhost", 2);
    server_leaf.dns_names = vec!["localhost".to_string()];
    let server_issued = ca.issue(server_leaf);
    let device_issued = ca.issue(Leaf::new(DEVICE, 3));
    let base = Instant::now();
    let peer = client_addr(1);
    let mut rtc = Endpoint::new(
        server_addr(),
        TransportProtocol::UDP,
        Some(rtc_config(false, peer, &server_issued)),
    );
    let mut config = ClientConfig::with_certificate(ClientCertificateConfig {
        credentials: Some(credentials(&device_issued)),
        server_auth: verifier(&ca),
        server_name: Some("localhost".to_string()),
    });
    config.cipher_suites = vec![CipherSuite::EcdheEcdsaWithAes128Ccm8];
    let mut client = ClientEndpoint::new(config, rng(71), server_addr()).unwrap();
    client.connect(Duration::ZERO).unwrap();
    let mut rtc_out = RtcOutput::default();
    let mut client_data = Vec::new();
    let mut identity = None;
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
                Event::Connected { identity: id, .. } => identity = Some(id),
                Event::ApplicationData { data, .. } => client_data.push(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        if identity.is_some() && rtc_out.connected && !sent {
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
    assert_eq!(identity.as_deref(), Some(&b"localhost"[..]));
    assert_eq!(rtc_out.data, [b"from cairn".to_vec()]);
    assert_eq!(client_data, [b"from rtc-dtls".to_vec()]);
}
