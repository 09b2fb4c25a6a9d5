//! The object handler trait (OMA LwM2M Core 1.2 §6.3 "Device Management and Service
//! Enablement Interface"): what a client application implements for each object it hosts,
//! and [`InstanceStore`], an in-memory object that most configuration objects use.
//!
//! Handlers work on typed nodes of `cairn-lwm2m`; the [`crate::ObjectTree`] checks paths
//! and the operations the object model allows before it calls them, and encodes the result.

use std::any::Any;
use std::collections::BTreeMap;

use cairn_lwm2m::operations::ExecuteArgument;
use cairn_lwm2m::{LwM2mObjectInstance, LwM2mResource, ResponseCode, WriteMode};

/// Why an operation on an object failed; each maps to a CoAP response code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The instance or resource does not exist (4.04).
    #[error("not found")]
    NotFound,
    /// The operation is not allowed on this target (4.05).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The server may not access this target (4.01).
    #[error("unauthorized")]
    Unauthorized,
    /// The target cannot be represented in the requested format (4.06).
    #[error("not acceptable")]
    NotAcceptable,
    /// The request content is wrong (4.00).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client failed (5.00).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ObjectError {
    /// The CoAP response code of this error.
    pub fn code(&self) -> ResponseCode {
        match self {
            ObjectError::NotFound => ResponseCode::NOT_FOUND,
            ObjectError::MethodNotAllowed => ResponseCode::METHOD_NOT_ALLOWED,
            ObjectError::Unauthorized => ResponseCode::UNAUTHORIZED,
            ObjectError::NotAcceptable => ResponseCode::NOT_ACCEPTABLE,
            ObjectError::BadRequest(_) => ResponseCode::BAD_REQUEST,
            ObjectError::Internal(_) => ResponseCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Something an Execute asks of the client as a whole rather than of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Device Reboot (/3/0/4).
    Reboot,
    /// Device Factory Reset (/3/0/5).
    FactoryReset,
    /// Server Registration Update Trigger (/1/x/8): send an Update to that server.
    RegistrationUpdate {
        /// Short Server ID of the server.
        short_server_id: u16,
    },
    /// Bootstrap-Request Trigger (/1/x/9, LwM2M 1.1): bootstrap again.
    BootstrapRequest {
        /// Short Server ID of the server that asked.
        short_server_id: u16,
    },
    /// Server Disable (/1/x/4): de-register from that server.
    Disable {
        /// Short Server ID of the server.
        short_server_id: u16,
    },
}

/// Lets the application reach its own handler type in an [`crate::ObjectTree`].
pub trait AsAny: Any {
    /// `self` as `Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One LwM2M object hosted by a client.
///
/// Read returns every readable resource of an instance; the tree narrows it to the path
/// requested. The default write, execute, create and delete refuse with 4.05.
pub trait ObjectHandler: Send + AsAny {
    /// The object id.
    fn object_id(&self) -> u16;

    /// The ids of the instances that exist.
    fn instance_ids(&self) -> Vec<u16>;

    /// The readable resources of an instance.
    fn read(&self, instance: u16) -> Result<LwM2mObjectInstance, ObjectError>;

    /// Writes resources of an instance; `Replace` on an instance replaces every resource
    /// given (Core §6.3.3).
    fn write(
        &mut self,
        instance: u16,
        mode: WriteMode,
        resources: Vec<LwM2mResource>,
    ) -> Result<(), ObjectError> {
        let _ = (instance, mode, resources);
        Err(ObjectError::MethodNotAllowed)
    }

    /// Executes a resource.
    fn execute(
        &mut self,
        instance: u16,
        resource: u16,
        arguments: &[ExecuteArgument],
    ) -> Result<Option<ClientAction>, ObjectError> {
        let _ = (instance, resource, arguments);
        Err(ObjectError::MethodNotAllowed)
    }

    /// Creates an instance; returns its id.
    fn create(&mut self, instance: LwM2mObjectInstance) -> Result<u16, ObjectError> {
        let _ = instance;
        Err(ObjectError::MethodNotAllowed)
    }

    /// Deletes an instance.
    fn delete(&mut self, instance: u16) -> Result<(), ObjectError> {
        let _ = instance;
        Err(ObjectError::MethodNotAllowed)
    }
}

/// An object whose instances are plain stored values (Server, Access Control,
/// Connectivity Monitoring, application objects).
#[derive(Clone, Debug, Default)]
pub struct InstanceStore {
    object_id: u16,
    instances: BTreeMap<u16, LwM2mObjectInstance>,
    creatable: bool,
}

impl InstanceStore {
    /// An object with the given instances; `creatable` allows Create and Delete.
    pub fn new(
        object_id: u16,
        instances: impl IntoIterator<Item = LwM2mObjectInstance>,
        creatable: bool,
    ) -> InstanceStore {
        InstanceStore {
            object_id,
            instances: instances.into_iter().map(|i| (i.id, i)).collect(),
            creatable,
        }
    }

    /// An instance, for the application.
    pub fn instance(&self, id: u16) -> Option<&LwM2mObjectInstance> {
        self.instances.get(&id)
    }

    /// Sets one resource of an existing instance (application side, no checks).
    pub fn set(&mut self, instance: u16, resource: LwM2mResource) -> Result<(), ObjectError> {
        let target = self
            .instances
            .get_mut(&instance)
            .ok_or(ObjectError::NotFound)?;
        target.resources.insert(resource.id, resource);
        Ok(())
    }
}

impl ObjectHandler for InstanceStore {
    fn object_id(&self) -> u16 {
        self.object_id
    }

    fn instance_ids(&self) -> Vec<u16> {
        self.instances.keys().copied().collect()
    }

    fn read(&self, instance: u16) -> Result<LwM2mObjectInstance, ObjectError> {
        self.instances
            .get(&instance)
            .cloned()
            .ok_or(ObjectError::NotFound)
    }

    fn write(
        &mut self,
        instance: u16,
        _mode: WriteMode,
        resources: Vec<LwM2mResource>,
    ) -> Result<(), ObjectError> {
        let target = self
            .instances
            .get_mut(&instance)
            .ok_or(ObjectError::NotFound)?;
        for resource in resources {
            target.resources.insert(resource.id, resource);
        }
        Ok(())
    }

    fn create(&mut self, instance: LwM2mObjectInstance) -> Result<u16, ObjectError> {
        if !self.creatable {
            return Err(ObjectError::MethodNotAllowed);
        }
        if self.instances.contains_key(&instance.id) {
            return Err(ObjectError::BadRequest(format!(
                "instance {} exists",
                instance.id
            )));
        }
        let id = instance.id;
        self.instances.insert(id, instance);
        Ok(id)
    }

    fn delete(&mut self, instance: u16) -> Result<(), ObjectError> {
        if !self.creatable {
            return Err(ObjectError::MethodNotAllowed);
        }
        self.instances
            .remove(&instance)
            .map(|_| ())
            .ok_or(ObjectError::NotFound)
    }
}
