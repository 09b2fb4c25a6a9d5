//! LwM2M data model and content formats: paths, nodes, object models and the
//! encodings of the OMA LwM2M Technical Specification (Core 1.2, §6 and §7).
//!
//! Everything here is sans-IO: the codecs take and return bytes, the operations map to
//! and from plain CoAP request and response parts.
#![forbid(unsafe_code)]

pub mod attributes;
pub mod builtin;
pub mod coap;
pub mod content;
pub mod ddf;
pub mod model;
pub mod node;
pub mod operations;
pub mod path;
pub mod registry;
pub mod value;

pub use attributes::{AttributeError, AttributeName, AttributeSet, AttributeValue};
pub use coap::{CoapRequest, CoapResponse, Method, ResponseCode};
pub use content::link::{DiscoverEntry, decode_discover, discover_entries, encode_discover};
pub use content::{CodecError, decode, decode_composite, encode, encode_composite};
pub use model::{ModelLookup, NoModels, ObjectModel, Operations, ResourceModel, Version};
pub use node::{
    LwM2mNode, LwM2mObject, LwM2mObjectInstance, LwM2mResource, LwM2mResourceInstance, NodeError,
    ResourceValue,
};
pub use operations::bootstrap::BootstrapServerRequest;
pub use operations::client::{ClientRequest, RegisteredObject, RegistrationParameters};
pub use operations::server::{CreateContent, ServerRequest, WriteMode};
pub use operations::{Lwm2mResponse, OperationError, ResponseContent};
pub use path::{LwM2mPath, PathError};
pub use registry::ModelRegistry;
pub use value::{ObjectLink, ResourceType, Value, ValueError};
