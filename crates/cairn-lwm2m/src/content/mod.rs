//! LwM2M content formats (OMA LwM2M Core 1.2 §7.4 "Data Formats for Transferring Resource
//! Information"): one module per format, and [`encode`] / [`decode`] that pick the codec
//! from a CoAP Content-Format and use the object models for types.
//!
//! | format | number | module |
//! |---|---|---|
//! | text/plain | 0 | [`text`] |
//! | application/octet-stream | 42 | [`text`] |
//! | application/cbor (single value) | 60 | [`cbor`] |
//! | TLV | 11542, legacy 1542 | [`tlv`] |
//! | LwM2M JSON | 11543, legacy 1543 | [`lwm2m_json`] |
//! | SenML JSON | 110 | [`senml_json`] |
//! | SenML CBOR | 112 | [`senml_cbor`] |
//! | LwM2M CBOR | 11544 | [`lwm2m_cbor`] |
//!
//! Decoders never panic on input, allocate at most in proportion to the input (and at most
//! [`MAX_RECORDS`] records), and bound nesting (JSON by serde_json's recursion limit, CBOR and TLV by the four levels of a
//! path). Values are converted to the type the model declares; without a model the type
//! the format carries is kept (TLV and octet-stream values stay opaque, text stays text).

pub mod cbor;
pub mod link;
pub mod lwm2m_cbor;
pub mod lwm2m_json;
pub mod senml;
pub mod senml_cbor;
pub mod senml_json;
pub mod text;
pub mod tlv;

use std::borrow::Cow;
use std::collections::BTreeMap;

use cairn_coap::ContentFormat;
use thiserror::Error;

use crate::model::ModelLookup;
use crate::node::{LwM2mNode, LwM2mResource, LwM2mResourceInstance, NodeError, ResourceValue};
use crate::path::{LwM2mPath, PathError};
use crate::value::{ResourceType, Value, ValueError};

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Error, PartialEq, Clone)]
pub enum CodecError {
    /// The bytes do not follow the format's grammar.
    #[error("{format}: {what} at byte {at}")]
    Malformed {
        /// Format name.
        format: &'static str,
        /// What was wrong.
        what: String,
        /// Byte offset.
        at: usize,
    },
    /// A record (SenML or LwM2M JSON entry) is well-formed but wrong.
    #[error("{format}: record {index}: {what}")]
    Record {
        /// Format name.
        format: &'static str,
        /// Index of the record, from 0.
        index: usize,
        /// What was wrong.
        what: String,
    },
    /// The format cannot carry this node or path.
    #[error("{format} cannot carry {what}")]
    Unsupported {
        /// Format name.
        format: &'static str,
        /// What it cannot carry.
        what: String,
    },
    /// A record's name is not an LwM2M path.
    #[error("name {name:?} is not an LwM2M path: {source}")]
    Path {
        /// The resolved name.
        name: String,
        /// Why.
        source: PathError,
    },
    /// A value does not fit the type its model declares.
    #[error("{path}: {source}")]
    Value {
        /// Path of the value.
        path: LwM2mPath,
        /// Why.
        source: ValueError,
    },
    /// The records do not make up the requested node.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Not a content format this crate encodes.
    #[error("content format {0} is not an LwM2M data format")]
    UnsupportedFormat(ContentFormat),
}

impl CodecError {
    pub(crate) fn malformed(format: &'static str, what: impl Into<String>, at: usize) -> Self {
        CodecError::Malformed {
            format,
            what: what.into(),
            at,
        }
    }

    pub(crate) fn unsupported(format: &'static str, what: impl Into<String>) -> Self {
        CodecError::Unsupported {
            format,
            what: what.into(),
        }
    }
}

/// Most records (values, entries, leaves) a payload may hold; decoding stops with an error
/// past this, so the memory a payload can claim stays bounded whatever its size.
pub const MAX_RECORDS: usize = 65_536;

pub(crate) fn too_many_records(format: &'static str, at: usize) -> CodecError {
    CodecError::malformed(format, format!("more than {MAX_RECORDS} records"), at)
}

/// The content formats [`encode`] and [`decode`] accept.
pub const SUPPORTED_FORMATS: &[ContentFormat] = &[
    ContentFormat::TEXT_PLAIN,
    ContentFormat::OCTET_STREAM,
    ContentFormat::CBOR,
    ContentFormat::LWM2M_TLV,
    ContentFormat::LWM2M_TLV_LEGACY,
    ContentFormat::LWM2M_JSON,
    ContentFormat::LWM2M_JSON_LEGACY,
    ContentFormat::SENML_JSON,
    ContentFormat::SENML_CBOR,
    ContentFormat::LWM2M_CBOR,
];

/// Encodes the node found at `path` in `format`.
pub fn encode(
    node: &LwM2mNode,
    path: &LwM2mPath,
    format: ContentFormat,
    models: &dyn ModelLookup,
) -> Result<Vec<u8>, CodecError> {
    if !node.fits(path) {
        return Err(CodecError::unsupported(
            "LwM2M",
            format!("a node of another depth at {path}"),
        ));
    }
    let conformed = conform(node, path, models)?;
    let node = conformed.as_ref();
    match format {
        ContentFormat::TEXT_PLAIN => text::encode_text(single_value(node, "text/plain")?),
        ContentFormat::OCTET_STREAM => text::encode_opaque(single_value(node, "octet-stream")?),
        ContentFormat::CBOR => cbor::encode_value(single_value(node, "CBOR")?),
        ContentFormat::LWM2M_TLV | ContentFormat::LWM2M_TLV_LEGACY => tlv::encode(node),
        ContentFormat::LWM2M_JSON | ContentFormat::LWM2M_JSON_LEGACY => {
            lwm2m_json::encode(path, &node.flatten(path))
        }
        ContentFormat::SENML_JSON => senml_json::encode(&senml::records_for(path, node)),
        ContentFormat::SENML_CBOR => senml_cbor::encode(&senml::records_for(path, node)),
        ContentFormat::LWM2M_CBOR => lwm2m_cbor::encode(&node.flatten(path)),
        other => Err(CodecError::UnsupportedFormat(other)),
    }
}

/// Does every value of the node already have its model type (or no model)?
fn already_typed(node: &LwM2mNode, path: &LwM2mPath, o: u16, models: &dyn ModelLookup) -> bool {
    let fits = |r: u16, value: &Value| {
        model_type(&LwM2mPath::Resource(o, 0, r), models)
            .is_none_or(|ty| ty == value.resource_type())
    };
    let resource_fits = |resource: &LwM2mResource| match &resource.value {
        ResourceValue::Single(value) => fits(resource.id, value),
        ResourceValue::Multiple(values) => values.values().all(|v| fits(resource.id, v)),
    };
    match node {
        LwM2mNode::Object(object) => object
            .instances
            .values()
            .all(|i| i.resources.values().all(resource_fits)),
        LwM2mNode::ObjectInstance(instance) => instance.resources.values().all(resource_fits),
        LwM2mNode::Resource(resource) => resource_fits(resource),
        LwM2mNode::ResourceInstance(ri) => path.resource_id().is_none_or(|r| fits(r, &ri.value)),
    }
}

/// The node with every value converted to its model type (borrowed when there is no
/// model for the object).
fn conform<'a>(
    node: &'a LwM2mNode,
    path: &LwM2mPath,
    models: &dyn ModelLookup,
) -> Result<Cow<'a, LwM2mNode>, CodecError> {
    let Some(o) = path.object_id() else {
        return Ok(Cow::Borrowed(node));
    };
    if models.object(o).is_none() || already_typed(node, path, o, models) {
        return Ok(Cow::Borrowed(node));
    }
    let mut node = node.clone();
    let convert = |r: u16, value: &mut Value| -> Result<(), CodecError> {
        let resource_path = LwM2mPath::Resource(o, 0, r);
        *value = typed(&resource_path, value.clone(), models)?;
        Ok(())
    };
    let convert_resource = |resource: &mut LwM2mResource| -> Result<(), CodecError> {
        match &mut resource.value {
            ResourceValue::Single(value) => convert(resource.id, value),
            ResourceValue::Multiple(values) => values
                .values_mut()
                .try_for_each(|v| convert(resource.id, v)),
        }
    };
    match (&mut node, path.resource_id()) {
        (LwM2mNode::Object(object), _) => object
            .instances
            .values_mut()
            .flat_map(|i| i.resources.values_mut())
            .try_for_each(convert_resource)?,
        (LwM2mNode::ObjectInstance(instance), _) => instance
            .resources
            .values_mut()
            .try_for_each(convert_resource)?,
        (LwM2mNode::Resource(resource), _) => convert_resource(resource)?,
        (LwM2mNode::ResourceInstance(ri), Some(r)) => convert(r, &mut ri.value)?,
        (LwM2mNode::ResourceInstance(_), None) => {}
    }
    Ok(Cow::Owned(node))
}

/// Decodes a payload in `format` as the node at `path`.
pub fn decode(
    payload: &[u8],
    format: ContentFormat,
    path: &LwM2mPath,
    models: &dyn ModelLookup,
) -> Result<LwM2mNode, CodecError> {
    match format {
        ContentFormat::TEXT_PLAIN => {
            let ty = model_type(path, models).unwrap_or(ResourceType::String);
            single_node(
                path,
                text::decode_text(payload, ty).map_err(|e| at_path(path, e))?,
            )
        }
        ContentFormat::OCTET_STREAM => {
            single_node(path, text::decode_opaque(payload, path, models)?)
        }
        ContentFormat::CBOR => {
            let value = cbor::decode_value(payload)?;
            single_node(path, typed(path, value, models)?)
        }
        ContentFormat::LWM2M_TLV | ContentFormat::LWM2M_TLV_LEGACY => {
            tlv::decode(payload, path, models)
        }
        ContentFormat::LWM2M_JSON | ContentFormat::LWM2M_JSON_LEGACY => {
            assemble(path, lwm2m_json::decode(payload)?, models)
        }
        ContentFormat::SENML_JSON => assemble(
            path,
            senml::latest_values(senml_json::decode(payload)?)?,
            models,
        ),
        ContentFormat::SENML_CBOR => assemble(
            path,
            senml::latest_values(senml_cbor::decode(payload)?)?,
            models,
        ),
        ContentFormat::LWM2M_CBOR => assemble(path, lwm2m_cbor::decode(payload)?, models),
        other => Err(CodecError::UnsupportedFormat(other)),
    }
}

/// Encodes several nodes (Read-Composite and Observe-Composite responses, Write-Composite
/// requests, Send) in SenML JSON, SenML CBOR or LwM2M CBOR.
pub fn encode_composite(
    nodes: &BTreeMap<LwM2mPath, LwM2mNode>,
    format: ContentFormat,
) -> Result<Vec<u8>, CodecError> {
    let mut records = Vec::new();
    for (path, node) in nodes {
        if !node.fits(path) {
            return Err(CodecError::unsupported(
                "LwM2M",
                format!("a node of another depth at {path}"),
            ));
        }
        records.extend(node.flatten(path));
    }
    match format {
        ContentFormat::SENML_JSON => senml_json::encode(&senml::absolute_records(&records)),
        ContentFormat::SENML_CBOR => senml_cbor::encode(&senml::absolute_records(&records)),
        ContentFormat::LWM2M_CBOR => lwm2m_cbor::encode(&records),
        other => Err(CodecError::UnsupportedFormat(other)),
    }
}

/// Decodes a composite payload as the nodes at `paths` (the paths a Read-Composite or
/// Observe-Composite asked for). A path with no record is left out of the result.
pub fn decode_composite(
    payload: &[u8],
    format: ContentFormat,
    paths: &[LwM2mPath],
    models: &dyn ModelLookup,
) -> Result<BTreeMap<LwM2mPath, LwM2mNode>, CodecError> {
    let records = decode_records(payload, format, models)?;
    let mut nodes = BTreeMap::new();
    for path in paths {
        let under: Vec<(LwM2mPath, Value)> = records
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .cloned()
            .collect();
        if under.is_empty() {
            continue;
        }
        let node = if path.is_root() {
            return Err(CodecError::Node(NodeError::Root));
        } else {
            LwM2mNode::assemble(path, under, models)?
        };
        nodes.insert(*path, node);
    }
    Ok(nodes)
}

/// Decodes a composite payload (Write-Composite, Send) as typed (path, value) records, one
/// per resource or resource instance, keeping the latest value of each path.
pub fn decode_records(
    payload: &[u8],
    format: ContentFormat,
    models: &dyn ModelLookup,
) -> Result<Vec<(LwM2mPath, Value)>, CodecError> {
    let records = match format {
        ContentFormat::SENML_JSON => senml::latest_values(senml_json::decode(payload)?)?,
        ContentFormat::SENML_CBOR => senml::latest_values(senml_cbor::decode(payload)?)?,
        ContentFormat::LWM2M_CBOR => lwm2m_cbor::decode(payload)?,
        other => return Err(CodecError::UnsupportedFormat(other)),
    };
    records
        .into_iter()
        .map(|(path, value)| Ok((path, typed(&path, value, models)?)))
        .collect()
}

/// A value of a Send or notification payload with the time it was taken.
#[derive(Clone, PartialEq, Debug)]
pub struct TimestampedRecord {
    /// Resolved SenML time (base time + time), if the payload has one.
    pub time: Option<f64>,
    /// Resource or resource instance path.
    pub path: LwM2mPath,
    /// Typed value.
    pub value: Value,
}

/// Decodes a SenML payload as a time series (Send with several timestamps per path, Core
/// §6, Information Reporting), keeping every record in payload order.
pub fn decode_timestamped(
    payload: &[u8],
    format: ContentFormat,
    models: &dyn ModelLookup,
) -> Result<Vec<TimestampedRecord>, CodecError> {
    let records = match format {
        ContentFormat::SENML_JSON => senml_json::decode(payload)?,
        ContentFormat::SENML_CBOR => senml_cbor::decode(payload)?,
        other => return Err(CodecError::UnsupportedFormat(other)),
    };
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let value = record.value.ok_or_else(|| CodecError::Record {
                format: "SenML",
                index,
                what: format!("no value for {}", record.path),
            })?;
            Ok(TimestampedRecord {
                time: record.time,
                path: record.path,
                value: typed(&record.path, value, models)?,
            })
        })
        .collect()
}

/// Encodes a list of paths without values (Read-Composite and Observe-Composite requests).
pub fn encode_paths(paths: &[LwM2mPath], format: ContentFormat) -> Result<Vec<u8>, CodecError> {
    match format {
        ContentFormat::SENML_JSON => senml_json::encode(&senml::name_records(paths)),
        ContentFormat::SENML_CBOR => senml_cbor::encode(&senml::name_records(paths)),
        ContentFormat::LWM2M_CBOR => lwm2m_cbor::encode_paths(paths),
        other => Err(CodecError::UnsupportedFormat(other)),
    }
}

/// Decodes a list of paths (Read-Composite and Observe-Composite requests).
pub fn decode_paths(payload: &[u8], format: ContentFormat) -> Result<Vec<LwM2mPath>, CodecError> {
    match format {
        ContentFormat::SENML_JSON => Ok(senml_json::decode(payload)?
            .into_iter()
            .map(|r| r.path)
            .collect()),
        ContentFormat::SENML_CBOR => Ok(senml_cbor::decode(payload)?
            .into_iter()
            .map(|r| r.path)
            .collect()),
        ContentFormat::LWM2M_CBOR => lwm2m_cbor::decode_paths(payload),
        other => Err(CodecError::UnsupportedFormat(other)),
    }
}

fn single_value<'a>(node: &'a LwM2mNode, format: &'static str) -> Result<&'a Value, CodecError> {
    match node {
        LwM2mNode::Resource(LwM2mResource {
            value: ResourceValue::Single(value),
            ..
        })
        | LwM2mNode::ResourceInstance(LwM2mResourceInstance { value, .. }) => Ok(value),
        _ => Err(CodecError::unsupported(format, "more than one value")),
    }
}

fn single_node(path: &LwM2mPath, value: Value) -> Result<LwM2mNode, CodecError> {
    match *path {
        LwM2mPath::Resource(_, _, r) => Ok(LwM2mNode::Resource(LwM2mResource::single(r, value))),
        LwM2mPath::ResourceInstance(_, _, _, ri) => {
            Ok(LwM2mNode::ResourceInstance(LwM2mResourceInstance {
                id: ri,
                value,
            }))
        }
        _ => Err(CodecError::unsupported(
            "a single-value format",
            format!("the node at {path}"),
        )),
    }
}

/// The type the model declares for the resource at `path`, if any.
pub(crate) fn model_type(path: &LwM2mPath, models: &dyn ModelLookup) -> Option<ResourceType> {
    let resource = models.resource(path.object_id()?, path.resource_id()?)?;
    (resource.resource_type != ResourceType::None).then_some(resource.resource_type)
}

/// Converts a decoded value to its model type.
pub(crate) fn typed(
    path: &LwM2mPath,
    value: Value,
    models: &dyn ModelLookup,
) -> Result<Value, CodecError> {
    match model_type(path, models) {
        Some(ty) => value.convert(ty).map_err(|source| CodecError::Value {
            path: *path,
            source,
        }),
        None => Ok(value),
    }
}

fn at_path(path: &LwM2mPath, source: ValueError) -> CodecError {
    CodecError::Value {
        path: *path,
        source,
    }
}

fn assemble(
    path: &LwM2mPath,
    records: Vec<(LwM2mPath, Value)>,
    models: &dyn ModelLookup,
) -> Result<LwM2mNode, CodecError> {
    let typed_records = records
        .into_iter()
        .map(|(p, value)| Ok((p, typed(&p, value, models)?)))
        .collect::<Result<Vec<_>, CodecError>>()?;
    Ok(LwM2mNode::assemble(path, typed_records, models)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::NoModels;
    use crate::node::{LwM2mObject, LwM2mObjectInstance};
    use crate::registry::ModelRegistry;
    use crate::value::ObjectLink;
    use proptest::prelude::*;

    /// The example client's Device object instance of Core §7.4 (TLV, JSON and SenML
    /// examples all encode this instance).
    pub(crate) fn device_instance() -> LwM2mObjectInstance {
        LwM2mObjectInstance::new(
            0,
            [
                LwM2mResource::single(0, Value::String("Open Mobile Alliance".into())),
                LwM2mResource::single(1, Value::String("Lightweight M2M Client".into())),
                LwM2mResource::single(2, Value::String("345000123".into())),
                LwM2mResource::single(3, Value::String("1.0".into())),
                LwM2mResource::multiple(6, [(0, Value::Integer(1)), (1, Value::Integer(5))]),
                LwM2mResource::multiple(7, [(0, Value::Integer(3800)), (1, Value::Integer(5000))]),
                LwM2mResource::multiple(8, [(0, Value::Integer(125)), (1, Value::Integer(900))]),
                LwM2mResource::single(9, Value::Integer(100)),
                LwM2mResource::single(10, Value::Integer(15)),
                LwM2mResource::multiple(11, [(0, Value::Integer(0))]),
                LwM2mResource::single(13, Value::Time(1_367_491_215)),
                LwM2mResource::single(14, Value::String("+02:00".into())),
                LwM2mResource::single(16, Value::String("U".into())),
            ],
        )
    }

    /// The LwM2M JSON example of Core 1.0 (Read /3/0).
    const DEVICE_LWM2M_JSON: &str = r#"{"bn":"/3/0/","e":[
        {"n":"0","sv":"Open Mobile Alliance"},{"n":"1","sv":"Lightweight M2M Client"},
        {"n":"2","sv":"345000123"},{"n":"3","sv":"1.0"},{"n":"6/0","v":1},{"n":"6/1","v":5},
        {"n":"7/0","v":3800},{"n":"7/1","v":5000},{"n":"8/0","v":125},{"n":"8/1","v":900},
        {"n":"9","v":100},{"n":"10","v":15},{"n":"11/0","v":0},{"n":"13","v":1367491215},
        {"n":"14","sv":"+02:00"},{"n":"16","sv":"U"}]}"#;

    /// The SenML JSON example of Core 1.1 §7.4 (Read /3/0).
    const DEVICE_SENML_JSON: &str = r#"[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},
        {"n":"1","vs":"Lightweight M2M Client"},{"n":"2","vs":"345000123"},{"n":"3","vs":"1.0"},
        {"n":"6/0","v":1},{"n":"6/1","v":5},{"n":"7/0","v":3800},{"n":"7/1","v":5000},
        {"n":"8/0","v":125},{"n":"8/1","v":900},{"n":"9","v":100},{"n":"10","v":15},
        {"n":"11/0","v":0},{"n":"13","v":1367491215},{"n":"14","vs":"+02:00"},{"n":"16","vs":"U"}]"#;

    const INSTANCE: LwM2mPath = LwM2mPath::ObjectInstance(3, 0);

    #[test]
    fn spec_json_examples_decode_to_the_device_instance() {
        let models = ModelRegistry::with_core_models();
        let expected = LwM2mNode::ObjectInstance(device_instance());
        for (format, payload) in [
            (ContentFormat::LWM2M_JSON, DEVICE_LWM2M_JSON),
            (ContentFormat::LWM2M_JSON_LEGACY, DEVICE_LWM2M_JSON),
            (ContentFormat::SENML_JSON, DEVICE_SENML_JSON),
        ] {
            let node = decode(payload.as_bytes(), format, &INSTANCE, &models);
            assert_eq!(node.as_ref(), Ok(&expected), "{format:?}");
        }
    }

    #[test]
    fn senml_json_encoding_matches_the_spec_example() {
        let models = ModelRegistry::with_core_models();
        let node = LwM2mNode::ObjectInstance(device_instance());
        let bytes = encode(&node, &INSTANCE, ContentFormat::SENML_JSON, &models).expect("encodes");
        let compact: String = DEVICE_SENML_JSON.lines().map(str::trim).collect();
        assert_eq!(String::from_utf8(bytes).ok(), Some(compact));
        let bytes = encode(&node, &INSTANCE, ContentFormat::LWM2M_JSON, &models).expect("encodes");
        let compact: String = DEVICE_LWM2M_JSON.lines().map(str::trim).collect();
        assert_eq!(String::from_utf8(bytes).ok(), Some(compact));
    }

    fn every_node_kind() -> Vec<(LwM2mPath, LwM2mNode)> {
        let instance = device_instance();
        vec![
            (INSTANCE, LwM2mNode::ObjectInstance(instance.clone())),
            (
                LwM2mPath::Object(3),
                LwM2mNode::Object(LwM2mObject::new(3, [instance])),
            ),
            (
                LwM2mPath::Resource(3, 0, 7),
                LwM2mNode::Resource(LwM2mResource::multiple(
                    7,
                    [(0, Value::Integer(3800)), (1, Value::Integer(5000))],
                )),
            ),
            (
                LwM2mPath::Resource(3, 0, 13),
                LwM2mNode::Resource(LwM2mResource::single(13, Value::Time(1_367_491_215))),
            ),
            (
                LwM2mPath::ResourceInstance(3, 0, 7, 1),
                LwM2mNode::ResourceInstance(LwM2mResourceInstance {
                    id: 1,
                    value: Value::Integer(5000),
                }),
            ),
        ]
    }

    /// Decode from one format, encode to every other, decode again, compare.
    #[test]
    fn cross_format_round_trips() {
        let models = ModelRegistry::with_core_models();
        let structured = [
            ContentFormat::LWM2M_TLV,
            ContentFormat::LWM2M_JSON,
            ContentFormat::SENML_JSON,
            ContentFormat::SENML_CBOR,
            ContentFormat::LWM2M_CBOR,
        ];
        for (path, node) in every_node_kind() {
            let mut formats = structured.to_vec();
            if path.depth() >= 3
                && !matches!(
                    node,
                    LwM2mNode::Resource(LwM2mResource {
                        value: ResourceValue::Multiple(_),
                        ..
                    })
                )
            {
                formats.extend([ContentFormat::TEXT_PLAIN, ContentFormat::CBOR]);
            }
            for from in &formats {
                let bytes = encode(&node, &path, *from, &models).expect("encodes");
                let decoded = decode(&bytes, *from, &path, &models).expect("decodes");
                assert_eq!(decoded, node, "{from:?} at {path}");
                for to in &formats {
                    let again = encode(&decoded, &path, *to, &models).expect("re-encodes");
                    let back = decode(&again, *to, &path, &models);
                    assert_eq!(back.as_ref(), Ok(&node), "{from:?} -> {to:?} at {path}");
                }
            }
        }
    }

    #[test]
    fn formats_that_carry_types_decode_without_a_model() {
        let node = LwM2mNode::ObjectInstance(LwM2mObjectInstance::new(
            0,
            [
                LwM2mResource::single(1, Value::String("x".into())),
                LwM2mResource::single(2, Value::Boolean(true)),
                LwM2mResource::single(3, Value::Float(1.5)),
                LwM2mResource::single(
                    4,
                    Value::Objlnk(ObjectLink {
                        object_id: 3,
                        instance_id: 0,
                    }),
                ),
                LwM2mResource::single(5, Value::Opaque(vec![1, 2, 3])),
            ],
        ));
        let path = LwM2mPath::ObjectInstance(9999, 0);
        for format in [ContentFormat::SENML_JSON, ContentFormat::SENML_CBOR] {
            let bytes = encode(&node, &path, format, &NoModels).expect("encodes");
            assert_eq!(
                decode(&bytes, format, &path, &NoModels),
                Ok(node.clone()),
                "{format:?}"
            );
        }
    }

    #[test]
    fn composite_payloads() {
        let models = ModelRegistry::with_core_models();
        let nodes = BTreeMap::from([
            (
                LwM2mPath::Resource(3, 0, 9),
                LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(100))),
            ),
            (
                LwM2mPath::ObjectInstance(1, 0),
                LwM2mNode::ObjectInstance(LwM2mObjectInstance::new(
                    0,
                    [
                        LwM2mResource::single(0, Value::Integer(1)),
                        LwM2mResource::single(1, Value::Integer(300)),
                    ],
                )),
            ),
        ]);
        let paths: Vec<LwM2mPath> = nodes.keys().copied().collect();
        for format in [
            ContentFormat::SENML_JSON,
            ContentFormat::SENML_CBOR,
            ContentFormat::LWM2M_CBOR,
        ] {
            let bytes = encode_composite(&nodes, format).expect("encodes");
            assert_eq!(
                decode_composite(&bytes, format, &paths, &models).as_ref(),
                Ok(&nodes),
                "{format:?}"
            );
            let request = encode_paths(&paths, format).expect("encodes paths");
            let mut decoded = decode_paths(&request, format).expect("decodes paths");
            decoded.sort();
            assert_eq!(decoded, paths, "{format:?}");
        }
        let send = br#"[{"bn":"/3303/0/5700","bt":1700000000,"v":20.5},{"t":60,"v":21}]"#;
        let records = decode_records(send, ContentFormat::SENML_JSON, &models).expect("decodes");
        assert_eq!(
            records,
            vec![(LwM2mPath::Resource(3303, 0, 5700), Value::Float(21.0))]
        );
    }

    #[test]
    fn encoding_converts_values_to_the_model_type() {
        let models = ModelRegistry::with_core_models();
        let path = LwM2mPath::Resource(3303, 0, 5700);
        let node = LwM2mNode::Resource(LwM2mResource::single(5700, Value::Integer(20)));
        let tlv = encode(&node, &path, ContentFormat::LWM2M_TLV, &models).expect("encodes");
        assert_eq!(tlv, [0xE4, 0x16, 0x44, 0x41, 0xA0, 0x00, 0x00]);
        let wrong = LwM2mNode::Resource(LwM2mResource::single(5700, Value::String("warm".into())));
        assert!(matches!(
            encode(&wrong, &path, ContentFormat::LWM2M_TLV, &models),
            Err(CodecError::Value { .. })
        ));
    }

    #[test]
    fn model_types_are_enforced() {
        let models = ModelRegistry::with_core_models();
        let wrong = br#"[{"n":"/3/0/9","vs":"full"}]"#;
        assert!(matches!(
            decode(
                wrong,
                ContentFormat::SENML_JSON,
                &LwM2mPath::Resource(3, 0, 9),
                &models
            ),
            Err(CodecError::Value { .. })
        ));
        assert!(matches!(
            decode(b"1", ContentFormat::TEXT_PLAIN, &INSTANCE, &models),
            Err(CodecError::Unsupported { .. })
        ));
        assert!(matches!(
            decode(b"", ContentFormat::XML, &INSTANCE, &models),
            Err(CodecError::UnsupportedFormat(_))
        ));
    }

    /// Flat formats cannot express a multiple-instance resource without instances.
    fn drop_empty_multiple(node: LwM2mNode) -> LwM2mNode {
        match node {
            LwM2mNode::ObjectInstance(mut instance) => {
                instance
                    .resources
                    .retain(|_, r| !matches!(&r.value, ResourceValue::Multiple(m) if m.is_empty()));
                LwM2mNode::ObjectInstance(instance)
            }
            other => other,
        }
    }

    fn value_of(ty: ResourceType) -> BoxedStrategy<Value> {
        match ty {
            ResourceType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
            ResourceType::Time => any::<i64>().prop_map(Value::Time).boxed(),
            ResourceType::UnsignedInteger => any::<u64>().prop_map(Value::UnsignedInteger).boxed(),
            ResourceType::Float => (proptest::num::f64::NORMAL | proptest::num::f64::ZERO)
                .prop_map(Value::Float)
                .boxed(),
            ResourceType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
            ResourceType::Opaque => proptest::collection::vec(any::<u8>(), 0..24)
                .prop_map(Value::Opaque)
                .boxed(),
            ResourceType::Objlnk => (any::<u16>(), any::<u16>())
                .prop_map(|(object_id, instance_id)| {
                    Value::Objlnk(ObjectLink {
                        object_id,
                        instance_id,
                    })
                })
                .boxed(),
            ResourceType::Corelnk => "[ -~]{0,16}".prop_map(Value::Corelnk).boxed(),
            ResourceType::String | ResourceType::None => {
                "\\PC{0,16}".prop_map(Value::String).boxed()
            }
        }
    }

    const TYPES: [ResourceType; 9] = [
        ResourceType::String,
        ResourceType::Integer,
        ResourceType::UnsignedInteger,
        ResourceType::Float,
        ResourceType::Boolean,
        ResourceType::Opaque,
        ResourceType::Time,
        ResourceType::Objlnk,
        ResourceType::Corelnk,
    ];

    /// An object instance of object 42000 with resources of random types and
    /// multiplicity, and the model that declares them.
    fn instance_with_model() -> impl Strategy<Value = (LwM2mObjectInstance, ModelRegistry)> {
        proptest::collection::btree_map(0u16..300, (0usize..9, any::<bool>()), 1..8)
            .prop_flat_map(|shape| {
                let resources: Vec<BoxedStrategy<LwM2mResource>> = shape
                    .iter()
                    .map(|(id, (ty, multiple))| {
                        let id = *id;
                        let values = value_of(TYPES[*ty]);
                        if *multiple {
                            proptest::collection::btree_map(0u16..1000, values, 0..4)
                                .prop_map(move |m| LwM2mResource::multiple(id, m))
                                .boxed()
                        } else {
                            values
                                .prop_map(move |v| LwM2mResource::single(id, v))
                                .boxed()
                        }
                    })
                    .collect();
                (resources, Just(shape))
            })
            .prop_map(|(resources, shape)| {
                let mut model = crate::builtin::core_models().remove(0);
                model.id = 42000;
                model.resources = shape
                    .iter()
                    .map(|(id, (ty, multiple))| {
                        let resource = crate::model::ResourceModel {
                            id: *id,
                            name: String::new(),
                            operations: crate::model::Operations::RW,
                            multiple: *multiple,
                            mandatory: false,
                            resource_type: TYPES[*ty],
                            range_enumeration: String::new(),
                            units: String::new(),
                            description: String::new(),
                        };
                        (*id, resource)
                    })
                    .collect();
                let mut registry = ModelRegistry::new();
                registry.add(model);
                (LwM2mObjectInstance::new(0, resources), registry)
            })
    }

    proptest! {
        #[test]
        fn no_decoder_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160), which in 0usize..10) {
            let models = ModelRegistry::with_core_models();
            let format = SUPPORTED_FORMATS[which % SUPPORTED_FORMATS.len()];
            for path in [LwM2mPath::Object(3), INSTANCE, LwM2mPath::Resource(3, 0, 7), LwM2mPath::ResourceInstance(3, 0, 7, 0)] {
                if let Ok(node) = decode(&bytes, format, &path, &models) {
                    // Every decoded value costs at least one input byte: memory follows input.
                    prop_assert!(node.flatten(&path).len() <= bytes.len().max(1));
                }
            }
            let _ = decode_records(&bytes, format, &models);
            let _ = decode_paths(&bytes, format);
        }

        #[test]
        fn every_structured_format_round_trips((instance, models) in instance_with_model()) {
            let path = LwM2mPath::ObjectInstance(42000, 0);
            let node = LwM2mNode::ObjectInstance(instance);
            for format in [
                ContentFormat::LWM2M_TLV,
                ContentFormat::LWM2M_JSON,
                ContentFormat::SENML_JSON,
                ContentFormat::SENML_CBOR,
                ContentFormat::LWM2M_CBOR,
            ] {
                let bytes = encode(&node, &path, format, &models).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let decoded = decode(&bytes, format, &path, &models).map_err(|e| TestCaseError::fail(format!("{format:?}: {e}")))?;
                let mut expected = node.clone();
                if format != ContentFormat::LWM2M_TLV {
                    expected = drop_empty_multiple(expected);
                }
                prop_assert_eq!(decoded, expected, "{:?}", format);
            }
        }
    }
}
