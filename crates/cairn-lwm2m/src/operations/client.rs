//! Requests a client sends (OMA LwM2M Core 1.2 §6: Bootstrap-Request of the
//! Bootstrap Interface, the Client Registration Interface, Send of Information Reporting;
//! mapped to CoAP as Transport Binding 1.2 defines):
//!
//! | operation | CoAP |
//! |---|---|
//! | Bootstrap-Request | POST /bs?ep=..&pct=.. → 2.04 |
//! | Register | POST /rd?ep=..&lt=..&lwm2m=..&b=..&sms=..&Q, link-format → 2.01, Location-Path |
//! | Update | POST /rd/{id}?lt=..&b=..&sms=..&Q, optional link-format → 2.04 |
//! | De-register | DELETE /rd/{id} → 2.02 |
//! | Send | POST /dp, SenML JSON/CBOR or LwM2M CBOR → 2.04 |
//!
//! The registration payload lists the objects and instances (`</1/0>,</3/0>;ver=1.1`),
//! optionally preceded by `</alternate>;rt="oma.lwm2m";ct=..` naming an alternate root
//! path and the content formats the client supports.

use std::collections::BTreeMap;

use cairn_coap::ContentFormat;
use cairn_coap::link_format::{self, Link};

use crate::coap::{CoapRequest, CoapResponse, Method, ResponseCode};
use crate::content;
use crate::model::{ModelLookup, Version};
use crate::node::LwM2mNode;
use crate::operations::bootstrap::BOOTSTRAP_PATH;
use crate::operations::{
    Lwm2mResponse, OperationError, ResponseContent, base_response, error_response, not_an_operation,
};
use crate::path::LwM2mPath;

/// Uri-Path of the registration interface.
pub const REGISTRATION_PATH: &str = "rd";
/// Uri-Path of the Send operation.
pub const SEND_PATH: &str = "dp";
/// Resource type of the LwM2M root link in a registration payload.
const LWM2M_RESOURCE_TYPE: &str = "oma.lwm2m";
/// Longest accepted endpoint name.
const MAX_ENDPOINT_LEN: usize = 255;

/// An object or object instance declared at registration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RegisteredObject {
    /// `/o` or `/o/i`.
    pub path: LwM2mPath,
    /// `ver` of the object (1.0 when absent).
    pub version: Option<Version>,
}

/// The registration parameters and payload shared by Register and Update.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RegistrationParameters {
    /// `lt`: lifetime in seconds.
    pub lifetime: Option<u32>,
    /// `b`: binding mode (`U`, `S`, `N`, `T`, and `UQ`-style forms of LwM2M 1.0).
    pub binding: Option<String>,
    /// `sms`: MSISDN.
    pub sms: Option<String>,
    /// `Q`: queue mode (LwM2M 1.1).
    pub queue_mode: bool,
    /// Objects and instances (`None` in an Update that does not change them).
    pub objects: Option<Vec<RegisteredObject>>,
    /// Alternate root path from the `rt="oma.lwm2m"` link.
    pub alternate_path: Option<String>,
    /// Content formats from the `ct` parameter of that link.
    pub content_formats: Vec<ContentFormat>,
}

impl RegistrationParameters {
    /// The object versions declared, for [`crate::registry::ModelRegistry::for_versions`].
    pub fn object_versions(&self) -> BTreeMap<u16, Version> {
        self.objects
            .iter()
            .flatten()
            .filter_map(|o| Some((o.path.object_id()?, o.version.unwrap_or(Version::V1_0))))
            .collect()
    }
}

/// A request from a client.
#[derive(Clone, PartialEq, Debug)]
pub enum ClientRequest {
    /// Bootstrap-Request.
    BootstrapRequest {
        /// `ep`: endpoint name.
        endpoint: String,
        /// `pct`: preferred content format (LwM2M 1.1).
        preferred_format: Option<ContentFormat>,
    },
    /// Register.
    Register {
        /// `ep`: endpoint name.
        endpoint: String,
        /// `lwm2m`: enabler version (1.0 when absent).
        lwm2m_version: Option<Version>,
        /// Everything Update can also change.
        parameters: RegistrationParameters,
    },
    /// Update.
    Update {
        /// The Location-Path Register returned (`rd/{id}`).
        location: Vec<String>,
        /// Changed parameters.
        parameters: RegistrationParameters,
    },
    /// De-register.
    Deregister {
        /// The Location-Path Register returned.
        location: Vec<String>,
    },
    /// Send.
    Send {
        /// Payload format.
        format: ContentFormat,
        /// Values sent, by path.
        nodes: BTreeMap<LwM2mPath, LwM2mNode>,
    },
}

impl ClientRequest {
    /// The operation's name.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::BootstrapRequest { .. } => "Bootstrap-Request",
            ClientRequest::Register { .. } => "Register",
            ClientRequest::Update { .. } => "Update",
            ClientRequest::Deregister { .. } => "De-register",
            ClientRequest::Send { .. } => "Send",
        }
    }

    /// The response code of a success.
    pub fn success_code(&self) -> ResponseCode {
        match self {
            ClientRequest::Register { .. } => ResponseCode::CREATED,
            ClientRequest::Deregister { .. } => ResponseCode::DELETED,
            _ => ResponseCode::CHANGED,
        }
    }

    /// The CoAP request parts of this operation.
    pub fn to_coap(&self) -> Result<CoapRequest, OperationError> {
        Ok(match self {
            ClientRequest::BootstrapRequest {
                endpoint,
                preferred_format,
            } => {
                let mut queries = vec![format!("ep={endpoint}")];
                queries.extend(preferred_format.map(|f| format!("pct={f}")));
                CoapRequest {
                    queries,
                    ..CoapRequest::new(Method::Post, &[BOOTSTRAP_PATH])
                }
            }
            ClientRequest::Register {
                endpoint,
                lwm2m_version,
                parameters,
            } => {
                let mut queries = vec![format!("ep={endpoint}")];
                queries.extend(lwm2m_version.map(|v| format!("lwm2m={v}")));
                queries.extend(parameter_queries(parameters));
                CoapRequest {
                    queries,
                    content_format: Some(ContentFormat::LINK_FORMAT),
                    payload: registration_payload(parameters).into_bytes(),
                    ..CoapRequest::new(Method::Post, &[REGISTRATION_PATH])
                }
            }
            ClientRequest::Update {
                location,
                parameters,
            } => {
                let payload = if parameters.objects.is_some() {
                    registration_payload(parameters).into_bytes()
                } else {
                    Vec::new()
                };
                CoapRequest {
                    path: location.clone(),
                    queries: parameter_queries(parameters),
                    content_format: (!payload.is_empty()).then_some(ContentFormat::LINK_FORMAT),
                    payload,
                    ..CoapRequest::new(Method::Post, &[])
                }
            }
            ClientRequest::Deregister { location } => CoapRequest {
                path: location.clone(),
                ..CoapRequest::new(Method::Delete, &[])
            },
            ClientRequest::Send { format, nodes } => CoapRequest {
                content_format: Some(*format),
                payload: content::encode_composite(nodes, *format)?,
                ..CoapRequest::new(Method::Post, &[SEND_PATH])
            },
        })
    }

    /// Recognizes the operation a CoAP request from a client carries (server side).
    pub fn from_coap(
        coap: &CoapRequest,
        models: &dyn ModelLookup,
    ) -> Result<ClientRequest, OperationError> {
        let first = coap.path.first().map(String::as_str);
        match (coap.method, first, coap.path.len()) {
            (Method::Post, Some(BOOTSTRAP_PATH), 1) => {
                let mut endpoint = None;
                let mut preferred_format = None;
                for (name, value) in queries(coap)? {
                    match name {
                        "ep" => endpoint = Some(endpoint_name(value)?),
                        "pct" => preferred_format = Some(ContentFormat(number(name, value)?)),
                        _ => {}
                    }
                }
                let endpoint = endpoint.ok_or(OperationError::Missing("ep query parameter"))?;
                Ok(ClientRequest::BootstrapRequest {
                    endpoint,
                    preferred_format,
                })
            }
            (Method::Post, Some(REGISTRATION_PATH), 1) => {
                let mut endpoint = None;
                let mut lwm2m_version = None;
                let mut parameters = RegistrationParameters::default();
                for (name, value) in queries(coap)? {
                    match name {
                        "ep" => endpoint = Some(endpoint_name(value)?),
                        "lwm2m" => {
                            let text = value.ok_or_else(|| query_error(name, "needs a value"))?;
                            lwm2m_version = Some(
                                text.parse()
                                    .map_err(|_| query_error(name, "is not a version"))?,
                            );
                        }
                        _ => read_parameter(&mut parameters, name, value)?,
                    }
                }
                let endpoint = endpoint.ok_or(OperationError::Missing("ep query parameter"))?;
                read_payload(&mut parameters, &coap.payload)?;
                if parameters.objects.is_none() {
                    return Err(OperationError::Missing("registration payload"));
                }
                Ok(ClientRequest::Register {
                    endpoint,
                    lwm2m_version,
                    parameters,
                })
            }
            (Method::Post, Some(REGISTRATION_PATH), _) => {
                let mut parameters = RegistrationParameters::default();
                for (name, value) in queries(coap)? {
                    read_parameter(&mut parameters, name, value)?;
                }
                read_payload(&mut parameters, &coap.payload)?;
                Ok(ClientRequest::Update {
                    location: coap.path.clone(),
                    parameters,
                })
            }
            (Method::Delete, Some(REGISTRATION_PATH), 2..) => Ok(ClientRequest::Deregister {
                location: coap.path.clone(),
            }),
            (Method::Post, Some(SEND_PATH), 1) => {
                let format = coap
                    .content_format
                    .ok_or(OperationError::Missing("Content-Format"))?;
                let nodes = content::decode_records(&coap.payload, format, models)?
                    .into_iter()
                    .map(|(path, value)| {
                        let node = match path {
                            LwM2mPath::ResourceInstance(_, _, _, ri) => {
                                LwM2mNode::ResourceInstance(crate::node::LwM2mResourceInstance {
                                    id: ri,
                                    value,
                                })
                            }
                            _ => LwM2mNode::Resource(crate::node::LwM2mResource::single(
                                path.resource_id().unwrap_or_default(),
                                value,
                            )),
                        };
                        (path, node)
                    })
                    .collect();
                Ok(ClientRequest::Send { format, nodes })
            }
            _ => Err(not_an_operation(
                coap,
                "not a bootstrap, registration or send request",
            )),
        }
    }

    /// The CoAP response parts of a response to this request (server side).
    pub fn encode_response(&self, response: &Lwm2mResponse) -> CoapResponse {
        base_response(response)
    }

    /// Reads a CoAP response to this request (client side); a Register success carries
    /// its Location-Path.
    pub fn decode_response(&self, coap: &CoapResponse) -> Result<Lwm2mResponse, OperationError> {
        if let Some(error) = error_response(coap, self.success_code())? {
            return Ok(error);
        }
        let content = match self {
            ClientRequest::Register { .. } => {
                if coap.location_path.is_empty() {
                    return Err(OperationError::Missing("Location-Path of the registration"));
                }
                ResponseContent::Location(coap.location_path.clone())
            }
            _ => ResponseContent::Empty,
        };
        Ok(Lwm2mResponse::with_content(coap.code, content, None))
    }
}

fn query_error(name: &str, why: &str) -> OperationError {
    OperationError::Query {
        query: name.chars().take(32).collect(),
        why: why.to_owned(),
    }
}

fn queries(coap: &CoapRequest) -> Result<Vec<(&str, Option<&str>)>, OperationError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for query in &coap.queries {
        let (name, value) = match query.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (query.as_str(), None),
        };
        if seen.contains(&name) {
            return Err(query_error(name, "is given twice"));
        }
        seen.push(name);
        out.push((name, value));
    }
    Ok(out)
}

fn endpoint_name(value: Option<&str>) -> Result<String, OperationError> {
    match value {
        Some(name) if !name.is_empty() && name.len() <= MAX_ENDPOINT_LEN => Ok(name.to_owned()),
        _ => Err(query_error(
            "ep",
            "must be a non-empty name of at most 255 bytes",
        )),
    }
}

fn number<T: std::str::FromStr>(name: &str, value: Option<&str>) -> Result<T, OperationError> {
    value
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| query_error(name, "is not an unsigned number in range"))
}

fn read_parameter(
    parameters: &mut RegistrationParameters,
    name: &str,
    value: Option<&str>,
) -> Result<(), OperationError> {
    match name {
        "lt" => parameters.lifetime = Some(number(name, value)?),
        "b" => {
            let binding = value.ok_or_else(|| query_error(name, "needs a value"))?;
            if binding.is_empty()
                || !binding
                    .chars()
                    .all(|c| matches!(c, 'U' | 'S' | 'N' | 'T' | 'Q'))
            {
                return Err(query_error(name, "is not a binding of U, S, N, T and Q"));
            }
            parameters.binding = Some(binding.to_owned());
        }
        "sms" => {
            parameters.sms = Some(
                value
                    .ok_or_else(|| query_error(name, "needs a value"))?
                    .to_owned(),
            )
        }
        "Q" if value.is_none() => parameters.queue_mode = true,
        "Q" => return Err(query_error(name, "takes no value")),
        _ => return Err(query_error(name, "is not a registration parameter")),
    }
    Ok(())
}

fn parameter_queries(parameters: &RegistrationParameters) -> Vec<String> {
    let mut queries = Vec::new();
    queries.extend(parameters.lifetime.map(|lt| format!("lt={lt}")));
    queries.extend(parameters.sms.as_ref().map(|sms| format!("sms={sms}")));
    queries.extend(parameters.binding.as_ref().map(|b| format!("b={b}")));
    if parameters.queue_mode {
        queries.push("Q".to_owned());
    }
    queries
}

fn registration_payload(parameters: &RegistrationParameters) -> String {
    let mut links = Vec::new();
    if parameters.alternate_path.is_some() || !parameters.content_formats.is_empty() {
        let mut root = Link::new(
            parameters
                .alternate_path
                .clone()
                .unwrap_or_else(|| "/".to_owned()),
        )
        .with("rt", Some(LWM2M_RESOURCE_TYPE));
        if !parameters.content_formats.is_empty() {
            let formats: Vec<String> = parameters
                .content_formats
                .iter()
                .map(ToString::to_string)
                .collect();
            root = root.with("ct", Some(formats.join(" ")));
        }
        links.push(root);
    }
    let prefix = parameters
        .alternate_path
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/');
    for object in parameters.objects.iter().flatten() {
        let mut link = Link::new(format!("{prefix}{}", object.path));
        if let Some(version) = object.version {
            link = link.with("ver", Some(version.to_string()));
        }
        links.push(link);
    }
    link_format::emit(&links)
}

fn read_payload(
    parameters: &mut RegistrationParameters,
    payload: &[u8],
) -> Result<(), OperationError> {
    if payload.is_empty() {
        return Ok(());
    }
    let links = link_format::parse_bytes(payload)?;
    let mut objects = Vec::new();
    for link in &links {
        if link.attribute("rt") == Some(Some(LWM2M_RESOURCE_TYPE)) {
            let root = link.target.trim_end_matches('/');
            parameters.alternate_path = (!root.is_empty()).then(|| root.to_owned());
            if let Some(Some(formats)) = link.attribute("ct") {
                parameters.content_formats = formats
                    .split_whitespace()
                    .map(|f| number::<u16>("ct", Some(f)).map(ContentFormat))
                    .collect::<Result<_, _>>()?;
            }
            continue;
        }
        let prefix = parameters.alternate_path.as_deref().unwrap_or("");
        let target = link.target.strip_prefix(prefix).unwrap_or(&link.target);
        // Some clients write relative targets (`<1/0>`); they name the same objects.
        let path: LwM2mPath = match target.strip_prefix('/') {
            Some(_) => target.parse()?,
            None => format!("/{target}").parse()?,
        };
        if !matches!(path.depth(), 1 | 2) {
            return Err(OperationError::BadPath {
                operation: "Register",
                path,
            });
        }
        let version = match link.attribute("ver") {
            Some(Some(v)) => Some(
                v.parse()
                    .map_err(|_| query_error("ver", "is not a version"))?,
            ),
            _ => None,
        };
        objects.push(RegisteredObject { path, version });
    }
    parameters.objects = Some(objects);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::LwM2mResource;
    use crate::registry::ModelRegistry;
    use crate::value::Value;
    use proptest::prelude::*;

    fn register() -> ClientRequest {
        ClientRequest::Register {
            endpoint: "urn:imei:350000000000001".into(),
            lwm2m_version: Some(Version::V1_1),
            parameters: RegistrationParameters {
                lifetime: Some(300),
                binding: Some("U".into()),
                sms: None,
                queue_mode: true,
                objects: Some(vec![
                    RegisteredObject {
                        path: LwM2mPath::ObjectInstance(1, 0),
                        version: None,
                    },
                    RegisteredObject {
                        path: LwM2mPath::ObjectInstance(3, 0),
                        version: Some(Version::V1_1),
                    },
                    RegisteredObject {
                        path: LwM2mPath::Object(5),
                        version: None,
                    },
                ]),
                alternate_path: None,
                content_formats: vec![ContentFormat::SENML_CBOR, ContentFormat::LWM2M_CBOR],
            },
        }
    }

    #[test]
    fn register_maps_to_the_transport_binding() {
        let coap = register().to_coap().expect("maps");
        assert_eq!(
            (coap.method, coap.path.as_slice()),
            (Method::Post, &["rd".to_owned()][..])
        );
        assert_eq!(
            coap.queries,
            [
                "ep=urn:imei:350000000000001",
                "lwm2m=1.1",
                "lt=300",
                "b=U",
                "Q"
            ]
        );
        assert_eq!(
            String::from_utf8(coap.payload.clone()).ok().as_deref(),
            Some("</>;rt=\"oma.lwm2m\";ct=\"112 11544\",</1/0>,</3/0>;ver=1.1,</5>")
        );
        let models = ModelRegistry::with_core_models();
        assert_eq!(ClientRequest::from_coap(&coap, &models), Ok(register()));
    }

    #[test]
    fn parses_a_typical_1_0_registration() {
        let coap = CoapRequest {
            queries: vec!["ep=node-1".into(), "lt=86400".into(), "b=UQ".into()],
            content_format: Some(ContentFormat::LINK_FORMAT),
            payload: b"</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/1/0>,</lwm2m/3/0>,</lwm2m/3303/0>;ver=1.1"
                .to_vec(),
            ..CoapRequest::new(Method::Post, &["rd"])
        };
        let models = ModelRegistry::with_core_models();
        let Ok(ClientRequest::Register {
            endpoint,
            lwm2m_version,
            parameters,
        }) = ClientRequest::from_coap(&coap, &models)
        else {
            panic!("not a registration");
        };
        assert_eq!(endpoint, "node-1");
        assert_eq!(lwm2m_version, None);
        assert_eq!(parameters.alternate_path.as_deref(), Some("/lwm2m"));
        assert_eq!(
            parameters.object_versions(),
            BTreeMap::from([
                (1, Version::V1_0),
                (3, Version::V1_0),
                (3303, Version::V1_1)
            ])
        );
    }

    #[test]
    fn tolerates_relative_targets() {
        let coap = CoapRequest {
            queries: vec!["ep=node-2".into()],
            payload: b"<1/0>, <3/0>".to_vec(),
            ..CoapRequest::new(Method::Post, &["rd"])
        };
        let models = ModelRegistry::with_core_models();
        let Ok(ClientRequest::Register { parameters, .. }) =
            ClientRequest::from_coap(&coap, &models)
        else {
            panic!("not a registration");
        };
        let paths: Vec<LwM2mPath> = parameters
            .objects
            .iter()
            .flatten()
            .map(|o| o.path)
            .collect();
        assert_eq!(
            paths,
            [
                LwM2mPath::ObjectInstance(1, 0),
                LwM2mPath::ObjectInstance(3, 0)
            ]
        );
    }

    #[test]
    fn other_client_operations_round_trip() {
        let models = ModelRegistry::with_core_models();
        let requests = [
            ClientRequest::BootstrapRequest {
                endpoint: "node-1".into(),
                preferred_format: Some(ContentFormat::SENML_CBOR),
            },
            ClientRequest::Update {
                location: vec!["rd".into(), "5a3f".into()],
                parameters: RegistrationParameters {
                    lifetime: Some(60),
                    ..Default::default()
                },
            },
            ClientRequest::Deregister {
                location: vec!["rd".into(), "5a3f".into()],
            },
            ClientRequest::Send {
                format: ContentFormat::SENML_CBOR,
                nodes: BTreeMap::from([(
                    LwM2mPath::Resource(3303, 0, 5700),
                    LwM2mNode::Resource(LwM2mResource::single(5700, Value::Float(21.5))),
                )]),
            },
        ];
        for request in requests {
            let coap = request.to_coap().expect("maps");
            assert_eq!(
                ClientRequest::from_coap(&coap, &models).as_ref(),
                Ok(&request),
                "{}",
                request.name()
            );
        }
    }

    #[test]
    fn register_responses_and_bad_queries() {
        let models = ModelRegistry::with_core_models();
        let created = CoapResponse {
            location_path: vec!["rd".into(), "5a3f".into()],
            ..CoapResponse::new(ResponseCode::CREATED)
        };
        assert_eq!(
            register().decode_response(&created).map(|r| r.content),
            Ok(ResponseContent::Location(vec!["rd".into(), "5a3f".into()]))
        );
        assert!(
            register()
                .decode_response(&CoapResponse::new(ResponseCode::CREATED))
                .is_err()
        );
        let mut coap = register().to_coap().expect("maps");
        coap.queries.push("lt=10".into());
        assert!(matches!(
            ClientRequest::from_coap(&coap, &models),
            Err(OperationError::Query { .. })
        ));
        let mut no_ep = register().to_coap().expect("maps");
        no_ep.queries.remove(0);
        assert_eq!(
            ClientRequest::from_coap(&no_ep, &models),
            Err(OperationError::Missing("ep query parameter"))
        );
        let mut bad_binding = register().to_coap().expect("maps");
        bad_binding.queries[3] = "b=X".into();
        assert!(ClientRequest::from_coap(&bad_binding, &models).is_err());
    }

    proptest! {
        #[test]
        fn registrations_round_trip(
            endpoint in "[!-~]{1,40}",
            lifetime in proptest::option::of(any::<u32>()),
            queue_mode in any::<bool>(),
            objects in proptest::collection::vec((0u16..=crate::path::MAX_ID, proptest::option::of(0u16..100), proptest::option::of((1u8..3, 0u8..3))), 1..8),
        ) {
            let objects = objects
                .into_iter()
                .map(|(o, i, v)| RegisteredObject {
                    path: i.map_or(LwM2mPath::Object(o), |i| LwM2mPath::ObjectInstance(o, i)),
                    version: v.map(|(major, minor)| Version::new(major, minor)),
                })
                .collect();
            let request = ClientRequest::Register {
                endpoint,
                lwm2m_version: Some(Version::V1_2),
                parameters: RegistrationParameters {
                    lifetime,
                    queue_mode,
                    objects: Some(objects),
                    ..Default::default()
                },
            };
            let models = ModelRegistry::with_core_models();
            let coap = request.to_coap().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ClientRequest::from_coap(&coap, &models), Ok(request));
        }

        #[test]
        fn from_coap_never_panics(
            path in proptest::collection::vec(prop_oneof![Just("rd".to_owned()), Just("bs".to_owned()), Just("dp".to_owned()), "[a-z0-9]{0,4}"], 0..3),
            queries in proptest::collection::vec("(ep|lt|b|sms|Q|lwm2m|pct)(=[A-Za-z0-9.]{0,6})?", 0..5),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let models = ModelRegistry::with_core_models();
            for method in [Method::Post, Method::Delete] {
                let coap = CoapRequest { path: path.clone(), queries: queries.clone(), content_format: Some(ContentFormat::LINK_FORMAT), payload: payload.clone(), ..CoapRequest::new(method, &[]) };
                let _ = ClientRequest::from_coap(&coap, &models);
            }
        }
    }
}
