//! Requests a LwM2M Bootstrap-Server sends to a client (OMA LwM2M Core 1.2 §6,
//! Bootstrap Interface, and the operation mapping of Transport Binding 1.2):
//!
//! | operation | CoAP |
//! |---|---|
//! | Bootstrap-Discover | GET / or /o, Accept: link-format → 2.05 |
//! | Bootstrap-Read | GET /o or /o/i → 2.05 |
//! | Bootstrap-Write | PUT /o, /o/i or /o/i/r, Content-Format → 2.04 |
//! | Bootstrap-Delete | DELETE /, /o or /o/i → 2.02 |
//! | Bootstrap-Finish | POST /bs → 2.04 |

use cairn_coap::ContentFormat;

use crate::coap::{CoapRequest, CoapResponse, Method, ResponseCode};
use crate::content;
use crate::content::link::{decode_discover, encode_discover};
use crate::model::ModelLookup;
use crate::node::LwM2mNode;
use crate::operations::{
    Lwm2mResponse, OperationError, ResponseContent, base_response, error_response,
    not_an_operation, path_of, segments,
};
use crate::path::LwM2mPath;

/// A request from a Bootstrap-Server.
#[derive(Clone, PartialEq, Debug)]
pub enum BootstrapServerRequest {
    /// Bootstrap-Discover.
    Discover {
        /// Root or object.
        path: LwM2mPath,
    },
    /// Bootstrap-Read.
    Read {
        /// Object or instance.
        path: LwM2mPath,
        /// Preferred format.
        accept: Option<ContentFormat>,
    },
    /// Bootstrap-Write.
    Write {
        /// Object, instance or resource.
        path: LwM2mPath,
        /// Payload format.
        format: ContentFormat,
        /// The node written.
        node: LwM2mNode,
    },
    /// Bootstrap-Delete.
    Delete {
        /// Root, object or instance.
        path: LwM2mPath,
    },
    /// Bootstrap-Finish.
    Finish,
}

/// Uri-Path of the bootstrap interface.
pub const BOOTSTRAP_PATH: &str = "bs";

impl BootstrapServerRequest {
    /// The operation's name.
    pub fn name(&self) -> &'static str {
        match self {
            BootstrapServerRequest::Discover { .. } => "Bootstrap-Discover",
            BootstrapServerRequest::Read { .. } => "Bootstrap-Read",
            BootstrapServerRequest::Write { .. } => "Bootstrap-Write",
            BootstrapServerRequest::Delete { .. } => "Bootstrap-Delete",
            BootstrapServerRequest::Finish => "Bootstrap-Finish",
        }
    }

    /// The response code of a success.
    pub fn success_code(&self) -> ResponseCode {
        match self {
            BootstrapServerRequest::Discover { .. } | BootstrapServerRequest::Read { .. } => {
                ResponseCode::CONTENT
            }
            BootstrapServerRequest::Write { .. } | BootstrapServerRequest::Finish => {
                ResponseCode::CHANGED
            }
            BootstrapServerRequest::Delete { .. } => ResponseCode::DELETED,
        }
    }

    fn validate(&self) -> Result<(), OperationError> {
        let (ok, path) = match self {
            BootstrapServerRequest::Discover { path } => (path.depth() <= 1, *path),
            BootstrapServerRequest::Read { path, .. } => (matches!(path.depth(), 1 | 2), *path),
            BootstrapServerRequest::Write { path, node, .. } => {
                ((1..=3).contains(&path.depth()) && node.fits(path), *path)
            }
            BootstrapServerRequest::Delete { path } => (path.depth() <= 2, *path),
            BootstrapServerRequest::Finish => (true, LwM2mPath::Root),
        };
        if ok {
            Ok(())
        } else {
            Err(OperationError::BadPath {
                operation: self.name(),
                path,
            })
        }
    }

    /// The CoAP request parts of this operation.
    pub fn to_coap(&self, models: &dyn ModelLookup) -> Result<CoapRequest, OperationError> {
        self.validate()?;
        Ok(match self {
            BootstrapServerRequest::Discover { path } => CoapRequest {
                accept: Some(ContentFormat::LINK_FORMAT),
                ..request(Method::Get, path)
            },
            BootstrapServerRequest::Read { path, accept } => CoapRequest {
                accept: *accept,
                ..request(Method::Get, path)
            },
            BootstrapServerRequest::Write { path, format, node } => CoapRequest {
                content_format: Some(*format),
                payload: content::encode(node, path, *format, models)?,
                ..request(Method::Put, path)
            },
            BootstrapServerRequest::Delete { path } => request(Method::Delete, path),
            BootstrapServerRequest::Finish => CoapRequest::new(Method::Post, &[BOOTSTRAP_PATH]),
        })
    }

    /// Recognizes the operation a CoAP request from a Bootstrap-Server carries.
    pub fn from_coap(
        coap: &CoapRequest,
        models: &dyn ModelLookup,
    ) -> Result<BootstrapServerRequest, OperationError> {
        let request = match coap.method {
            Method::Post if coap.path == [BOOTSTRAP_PATH] => BootstrapServerRequest::Finish,
            Method::Get if coap.accept == Some(ContentFormat::LINK_FORMAT) => {
                BootstrapServerRequest::Discover {
                    path: path_of(coap)?,
                }
            }
            Method::Get => BootstrapServerRequest::Read {
                path: path_of(coap)?,
                accept: coap.accept,
            },
            Method::Put => {
                let path = path_of(coap)?;
                let format = coap
                    .content_format
                    .ok_or(OperationError::Missing("Content-Format"))?;
                let node = content::decode(&coap.payload, format, &path, models)?;
                BootstrapServerRequest::Write { path, format, node }
            }
            Method::Delete => BootstrapServerRequest::Delete {
                path: path_of(coap)?,
            },
            _ => return Err(not_an_operation(coap, "not a bootstrap operation")),
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
        match (&response.content, self) {
            (ResponseContent::Links(links), _) => {
                coap.content_format = Some(ContentFormat::LINK_FORMAT);
                coap.payload = encode_discover(links);
            }
            (ResponseContent::Node(node), BootstrapServerRequest::Read { path, accept }) => {
                let format = response
                    .content_format
                    .or(*accept)
                    .ok_or(OperationError::Missing("Content-Format of the response"))?;
                coap.content_format = Some(format);
                coap.payload = content::encode(node, path, format, models)?;
            }
            _ => {}
        }
        Ok(coap)
    }

    /// Reads a CoAP response to this request (Bootstrap-Server side).
    pub fn decode_response(
        &self,
        coap: &CoapResponse,
        models: &dyn ModelLookup,
    ) -> Result<Lwm2mResponse, OperationError> {
        if let Some(error) = error_response(coap, self.success_code())? {
            return Ok(error);
        }
        let content = match self {
            BootstrapServerRequest::Discover { .. } => {
                ResponseContent::Links(decode_discover(&coap.payload)?)
            }
            BootstrapServerRequest::Read { path, .. } => {
                let format = coap
                    .content_format
                    .ok_or(OperationError::Missing("Content-Format of the response"))?;
                ResponseContent::Node(content::decode(&coap.payload, format, path, models)?)
            }
            _ => ResponseContent::Empty,
        };
        Ok(Lwm2mResponse::with_content(
            coap.code,
            content,
            coap.content_format,
        ))
    }
}

fn request(method: Method, path: &LwM2mPath) -> CoapRequest {
    CoapRequest {
        path: segments(path),
        ..CoapRequest::new(method, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{LwM2mObjectInstance, LwM2mResource};
    use crate::registry::ModelRegistry;
    use crate::value::Value;

    #[test]
    fn every_operation_maps_to_coap_and_back() {
        let models = ModelRegistry::with_core_models();
        let security = LwM2mObjectInstance::new(
            0,
            [
                LwM2mResource::single(0, Value::String("coaps://lwm2m.example:5684".into())),
                LwM2mResource::single(1, Value::Boolean(false)),
                LwM2mResource::single(2, Value::Integer(0)),
            ],
        );
        let requests = [
            BootstrapServerRequest::Discover {
                path: LwM2mPath::Root,
            },
            BootstrapServerRequest::Read {
                path: LwM2mPath::Object(1),
                accept: Some(ContentFormat::LWM2M_TLV),
            },
            BootstrapServerRequest::Write {
                path: LwM2mPath::ObjectInstance(0, 0),
                format: ContentFormat::LWM2M_TLV,
                node: LwM2mNode::ObjectInstance(security),
            },
            BootstrapServerRequest::Delete {
                path: LwM2mPath::Root,
            },
            BootstrapServerRequest::Finish,
        ];
        for request in requests {
            let coap = request.to_coap(&models).expect("maps");
            assert_eq!(
                BootstrapServerRequest::from_coap(&coap, &models).as_ref(),
                Ok(&request),
                "{}",
                request.name()
            );
        }
        let finish = BootstrapServerRequest::Finish
            .to_coap(&models)
            .expect("maps");
        assert_eq!(
            (finish.method, finish.path),
            (Method::Post, vec!["bs".to_owned()])
        );
    }

    #[test]
    fn paths_are_checked() {
        let models = ModelRegistry::with_core_models();
        let delete_resource = BootstrapServerRequest::Delete {
            path: LwM2mPath::Resource(0, 0, 1),
        };
        assert!(matches!(
            delete_resource.to_coap(&models),
            Err(OperationError::BadPath { .. })
        ));
        let discover_instance = CoapRequest {
            accept: Some(ContentFormat::LINK_FORMAT),
            ..CoapRequest::new(Method::Get, &["0", "1"])
        };
        assert!(BootstrapServerRequest::from_coap(&discover_instance, &models).is_err());
        let finish = BootstrapServerRequest::Finish;
        let error = CoapResponse::new(ResponseCode::NOT_ACCEPTABLE);
        assert_eq!(
            finish.decode_response(&error, &models).map(|r| r.code),
            Ok(ResponseCode::NOT_ACCEPTABLE)
        );
    }
}
