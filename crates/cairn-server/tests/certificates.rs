//! Cairn's LwM2M client library against Cairn's server in the certificate modes, over real
//! sockets on 127.0.0.1 (ECDHE-ECDSA on P-256): a device registers with an X.509
//! certificate and another with a raw public key (RFC 7250); a certificate whose common name
//! is not the endpoint name, a raw public key registered for no endpoint or for another one,
//! and a revoked certificate are refused. PSK devices still register on the same socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::objects::{
    Connectivity, DeviceInfo, DeviceObject, SecurityMode as ClientSecurityMode, SecurityObject,
    ServerInstance, standard_tree, system_time,
};
use cairn_client::{
    Client, ClientCore, Event, RegistrationEvent, RegistrationSettings, RetryPolicy,
    ServerConnection,
};
use cairn_coap::Config;
use cairn_dtls::{
    ClientCertificateConfig, Credentials, PeerVerifier, PrivateKey, Psk, RawPublicKeys,
    X509Verifier,
};
use cairn_lwm2m::ModelRegistry;
use cairn_server::{
    DeviceCertificates, EmbeddedStore, LwM2mServer, SecurityInfo, SecurityMode, SecurityStore,
    ServerConfig, ServerEvent, Stores,
};
use cairn_store::{MasterKey, MasterKeySource, PeerIdentity, SecretBytes, X509Expectation};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const SERVER_NAME: &str = "lwm2m.test";
const REVOKED_SERIAL: u64 = 66;

/// A CA that issues the server's and the devices' certificates.
struct Pki {
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// An issued certificate with its key, as PEM.
struct Issued {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Cairn device CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, common_name: &str, serial: u64) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dns = if common_name == SERVER_NAME {
            vec![SERVER_NAME.to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(dns).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn crl(&self) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(REVOKED_SERIAL),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .der()
        .to_vec()
    }
}

fn credentials(issued: &Issued) -> Credentials {
    Credentials::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap()
}

/// The test world: a server with X.509, RPK and PSK devices in its store.
struct World {
    _dir: tempfile::TempDir,
    server: LwM2mServer,
    address: SocketAddr,
    pki: Pki,
    server_key: PrivateKey,
    rpk_device: PrivateKey,
}

async fn put(store: &EmbeddedStore, endpoint: &str, mode: SecurityMode) {
    store
        .put_security_info(SecurityInfo {
            endpoint: endpoint.into(),
            mode,
            created_at_ms: 0,
        })
        .await
        .unwrap();
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        MasterKeySource::Key(MasterKey::from_bytes(&[5; 32])),
    )
    .unwrap();
    let mut rng = rand::rng();
    let rpk_device = PrivateKey::generate(&mut rng);
    for endpoint in ["x509-dev", "revoked-dev"] {
        let expectation = X509Expectation::CommonName(endpoint.into());
        put(&store, endpoint, SecurityMode::X509(expectation)).await;
    }
    let public_key_der = rpk_device.subject_public_key_info();
    put(&store, "rpk-dev", SecurityMode::Rpk { public_key_der }).await;
    put(
        &store,
        "psk-dev",
        SecurityMode::Psk {
            identity: b"psk-identity".to_vec(),
            key: SecretBytes::new(b"psk-device-key-0".to_vec()),
        },
    )
    .await;
    let pki = Pki::new();
    let server_cert = pki.issue(SERVER_NAME, 2);
    let server_key = credentials(&server_cert).key;
    let config = ServerConfig {
        coap_listen: None,
        dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
        certificates: Some(DeviceCertificates {
            credentials: credentials(&server_cert),
            trust_anchors: vec![pki.ca_der.clone()],
            crls: vec![pki.crl()],
        }),
        ..ServerConfig::default()
    };
    let server = LwM2mServer::start(config, Stores::embedded(store))
        .await
        .unwrap();
    let address = server.local_addrs().1.unwrap();
    World {
        _dir: dir,
        server,
        address,
        pki,
        server_key,
        rpk_device,
    }
}

impl World {
    fn x509_device(&self, issued: &Issued) -> ClientCertificateConfig {
        ClientCertificateConfig {
            credentials: Some(credentials(issued)),
            server_auth: PeerVerifier::x509(
                X509Verifier::new(std::slice::from_ref(&self.pki.ca_der)).unwrap(),
            ),
            server_name: Some(SERVER_NAME.into()),
        }
    }

    fn rpk_device(&self, key: PrivateKey) -> ClientCertificateConfig {
        let mut server_keys = RawPublicKeys::new();
        server_keys.insert(
            self.server_key.subject_public_key_info(),
            b"server".to_vec(),
        );
        ClientCertificateConfig {
            credentials: Some(Credentials::raw_public_key(key)),
            server_auth: PeerVerifier::raw_public_keys(Arc::new(server_keys)),
            server_name: None,
        }
    }
}

/// How a client's registration ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Registered,
    Failed(String),
}

/// Runs a client for `endpoint` until its first registration succeeds or fails.
async fn register(
    address: SocketAddr,
    endpoint: &str,
    certificate: Option<ClientCertificateConfig>,
    psk: Option<(Vec<u8>, Psk)>,
) -> Outcome {
    let mut security = SecurityObject::new();
    let mode = if certificate.is_some() {
        ClientSecurityMode::Certificate
    } else {
        ClientSecurityMode::PreSharedKey
    };
    security.add_server(
        format!("coaps://{address}"),
        mode,
        Vec::new(),
        Vec::new(),
        1,
    );
    let instance = ServerInstance {
        instance: 0,
        short_server_id: 1,
        lifetime: 300,
        binding: "U".into(),
        default_pmin: None,
        default_pmax: None,
    };
    let tree = standard_tree(
        Arc::new(ModelRegistry::with_core_models()),
        cairn_lwm2m::Version::V1_1,
        security,
        &[instance],
        DeviceObject::new(DeviceInfo::default(), system_time),
        &Connectivity::default(),
    );
    let mut settings = RegistrationSettings::new(endpoint);
    settings.retry = RetryPolicy {
        initial: Duration::from_secs(30),
        max: Duration::from_secs(30),
        max_attempts: Some(1),
    };
    let connection = ServerConnection {
        short_server_id: 1,
        address,
        local_ip: None,
        psk,
        certificate,
        settings,
        coap: Config::default(),
    };
    let client = Client::bind(ClientCore::new(tree), vec![connection])
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (outcomes, mut outcome) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = client
            .run(shutdown, move |event| {
                if let Event::Registration { event, .. } = event {
                    let _ = match event {
                        RegistrationEvent::Registered { .. } => outcomes.send(Outcome::Registered),
                        RegistrationEvent::RequestFailed { reason, .. } => {
                            outcomes.send(Outcome::Failed(reason.clone()))
                        }
                        _ => Ok(()),
                    };
                }
            })
            .await;
    });
    let result = timeout(Duration::from_secs(20), outcome.recv())
        .await
        .expect("the registration ends within 20 s")
        .expect("an outcome");
    let _ = stop.send(());
    let _ = timeout(Duration::from_secs(15), task).await;
    result
}

#[tokio::test]
async fn x509_and_rpk_devices_register_beside_psk() {
    let world = world().await;
    let mut events = world.server.events();
    let issued = world.pki.issue("x509-dev", 10);
    // The session identity carries the certificate's SHA-256 fingerprint.
    let x509_fingerprint: [u8; 32] = {
        use sha2::Digest;
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        sha2::Sha256::digest(&pem.contents).into()
    };
    let outcome = register(
        world.address,
        "x509-dev",
        Some(world.x509_device(&issued)),
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Registered);

    let key = world.rpk_device.clone();
    let outcome = register(world.address, "rpk-dev", Some(world.rpk_device(key)), None).await;
    assert_eq!(outcome, Outcome::Registered);

    let psk = (
        b"psk-identity".to_vec(),
        Psk::new(b"psk-device-key-0".to_vec()),
    );
    let outcome = register(world.address, "psk-dev", None, Some(psk)).await;
    assert_eq!(outcome, Outcome::Registered);

    // Each client de-registered when it stopped; the events keep the identities.
    let mut registered = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ServerEvent::Registered(registration) = event {
            registered.push((registration.endpoint, registration.identity));
        }
    }
    assert_eq!(
        registered,
        [
            (
                "x509-dev".into(),
                PeerIdentity::X509Certificate {
                    common_name: "x509-dev".into(),
                    fingerprint: x509_fingerprint,
                }
            ),
            (
                "rpk-dev".into(),
                PeerIdentity::Rpk(world.rpk_device.subject_public_key_info())
            ),
            (
                "psk-dev".into(),
                PeerIdentity::Psk(b"psk-identity".to_vec())
            ),
        ]
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let world = world().await;
    // A valid certificate from the CA, but its common name is not the endpoint name.
    let issued = world.pki.issue("mallory", 11);
    let outcome = register(
        world.address,
        "x509-dev",
        Some(world.x509_device(&issued)),
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Failed("4.03".into()));
    // Nor may it register under its own name: no security information says so.
    let outcome = register(
        world.address,
        "mallory",
        Some(world.x509_device(&issued)),
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Failed("4.03".into()));
    assert!(world.server.registrations().is_empty());
}

#[tokio::test]
async fn unknown_or_foreign_raw_public_keys_are_refused() {
    let world = world().await;
    let stranger = PrivateKey::generate(&mut rand::rng());
    let outcome = register(
        world.address,
        "rpk-dev",
        Some(world.rpk_device(stranger.clone())),
        None,
    )
    .await;
    // A key no endpoint holds fails the handshake itself: no session, no registration.
    let Outcome::Failed(reason) = outcome else {
        panic!("an unknown raw public key registered");
    };
    assert_ne!(
        reason, "4.03",
        "refused by the handshake, not by registration"
    );
    // The registered key may not take another endpoint's name.
    let key = world.rpk_device.clone();
    let outcome = register(world.address, "x509-dev", Some(world.rpk_device(key)), None).await;
    assert_eq!(outcome, Outcome::Failed("4.03".into()));
    assert!(world.server.registrations().is_empty());
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_in_the_handshake() {
    let world = world().await;
    let issued = world.pki.issue("revoked-dev", REVOKED_SERIAL);
    let outcome = register(
        world.address,
        "revoked-dev",
        Some(world.x509_device(&issued)),
        None,
    )
    .await;
    let Outcome::Failed(reason) = outcome else {
        panic!("a revoked certificate registered");
    };
    assert_ne!(
        reason, "4.03",
        "refused by the handshake, not by registration"
    );
    assert!(world.server.registration("revoked-dev").is_none());
    // The same name with a certificate that is not revoked registers.
    let issued = world.pki.issue("revoked-dev", 67);
    let outcome = register(
        world.address,
        "revoked-dev",
        Some(world.x509_device(&issued)),
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Registered);
}
