//! A device's life from factory state (OMA LwM2M Core 1.2 §5.2.7 "Client Initiated Bootstrap"
//! and §6.2): bootstrap with the credential in its vault, register with the device-management
//! credentials the Bootstrap-Server wrote, and bootstrap again when the server refuses them
//! (4.03, a failed DTLS handshake or no answer, `register_attempts` times), after the Client
//! Hold Off Time and with a backoff that doubles after each failed bootstrap.
//!
//! The new state is persisted in the vault at Bootstrap-Finish, before the device answers 2.04.
//! [`PowerCut`] simulates the device losing power at a chosen moment of the sequence, so tests
//! can check that it always comes back with a working credential.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_coap::{Config, ContentFormat};
use cairn_dtls::{
    ClientCertificateConfig, ClientConfig, Credentials, PeerVerifier, PrivateKey, Psk,
    RawPublicKeys, X509Verifier,
};
use cairn_lwm2m::{ClientRequest, CoapRequest, CoapResponse, ModelRegistry, ResponseCode, Version};
use cairn_transport::{CoapEndpoint, Handler, Reply, Request, Security};
use tokio::sync::{mpsc, watch};

use crate::bootstrap::BootstrapSession;
use crate::core::{ClientCore, Event};
use crate::credentials::{
    Account, CredentialError, CredentialVault, DeviceState, load_state, store_state,
};
use crate::driver::{Client, ClientHandle, ServerConnection};
use crate::object::ClientAction;
use crate::objects::{
    Connectivity, DeviceInfo, DeviceObject, SecurityMode, SecurityObject, ServerInstance,
    standard_tree, system_time,
};
use crate::registration::{RegistrationEvent, RegistrationSettings, RetryPolicy};
use crate::tree::ObjectTree;

/// A moment at which a simulated device loses power.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerCut {
    /// When the n-th request of the Bootstrap-Server (from 1) arrives, before handling it.
    AtBootstrapRequest(usize),
    /// After persisting the state at Bootstrap-Finish, before answering it.
    AfterFinishCommitted,
    /// After answering Bootstrap-Finish, before registering.
    BeforeRegister,
}

/// What a device has beyond the standard objects. A device builds a new client each time it
/// registers with the credentials it holds (at start and after every bootstrap); the
/// extension adds its objects to that client's tree and sees the client once it is bound
/// (to start a firmware agent, or a task that updates values, for example).
pub trait ClientExtension: Send + Sync + std::fmt::Debug {
    /// Adds objects to the tree of a new client (the standard objects are there already).
    fn extend(&self, tree: &mut ObjectTree);
    /// The new client is bound and about to register.
    fn bound(&self, handle: ClientHandle) {
        let _ = handle;
    }
}

/// How a device behaves.
#[derive(Clone, Debug)]
pub struct DeviceSettings {
    /// Object models.
    pub models: Arc<ModelRegistry>,
    /// LwM2M version.
    pub lwm2m_version: Version,
    /// Device object values.
    pub info: DeviceInfo,
    /// CoAP transmission parameters.
    pub coap: Config,
    /// The local address to send from.
    pub local_ip: Option<IpAddr>,
    /// How long the device waits for the Bootstrap-Server's answer to Bootstrap-Request.
    pub request_timeout: Duration,
    /// How long a bootstrap sequence may take, from Bootstrap-Request to Bootstrap-Finish.
    pub bootstrap_timeout: Duration,
    /// Client Hold Off Time when the bootstrap account gives none.
    pub hold_off: Duration,
    /// Longest wait between bootstraps after failures.
    pub max_backoff: Duration,
    /// Register attempts before the device bootstraps again.
    pub register_attempts: u32,
    /// Delay before the second Register attempt (doubling after).
    pub register_retry: Duration,
    /// Simulated power loss.
    pub power_cut: Option<PowerCut>,
    /// Objects and tasks beyond the standard ones.
    pub extension: Option<Arc<dyn ClientExtension>>,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            models: Arc::new(ModelRegistry::with_core_models()),
            lwm2m_version: Version::V1_1,
            info: DeviceInfo::default(),
            coap: Config::default(),
            local_ip: None,
            request_timeout: Duration::from_secs(30),
            bootstrap_timeout: Duration::from_secs(120),
            hold_off: Duration::ZERO,
            max_backoff: Duration::from_secs(600),
            register_attempts: 3,
            register_retry: Duration::from_secs(5),
            power_cut: None,
            extension: None,
        }
    }
}

/// What a device reports.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceEvent {
    /// A Bootstrap-Request goes out to `uri`.
    BootstrapRequested { uri: String },
    /// Bootstrap-Finish succeeded; the new state is persisted.
    BootstrapFinished,
    /// The bootstrap failed; the device tries again after `retry_in`.
    BootstrapFailed { reason: String, retry_in: Duration },
    /// Registered with the server of this Short Server ID.
    Registered { short_server_id: u16 },
    /// The device-management servers refused the credentials (or could not be reached).
    RegistrationFailed { reason: String },
    /// A registration event of the running client.
    Client(Event),
}

/// How a device stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceExit {
    /// Asked to stop (after de-registering).
    Shutdown,
    /// A simulated power cut.
    PowerCut,
}

/// Why a device cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The vault failed or holds nothing usable.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The vault holds no state (not provisioned).
    #[error("the vault holds no credentials")]
    NotProvisioned,
    /// No Bootstrap-Server account to fall back to.
    #[error("no Bootstrap-Server account")]
    NoBootstrapAccount,
}

enum Bootstrapped {
    Finished,
    Failed(String),
    PowerCut,
}

enum Registered {
    Shutdown,
    Refused(String),
    /// A server executed the Bootstrap-Request Trigger.
    BootstrapTriggered,
}

/// The UDP address of a `coap://` or `coaps://` URI.
pub async fn resolve_uri(uri: &str) -> Result<SocketAddr, String> {
    let (rest, default_port) = if let Some(rest) = uri.strip_prefix("coaps://") {
        (rest, 5684)
    } else if let Some(rest) = uri.strip_prefix("coap://") {
        (rest, 5683)
    } else {
        return Err(format!("{uri:?} is not a coap:// or coaps:// URI"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let has_port = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].contains(':'),
        None => authority.contains(':'),
    };
    let target = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    tokio::net::lookup_host(&target)
        .await
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))
}

fn local_for(address: SocketAddr, ip: Option<IpAddr>) -> SocketAddr {
    match ip {
        Some(ip) => SocketAddr::new(ip, 0),
        None if address.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
        None => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// Security Mode values (Core Appendix E.1, resource /0/x/2).
const MODE_PSK: i64 = 0;
const MODE_RPK: i64 = 1;
const MODE_CERTIFICATE: i64 = 2;
const MODE_NOSEC: i64 = 3;

/// The DTLS certificate mode of a device-management account: in RPK mode the device's key
/// pair (Secret Key, PKCS#8) and the server's raw public key (Server Public Key) as the only
/// one accepted; in X.509 mode the device's certificate (Public Key or Identity) and key, and
/// the trust anchor of the server's certificate (Server Public Key). `None` for the other modes.
fn certificate_config(account: &Account) -> Result<Option<ClientCertificateConfig>, String> {
    if account.mode != MODE_RPK && account.mode != MODE_CERTIFICATE {
        return Ok(None);
    }
    let key = PrivateKey::from_der(&account.key)
        .map_err(|e| format!("the account's private key: {e}"))?;
    if account.server_public_key.is_empty() {
        return Err("the account has no server public key".into());
    }
    let config = if account.mode == MODE_RPK {
        let mut server = RawPublicKeys::new();
        server.insert(account.server_public_key.clone(), b"server".to_vec());
        ClientCertificateConfig {
            credentials: Some(Credentials::raw_public_key(key)),
            server_auth: PeerVerifier::raw_public_keys(Arc::new(server)),
            server_name: None,
        }
    } else {
        let anchor = X509Verifier::new(std::slice::from_ref(&account.server_public_key))
            .map_err(|e| format!("the server's trust anchor: {e}"))?;
        ClientCertificateConfig {
            credentials: Some(Credentials {
                key,
                chain: vec![account.identity.clone()],
            }),
            server_auth: PeerVerifier::x509(anchor),
            server_name: None,
        }
    };
    Ok(Some(config))
}

/// The transport security of an account: PSK or none; the other modes are not supported by
/// this device (raw public keys, certificates).
fn security_for(
    mode: i64,
    identity: &[u8],
    key: &[u8],
    server: SocketAddr,
) -> Result<Security, String> {
    match mode {
        MODE_PSK => Ok(Security::DtlsClient {
            config: ClientConfig::new(identity.to_vec(), Psk::new(key.to_vec())),
            server,
        }),
        MODE_NOSEC => Ok(Security::NoSec),
        other => Err(format!("security mode {other} is not supported")),
    }
}

/// Runs a device until `shutdown` becomes true or a simulated power cut.
pub async fn run_device(
    vault: Arc<dyn CredentialVault>,
    settings: DeviceSettings,
    mut shutdown: watch::Receiver<bool>,
    mut on_event: impl FnMut(&DeviceEvent) + Send,
) -> Result<DeviceExit, DeviceError> {
    let mut failures: u32 = 0;
    let mut must_bootstrap = false;
    loop {
        if *shutdown.borrow() {
            return Ok(DeviceExit::Shutdown);
        }
        let state = load_state(&*vault, &*settings.models)?.ok_or(DeviceError::NotProvisioned)?;
        if !must_bootstrap && !state.dm_accounts().is_empty() {
            match register(&state, &settings, &mut shutdown, &mut on_event).await {
                Registered::Shutdown => return Ok(DeviceExit::Shutdown),
                Registered::Refused(reason) => {
                    on_event(&DeviceEvent::RegistrationFailed { reason });
                    must_bootstrap = true;
                }
                Registered::BootstrapTriggered => must_bootstrap = true,
            }
            continue;
        }
        let account = state
            .bootstrap_account()
            .ok_or(DeviceError::NoBootstrapAccount)?;
        let hold_off = account
            .hold_off_s
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(settings.hold_off);
        let backoff = if failures == 0 {
            hold_off
        } else {
            let base = hold_off.max(Duration::from_secs(1));
            base.saturating_mul(1u32 << failures.min(16))
                .min(settings.max_backoff)
        };
        if !backoff.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(DeviceExit::Shutdown),
            }
        }
        on_event(&DeviceEvent::BootstrapRequested {
            uri: account.uri.clone(),
        });
        match bootstrap(&state, vault.clone(), &settings).await {
            Bootstrapped::Finished => {
                on_event(&DeviceEvent::BootstrapFinished);
                failures = 0;
                must_bootstrap = false;
                if settings.power_cut == Some(PowerCut::BeforeRegister) {
                    return Ok(DeviceExit::PowerCut);
                }
            }
            Bootstrapped::PowerCut => return Ok(DeviceExit::PowerCut),
            Bootstrapped::Failed(reason) => {
                failures = failures.saturating_add(1);
                let retry_in = hold_off
                    .max(Duration::from_secs(1))
                    .saturating_mul(1u32 << failures.min(16))
                    .min(settings.max_backoff);
                on_event(&DeviceEvent::BootstrapFailed { reason, retry_in });
            }
        }
    }
}

/// What the bootstrap handler reports to the device task.
enum SessionEnd {
    Finished,
    PowerCut,
    Failed(String),
}

struct BootstrapHandler {
    session: Mutex<BootstrapSession>,
    server: SocketAddr,
    vault: Arc<dyn CredentialVault>,
    models: Arc<ModelRegistry>,
    power_cut: Option<PowerCut>,
    served: std::sync::atomic::AtomicUsize,
    end: mpsc::UnboundedSender<SessionEnd>,
}

impl Handler for BootstrapHandler {
    fn handle(&self, request: &Request) -> Reply {
        if request.peer != self.server {
            return Reply::Ready(CoapResponse::new(ResponseCode::FORBIDDEN).to_message());
        }
        let count = self
            .served
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if self.power_cut == Some(PowerCut::AtBootstrapRequest(count)) {
            let _ = self.end.send(SessionEnd::PowerCut);
            return Reply::Pending(Box::pin(std::future::pending()));
        }
        let served = match CoapRequest::from_message(&request.message) {
            Ok(coap) => self
                .session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .serve(&coap),
            Err(error) => {
                return Reply::Ready(
                    CoapResponse {
                        payload: error.to_string().into_bytes(),
                        ..CoapResponse::new(ResponseCode::BAD_REQUEST)
                    }
                    .to_message(),
                );
            }
        };
        let Some(state) = served.finished else {
            return Reply::Ready(served.response.to_message());
        };
        // Persist before answering 2.04: the server may retire the old credentials as soon as
        // the device uses the new ones.
        let vault = self.vault.clone();
        let models = self.models.clone();
        let end = self.end.clone();
        let power_cut = self.power_cut;
        let response = served.response;
        Reply::Pending(Box::pin(async move {
            let stored = if vault.blocks() {
                tokio::task::spawn_blocking(move || store_state(&*vault, &state, &*models)).await
            } else {
                Ok(store_state(&*vault, &state, &*models))
            };
            match stored {
                Ok(Ok(())) => {
                    if power_cut == Some(PowerCut::AfterFinishCommitted) {
                        let _ = end.send(SessionEnd::PowerCut);
                        return std::future::pending().await;
                    }
                    let _ = end.send(SessionEnd::Finished);
                    response.to_message()
                }
                Ok(Err(error)) => {
                    let _ = end.send(SessionEnd::Failed(error.to_string()));
                    CoapResponse::new(ResponseCode::INTERNAL_SERVER_ERROR).to_message()
                }
                Err(error) => {
                    let _ = end.send(SessionEnd::Failed(error.to_string()));
                    CoapResponse::new(ResponseCode::INTERNAL_SERVER_ERROR).to_message()
                }
            }
        }))
    }
}

async fn bootstrap(
    state: &DeviceState,
    vault: Arc<dyn CredentialVault>,
    settings: &DeviceSettings,
) -> Bootstrapped {
    let Some(account) = state.bootstrap_account() else {
        return Bootstrapped::Failed("no Bootstrap-Server account".into());
    };
    let server = match resolve_uri(&account.uri).await {
        Ok(server) => server,
        Err(reason) => return Bootstrapped::Failed(reason),
    };
    let (end, mut ended) = mpsc::unbounded_channel();
    let other_objects = vec![3, 4];
    let handler = Arc::new(BootstrapHandler {
        session: Mutex::new(BootstrapSession::new(
            state,
            settings.models.clone(),
            other_objects,
        )),
        server,
        vault,
        models: settings.models.clone(),
        power_cut: settings.power_cut,
        served: std::sync::atomic::AtomicUsize::new(0),
        end,
    });
    let security = match security_for(account.mode, &account.identity, &account.key, server) {
        Ok(security) => security,
        Err(reason) => return Bootstrapped::Failed(reason),
    };
    let endpoint = match CoapEndpoint::bind_secured(
        local_for(server, settings.local_ip),
        settings.coap.clone(),
        security,
        Some(handler),
    )
    .await
    {
        Ok(endpoint) => endpoint,
        Err(error) => return Bootstrapped::Failed(format!("socket: {error}")),
    };
    let outcome = run_bootstrap(&endpoint, server, state, settings, &mut ended).await;
    // After a power cut the socket just closes, without a word to the server.
    endpoint.shutdown().await;
    outcome
}

async fn run_bootstrap(
    endpoint: &CoapEndpoint,
    server: SocketAddr,
    state: &DeviceState,
    settings: &DeviceSettings,
    ended: &mut mpsc::UnboundedReceiver<SessionEnd>,
) -> Bootstrapped {
    let request = ClientRequest::BootstrapRequest {
        endpoint: state.endpoint.clone(),
        preferred_format: Some(if settings.lwm2m_version >= Version::V1_1 {
            ContentFormat::SENML_CBOR
        } else {
            ContentFormat::LWM2M_TLV
        }),
    };
    let message = match request.to_coap() {
        Ok(coap) => coap.to_message(),
        Err(error) => return Bootstrapped::Failed(error.to_string()),
    };
    let deadline = tokio::time::Instant::now() + settings.bootstrap_timeout;
    let answer = tokio::select! {
        answer = tokio::time::timeout(settings.request_timeout, endpoint.request(server, message)) => answer,
        end = ended.recv() => return session_end(end),
    };
    match answer {
        Ok(Ok(message)) => match CoapResponse::from_message(&message) {
            Ok(response) if response.code == ResponseCode::CHANGED => {}
            Ok(response) => {
                let text = String::from_utf8_lossy(&response.payload).into_owned();
                return Bootstrapped::Failed(format!(
                    "Bootstrap-Request answered {} {text}",
                    response.code
                ));
            }
            Err(error) => return Bootstrapped::Failed(error.to_string()),
        },
        Ok(Err(error)) => return Bootstrapped::Failed(format!("Bootstrap-Request: {error}")),
        Err(_) => return Bootstrapped::Failed("no answer to Bootstrap-Request".into()),
    }
    match tokio::time::timeout_at(deadline, ended.recv()).await {
        Ok(end) => session_end(end),
        Err(_) => Bootstrapped::Failed("no Bootstrap-Finish in time".into()),
    }
}

fn session_end(end: Option<SessionEnd>) -> Bootstrapped {
    match end {
        Some(SessionEnd::Finished) => Bootstrapped::Finished,
        Some(SessionEnd::PowerCut) => Bootstrapped::PowerCut,
        Some(SessionEnd::Failed(reason)) => Bootstrapped::Failed(reason),
        None => Bootstrapped::Failed("bootstrap session ended".into()),
    }
}

async fn register(
    state: &DeviceState,
    settings: &DeviceSettings,
    shutdown: &mut watch::Receiver<bool>,
    on_event: &mut (impl FnMut(&DeviceEvent) + Send),
) -> Registered {
    let accounts = state.dm_accounts();
    let mut security = SecurityObject::new();
    let mut instances = Vec::new();
    let mut connections = Vec::new();
    for (dm, instance) in accounts.iter().zip(0u16..) {
        let address = match resolve_uri(&dm.account.uri).await {
            Ok(address) => address,
            Err(reason) => return Registered::Refused(reason),
        };
        let mode = match dm.account.mode {
            MODE_PSK => SecurityMode::PreSharedKey,
            MODE_RPK => SecurityMode::RawPublicKey,
            MODE_CERTIFICATE => SecurityMode::Certificate,
            MODE_NOSEC => SecurityMode::NoSec,
            other => {
                return Registered::Refused(format!("security mode {other} is not supported"));
            }
        };
        let certificate = match certificate_config(&dm.account) {
            Ok(certificate) => certificate,
            Err(reason) => return Registered::Refused(reason),
        };
        security.add_server(
            dm.account.uri.clone(),
            mode,
            dm.account.identity.clone(),
            dm.account.key.to_vec(),
            dm.short_server_id,
        );
        instances.push(ServerInstance {
            instance,
            short_server_id: dm.short_server_id,
            lifetime: dm.lifetime,
            binding: dm.binding.clone(),
            default_pmin: None,
            default_pmax: None,
        });
        let mut registration = RegistrationSettings::new(state.endpoint.clone());
        registration.lifetime = dm.lifetime;
        registration.lwm2m_version = settings.lwm2m_version;
        registration.retry = RetryPolicy {
            initial: settings.register_retry,
            max: settings.register_retry.saturating_mul(8),
            max_attempts: Some(settings.register_attempts.max(1)),
        };
        connections.push(ServerConnection {
            short_server_id: dm.short_server_id,
            address,
            local_ip: settings.local_ip,
            psk: (dm.account.mode == MODE_PSK).then(|| {
                (
                    dm.account.identity.clone(),
                    Psk::new(dm.account.key.to_vec()),
                )
            }),
            settings: registration,
            coap: settings.coap.clone(),
            certificate,
        });
    }
    let mut tree = standard_tree(
        settings.models.clone(),
        settings.lwm2m_version,
        security,
        &instances,
        DeviceObject::new(settings.info.clone(), system_time),
        &Connectivity::default(),
    );
    if let Some(extension) = &settings.extension {
        extension.extend(&mut tree);
    }
    let ids: Vec<u16> = accounts.iter().map(|a| a.short_server_id).collect();
    let client = match Client::bind(ClientCore::new(tree), connections).await {
        Ok(client) => client,
        Err(error) => return Registered::Refused(error.to_string()),
    };
    if let Some(extension) = &settings.extension {
        extension.bound(client.handle());
    }
    let mut last_failure = String::from("registration failed");
    let mut stop = shutdown.clone();
    let trigger = Arc::new(tokio::sync::Notify::new());
    let triggered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let woken = trigger.clone();
    let stopping = async move {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => {}
            () = woken.notified() => {}
        }
    };
    let result = client
        .run(stopping, |event| {
            if let Event::Registration {
                server,
                event: registration,
            } = event
            {
                match registration {
                    RegistrationEvent::Registered { .. } => {
                        if let Some(id) = ids.get(server.0) {
                            on_event(&DeviceEvent::Registered {
                                short_server_id: *id,
                            });
                        }
                    }
                    RegistrationEvent::RequestFailed { reason, .. } => {
                        last_failure.clone_from(reason);
                    }
                    _ => {}
                }
            }
            if let Event::Action(ClientAction::BootstrapRequest { .. }) = event {
                triggered.store(true, std::sync::atomic::Ordering::SeqCst);
                trigger.notify_one();
            }
            on_event(&DeviceEvent::Client(event.clone()));
        })
        .await;
    if *shutdown.borrow() {
        return Registered::Shutdown;
    }
    if triggered.load(std::sync::atomic::Ordering::SeqCst) {
        return Registered::BootstrapTriggered;
    }
    match result {
        Ok(()) => Registered::Refused(last_failure),
        Err(error) => Registered::Refused(error.to_string()),
    }
}
