//! LwM2M data model and content formats: paths, nodes, object models and the
//! encodings of the OMA LwM2M Technical Specification (Core 1.2, §6 and §7).
//!
//! Everything here is sans-IO: the codecs take and return bytes, the operations map to
//! and from plain CoAP request and response parts.
//!
//! ```
//! use cairn_lwm2m::{
//!     ContentFormat, LwM2mNode, LwM2mPath, LwM2mResource, Lwm2mResponse, ModelRegistry,
//!     ResponseCode, ResponseContent, ServerRequest, Value,
//! };
//!
//! // The models every codec and operation takes types from.
//! let models = ModelRegistry::with_core_models();
//!
//! // A server reads the battery level of a client's device object...
//! let read = ServerRequest::Read { path: "/3/0/9".parse()?, accept: Some(ContentFormat::LWM2M_TLV) };
//! let request = read.to_coap(&models)?;
//! assert_eq!(request.path, ["3", "0", "9"]);
//!
//! // ...the client recognises the operation and answers it...
//! assert_eq!(ServerRequest::from_coap(&request, &models)?, read);
//! let battery = LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(87)));
//! let answer = Lwm2mResponse::with_content(ResponseCode::CONTENT, ResponseContent::Node(battery.clone()), None);
//! let response = read.encode_response(&answer, &models)?;
//! assert_eq!(response.payload, [0xC1, 0x09, 0x57]);
//!
//! // ...and the server decodes the TLV payload with the Device model's types.
//! let decoded = read.decode_response(&response, &models)?;
//! assert_eq!(decoded.content, ResponseContent::Node(battery));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod attributes;
pub mod builtin;
pub mod coap;
pub mod coap_message;
pub mod content;
pub mod ddf;
pub mod model;
pub mod node;
pub mod operations;
pub mod path;
pub mod registry;
pub mod value;

pub use cairn_coap::ContentFormat;

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
pub use operations::server::{ServerRequest, WriteMode};
pub use operations::{Lwm2mResponse, OperationError, ResponseContent};
pub use path::{LwM2mPath, PathError};
pub use registry::ModelRegistry;
pub use value::{ObjectLink, ResourceType, Value, ValueError};
