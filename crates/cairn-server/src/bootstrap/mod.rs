//! The LwM2M Bootstrap-Server (OMA LwM2M Core 1.2 §5.2.7 "Client Initiated Bootstrap" and
//! §6.1 "Bootstrap Interface").
//!
//! A device sends a Bootstrap-Request (`POST /bs?ep=NAME&pct=FORMAT`) over DTLS with its
//! bootstrap credential (the factory one at first). The server checks that the credential
//! belongs to that endpoint, finds the endpoint's configuration (its own, or the template with
//! the longest matching prefix), prepares its credentials ([`credentials`]: fresh, random,
//! unique per device; the previous ones stay valid until the device proves it holds the new
//! ones), answers 2.04 and runs the sequence: Bootstrap-Discover, Bootstrap-Delete,
//! Bootstrap-Write of the Security, Server, OSCORE and Access Control instances,
//! Bootstrap-Finish (`session.rs`). A step the device cannot handle for a moment is
//! retried; a refusal ends the sequence, and both are recorded in the device's status and
//! published as [`BootstrapEvent`]s.
//!
//! The device-management credential goes into the security store the DM server reads; the
//! DM server, started with [`security::device_management_stores`], also accepts the device's
//! previous credential until the device registers with the new one, which
//! [`BootstrapServer::follow`] observes to retire the old credentials.

pub mod credentials;
mod schedule;
pub mod security;
mod session;
pub mod summary;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use cairn_coap::{Code, ContentFormat, Message};
use cairn_lwm2m::{ClientRequest, CoapRequest, ModelRegistry, OperationError, ResponseCode};
use cairn_store::{
    BootstrapSettings, BootstrapStore, CredentialKind, DeviceCredentials, EmbeddedStore,
    PeerIdentity, SecurityInfo, SecurityMode, SecurityStore, StoreError,
};
use cairn_transport::{CoapEndpoint, Reply, Request, Security};
use tokio::sync::broadcast;

use crate::{LwM2mServer, ServerError, ServerEvent, unix_millis};

pub use credentials::CredentialError;
pub use schedule::{RotationSchedule, is_due};

/// The largest Bootstrap-Request payload accepted (the request has none).
const MAX_REQUEST_PAYLOAD: usize = 64;

/// Devices a rotation asks at once (store writes and Execute requests in flight).
pub const ROTATION_CONCURRENCY: usize = 64;

/// What asking one device to rotate did.
enum Asked {
    /// The Bootstrap-Request Trigger was executed.
    Triggered,
    /// Marked; it is asked when it next registers.
    NotRegistered,
    Failed(String),
}

/// Bootstrap-Server settings.
#[derive(Clone)]
pub struct BootstrapServerConfig {
    /// Plain CoAP (only for endpoints whose configuration allows it).
    pub coap_listen: Option<SocketAddr>,
    /// CoAP over DTLS.
    pub dtls_listen: Option<SocketAddr>,
    /// How long one request of the sequence waits for the device.
    pub request_timeout: Duration,
    /// Attempts per step when the device answers 5.xx or does not answer.
    pub attempts: u32,
    /// Object models the writes are encoded with.
    pub models: Arc<ModelRegistry>,
    /// CoAP transmission parameters.
    pub coap: cairn_coap::Config,
    /// For raw-public-key and X.509 device-management credentials: the DM server's public key
    /// and Cairn's CA. None: configurations asking for them are answered 5.01.
    pub certificates: Option<Arc<credentials::DmCertificates>>,
}

impl Default for BootstrapServerConfig {
    fn default() -> Self {
        BootstrapServerConfig {
            coap_listen: Some(SocketAddr::from(([0, 0, 0, 0], 5783))),
            dtls_listen: Some(SocketAddr::from(([0, 0, 0, 0], 5784))),
            request_timeout: Duration::from_secs(30),
            attempts: 3,
            models: Arc::new(ModelRegistry::with_core_models()),
            coap: cairn_coap::Config::default(),
            certificates: None,
        }
    }
}

/// What happened, for the operator side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapEvent {
    /// A Bootstrap-Request was accepted; the sequence starts.
    Started { endpoint: String },
    /// The device answered Bootstrap-Finish with 2.04.
    Finished { endpoint: String },
    /// The sequence ended at `step`.
    Failed {
        endpoint: String,
        step: String,
        reason: String,
    },
    /// The device proved it holds its new credentials; the previous ones are refused now.
    CredentialsProven { endpoint: String },
    /// A Bootstrap-Request was refused.
    Refused { endpoint: String, reason: String },
}

/// What a rotation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Devices registered again with fresh credentials; their previous ones are refused.
    pub rotated: Vec<String>,
    /// Devices marked for rotation that did not complete it in time (not registered, or
    /// still bootstrapping).
    pub pending: Vec<String>,
    /// Devices that could not be asked, and why.
    pub failed: Vec<(String, String)>,
}

/// Where the Bootstrap-Server keeps its data.
#[derive(Clone)]
pub struct BootstrapStores {
    pub bootstrap: Arc<dyn BootstrapStore>,
    /// The device-management security store the generated credentials go to.
    pub security: Arc<dyn SecurityStore>,
    /// Synchronous bootstrap PSK lookups for the DTLS handshake.
    pub psk_resolver: Arc<dyn cairn_dtls::PskResolver>,
    /// `security` is `bootstrap`'s own security store (one database): a device's new
    /// credentials and its device-management security info are then stored in one commit
    /// ([`BootstrapStore::put_device_credentials_and_security`]) instead of two.
    pub security_in_bootstrap_store: bool,
}

impl BootstrapStores {
    /// Everything in one embedded store.
    pub fn embedded(store: EmbeddedStore) -> BootstrapStores {
        BootstrapStores {
            bootstrap: Arc::new(store.clone()),
            security: Arc::new(store.clone()),
            psk_resolver: Arc::new(security::BootstrapPskResolver(store)),
            security_in_bootstrap_store: true,
        }
    }
}

struct Inner {
    config: BootstrapServerConfig,
    stores: BootstrapStores,
    events: broadcast::Sender<BootstrapEvent>,
    coap: Option<CoapEndpoint>,
    dtls: Option<CoapEndpoint>,
    /// Serializes the changes to each device's credentials (Bootstrap-Requests, results,
    /// proofs, rotation marks): a change reads the record, computes the new one and writes it,
    /// holding the lock of the endpoint's stripe. Devices of other stripes change in parallel,
    /// so their writes share group commits.
    credentials: EndpointLocks,
    /// The running sequence of each endpoint and its number.
    sessions: Mutex<HashMap<String, (u64, tokio::task::AbortHandle)>>,
    /// The endpoint whose running sequence writes to each address. A device that gave up
    /// leaves its address; another device (of the same host, or behind the same NAT) may get
    /// it and connect with its own credentials, and the sequence must not write to that one.
    session_peers: Mutex<HashMap<SocketAddr, String>>,
    next_session: std::sync::atomic::AtomicU64,
    /// Endpoints marked for rotation since this server started and not bootstrapped since:
    /// their next Update triggers the rotation (a registration checks the store).
    rotation_marked: Mutex<std::collections::HashSet<String>>,
}

/// A running Bootstrap-Server.
#[derive(Clone)]
pub struct BootstrapServer {
    inner: Arc<Inner>,
}

/// A refusal to a device.
type Refusal = (ResponseCode, String);

fn store_refusal(error: StoreError) -> Refusal {
    tracing::error!(%error, "store failure");
    (
        ResponseCode::INTERNAL_SERVER_ERROR,
        "storage unavailable".into(),
    )
}

fn error_message(code: ResponseCode, diagnostic: &str) -> Message {
    let mut message = Message::response(code.code());
    message.payload = diagnostic.as_bytes().to_vec();
    message
}

impl BootstrapServer {
    /// Binds the sockets and starts serving.
    pub async fn start(
        config: BootstrapServerConfig,
        stores: BootstrapStores,
    ) -> Result<Self, ServerError> {
        let slot: Arc<OnceLock<Weak<Inner>>> = Arc::new(OnceLock::new());
        let handler = |secure| -> Arc<dyn cairn_transport::Handler> {
            Arc::new(BootstrapHandler {
                slot: slot.clone(),
                secure,
            })
        };
        let coap = match config.coap_listen {
            Some(address) => Some(
                CoapEndpoint::bind(address, config.coap.clone(), Some(handler(false)))
                    .await
                    .map_err(|source| ServerError::Bind { address, source })?,
            ),
            None => None,
        };
        let dtls = match config.dtls_listen {
            Some(address) => {
                let dtls_config = cairn_dtls::ServerConfig::new(stores.psk_resolver.clone());
                Some(
                    CoapEndpoint::bind_secured(
                        address,
                        config.coap.clone(),
                        Security::DtlsServer(dtls_config),
                        Some(handler(true)),
                    )
                    .await
                    .map_err(|source| ServerError::Bind { address, source })?,
                )
            }
            None => None,
        };
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            config,
            stores,
            events,
            coap,
            dtls,
            credentials: EndpointLocks::new(),
            sessions: Mutex::new(HashMap::new()),
            session_peers: Mutex::new(HashMap::new()),
            next_session: std::sync::atomic::AtomicU64::new(0),
            rotation_marked: Mutex::new(std::collections::HashSet::new()),
        });
        let _ = slot.set(Arc::downgrade(&inner));
        Ok(BootstrapServer { inner })
    }

    /// The bound CoAP and DTLS addresses.
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.inner.coap.as_ref().map(CoapEndpoint::local_addr),
            self.inner.dtls.as_ref().map(CoapEndpoint::local_addr),
        )
    }

    pub fn events(&self) -> broadcast::Receiver<BootstrapEvent> {
        self.inner.events.subscribe()
    }

    /// The device registered with the DM server under `identity`: if that is its new
    /// credential, the previous ones are retired. Returns whether they were.
    pub async fn registered(
        &self,
        endpoint: &str,
        identity: &PeerIdentity,
    ) -> Result<bool, StoreError> {
        match credential_identity(identity) {
            Some((kind, key)) => self.inner.registered(endpoint, kind, &key).await,
            None => Ok(false),
        }
    }

    /// Watches the DM server's registrations to retire credentials once devices use the new
    /// ones (also after a lagging event stream, by checking every registration).
    pub fn follow(&self, server: &LwM2mServer) {
        let inner = Arc::downgrade(&self.inner);
        let server = server.clone();
        let mut events = server.events();
        tokio::spawn(async move {
            let mut sweep = true;
            loop {
                if sweep {
                    for registration in server.registrations() {
                        let Some(inner) = inner.upgrade() else {
                            return;
                        };
                        if let Some((kind, key)) = credential_identity(&registration.identity) {
                            let _ = inner.registered(&registration.endpoint, kind, &key).await;
                        }
                    }
                    sweep = false;
                }
                match events.recv().await {
                    Ok(ServerEvent::Registered(registration)) => {
                        let Some(inner) = inner.upgrade() else {
                            return;
                        };
                        // One task per registration: a proof waits for its commit, and the
                        // proofs of many devices share one.
                        tokio::spawn(on_registered(inner, server.clone(), registration));
                    }
                    Ok(ServerEvent::Updated(registration)) => {
                        let Some(inner) = inner.upgrade() else {
                            return;
                        };
                        let marked = inner
                            .rotation_marked
                            .lock()
                            .is_ok_and(|marked| marked.contains(&registration.endpoint));
                        if marked {
                            tokio::spawn(trigger_rotation(server.clone(), registration));
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => sweep = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Marks a device for fresh credentials at its next bootstrap (they are rotated at every
    /// bootstrap; this records that an operator asked).
    pub async fn request_rotation(&self, endpoint: &str) -> Result<bool, StoreError> {
        let _guard = self.inner.credentials.lock(endpoint).await;
        let Some(mut device) = self
            .inner
            .stores
            .bootstrap
            .get_device_credentials(endpoint)
            .await?
        else {
            return Ok(false);
        };
        device.status.rotation_requested = true;
        self.inner
            .stores
            .bootstrap
            .put_device_credentials(device)
            .await?;
        if let Ok(mut marked) = self.inner.rotation_marked.lock() {
            marked.insert(endpoint.to_owned());
        }
        Ok(true)
    }

    /// Rotates the credentials of registered devices: marks each for rotation, executes the
    /// Bootstrap-Request Trigger (/1/x/9) through the DM server (up to
    /// [`ROTATION_CONCURRENCY`] devices at once), and waits up to `wait` for each device to
    /// register with fresh credentials (its previous ones are refused from then on).
    pub async fn rotate(
        &self,
        server: &LwM2mServer,
        endpoints: &[String],
        wait: Duration,
    ) -> RotationReport {
        let mut events = self.events();
        // The credential each device had proven when the rotation began: a proof of any
        // other (fresh) one ends its rotation; a late proof of this one does not.
        let mut before = std::collections::HashMap::new();
        for endpoint in endpoints {
            before.insert(endpoint.clone(), self.proven_identity(endpoint).await);
        }
        let mut report = RotationReport::default();
        let permits = Arc::new(tokio::sync::Semaphore::new(ROTATION_CONCURRENCY));
        let asks: Vec<_> = endpoints
            .iter()
            .map(|endpoint| {
                let (this, server, permits) = (self.clone(), server.clone(), permits.clone());
                let name = endpoint.clone();
                let task = tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    this.ask_rotation(&server, &name).await
                });
                (endpoint.clone(), task)
            })
            .collect();
        let mut waiting = std::collections::BTreeSet::new();
        for (endpoint, task) in asks {
            match task.await {
                Ok(Asked::Triggered) => {
                    waiting.insert(endpoint);
                }
                Ok(Asked::NotRegistered) => report.pending.push(endpoint),
                Ok(Asked::Failed(reason)) => report.failed.push((endpoint, reason)),
                Err(error) => report.failed.push((endpoint, error.to_string())),
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Proofs that came while the devices were asked, beyond what the event queue holds,
        // are found in the store.
        let mut check_store = true;
        while !waiting.is_empty() {
            if check_store {
                self.collect_rotated(&mut waiting, &before, &mut report)
                    .await;
                check_store = false;
                continue;
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                // The event may be the late proof of the credentials being replaced: the
                // store says whether the proven ones are others.
                Ok(Ok(BootstrapEvent::CredentialsProven { endpoint })) => {
                    if waiting.contains(&endpoint) && self.rotated_from(&endpoint, &before).await {
                        waiting.remove(&endpoint);
                        report.rotated.push(endpoint);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => check_store = true,
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
            }
        }
        self.collect_rotated(&mut waiting, &before, &mut report)
            .await;
        report.pending.extend(waiting);
        report
    }

    /// Marks a device for rotation and, when it is registered, asks it to bootstrap.
    async fn ask_rotation(&self, server: &LwM2mServer, endpoint: &str) -> Asked {
        match self.request_rotation(endpoint).await {
            Ok(true) => {}
            Ok(false) => return Asked::Failed("no bootstrap credentials".into()),
            Err(error) => return Asked::Failed(error.to_string()),
        }
        let Some(registration) = server.registration(endpoint) else {
            return Asked::NotRegistered;
        };
        match server
            .execute(endpoint, bootstrap_trigger(&registration), Vec::new())
            .await
        {
            Ok(()) => Asked::Triggered,
            Err(error) => Asked::Failed(error.to_string()),
        }
    }

    /// Moves from `waiting` to the report's rotated the devices that proved credentials other
    /// than those they had proven in `before`.
    async fn collect_rotated(
        &self,
        waiting: &mut std::collections::BTreeSet<String>,
        before: &std::collections::HashMap<String, Option<Vec<u8>>>,
        report: &mut RotationReport,
    ) {
        let mut done = Vec::new();
        for endpoint in waiting.iter() {
            if self.rotated_from(endpoint, before).await {
                done.push(endpoint.clone());
            }
        }
        for endpoint in done {
            waiting.remove(&endpoint);
            report.rotated.push(endpoint);
        }
    }

    /// The identity of the device-management credential `endpoint` has proven, if any.
    async fn proven_identity(&self, endpoint: &str) -> Option<Vec<u8>> {
        let device = self
            .inner
            .stores
            .bootstrap
            .get_device_credentials(endpoint)
            .await;
        device
            .ok()
            .flatten()
            .and_then(|device| device.dm)
            .filter(|dm| dm.proven)
            .map(|dm| dm.current.identity)
    }

    /// Whether `endpoint` proved a credential other than the one it had proven in `before`,
    /// with no rotation pending for it.
    async fn rotated_from(
        &self,
        endpoint: &str,
        before: &std::collections::HashMap<String, Option<Vec<u8>>>,
    ) -> bool {
        let device = self
            .inner
            .stores
            .bootstrap
            .get_device_credentials(endpoint)
            .await;
        let old = before.get(endpoint).cloned().flatten();
        device.ok().flatten().is_some_and(|device| {
            !device.status.rotation_requested
                && device
                    .dm
                    .is_some_and(|dm| dm.proven && Some(&dm.current.identity) != old.as_ref())
        })
    }

    /// Stops the sockets and the running sequences.
    pub async fn shutdown(&self) {
        if let Ok(sessions) = self.inner.sessions.lock() {
            for (_, handle) in sessions.values() {
                handle.abort();
            }
        }
        for endpoint in self.inner.coap.iter().chain(self.inner.dtls.iter()) {
            endpoint.shutdown().await;
        }
    }
}

struct BootstrapHandler {
    slot: Arc<OnceLock<Weak<Inner>>>,
    secure: bool,
}

impl cairn_transport::Handler for BootstrapHandler {
    fn handle(&self, request: &Request) -> Reply {
        match self.slot.get().and_then(Weak::upgrade) {
            Some(inner) => Reply::Pending(Box::pin(inner.handle(request.clone(), self.secure))),
            None => Reply::Ready(Message::response(Code::SERVICE_UNAVAILABLE)),
        }
    }
}

/// The kind and lookup key ([`cairn_store::bootstrap::lookup_key`]) of the credential a device
/// registered with: a PSK identity, a raw public key, or a certificate's SHA-256 fingerprint
/// (a session that carries only a certificate's common name says nothing about which one).
fn credential_identity(identity: &PeerIdentity) -> Option<(CredentialKind, Vec<u8>)> {
    match identity {
        PeerIdentity::Psk(identity) => Some((CredentialKind::Psk, identity.clone())),
        PeerIdentity::Rpk(key) => Some((CredentialKind::Rpk, key.clone())),
        PeerIdentity::X509Certificate { fingerprint, .. } => {
            Some((CredentialKind::X509, fingerprint.to_vec()))
        }
        PeerIdentity::X509(_) | PeerIdentity::Unsecured => None,
    }
}

/// A device registered with the DM server: records the proof of its new credentials, and
/// triggers a rotation asked for while it was away.
async fn on_registered(
    inner: Arc<Inner>,
    server: LwM2mServer,
    registration: cairn_store::Registration,
) {
    // What the proof read of the device says, else a read of its own.
    let mut rotation_requested = None;
    if let Some((kind, key)) = credential_identity(&registration.identity) {
        match inner.record_proof(&registration.endpoint, kind, &key).await {
            Ok(proof) => rotation_requested = Some(proof.rotation_requested),
            Err(error) => tracing::warn!(%error, "cannot record a credential proof"),
        }
    }
    let rotation_requested = match rotation_requested {
        Some(requested) => requested,
        None => inner
            .stores
            .bootstrap
            .get_device_credentials(&registration.endpoint)
            .await
            .ok()
            .flatten()
            .is_some_and(|d| d.status.rotation_requested),
    };
    drop(inner);
    if rotation_requested {
        trigger_rotation(server, registration).await;
    }
}

/// Asks a device marked for rotation to bootstrap again.
async fn trigger_rotation(server: LwM2mServer, registration: cairn_store::Registration) {
    let trigger = bootstrap_trigger(&registration);
    if let Err(error) = server
        .execute(&registration.endpoint, trigger, Vec::new())
        .await
    {
        tracing::warn!(endpoint = %registration.endpoint, %error, "cannot trigger a pending rotation");
    }
}

/// What recording a registration's proof found.
struct Proof {
    /// The registration proved the device's current credentials (the previous ones are
    /// retired now).
    proven: bool,
    /// The device is marked for rotation.
    rotation_requested: bool,
}

/// Locks per endpoint, striped: a fixed number of locks, an endpoint's chosen by a keyed
/// hash of its name (keys random per process, so names cannot be picked to share a lock).
struct EndpointLocks {
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl EndpointLocks {
    const STRIPES: usize = 1024;

    fn new() -> Self {
        EndpointLocks {
            stripes: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    async fn lock(&self, endpoint: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = self.hasher.hash_one(endpoint) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}

/// The Bootstrap-Request Trigger (/1/x/9) of the device's first Server object instance.
fn bootstrap_trigger(registration: &cairn_store::Registration) -> cairn_lwm2m::LwM2mPath {
    let instance = registration
        .object_paths
        .iter()
        .find_map(|p| p.strip_prefix("/1/").and_then(|i| i.parse::<u16>().ok()))
        .unwrap_or(0);
    cairn_lwm2m::LwM2mPath::Resource(1, instance, 9)
}

/// The content format of the writes: the device's preference when it is a structured format
/// Cairn writes, TLV otherwise (every LwM2M 1.0 client reads it).
fn write_format(preferred: Option<ContentFormat>) -> ContentFormat {
    match preferred {
        Some(
            format @ (ContentFormat::SENML_CBOR
            | ContentFormat::SENML_JSON
            | ContentFormat::LWM2M_CBOR
            | ContentFormat::LWM2M_TLV),
        ) => format,
        _ => ContentFormat::LWM2M_TLV,
    }
}

impl Inner {
    fn publish(&self, event: BootstrapEvent) {
        let _ = self.events.send(event);
    }

    async fn handle(self: Arc<Self>, request: Request, secure: bool) -> Message {
        if request.message.payload.len() > MAX_REQUEST_PAYLOAD {
            return error_message(
                ResponseCode::REQUEST_ENTITY_TOO_LARGE,
                "a Bootstrap-Request has no payload",
            );
        }
        let coap = match CoapRequest::from_message(&request.message) {
            Ok(coap) => coap,
            Err(error) => return error_message(ResponseCode::BAD_REQUEST, &error.to_string()),
        };
        let operation = match ClientRequest::from_coap(&coap, &*self.config.models) {
            Ok(operation) => operation,
            Err(OperationError::NotAnOperation { .. }) => {
                return Message::response(Code::NOT_FOUND);
            }
            Err(error) => return error_message(ResponseCode::BAD_REQUEST, &error.to_string()),
        };
        let ClientRequest::BootstrapRequest {
            endpoint,
            preferred_format,
        } = operation
        else {
            return error_message(ResponseCode::NOT_FOUND, "this is a bootstrap server");
        };
        let identity = request.identity.as_deref().map(<[u8]>::to_vec);
        match self
            .accept(&endpoint, preferred_format, identity, request.peer, secure)
            .await
        {
            Ok(()) => Message::response(Code::CHANGED),
            Err((code, diagnostic)) => {
                tracing::info!(%endpoint, peer = %request.peer, %code, %diagnostic, "Bootstrap-Request refused");
                self.publish(BootstrapEvent::Refused {
                    endpoint,
                    reason: diagnostic.clone(),
                });
                error_message(code, &diagnostic)
            }
        }
    }

    /// The configuration of an endpoint: its own, else the template with the longest prefix.
    async fn settings_for(&self, endpoint: &str) -> Result<Option<BootstrapSettings>, StoreError> {
        let bootstrap = &self.stores.bootstrap;
        if let Some(config) = bootstrap.get_bootstrap_config(endpoint).await? {
            return Ok(Some(config.settings));
        }
        Ok(bootstrap
            .list_bootstrap_templates()
            .await?
            .into_iter()
            .filter(|t| endpoint.starts_with(&t.endpoint_prefix))
            .max_by_key(|t| t.endpoint_prefix.len())
            .map(|t| t.settings))
    }

    async fn accept(
        self: &Arc<Self>,
        endpoint: &str,
        preferred_format: Option<ContentFormat>,
        identity: Option<Vec<u8>>,
        peer: SocketAddr,
        secure: bool,
    ) -> Result<(), Refusal> {
        let forbidden = |why: &str| (ResponseCode::FORBIDDEN, why.to_owned());
        let guard = self.credentials.lock(endpoint).await;
        let device = if secure {
            let identity =
                identity.ok_or_else(|| forbidden("no authenticated identity on this session"))?;
            let device = self
                .stores
                .bootstrap
                .device_by_bootstrap_identity(&identity)
                .await
                .map_err(store_refusal)?
                .filter(|device| device.endpoint == endpoint)
                .ok_or_else(|| forbidden("the endpoint name does not belong to this identity"))?;
            Some((device, identity))
        } else {
            None
        };
        let settings = self
            .settings_for(endpoint)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| {
                (
                    ResponseCode::NOT_FOUND,
                    "no bootstrap configuration for this endpoint".to_owned(),
                )
            })?;
        let device = match device {
            Some((device, identity)) => Some(self.prepare(device, &identity, &settings).await?),
            None => {
                if !settings.allow_unsecured || credentials::credential_server(&settings).is_some()
                {
                    return Err(forbidden(
                        "bootstrap over plain CoAP is not allowed for this endpoint",
                    ));
                }
                if !settings.servers.is_empty() {
                    self.stores
                        .security
                        .put_security_info(SecurityInfo {
                            endpoint: endpoint.to_owned(),
                            mode: SecurityMode::NoSec,
                            created_at_ms: unix_millis(),
                        })
                        .await
                        .map_err(store_refusal)?;
                }
                None
            }
        };
        drop(guard);
        self.spawn_session(
            endpoint.to_owned(),
            peer,
            secure,
            settings,
            device,
            write_format(preferred_format),
        );
        Ok(())
    }

    /// New credentials for the device, durable before it hears 2.04: the bootstrap store's
    /// record (which keeps the previous ones valid) and the DM security store's, in one
    /// commit when they are one store.
    async fn prepare(
        &self,
        device: DeviceCredentials,
        identity: &[u8],
        settings: &BootstrapSettings,
    ) -> Result<DeviceCredentials, Refusal> {
        let in_security_store = self
            .stores
            .security
            .get_security_info(&device.endpoint)
            .await
            .map_err(store_refusal)?
            .map(|info| info.mode);
        let updated = credentials::on_bootstrap_request(
            device,
            Some(identity),
            settings,
            in_security_store,
            self.config.certificates.as_deref(),
            unix_millis(),
        )
        .map_err(|error| match error {
            CredentialError::Unsupported(_) => (ResponseCode::NOT_IMPLEMENTED, error.to_string()),
            CredentialError::UnknownIdentity => (ResponseCode::FORBIDDEN, error.to_string()),
            CredentialError::Random(_) | CredentialError::Ca(_) => {
                tracing::error!(%error, "cannot generate credentials");
                (ResponseCode::INTERNAL_SERVER_ERROR, String::new())
            }
        })?;
        let security = updated.dm.as_ref().map(|dm| SecurityInfo {
            endpoint: updated.endpoint.clone(),
            mode: credentials::security_mode(dm.kind, &dm.current),
            created_at_ms: unix_millis(),
        });
        if let Ok(mut marked) = self.rotation_marked.lock() {
            marked.remove(&updated.endpoint);
        }
        let stores = &self.stores;
        match security {
            Some(security) if stores.security_in_bootstrap_store => stores
                .bootstrap
                .put_device_credentials_and_security(updated.clone(), security)
                .await
                .map_err(store_refusal)?,
            security => {
                // The bootstrap store first: it keeps the previous credentials valid.
                stores
                    .bootstrap
                    .put_device_credentials(updated.clone())
                    .await
                    .map_err(store_refusal)?;
                if let Some(security) = security {
                    stores
                        .security
                        .put_security_info(security)
                        .await
                        .map_err(store_refusal)?;
                }
            }
        }
        Ok(updated)
    }

    fn spawn_session(
        self: &Arc<Self>,
        endpoint: String,
        peer: SocketAddr,
        secure: bool,
        settings: BootstrapSettings,
        device: Option<DeviceCredentials>,
        format: ContentFormat,
    ) {
        let number = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inner = Arc::downgrade(self);
        let name = endpoint.clone();
        let task = tokio::spawn(async move {
            let Some(this) = inner.upgrade() else {
                return;
            };
            this.publish(BootstrapEvent::Started {
                endpoint: name.clone(),
            });
            let socket = if secure { &this.dtls } else { &this.coap };
            let Some(socket) = socket.as_ref() else {
                return;
            };
            let exchange = session::Exchange {
                socket,
                peer,
                models: &this.config.models,
                request_timeout: this.config.request_timeout,
                attempts: this.config.attempts,
                certificates: this.config.certificates.as_deref(),
            };
            let outcome = session::run(&exchange, format, &settings, device.as_ref()).await;
            this.finish_session(&name, peer, number, device.is_some(), outcome)
                .await;
        });
        let displaced = self
            .session_peers
            .lock()
            .ok()
            .and_then(|mut peers| peers.insert(peer, endpoint.clone()))
            .filter(|other| *other != endpoint);
        if let Ok(mut sessions) = self.sessions.lock() {
            if let Some((_, stale)) = displaced.and_then(|other| sessions.remove(&other)) {
                // Another device now speaks from the address this sequence writes to.
                stale.abort();
            }
            if let Some((_, previous)) = sessions.insert(endpoint, (number, task.abort_handle())) {
                // The device started over (it restarted mid-sequence).
                previous.abort();
            }
        }
    }

    async fn finish_session(
        &self,
        endpoint: &str,
        peer: SocketAddr,
        number: u64,
        has_credentials: bool,
        outcome: session::Outcome,
    ) {
        let (result, event) = match outcome {
            session::Outcome::Finished => {
                tracing::info!(%endpoint, "bootstrap finished");
                (
                    "finished".to_owned(),
                    BootstrapEvent::Finished {
                        endpoint: endpoint.to_owned(),
                    },
                )
            }
            session::Outcome::Failed { step, reason } => {
                tracing::warn!(%endpoint, %step, %reason, "bootstrap failed");
                (
                    format!("failed at {step}: {reason}"),
                    BootstrapEvent::Failed {
                        endpoint: endpoint.to_owned(),
                        step,
                        reason,
                    },
                )
            }
        };
        if has_credentials {
            let _guard = self.credentials.lock(endpoint).await;
            let bootstrap = &self.stores.bootstrap;
            match bootstrap.get_device_credentials(endpoint).await {
                Ok(Some(mut device)) => {
                    if matches!(event, BootstrapEvent::Finished { .. }) {
                        device.status.finished = device.status.finished.saturating_add(1);
                    }
                    device.status.last_result = Some(result);
                    if let Err(error) = bootstrap.put_device_credentials(device).await {
                        tracing::warn!(%error, "cannot record the bootstrap result");
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot record the bootstrap result"),
            }
        }
        if let Ok(mut sessions) = self.sessions.lock() {
            if sessions.get(endpoint).is_some_and(|(n, _)| *n == number) {
                sessions.remove(endpoint);
                if let Ok(mut peers) = self.session_peers.lock() {
                    if peers.get(&peer).is_some_and(|owner| owner == endpoint) {
                        peers.remove(&peer);
                    }
                }
            }
        }
        self.publish(event);
    }

    async fn registered(
        &self,
        endpoint: &str,
        kind: CredentialKind,
        key: &[u8],
    ) -> Result<bool, StoreError> {
        Ok(self.record_proof(endpoint, kind, key).await?.proven)
    }

    /// [`Inner::registered`], also telling whether the device is marked for rotation (from
    /// the same read of its record).
    async fn record_proof(
        &self,
        endpoint: &str,
        kind: CredentialKind,
        key: &[u8],
    ) -> Result<Proof, StoreError> {
        let _guard = self.credentials.lock(endpoint).await;
        let Some(device) = self
            .stores
            .bootstrap
            .get_device_credentials(endpoint)
            .await?
        else {
            return Ok(Proof {
                proven: false,
                rotation_requested: false,
            });
        };
        let rotation_requested = device.status.rotation_requested;
        let Some(proven) = credentials::on_registration(device, kind, key) else {
            return Ok(Proof {
                proven: false,
                rotation_requested,
            });
        };
        self.stores.bootstrap.put_device_credentials(proven).await?;
        tracing::info!(%endpoint, "new credentials proven; previous ones retired");
        self.publish(BootstrapEvent::CredentialsProven {
            endpoint: endpoint.to_owned(),
        });
        Ok(Proof {
            proven: true,
            rotation_requested,
        })
    }
}
