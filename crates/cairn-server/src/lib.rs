//! The LwM2M device-management server (OMA LwM2M Core 1.2 §6: Client Registration,
//! Device Management and Information Reporting interfaces, Send).
//!
//! [`LwM2mServer::start`] binds the device-facing sockets (CoAP and CoAP over DTLS); devices
//! register there, and the API ([`LwM2mServer::read`], [`LwM2mServer::write`],
//! [`LwM2mServer::observe`], ...) sends them requests. What happens is published on an event
//! bus ([`LwM2mServer::events`]) for the operator side.

pub mod bootstrap;
pub mod campaign;
pub mod firmware;
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
use cairn_transport::{
    CoapEndpoint, Mailbox, ObservationHandle, Reply, Request, Security, TransportError,
};
use tokio::sync::{Notify, broadcast};

pub use cairn_store::{
    EmbeddedStore, ObservationStore, PeerIdentity, Registration, RegistrationStore, SecurityInfo,
    SecurityInfoSummary, SecurityMode, SecurityStore, StoreError, X509Expectation,
};
pub use cairn_transport::ObservationMemory;
pub use registration::Registry;
pub use security::{DeviceCertificates, StorePskResolver, peer_identity};

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
    /// Certificate mode of the DTLS listener (X.509 and raw-public-key devices), beside PSK.
    pub certificates: Option<DeviceCertificates>,
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
            certificates: None,
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
    #[error("certificate configuration: {0}")]
    Certificate(#[from] cairn_dtls::CertificateError),
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
    /// Firmware images and campaign state.
    pub blobs: Arc<dyn cairn_store::BlobStore>,
    /// Synchronous PSK lookups for the DTLS handshake.
    pub psk_resolver: Arc<dyn cairn_dtls::PskResolver>,
    /// Synchronous raw-public-key lookups for the DTLS handshake.
    pub raw_public_keys: Arc<dyn cairn_dtls::RawPublicKeyResolver>,
}

impl Stores {
    /// Everything in one embedded store.
    pub fn embedded(store: EmbeddedStore) -> Stores {
        Stores {
            registrations: Arc::new(store.clone()),
            security: Arc::new(store.clone()),
            observations: Arc::new(store.clone()),
            blobs: Arc::new(store.clone()),
            psk_resolver: Arc::new(StorePskResolver(store.clone())),
            raw_public_keys: Arc::new(security::StoreRawPublicKeys(store)),
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
    firmware: firmware::Repository,
    campaigns: Mutex<HashMap<String, campaign::Running>>,
}

/// A running LwM2M server.
#[derive(Clone)]
pub struct LwM2mServer {
    inner: Arc<Inner>,
    /// How long API calls wait for a device's answer; the configured default when `None`.
    timeout: Option<Duration>,
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
                if let Some(certificates) = &config.certificates {
                    dtls_config.certificate = Some(Arc::new(
                        certificates.server_config(stores.raw_public_keys.clone())?,
                    ));
                    dtls_config
                        .cipher_suites
                        .extend(cairn_dtls::CipherSuite::ECDHE_ECDSA);
                }
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
            events,
            coap,
            dtls,
            wake: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            firmware: firmware::Repository::new(stores.blobs.clone()),
            campaigns: Mutex::new(HashMap::new()),
            stores,
        });
        let _ = slot.set(Arc::downgrade(&inner));
        restore_observations(&inner).await;
        tokio::spawn(expire_registrations(Arc::downgrade(&inner)));
        let server = LwM2mServer {
            inner,
            timeout: None,
        };
        server.resume_campaigns().await;
        Ok(server)
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

    /// How many devices are registered, without copying their registrations.
    pub fn registration_count(&self) -> usize {
        self.inner.registry.read().map(|r| r.len()).unwrap_or(0)
    }

    pub fn registration(&self, endpoint: &str) -> Option<Registration> {
        self.inner.registry.read().ok()?.by_endpoint(endpoint)
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

    /// Removes an endpoint's registration and its stored observations, as a de-registration
    /// would (a `Deregistered` event is published); `false` if it was not registered. The
    /// device may register again if its credentials still allow it.
    pub async fn remove_registration(&self, endpoint: &str) -> Result<bool, ServerError> {
        let Some(registration) = self.registration(endpoint) else {
            return Ok(false);
        };
        self.inner
            .stores
            .registrations
            .remove_registration(&registration.id)
            .await?;
        let removed = self
            .inner
            .registry
            .write()
            .ok()
            .and_then(|mut registry| registry.remove(&registration.id));
        if let Some(removed) = removed {
            tracing::info!(endpoint = %removed.endpoint, "registration removed by the operator");
            self.inner.publish(ServerEvent::Deregistered(removed));
        }
        Ok(true)
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

    /// The same server, with API calls that wait `timeout` for the device's answer instead of
    /// the configured `request_timeout`: `server.with_timeout(d).read(...)`.
    pub fn with_timeout(&self, timeout: Duration) -> LwM2mServer {
        LwM2mServer {
            inner: self.inner.clone(),
            timeout: Some(timeout),
        }
    }

    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(self.inner.config.request_timeout)
    }

    async fn send(
        &self,
        endpoint: &str,
        request: &ServerRequest,
    ) -> Result<Lwm2mResponse, ServerError> {
        self.inner
            .send_request(endpoint, request, self.timeout())
            .await
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
        self.send(endpoint, &request).await
    }

    /// Read (Core §6.3.1).
    pub async fn read(
        &self,
        endpoint: &str,
        path: LwM2mPath,
        accept: Option<cairn_coap::ContentFormat>,
    ) -> Result<LwM2mNode, ServerError> {
        let response = self
            .send(endpoint, &ServerRequest::Read { path, accept })
            .await?;
        node_of(response)
    }

    /// Discover (Core §6.3.2): the links and attributes under `path`.
    pub async fn discover(
        &self,
        endpoint: &str,
        path: LwM2mPath,
    ) -> Result<Lwm2mResponse, ServerError> {
        self.send(endpoint, &ServerRequest::Discover { path })
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
        self.send(endpoint, &request)
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
        self.send(endpoint, &request)
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
        self.send(endpoint, &request)
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
        self.send(endpoint, &request).await.and_then(success)
    }

    /// Delete (Core §6.3.7).
    pub async fn delete(&self, endpoint: &str, path: LwM2mPath) -> Result<(), ServerError> {
        self.send(endpoint, &ServerRequest::Delete { path })
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
            .send(endpoint, &request)
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
        self.send(endpoint, &request)
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
        let request = ServerRequest::Observe { path, accept };
        let (response, notifications) = self
            .inner
            .observe(endpoint, request, self.timeout())
            .await?;
        Ok((node_of(response)?, notifications))
    }

    /// Observe-Composite (Core §6.4.3, LwM2M 1.1 and later): the current values of `paths`
    /// and a stream of notifications, each with the values of every path.
    pub async fn observe_composite(
        &self,
        endpoint: &str,
        paths: Vec<LwM2mPath>,
        format: cairn_coap::ContentFormat,
    ) -> Result<
        (
            BTreeMap<LwM2mPath, LwM2mNode>,
            Notifications<BTreeMap<LwM2mPath, LwM2mNode>>,
        ),
        ServerError,
    > {
        let request = ServerRequest::ObserveComposite {
            paths,
            format,
            accept: Some(format),
        };
        let (response, notifications) = self
            .inner
            .observe(endpoint, request, self.timeout())
            .await?;
        Ok((nodes_of(response)?, notifications))
    }

    /// The content format to write in for a device: by its LwM2M version.
    fn preferred_format(&self, endpoint: &str) -> Result<cairn_coap::ContentFormat, ServerError> {
        let registration = self
            .registration(endpoint)
            .ok_or_else(|| ServerError::UnknownEndpoint(endpoint.into()))?;
        Ok(preferred_format(registration::lwm2m_version(&registration)))
    }

    // ----- firmware and campaigns -----

    /// Adds a firmware image to the repository; devices download it from `/fw/{id}`.
    pub async fn add_firmware(
        &self,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
    ) -> Result<firmware::FirmwareImage, firmware::FirmwareError> {
        self.inner
            .firmware
            .add(name, version, bytes, unix_millis())
            .await
    }

    /// Every firmware image, oldest first.
    pub async fn firmware_images(
        &self,
    ) -> Result<Vec<firmware::FirmwareImage>, firmware::FirmwareError> {
        self.inner.firmware.list().await
    }

    /// Removes a firmware image; whether it existed.
    pub async fn remove_firmware(&self, id: &str) -> Result<bool, firmware::FirmwareError> {
        self.inner.firmware.remove(id).await
    }

    /// The URI a device downloads `path` from: on the socket it registered on.
    pub(crate) fn package_uri(
        &self,
        secure: bool,
        host: Option<&str>,
        path: &str,
    ) -> Option<String> {
        let (coap, dtls) = self.local_addrs();
        let (scheme, address) = if secure {
            ("coaps", dtls?)
        } else {
            ("coap", coap?)
        };
        let host = match host {
            Some(host) => host.to_owned(),
            None if address.ip().is_unspecified() => "127.0.0.1".into(),
            None => match address.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                std::net::IpAddr::V4(ip) => ip.to_string(),
            },
        };
        Some(format!("{scheme}://{host}:{}{path}", address.port()))
    }

    /// Starts a campaign; returns its id. Its progress is in [`LwM2mServer::campaign`].
    pub async fn start_campaign(
        &self,
        spec: campaign::CampaignSpec,
    ) -> Result<String, campaign::CampaignError> {
        spec.validate()?;
        if self
            .inner
            .firmware
            .get(&spec.image_id)
            .await
            .map_err(|_| campaign::CampaignError::UnknownImage(spec.image_id.clone()))?
            .is_none()
        {
            return Err(campaign::CampaignError::UnknownImage(spec.image_id));
        }
        let now = unix_millis();
        let status = campaign::CampaignStatus {
            id: cairn_store::random_id().map_err(ServerError::from)?,
            devices: spec
                .targets
                .iter()
                .map(|t| (t.clone(), campaign::DeviceOutcome::Pending))
                .collect(),
            spec,
            state: campaign::CampaignState::Running,
            wave: 0,
            halt_reason: None,
            started_at_ms: now,
            updated_at_ms: now,
        };
        let id = status.id.clone();
        let shared = Arc::new(Mutex::new(status));
        self.save_campaign(&shared).await;
        self.launch_campaign(shared);
        Ok(id)
    }

    fn launch_campaign(&self, status: Arc<Mutex<campaign::CampaignStatus>>) {
        let id = status.lock().unwrap_or_else(|e| e.into_inner()).id.clone();
        let (control, receiver) = tokio::sync::watch::channel(campaign::Control::Run);
        self.inner
            .campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                campaign::Running {
                    status: status.clone(),
                    control,
                },
            );
        tokio::spawn(campaign::run(self.clone(), status, receiver));
    }

    /// Campaigns that were running when the server stopped go on.
    async fn resume_campaigns(&self) {
        let Ok(page) = self
            .inner
            .stores
            .blobs
            .list_blob_keys(cairn_store::BlobKind::Campaign, None, 10_000)
            .await
        else {
            return;
        };
        for key in page.items {
            let Ok(Some(bytes)) = self
                .inner
                .stores
                .blobs
                .get_blob(cairn_store::BlobKind::Campaign, &key)
                .await
            else {
                continue;
            };
            let Ok(mut status) = serde_json::from_slice::<campaign::CampaignStatus>(&bytes) else {
                tracing::warn!(campaign = %key, "a stored campaign does not decode");
                continue;
            };
            if status.is_finished() {
                continue;
            }
            // Devices caught in the middle are asked again.
            for outcome in status.devices.values_mut() {
                if *outcome == campaign::DeviceOutcome::InProgress {
                    *outcome = campaign::DeviceOutcome::Pending;
                }
            }
            status.state = campaign::CampaignState::Running;
            tracing::info!(campaign = %key, "resuming a campaign");
            self.launch_campaign(Arc::new(Mutex::new(status)));
        }
    }

    pub(crate) async fn save_campaign(&self, status: &Mutex<campaign::CampaignStatus>) {
        let (id, bytes) = {
            let status = status.lock().unwrap_or_else(|e| e.into_inner());
            (status.id.clone(), serde_json::to_vec(&*status))
        };
        let Ok(bytes) = bytes else {
            return;
        };
        if let Err(error) = self
            .inner
            .stores
            .blobs
            .put_blob(cairn_store::BlobKind::Campaign, &id, bytes)
            .await
        {
            tracing::error!(%error, campaign = %id, "cannot save a campaign");
        }
    }

    /// A campaign's progress (also of finished campaigns, from the store).
    pub async fn campaign(&self, id: &str) -> Option<campaign::CampaignStatus> {
        let running = self
            .inner
            .campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|r| r.status.lock().unwrap_or_else(|e| e.into_inner()).clone());
        if running.is_some() {
            return running;
        }
        let bytes = self
            .inner
            .stores
            .blobs
            .get_blob(cairn_store::BlobKind::Campaign, id)
            .await
            .ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every campaign (running and finished), newest first; at most `limit`.
    pub async fn campaigns(&self, limit: usize) -> Vec<campaign::CampaignStatus> {
        let mut ids: Vec<String> = self
            .inner
            .campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        if let Ok(page) = self
            .inner
            .stores
            .blobs
            .list_blob_keys(cairn_store::BlobKind::Campaign, None, 10_000)
            .await
        {
            ids.extend(page.items);
        }
        ids.sort();
        ids.dedup();
        let mut all = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(status) = self.campaign(&id).await {
                all.push(status);
            }
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.started_at_ms));
        all.truncate(limit);
        all
    }

    fn control_campaign(
        &self,
        id: &str,
        control: campaign::Control,
    ) -> Result<(), campaign::CampaignError> {
        let campaigns = self
            .inner
            .campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let running = campaigns
            .get(id)
            .ok_or_else(|| campaign::CampaignError::Unknown(id.into()))?;
        let state = running
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state;
        if matches!(
            state,
            campaign::CampaignState::Halted
                | campaign::CampaignState::Cancelled
                | campaign::CampaignState::Completed
        ) {
            return Err(campaign::CampaignError::Finished(state));
        }
        let _ = running.control.send(control);
        Ok(())
    }

    /// Holds back the devices not yet started (those in progress finish).
    pub fn pause_campaign(&self, id: &str) -> Result<(), campaign::CampaignError> {
        self.control_campaign(id, campaign::Control::Pause)
    }

    pub fn resume_campaign(&self, id: &str) -> Result<(), campaign::CampaignError> {
        self.control_campaign(id, campaign::Control::Run)
    }

    /// Stops the campaign: devices not yet started are left alone.
    pub fn cancel_campaign(&self, id: &str) -> Result<(), campaign::CampaignError> {
        self.control_campaign(id, campaign::Control::Cancel)
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
        let firmware = request
            .message
            .options
            .get(cairn_coap::OptionNumber::URI_PATH)
            .is_some_and(|first| first == b"fw");
        match self.inner() {
            Some(inner) if firmware => {
                let message = request.message.clone();
                Reply::Pending(Box::pin(async move {
                    let block_size = inner.config.coap.block_size;
                    inner.firmware.serve(&message, block_size).await
                }))
            }
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
        if let Some(mut registration) = registry.by_address(old) {
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
pub struct Notifications<T = LwM2mNode> {
    /// The observation's sink, which holds the queue of notifications for this caller.
    sink: Arc<ObservationSink<T>>,
    cancel: Option<ObservationHandle>,
}

impl<T> Notifications<T> {
    /// The next notified value, or `None` once the observation has ended.
    pub async fn next(&mut self) -> Option<T> {
        self.sink.mailbox.recv().await
    }

    /// What the observation holds in the server's memory, by layer (for memory figures);
    /// `None` once it is over.
    pub async fn memory(&self) -> Option<ObservationMemory> {
        let mut memory = self.cancel.as_ref()?.memory().await?;
        memory.sink = self.sink.accounted_bytes();
        Some(memory)
    }

    /// Cancels the observation actively (GET with Observe = 1).
    pub fn cancel(mut self) {
        self.cancel_now();
    }

    fn cancel_now(&mut self) {
        self.sink.mailbox.receiver_dropped();
        if let Some(handle) = self.cancel.take() {
            handle.cancel_soon();
        }
    }
}

impl<T> Drop for Notifications<T> {
    fn drop(&mut self) {
        self.cancel_now();
    }
}

fn nodes_of(response: Lwm2mResponse) -> Result<BTreeMap<LwM2mPath, LwM2mNode>, ServerError> {
    match success(response)?.content {
        ResponseContent::Nodes(nodes) => Ok(nodes),
        _ => Err(ServerError::Operation(OperationError::Missing(
            "nodes in the response",
        ))),
    }
}

impl Inner {
    fn publish(&self, event: ServerEvent) {
        let _ = self.events.send(event);
    }

    /// The waker of a queue-mode device some request waits for. Entries exist only while
    /// requests wait (see [`Inner::reachable`]), not for every registered device.
    fn waker(&self, endpoint: &str) -> Arc<Notify> {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        wake.entry(endpoint.to_owned()).or_default().clone()
    }

    /// Wakes the requests waiting for `endpoint`, if any.
    fn wake(&self, endpoint: &str) {
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waker) = wake.get(endpoint) {
            waker.notify_waiters();
        }
    }

    /// Drops the waker of `endpoint` once no request holds it any more.
    fn release_waker(&self, endpoint: &str, waker: &Arc<Notify>) {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and `waker`: nobody else waits.
        if Arc::strong_count(waker) <= 2 {
            wake.remove(endpoint);
        }
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
        let registration = |this: &Self| {
            this.registry
                .read()
                .ok()
                .and_then(|r| r.by_endpoint(endpoint))
                .ok_or_else(|| ServerError::UnknownEndpoint(endpoint.into()))
        };
        let awake = |registration: &Registration| {
            let awake_until =
                registration.last_update_ms + self.config.awake_window.as_millis() as u64;
            !registration.queue_mode || unix_millis() < awake_until
        };
        // Most requests go to a device that is awake: no waker for them.
        let first = registration(self)?;
        if awake(&first) {
            return Ok(first);
        }
        let deadline = tokio::time::Instant::now() + self.config.queue_timeout;
        let waker = WakerGuard {
            inner: self,
            endpoint,
            waker: self.waker(endpoint),
        };
        loop {
            // Registered before the registry is read again, so that a wake-up in between is
            // not lost.
            let woken = waker.waker.notified();
            let current = registration(self)?;
            if awake(&current) {
                return Ok(current);
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
        timeout: Duration,
    ) -> Result<Lwm2mResponse, ServerError> {
        request.validate()?;
        let registration = self.reachable(endpoint).await?;
        let models = self
            .config
            .models
            .for_versions(&registration::object_versions(&registration));
        let message = request.to_coap(&models)?.to_message();
        let socket = self.socket(&registration)?;
        let response =
            tokio::time::timeout(timeout, socket.request(registration.peer_address, message))
                .await
                .map_err(|_| ServerError::Timeout(timeout))??;
        let coap = CoapResponse::from_message(&response)?;
        Ok(request.decode_response(&coap, &models)?)
    }

    /// Registers an observation (single or composite) whose notifications go to the event bus
    /// and to the returned [`Notifications`]; returns the first response with them.
    async fn observe<T: Notified>(
        self: &Arc<Self>,
        endpoint: &str,
        request: ServerRequest,
        timeout: Duration,
    ) -> Result<(Lwm2mResponse, Notifications<T>), ServerError> {
        request.validate()?;
        let registration = self.reachable(endpoint).await?;
        let models = self
            .config
            .models
            .for_versions(&registration::object_versions(&registration));
        let message = request.to_coap(&models)?.to_message();
        let socket = self.socket(&registration)?;
        let (paths, content_format) = match &request {
            ServerRequest::Observe { path, accept } => (vec![*path], accept.map(|f| f.value())),
            ServerRequest::ObserveComposite { paths, accept, .. } => {
                (paths.clone(), accept.map(|f| f.value()))
            }
            _ => unreachable_observe(),
        };
        let record_id = cairn_store::random_id()?;
        let sink = Arc::new(ObservationSink {
            inner: Arc::downgrade(self),
            endpoint: endpoint.into(),
            request: ObservedRequest::new(request),
            record: record_id.as_str().into(),
            mailbox: Mailbox::<T>::default(),
        });
        let (first, handle) = tokio::time::timeout(
            timeout,
            socket.observe_with(registration.peer_address, message, sink.clone()),
        )
        .await
        .map_err(|_| ServerError::Timeout(timeout))??;
        let decoded = CoapResponse::from_message(&first)
            .map_err(ServerError::from)
            .and_then(|coap| Ok(sink.request.get().decode_response(&coap, &models)?));
        let response = match decoded {
            Ok(response) => response,
            Err(error) => {
                // An answer we cannot read starts no observation here: stop it there too.
                handle.cancel_soon();
                return Err(error);
            }
        };
        // Kept in the store so that notifications still reach the server after a restart.
        if let Some(token) = handle.token() {
            let record = cairn_store::Observation {
                id: record_id,
                registration_id: registration.id.clone(),
                endpoint: endpoint.to_owned(),
                token: token.to_vec(),
                paths: paths.iter().map(ToString::to_string).collect(),
                content_format,
                peer_address: registration.peer_address,
                created_at_ms: unix_millis(),
            };
            if let Err(error) = self.stores.observations.add_observation(record).await {
                // Not kept, so not started: the device is told to stop.
                handle.cancel_soon();
                return Err(error.into());
            }
        }
        Ok((
            response,
            Notifications {
                sink,
                cancel: Some(handle),
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
        let identity = peer_identity(request.identity.as_deref());
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
            PeerIdentity::Rpk(key) => {
                let is_key = |info: &SecurityInfo| {
                    info.endpoint == endpoint
                        && matches!(&info.mode, SecurityMode::Rpk { public_key_der } if public_key_der == key)
                };
                let current = security
                    .get_security_info(endpoint)
                    .await
                    .map_err(store_refusal)?;
                let allowed = if current.as_ref().is_some_and(is_key) {
                    true
                } else {
                    // A key the endpoint is replacing, still valid until it proves the new one.
                    security
                        .get_security_info_by_psk_identity(&security::rpk_session_identity(key))
                        .await
                        .map_err(store_refusal)?
                        .as_ref()
                        .is_some_and(is_key)
                };
                (
                    allowed,
                    "the endpoint name does not belong to this raw public key",
                )
            }
            PeerIdentity::X509(common_name) => {
                let info = security
                    .get_security_info(endpoint)
                    .await
                    .map_err(store_refusal)?;
                match info.map(|info| info.mode) {
                    Some(SecurityMode::X509(X509Expectation::CommonName(expected))) => (
                        expected == *common_name && common_name == endpoint,
                        "the endpoint name is not the certificate's common name",
                    ),
                    // The session carries the common name only, not the certificate.
                    Some(SecurityMode::X509(X509Expectation::Fingerprint(_))) => (
                        false,
                        "certificate fingerprints are not checked here: register the common name",
                    ),
                    _ => (false, "this endpoint may not use an X.509 certificate"),
                }
            }
            PeerIdentity::X509Certificate {
                common_name,
                fingerprint,
            } => {
                let info = security
                    .get_security_info(endpoint)
                    .await
                    .map_err(store_refusal)?;
                match info.map(|info| info.mode) {
                    Some(SecurityMode::X509(X509Expectation::CommonName(expected))) => (
                        expected == *common_name && common_name == endpoint,
                        "the endpoint name is not the certificate's common name",
                    ),
                    Some(SecurityMode::X509(X509Expectation::Fingerprint(expected))) => {
                        let is_certificate = |info: &SecurityInfo| {
                            info.endpoint == endpoint
                                && info.mode
                                    == SecurityMode::X509(X509Expectation::Fingerprint(
                                        *fingerprint,
                                    ))
                        };
                        let allowed = common_name == endpoint
                            && (expected == *fingerprint
                                // A certificate the endpoint is replacing, valid until it
                                // proves the new one.
                                || security
                                    .get_security_info_by_psk_identity(
                                        &security::x509_session_identity(
                                            fingerprint,
                                            common_name,
                                        ),
                                    )
                                    .await
                                    .map_err(store_refusal)?
                                    .as_ref()
                                    .is_some_and(is_certificate));
                        (allowed, "this certificate is not the endpoint's")
                    }
                    _ => (false, "this endpoint may not use an X.509 certificate"),
                }
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
                && !registry.contains_endpoint(&endpoint)
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
        self.wake(&record.endpoint);
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
        Ok(registration)
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
        self.wake(&updated.endpoint);
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
        let endpoint = self
            .registry
            .read()
            .map_err(|_| internal())?
            .endpoint_at(peer, identity)
            .ok_or((
                ResponseCode::FORBIDDEN,
                "Send from a client that is not registered".to_string(),
            ))?;
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

/// A request's hold on the waker of a queue-mode device; the last one removes it.
struct WakerGuard<'a> {
    inner: &'a Inner,
    endpoint: &'a str,
    waker: Arc<Notify>,
}

impl Drop for WakerGuard<'_> {
    fn drop(&mut self) {
        self.inner.release_waker(self.endpoint, &self.waker);
    }
}

fn unreachable_observe() -> ! {
    unreachable!("only Observe and Observe-Composite requests are observations")
}

/// What an observation's notifications are for the API caller that reads them: one node
/// (Observe) or the nodes of every path (Observe-Composite).
trait Notified: Send + Sized + 'static {
    fn from_content(path: LwM2mPath, content: ResponseContent) -> Option<Self>;
}

impl Notified for LwM2mNode {
    fn from_content(_: LwM2mPath, content: ResponseContent) -> Option<Self> {
        match content {
            ResponseContent::Node(node) => Some(node),
            _ => None,
        }
    }
}

impl Notified for BTreeMap<LwM2mPath, LwM2mNode> {
    fn from_content(path: LwM2mPath, content: ResponseContent) -> Option<Self> {
        match content {
            ResponseContent::Node(node) => Some(BTreeMap::from([(path, node)])),
            ResponseContent::Nodes(nodes) => Some(nodes),
            _ => None,
        }
    }
}

/// The request of an observation, kept for as long as it lasts: a single-path Observe (the
/// common case) as its path and format, anything else boxed.
enum ObservedRequest {
    Observe {
        path: LwM2mPath,
        accept: Option<cairn_coap::ContentFormat>,
    },
    Other(Box<ServerRequest>),
}

impl ObservedRequest {
    fn new(request: ServerRequest) -> Self {
        match request {
            ServerRequest::Observe { path, accept } => Self::Observe { path, accept },
            other => Self::Other(Box::new(other)),
        }
    }

    fn get(&self) -> std::borrow::Cow<'_, ServerRequest> {
        match self {
            Self::Observe { path, accept } => std::borrow::Cow::Owned(ServerRequest::Observe {
                path: *path,
                accept: *accept,
            }),
            Self::Other(request) => std::borrow::Cow::Borrowed(request),
        }
    }
}

/// Where the notifications of one observation go: decoded on the socket's task, published on
/// the event bus and queued for the API caller. One allocation per observation, shared with
/// the caller's [`Notifications`]; no task or channel.
struct ObservationSink<T> {
    inner: std::sync::Weak<Inner>,
    endpoint: ShortStr,
    /// The Observe or Observe-Composite request, to decode the notifications.
    request: ObservedRequest,
    /// The observation's id in the store.
    record: ShortStr,
    /// The caller's queue (it allocates only while it holds notifications). An observation
    /// restored after a restart has no caller: its mailbox discards, and its notifications
    /// go to the event bus only.
    mailbox: Mailbox<T>,
}

/// A string kept inline when short (endpoint names, store ids), boxed otherwise.
#[derive(Clone)]
enum ShortStr {
    Inline { len: u8, bytes: [u8; 22] },
    Boxed(Box<str>),
}

impl From<&str> for ShortStr {
    fn from(value: &str) -> Self {
        let mut bytes = [0; 22];
        match bytes.get_mut(..value.len()) {
            Some(prefix) => {
                prefix.copy_from_slice(value.as_bytes());
                ShortStr::Inline {
                    len: value.len() as u8,
                    bytes,
                }
            }
            None => ShortStr::Boxed(value.into()),
        }
    }
}

impl std::ops::Deref for ShortStr {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            ShortStr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            ShortStr::Boxed(value) => value,
        }
    }
}

impl ShortStr {
    fn heap_bytes(&self) -> usize {
        match self {
            ShortStr::Inline { .. } => 0,
            ShortStr::Boxed(value) => value.len(),
        }
    }
}

impl<T> ObservationSink<T> {
    /// Bytes the sink holds: its allocation (with the two reference counts) and its heap.
    fn accounted_bytes(&self) -> usize {
        let request = match &self.request {
            ObservedRequest::Observe { .. } => 0,
            ObservedRequest::Other(_) => core::mem::size_of::<ServerRequest>(),
        };
        2 * core::mem::size_of::<usize>()
            + core::mem::size_of::<Self>()
            + self.endpoint.heap_bytes()
            + self.record.heap_bytes()
            + request
            + self.mailbox.heap_bytes()
    }

    fn decode(&self, inner: &Inner, message: &Message) -> Result<ResponseContent, ServerError> {
        let versions = inner
            .registry
            .read()
            .ok()
            .and_then(|r| r.object_versions_of(&self.endpoint[..]))
            .unwrap_or_default();
        let models = inner.config.models.for_versions(&versions);
        let coap = CoapResponse::from_message(message)?;
        let response = success(self.request.get().decode_response(&coap, &models)?)?;
        Ok(response.content)
    }
}

impl<T: Notified> cairn_transport::NotificationSink for ObservationSink<T>
where
    Mailbox<T>: Sync,
{
    fn deliver(&self, message: Message) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return false;
        };
        if self.mailbox.is_receiver_gone() {
            return false;
        }
        let content = match self.decode(&inner, &message) {
            Ok(content) => content,
            Err(error) => {
                tracing::debug!(endpoint = %&self.endpoint[..], %error, "notification dropped");
                return true;
            }
        };
        let path = self.request.get().path().unwrap_or(LwM2mPath::Root);
        match &content {
            ResponseContent::Node(node) => inner.publish(ServerEvent::Notification {
                endpoint: self.endpoint.to_string(),
                path,
                node: node.clone(),
            }),
            ResponseContent::Nodes(nodes) => {
                for (path, node) in nodes {
                    inner.publish(ServerEvent::Notification {
                        endpoint: self.endpoint.to_string(),
                        path: *path,
                        node: node.clone(),
                    });
                }
            }
            _ => return true,
        }
        match T::from_content(path, content) {
            Some(notified) => self.mailbox.push(notified),
            None => true,
        }
    }

    /// The observation ended on purpose (cancelled, caller gone, or ended by the device):
    /// forget it, here and in the store. One that ends because the server stops is kept.
    fn closed(&self) {
        self.mailbox.close();
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let id = self.record.to_string();
        tokio::spawn(async move {
            if let Err(error) = inner.stores.observations.remove_observation(&id).await {
                tracing::warn!(%error, "cannot remove an ended observation");
            }
        });
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
            let Ok(paths) = record
                .paths
                .iter()
                .map(|p| p.parse::<LwM2mPath>())
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            if paths.is_empty() {
                continue;
            }
            let accept = record.content_format.map(cairn_coap::ContentFormat);
            let request = match paths.as_slice() {
                [path] => ServerRequest::Observe {
                    path: *path,
                    accept,
                },
                _ => ServerRequest::ObserveComposite {
                    paths: paths.clone(),
                    format: accept.unwrap_or(cairn_coap::ContentFormat::SENML_CBOR),
                    accept,
                },
            };
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
            let sink = Arc::new(ObservationSink::<LwM2mNode> {
                inner: Arc::downgrade(inner),
                endpoint: registration.endpoint.as_str().into(),
                request: ObservedRequest::new(request),
                record: record.id.as_str().into(),
                mailbox: Mailbox::discarding(),
            });
            match socket
                .resume_observation_with(
                    registration.peer_address,
                    &record.token,
                    coap.to_message(),
                    sink,
                )
                .await
            {
                // The handle is not kept: a restored observation lasts until the device ends
                // it or the registration goes.
                Ok(_handle) => restored += 1,
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
