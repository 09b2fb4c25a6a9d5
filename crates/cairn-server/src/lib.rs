//! The LwM2M device-management server (OMA LwM2M Core 1.2 §6: Client Registration,
//! Device Management and Information Reporting interfaces, Send).
//!
//! [`LwM2mServer::start`] binds the device-facing sockets (CoAP and CoAP over DTLS); devices
//! register there, and the API ([`LwM2mServer::read`], [`LwM2mServer::write`],
//! [`LwM2mServer::observe`], ...) sends them requests. What happens is published on an event
//! bus ([`LwM2mServer::events`]) for the operator side.

pub mod bootstrap;
pub mod registration;
pub mod security;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_coap::{Code, Message};
use cairn_lwm2m::coap_message::MessageError;
use cairn_lwm2m::model::Version;
use cairn_lwm2m::node::{LwM2mNode, LwM2mObjectInstance};
use cairn_lwm2m::operations::ExecuteArgument;
use cairn_lwm2m::{
    AttributeSet, ClientRequest, CoapRequest, CoapResponse, LwM2mPath, Lwm2mResponse,
    ModelRegistry, OperationError, ResponseCode, ResponseContent, ServerRequest, WriteMode,
};
use cairn_transport::{CoapEndpoint, Observation, Reply, Request, Security, TransportError};
use tokio::sync::{Notify, broadcast, mpsc};

pub use cairn_store::{
    EmbeddedStore, ObservationStore, PeerIdentity, Registration, RegistrationStore, SecurityInfo,
    SecurityInfoSummary, SecurityMode, SecurityStore, StoreError,
};
pub use registration::Registry;
pub use security::StorePskResolver;

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// Plain CoAP for devices (only endpoints allowed NoSec may register there).
    pub coap_listen: Option<SocketAddr>,
    /// CoAP over DTLS for devices.
    pub dtls_listen: Option<SocketAddr>,
    /// How long an API call waits for the device's response.
    pub request_timeout: Duration,
    /// How long a request to a sleeping queue-mode device waits for it to wake.
    pub queue_timeout: Duration,
    /// How long a queue-mode device stays reachable after it last spoke
    /// (Transport Binding §6.4.5: MAX_TRANSMIT_WAIT, 93 s).
    pub awake_window: Duration,
    /// Accepted lifetimes, in seconds.
    pub lifetime_range: (u32, u32),
    /// Slack after a lifetime ends before the registration is removed.
    pub expiry_grace: Duration,
    pub max_registrations: usize,
    /// Object models; the core objects are always there.
    pub models: Arc<ModelRegistry>,
    /// CoAP transmission parameters and limits of the device sockets.
    pub coap: cairn_coap::Config,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            coap_listen: Some(SocketAddr::from(([0, 0, 0, 0], 5683))),
            dtls_listen: Some(SocketAddr::from(([0, 0, 0, 0], 5684))),
            request_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(600),
            awake_window: Duration::from_secs(93),
            lifetime_range: (1, 365 * 24 * 3600),
            expiry_grace: Duration::from_secs(5),
            max_registrations: 1_000_000,
            models: Arc::new(ModelRegistry::with_core_models()),
            coap: cairn_coap::Config::default(),
        }
    }
}

/// What happened, for the operator side.
#[derive(Clone, Debug)]
pub enum ServerEvent {
    Registered(Registration),
    Updated(Registration),
    Deregistered(Registration),
    Expired(Registration),
    /// A request waits for a queue-mode device to wake up.
    RequestQueued {
        endpoint: String,
    },
    Notification {
        endpoint: String,
        path: LwM2mPath,
        node: LwM2mNode,
    },
    Send {
        endpoint: String,
        nodes: BTreeMap<LwM2mPath, LwM2mNode>,
    },
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no registration for endpoint {0:?}")]
    UnknownEndpoint(String),
    #[error("no socket for this device's transport (CoAP or DTLS listener disabled)")]
    NoSocket,
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the queue-mode device did not wake up within {0:?}")]
    QueueTimeout(Duration),
    #[error("the device answered {code}{}", diagnostic.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Device {
        code: ResponseCode,
        diagnostic: Option<String>,
    },
    #[error(transparent)]
    Operation(#[from] OperationError),
    #[error("malformed response: {0}")]
    Message(#[from] MessageError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Where the server keeps what must survive a restart.
#[derive(Clone)]
pub struct Stores {
    pub registrations: Arc<dyn RegistrationStore>,
    pub security: Arc<dyn SecurityStore>,
    pub observations: Arc<dyn ObservationStore>,
    /// Synchronous PSK lookups for the DTLS handshake.
    pub psk_resolver: Arc<dyn cairn_dtls::PskResolver>,
}

impl Stores {
    /// Everything in one embedded store.
    pub fn embedded(store: EmbeddedStore) -> Stores {
        Stores {
            registrations: Arc::new(store.clone()),
            security: Arc::new(store.clone()),
            observations: Arc::new(store.clone()),
            psk_resolver: Arc::new(StorePskResolver(store)),
        }
    }
}

struct Inner {
    config: ServerConfig,
    registry: RwLock<Registry>,
    stores: Stores,
    events: broadcast::Sender<ServerEvent>,
    coap: Option<CoapEndpoint>,
    dtls: Option<CoapEndpoint>,
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    /// Set by `shutdown`: observations ending then are kept for the next start.
    stopping: std::sync::atomic::AtomicBool,
}

/// A running LwM2M server.
#[derive(Clone)]
pub struct LwM2mServer {
    inner: Arc<Inner>,
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LwM2mServer {
    /// Binds the device sockets and starts serving.
    pub async fn start(config: ServerConfig, stores: Stores) -> Result<Self, ServerError> {
        let registry = load_registrations(&*stores.registrations).await?;
        let (events, _) = broadcast::channel(4096);
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<Inner>>> =
            Arc::new(std::sync::OnceLock::new());
        let handler_slot = slot.clone();
        let handler: Arc<dyn cairn_transport::Handler> = Arc::new(DeviceHandler(handler_slot));
        let coap = match config.coap_listen {
            Some(address) => Some(
                CoapEndpoint::bind(address, config.coap.clone(), Some(handler.clone()))
                    .await
                    .map_err(|source| ServerError::Bind { address, source })?,
            ),
            None => None,
        };
        let dtls = match config.dtls_listen {
            Some(address) => {
                let mut dtls_config = cairn_dtls::ServerConfig::new(stores.psk_resolver.clone());
                // Connection IDs keep a device's session when its NAT mapping changes.
                dtls_config.connection_id = Some(cairn_dtls::CidConfig {
                    length: 8,
                    node_prefix: Vec::new(),
                });
                Some(
                    CoapEndpoint::bind_secured(
                        address,
                        config.coap.clone(),
                        Security::DtlsServer(dtls_config),
                        Some(handler.clone()),
                    )
                    .await
                    .map_err(|source| ServerError::Bind { address, source })?,
                )
            }
            None => None,
        };
        let inner = Arc::new(Inner {
            config,
            registry: RwLock::new(registry),
            stores,
            events,
            coap,
            dtls,
            wake: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let _ = slot.set(Arc::downgrade(&inner));
        restore_observations(&inner).await;
        tokio::spawn(expire_registrations(Arc::downgrade(&inner)));
        Ok(LwM2mServer { inner })
    }

    /// The bound CoAP and DTLS addresses.
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.inner.coap.as_ref().map(CoapEndpoint::local_addr),
            self.inner.dtls.as_ref().map(CoapEndpoint::local_addr),
        )
    }

    pub fn events(&self) -> broadcast::Receiver<ServerEvent> {
        self.inner.events.subscribe()
    }

    pub fn registrations(&self) -> Vec<Registration> {
        self.inner
            .registry
            .read()
            .map(|r| r.all())
            .unwrap_or_default()
    }

    pub fn registration(&self, endpoint: &str) -> Option<Registration> {
        self.inner
            .registry
            .read()
            .ok()?
            .by_endpoint(endpoint)
            .cloned()
    }

    /// Adds or replaces the security information of an endpoint (durably).
    pub async fn add_security(&self, info: SecurityInfo) -> Result<(), ServerError> {
        self.inner.stores.security.put_security_info(info).await?;
        Ok(())
    }

    /// Removes an endpoint's security information; `false` if it had none.
    pub async fn remove_security(&self, endpoint: &str) -> Result<bool, ServerError> {
        Ok(self
            .inner
            .stores
            .security
            .remove_security_info(endpoint)
            .await?
            .is_some())
    }

    /// Every endpoint's security information, without secrets.
    pub async fn security_summaries(&self) -> Result<Vec<SecurityInfoSummary>, ServerError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .inner
                .stores
                .security
                .list_security_summaries(after.as_deref(), 500)
                .await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(all),
            }
        }
    }

    pub fn models(&self) -> &ModelRegistry {
        &self.inner.config.models
    }

    /// Sends any device-management request and returns the device's decoded answer.
    pub async fn send_request(
        &self,
        endpoint: &str,
        request: ServerRequest,
    ) -> Result<Lwm2mResponse, ServerError> {
        self.inner.send_request(endpoint, &request).await
    }

    /// Read (Core §6.3.1).
    pub async fn read(
        &self,
        endpoint: &str,
        path: LwM2mPath,
        accept: Option<cairn_coap::ContentFormat>,
    ) -> Result<LwM2mNode, ServerError> {
        let response = self
            .inner
            .send_request(endpoint, &ServerRequest::Read { path, accept })
            .await?;
        node_of(response)
    }

    /// Discover (Core §6.3.2): the links and attributes under `path`.
    pub async fn discover(
        &self,
        endpoint: &str,
        path: LwM2mPath,
    ) -> Result<Lwm2mResponse, ServerError> {
        self.inner
            .send_request(endpoint, &ServerRequest::Discover { path })
            .await
            .and_then(success)
    }

    /// Write (Core §6.3.3), replace or partial update.
    pub async fn write(
        &self,
        endpoint: &str,
        path: LwM2mPath,
        mode: WriteMode,
        node: LwM2mNode,
        format: Option<cairn_coap::ContentFormat>,
    ) -> Result<(), ServerError> {
        let format = match format {
            Some(format) => format,
            None => self.preferred_format(endpoint)?,
        };
        let request = ServerRequest::Write {
            path,
            mode,
            format,
            node,
        };
        self.inner
            .send_request(endpoint, &request)
            .await
            .and_then(success)
            .map(drop)
    }

    /// Write-Attributes (Core §6.3.4).
    pub async fn write_attributes(
        &self,
        endpoint: &str,
        path: LwM2mPath,
        attributes: AttributeSet,
    ) -> Result<(), ServerError> {
        let request = ServerRequest::WriteAttributes { path, attributes };
        self.inner
            .send_request(endpoint, &request)
            .await
            .and_then(success)
            .map(drop)
    }

    /// Execute (Core §6.3.5).
    pub async fn execute(
        &self,
        endpoint: &str,
        path: LwM2mPath,
        arguments: Vec<ExecuteArgument>,
    ) -> Result<(), ServerError> {
        let request = ServerRequest::Execute { path, arguments };
        self.inner
            .send_request(endpoint, &request)
            .await
            .and_then(success)
            .map(drop)
    }

    /// Create (Core §6.3.6); returns the location of the new instance when the device gives one.
    pub async fn create(
        &self,
        endpoint: &str,
        path: LwM2mPath,
        instances: Vec<LwM2mObjectInstance>,
    ) -> Result<Lwm2mResponse, ServerError> {
        let format = self.preferred_format(endpoint)?;
        let request = ServerRequest::Create {
            path,
            format,
            instances,
        };
        self.inner
            .send_request(endpoint, &request)
            .await
            .and_then(success)
    }

    /// Delete (Core §6.3.7).
    pub async fn delete(&self, endpoint: &str, path: LwM2mPath) -> Result<(), ServerError> {
        self.inner
            .send_request(endpoint, &ServerRequest::Delete { path })
            .await
            .and_then(success)
            .map(drop)
    }

    /// Read-Composite (Core §6.3.8, LwM2M 1.1 and later).
    pub async fn read_composite(
        &self,
        endpoint: &str,
        paths: Vec<LwM2mPath>,
        format: cairn_coap::ContentFormat,
    ) -> Result<BTreeMap<LwM2mPath, LwM2mNode>, ServerError> {
        let request = ServerRequest::ReadComposite {
            paths,
            format,
            accept: Some(format),
        };
        match self
            .inner
            .send_request(endpoint, &request)
            .await
            .and_then(success)?
            .content
        {
            ResponseContent::Nodes(nodes) => Ok(nodes),
            _ => Err(ServerError::Operation(OperationError::Missing(
                "nodes in the Read-Composite response",
            ))),
        }
    }

    /// Write-Composite (Core §6.3.9).
    pub async fn write_composite(
        &self,
        endpoint: &str,
        nodes: BTreeMap<LwM2mPath, LwM2mNode>,
        format: cairn_coap::ContentFormat,
    ) -> Result<(), ServerError> {
        let request = ServerRequest::WriteComposite { nodes, format };
        self.inner
            .send_request(endpoint, &request)
            .await
            .and_then(success)
            .map(drop)
    }

    /// Observe (Core §6.4.1): the current value and a stream of notifications.
    pub async fn observe(
        &self,
        endpoint: &str,
        path: LwM2mPath,
        accept: Option<cairn_coap::ContentFormat>,
    ) -> Result<(LwM2mNode, Notifications), ServerError> {
        self.inner.observe(endpoint, path, accept).await
    }

    /// The content format to write in for a device: by its LwM2M version.
    fn preferred_format(&self, endpoint: &str) -> Result<cairn_coap::ContentFormat, ServerError> {
        let registration = self
            .registration(endpoint)
            .ok_or_else(|| ServerError::UnknownEndpoint(endpoint.into()))?;
        Ok(preferred_format(registration::lwm2m_version(&registration)))
    }

    /// Stops the device sockets.
    pub async fn shutdown(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for endpoint in self.inner.coap.iter().chain(self.inner.dtls.iter()) {
            endpoint.shutdown().await;
        }
    }
}

/// The device-facing request handler of both sockets.
struct DeviceHandler(Arc<std::sync::OnceLock<std::sync::Weak<Inner>>>);

impl DeviceHandler {
    fn inner(&self) -> Option<Arc<Inner>> {
        self.0.get().and_then(std::sync::Weak::upgrade)
    }
}

impl cairn_transport::Handler for DeviceHandler {
    fn handle(&self, request: &Request) -> Reply {
        match self.inner() {
            Some(inner) => Reply::Pending(Box::pin(inner.handle_client(request.clone()))),
            None => Reply::Ready(Message::response(Code::SERVICE_UNAVAILABLE)),
        }
    }

    fn peer_moved(&self, old: SocketAddr, new: SocketAddr) {
        let Some(inner) = self.inner() else {
            return;
        };
        let Ok(mut registry) = inner.registry.write() else {
            return;
        };
        if let Some(mut registration) = registry.by_address(old).cloned() {
            tracing::info!(endpoint = %registration.endpoint, %old, %new, "device address changed");
            registration.peer_address = new;
            registry.insert(registration);
        }
    }
}

/// The structured format every client of a version supports: TLV for LwM2M 1.0, SenML CBOR
/// from 1.1 on (Core 1.1 §7.4).
pub fn preferred_format(version: Version) -> cairn_coap::ContentFormat {
    if version >= Version::V1_1 {
        cairn_coap::ContentFormat::SENML_CBOR
    } else {
        cairn_coap::ContentFormat::LWM2M_TLV
    }
}

fn success(response: Lwm2mResponse) -> Result<Lwm2mResponse, ServerError> {
    if response.code.is_success() {
        Ok(response)
    } else {
        Err(ServerError::Device {
            code: response.code,
            diagnostic: response.diagnostic,
        })
    }
}

fn node_of(response: Lwm2mResponse) -> Result<LwM2mNode, ServerError> {
    match success(response)?.content {
        ResponseContent::Node(node) => Ok(node),
        _ => Err(ServerError::Operation(OperationError::Missing(
            "a node in the response",
        ))),
    }
}

/// Notifications of one observation; dropping it cancels the observation on the device.
pub struct Notifications {
    receiver: mpsc::Receiver<LwM2mNode>,
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Notifications {
    /// The next notified value, or `None` once the observation has ended.
    pub async fn next(&mut self) -> Option<LwM2mNode> {
        self.receiver.recv().await
    }

    /// Cancels the observation actively (GET with Observe = 1).
    pub fn cancel(mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
    }
}

impl Inner {
    fn publish(&self, event: ServerEvent) {
        let _ = self.events.send(event);
    }

    fn waker(&self, endpoint: &str) -> Arc<Notify> {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        wake.entry(endpoint.to_owned()).or_default().clone()
    }

    fn socket(&self, registration: &Registration) -> Result<&CoapEndpoint, ServerError> {
        let socket = if registration::is_secure(registration) {
            self.dtls.as_ref()
        } else {
            self.coap.as_ref()
        };
        socket.ok_or(ServerError::NoSocket)
    }

    /// Waits until a queue-mode device is reachable (Transport Binding §6.4.5).
    async fn reachable(&self, endpoint: &str) -> Result<Registration, ServerError> {
        let deadline = tokio::time::Instant::now() + self.config.queue_timeout;
        loop {
            let waker = self.waker(endpoint);
            let woken = waker.notified();
            let registration = self
                .registry
                .read()
                .ok()
                .and_then(|r| r.by_endpoint(endpoint).cloned())
                .ok_or_else(|| ServerError::UnknownEndpoint(endpoint.into()))?;
            let awake_until =
                registration.last_update_ms + self.config.awake_window.as_millis() as u64;
            if !registration.queue_mode || unix_millis() < awake_until {
                return Ok(registration);
            }
            self.publish(ServerEvent::RequestQueued {
                endpoint: endpoint.into(),
            });
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(ServerError::QueueTimeout(self.config.queue_timeout));
            }
        }
    }

    async fn send_request(
        &self,
        endpoint: &str,
        request: &ServerRequest,
    ) -> Result<Lwm2mResponse, ServerError> {
        request.validate()?;
        let registration = self.reachable(endpoint).await?;
        let models = self
            .config
            .models
            .for_versions(&registration::object_versions(&registration));
        let message = request.to_coap(&models)?.to_message();
        let socket = self.socket(&registration)?;
        let timeout = self.config.request_timeout;
        let response =
            tokio::time::timeout(timeout, socket.request(registration.peer_address, message))
                .await
                .map_err(|_| ServerError::Timeout(timeout))??;
        let coap = CoapResponse::from_message(&response)?;
        Ok(request.decode_response(&coap, &models)?)
    }

    async fn observe(
        self: &Arc<Self>,
        endpoint: &str,
        path: LwM2mPath,
        accept: Option<cairn_coap::ContentFormat>,
    ) -> Result<(LwM2mNode, Notifications), ServerError> {
        let request = ServerRequest::Observe { path, accept };
        request.validate()?;
        let registration = self.reachable(endpoint).await?;
        let models = self
            .config
            .models
            .for_versions(&registration::object_versions(&registration));
        let message = request.to_coap(&models)?.to_message();
        let socket = self.socket(&registration)?;
        let timeout = self.config.request_timeout;
        let (first, observation) =
            tokio::time::timeout(timeout, socket.observe(registration.peer_address, message))
                .await
                .map_err(|_| ServerError::Timeout(timeout))??;
        let response = request.decode_response(&CoapResponse::from_message(&first)?, &models)?;
        let node = node_of(response)?;
        // Kept in the store so that notifications still reach the server after a restart.
        let record = match observation.token() {
            Some(token) => {
                let record = cairn_store::Observation {
                    id: cairn_store::random_id()?,
                    registration_id: registration.id.clone(),
                    endpoint: endpoint.to_owned(),
                    token: token.to_vec(),
                    paths: vec![path.to_string()],
                    content_format: accept.map(|f| f.value()),
                    peer_address: registration.peer_address,
                    created_at_ms: unix_millis(),
                };
                self.stores
                    .observations
                    .add_observation(record.clone())
                    .await?;
                Some(record.id)
            }
            None => None,
        };
        let (sender, receiver) = mpsc::channel(64);
        let (cancel, cancelled) = tokio::sync::oneshot::channel();
        tokio::spawn(forward_notifications(
            Arc::downgrade(self),
            Forward {
                endpoint: endpoint.to_owned(),
                request,
                record,
                sender: Some(sender),
                cancelled: Some(cancelled),
            },
            observation,
        ));
        Ok((
            node,
            Notifications {
                receiver,
                cancel: Some(cancel),
            },
        ))
    }

    // ----- client registration interface -----

    async fn handle_client(self: Arc<Self>, request: Request) -> Message {
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
        let identity = match request.identity.as_deref() {
            Some(identity) => PeerIdentity::Psk(identity.to_vec()),
            None => PeerIdentity::Unsecured,
        };
        let result = match operation {
            ClientRequest::Register {
                endpoint,
                lwm2m_version,
                parameters,
            } => {
                self.register(request.peer, identity, endpoint, lwm2m_version, parameters)
                    .await
            }
            ClientRequest::Update {
                location,
                parameters,
            } => {
                self.update(request.peer, &identity, &location, parameters)
                    .await
            }
            ClientRequest::Deregister { location } => self.deregister(&identity, &location).await,
            ClientRequest::Send { nodes, .. } => self.receive_send(request.peer, &identity, nodes),
            ClientRequest::BootstrapRequest { .. } => Err((
                ResponseCode::NOT_FOUND,
                "this is not a bootstrap server".into(),
            )),
        };
        match result {
            Ok(response) => response,
            Err((code, diagnostic)) => error_message(code, &diagnostic),
        }
    }

    /// The endpoint name must be the one the authenticated identity belongs to; without DTLS,
    /// the endpoint must have been allowed to register unsecured.
    async fn authorize(&self, endpoint: &str, identity: &PeerIdentity) -> Result<(), Refusal> {
        let security = &self.stores.security;
        let (allowed, why) = match identity {
            PeerIdentity::Psk(identity) => {
                let info = security
                    .get_security_info_by_psk_identity(identity)
                    .await
                    .map_err(store_refusal)?;
                (
                    info.is_some_and(|info| info.endpoint == endpoint),
                    "the endpoint name does not belong to this DTLS identity",
                )
            }
            PeerIdentity::Unsecured => {
                let info = security
                    .get_security_info(endpoint)
                    .await
                    .map_err(store_refusal)?;
                (
                    info.is_some_and(|info| matches!(info.mode, SecurityMode::NoSec)),
                    "unsecured registration is not allowed for this endpoint",
                )
            }
            PeerIdentity::Rpk(_) | PeerIdentity::X509(_) => {
                (false, "this security mode is not served here")
            }
        };
        if allowed {
            Ok(())
        } else {
            Err((ResponseCode::FORBIDDEN, why.into()))
        }
    }

    fn check_lifetime(&self, lifetime: u32) -> Result<(), Refusal> {
        let (min, max) = self.config.lifetime_range;
        if (min..=max).contains(&lifetime) {
            Ok(())
        } else {
            Err((
                ResponseCode::BAD_REQUEST,
                format!("lifetime {lifetime} s is outside {min}..={max} s"),
            ))
        }
    }

    async fn register(
        &self,
        peer: SocketAddr,
        identity: PeerIdentity,
        endpoint: String,
        lwm2m_version: Option<Version>,
        parameters: cairn_lwm2m::RegistrationParameters,
    ) -> Result<Message, Refusal> {
        self.authorize(&endpoint, &identity).await?;
        let lifetime = parameters
            .lifetime
            .unwrap_or(registration::DEFAULT_LIFETIME);
        self.check_lifetime(lifetime)?;
        {
            let registry = self.registry.read().map_err(|_| internal())?;
            if registry.len() >= self.config.max_registrations
                && registry.by_endpoint(&endpoint).is_none()
            {
                return Err((
                    ResponseCode::SERVICE_UNAVAILABLE,
                    "registration limit reached".into(),
                ));
            }
        }
        let now = unix_millis();
        let objects = parameters.objects.unwrap_or_default();
        let record = Registration {
            id: cairn_store::random_id().map_err(store_refusal)?,
            endpoint,
            lifetime_s: lifetime,
            lwm2m_version: lwm2m_version.unwrap_or(Version::V1_0).to_string(),
            binding: parameters.binding.unwrap_or_else(|| "U".into()),
            queue_mode: parameters.queue_mode,
            sms_number: parameters.sms,
            object_links: registration::object_links(&objects),
            object_paths: objects.iter().map(|o| o.path.to_string()).collect(),
            peer_address: peer,
            identity,
            registered_at_ms: now,
            last_update_ms: now,
        };
        // Durable before the device hears 2.01.
        self.stores
            .registrations
            .add_registration(record.clone())
            .await
            .map_err(store_refusal)?;
        self.registry
            .write()
            .map_err(|_| internal())?
            .insert(record.clone());
        tracing::info!(endpoint = %record.endpoint, id = %record.id, %peer, "registered");
        self.waker(&record.endpoint).notify_waiters();
        let id = record.id.clone();
        self.publish(ServerEvent::Registered(record));
        let mut response = Message::response(Code::CREATED);
        response
            .options
            .push(cairn_coap::OptionNumber::LOCATION_PATH, b"rd".to_vec());
        response
            .options
            .push(cairn_coap::OptionNumber::LOCATION_PATH, id.into_bytes());
        Ok(response)
    }

    /// The registration a location (`rd/{id}`) names, if the caller is its owner.
    fn owned_registration(
        &self,
        identity: &PeerIdentity,
        location: &[String],
    ) -> Result<Registration, Refusal> {
        let not_found = || (ResponseCode::NOT_FOUND, "no such registration".to_string());
        let id = match location {
            [rd, id] if rd == "rd" => id,
            _ => return Err(not_found()),
        };
        let registry = self.registry.read().map_err(|_| internal())?;
        let registration = registry.get(id).ok_or_else(not_found)?;
        if registration.identity != *identity {
            return Err((
                ResponseCode::FORBIDDEN,
                "the registration belongs to another identity".into(),
            ));
        }
        Ok(registration.clone())
    }

    async fn update(
        &self,
        peer: SocketAddr,
        identity: &PeerIdentity,
        location: &[String],
        parameters: cairn_lwm2m::RegistrationParameters,
    ) -> Result<Message, Refusal> {
        let registration = self.owned_registration(identity, location)?;
        if let Some(lifetime) = parameters.lifetime {
            self.check_lifetime(lifetime)?;
        }
        let update = cairn_store::RegistrationUpdate {
            registration_id: registration.id.clone(),
            lifetime_s: parameters.lifetime,
            binding: parameters.binding,
            sms_number: parameters.sms,
            object_links: parameters.objects.map(|objects| {
                (
                    registration::object_links(&objects),
                    objects.iter().map(|o| o.path.to_string()).collect(),
                )
            }),
            peer_address: peer,
            updated_at_ms: unix_millis(),
        };
        let updated = self
            .stores
            .registrations
            .update_registration(update)
            .await
            .map_err(store_refusal)?
            .ok_or((ResponseCode::NOT_FOUND, "no such registration".to_string()))?
            .updated;
        self.registry
            .write()
            .map_err(|_| internal())?
            .insert(updated.clone());
        tracing::debug!(endpoint = %updated.endpoint, "registration updated");
        self.waker(&updated.endpoint).notify_waiters();
        self.publish(ServerEvent::Updated(updated));
        Ok(Message::response(Code::CHANGED))
    }

    async fn deregister(
        &self,
        identity: &PeerIdentity,
        location: &[String],
    ) -> Result<Message, Refusal> {
        let registration = self.owned_registration(identity, location)?;
        self.stores
            .registrations
            .remove_registration(&registration.id)
            .await
            .map_err(store_refusal)?;
        let removed = self
            .registry
            .write()
            .map_err(|_| internal())?
            .remove(&registration.id)
            .unwrap_or(registration);
        tracing::info!(endpoint = %removed.endpoint, "deregistered");
        self.publish(ServerEvent::Deregistered(removed));
        Ok(Message::response(Code::DELETED))
    }

    fn receive_send(
        &self,
        peer: SocketAddr,
        identity: &PeerIdentity,
        nodes: BTreeMap<LwM2mPath, LwM2mNode>,
    ) -> Result<Message, Refusal> {
        let registry = self.registry.read().map_err(|_| internal())?;
        let registration = registry
            .by_address(peer)
            .filter(|r| r.identity == *identity)
            .ok_or((
                ResponseCode::FORBIDDEN,
                "Send from a client that is not registered".to_string(),
            ))?;
        let endpoint = registration.endpoint.clone();
        drop(registry);
        self.publish(ServerEvent::Send { endpoint, nodes });
        Ok(Message::response(Code::CHANGED))
    }
}

/// A refusal to a device: the response code and a diagnostic payload.
type Refusal = (ResponseCode, String);

fn internal() -> Refusal {
    (ResponseCode::INTERNAL_SERVER_ERROR, String::new())
}

fn store_refusal(error: StoreError) -> Refusal {
    tracing::error!(%error, "store failure");
    (
        ResponseCode::INTERNAL_SERVER_ERROR,
        "storage unavailable".into(),
    )
}

/// Every registration in the store, at start.
async fn load_registrations(store: &dyn RegistrationStore) -> Result<Registry, ServerError> {
    let mut registry = Registry::default();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_registrations(after.as_deref(), 1000).await?;
        for registration in page.items {
            registry.insert(registration);
        }
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => return Ok(registry),
        }
    }
}

fn error_message(code: ResponseCode, diagnostic: &str) -> Message {
    let mut message = Message::response(code.code());
    message.payload = diagnostic.as_bytes().to_vec();
    message
}

/// Where the notifications of one observation go.
struct Forward {
    endpoint: String,
    request: ServerRequest,
    /// The observation's id in the store.
    record: Option<String>,
    /// The API caller's stream; `None` for an observation restored after a restart, whose
    /// notifications go to the event bus only.
    sender: Option<mpsc::Sender<LwM2mNode>>,
    cancelled: Option<tokio::sync::oneshot::Receiver<()>>,
}

async fn forward_notifications(
    inner: std::sync::Weak<Inner>,
    mut forward: Forward,
    mut observation: Observation,
) {
    let path = forward.request.path().unwrap_or(LwM2mPath::Root);
    let endpoint = forward.endpoint.clone();
    loop {
        let cancelled = async {
            match forward.cancelled.as_mut() {
                Some(cancelled) => {
                    let _ = cancelled.await;
                }
                None => std::future::pending().await,
            }
        };
        let caller_gone = async {
            match &forward.sender {
                Some(sender) => sender.closed().await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            message = observation.next() => message,
            () = cancelled => None,
            () = caller_gone => None,
        };
        let Some(message) = message else {
            break;
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let registration = inner
            .registry
            .read()
            .ok()
            .and_then(|r| r.by_endpoint(&endpoint).cloned());
        let versions = registration
            .map(|r| registration::object_versions(&r))
            .unwrap_or_default();
        let models = inner.config.models.for_versions(&versions);
        let decoded = CoapResponse::from_message(&message)
            .map_err(ServerError::from)
            .and_then(|coap| Ok(forward.request.decode_response(&coap, &models)?))
            .and_then(node_of);
        match decoded {
            Ok(node) => {
                inner.publish(ServerEvent::Notification {
                    endpoint: endpoint.clone(),
                    path,
                    node: node.clone(),
                });
                if let Some(sender) = &forward.sender {
                    let _ = sender.try_send(node);
                }
            }
            Err(error) => tracing::debug!(%endpoint, %error, "notification dropped"),
        }
    }
    // The observation ended on purpose (cancelled, caller gone, or ended by the device):
    // forget it, here and in the store. One that ends because the server stops is kept.
    let Some(inner) = inner.upgrade() else {
        return;
    };
    if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    observation.cancel().await;
    if let Some(id) = forward.record {
        if let Err(error) = inner.stores.observations.remove_observation(&id).await {
            tracing::warn!(%error, "cannot remove an ended observation");
        }
    }
}

/// Takes over the observations kept in the store, after a restart.
async fn restore_observations(inner: &Arc<Inner>) {
    let registrations = match inner.registry.read() {
        Ok(registry) => registry.all(),
        Err(_) => return,
    };
    let mut restored = 0;
    for registration in registrations {
        let observations = match inner
            .stores
            .observations
            .list_observations(&registration.id)
            .await
        {
            Ok(observations) => observations,
            Err(error) => {
                tracing::error!(%error, "cannot list observations");
                continue;
            }
        };
        for record in observations {
            let Some(path) = record
                .paths
                .first()
                .and_then(|p| p.parse::<LwM2mPath>().ok())
            else {
                continue;
            };
            let accept = record.content_format.map(cairn_coap::ContentFormat);
            let request = ServerRequest::Observe { path, accept };
            let models = inner
                .config
                .models
                .for_versions(&registration::object_versions(&registration));
            let Ok(coap) = request.to_coap(&models) else {
                continue;
            };
            let Ok(socket) = inner.socket(&registration) else {
                continue;
            };
            match socket
                .resume_observation(registration.peer_address, &record.token, coap.to_message())
                .await
            {
                Ok(observation) => {
                    let forward = Forward {
                        endpoint: registration.endpoint.clone(),
                        request,
                        record: Some(record.id),
                        sender: None,
                        cancelled: None,
                    };
                    tokio::spawn(forward_notifications(
                        Arc::downgrade(inner),
                        forward,
                        observation,
                    ));
                    restored += 1;
                }
                Err(error) => tracing::warn!(%error, "cannot restore an observation"),
            }
        }
    }
    if restored > 0 {
        tracing::info!(restored, "observations restored");
    }
}

async fn expire_registrations(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let cutoff = unix_millis().saturating_sub(inner.config.expiry_grace.as_millis() as u64);
        // The store checks expiry in the same transaction as the removal, so a device that
        // updates at this moment is not removed.
        let expired = match inner
            .stores
            .registrations
            .remove_expired_registrations(cutoff, 1000)
            .await
        {
            Ok(expired) => expired,
            Err(error) => {
                tracing::error!(%error, "cannot remove expired registrations");
                continue;
            }
        };
        for ended in expired {
            let registration = ended.registration;
            if let Ok(mut registry) = inner.registry.write() {
                registry.remove(&registration.id);
            }
            tracing::info!(endpoint = %registration.endpoint, "registration expired");
            inner.publish(ServerEvent::Expired(registration));
        }
    }
}
