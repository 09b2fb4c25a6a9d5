//! A web side over a real LwM2M server on 127.0.0.1 (ports 0), driven with
//! `tower::ServiceExt::oneshot` against the router, and a real Cairn client device when a test
//! needs one.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use cairn_server::{EmbeddedStore, LwM2mServer, ServerConfig, Stores};
use cairn_store::{AccountStore, MasterKey, MasterKeySource, Role, SecretBytes, User};
use cairn_web::{Clock, PasswordHashing, WebConfig, WebState};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const PASSWORD: &str = "correct horse battery staple";

/// A clock the test moves.
pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: EmbeddedStore,
    pub server: LwM2mServer,
    pub state: WebState,
    pub router: Router,
    pub clock: Arc<ManualClock>,
    /// The Bootstrap-Server beside the server (DTLS on 127.0.0.1, port 0).
    pub bootstrap: cairn_server::bootstrap::BootstrapServer,
}

/// One HTTP answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The session id the answer sets, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.contains("cairn_session="))
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.split_once('='))
            .map(|(_, id)| id.to_owned())
            .filter(|id| !id.is_empty())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

pub fn config(clock: Arc<ManualClock>) -> WebConfig {
    WebConfig {
        password_hashing: PasswordHashing::insecure_for_tests(),
        clock,
        ..WebConfig::default()
    }
}

pub async fn harness() -> Harness {
    harness_with(|_| {}).await
}

pub async fn harness_with(adjust: impl FnOnce(&mut WebConfig)) -> Harness {
    harness_full(adjust, |_| {}).await
}

pub async fn harness_full(
    adjust: impl FnOnce(&mut WebConfig),
    provision: impl FnOnce(&EmbeddedStore),
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        MasterKeySource::Key(MasterKey::from_bytes(&[5; 32])),
    )
    .unwrap();
    provision(&store);
    let server_config = ServerConfig {
        coap_listen: None,
        dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    let server = LwM2mServer::start(server_config, Stores::embedded(store.clone()))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock(AtomicU64::new(1_800_000_000_000)));
    let mut web_config = config(clock.clone());
    adjust(&mut web_config);
    let state = WebState::new(server.clone(), Arc::new(store.clone()), web_config);
    let bootstrap = cairn_server::bootstrap::BootstrapServer::start(
        cairn_server::bootstrap::BootstrapServerConfig {
            coap_listen: None,
            dtls_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
        cairn_server::bootstrap::BootstrapStores::embedded(store.clone()),
    )
    .await
    .unwrap();
    state.set_bootstrap(bootstrap.clone());
    let router = cairn_web::router(state.clone());
    Harness {
        dir,
        store,
        server,
        state,
        router,
        clock,
        bootstrap,
    }
}

pub const PEER: &str = "192.0.2.10:40000";

impl Harness {
    pub fn advance_ms(&self, ms: u64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.0.load(Ordering::SeqCst)
    }

    pub async fn send(&self, request: Request<Body>, peer: &str) -> Answer {
        let peer: SocketAddr = peer.parse().unwrap();
        let response = self
            .router
            .clone()
            .oneshot(cairn_web::with_peer(request, peer))
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A request with optional session cookie, CSRF header, bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        auth: &Auth,
        body: Option<Value>,
    ) -> Answer {
        self.call_from(method, uri, auth, body, PEER).await
    }

    pub async fn call_from(
        &self,
        method: Method,
        uri: &str,
        auth: &Auth,
        body: Option<Value>,
        peer: &str,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        match auth {
            Auth::None => {}
            Auth::Session { id, csrf } => {
                builder = builder.header(header::COOKIE, format!("cairn_session={id}"));
                if let Some(csrf) = csrf {
                    builder = builder.header("x-csrf-token", csrf);
                }
            }
            Auth::Bearer(token) => {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
        }
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        self.send(request, peer).await
    }

    /// Creates a user directly in the store, with a TOTP secret if given.
    pub async fn add_user(&self, username: &str, role: Role, totp: Option<&[u8]>) {
        let hash = PasswordHashing::insecure_for_tests()
            .hash(PASSWORD)
            .unwrap();
        self.store
            .create_user(User {
                username: username.into(),
                role,
                password_hash: hash,
                totp_secret: totp.map(|s| SecretBytes::new(s.to_vec())),
                totp_last_step: 0,
                recovery_codes: Vec::new(),
                failed_logins: 0,
                locked_until_ms: 0,
                created_at_ms: 0,
            })
            .await
            .unwrap();
    }

    /// The TOTP code of `secret` now.
    pub fn code(&self, secret: &[u8]) -> String {
        cairn_web::auth::totp_code(secret, self.now_ms() / 1000 / 30)
    }

    /// Password step, then the TOTP step if the user has a secret: a signed-in session.
    pub async fn sign_in(&self, username: &str, totp: Option<&[u8]>) -> Auth {
        let answer = self
            .call(
                Method::POST,
                "/api/auth/login",
                &Auth::None,
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let mut auth = Auth::Session {
            id: answer.session_cookie().unwrap(),
            csrf: answer.json()["csrf_token"].as_str().map(str::to_owned),
        };
        if let Some(secret) = totp {
            assert_eq!(answer.json()["next"], "totp");
            let code = self.code(secret);
            let answer = self
                .call(
                    Method::POST,
                    "/api/auth/second-factor",
                    &auth,
                    Some(json!({ "code": code })),
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
            auth = Auth::Session {
                id: answer.session_cookie().unwrap(),
                csrf: answer.json()["csrf_token"].as_str().map(str::to_owned),
            };
        } else {
            assert_eq!(answer.json()["next"], "done");
        }
        auth
    }

    /// A bearer token of `role`, created by an admin session.
    pub async fn token(&self, admin: &Auth, role: &str) -> Auth {
        let answer = self
            .call(
                Method::POST,
                "/api/tokens",
                admin,
                Some(json!({"name": format!("{role}-token"), "role": role})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        Auth::Bearer(answer.json()["token"].as_str().unwrap().to_owned())
    }

    /// An admin (with TOTP) signed in, and bearer tokens of each role.
    pub async fn admin_and_tokens(&self) -> (Auth, [Auth; 3]) {
        let secret = [42u8; 20];
        self.add_user("root", Role::Admin, Some(&secret)).await;
        let admin = self.sign_in("root", Some(&secret)).await;
        let viewer = self.token(&admin, "viewer").await;
        let operator = self.token(&admin, "operator").await;
        let admin_token = self.token(&admin, "admin").await;
        (admin, [viewer, operator, admin_token])
    }
}

/// How a test request authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Session { id: String, csrf: Option<String> },
    Bearer(String),
}

impl Auth {
    pub fn without_csrf(&self) -> Auth {
        match self {
            Auth::Session { id, .. } => Auth::Session {
                id: id.clone(),
                csrf: None,
            },
            other => other.clone(),
        }
    }

    pub fn session_id(&self) -> &str {
        match self {
            Auth::Session { id, .. } => id,
            _ => "",
        }
    }
}
