//! Cairn's LwM2M client library against Cairn's server over DTLS-PSK on 127.0.0.1: register,
//! read /3/0 in every content format, write, execute, create and delete, observe with
//! attributes, Send, and de-register.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::objects::{
    Connectivity, DeviceInfo, DeviceObject, SecurityMode as ClientSecurityMode, SecurityObject,
    ServerInstance, standard_tree, system_time,
};
use cairn_client::{Client, ClientCore, ClientHandle, RegistrationSettings, ServerConnection};
use cairn_coap::{Config, ContentFormat};
use cairn_dtls::Psk;
use cairn_lwm2m::node::{LwM2mNode, LwM2mObjectInstance, LwM2mResource, ResourceValue};
use cairn_lwm2m::{
    AttributeName, AttributeSet, AttributeValue, LwM2mPath, ModelRegistry, Value, WriteMode,
};
use cairn_server::{
    EmbeddedStore, LwM2mServer, SecurityInfo, SecurityMode, SecurityStore, ServerConfig,
    ServerEvent, Stores,
};
use cairn_store::{MasterKey, MasterKeySource, SecretBytes};
use tokio::sync::{broadcast, oneshot};
use tokio::time::timeout;

const IDENTITY: &str = "e2e-identity";
const KEY: &[u8] = b"end-to-end-key-0";

async fn start_server() -> (tempfile::TempDir, LwM2mServer) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        MasterKeySource::Key(MasterKey::from_bytes(&[3; 32])),
    )
    .unwrap();
    store
        .put_security_info(SecurityInfo {
            endpoint: "e2e-device".into(),
            mode: SecurityMode::Psk {
                identity: IDENTITY.as_bytes().to_vec(),
                key: SecretBytes::new(KEY.to_vec()),
            },
            created_at_ms: 0,
        })
        .await
        .unwrap();
    let config = ServerConfig {
        coap_listen: None,
        dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    (
        dir,
        LwM2mServer::start(config, Stores::embedded(store))
            .await
            .unwrap(),
    )
}

async fn start_client(
    server: SocketAddr,
) -> (
    ClientHandle,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let models = Arc::new(ModelRegistry::with_core_models());
    let mut security = SecurityObject::new();
    security.add_server(
        format!("coaps://{server}"),
        ClientSecurityMode::PreSharedKey,
        IDENTITY,
        KEY.to_vec(),
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
        manufacturer: "Cairn Devices".into(),
        serial_number: "E2E-1".into(),
        ..DeviceInfo::default()
    };
    let tree = standard_tree(
        models,
        cairn_lwm2m::Version::V1_1,
        security,
        &[instance],
        DeviceObject::new(info, system_time),
        &Connectivity::default(),
    );
    let connection = ServerConnection {
        short_server_id: 1,
        address: server,
        local_ip: None,
        psk: Some((IDENTITY.as_bytes().to_vec(), Psk::new(KEY.to_vec()))),
        certificate: None,
        settings: RegistrationSettings::new("e2e-device"),
        coap: Config::default(),
    };
    let client = Client::bind(ClientCore::new(tree), vec![connection])
        .await
        .unwrap();
    let handle = client.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        client.run(shutdown, |_| {}).await.unwrap();
    });
    (handle, stop, task)
}

async fn next_event<T>(
    events: &mut broadcast::Receiver<ServerEvent>,
    mut pick: impl FnMut(ServerEvent) -> Option<T>,
) -> T {
    timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(event) = events.recv().await {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        }
    })
    .await
    .expect("the event arrives")
}

fn string(instance: &LwM2mObjectInstance, id: u16) -> Option<&str> {
    match &instance.resources.get(&id)?.value {
        ResourceValue::Single(Value::String(s)) => Some(s),
        _ => None,
    }
}

#[tokio::test]
async fn client_and_server_over_dtls_psk() {
    let (_dir, server) = start_server().await;
    let mut events = server.events();
    let address = server.local_addrs().1.unwrap();
    let (client, stop, task) = start_client(address).await;
    let registered = next_event(&mut events, |e| match e {
        ServerEvent::Registered(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(registered.endpoint, "e2e-device");
    assert_eq!(registered.lwm2m_version, "1.1");

    // Read /3/0 in every structured format.
    for format in [
        ContentFormat::LWM2M_TLV,
        ContentFormat::SENML_JSON,
        ContentFormat::SENML_CBOR,
        ContentFormat::LWM2M_CBOR,
        ContentFormat::LWM2M_JSON,
    ] {
        let node = server
            .read("e2e-device", LwM2mPath::ObjectInstance(3, 0), Some(format))
            .await
            .unwrap();
        let LwM2mNode::ObjectInstance(instance) = node else {
            panic!("{format:?}")
        };
        assert_eq!(string(&instance, 0), Some("Cairn Devices"), "{format:?}");
        assert_eq!(string(&instance, 2), Some("E2E-1"), "{format:?}");
    }
    // Single values: text and opaque-free plain text.
    let node = server
        .read(
            "e2e-device",
            LwM2mPath::Resource(3, 0, 2),
            Some(ContentFormat::TEXT_PLAIN),
        )
        .await
        .unwrap();
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(2, Value::String("E2E-1".into())))
    );

    // Write the lifetime of the Server object, then read it back.
    let lifetime = LwM2mNode::Resource(LwM2mResource::single(1, Value::Integer(600)));
    server
        .write(
            "e2e-device",
            LwM2mPath::Resource(1, 0, 1),
            WriteMode::Replace,
            lifetime,
            None,
        )
        .await
        .unwrap();
    let node = server
        .read("e2e-device", LwM2mPath::Resource(1, 0, 1), None)
        .await
        .unwrap();
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(1, Value::Integer(600)))
    );

    // Execute reboot (the client reports it to its application).
    server
        .execute("e2e-device", LwM2mPath::Resource(3, 0, 4), Vec::new())
        .await
        .unwrap();

    // Create and delete an instance of a multi-instance object (Server, /1).
    let new_server = LwM2mObjectInstance::new(
        5,
        [
            LwM2mResource::single(0, Value::Integer(7)),
            LwM2mResource::single(1, Value::Integer(120)),
            LwM2mResource::single(6, Value::Boolean(false)),
            LwM2mResource::single(7, Value::String("U".into())),
        ],
    );
    server
        .create("e2e-device", LwM2mPath::Object(1), vec![new_server])
        .await
        .unwrap();
    let node = server
        .read("e2e-device", LwM2mPath::Resource(1, 5, 0), None)
        .await
        .unwrap();
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(0, Value::Integer(7)))
    );
    server
        .delete("e2e-device", LwM2mPath::ObjectInstance(1, 5))
        .await
        .unwrap();
    assert!(
        server
            .read("e2e-device", LwM2mPath::ObjectInstance(1, 5), None)
            .await
            .is_err()
    );

    // Create without an instance id (TLV): the client picks the lowest free one.
    let created = server
        .send_request(
            "e2e-device",
            cairn_lwm2m::ServerRequest::CreateWithoutId {
                path: LwM2mPath::Object(1),
                format: ContentFormat::LWM2M_TLV,
                resources: vec![
                    LwM2mResource::single(0, Value::Integer(8)),
                    LwM2mResource::single(1, Value::Integer(120)),
                    LwM2mResource::single(6, Value::Boolean(false)),
                    LwM2mResource::single(7, Value::String("U".into())),
                ],
            },
        )
        .await
        .unwrap();
    assert_eq!(created.code, cairn_lwm2m::ResponseCode::CREATED);
    assert_eq!(
        created.content,
        cairn_lwm2m::ResponseContent::Location(vec!["1".into(), "1".into()])
    );
    let node = server
        .read("e2e-device", LwM2mPath::Resource(1, 1, 0), None)
        .await
        .unwrap();
    assert_eq!(
        node,
        LwM2mNode::Resource(LwM2mResource::single(0, Value::Integer(8)))
    );

    // Observe the current time with pmin = pmax = 1 s: notifications come every second.
    let attributes = AttributeSet::new()
        .with(AttributeName::Pmin, AttributeValue::Unsigned(1))
        .with(AttributeName::Pmax, AttributeValue::Unsigned(1));
    server
        .write_attributes("e2e-device", LwM2mPath::Resource(3, 0, 13), attributes)
        .await
        .unwrap();
    let (first, mut notifications) = server
        .observe("e2e-device", LwM2mPath::Resource(3, 0, 13), None)
        .await
        .unwrap();
    let LwM2mNode::Resource(first) = first else {
        panic!()
    };
    for _ in 0..2 {
        let next = timeout(Duration::from_secs(10), notifications.next())
            .await
            .unwrap()
            .unwrap();
        let LwM2mNode::Resource(next) = next else {
            panic!()
        };
        assert_eq!(next.id, first.id);
    }
    notifications.cancel();

    // Send (/dp) of the battery level.
    client
        .send(cairn_client::ServerId(0), &[LwM2mPath::Resource(3, 0, 9)])
        .unwrap();
    let sent = next_event(&mut events, |e| match e {
        ServerEvent::Send { endpoint, nodes } => Some((endpoint, nodes)),
        _ => None,
    })
    .await;
    assert_eq!(sent.0, "e2e-device");
    assert!(
        sent.1.contains_key(&LwM2mPath::Resource(3, 0, 9)),
        "{:?}",
        sent.1
    );

    // Stopping the client de-registers it.
    stop.send(()).unwrap();
    task.await.unwrap();
    let gone = next_event(&mut events, |e| match e {
        ServerEvent::Deregistered(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(gone.endpoint, "e2e-device");
    assert!(server.registration("e2e-device").is_none());
}

/// Observe-Composite: the first response holds every path's value, and the notifications
/// that follow carry them all; a second composite of other paths is a separate observation.
#[tokio::test]
async fn observe_composite_streams_every_path() {
    let (_dir, server) = start_server().await;
    let address = server.local_addrs().1.unwrap();
    let mut events = server.events();
    let (_client, stop, task) = start_client(address).await;
    next_event(&mut events, |e| match e {
        ServerEvent::Registered(r) => Some(r),
        _ => None,
    })
    .await;

    // The clock changes every second; pmax = 1 s makes the manufacturer go out too.
    let attributes = AttributeSet::new()
        .with(AttributeName::Pmin, AttributeValue::Unsigned(1))
        .with(AttributeName::Pmax, AttributeValue::Unsigned(1));
    server
        .write_attributes("e2e-device", LwM2mPath::Resource(3, 0, 13), attributes)
        .await
        .unwrap();
    let paths = vec![LwM2mPath::Resource(3, 0, 0), LwM2mPath::Resource(3, 0, 13)];
    let (first, mut notifications) = server
        .observe_composite("e2e-device", paths.clone(), ContentFormat::SENML_CBOR)
        .await
        .unwrap();
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), paths);
    let (other_first, mut other) = server
        .observe_composite(
            "e2e-device",
            vec![LwM2mPath::Resource(3, 0, 1)],
            ContentFormat::SENML_JSON,
        )
        .await
        .unwrap();
    assert!(other_first.contains_key(&LwM2mPath::Resource(3, 0, 1)));
    let mut times = Vec::new();
    for _ in 0..2 {
        let next = timeout(Duration::from_secs(10), notifications.next())
            .await
            .expect("a notification within 10 s")
            .expect("the observation goes on");
        assert_eq!(next.keys().copied().collect::<Vec<_>>(), paths);
        let LwM2mNode::Resource(manufacturer) = &next[&LwM2mPath::Resource(3, 0, 0)] else {
            panic!("{next:?}")
        };
        assert_eq!(
            manufacturer.value,
            ResourceValue::Single(Value::String("Cairn Devices".into()))
        );
        times.push(next[&LwM2mPath::Resource(3, 0, 13)].clone());
    }
    assert_ne!(times[0], times[1], "the clock moved between notifications");
    // The other composite (serial number, no attributes) is not notified with the clock's
    // values: anything it gets carries its own path only.
    if let Ok(Some(nodes)) = timeout(Duration::from_millis(300), other.next()).await {
        assert_eq!(
            nodes.keys().copied().collect::<Vec<_>>(),
            vec![LwM2mPath::Resource(3, 0, 1)]
        );
    }
    notifications.cancel();
    drop(other);
    stop.send(()).unwrap();
    task.await.unwrap();
}
