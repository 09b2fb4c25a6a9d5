//! Bootstrap configuration and device credentials: `/api/bootstrap/...`, for admins.
//!
//! The web side reads the Bootstrap-Server's data only through its summaries
//! ([`cairn_server::bootstrap::summary`]): identities and key fingerprints, never a key. A
//! template's device-management credential is generated at bootstrap, per device. A rotation
//! asks registered devices to bootstrap again and answers which rotated, which are pending and
//! which failed. Every change is written to the audit log.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cairn_server::bootstrap::BootstrapServer;
use cairn_server::bootstrap::summary::{DeviceBootstrapSummary, SettingsSummary, TemplateSummary};
use cairn_store::{
    AclConfig, BootstrapSettings, BootstrapTemplate, CredentialKind, DmCredentialSource,
    DmServerConfig,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::WebState;
use crate::api::{Admin, Body, audited};
use crate::error::{ApiError, ErrorBody};

/// The longest a rotation request waits for the devices.
const MAX_ROTATION_WAIT_S: u64 = 300;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/bootstrap/devices", get(list_devices))
        .route("/api/bootstrap/devices/{endpoint}", get(get_device))
        .route(
            "/api/bootstrap/templates",
            get(list_templates).post(put_template),
        )
        .route("/api/bootstrap/templates/{name}", delete(remove_template))
        .route("/api/bootstrap/rotate", post(rotate))
}

pub(crate) fn bootstrap_of(state: &WebState) -> Result<&BootstrapServer, ApiError> {
    state.inner.bootstrap.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bootstrap_unavailable",
            "no Bootstrap-Server runs with this console",
        )
    })
}

/// A credential: identity and key fingerprint.
#[derive(Serialize, ToSchema, Clone)]
pub struct CredentialInfo {
    pub identity: String,
    /// `sha256:` and 16 hex digits of the key's digest.
    pub fingerprint: String,
}

/// A device's bootstrap state.
#[derive(Serialize, ToSchema, Clone)]
pub struct BootstrapDeviceInfo {
    pub endpoint: String,
    /// Registered with the device-management server now.
    pub registered: bool,
    pub bootstrap_credential: CredentialInfo,
    /// A new bootstrap credential is written; the previous one is still accepted.
    pub bootstrap_replacing: bool,
    pub dm_credential: Option<CredentialInfo>,
    /// The device registered with `dm_credential`.
    pub dm_proven: bool,
    /// The previous device-management credential is still accepted.
    pub dm_replacing: bool,
    /// Bootstrap-Requests accepted.
    pub attempts: u32,
    /// Bootstrap sequences finished.
    pub finished: u32,
    pub last_attempt_ms: u64,
    /// `finished`, or the step and error.
    pub last_result: Option<String>,
    pub rotation_requested: bool,
}

pub(crate) fn device_info(state: &WebState, d: DeviceBootstrapSummary) -> BootstrapDeviceInfo {
    BootstrapDeviceInfo {
        registered: state.inner.server.registration(&d.endpoint).is_some(),
        endpoint: d.endpoint,
        bootstrap_credential: CredentialInfo {
            identity: d.bootstrap.identity,
            fingerprint: d.bootstrap.fingerprint,
        },
        bootstrap_replacing: d.bootstrap_replacing,
        dm_credential: d.dm.map(|c| CredentialInfo {
            identity: c.identity,
            fingerprint: c.fingerprint,
        }),
        dm_proven: d.dm_proven,
        dm_replacing: d.dm_replacing,
        attempts: d.status.attempts,
        finished: d.status.finished,
        last_attempt_ms: d.status.last_attempt_ms,
        last_result: d.status.last_result,
        rotation_requested: d.status.rotation_requested,
    }
}

/// A page of devices.
#[derive(Serialize, ToSchema)]
pub struct BootstrapDevicePage {
    pub items: Vec<BootstrapDeviceInfo>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct PageQuery {
    /// The last endpoint of the previous page.
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

pub(crate) async fn device_page(
    state: &WebState,
    after: Option<&str>,
    limit: usize,
) -> Result<BootstrapDevicePage, ApiError> {
    let bootstrap = bootstrap_of(state)?;
    let (items, next) = bootstrap
        .device_summaries(after, limit.clamp(1, 1000))
        .await?;
    Ok(BootstrapDevicePage {
        items: items.into_iter().map(|d| device_info(state, d)).collect(),
        next,
    })
}

/// Devices with bootstrap credentials, in name order: identities, fingerprints, history.
#[utoipa::path(get, path = "/api/bootstrap/devices", tag = "bootstrap", params(PageQuery),
    responses((status = 200, body = BootstrapDevicePage), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list_devices(
    State(state): State<WebState>,
    _admin: Admin,
    Query(query): Query<PageQuery>,
) -> Result<Json<BootstrapDevicePage>, ApiError> {
    device_page(&state, query.after.as_deref(), query.limit.unwrap_or(100))
        .await
        .map(Json)
}

/// One device's bootstrap state, and its own configuration if it has one.
#[derive(Serialize, ToSchema)]
pub struct BootstrapDeviceDetail {
    pub device: BootstrapDeviceInfo,
    /// The device's own configuration (else the longest matching template applies).
    pub config: Option<SettingsInfo>,
}

/// One device's bootstrap state.
#[utoipa::path(get, path = "/api/bootstrap/devices/{endpoint}", tag = "bootstrap",
    params(("endpoint" = String, Path)),
    responses((status = 200, body = BootstrapDeviceDetail), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn get_device(
    State(state): State<WebState>,
    _admin: Admin,
    Path(endpoint): Path<String>,
) -> Result<Json<BootstrapDeviceDetail>, ApiError> {
    let bootstrap = bootstrap_of(&state)?;
    let device = bootstrap
        .device_summary(&endpoint)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no bootstrap credentials for {endpoint:?}")))?;
    let config = bootstrap.config_summary(&endpoint).await?;
    Ok(Json(BootstrapDeviceDetail {
        device: device_info(&state, device),
        config: config.map(|c| SettingsInfo::from(c.settings)),
    }))
}

/// One LwM2M Server a device is given.
#[derive(Serialize, ToSchema, Clone)]
pub struct ServerInfo {
    pub short_server_id: u16,
    pub uri: String,
    pub lifetime_s: u32,
    pub binding: String,
    /// `generated-psk`, `explicit-psk`, `nosec`, ...
    pub credential: String,
    pub oscore: bool,
}

/// What devices are given at bootstrap (no credentials).
#[derive(Serialize, ToSchema, Clone)]
pub struct SettingsInfo {
    pub servers: Vec<ServerInfo>,
    pub bootstrap_uri: String,
    pub replace_bootstrap_credential: bool,
    pub allow_unsecured: bool,
    pub acl_objects: Vec<u16>,
}

impl From<SettingsSummary> for SettingsInfo {
    fn from(s: SettingsSummary) -> Self {
        SettingsInfo {
            servers: s
                .servers
                .into_iter()
                .map(|server| ServerInfo {
                    short_server_id: server.short_server_id,
                    uri: server.uri,
                    lifetime_s: server.lifetime_s,
                    binding: server.binding,
                    credential: server.credential.to_owned(),
                    oscore: server.oscore,
                })
                .collect(),
            bootstrap_uri: s.bootstrap_uri,
            replace_bootstrap_credential: s.replace_bootstrap_credential,
            allow_unsecured: s.allow_unsecured,
            acl_objects: s.acl_objects,
        }
    }
}

/// A template: every device whose name starts with `endpoint_prefix` (and has no
/// configuration of its own) gets its settings.
#[derive(Serialize, ToSchema, Clone)]
pub struct TemplateInfo {
    pub name: String,
    pub endpoint_prefix: String,
    pub settings: SettingsInfo,
}

impl From<TemplateSummary> for TemplateInfo {
    fn from(t: TemplateSummary) -> Self {
        TemplateInfo {
            name: t.name,
            endpoint_prefix: t.endpoint_prefix,
            settings: t.settings.into(),
        }
    }
}

pub(crate) async fn templates(state: &WebState) -> Result<Vec<TemplateInfo>, ApiError> {
    Ok(bootstrap_of(state)?
        .template_summaries()
        .await?
        .into_iter()
        .map(TemplateInfo::from)
        .collect())
}

/// Every template.
#[utoipa::path(get, path = "/api/bootstrap/templates", tag = "bootstrap",
    responses((status = 200, body = Vec<TemplateInfo>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list_templates(
    State(state): State<WebState>,
    _admin: Admin,
) -> Result<Json<Vec<TemplateInfo>>, ApiError> {
    templates(&state).await.map(Json)
}

/// A new template (or a replacement of the one with this name).
#[derive(Deserialize, ToSchema)]
pub struct TemplateRequest {
    pub name: String,
    pub endpoint_prefix: String,
    /// The device-management server's URI (`coaps://host:5684`).
    pub dm_uri: String,
    /// The Bootstrap-Server URI written into the devices' bootstrap account.
    pub bootstrap_uri: String,
    /// `psk` (generated per device at bootstrap, the default) or `nosec` (a `coap://` server).
    pub credential: Option<String>,
    /// Registration lifetime, seconds (default 300).
    pub lifetime_s: Option<u32>,
    /// Short Server ID (default 1).
    pub short_server_id: Option<u16>,
    /// Replace the bootstrap credential at each bootstrap (default true).
    pub replace_bootstrap_credential: Option<bool>,
    /// Give the server full rights on these objects (Access Control instances).
    #[serde(default)]
    pub acl_objects: Vec<u16>,
}

fn template_of(request: &TemplateRequest) -> Result<BootstrapTemplate, ApiError> {
    let text_ok =
        |text: &str, max: usize| text.chars().count() <= max && !text.chars().any(char::is_control);
    if request.name.trim().is_empty() || !text_ok(&request.name, 64) {
        return Err(ApiError::bad_request(
            "invalid_template",
            "the name is 1 to 64 characters",
        ));
    }
    if !text_ok(&request.endpoint_prefix, 128) {
        return Err(ApiError::bad_request(
            "invalid_template",
            "the prefix is at most 128 characters",
        ));
    }
    let nosec = match request.credential.as_deref().unwrap_or("psk") {
        "psk" => false,
        "nosec" => true,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_template",
                "credential is psk or nosec",
            ));
        }
    };
    let scheme_ok = |uri: &str, schemes: &[&str]| {
        text_ok(uri, 256) && schemes.iter().any(|s| uri.starts_with(s)) && uri.len() > 8
    };
    let dm_schemes: &[&str] = if nosec { &["coap://"] } else { &["coaps://"] };
    if !scheme_ok(&request.dm_uri, dm_schemes) {
        return Err(ApiError::bad_request(
            "invalid_template",
            if nosec {
                "a NoSec server's URI starts with coap://"
            } else {
                "the server's URI starts with coaps://"
            },
        ));
    }
    if !scheme_ok(&request.bootstrap_uri, &["coap://", "coaps://"]) {
        return Err(ApiError::bad_request(
            "invalid_template",
            "the bootstrap URI starts with coaps:// or coap://",
        ));
    }
    let short_server_id = request.short_server_id.unwrap_or(1);
    if !(1..=65534).contains(&short_server_id) {
        return Err(ApiError::bad_request(
            "invalid_template",
            "the Short Server ID is 1 to 65534",
        ));
    }
    if request.acl_objects.len() > 64 {
        return Err(ApiError::bad_request(
            "invalid_template",
            "at most 64 ACL objects",
        ));
    }
    Ok(BootstrapTemplate {
        name: request.name.trim().to_owned(),
        endpoint_prefix: request.endpoint_prefix.clone(),
        settings: BootstrapSettings {
            servers: vec![DmServerConfig {
                short_server_id,
                uri: request.dm_uri.clone(),
                lifetime_s: request.lifetime_s.unwrap_or(300).clamp(10, 86_400 * 30),
                binding: "U".into(),
                credential: if nosec {
                    DmCredentialSource::NoSec
                } else {
                    DmCredentialSource::Generate(CredentialKind::Psk)
                },
                oscore: false,
            }],
            acl: request
                .acl_objects
                .iter()
                .map(|object| AclConfig {
                    object_id: *object,
                    instance_id: 0,
                    rights: vec![(short_server_id, 0b1_1111)],
                    owner: short_server_id,
                })
                .collect(),
            replace_bootstrap_credential: request.replace_bootstrap_credential.unwrap_or(true),
            bootstrap_uri: request.bootstrap_uri.clone(),
            allow_unsecured: nosec,
        },
    })
}

/// Adds or replaces a template; the device-management credential is generated per device.
#[utoipa::path(post, path = "/api/bootstrap/templates", tag = "bootstrap",
    request_body = TemplateRequest,
    responses((status = 201, body = TemplateInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn put_template(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Body(request): Body<TemplateRequest>,
) -> Result<(StatusCode, Json<TemplateInfo>), ApiError> {
    let target = format!("{} ({}*)", request.name, request.endpoint_prefix);
    let result = async {
        let bootstrap = bootstrap_of(&state)?;
        let template = template_of(&request)?;
        let name = template.name.clone();
        bootstrap.put_template(template).await?;
        templates(&state)
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| (StatusCode::CREATED, Json(t)))
            .ok_or_else(|| ApiError::internal("template"))
    }
    .await;
    audited(
        &state,
        &principal,
        "bootstrap.template.put",
        &target,
        result,
    )
    .await
}

/// Removes a template.
#[utoipa::path(delete, path = "/api/bootstrap/templates/{name}", tag = "bootstrap",
    params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn remove_template(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        if bootstrap_of(&state)?.remove_template(&name).await? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!("no template {name:?}")))
        }
    }
    .await;
    audited(
        &state,
        &principal,
        "bootstrap.template.remove",
        &name,
        result,
    )
    .await
}

/// Which devices get fresh credentials: `endpoints`, every device whose name starts with
/// `group`, or `all`.
#[derive(Deserialize, ToSchema)]
pub struct RotateRequest {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub group: Option<String>,
    #[serde(default)]
    pub all: bool,
    /// Seconds to wait for the devices to register with fresh credentials (default 30, at
    /// most 300).
    pub wait_s: Option<u64>,
}

/// A device a rotation could not ask, and why.
#[derive(Serialize, ToSchema)]
pub struct RotationFailure {
    pub endpoint: String,
    pub reason: String,
}

/// What a rotation did.
#[derive(Serialize, ToSchema)]
pub struct RotationReportInfo {
    /// Registered again with fresh credentials; the previous ones are refused.
    pub rotated: Vec<String>,
    /// Marked for rotation, not done in time (not registered, or still bootstrapping); they
    /// rotate when they next register.
    pub pending: Vec<String>,
    pub failed: Vec<RotationFailure>,
    /// `rotated N, pending N, failed N`.
    pub summary: String,
}

/// Fresh credentials for devices: each registered device is asked to bootstrap again (Execute
/// /1/x/9) and the answer waits for them to register with the new credentials.
#[utoipa::path(post, path = "/api/bootstrap/rotate", tag = "bootstrap",
    request_body = RotateRequest,
    responses((status = 200, body = RotationReportInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn rotate(
    State(state): State<WebState>,
    Admin(principal): Admin,
    Body(request): Body<RotateRequest>,
) -> Result<Json<RotationReportInfo>, ApiError> {
    let group = request.group.as_deref().filter(|g| !g.is_empty());
    let endpoints: Vec<String> = request
        .endpoints
        .iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    let target = if request.all {
        "all".to_owned()
    } else if let Some(group) = group {
        format!("group {group}")
    } else {
        endpoints.join(",")
    };
    let result = async {
        let bootstrap = bootstrap_of(&state)?;
        let targets = if request.all || group.is_some() {
            let mut all = bootstrap.device_endpoints().await?;
            if let Some(prefix) = group {
                all.retain(|e| e.starts_with(prefix));
            }
            all
        } else {
            endpoints.clone()
        };
        if targets.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_request",
                "name the devices: endpoints, a group prefix, or all",
            ));
        }
        let wait = Duration::from_secs(request.wait_s.unwrap_or(30).min(MAX_ROTATION_WAIT_S));
        let report = bootstrap.rotate(&state.inner.server, &targets, wait).await;
        Ok(Json(RotationReportInfo {
            summary: format!(
                "rotated {}, pending {}, failed {}",
                report.rotated.len(),
                report.pending.len(),
                report.failed.len()
            ),
            rotated: report.rotated,
            pending: report.pending,
            failed: report
                .failed
                .into_iter()
                .map(|(endpoint, reason)| RotationFailure { endpoint, reason })
                .collect(),
        }))
    }
    .await;
    let outcome_target = match &result {
        Ok(Json(report)) => format!("{target}: {}", report.summary),
        Err(_) => target,
    };
    audited(
        &state,
        &principal,
        "bootstrap.rotate",
        &outcome_target,
        result,
    )
    .await
}
