//! The tokio driver of [`ClientCore`]: one `cairn-transport` endpoint (plain CoAP, DTLS-PSK,
//! or DTLS with an X.509 certificate or a raw public key) per server, requests from servers answered by the core on the endpoint's
//! task, and one task per client that runs timers, sends the core's requests and
//! notifications and reports events. Many clients share one runtime (the fleet).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_coap::Config;
use cairn_dtls::{ClientCertificateConfig, ClientConfig, Psk};
use cairn_lwm2m::{CoapRequest, CoapResponse, LwM2mPath, ResponseCode};
use cairn_transport::{CoapEndpoint, Handler, Reply, Request, Security, TransportError};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::core::{ClientCore, Event, ServerId};
use crate::error::ClientError;
use crate::registration::{RegistrationSettings, RequestFailure};

/// How long a stopping client waits for its De-register requests.
const DEREGISTER_WAIT: Duration = Duration::from_secs(10);

/// How to reach one LwM2M Server.
pub struct ServerConnection {
    /// Short Server ID of its Server object instance.
    pub short_server_id: u16,
    /// Its UDP address.
    pub address: SocketAddr,
    /// The local address to send from (any address of the server's family when `None`).
    pub local_ip: Option<std::net::IpAddr>,
    /// DTLS PSK identity and key (`coaps://`), or `None` for plain CoAP.
    pub psk: Option<(Vec<u8>, Psk)>,
    /// DTLS in certificate mode (`coaps://`, ECDHE-ECDSA): the device's certificate or raw
    /// public key and how the server is verified. Takes precedence over `psk`.
    pub certificate: Option<ClientCertificateConfig>,
    /// Registration parameters.
    pub settings: RegistrationSettings,
    /// CoAP transmission parameters.
    pub coap: Config,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("short_server_id", &self.short_server_id)
            .field("address", &self.address)
            .field(
                "psk_identity",
                &self
                    .psk
                    .as_ref()
                    .map(|(identity, _)| String::from_utf8_lossy(identity)),
            )
            .field("certificate", &self.certificate.is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

struct Connected {
    endpoint: Arc<CoapEndpoint>,
    address: SocketAddr,
}

/// A running LwM2M client.
pub struct Client {
    shared: ClientHandle,
    servers: Vec<Connected>,
}

/// A server's address and the endpoint that talks to it.
type ServerEndpoint = (SocketAddr, std::sync::Weak<CoapEndpoint>);

/// Access to a running client's core from the application (change values, Send).
#[derive(Clone)]
pub struct ClientHandle {
    core: Arc<Mutex<ClientCore>>,
    wake: Arc<Notify>,
    origin: Instant,
    /// Weak: the endpoints' handlers hold this handle.
    endpoints: Arc<Mutex<Vec<ServerEndpoint>>>,
}

impl ClientHandle {
    fn lock(&self) -> MutexGuard<'_, ClientCore> {
        // A panic while holding the lock leaves the core usable: every mutation is complete.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs `f` on the core (e.g. to change an object), then lets the driver act on it.
    pub fn with_core<T>(&self, f: impl FnOnce(&mut ClientCore) -> T) -> T {
        let result = f(&mut self.lock());
        self.wake.notify_one();
        result
    }

    /// The endpoint that talks to the server at `address`, for other requests to that
    /// server (e.g. a firmware download from its `coaps://` address, in the same session).
    pub fn endpoint_to(&self, address: SocketAddr) -> Option<Arc<CoapEndpoint>> {
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints
            .iter()
            .find(|(a, _)| *a == address)
            .and_then(|(_, e)| e.upgrade())
    }

    /// Sends a Registration Update to every server soon (e.g. after a firmware update).
    pub fn trigger_update(&self) {
        self.with_core(ClientCore::trigger_update);
    }

    /// The application changed the value at `path`.
    pub fn changed(&self, path: &LwM2mPath) {
        let now = self.now();
        self.with_core(|core| core.changed(now, path));
    }

    /// Sends the current values of `paths` to `server`.
    pub fn send(&self, server: ServerId, paths: &[LwM2mPath]) -> Result<(), ClientError> {
        self.with_core(|core| core.send(server, paths))
    }
}

/// Serves one server's requests on its endpoint's task.
struct ServerHandler {
    shared: ClientHandle,
    server: ServerId,
    address: SocketAddr,
}

impl Handler for ServerHandler {
    fn handle(&self, request: &Request) -> Reply {
        if request.peer != self.address {
            return Reply::Ready(CoapResponse::new(ResponseCode::FORBIDDEN).to_message());
        }
        let response = match CoapRequest::from_message(&request.message) {
            Ok(coap) => {
                let now = self.shared.now();
                self.shared
                    .with_core(|core| core.serve(now, self.server, &coap))
            }
            Err(error) => CoapResponse {
                payload: error.to_string().into_bytes(),
                ..CoapResponse::new(ResponseCode::BAD_REQUEST)
            },
        };
        Reply::Ready(response.to_message())
    }
}

impl Client {
    /// Binds one endpoint per server (an ephemeral local port each) and adds the servers
    /// to `core`. Registration starts with [`Client::run`].
    pub async fn bind(
        mut core: ClientCore,
        connections: Vec<ServerConnection>,
    ) -> Result<Client, ClientError> {
        let ids: Vec<ServerId> = connections
            .iter()
            .map(|c| core.add_server(c.short_server_id, c.settings.clone()))
            .collect();
        let shared = ClientHandle {
            core: Arc::new(Mutex::new(core)),
            wake: Arc::new(Notify::new()),
            origin: Instant::now(),
            endpoints: Arc::default(),
        };
        let mut servers = Vec::new();
        for (connection, server) in connections.into_iter().zip(ids) {
            let local: SocketAddr = match connection.local_ip {
                Some(ip) => SocketAddr::new(ip, 0),
                None if connection.address.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
                None => SocketAddr::from(([0u16; 8], 0)),
            };
            let security = match (connection.certificate, connection.psk) {
                (Some(certificate), _) => Security::DtlsClient {
                    config: ClientConfig::with_certificate(certificate),
                    server: connection.address,
                },
                (None, Some((identity, key))) => Security::DtlsClient {
                    config: ClientConfig::new(identity, key),
                    server: connection.address,
                },
                (None, None) => Security::NoSec,
            };
            let handler = Arc::new(ServerHandler {
                shared: shared.clone(),
                server,
                address: connection.address,
            });
            let endpoint =
                CoapEndpoint::bind_secured(local, connection.coap, security, Some(handler)).await?;
            let endpoint = Arc::new(endpoint);
            shared
                .endpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((connection.address, Arc::downgrade(&endpoint)));
            servers.push(Connected {
                endpoint,
                address: connection.address,
            });
        }
        Ok(Client { shared, servers })
    }

    /// A handle for the application.
    pub fn handle(&self) -> ClientHandle {
        self.shared.clone()
    }

    /// The local address of the endpoint that talks to `server`.
    pub fn local_addr(&self, server: ServerId) -> Option<SocketAddr> {
        self.servers.get(server.0).map(|s| s.endpoint.local_addr())
    }

    /// Registers, keeps the registrations up and serves the servers until `shutdown`
    /// completes, then de-registers. Returns early when every registration has failed.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        mut on_event: impl FnMut(&Event),
    ) -> Result<(), ClientError> {
        let (responses, mut incoming) = mpsc::unbounded_channel();
        tokio::pin!(shutdown);
        let mut stop_by: Option<Instant> = None;
        let far = Duration::from_secs(24 * 3600);
        loop {
            let now = self.shared.now();
            let (requests, notifications, events, deadline, finished) = {
                let mut core = self.shared.lock();
                core.handle_timeout(now);
                let requests: Vec<_> = std::iter::from_fn(|| core.poll_request()).collect();
                let notifications: Vec<_> =
                    std::iter::from_fn(|| core.poll_notification(now)).collect();
                let events: Vec<_> = std::iter::from_fn(|| core.poll_event()).collect();
                (
                    requests,
                    notifications,
                    events,
                    core.poll_timeout(),
                    core.is_finished(),
                )
            };
            for event in &events {
                on_event(event);
            }
            for outgoing in requests {
                let Some(connected) = self.servers.get(outgoing.server.0) else {
                    continue;
                };
                let endpoint = Arc::clone(&connected.endpoint);
                let address = connected.address;
                let responses = responses.clone();
                let message = outgoing.coap.to_message();
                tokio::spawn(async move {
                    let result = endpoint.request(address, message).await;
                    let _ = responses.send((outgoing.token, response_of(result)));
                });
            }
            for notification in notifications {
                let Some(connected) = self.servers.get(notification.server.0) else {
                    continue;
                };
                let message = notification.response.to_message();
                let delivered = match &notification.fetch_body {
                    Some(body) => connected
                        .endpoint
                        .notify_fetch(&notification.path, body, message)
                        .await
                        .unwrap_or(0),
                    None => connected
                        .endpoint
                        .notify(&notification.path, message)
                        .await
                        .unwrap_or(0),
                };
                if delivered == 0 {
                    let mut core = self.shared.lock();
                    match &notification.fetch_body {
                        Some(body) => core.composite_observation_gone(notification.server, body),
                        None => core.observation_gone(notification.server, &notification.path),
                    }
                }
            }
            if finished || stop_by.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            let mut wake_at = self.shared.origin + deadline.unwrap_or(now + far);
            if let Some(stop) = stop_by {
                wake_at = wake_at.min(stop);
            }
            tokio::select! {
                Some((token, result)) = incoming.recv() => {
                    let now = self.shared.now();
                    self.shared.lock().handle_response(now, token, result);
                }
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.shared.wake.notified() => {}
                () = &mut shutdown, if stop_by.is_none() => {
                    self.shared.lock().deregister();
                    stop_by = Some(Instant::now() + DEREGISTER_WAIT);
                }
            }
        }
        for connected in &self.servers {
            connected.endpoint.shutdown().await;
        }
        Ok(())
    }
}

fn response_of(
    result: Result<cairn_coap::Message, TransportError>,
) -> Result<CoapResponse, RequestFailure> {
    match result {
        Ok(message) => CoapResponse::from_message(&message)
            .map_err(|e| RequestFailure::Transport(e.to_string())),
        Err(TransportError::Request(
            cairn_coap::RequestError::Timeout(_) | cairn_coap::RequestError::NoResponse,
        )) => Err(RequestFailure::Timeout),
        Err(error) => Err(RequestFailure::Transport(error.to_string())),
    }
}
