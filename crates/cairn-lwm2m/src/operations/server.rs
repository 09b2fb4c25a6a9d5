//! Requests a LwM2M Server sends to a client: the Device Management and Service
//! Enablement interface and Observe / Cancel Observation of Information Reporting (OMA
//! LwM2M Core 1.2 §6), mapped to CoAP as Transport Binding 1.2 defines:
//!
//! | operation | CoAP |
//! |---|---|
//! | Read | GET path (Accept) → 2.05 |
//! | Discover | GET path, Accept: link-format → 2.05 |
//! | Write (replace) | PUT path, Content-Format → 2.04 |
//! | Write (partial update) | POST /o/i or /o/i/r, Content-Format → 2.04 |
//! | Write-Attributes | PUT path ?pmin=..&pmax=.. → 2.04 |
//! | Execute | POST /o/i/r (arguments) → 2.04 |
//! | Create | POST /o, Content-Format → 2.01 |
//! | Delete | DELETE /o/i → 2.02 |
//! | Read-Composite | FETCH /, Content-Format, Accept → 2.05 |
//! | Write-Composite | iPATCH /, Content-Format → 2.04 |
//! | Observe / Cancel | GET path, Observe 0 / 1 → 2.05 |
//! | Observe-Composite / Cancel | FETCH /, Observe 0 / 1 → 2.05 |

use std::collections::BTreeMap;

use cairn_coap::ContentFormat;

use crate::attributes::AttributeSet;
use crate::coap::{CoapRequest, CoapResponse, Method, ResponseCode};
use crate::content::link::{decode_discover, encode_discover};
use crate::content::tlv::TlvKind;
use crate::content::{self, CodecError};
use crate::model::ModelLookup;
use crate::node::{LwM2mNode, LwM2mObject, LwM2mObjectInstance, LwM2mResource};
use crate::operations::{
    ExecuteArgument, Lwm2mResponse, OperationError, ResponseContent, base_response, error_response,
    format_execute_arguments, not_an_operation, parse_execute_arguments, path_of, segments,
};
use crate::path::LwM2mPath;

/// Replace or partial update (Core §6, Device Management).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteMode {
    /// PUT: the target's content is replaced.
    Replace,
    /// POST: the given resources are updated, others kept.
    PartialUpdate,
}

/// A request from a LwM2M Server.
#[derive(Clone, PartialEq, Debug)]
pub enum ServerRequest {
    /// Read.
    Read {
        /// Target.
        path: LwM2mPath,
        /// Preferred format.
        accept: Option<ContentFormat>,
    },
    /// Discover.
    Discover {
        /// Target.
        path: LwM2mPath,
    },
    /// Write.
    Write {
        /// Target.
        path: LwM2mPath,
        /// Replace or partial update.
        mode: WriteMode,
        /// Payload format.
        format: ContentFormat,
        /// The node written.
        node: LwM2mNode,
    },
    /// Write-Attributes.
    WriteAttributes {
        /// Target.
        path: LwM2mPath,
        /// Attributes to set or unset.
        attributes: AttributeSet,
    },
    /// Execute.
    Execute {
        /// Target resource.
        path: LwM2mPath,
        /// Arguments.
        arguments: Vec<ExecuteArgument>,
    },
    /// Create, with the instance ids the server chose.
    Create {
        /// Target object.
        path: LwM2mPath,
        /// Payload format.
        format: ContentFormat,
        /// Instances to create.
        instances: Vec<LwM2mObjectInstance>,
    },
    /// Create of one instance whose id the client chooses: its resources without an
    /// object-instance entry, which only TLV can express (the other formats name every
    /// value with its instance id).
    CreateWithoutId {
        /// Target object.
        path: LwM2mPath,
        /// Payload format (TLV).
        format: ContentFormat,
        /// Resources of the new instance.
        resources: Vec<LwM2mResource>,
    },
    /// Delete.
    Delete {
        /// Target instance.
        path: LwM2mPath,
    },
    /// Read-Composite.
    ReadComposite {
        /// Targets.
        paths: Vec<LwM2mPath>,
        /// Format of the path list.
        format: ContentFormat,
        /// Preferred response format.
        accept: Option<ContentFormat>,
    },
    /// Write-Composite.
    WriteComposite {
        /// Nodes to write.
        nodes: BTreeMap<LwM2mPath, LwM2mNode>,
        /// Payload format.
        format: ContentFormat,
    },
    /// Observe.
    Observe {
        /// Target.
        path: LwM2mPath,
        /// Preferred format.
        accept: Option<ContentFormat>,
    },
    /// Observe-Composite.
    ObserveComposite {
        /// Targets.
        paths: Vec<LwM2mPath>,
        /// Format of the path list.
        format: ContentFormat,
        /// Preferred response format.
        accept: Option<ContentFormat>,
    },
    /// Cancel Observation (active cancel, Observe option 1).
    CancelObservation {
        /// Target.
        path: LwM2mPath,
        /// Preferred format.
        accept: Option<ContentFormat>,
    },
    /// Cancel Observe-Composite.
    CancelObserveComposite {
        /// Targets.
        paths: Vec<LwM2mPath>,
        /// Format of the path list.
        format: ContentFormat,
        /// Preferred response format.
        accept: Option<ContentFormat>,
    },
}

const OBSERVE_REGISTER: u32 = 0;
const OBSERVE_DEREGISTER: u32 = 1;

impl ServerRequest {
    /// The operation's name as the specification writes it.
    pub fn name(&self) -> &'static str {
        match self {
            ServerRequest::Read { .. } => "Read",
            ServerRequest::Discover { .. } => "Discover",
            ServerRequest::Write { .. } => "Write",
            ServerRequest::WriteAttributes { .. } => "Write-Attributes",
            ServerRequest::Execute { .. } => "Execute",
            ServerRequest::Create { .. } | ServerRequest::CreateWithoutId { .. } => "Create",
            ServerRequest::Delete { .. } => "Delete",
            ServerRequest::ReadComposite { .. } => "Read-Composite",
            ServerRequest::WriteComposite { .. } => "Write-Composite",
            ServerRequest::Observe { .. } => "Observe",
            ServerRequest::ObserveComposite { .. } => "Observe-Composite",
            ServerRequest::CancelObservation { .. } => "Cancel Observation",
            ServerRequest::CancelObserveComposite { .. } => "Cancel Observe-Composite",
        }
    }

    /// The response code of a success.
    pub fn success_code(&self) -> ResponseCode {
        match self {
            ServerRequest::Read { .. }
            | ServerRequest::Discover { .. }
            | ServerRequest::ReadComposite { .. }
            | ServerRequest::Observe { .. }
            | ServerRequest::ObserveComposite { .. }
            | ServerRequest::CancelObservation { .. }
            | ServerRequest::CancelObserveComposite { .. } => ResponseCode::CONTENT,
            ServerRequest::Write { .. }
            | ServerRequest::WriteAttributes { .. }
            | ServerRequest::Execute { .. }
            | ServerRequest::WriteComposite { .. } => ResponseCode::CHANGED,
            ServerRequest::Create { .. } | ServerRequest::CreateWithoutId { .. } => {
                ResponseCode::CREATED
            }
            ServerRequest::Delete { .. } => ResponseCode::DELETED,
        }
    }

    /// Checks that the operation applies to its path (Core §6).
    pub fn validate(&self) -> Result<(), OperationError> {
        let ok = match self {
            ServerRequest::Read { path, .. }
            | ServerRequest::Observe { path, .. }
            | ServerRequest::CancelObservation { path, .. }
            | ServerRequest::WriteAttributes { path, .. } => !path.is_root(),
            ServerRequest::Discover { path } => (1..=3).contains(&path.depth()),
            ServerRequest::Write {
                path, mode, node, ..
            } => {
                node.fits(path)
                    && match mode {
                        WriteMode::Replace => path.depth() >= 2,
                        WriteMode::PartialUpdate => matches!(path.depth(), 2 | 3),
                    }
            }
            ServerRequest::Execute { path, .. } => path.depth() == 3,
            ServerRequest::Create { path, .. } | ServerRequest::CreateWithoutId { path, .. } => {
                path.depth() == 1
            }
            ServerRequest::Delete { path } => matches!(path.depth(), 2 | 4),
            ServerRequest::ReadComposite { .. }
            | ServerRequest::WriteComposite { .. }
            | ServerRequest::ObserveComposite { .. }
            | ServerRequest::CancelObserveComposite { .. } => true,
        };
        match (ok, self.path()) {
            (true, _) => Ok(()),
            (false, path) => Err(OperationError::BadPath {
                operation: self.name(),
                path: path.unwrap_or(LwM2mPath::Root),
            }),
        }
    }

    /// The single target path (not for composite operations).
    pub fn path(&self) -> Option<LwM2mPath> {
        match self {
            ServerRequest::Read { path, .. }
            | ServerRequest::Discover { path }
            | ServerRequest::Write { path, .. }
            | ServerRequest::WriteAttributes { path, .. }
            | ServerRequest::Execute { path, .. }
            | ServerRequest::Create { path, .. }
            | ServerRequest::CreateWithoutId { path, .. }
            | ServerRequest::Delete { path }
            | ServerRequest::Observe { path, .. }
            | ServerRequest::CancelObservation { path, .. } => Some(*path),
            _ => None,
        }
    }

    /// The CoAP request parts of this operation.
    pub fn to_coap(&self, models: &dyn ModelLookup) -> Result<CoapRequest, OperationError> {
        self.validate()?;
        let mut coap = CoapRequest::new(Method::Get, &[]);
        coap.path = self.path().map(|p| segments(&p)).unwrap_or_default();
        match self {
            ServerRequest::Read { accept, .. } => coap.accept = *accept,
            ServerRequest::Discover { .. } => coap.accept = Some(ContentFormat::LINK_FORMAT),
            ServerRequest::Observe { accept, .. }
            | ServerRequest::CancelObservation { accept, .. } => {
                coap.accept = *accept;
                coap.observe = Some(if matches!(self, ServerRequest::Observe { .. }) {
                    OBSERVE_REGISTER
                } else {
                    OBSERVE_DEREGISTER
                });
            }
            ServerRequest::Write {
                path,
                mode,
                format,
                node,
            } => {
                coap.method = match mode {
                    WriteMode::Replace => Method::Put,
                    WriteMode::PartialUpdate => Method::Post,
                };
                coap.content_format = Some(*format);
                coap.payload = content::encode(node, path, *format, models)?;
            }
            ServerRequest::WriteAttributes { attributes, .. } => {
                coap.method = Method::Put;
                coap.queries = attributes.to_queries();
            }
            ServerRequest::Execute { arguments, .. } => {
                coap.method = Method::Post;
                if !arguments.is_empty() {
                    coap.content_format = Some(ContentFormat::TEXT_PLAIN);
                    coap.payload = format_execute_arguments(arguments).into_bytes();
                }
            }
            ServerRequest::Create {
                path,
                format,
                instances,
            } => {
                coap.method = Method::Post;
                coap.content_format = Some(*format);
                let object = LwM2mObject::new(
                    path.object_id().unwrap_or_default(),
                    instances.iter().cloned(),
                );
                coap.payload = content::encode(&LwM2mNode::Object(object), path, *format, models)?;
            }
            ServerRequest::CreateWithoutId {
                path,
                format,
                resources,
            } => {
                if !is_tlv(*format) {
                    return Err(OperationError::Codec(CodecError::unsupported(
                        "Create",
                        "an instance without id in a format other than TLV",
                    )));
                }
                coap.method = Method::Post;
                coap.content_format = Some(*format);
                let instance = LwM2mObjectInstance::new(0, resources.iter().cloned());
                let instance_path =
                    LwM2mPath::ObjectInstance(path.object_id().unwrap_or_default(), 0);
                let node = LwM2mNode::ObjectInstance(instance);
                coap.payload = content::encode(&node, &instance_path, *format, models)?;
            }
            ServerRequest::Delete { .. } => coap.method = Method::Delete,
            ServerRequest::ReadComposite {
                paths,
                format,
                accept,
            }
            | ServerRequest::ObserveComposite {
                paths,
                format,
                accept,
            }
            | ServerRequest::CancelObserveComposite {
                paths,
                format,
                accept,
            } => {
                coap.method = Method::Fetch;
                coap.content_format = Some(*format);
                coap.accept = *accept;
                coap.payload = content::encode_paths(paths, *format)?;
                coap.observe = match self {
                    ServerRequest::ObserveComposite { .. } => Some(OBSERVE_REGISTER),
                    ServerRequest::CancelObserveComposite { .. } => Some(OBSERVE_DEREGISTER),
                    _ => None,
                };
            }
            ServerRequest::WriteComposite { nodes, format } => {
                coap.method = Method::IPatch;
                coap.content_format = Some(*format);
                coap.payload = content::encode_composite(nodes, *format)?;
            }
        }
        Ok(coap)
    }

    /// Recognizes the operation a CoAP request carries (client side).
    pub fn from_coap(
        coap: &CoapRequest,
        models: &dyn ModelLookup,
    ) -> Result<ServerRequest, OperationError> {
        let request = match coap.method {
            Method::Get => {
                let path = path_of(coap)?;
                match coap.observe {
                    Some(OBSERVE_REGISTER) => ServerRequest::Observe {
                        path,
                        accept: coap.accept,
                    },
                    Some(OBSERVE_DEREGISTER) => ServerRequest::CancelObservation {
                        path,
                        accept: coap.accept,
                    },
                    Some(_) => return Err(not_an_operation(coap, "Observe must be 0 or 1")),
                    None if coap.accept == Some(ContentFormat::LINK_FORMAT) => {
                        ServerRequest::Discover { path }
                    }
                    None => ServerRequest::Read {
                        path,
                        accept: coap.accept,
                    },
                }
            }
            Method::Put => {
                let path = path_of(coap)?;
                if coap.content_format.is_none() && coap.payload.is_empty() {
                    ServerRequest::WriteAttributes {
                        path,
                        attributes: AttributeSet::from_queries(&coap.queries)?,
                    }
                } else {
                    write(coap, path, WriteMode::Replace, models)?
                }
            }
            Method::Post => {
                let path = path_of(coap)?;
                match path.depth() {
                    1 => {
                        let format = coap
                            .content_format
                            .ok_or(OperationError::Missing("Content-Format"))?;
                        create(&coap.payload, format, path, models)?
                    }
                    2 => write(coap, path, WriteMode::PartialUpdate, models)?,
                    3 if coap
                        .content_format
                        .is_none_or(|f| f == ContentFormat::TEXT_PLAIN) =>
                    {
                        let text = core::str::from_utf8(&coap.payload).map_err(|e| {
                            OperationError::Arguments {
                                what: "not UTF-8",
                                at: e.valid_up_to(),
                            }
                        })?;
                        ServerRequest::Execute {
                            path,
                            arguments: parse_execute_arguments(text)?,
                        }
                    }
                    3 => write(coap, path, WriteMode::PartialUpdate, models)?,
                    _ => {
                        return Err(not_an_operation(
                            coap,
                            "POST targets an object, an instance or a resource",
                        ));
                    }
                }
            }
            Method::Delete => ServerRequest::Delete {
                path: path_of(coap)?,
            },
            Method::Fetch => {
                let format = coap
                    .content_format
                    .ok_or(OperationError::Missing("Content-Format"))?;
                let paths = content::decode_paths(&coap.payload, format)?;
                let accept = coap.accept;
                match coap.observe {
                    None => ServerRequest::ReadComposite {
                        paths,
                        format,
                        accept,
                    },
                    Some(OBSERVE_REGISTER) => ServerRequest::ObserveComposite {
                        paths,
                        format,
                        accept,
                    },
                    Some(OBSERVE_DEREGISTER) => ServerRequest::CancelObserveComposite {
                        paths,
                        format,
                        accept,
                    },
                    Some(_) => return Err(not_an_operation(coap, "Observe must be 0 or 1")),
                }
            }
            Method::IPatch => {
                let format = coap
                    .content_format
                    .ok_or(OperationError::Missing("Content-Format"))?;
                let records = content::decode_records(&coap.payload, format, models)?;
                let nodes = records
                    .into_iter()
                    .map(|(path, value)| (path, single_node(&path, value)))
                    .collect();
                ServerRequest::WriteComposite { nodes, format }
            }
            Method::Patch => return Err(not_an_operation(coap, "PATCH is not used by LwM2M")),
        };
        request.validate()?;
        Ok(request)
    }

    /// The CoAP response parts of a response to this request (client side).
    pub fn encode_response(
        &self,
        response: &Lwm2mResponse,
        models: &dyn ModelLookup,
    ) -> Result<CoapResponse, OperationError> {
        let mut coap = base_response(response);
        let format = || {
            response
                .content_format
                .or(self.accept())
                .ok_or(OperationError::Missing("Content-Format of the response"))
        };
        match &response.content {
            ResponseContent::Node(node) => {
                let path = self
                    .path()
                    .ok_or(OperationError::Missing("a single target path"))?;
                let format = format()?;
                coap.content_format = Some(format);
                coap.payload = content::encode(node, &path, format, models)?;
            }
            ResponseContent::Nodes(nodes) => {
                let format = format()?;
                coap.content_format = Some(format);
                coap.payload = content::encode_composite(nodes, format)?;
            }
            ResponseContent::Links(links) => {
                coap.content_format = Some(ContentFormat::LINK_FORMAT);
                coap.payload = encode_discover(links);
            }
            ResponseContent::Empty | ResponseContent::Location(_) => {}
        }
        Ok(coap)
    }

    /// Reads a CoAP response to this request (server side).
    pub fn decode_response(
        &self,
        coap: &CoapResponse,
        models: &dyn ModelLookup,
    ) -> Result<Lwm2mResponse, OperationError> {
        if let Some(error) = error_response(coap, self.success_code())? {
            return Ok(error);
        }
        let format = || {
            coap.content_format
                .ok_or(OperationError::Missing("Content-Format of the response"))
        };
        let content = match self {
            ServerRequest::Read { path, .. }
            | ServerRequest::Observe { path, .. }
            | ServerRequest::CancelObservation { path, .. } => {
                ResponseContent::Node(content::decode(&coap.payload, format()?, path, models)?)
            }
            ServerRequest::Discover { .. } => {
                ResponseContent::Links(decode_discover(&coap.payload)?)
            }
            ServerRequest::ReadComposite { paths, .. }
            | ServerRequest::ObserveComposite { paths, .. }
            | ServerRequest::CancelObserveComposite { paths, .. } => ResponseContent::Nodes(
                content::decode_composite(&coap.payload, format()?, paths, models)?,
            ),
            ServerRequest::Create { .. } | ServerRequest::CreateWithoutId { .. }
                if !coap.location_path.is_empty() =>
            {
                ResponseContent::Location(coap.location_path.clone())
            }
            _ => ResponseContent::Empty,
        };
        Ok(Lwm2mResponse {
            code: coap.code,
            content,
            content_format: coap.content_format,
            observe: coap.observe,
            diagnostic: None,
        })
    }

    fn accept(&self) -> Option<ContentFormat> {
        match self {
            ServerRequest::Read { accept, .. }
            | ServerRequest::Observe { accept, .. }
            | ServerRequest::CancelObservation { accept, .. }
            | ServerRequest::ReadComposite { accept, .. }
            | ServerRequest::ObserveComposite { accept, .. }
            | ServerRequest::CancelObserveComposite { accept, .. } => *accept,
            _ => None,
        }
    }
}

fn write(
    coap: &CoapRequest,
    path: LwM2mPath,
    mode: WriteMode,
    models: &dyn ModelLookup,
) -> Result<ServerRequest, OperationError> {
    let format = coap
        .content_format
        .ok_or(OperationError::Missing("Content-Format"))?;
    let node = content::decode(&coap.payload, format, &path, models)?;
    Ok(ServerRequest::Write {
        path,
        mode,
        format,
        node,
    })
}

fn is_tlv(format: ContentFormat) -> bool {
    format == ContentFormat::LWM2M_TLV || format == ContentFormat::LWM2M_TLV_LEGACY
}

/// A Create: a TLV payload of resources without an object-instance entry leaves the
/// instance id to the client; every other payload names its instances.
fn create(
    payload: &[u8],
    format: ContentFormat,
    path: LwM2mPath,
    models: &dyn ModelLookup,
) -> Result<ServerRequest, OperationError> {
    let object_id = path.object_id().unwrap_or_default();
    if is_tlv(format) {
        let entries = crate::content::tlv::parse_entries(payload, 0)?;
        if entries.iter().any(|e| e.kind != TlvKind::ObjectInstance) {
            let instance_path = LwM2mPath::ObjectInstance(object_id, 0);
            let LwM2mNode::ObjectInstance(instance) =
                content::decode(payload, format, &instance_path, models)?
            else {
                return Err(OperationError::Missing("object instance resources"));
            };
            let resources = instance.resources.into_values().collect();
            return Ok(ServerRequest::CreateWithoutId {
                path,
                format,
                resources,
            });
        }
    }
    match content::decode(payload, format, &path, models)? {
        LwM2mNode::Object(object) => Ok(ServerRequest::Create {
            path,
            format,
            instances: object.instances.into_values().collect(),
        }),
        _ => Err(OperationError::Codec(CodecError::unsupported(
            "Create",
            "a payload that is not instances",
        ))),
    }
}

fn single_node(path: &LwM2mPath, value: crate::value::Value) -> LwM2mNode {
    match *path {
        LwM2mPath::ResourceInstance(_, _, _, ri) => {
            LwM2mNode::ResourceInstance(crate::node::LwM2mResourceInstance { id: ri, value })
        }
        _ => LwM2mNode::Resource(crate::node::LwM2mResource::single(
            path.resource_id().unwrap_or_default(),
            value,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::{AttributeName, AttributeValue};
    use crate::content::link::DiscoverEntry;
    use crate::node::LwM2mResource;
    use crate::registry::ModelRegistry;
    use crate::value::Value;
    use proptest::prelude::*;

    fn requests() -> Vec<ServerRequest> {
        let instance = LwM2mObjectInstance::new(
            1,
            [
                LwM2mResource::single(0, Value::Integer(101)),
                LwM2mResource::single(1, Value::Integer(3600)),
            ],
        );
        vec![
            ServerRequest::Read {
                path: LwM2mPath::ObjectInstance(3, 0),
                accept: Some(ContentFormat::SENML_CBOR),
            },
            ServerRequest::Discover {
                path: LwM2mPath::Object(3),
            },
            ServerRequest::Write {
                path: LwM2mPath::Resource(1, 0, 1),
                mode: WriteMode::Replace,
                format: ContentFormat::TEXT_PLAIN,
                node: LwM2mNode::Resource(LwM2mResource::single(1, Value::Integer(300))),
            },
            ServerRequest::Write {
                path: LwM2mPath::ObjectInstance(1, 0),
                mode: WriteMode::PartialUpdate,
                format: ContentFormat::LWM2M_TLV,
                node: LwM2mNode::ObjectInstance(LwM2mObjectInstance::new(
                    0,
                    [LwM2mResource::single(1, Value::Integer(300))],
                )),
            },
            ServerRequest::WriteAttributes {
                path: LwM2mPath::Resource(3, 0, 9),
                attributes: AttributeSet::new()
                    .with(AttributeName::Pmin, AttributeValue::Unsigned(10))
                    .with_unset(AttributeName::Pmax),
            },
            ServerRequest::Execute {
                path: LwM2mPath::Resource(3, 0, 4),
                arguments: vec![],
            },
            ServerRequest::Execute {
                path: LwM2mPath::Resource(9, 0, 4),
                arguments: vec![ExecuteArgument {
                    digit: 0,
                    value: Some("now".into()),
                }],
            },
            ServerRequest::Create {
                path: LwM2mPath::Object(1),
                format: ContentFormat::SENML_JSON,
                instances: vec![instance.clone()],
            },
            ServerRequest::Create {
                path: LwM2mPath::Object(1),
                format: ContentFormat::LWM2M_TLV,
                instances: vec![instance.clone()],
            },
            ServerRequest::CreateWithoutId {
                path: LwM2mPath::Object(1),
                format: ContentFormat::LWM2M_TLV,
                resources: instance.resources.into_values().collect(),
            },
            ServerRequest::Delete {
                path: LwM2mPath::ObjectInstance(1, 1),
            },
            ServerRequest::ReadComposite {
                paths: vec![
                    LwM2mPath::Resource(3, 0, 9),
                    LwM2mPath::ObjectInstance(1, 0),
                ],
                format: ContentFormat::SENML_JSON,
                accept: Some(ContentFormat::SENML_CBOR),
            },
            ServerRequest::WriteComposite {
                nodes: BTreeMap::from([(
                    LwM2mPath::Resource(1, 0, 1),
                    LwM2mNode::Resource(LwM2mResource::single(1, Value::Integer(60))),
                )]),
                format: ContentFormat::SENML_CBOR,
            },
            ServerRequest::Observe {
                path: LwM2mPath::Resource(3, 0, 9),
                accept: None,
            },
            ServerRequest::ObserveComposite {
                paths: vec![LwM2mPath::Resource(3, 0, 9)],
                format: ContentFormat::LWM2M_CBOR,
                accept: None,
            },
            ServerRequest::CancelObservation {
                path: LwM2mPath::Resource(3, 0, 9),
                accept: None,
            },
            ServerRequest::CancelObserveComposite {
                paths: vec![LwM2mPath::Resource(3, 0, 9)],
                format: ContentFormat::SENML_JSON,
                accept: None,
            },
        ]
    }

    #[test]
    fn every_operation_maps_to_coap_and_back() {
        let models = ModelRegistry::with_core_models();
        for request in requests() {
            let coap = request.to_coap(&models).expect("maps to CoAP");
            assert_eq!(
                ServerRequest::from_coap(&coap, &models).as_ref(),
                Ok(&request),
                "{}",
                request.name()
            );
        }
    }

    #[test]
    fn coap_parts_follow_the_transport_binding() {
        let models = ModelRegistry::with_core_models();
        let all = requests();
        let methods: Vec<(Method, Option<u32>)> = all
            .iter()
            .map(|r| {
                r.to_coap(&models)
                    .map(|c| (c.method, c.observe))
                    .expect("maps")
            })
            .collect();
        use Method::*;
        assert_eq!(
            methods,
            [
                (Get, None),
                (Get, None),
                (Put, None),
                (Post, None),
                (Put, None),
                (Post, None),
                (Post, None),
                (Post, None),
                (Post, None),
                (Post, None),
                (Delete, None),
                (Fetch, None),
                (IPatch, None),
                (Get, Some(0)),
                (Fetch, Some(0)),
                (Get, Some(1)),
                (Fetch, Some(1)),
            ]
        );
        let attributes = all[4].to_coap(&models).expect("maps");
        assert_eq!(attributes.queries, ["pmin=10", "pmax"]);
        assert_eq!(attributes.path, ["3", "0", "9"]);
        let codes: Vec<ResponseCode> = all.iter().map(ServerRequest::success_code).collect();
        assert_eq!(codes[0], ResponseCode::CONTENT);
        assert_eq!(codes[2], ResponseCode::CHANGED);
        assert_eq!(codes[7], ResponseCode::CREATED);
        assert_eq!(codes[9], ResponseCode::CREATED);
        assert_eq!(codes[10], ResponseCode::DELETED);
    }

    #[test]
    fn responses_round_trip() {
        let models = ModelRegistry::with_core_models();
        let read = ServerRequest::Read {
            path: LwM2mPath::Resource(3, 0, 9),
            accept: None,
        };
        let response = Lwm2mResponse::with_content(
            ResponseCode::CONTENT,
            ResponseContent::Node(LwM2mNode::Resource(LwM2mResource::single(
                9,
                Value::Integer(87),
            ))),
            Some(ContentFormat::TEXT_PLAIN),
        );
        let coap = read.encode_response(&response, &models).expect("encodes");
        assert_eq!(coap.payload, b"87");
        assert_eq!(read.decode_response(&coap, &models), Ok(response));
        let discover = ServerRequest::Discover {
            path: LwM2mPath::Object(3),
        };
        let links = Lwm2mResponse::with_content(
            ResponseCode::CONTENT,
            ResponseContent::Links(vec![DiscoverEntry {
                path: LwM2mPath::Object(3),
                attributes: AttributeSet::new(),
            }]),
            Some(ContentFormat::LINK_FORMAT),
        );
        let coap = discover.encode_response(&links, &models).expect("encodes");
        assert_eq!(discover.decode_response(&coap, &models), Ok(links));
        let not_found = CoapResponse {
            payload: b"no such instance".to_vec(),
            ..CoapResponse::new(ResponseCode::NOT_FOUND)
        };
        let decoded = read
            .decode_response(&not_found, &models)
            .expect("error responses decode");
        assert_eq!(decoded.diagnostic.as_deref(), Some("no such instance"));
        assert_eq!(
            read.decode_response(&CoapResponse::new(ResponseCode::CHANGED), &models),
            Err(OperationError::UnexpectedResponse(ResponseCode::CHANGED))
        );
    }

    #[test]
    fn create_without_an_instance_id_is_tlv_resources() {
        let models = ModelRegistry::with_core_models();
        let coap = CoapRequest {
            content_format: Some(ContentFormat::LWM2M_TLV),
            payload: vec![0xC1, 0x00, 0x65, 0xC1, 0x01, 0x3C],
            ..CoapRequest::new(Method::Post, &["1"])
        };
        let Ok(ServerRequest::CreateWithoutId { resources, .. }) =
            ServerRequest::from_coap(&coap, &models)
        else {
            panic!("not a create without instance id");
        };
        assert_eq!(
            resources,
            [
                LwM2mResource::single(0, Value::Integer(101)),
                LwM2mResource::single(1, Value::Integer(60))
            ]
        );
        let senml = ServerRequest::CreateWithoutId {
            path: LwM2mPath::Object(1),
            format: ContentFormat::SENML_JSON,
            resources,
        };
        assert!(senml.to_coap(&models).is_err());
    }

    #[test]
    fn refuses_what_is_not_an_operation() {
        let models = ModelRegistry::with_core_models();
        let patch = CoapRequest::new(Method::Patch, &["3"]);
        assert!(matches!(
            ServerRequest::from_coap(&patch, &models),
            Err(OperationError::NotAnOperation { .. })
        ));
        let execute_object = CoapRequest::new(Method::Post, &["3", "0", "4", "1"]);
        assert!(ServerRequest::from_coap(&execute_object, &models).is_err());
        let write_without_format = CoapRequest {
            payload: vec![1],
            ..CoapRequest::new(Method::Put, &["3", "0", "1"])
        };
        assert_eq!(
            ServerRequest::from_coap(&write_without_format, &models),
            Err(OperationError::Missing("Content-Format"))
        );
        let delete_object = CoapRequest::new(Method::Delete, &["3"]);
        assert!(matches!(
            ServerRequest::from_coap(&delete_object, &models),
            Err(OperationError::BadPath { .. })
        ));
        let bad_path = CoapRequest::new(Method::Get, &["3", "x"]);
        assert!(matches!(
            ServerRequest::from_coap(&bad_path, &models),
            Err(OperationError::Path(_))
        ));
    }

    fn path_strategy(min_depth: usize, max_depth: usize) -> impl Strategy<Value = LwM2mPath> {
        proptest::collection::vec(0u16..=crate::path::MAX_ID, min_depth..=max_depth)
            .prop_map(|ids| LwM2mPath::from_ids(&ids).unwrap_or(LwM2mPath::Root))
    }

    proptest! {
        #[test]
        fn path_operations_round_trip(
            path in path_strategy(1, 4),
            kind in 0usize..5,
            accept in proptest::option::of(prop_oneof![Just(ContentFormat::SENML_CBOR), Just(ContentFormat::LWM2M_TLV)]),
            pmin in any::<u32>(),
        ) {
            let models = ModelRegistry::with_core_models();
            let request = match kind {
                0 => ServerRequest::Read { path, accept },
                1 => ServerRequest::Observe { path, accept },
                2 => ServerRequest::CancelObservation { path, accept },
                3 => ServerRequest::WriteAttributes {
                    path,
                    attributes: AttributeSet::new().with(AttributeName::Pmin, AttributeValue::Unsigned(u64::from(pmin))),
                },
                _ if path.depth() <= 3 => ServerRequest::Discover { path },
                _ => ServerRequest::Delete { path },
            };
            let coap = request.to_coap(&models).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ServerRequest::from_coap(&coap, &models), Ok(request));
        }

        #[test]
        fn from_coap_never_panics(
            method in 0usize..7,
            path in proptest::collection::vec("[0-9a-z]{0,5}", 0..5),
            queries in proptest::collection::vec("[a-z]{0,5}(=[0-9.]{0,4})?", 0..3),
            format in proptest::option::of(prop_oneof![Just(0u16), Just(42), Just(60), Just(110), Just(112), Just(11542), Just(11543), Just(11544), any::<u16>()]),
            observe in proptest::option::of(0u32..3),
            payload in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let models = ModelRegistry::with_core_models();
            let methods = [Method::Get, Method::Post, Method::Put, Method::Delete, Method::Fetch, Method::Patch, Method::IPatch];
            let coap = CoapRequest {
                method: methods[method],
                path,
                queries,
                content_format: format.map(ContentFormat),
                accept: None,
                observe,
                payload,
            };
            let _ = ServerRequest::from_coap(&coap, &models);
        }
    }
}
