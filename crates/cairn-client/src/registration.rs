//! The registration of a client with one LwM2M Server (OMA LwM2M Core 1.2 §6.2 "Client
//! Registration Interface"): Register, periodic Update before the lifetime expires,
//! De-register; retries with exponential backoff, re-registration when the server has
//! forgotten the client (Update answered 4.04), and queue mode (§6.5: the client sleeps
//! after an awake period and wakes by sending an Update).
//!
//! Sans-IO: time comes in as `now` (a monotonic offset from any origin), responses come
//! in through [`Registration::handle_response`]; requests go out through
//! [`Registration::poll_request`], and [`Registration::poll_timeout`] says when to call
//! [`Registration::handle_timeout`] next.

use std::collections::VecDeque;
use std::mem;
use std::time::Duration;

use cairn_coap::ContentFormat;
use cairn_lwm2m::{
    ClientRequest, CoapResponse, RegisteredObject, RegistrationParameters, ResponseCode, Version,
};

/// The data formats a client of LwM2M 1.1 and later announces with `ct` on the
/// `rt="oma.lwm2m"` link of its registration (Core 1.2 §6.2.1.1); text/plain, opaque and
/// CBOR single values are always supported.
const CONTENT_FORMATS: [ContentFormat; 5] = [
    ContentFormat::SENML_CBOR,
    ContentFormat::SENML_JSON,
    ContentFormat::LWM2M_CBOR,
    ContentFormat::LWM2M_TLV,
    ContentFormat::LWM2M_JSON,
];

/// How failed Register (and Update) requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure; it doubles after each further one.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Register attempts before giving up (`None`: never give up).
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` failures (from 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << exponent).min(self.max)
    }
}

/// What a client registers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationSettings {
    /// Endpoint client name (`ep`).
    pub endpoint: String,
    /// LwM2M version (`lwm2m`).
    pub lwm2m_version: Version,
    /// Lifetime, seconds (`lt`).
    pub lifetime: u32,
    /// Binding (`b`): `U`; LwM2M 1.0 writes queue mode as `UQ`.
    pub binding: String,
    /// Queue mode (`Q` in LwM2M 1.1 and later).
    pub queue_mode: bool,
    /// How long a queue-mode client stays awake after a message (Transport §6.5:
    /// MAX_TRANSMIT_WAIT, 93 s by default).
    pub awake_time: Duration,
    /// Retries.
    pub retry: RetryPolicy,
}

impl RegistrationSettings {
    /// Settings for `endpoint` with the defaults: LwM2M 1.1, 300 s lifetime, binding U.
    pub fn new(endpoint: impl Into<String>) -> RegistrationSettings {
        RegistrationSettings {
            endpoint: endpoint.into(),
            lwm2m_version: Version::V1_1,
            lifetime: 300,
            binding: "U".into(),
            queue_mode: false,
            awake_time: Duration::from_secs(93),
            retry: RetryPolicy::default(),
        }
    }

    /// When to send the Update that keeps a registration of this lifetime alive: 10 s
    /// before it expires, or at 90 % of it for long lifetimes, never later than the
    /// lifetime itself.
    pub fn update_delay(&self) -> Duration {
        let lifetime = Duration::from_secs(u64::from(self.lifetime));
        let margin = (lifetime / 10).max(Duration::from_secs(10).min(lifetime / 2));
        (lifetime - margin).max(Duration::from_secs(1))
    }
}

/// Why a request got no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// No response within the CoAP retransmission window.
    #[error("timed out")]
    Timeout,
    /// The peer reset the exchange, or the transport failed.
    #[error("transport failure: {0}")]
    Transport(String),
}

/// The state of a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not registered; Register goes out at the next timeout.
    Unregistered,
    /// A Register request is in flight.
    Registering {
        /// Failures so far.
        failures: u32,
    },
    /// Waiting to retry Register after failures.
    Backoff {
        /// Failures so far.
        failures: u32,
        /// When to retry.
        retry_at: Duration,
    },
    /// Registered.
    Registered {
        /// The registration's Location-Path (`rd/<id>`).
        location: Vec<String>,
        /// When the next Update goes out.
        update_at: Duration,
        /// When the server forgets the registration without an Update.
        expires_at: Duration,
        /// Failed Updates since the last success.
        failures: u32,
    },
    /// An Update request is in flight.
    Updating {
        /// The registration's Location-Path.
        location: Vec<String>,
        /// When the registration expires.
        expires_at: Duration,
        /// Failed Updates before this one.
        failures: u32,
    },
    /// A De-register request is in flight.
    Deregistering,
    /// De-registered (or never registered and asked to stop).
    Deregistered,
    /// Register failed `max_attempts` times.
    Failed,
}

impl RegistrationState {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            RegistrationState::Unregistered => "unregistered",
            RegistrationState::Registering { .. } => "registering",
            RegistrationState::Backoff { .. } => "backoff",
            RegistrationState::Registered { .. } => "registered",
            RegistrationState::Updating { .. } => "updating",
            RegistrationState::Deregistering => "deregistering",
            RegistrationState::Deregistered => "deregistered",
            RegistrationState::Failed => "failed",
        }
    }
}

/// Something that happened to a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// The state changed (to the named state).
    StateChanged(&'static str),
    /// Register succeeded, `latency` after the first attempt.
    Registered {
        /// Location-Path.
        location: Vec<String>,
        /// Time from the first Register to its success.
        latency: Duration,
    },
    /// An Update succeeded.
    Updated,
    /// A Register or Update failed (it will be retried unless the state is Failed).
    RequestFailed {
        /// The operation.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// Queue mode: the awake period is over, the client may sleep.
    Sleeping,
    /// De-registered.
    Deregistered,
}

/// The registration state machine for one server.
#[derive(Debug)]
pub struct Registration {
    settings: RegistrationSettings,
    state: RegistrationState,
    objects: Vec<RegisteredObject>,
    outgoing: Option<ClientRequest>,
    in_flight: bool,
    first_attempt: Option<Duration>,
    awake_until: Option<Duration>,
    asleep: bool,
    update_requested: bool,
    objects_changed: bool,
    lifetime_changed: bool,
    deregister_requested: bool,
    events: VecDeque<RegistrationEvent>,
}

impl Registration {
    /// A registration that starts at the first [`Registration::handle_timeout`].
    pub fn new(settings: RegistrationSettings, objects: Vec<RegisteredObject>) -> Registration {
        Registration {
            settings,
            state: RegistrationState::Unregistered,
            objects,
            outgoing: None,
            in_flight: false,
            first_attempt: None,
            awake_until: None,
            asleep: false,
            update_requested: false,
            objects_changed: false,
            lifetime_changed: false,
            deregister_requested: false,
            events: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &RegistrationState {
        &self.state
    }

    /// The settings.
    pub fn settings(&self) -> &RegistrationSettings {
        &self.settings
    }

    /// Registered (or updating an existing registration)?
    pub fn is_registered(&self) -> bool {
        matches!(
            self.state,
            RegistrationState::Registered { .. } | RegistrationState::Updating { .. }
        )
    }

    /// De-registered or failed: nothing more will happen.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            RegistrationState::Deregistered | RegistrationState::Failed
        )
    }

    /// Queue mode: is the client asleep?
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// The next request to send, once.
    pub fn poll_request(&mut self) -> Option<ClientRequest> {
        let request = self.outgoing.take()?;
        self.in_flight = true;
        Some(request)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RegistrationEvent> {
        self.events.pop_front()
    }

    /// When [`Registration::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.in_flight || self.outgoing.is_some() {
            return None;
        }
        match &self.state {
            RegistrationState::Unregistered => Some(Duration::ZERO),
            RegistrationState::Backoff { retry_at, .. } => Some(*retry_at),
            RegistrationState::Registered { update_at, .. } => {
                if self.update_requested || self.objects_changed || self.lifetime_changed {
                    return Some(Duration::ZERO);
                }
                let sleep = self.awake_until.filter(|_| !self.asleep);
                Some(sleep.map_or(*update_at, |s| s.min(*update_at)))
            }
            _ => None,
        }
    }

    /// Advances timers: first Register, retries, Updates, queue-mode sleep.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.in_flight || self.outgoing.is_some() {
            return;
        }
        match &self.state {
            RegistrationState::Unregistered if !self.deregister_requested => self.register(now, 0),
            RegistrationState::Backoff { failures, retry_at } if now >= *retry_at => {
                self.register(now, *failures);
            }
            RegistrationState::Registered {
                update_at,
                location,
                expires_at,
                failures,
            } => {
                let due = now >= *update_at
                    || self.update_requested
                    || self.objects_changed
                    || self.lifetime_changed;
                if due {
                    let (location, expires_at, failures) =
                        (location.clone(), *expires_at, *failures);
                    self.update(location, expires_at, failures);
                } else if self.settings.queue_mode
                    && !self.asleep
                    && self.awake_until.is_some_and(|t| now >= t)
                {
                    self.asleep = true;
                    self.events.push_back(RegistrationEvent::Sleeping);
                }
            }
            _ => {}
        }
    }

    /// Handles the response to the request last polled, or its failure.
    pub fn handle_response(&mut self, now: Duration, result: Result<CoapResponse, RequestFailure>) {
        if !self.in_flight {
            return;
        }
        self.in_flight = false;
        if self.settings.queue_mode {
            self.awake_until = Some(now + self.settings.awake_time);
        }
        match mem::replace(&mut self.state, RegistrationState::Unregistered) {
            RegistrationState::Registering { failures } => match result {
                Ok(response) if response.code == ResponseCode::CREATED => {
                    if response.location_path.is_empty() {
                        self.register_failed(now, failures, "no Location-Path".into());
                    } else {
                        self.registered(now, response.location_path);
                    }
                }
                Ok(response) => self.register_failed(now, failures, response.code.to_string()),
                Err(failure) => self.register_failed(now, failures, failure.to_string()),
            },
            RegistrationState::Updating {
                location,
                expires_at,
                failures,
            } => match result {
                Ok(response) if response.code == ResponseCode::CHANGED => {
                    self.events.push_back(RegistrationEvent::Updated);
                    self.set_registered(now, location, 0);
                }
                Ok(response)
                    if response.code == ResponseCode::NOT_FOUND
                        || response.code == ResponseCode::BAD_REQUEST =>
                {
                    // The server no longer knows this registration: register again.
                    self.request_failed("Update", response.code.to_string());
                    self.first_attempt = None;
                    self.register(now, 0);
                }
                other => {
                    let reason = match other {
                        Ok(response) => response.code.to_string(),
                        Err(failure) => failure.to_string(),
                    };
                    self.request_failed("Update", reason);
                    let failures = failures + 1;
                    let retry_at = now + self.settings.retry.delay(failures);
                    if retry_at >= expires_at {
                        self.first_attempt = None;
                        self.register(now, 0);
                    } else {
                        self.set_state(RegistrationState::Registered {
                            location,
                            update_at: retry_at,
                            expires_at,
                            failures,
                        });
                    }
                }
            },
            RegistrationState::Deregistering => self.deregistered(),
            state => self.state = state,
        }
        if self.deregister_requested
            && !matches!(
                self.state,
                RegistrationState::Deregistering
                    | RegistrationState::Deregistered
                    | RegistrationState::Failed
            )
        {
            self.outgoing = None;
            self.start_deregister();
        }
    }

    /// Asks for an Update now (Registration Update Trigger, or application request).
    pub fn trigger_update(&mut self) {
        self.update_requested = true;
    }

    /// Queue mode: wakes a sleeping client by sending an Update.
    pub fn wake(&mut self) {
        if self.asleep {
            self.update_requested = true;
        }
    }

    /// Queue mode: a request from the server arrived, so the client is awake for another
    /// awake period.
    pub fn touch(&mut self, now: Duration) {
        if self.settings.queue_mode && self.is_registered() {
            self.asleep = false;
            self.awake_until = Some(now + self.settings.awake_time);
        }
    }

    /// Changes the lifetime; the next Update carries it.
    pub fn set_lifetime(&mut self, lifetime: u32) {
        if lifetime != self.settings.lifetime {
            self.settings.lifetime = lifetime;
            self.lifetime_changed = true;
        }
    }

    /// Changes the objects and instances; the next Update carries them.
    pub fn set_objects(&mut self, objects: Vec<RegisteredObject>) {
        if objects != self.objects {
            self.objects = objects;
            self.objects_changed = true;
        }
    }

    /// De-registers (at once if registered, after the request in flight otherwise).
    pub fn deregister(&mut self) {
        self.deregister_requested = true;
        if self.in_flight {
            return;
        }
        self.outgoing = None;
        self.start_deregister();
    }

    fn start_deregister(&mut self) {
        match mem::replace(&mut self.state, RegistrationState::Unregistered) {
            RegistrationState::Registered { location, .. }
            | RegistrationState::Updating { location, .. } => {
                self.outgoing = Some(ClientRequest::Deregister { location });
                self.set_state(RegistrationState::Deregistering);
            }
            RegistrationState::Deregistering => self.state = RegistrationState::Deregistering,
            RegistrationState::Failed => self.state = RegistrationState::Failed,
            _ => self.deregistered(),
        }
    }

    fn deregistered(&mut self) {
        self.set_state(RegistrationState::Deregistered);
        self.events.push_back(RegistrationEvent::Deregistered);
    }

    fn set_state(&mut self, state: RegistrationState) {
        let changed = mem::discriminant(&state) != mem::discriminant(&self.state);
        self.state = state;
        if changed {
            self.events
                .push_back(RegistrationEvent::StateChanged(self.state.name()));
        }
    }

    fn parameters(&self, full: bool) -> RegistrationParameters {
        let queue_in_binding = self.settings.lwm2m_version == Version::V1_0;
        RegistrationParameters {
            lifetime: (full || self.lifetime_changed).then_some(self.settings.lifetime),
            binding: full.then(|| {
                let mut binding = self.settings.binding.clone();
                if queue_in_binding && self.settings.queue_mode && !binding.contains('Q') {
                    binding.push('Q');
                }
                binding
            }),
            queue_mode: full && self.settings.queue_mode && !queue_in_binding,
            objects: (full || self.objects_changed).then(|| self.objects.clone()),
            content_formats: if (full || self.objects_changed) && !queue_in_binding {
                CONTENT_FORMATS.to_vec()
            } else {
                Vec::new()
            },
            ..RegistrationParameters::default()
        }
    }

    fn register(&mut self, now: Duration, failures: u32) {
        self.first_attempt.get_or_insert(now);
        self.outgoing = Some(ClientRequest::Register {
            endpoint: self.settings.endpoint.clone(),
            lwm2m_version: Some(self.settings.lwm2m_version),
            parameters: self.parameters(true),
        });
        self.objects_changed = false;
        self.lifetime_changed = false;
        self.update_requested = false;
        self.asleep = false;
        self.set_state(RegistrationState::Registering { failures });
    }

    fn update(&mut self, location: Vec<String>, expires_at: Duration, failures: u32) {
        self.outgoing = Some(ClientRequest::Update {
            location: location.clone(),
            parameters: self.parameters(false),
        });
        self.objects_changed = false;
        self.lifetime_changed = false;
        self.update_requested = false;
        self.asleep = false;
        self.set_state(RegistrationState::Updating {
            location,
            expires_at,
            failures,
        });
    }

    fn registered(&mut self, now: Duration, location: Vec<String>) {
        let latency = now.saturating_sub(self.first_attempt.take().unwrap_or(now));
        self.set_registered(now, location.clone(), 0);
        self.events
            .push_back(RegistrationEvent::Registered { location, latency });
    }

    fn set_registered(&mut self, now: Duration, location: Vec<String>, failures: u32) {
        let lifetime = Duration::from_secs(u64::from(self.settings.lifetime));
        self.set_state(RegistrationState::Registered {
            location,
            update_at: now + self.settings.update_delay(),
            expires_at: now + lifetime,
            failures,
        });
    }

    fn register_failed(&mut self, now: Duration, failures: u32, reason: String) {
        self.request_failed("Register", reason);
        let failures = failures + 1;
        if self
            .settings
            .retry
            .max_attempts
            .is_some_and(|max| failures >= max)
        {
            self.set_state(RegistrationState::Failed);
        } else {
            self.set_state(RegistrationState::Backoff {
                failures,
                retry_at: now + self.settings.retry.delay(failures),
            });
        }
    }

    fn request_failed(&mut self, operation: &'static str, reason: String) {
        self.events
            .push_back(RegistrationEvent::RequestFailed { operation, reason });
    }
}
