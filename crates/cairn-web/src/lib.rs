//! Cairn's operator side: the REST API (documented at `/api/openapi.json`), live events over
//! server-sent events, and the web console, with their authentication (Argon2id passwords,
//! TOTP second factor, sessions with CSRF tokens, API tokens), role-based authorisation and
//! the append-only audit log.
//!
//! It drives an [`LwM2mServer`] through its public API and keeps its accounts in an
//! [`AccountStore`]. It never sees a device secret: security information reaches it as
//! [`cairn_server::SecurityInfoSummary`] (identity and fingerprint); a PSK goes in through
//! [`LwM2mServer::add_security`] and never comes back out.
//!
//! ```no_run
//! # async fn example(server: cairn_server::LwM2mServer, store: cairn_store::EmbeddedStore)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let web = cairn_web::WebState::new(server, Arc::new(store), cairn_web::WebConfig::default());
//! if let Some(link) = web.issue_setup_link_if_no_users().await? {
//!     eprintln!("open {link} to create the first administrator");
//! }
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! cairn_web::serve(listener, web, None).await?;
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod api_bootstrap;
pub mod api_firmware;
pub mod auth;
pub mod console;
pub mod console_ops;
pub mod error;
pub mod json;
pub mod session;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request};
use axum::response::Response;
use cairn_server::{LwM2mServer, ServerEvent};
use cairn_store::{AccountStore, AuditEntry, LockoutPolicy, Role, User};
use tokio::sync::oneshot;

pub use auth::PasswordHashing;
pub use error::ApiError;
pub use session::Principal;

/// The web listener's default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where the time comes from (a test can move it).
pub trait Clock: Send + Sync {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Settings of the web side.
#[derive(Clone)]
pub struct WebConfig {
    /// The base URL printed in links (setup link); `http://127.0.0.1:8080` by default.
    pub public_url: String,
    /// Whether the console is served over HTTPS (cookies get `Secure`, responses HSTS).
    pub https: bool,
    /// A session ends after this long without a request.
    pub idle_timeout: Duration,
    /// A session ends this long after login, whatever its use.
    pub absolute_timeout: Duration,
    /// How long a setup link works.
    pub setup_token_ttl: Duration,
    /// How passwords are hashed.
    pub password_hashing: PasswordHashing,
    /// Lockout of an account after failed logins.
    pub account_lockout: LockoutPolicy,
    /// Lockout of a source address after failed logins.
    pub address_lockout: LockoutPolicy,
    /// Login attempts per source address and minute.
    pub login_attempts_per_minute: u32,
    /// How long API tokens live when the request does not say.
    pub default_token_ttl: Duration,
    /// Live values kept for the console's plots are dropped after this long.
    pub telemetry_retention: Duration,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The largest firmware image uploaded through the API, in bytes.
    pub firmware_upload_limit: usize,
    /// How long a client has for a request's head (and for its TLS handshake); also the
    /// longest a kept-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// Connections served at once from one address; more are closed at once.
    pub max_connections_per_address: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            public_url: format!("http://{DEFAULT_LISTEN}"),
            https: false,
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            setup_token_ttl: Duration::from_secs(3600),
            password_hashing: PasswordHashing::default(),
            account_lockout: LockoutPolicy {
                free_attempts: 5,
                base_ms: 30_000,
                max_ms: 15 * 60_000,
            },
            address_lockout: LockoutPolicy {
                free_attempts: 10,
                base_ms: 30_000,
                max_ms: 15 * 60_000,
            },
            login_attempts_per_minute: 30,
            default_token_ttl: Duration::from_secs(90 * 24 * 3600),
            telemetry_retention: Duration::from_secs(7 * 24 * 3600),
            clock: Arc::new(SystemClock),
            firmware_upload_limit: api_firmware::DEFAULT_UPLOAD_LIMIT,
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_address: 64,
        }
    }
}

/// An observation started from the web side; dropping the sender cancels it.
pub(crate) struct ObservationHandle {
    pub(crate) started_by: String,
    pub(crate) started_at_ms: u64,
    pub(crate) cancel: oneshot::Sender<()>,
}

/// One observed value kept for the console's plots.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) at_ms: u64,
    pub(crate) path: String,
    pub(crate) value: serde_json::Value,
}

/// Recent samples per endpoint, bounded in count and age.
pub(crate) const MAX_SAMPLES_PER_DEVICE: usize = 512;

pub(crate) struct Inner {
    pub(crate) server: LwM2mServer,
    pub(crate) accounts: Arc<dyn AccountStore>,
    pub(crate) config: WebConfig,
    pub(crate) throttle: auth::LoginThrottle,
    pub(crate) unknown_names: auth::UnknownNameLockouts,
    pub(crate) observations: Mutex<HashMap<(String, String), ObservationHandle>>,
    pub(crate) samples: Mutex<HashMap<String, std::collections::VecDeque<Sample>>>,
    pub(crate) decoy_hash: std::sync::OnceLock<String>,
    /// The Bootstrap-Server run beside the device-management server, if any.
    pub(crate) bootstrap: std::sync::OnceLock<cairn_server::bootstrap::BootstrapServer>,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    pub(crate) inner: Arc<Inner>,
}

impl WebState {
    /// The web side of `server`, with accounts in `accounts`.
    pub fn new(server: LwM2mServer, accounts: Arc<dyn AccountStore>, config: WebConfig) -> Self {
        let throttle =
            auth::LoginThrottle::new(config.login_attempts_per_minute, config.address_lockout);
        WebState {
            inner: Arc::new(Inner {
                server,
                accounts,
                config,
                throttle,
                unknown_names: auth::UnknownNameLockouts::new(),
                observations: Mutex::new(HashMap::new()),
                samples: Mutex::new(HashMap::new()),
                decoy_hash: std::sync::OnceLock::new(),
                bootstrap: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Gives the console and API the Bootstrap-Server run beside the server (its bootstrap
    /// pages and `/api/bootstrap` answer 503 without one). The web side reads its data only
    /// as summaries: identities and fingerprints, never keys. Once; later calls are ignored.
    pub fn set_bootstrap(&self, bootstrap: cairn_server::bootstrap::BootstrapServer) {
        let _ = self.inner.bootstrap.set(bootstrap);
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.config.clock.now_ms()
    }

    /// When there is no user yet: a fresh one-time setup link (the previous one stops
    /// working), valid for [`WebConfig::setup_token_ttl`]. `None` when users exist.
    pub async fn issue_setup_link_if_no_users(&self) -> Result<Option<String>, ApiError> {
        if self.inner.accounts.count_users().await? > 0 {
            return Ok(None);
        }
        self.issue_setup_link().await.map(Some)
    }

    /// A fresh one-time setup link, replacing any previous one.
    pub async fn issue_setup_link(&self) -> Result<String, ApiError> {
        let config = &self.inner.config;
        let expires = self
            .now_ms()
            .saturating_add(config.setup_token_ttl.as_millis() as u64);
        issue_setup_link(&*self.inner.accounts, &config.public_url, expires).await
    }

    /// Appends to the audit log (a failure to write it is logged, and the action's answer
    /// still goes out: the action has happened).
    pub(crate) async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        source: &str,
        outcome: &str,
    ) {
        // Fields can come from the request (a user name typed at sign-in): bounded.
        let bounded = |text: &str| text.chars().take(200).collect::<String>();
        let (actor, target) = (bounded(actor), bounded(target));
        tracing::info!(%actor, action, %target, source, outcome, "audit");
        let entry = AuditEntry {
            seq: 0,
            at_ms: self.now_ms(),
            actor,
            action: action.to_owned(),
            target,
            source: source.to_owned(),
            outcome: outcome.to_owned(),
        };
        if let Err(error) = self.inner.accounts.append_audit(entry).await {
            tracing::error!(%error, action, "cannot write the audit log");
        }
    }

    /// Keeps a live value for the console's plot, dropping what is older than the retention
    /// (the background task keeps the values of the paths observed from the web side).
    pub fn record_sample(&self, endpoint: &str, path: String, value: serde_json::Value) {
        let now = self.now_ms();
        let horizon = now.saturating_sub(self.inner.config.telemetry_retention.as_millis() as u64);
        if let Ok(mut samples) = self.inner.samples.lock() {
            let series = samples.entry(endpoint.to_owned()).or_default();
            series.push_back(Sample {
                at_ms: now,
                path,
                value,
            });
            while series.len() > MAX_SAMPLES_PER_DEVICE
                || series.front().is_some_and(|s| s.at_ms < horizon)
            {
                series.pop_front();
            }
        }
    }

    /// Drops samples older than the retention, and sessions past their timeouts.
    pub async fn sweep(&self) {
        let now = self.now_ms();
        let horizon = now.saturating_sub(self.inner.config.telemetry_retention.as_millis() as u64);
        if let Ok(mut samples) = self.inner.samples.lock() {
            for series in samples.values_mut() {
                while series.front().is_some_and(|s| s.at_ms < horizon) {
                    series.pop_front();
                }
            }
            samples.retain(|_, series| !series.is_empty());
        }
        let config = &self.inner.config;
        let idle = now.saturating_sub(config.idle_timeout.as_millis() as u64);
        let absolute = now.saturating_sub(config.absolute_timeout.as_millis() as u64);
        if let Err(error) = self
            .inner
            .accounts
            .remove_expired_sessions(idle, absolute)
            .await
        {
            tracing::warn!(%error, "cannot remove expired sessions");
        }
    }

    /// Forgets what the web side holds about a device (its samples and observations).
    pub(crate) fn forget_device(&self, endpoint: &str) {
        if let Ok(mut samples) = self.inner.samples.lock() {
            samples.remove(endpoint);
        }
        self.forget_observations(endpoint);
    }

    /// Forgets the observations started from the web side on a device (it left).
    pub(crate) fn forget_observations(&self, endpoint: &str) {
        if let Ok(mut observations) = self.inner.observations.lock() {
            observations.retain(|(ep, _), _| ep != endpoint);
        }
    }

    /// Whether the web side observes this path of this device (only those values are kept).
    pub(crate) fn is_observed(&self, endpoint: &str, path: &str) -> bool {
        self.inner.observations.lock().is_ok_and(|observations| {
            observations.contains_key(&(endpoint.to_owned(), path.to_owned()))
        })
    }

    /// Starts the background work: recording the values of the paths observed from the web
    /// side, forgetting observations of devices that left, and sweeping old data.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut events = state.inner.server.events();
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(ServerEvent::Notification { endpoint, path, node }) => {
                            let path = path.to_string();
                            if state.is_observed(&endpoint, &path) {
                                state.record_sample(&endpoint, path, json::node_to_json(&node));
                            }
                        }
                        Ok(ServerEvent::Deregistered(r) | ServerEvent::Expired(r)) => {
                            state.forget_observations(&r.endpoint);
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => state.sweep().await,
                }
            }
        })
    }
}

/// Stores a fresh one-time setup token (its digest), replacing any previous one, and returns
/// the link that uses it: `{public_url}/setup?token=...`, valid until `expires_at_ms`.
pub async fn issue_setup_link(
    accounts: &dyn AccountStore,
    public_url: &str,
    expires_at_ms: u64,
) -> Result<String, ApiError> {
    let token = auth::random_token("setup_")?;
    accounts
        .put_setup_token(auth::digest(&token), expires_at_ms)
        .await?;
    Ok(format!(
        "{}/setup?token={}",
        public_url.trim_end_matches('/'),
        token.as_str()
    ))
}

/// Binds `listen`, starts the background work and serves the application on a task; returns
/// the bound address.
pub async fn spawn(
    listen: SocketAddr,
    state: WebState,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    state.spawn_background();
    Ok((address, tokio::spawn(serve(listener, state, tls))))
}

/// Creates a user offline (the `cairn admin create` command): checks the password's strength
/// and stores its Argon2id hash. An admin enrols TOTP at first login.
pub async fn create_user_offline(
    accounts: &dyn AccountStore,
    username: &str,
    password: &str,
    role: Role,
    hashing: &PasswordHashing,
) -> Result<(), ApiError> {
    session::check_username(username)?;
    auth::check_password_strength(password, username)?;
    let hash = hashing.hash(password)?;
    accounts
        .create_user(User {
            username: username.to_owned(),
            role,
            password_hash: hash,
            totp_secret: None,
            totp_last_step: 0,
            recovery_codes: Vec::new(),
            failed_logins: 0,
            locked_until_ms: 0,
            created_at_ms: SystemClock.now_ms(),
        })
        .await?;
    Ok(())
}

/// The whole application: API, console and static assets, with the security headers.
pub fn router(state: WebState) -> Router {
    let https = state.inner.config.https;
    let upload_limit = state.inner.config.firmware_upload_limit;
    let bounded = Router::new()
        .merge(api::routes())
        .merge(api_firmware::routes())
        .merge(api_bootstrap::routes())
        .merge(console::routes())
        .merge(console_ops::routes())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024));
    Router::new()
        .merge(bounded)
        .merge(api_firmware::upload_routes(upload_limit))
        .with_state(state)
        .layer(axum::middleware::map_response(move |response: Response| {
            security_headers(response, https)
        }))
}

async fn security_headers(mut response: Response, https: bool) -> Response {
    let headers = response.headers_mut();
    let cache_set = headers.contains_key("cache-control");
    let mut set = |name: &'static str, value: &'static str| {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    };
    set(
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
    );
    set("x-content-type-options", "nosniff");
    set("referrer-policy", "no-referrer");
    set("x-frame-options", "DENY");
    set("cross-origin-opener-policy", "same-origin");
    set(
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
    if https {
        set(
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        );
    }
    if !cache_set {
        set("cache-control", "no-store");
    }
    response
}

/// Serves the application on `listener` until `shutdown` resolves (or forever without one).
/// With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let limits = tls::ConnectionLimits {
        header_read_timeout: state.inner.config.header_read_timeout,
        per_address: state.inner.config.max_connections_per_address.max(1),
    };
    tls::serve_connections(listener, router(state), tls, limits).await
}

/// Adds the peer address to a request, as `axum::serve` does (for the HTTPS path and tests).
pub fn with_peer<B>(mut request: Request<B>, peer: SocketAddr) -> Request<B> {
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}
