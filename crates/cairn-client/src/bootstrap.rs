//! The client side of the Bootstrap Interface (OMA LwM2M Core 1.2 §6.1): a
//! [`BootstrapSession`] answers Bootstrap-Discover, Bootstrap-Read, Bootstrap-Write,
//! Bootstrap-Delete and Bootstrap-Finish on the Security (0), Server (1), Access Control (2) and
//! OSCORE (21) objects. Sans-IO.
//!
//! The writes change a staged copy of the device's state; nothing is committed until
//! Bootstrap-Finish, which checks the result (§6.1.7.6: a Bootstrap-Server account, and every
//! device-management Security instance paired with a Server instance; otherwise 4.06) and hands
//! the new state to the caller, who persists it before answering 2.04. A device that loses
//! power before that keeps its previous state, and with it a working credential.

use std::sync::Arc;

use cairn_coap::ContentFormat;
use cairn_lwm2m::node::{LwM2mNode, LwM2mObject, LwM2mObjectInstance};
use cairn_lwm2m::operations::{Lwm2mResponse, ResponseContent};
use cairn_lwm2m::{
    BootstrapServerRequest, CoapRequest, CoapResponse, LwM2mPath, ModelRegistry, OperationError,
    ResponseCode,
};

use crate::credentials::{BOOTSTRAP_OBJECTS, DeviceState, is_bootstrap_account};

/// What serving one request gave.
#[derive(Debug)]
pub struct Served {
    /// The response to send.
    pub response: CoapResponse,
    /// After a successful Bootstrap-Finish: the state to persist before answering.
    pub finished: Option<DeviceState>,
}

/// One bootstrap sequence on the client.
#[derive(Debug)]
pub struct BootstrapSession {
    staged: DeviceState,
    models: Arc<ModelRegistry>,
    /// Objects of the device outside the bootstrap objects (for Bootstrap-Discover).
    other_objects: Vec<u16>,
}

fn error(code: ResponseCode, diagnostic: &str) -> Lwm2mResponse {
    Lwm2mResponse::error(code, Some(diagnostic.to_owned()))
}

impl BootstrapSession {
    /// A session starting from the device's current state.
    pub fn new(
        current: &DeviceState,
        models: Arc<ModelRegistry>,
        other_objects: Vec<u16>,
    ) -> BootstrapSession {
        BootstrapSession {
            staged: current.clone(),
            models,
            other_objects,
        }
    }

    /// The staged state.
    pub fn staged(&self) -> &DeviceState {
        &self.staged
    }

    /// Answers one request of the Bootstrap-Server.
    pub fn serve(&mut self, request: &CoapRequest) -> Served {
        let operation = match BootstrapServerRequest::from_coap(request, &*self.models) {
            Ok(operation) => operation,
            Err(error) => {
                let code = match error {
                    OperationError::NotAnOperation { .. } => ResponseCode::METHOD_NOT_ALLOWED,
                    OperationError::Codec(cairn_lwm2m::CodecError::UnsupportedFormat(_)) => {
                        ResponseCode::UNSUPPORTED_CONTENT_FORMAT
                    }
                    _ => ResponseCode::BAD_REQUEST,
                };
                return Served {
                    response: CoapResponse {
                        payload: error.to_string().into_bytes(),
                        ..CoapResponse::new(code)
                    },
                    finished: None,
                };
            }
        };
        let mut finished = None;
        let response = match &operation {
            BootstrapServerRequest::Discover { path } => {
                return Served {
                    response: self.discover(path),
                    finished: None,
                };
            }
            BootstrapServerRequest::Read { path, accept } => self.read(path, *accept),
            BootstrapServerRequest::Write { path, node, .. } => self.write(path, node),
            BootstrapServerRequest::Delete { path } => self.delete(path),
            BootstrapServerRequest::Finish => match self.check() {
                Ok(()) => {
                    finished = Some(self.staged.clone());
                    Lwm2mResponse::empty(ResponseCode::CHANGED)
                }
                Err(why) => error(ResponseCode::NOT_ACCEPTABLE, why),
            },
        };
        let response = operation
            .encode_response(&response, &*self.models)
            .unwrap_or_else(|_| CoapResponse::new(ResponseCode::INTERNAL_SERVER_ERROR));
        Served { response, finished }
    }

    /// Bootstrap-Discover (Core 1.2 §6.1.7.1): the objects and instances, the enabler version
    /// on `</>`, and on each Security instance its server's `ssid` (none for the
    /// Bootstrap-Server account) and `uri`.
    fn discover(&self, path: &LwM2mPath) -> CoapResponse {
        use cairn_coap::link_format::{Link, emit};
        let mut objects: Vec<u16> = BOOTSTRAP_OBJECTS
            .iter()
            .copied()
            .chain(self.other_objects.iter().copied())
            .collect();
        objects.sort_unstable();
        objects.dedup();
        let mut links = Vec::new();
        match path.object_id() {
            Some(object) => objects.retain(|o| *o == object),
            None => links.push(Link::new("/").with("lwm2m", Some("1.1"))),
        }
        for object in objects {
            links.push(Link::new(format!("/{object}")));
            for instance in self.staged.instances(object) {
                let mut link = Link::new(format!("/{object}/{}", instance.id));
                if object == 0 {
                    let account = self.staged.instance(0, instance.id).map(|i| {
                        (
                            crate::credentials::DeviceState::account_of(i),
                            is_bootstrap_account(i),
                        )
                    });
                    if let Some((account, bootstrap)) = account {
                        if !bootstrap {
                            if let Some(ssid) = account.short_server_id {
                                link = link.with("ssid", Some(ssid.to_string()));
                            }
                        }
                        link = link.with("uri", Some(format!("\"{}\"", account.uri)));
                    }
                } else if object == 1 {
                    if let Some(ssid) = crate::credentials::short_server_id_of(instance) {
                        link = link.with("ssid", Some(ssid.to_string()));
                    }
                }
                links.push(link);
            }
        }
        CoapResponse {
            content_format: Some(ContentFormat::LINK_FORMAT),
            payload: emit(&links).into_bytes(),
            ..CoapResponse::new(ResponseCode::CONTENT)
        }
    }

    fn read(&self, path: &LwM2mPath, accept: Option<ContentFormat>) -> Lwm2mResponse {
        let Some(object) = path.object_id() else {
            return error(ResponseCode::BAD_REQUEST, "Bootstrap-Read needs an object");
        };
        // Bootstrap-Read applies to the Server and Access Control objects only (Core §6.1.7.3).
        if object != 1 && object != 2 {
            return error(ResponseCode::UNAUTHORIZED, "not readable at bootstrap");
        }
        let node = match path.instance_id() {
            Some(instance) => match self.staged.instance(object, instance) {
                Some(found) => LwM2mNode::ObjectInstance(found.clone()),
                None => return error(ResponseCode::NOT_FOUND, "no such instance"),
            },
            None => LwM2mNode::Object(LwM2mObject::new(
                object,
                self.staged.instances(object).cloned(),
            )),
        };
        let format = accept.unwrap_or(ContentFormat::LWM2M_TLV);
        if cairn_lwm2m::encode(&node, path, format, &*self.models).is_err() {
            return error(ResponseCode::NOT_ACCEPTABLE, "format not supported");
        }
        Lwm2mResponse::with_content(
            ResponseCode::CONTENT,
            ResponseContent::Node(node),
            Some(format),
        )
    }

    fn put_instance(&mut self, object: u16, instance: LwM2mObjectInstance) {
        if object == 0 && is_bootstrap_account(&instance) {
            // One Bootstrap-Server account: a new one replaces the old one wherever it was.
            let others: Vec<u16> = self
                .staged
                .instances(0)
                .filter(|i| i.id != instance.id && is_bootstrap_account(i))
                .map(|i| i.id)
                .collect();
            for id in others {
                self.staged.remove(0, id);
            }
        }
        self.staged.put(object, instance);
    }

    fn write(&mut self, path: &LwM2mPath, node: &LwM2mNode) -> Lwm2mResponse {
        let Some(object) = path.object_id() else {
            return error(ResponseCode::BAD_REQUEST, "Bootstrap-Write needs an object");
        };
        if !BOOTSTRAP_OBJECTS.contains(&object) {
            return error(
                ResponseCode::METHOD_NOT_ALLOWED,
                "only objects 0, 1, 2 and 21 are written at bootstrap",
            );
        }
        match node {
            LwM2mNode::Object(written) => {
                for instance in written.instances.values() {
                    self.put_instance(object, instance.clone());
                }
            }
            LwM2mNode::ObjectInstance(instance) => self.put_instance(object, instance.clone()),
            LwM2mNode::Resource(resource) => {
                let Some(instance_id) = path.instance_id() else {
                    return error(ResponseCode::BAD_REQUEST, "bad path");
                };
                let mut instance = self
                    .staged
                    .instance(object, instance_id)
                    .cloned()
                    .unwrap_or_else(|| LwM2mObjectInstance::new(instance_id, []));
                instance.resources.insert(resource.id, resource.clone());
                self.put_instance(object, instance);
            }
            LwM2mNode::ResourceInstance(_) => {
                return error(
                    ResponseCode::BAD_REQUEST,
                    "resource instances are not written at bootstrap",
                );
            }
        }
        Lwm2mResponse::empty(ResponseCode::CHANGED)
    }

    fn delete(&mut self, path: &LwM2mPath) -> Lwm2mResponse {
        let objects: Vec<u16> = match path.object_id() {
            None => BOOTSTRAP_OBJECTS.to_vec(),
            Some(object) if BOOTSTRAP_OBJECTS.contains(&object) => vec![object],
            Some(_) => return error(ResponseCode::BAD_REQUEST, "not deleted at bootstrap"),
        };
        for object in objects {
            let ids = match path.instance_id() {
                Some(instance) => vec![instance],
                None => self.staged.instance_ids(object),
            };
            for id in ids {
                let protected = object == 0
                    && self
                        .staged
                        .instance(0, id)
                        .is_some_and(is_bootstrap_account);
                if protected {
                    if path.instance_id().is_some() {
                        return error(
                            ResponseCode::BAD_REQUEST,
                            "the Bootstrap-Server account cannot be deleted",
                        );
                    }
                    continue;
                }
                self.staged.remove(object, id);
            }
        }
        Lwm2mResponse::empty(ResponseCode::DELETED)
    }

    /// The staged state is usable: a Bootstrap-Server account and at least one complete
    /// device-management account.
    fn check(&self) -> Result<(), &'static str> {
        let Some(bootstrap) = self.staged.bootstrap_account() else {
            return Err("no Bootstrap-Server account");
        };
        if bootstrap.mode == 0 && (bootstrap.identity.is_empty() || bootstrap.key.is_empty()) {
            return Err("the Bootstrap-Server account has no PSK");
        }
        let accounts = self.staged.dm_accounts();
        if accounts.is_empty() {
            return Err("no LwM2M Server with both a Security and a Server instance");
        }
        if accounts.iter().any(|a| {
            a.account.mode == 0 && (a.account.identity.is_empty() || a.account.key.is_empty())
        }) {
            return Err("a PSK account has no identity or key");
        }
        if self
            .staged
            .instances(0)
            .filter(|i| !is_bootstrap_account(i))
            .count()
            != accounts.len()
        {
            return Err("a Security instance has no Server instance");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_lwm2m::node::LwM2mResource;
    use cairn_lwm2m::{Method, Value};

    fn models() -> Arc<ModelRegistry> {
        Arc::new(ModelRegistry::with_core_models())
    }

    fn session() -> BootstrapSession {
        let factory =
            DeviceState::factory("dev", "coaps://bs", "fid", b"factory-key-01234".to_vec());
        BootstrapSession::new(&factory, models(), vec![3])
    }

    fn coap(request: &BootstrapServerRequest) -> CoapRequest {
        request.to_coap(&*models()).unwrap()
    }

    fn write(path: LwM2mPath, instance: LwM2mObjectInstance) -> CoapRequest {
        coap(&BootstrapServerRequest::Write {
            path,
            format: ContentFormat::SENML_CBOR,
            node: LwM2mNode::ObjectInstance(instance),
        })
    }

    fn security(id: u16, bootstrap: bool, ssid: Option<i64>) -> LwM2mObjectInstance {
        let mut resources = vec![
            LwM2mResource::single(0, Value::String("coaps://x".into())),
            LwM2mResource::single(1, Value::Boolean(bootstrap)),
            LwM2mResource::single(2, Value::Integer(0)),
            LwM2mResource::single(3, Value::Opaque(format!("id-{id}").into_bytes())),
            LwM2mResource::single(5, Value::Opaque(vec![id as u8 + 1; 16])),
        ];
        resources.extend(ssid.map(|s| LwM2mResource::single(10, Value::Integer(s))));
        LwM2mObjectInstance::new(id, resources)
    }

    fn server(id: u16, ssid: i64) -> LwM2mObjectInstance {
        LwM2mObjectInstance::new(
            id,
            [
                LwM2mResource::single(0, Value::Integer(ssid)),
                LwM2mResource::single(1, Value::Integer(60)),
                LwM2mResource::single(7, Value::String("U".into())),
            ],
        )
    }

    #[test]
    fn a_full_sequence_commits_only_at_finish() {
        let mut session = session();
        let finish = coap(&BootstrapServerRequest::Finish);
        // Nothing to register with yet: Finish is refused.
        let refused = session.serve(&finish);
        assert_eq!(refused.response.code, ResponseCode::NOT_ACCEPTABLE);
        assert!(refused.finished.is_none());
        let delete = coap(&BootstrapServerRequest::Delete {
            path: LwM2mPath::Root,
        });
        assert_eq!(session.serve(&delete).response.code, ResponseCode::DELETED);
        assert!(
            session.staged().bootstrap_account().is_some(),
            "the bootstrap account survives Delete /"
        );
        // A new bootstrap account at another instance replaces the factory one.
        let served = session.serve(&write(
            LwM2mPath::ObjectInstance(0, 5),
            security(5, true, None),
        ));
        assert_eq!(served.response.code, ResponseCode::CHANGED);
        assert_eq!(session.staged().instance_ids(0), vec![5]);
        session.serve(&write(
            LwM2mPath::ObjectInstance(0, 1),
            security(1, false, Some(9)),
        ));
        session.serve(&write(LwM2mPath::ObjectInstance(1, 1), server(1, 9)));
        let discover = coap(&BootstrapServerRequest::Discover {
            path: LwM2mPath::Root,
        });
        let links = String::from_utf8(session.serve(&discover).response.payload).unwrap();
        assert!(
            links.contains("</0/1>") && links.contains("</3>"),
            "{links}"
        );
        let read = coap(&BootstrapServerRequest::Read {
            path: LwM2mPath::Object(0),
            accept: None,
        });
        assert_eq!(
            session.serve(&read).response.code,
            ResponseCode::UNAUTHORIZED
        );
        let read = coap(&BootstrapServerRequest::Read {
            path: LwM2mPath::Object(1),
            accept: Some(ContentFormat::SENML_CBOR),
        });
        assert_eq!(session.serve(&read).response.code, ResponseCode::CONTENT);
        let delete_bs = coap(&BootstrapServerRequest::Delete {
            path: LwM2mPath::ObjectInstance(0, 5),
        });
        assert_eq!(
            session.serve(&delete_bs).response.code,
            ResponseCode::BAD_REQUEST
        );
        let done = session.serve(&finish);
        assert_eq!(done.response.code, ResponseCode::CHANGED);
        let state = done.finished.unwrap();
        assert_eq!(state.dm_accounts()[0].short_server_id, 9);
        assert_eq!(state.bootstrap_account().unwrap().identity, b"id-5");
    }

    #[test]
    fn other_objects_and_bad_requests_are_refused() {
        let mut session = session();
        let device = write(
            LwM2mPath::ObjectInstance(3, 0),
            LwM2mObjectInstance::new(0, []),
        );
        assert_eq!(
            session.serve(&device).response.code,
            ResponseCode::METHOD_NOT_ALLOWED
        );
        let mut garbage = CoapRequest::new(Method::Put, &["0", "1"]);
        garbage.content_format = Some(ContentFormat::LWM2M_TLV);
        garbage.payload = vec![0xff; 7];
        assert_eq!(
            session.serve(&garbage).response.code,
            ResponseCode::BAD_REQUEST
        );
        let unpaired = write(LwM2mPath::ObjectInstance(0, 1), security(1, false, Some(4)));
        session.serve(&unpaired);
        let finish = coap(&BootstrapServerRequest::Finish);
        assert_eq!(
            session.serve(&finish).response.code,
            ResponseCode::NOT_ACCEPTABLE
        );
    }

    proptest::proptest! {
        #[test]
        fn any_request_gets_an_answer_without_panicking(
            method in 0usize..4,
            path in proptest::collection::vec("[0-9]{1,3}|bs|x", 0..4),
            format in proptest::option::of(proptest::sample::select(vec![0u16, 40, 60, 110, 112, 11542, 11543, 9999])),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut session = session();
            let method = [Method::Get, Method::Put, Method::Delete, Method::Post][method];
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let mut request = CoapRequest::new(method, &segments);
            request.content_format = format.map(ContentFormat);
            request.accept = format.map(ContentFormat);
            request.payload = payload;
            let served = session.serve(&request);
            proptest::prop_assert!(served.response.code.class >= 2);
        }
    }
}
