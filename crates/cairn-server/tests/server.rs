//! The server over real sockets on 127.0.0.1: a device written here with the CoAP transport
//! registers over DTLS-PSK and answers device-management requests; identities are checked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_coap::{Code, Config, ContentFormat, Message, OptionNumber};
use cairn_dtls::{ClientConfig, Psk};
use cairn_lwm2m::node::{LwM2mNode, LwM2mObjectInstance, LwM2mResource};
use cairn_lwm2m::{LwM2mPath, ModelRegistry, Value, WriteMode};
use cairn_server::{
    EmbeddedStore, LwM2mServer, PeerIdentity, SecurityInfo, SecurityMode, SecurityStore,
    ServerConfig, ServerError, ServerEvent, Stores,
};
use cairn_store::{MasterKey, MasterKeySource, SecretBytes};
use cairn_transport::{CoapEndpoint, Reply, Request, Security};

const KEY: &[u8] = b"0123456789abcdef";

fn device_instance(manufacturer: &str) -> LwM2mObjectInstance {
    LwM2mObjectInstance::new(
        0,
        [
            LwM2mResource::single(0, Value::String(manufacturer.into())),
            LwM2mResource::single(1, Value::String("Model 7".into())),
            LwM2mResource::single(2, Value::String("SN-0001".into())),
            LwM2mResource::single(3, Value::String("1.0.3".into())),
            LwM2mResource::multiple(6, [(0, Value::Integer(1)), (1, Value::Integer(5))]),
            LwM2mResource::single(9, Value::Integer(87)),
            LwM2mResource::multiple(11, [(0, Value::Integer(0))]),
            LwM2mResource::single(13, Value::Time(1_790_000_000)),
            LwM2mResource::single(16, Value::String("U".into())),
        ],
    )
}

/// A minimal device: the Device object (/3/0), readable in any format asked for, writable,
/// with an executable reboot (/3/0/4).
#[derive(Default)]
struct Device {
    manufacturer: Mutex<String>,
    reboots: Mutex<u32>,
}

impl Device {
    fn handle(&self, request: &Request) -> Reply {
        let models = ModelRegistry::with_core_models();
        let message = &request.message;
        let path = message.uri_path();
        let node = LwM2mNode::ObjectInstance(device_instance(&self.manufacturer.lock().unwrap()));
        match (message.code, path.as_str()) {
            (Code::GET, "/3/0") => {
                let format = message
                    .options
                    .get_uint(OptionNumber::ACCEPT)
                    .map_or(ContentFormat::LWM2M_TLV, |v| ContentFormat(v as u16));
                let target = LwM2mPath::ObjectInstance(3, 0);
                match cairn_lwm2m::encode(&node, &target, format, &models) {
                    Ok(payload) => {
                        let mut response = Message::response(Code::CONTENT);
                        response.set_content_format(format);
                        response.payload = payload;
                        Reply::Ready(response)
                    }
                    Err(_) => Reply::Ready(Message::response(Code::NOT_ACCEPTABLE)),
                }
            }
            (Code::PUT | Code::POST, "/3/0/0") => {
                let format = message
                    .content_format()
                    .unwrap_or(ContentFormat::TEXT_PLAIN);
                let target = LwM2mPath::Resource(3, 0, 0);
                match cairn_lwm2m::decode(&message.payload, format, &target, &models) {
                    Ok(LwM2mNode::Resource(LwM2mResource {
                        value: cairn_lwm2m::node::ResourceValue::Single(Value::String(s)),
                        ..
                    })) => {
                        *self.manufacturer.lock().unwrap() = s;
                        Reply::Ready(Message::response(Code::CHANGED))
                    }
                    _ => Reply::Ready(Message::response(Code::BAD_REQUEST)),
                }
            }
            (Code::GET, "/3/0/9") => {
                let mut response = Message::response(Code::CONTENT);
                response.set_content_format(ContentFormat::TEXT_PLAIN);
                response.payload = b"87".to_vec();
                Reply::Ready(response)
            }
            (Code::POST, "/3/0/4") => {
                *self.reboots.lock().unwrap() += 1;
                Reply::Ready(Message::response(Code::CHANGED))
            }
            _ => Reply::Ready(Message::response(Code::NOT_FOUND)),
        }
    }
}

fn psk(endpoint: &str, identity: &str, key: &[u8]) -> SecurityInfo {
    SecurityInfo {
        endpoint: endpoint.into(),
        mode: SecurityMode::Psk {
            identity: identity.as_bytes().to_vec(),
            key: SecretBytes::new(key.to_vec()),
        },
        created_at_ms: 0,
    }
}

fn no_sec(endpoint: &str) -> SecurityInfo {
    SecurityInfo {
        endpoint: endpoint.into(),
        mode: SecurityMode::NoSec,
        created_at_ms: 0,
    }
}

/// A fresh store in a temporary directory (kept alive by the returned guard).
async fn store_with(infos: Vec<SecurityInfo>) -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes(&[7; 32]);
    let store = EmbeddedStore::open_with(dir.path(), MasterKeySource::Key(key)).unwrap();
    for info in infos {
        store.put_security_info(info).await.unwrap();
    }
    (dir, store)
}

async fn start_server() -> (tempfile::TempDir, LwM2mServer) {
    let (dir, store) = store_with(vec![
        psk("dev-1", "identity-1", KEY),
        psk("dev-2", "identity-2", b"another-key-0002"),
        no_sec("plain-1"),
    ])
    .await;
    let config = ServerConfig {
        coap_listen: Some("127.0.0.1:0".parse().unwrap()),
        dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
        request_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    (
        dir,
        LwM2mServer::start(config, Stores::embedded(store))
            .await
            .unwrap(),
    )
}

async fn device_endpoint(
    server: SocketAddr,
    identity: &str,
    key: &[u8],
    device: Arc<Device>,
) -> CoapEndpoint {
    let security = Security::DtlsClient {
        config: ClientConfig::new(identity, Psk::new(key.to_vec())),
        server,
    };
    let handler = move |request: &Request| device.handle(request);
    CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        security,
        Some(Arc::new(handler)),
    )
    .await
    .unwrap()
}

fn register_message(endpoint: &str, lifetime: u32) -> Message {
    let mut message = Message::request(Code::POST);
    message.set_uri_path("/rd");
    for query in [
        format!("ep={endpoint}"),
        format!("lt={lifetime}"),
        "lwm2m=1.1".into(),
        "b=U".into(),
    ] {
        message
            .options
            .push(OptionNumber::URI_QUERY, query.into_bytes());
    }
    message.set_content_format(ContentFormat::LINK_FORMAT);
    message.payload = b"</>;rt=\"oma.lwm2m\";ct=\"60 110 112 11542 11543\",</1/0>,</3/0>".to_vec();
    message
}

#[tokio::test]
async fn device_registers_over_dtls_and_is_managed() {
    let (_dir, server) = start_server().await;
    let mut events = server.events();
    let (_, dtls) = server.local_addrs();
    let device = Arc::new(Device {
        manufacturer: Mutex::new("Cairn Devices".into()),
        ..Device::default()
    });
    let endpoint = device_endpoint(dtls.unwrap(), "identity-1", KEY, device.clone()).await;

    let response = endpoint
        .request(dtls.unwrap(), register_message("dev-1", 300))
        .await
        .unwrap();
    assert_eq!(response.code, Code::CREATED);
    let location: Vec<_> = response
        .options
        .get_all(OptionNumber::LOCATION_PATH)
        .collect();
    assert_eq!(location[0], b"rd");
    let registration = server.registration("dev-1").unwrap();
    assert_eq!(location[1], registration.id.as_bytes());
    assert_eq!(
        registration.identity,
        PeerIdentity::Psk(b"identity-1".to_vec())
    );
    assert!(
        matches!(events.recv().await.unwrap(), ServerEvent::Registered(r) if r.endpoint == "dev-1")
    );

    // Read /3/0 in every structured format.
    for format in [
        ContentFormat::LWM2M_TLV,
        ContentFormat::SENML_JSON,
        ContentFormat::SENML_CBOR,
        ContentFormat::LWM2M_CBOR,
        ContentFormat::LWM2M_JSON,
    ] {
        let node = server
            .read("dev-1", LwM2mPath::ObjectInstance(3, 0), Some(format))
            .await
            .unwrap();
        let LwM2mNode::ObjectInstance(instance) = node else {
            panic!("{format:?}: {node:?}")
        };
        assert_eq!(
            instance.resources[&0],
            LwM2mResource::single(0, Value::String("Cairn Devices".into())),
            "{format:?}"
        );
        assert_eq!(
            instance.resources[&9],
            LwM2mResource::single(9, Value::Integer(87)),
            "{format:?}"
        );
    }

    // Write the manufacturer, read it back; execute reboot.
    let written = LwM2mNode::Resource(LwM2mResource::single(0, Value::String("Renamed".into())));
    server
        .write(
            "dev-1",
            LwM2mPath::Resource(3, 0, 0),
            WriteMode::Replace,
            written,
            Some(ContentFormat::TEXT_PLAIN),
        )
        .await
        .unwrap();
    let node = server
        .read("dev-1", LwM2mPath::ObjectInstance(3, 0), None)
        .await
        .unwrap();
    let LwM2mNode::ObjectInstance(instance) = node else {
        panic!()
    };
    assert_eq!(
        instance.resources[&0],
        LwM2mResource::single(0, Value::String("Renamed".into()))
    );
    server
        .execute("dev-1", LwM2mPath::Resource(3, 0, 4), Vec::new())
        .await
        .unwrap();
    assert_eq!(*device.reboots.lock().unwrap(), 1);

    // An error from the device comes back typed.
    let error = server
        .read("dev-1", LwM2mPath::ObjectInstance(5, 0), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ServerError::Device { code, .. } if code.to_string() == "4.04"),
        "{error}"
    );

    // De-register.
    let mut deregister = Message::request(Code::DELETE);
    deregister.set_uri_path(&format!("/rd/{}", registration.id));
    let response = endpoint.request(dtls.unwrap(), deregister).await.unwrap();
    assert_eq!(response.code, Code::DELETED);
    assert!(server.registration("dev-1").is_none());
    let error = server
        .read("dev-1", LwM2mPath::ObjectInstance(3, 0), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServerError::UnknownEndpoint(_)));
}

#[tokio::test]
async fn endpoint_name_must_match_the_dtls_identity() {
    let (_dir, server) = start_server().await;
    let (coap, dtls) = server.local_addrs();
    let device = Arc::new(Device::default());
    let endpoint = device_endpoint(dtls.unwrap(), "identity-1", KEY, device.clone()).await;
    // identity-1 belongs to dev-1: registering as dev-2 is forbidden.
    let response = endpoint
        .request(dtls.unwrap(), register_message("dev-2", 300))
        .await
        .unwrap();
    assert_eq!(response.code, Code::FORBIDDEN);
    assert!(server.registration("dev-2").is_none());

    // Unsecured registration: refused for a PSK endpoint, allowed for a NoSec one.
    let plain = CoapEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default(), None)
        .await
        .unwrap();
    let response = plain
        .request(coap.unwrap(), register_message("dev-1", 300))
        .await
        .unwrap();
    assert_eq!(response.code, Code::FORBIDDEN);
    let response = plain
        .request(coap.unwrap(), register_message("plain-1", 300))
        .await
        .unwrap();
    assert_eq!(response.code, Code::CREATED);
    assert_eq!(
        server.registration("plain-1").unwrap().identity,
        PeerIdentity::Unsecured
    );

    // Absurd lifetimes and malformed queries are refused clearly.
    let response = plain
        .request(coap.unwrap(), register_message("plain-1", 0))
        .await
        .unwrap();
    assert_eq!(response.code, Code::BAD_REQUEST);
    let mut bad = register_message("plain-1", 60);
    bad.options
        .push(OptionNumber::URI_QUERY, b"lt=notanumber".to_vec());
    let response = plain.request(coap.unwrap(), bad).await.unwrap();
    assert_eq!(response.code, Code::BAD_REQUEST);

    // Updating someone else's registration is forbidden.
    let id = server.registration("plain-1").unwrap().id;
    let mut update = Message::request(Code::POST);
    update.set_uri_path(&format!("/rd/{id}"));
    let response = endpoint.request(dtls.unwrap(), update).await.unwrap();
    assert_eq!(response.code, Code::FORBIDDEN);
}

#[tokio::test]
async fn registrations_expire_after_their_lifetime() {
    let (_dir, store) = store_with(vec![no_sec("short")]).await;
    let config = ServerConfig {
        coap_listen: Some("127.0.0.1:0".parse().unwrap()),
        dtls_listen: None,
        expiry_grace: Duration::ZERO,
        ..ServerConfig::default()
    };
    let server = LwM2mServer::start(config, Stores::embedded(store))
        .await
        .unwrap();
    let mut events = server.events();
    let (coap, _) = server.local_addrs();
    let plain = CoapEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default(), None)
        .await
        .unwrap();
    let response = plain
        .request(coap.unwrap(), register_message("short", 1))
        .await
        .unwrap();
    assert_eq!(response.code, Code::CREATED);
    let expired = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ServerEvent::Expired(registration)) = events.recv().await {
                return registration;
            }
        }
    })
    .await
    .expect("the registration expires");
    assert_eq!(expired.endpoint, "short");
    assert!(server.registration("short").is_none());
}

fn battery(level: i64) -> Message {
    let mut response = Message::response(Code::CONTENT);
    response.set_content_format(ContentFormat::TEXT_PLAIN);
    response.payload = level.to_string().into_bytes();
    response
}

#[tokio::test]
async fn observe_notifications_and_send_reach_the_server() {
    let (_dir, server) = start_server().await;
    let mut events = server.events();
    let (_, dtls) = server.local_addrs();
    let dtls = dtls.unwrap();
    let device = Arc::new(Device::default());
    let endpoint = device_endpoint(dtls, "identity-1", KEY, device).await;
    assert_eq!(
        endpoint
            .request(dtls, register_message("dev-1", 300))
            .await
            .unwrap()
            .code,
        Code::CREATED
    );

    let (first, mut notifications) = server
        .observe("dev-1", LwM2mPath::Resource(3, 0, 9), None)
        .await
        .unwrap();
    assert_eq!(
        first,
        LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(87)))
    );
    // What the idle observation holds, by layer. Before the compact records: 189 bytes in
    // the CoAP endpoint, 33 in the transport's sink map, and 205 in the server's sink
    // (88, its two strings 21) and the caller's mailbox (96): 427 in all.
    let memory = notifications.memory().await.unwrap();
    println!(
        "idle observation: CoAP endpoint {} B, transport {} B, server sink and mailbox {} B, \
         total {} B",
        memory.coap,
        memory.transport,
        memory.sink,
        memory.total()
    );
    assert!(memory.coap <= 80, "{memory:?}");
    assert!(memory.transport <= 24, "{memory:?}");
    assert!(memory.sink <= 144, "{memory:?}");
    for level in [80, 75] {
        assert_eq!(endpoint.notify("/3/0/9", battery(level)).await.unwrap(), 1);
        let node = tokio::time::timeout(Duration::from_secs(5), notifications.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            node,
            LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(level)))
        );
    }
    assert_eq!(notifications.memory().await, Some(memory), "idle again");
    // Cancelling deregisters on the device: later notifications reach nobody.
    notifications.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while endpoint.notify("/3/0/9", battery(1)).await.unwrap() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device still has the observer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Send (/dp) with SenML CBOR.
    let record = cairn_lwm2m::encode(
        &LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(42))),
        &LwM2mPath::Resource(3, 0, 9),
        ContentFormat::SENML_CBOR,
        &ModelRegistry::with_core_models(),
    )
    .unwrap();
    let mut send = Message::request(Code::POST);
    send.set_uri_path("/dp");
    send.set_content_format(ContentFormat::SENML_CBOR);
    send.payload = record;
    assert_eq!(
        endpoint.request(dtls, send).await.unwrap().code,
        Code::CHANGED
    );
    let sent = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ServerEvent::Send { endpoint, nodes }) = events.recv().await {
                return (endpoint, nodes);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(sent.0, "dev-1");
    assert_eq!(
        sent.1.get(&LwM2mPath::Resource(3, 0, 9)),
        Some(&LwM2mNode::Resource(LwM2mResource::single(
            9,
            Value::Integer(42)
        )))
    );
}

#[tokio::test]
async fn queued_request_is_delivered_when_the_device_wakes() {
    let (_dir, store) = store_with(vec![psk("sleepy", "identity-s", KEY)]).await;
    let config = ServerConfig {
        coap_listen: None,
        dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
        awake_window: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = LwM2mServer::start(config, Stores::embedded(store))
        .await
        .unwrap();
    let mut events = server.events();
    let (_, dtls) = server.local_addrs();
    let dtls = dtls.unwrap();
    let device = Arc::new(Device {
        manufacturer: Mutex::new("Sleepy".into()),
        ..Device::default()
    });
    let endpoint = device_endpoint(dtls, "identity-s", KEY, device).await;
    let mut register = register_message("sleepy", 300);
    register
        .options
        .push(OptionNumber::URI_QUERY, b"Q".to_vec());
    assert_eq!(
        endpoint.request(dtls, register).await.unwrap().code,
        Code::CREATED
    );
    assert!(server.registration("sleepy").unwrap().queue_mode);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let reader = server.clone();
    let read = tokio::spawn(async move {
        reader
            .read("sleepy", LwM2mPath::ObjectInstance(3, 0), None)
            .await
    });
    let queued = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ServerEvent::RequestQueued { endpoint }) = events.recv().await {
                return endpoint;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(queued, "sleepy");
    assert!(
        !read.is_finished(),
        "the request waits while the device sleeps"
    );

    // The device wakes with an Update; the queued read goes out.
    let id = server.registration("sleepy").unwrap().id;
    let mut update = Message::request(Code::POST);
    update.set_uri_path(&format!("/rd/{id}"));
    assert_eq!(
        endpoint.request(dtls, update).await.unwrap().code,
        Code::CHANGED
    );
    let node = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let LwM2mNode::ObjectInstance(instance) = node else {
        panic!()
    };
    assert_eq!(
        instance.resources[&0],
        LwM2mResource::single(0, Value::String("Sleepy".into()))
    );
}

/// libcoap's client (a CoAP/DTLS stack we did not write) registers a hand-written endpoint.
#[tokio::test]
async fn libcoap_client_registers_over_dtls_psk() {
    let client = [
        "/usr/bin/coap-client-openssl",
        "/usr/local/bin/coap-client-openssl",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .expect(
        "coap-client-openssl is not installed: run scripts/setup.sh (Debian package libcoap3-bin)",
    );
    let (_dir, server) = start_server().await;
    let (_, dtls) = server.local_addrs();
    let uri = format!(
        "coaps://127.0.0.1:{}/rd?ep=dev-2&lt=120&lwm2m=1.1&b=U",
        dtls.unwrap().port()
    );
    let output = tokio::process::Command::new(client)
        .args([
            "-m",
            "post",
            "-u",
            "identity-2",
            "-k",
            "another-key-0002",
            "-t",
            "40",
            "-e",
            "</1/0>,</3/0>",
        ])
        .args(["-B", "10", &uri])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let registration = server
        .registration("dev-2")
        .expect("libcoap's registration is known");
    assert_eq!(
        registration.identity,
        PeerIdentity::Psk(b"identity-2".to_vec())
    );
    assert_eq!(registration.lifetime_s, 120);
    assert_eq!(
        registration.object_paths,
        vec!["/1/0".to_string(), "/3/0".to_string()]
    );

    // The same stack with the wrong key gets no registration.
    let output = tokio::process::Command::new(client)
        .args([
            "-m",
            "post",
            "-u",
            "identity-2",
            "-k",
            "wrong-key",
            "-e",
            "</3/0>",
            "-B",
            "3",
        ])
        .arg(uri.replace("dev-2", "dev-1"))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let _ = output;
    assert!(server.registration("dev-1").is_none());
}

#[tokio::test]
async fn registration_and_observation_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let key = MasterKey::from_bytes(&[9; 32]);
        EmbeddedStore::open_with(dir.path(), MasterKeySource::Key(key))
    };
    let store = open().unwrap();
    store.put_security_info(no_sec("plain-obs")).await.unwrap();
    let config = ServerConfig {
        coap_listen: Some("127.0.0.1:0".parse().unwrap()),
        dtls_listen: None,
        ..ServerConfig::default()
    };
    let server = LwM2mServer::start(config.clone(), Stores::embedded(store))
        .await
        .unwrap();
    let address = server.local_addrs().0.unwrap();
    let device = Arc::new(Device::default());
    let handler = move |request: &Request| device.handle(request);
    let endpoint = CoapEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        Some(Arc::new(handler)),
    )
    .await
    .unwrap();
    assert_eq!(
        endpoint
            .request(address, register_message("plain-obs", 300))
            .await
            .unwrap()
            .code,
        Code::CREATED
    );
    let (_, mut notifications) = server
        .observe("plain-obs", LwM2mPath::Resource(3, 0, 9), None)
        .await
        .unwrap();
    endpoint.notify("/3/0/9", battery(80)).await.unwrap();
    let node = tokio::time::timeout(Duration::from_secs(5), notifications.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(80)))
    );

    // Stop the server and start a new one on the same store and address.
    server.shutdown().await;
    drop(notifications);
    drop(server);
    let store = loop {
        match open() {
            Ok(store) => break store,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let config = ServerConfig {
        coap_listen: Some(address),
        ..config
    };
    let server = LwM2mServer::start(config, Stores::embedded(store))
        .await
        .unwrap();
    assert!(
        server.registration("plain-obs").is_some(),
        "the registration is restored"
    );
    let mut events = server.events();

    // The device keeps notifying the token it was given before the restart.
    endpoint.notify("/3/0/9", battery(70)).await.unwrap();
    let (endpoint_name, node) = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ServerEvent::Notification { endpoint, node, .. }) = events.recv().await {
                return (endpoint, node);
            }
        }
    })
    .await
    .expect("the restored observation delivers notifications");
    assert_eq!(endpoint_name, "plain-obs");
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(70)))
    );
}

#[tokio::test]
async fn hostile_registrations_are_refused_and_nothing_stored_is_lost() {
    let (_dir, server) = start_server().await;
    let (coap, _) = server.local_addrs();
    let coap = coap.unwrap();
    let plain = CoapEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default(), None)
        .await
        .unwrap();
    assert_eq!(
        plain
            .request(coap, register_message("plain-1", 300))
            .await
            .unwrap()
            .code,
        Code::CREATED
    );
    let stored = server.registration("plain-1").unwrap();

    // A 2 MB link-format payload: refused by the block-wise layer's limit (4.13).
    let big_sender = CoapEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            max_body_size: 4 << 20,
            ..Config::default()
        },
        None,
    )
    .await
    .unwrap();
    let mut huge = register_message("plain-1", 300);
    huge.payload = "</3/0>,".repeat(300_000).into_bytes();
    let response = big_sender.request(coap, huge).await.unwrap();
    assert_eq!(response.code, Code::REQUEST_ENTITY_TOO_LARGE);

    // A flood of registrations for endpoints nobody allowed: all refused.
    let mut flood = Vec::new();
    for i in 0..200 {
        let endpoint = CoapEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default(), None)
            .await
            .unwrap();
        flood.push(tokio::spawn(async move {
            endpoint
                .request(coap, register_message(&format!("intruder-{i}"), 300))
                .await
                .map(|m| m.code)
        }));
    }
    for task in flood {
        assert_eq!(task.await.unwrap().unwrap(), Code::FORBIDDEN);
    }

    // Unknown objects and odd links are data, not errors; garbage links are a clear 4.00.
    let mut odd = register_message("plain-1", 300);
    odd.payload = b"</65000/0>,</3/0>".to_vec();
    assert_eq!(plain.request(coap, odd).await.unwrap().code, Code::CREATED);
    let mut garbage = register_message("plain-1", 300);
    garbage.payload = b"<<<not a link".to_vec();
    let response = plain.request(coap, garbage).await.unwrap();
    assert_eq!(
        response.code,
        Code::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&response.payload)
    );

    // Two registrations of one endpoint racing: exactly one survives, and it is consistent.
    let a = CoapEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default(), None)
        .await
        .unwrap();
    let b = CoapEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default(), None)
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(
        a.request(coap, register_message("plain-1", 300)),
        b.request(coap, register_message("plain-1", 300))
    );
    assert_eq!(
        (ra.unwrap().code, rb.unwrap().code),
        (Code::CREATED, Code::CREATED)
    );
    let survivors: Vec<_> = server
        .registrations()
        .into_iter()
        .filter(|r| r.endpoint == "plain-1")
        .collect();
    assert_eq!(survivors.len(), 1);
    assert_ne!(
        survivors[0].id, stored.id,
        "the older registration was replaced"
    );
    // The server still serves the honest device.
    assert!(server.registration("plain-1").is_some());
}

/// A NAT in front of a device: it forwards datagrams between the device and the server from
/// a public socket, which [`Nat::rebind`] replaces (a new public port, the old one closed).
struct Nat {
    device_side: Arc<tokio::net::UdpSocket>,
    server: SocketAddr,
    public: Arc<Mutex<(Arc<tokio::net::UdpSocket>, tokio::task::JoinHandle<()>)>>,
    device: Arc<Mutex<Option<SocketAddr>>>,
}

impl Nat {
    async fn new(server: SocketAddr) -> Nat {
        let device_side = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let device = Arc::new(Mutex::new(None));
        let public = Nat::open_public(device_side.clone(), device.clone()).await;
        let nat = Nat {
            device_side,
            server,
            public: Arc::new(Mutex::new(public)),
            device,
        };
        let (device_side, public, device, server) = (
            nat.device_side.clone(),
            nat.public.clone(),
            nat.device.clone(),
            nat.server,
        );
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65536];
            while let Ok((len, from)) = device_side.recv_from(&mut buffer).await {
                *device.lock().unwrap() = Some(from);
                let socket = public.lock().unwrap().0.clone();
                let _ = socket.send_to(&buffer[..len], server).await;
            }
        });
        nat
    }

    async fn open_public(
        device_side: Arc<tokio::net::UdpSocket>,
        device: Arc<Mutex<Option<SocketAddr>>>,
    ) -> (Arc<tokio::net::UdpSocket>, tokio::task::JoinHandle<()>) {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let inbound = socket.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65536];
            while let Ok((len, _)) = inbound.recv_from(&mut buffer).await {
                let target = *device.lock().unwrap();
                if let Some(target) = target {
                    let _ = device_side.send_to(&buffer[..len], target).await;
                }
            }
        });
        (socket, task)
    }

    fn device_side(&self) -> SocketAddr {
        self.device_side.local_addr().unwrap()
    }

    fn public_address(&self) -> SocketAddr {
        self.public.lock().unwrap().0.local_addr().unwrap()
    }

    /// A new public port; datagrams to the old one are lost from now on.
    async fn rebind(&self) {
        let fresh = Nat::open_public(self.device_side.clone(), self.device.clone()).await;
        let (_, old_task) = std::mem::replace(&mut *self.public.lock().unwrap(), fresh);
        old_task.abort();
    }
}

#[tokio::test]
async fn a_device_behind_a_changing_nat_keeps_its_registration() {
    let (_dir, server) = start_server().await;
    let (_, dtls) = server.local_addrs();
    let nat = Nat::new(dtls.unwrap()).await;
    let device = Arc::new(Device {
        manufacturer: Mutex::new("Roaming".into()),
        ..Device::default()
    });
    let mut config = ClientConfig::new("identity-1", Psk::new(KEY.to_vec()));
    config.connection_id = Some(Vec::new());
    let security = Security::DtlsClient {
        config,
        server: nat.device_side(),
    };
    let handler = move |request: &Request| device.handle(request);
    let endpoint = CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        security,
        Some(Arc::new(handler)),
    )
    .await
    .unwrap();
    let via_nat = nat.device_side();
    assert_eq!(
        endpoint
            .request(via_nat, register_message("dev-1", 300))
            .await
            .unwrap()
            .code,
        Code::CREATED
    );
    let first = server.registration("dev-1").unwrap();
    assert_eq!(first.peer_address, nat.public_address());
    server
        .read("dev-1", LwM2mPath::ObjectInstance(3, 0), None)
        .await
        .unwrap();

    // The NAT maps the device to a new public port; its next Update arrives from there.
    nat.rebind().await;
    let mut update = Message::request(Code::POST);
    update.set_uri_path(&format!("/rd/{}", first.id));
    assert_eq!(
        endpoint.request(via_nat, update).await.unwrap().code,
        Code::CHANGED
    );
    let moved = server.registration("dev-1").unwrap();
    assert_eq!(moved.id, first.id, "same registration");
    assert_eq!(
        moved.peer_address,
        nat.public_address(),
        "the server follows the device"
    );
    assert_ne!(moved.peer_address, first.peer_address);
    let node = server
        .read("dev-1", LwM2mPath::ObjectInstance(3, 0), None)
        .await
        .unwrap();
    let LwM2mNode::ObjectInstance(instance) = node else {
        panic!()
    };
    assert_eq!(
        instance.resources[&0],
        LwM2mResource::single(0, Value::String("Roaming".into()))
    );

    // An observation made before the next rebinding goes on after it: the device's
    // notification is the first datagram from its new address.
    let (_, mut notifications) = server
        .observe("dev-1", LwM2mPath::Resource(3, 0, 9), None)
        .await
        .unwrap();
    let before = nat.public_address();
    nat.rebind().await;
    assert_eq!(endpoint.notify("/3/0/9", battery(64)).await.unwrap(), 1);
    let node = tokio::time::timeout(Duration::from_secs(5), notifications.next())
        .await
        .expect("the notification from the new address reaches the observer")
        .unwrap();
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(64)))
    );
    let moved = server.registration("dev-1").unwrap();
    assert_eq!(moved.peer_address, nat.public_address());
    assert_ne!(moved.peer_address, before);
    assert_eq!(endpoint.notify("/3/0/9", battery(63)).await.unwrap(), 1);
    let node = tokio::time::timeout(Duration::from_secs(5), notifications.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(63)))
    );
    server
        .read("dev-1", LwM2mPath::ObjectInstance(3, 0), None)
        .await
        .unwrap();
}

/// A per-call timeout is honoured, independent of the configured one: a device that
/// acknowledges but never answers costs the caller the time it chose.
#[tokio::test]
async fn a_call_with_its_own_timeout_gives_up_in_time() {
    let (_dir, server) = start_server().await;
    let (_, dtls) = server.local_addrs();
    let security = Security::DtlsClient {
        config: ClientConfig::new("identity-1", Psk::new(KEY.to_vec())),
        server: dtls.unwrap(),
    };
    let silent = |_: &Request| Reply::Pending(Box::pin(std::future::pending()));
    let endpoint = CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        security,
        Some(Arc::new(silent)),
    )
    .await
    .unwrap();
    let response = endpoint
        .request(dtls.unwrap(), register_message("dev-1", 300))
        .await
        .unwrap();
    assert_eq!(response.code, Code::CREATED);

    let started = std::time::Instant::now();
    let result = server
        .with_timeout(Duration::from_millis(400))
        .read("dev-1", LwM2mPath::Resource(3, 0, 0), None)
        .await;
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ServerError::Timeout(d)) if d == Duration::from_millis(400)),
        "{result:?}"
    );
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The server's own default is untouched.
    assert!(matches!(
        server
            .with_timeout(Duration::from_millis(50))
            .read("dev-1", LwM2mPath::Resource(3, 0, 0), None)
            .await,
        Err(ServerError::Timeout(d)) if d == Duration::from_millis(50)
    ));
}
