//! One server-initiated bootstrap sequence (LwM2M Core 1.2 §6.1.7 and Transport Binding 1.2
//! §6.4): Bootstrap-Discover, Bootstrap-Delete of what the device had, Bootstrap-Write of the
//! Security (0), Server (1), OSCORE (21) and Access Control (2) instances, then
//! Bootstrap-Finish. No Bootstrap-Read: the server writes what its configuration says
//! whatever the device had (the Delete removes it), and Bootstrap-Read is optional (Core
//! §6.1.7.3), so reading would cost every device one more exchange for nothing.

use std::net::SocketAddr;
use std::time::Duration;

use cairn_coap::ContentFormat;
use cairn_coap::RequestError;
use cairn_lwm2m::node::{LwM2mNode, LwM2mObjectInstance, LwM2mResource};
use cairn_lwm2m::{
    BootstrapServerRequest, CoapResponse, LwM2mPath, Lwm2mResponse, ModelRegistry, ObjectLink,
    ResponseCode, Value,
};
use cairn_store::{
    BootstrapSettings, CredentialKind, DeviceCredentials, DmCredentialSource, PskCredential,
};
use cairn_transport::{CoapEndpoint, TransportError};

use super::credentials::{CredentialError, DmCertificates};

/// Security object resources (Core Appendix E.1).
mod security {
    pub const URI: u16 = 0;
    pub const BOOTSTRAP_SERVER: u16 = 1;
    pub const MODE: u16 = 2;
    pub const PUBLIC_KEY_OR_IDENTITY: u16 = 3;
    pub const SERVER_PUBLIC_KEY: u16 = 4;
    pub const SECRET_KEY: u16 = 5;
    pub const SHORT_SERVER_ID: u16 = 10;
    pub const OSCORE_SECURITY_MODE: u16 = 17;
    pub const MODE_PSK: i64 = 0;
    pub const MODE_RPK: i64 = 1;
    pub const MODE_CERTIFICATE: i64 = 2;
    pub const MODE_NOSEC: i64 = 3;
}

/// Zeroizes the opaque values (keys, identities, OSCORE secrets) of a written node.
fn wipe(node: &mut LwM2mNode) {
    use zeroize::Zeroize;
    let instances: Vec<&mut LwM2mObjectInstance> = match node {
        LwM2mNode::Object(object) => object.instances.values_mut().collect(),
        LwM2mNode::ObjectInstance(instance) => vec![instance],
        _ => Vec::new(),
    };
    for instance in instances {
        for resource in instance.resources.values_mut() {
            if let cairn_lwm2m::ResourceValue::Single(Value::Opaque(bytes)) = &mut resource.value {
                bytes.zeroize();
            }
        }
    }
}

/// One step of the sequence; the credentials it writes are wiped when it is dropped.
pub(crate) struct Step {
    pub(crate) request: BootstrapServerRequest,
    /// Whether an error answer ends the sequence (Discover and Read are informative).
    pub(crate) required: bool,
}

impl Drop for Step {
    fn drop(&mut self) {
        if let BootstrapServerRequest::Write { node, .. } = &mut self.request {
            wipe(node);
        }
    }
}

impl Step {
    pub(crate) fn name(&self) -> String {
        match &self.request {
            BootstrapServerRequest::Discover { path }
            | BootstrapServerRequest::Read { path, .. }
            | BootstrapServerRequest::Write { path, .. }
            | BootstrapServerRequest::Delete { path } => {
                format!("{} {path}", self.request.name())
            }
            BootstrapServerRequest::Finish => self.request.name().to_owned(),
        }
    }
}

/// The bootstrap account instance: the Bootstrap-Server's URI and the device's new bootstrap
/// credential.
fn bootstrap_account(id: u16, uri: &str, credential: &PskCredential) -> LwM2mObjectInstance {
    LwM2mObjectInstance::new(
        id,
        [
            LwM2mResource::single(security::URI, Value::String(uri.to_owned())),
            LwM2mResource::single(security::BOOTSTRAP_SERVER, Value::Boolean(true)),
            LwM2mResource::single(security::MODE, Value::Integer(security::MODE_PSK)),
            LwM2mResource::single(
                security::PUBLIC_KEY_OR_IDENTITY,
                Value::Opaque(credential.identity.clone()),
            ),
            LwM2mResource::single(
                security::SECRET_KEY,
                Value::Opaque(credential.key.expose().to_vec()),
            ),
        ],
    )
}

fn write(path: LwM2mPath, format: ContentFormat, instance: LwM2mObjectInstance) -> Step {
    Step {
        request: BootstrapServerRequest::Write {
            path,
            format,
            node: LwM2mNode::ObjectInstance(instance),
        },
        required: true,
    }
}

fn random_bytes(length: usize) -> Result<Vec<u8>, CredentialError> {
    let mut bytes = vec![0u8; length];
    getrandom::fill(&mut bytes).map_err(|e| CredentialError::Random(e.to_string()))?;
    Ok(bytes)
}

/// The writes and the Finish of a sequence, after Discover and Read. The bootstrap account is
/// written at `bootstrap_instance` (where the device has it), the servers' instances at the
/// lowest other ids.
pub(crate) fn plan(
    settings: &BootstrapSettings,
    device: Option<&DeviceCredentials>,
    format: ContentFormat,
    bootstrap_instance: u16,
    certificates: Option<&DmCertificates>,
) -> Result<Vec<Step>, CredentialError> {
    let mut steps = vec![Step {
        request: BootstrapServerRequest::Delete {
            path: LwM2mPath::Root,
        },
        required: true,
    }];
    if let Some(device) = device.filter(|_| settings.replace_bootstrap_credential) {
        steps.push(write(
            LwM2mPath::ObjectInstance(0, bootstrap_instance),
            format,
            bootstrap_account(
                bootstrap_instance,
                &settings.bootstrap_uri,
                &device.bootstrap,
            ),
        ));
    }
    let instances = (0u16..).filter(|id| *id != bootstrap_instance);
    for (server, instance) in settings.servers.iter().zip(instances) {
        let credential = match (&server.credential, device.and_then(|d| d.dm.as_ref())) {
            (DmCredentialSource::NoSec, _) | (_, None) => None,
            (_, Some(dm)) => Some(dm),
        };
        let mut resources = vec![
            LwM2mResource::single(security::URI, Value::String(server.uri.clone())),
            LwM2mResource::single(security::BOOTSTRAP_SERVER, Value::Boolean(false)),
            LwM2mResource::single(
                security::SHORT_SERVER_ID,
                Value::Integer(i64::from(server.short_server_id)),
            ),
        ];
        match credential {
            Some(dm) => {
                let mode = match dm.kind {
                    CredentialKind::Psk => security::MODE_PSK,
                    CredentialKind::Rpk => security::MODE_RPK,
                    CredentialKind::X509 => security::MODE_CERTIFICATE,
                };
                resources.extend([
                    LwM2mResource::single(security::MODE, Value::Integer(mode)),
                    LwM2mResource::single(
                        security::PUBLIC_KEY_OR_IDENTITY,
                        Value::Opaque(dm.current.identity.clone()),
                    ),
                    LwM2mResource::single(
                        security::SECRET_KEY,
                        Value::Opaque(dm.current.key.expose().to_vec()),
                    ),
                ]);
                if dm.kind != CredentialKind::Psk {
                    let server_key = certificates
                        .and_then(|c| c.server_public_key(dm.kind))
                        .ok_or(CredentialError::Unsupported(dm.kind))?;
                    resources.push(LwM2mResource::single(
                        security::SERVER_PUBLIC_KEY,
                        Value::Opaque(server_key.to_vec()),
                    ));
                }
            }
            None => resources.push(LwM2mResource::single(
                security::MODE,
                Value::Integer(security::MODE_NOSEC),
            )),
        }
        if server.oscore {
            resources.push(LwM2mResource::single(
                security::OSCORE_SECURITY_MODE,
                Value::Objlnk(ObjectLink {
                    object_id: 21,
                    instance_id: instance,
                }),
            ));
        }
        steps.push(write(
            LwM2mPath::ObjectInstance(0, instance),
            format,
            LwM2mObjectInstance::new(instance, resources),
        ));
        steps.push(write(
            LwM2mPath::ObjectInstance(1, instance),
            format,
            LwM2mObjectInstance::new(
                instance,
                [
                    LwM2mResource::single(0, Value::Integer(i64::from(server.short_server_id))),
                    LwM2mResource::single(1, Value::Integer(i64::from(server.lifetime_s))),
                    LwM2mResource::single(6, Value::Boolean(false)),
                    LwM2mResource::single(7, Value::String(server.binding.clone())),
                ],
            ),
        ));
        if server.oscore {
            // An OSCORE security context (Transport Binding 1.2 §5.5.2): a fresh master secret
            // and random sender and recipient ids; AES-CCM-16-64-128 (10), HKDF-SHA-256 (5).
            steps.push(write(
                LwM2mPath::ObjectInstance(21, instance),
                format,
                LwM2mObjectInstance::new(
                    instance,
                    [
                        LwM2mResource::single(0, Value::Opaque(random_bytes(32)?)),
                        LwM2mResource::single(1, Value::Opaque(random_bytes(6)?)),
                        LwM2mResource::single(2, Value::Opaque(random_bytes(6)?)),
                        LwM2mResource::single(3, Value::Integer(10)),
                        LwM2mResource::single(4, Value::Integer(5)),
                    ],
                ),
            ));
        }
    }
    for (acl, instance) in settings.acl.iter().zip(0u16..) {
        steps.push(write(
            LwM2mPath::ObjectInstance(2, instance),
            format,
            LwM2mObjectInstance::new(
                instance,
                [
                    LwM2mResource::single(0, Value::Integer(i64::from(acl.object_id))),
                    LwM2mResource::single(1, Value::Integer(i64::from(acl.instance_id))),
                    LwM2mResource::multiple(
                        2,
                        acl.rights
                            .iter()
                            .map(|(ssid, rights)| (*ssid, Value::Integer(i64::from(*rights)))),
                    ),
                    LwM2mResource::single(3, Value::Integer(i64::from(acl.owner))),
                ],
            ),
        ));
    }
    steps.push(Step {
        request: BootstrapServerRequest::Finish,
        required: true,
    });
    Ok(steps)
}

/// How a sequence ended.
pub(crate) enum Outcome {
    Finished,
    Failed { step: String, reason: String },
}

/// Where and how the requests of a sequence go.
pub(crate) struct Exchange<'a> {
    pub(crate) socket: &'a CoapEndpoint,
    pub(crate) peer: SocketAddr,
    pub(crate) models: &'a ModelRegistry,
    pub(crate) request_timeout: Duration,
    /// Attempts per step when the device answers 5.xx or does not answer.
    pub(crate) attempts: u32,
    /// The DM server's public key and Cairn's CA, for certificate-mode credentials.
    pub(crate) certificates: Option<&'a DmCertificates>,
}

/// Sends the steps to the device, retrying a step the device could not handle for a moment
/// (5.xx, timeout).
pub(crate) async fn run(
    exchange: &Exchange<'_>,
    format: ContentFormat,
    settings: &BootstrapSettings,
    device: Option<&DeviceCredentials>,
) -> Outcome {
    let Exchange {
        socket,
        peer,
        models,
        request_timeout,
        attempts,
        certificates,
    } = *exchange;
    let discovered = match discover(exchange).await {
        Ok(discovered) => discovered,
        Err(reason) => {
            return Outcome::Failed {
                step: "Bootstrap-Discover".into(),
                reason,
            };
        }
    };
    let bootstrap_instance = discovered.and_then(|d| d.bootstrap_instance).unwrap_or(0);
    let steps = match plan(settings, device, format, bootstrap_instance, certificates) {
        Ok(planned) => planned,
        Err(error) => {
            return Outcome::Failed {
                step: "plan".into(),
                reason: error.to_string(),
            };
        }
    };
    for step in &steps {
        match send(socket, peer, models, step, request_timeout, attempts).await {
            Ok(response) if response.code.is_success() => {}
            Ok(response) if !step.required => {
                tracing::debug!(%peer, step = %step.name(), code = %response.code, "ignored");
            }
            Ok(response) => {
                return Outcome::Failed {
                    step: step.name(),
                    reason: match response.diagnostic {
                        Some(text) => format!("{}: {text}", response.code),
                        None => response.code.to_string(),
                    },
                };
            }
            Err(Failure {
                reason,
                session_ended,
            }) if step.required || session_ended => {
                return Outcome::Failed {
                    step: step.name(),
                    reason,
                };
            }
            Err(_) => {}
        }
    }
    Outcome::Finished
}

/// What Bootstrap-Discover says about a device.
struct Discovered {
    /// The Security instance of the Bootstrap-Server account: the one without `ssid`.
    bootstrap_instance: Option<u16>,
}

/// Whether a request failed because the device's secure session ended (RFC 7252 §9.1): the
/// address may belong to another device now, so the sequence must not send anything more.
fn session_ended(error: &TransportError) -> bool {
    matches!(error, TransportError::Request(RequestError::SessionFailed))
}

/// Why a step got no usable answer.
struct Failure {
    reason: String,
    /// The device's secure session ended: nothing more may be sent to its address.
    session_ended: bool,
}

/// Bootstrap-Discover `/`, read as plain link format so that any attribute a client adds
/// (`ssid`, `uri`) is understood; `None` when the client does not support it, an error when
/// the device's secure session ended.
async fn discover(exchange: &Exchange<'_>) -> Result<Option<Discovered>, String> {
    let request = BootstrapServerRequest::Discover {
        path: LwM2mPath::Root,
    };
    let Ok(request) = request.to_coap(exchange.models) else {
        return Ok(None);
    };
    let sent = exchange.socket.request(exchange.peer, request.to_message());
    let response = match tokio::time::timeout(exchange.request_timeout, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) if session_ended(&error) => return Err(error.to_string()),
        _ => return Ok(None),
    };
    Ok(parse_discovered(&response))
}

fn parse_discovered(response: &cairn_coap::Message) -> Option<Discovered> {
    if response.code != cairn_coap::Code::CONTENT {
        return None;
    }
    let links = cairn_coap::link_format::parse_bytes(&response.payload).ok()?;
    let accounts: Vec<u16> = links
        .iter()
        .filter(|l| l.attribute("ssid").is_none())
        .filter_map(|l| l.target.strip_prefix("/0/")?.parse().ok())
        .collect();
    Some(Discovered {
        bootstrap_instance: match accounts.as_slice() {
            [one] => Some(*one),
            _ => None,
        },
    })
}

async fn send(
    socket: &CoapEndpoint,
    peer: SocketAddr,
    models: &ModelRegistry,
    step: &Step,
    request_timeout: Duration,
    attempts: u32,
) -> Result<Lwm2mResponse, Failure> {
    let coap = step.request.to_coap(models).map_err(|e| Failure {
        reason: e.to_string(),
        session_ended: false,
    })?;
    let coap = WipedPayload(coap);
    let coap = &coap.0;
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        let sent = tokio::time::timeout(request_timeout, socket.request(peer, coap.to_message()));
        let answer = match sent.await {
            Ok(Ok(message)) => CoapResponse::from_message(&message)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    step.request
                        .decode_response(&c, models)
                        .map_err(|e| e.to_string())
                }),
            Ok(Err(error)) if session_ended(&error) => {
                return Err(Failure {
                    reason: error.to_string(),
                    session_ended: true,
                });
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {request_timeout:?}")),
        };
        match answer {
            Ok(response) if response.code.class == 5 && attempt < attempts => {
                last = response.code.to_string();
            }
            Ok(response) => return Ok(response),
            Err(reason) => last = reason,
        }
        if attempt < attempts {
            tracing::debug!(%peer, step = %step.name(), attempt, %last, "retrying");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
    if last.starts_with('5') {
        return Ok(Lwm2mResponse::error(
            ResponseCode::SERVICE_UNAVAILABLE,
            Some(last),
        ));
    }
    Err(Failure {
        reason: last,
        session_ended: false,
    })
}

/// A request whose encoded payload (credentials) is wiped when dropped.
struct WipedPayload(cairn_lwm2m::CoapRequest);

impl Drop for WipedPayload {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::{AclConfig, CredentialKind, DmServerConfig};

    #[test]
    fn the_plan_writes_every_object_and_ends_with_finish() {
        let settings = BootstrapSettings {
            servers: vec![DmServerConfig {
                short_server_id: 7,
                uri: "coaps://dm".into(),
                lifetime_s: 60,
                binding: "U".into(),
                credential: DmCredentialSource::Generate(CredentialKind::Psk),
                oscore: true,
            }],
            acl: vec![AclConfig {
                object_id: 3,
                instance_id: 0,
                rights: vec![(7, 1)],
                owner: 7,
            }],
            replace_bootstrap_credential: true,
            bootstrap_uri: "coaps://bs".into(),
            allow_unsecured: false,
        };
        let device = crate::bootstrap::credentials::on_bootstrap_request(
            DeviceCredentials::factory(
                "d",
                crate::bootstrap::credentials::generate_psk("f-").unwrap(),
            ),
            None,
            &settings,
            None,
            None,
            0,
        )
        .unwrap();
        let models = ModelRegistry::with_core_models();
        let steps = plan(&settings, Some(&device), ContentFormat::SENML_CBOR, 0, None).unwrap();
        let names: Vec<String> = steps.iter().map(Step::name).collect();
        assert_eq!(
            names,
            [
                "Bootstrap-Delete /",
                "Bootstrap-Write /0/0",
                "Bootstrap-Write /0/1",
                "Bootstrap-Write /1/1",
                "Bootstrap-Write /21/1",
                "Bootstrap-Write /2/0",
                "Bootstrap-Finish"
            ]
        );
        for step in &steps {
            step.request.to_coap(&models).expect("every step encodes");
        }
        // A device whose bootstrap account is instance 2: the servers go around it.
        let steps = plan(&settings, Some(&device), ContentFormat::LWM2M_TLV, 2, None).unwrap();
        let names: Vec<String> = steps.iter().take(4).map(Step::name).collect();
        assert_eq!(
            names,
            [
                "Bootstrap-Delete /",
                "Bootstrap-Write /0/2",
                "Bootstrap-Write /0/0",
                "Bootstrap-Write /1/0"
            ]
        );
    }
}
