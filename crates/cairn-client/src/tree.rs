//! The objects a client hosts and the data operations on them (OMA LwM2M Core 1.2 §6.3:
//! Read, Discover, Write, Execute, Create, Delete), checked against the object models
//! (§5.1: which resources are readable, writable or executable).

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_lwm2m::content::link::DiscoverEntry;
use cairn_lwm2m::operations::ExecuteArgument;
use cairn_lwm2m::{
    AttributeName, AttributeSet, AttributeValue, LwM2mNode, LwM2mObject, LwM2mObjectInstance,
    LwM2mPath, LwM2mResource, LwM2mResourceInstance, ModelLookup, ModelRegistry, ObjectModel,
    RegisteredObject, ResourceModel, ResourceValue, Version, WriteMode,
};

use crate::object::{ClientAction, ObjectError, ObjectHandler};
use crate::objects::{ids, server_resources};

/// The OSCORE object, which like Security only a Bootstrap-Server may access.
const OSCORE: u16 = 21;

/// The objects of one client, by object id, with the models that type their resources.
pub struct ObjectTree {
    models: Arc<ModelRegistry>,
    lwm2m_version: Version,
    objects: BTreeMap<u16, Box<dyn ObjectHandler>>,
}

impl std::fmt::Debug for ObjectTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTree")
            .field("lwm2m_version", &self.lwm2m_version)
            .field("objects", &self.objects.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ModelLookup for ObjectTree {
    fn object(&self, object_id: u16) -> Option<&ObjectModel> {
        if self.lwm2m_version == Version::V1_0 {
            if let Some(model) = self.models.get(object_id, Version::V1_0) {
                return Some(model);
            }
        }
        self.models.latest(object_id)
    }
}

impl ObjectTree {
    /// An empty tree for a client of `lwm2m_version`; `models` is shared between clients
    /// (a fleet keeps one registry).
    pub fn new(models: Arc<ModelRegistry>, lwm2m_version: Version) -> ObjectTree {
        ObjectTree {
            models,
            lwm2m_version,
            objects: BTreeMap::new(),
        }
    }

    /// The LwM2M version the client registers with.
    pub fn lwm2m_version(&self) -> Version {
        self.lwm2m_version
    }

    /// Adds (or replaces) an object.
    pub fn add(&mut self, handler: impl ObjectHandler + 'static) {
        self.objects.insert(handler.object_id(), Box::new(handler));
    }

    /// An object's handler, as the application's own type (e.g. [`crate::objects::DeviceObject`]
    /// to set the battery level; then call [`crate::ClientCore::changed`]).
    pub fn object_mut<T: ObjectHandler>(&mut self, id: u16) -> Option<&mut T> {
        let handler = self.objects.get_mut(&id)?;
        (**handler).as_any_mut().downcast_mut::<T>()
    }

    /// The objects and instances of the registration payload (Core §6.2.1): every object
    /// but Security (0) and OSCORE (21), with `ver` when it is not 1.0.
    pub fn registered_objects(&self) -> Vec<RegisteredObject> {
        let mut out = Vec::new();
        for (id, handler) in &self.objects {
            if matches!(*id, ids::SECURITY | OSCORE) {
                continue;
            }
            let version = self
                .object(*id)
                .map(|m| m.version)
                .filter(|v| *v != Version::V1_0);
            let instances = handler.instance_ids();
            if version.is_some() || instances.is_empty() {
                out.push(RegisteredObject {
                    path: LwM2mPath::Object(*id),
                    version,
                });
            }
            out.extend(instances.into_iter().map(|i| RegisteredObject {
                path: LwM2mPath::ObjectInstance(*id, i),
                version: None,
            }));
        }
        out
    }

    fn handler(&self, object_id: u16) -> Result<&dyn ObjectHandler, ObjectError> {
        if matches!(object_id, ids::SECURITY | OSCORE) {
            // Only a Bootstrap-Server may touch credentials (Core §6.3).
            return Err(ObjectError::Unauthorized);
        }
        self.objects
            .get(&object_id)
            .map(|b| b.as_ref())
            .ok_or(ObjectError::NotFound)
    }

    fn handler_mut(&mut self, object_id: u16) -> Result<&mut dyn ObjectHandler, ObjectError> {
        if matches!(object_id, ids::SECURITY | OSCORE) {
            return Err(ObjectError::Unauthorized);
        }
        self.objects
            .get_mut(&object_id)
            .map(|b| b.as_mut() as &mut dyn ObjectHandler)
            .ok_or(ObjectError::NotFound)
    }

    fn resource_model(&self, object_id: u16, resource_id: u16) -> Option<&ResourceModel> {
        self.resource(object_id, resource_id)
    }

    /// Reads the node at `path` (Core §6.3.1).
    pub fn read(&self, path: &LwM2mPath) -> Result<LwM2mNode, ObjectError> {
        let object_id = path.object_id().ok_or(ObjectError::MethodNotAllowed)?;
        let handler = self.handler(object_id)?;
        let readable = |instance: LwM2mObjectInstance| self.readable(object_id, instance);
        match *path {
            LwM2mPath::Object(_) => {
                let mut instances = Vec::new();
                for id in handler.instance_ids() {
                    instances.push(readable(handler.read(id)?));
                }
                Ok(LwM2mNode::Object(LwM2mObject::new(object_id, instances)))
            }
            LwM2mPath::ObjectInstance(_, i) => {
                Ok(LwM2mNode::ObjectInstance(readable(handler.read(i)?)))
            }
            LwM2mPath::Resource(_, i, r) => {
                let model = self.resource_model(object_id, r);
                if model.is_some_and(|m| !m.operations.is_readable()) {
                    return Err(ObjectError::MethodNotAllowed);
                }
                let mut instance = handler.read(i)?;
                instance
                    .resources
                    .remove(&r)
                    .map(LwM2mNode::Resource)
                    .ok_or(ObjectError::NotFound)
            }
            LwM2mPath::ResourceInstance(_, i, r, ri) => {
                let mut instance = handler.read(i)?;
                match instance.resources.remove(&r).map(|r| r.value) {
                    Some(ResourceValue::Multiple(mut values)) => values
                        .remove(&ri)
                        .map(|value| {
                            LwM2mNode::ResourceInstance(LwM2mResourceInstance { id: ri, value })
                        })
                        .ok_or(ObjectError::NotFound),
                    _ => Err(ObjectError::NotFound),
                }
            }
            LwM2mPath::Root => Err(ObjectError::MethodNotAllowed),
        }
    }

    fn readable(&self, object_id: u16, mut instance: LwM2mObjectInstance) -> LwM2mObjectInstance {
        instance.resources.retain(|id, _| {
            self.resource_model(object_id, *id)
                .is_none_or(|m| m.operations.is_readable())
        });
        instance
    }

    /// The Discover entries of `path` (Core §6.3.2), with the attributes the server set;
    /// `attributes` maps a path to the attributes written there.
    pub fn discover(
        &self,
        path: &LwM2mPath,
        attributes: &BTreeMap<LwM2mPath, AttributeSet>,
    ) -> Result<Vec<DiscoverEntry>, ObjectError> {
        let object_id = path.object_id().ok_or(ObjectError::MethodNotAllowed)?;
        let handler = self.handler(object_id)?;
        let attributes_of = |p: LwM2mPath| attributes.get(&p).cloned().unwrap_or_default();
        let mut entries = Vec::new();
        if let LwM2mPath::Object(_) = path {
            let mut own = attributes_of(*path);
            if let Some(model) = self
                .object(object_id)
                .filter(|m| m.version != Version::V1_0)
            {
                own = own.with(AttributeName::Ver, AttributeValue::Version(model.version));
            }
            entries.push(DiscoverEntry {
                path: *path,
                attributes: own,
            });
        }
        let instances = match path.instance_id() {
            Some(i) => vec![i],
            None => handler.instance_ids(),
        };
        for i in instances {
            let instance = handler.read(i)?;
            let instance_path = LwM2mPath::ObjectInstance(object_id, i);
            if path.resource_id().is_none() {
                entries.push(DiscoverEntry {
                    path: instance_path,
                    attributes: attributes_of(instance_path),
                });
            }
            for (r, resource) in &instance.resources {
                if path.resource_id().is_some_and(|wanted| wanted != *r) {
                    continue;
                }
                let resource_path = LwM2mPath::Resource(object_id, i, *r);
                let mut own = attributes_of(resource_path);
                if let ResourceValue::Multiple(values) = &resource.value {
                    let dim = u64::try_from(values.len()).unwrap_or(u64::MAX);
                    own = own.with(AttributeName::Dim, AttributeValue::Unsigned(dim));
                }
                entries.push(DiscoverEntry {
                    path: resource_path,
                    attributes: own,
                });
            }
        }
        if path.resource_id().is_some() && entries.is_empty() {
            return Err(ObjectError::NotFound);
        }
        Ok(entries)
    }

    /// Writes `node` at `path` (Core §6.3.3).
    pub fn write(
        &mut self,
        path: &LwM2mPath,
        mode: WriteMode,
        node: LwM2mNode,
    ) -> Result<(), ObjectError> {
        let object_id = path.object_id().ok_or(ObjectError::MethodNotAllowed)?;
        let instance_id = path.instance_id().ok_or(ObjectError::MethodNotAllowed)?;
        let resources = match node {
            LwM2mNode::ObjectInstance(instance) => instance.resources.into_values().collect(),
            LwM2mNode::Resource(resource) => vec![resource],
            LwM2mNode::ResourceInstance(ri) => {
                let resource_id = path.resource_id().ok_or(ObjectError::MethodNotAllowed)?;
                let current = self.read(&LwM2mPath::Resource(object_id, instance_id, resource_id));
                let mut values = match current {
                    Ok(LwM2mNode::Resource(LwM2mResource {
                        value: ResourceValue::Multiple(values),
                        ..
                    })) => values,
                    _ => return Err(ObjectError::NotFound),
                };
                values.insert(ri.id, ri.value);
                vec![LwM2mResource::multiple(resource_id, values)]
            }
            LwM2mNode::Object(_) => return Err(ObjectError::MethodNotAllowed),
        };
        for resource in &resources {
            if self
                .resource_model(object_id, resource.id)
                .is_some_and(|m| !m.operations.is_writable())
            {
                return Err(ObjectError::MethodNotAllowed);
            }
        }
        self.handler_mut(object_id)?
            .write(instance_id, mode, resources)
    }

    /// Executes the resource at `path` (Core §6.3.5). The Server object's Disable and
    /// Registration Update Trigger act on the registration and come back as actions.
    pub fn execute(
        &mut self,
        path: &LwM2mPath,
        arguments: &[ExecuteArgument],
    ) -> Result<Option<ClientAction>, ObjectError> {
        let LwM2mPath::Resource(o, i, r) = *path else {
            return Err(ObjectError::MethodNotAllowed);
        };
        if self
            .resource_model(o, r)
            .is_some_and(|m| !m.operations.is_executable())
        {
            return Err(ObjectError::MethodNotAllowed);
        }
        if o == ids::SERVER {
            let short_server_id = self.short_server_id(i).ok_or(ObjectError::NotFound)?;
            return match r {
                server_resources::DISABLE => Ok(Some(ClientAction::Disable { short_server_id })),
                server_resources::REGISTRATION_UPDATE_TRIGGER => {
                    Ok(Some(ClientAction::RegistrationUpdate { short_server_id }))
                }
                server_resources::BOOTSTRAP_REQUEST_TRIGGER => {
                    Ok(Some(ClientAction::BootstrapRequest { short_server_id }))
                }
                _ => Err(ObjectError::MethodNotAllowed),
            };
        }
        self.handler_mut(o)?.execute(i, r, arguments)
    }

    /// Creates instances of the object at `path` (Core §6.3.6); returns their ids.
    pub fn create(
        &mut self,
        path: &LwM2mPath,
        instances: Vec<LwM2mObjectInstance>,
    ) -> Result<Vec<u16>, ObjectError> {
        let object_id = path.object_id().ok_or(ObjectError::MethodNotAllowed)?;
        let handler = self.handler_mut(object_id)?;
        instances
            .into_iter()
            .map(|instance| handler.create(instance))
            .collect()
    }

    /// Deletes the instance at `path` (Core §6.3.7).
    pub fn delete(&mut self, path: &LwM2mPath) -> Result<(), ObjectError> {
        match *path {
            LwM2mPath::ObjectInstance(o, i) => self.handler_mut(o)?.delete(i),
            _ => Err(ObjectError::MethodNotAllowed),
        }
    }

    /// The Short Server ID of Server object instance `instance`.
    pub fn short_server_id(&self, instance: u16) -> Option<u16> {
        self.server_integer(instance, server_resources::SHORT_SERVER_ID)
            .and_then(|v| u16::try_from(v).ok())
    }

    /// An integer resource of a Server object instance (lifetime, default pmin/pmax).
    pub fn server_integer(&self, instance: u16, resource: u16) -> Option<i64> {
        let node = self
            .read(&LwM2mPath::Resource(ids::SERVER, instance, resource))
            .ok()?;
        match node {
            LwM2mNode::Resource(LwM2mResource {
                value: ResourceValue::Single(value),
                ..
            }) => match value {
                cairn_lwm2m::Value::Integer(v) => Some(v),
                cairn_lwm2m::Value::UnsignedInteger(v) => i64::try_from(v).ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The Server object instance of a Short Server ID.
    pub fn server_instance(&self, short_server_id: u16) -> Option<u16> {
        let handler = self.handler(ids::SERVER).ok()?;
        handler
            .instance_ids()
            .into_iter()
            .find(|i| self.short_server_id(*i) == Some(short_server_id))
    }
}
