//! The client over real sockets on 127.0.0.1 against a small registration endpoint
//! written here on `cairn-transport`: it registers, answers a Read of /3/0, sends
//! notifications of /3/0/13 at pmin, and de-registers; over plain CoAP and DTLS-PSK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::objects::{
    Connectivity, DeviceInfo, DeviceObject, SecurityMode, SecurityObject, ServerInstance,
    standard_tree, system_time,
};
use cairn_client::{
    Client, ClientCore, Event, RegistrationEvent, RegistrationSettings, ServerConnection,
};
use cairn_coap::{Config, ContentFormat};
use cairn_dtls::{Psk, PskResolver, ServerConfig};
use cairn_lwm2m::{
    AttributeName, AttributeSet, AttributeValue, ClientRequest, CoapRequest, CoapResponse,
    LwM2mNode, LwM2mPath, ModelRegistry, NoModels, ResponseCode, ResponseContent, ServerRequest,
    Value,
};
use cairn_transport::{CoapEndpoint, Reply, Request, Security};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const IDENTITY: &[u8] = b"device-1";
const KEY: [u8; 16] = *b"0123456789abcdef";

struct OneKey;

impl PskResolver for OneKey {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        (identity == IDENTITY).then(|| Psk::new(KEY.to_vec()))
    }
}

/// A registration endpoint: Register → 2.01 `rd/1`, Update → 2.04, De-register → 2.02;
/// every request is reported with its sender.
async fn registrar(
    security: Security,
) -> (
    CoapEndpoint,
    mpsc::UnboundedReceiver<(SocketAddr, ClientRequest)>,
) {
    let (seen, requests) = mpsc::unbounded_channel();
    let handler = move |request: &Request| -> Reply {
        let Ok(coap) = CoapRequest::from_message(&request.message) else {
            return Reply::Ready(CoapResponse::new(ResponseCode::BAD_REQUEST).to_message());
        };
        let Ok(operation) = ClientRequest::from_coap(&coap, &NoModels) else {
            return Reply::Ready(CoapResponse::new(ResponseCode::NOT_FOUND).to_message());
        };
        let mut response = CoapResponse::new(operation.success_code());
        if let ClientRequest::Register { .. } = operation {
            response.location_path = vec!["rd".into(), "1".into()];
        }
        let _ = seen.send((request.peer, operation));
        Reply::Ready(response.to_message())
    };
    let endpoint = CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        security,
        Some(Arc::new(handler)),
    )
    .await
    .unwrap();
    (endpoint, requests)
}

async fn start_client(
    server: SocketAddr,
    psk: Option<(Vec<u8>, Psk)>,
) -> (
    oneshot::Sender<()>,
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<()>,
) {
    let models = Arc::new(ModelRegistry::with_core_models());
    let mut security = SecurityObject::new();
    let mode = if psk.is_some() {
        SecurityMode::PreSharedKey
    } else {
        SecurityMode::NoSec
    };
    security.add_server(format!("coap://{server}"), mode, IDENTITY, KEY.to_vec(), 1);
    let instance = ServerInstance {
        instance: 0,
        short_server_id: 1,
        lifetime: 300,
        binding: "U".into(),
        default_pmin: None,
        default_pmax: None,
    };
    let info = DeviceInfo {
        serial_number: "SN-42".into(),
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
        psk,
        certificate: None,
        settings: RegistrationSettings::new("device-1"),
        coap: Config::default(),
    };
    let client = Client::bind(ClientCore::new(tree), vec![connection])
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (events_tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        client
            .run(shutdown, |event| {
                let _ = events_tx.send(event.clone());
            })
            .await
            .unwrap();
    });
    (stop, events, task)
}

async fn exercise(security: Security, psk: Option<(Vec<u8>, Psk)>) {
    let models = ModelRegistry::with_core_models();
    let (server, mut requests) = registrar(security).await;
    let (stop, mut events, task) = start_client(server.local_addr(), psk).await;

    let (peer, register) = timeout(Duration::from_secs(10), requests.recv())
        .await
        .expect("Register in time")
        .unwrap();
    let ClientRequest::Register {
        endpoint,
        parameters,
        ..
    } = register
    else {
        panic!("expected Register, got {register:?}");
    };
    assert_eq!(endpoint, "device-1");
    assert_eq!(parameters.lifetime, Some(300));

    // Read /3/0 and check the decoded values.
    let read = ServerRequest::Read {
        path: LwM2mPath::ObjectInstance(3, 0),
        accept: Some(ContentFormat::SENML_CBOR),
    };
    let response = server
        .request(peer, read.to_coap(&models).unwrap().to_message())
        .await
        .unwrap();
    let decoded = read
        .decode_response(&CoapResponse::from_message(&response).unwrap(), &models)
        .unwrap();
    let ResponseContent::Node(LwM2mNode::ObjectInstance(device)) = decoded.content else {
        panic!("expected an instance, got {decoded:?}");
    };
    let single = |id: u16| match &device.resources[&id].value {
        cairn_lwm2m::ResourceValue::Single(value) => value.clone(),
        other => panic!("resource {id}: {other:?}"),
    };
    assert_eq!(single(0), Value::String("Cairn".into()));
    assert_eq!(single(2), Value::String("SN-42".into()));
    assert_eq!(single(9), Value::Integer(100));
    let Value::Time(time) = single(13) else {
        panic!("current time");
    };
    assert!((time - system_time()).abs() < 5);

    // Observe /3/0/13 with pmin = 1: notifications follow the clock.
    let path = LwM2mPath::Resource(3, 0, 13);
    let attributes = ServerRequest::WriteAttributes {
        path,
        attributes: AttributeSet::new().with(AttributeName::Pmin, AttributeValue::Unsigned(1)),
    };
    let written = server
        .request(peer, attributes.to_coap(&models).unwrap().to_message())
        .await
        .unwrap();
    assert_eq!(written.code, cairn_coap::Code::CHANGED);
    let observe = ServerRequest::Observe {
        path,
        accept: Some(ContentFormat::TEXT_PLAIN),
    };
    let (first, mut observation) = server
        .observe(peer, observe.to_coap(&models).unwrap().to_message())
        .await
        .unwrap();
    assert_eq!(first.code, cairn_coap::Code::CONTENT);
    let mut last: i64 = std::str::from_utf8(&first.payload)
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..2 {
        let notification = timeout(Duration::from_secs(5), observation.next())
            .await
            .expect("a notification within 5 s")
            .unwrap();
        let time: i64 = std::str::from_utf8(&notification.payload)
            .unwrap()
            .parse()
            .unwrap();
        assert!(time > last, "{time} after {last}");
        last = time;
    }
    observation.cancel().await;

    // Ctrl-C: the client de-registers.
    stop.send(()).unwrap();
    let deregister = loop {
        let (_, request) = timeout(Duration::from_secs(10), requests.recv())
            .await
            .expect("De-register in time")
            .unwrap();
        if !matches!(request, ClientRequest::Update { .. }) {
            break request;
        }
    };
    assert_eq!(
        deregister,
        ClientRequest::Deregister {
            location: vec!["rd".into(), "1".into()]
        }
    );
    timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let registered = events.iter().any(|e| {
        matches!(
            e,
            Event::Registration {
                event: RegistrationEvent::Registered { .. },
                ..
            }
        )
    });
    assert!(registered, "{events:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Registration {
            event: RegistrationEvent::Deregistered,
            ..
        }
    )));
    server.shutdown().await;
}

#[tokio::test]
async fn plain_coap_register_read_observe_deregister() {
    exercise(Security::NoSec, None).await;
}

#[tokio::test]
async fn dtls_psk_register_read_observe_deregister() {
    exercise(
        Security::DtlsServer(ServerConfig::new(Arc::new(OneKey))),
        Some((IDENTITY.to_vec(), Psk::new(KEY.to_vec()))),
    )
    .await;
}
