//! The device API against a real Cairn client registered over DTLS-PSK on 127.0.0.1: the fleet
//! list, the object tree, every device-management operation through JSON, observation with
//! live events, composite operations, security info without secrets, and device deletion.
//! Also: no secret in any API answer or log line.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use cairn_client::objects::{
    Connectivity, DeviceInfo, DeviceObject, SecurityMode as ClientSecurityMode, SecurityObject,
    ServerInstance, standard_tree, system_time,
};
use cairn_client::{Client, ClientCore, RegistrationSettings, ServerConnection};
use cairn_dtls::Psk;
use cairn_lwm2m::ModelRegistry;
use cairn_server::{SecurityInfo, SecurityMode, SecurityStore, ServerEvent};
use cairn_store::{Role, SecretBytes};
use http_body_util::BodyExt;
use serde_json::json;
use support::{Auth, Harness, PASSWORD};
use tokio::sync::oneshot;

const ENDPOINT: &str = "web-device";
const IDENTITY: &str = "web-device-identity";
const KEY: &[u8] = b"web-device-key-0";

async fn harness_with_device() -> Harness {
    support::harness_full(
        |_| {},
        |store| {
            let store = store.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(store.put_security_info(SecurityInfo {
                        endpoint: ENDPOINT.into(),
                        mode: SecurityMode::Psk {
                            identity: IDENTITY.as_bytes().to_vec(),
                            key: SecretBytes::new(KEY.to_vec()),
                        },
                        created_at_ms: 0,
                    }))
                    .unwrap();
            })
            .join()
            .unwrap();
        },
    )
    .await
}

struct Device {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

async fn start_device(h: &Harness) -> Device {
    let mut events = h.server.events();
    let server: SocketAddr = h.server.local_addrs().1.unwrap();
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
        serial_number: "WEB-1".into(),
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
        settings: RegistrationSettings::new(ENDPOINT),
        coap: cairn_coap::Config::default(),
        certificate: None,
    };
    let client = Client::bind(ClientCore::new(tree), vec![connection])
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = client.run(shutdown, |_| {}).await;
    });
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(ServerEvent::Registered(r)) = events.recv().await {
                if r.endpoint == ENDPOINT {
                    return;
                }
            }
        }
    })
    .await
    .expect("the device registers");
    Device {
        stop: Some(stop),
        task,
    }
}

fn base(path: &str) -> String {
    format!("/api/devices/{ENDPOINT}{path}")
}

#[tokio::test]
async fn operations_on_a_registered_device() {
    let h = harness_with_device().await;
    let (admin, [viewer, operator, _]) = h.admin_and_tokens().await;
    let background = h.state.spawn_background();
    let device = start_device(&h).await;

    // The fleet: filter by substring and status, paginate.
    let list = h
        .call(Method::GET, "/api/devices", &viewer, None)
        .await
        .json();
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["endpoint"], ENDPOINT);
    assert_eq!(list["items"][0]["status"], "registered");
    let none = h
        .call(Method::GET, "/api/devices?q=nothing", &viewer, None)
        .await
        .json();
    assert_eq!(none["total"], 0);
    let by_status = h
        .call(
            Method::GET,
            "/api/devices?q=WEB&status=registered",
            &viewer,
            None,
        )
        .await
        .json();
    assert_eq!(by_status["total"], 1);
    let offline = h
        .call(Method::GET, "/api/devices?status=offline", &viewer, None)
        .await
        .json();
    assert_eq!(offline["total"], 0);

    // The object tree, named by the models.
    let detail = h.call(Method::GET, &base(""), &viewer, None).await.json();
    let objects = detail["objects"].as_array().unwrap();
    let device_object = objects.iter().find(|o| o["id"] == 3).unwrap();
    assert_eq!(device_object["name"], "Device");
    assert_eq!(device_object["instances"], json!([0]));
    let time = device_object["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == 13)
        .unwrap();
    assert_eq!(time["name"], "Current Time");
    assert_eq!(time["type"], "Time");
    assert_eq!(time["operations"], "RW");

    // Read /3/0 as JSON.
    let read = h
        .call(Method::GET, &base("/read?path=/3/0"), &viewer, None)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.json()["value"]["resources"]["0"], "Cairn Devices");
    assert_eq!(read.json()["value"]["resources"]["2"], "WEB-1");

    // Write a string typed by the model, read it back.
    let write = h
        .call(
            Method::POST,
            &base("/write"),
            &operator,
            Some(json!({"path": "/3/0/14", "value": "+02"})),
        )
        .await;
    assert_eq!(write.status, StatusCode::OK, "{}", write.text);
    let back = h
        .call(Method::GET, &base("/read?path=/3/0/14"), &viewer, None)
        .await
        .json();
    assert_eq!(back["value"], "+02");
    // An integer resource written as a JSON string is typed by the model.
    let lifetime = h
        .call(
            Method::POST,
            &base("/write"),
            &operator,
            Some(json!({"path": "/1/0/1", "value": "120"})),
        )
        .await;
    assert_eq!(lifetime.status, StatusCode::OK, "{}", lifetime.text);
    assert_eq!(
        h.call(Method::GET, &base("/read?path=/1/0/1"), &viewer, None)
            .await
            .json()["value"],
        120
    );
    let wrong_type = h
        .call(
            Method::POST,
            &base("/write"),
            &operator,
            Some(json!({"path": "/1/0/1", "value": "soon"})),
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong_type.error_code(), "invalid_value");

    // Execute, create, delete.
    let exec = h
        .call(
            Method::POST,
            &base("/execute"),
            &operator,
            Some(json!({"path": "/3/0/4"})),
        )
        .await;
    assert_eq!(exec.status, StatusCode::OK, "{}", exec.text);
    let created = h
        .call(
            Method::POST,
            &base("/create"),
            &operator,
            Some(json!({"path": "/1", "instance_id": 5, "resources": {"0": 7, "1": 120, "6": false, "7": "U"}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(
        h.call(Method::GET, &base("/read?path=/1/5/0"), &viewer, None)
            .await
            .json()["value"],
        7
    );
    let deleted = h
        .call(
            Method::POST,
            &base("/delete"),
            &operator,
            Some(json!({"path": "/1/5"})),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    let gone = h
        .call(Method::GET, &base("/read?path=/1/5"), &viewer, None)
        .await;
    assert_eq!(gone.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(gone.error_code(), "device_refused");

    // Discover and composite operations.
    let links = h
        .call(Method::GET, &base("/discover?path=/3"), &viewer, None)
        .await;
    assert_eq!(links.status, StatusCode::OK, "{}", links.text);
    assert!(
        links
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["path"] == "/3/0/13")
    );
    let composite = h
        .call(
            Method::POST,
            &base("/read-composite"),
            &viewer,
            Some(json!({"paths": ["/3/0/0", "/3/0/14"]})),
        )
        .await;
    assert_eq!(composite.status, StatusCode::OK, "{}", composite.text);
    assert_eq!(composite.json()["/3/0/0"], "Cairn Devices");
    let written = h
        .call(
            Method::POST,
            &base("/write-composite"),
            &operator,
            Some(json!({"values": {"/3/0/14": "+03"}})),
        )
        .await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text);
    assert_eq!(
        h.call(Method::GET, &base("/read?path=/3/0/14"), &viewer, None)
            .await
            .json()["value"],
        "+03"
    );

    // Observe the clock every second; the notifications come over /api/events.
    let attributes = h
        .call(
            Method::POST,
            &base("/write-attributes"),
            &operator,
            Some(json!({"path": "/3/0/13", "attributes": {"pmin": 1, "pmax": 1}})),
        )
        .await;
    assert_eq!(attributes.status, StatusCode::OK, "{}", attributes.text);
    let Auth::Bearer(viewer_token) = &viewer else {
        unreachable!()
    };
    let request = Request::builder()
        .uri(format!("/api/events?endpoint={ENDPOINT}"))
        .header(header::AUTHORIZATION, format!("Bearer {viewer_token}"))
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(h.router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.into_body();
    let observed = h
        .call(
            Method::POST,
            &base("/observations"),
            &operator,
            Some(json!({"path": "/3/0/13"})),
        )
        .await;
    assert_eq!(observed.status, StatusCode::OK, "{}", observed.text);
    let first = observed.json()["value"].as_i64().unwrap();
    let later = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        loop {
            let frame = body.frame().await.unwrap().unwrap();
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
            for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
                let event: serde_json::Value = serde_json::from_str(line).unwrap();
                if event["type"] == "notification" && event["path"] == "/3/0/13" {
                    let value = event["value"].as_i64().unwrap();
                    if value > first {
                        return value;
                    }
                }
            }
        }
    })
    .await
    .expect("a notification with a later time arrives");
    assert!(later > first);
    let list = h
        .call(Method::GET, &base("/observations"), &viewer, None)
        .await
        .json();
    assert_eq!(list[0]["path"], "/3/0/13");
    let samples = h
        .call(Method::GET, &base("/samples"), &viewer, None)
        .await
        .json();
    assert!(!samples.as_array().unwrap().is_empty());
    let cancelled = h
        .call(
            Method::DELETE,
            &base("/observations?path=/3/0/13"),
            &operator,
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::NO_CONTENT);
    let again = h
        .call(
            Method::DELETE,
            &base("/observations?path=/3/0/13"),
            &operator,
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    // Operations were audited with their actor and target.
    let audit = h
        .call(Method::GET, "/api/audit?limit=1000", &admin, None)
        .await
        .json();
    let actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "device.write web-device /3/0/14",
        "device.execute web-device /3/0/4",
        "device.create web-device /1/5",
        "device.delete_instance web-device /1/5",
        "device.write_attributes web-device /3/0/13",
        "device.observe web-device /3/0/13",
        "device.cancel_observation web-device /3/0/13",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} not in {actions:?}"
        );
    }

    // The fleet table fragment htmx refreshes: filtered, and 401 + HX-Redirect once signed out.
    let request = Request::builder()
        .uri("/fleet/rows?q=web&status=registered")
        .header(
            header::COOKIE,
            format!("cairn_session={}", admin.session_id()),
        )
        .body(Body::empty())
        .unwrap();
    let rows = h.send(request, support::PEER).await;
    assert_eq!(rows.status, StatusCode::OK);
    assert!(rows.text.contains(&format!("href=\"/devices/{ENDPOINT}\"")));
    assert!(rows.text.contains("1 devices match"));
    let rows = h.call(Method::GET, "/fleet/rows?q=zzz", &admin, None).await;
    assert!(rows.text.contains("0 devices match"));
    let anonymous = h.call(Method::GET, "/fleet/rows", &Auth::None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers.get("hx-redirect").unwrap(), "/login");

    // The device page renders the model-aware tree.
    let request = Request::builder()
        .uri(format!("/devices/{ENDPOINT}"))
        .header(
            header::COOKIE,
            format!("cairn_session={}", admin.session_id()),
        )
        .body(Body::empty())
        .unwrap();
    let page = h.send(request, support::PEER).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("Current Time"));
    assert!(
        page.text
            .contains("data-op=\"execute\" data-path=\"/3/0/4\"")
    );

    // Deleting the device removes its security info and what the web side kept.
    let removed = h.call(Method::DELETE, &base(""), &admin, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    assert!(h.store.get_security_info(ENDPOINT).await.unwrap().is_none());
    assert!(h.server.registration(ENDPOINT).is_none());
    let list = h
        .call(Method::GET, "/api/devices", &viewer, None)
        .await
        .json();
    assert_eq!(list["total"], 0);
    let samples = h
        .call(Method::GET, &base("/samples"), &viewer, None)
        .await
        .json();
    assert!(samples.as_array().unwrap().is_empty());
    device.stop().await;
    background.abort();
}

#[tokio::test]
async fn telemetry_is_dropped_after_the_retention() {
    let h = support::harness_with(|c| c.telemetry_retention = Duration::from_secs(3600)).await;
    let (_, [viewer, _, _]) = h.admin_and_tokens().await;
    let observed = h
        .call(Method::GET, &base("/samples"), &viewer, None)
        .await
        .json();
    assert!(observed.as_array().unwrap().is_empty());
    h.state.record_sample(ENDPOINT, "/3/0/13".into(), json!(1));
    let kept = h
        .call(Method::GET, &base("/samples"), &viewer, None)
        .await
        .json();
    assert_eq!(kept.as_array().unwrap().len(), 1);
    h.advance_ms(3600 * 1000 + 1);
    h.state.sweep().await;
    let dropped = h
        .call(Method::GET, &base("/samples"), &viewer, None)
        .await
        .json();
    assert!(dropped.as_array().unwrap().is_empty());
}

/// Log lines written by the code under test, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_an_answer_or_a_log_line() {
    // Global: the server's tasks and the blocking pool log from other threads. Other tests
    // of this binary log into it too, which only makes the check stricter.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let h = harness_with_device().await;
    let device = start_device(&h).await;
    let link = h.state.issue_setup_link().await.unwrap();
    let setup_token = link.split("token=").nth(1).unwrap().to_owned();
    let mut answers = Vec::new();
    let created = h
        .call(
            Method::POST,
            "/api/setup",
            &Auth::None,
            Some(json!({"token": setup_token, "username": "root", "password": PASSWORD})),
        )
        .await;
    let session_id = created.session_cookie().unwrap();
    let pending = Auth::Session {
        id: session_id.clone(),
        csrf: created.json()["csrf_token"].as_str().map(str::to_owned),
    };
    answers.push(created.text.clone());
    let enrol = h
        .call(Method::POST, "/api/auth/totp/enrol", &pending, None)
        .await;
    let totp_secret = enrol.json()["secret"].as_str().unwrap().to_owned();
    let secret = data_encoding::BASE32_NOPAD
        .decode(totp_secret.as_bytes())
        .unwrap();
    let confirmed = h
        .call(
            Method::POST,
            "/api/auth/totp/confirm",
            &pending,
            Some(json!({"code": h.code(&secret)})),
        )
        .await;
    let recovery: Vec<String> = confirmed.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let admin = Auth::Session {
        id: confirmed.session_cookie().unwrap(),
        csrf: confirmed.json()["csrf_token"].as_str().map(str::to_owned),
    };
    let token = h.token(&admin, "admin").await;
    let Auth::Bearer(token_secret) = token.clone() else {
        unreachable!()
    };

    let psk_hex = "00112233445566778899aabbccddeeff0123";
    let added = h
        .call(
            Method::POST,
            "/api/security",
            &token,
            Some(json!({"endpoint": "new-device", "mode": "psk", "identity": "new-id", "key_hex": psk_hex})),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    assert!(
        added.json()["key_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    answers.push(added.text.clone());
    h.add_user("viewer1", Role::Viewer, None).await;
    for (method, uri) in [
        (Method::GET, "/api/security"),
        (Method::GET, "/api/devices"),
        (Method::GET, "/api/users"),
        (Method::GET, "/api/tokens"),
        (Method::GET, "/api/audit"),
        (Method::GET, "/api/me"),
        (Method::GET, "/security"),
        (Method::GET, "/users"),
        (Method::GET, "/tokens"),
        (Method::GET, "/audit"),
        (Method::GET, "/"),
    ] {
        let answer = h.call(method, uri, &admin, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
        answers.push(answer.text);
    }
    // Failed attempts carrying secrets are not logged with them either.
    let wrong = h
        .call(
            Method::POST,
            "/api/auth/login",
            &Auth::None,
            Some(json!({"username": "root", "password": "a wrong password here"})),
        )
        .await;
    answers.push(wrong.text);
    let bad_token = Auth::Bearer(format!("{token_secret}x"));
    answers.push(h.call(Method::GET, "/api/me", &bad_token, None).await.text);

    let device_key_hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(!logs.is_empty(), "the capture works");
    let mut secrets = vec![
        PASSWORD.to_owned(),
        "a wrong password here".to_owned(),
        psk_hex.to_owned(),
        device_key_hex,
        String::from_utf8_lossy(KEY).into_owned(),
        totp_secret.clone(),
        token_secret.clone(),
        setup_token.clone(),
        session_id.clone(),
        admin.session_id().to_owned(),
    ];
    secrets.extend(recovery);
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line carries a secret"
        );
        for answer in &answers {
            assert!(
                !answer.contains(secret.as_str()),
                "an answer carries a secret: {answer}"
            );
        }
    }
    // Nor does the store keep them in the clear.
    let database = std::fs::read(h.dir.path().join("cairn.redb")).unwrap();
    for secret in [
        &token_secret,
        &setup_token,
        &session_id,
        &PASSWORD.to_owned(),
    ] {
        assert!(
            !database
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the database holds a secret in the clear"
        );
    }
    assert!(
        !database
            .windows(secret.len())
            .any(|w| w == secret.as_slice())
    );
    device.stop().await;
}
