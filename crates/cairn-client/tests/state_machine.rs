//! The client core driven with a fake clock: registration, Update timing, backoff, re-
//! registration, de-registration, queue mode, and the Device Management requests.

use std::sync::Arc;
use std::time::Duration;

use cairn_client::objects::{
    Connectivity, DeviceInfo, DeviceObject, SecurityObject, ServerInstance, standard_tree,
};
use cairn_client::{
    ClientCore, Event, OutgoingRequest, RegistrationEvent, RegistrationSettings, RegistrationState,
    RequestFailure, RetryPolicy, ServerId,
};
use cairn_coap::ContentFormat;
use cairn_lwm2m::{
    AttributeName, AttributeSet, AttributeValue, ClientRequest, CoapResponse, LwM2mNode, LwM2mPath,
    LwM2mResource, ModelRegistry, ResponseCode, ServerRequest, Value, Version, WriteMode,
};

fn seconds(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn clock() -> i64 {
    1_700_000_000
}

fn client(lifetime: u32, version: Version, queue_mode: bool) -> (ClientCore, ServerId) {
    let models = Arc::new(ModelRegistry::with_core_models());
    let server = ServerInstance {
        instance: 0,
        short_server_id: 1,
        lifetime,
        binding: "U".into(),
        default_pmin: None,
        default_pmax: None,
    };
    let tree = standard_tree(
        models,
        version,
        SecurityObject::new(),
        &[server],
        DeviceObject::new(DeviceInfo::default(), clock),
        &Connectivity::default(),
    );
    let mut core = ClientCore::new(tree);
    let mut settings = RegistrationSettings::new("device-1");
    settings.lifetime = lifetime;
    settings.queue_mode = queue_mode;
    settings.awake_time = seconds(30);
    settings.retry = RetryPolicy {
        initial: seconds(5),
        max: seconds(60),
        max_attempts: Some(6),
    };
    let id = core.add_server(1, settings);
    (core, id)
}

fn created(location: &[&str]) -> Result<CoapResponse, RequestFailure> {
    Ok(CoapResponse {
        location_path: location.iter().map(|s| (*s).to_owned()).collect(),
        ..CoapResponse::new(ResponseCode::CREATED)
    })
}

fn code(code: ResponseCode) -> Result<CoapResponse, RequestFailure> {
    Ok(CoapResponse::new(code))
}

fn request(core: &mut ClientCore, now: Duration) -> OutgoingRequest {
    core.handle_timeout(now);
    core.poll_request().expect("a request")
}

fn events(core: &mut ClientCore) -> Vec<RegistrationEvent> {
    std::iter::from_fn(|| core.poll_event())
        .filter_map(|e| match e {
            Event::Registration { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

fn register(core: &mut ClientCore, now: Duration) {
    let register = request(core, now);
    assert!(matches!(register.request, ClientRequest::Register { .. }));
    core.handle_response(now, register.token, created(&["rd", "a1"]));
}

fn state(core: &ClientCore, server: ServerId) -> RegistrationState {
    core.registration(server).unwrap().state().clone()
}

#[test]
fn registers_with_the_endpoint_lifetime_and_objects() {
    let (mut core, server) = client(60, Version::V1_1, false);
    assert_eq!(core.poll_timeout(), Some(Duration::ZERO));
    let register = request(&mut core, Duration::ZERO);
    assert_eq!(register.server, server);
    let coap = &register.coap;
    assert_eq!(coap.path, vec!["rd"]);
    for query in ["ep=device-1", "lt=60", "lwm2m=1.1", "b=U"] {
        assert!(
            coap.queries.iter().any(|q| q == query),
            "{query} in {:?}",
            coap.queries
        );
    }
    let payload = String::from_utf8(coap.payload.clone()).unwrap();
    assert!(payload.contains("</1/0>") && payload.contains("</3/0>") && payload.contains("</4/0>"));
    assert!(
        !payload.contains("</0/"),
        "Security is not registered: {payload}"
    );
    assert!(payload.starts_with("</>;rt=\"oma.lwm2m\";ct="), "{payload}");
    let parsed = ClientRequest::from_coap(coap, &cairn_lwm2m::NoModels).unwrap();
    let ClientRequest::Register { parameters, .. } = parsed else {
        panic!("a Register");
    };
    assert!(
        parameters
            .content_formats
            .contains(&ContentFormat::SENML_CBOR)
    );
    assert!(core.poll_request().is_none(), "one request at a time");

    core.handle_response(seconds(1), register.token, created(&["rd", "a1"]));
    let events = events(&mut core);
    assert!(events.contains(&RegistrationEvent::Registered {
        location: vec!["rd".into(), "a1".into()],
        latency: seconds(1),
    }));
    assert!(matches!(
        state(&core, server),
        RegistrationState::Registered { .. }
    ));
}

#[test]
fn updates_before_the_lifetime_expires() {
    let (mut core, server) = client(60, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    // 60 s lifetime: Update 10 s before expiry.
    assert_eq!(core.poll_timeout(), Some(seconds(50)));
    core.handle_timeout(seconds(49));
    assert!(core.poll_request().is_none());
    let update = request(&mut core, seconds(50));
    assert_eq!(
        update.request,
        ClientRequest::Update {
            location: vec!["rd".into(), "a1".into()],
            parameters: Default::default(),
        }
    );
    assert_eq!(update.coap.path, vec!["rd", "a1"]);
    core.handle_response(seconds(51), update.token, code(ResponseCode::CHANGED));
    assert!(events(&mut core).contains(&RegistrationEvent::Updated));
    assert_eq!(core.poll_timeout(), Some(seconds(101)));
    assert!(matches!(
        state(&core, server),
        RegistrationState::Registered { .. }
    ));

    // A long lifetime updates at 90 %.
    let settings = RegistrationSettings {
        lifetime: 86_400,
        ..RegistrationSettings::new("x")
    };
    assert_eq!(settings.update_delay(), seconds(77_760));
}

#[test]
fn backs_off_exponentially_after_timeouts_then_gives_up() {
    let (mut core, server) = client(60, Version::V1_1, false);
    let mut now = Duration::ZERO;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let register = request(&mut core, now);
        core.handle_response(now, register.token, Err(RequestFailure::Timeout));
        let retry_at = core.poll_timeout().unwrap();
        delays.push((retry_at - now).as_secs());
        core.handle_timeout(retry_at - Duration::from_millis(1));
        assert!(
            core.poll_request().is_none(),
            "no retry before the backoff ends"
        );
        now = retry_at;
    }
    assert_eq!(delays, vec![5, 10, 20, 40, 60]);
    let last = request(&mut core, now);
    core.handle_response(now, last.token, code(ResponseCode::SERVICE_UNAVAILABLE));
    assert_eq!(state(&core, server), RegistrationState::Failed);
    assert!(core.is_finished());
    assert!(core.poll_timeout().is_none());
}

#[test]
fn registers_again_when_an_update_gets_not_found() {
    let (mut core, _) = client(60, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    let update = request(&mut core, seconds(50));
    core.handle_response(seconds(50), update.token, code(ResponseCode::NOT_FOUND));
    let again = core.poll_request().expect("Register again at once");
    assert!(matches!(again.request, ClientRequest::Register { .. }));
    core.handle_response(seconds(51), again.token, created(&["rd", "b2"]));
    let update = request(&mut core, seconds(101));
    assert_eq!(update.coap.path, vec!["rd", "b2"]);
}

#[test]
fn update_failures_retry_until_the_lifetime_runs_out() {
    let (mut core, _) = client(60, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    let update = request(&mut core, seconds(50));
    core.handle_response(seconds(50), update.token, Err(RequestFailure::Timeout));
    assert_eq!(core.poll_timeout(), Some(seconds(55)));
    let update = request(&mut core, seconds(55));
    assert!(matches!(update.request, ClientRequest::Update { .. }));
    core.handle_response(seconds(55), update.token, Err(RequestFailure::Timeout));
    // The next retry (65 s) would come after expiry (60 s): register again.
    let again = core.poll_request().expect("Register");
    assert!(matches!(again.request, ClientRequest::Register { .. }));
}

#[test]
fn deregisters() {
    let (mut core, server) = client(60, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    core.deregister();
    let delete = core.poll_request().expect("De-register");
    assert_eq!(
        delete.request,
        ClientRequest::Deregister {
            location: vec!["rd".into(), "a1".into()]
        }
    );
    core.handle_response(seconds(1), delete.token, code(ResponseCode::DELETED));
    assert_eq!(state(&core, server), RegistrationState::Deregistered);
    assert!(events(&mut core).contains(&RegistrationEvent::Deregistered));
    assert!(core.is_finished());
}

#[test]
fn deregisters_after_a_register_in_flight() {
    let (mut core, server) = client(60, Version::V1_1, false);
    let register = request(&mut core, Duration::ZERO);
    core.deregister();
    assert!(core.poll_request().is_none());
    core.handle_response(seconds(1), register.token, created(&["rd", "a1"]));
    let delete = core.poll_request().expect("De-register");
    assert!(matches!(delete.request, ClientRequest::Deregister { .. }));
    core.handle_response(seconds(1), delete.token, Err(RequestFailure::Timeout));
    assert_eq!(state(&core, server), RegistrationState::Deregistered);
}

#[test]
fn queue_mode_sleeps_and_wakes_with_an_update() {
    let (mut core, server) = client(600, Version::V1_1, true);
    let register = request(&mut core, Duration::ZERO);
    assert!(register.coap.queries.iter().any(|q| q == "Q"));
    core.handle_response(Duration::ZERO, register.token, created(&["rd", "q"]));
    assert_eq!(core.poll_timeout(), Some(seconds(30)));
    core.handle_timeout(seconds(30));
    assert!(events(&mut core).contains(&RegistrationEvent::Sleeping));
    assert!(core.registration(server).unwrap().is_asleep());
    // A server request keeps the client awake for another period.
    let path = LwM2mPath::Resource(3, 0, 9);
    let observe = ServerRequest::Observe {
        path,
        accept: Some(ContentFormat::TEXT_PLAIN),
    };
    let response = core.serve(
        seconds(31),
        server,
        &observe.to_coap(core.objects()).unwrap(),
    );
    assert_eq!(response.code, ResponseCode::CONTENT);
    assert!(!core.registration(server).unwrap().is_asleep());
    core.handle_timeout(seconds(61));
    assert!(core.registration(server).unwrap().is_asleep());
    // An observed value changes while asleep: the client wakes with an Update.
    core.objects_mut()
        .object_mut::<DeviceObject>(3)
        .unwrap()
        .set_battery_level(50);
    core.changed(seconds(70), &path);
    let notification = core.poll_notification(seconds(70)).expect("a notification");
    assert_eq!(notification.response.payload, b"50");
    core.handle_timeout(seconds(70));
    let update = core.poll_request().expect("an Update wakes the client");
    assert!(matches!(update.request, ClientRequest::Update { .. }));

    // LwM2M 1.0 writes queue mode into the binding.
    let (mut core, _) = client(600, Version::V1_0, true);
    let register = request(&mut core, Duration::ZERO);
    assert!(register.coap.queries.iter().any(|q| q == "b=UQ"));
}

fn serve(
    core: &mut ClientCore,
    server: ServerId,
    now: Duration,
    request: &ServerRequest,
) -> CoapResponse {
    let coap = request.to_coap(core.objects()).unwrap();
    core.serve(now, server, &coap)
}

#[test]
fn answers_reads_in_every_format_and_by_version() {
    let (mut core, server) = client(60, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    let path = LwM2mPath::ObjectInstance(3, 0);
    for format in [
        ContentFormat::LWM2M_TLV,
        ContentFormat::SENML_JSON,
        ContentFormat::SENML_CBOR,
        ContentFormat::LWM2M_CBOR,
        ContentFormat::LWM2M_JSON,
    ] {
        let read = ServerRequest::Read {
            path,
            accept: Some(format),
        };
        let response = serve(&mut core, server, seconds(1), &read);
        assert_eq!(response.code, ResponseCode::CONTENT, "{format}");
        assert_eq!(response.content_format, Some(format));
        let decoded = read.decode_response(&response, core.objects()).unwrap();
        let cairn_lwm2m::ResponseContent::Node(LwM2mNode::ObjectInstance(instance)) =
            decoded.content
        else {
            panic!("an instance");
        };
        assert_eq!(
            instance.resources[&0],
            LwM2mResource::single(0, Value::String("Cairn".into()))
        );
        assert_eq!(
            instance.resources[&13],
            LwM2mResource::single(13, Value::Time(1_700_000_000))
        );
    }
    let default = serve(
        &mut core,
        server,
        seconds(1),
        &ServerRequest::Read { path, accept: None },
    );
    assert_eq!(default.content_format, Some(ContentFormat::SENML_CBOR));
    let text_of_instance = serve(
        &mut core,
        server,
        seconds(1),
        &ServerRequest::Read {
            path,
            accept: Some(ContentFormat::TEXT_PLAIN),
        },
    );
    assert_eq!(text_of_instance.code, ResponseCode::NOT_ACCEPTABLE);
    let security = serve(
        &mut core,
        server,
        seconds(1),
        &ServerRequest::Read {
            path: LwM2mPath::Object(0),
            accept: None,
        },
    );
    assert_eq!(security.code, ResponseCode::UNAUTHORIZED);

    let (mut core, server) = client(60, Version::V1_0, false);
    let default = serve(
        &mut core,
        server,
        seconds(1),
        &ServerRequest::Read { path, accept: None },
    );
    assert_eq!(default.content_format, Some(ContentFormat::LWM2M_TLV));
}

#[test]
fn writes_execute_discover_and_attributes() {
    let (mut core, server) = client(60, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    // Writing the lifetime sends an Update carrying it.
    let write = ServerRequest::Write {
        path: LwM2mPath::Resource(1, 0, 1),
        mode: WriteMode::Replace,
        format: ContentFormat::TEXT_PLAIN,
        node: LwM2mNode::Resource(LwM2mResource::single(1, Value::Integer(120))),
    };
    assert_eq!(
        serve(&mut core, server, seconds(1), &write).code,
        ResponseCode::CHANGED
    );
    let update = request(&mut core, seconds(1));
    assert!(update.coap.queries.iter().any(|q| q == "lt=120"));
    core.handle_response(seconds(1), update.token, code(ResponseCode::CHANGED));

    // Read-only resources refuse writes.
    let write = ServerRequest::Write {
        path: LwM2mPath::Resource(3, 0, 0),
        mode: WriteMode::Replace,
        format: ContentFormat::TEXT_PLAIN,
        node: LwM2mNode::Resource(LwM2mResource::single(0, Value::String("x".into()))),
    };
    assert_eq!(
        serve(&mut core, server, seconds(2), &write).code,
        ResponseCode::METHOD_NOT_ALLOWED
    );

    // Registration Update Trigger.
    let trigger = ServerRequest::Execute {
        path: LwM2mPath::Resource(1, 0, 8),
        arguments: vec![],
    };
    assert_eq!(
        serve(&mut core, server, seconds(3), &trigger).code,
        ResponseCode::CHANGED
    );
    let update = request(&mut core, seconds(3));
    assert!(matches!(update.request, ClientRequest::Update { .. }));
    core.handle_response(seconds(3), update.token, code(ResponseCode::CHANGED));

    // Reboot surfaces as an action.
    let reboot = ServerRequest::Execute {
        path: LwM2mPath::Resource(3, 0, 4),
        arguments: vec![],
    };
    assert_eq!(
        serve(&mut core, server, seconds(4), &reboot).code,
        ResponseCode::CHANGED
    );
    let actions: Vec<Event> = std::iter::from_fn(|| core.poll_event())
        .filter(|e| matches!(e, Event::Action(_)))
        .collect();
    assert_eq!(
        actions.last(),
        Some(&Event::Action(cairn_client::ClientAction::Reboot))
    );

    // Write-Attributes shows in Discover.
    let attributes = ServerRequest::WriteAttributes {
        path: LwM2mPath::Resource(3, 0, 9),
        attributes: AttributeSet::new().with(AttributeName::Pmin, AttributeValue::Unsigned(10)),
    };
    assert_eq!(
        serve(&mut core, server, seconds(5), &attributes).code,
        ResponseCode::CHANGED
    );
    let missing = ServerRequest::WriteAttributes {
        path: LwM2mPath::ObjectInstance(3, 7),
        attributes: AttributeSet::new().with(AttributeName::Pmin, AttributeValue::Unsigned(10)),
    };
    assert_eq!(
        serve(&mut core, server, seconds(5), &missing).code,
        ResponseCode::NOT_FOUND
    );
    let discover = ServerRequest::Discover {
        path: LwM2mPath::ObjectInstance(3, 0),
    };
    let response = serve(&mut core, server, seconds(5), &discover);
    let links = String::from_utf8(response.payload).unwrap();
    assert!(links.contains("</3/0/9>;pmin=10"), "{links}");
    assert!(links.contains("</3/0/11>;dim=1"), "{links}");
}

#[test]
fn observations_follow_pmin_pmax_and_steps() {
    let (mut core, server) = client(600, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    let path = LwM2mPath::Resource(3, 0, 9);
    let attributes = ServerRequest::WriteAttributes {
        path,
        attributes: AttributeSet::new()
            .with(AttributeName::Pmin, AttributeValue::Unsigned(5))
            .with(AttributeName::Pmax, AttributeValue::Unsigned(60))
            .with(AttributeName::St, AttributeValue::Float(10.0)),
    };
    serve(&mut core, server, Duration::ZERO, &attributes);
    let observe = ServerRequest::Observe {
        path,
        accept: Some(ContentFormat::TEXT_PLAIN),
    };
    let first = serve(&mut core, server, Duration::ZERO, &observe);
    assert_eq!(first.payload, b"100");

    let set_battery = |core: &mut ClientCore, percent: u8, now: Duration| {
        core.objects_mut()
            .object_mut::<DeviceObject>(3)
            .unwrap()
            .set_battery_level(percent);
        core.changed(now, &path);
    };
    set_battery(&mut core, 95, seconds(1));
    assert!(
        core.poll_notification(seconds(1)).is_none(),
        "pmin holds it back"
    );
    assert!(
        core.poll_notification(seconds(5)).is_none(),
        "a change under st"
    );
    set_battery(&mut core, 85, seconds(6));
    let stepped = core.poll_notification(seconds(6)).expect("a step of 15");
    assert_eq!(stepped.path, "/3/0/9");
    assert_eq!(stepped.response.payload, b"85");
    assert!(core.poll_notification(seconds(30)).is_none());
    let forced = core
        .poll_notification(seconds(66))
        .expect("pmax forces one");
    assert_eq!(forced.response.payload, b"85");

    let cancel = ServerRequest::CancelObservation { path, accept: None };
    serve(&mut core, server, seconds(61), &cancel);
    assert!(core.poll_notification(seconds(200)).is_none());
}

#[test]
fn sends_values_with_senml_cbor() {
    let (mut core, server) = client(60, Version::V1_1, false);
    assert!(
        core.send(server, &[LwM2mPath::Resource(3, 0, 9)]).is_err(),
        "not registered yet"
    );
    register(&mut core, Duration::ZERO);
    core.send(
        server,
        &[LwM2mPath::Resource(3, 0, 9), LwM2mPath::Resource(3, 0, 13)],
    )
    .unwrap();
    let send = core.poll_request().expect("Send");
    assert_eq!(send.coap.path, vec!["dp"]);
    assert_eq!(send.coap.content_format, Some(ContentFormat::SENML_CBOR));
    let ClientRequest::Send { nodes, .. } =
        ClientRequest::from_coap(&send.coap, core.objects()).unwrap()
    else {
        panic!("a Send");
    };
    assert_eq!(
        nodes[&LwM2mPath::Resource(3, 0, 9)],
        LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(100)))
    );
    core.handle_response(seconds(1), send.token, code(ResponseCode::CHANGED));
    let completed: Vec<Event> = std::iter::from_fn(|| core.poll_event())
        .filter(|e| matches!(e, Event::SendCompleted { .. }))
        .collect();
    assert_eq!(
        completed,
        vec![Event::SendCompleted {
            server,
            result: Ok(ResponseCode::CHANGED)
        }]
    );
    let (mut old, server) = client(60, Version::V1_0, false);
    register(&mut old, Duration::ZERO);
    assert!(old.send(server, &[LwM2mPath::Resource(3, 0, 9)]).is_err());
}

#[test]
fn several_servers_register_independently() {
    let models = Arc::new(ModelRegistry::with_core_models());
    let instance = |instance: u16, short_server_id: u16| ServerInstance {
        instance,
        short_server_id,
        lifetime: 60,
        binding: "U".into(),
        default_pmin: None,
        default_pmax: None,
    };
    let tree = standard_tree(
        models,
        Version::V1_1,
        SecurityObject::new(),
        &[instance(0, 1), instance(1, 2)],
        DeviceObject::new(DeviceInfo::default(), clock),
        &Connectivity::default(),
    );
    let mut core = ClientCore::new(tree);
    let first = core.add_server(1, RegistrationSettings::new("multi"));
    let second = core.add_server(2, RegistrationSettings::new("multi"));
    core.handle_timeout(Duration::ZERO);
    let a = core.poll_request().unwrap();
    let b = core.poll_request().unwrap();
    assert_eq!((a.server, b.server), (first, second));
    core.handle_response(Duration::ZERO, a.token, created(&["rd", "a"]));
    core.handle_response(Duration::ZERO, b.token, Err(RequestFailure::Timeout));
    assert!(matches!(
        state(&core, first),
        RegistrationState::Registered { .. }
    ));
    assert!(matches!(
        state(&core, second),
        RegistrationState::Backoff { .. }
    ));

    // Disable (/1/0/4) de-registers from server 1 only.
    let disable = ServerRequest::Execute {
        path: LwM2mPath::Resource(1, 0, 4),
        arguments: vec![],
    };
    assert_eq!(
        serve(&mut core, first, seconds(1), &disable).code,
        ResponseCode::CHANGED
    );
    let delete = core.poll_request().expect("De-register");
    assert_eq!(delete.server, first);
    assert!(matches!(delete.request, ClientRequest::Deregister { .. }));
    core.handle_response(seconds(1), delete.token, code(ResponseCode::DELETED));
    assert_eq!(state(&core, first), RegistrationState::Deregistered);
    let retry = request(&mut core, seconds(5));
    assert_eq!(retry.server, second);
}

#[test]
fn create_and_delete_update_the_registration() {
    let (mut core, server) = client(600, Version::V1_1, false);
    register(&mut core, Duration::ZERO);
    let entry = cairn_lwm2m::LwM2mObjectInstance::new(
        0,
        [
            LwM2mResource::single(0, Value::Integer(3)),
            LwM2mResource::single(1, Value::Integer(0)),
            LwM2mResource::single(3, Value::Integer(1)),
        ],
    );
    let create = ServerRequest::Create {
        path: LwM2mPath::Object(2),
        format: ContentFormat::LWM2M_TLV,
        instances: vec![entry],
    };
    let response = serve(&mut core, server, seconds(1), &create);
    assert_eq!(response.code, ResponseCode::CREATED);
    assert_eq!(response.location_path, vec!["2", "0"]);
    let update = request(&mut core, seconds(1));
    let payload = String::from_utf8(update.coap.payload.clone()).unwrap();
    assert!(payload.contains("</2/0>"), "{payload}");
    core.handle_response(seconds(1), update.token, code(ResponseCode::CHANGED));

    let composite = ServerRequest::ReadComposite {
        paths: vec![LwM2mPath::Resource(2, 0, 3), LwM2mPath::Resource(3, 0, 0)],
        format: ContentFormat::SENML_CBOR,
        accept: Some(ContentFormat::SENML_JSON),
    };
    let response = serve(&mut core, server, seconds(2), &composite);
    assert_eq!(response.code, ResponseCode::CONTENT);
    let text = String::from_utf8(response.payload).unwrap();
    assert!(text.contains("/2/0/3") && text.contains("Cairn"), "{text}");

    let delete = ServerRequest::Delete {
        path: LwM2mPath::ObjectInstance(2, 0),
    };
    assert_eq!(
        serve(&mut core, server, seconds(3), &delete).code,
        ResponseCode::DELETED
    );
    let update = request(&mut core, seconds(3));
    let payload = String::from_utf8(update.coap.payload.clone()).unwrap();
    assert!(
        !payload.contains("</2/0>") && payload.contains("</2>"),
        "{payload}"
    );
    let delete_device = ServerRequest::Delete {
        path: LwM2mPath::ObjectInstance(3, 0),
    };
    assert_eq!(
        serve(&mut core, server, seconds(4), &delete_device).code,
        ResponseCode::METHOD_NOT_ALLOWED
    );
}

#[test]
fn access_control_arbitrates_between_servers() {
    use cairn_client::objects::{AccessControlEntry, access_control_object};
    let models = Arc::new(ModelRegistry::with_core_models());
    let instance = |instance: u16, short_server_id: u16| ServerInstance {
        instance,
        short_server_id,
        lifetime: 60,
        binding: "U".into(),
        default_pmin: None,
        default_pmax: None,
    };
    let mut tree = standard_tree(
        models,
        Version::V1_1,
        SecurityObject::new(),
        &[instance(0, 1), instance(1, 2)],
        DeviceObject::new(DeviceInfo::default(), clock),
        &Connectivity::default(),
    );
    // Server 1 owns the Device object instance; server 2 may only read it.
    tree.add(access_control_object(&[AccessControlEntry {
        object_id: 3,
        instance_id: 0,
        acl: vec![(2, 1)],
        owner: 1,
    }]));
    let mut core = ClientCore::new(tree);
    let owner = core.add_server(1, RegistrationSettings::new("acl"));
    let reader = core.add_server(2, RegistrationSettings::new("acl"));
    let read = ServerRequest::Read {
        path: LwM2mPath::Resource(3, 0, 0),
        accept: Some(ContentFormat::TEXT_PLAIN),
    };
    let reboot = ServerRequest::Execute {
        path: LwM2mPath::Resource(3, 0, 4),
        arguments: vec![],
    };
    assert_eq!(
        serve(&mut core, reader, seconds(0), &read).code,
        ResponseCode::CONTENT
    );
    assert_eq!(
        serve(&mut core, reader, seconds(0), &reboot).code,
        ResponseCode::UNAUTHORIZED
    );
    assert_eq!(
        serve(&mut core, owner, seconds(0), &reboot).code,
        ResponseCode::CHANGED
    );
    // No entry for the Connectivity Monitoring instance: nobody may read it.
    let connectivity = ServerRequest::Read {
        path: LwM2mPath::ObjectInstance(4, 0),
        accept: None,
    };
    assert_eq!(
        serve(&mut core, owner, seconds(0), &connectivity).code,
        ResponseCode::UNAUTHORIZED
    );
    // Each server reaches its own Server object instance only.
    let trigger = |instance| ServerRequest::Execute {
        path: LwM2mPath::Resource(1, instance, 8),
        arguments: vec![],
    };
    assert_eq!(
        serve(&mut core, reader, seconds(0), &trigger(1)).code,
        ResponseCode::CHANGED
    );
    assert_eq!(
        serve(&mut core, reader, seconds(0), &trigger(0)).code,
        ResponseCode::UNAUTHORIZED
    );
}
