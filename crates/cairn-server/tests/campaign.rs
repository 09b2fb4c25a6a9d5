//! Firmware campaigns against devices over DTLS-PSK on 127.0.0.1. Each device is a CoAP
//! endpoint with a Firmware Update object (/5/0) of its own: it downloads the Package URI the
//! server writes (Block2, from the server's `/fw/{id}` resource), checks the image's digest,
//! reports Downloaded, and on Update reports Update Result 1 — or, for a device whose class
//! the image does not fit, Update Result 6 (unsupported package).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cairn_coap::{Code, Config, ContentFormat, Message, OptionNumber};
use cairn_dtls::{ClientConfig, Psk};
use cairn_server::campaign::{CampaignSpec, CampaignState, DeviceOutcome};
use cairn_server::{EmbeddedStore, LwM2mServer, SecurityInfo, SecurityMode, ServerConfig, Stores};
use cairn_store::{MasterKey, MasterKeySource, SecretBytes};
use cairn_transport::{CoapEndpoint, Reply, Request, Security};
use sha2::{Digest, Sha256};

/// One device's Firmware Update object.
#[derive(Default)]
struct Firmware {
    state: i64,
    result: i64,
    downloaded: Vec<u8>,
    package_writes: usize,
}

struct FwDevice {
    server: SocketAddr,
    /// A device whose hardware the image does not fit: it refuses to install it.
    incompatible: bool,
    firmware: Mutex<Firmware>,
    endpoint: OnceLock<Arc<CoapEndpoint>>,
}

fn text(value: i64) -> Message {
    let mut response = Message::response(Code::CONTENT);
    response.set_content_format(ContentFormat::TEXT_PLAIN);
    response.payload = value.to_string().into_bytes();
    response
}

impl FwDevice {
    fn set(self: &Arc<Self>, state: Option<i64>, result: Option<i64>) {
        let (state_now, result_now) = {
            let mut firmware = self.firmware.lock().unwrap();
            if let Some(state) = state {
                firmware.state = state;
            }
            if let Some(result) = result {
                firmware.result = result;
            }
            (firmware.state, firmware.result)
        };
        let device = self.clone();
        tokio::spawn(async move {
            if let Some(endpoint) = device.endpoint.get() {
                let _ = endpoint.notify("/5/0/3", text(state_now)).await;
                let _ = endpoint.notify("/5/0/5", text(result_now)).await;
            }
        });
    }

    fn handle(self: &Arc<Self>, request: &Request) -> Reply {
        let message = &request.message;
        match (message.code, message.uri_path().as_str()) {
            (Code::GET, "/5/0/3") => Reply::Ready(text(self.firmware.lock().unwrap().state)),
            (Code::GET, "/5/0/5") => Reply::Ready(text(self.firmware.lock().unwrap().result)),
            (Code::PUT, "/5/0/1") => {
                let uri = String::from_utf8_lossy(&message.payload).into_owned();
                self.firmware.lock().unwrap().package_writes += 1;
                if uri.is_empty() {
                    self.set(Some(0), Some(0));
                    return Reply::Ready(Message::response(Code::CHANGED));
                }
                self.set(Some(1), Some(0));
                let device = self.clone();
                tokio::spawn(async move { device.download(uri).await });
                Reply::Ready(Message::response(Code::CHANGED))
            }
            (Code::POST, "/5/0/2") => {
                if self.firmware.lock().unwrap().state != 2 {
                    return Reply::Ready(Message::response(Code::METHOD_NOT_ALLOWED));
                }
                self.set(Some(3), None);
                let device = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let result = if device.incompatible { 6 } else { 1 };
                    device.set(Some(0), Some(result));
                });
                Reply::Ready(Message::response(Code::CHANGED))
            }
            _ => Reply::Ready(Message::response(Code::NOT_FOUND)),
        }
    }

    async fn download(self: Arc<Self>, uri: String) {
        let path = uri
            .strip_prefix(&format!("coaps://{}", self.server))
            .expect("the package is on the server the device registered with")
            .to_owned();
        let mut request = Message::request(Code::GET);
        request.set_uri_path(&path);
        let endpoint = self.endpoint.get().unwrap().clone();
        match endpoint.request(self.server, request).await {
            Ok(response) if response.code == Code::CONTENT => {
                self.firmware.lock().unwrap().downloaded = response.payload;
                self.set(Some(2), None);
            }
            // Update Result 7: invalid URI / download failure.
            _ => self.set(Some(0), Some(7)),
        }
    }
}

fn register_message(endpoint: &str) -> Message {
    let mut message = Message::request(Code::POST);
    message.set_uri_path("/rd");
    for query in [
        format!("ep={endpoint}"),
        "lt=300".into(),
        "lwm2m=1.1".into(),
    ] {
        message
            .options
            .push(OptionNumber::URI_QUERY, query.into_bytes());
    }
    message.set_content_format(ContentFormat::LINK_FORMAT);
    message.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
    message
}

fn key_of(n: usize) -> Vec<u8> {
    format!("campaign-key-{n:04}").into_bytes()
}

async fn start(devices: usize) -> (tempfile::TempDir, LwM2mServer) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        MasterKeySource::Key(MasterKey::from_bytes(&[9; 32])),
    )
    .unwrap();
    let infos: Vec<SecurityInfo> = (0..devices)
        .map(|n| SecurityInfo {
            endpoint: format!("fw-{n}"),
            mode: SecurityMode::Psk {
                identity: format!("fw-id-{n}").into_bytes(),
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

async fn device(server: &LwM2mServer, n: usize, incompatible: bool) -> Arc<FwDevice> {
    let address = server.local_addrs().1.unwrap();
    let device = Arc::new(FwDevice {
        server: address,
        incompatible,
        firmware: Mutex::new(Firmware::default()),
        endpoint: OnceLock::new(),
    });
    let handler_device = device.clone();
    let handler = move |request: &Request| handler_device.handle(request);
    let endpoint = CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        Security::DtlsClient {
            config: ClientConfig::new(format!("fw-id-{n}"), Psk::new(key_of(n))),
            server: address,
        },
        Some(Arc::new(handler)),
    )
    .await
    .unwrap();
    let endpoint = Arc::new(endpoint);
    let response = endpoint
        .request(address, register_message(&format!("fw-{n}")))
        .await
        .unwrap();
    assert_eq!(response.code, Code::CREATED);
    let _ = device.endpoint.set(endpoint);
    device
}

async fn wait_finished(server: &LwM2mServer, id: &str) -> cairn_server::campaign::CampaignStatus {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let status = server.campaign(id).await.unwrap();
            if status.is_finished() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the campaign finishes")
}

/// An image bigger than one block, with content a truncated download would miss.
fn image() -> Vec<u8> {
    (0..40_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_updates_every_device_wave_by_wave() {
    let (_dir, server) = start(6).await;
    let mut devices = Vec::new();
    for n in 0..6 {
        devices.push(device(&server, n, false).await);
    }
    let bytes = image();
    let image = server
        .add_firmware("cairn-demo", "2.0.0", bytes.clone())
        .await
        .unwrap();
    assert_eq!(server.firmware_images().await.unwrap(), vec![image.clone()]);
    let spec = CampaignSpec {
        waves: vec![50, 100],
        concurrency: 2,
        ..CampaignSpec::new(
            "all",
            &image.id,
            (0..6).map(|n| format!("fw-{n}")).collect(),
        )
    };
    let id = server.start_campaign(spec).await.unwrap();
    let status = wait_finished(&server, &id).await;
    assert_eq!(status.state, CampaignState::Completed, "{status:?}");
    assert_eq!(status.counts().updated, 6);
    let digest = Sha256::digest(&bytes);
    for device in &devices {
        let firmware = device.firmware.lock().unwrap();
        assert_eq!(Sha256::digest(&firmware.downloaded), digest);
        assert_eq!((firmware.state, firmware.result), (0, 1));
    }
    // The report outlives the run: it is read back from the store.
    assert_eq!(server.campaign(&id).await.unwrap().counts().updated, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_wave_halts_the_campaign_before_the_next() {
    let (_dir, server) = start(10).await;
    let mut devices = Vec::new();
    for n in 0..10 {
        // The first wave is the first device: one that refuses the image.
        devices.push(device(&server, n, n == 0).await);
    }
    let image = server
        .add_firmware("cairn-demo", "2.0.0", image())
        .await
        .unwrap();
    let spec = CampaignSpec {
        waves: vec![10, 100],
        ..CampaignSpec::new(
            "halt",
            &image.id,
            (0..10).map(|n| format!("fw-{n}")).collect(),
        )
    };
    let id = server.start_campaign(spec).await.unwrap();
    let status = wait_finished(&server, &id).await;
    assert_eq!(status.state, CampaignState::Halted, "{status:?}");
    assert!(status.halt_reason.as_deref().unwrap().contains("wave 1"));
    assert_eq!(status.devices["fw-0"], DeviceOutcome::Failed { result: 6 });
    // No device of the second wave was touched.
    for (n, device) in devices.iter().enumerate().skip(1) {
        assert_eq!(status.devices[&format!("fw-{n}")], DeviceOutcome::Pending);
        assert_eq!(device.firmware.lock().unwrap().package_writes, 0);
    }
    // A finished campaign cannot be resumed; an unknown image cannot be campaigned.
    assert!(server.resume_campaign(&id).is_err());
    assert!(
        server
            .start_campaign(CampaignSpec::new("x", "no-such-image", vec!["fw-1".into()]))
            .await
            .is_err()
    );
}
