//! Firmware images, update campaigns and bootstrap credentials through the API and the
//! console, against a real LwM2M server and Bootstrap-Server on 127.0.0.1. The campaign
//! devices are CoAP endpoints over DTLS-PSK with a Firmware Update object (/5/0) of their own:
//! they download the Package URI the server writes (Block2, from `/fw/{id}`), report
//! Downloaded, and on Update report Update Result 1 — or 6 (unsupported package) for a device
//! the image does not fit.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use cairn_coap::{Code, Config, ContentFormat, Message, OptionNumber};
use cairn_dtls::{ClientConfig, Psk};
use cairn_server::{LwM2mServer, SecurityInfo, SecurityMode};
use cairn_store::{BootstrapStore, DeviceCredentials, PskCredential, Role, SecretBytes};
use cairn_transport::{CoapEndpoint, Reply, Request as CoapRequest, Security};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Answer, Auth, Harness};

// ---- a device with a Firmware Update object ---------------------------------------------------

#[derive(Default)]
struct Firmware {
    state: i64,
    result: i64,
}

struct FwDevice {
    server: SocketAddr,
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

    fn handle(self: &Arc<Self>, request: &CoapRequest) -> Reply {
        let message = &request.message;
        match (message.code, message.uri_path().as_str()) {
            (Code::GET, "/5/0/3") => Reply::Ready(text(self.firmware.lock().unwrap().state)),
            (Code::GET, "/5/0/5") => Reply::Ready(text(self.firmware.lock().unwrap().result)),
            (Code::PUT, "/5/0/1") => {
                let uri = String::from_utf8_lossy(&message.payload).into_owned();
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
                    // Long enough for a pause to arrive while a device updates.
                    tokio::time::sleep(Duration::from_millis(300)).await;
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
            Ok(response) if response.code == Code::CONTENT => self.set(Some(2), None),
            _ => self.set(Some(0), Some(7)),
        }
    }
}

fn key_of(n: usize) -> Vec<u8> {
    format!("web-campaign-key-{n:04}").into_bytes()
}

async fn fw_device(server: &LwM2mServer, n: usize, incompatible: bool) -> Arc<FwDevice> {
    let address = server.local_addrs().1.unwrap();
    let device = Arc::new(FwDevice {
        server: address,
        incompatible,
        firmware: Mutex::new(Firmware::default()),
        endpoint: OnceLock::new(),
    });
    let handler_device = device.clone();
    let handler = move |request: &CoapRequest| handler_device.handle(request);
    let endpoint = Arc::new(
        CoapEndpoint::bind_secured(
            "127.0.0.1:0".parse().unwrap(),
            Config::default(),
            Security::DtlsClient {
                config: ClientConfig::new(format!("fw-id-{n}"), Psk::new(key_of(n))),
                server: address,
            },
            Some(Arc::new(handler)),
        )
        .await
        .unwrap(),
    );
    let mut message = Message::request(Code::POST);
    message.set_uri_path("/rd");
    for query in [format!("ep=fw-{n}"), "lt=300".into(), "lwm2m=1.1".into()] {
        message
            .options
            .push(OptionNumber::URI_QUERY, query.into_bytes());
    }
    message.set_content_format(ContentFormat::LINK_FORMAT);
    message.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
    let response = endpoint.request(address, message).await.unwrap();
    assert_eq!(response.code, Code::CREATED);
    let _ = device.endpoint.set(endpoint);
    device
}

async fn harness_with_fw_devices(count: usize) -> Harness {
    support::harness_full(
        |_| {},
        move |store| {
            let infos: Vec<SecurityInfo> = (0..count)
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
        },
    )
    .await
}

// ---- helpers ----------------------------------------------------------------------------------

async fn upload(h: &Harness, auth: &Auth, query: &str, bytes: Vec<u8>) -> Answer {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/firmware{query}"))
        .header(header::CONTENT_TYPE, "application/octet-stream");
    match auth {
        Auth::Bearer(token) => {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"))
        }
        Auth::Session { id, csrf } => {
            builder = builder.header(header::COOKIE, format!("cairn_session={id}"));
            if let Some(csrf) = csrf {
                builder = builder.header("x-csrf-token", csrf);
            }
        }
        Auth::None => {}
    }
    h.send(builder.body(Body::from(bytes)).unwrap(), support::PEER)
        .await
}

/// A console page with the session cookie.
async fn page(h: &Harness, auth: &Auth, uri: &str) -> Answer {
    let request = Request::builder()
        .uri(uri)
        .header(
            header::COOKIE,
            format!("cairn_session={}", auth.session_id()),
        )
        .body(Body::empty())
        .unwrap();
    h.send(request, support::PEER).await
}

async fn audit_actions(h: &Harness, admin: &Auth) -> Vec<(String, String, String)> {
    let answer = h.call(Method::GET, "/api/audit", admin, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn image_bytes() -> Vec<u8> {
    (0..40_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn wait_campaign(
    h: &Harness,
    auth: &Auth,
    id: &str,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = h
            .call(Method::GET, &format!("/api/campaigns/{id}"), auth, None)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let status = answer.json();
        if until(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the campaign did not reach the state: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- firmware ---------------------------------------------------------------------------------

#[tokio::test]
async fn firmware_images_are_uploaded_listed_and_removed_within_limits() {
    let h = support::harness_with(|config| config.firmware_upload_limit = 64 * 1024).await;
    let (admin, [viewer, operator, _]) = h.admin_and_tokens().await;
    let bytes = image_bytes();

    // A viewer cannot upload; an operator can, and the digest is the image's.
    let refused = upload(&h, &viewer, "?name=meter&version=2.0.0", bytes.clone()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let added = upload(&h, &operator, "?name=meter&version=2.0.0", bytes.clone()).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let image = added.json();
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(image["sha256"], digest);
    assert_eq!(image["size"], bytes.len());

    // Bad requests: no version, an empty image, one over the limit.
    let answer = upload(&h, &operator, "?name=meter", bytes.clone()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    let answer = upload(&h, &operator, "?name=meter&version=3", Vec::new()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    assert_eq!(answer.error_code(), "firmware_empty");
    let answer = upload(&h, &operator, "?name=big&version=1", vec![7; 64 * 1024 + 1]).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text
    );

    // Everyone signed in sees the list.
    let list = h.call(Method::GET, "/api/firmware", &viewer, None).await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "meter");
    assert_eq!(list[0]["version"], "2.0.0");

    // The console page lists it, with the upload form for an operator.
    let id = image["id"].as_str().unwrap();
    let html = page(&h, &admin, "/firmware").await;
    assert_eq!(html.status, StatusCode::OK);
    assert!(html.text.contains("meter") && html.text.contains("2.0.0"));
    assert!(html.text.contains("data-upload"));
    assert!(html.text.contains(&format!("/api/firmware/{id}")));

    let removed = h
        .call(
            Method::DELETE,
            &format!("/api/firmware/{id}"),
            &operator,
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let again = h
        .call(
            Method::DELETE,
            &format!("/api/firmware/{id}"),
            &operator,
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let list = h.call(Method::GET, "/api/firmware", &viewer, None).await;
    assert_eq!(list.json().as_array().unwrap().len(), 0);

    let audit = audit_actions(&h, &admin).await;
    let has =
        |action: &str, outcome: &str| audit.iter().any(|(a, _, o)| a == action && o == outcome);
    assert!(has("firmware.upload", "ok"), "{audit:?}");
    assert!(has("firmware.upload", "firmware_empty"), "{audit:?}");
    assert!(has("firmware.remove", "ok"), "{audit:?}");
    assert!(has("firmware.remove", "not_found"), "{audit:?}");
}

// ---- campaigns --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_a_prefix_is_paused_resumed_and_completes() {
    let h = harness_with_fw_devices(2).await;
    let _devices = [
        fw_device(&h.server, 0, false).await,
        fw_device(&h.server, 1, false).await,
    ];
    let (admin, [viewer, operator, _]) = h.admin_and_tokens().await;
    let image = upload(&h, &operator, "?name=meter&version=2.0.0", image_bytes()).await;
    assert_eq!(image.status, StatusCode::CREATED);
    let image_id = image.json()["id"].as_str().unwrap().to_owned();

    // A filter that matches nothing, and an unknown image, are refused.
    let answer = h
        .call(
            Method::POST,
            "/api/campaigns",
            &operator,
            Some(json!({"name": "none", "image_id": image_id, "prefix": "nothing-"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    let answer = h
        .call(
            Method::POST,
            "/api/campaigns",
            &operator,
            Some(json!({"name": "x", "image_id": "unknown", "prefix": "fw-"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.text);
    assert_eq!(answer.error_code(), "unknown_image");
    // A viewer cannot start one.
    let answer = h
        .call(
            Method::POST,
            "/api/campaigns",
            &viewer,
            Some(json!({"name": "v", "image_id": image_id, "prefix": "fw-"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    // Two waves of one device each; pause while the first updates.
    let started = h
        .call(
            Method::POST,
            "/api/campaigns",
            &operator,
            Some(
                json!({"name": "spring", "image_id": image_id, "prefix": "fw-",
                "waves": [50, 100], "max_failure_percent": 0}),
            ),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text);
    let started = started.json();
    assert_eq!(started["counts"]["total"], 2);
    let id = started["id"].as_str().unwrap().to_owned();
    let paused = h
        .call(
            Method::POST,
            &format!("/api/campaigns/{id}/pause"),
            &operator,
            None,
        )
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    // The pause holds back the next device to start (the first one, or the second wave's).
    let status = wait_campaign(&h, &viewer, &id, |s| {
        s["state"] == "paused" && s["counts"]["in_progress"] == 0
    })
    .await;
    let updated = status["counts"]["updated"].as_u64().unwrap();
    assert!(updated <= 1, "{status}");
    assert_eq!(status["counts"]["pending"], 2 - updated, "{status}");
    // Paused stays paused.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let still = wait_campaign(&h, &viewer, &id, |_| true).await;
    assert_eq!(still["state"], "paused");
    assert_eq!(still["counts"]["updated"], updated);

    // The console shows the progress bar and the counts.
    let html = page(&h, &admin, &format!("/firmware/campaigns/{id}")).await;
    assert_eq!(html.status, StatusCode::OK);
    assert!(html.text.contains("class=\"progress\""), "{}", html.text);
    // Drawn with SVG attributes: no inline style for the content security policy to refuse.
    assert!(!html.text.contains(" style="));
    assert!(html.text.contains("seg-pending") && html.text.contains("paused"));
    let fragment = page(&h, &admin, &format!("/firmware/campaigns/{id}/progress")).await;
    assert_eq!(fragment.status, StatusCode::OK);
    assert!(fragment.text.contains("fw-0") && fragment.text.contains("fw-1"));

    let resumed = h
        .call(
            Method::POST,
            &format!("/api/campaigns/{id}/resume"),
            &operator,
            None,
        )
        .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    let done = wait_campaign(&h, &viewer, &id, |s| s["state"] == "completed").await;
    assert_eq!(done["counts"]["updated"], 2, "{done}");
    let devices = done["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d["state"] == "updated"), "{done}");

    // A finished campaign cannot be steered; the list shows it.
    let answer = h
        .call(
            Method::POST,
            &format!("/api/campaigns/{id}/pause"),
            &operator,
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.text);
    let list = h
        .call(Method::GET, "/api/campaigns", &viewer, None)
        .await
        .json();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "completed");
    let rows = page(&h, &admin, "/firmware/campaign-rows").await;
    assert!(rows.text.contains("spring") && rows.text.contains("100 %"));

    // Cancel a second campaign while it is paused.
    let second = h
        .call(
            Method::POST,
            "/api/campaigns",
            &operator,
            Some(
                json!({"name": "second", "image_id": image_id, "endpoints": ["fw-0", "fw-1"],
                "waves": [50, 100]}),
            ),
        )
        .await
        .json();
    let second_id = second["id"].as_str().unwrap().to_owned();
    h.call(
        Method::POST,
        &format!("/api/campaigns/{second_id}/pause"),
        &operator,
        None,
    )
    .await;
    wait_campaign(&h, &viewer, &second_id, |s| s["state"] == "paused").await;
    let cancelled = h
        .call(
            Method::POST,
            &format!("/api/campaigns/{second_id}/cancel"),
            &operator,
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    let status = wait_campaign(&h, &viewer, &second_id, |s| s["state"] == "cancelled").await;
    assert_eq!(
        status["counts"]["cancelled"].as_u64().unwrap()
            + status["counts"]["updated"].as_u64().unwrap(),
        2,
        "{status}"
    );
    assert!(
        status["counts"]["cancelled"].as_u64().unwrap() >= 1,
        "{status}"
    );

    let audit = audit_actions(&h, &admin).await;
    for action in [
        "campaign.start",
        "campaign.pause",
        "campaign.resume",
        "campaign.cancel",
    ] {
        assert!(
            audit.iter().any(|(a, _, o)| a == action && o == "ok"),
            "{action}: {audit:?}"
        );
    }
    assert!(
        audit
            .iter()
            .any(|(a, _, o)| a == "campaign.pause" && o == "campaign_finished")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_that_fails_too_often_halts_and_the_console_says_why() {
    let h = harness_with_fw_devices(1).await;
    let _device = fw_device(&h.server, 0, true).await;
    let (admin, [_, operator, _]) = h.admin_and_tokens().await;
    let image = upload(&h, &operator, "?name=meter&version=9", image_bytes()).await;
    let image_id = image.json()["id"].as_str().unwrap().to_owned();
    let started = h
        .call(
            Method::POST,
            "/api/campaigns",
            &operator,
            Some(json!({"name": "bad", "image_id": image_id, "contains": "w-0"})),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text);
    let id = started.json()["id"].as_str().unwrap().to_owned();
    let halted = wait_campaign(&h, &operator, &id, |s| s["state"] == "halted").await;
    assert_eq!(halted["counts"]["failed"], 1, "{halted}");
    assert_eq!(halted["devices"][0]["result"], 6);
    let reason = halted["halt_reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("failed on 1 of 1"), "{reason}");
    let html = page(&h, &admin, &format!("/firmware/campaigns/{id}")).await;
    assert!(html.text.contains("halt-reason") && html.text.contains("failed on 1 of 1"));
    assert!(html.text.contains("seg-failed"));
}

// ---- bootstrap --------------------------------------------------------------------------------

const FACTORY_KEY: &[u8] = b"factory-key-of-dev-1-0123456789ab";

#[tokio::test]
async fn bootstrap_state_templates_and_rotation_without_secrets() {
    let h = support::harness().await;
    h.store
        .put_device_credentials(DeviceCredentials::factory(
            "dev-1",
            PskCredential {
                identity: b"factory-dev-1".to_vec(),
                key: SecretBytes::new(FACTORY_KEY.to_vec()),
            },
        ))
        .await
        .unwrap();
    let (admin, [viewer, operator, admin_token]) = h.admin_and_tokens().await;

    // Only admins see bootstrap data.
    for auth in [&viewer, &operator] {
        let answer = h
            .call(Method::GET, "/api/bootstrap/devices", auth, None)
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
    let devices = h
        .call(Method::GET, "/api/bootstrap/devices", &admin_token, None)
        .await;
    assert_eq!(devices.status, StatusCode::OK, "{}", devices.text);
    let body = devices.json();
    let device = &body["items"][0];
    assert_eq!(device["endpoint"], "dev-1");
    assert_eq!(device["bootstrap_credential"]["identity"], "factory-dev-1");
    assert_eq!(
        device["bootstrap_credential"]["fingerprint"],
        cairn_store::record::fingerprint(FACTORY_KEY)
    );
    assert_eq!(device["registered"], false);
    assert!(device["dm_credential"].is_null());
    // The key is nowhere: not as text, not in hex.
    let hex: String = FACTORY_KEY.iter().map(|b| format!("{b:02x}")).collect();
    for text in [&devices.text, &page(&h, &admin, "/bootstrap").await.text] {
        assert!(!text.contains(std::str::from_utf8(FACTORY_KEY).unwrap()));
        assert!(!text.contains(&hex));
    }
    let one = h
        .call(
            Method::GET,
            "/api/bootstrap/devices/dev-1",
            &admin_token,
            None,
        )
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(one.json()["config"].is_null());
    let missing = h
        .call(
            Method::GET,
            "/api/bootstrap/devices/nobody",
            &admin_token,
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // Templates: a valid one is stored, a bad URI is refused.
    let template = json!({"name": "meters", "endpoint_prefix": "dev-",
        "dm_uri": "coaps://dm.example.net:5684", "bootstrap_uri": "coaps://bs.example.net:5784",
        "lifetime_s": 600});
    let added = h
        .call(
            Method::POST,
            "/api/bootstrap/templates",
            &admin,
            Some(template),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    assert_eq!(
        added.json()["settings"]["servers"][0]["credential"],
        "generated-psk"
    );
    let bad = h
        .call(
            Method::POST,
            "/api/bootstrap/templates",
            &admin,
            Some(json!({"name": "bad", "endpoint_prefix": "x-",
                "dm_uri": "http://dm.example.net", "bootstrap_uri": "coaps://bs.example.net"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let templates = h
        .call(Method::GET, "/api/bootstrap/templates", &admin, None)
        .await
        .json();
    assert_eq!(templates.as_array().unwrap().len(), 1);
    assert_eq!(templates[0]["endpoint_prefix"], "dev-");
    assert_eq!(templates[0]["settings"]["servers"][0]["lifetime_s"], 600);
    let stored = h.store.list_bootstrap_templates().await.unwrap();
    assert_eq!(
        stored[0].settings.servers[0].uri,
        "coaps://dm.example.net:5684"
    );

    // The console page shows the template and the device.
    let html = page(&h, &admin, "/bootstrap").await;
    assert_eq!(html.status, StatusCode::OK);
    for expected in [
        "meters",
        "coaps://dm.example.net:5684",
        "dev-1",
        "factory-dev-1",
    ] {
        assert!(html.text.contains(expected), "{expected}");
    }
    let viewer_session = {
        h.add_user("watcher", Role::Viewer, None).await;
        h.sign_in("watcher", None).await
    };
    let html = page(&h, &viewer_session, "/bootstrap").await;
    assert_eq!(html.status, StatusCode::FORBIDDEN);

    // Rotation: a device away is pending (it rotates when it registers), an unknown one fails.
    let report = h
        .call(
            Method::POST,
            "/api/bootstrap/rotate",
            &admin,
            Some(json!({"endpoints": ["dev-1", "nobody"], "wait_s": 1})),
        )
        .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text);
    let report = report.json();
    assert_eq!(report["pending"], json!(["dev-1"]));
    assert_eq!(report["failed"][0]["endpoint"], "nobody");
    assert_eq!(report["summary"], "rotated 0, pending 1, failed 1");
    let marked = h
        .call(Method::GET, "/api/bootstrap/devices/dev-1", &admin, None)
        .await
        .json();
    assert_eq!(marked["device"]["rotation_requested"], true);
    let group = h
        .call(
            Method::POST,
            "/api/bootstrap/rotate",
            &admin,
            Some(json!({"group": "dev-", "wait_s": 1})),
        )
        .await
        .json();
    assert_eq!(group["pending"], json!(["dev-1"]));
    let all = h
        .call(
            Method::POST,
            "/api/bootstrap/rotate",
            &admin,
            Some(json!({"all": true, "wait_s": 1})),
        )
        .await
        .json();
    assert_eq!(all["pending"], json!(["dev-1"]));
    let none = h
        .call(
            Method::POST,
            "/api/bootstrap/rotate",
            &admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);

    let removed = h
        .call(
            Method::DELETE,
            "/api/bootstrap/templates/meters",
            &admin,
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);

    let audit = audit_actions(&h, &admin).await;
    for (action, outcome) in [
        ("bootstrap.template.put", "ok"),
        ("bootstrap.template.put", "invalid_template"),
        ("bootstrap.rotate", "ok"),
        ("bootstrap.rotate", "invalid_request"),
        ("bootstrap.template.remove", "ok"),
    ] {
        assert!(
            audit.iter().any(|(a, _, o)| a == action && o == outcome),
            "{action} {outcome}: {audit:?}"
        );
    }
    assert!(
        audit
            .iter()
            .any(|(a, t, _)| a == "bootstrap.rotate" && t.contains("pending 1"))
    );
}

#[tokio::test]
async fn without_a_bootstrap_server_the_bootstrap_api_says_so() {
    let h = support::harness().await;
    let dir = tempfile::tempdir().unwrap();
    let store = cairn_server::EmbeddedStore::open_with(
        dir.path(),
        cairn_store::MasterKeySource::Key(cairn_store::MasterKey::from_bytes(&[3; 32])),
    )
    .unwrap();
    let state = cairn_web::WebState::new(
        h.server.clone(),
        Arc::new(store.clone()),
        support::config(h.clock.clone()),
    );
    let router = cairn_web::router(state.clone());
    let alone = Harness {
        dir,
        store,
        server: h.server.clone(),
        state,
        router,
        clock: h.clock.clone(),
        bootstrap: h.bootstrap.clone(),
    };
    let (admin, _) = alone.admin_and_tokens().await;
    let answer = alone
        .call(Method::GET, "/api/bootstrap/devices", &admin, None)
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error_code(), "bootstrap_unavailable");
    let html = page(&alone, &admin, "/bootstrap").await;
    assert_eq!(html.status, StatusCode::OK);
    assert!(html.text.contains("No Bootstrap-Server runs"));
}
