//! The sans-IO LwM2M client: its objects, one [`Registration`] per server, the
//! observations each server holds, and the Device Management requests servers send
//! (OMA LwM2M Core 1.2 §6.3 and §6.4, Transport 1.2 §6.4).
//!
//! A driver feeds it time ([`ClientCore::handle_timeout`]), responses to its requests
//! ([`ClientCore::handle_response`]) and requests from servers ([`ClientCore::serve`]);
//! it takes out requests ([`ClientCore::poll_request`]), notifications
//! ([`ClientCore::poll_notification`]), events ([`ClientCore::poll_event`]) and the next
//! deadline ([`ClientCore::poll_timeout`]). No sockets, no clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use cairn_coap::ContentFormat;
use cairn_lwm2m::content::SUPPORTED_FORMATS;
use cairn_lwm2m::operations::{Lwm2mResponse, ResponseContent};
use cairn_lwm2m::{
    AttributeSet, ClientRequest, CoapRequest, CoapResponse, LwM2mNode, LwM2mPath, OperationError,
    ResponseCode, ServerRequest, Version, WriteMode,
};

use crate::access::{self, Right};
use crate::error::ClientError;
use crate::object::{ClientAction, ObjectError};
use crate::objects::{ids, server_resources};
use crate::observe::{CompositeObservation, NotificationAttributes, Observation};
use crate::registration::{Registration, RegistrationEvent, RegistrationSettings, RequestFailure};
use crate::tree::ObjectTree;

/// A server account of the client (index in the order servers were added).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub usize);

/// Identifies a request of the client until its response is handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestToken(u64);

/// A request for the driver to send.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingRequest {
    /// Hand this back with the response.
    pub token: RequestToken,
    /// The server it goes to.
    pub server: ServerId,
    /// The operation.
    pub request: ClientRequest,
    /// Its CoAP request parts.
    pub coap: CoapRequest,
}

/// A notification for the driver to send to the observers of `path` on `server`.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The server holding the observation.
    pub server: ServerId,
    /// The Uri-Path of the observed resource (`/3/0/13`).
    pub path: String,
    /// For an Observe-Composite, the body of the FETCH that registered it (its identity
    /// beside the path, RFC 8132 §2.4); `None` for an Observe.
    pub fetch_body: Option<Vec<u8>>,
    /// The notification's response parts (2.05 with content, or an error that ends it).
    pub response: CoapResponse,
}

/// Something the application (or its log) wants to know.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A registration changed.
    Registration {
        /// The server.
        server: ServerId,
        /// What happened.
        event: RegistrationEvent,
    },
    /// An Execute asks for something of the whole client (reboot, factory reset).
    Action(ClientAction),
    /// A Send completed.
    SendCompleted {
        /// The server.
        server: ServerId,
        /// The response code, or why there was none.
        result: Result<ResponseCode, RequestFailure>,
    },
}

/// One server account: its registration, attributes and observations.
#[derive(Debug)]
struct ServerSession {
    short_server_id: u16,
    registration: Registration,
    attributes: BTreeMap<LwM2mPath, AttributeSet>,
    observations: Vec<Observation>,
    composites: Vec<CompositeObservation>,
}

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Registration,
    Send,
}

/// The client's protocol state, independent of any runtime.
#[derive(Debug)]
pub struct ClientCore {
    tree: ObjectTree,
    servers: Vec<ServerSession>,
    next_token: u64,
    in_flight: HashMap<RequestToken, (ServerId, Purpose)>,
    outgoing: VecDeque<OutgoingRequest>,
    events: VecDeque<Event>,
    evaluation_period: Duration,
}

impl ClientCore {
    /// A client hosting `tree`; add servers with [`ClientCore::add_server`].
    pub fn new(tree: ObjectTree) -> ClientCore {
        ClientCore {
            tree,
            servers: Vec::new(),
            next_token: 0,
            in_flight: HashMap::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            evaluation_period: Duration::from_secs(1),
        }
    }

    /// How often observed values are re-read when no attribute asks for less (1 s).
    pub fn set_evaluation_period(&mut self, period: Duration) {
        self.evaluation_period = period.max(Duration::from_millis(10));
    }

    /// Adds a server account; registration starts at the next [`ClientCore::handle_timeout`].
    pub fn add_server(
        &mut self,
        short_server_id: u16,
        mut settings: RegistrationSettings,
    ) -> ServerId {
        settings.lwm2m_version = self.tree.lwm2m_version();
        let objects = self.tree.registered_objects();
        self.servers.push(ServerSession {
            short_server_id,
            registration: Registration::new(settings, objects),
            attributes: BTreeMap::new(),
            observations: Vec::new(),
            composites: Vec::new(),
        });
        ServerId(self.servers.len() - 1)
    }

    /// The objects.
    pub fn objects(&self) -> &ObjectTree {
        &self.tree
    }

    /// The objects, for the application to change values (then call [`ClientCore::changed`]).
    pub fn objects_mut(&mut self) -> &mut ObjectTree {
        &mut self.tree
    }

    /// A server's registration.
    pub fn registration(&self, server: ServerId) -> Option<&Registration> {
        self.servers.get(server.0).map(|s| &s.registration)
    }

    /// The servers.
    pub fn server_ids(&self) -> impl Iterator<Item = ServerId> + use<> {
        (0..self.servers.len()).map(ServerId)
    }

    /// Have all registrations ended (de-registered or failed)?
    pub fn is_finished(&self) -> bool {
        self.servers.iter().all(|s| s.registration.is_finished())
    }

    /// De-registers from every server.
    pub fn deregister(&mut self) {
        for session in &mut self.servers {
            session.registration.deregister();
        }
        self.collect_requests();
    }

    /// Sends an Update to every server (e.g. after the application changed objects).
    pub fn trigger_update(&mut self) {
        let objects = self.tree.registered_objects();
        for session in &mut self.servers {
            session.registration.set_objects(objects.clone());
            session.registration.trigger_update();
        }
    }

    /// The application changed the value at `path`: observations of it (and of the nodes
    /// above or below it) are evaluated at the next timeout.
    pub fn changed(&mut self, now: Duration, path: &LwM2mPath) {
        for session in &mut self.servers {
            for observation in &mut session.observations {
                if observation.path.starts_with(path) || path.starts_with(&observation.path) {
                    observation.next_check = observation.next_check.min(now);
                }
            }
            for composite in &mut session.composites {
                if composite.concerns(path) {
                    composite.next_check = composite.next_check.min(now);
                }
            }
        }
    }

    /// Reports the current values of `paths` to `server` with Send (Core §6.4.3, SenML
    /// CBOR; LwM2M 1.1 and later).
    pub fn send(&mut self, server: ServerId, paths: &[LwM2mPath]) -> Result<(), ClientError> {
        if self.tree.lwm2m_version() < Version::V1_1 {
            return Err(ClientError::NotSupported("Send needs LwM2M 1.1"));
        }
        let session = self
            .servers
            .get(server.0)
            .ok_or(ClientError::UnknownServer)?;
        if !session.registration.is_registered() {
            return Err(ClientError::NotRegistered);
        }
        let mut nodes = BTreeMap::new();
        for path in paths {
            let node = self.tree.read(path).map_err(|source| ClientError::Object {
                path: *path,
                source,
            })?;
            nodes.insert(*path, node);
        }
        let request = ClientRequest::Send {
            format: ContentFormat::SENML_CBOR,
            nodes,
        };
        self.enqueue(server, Purpose::Send, request)?;
        Ok(())
    }

    /// The next request to send.
    pub fn poll_request(&mut self) -> Option<OutgoingRequest> {
        self.collect_requests();
        self.outgoing.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        for (index, session) in self.servers.iter_mut().enumerate() {
            while let Some(event) = session.registration.poll_event() {
                self.events.push_back(Event::Registration {
                    server: ServerId(index),
                    event,
                });
            }
        }
        self.events.pop_front()
    }

    /// When [`ClientCore::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let registrations = self
            .servers
            .iter()
            .filter_map(|s| s.registration.poll_timeout());
        let observations = self
            .servers
            .iter()
            .filter(|s| s.registration.is_registered())
            .flat_map(|s| {
                let single = s.observations.iter().map(|o| o.next_check);
                single.chain(s.composites.iter().map(|c| c.next_check))
            });
        registrations.chain(observations).min()
    }

    /// Advances the registrations' timers.
    pub fn handle_timeout(&mut self, now: Duration) {
        for session in &mut self.servers {
            session.registration.handle_timeout(now);
        }
        self.collect_requests();
    }

    /// Hands back the response to a request (or why there was none).
    pub fn handle_response(
        &mut self,
        now: Duration,
        token: RequestToken,
        result: Result<CoapResponse, RequestFailure>,
    ) {
        let Some((server, purpose)) = self.in_flight.remove(&token) else {
            return;
        };
        let Some(session) = self.servers.get_mut(server.0) else {
            return;
        };
        match purpose {
            Purpose::Registration => {
                let was_registered = session.registration.is_registered();
                session.registration.handle_response(now, result);
                if was_registered && !session.registration.is_registered() {
                    // A new registration starts without the old one's observations.
                    session.observations.clear();
                    session.composites.clear();
                }
            }
            Purpose::Send => self.events.push_back(Event::SendCompleted {
                server,
                result: result.map(|r| r.code),
            }),
        }
        self.collect_requests();
    }

    /// The next notification due at `now`.
    pub fn poll_notification(&mut self, now: Duration) -> Option<Notification> {
        if let Some(notification) = self.poll_composite_notification(now) {
            return Some(notification);
        }
        let period = self.evaluation_period;
        loop {
            // Each evaluation moves the observation's next check past `now`, so this ends.
            let (index, position) = self
                .servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.registration.is_registered())
                .find_map(|(i, s)| {
                    let due = s.observations.iter().position(|o| o.next_check <= now)?;
                    Some((i, due))
                })?;
            let path = self.servers[index].observations[position].path;
            let attributes = self.attributes_for(&self.servers[index], &path);
            let server = ServerId(index);
            let current = match self.tree.read(&path) {
                Ok(current) => current,
                Err(error) => {
                    self.servers[index].observations.remove(position);
                    return Some(Notification {
                        server,
                        path: uri_path(&path),
                        fetch_body: None,
                        response: CoapResponse::new(error.code()),
                    });
                }
            };
            let session = &mut self.servers[index];
            let observation = &mut session.observations[position];
            if !observation.evaluate(now, &current, &attributes, period) {
                continue;
            }
            let format = observation.format;
            if session.registration.is_asleep() {
                // Queue mode: wake with an Update; the notification follows.
                session.registration.wake();
            }
            return Some(Notification {
                server,
                path: uri_path(&path),
                fetch_body: None,
                response: encode_content(&self.tree, &path, current, format),
            });
        }
    }

    /// The next Observe-Composite notification due at `now`.
    fn poll_composite_notification(&mut self, now: Duration) -> Option<Notification> {
        let period = self.evaluation_period;
        loop {
            let (index, position) = self
                .servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.registration.is_registered())
                .find_map(|(i, s)| {
                    let due = s.composites.iter().position(|c| c.next_check <= now)?;
                    Some((i, due))
                })?;
            let paths: Vec<LwM2mPath> = self.servers[index].composites[position]
                .members
                .iter()
                .map(|m| m.path)
                .collect();
            let attributes: Vec<_> = paths
                .iter()
                .map(|p| self.attributes_for(&self.servers[index], p))
                .collect();
            let current: Vec<Option<LwM2mNode>> =
                paths.iter().map(|p| self.tree.read(p).ok()).collect();
            let session = &mut self.servers[index];
            let composite = &mut session.composites[position];
            if !composite.evaluate(now, &current, &attributes, period) {
                continue;
            }
            let nodes: BTreeMap<LwM2mPath, LwM2mNode> = paths
                .iter()
                .zip(current)
                .filter_map(|(path, node)| Some((*path, node?)))
                .collect();
            let request = ServerRequest::ObserveComposite {
                paths: paths.clone(),
                format: composite.format,
                accept: Some(composite.format),
            };
            let fetch_body = composite.body.clone();
            if session.registration.is_asleep() {
                session.registration.wake();
            }
            let response = Lwm2mResponse::with_content(
                ResponseCode::CONTENT,
                ResponseContent::Nodes(nodes),
                Some(request_format(&request)),
            );
            let response = request
                .encode_response(&response, &self.tree)
                .unwrap_or_else(|_| CoapResponse::new(ResponseCode::INTERNAL_SERVER_ERROR));
            return Some(Notification {
                server: ServerId(index),
                path: uri_path(&LwM2mPath::Root),
                fetch_body: Some(fetch_body),
                response,
            });
        }
    }

    /// The transport has no observer left for `path` (the server cancelled with Reset or
    /// forgot it): stop evaluating it.
    pub fn observation_gone(&mut self, server: ServerId, path: &str) {
        if let Some(session) = self.servers.get_mut(server.0) {
            session.observations.retain(|o| uri_path(&o.path) != path);
        }
    }

    /// [`ClientCore::observation_gone`] for an Observe-Composite, by the FETCH body that
    /// registered it.
    pub fn composite_observation_gone(&mut self, server: ServerId, fetch_body: &[u8]) {
        if let Some(session) = self.servers.get_mut(server.0) {
            session.composites.retain(|c| c.body != fetch_body);
        }
    }

    /// Answers a request from `server` (Device Management and Information Reporting).
    pub fn serve(
        &mut self,
        now: Duration,
        server: ServerId,
        request: &CoapRequest,
    ) -> CoapResponse {
        if server.0 >= self.servers.len() {
            return CoapResponse::new(ResponseCode::UNAUTHORIZED);
        }
        self.servers[server.0].registration.touch(now);
        let operation = match ServerRequest::from_coap(request, &self.tree) {
            Ok(operation) => operation,
            Err(error) => return request_error(&error),
        };
        let response = match self.operate(now, server, &operation, &request.payload) {
            Ok(response) => response,
            Err(error) => Lwm2mResponse::error(error.code(), Some(error.to_string())),
        };
        match operation.encode_response(&response, &self.tree) {
            Ok(coap) => coap,
            Err(OperationError::Codec(_)) => CoapResponse::new(ResponseCode::NOT_ACCEPTABLE),
            Err(_) => CoapResponse::new(ResponseCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn operate(
        &mut self,
        now: Duration,
        server: ServerId,
        operation: &ServerRequest,
        body: &[u8],
    ) -> Result<Lwm2mResponse, ObjectError> {
        let changed = ResponseCode::CHANGED;
        self.check_access(server, operation)?;
        Ok(match operation {
            ServerRequest::Read { path, accept } => {
                let format = self.format_for(*accept)?;
                let node = self.tree.read(path)?;
                check_encodable(&self.tree, path, &node, format)?;
                content(node, format)
            }
            ServerRequest::Discover { path } => {
                let links = self
                    .tree
                    .discover(path, &self.servers[server.0].attributes)?;
                Lwm2mResponse::with_content(
                    ResponseCode::CONTENT,
                    ResponseContent::Links(links),
                    None,
                )
            }
            ServerRequest::Write {
                path, mode, node, ..
            } => {
                self.tree.write(path, *mode, node.clone())?;
                self.after_write(now, path);
                Lwm2mResponse::empty(changed)
            }
            ServerRequest::WriteAttributes { path, attributes } => {
                if path.depth() <= 3 {
                    // The target must exist (and be accessible).
                    self.tree.discover(path, &BTreeMap::new())?;
                }
                let model = path.resource_id().and_then(|r| {
                    cairn_lwm2m::ModelLookup::resource(&self.tree, path.object_id()?, r)
                });
                attributes
                    .validate_write(path, model)
                    .map_err(|e| ObjectError::BadRequest(e.to_string()))?;
                let session = &mut self.servers[server.0];
                session
                    .attributes
                    .entry(*path)
                    .or_default()
                    .apply(attributes);
                for observation in &mut session.observations {
                    if observation.path.starts_with(path) {
                        observation.next_check = now;
                    }
                }
                Lwm2mResponse::empty(changed)
            }
            ServerRequest::Execute { path, arguments } => {
                if let Some(action) = self.tree.execute(path, arguments)? {
                    self.act(action);
                }
                Lwm2mResponse::empty(changed)
            }
            ServerRequest::Create { .. } | ServerRequest::CreateWithoutId { .. } => {
                let (path, instances) = match operation {
                    ServerRequest::CreateWithoutId {
                        path, resources, ..
                    } => {
                        // The client picks the id: the lowest one not in use (Core §6.3.6).
                        let id = self.free_instance_id(path)?;
                        (
                            path,
                            vec![cairn_lwm2m::node::LwM2mObjectInstance::new(
                                id,
                                resources.iter().cloned(),
                            )],
                        )
                    }
                    ServerRequest::Create {
                        path, instances, ..
                    } => (path, instances.clone()),
                    _ => return Err(ObjectError::MethodNotAllowed),
                };
                let created = self.tree.create(path, instances)?;
                self.objects_changed();
                let location = match created.as_slice() {
                    [one] => vec![
                        path.object_id().unwrap_or_default().to_string(),
                        one.to_string(),
                    ],
                    _ => Vec::new(),
                };
                Lwm2mResponse::with_content(
                    ResponseCode::CREATED,
                    ResponseContent::Location(location),
                    None,
                )
            }
            ServerRequest::Delete { path } => {
                self.tree.delete(path)?;
                for session in &mut self.servers {
                    session.observations.retain(|o| !o.path.starts_with(path));
                }
                self.objects_changed();
                Lwm2mResponse::empty(ResponseCode::DELETED)
            }
            ServerRequest::ReadComposite { paths, accept, .. } => {
                let format = accept.unwrap_or(ContentFormat::SENML_CBOR);
                let mut nodes = BTreeMap::new();
                for path in paths {
                    match self.tree.read(path) {
                        Ok(node) => {
                            nodes.insert(*path, node);
                        }
                        Err(ObjectError::NotFound) => {}
                        Err(error) => return Err(error),
                    }
                }
                Lwm2mResponse::with_content(
                    ResponseCode::CONTENT,
                    ResponseContent::Nodes(nodes),
                    Some(format),
                )
            }
            ServerRequest::WriteComposite { nodes, .. } => {
                for (path, node) in nodes {
                    self.tree
                        .write(path, WriteMode::PartialUpdate, node.clone())?;
                    self.after_write(now, path);
                }
                Lwm2mResponse::empty(changed)
            }
            ServerRequest::Observe { path, accept } => {
                let format = self.format_for(*accept)?;
                let node = self.tree.read(path)?;
                check_encodable(&self.tree, path, &node, format)?;
                let session = &mut self.servers[server.0];
                session.observations.retain(|o| o.path != *path);
                session
                    .observations
                    .push(Observation::new(*path, format, node.clone(), now));
                let attributes = self.attributes_for(&self.servers[server.0], path);
                if let Some(observation) = self.servers[server.0].observations.last_mut() {
                    observation.next_check = now + attributes.pmin.max(self.evaluation_period);
                }
                content(node, format)
            }
            ServerRequest::CancelObservation { path, accept } => {
                self.servers[server.0]
                    .observations
                    .retain(|o| o.path != *path);
                let format = self.format_for(*accept)?;
                content(self.tree.read(path)?, format)
            }
            ServerRequest::ObserveComposite { paths, accept, .. } => {
                let format = accept.unwrap_or(ContentFormat::SENML_CBOR);
                if !matches!(
                    format,
                    ContentFormat::SENML_CBOR
                        | ContentFormat::SENML_JSON
                        | ContentFormat::LWM2M_CBOR
                ) {
                    return Err(ObjectError::NotAcceptable);
                }
                let mut nodes = BTreeMap::new();
                let mut members = Vec::new();
                for path in paths {
                    match self.tree.read(path) {
                        Ok(node) => {
                            members.push(Observation::new(*path, format, node.clone(), now));
                            nodes.insert(*path, node);
                        }
                        Err(ObjectError::NotFound) => {
                            members.push(Observation::new(
                                *path,
                                format,
                                LwM2mNode::Object(cairn_lwm2m::node::LwM2mObject::new(0, [])),
                                now,
                            ));
                        }
                        Err(error) => return Err(error),
                    }
                }
                let session = &mut self.servers[server.0];
                session.composites.retain(|c| c.body != body);
                let mut composite = CompositeObservation {
                    members,
                    format,
                    body: body.to_vec(),
                    next_check: now,
                };
                let attributes: Vec<_> = paths
                    .iter()
                    .map(|p| self.attributes_for(&self.servers[server.0], p))
                    .collect();
                composite.schedule_first(now, &attributes, self.evaluation_period);
                self.servers[server.0].composites.push(composite);
                Lwm2mResponse::with_content(
                    ResponseCode::CONTENT,
                    ResponseContent::Nodes(nodes),
                    Some(format),
                )
            }
            ServerRequest::CancelObserveComposite { paths, accept, .. } => {
                let session = &mut self.servers[server.0];
                session
                    .composites
                    .retain(|c| !c.members.iter().map(|m| m.path).eq(paths.iter().copied()));
                let format = accept.unwrap_or(ContentFormat::SENML_CBOR);
                let mut nodes = BTreeMap::new();
                for path in paths {
                    if let Ok(node) = self.tree.read(path) {
                        nodes.insert(*path, node);
                    }
                }
                Lwm2mResponse::with_content(
                    ResponseCode::CONTENT,
                    ResponseContent::Nodes(nodes),
                    Some(format),
                )
            }
        })
    }

    /// The lowest instance id of the object at `path` that no instance uses.
    fn free_instance_id(&self, path: &LwM2mPath) -> Result<u16, ObjectError> {
        let object = path.object_id().ok_or(ObjectError::MethodNotAllowed)?;
        let used: Vec<u16> = match self.tree.read(&LwM2mPath::Object(object)) {
            Ok(LwM2mNode::Object(existing)) => existing.instances.keys().copied().collect(),
            _ => Vec::new(),
        };
        (0..u16::MAX)
            .find(|id| !used.contains(id))
            .ok_or(ObjectError::MethodNotAllowed)
    }

    fn check_access(&self, server: ServerId, operation: &ServerRequest) -> Result<(), ObjectError> {
        let short_server_id = self.servers[server.0].short_server_id;
        let count = self.servers.len();
        let check = |path: &LwM2mPath, right| {
            access::check(&self.tree, count, short_server_id, path, right)
        };
        match operation {
            ServerRequest::Read { path, .. }
            | ServerRequest::Discover { path }
            | ServerRequest::WriteAttributes { path, .. }
            | ServerRequest::Observe { path, .. }
            | ServerRequest::CancelObservation { path, .. } => check(path, Right::Read),
            ServerRequest::Write { path, .. } => check(path, Right::Write),
            ServerRequest::Execute { path, .. } => check(path, Right::Execute),
            ServerRequest::Create { path, .. } | ServerRequest::CreateWithoutId { path, .. } => {
                check(path, Right::Create)
            }
            ServerRequest::Delete { path } => check(path, Right::Delete),
            ServerRequest::ReadComposite { paths, .. } => {
                paths.iter().try_for_each(|p| check(p, Right::Read))
            }
            ServerRequest::WriteComposite { nodes, .. } => {
                nodes.keys().try_for_each(|p| check(p, Right::Write))
            }
            ServerRequest::ObserveComposite { .. }
            | ServerRequest::CancelObserveComposite { .. } => Ok(()),
        }
    }

    /// The format of a Read or Observe response: the Accept if it is a data format,
    /// otherwise SenML CBOR for LwM2M 1.1 and later, TLV for 1.0.
    fn format_for(&self, accept: Option<ContentFormat>) -> Result<ContentFormat, ObjectError> {
        match accept {
            Some(format) if SUPPORTED_FORMATS.contains(&format) => Ok(format),
            Some(_) => Err(ObjectError::NotAcceptable),
            None if self.tree.lwm2m_version() >= Version::V1_1 => Ok(ContentFormat::SENML_CBOR),
            None => Ok(ContentFormat::LWM2M_TLV),
        }
    }

    fn attributes_for(&self, session: &ServerSession, path: &LwM2mPath) -> NotificationAttributes {
        let mut levels = Vec::new();
        let mut ancestor = Some(*path);
        while let Some(level) = ancestor.filter(|p| !p.is_root()) {
            if let Some(set) = session.attributes.get(&level) {
                levels.push(set);
            }
            ancestor = Some(level.parent());
        }
        levels.reverse();
        let instance = self.tree.server_instance(session.short_server_id);
        let default = |resource| {
            instance
                .and_then(|i| self.tree.server_integer(i, resource))
                .and_then(|v| u64::try_from(v).ok())
        };
        NotificationAttributes::resolve(
            levels,
            default(server_resources::DEFAULT_PMIN),
            default(server_resources::DEFAULT_PMAX),
        )
    }

    fn after_write(&mut self, now: Duration, path: &LwM2mPath) {
        self.changed(now, path);
        if path.object_id() != Some(ids::SERVER) {
            return;
        }
        for session in &mut self.servers {
            let lifetime = self
                .tree
                .server_instance(session.short_server_id)
                .and_then(|i| self.tree.server_integer(i, server_resources::LIFETIME))
                .and_then(|v| u32::try_from(v).ok());
            if let Some(lifetime) = lifetime {
                session.registration.set_lifetime(lifetime);
            }
        }
    }

    fn objects_changed(&mut self) {
        let objects = self.tree.registered_objects();
        for session in &mut self.servers {
            session.registration.set_objects(objects.clone());
        }
    }

    fn act(&mut self, action: ClientAction) {
        match action {
            ClientAction::RegistrationUpdate { short_server_id } => {
                if let Some(session) = self.session_by_ssid(short_server_id) {
                    session.registration.trigger_update();
                }
            }
            ClientAction::Disable { short_server_id } => {
                if let Some(session) = self.session_by_ssid(short_server_id) {
                    session.registration.deregister();
                }
            }
            ClientAction::Reboot
            | ClientAction::FactoryReset
            | ClientAction::BootstrapRequest { .. } => {}
        }
        self.events.push_back(Event::Action(action));
    }

    fn session_by_ssid(&mut self, short_server_id: u16) -> Option<&mut ServerSession> {
        self.servers
            .iter_mut()
            .find(|s| s.short_server_id == short_server_id)
    }

    fn collect_requests(&mut self) {
        for index in 0..self.servers.len() {
            while let Some(request) = self.servers[index].registration.poll_request() {
                if let Err(error) = self.enqueue(ServerId(index), Purpose::Registration, request) {
                    // Only Send payloads can fail to encode; registration requests cannot.
                    self.events.push_back(Event::Registration {
                        server: ServerId(index),
                        event: RegistrationEvent::RequestFailed {
                            operation: "Register",
                            reason: error.to_string(),
                        },
                    });
                }
            }
        }
    }

    fn enqueue(
        &mut self,
        server: ServerId,
        purpose: Purpose,
        request: ClientRequest,
    ) -> Result<RequestToken, ClientError> {
        let coap = request.to_coap()?;
        let token = RequestToken(self.next_token);
        self.next_token += 1;
        self.in_flight.insert(token, (server, purpose));
        self.outgoing.push_back(OutgoingRequest {
            token,
            server,
            request,
            coap,
        });
        Ok(token)
    }
}

fn content(node: LwM2mNode, format: ContentFormat) -> Lwm2mResponse {
    Lwm2mResponse::with_content(
        ResponseCode::CONTENT,
        ResponseContent::Node(node),
        Some(format),
    )
}

fn check_encodable(
    tree: &ObjectTree,
    path: &LwM2mPath,
    node: &LwM2mNode,
    format: ContentFormat,
) -> Result<(), ObjectError> {
    cairn_lwm2m::encode(node, path, format, tree)
        .map(|_| ())
        .map_err(|_| ObjectError::NotAcceptable)
}

fn encode_content(
    tree: &ObjectTree,
    path: &LwM2mPath,
    node: LwM2mNode,
    format: ContentFormat,
) -> CoapResponse {
    match cairn_lwm2m::encode(&node, path, format, tree) {
        Ok(payload) => CoapResponse {
            content_format: Some(format),
            payload,
            ..CoapResponse::new(ResponseCode::CONTENT)
        },
        Err(_) => CoapResponse::new(ResponseCode::INTERNAL_SERVER_ERROR),
    }
}

/// The response to a request that is not a valid operation.
fn request_error(error: &OperationError) -> CoapResponse {
    let code = match error {
        OperationError::Codec(cairn_lwm2m::CodecError::UnsupportedFormat(_)) => {
            ResponseCode::UNSUPPORTED_CONTENT_FORMAT
        }
        OperationError::NotAnOperation { .. } => ResponseCode::METHOD_NOT_ALLOWED,
        _ => ResponseCode::BAD_REQUEST,
    };
    CoapResponse {
        payload: error.to_string().into_bytes(),
        ..CoapResponse::new(code)
    }
}

/// `/3/0/13` for a path.
/// The content format a composite request's notifications are encoded in.
fn request_format(request: &ServerRequest) -> ContentFormat {
    match request {
        ServerRequest::ObserveComposite { accept, format, .. } => accept.unwrap_or(*format),
        _ => ContentFormat::SENML_CBOR,
    }
}

fn uri_path(path: &LwM2mPath) -> String {
    path.to_string()
}
