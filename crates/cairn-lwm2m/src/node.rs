//! LwM2M nodes (OMA LwM2M Core 1.2, resource model): an object holds object
//! instances, an instance holds resources, a resource is single-instance (one value) or
//! multiple-instance (values keyed by resource instance id).
//!
//! [`LwM2mNode::flatten`] and [`LwM2mNode::assemble`] convert between a node and the flat
//! list of (path, value) records the SenML and LwM2M JSON formats carry.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::model::ModelLookup;
use crate::path::LwM2mPath;
use crate::value::Value;

/// An object with its instances.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct LwM2mObject {
    /// Object id.
    pub id: u16,
    /// Instances by id.
    pub instances: BTreeMap<u16, LwM2mObjectInstance>,
}

/// An object instance with its resources.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct LwM2mObjectInstance {
    /// Instance id.
    pub id: u16,
    /// Resources by id.
    pub resources: BTreeMap<u16, LwM2mResource>,
}

/// A resource: its id and its value(s).
#[derive(Clone, PartialEq, Debug)]
pub struct LwM2mResource {
    /// Resource id.
    pub id: u16,
    /// One value, or the values of its instances.
    pub value: ResourceValue,
}

/// The value(s) of a resource.
#[derive(Clone, PartialEq, Debug)]
pub enum ResourceValue {
    /// A single-instance resource.
    Single(Value),
    /// A multiple-instance resource: values by resource instance id.
    Multiple(BTreeMap<u16, Value>),
}

/// One instance of a multiple-instance resource.
#[derive(Clone, PartialEq, Debug)]
pub struct LwM2mResourceInstance {
    /// Resource instance id.
    pub id: u16,
    /// Its value.
    pub value: Value,
}

/// Any node of the data model.
#[derive(Clone, PartialEq, Debug)]
pub enum LwM2mNode {
    /// An object.
    Object(LwM2mObject),
    /// An object instance.
    ObjectInstance(LwM2mObjectInstance),
    /// A resource.
    Resource(LwM2mResource),
    /// A resource instance.
    ResourceInstance(LwM2mResourceInstance),
}

/// A flat record list that does not fit the requested path.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum NodeError {
    /// A record's path is not under the requested path.
    #[error("record {record} is outside the requested path {requested}")]
    OutsidePath {
        /// Record path.
        record: LwM2mPath,
        /// Requested path.
        requested: LwM2mPath,
    },
    /// A record names an object or instance rather than a resource or resource instance.
    #[error("record {0} does not name a resource or a resource instance")]
    NotAResource(LwM2mPath),
    /// The same resource appears as single- and multiple-instance, or twice.
    #[error("resource {0} is given twice or both as single and multiple instance")]
    Conflict(LwM2mPath),
    /// A single-value path (resource or resource instance) has no record.
    #[error("no value for {0}")]
    Missing(LwM2mPath),
    /// The root path holds several objects; it is not a single node.
    #[error("the root path is not a single node")]
    Root,
}

impl LwM2mResource {
    /// A single-instance resource.
    pub fn single(id: u16, value: Value) -> LwM2mResource {
        LwM2mResource {
            id,
            value: ResourceValue::Single(value),
        }
    }

    /// A multiple-instance resource.
    pub fn multiple(id: u16, values: impl IntoIterator<Item = (u16, Value)>) -> LwM2mResource {
        LwM2mResource {
            id,
            value: ResourceValue::Multiple(values.into_iter().collect()),
        }
    }
}

impl LwM2mObjectInstance {
    /// An instance holding `resources`.
    pub fn new(id: u16, resources: impl IntoIterator<Item = LwM2mResource>) -> Self {
        LwM2mObjectInstance {
            id,
            resources: resources.into_iter().map(|r| (r.id, r)).collect(),
        }
    }
}

impl LwM2mObject {
    /// An object holding `instances`.
    pub fn new(id: u16, instances: impl IntoIterator<Item = LwM2mObjectInstance>) -> Self {
        LwM2mObject {
            id,
            instances: instances.into_iter().map(|i| (i.id, i)).collect(),
        }
    }
}

impl LwM2mNode {
    /// The id of the node at its own level.
    pub fn id(&self) -> u16 {
        match self {
            LwM2mNode::Object(o) => o.id,
            LwM2mNode::ObjectInstance(i) => i.id,
            LwM2mNode::Resource(r) => r.id,
            LwM2mNode::ResourceInstance(ri) => ri.id,
        }
    }

    /// Does this node kind sit at the depth of `path`?
    pub fn fits(&self, path: &LwM2mPath) -> bool {
        let depth = match self {
            LwM2mNode::Object(_) => 1,
            LwM2mNode::ObjectInstance(_) => 2,
            LwM2mNode::Resource(_) => 3,
            LwM2mNode::ResourceInstance(_) => 4,
        };
        path.depth() == depth
    }

    /// The node's values as (resource or resource instance path, value) records in path
    /// order; `path` is the node's own path.
    pub fn flatten(&self, path: &LwM2mPath) -> Vec<(LwM2mPath, Value)> {
        let mut out = Vec::new();
        match (self, *path) {
            (LwM2mNode::Object(object), _) => {
                for instance in object.instances.values() {
                    flatten_instance(object.id, instance, &mut out);
                }
            }
            (LwM2mNode::ObjectInstance(instance), LwM2mPath::ObjectInstance(o, _)) => {
                flatten_instance(o, instance, &mut out);
            }
            (LwM2mNode::Resource(resource), LwM2mPath::Resource(o, i, _)) => {
                flatten_resource(o, i, resource, &mut out);
            }
            (LwM2mNode::ResourceInstance(ri), p) => out.push((p, ri.value.clone())),
            _ => {}
        }
        out
    }

    /// Builds the node at `path` from flat records. A record at a resource path is a
    /// single-instance resource; records at resource instance paths make a
    /// multiple-instance resource. A resource the model declares multiple-instance and
    /// that the records leave empty becomes an empty multiple-instance resource.
    pub fn assemble(
        path: &LwM2mPath,
        records: Vec<(LwM2mPath, Value)>,
        models: &dyn ModelLookup,
    ) -> Result<LwM2mNode, NodeError> {
        let mut instances: BTreeMap<u16, LwM2mObjectInstance> = BTreeMap::new();
        for (record, value) in records {
            if !record.starts_with(path) {
                return Err(NodeError::OutsidePath {
                    record,
                    requested: *path,
                });
            }
            insert_record(&mut instances, record, value)?;
        }
        match *path {
            LwM2mPath::Root => Err(NodeError::Root),
            LwM2mPath::Object(o) => Ok(LwM2mNode::Object(LwM2mObject { id: o, instances })),
            LwM2mPath::ObjectInstance(_, i) => Ok(LwM2mNode::ObjectInstance(
                instances.remove(&i).unwrap_or(LwM2mObjectInstance {
                    id: i,
                    ..Default::default()
                }),
            )),
            LwM2mPath::Resource(o, i, r) => {
                let resource = instances
                    .remove(&i)
                    .and_then(|mut inst| inst.resources.remove(&r));
                match resource {
                    Some(resource) => Ok(LwM2mNode::Resource(resource)),
                    None if models.resource(o, r).is_some_and(|m| m.multiple) => {
                        Ok(LwM2mNode::Resource(LwM2mResource::multiple(r, [])))
                    }
                    None => Err(NodeError::Missing(*path)),
                }
            }
            LwM2mPath::ResourceInstance(_, i, r, ri) => {
                let value = instances
                    .remove(&i)
                    .and_then(|mut inst| inst.resources.remove(&r))
                    .and_then(|res| match res.value {
                        ResourceValue::Multiple(mut values) => values.remove(&ri),
                        ResourceValue::Single(_) => None,
                    })
                    .ok_or(NodeError::Missing(*path))?;
                Ok(LwM2mNode::ResourceInstance(LwM2mResourceInstance {
                    id: ri,
                    value,
                }))
            }
        }
    }
}

fn flatten_instance(o: u16, instance: &LwM2mObjectInstance, out: &mut Vec<(LwM2mPath, Value)>) {
    for resource in instance.resources.values() {
        flatten_resource(o, instance.id, resource, out);
    }
}

fn flatten_resource(o: u16, i: u16, resource: &LwM2mResource, out: &mut Vec<(LwM2mPath, Value)>) {
    match &resource.value {
        ResourceValue::Single(value) => {
            out.push((LwM2mPath::Resource(o, i, resource.id), value.clone()));
        }
        ResourceValue::Multiple(values) => {
            for (ri, value) in values {
                out.push((
                    LwM2mPath::ResourceInstance(o, i, resource.id, *ri),
                    value.clone(),
                ));
            }
        }
    }
}

fn insert_record(
    instances: &mut BTreeMap<u16, LwM2mObjectInstance>,
    record: LwM2mPath,
    value: Value,
) -> Result<(), NodeError> {
    let (i, r, ri) = match record {
        LwM2mPath::Resource(_, i, r) => (i, r, None),
        LwM2mPath::ResourceInstance(_, i, r, ri) => (i, r, Some(ri)),
        _ => return Err(NodeError::NotAResource(record)),
    };
    let instance = instances.entry(i).or_insert_with(|| LwM2mObjectInstance {
        id: i,
        ..Default::default()
    });
    match (ri, instance.resources.get_mut(&r)) {
        (None, None) => {
            instance
                .resources
                .insert(r, LwM2mResource::single(r, value));
        }
        (Some(ri), None) => {
            instance
                .resources
                .insert(r, LwM2mResource::multiple(r, [(ri, value)]));
        }
        (
            Some(ri),
            Some(LwM2mResource {
                value: ResourceValue::Multiple(values),
                ..
            }),
        ) => {
            if values.insert(ri, value).is_some() {
                return Err(NodeError::Conflict(record));
            }
        }
        _ => return Err(NodeError::Conflict(record)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NoModels;

    fn device_subset() -> LwM2mObjectInstance {
        LwM2mObjectInstance::new(
            0,
            [
                LwM2mResource::single(0, Value::String("Open Mobile Alliance".into())),
                LwM2mResource::multiple(6, [(0, Value::Integer(1)), (1, Value::Integer(5))]),
            ],
        )
    }

    #[test]
    fn flatten_then_assemble_is_identity() {
        let path = LwM2mPath::ObjectInstance(3, 0);
        let node = LwM2mNode::ObjectInstance(device_subset());
        let records = node.flatten(&path);
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].0, LwM2mPath::ResourceInstance(3, 0, 6, 0));
        assert_eq!(LwM2mNode::assemble(&path, records, &NoModels), Ok(node));
    }

    #[test]
    fn assemble_rejects_conflicts_and_strays() {
        let path = LwM2mPath::ObjectInstance(3, 0);
        let twice = vec![
            (LwM2mPath::Resource(3, 0, 1), Value::Integer(1)),
            (LwM2mPath::Resource(3, 0, 1), Value::Integer(2)),
        ];
        assert!(matches!(
            LwM2mNode::assemble(&path, twice, &NoModels),
            Err(NodeError::Conflict(_))
        ));
        let stray = vec![(LwM2mPath::Resource(4, 0, 1), Value::Integer(1))];
        assert!(matches!(
            LwM2mNode::assemble(&path, stray, &NoModels),
            Err(NodeError::OutsidePath { .. })
        ));
        assert_eq!(
            LwM2mNode::assemble(&LwM2mPath::Resource(3, 0, 9), vec![], &NoModels),
            Err(NodeError::Missing(LwM2mPath::Resource(3, 0, 9)))
        );
    }
}
