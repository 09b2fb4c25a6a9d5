//! Certificate modes in process (RFC 8422 ECDHE-ECDSA, RFC 7250 raw public keys): X.509
//! server-only and mutual authentication for every ECDHE-ECDSA suite, raw public keys, and
//! hostile peers (expired, not yet valid, wrong usage, revoked, untrusted, wrong name,
//! unknown raw key, oversized chain, missing CertificateVerify, signatures over the wrong
//! transcript, invalid-curve points).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_dtls::codec::Reader;
use cairn_dtls::message::{Fragment, HandshakeType};
use cairn_dtls::record::{ContentType, Record, Records};
use cairn_dtls::{
    AlertDescription, CipherSuite, ClientCertificateConfig, ClientConfig, ClientEndpoint,
    CloseReason, Credentials, Event, PeerVerifier, PrivateKey, RawPublicKeys, RevocationPolicy,
    ServerCertificateConfig, ServerConfig, ServerEndpoint, X509Verifier,
};
use common::certs::{Leaf, TestCa};
use common::{client_addr, rng, server_addr};
use rcgen::ExtendedKeyUsagePurpose;

const SERVER_NAME: &str = "lwm2m.example.net";

struct Pki {
    ca: TestCa,
    server: Credentials,
    device: Credentials,
}

fn credentials(issued: &common::certs::Issued) -> Credentials {
    Credentials::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap()
}

fn pki() -> Pki {
    let ca = TestCa::new("Cairn test CA");
    let mut server_leaf = Leaf::new(SERVER_NAME, 10);
    server_leaf.dns_names = vec![SERVER_NAME.to_string()];
    let server = credentials(&ca.issue(server_leaf));
    let device = credentials(&ca.issue(Leaf::new("urn:imei:350000000000001", 11)));
    Pki { ca, server, device }
}

fn verifier(ca: &TestCa) -> X509Verifier {
    X509Verifier::new(std::slice::from_ref(&ca.cert_der)).unwrap()
}

fn server_config(pki: &Pki, mutual: bool) -> ServerConfig {
    ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: pki.server.clone(),
        client_auth: mutual.then(|| PeerVerifier::x509(verifier(&pki.ca))),
    })
}

fn client_config(pki: &Pki, credentials: Option<Credentials>) -> ClientConfig {
    ClientConfig::with_certificate(ClientCertificateConfig {
        credentials,
        server_auth: PeerVerifier::x509(verifier(&pki.ca)),
        server_name: Some(SERVER_NAME.to_string()),
    })
}

type Rewrite = Box<dyn FnMut(bool, Vec<u8>) -> Vec<u8>>;

/// Runs a handshake between the two endpoints with a fake clock; `rewrite` sees every datagram
/// (`true` for client → server). Returns the server's and the client's events.
fn run(
    server_config: ServerConfig,
    client_config: ClientConfig,
    mut rewrite: Rewrite,
) -> (Vec<Event>, Vec<Event>, ServerEndpoint, ClientEndpoint) {
    let mut server = ServerEndpoint::new(server_config, rng(1), Duration::ZERO).unwrap();
    let mut client = ClientEndpoint::new(client_config, rng(2), server_addr()).unwrap();
    let device: SocketAddr = client_addr(1);
    let mut now = Duration::ZERO;
    let (mut server_events, mut client_events) = (Vec::new(), Vec::new());
    client.connect(now).unwrap();
    for _ in 0..200 {
        let mut moved = false;
        while let Some(transmit) = client.poll_transmit() {
            moved = true;
            server.handle(now, device, &rewrite(true, transmit.payload));
        }
        while let Some(transmit) = server.poll_transmit() {
            moved = true;
            client.handle(now, server_addr(), &rewrite(false, transmit.payload));
        }
        server_events.extend(std::iter::from_fn(|| server.poll_event()));
        client_events.extend(std::iter::from_fn(|| client.poll_event()));
        if !moved {
            match [server.poll_timeout(), client.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
            {
                Some(next) if next < Duration::from_secs(130) => {
                    now = now.max(next);
                    server.handle_timeout(now);
                    client.handle_timeout(now);
                }
                _ => break,
            }
        }
    }
    (server_events, client_events, server, client)
}

fn no_rewrite() -> Rewrite {
    Box::new(|_, datagram| datagram)
}

fn connected_identity(events: &[Event]) -> Option<Vec<u8>> {
    events.iter().find_map(|event| match event {
        Event::Connected { identity, .. } => Some(identity.clone()),
        _ => None,
    })
}

fn local_alert(events: &[Event]) -> Option<AlertDescription> {
    events.iter().find_map(|event| match event {
        Event::Closed {
            reason: CloseReason::LocalAlert(alert),
            ..
        } => Some(*alert),
        _ => None,
    })
}

fn exchange(server: &mut ServerEndpoint, client: &mut ClientEndpoint) {
    client
        .send(Duration::ZERO, server_addr(), b"</3/0>")
        .unwrap();
    let datagram = client.poll_transmit().unwrap().payload;
    server.handle(Duration::ZERO, client_addr(1), &datagram);
    assert_eq!(
        server.poll_event(),
        Some(Event::ApplicationData {
            peer: client_addr(1),
            data: b"</3/0>".to_vec()
        })
    );
}

#[test]
fn x509_server_only_for_every_suite() {
    let pki = pki();
    for suite in CipherSuite::ECDHE_ECDSA {
        let mut client = client_config(&pki, None);
        client.cipher_suites = vec![suite];
        let (server_events, client_events, mut server, mut client) =
            run(server_config(&pki, false), client, no_rewrite());
        assert_eq!(
            connected_identity(&client_events).as_deref(),
            Some(SERVER_NAME.as_bytes()),
            "{suite:?}: {client_events:?} {server_events:?}"
        );
        assert_eq!(connected_identity(&server_events), Some(Vec::new()));
        exchange(&mut server, &mut client);
    }
}

#[test]
fn x509_mutual_authentication_names_the_device() {
    let pki = pki();
    for suite in CipherSuite::ECDHE_ECDSA {
        let mut client = client_config(&pki, Some(pki.device.clone()));
        client.cipher_suites = vec![suite];
        let (server_events, client_events, mut server, mut client) =
            run(server_config(&pki, true), client, no_rewrite());
        assert_eq!(
            connected_identity(&server_events).as_deref(),
            Some(&b"urn:imei:350000000000001"[..]),
            "{suite:?}: {server_events:?} {client_events:?}"
        );
        exchange(&mut server, &mut client);
    }
}

#[test]
fn mutual_server_refuses_a_client_without_certificate() {
    let pki = pki();
    let (server_events, _, _, _) = run(
        server_config(&pki, true),
        client_config(&pki, None),
        no_rewrite(),
    );
    assert_eq!(
        local_alert(&server_events),
        Some(AlertDescription::HandshakeFailure)
    );
}

#[test]
fn x509_session_is_resumed() {
    let pki = pki();
    let mut server =
        ServerEndpoint::new(server_config(&pki, true), rng(1), Duration::ZERO).unwrap();
    let mut client = ClientEndpoint::new(
        client_config(&pki, Some(pki.device.clone())),
        rng(2),
        server_addr(),
    )
    .unwrap();
    let mut resumed = Vec::new();
    for _ in 0..2 {
        client.connect(Duration::ZERO).unwrap();
        for _ in 0..6 {
            while let Some(transmit) = client.poll_transmit() {
                server.handle(Duration::ZERO, client_addr(1), &transmit.payload);
            }
            while let Some(transmit) = server.poll_transmit() {
                client.handle(Duration::ZERO, server_addr(), &transmit.payload);
            }
        }
        while let Some(event) = server.poll_event() {
            if let Event::Connected {
                identity,
                resumed: was,
                ..
            } = event
            {
                assert_eq!(identity, b"urn:imei:350000000000001");
                resumed.push(was);
            }
        }
    }
    assert_eq!(resumed, [false, true]);
}

fn raw_key_setup() -> (PrivateKey, PrivateKey, RawPublicKeys, RawPublicKeys) {
    let mut rng = rng(5);
    let server_key = PrivateKey::generate(&mut *rng);
    let device_key = PrivateKey::generate(&mut *rng);
    let mut devices = RawPublicKeys::new();
    devices.insert(device_key.subject_public_key_info(), b"device-rpk".to_vec());
    let mut servers = RawPublicKeys::new();
    servers.insert(server_key.subject_public_key_info(), b"server-rpk".to_vec());
    (server_key, device_key, devices, servers)
}

fn raw_key_configs(
    server_key: PrivateKey,
    device_key: PrivateKey,
    devices: RawPublicKeys,
    servers: RawPublicKeys,
) -> (ServerConfig, ClientConfig) {
    let server = ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: Credentials::raw_public_key(server_key),
        client_auth: Some(PeerVerifier::raw_public_keys(Arc::new(devices))),
    });
    let client = ClientConfig::with_certificate(ClientCertificateConfig {
        credentials: Some(Credentials::raw_public_key(device_key)),
        server_auth: PeerVerifier::raw_public_keys(Arc::new(servers)),
        server_name: None,
    });
    (server, client)
}

#[test]
fn raw_public_keys_authenticate_both_sides() {
    let (server_key, device_key, devices, servers) = raw_key_setup();
    let (server, client) = raw_key_configs(server_key, device_key, devices, servers);
    let (server_events, client_events, mut server, mut client) = run(server, client, no_rewrite());
    assert_eq!(
        connected_identity(&server_events).as_deref(),
        Some(&b"device-rpk"[..]),
        "{server_events:?} {client_events:?}"
    );
    assert_eq!(
        connected_identity(&client_events).as_deref(),
        Some(&b"server-rpk"[..])
    );
    exchange(&mut server, &mut client);
}

#[test]
fn unknown_raw_public_key_is_refused() {
    let (server_key, _, devices, servers) = raw_key_setup();
    let stranger = PrivateKey::generate(&mut *rng(99));
    let (server, client) = raw_key_configs(server_key, stranger, devices, servers);
    let (server_events, client_events, _, _) = run(server, client, no_rewrite());
    assert_eq!(
        local_alert(&server_events),
        Some(AlertDescription::CertificateUnknown)
    );
    assert!(connected_identity(&client_events).is_none());
}

/// A device certificate the server must refuse, and the alert it must send.
fn refused_device(device: Credentials, ca_for_server: &TestCa) -> Option<AlertDescription> {
    let pki = pki();
    let server = ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: pki.server.clone(),
        client_auth: Some(PeerVerifier::x509(verifier(ca_for_server))),
    });
    let (server_events, _, _, _) = run(server, client_config(&pki, Some(device)), no_rewrite());
    assert!(connected_identity(&server_events).is_none());
    local_alert(&server_events)
}

#[test]
fn hostile_device_certificates_are_refused_with_the_right_alert() {
    let ca = TestCa::new("Cairn test CA");
    let now = time::OffsetDateTime::now_utc();
    let mut expired = Leaf::new("expired", 20);
    expired.not_before = now - time::Duration::days(30);
    expired.not_after = now - time::Duration::days(1);
    assert_eq!(
        refused_device(credentials(&ca.issue(expired)), &ca),
        Some(AlertDescription::CertificateExpired)
    );
    let mut future = Leaf::new("future", 21);
    future.not_before = now + time::Duration::days(1);
    future.not_after = now + time::Duration::days(30);
    assert_eq!(
        refused_device(credentials(&ca.issue(future)), &ca),
        Some(AlertDescription::CertificateExpired)
    );
    let mut server_only = Leaf::new("server-only", 22);
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(
        refused_device(credentials(&ca.issue(server_only)), &ca),
        Some(AlertDescription::UnsupportedCertificate)
    );
    let other_ca = TestCa::new("Somebody else");
    assert_eq!(
        refused_device(credentials(&other_ca.issue(Leaf::new("stranger", 23))), &ca),
        Some(AlertDescription::UnknownCa)
    );
}

#[test]
fn self_signed_device_is_unknown_ca() {
    let ca = TestCa::new("Cairn test CA");
    let device = credentials(&common::certs::self_signed("urn:dev:self"));
    assert_eq!(
        refused_device(device, &ca),
        Some(AlertDescription::UnknownCa)
    );
}

fn server_with_crl(pki: &Pki, crl: Option<Vec<u8>>, policy: RevocationPolicy) -> ServerConfig {
    let mut verifier = verifier(&pki.ca).with_revocation_policy(policy);
    if let Some(crl) = crl {
        verifier.add_crl_der(&crl).unwrap();
    }
    ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: pki.server.clone(),
        client_auth: Some(PeerVerifier::x509(verifier)),
    })
}

#[test]
fn revoked_device_is_refused_and_others_pass() {
    let pki = pki();
    let revoked = pki.ca.issue(Leaf::new("revoked", 30));
    let crl = pki.ca.crl(&[30]);
    let server = server_with_crl(&pki, Some(crl.clone()), RevocationPolicy::HardFail);
    let (server_events, _, _, _) = run(
        server,
        client_config(&pki, Some(credentials(&revoked))),
        no_rewrite(),
    );
    assert_eq!(
        local_alert(&server_events),
        Some(AlertDescription::CertificateRevoked)
    );
    let server = server_with_crl(&pki, Some(crl), RevocationPolicy::HardFail);
    let (server_events, _, _, _) = run(
        server,
        client_config(&pki, Some(pki.device.clone())),
        no_rewrite(),
    );
    assert!(
        connected_identity(&server_events).is_some(),
        "{server_events:?}"
    );
}

#[test]
fn missing_crl_is_hard_fail_by_default_and_soft_fail_on_request() {
    let pki = pki();
    let unrelated = TestCa::new("Unrelated CA").crl(&[]);
    let hard = server_with_crl(&pki, Some(unrelated.clone()), RevocationPolicy::default());
    let (server_events, _, _, _) = run(
        hard,
        client_config(&pki, Some(pki.device.clone())),
        no_rewrite(),
    );
    assert_eq!(
        local_alert(&server_events),
        Some(AlertDescription::CertificateUnknown)
    );
    let soft = server_with_crl(&pki, Some(unrelated), RevocationPolicy::SoftFail);
    let (server_events, _, _, _) = run(
        soft,
        client_config(&pki, Some(pki.device.clone())),
        no_rewrite(),
    );
    assert!(
        connected_identity(&server_events).is_some(),
        "{server_events:?}"
    );
}

#[test]
fn client_refuses_a_server_with_the_wrong_name_or_an_untrusted_issuer() {
    let pki = pki();
    let mut client = client_config(&pki, None);
    if let Some(config) = client.certificate.as_mut() {
        Arc::make_mut(config).server_name = Some("other.example.net".to_string());
    }
    let (_, client_events, _, _) = run(server_config(&pki, false), client, no_rewrite());
    assert_eq!(
        local_alert(&client_events),
        Some(AlertDescription::BadCertificate)
    );
    // A common name that matches does not count when the subject alternative names do not.
    let mut named = Leaf::new("other.example.net", 50);
    named.dns_names = vec![SERVER_NAME.to_string()];
    let server = ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: credentials(&pki.ca.issue(named)),
        client_auth: None,
    });
    let mut client = client_config(&pki, None);
    if let Some(config) = client.certificate.as_mut() {
        Arc::make_mut(config).server_name = Some("other.example.net".to_string());
    }
    let (_, client_events, _, _) = run(server, client, no_rewrite());
    assert_eq!(
        local_alert(&client_events),
        Some(AlertDescription::BadCertificate)
    );
    let mut cn_only = Leaf::new("cn-only.example.net", 51);
    cn_only.dns_names = Vec::new();
    let server = ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: credentials(&pki.ca.issue(cn_only)),
        client_auth: None,
    });
    let mut client = client_config(&pki, None);
    if let Some(config) = client.certificate.as_mut() {
        Arc::make_mut(config).server_name = Some("cn-only.example.net".to_string());
    }
    let (_, client_events, _, _) = run(server, client, no_rewrite());
    assert!(
        connected_identity(&client_events).is_some(),
        "{client_events:?}"
    );
    let other = TestCa::new("Other CA");
    let client = ClientConfig::with_certificate(ClientCertificateConfig {
        credentials: None,
        server_auth: PeerVerifier::x509(verifier(&other)),
        server_name: None,
    });
    let (_, client_events, _, _) = run(server_config(&pki, false), client, no_rewrite());
    assert_eq!(
        local_alert(&client_events),
        Some(AlertDescription::UnknownCa)
    );
}

#[test]
fn oversized_chain_is_refused() {
    let pki = pki();
    let mut device = pki.device.clone();
    let copy = device.chain[0].clone();
    device.chain.extend(std::iter::repeat_n(copy, 8));
    let mut client = client_config(&pki, Some(device));
    client.max_handshake_message = 16_384;
    let mut server = server_config(&pki, true);
    server.max_handshake_message = 16_384;
    let (server_events, _, _, _) = run(server, client, no_rewrite());
    assert_eq!(
        local_alert(&server_events),
        Some(AlertDescription::UnsupportedCertificate)
    );
}

/// The bytes of a record without connection ID.
fn raw_record(record: &Record<'_>) -> Vec<u8> {
    let mut out = vec![record.content_type.to_u8()];
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.epoch.to_be_bytes());
    out.extend_from_slice(&record.sequence.to_be_bytes()[2..]);
    out.extend_from_slice(&(record.fragment.len() as u16).to_be_bytes());
    out.extend_from_slice(record.fragment);
    out
}

/// Applies `edit` to the body of every handshake message of type `msg_type` in an epoch-0
/// datagram, keeping the record and fragment headers consistent (whole messages only).
fn edit_handshake(
    datagram: Vec<u8>,
    msg_type: HandshakeType,
    edit: &mut dyn FnMut(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::new();
    for record in Records::new(&datagram, 0) {
        let mut fragment_bytes = record.fragment.to_vec();
        if record.epoch == 0 && record.content_type == ContentType::Handshake {
            if let Ok(fragment) = Fragment::parse(&mut Reader::new(record.fragment)) {
                if fragment.msg_type == msg_type && fragment.is_complete() {
                    let mut body = fragment.body.to_vec();
                    edit(&mut body);
                    fragment_bytes =
                        cairn_dtls::message::whole_message(msg_type, fragment.message_seq, &body);
                }
            }
        }
        if record.epoch == 0 && fragment_bytes.is_empty() {
            continue;
        }
        if record.epoch == 0 {
            cairn_dtls::record::write_plaintext(
                &mut out,
                record.content_type,
                record.version,
                record.sequence,
                &fragment_bytes,
            );
        } else {
            out.extend_from_slice(&raw_record(&record));
        }
    }
    out
}

#[test]
fn certificate_without_certificate_verify_never_completes() {
    let pki = pki();
    let rewrite: Rewrite = Box::new(|to_server, datagram| {
        if !to_server {
            return datagram;
        }
        let mut out = Vec::new();
        for record in Records::new(&datagram, 0) {
            let is_verify = record.epoch == 0
                && record.content_type == ContentType::Handshake
                && Fragment::parse(&mut Reader::new(record.fragment))
                    .is_ok_and(|fragment| fragment.msg_type == HandshakeType::CertificateVerify);
            if !is_verify {
                out.extend_from_slice(&raw_record(&record));
            }
        }
        out
    });
    let (server_events, client_events, _, _) = run(
        server_config(&pki, true),
        client_config(&pki, Some(pki.device.clone())),
        rewrite,
    );
    assert!(
        connected_identity(&server_events).is_none(),
        "{server_events:?}"
    );
    assert!(connected_identity(&client_events).is_none());
}

#[test]
fn server_key_exchange_signed_over_other_randoms_is_refused() {
    let pki = pki();
    let rewrite: Rewrite = Box::new(|to_server, datagram| {
        if to_server {
            return datagram;
        }
        // Flip a bit of the server random the client sees: the ServerKeyExchange signature
        // covers the real one.
        edit_handshake(datagram, HandshakeType::ServerHello, &mut |body| {
            body[5] ^= 1
        })
    });
    let (_, client_events, _, _) = run(
        server_config(&pki, false),
        client_config(&pki, None),
        rewrite,
    );
    assert_eq!(
        local_alert(&client_events),
        Some(AlertDescription::DecryptError)
    );
}

#[test]
fn certificate_verify_over_another_transcript_is_refused() {
    let pki = pki();
    let other_point = PrivateKey::generate(&mut *rng(77)).public_point();
    let rewrite: Rewrite = Box::new(move |to_server, datagram| {
        if !to_server {
            return datagram;
        }
        // Another valid point in ClientKeyExchange: the CertificateVerify no longer covers the
        // transcript the server sees.
        edit_handshake(datagram, HandshakeType::ClientKeyExchange, &mut |body| {
            body[1..].copy_from_slice(&other_point)
        })
    });
    let (server_events, _, _, _) = run(
        server_config(&pki, true),
        client_config(&pki, Some(pki.device.clone())),
        rewrite,
    );
    assert_eq!(
        local_alert(&server_events),
        Some(AlertDescription::DecryptError)
    );
}

#[test]
fn invalid_curve_point_in_client_key_exchange_is_refused() {
    let pki = pki();
    let rewrite: Rewrite = Box::new(|to_server, datagram| {
        if !to_server {
            return datagram;
        }
        edit_handshake(datagram, HandshakeType::ClientKeyExchange, &mut |body| {
            // (1, 1) is not on secp256r1.
            body[1..].fill(0);
            body[1] = 4;
            body[32] = 1;
            body[64] = 1;
        })
    });
    let (server_events, _, _, _) = run(
        server_config(&pki, false),
        client_config(&pki, None),
        rewrite,
    );
    assert_eq!(
        local_alert(&server_events),
        Some(AlertDescription::IllegalParameter)
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// A mutated or truncated datagram anywhere in a mutual X.509 handshake never panics either
    /// side, and a handshake that still completes names the real device.
    #[test]
    fn mutated_certificate_handshakes_never_panic(
        target in 0usize..12,
        position in proptest::prelude::any::<proptest::sample::Index>(),
        value in proptest::prelude::any::<u8>(),
        truncate in proptest::prelude::any::<bool>(),
    ) {
        let pki = pki();
        let mut count = 0;
        let rewrite: Rewrite = Box::new(move |_, mut datagram| {
            if count == target && !datagram.is_empty() {
                let at = position.index(datagram.len());
                if truncate {
                    datagram.truncate(at);
                } else {
                    datagram[at] ^= value | 1;
                }
            }
            count += 1;
            datagram
        });
        let (server_events, _, _, _) = run(
            server_config(&pki, true),
            client_config(&pki, Some(pki.device.clone())),
            rewrite,
        );
        if let Some(identity) = connected_identity(&server_events) {
            proptest::prop_assert_eq!(identity, b"urn:imei:350000000000001".to_vec());
        }
    }
}

#[test]
fn connection_ids_work_in_certificate_mode() {
    let pki = pki();
    let mut server = server_config(&pki, true);
    server.connection_id = Some(cairn_dtls::CidConfig {
        length: 6,
        node_prefix: vec![1],
    });
    let mut client = client_config(&pki, Some(pki.device.clone()));
    client.connection_id = Some(Vec::new());
    let (server_events, _, mut server, mut client) = run(server, client, no_rewrite());
    assert!(connected_identity(&server_events).is_some());
    let info = server.session(client_addr(1)).unwrap();
    assert_eq!(info.connection_id.len(), 6);
    exchange(&mut server, &mut client);
}

/// Runs a server-only handshake where the client verifies with an LwM2M Certificate Usage.
fn lwm2m_usage_connects(
    pki: &Pki,
    usage: cairn_dtls::CertificateUsage,
    given: &[u8],
    trust_store: &[Vec<u8>],
) -> Result<(), Option<AlertDescription>> {
    let verifier = X509Verifier::for_lwm2m_server(usage, given.to_vec(), trust_store).unwrap();
    let client = ClientConfig::with_certificate(ClientCertificateConfig {
        credentials: None,
        server_auth: PeerVerifier::x509(verifier),
        server_name: None,
    });
    let (_, client_events, _, _) = run(server_config(pki, false), client, no_rewrite());
    match connected_identity(&client_events) {
        Some(_) => Ok(()),
        None => Err(local_alert(&client_events)),
    }
}

#[test]
fn lwm2m_certificate_usages() {
    use cairn_dtls::CertificateUsage as Usage;
    let pki = pki();
    let server_cert = pki.server.chain[0].clone();
    let other_cert = pki.ca.issue(Leaf::new("other", 40)).cert_der;
    let other_ca = TestCa::new("Other CA");
    let store = std::slice::from_ref(&pki.ca.cert_der);
    let unknown_ca = Err(Some(AlertDescription::UnknownCa));

    assert_eq!(
        lwm2m_usage_connects(&pki, Usage::DomainIssuedCertificate, &server_cert, &[]),
        Ok(())
    );
    assert_eq!(
        lwm2m_usage_connects(&pki, Usage::DomainIssuedCertificate, &other_cert, &[]),
        unknown_ca
    );

    assert_eq!(
        lwm2m_usage_connects(&pki, Usage::TrustAnchorAssertion, &pki.ca.cert_der, &[]),
        Ok(())
    );
    assert_eq!(
        lwm2m_usage_connects(&pki, Usage::TrustAnchorAssertion, &other_ca.cert_der, store),
        unknown_ca
    );

    assert_eq!(
        lwm2m_usage_connects(
            &pki,
            Usage::ServiceCertificateConstraint,
            &server_cert,
            store
        ),
        Ok(())
    );
    assert_eq!(
        lwm2m_usage_connects(
            &pki,
            Usage::ServiceCertificateConstraint,
            &other_cert,
            store
        ),
        unknown_ca
    );

    assert_eq!(
        lwm2m_usage_connects(&pki, Usage::CaConstraint, &pki.ca.cert_der, &[]),
        Ok(())
    );
    assert_eq!(
        lwm2m_usage_connects(&pki, Usage::CaConstraint, &other_ca.cert_der, store),
        unknown_ca
    );
}

/// A validated chain is remembered, but never past the end of its validity, and a chain
/// with one byte changed is validated anew.
#[test]
fn remembered_chains_still_expire_and_tampered_chains_are_checked() {
    use cairn_dtls::pki::PeerRole;
    let ca = TestCa::new("Cairn cache CA");
    let now = time::OffsetDateTime::now_utc();
    let mut leaf = Leaf::new("urn:dev:cache", 40);
    leaf.not_after = now + time::Duration::hours(1);
    let issued = ca.issue(leaf);
    let chain = vec![issued.cert_der.clone()];
    let unix_now = now.unix_timestamp() as u64;
    for capacity in [0, 16] {
        let mut verifier = verifier(&ca).with_chain_cache(capacity).at_time(unix_now);
        for _ in 0..2 {
            let peer = verifier.verify(&chain, PeerRole::Client).unwrap();
            assert_eq!(peer.identity, b"urn:dev:cache");
        }
        let mut tampered = chain.clone();
        let last = tampered[0].len() - 1;
        tampered[0][last] ^= 1;
        assert!(verifier.verify(&tampered, PeerRole::Client).is_err());
        // Two hours later the certificate has expired, remembered or not.
        verifier = verifier.at_time(unix_now + 7200);
        assert_eq!(
            verifier.verify(&chain, PeerRole::Client),
            Err(cairn_dtls::CertificateError::Expired)
        );
    }
}

/// Adding a CRL forgets what was validated before it.
#[test]
fn a_crl_added_later_refuses_a_remembered_chain() {
    use cairn_dtls::pki::PeerRole;
    let ca = TestCa::new("Cairn cache CA");
    let issued = ca.issue(Leaf::new("urn:dev:revoked-later", 41));
    let chain = vec![issued.cert_der.clone()];
    let mut verifier = verifier(&ca);
    verifier.verify(&chain, PeerRole::Client).unwrap();
    verifier.add_crl_der(&ca.crl(&[41])).unwrap();
    assert_eq!(
        verifier.verify(&chain, PeerRole::Client),
        Err(cairn_dtls::CertificateError::Revoked)
    );
}
