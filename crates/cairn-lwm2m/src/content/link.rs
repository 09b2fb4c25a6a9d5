//! application/link-format (Content-Format 40) payloads of Discover and
//! Bootstrap-Discover (OMA LwM2M Core 1.2 §6, Discover and Bootstrap-Discover), on the RFC 6690
//! codec of `cairn-coap`: `</3>;ver=1.1,</3/0>;pmin=10,</3/0/7>;dim=2,</3/0/7/0>`.

use cairn_coap::link_format::{self, Link};
use thiserror::Error;

use std::collections::BTreeMap;

use crate::attributes::{AttributeError, AttributeName, AttributeSet, AttributeValue};
use crate::model::{ObjectModel, Version};
use crate::node::{LwM2mNode, LwM2mObjectInstance, ResourceValue};
use crate::path::{LwM2mPath, PathError};

/// One entry of a Discover response: a path and its attributes.
#[derive(Clone, PartialEq, Debug)]
pub struct DiscoverEntry {
    /// Object, instance, resource or resource instance.
    pub path: LwM2mPath,
    /// Attributes attached at that level (and dim, ver).
    pub attributes: AttributeSet,
}

/// Why a Discover payload was refused.
#[derive(Debug, Error, PartialEq, Clone)]
pub enum DiscoverError {
    /// Not valid link format.
    #[error("link format: {0}")]
    LinkFormat(#[from] link_format::LinkFormatError),
    /// A link target is not an LwM2M path.
    #[error("link {index}: target {target:?} is not an LwM2M path: {source}")]
    Path {
        /// Index of the link.
        index: usize,
        /// The target.
        target: String,
        /// Why.
        source: PathError,
    },
    /// An attribute of a link is invalid.
    #[error("link {index}: {source}")]
    Attribute {
        /// Index of the link.
        index: usize,
        /// Why.
        source: AttributeError,
    },
}

/// The entries a client answers a Discover on `path` with (Core §6, Discover): the
/// target itself (an object carries `ver` when its version is not 1.0), then every
/// instance and resource below it, multiple-instance resources with `dim`; attributes
/// attached at any of those paths are added to their entry.
pub fn discover_entries(
    path: &LwM2mPath,
    node: &LwM2mNode,
    model: Option<&ObjectModel>,
    attached: &BTreeMap<LwM2mPath, AttributeSet>,
) -> Vec<DiscoverEntry> {
    let mut entries = Vec::new();
    let mut push = |path: LwM2mPath, mut attributes: AttributeSet| {
        if let Some(extra) = attached.get(&path) {
            attributes.apply(extra);
        }
        entries.push(DiscoverEntry { path, attributes });
    };
    let resource_entries =
        |o: u16, instance: &LwM2mObjectInstance, push: &mut dyn FnMut(LwM2mPath, AttributeSet)| {
            for resource in instance.resources.values() {
                let mut attributes = AttributeSet::new();
                if let ResourceValue::Multiple(values) = &resource.value {
                    attributes = attributes.with(
                        AttributeName::Dim,
                        AttributeValue::Unsigned(values.len() as u64),
                    );
                }
                push(LwM2mPath::Resource(o, instance.id, resource.id), attributes);
            }
        };
    match (node, *path) {
        (LwM2mNode::Object(object), LwM2mPath::Object(o)) => {
            let mut attributes = AttributeSet::new();
            if let Some(version) = model.map(|m| m.version).filter(|v| *v != Version::V1_0) {
                attributes = attributes.with(AttributeName::Ver, AttributeValue::Version(version));
            }
            push(*path, attributes);
            for instance in object.instances.values() {
                push(
                    LwM2mPath::ObjectInstance(o, instance.id),
                    AttributeSet::new(),
                );
                resource_entries(o, instance, &mut push);
            }
        }
        (LwM2mNode::ObjectInstance(instance), LwM2mPath::ObjectInstance(o, _)) => {
            push(*path, AttributeSet::new());
            resource_entries(o, instance, &mut push);
        }
        (LwM2mNode::Resource(resource), LwM2mPath::Resource(o, i, _)) => {
            let instance = LwM2mObjectInstance::new(i, [resource.clone()]);
            resource_entries(o, &instance, &mut push);
            if let ResourceValue::Multiple(values) = &resource.value {
                for ri in values.keys() {
                    push(
                        LwM2mPath::ResourceInstance(o, i, resource.id, *ri),
                        AttributeSet::new(),
                    );
                }
            }
        }
        _ => {}
    }
    entries
}

/// Writes Discover entries as link format.
pub fn encode_discover(entries: &[DiscoverEntry]) -> Vec<u8> {
    let links: Vec<Link> = entries
        .iter()
        .map(|entry| Link {
            target: entry.path.to_string(),
            attributes: entry.attributes.to_link_params(),
        })
        .collect();
    link_format::emit(&links).into_bytes()
}

/// Reads a Discover payload.
pub fn decode_discover(payload: &[u8]) -> Result<Vec<DiscoverEntry>, DiscoverError> {
    link_format::parse_bytes(payload)?
        .into_iter()
        .enumerate()
        .map(|(index, link)| {
            let path = link.target.parse().map_err(|source| DiscoverError::Path {
                index,
                target: link.target.clone(),
                source,
            })?;
            let attributes = AttributeSet::from_link_params(&link.attributes)
                .map_err(|source| DiscoverError::Attribute { index, source })?;
            Ok(DiscoverEntry { path, attributes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{LwM2mObject, LwM2mResource};
    use crate::registry::ModelRegistry;
    use crate::value::Value;
    use proptest::prelude::*;

    /// A Discover on /3 shaped like the Discover examples of Core §6: attributes at object and
    /// resource level, dim on multiple-instance resources.
    const DISCOVER_DEVICE: &str = "</3>;ver=1.1;pmin=10,</3/0>,</3/0/1>,</3/0/2>,</3/0/3>,</3/0/4>,</3/0/6>;dim=2,</3/0/7>;dim=2;gt=50;lt=42.2,</3/0/8>;dim=2,</3/0/11>,</3/0/16>";

    #[test]
    fn decodes_and_re_encodes_the_spec_example() {
        let entries = decode_discover(DISCOVER_DEVICE.as_bytes()).expect("valid");
        assert_eq!(entries.len(), 11);
        assert_eq!(entries[0].path, LwM2mPath::Object(3));
        assert_eq!(
            entries[0].attributes.get(AttributeName::Ver),
            Some(&AttributeValue::Version(Version::V1_1))
        );
        assert_eq!(
            entries[7].attributes.get(AttributeName::Lt),
            Some(&AttributeValue::Float(42.2))
        );
        assert_eq!(
            String::from_utf8(encode_discover(&entries)).ok().as_deref(),
            Some(DISCOVER_DEVICE)
        );
    }

    #[test]
    fn builds_discover_output_from_a_node() {
        let models = ModelRegistry::with_core_models();
        let device = LwM2mObject::new(
            3,
            [LwM2mObjectInstance::new(
                0,
                [
                    LwM2mResource::single(0, Value::String("ACME".into())),
                    LwM2mResource::multiple(6, [(0, Value::Integer(1)), (1, Value::Integer(5))]),
                ],
            )],
        );
        let attached = BTreeMap::from([(
            LwM2mPath::Resource(3, 0, 6),
            AttributeSet::new().with(AttributeName::Pmin, AttributeValue::Unsigned(10)),
        )]);
        let entries = discover_entries(
            &LwM2mPath::Object(3),
            &LwM2mNode::Object(device),
            models.latest(3),
            &attached,
        );
        let text = String::from_utf8(encode_discover(&entries)).ok();
        assert_eq!(
            text.as_deref(),
            Some("</3>;ver=1.2,</3/0>,</3/0/0>,</3/0/6>;dim=2;pmin=10")
        );
        let resource = LwM2mNode::Resource(LwM2mResource::multiple(6, [(0, Value::Integer(1))]));
        let entries = discover_entries(
            &LwM2mPath::Resource(3, 0, 6),
            &resource,
            None,
            &BTreeMap::new(),
        );
        let text = String::from_utf8(encode_discover(&entries)).ok();
        assert_eq!(text.as_deref(), Some("</3/0/6>;dim=1,</3/0/6/0>"));
    }

    #[test]
    fn errors_name_the_link() {
        assert!(matches!(
            decode_discover(b"</3>,</x>"),
            Err(DiscoverError::Path { index: 1, .. })
        ));
        assert!(matches!(
            decode_discover(b"</3>;pmin=x"),
            Err(DiscoverError::Attribute { index: 0, .. })
        ));
        assert!(matches!(
            decode_discover(b"</3"),
            Err(DiscoverError::LinkFormat(_))
        ));
    }

    fn entry_strategy() -> impl Strategy<Value = DiscoverEntry> {
        let path = proptest::collection::vec(0u16..=crate::path::MAX_ID, 1..=4)
            .prop_map(|ids| LwM2mPath::from_ids(&ids).unwrap_or(LwM2mPath::Root));
        let attributes = (
            proptest::option::of(any::<u32>()),
            proptest::option::of(-1e9f64..1e9),
            proptest::option::of(any::<u8>()),
        )
            .prop_map(|(pmin, gt, dim)| {
                let mut set = AttributeSet::new();
                if let Some(v) = pmin {
                    set = set.with(AttributeName::Pmin, AttributeValue::Unsigned(u64::from(v)));
                }
                if let Some(v) = gt {
                    set = set.with(AttributeName::Gt, AttributeValue::Float(v));
                }
                if let Some(v) = dim {
                    set = set.with(AttributeName::Dim, AttributeValue::Unsigned(u64::from(v)));
                }
                set
            });
        (path, attributes).prop_map(|(path, attributes)| DiscoverEntry { path, attributes })
    }

    proptest! {
        #[test]
        fn round_trips(entries in proptest::collection::vec(entry_strategy(), 0..8)) {
            prop_assert_eq!(decode_discover(&encode_discover(&entries)), Ok(entries));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_discover(&bytes);
        }
    }
}
