//! Bootstrap over real sockets on 127.0.0.1: Cairn's device flow (factory credential →
//! Bootstrap-Server → new credentials → device-management registration) against Cairn's
//! Bootstrap-Server and DM server, devices that lose power at every step of the sequence,
//! refused credentials and hostile Bootstrap-Requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::credentials::{CredentialVault, DeviceState, FileVault, load_state, store_state};
use cairn_client::device::{DeviceEvent, DeviceExit, DeviceSettings, PowerCut, run_device};
use cairn_coap::{Code, Message, MessageType, OptionNumber};
use cairn_lwm2m::ModelRegistry;
use cairn_server::bootstrap::security::device_management_stores;
use cairn_server::bootstrap::{
    BootstrapEvent, BootstrapServer, BootstrapServerConfig, BootstrapStores,
};
use cairn_server::{EmbeddedStore, LwM2mServer, PeerIdentity, ServerConfig};
use cairn_store::{
    AclConfig, BootstrapSettings, BootstrapStore, BootstrapTemplate, CredentialKind,
    DeviceBootstrapConfig, DeviceCredentials, DmCredentialSource, DmServerConfig, MasterKey,
    MasterKeySource, PskCredential, SecretBytes, StoreError,
};
use tokio::sync::{broadcast, mpsc, watch};

struct Servers {
    dir: tempfile::TempDir,
    store: EmbeddedStore,
    dm: LwM2mServer,
    bootstrap: BootstrapServer,
    bootstrap_dtls: SocketAddr,
    bootstrap_coap: SocketAddr,
}

async fn start() -> Servers {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        MasterKeySource::Key(MasterKey::from_bytes(&[5; 32])),
    )
    .unwrap();
    let dm = LwM2mServer::start(
        ServerConfig {
            coap_listen: None,
            dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        },
        device_management_stores(store.clone()),
    )
    .await
    .unwrap();
    let bootstrap = BootstrapServer::start(
        BootstrapServerConfig {
            coap_listen: Some("127.0.0.1:0".parse().unwrap()),
            dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
            request_timeout: Duration::from_secs(5),
            attempts: 2,
            ..BootstrapServerConfig::default()
        },
        BootstrapStores::embedded(store.clone()),
    )
    .await
    .unwrap();
    bootstrap.follow(&dm);
    let (bootstrap_coap, bootstrap_dtls) = bootstrap.local_addrs();
    let dm_address = dm.local_addrs().1.unwrap();
    store
        .put_bootstrap_template(BootstrapTemplate {
            name: "devices".into(),
            endpoint_prefix: "dev-".into(),
            settings: BootstrapSettings {
                servers: vec![DmServerConfig {
                    short_server_id: 1,
                    uri: format!("coaps://{dm_address}"),
                    lifetime_s: 300,
                    binding: "U".into(),
                    credential: DmCredentialSource::Generate(CredentialKind::Psk),
                    oscore: true,
                }],
                acl: vec![AclConfig {
                    object_id: 3,
                    instance_id: 0,
                    rights: vec![(1, 0b1_1111)],
                    owner: 1,
                }],
                replace_bootstrap_credential: true,
                bootstrap_uri: format!("coaps://{}", bootstrap_dtls.unwrap()),
                allow_unsecured: false,
            },
        })
        .await
        .unwrap();
    Servers {
        dir,
        store,
        dm,
        bootstrap,
        bootstrap_dtls: bootstrap_dtls.unwrap(),
        bootstrap_coap: bootstrap_coap.unwrap(),
    }
}

fn random_psk(prefix: &str) -> PskCredential {
    cairn_server::bootstrap::credentials::generate_psk(prefix).unwrap()
}

fn models() -> Arc<ModelRegistry> {
    Arc::new(ModelRegistry::with_core_models())
}

/// Provisions a device at the factory: its credential in the server's store, its state in a
/// file vault.
async fn provision(
    servers: &Servers,
    endpoint: &str,
    vault_dir: &std::path::Path,
) -> PskCredential {
    let factory = random_psk("factory-");
    servers
        .store
        .import_device_credentials(vec![DeviceCredentials::factory(endpoint, factory.clone())])
        .await
        .unwrap();
    let vault = FileVault::open(vault_dir).unwrap();
    let state = DeviceState::factory(
        endpoint,
        format!("coaps://{}", servers.bootstrap_dtls),
        factory.identity.clone(),
        factory.key.expose().to_vec(),
    );
    store_state(&vault, &state, &*models()).unwrap();
    factory
}

fn settings(power_cut: Option<PowerCut>) -> DeviceSettings {
    DeviceSettings {
        request_timeout: Duration::from_secs(3),
        bootstrap_timeout: Duration::from_secs(20),
        hold_off: Duration::ZERO,
        max_backoff: Duration::from_millis(500),
        register_attempts: 1,
        register_retry: Duration::from_millis(100),
        power_cut,
        ..DeviceSettings::default()
    }
}

struct Device {
    events: mpsc::UnboundedReceiver<DeviceEvent>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<DeviceExit>,
}

fn spawn_device(vault_dir: &std::path::Path, power_cut: Option<PowerCut>) -> Device {
    let vault: Arc<dyn CredentialVault> = Arc::new(FileVault::open(vault_dir).unwrap());
    let (sender, events) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        run_device(vault, settings(power_cut), stopped, move |event| {
            let _ = sender.send(event.clone());
        })
        .await
        .unwrap()
    });
    Device { events, stop, task }
}

async fn wait_device(device: &mut Device, mut pick: impl FnMut(&DeviceEvent) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = device.events.recv().await.expect("the device runs");
            if pick(&event) {
                return;
            }
        }
    })
    .await
    .expect("the device event arrives");
}

async fn wait_bootstrap(
    events: &mut broadcast::Receiver<BootstrapEvent>,
    mut pick: impl FnMut(&BootstrapEvent) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(event) = events.recv().await {
                if pick(&event) {
                    return;
                }
            }
        }
    })
    .await
    .expect("the bootstrap event arrives");
}

async fn stop(device: Device) {
    let _ = device.stop.send(true);
    let exit = tokio::time::timeout(Duration::from_secs(15), device.task)
        .await
        .expect("the device stops")
        .unwrap();
    assert_eq!(exit, DeviceExit::Shutdown);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_bootstraps_over_dtls_registers_with_new_credentials_and_the_factory_key_is_refused()
 {
    let servers = start().await;
    let mut bootstrap_events = servers.bootstrap.events();
    let vault_dir = tempfile::tempdir().unwrap();
    let factory = provision(&servers, "dev-full", vault_dir.path()).await;

    let mut device = spawn_device(vault_dir.path(), None);
    wait_device(&mut device, |e| matches!(e, DeviceEvent::BootstrapFinished)).await;
    wait_device(&mut device, |e| {
        matches!(e, DeviceEvent::Registered { short_server_id: 1 })
    })
    .await;
    wait_bootstrap(
        &mut bootstrap_events,
        |e| matches!(e, BootstrapEvent::CredentialsProven { endpoint } if endpoint == "dev-full"),
    )
    .await;

    // The device registered with a generated credential, unique to it, that it holds in its
    // vault; its bootstrap credential was replaced as well.
    let state = load_state(&FileVault::open(vault_dir.path()).unwrap(), &*models())
        .unwrap()
        .unwrap();
    let dm_account = state.dm_accounts().remove(0);
    assert!(dm_account.account.identity.starts_with(b"cairn-dm-"));
    assert!(dm_account.account.key.len() >= 16);
    let registration = servers.dm.registration("dev-full").unwrap();
    assert_eq!(
        registration.identity,
        PeerIdentity::Psk(dm_account.account.identity.clone())
    );
    // The OSCORE context and the access control entry were written too.
    let oscore: Vec<_> = state.instances(21).collect();
    assert_eq!(oscore.len(), 1);
    assert!(matches!(
        oscore[0].resources.get(&0).map(|r| &r.value),
        Some(cairn_lwm2m::ResourceValue::Single(cairn_lwm2m::Value::Opaque(secret))) if secret.len() == 32
    ));
    assert_eq!(state.instances(2).count(), 1);
    let bootstrap_account = state.bootstrap_account().unwrap();
    assert_ne!(bootstrap_account.identity, factory.identity);
    assert_ne!(bootstrap_account.key.as_slice(), factory.key.expose());
    let stored = servers
        .store
        .get_device_credentials("dev-full")
        .await
        .unwrap()
        .unwrap();
    assert!(stored.bootstrap_proven && stored.bootstrap_previous.is_none());
    assert_eq!(stored.status.finished, 1);
    assert!(
        servers
            .store
            .bootstrap_psk_blocking(&factory.identity)
            .unwrap()
            .is_none(),
        "the factory identity is no longer accepted"
    );
    stop(device).await;

    // A clone of the factory state is refused by the Bootstrap-Server.
    let clone_dir = tempfile::tempdir().unwrap();
    let clone = DeviceState::factory(
        "dev-full",
        format!("coaps://{}", servers.bootstrap_dtls),
        factory.identity.clone(),
        factory.key.expose().to_vec(),
    );
    store_state(
        &FileVault::open(clone_dir.path()).unwrap(),
        &clone,
        &*models(),
    )
    .unwrap();
    let mut cloned = spawn_device(clone_dir.path(), None);
    wait_device(&mut cloned, |e| {
        matches!(e, DeviceEvent::BootstrapFailed { .. })
    })
    .await;
    stop(cloned).await;

    // No secret of the device is in the server's database file.
    let raw = std::fs::read(
        servers
            .dir
            .path()
            .join(cairn_store::embedded::DATABASE_FILE),
    )
    .unwrap();
    for secret in [
        factory.key.expose(),
        dm_account.account.key.as_slice(),
        bootstrap_account.key.as_slice(),
    ] {
        assert!(!contains(&raw, secret), "a key is in the database file");
    }
    assert!(
        contains(&raw, &dm_account.account.identity),
        "identities are in the clear"
    );
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

/// The requests of the sequence to a LwM2M 1.1 device with one server (with OSCORE) and one
/// ACL entry: Discover, Delete /, Write /0/0, /0/1, /1/1, /21/1, /2/0, Finish.
const SEQUENCE_LENGTH: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_loses_power_at_any_step_comes_back_with_working_credentials() {
    let servers = start().await;
    let mut cuts: Vec<PowerCut> = (1..=SEQUENCE_LENGTH)
        .map(PowerCut::AtBootstrapRequest)
        .collect();
    cuts.extend([PowerCut::AfterFinishCommitted, PowerCut::BeforeRegister]);
    for (number, cut) in cuts.into_iter().enumerate() {
        let endpoint = format!("dev-cut-{number}");
        let vault_dir = tempfile::tempdir().unwrap();
        let factory = provision(&servers, &endpoint, vault_dir.path()).await;
        let mut events = servers.bootstrap.events();

        let device = spawn_device(vault_dir.path(), Some(cut));
        let exit = tokio::time::timeout(Duration::from_secs(30), device.task)
            .await
            .unwrap_or_else(|_| panic!("{cut:?}: the device loses power"))
            .unwrap();
        assert_eq!(exit, DeviceExit::PowerCut, "{cut:?}");
        let before = load_state(&FileVault::open(vault_dir.path()).unwrap(), &*models())
            .unwrap()
            .unwrap();
        let committed = matches!(
            cut,
            PowerCut::AfterFinishCommitted | PowerCut::BeforeRegister
        );
        assert_eq!(
            before.dm_accounts().is_empty(),
            !committed,
            "{cut:?}: the vault holds the old state until Finish"
        );

        // Power comes back: the device starts from what it persisted.
        let mut device = spawn_device(vault_dir.path(), None);
        wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
        wait_bootstrap(&mut events, |e| {
            matches!(e, BootstrapEvent::CredentialsProven { endpoint: proven } if *proven == endpoint)
        })
        .await;
        let state = load_state(&FileVault::open(vault_dir.path()).unwrap(), &*models())
            .unwrap()
            .unwrap();
        let stored = servers
            .store
            .get_device_credentials(&endpoint)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            state.bootstrap_account().unwrap().identity,
            stored.bootstrap.identity,
            "{cut:?}: device and server agree on the bootstrap credential"
        );
        assert_eq!(
            state.dm_accounts()[0].account.identity,
            stored.dm.as_ref().unwrap().current.identity,
            "{cut:?}"
        );
        assert!(
            servers
                .store
                .bootstrap_psk_blocking(&factory.identity)
                .unwrap()
                .is_none(),
            "{cut:?}: the factory credential is retired"
        );
        stop(device).await;
    }
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

async fn exchange(socket: &tokio::net::UdpSocket, to: SocketAddr, message: &Message) -> Message {
    socket.send_to(&message.to_bytes(), to).await.unwrap();
    let mut buffer = vec![0u8; 2048];
    let (length, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    Message::decode(&buffer[..length]).unwrap()
}

fn bootstrap_request(id: u16, queries: &[&str], payload: Vec<u8>) -> Message {
    let mut message = Message::new(MessageType::Confirmable, Code::POST, id);
    message.options.push(OptionNumber::URI_PATH, b"bs".to_vec());
    for query in queries {
        message
            .options
            .push(OptionNumber::URI_QUERY, query.as_bytes().to_vec());
    }
    message.payload = payload;
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bootstrap_requests_get_4xx_and_change_nothing() {
    let servers = start().await;
    let vault_dir = tempfile::tempdir().unwrap();
    provision(&servers, "dev-victim", vault_dir.path()).await;
    let before = servers
        .store
        .get_device_credentials("dev-victim")
        .await
        .unwrap();
    let mut events = servers.bootstrap.events();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = servers.bootstrap_coap;
    let cases: [(Message, Code); 6] = [
        (bootstrap_request(1, &[], Vec::new()), Code::BAD_REQUEST),
        (
            bootstrap_request(2, &["ep="], Vec::new()),
            Code::BAD_REQUEST,
        ),
        (
            bootstrap_request(3, &["ep=nobody-knows-me"], Vec::new()),
            Code::NOT_FOUND,
        ),
        (
            bootstrap_request(4, &["ep=dev-victim"], vec![0x41; 1000]),
            Code::REQUEST_ENTITY_TOO_LARGE,
        ),
        // Known endpoint, but bootstrap without DTLS is not allowed for it.
        (
            bootstrap_request(5, &["ep=dev-victim"], Vec::new()),
            Code::FORBIDDEN,
        ),
        (
            {
                let mut get = Message::new(MessageType::Confirmable, Code::GET, 6);
                get.options.push(OptionNumber::URI_PATH, b"bs".to_vec());
                get
            },
            Code::NOT_FOUND,
        ),
    ];
    for (request, expected) in cases {
        let answer = exchange(&socket, to, &request).await;
        assert_eq!(answer.code, expected, "{:?}", request.uri_path());
        assert!(answer.code.class() == 4);
    }
    // Garbage is ignored; the server still answers afterwards.
    socket.send_to(&[0xff; 40], to).await.unwrap();
    socket.send_to(&[], to).await.unwrap();
    let answer = exchange(&socket, to, &bootstrap_request(7, &[], Vec::new())).await;
    assert_eq!(answer.code, Code::BAD_REQUEST);

    // Over DTLS, the endpoint name must be the one the credential belongs to.
    let factory = load_state(&FileVault::open(vault_dir.path()).unwrap(), &*models())
        .unwrap()
        .unwrap()
        .bootstrap_account()
        .unwrap();
    let endpoint = cairn_transport::CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        cairn_coap::Config::default(),
        cairn_transport::Security::DtlsClient {
            config: cairn_dtls::ClientConfig::new(
                factory.identity.clone(),
                cairn_dtls::Psk::new(factory.key.to_vec()),
            ),
            server: servers.bootstrap_dtls,
        },
        None,
    )
    .await
    .unwrap();
    let mut impostor = Message::request(Code::POST);
    impostor
        .options
        .push(OptionNumber::URI_PATH, b"bs".to_vec());
    impostor
        .options
        .push(OptionNumber::URI_QUERY, b"ep=dev-someone-else".to_vec());
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.request(servers.bootstrap_dtls, impostor),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer.code, Code::FORBIDDEN);
    endpoint.shutdown().await;

    assert_eq!(
        servers
            .store
            .get_device_credentials("dev-victim")
            .await
            .unwrap(),
        before,
        "nothing changed"
    );
    assert_eq!(
        servers
            .store
            .list_device_endpoints(None, 10)
            .await
            .unwrap()
            .items,
        vec!["dev-victim"]
    );
    while let Ok(event) = events.try_recv() {
        assert!(
            matches!(event, BootstrapEvent::Refused { .. }),
            "no sequence started: {event:?}"
        );
    }
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_with_keys_derived_from_identifiers_are_refused() {
    let servers = start().await;
    let config = |endpoint: &str, key: &[u8]| DeviceBootstrapConfig {
        endpoint: endpoint.into(),
        settings: BootstrapSettings {
            servers: vec![DmServerConfig {
                short_server_id: 1,
                uri: "coaps://127.0.0.1:5684".into(),
                lifetime_s: 60,
                binding: "U".into(),
                credential: DmCredentialSource::ExplicitPsk(PskCredential {
                    identity: format!("{endpoint}-id").into_bytes(),
                    key: SecretBytes::new(key.to_vec()),
                }),
                oscore: false,
            }],
            acl: Vec::new(),
            replace_bootstrap_credential: true,
            bootstrap_uri: "coaps://127.0.0.1:5784".into(),
            allow_unsecured: false,
        },
    };
    let refused = |result: Result<(), StoreError>| matches!(result, Err(StoreError::Conflict(_)));
    let store = &servers.store;
    // The key is the endpoint name, or contains it, or is short, or one repeated byte.
    assert!(refused(
        store
            .put_bootstrap_config(config("sensor-00042", b"sensor-00042"))
            .await
    ));
    assert!(refused(
        store
            .put_bootstrap_config(config("sensor-00042", b"secret-sensor-00042-key"))
            .await
    ));
    assert!(refused(
        store
            .put_bootstrap_config(config("sensor-00042", b"0123456789"))
            .await
    ));
    assert!(refused(
        store
            .put_bootstrap_config(config("sensor-00042", &[0x11; 32]))
            .await
    ));
    // A random key is accepted for one device, and refused for a second one.
    let random = random_psk("x");
    store
        .put_bootstrap_config(config("sensor-00042", random.key.expose()))
        .await
        .unwrap();
    assert!(refused(
        store
            .put_bootstrap_config(config("sensor-00043", random.key.expose()))
            .await
    ));
    // A template can only generate keys.
    let mut template_settings = config("t", random_psk("y").key.expose()).settings;
    assert!(refused(
        store
            .put_bootstrap_template(BootstrapTemplate {
                name: "fixed-key".into(),
                endpoint_prefix: "sensor-".into(),
                settings: template_settings.clone(),
            })
            .await
    ));
    template_settings.servers[0].credential = DmCredentialSource::Generate(CredentialKind::Psk);
    store
        .put_bootstrap_template(BootstrapTemplate {
            name: "generated".into(),
            endpoint_prefix: "sensor-".into(),
            settings: template_settings,
        })
        .await
        .unwrap();
    assert!(
        store
            .get_bootstrap_config("sensor-00043")
            .await
            .unwrap()
            .is_none()
    );
    // The factory import refuses a key shared by two devices.
    let shared = random_psk("s");
    let twin = PskCredential {
        identity: b"other-identity".to_vec(),
        key: shared.key.clone(),
    };
    assert!(refused(
        store
            .import_device_credentials(vec![
                DeviceCredentials::factory("sensor-a", shared),
                DeviceCredentials::factory("sensor-b", twin),
            ])
            .await
    ));
    assert!(
        store
            .get_device_credentials("sensor-a")
            .await
            .unwrap()
            .is_none(),
        "all or nothing"
    );
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

fn dm_identity(vault_dir: &std::path::Path) -> Vec<u8> {
    load_state(&FileVault::open(vault_dir).unwrap(), &*models())
        .unwrap()
        .unwrap()
        .dm_accounts()[0]
        .account
        .identity
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_gives_fresh_credentials_and_keeps_the_old_ones_until_the_device_proves_the_new() {
    use cairn_dtls::PskResolver;
    let servers = start().await;
    let resolver =
        cairn_server::bootstrap::security::TransitionalPskResolver(servers.store.clone());
    let vault_dir = tempfile::tempdir().unwrap();
    provision(&servers, "dev-rotate", vault_dir.path()).await;
    let mut device = spawn_device(vault_dir.path(), None);
    wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
    let first = dm_identity(vault_dir.path());
    stop(device).await;

    // The device comes back and registers with its credential; the rotation's bootstrap is cut
    // in the middle of the writes.
    let mut device = spawn_device(vault_dir.path(), Some(PowerCut::AtBootstrapRequest(5)));
    wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
    let report = servers
        .bootstrap
        .rotate(
            &servers.dm,
            &["dev-rotate".to_owned()],
            Duration::from_secs(3),
        )
        .await;
    assert_eq!(report.pending, vec!["dev-rotate"]);
    assert!(report.rotated.is_empty() && report.failed.is_empty());
    let exit = tokio::time::timeout(Duration::from_secs(30), device.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, DeviceExit::PowerCut);
    assert_eq!(
        dm_identity(vault_dir.path()),
        first,
        "the vault kept the old credential"
    );
    let stored = servers
        .store
        .get_device_credentials("dev-rotate")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stored.dm.as_ref().unwrap().current.identity, first);
    assert!(
        resolver.key(&first).is_some(),
        "the old credential is still accepted"
    );

    // Power returns: the device registers with its old credential, which still works.
    let mut device = spawn_device(vault_dir.path(), None);
    wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
    assert_eq!(
        servers.dm.registration("dev-rotate").unwrap().identity,
        PeerIdentity::Psk(first.clone())
    );
    // A second rotation completes: fresh credentials, the old one refused.
    let report = servers
        .bootstrap
        .rotate(
            &servers.dm,
            &["dev-rotate".to_owned(), "dev-unknown".to_owned()],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(report.rotated, vec!["dev-rotate"]);
    assert_eq!(report.failed.len(), 1);
    let second = dm_identity(vault_dir.path());
    assert_ne!(second, first);
    assert_eq!(
        servers.dm.registration("dev-rotate").unwrap().identity,
        PeerIdentity::Psk(second.clone())
    );
    assert!(
        resolver.key(&first).is_none(),
        "the old credential is refused"
    );
    assert!(resolver.key(&second).is_some());
    stop(device).await;
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_refused_by_the_dm_server_bootstraps_again() {
    let servers = start().await;
    let vault_dir = tempfile::tempdir().unwrap();
    provision(&servers, "dev-refused", vault_dir.path()).await;
    let mut device = spawn_device(vault_dir.path(), None);
    wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
    stop(device).await;
    let first = dm_identity(vault_dir.path());

    // The operator revokes the device's DM credential: its DTLS handshake now fails.
    assert!(servers.dm.remove_security("dev-refused").await.unwrap());
    let mut device = spawn_device(vault_dir.path(), None);
    wait_device(&mut device, |e| {
        matches!(e, DeviceEvent::RegistrationFailed { .. })
    })
    .await;
    wait_device(&mut device, |e| matches!(e, DeviceEvent::BootstrapFinished)).await;
    wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
    let second = dm_identity(vault_dir.path());
    assert_ne!(first, second, "fresh credentials after the refusal");
    use cairn_dtls::PskResolver;
    let resolver =
        cairn_server::bootstrap::security::TransitionalPskResolver(servers.store.clone());
    assert!(
        resolver.key(&first).is_none(),
        "the revoked credential stays revoked"
    );
    assert_eq!(
        servers.dm.registration("dev-refused").unwrap().identity,
        PeerIdentity::Psk(second)
    );
    stop(device).await;
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_asked_for_while_the_device_is_away_happens_when_it_registers() {
    let servers = start().await;
    let vault_dir = tempfile::tempdir().unwrap();
    provision(&servers, "dev-away", vault_dir.path()).await;
    let mut device = spawn_device(vault_dir.path(), None);
    wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
    stop(device).await;
    let first = dm_identity(vault_dir.path());
    let report = servers
        .bootstrap
        .rotate(
            &servers.dm,
            &["dev-away".to_owned()],
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(report.pending, vec!["dev-away"]);

    let mut events = servers.bootstrap.events();
    let mut device = spawn_device(vault_dir.path(), None);
    // The status is written before Finished is published; wait for it and for the proof.
    let (mut finished, mut proven) = (false, false);
    wait_bootstrap(&mut events, |e| {
        match e {
            BootstrapEvent::Finished { endpoint } if endpoint == "dev-away" => finished = true,
            BootstrapEvent::CredentialsProven { endpoint } if endpoint == "dev-away" => {
                proven = true
            }
            _ => {}
        }
        finished && proven
    })
    .await;
    let second = dm_identity(vault_dir.path());
    assert_ne!(first, second);
    let stored = servers
        .store
        .get_device_credentials("dev-away")
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.status.rotation_requested);
    assert_eq!(stored.status.finished, 2);
    wait_device(&mut device, |e| matches!(e, DeviceEvent::Registered { .. })).await;
    stop(device).await;
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waits_its_client_hold_off_time_before_bootstrapping() {
    let servers = start().await;
    let vault_dir = tempfile::tempdir().unwrap();
    provision(&servers, "dev-patient", vault_dir.path()).await;
    let vault: Arc<dyn CredentialVault> = Arc::new(FileVault::open(vault_dir.path()).unwrap());
    let (sender, mut events) = mpsc::unbounded_channel();
    let (stop_device, stopped) = watch::channel(false);
    let hold_off = Duration::from_millis(800);
    let started = std::time::Instant::now();
    let task = tokio::spawn(run_device(
        vault,
        DeviceSettings {
            hold_off,
            ..settings(None)
        },
        stopped,
        move |event| {
            let _ = sender.send(event.clone());
        },
    ));
    let requested = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(DeviceEvent::BootstrapRequested { .. }) = events.recv().await {
                return started.elapsed();
            }
        }
    })
    .await
    .unwrap();
    assert!(requested >= hold_off, "bootstrapped after {requested:?}");
    let _ = stop_device.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}

/// A stand-in device at the CoAP level: answers every request of the Bootstrap-Server with
/// success, or (`silent`) never answers; records the method and path of each.
struct Recorder {
    silent: bool,
    seen: std::sync::Mutex<Vec<(Code, String)>>,
}

impl cairn_transport::Handler for Recorder {
    fn handle(&self, request: &cairn_transport::Request) -> cairn_transport::Reply {
        let path = request.message.uri_path();
        self.seen.lock().unwrap().push((request.message.code, path));
        if self.silent {
            return cairn_transport::Reply::Pending(Box::pin(std::future::pending()));
        }
        let mut response = match request.message.code {
            Code::GET => {
                let mut response = Message::response(Code::CONTENT);
                response.payload = b"</>;lwm2m=1.1,</0/0>".to_vec();
                response
            }
            Code::DELETE => Message::response(Code::DELETED),
            _ => Message::response(Code::CHANGED),
        };
        if request.message.code == Code::GET {
            response
                .options
                .push(OptionNumber::CONTENT_FORMAT, vec![40]);
        }
        cairn_transport::Reply::Ready(response)
    }
}

async fn stand_in(
    local: SocketAddr,
    server: SocketAddr,
    factory: &PskCredential,
    recorder: Arc<Recorder>,
) -> cairn_transport::CoapEndpoint {
    cairn_transport::CoapEndpoint::bind_secured(
        local,
        cairn_coap::Config::default(),
        cairn_transport::Security::DtlsClient {
            config: cairn_dtls::ClientConfig::new(
                factory.identity.clone(),
                cairn_dtls::Psk::new(factory.key.expose().to_vec()),
            ),
            server,
        },
        Some(recorder),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_stops_writing_to_an_address_another_device_bootstraps_from() {
    let servers = start().await;
    let mut events = servers.bootstrap.events();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let factory_a = provision(&servers, "dev-a", dir_a.path()).await;
    let factory_b = provision(&servers, "dev-b", dir_b.path()).await;
    let request = |endpoint: &str| {
        let mut message = Message::request(Code::POST);
        message.options.push(OptionNumber::URI_PATH, b"bs".to_vec());
        message.options.push(
            OptionNumber::URI_QUERY,
            format!("ep={endpoint}").into_bytes(),
        );
        message
    };
    // Device A asks, then goes away without answering the sequence's first request.
    let silent = Arc::new(Recorder {
        silent: true,
        seen: Default::default(),
    });
    let a = stand_in(
        "127.0.0.1:0".parse().unwrap(),
        servers.bootstrap_dtls,
        &factory_a,
        silent.clone(),
    )
    .await;
    let address = a.local_addr();
    let answer = a.request(servers.bootstrap_dtls, request("dev-a")).await;
    assert_eq!(answer.unwrap().code, Code::CHANGED);
    tokio::time::timeout(Duration::from_secs(5), async {
        while silent.seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the sequence of A started");
    a.shutdown().await;
    // Device B gets A's address and bootstraps from it with its own credential.
    let recorder = Arc::new(Recorder {
        silent: false,
        seen: Default::default(),
    });
    let b = stand_in(
        address,
        servers.bootstrap_dtls,
        &factory_b,
        recorder.clone(),
    )
    .await;
    let answer = b.request(servers.bootstrap_dtls, request("dev-b")).await;
    assert_eq!(answer.unwrap().code, Code::CHANGED);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await.unwrap() {
                BootstrapEvent::Finished { endpoint } if endpoint == "dev-b" => return,
                _ => {}
            }
        }
    })
    .await
    .expect("B's sequence finishes");
    // Long enough for A's request in flight to be retransmitted (ACK_TIMEOUT 2 s) and for a
    // sequence that went on to write and finish.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let seen = recorder.seen.lock().unwrap().clone();
    let finishes = seen
        .iter()
        .filter(|(code, path)| *code == Code::POST && path == "/bs")
        .count();
    assert_eq!(finishes, 1, "only B's sequence finished at B: {seen:?}");
    let writes = seen.iter().filter(|(code, _)| *code == Code::PUT).count();
    let deletes = seen
        .iter()
        .filter(|(code, _)| *code == Code::DELETE)
        .count();
    assert_eq!(deletes, 1, "{seen:?}");
    assert!(writes >= 2, "{seen:?}");
    b.shutdown().await;
    servers.bootstrap.shutdown().await;
    servers.dm.shutdown().await;
}
