//! The REST API under `/api`, described by the OpenAPI document at `/api/openapi.json`.
//!
//! Roles: a viewer reads (devices, their values, events); an operator also runs
//! device-management operations; an admin also manages device security, users, API tokens,
//! and reads the audit log. The role extractors ([`Viewer`], [`Operator`], [`Admin`]) answer
//! 401 to an unauthenticated request and 403 to a role too low, before the body is read.
//! Every state-changing action is written to the audit log: who, what, on what, from where,
//! and how it ended.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cairn_lwm2m::{AttributeSet, LwM2mPath, ResponseContent, WriteMode};
use cairn_server::{Registration, SecurityInfo, SecurityMode, ServerEvent};
use cairn_store::{ApiToken, Role, SecretBytes, SecurityModeKind, SetupOutcome, User};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};
use utoipa::{IntoParams, OpenApi, ToSchema};
use zeroize::Zeroizing;

use crate::error::{ApiError, ErrorBody};
use crate::session::{self, NextStep, Principal};
use crate::{ObservationHandle, WebState, auth, json as nodes};

// ---- extractors -------------------------------------------------------------------------------

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(pub Principal);

        impl FromRequestParts<WebState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &WebState,
            ) -> Result<Self, ApiError> {
                let principal = Principal::from_request_parts(parts, state).await?;
                principal.require($role)?;
                Ok($name(principal))
            }
        }
    };
}

role_extractor!(Viewer, Role::Viewer, "Any signed-in caller.");
role_extractor!(Operator, Role::Operator, "An operator or admin.");
role_extractor!(Admin, Role::Admin, "An admin.");

/// A JSON body whose rejection is a JSON error.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<WebState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &WebState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                "invalid_request_body",
                rejection.body_text(),
            )),
        }
    }
}

/// The address a request came from.
pub struct Peer(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Peer(crate::tls::peer_of(&parts.extensions)))
    }
}

fn parse_path(text: &str) -> Result<LwM2mPath, ApiError> {
    text.parse()
        .map_err(|e: cairn_lwm2m::PathError| ApiError::bad_request("invalid_path", e.to_string()))
}

fn registered(state: &WebState, endpoint: &str) -> Result<Registration, ApiError> {
    state.inner.server.registration(endpoint).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "device_not_registered",
            format!("no registration for {endpoint:?}"),
        )
    })
}

// ---- routes -----------------------------------------------------------------------------------

/// Every `/api` route.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/setup", post(setup))
        .route("/api/auth/login", post(login))
        .route("/api/auth/second-factor", post(second_factor))
        .route("/api/auth/totp/enrol", post(totp_enrol))
        .route("/api/auth/totp/confirm", post(totp_confirm))
        .route("/api/auth/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/devices", get(list_devices))
        .route(
            "/api/devices/{endpoint}",
            get(get_device).delete(delete_device),
        )
        .route("/api/devices/{endpoint}/read", get(read))
        .route("/api/devices/{endpoint}/discover", get(discover))
        .route("/api/devices/{endpoint}/samples", get(samples))
        .route("/api/devices/{endpoint}/write", post(write))
        .route("/api/devices/{endpoint}/execute", post(execute))
        .route("/api/devices/{endpoint}/create", post(create))
        .route("/api/devices/{endpoint}/delete", post(delete_instance))
        .route(
            "/api/devices/{endpoint}/write-attributes",
            post(write_attributes),
        )
        .route(
            "/api/devices/{endpoint}/read-composite",
            post(read_composite),
        )
        .route(
            "/api/devices/{endpoint}/write-composite",
            post(write_composite),
        )
        .route(
            "/api/devices/{endpoint}/observations",
            get(list_observations)
                .post(observe)
                .delete(cancel_observation),
        )
        .route("/api/events", get(events))
        .route("/api/security", get(list_security).post(add_security))
        .route("/api/security/{endpoint}", delete(remove_security))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/users/{username}", delete(delete_user))
        .route(
            "/api/users/{username}/role",
            axum::routing::put(change_role),
        )
        .route("/api/me/password", post(change_password))
        .route("/api/tokens", get(list_tokens).post(create_token))
        .route("/api/tokens/{id}", delete(revoke_token))
        .route("/api/audit", get(list_audit))
}

// ---- OpenAPI ----------------------------------------------------------------------------------

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn API",
        description = "LwM2M device management. Authenticate with a session (cookie plus \
            X-CSRF-Token on state-changing requests) or `Authorization: Bearer <API token>`. \
            Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        openapi, setup, login, second_factor, totp_enrol, totp_confirm, logout, me, list_devices,
        get_device, delete_device, read, discover, samples, write, execute, create,
        delete_instance, write_attributes, read_composite, write_composite, list_observations,
        observe, cancel_observation, events, list_security, add_security, remove_security,
        list_users, create_user, delete_user, change_role, change_password, list_tokens, create_token, revoke_token,
        list_audit,
        crate::api_firmware::list_firmware, crate::api_firmware::upload_firmware,
        crate::api_firmware::remove_firmware, crate::api_firmware::list_campaigns,
        crate::api_firmware::start_campaign, crate::api_firmware::get_campaign,
        crate::api_firmware::pause_campaign, crate::api_firmware::resume_campaign,
        crate::api_firmware::cancel_campaign,
        crate::api_bootstrap::list_devices, crate::api_bootstrap::get_device,
        crate::api_bootstrap::list_templates, crate::api_bootstrap::put_template,
        crate::api_bootstrap::remove_template, crate::api_bootstrap::rotate
    ),
    components(schemas(ErrorBody, NextStep, session::Enrolment)),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            utoipa::openapi::security::SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build(),
            ),
        );
        components.add_security_scheme(
            "session",
            utoipa::openapi::security::SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                session::SESSION_COOKIE,
            ))),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

// ---- authentication ---------------------------------------------------------------------------

/// The answer of a login step.
#[derive(Serialize, ToSchema)]
pub struct LoginAnswer {
    /// What to do next.
    pub next: NextStep,
    /// The session's CSRF token, for the `X-CSRF-Token` header.
    pub csrf_token: String,
}

fn with_session_cookie(state: &WebState, id: &str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::session_cookie(state, Some(id)));
    response
}

fn login_answer(state: &WebState, step: session::LoginStep) -> Response {
    let answer = LoginAnswer {
        next: step.next,
        csrf_token: step.session.csrf_token,
    };
    with_session_cookie(state, &step.session_id, Json(answer))
}

/// A first administrator.
#[derive(Deserialize, ToSchema)]
pub struct SetupRequest {
    /// The one-time setup token from the server's first start (or `cairn admin setup-link`).
    pub token: String,
    pub username: String,
    pub password: String,
}

/// Creates the first administrator with the one-time setup token; the answer's session must
/// then enrol TOTP.
#[utoipa::path(post, path = "/api/setup", tag = "auth", request_body = SetupRequest,
    responses((status = 200, body = LoginAnswer), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn setup(
    State(state): State<WebState>,
    Peer(peer): Peer,
    Body(request): Body<SetupRequest>,
) -> Result<Response, ApiError> {
    let step = run_setup(
        &state,
        peer,
        &request.token,
        &request.username,
        &request.password,
    )
    .await?;
    Ok(login_answer(&state, step))
}

/// The setup flow, shared by the API and the console form.
pub(crate) async fn run_setup(
    state: &WebState,
    peer: SocketAddr,
    token: &str,
    username: &str,
    password: &str,
) -> Result<session::LoginStep, ApiError> {
    let now = state.now_ms();
    let source = peer.ip().to_string();
    if let Err(wait) = state.inner.throttle.admit(peer.ip(), now) {
        return Err(ApiError::too_many("too_many_attempts", wait));
    }
    let digest = auth::digest(token);
    if !state.inner.accounts.check_setup_token(digest, now).await? {
        state.inner.throttle.failed(peer.ip(), now);
        state
            .audit("-", "setup", username, &source, "invalid_or_expired_token")
            .await;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_setup_token",
            "the setup link is invalid, used or expired",
        ));
    }
    session::check_username(username)?;
    auth::check_password_strength(password, username)?;
    let hash = hash_password(state, password).await?;
    let user = new_user(username, Role::Admin, hash, now);
    match state
        .inner
        .accounts
        .consume_setup_token(digest, now, user)
        .await?
    {
        SetupOutcome::Created => state.inner.unknown_names.forget(username),
        SetupOutcome::UserExists => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the user exists",
            ));
        }
        SetupOutcome::Invalid | SetupOutcome::Expired => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_setup_token",
                "the setup link is invalid, used or expired",
            ));
        }
    }
    state
        .audit(username, "setup", username, &source, "ok")
        .await;
    let (session_id, session) = session::issue_session(
        state,
        username,
        cairn_store::SessionStage::AwaitingSecondFactor,
        None,
        None,
    )
    .await?;
    Ok(session::LoginStep {
        session_id,
        session,
        next: NextStep::EnrolTotp,
    })
}

fn new_user(username: &str, role: Role, password_hash: String, now: u64) -> User {
    User {
        username: username.to_owned(),
        role,
        password_hash,
        totp_secret: None,
        totp_last_step: 0,
        recovery_codes: Vec::new(),
        failed_logins: 0,
        locked_until_ms: 0,
        created_at_ms: now,
    }
}

async fn hash_password(state: &WebState, password: &str) -> Result<String, ApiError> {
    let hashing = state.inner.config.password_hashing.clone();
    let password = Zeroizing::new(password.to_owned());
    tokio::task::spawn_blocking(move || hashing.hash(&password))
        .await
        .map_err(|_| ApiError::internal("password hashing"))?
}

/// User name and password.
#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// The password step of a login. Sets a fresh session cookie; `next` tells whether a TOTP
/// code or an enrolment is due.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginAnswer), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn login(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Body(request): Body<LoginRequest>,
) -> Result<Response, ApiError> {
    let step =
        session::login_password(&state, &headers, peer, &request.username, &request.password)
            .await?;
    Ok(login_answer(&state, step))
}

/// A TOTP code or a recovery code.
#[derive(Deserialize, ToSchema)]
pub struct CodeRequest {
    pub code: String,
}

/// The second-factor step: a TOTP code (never accepted twice) or a one-time recovery code.
/// Needs the CSRF token the password step returned.
#[utoipa::path(post, path = "/api/auth/second-factor", tag = "auth", request_body = CodeRequest,
    responses((status = 200, body = LoginAnswer), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn second_factor(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Body(request): Body<CodeRequest>,
) -> Result<Response, ApiError> {
    let current = session::pending_login(&state, &headers).await?;
    session::check_csrf(&current.session, &headers, None)?;
    let step = session::login_second_factor(&state, current, peer, &request.code).await?;
    Ok(login_answer(&state, step))
}

/// Starts a TOTP enrolment: a new secret, its `otpauth://` URI and QR code (SVG).
#[utoipa::path(post, path = "/api/auth/totp/enrol", tag = "auth",
    responses((status = 200, body = session::Enrolment), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn totp_enrol(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Json<session::Enrolment>, ApiError> {
    let current = session::enrolment_session(&state, &headers).await?;
    session::check_csrf(&current.session, &headers, None)?;
    Ok(Json(session::start_enrolment(&state, current).await?))
}

/// The answer of a confirmed enrolment.
#[derive(Serialize, ToSchema)]
pub struct EnrolmentAnswer {
    /// One-time recovery codes, shown only now.
    pub recovery_codes: Vec<String>,
    /// The new session's CSRF token.
    pub csrf_token: String,
}

/// Confirms a TOTP enrolment with a code from the authenticator; returns recovery codes once.
#[utoipa::path(post, path = "/api/auth/totp/confirm", tag = "auth", request_body = CodeRequest,
    responses((status = 200, body = EnrolmentAnswer), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn totp_confirm(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Body(request): Body<CodeRequest>,
) -> Result<Response, ApiError> {
    let current = session::enrolment_session(&state, &headers).await?;
    session::check_csrf(&current.session, &headers, None)?;
    let (step, codes) = session::confirm_enrolment(&state, current, peer, &request.code).await?;
    let answer = EnrolmentAnswer {
        recovery_codes: codes.iter().map(|c| c.as_str().to_owned()).collect(),
        csrf_token: step.session.csrf_token.clone(),
    };
    Ok(with_session_cookie(&state, &step.session_id, Json(answer)))
}

/// Ends the session.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn logout(State(state): State<WebState>, principal: Principal) -> Result<Response, ApiError> {
    end_session(&state, &principal).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::session_cookie(&state, None));
    Ok(response)
}

pub(crate) async fn end_session(state: &WebState, principal: &Principal) -> Result<(), ApiError> {
    if let session::Credential::Session { digest, .. } = &principal.credential {
        state.inner.accounts.remove_session(*digest).await?;
        state
            .audit(
                &principal.actor(),
                "logout",
                &principal.username,
                &principal.source(),
                "ok",
            )
            .await;
    }
    Ok(())
}

/// The caller.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub username: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The session's CSRF token (absent for API tokens).
    pub csrf_token: Option<String>,
}

/// Who the caller is.
#[utoipa::path(get, path = "/api/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(Viewer(principal): Viewer) -> Json<Me> {
    Json(Me {
        username: principal.username.clone(),
        role: principal.role.as_str().to_owned(),
        csrf_token: principal.csrf_token().map(str::to_owned),
    })
}

// ---- devices ----------------------------------------------------------------------------------

/// A device in the fleet list.
#[derive(Serialize, ToSchema, Clone)]
pub struct DeviceSummary {
    pub endpoint: String,
    /// `registered`, `queue` (registered, queue mode) or `offline` (provisioned, not
    /// registered).
    pub status: String,
    pub lwm2m_version: Option<String>,
    pub binding: Option<String>,
    pub peer_address: Option<String>,
    pub last_update_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
}

pub(crate) fn summary_of(registration: &Registration) -> DeviceSummary {
    DeviceSummary {
        endpoint: registration.endpoint.clone(),
        status: if registration.queue_mode {
            "queue".into()
        } else {
            "registered".into()
        },
        lwm2m_version: Some(registration.lwm2m_version.clone()),
        binding: Some(registration.binding.clone()),
        peer_address: Some(registration.peer_address.to_string()),
        last_update_ms: Some(registration.last_update_ms),
        expires_at_ms: Some(registration.expires_at_ms()),
    }
}

/// Filters and paging of the fleet list.
#[derive(Deserialize, IntoParams, Default)]
pub struct DeviceQuery {
    /// Endpoint names containing this text.
    pub q: Option<String>,
    /// `registered`, `queue` or `offline`.
    pub status: Option<String>,
    /// Endpoints after this one (the previous page's `next`).
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of devices.
#[derive(Serialize, ToSchema)]
pub struct DevicePage {
    pub items: Vec<DeviceSummary>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
    /// Devices matching the filter, over all pages.
    pub total: usize,
}

/// Every device: registered ones, and provisioned ones that are not registered.
pub(crate) async fn fleet(state: &WebState) -> Result<Vec<DeviceSummary>, ApiError> {
    let mut devices: BTreeMap<String, DeviceSummary> = state
        .inner
        .server
        .registrations()
        .iter()
        .map(|r| (r.endpoint.clone(), summary_of(r)))
        .collect();
    for summary in state.inner.server.security_summaries().await? {
        devices
            .entry(summary.endpoint.clone())
            .or_insert_with(|| DeviceSummary {
                endpoint: summary.endpoint,
                status: "offline".into(),
                lwm2m_version: None,
                binding: None,
                peer_address: None,
                last_update_ms: None,
                expires_at_ms: None,
            });
    }
    Ok(devices.into_values().collect())
}

pub(crate) async fn filtered_fleet(
    state: &WebState,
    query: &DeviceQuery,
) -> Result<DevicePage, ApiError> {
    let needle = query.q.as_deref().unwrap_or("").to_lowercase();
    let matching: Vec<DeviceSummary> = fleet(state)
        .await?
        .into_iter()
        .filter(|d| d.endpoint.to_lowercase().contains(&needle))
        .filter(|d| {
            query
                .status
                .as_deref()
                .is_none_or(|s| s.is_empty() || d.status == s)
        })
        .collect();
    let total = matching.len();
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let mut items: Vec<DeviceSummary> = matching
        .into_iter()
        .filter(|d| {
            query
                .after
                .as_deref()
                .is_none_or(|a| d.endpoint.as_str() > a)
        })
        .take(limit + 1)
        .collect();
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|d| d.endpoint.clone())
    } else {
        None
    };
    Ok(DevicePage { items, next, total })
}

/// The fleet: filter by endpoint substring and status, paginated by endpoint.
#[utoipa::path(get, path = "/api/devices", tag = "devices", params(DeviceQuery),
    responses((status = 200, body = DevicePage), (status = 401, body = ErrorBody)))]
async fn list_devices(
    State(state): State<WebState>,
    _viewer: Viewer,
    Query(query): Query<DeviceQuery>,
) -> Result<Json<DevicePage>, ApiError> {
    Ok(Json(filtered_fleet(&state, &query).await?))
}

/// A resource as its object model describes it.
#[derive(Serialize, ToSchema, Clone)]
pub struct ResourceInfo {
    pub id: u16,
    pub name: String,
    /// `String`, `Integer`, `Float`, ... (`none` for executable resources).
    pub r#type: String,
    /// `R`, `W`, `RW`, `E` or empty.
    pub operations: String,
    pub units: String,
    pub multiple: bool,
    pub mandatory: bool,
    pub description: String,
}

/// An object the device registered, with its instances and its model.
#[derive(Serialize, ToSchema, Clone)]
pub struct ObjectInfo {
    pub id: u16,
    /// The model's name (`None` if no model is known).
    pub name: Option<String>,
    pub instances: Vec<u16>,
    pub resources: Vec<ResourceInfo>,
}

/// A device's registration and object tree.
#[derive(Serialize, ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    pub registration_id: String,
    pub lifetime_s: u32,
    pub queue_mode: bool,
    pub registered_at_ms: u64,
    pub object_links: String,
    pub objects: Vec<ObjectInfo>,
}

fn operations_text(operations: cairn_lwm2m::Operations) -> &'static str {
    match operations {
        cairn_lwm2m::Operations::None => "",
        cairn_lwm2m::Operations::R => "R",
        cairn_lwm2m::Operations::W => "W",
        cairn_lwm2m::Operations::RW => "RW",
        cairn_lwm2m::Operations::E => "E",
    }
}

pub(crate) fn object_tree(state: &WebState, registration: &Registration) -> Vec<ObjectInfo> {
    let mut objects: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
    for path in &registration.object_paths {
        match path.parse::<LwM2mPath>() {
            Ok(LwM2mPath::Object(o)) => {
                objects.entry(o).or_default();
            }
            Ok(LwM2mPath::ObjectInstance(o, i)) => objects.entry(o).or_default().push(i),
            _ => {}
        }
    }
    let models = state.inner.server.models();
    objects
        .into_iter()
        .map(|(id, instances)| {
            let model = models.latest(id);
            ObjectInfo {
                id,
                name: model.map(|m| m.name.clone()),
                instances,
                resources: model
                    .map(|m| {
                        m.resources
                            .values()
                            .map(|r| ResourceInfo {
                                id: r.id,
                                name: r.name.clone(),
                                r#type: r.resource_type.ddf_name().to_owned(),
                                operations: operations_text(r.operations).to_owned(),
                                units: r.units.clone(),
                                multiple: r.multiple,
                                mandatory: r.mandatory,
                                description: r.description.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// A device's registration and its object tree, named and typed by the object models.
#[utoipa::path(get, path = "/api/devices/{endpoint}", tag = "devices",
    params(("endpoint" = String, Path)),
    responses((status = 200, body = DeviceDetail), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn get_device(
    State(state): State<WebState>,
    _viewer: Viewer,
    Path(endpoint): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let registration = registered(&state, &endpoint)?;
    Ok(Json(DeviceDetail {
        summary: summary_of(&registration),
        registration_id: registration.id.clone(),
        lifetime_s: registration.lifetime_s,
        queue_mode: registration.queue_mode,
        registered_at_ms: registration.registered_at_ms,
        object_links: registration.object_links.clone(),
        objects: object_tree(&state, &registration),
    }))
}

/// Removes a device: its security information (it can no longer connect over DTLS), its
/// registration and observations, and the values the web side kept of it.
#[utoipa::path(delete, path = "/api/devices/{endpoint}", tag = "devices",
    params(("endpoint" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn delete_device(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Path(endpoint): Path<String>,
) -> Result<StatusCode, ApiError> {
    let had_security = state.inner.server.remove_security(&endpoint).await?;
    let was_registered = state.inner.server.remove_registration(&endpoint).await?;
    let was_known = had_security || was_registered;
    state.forget_device(&endpoint);
    let outcome = if was_known { "ok" } else { "not_found" };
    state
        .audit(
            &principal.actor(),
            "device.delete",
            &endpoint,
            &principal.source(),
            outcome,
        )
        .await;
    if was_known {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no device {endpoint:?}")))
    }
}

/// A path in the query string.
#[derive(Deserialize, IntoParams)]
pub struct PathQuery {
    /// An LwM2M path such as `/3/0` or `/3/0/13`.
    pub path: String,
}

/// A value read from a device.
#[derive(Serialize, ToSchema)]
pub struct ReadAnswer {
    pub path: String,
    /// The node as JSON: a value, `{"0": v, ...}` for a multiple resource,
    /// `{"id", "resources"}` for an instance, `{"id", "instances"}` for an object.
    #[schema(value_type = Object)]
    pub value: JsonValue,
}

/// Read (Core §6.3.1).
#[utoipa::path(get, path = "/api/devices/{endpoint}/read", tag = "operations",
    params(("endpoint" = String, Path), PathQuery),
    responses((status = 200, body = ReadAnswer), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 504, body = ErrorBody)))]
async fn read(
    State(state): State<WebState>,
    _viewer: Viewer,
    Path(endpoint): Path<String>,
    Query(query): Query<PathQuery>,
) -> Result<Json<ReadAnswer>, ApiError> {
    let path = parse_path(&query.path)?;
    registered(&state, &endpoint)?;
    let node = state.inner.server.read(&endpoint, path, None).await?;
    Ok(Json(ReadAnswer {
        path: path.to_string(),
        value: nodes::node_to_json(&node),
    }))
}

/// One link of a Discover answer.
#[derive(Serialize, ToSchema)]
pub struct DiscoverLink {
    pub path: String,
    pub attributes: BTreeMap<String, Option<String>>,
}

/// Discover (Core §6.3.2): links and attributes under a path.
#[utoipa::path(get, path = "/api/devices/{endpoint}/discover", tag = "operations",
    params(("endpoint" = String, Path), PathQuery),
    responses((status = 200, body = Vec<DiscoverLink>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn discover(
    State(state): State<WebState>,
    _viewer: Viewer,
    Path(endpoint): Path<String>,
    Query(query): Query<PathQuery>,
) -> Result<Json<Vec<DiscoverLink>>, ApiError> {
    let path = parse_path(&query.path)?;
    registered(&state, &endpoint)?;
    let response = state.inner.server.discover(&endpoint, path).await?;
    let links = match response.content {
        ResponseContent::Links(entries) => entries
            .into_iter()
            .map(|entry| DiscoverLink {
                path: entry.path.to_string(),
                attributes: entry
                    .attributes
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.map(|v| v.to_string())))
                    .collect(),
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Json(links))
}

/// An observed value the web side kept.
#[derive(Serialize, ToSchema)]
pub struct SampleAnswer {
    pub at_ms: u64,
    pub path: String,
    #[schema(value_type = Object)]
    pub value: JsonValue,
}

/// Recent observed values of a device (kept for the telemetry retention, default 7 days).
#[utoipa::path(get, path = "/api/devices/{endpoint}/samples", tag = "devices",
    params(("endpoint" = String, Path)),
    responses((status = 200, body = Vec<SampleAnswer>), (status = 401, body = ErrorBody)))]
async fn samples(
    State(state): State<WebState>,
    _viewer: Viewer,
    Path(endpoint): Path<String>,
) -> Json<Vec<SampleAnswer>> {
    let samples = state
        .inner
        .samples
        .lock()
        .ok()
        .and_then(|samples| samples.get(&endpoint).cloned())
        .unwrap_or_default();
    Json(
        samples
            .into_iter()
            .map(|s| SampleAnswer {
                at_ms: s.at_ms,
                path: s.path,
                value: s.value,
            })
            .collect(),
    )
}

/// The outcome of an operation that returns no content.
#[derive(Serialize, ToSchema)]
pub struct Done {
    pub ok: bool,
}

pub(crate) async fn audited<T>(
    state: &WebState,
    principal: &Principal,
    action: &str,
    target: &str,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(error) => error.code.to_owned(),
    };
    state
        .audit(
            &principal.actor(),
            action,
            target,
            &principal.source(),
            &outcome,
        )
        .await;
    result
}

/// A Write.
#[derive(Deserialize, ToSchema)]
pub struct WriteRequest {
    pub path: String,
    /// The value(s), typed by the object model (`"42"` and `42` both write an integer).
    #[schema(value_type = Object)]
    pub value: JsonValue,
    /// `replace` (PUT, default) or `update` (POST, partial update).
    pub mode: Option<String>,
}

/// Write (Core §6.3.3).
#[utoipa::path(post, path = "/api/devices/{endpoint}/write", tag = "operations",
    params(("endpoint" = String, Path)), request_body = WriteRequest,
    responses((status = 200, body = Done), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn write(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Body(request): Body<WriteRequest>,
) -> Result<Json<Done>, ApiError> {
    let target = format!("{endpoint} {}", request.path);
    let result = async {
        let path = parse_path(&request.path)?;
        registered(&state, &endpoint)?;
        let mode = match request.mode.as_deref() {
            None | Some("replace") => WriteMode::Replace,
            Some("update") => WriteMode::PartialUpdate,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_mode",
                    "mode is replace or update",
                ));
            }
        };
        let node = nodes::json_to_node(state.inner.server.models(), &path, &request.value)?;
        state
            .inner
            .server
            .write(&endpoint, path, mode, node, None)
            .await?;
        Ok(Json(Done { ok: true }))
    }
    .await;
    audited(&state, &principal, "device.write", &target, result).await
}

/// An Execute.
#[derive(Deserialize, ToSchema)]
pub struct ExecuteRequest {
    pub path: String,
    /// Arguments as Core §5.4.2 writes them, for example `0='on',1`.
    pub arguments: Option<String>,
}

/// Execute (Core §6.3.5).
#[utoipa::path(post, path = "/api/devices/{endpoint}/execute", tag = "operations",
    params(("endpoint" = String, Path)), request_body = ExecuteRequest,
    responses((status = 200, body = Done), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn execute(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Body(request): Body<ExecuteRequest>,
) -> Result<Json<Done>, ApiError> {
    let target = format!("{endpoint} {}", request.path);
    let result = async {
        let path = parse_path(&request.path)?;
        registered(&state, &endpoint)?;
        let arguments = cairn_lwm2m::operations::parse_execute_arguments(
            request.arguments.as_deref().unwrap_or(""),
        )
        .map_err(|e| ApiError::bad_request("invalid_arguments", e.to_string()))?;
        state
            .inner
            .server
            .execute(&endpoint, path, arguments)
            .await?;
        Ok(Json(Done { ok: true }))
    }
    .await;
    audited(&state, &principal, "device.execute", &target, result).await
}

/// A Create.
#[derive(Deserialize, ToSchema)]
pub struct CreateRequest {
    /// The object, for example `/1`.
    pub path: String,
    /// The new instance's id.
    pub instance_id: u16,
    /// Resource ids to values.
    #[schema(value_type = Object)]
    pub resources: JsonValue,
}

/// Create (Core §6.3.6).
#[utoipa::path(post, path = "/api/devices/{endpoint}/create", tag = "operations",
    params(("endpoint" = String, Path)), request_body = CreateRequest,
    responses((status = 201, body = Done), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Body(request): Body<CreateRequest>,
) -> Result<(StatusCode, Json<Done>), ApiError> {
    let target = format!("{endpoint} {}/{}", request.path, request.instance_id);
    let result = async {
        let path = parse_path(&request.path)?;
        let LwM2mPath::Object(object) = path else {
            return Err(ApiError::bad_request(
                "invalid_path",
                "create under an object path",
            ));
        };
        registered(&state, &endpoint)?;
        let instance = nodes::json_to_instance(
            state.inner.server.models(),
            object,
            request.instance_id,
            &request.resources,
        )?;
        state
            .inner
            .server
            .create(&endpoint, path, vec![instance])
            .await?;
        Ok((StatusCode::CREATED, Json(Done { ok: true })))
    }
    .await;
    audited(&state, &principal, "device.create", &target, result).await
}

/// A path to act on.
#[derive(Deserialize, ToSchema)]
pub struct PathRequest {
    pub path: String,
}

/// Delete (Core §6.3.7) of an object instance.
#[utoipa::path(post, path = "/api/devices/{endpoint}/delete", tag = "operations",
    params(("endpoint" = String, Path)), request_body = PathRequest,
    responses((status = 200, body = Done), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_instance(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Body(request): Body<PathRequest>,
) -> Result<Json<Done>, ApiError> {
    let target = format!("{endpoint} {}", request.path);
    let result = async {
        let path = parse_path(&request.path)?;
        registered(&state, &endpoint)?;
        state.inner.server.delete(&endpoint, path).await?;
        Ok(Json(Done { ok: true }))
    }
    .await;
    audited(
        &state,
        &principal,
        "device.delete_instance",
        &target,
        result,
    )
    .await
}

/// A Write-Attributes.
#[derive(Deserialize, ToSchema)]
pub struct AttributesRequest {
    pub path: String,
    /// Attribute names (`pmin`, `pmax`, `gt`, `lt`, `st`, `epmin`, `epmax`, `edge`, ...) to
    /// values; `null` unsets.
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, JsonValue>,
}

/// Write-Attributes (Core §6.3.4).
#[utoipa::path(post, path = "/api/devices/{endpoint}/write-attributes", tag = "operations",
    params(("endpoint" = String, Path)), request_body = AttributesRequest,
    responses((status = 200, body = Done), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn write_attributes(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Body(request): Body<AttributesRequest>,
) -> Result<Json<Done>, ApiError> {
    let target = format!("{endpoint} {}", request.path);
    let result = async {
        let path = parse_path(&request.path)?;
        let mut set = AttributeSet::new();
        for (name, value) in &request.attributes {
            let text = match value {
                JsonValue::Null => None,
                JsonValue::String(s) => Some(s.clone()),
                JsonValue::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
                other => Some(other.to_string()),
            };
            let (name, value) = AttributeSet::parse_pair(name, text.as_deref())
                .map_err(|e| ApiError::bad_request("invalid_attribute", e.to_string()))?;
            set = match value {
                Some(value) => set.with(name, value),
                None => set.with_unset(name),
            };
        }
        registered(&state, &endpoint)?;
        state
            .inner
            .server
            .write_attributes(&endpoint, path, set)
            .await?;
        Ok(Json(Done { ok: true }))
    }
    .await;
    audited(
        &state,
        &principal,
        "device.write_attributes",
        &target,
        result,
    )
    .await
}

/// Paths to read together.
#[derive(Deserialize, ToSchema)]
pub struct CompositeReadRequest {
    pub paths: Vec<String>,
}

/// Read-Composite (Core §6.3.8, LwM2M 1.1+), in SenML JSON.
#[utoipa::path(post, path = "/api/devices/{endpoint}/read-composite", tag = "operations",
    params(("endpoint" = String, Path)), request_body = CompositeReadRequest,
    responses((status = 200, body = Object), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn read_composite(
    State(state): State<WebState>,
    _viewer: Viewer,
    Path(endpoint): Path<String>,
    Body(request): Body<CompositeReadRequest>,
) -> Result<Json<BTreeMap<String, JsonValue>>, ApiError> {
    let paths = request
        .paths
        .iter()
        .map(|p| parse_path(p))
        .collect::<Result<Vec<_>, _>>()?;
    if paths.is_empty() || paths.len() > 64 {
        return Err(ApiError::bad_request("invalid_paths", "give 1 to 64 paths"));
    }
    registered(&state, &endpoint)?;
    let values = state
        .inner
        .server
        .read_composite(&endpoint, paths, cairn_coap::ContentFormat::SENML_JSON)
        .await?;
    Ok(Json(
        values
            .iter()
            .map(|(path, node)| (path.to_string(), nodes::node_to_json(node)))
            .collect(),
    ))
}

/// Values to write together.
#[derive(Deserialize, ToSchema)]
pub struct CompositeWriteRequest {
    /// Paths (resources or resource instances) to values.
    #[schema(value_type = Object)]
    pub values: BTreeMap<String, JsonValue>,
}

/// Write-Composite (Core §6.3.9, LwM2M 1.1+), in SenML JSON.
#[utoipa::path(post, path = "/api/devices/{endpoint}/write-composite", tag = "operations",
    params(("endpoint" = String, Path)), request_body = CompositeWriteRequest,
    responses((status = 200, body = Done), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn write_composite(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Body(request): Body<CompositeWriteRequest>,
) -> Result<Json<Done>, ApiError> {
    let target = format!(
        "{endpoint} {}",
        request.values.keys().cloned().collect::<Vec<_>>().join(",")
    );
    let result = async {
        let mut values = BTreeMap::new();
        for (path, value) in &request.values {
            let path = parse_path(path)?;
            values.insert(
                path,
                nodes::json_to_node(state.inner.server.models(), &path, value)?,
            );
        }
        registered(&state, &endpoint)?;
        state
            .inner
            .server
            .write_composite(&endpoint, values, cairn_coap::ContentFormat::SENML_JSON)
            .await?;
        Ok(Json(Done { ok: true }))
    }
    .await;
    audited(
        &state,
        &principal,
        "device.write_composite",
        &target,
        result,
    )
    .await
}

/// An observation held from the web side.
#[derive(Serialize, ToSchema)]
pub struct ObservationInfo {
    pub path: String,
    pub started_by: String,
    pub started_at_ms: u64,
}

/// The observations the web side holds on a device.
#[utoipa::path(get, path = "/api/devices/{endpoint}/observations", tag = "operations",
    params(("endpoint" = String, Path)),
    responses((status = 200, body = Vec<ObservationInfo>), (status = 401, body = ErrorBody)))]
async fn list_observations(
    State(state): State<WebState>,
    _viewer: Viewer,
    Path(endpoint): Path<String>,
) -> Json<Vec<ObservationInfo>> {
    let list = state
        .inner
        .observations
        .lock()
        .map(|observations| {
            observations
                .iter()
                .filter(|((ep, _), _)| *ep == endpoint)
                .map(|((_, path), handle)| ObservationInfo {
                    path: path.clone(),
                    started_by: handle.started_by.clone(),
                    started_at_ms: handle.started_at_ms,
                })
                .collect()
        })
        .unwrap_or_default();
    Json(list)
}

/// Observe (Core §6.3.5): notifications arrive on `/api/events` and in the device's samples.
#[utoipa::path(post, path = "/api/devices/{endpoint}/observations", tag = "operations",
    params(("endpoint" = String, Path)), request_body = PathRequest,
    responses((status = 200, body = ReadAnswer), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn observe(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Body(request): Body<PathRequest>,
) -> Result<Json<ReadAnswer>, ApiError> {
    let target = format!("{endpoint} {}", request.path);
    let result = async {
        let path = parse_path(&request.path)?;
        registered(&state, &endpoint)?;
        let (node, mut notifications) = state.inner.server.observe(&endpoint, path, None).await?;
        let value = nodes::node_to_json(&node);
        state.record_sample(&endpoint, path.to_string(), value.clone());
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::pin!(cancelled);
            loop {
                tokio::select! {
                    next = notifications.next() => if next.is_none() { return },
                    _ = &mut cancelled => {
                        notifications.cancel();
                        return;
                    }
                }
            }
        });
        let handle = ObservationHandle {
            started_by: principal.actor(),
            started_at_ms: state.now_ms(),
            cancel,
        };
        if let Ok(mut observations) = state.inner.observations.lock() {
            // A previous observation of the same path is replaced (its sender dropped).
            observations.insert((endpoint.clone(), path.to_string()), handle);
        }
        Ok(Json(ReadAnswer {
            path: path.to_string(),
            value,
        }))
    }
    .await;
    audited(&state, &principal, "device.observe", &target, result).await
}

/// Cancels an observation the web side holds.
#[utoipa::path(delete, path = "/api/devices/{endpoint}/observations", tag = "operations",
    params(("endpoint" = String, Path), PathQuery),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn cancel_observation(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(endpoint): Path<String>,
    Query(query): Query<PathQuery>,
) -> Result<StatusCode, ApiError> {
    let target = format!("{endpoint} {}", query.path);
    let result = async {
        let path = parse_path(&query.path)?;
        let handle = state
            .inner
            .observations
            .lock()
            .ok()
            .and_then(|mut o| o.remove(&(endpoint.clone(), path.to_string())));
        match handle {
            Some(handle) => {
                let _ = handle.cancel.send(());
                Ok(StatusCode::NO_CONTENT)
            }
            None => Err(ApiError::not_found("no such observation")),
        }
    }
    .await;
    audited(
        &state,
        &principal,
        "device.cancel_observation",
        &target,
        result,
    )
    .await
}

/// Event stream filter.
#[derive(Deserialize, IntoParams)]
pub struct EventQuery {
    /// Only this endpoint's events.
    pub endpoint: Option<String>,
}

/// An event as JSON (`type`: registered, updated, deregistered, expired, queued,
/// notification, send, lagged).
pub fn event_json(event: &ServerEvent) -> (String, JsonValue) {
    let registration = |kind: &str, r: &Registration| {
        (
            r.endpoint.clone(),
            json!({"type": kind, "endpoint": r.endpoint, "device": summary_of(r)}),
        )
    };
    match event {
        ServerEvent::Registered(r) => registration("registered", r),
        ServerEvent::Updated(r) => registration("updated", r),
        ServerEvent::Deregistered(r) => registration("deregistered", r),
        ServerEvent::Expired(r) => registration("expired", r),
        ServerEvent::RequestQueued { endpoint } => (
            endpoint.clone(),
            json!({"type": "queued", "endpoint": endpoint}),
        ),
        ServerEvent::Notification {
            endpoint,
            path,
            node,
        } => (
            endpoint.clone(),
            json!({"type": "notification", "endpoint": endpoint, "path": path.to_string(),
                "value": nodes::node_to_json(node)}),
        ),
        ServerEvent::Send {
            endpoint,
            nodes: values,
        } => {
            let values: serde_json::Map<String, JsonValue> = values
                .iter()
                .map(|(p, n)| (p.to_string(), nodes::node_to_json(n)))
                .collect();
            (
                endpoint.clone(),
                json!({"type": "send", "endpoint": endpoint, "values": values}),
            )
        }
    }
}

/// Live events (server-sent events): registrations, updates, notifications, Send.
#[utoipa::path(get, path = "/api/events", tag = "devices", params(EventQuery),
    responses((status = 200, description = "text/event-stream of JSON events"),
        (status = 401, body = ErrorBody)))]
async fn events(
    State(state): State<WebState>,
    _viewer: Viewer,
    Query(query): Query<EventQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.inner.server.events();
    let stream = futures_util::stream::unfold(
        (receiver, query.endpoint),
        |(mut receiver, filter)| async move {
            loop {
                let event = match receiver.recv().await {
                    Ok(event) => event_json(&event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        (String::new(), json!({"type": "lagged", "missed": missed}))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let (endpoint, body) = event;
                if filter
                    .as_deref()
                    .is_some_and(|f| !endpoint.is_empty() && f != endpoint)
                {
                    continue;
                }
                let event = Event::default().data(body.to_string());
                return Some((Ok(event), (receiver, filter)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

// ---- security ---------------------------------------------------------------------------------

/// A device's security information, without secrets.
#[derive(Serialize, ToSchema)]
pub struct SecuritySummary {
    pub endpoint: String,
    /// `psk`, `rpk`, `x509` or `nosec`.
    pub mode: String,
    /// The PSK identity or the expected certificate name.
    pub identity: Option<String>,
    /// `sha256:` and 16 hex digits of the key's digest.
    pub key_fingerprint: Option<String>,
    pub created_at_ms: u64,
}

pub(crate) fn mode_name(mode: SecurityModeKind) -> &'static str {
    match mode {
        SecurityModeKind::Psk => "psk",
        SecurityModeKind::Rpk => "rpk",
        SecurityModeKind::X509 => "x509",
        SecurityModeKind::NoSec => "nosec",
    }
}

/// Every device's security information: identities and fingerprints, never keys.
#[utoipa::path(get, path = "/api/security", tag = "security",
    responses((status = 200, body = Vec<SecuritySummary>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn list_security(
    State(state): State<WebState>,
    _admin: Admin,
) -> Result<Json<Vec<SecuritySummary>>, ApiError> {
    Ok(Json(
        state
            .inner
            .server
            .security_summaries()
            .await?
            .into_iter()
            .map(|s| SecuritySummary {
                endpoint: s.endpoint,
                mode: mode_name(s.mode).to_owned(),
                identity: s.identity,
                key_fingerprint: s.key_fingerprint,
                created_at_ms: s.created_at_ms,
            })
            .collect(),
    ))
}

/// New security information: a PSK (the key goes in, never comes out) or NoSec.
#[derive(Deserialize, ToSchema)]
pub struct AddSecurityRequest {
    pub endpoint: String,
    /// `psk` or `nosec`.
    pub mode: String,
    /// The PSK identity.
    pub identity: Option<String>,
    /// The PSK in hex (at least 16 bytes).
    pub key_hex: Option<String>,
}

impl std::fmt::Debug for AddSecurityRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddSecurityRequest")
            .field("endpoint", &self.endpoint)
            .field("mode", &self.mode)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn decode_hex(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let text = text.trim();
    if text.len() % 2 != 0 || text.len() > 256 {
        return None;
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() / 2));
    for pair in text.as_bytes().chunks(2) {
        let digit = |b: u8| char::from(b).to_digit(16);
        bytes.push((digit(pair[0])? * 16 + digit(pair[1])?) as u8);
    }
    Some(bytes)
}

/// Adds or replaces a device's security information. The answer is the summary.
#[utoipa::path(post, path = "/api/security", tag = "security", request_body = AddSecurityRequest,
    responses((status = 201, body = SecuritySummary), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn add_security(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Body(request): Body<AddSecurityRequest>,
) -> Result<(StatusCode, Json<SecuritySummary>), ApiError> {
    let target = request.endpoint.clone();
    let result = async {
        if request.endpoint.is_empty() || request.endpoint.len() > 128 {
            return Err(ApiError::bad_request(
                "invalid_endpoint",
                "1 to 128 characters",
            ));
        }
        let mode = match request.mode.as_str() {
            "psk" => {
                let identity = request
                    .identity
                    .clone()
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_identity", "a PSK needs an identity")
                    })?;
                let key = request
                    .key_hex
                    .as_deref()
                    .and_then(decode_hex)
                    .filter(|k| k.len() >= 16)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_key",
                            "the key is hexadecimal, at least 16 bytes",
                        )
                    })?;
                SecurityMode::Psk {
                    identity: identity.into_bytes(),
                    key: SecretBytes::new(key.to_vec()),
                }
            }
            "nosec" => SecurityMode::NoSec,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_mode",
                    "mode is psk or nosec",
                ));
            }
        };
        state
            .inner
            .server
            .add_security(SecurityInfo {
                endpoint: request.endpoint.clone(),
                mode,
                created_at_ms: state.now_ms(),
            })
            .await
            .map_err(|e| match e {
                cairn_server::ServerError::Store(store) => ApiError::from(store),
                other => ApiError::from(other),
            })?;
        let summary = state
            .inner
            .server
            .security_summaries()
            .await?
            .into_iter()
            .find(|s| s.endpoint == request.endpoint)
            .ok_or_else(|| ApiError::internal("security summary"))?;
        Ok((
            StatusCode::CREATED,
            Json(SecuritySummary {
                endpoint: summary.endpoint,
                mode: mode_name(summary.mode).to_owned(),
                identity: summary.identity,
                key_fingerprint: summary.key_fingerprint,
                created_at_ms: summary.created_at_ms,
            }),
        ))
    }
    .await;
    audited(&state, &principal, "security.add", &target, result).await
}

/// Removes a device's security information.
#[utoipa::path(delete, path = "/api/security/{endpoint}", tag = "security",
    params(("endpoint" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn remove_security(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Path(endpoint): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        if state.inner.server.remove_security(&endpoint).await? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!(
                "no security info for {endpoint:?}"
            )))
        }
    }
    .await;
    audited(&state, &principal, "security.remove", &endpoint, result).await
}

// ---- users and tokens -------------------------------------------------------------------------

/// A user, without credentials.
#[derive(Serialize, ToSchema)]
pub struct UserInfo {
    pub username: String,
    pub role: String,
    pub totp_enrolled: bool,
    pub recovery_codes_left: usize,
    pub locked_until_ms: u64,
    pub created_at_ms: u64,
}

fn user_info(user: &User) -> UserInfo {
    UserInfo {
        username: user.username.clone(),
        role: user.role.as_str().to_owned(),
        totp_enrolled: user.totp_secret.is_some(),
        recovery_codes_left: user.recovery_codes.len(),
        locked_until_ms: user.locked_until_ms,
        created_at_ms: user.created_at_ms,
    }
}

/// Every user.
#[utoipa::path(get, path = "/api/users", tag = "users",
    responses((status = 200, body = Vec<UserInfo>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn list_users(
    State(state): State<WebState>,
    _admin: Admin,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    Ok(Json(
        state
            .inner
            .accounts
            .list_users()
            .await?
            .iter()
            .map(user_info)
            .collect(),
    ))
}

/// A new user.
#[derive(Deserialize, ToSchema)]
pub struct CreateUserRequest {
    pub username: String,
    /// At least 12 characters, not a common password.
    pub password: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
}

fn parse_role(text: &str) -> Result<Role, ApiError> {
    Role::parse(text)
        .ok_or_else(|| ApiError::bad_request("invalid_role", "role is viewer, operator or admin"))
}

/// Creates a user (an admin enrols TOTP at first login).
#[utoipa::path(post, path = "/api/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, body = UserInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn create_user(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Body(request): Body<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    let target = request.username.clone();
    let result = async {
        session::check_username(&request.username)?;
        let role = parse_role(&request.role)?;
        auth::check_password_strength(&request.password, &request.username)?;
        let hash = hash_password(&state, &request.password).await?;
        let user = new_user(&request.username, role, hash, state.now_ms());
        state.inner.accounts.create_user(user.clone()).await?;
        state.inner.unknown_names.forget(&user.username);
        Ok((StatusCode::CREATED, Json(user_info(&user))))
    }
    .await;
    audited(&state, &principal, "user.create", &target, result).await
}

/// Deletes a user and ends their sessions (their API tokens stop working). The last admin
/// cannot be deleted.
#[utoipa::path(delete, path = "/api/users/{username}", tag = "users",
    params(("username" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_user(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        let users = state.inner.accounts.list_users().await?;
        let target = users
            .iter()
            .find(|u| u.username == username)
            .ok_or_else(|| ApiError::not_found(format!("no user {username:?}")))?;
        let admins = users.iter().filter(|u| u.role == Role::Admin).count();
        if target.role == Role::Admin && admins <= 1 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last_admin",
                "the last administrator cannot be deleted",
            ));
        }
        state.inner.accounts.remove_user(&username).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    audited(&state, &principal, "user.delete", &username, result).await
}

/// A new role.
#[derive(Deserialize, ToSchema)]
pub struct RoleRequest {
    /// `viewer`, `operator` or `admin`.
    pub role: String,
}

/// Changes a user's role (effective at their next request; a new admin enrols TOTP at next
/// sign-in). The last admin cannot be demoted.
#[utoipa::path(put, path = "/api/users/{username}/role", tag = "users",
    params(("username" = String, Path)), request_body = RoleRequest,
    responses((status = 200, body = UserInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn change_role(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Path(username): Path<String>,
    Body(request): Body<RoleRequest>,
) -> Result<Json<UserInfo>, ApiError> {
    let target = format!("{username} -> {}", request.role);
    let result = async {
        let role = parse_role(&request.role)?;
        let users = state.inner.accounts.list_users().await?;
        let mut user = users
            .iter()
            .find(|u| u.username == username)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no user {username:?}")))?;
        let admins = users.iter().filter(|u| u.role == Role::Admin).count();
        if user.role == Role::Admin && role != Role::Admin && admins <= 1 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last_admin",
                "the last administrator cannot be demoted",
            ));
        }
        user.role = role;
        state.inner.accounts.update_user(user.clone()).await?;
        Ok(Json(user_info(&user)))
    }
    .await;
    audited(&state, &principal, "user.role", &target, result).await
}

/// A password change.
#[derive(Deserialize, ToSchema)]
pub struct PasswordRequest {
    pub current_password: String,
    /// At least 12 characters, not a common password.
    pub new_password: String,
}

/// Changes the caller's own password (a session only, not an API token). Every session of the
/// user ends but this one, which gets a new id.
#[utoipa::path(post, path = "/api/me/password", tag = "auth", request_body = PasswordRequest,
    responses((status = 200, body = LoginAnswer), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn change_password(
    State(state): State<WebState>,
    Viewer(principal): Viewer,
    Body(request): Body<PasswordRequest>,
) -> Result<Response, ApiError> {
    let session::Credential::Session { digest, .. } = &principal.credential else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_required",
            "change a password from a signed-in session, not with an API token",
        ));
    };
    let username = principal.username.clone();
    let result = async {
        let mut user = state
            .inner
            .accounts
            .get_user(&username)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        let hashing = state.inner.config.password_hashing.clone();
        let current = Zeroizing::new(request.current_password.clone());
        let hash = user.password_hash.clone();
        let valid = tokio::task::spawn_blocking(move || hashing.verify(&current, &hash))
            .await
            .map_err(|_| ApiError::internal("password verification"))?;
        if !valid {
            state
                .inner
                .throttle
                .failed(principal.peer.ip(), state.now_ms());
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "the current password is wrong",
            ));
        }
        auth::check_password_strength(&request.new_password, &username)?;
        user.password_hash = hash_password(&state, &request.new_password).await?;
        state.inner.accounts.update_user(user).await?;
        state.inner.accounts.remove_sessions_of(&username).await?;
        let (id, session) = session::issue_session(
            &state,
            &username,
            cairn_store::SessionStage::Authenticated,
            Some(*digest),
            None,
        )
        .await?;
        Ok(with_session_cookie(
            &state,
            &id,
            Json(LoginAnswer {
                next: NextStep::Done,
                csrf_token: session.csrf_token,
            }),
        ))
    }
    .await;
    audited(&state, &principal, "user.password", &username, result).await
}

/// An API token, without its secret.
#[derive(Serialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub role: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

fn token_info(token: &ApiToken) -> TokenInfo {
    TokenInfo {
        id: token.id.clone(),
        name: token.name.clone(),
        owner: token.owner.clone(),
        role: token.role.as_str().to_owned(),
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms,
        revoked_at_ms: token.revoked_at_ms,
    }
}

/// Every API token.
#[utoipa::path(get, path = "/api/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn list_tokens(
    State(state): State<WebState>,
    _admin: Admin,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(
        state
            .inner
            .accounts
            .list_api_tokens()
            .await?
            .iter()
            .map(token_info)
            .collect(),
    ))
}

/// A new API token.
#[derive(Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    pub name: String,
    /// `viewer`, `operator` or `admin` (at most the creator's role).
    pub role: String,
    /// Lifetime in days (default 90, at most 366).
    pub expires_in_days: Option<u32>,
}

/// A new token: the secret is shown in this answer only.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// Use as `Authorization: Bearer <token>`.
    pub token: String,
}

/// Creates an API token (256 random bits; only its SHA-256 is stored).
#[utoipa::path(post, path = "/api/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_token(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Body(request): Body<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let target = request.name.clone();
    let result = async {
        if request.name.is_empty() || request.name.len() > 64 {
            return Err(ApiError::bad_request("invalid_name", "1 to 64 characters"));
        }
        let role = parse_role(&request.role)?;
        principal.require(role)?;
        let days = request.expires_in_days.map(u64::from);
        let ttl_ms = match days {
            Some(days) if (1..=366).contains(&days) => days * 24 * 3600 * 1000,
            Some(_) => {
                return Err(ApiError::bad_request("invalid_expiry", "1 to 366 days"));
            }
            None => state.inner.config.default_token_ttl.as_millis() as u64,
        };
        let secret = auth::random_token(session::API_TOKEN_PREFIX)?;
        let now = state.now_ms();
        let token = ApiToken {
            id: cairn_store::random_id()?,
            name: request.name.clone(),
            owner: principal.username.clone(),
            role,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            revoked_at_ms: None,
        };
        state
            .inner
            .accounts
            .put_api_token(auth::digest(&secret), token.clone())
            .await?;
        Ok((
            StatusCode::CREATED,
            Json(CreatedToken {
                info: token_info(&token),
                token: secret.as_str().to_owned(),
            }),
        ))
    }
    .await;
    audited(&state, &principal, "token.create", &target, result).await
}

/// Revokes an API token.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        match state
            .inner
            .accounts
            .revoke_api_token(&id, state.now_ms())
            .await?
        {
            Some(_) => Ok(StatusCode::NO_CONTENT),
            None => Err(ApiError::not_found(format!("no token {id:?}"))),
        }
    }
    .await;
    audited(&state, &principal, "token.revoke", &id, result).await
}

// ---- audit ------------------------------------------------------------------------------------

/// An audit log entry.
#[derive(Serialize, ToSchema)]
pub struct AuditInfo {
    pub seq: u64,
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    pub outcome: String,
}

/// Paging of the audit log.
#[derive(Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Entries before this sequence number.
    pub before: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

pub(crate) async fn audit_page(
    state: &WebState,
    before: Option<u64>,
    limit: Option<usize>,
) -> Result<Vec<AuditInfo>, ApiError> {
    let limit = limit.unwrap_or(100).clamp(1, 1000);
    Ok(state
        .inner
        .accounts
        .list_audit(before, limit)
        .await?
        .into_iter()
        .map(|e| AuditInfo {
            seq: e.seq,
            at_ms: e.at_ms,
            actor: e.actor,
            action: e.action,
            target: e.target,
            source: e.source,
            outcome: e.outcome,
        })
        .collect())
}

/// The audit log, newest first. It is append-only: there is no call to change it.
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditInfo>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn list_audit(
    State(state): State<WebState>,
    _admin: Admin,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditInfo>>, ApiError> {
    Ok(Json(audit_page(&state, query.before, query.limit).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Hex decoding round-trips and refuses what is not hex, without panicking.
        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let text: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
            proptest::prop_assert_eq!(decode_hex(&text).map(|k| k.to_vec()), Some(bytes));
        }

        #[test]
        fn any_text_decodes_or_not(text in ".{0,80}") {
            let _ = decode_hex(&text);
            let _ = parse_path(&text);
        }
    }
}
