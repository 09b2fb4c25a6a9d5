//! Firmware over the air between Cairn's client library and Cairn's server over DTLS-PSK on
//! 127.0.0.1. Each device runs the Firmware Update object (/5) over `cairn-firmware` on a
//! simulated flash: pull from the server's `/fw/{id}` (Block2, block by block to flash),
//! push (a Write of /5/0/0 in Block1 blocks), the /5 state machine, resumed downloads and
//! refused packages.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::firmware_agent::{FirmwareAgent, PullOptions};
use cairn_client::objects::{
    Connectivity, DeviceInfo, DeviceObject, FirmwareObject, SecurityMode as ClientSecurityMode,
    SecurityObject, ServerInstance, UpdateOutcome, standard_tree, system_time,
};
use cairn_client::{Client, ClientCore, ClientHandle, RegistrationSettings, ServerConnection};
use cairn_coap::Config;
use cairn_dtls::Psk;
use cairn_firmware::package::encode_package;
use cairn_firmware::sim::{SimFlash, SimPower};
use cairn_firmware::{
    Algorithm, DeviceIdentity, Geometry, Layout, Manifest, Payload, RecordStore, SigningKey,
    Strategy, TrustedKeys, sha256, sign_manifest,
};
use cairn_lwm2m::node::{LwM2mNode, LwM2mResource};
use cairn_lwm2m::{LwM2mPath, ModelRegistry, ResponseCode, Value, WriteMode};
use cairn_server::campaign::{CampaignSpec, CampaignState};
use cairn_server::{
    EmbeddedStore, LwM2mServer, SecurityInfo, SecurityMode, ServerConfig, ServerError, Stores,
};
use cairn_store::{MasterKey, MasterKeySource, SecretBytes};
use tokio::sync::oneshot;

type Firmware = FirmwareObject<SimFlash, RecordStore<SimFlash>>;

const SECTOR: usize = 1024;
const LAYOUT: Layout = Layout {
    slot_sectors: 160,
    staging_sectors: 4,
    strategy: Strategy::AB,
};

fn vendor_key() -> SigningKey {
    SigningKey::from_random(Algorithm::Ed25519, &[21; 32]).unwrap()
}

fn identity(class: &str) -> DeviceIdentity {
    DeviceIdentity {
        vendor: "acme".into(),
        class: class.into(),
        hardware_version: 1,
        bootloader_version: 1,
    }
}

/// An image of `len` bytes that differs with `seed`.
fn image(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn manifest(image: &[u8], class: &str, sequence: u64) -> Manifest {
    Manifest {
        vendor: "acme".into(),
        class: class.into(),
        sequence,
        image_digest: sha256(image),
        image_size: image.len() as u64,
        payload: Payload::Full,
        expires_at: None,
        min_hardware_version: None,
        min_bootloader_version: None,
    }
}

/// A package of `image` as version `sequence` for `class`, signed by `key`.
fn package(image: &[u8], class: &str, sequence: u64, key: &SigningKey) -> Vec<u8> {
    encode_package(
        &sign_manifest(&manifest(image, class, sequence), key),
        image,
    )
}

fn key_of(n: usize) -> Vec<u8> {
    format!("ota-key-{n:04}").into_bytes()
}

async fn start_server(devices: usize) -> (tempfile::TempDir, LwM2mServer) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        MasterKeySource::Key(MasterKey::from_bytes(&[5; 32])),
    )
    .unwrap();
    let infos: Vec<SecurityInfo> = (0..devices)
        .map(|n| SecurityInfo {
            endpoint: format!("ota-{n}"),
            mode: SecurityMode::Psk {
                identity: format!("ota-id-{n}").into_bytes(),
                key: SecretBytes::new(key_of(n)),
            },
            created_at_ms: 0,
        })
        .collect();
    store.import_security_infos_blocking(&infos).unwrap();
    let config = ServerConfig {
        coap_listen: None,
        dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    let server = LwM2mServer::start(config, Stores::embedded(store))
        .await
        .unwrap();
    (dir, server)
}

/// One device: a client with a /5 object over its own simulated flash, provisioned with
/// version 1 of the `acme/meter` image.
struct OtaDevice {
    handle: ClientHandle,
    flash: SimFlash,
    power: SimPower,
    received: Arc<AtomicU64>,
    outcomes: Arc<Mutex<Vec<UpdateOutcome>>>,
    _stop: oneshot::Sender<()>,
}

impl OtaDevice {
    fn with_firmware<T>(&self, f: impl FnOnce(&mut Firmware) -> T) -> T {
        self.handle.with_core(|core| {
            f(core
                .objects_mut()
                .object_mut::<Firmware>(5)
                .expect("the device has /5"))
        })
    }

    fn state_and_result(&self) -> (u8, u8) {
        self.with_firmware(|fw| (fw.state() as u8, fw.result().code()))
    }
}

const V1_LEN: usize = 30_000;

async fn start_device(
    server: SocketAddr,
    n: usize,
    class: &str,
    options: PullOptions,
) -> OtaDevice {
    let key = vendor_key();
    let power = SimPower::new(n as u64);
    let flash = SimFlash::new(
        Geometry {
            sector_size: SECTOR,
            sector_count: LAYOUT.sectors(),
        },
        power.clone(),
    );
    let meta = SimFlash::new(
        Geometry {
            sector_size: SECTOR,
            sector_count: 4,
        },
        power.clone(),
    );
    let keys = TrustedKeys::new().with(key.public_key());
    {
        let mut device = cairn_firmware::Device::open(
            flash.clone(),
            RecordStore::new(meta.clone()),
            identity(class),
            keys.clone(),
            LAYOUT,
        )
        .unwrap();
        let v1 = image(V1_LEN, 1);
        device
            .provision(&v1, &sign_manifest(&manifest(&v1, class, 1), &key))
            .unwrap();
    }
    let mut firmware = Firmware::open(
        flash.clone(),
        RecordStore::new(meta.clone()),
        identity(class),
        keys,
        LAYOUT,
    )
    .unwrap();
    // A restart after a power cut brings the power back.
    let (reopen_flash, reopen_power) = (flash.clone(), power.clone());
    firmware.set_reopen(move || {
        reopen_power.restore();
        (reopen_flash.clone(), RecordStore::new(meta.clone()))
    });

    let models = Arc::new(ModelRegistry::with_core_models());
    let mut security = SecurityObject::new();
    security.add_server(
        format!("coaps://{server}"),
        ClientSecurityMode::PreSharedKey,
        format!("ota-id-{n}"),
        key_of(n),
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
    let info = DeviceInfo {
        firmware_version: "1".into(),
        ..DeviceInfo::default()
    };
    let mut tree = standard_tree(
        models,
        cairn_lwm2m::Version::V1_1,
        security,
        &[instance],
        DeviceObject::new(info, system_time),
        &Connectivity::default(),
    );
    tree.add(firmware);
    let connection = ServerConnection {
        short_server_id: 1,
        address: server,
        local_ip: None,
        psk: Some((format!("ota-id-{n}").into_bytes(), Psk::new(key_of(n)))),
        certificate: None,
        settings: RegistrationSettings::new(format!("ota-{n}")),
        coap: Config::default(),
    };
    let client = Client::bind(ClientCore::new(tree), vec![connection])
        .await
        .unwrap();
    let handle = client.handle();
    let received = options.bytes_received.clone();
    let agent =
        FirmwareAgent::<SimFlash, RecordStore<SimFlash>>::attach(handle.clone(), options).unwrap();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let seen = outcomes.clone();
    tokio::spawn(agent.run(move |outcome| seen.lock().unwrap().push(outcome.clone())));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = client.run(shutdown, |_| {}).await;
    });
    OtaDevice {
        handle,
        flash,
        power,
        received,
        outcomes,
        _stop: stop,
    }
}

async fn wait_registered(server: &LwM2mServer, endpoint: &str) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while server.registration(endpoint).is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the device registers");
}

/// Waits until the device's (State, Update Result) is `expected`.
async fn wait_for(device: &OtaDevice, expected: (u8, u8)) {
    let reached = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if device.state_and_result() == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "expected {expected:?}, the device is at {:?}",
        device.state_and_result()
    );
}

fn path(text: &str) -> LwM2mPath {
    text.parse().unwrap()
}

async fn read_integer(server: &LwM2mServer, endpoint: &str, at: &str) -> i64 {
    match server.read(endpoint, path(at), None).await.unwrap() {
        LwM2mNode::Resource(LwM2mResource {
            value: cairn_lwm2m::ResourceValue::Single(value),
            ..
        }) => match value {
            Value::Integer(v) => v,
            Value::UnsignedInteger(v) => v as i64,
            other => panic!("{at} is {other:?}"),
        },
        other => panic!("{at} is {other:?}"),
    }
}

async fn read_string(server: &LwM2mServer, endpoint: &str, at: &str) -> String {
    match server.read(endpoint, path(at), None).await.unwrap() {
        LwM2mNode::Resource(LwM2mResource {
            value: cairn_lwm2m::ResourceValue::Single(Value::String(s)),
            ..
        }) => s,
        other => panic!("{at} is {other:?}"),
    }
}

async fn write_uri(server: &LwM2mServer, endpoint: &str, uri: &str) -> Result<(), ServerError> {
    server
        .write(
            endpoint,
            path("/5/0/1"),
            WriteMode::Replace,
            LwM2mNode::Resource(LwM2mResource::single(1, Value::String(uri.into()))),
            None,
        )
        .await
}

async fn push(server: &LwM2mServer, endpoint: &str, bytes: Vec<u8>) -> Result<(), ServerError> {
    server
        .write(
            endpoint,
            path("/5/0/0"),
            WriteMode::Replace,
            LwM2mNode::Resource(LwM2mResource::single(0, Value::Opaque(bytes))),
            None,
        )
        .await
}

async fn next_integer(notifications: &mut cairn_server::Notifications) -> i64 {
    let node = tokio::time::timeout(Duration::from_secs(20), notifications.next())
        .await
        .expect("a notification arrives")
        .expect("the observation lasts");
    match node {
        LwM2mNode::Resource(LwM2mResource {
            value: cairn_lwm2m::ResourceValue::Single(Value::Integer(v)),
            ..
        }) => v,
        other => panic!("notified {other:?}"),
    }
}

fn refused_with(result: Result<(), ServerError>, code: ResponseCode) {
    match result {
        Err(ServerError::Device { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn package_uri(server: SocketAddr, id: &str) -> String {
    format!("coaps://{server}/fw/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_updates_client_devices_by_pull() {
    let (_dir, server) = start_server(3).await;
    let address = server.local_addrs().1.unwrap();
    let mut devices = Vec::new();
    for n in 0..3 {
        devices.push(start_device(address, n, "meter", PullOptions::default()).await);
        wait_registered(&server, &format!("ota-{n}")).await;
    }
    let v2 = image(40_000, 2);
    let stored = server
        .add_firmware("acme-meter", "2", package(&v2, "meter", 2, &vendor_key()))
        .await
        .unwrap();
    let spec = CampaignSpec {
        waves: vec![34, 100],
        ..CampaignSpec::new(
            "pull",
            &stored.id,
            (0..3).map(|n| format!("ota-{n}")).collect(),
        )
    };
    let id = server.start_campaign(spec).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let status = server.campaign(&id).await.unwrap();
            if status.is_finished() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the campaign finishes");
    assert_eq!(status.state, CampaignState::Completed, "{status:?}");
    assert_eq!(status.counts().updated, 3);
    for (n, device) in devices.iter().enumerate() {
        let endpoint = format!("ota-{n}");
        assert_eq!(device.state_and_result(), (0, 1));
        assert_eq!(
            device.outcomes.lock().unwrap().as_slice(),
            [UpdateOutcome::Updated {
                version: "2".into()
            }]
        );
        // The new version runs from slot B and is what the device reports.
        assert_eq!(
            device.with_firmware(|fw| fw.firmware_version()),
            Some("2".into())
        );
        assert_eq!(read_string(&server, &endpoint, "/3/0/3").await, "2");
        assert_eq!(read_integer(&server, &endpoint, "/5/0/5").await, 1);
        let contents = device.flash.contents();
        let slot_b = LAYOUT.slot_sectors * SECTOR;
        assert_eq!(&contents[slot_b..slot_b + v2.len()], &v2[..]);
        // Block by block: the bytes received are the package, once.
        let size = (encode_package(&[], &[]).len() + v2.len()) as u64;
        assert!(device.received.load(Ordering::Relaxed) < size + 1024);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_package_updates_a_device() {
    let (_dir, server) = start_server(1).await;
    let address = server.local_addrs().1.unwrap();
    let device = start_device(address, 0, "meter", PullOptions::default()).await;
    wait_registered(&server, "ota-0").await;
    let (_, mut states) = server.observe("ota-0", path("/5/0/3"), None).await.unwrap();
    let (_, mut results) = server.observe("ota-0", path("/5/0/5"), None).await.unwrap();
    let v2 = image(40_000, 2);
    // 40 kB: the server sends it in Block1 blocks, the device's endpoint reassembles it.
    push(&server, "ota-0", package(&v2, "meter", 2, &vendor_key()))
        .await
        .unwrap();
    // Observers hear of the new State.
    assert_eq!(next_integer(&mut states).await, 2);
    assert_eq!(read_integer(&server, "ota-0", "/5/0/3").await, 2);
    assert_eq!(read_integer(&server, "ota-0", "/5/0/5").await, 0);
    assert_eq!(read_string(&server, "ota-0", "/5/0/6").await, "acme/meter");
    assert_eq!(read_string(&server, "ota-0", "/5/0/7").await, "2");
    assert_eq!(read_integer(&server, "ota-0", "/5/0/9").await, 2);
    server
        .execute("ota-0", path("/5/0/2"), vec![])
        .await
        .unwrap();
    wait_for(&device, (0, 1)).await;
    assert_eq!(next_integer(&mut results).await, 1);
    // Updating (3) may be seen on the way back to Idle.
    let mut state = next_integer(&mut states).await;
    if state == 3 {
        state = next_integer(&mut states).await;
    }
    assert_eq!(state, 0);
    assert_eq!(read_string(&server, "ota-0", "/3/0/3").await, "2");
    assert_eq!(
        device.outcomes.lock().unwrap().as_slice(),
        [UpdateOutcome::Updated {
            version: "2".into()
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_download_resumes_and_transfers_little_more_than_the_package() {
    let (_dir, server) = start_server(1).await;
    let address = server.local_addrs().1.unwrap();
    let v2 = image(150_000, 2);
    let bytes = package(&v2, "meter", 2, &vendor_key());
    let size = bytes.len() as u64;
    // K drops at offsets drawn from a seeded generator, each one once.
    let mut rng = cairn_firmware::sim::SplitMix64::new(77);
    let drops: Vec<u64> = (0..6).map(|_| rng.below(size / 1024) * 1024).collect();
    let pending = Arc::new(Mutex::new(drops.clone()));
    let hit = Arc::new(AtomicU64::new(0));
    let (pending_in, hit_in) = (pending.clone(), hit.clone());
    let options = PullOptions {
        retry_delay: Duration::from_millis(20),
        drop: Some(Arc::new(move |offset| {
            let mut pending = pending_in.lock().unwrap();
            match pending.iter().position(|&o| o == offset) {
                Some(i) => {
                    pending.remove(i);
                    hit_in.fetch_add(1, Ordering::Relaxed);
                    true
                }
                None => false,
            }
        })),
        ..PullOptions::default()
    };
    let device = start_device(address, 0, "meter", options).await;
    wait_registered(&server, "ota-0").await;
    let stored = server.add_firmware("acme-meter", "2", bytes).await.unwrap();
    write_uri(&server, "ota-0", &package_uri(address, &stored.id))
        .await
        .unwrap();
    wait_for(&device, (2, 0)).await;
    let dropped = hit.load(Ordering::Relaxed);
    assert!(dropped >= 5, "{dropped} of {drops:?} dropped");
    let received = device.received.load(Ordering::Relaxed);
    assert!(
        (received as f64) < 1.1 * size as f64,
        "{received} bytes received for a {size}-byte package"
    );
    assert!(received > size, "the drops cost something: {received}");
    server
        .execute("ota-0", path("/5/0/2"), vec![])
        .await
        .unwrap();
    wait_for(&device, (0, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_and_result_transition_of_push_and_pull() {
    let (_dir, server) = start_server(1).await;
    let address = server.local_addrs().1.unwrap();
    let device = start_device(address, 0, "meter", PullOptions::default()).await;
    wait_registered(&server, "ota-0").await;
    let ep = "ota-0";
    let key = vendor_key();
    assert_eq!(device.state_and_result(), (0, 0));

    // Update and Cancel in Idle are refused.
    refused_with(
        server.execute(ep, path("/5/0/2"), vec![]).await,
        ResponseCode::METHOD_NOT_ALLOWED,
    );
    refused_with(
        server.execute(ep, path("/5/0/10"), vec![]).await,
        ResponseCode::METHOD_NOT_ALLOWED,
    );

    // Pull: Idle -> Downloading -> Downloaded, then Cancel -> Idle with result 10.
    let v2 = package(&image(40_000, 2), "meter", 2, &key);
    let stored = server.add_firmware("acme-meter", "2", v2).await.unwrap();
    let uri = package_uri(address, &stored.id);
    write_uri(&server, ep, &uri).await.unwrap();
    wait_for(&device, (2, 0)).await;
    assert_eq!(read_string(&server, ep, "/5/0/1").await, uri);
    server.execute(ep, path("/5/0/10"), vec![]).await.unwrap();
    assert_eq!(device.state_and_result(), (0, 10));

    // Pull again, then an empty Package URI resets: Idle with result 0.
    write_uri(&server, ep, &uri).await.unwrap();
    wait_for(&device, (2, 0)).await;
    write_uri(&server, ep, "").await.unwrap();
    assert_eq!(device.state_and_result(), (0, 0));

    // An unknown resource, an unsupported scheme (9), an invalid URI (7).
    write_uri(&server, ep, "http://127.0.0.1/fw").await.unwrap();
    wait_for(&device, (0, 9)).await;
    write_uri(&server, ep, &package_uri(address, "no-such-image"))
        .await
        .unwrap();
    wait_for(&device, (0, 7)).await;

    // Push: Idle -> Downloaded in one write; Update in Downloaded -> Updating -> Idle, 1.
    push(&server, ep, package(&image(40_000, 3), "meter", 3, &key))
        .await
        .unwrap();
    assert_eq!(device.state_and_result(), (2, 0));
    // A second package while Downloaded is refused.
    refused_with(
        push(&server, ep, package(&image(1000, 4), "meter", 4, &key)).await,
        ResponseCode::METHOD_NOT_ALLOWED,
    );
    server.execute(ep, path("/5/0/2"), vec![]).await.unwrap();
    wait_for(&device, (0, 1)).await;
    assert_eq!(read_string(&server, ep, "/3/0/3").await, "3");

    // Push then Cancel, and an empty Package resets.
    push(&server, ep, package(&image(2000, 5), "meter", 5, &key))
        .await
        .unwrap();
    assert_eq!(device.state_and_result(), (2, 0));
    push(&server, ep, Vec::new()).await.unwrap();
    assert_eq!(device.state_and_result(), (0, 0));
    // Update outside Downloaded is refused, whatever came before.
    refused_with(
        server.execute(ep, path("/5/0/2"), vec![]).await,
        ResponseCode::METHOD_NOT_ALLOWED,
    );
    // A package too large for the slot: result 2 (not enough flash).
    push(
        &server,
        ep,
        package(
            &image(LAYOUT.slot_sectors * SECTOR + 1, 6),
            "meter",
            6,
            &key,
        ),
    )
    .await
    .unwrap();
    assert_eq!(device.state_and_result(), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_wrong_class_and_downgrade_are_refused_and_leave_the_slot_alone() {
    let (_dir, server) = start_server(1).await;
    let address = server.local_addrs().1.unwrap();
    let device = start_device(address, 0, "meter", PullOptions::default()).await;
    wait_registered(&server, "ota-0").await;
    let ep = "ota-0";
    let key = vendor_key();
    // Bring the device to version 3 first, so that 2 is a downgrade.
    push(&server, ep, package(&image(20_000, 3), "meter", 3, &key))
        .await
        .unwrap();
    server.execute(ep, path("/5/0/2"), vec![]).await.unwrap();
    wait_for(&device, (0, 1)).await;
    let running = device.flash.contents();
    let stranger = SigningKey::from_random(Algorithm::Ed25519, &[99; 32]).unwrap();
    let cases = [
        (
            "unknown key",
            package(&image(20_000, 4), "meter", 4, &stranger),
            5,
        ),
        (
            "wrong class",
            package(&image(20_000, 4), "valve", 4, &key),
            6,
        ),
        ("downgrade", package(&image(20_000, 2), "meter", 2, &key), 5),
    ];
    for (what, bytes, expected) in cases {
        // Push.
        push(&server, ep, bytes.clone()).await.unwrap();
        assert_eq!(device.state_and_result(), (0, expected), "{what}, push");
        // Pull.
        let stored = server.add_firmware("bad", what, bytes).await.unwrap();
        write_uri(&server, ep, &package_uri(address, &stored.id))
            .await
            .unwrap();
        wait_for(&device, (0, expected)).await;
        refused_with(
            server.execute(ep, path("/5/0/2"), vec![]).await,
            ResponseCode::METHOD_NOT_ALLOWED,
        );
        // Not one byte of flash changed: the manifest was refused before any write.
        assert!(device.flash.contents() == running, "{what} wrote to flash");
        write_uri(&server, ep, "").await.unwrap();
    }
    assert_eq!(
        device.with_firmware(|fw| fw.firmware_version()),
        Some("3".into())
    );
}

/// A package source whose package can be replaced: answers `GET /fw` block by block with
/// the package's ETag (the first 8 bytes of its SHA-256) and logs the blocks asked for.
struct ReplaceableSource {
    package: Mutex<Vec<u8>>,
    requested: Mutex<Vec<u32>>,
    /// A block whose first request is never answered (the exchange hangs).
    stall: Mutex<Option<u32>>,
}

impl ReplaceableSource {
    /// A source of `package` (whose block `stall`, if any, is never answered the first time)
    /// served at `/fw` by a CoAP endpoint on 127.0.0.1.
    async fn serve_on_loopback(
        package: Vec<u8>,
        stall: Option<u32>,
    ) -> (Arc<Self>, cairn_transport::CoapEndpoint) {
        let source = Arc::new(ReplaceableSource {
            package: Mutex::new(package),
            requested: Mutex::new(Vec::new()),
            stall: Mutex::new(stall),
        });
        let serving = source.clone();
        let endpoint = cairn_transport::CoapEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            Config::default(),
            Some(Arc::new(move |request: &cairn_transport::Request| {
                serving.serve(request)
            })),
        )
        .await
        .unwrap();
        (source, endpoint)
    }

    fn serve(&self, request: &cairn_transport::Request) -> cairn_transport::Reply {
        use cairn_coap::{BlockValue, Code, Message, OptionNumber};
        let package = self.package.lock().unwrap().clone();
        let block = request
            .message
            .options
            .get(OptionNumber::BLOCK2)
            .and_then(BlockValue::decode)
            .unwrap_or(BlockValue {
                num: 0,
                more: false,
                szx: 6,
            });
        self.requested.lock().unwrap().push(block.num);
        if self
            .stall
            .lock()
            .unwrap()
            .take_if(|n| *n == block.num)
            .is_some()
        {
            return cairn_transport::Reply::Pending(Box::pin(std::future::pending()));
        }
        let start = block.offset();
        if start >= package.len() {
            return Message::response(Code::BAD_OPTION).into();
        }
        let end = (start + block.size()).min(package.len());
        let mut response = Message::response(Code::CONTENT);
        response
            .options
            .push(OptionNumber::ETAG, sha256(&package)[..8].to_vec());
        response.options.set_uint(
            OptionNumber::BLOCK2,
            BlockValue {
                more: end < package.len(),
                ..block
            }
            .to_uint(),
        );
        response.payload = package[start..end].to_vec();
        response.into()
    }
}

/// The package is replaced at its source while a pull is under way, between one attempt
/// and the next: after a dropped connection (`power_cut` false) or after a power cut during
/// a flash write (true). The next block comes with another ETag and the download starts
/// over from block 0; the device ends up with the new package, whole.
async fn a_replaced_package_restarts_the_pull(power_cut: bool) {
    let (_dir, server) = start_server(1).await;
    let address = server.local_addrs().1.unwrap();
    let key = vendor_key();
    let (v2, v3) = (image(40_000, 2), image(40_000, 3));
    let (source, endpoint) =
        ReplaceableSource::serve_on_loopback(package(&v2, "meter", 2, &key), None).await;
    // At block 20 the source gets package v3; the block of v2 in flight is lost with its
    // connection, or reaches the device as its power fails.
    let replace_at = 20 * 1024;
    let replaced_before = Arc::new(AtomicU64::new(0));
    let device_power: Arc<std::sync::OnceLock<SimPower>> = Arc::default();
    let (source_in, replaced_in, power_in) = (
        source.clone(),
        replaced_before.clone(),
        device_power.clone(),
    );
    let v3_package = package(&v3, "meter", 3, &key);
    let v3_len = v3_package.len();
    let options = PullOptions {
        retry_delay: Duration::from_millis(20),
        drop: Some(Arc::new(move |offset| {
            if offset != replace_at || replaced_in.load(Ordering::SeqCst) != 0 {
                return false;
            }
            let requests = source_in.requested.lock().unwrap().len() as u64;
            replaced_in.store(requests, Ordering::SeqCst);
            *source_in.package.lock().unwrap() = v3_package.clone();
            if power_cut {
                power_in.get().unwrap().cut_after(1);
            }
            !power_cut
        })),
        ..PullOptions::default()
    };
    let device = start_device(address, 0, "meter", options).await;
    device_power.set(device.power.clone()).unwrap();
    wait_registered(&server, "ota-0").await;
    let uri = format!("coap://{}/fw", endpoint.local_addr());
    write_uri(&server, "ota-0", &uri).await.unwrap();
    wait_for(&device, (2, 0)).await;

    let replaced = replaced_before.load(Ordering::SeqCst) as usize;
    assert!(replaced > 0, "the package was never replaced");
    let requested = source.requested.lock().unwrap().clone();
    // Blocks 0..=20 of v2, then (after a dropped connection) block 20 again, or (after a
    // restart, which forgets the manifest) block 0: either way the ETag changed, and the
    // download starts over from block 0 and runs to v3's end.
    let last = ((v3_len - 1) / 1024) as u32;
    let after: Vec<u32> = requested[replaced..].to_vec();
    // The last request of block 0 starts the download over (a restart fetches block 0
    // first, whose new ETag then starts the stream over: block 0 twice).
    let restart = after.iter().rposition(|&n| n == 0).expect("block 0 again");
    assert!(
        restart <= 1 && after[..restart].iter().all(|&n| n == 0 || n == 20),
        "after the replacement: {after:?}"
    );
    assert_eq!(
        after[restart..],
        (0..=last).collect::<Vec<_>>(),
        "after the replacement: {after:?}"
    );
    assert_eq!(read_string(&server, "ota-0", "/5/0/7").await, "3");
    server
        .execute("ota-0", path("/5/0/2"), vec![])
        .await
        .unwrap();
    wait_for(&device, (0, 1)).await;
    assert_eq!(
        device.with_firmware(|fw| fw.firmware_version()),
        Some("3".into())
    );
    let slot_b = LAYOUT.slot_sectors * SECTOR;
    assert_eq!(&device.flash.contents()[slot_b..slot_b + v3.len()], &v3[..]);
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_replaced_at_its_source_restarts_a_dropped_pull_from_block_0() {
    a_replaced_package_restarts_the_pull(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_replaced_at_its_source_restarts_a_pull_cut_by_a_power_loss_from_block_0() {
    a_replaced_package_restarts_the_pull(true).await;
}

/// A block request whose exchange never completes (the source acknowledges it and never
/// answers) does not leave the device in Downloading with Update Result 0 for good: the
/// agent's bound on one block counts it as a dropped connection, and the download resumes
/// from the flash and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_request_that_never_completes_is_retried_and_the_pull_completes() {
    let (_dir, server) = start_server(1).await;
    let address = server.local_addrs().1.unwrap();
    let v2 = image(40_000, 2);
    let (source, endpoint) =
        ReplaceableSource::serve_on_loopback(package(&v2, "meter", 2, &vendor_key()), Some(7))
            .await;
    let options = PullOptions {
        retry_delay: Duration::from_millis(20),
        // Far below CoAP's own limit on a separate response (93 s): without this bound
        // the download would sit in Downloading past `wait_for`'s 30 s.
        request_timeout: Duration::from_secs(3),
        ..PullOptions::default()
    };
    let device = start_device(address, 0, "meter", options).await;
    wait_registered(&server, "ota-0").await;
    let uri = format!("coap://{}/fw", endpoint.local_addr());
    write_uri(&server, "ota-0", &uri).await.unwrap();
    wait_for(&device, (2, 0)).await;
    assert!(
        source.stall.lock().unwrap().is_none(),
        "block 7 was never asked for"
    );
    let requested = source.requested.lock().unwrap().clone();
    assert_eq!(
        requested.iter().filter(|&&n| n == 7).count(),
        2,
        "block 7 is asked for again: {requested:?}"
    );
    server
        .execute("ota-0", path("/5/0/2"), vec![])
        .await
        .unwrap();
    wait_for(&device, (0, 1)).await;
    endpoint.shutdown().await;
}

/// A package that ends on a block boundary, with the power cut at each flash operation
/// from the last block's arrival through the final check: a resume that finds every byte
/// in flash asks for the block past the end (4.02), and still ends with the package
/// Downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_the_end_of_a_block_aligned_pull_still_completes() {
    let key = vendor_key();
    // An image length that makes the package a whole number of 1 KiB blocks.
    let unaligned = package(&image(40_000, 2), "meter", 2, &key).len();
    let v2 = image(40_000 + (1024 - unaligned % 1024) % 1024, 2);
    let bytes = package(&v2, "meter", 2, &key);
    assert_eq!(bytes.len() % 1024, 0);
    let (_dir, server) = start_server(1000).await;
    let address = server.local_addrs().1.unwrap();
    let (_source, endpoint) = ReplaceableSource::serve_on_loopback(bytes.clone(), None).await;
    let uri = format!("coap://{}/fw", endpoint.local_addr());
    let last_offset = (bytes.len() - 1024) as u64;
    // Device n: the power is cut at the n-th flash operation after the last block arrives
    // (0: never). Returns the operations from the last block to Downloaded, and whether it
    // got there.
    let run = async |n: usize| {
        let device_power: Arc<std::sync::OnceLock<SimPower>> = Arc::default();
        let at_last = Arc::new(AtomicU64::new(u64::MAX));
        let (power_in, at_last_in) = (device_power.clone(), at_last.clone());
        let options = PullOptions {
            retry_delay: Duration::from_millis(20),
            drop: Some(Arc::new(move |offset| {
                let power = power_in.get().unwrap();
                if offset == last_offset && at_last_in.load(Ordering::SeqCst) == u64::MAX {
                    at_last_in.store(power.operations(), Ordering::SeqCst);
                    if n > 0 {
                        power.cut_after(n as u64);
                    }
                }
                false
            })),
            ..PullOptions::default()
        };
        let device = start_device(address, n, "meter", options).await;
        device_power.set(device.power.clone()).unwrap();
        let ep = format!("ota-{n}");
        wait_registered(&server, &ep).await;
        write_uri(&server, &ep, &uri).await.unwrap();
        let downloaded = tokio::time::timeout(Duration::from_secs(20), async {
            while device.state_and_result() != (2, 0) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        let span = device.power.operations() - at_last.load(Ordering::SeqCst).min(u64::MAX - 1);
        // A package Downloaded (before or after a restart) is named by its manifest.
        let version = if downloaded {
            read_string(&server, &ep, "/5/0/7").await
        } else {
            String::new()
        };
        (
            span,
            downloaded && version == "2",
            device.state_and_result(),
        )
    };
    let (span, downloaded, _) = run(0).await;
    assert!(downloaded, "without a power cut");
    assert!(
        span > 2 && span < 1000,
        "{span} operations from the last block to Downloaded"
    );
    // Every operation would take a minute in a debug build: a stride that still lands in
    // the sector flush, its record, and the check's reads.
    let stride = (span as usize / 24).max(1);
    let mut outcomes = Vec::new();
    for n in (1..=span as usize).step_by(stride) {
        let (_, downloaded, state) = run(n).await;
        outcomes.push((n, downloaded, state));
    }
    assert!(
        outcomes.iter().all(|&(_, downloaded, _)| downloaded),
        "(cut at, Downloaded, (state, result)): {outcomes:?}"
    );
    endpoint.shutdown().await;
}
