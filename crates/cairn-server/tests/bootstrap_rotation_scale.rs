//! A fleet-wide rotation at scale: N simulated devices (the `cairn-client` device flow, in
//! this process, each with its own sockets and in-memory vault) bootstrap from factory
//! credentials and register, an `--all` rotation gives every one fresh credentials, the report
//! says all of them rotated (none pending, none failed), and a sample of the replaced
//! credentials is refused by the DM server's DTLS handshake while the new ones are accepted.
//!
//! N is `CAIRN_ROTATION_DEVICES`: default 2,000 (13–35 s in a debug build on two cores);
//! 10,000, the full-size check, takes about 20 s in a release build and 2 to 4 minutes in a
//! debug build (docs/benchmarks.md).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::credentials::{CredentialVault, DeviceState, MemoryVault, store_state};
use cairn_client::device::{DeviceSettings, run_device};
use cairn_coap::{Code, Message, OptionNumber};
use cairn_lwm2m::ModelRegistry;
use cairn_server::bootstrap::credentials::generate_psk;
use cairn_server::bootstrap::security::device_management_stores;
use cairn_server::bootstrap::{BootstrapServer, BootstrapServerConfig, BootstrapStores};
use cairn_server::{EmbeddedStore, LwM2mServer, ServerConfig, ServerEvent};
use cairn_store::{
    BootstrapSettings, BootstrapStore, BootstrapTemplate, CredentialKind, DeviceCredentials,
    DmCredentialSource, DmServerConfig, MasterKey, MasterKeySource, PskCredential,
};
use tokio::sync::watch;

fn device_count() -> usize {
    std::env::var("CAIRN_ROTATION_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

/// The loopback address device `n` sends from (250 devices per address).
fn local_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, 1 + (n % 250) as u8))
}

/// Waits until `count` distinct endpoints registered (from `events`, or the registrations
/// when the events lag), or `limit`.
async fn wait_registrations(
    dm: &LwM2mServer,
    events: &mut tokio::sync::broadcast::Receiver<ServerEvent>,
    count: usize,
    limit: Duration,
) -> usize {
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + limit;
    while seen.len() < count {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ServerEvent::Registered(registration))) => {
                seen.insert(registration.endpoint);
            }
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                seen.extend(dm.registrations().into_iter().map(|r| r.endpoint));
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => break,
        }
    }
    seen.len()
}

/// A DTLS-PSK request to the DM server with `credential`: `true` when the handshake passes
/// (any CoAP answer), `false` when it is refused (or never completes).
async fn handshake_passes(dm: SocketAddr, credential: &PskCredential) -> bool {
    let endpoint = cairn_transport::CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        cairn_coap::Config {
            ack_timeout: Duration::from_millis(300),
            max_retransmit: 2,
            ..cairn_coap::Config::default()
        },
        cairn_transport::Security::DtlsClient {
            config: cairn_dtls::ClientConfig::new(
                credential.identity.clone(),
                cairn_dtls::Psk::new(credential.key.expose().to_vec()),
            ),
            server: dm,
        },
        None,
    )
    .await
    .unwrap();
    let mut request = Message::request(Code::GET);
    request.options.push(OptionNumber::URI_PATH, b"rd".to_vec());
    let answer = tokio::time::timeout(Duration::from_secs(10), endpoint.request(dm, request)).await;
    endpoint.shutdown().await;
    matches!(answer, Ok(Ok(_)))
}

// Heavy: thousands of devices and DTLS handshakes (up to 35 s in a debug build with the default
// 2,000 devices); run with `cargo nextest run --run-ignored only`.
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_device_of_a_large_fleet_refuses_the_old_credentials() {
    let count = device_count();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        MasterKeySource::Key(MasterKey::from_bytes(&[9; 32])),
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
            coap_listen: None,
            dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..BootstrapServerConfig::default()
        },
        BootstrapStores::embedded(store.clone()),
    )
    .await
    .unwrap();
    bootstrap.follow(&dm);
    let dm_address = dm.local_addrs().1.unwrap();
    let bootstrap_uri = format!("coaps://{}", bootstrap.local_addrs().1.unwrap());
    store
        .put_bootstrap_template(BootstrapTemplate {
            name: "fleet".into(),
            endpoint_prefix: "dev-".into(),
            settings: BootstrapSettings {
                servers: vec![DmServerConfig {
                    short_server_id: 1,
                    uri: format!("coaps://{dm_address}"),
                    lifetime_s: 3600,
                    binding: "U".into(),
                    credential: DmCredentialSource::Generate(CredentialKind::Psk),
                    oscore: false,
                }],
                acl: Vec::new(),
                replace_bootstrap_credential: true,
                bootstrap_uri: bootstrap_uri.clone(),
                allow_unsecured: false,
            },
        })
        .await
        .unwrap();

    let models = Arc::new(ModelRegistry::with_core_models());
    let endpoints: Vec<String> = (0..count).map(|n| format!("dev-{n:06}")).collect();
    let mut factory = Vec::with_capacity(count);
    let mut vaults = Vec::with_capacity(count);
    for endpoint in &endpoints {
        let credential = generate_psk("factory-").unwrap();
        let vault: Arc<dyn CredentialVault> = Arc::new(MemoryVault::default());
        let state = DeviceState::factory(
            endpoint.clone(),
            bootstrap_uri.clone(),
            credential.identity.clone(),
            credential.key.expose().to_vec(),
        );
        store_state(&*vault, &state, &*models).unwrap();
        factory.push(DeviceCredentials::factory(endpoint.clone(), credential));
        vaults.push(vault);
    }
    store.import_device_credentials(factory).await.unwrap();

    let started = Instant::now();
    let mut events = dm.events();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::with_capacity(count);
    let mut pace = tokio::time::interval(Duration::from_micros(1_000));
    for (n, vault) in vaults.into_iter().enumerate() {
        pace.tick().await;
        let settings = DeviceSettings {
            models: models.clone(),
            local_ip: Some(local_ip(n)),
            coap: cairn_coap::Config {
                ack_timeout: Duration::from_secs(3),
                ..cairn_coap::Config::default()
            },
            request_timeout: Duration::from_secs(30),
            register_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..DeviceSettings::default()
        };
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let _ = run_device(vault, settings, stopped, |_| {}).await;
        }));
    }
    let registered = wait_registrations(&dm, &mut events, count, Duration::from_secs(600)).await;
    assert_eq!(registered, count, "devices registered");
    eprintln!(
        "{count} devices bootstrapped and registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The credentials in use before the rotation (the proofs follow the registrations).
    let mut before = Vec::with_capacity(count);
    let proofs = Instant::now();
    for endpoint in &endpoints {
        loop {
            let device = store.get_device_credentials(endpoint).await.unwrap();
            let dm_credential = device.unwrap().dm.unwrap();
            if dm_credential.proven {
                before.push(dm_credential.current);
                break;
            }
            assert!(
                proofs.elapsed() < Duration::from_secs(60),
                "{endpoint} unproven"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let rotation = Instant::now();
    let report = bootstrap
        .rotate(&dm, &endpoints, Duration::from_secs(600))
        .await;
    let seconds = rotation.elapsed().as_secs_f64();
    eprintln!(
        "rotation of {count} devices: rotated={} pending={} failed={} in {seconds:.1} s",
        report.rotated.len(),
        report.pending.len(),
        report.failed.len()
    );
    assert!(
        report.failed.is_empty(),
        "{:?}",
        &report.failed[..report.failed.len().min(5)]
    );
    assert!(
        report.pending.is_empty(),
        "{:?}",
        &report.pending[..report.pending.len().min(5)]
    );
    assert_eq!(report.rotated.len(), count);
    let rotated: HashSet<&String> = report.rotated.iter().collect();
    assert_eq!(rotated.len(), count, "each device once");

    // A sample: the replaced credential is refused at the handshake, the new one passes.
    let step = (count / 20).max(1);
    for n in (0..count).step_by(step) {
        let endpoint = &endpoints[n];
        let now = store
            .get_device_credentials(endpoint)
            .await
            .unwrap()
            .unwrap();
        let dm_credential = now.dm.unwrap();
        assert!(dm_credential.proven && dm_credential.previous.is_none());
        assert_ne!(dm_credential.current, before[n], "{endpoint} rotated");
        assert!(
            !handshake_passes(dm_address, &before[n]).await,
            "{endpoint}: the replaced credential is refused"
        );
        assert!(
            handshake_passes(dm_address, &dm_credential.current).await,
            "{endpoint}: the new credential is accepted"
        );
    }
    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    bootstrap.shutdown().await;
    dm.shutdown().await;
}
