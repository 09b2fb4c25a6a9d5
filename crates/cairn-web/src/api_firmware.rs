//! Firmware images and update campaigns: `/api/firmware` and `/api/campaigns`.
//!
//! A viewer reads; an operator uploads and removes images and starts and steers campaigns.
//! Every change is written to the audit log.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cairn_server::campaign::{
    CampaignCounts, CampaignError, CampaignSpec, CampaignState, CampaignStatus, DeviceOutcome,
};
use cairn_server::firmware::{FirmwareError, FirmwareImage};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::WebState;
use crate::api::{Body, Operator, Viewer, audited};
use crate::error::{ApiError, ErrorBody};

/// The default largest firmware upload, in bytes.
pub const DEFAULT_UPLOAD_LIMIT: usize = 32 << 20;
/// The most campaigns listed.
const MAX_LISTED_CAMPAIGNS: usize = 200;
/// The most devices a campaign targets.
const MAX_TARGETS: usize = 100_000;

/// The routes without the upload (whose body limit differs).
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/firmware", get(list_firmware))
        .route("/api/firmware/{id}", delete(remove_firmware))
        .route("/api/campaigns", get(list_campaigns).post(start_campaign))
        .route("/api/campaigns/{id}", get(get_campaign))
        .route("/api/campaigns/{id}/pause", post(pause_campaign))
        .route("/api/campaigns/{id}/resume", post(resume_campaign))
        .route("/api/campaigns/{id}/cancel", post(cancel_campaign))
}

/// The upload route, with a body of up to `limit` bytes.
pub fn upload_routes(limit: usize) -> Router<WebState> {
    Router::new()
        .route("/api/firmware", post(upload_firmware))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
}

// ---- firmware ---------------------------------------------------------------------------------

/// A firmware image in the repository.
#[derive(Serialize, ToSchema, Clone)]
pub struct FirmwareInfo {
    /// Random id; devices download it from `/fw/{id}`.
    pub id: String,
    /// Package name (/5/0/6).
    pub name: String,
    /// Package version (/5/0/7).
    pub version: String,
    pub size: usize,
    /// SHA-256 of the image, hex.
    pub sha256: String,
    pub created_at_ms: u64,
}

impl From<FirmwareImage> for FirmwareInfo {
    fn from(image: FirmwareImage) -> Self {
        FirmwareInfo {
            id: image.id,
            name: image.name,
            version: image.version,
            size: image.size,
            sha256: image.sha256,
            created_at_ms: image.created_at_ms,
        }
    }
}

fn firmware_error(error: FirmwareError) -> ApiError {
    match error {
        FirmwareError::Empty => ApiError::bad_request("firmware_empty", error.to_string()),
        FirmwareError::TooLarge(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "firmware_too_large",
            error.to_string(),
        ),
        FirmwareError::Unknown(_) => ApiError::not_found(error.to_string()),
        FirmwareError::Corrupt(_) => ApiError::internal("firmware record"),
        FirmwareError::Store(store) => ApiError::from(store),
    }
}

pub(crate) async fn firmware_list(state: &WebState) -> Result<Vec<FirmwareInfo>, ApiError> {
    Ok(state
        .inner
        .server
        .firmware_images()
        .await
        .map_err(firmware_error)?
        .into_iter()
        .map(FirmwareInfo::from)
        .collect())
}

/// Every firmware image, oldest first.
#[utoipa::path(get, path = "/api/firmware", tag = "firmware",
    responses((status = 200, body = Vec<FirmwareInfo>), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_firmware(
    State(state): State<WebState>,
    _viewer: Viewer,
) -> Result<Json<Vec<FirmwareInfo>>, ApiError> {
    firmware_list(&state).await.map(Json)
}

/// The name and version of an uploaded image.
#[derive(Deserialize, IntoParams)]
pub struct UploadQuery {
    /// Package name (1 to 64 characters).
    pub name: String,
    /// Package version (1 to 64 characters).
    pub version: String,
}

fn check_label(what: &'static str, text: &str) -> Result<(), ApiError> {
    if text.is_empty() || text.chars().count() > 64 || text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("the {what} is 1 to 64 printable characters"),
        ));
    }
    Ok(())
}

/// Adds an image: the request body is the image itself (`application/octet-stream`), up to
/// the upload limit (32 MiB by default).
#[utoipa::path(post, path = "/api/firmware", tag = "firmware", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = FirmwareInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub(crate) async fn upload_firmware(
    State(state): State<WebState>,
    Operator(principal): Operator,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<FirmwareInfo>), ApiError> {
    let target = match &query {
        Ok(Query(q)) => format!("{} {}", q.name, q.version),
        Err(_) => String::new(),
    };
    let result = async {
        let Query(query) = query.map_err(|e| {
            ApiError::bad_request("invalid_request", format!("name and version: {e}"))
        })?;
        check_label("name", &query.name)?;
        check_label("version", &query.version)?;
        let bytes =
            body.map_err(|e| ApiError::new(e.status(), "firmware_too_large", e.body_text()))?;
        let image = state
            .inner
            .server
            .add_firmware(&query.name, &query.version, bytes.to_vec())
            .await
            .map_err(firmware_error)?;
        Ok((StatusCode::CREATED, Json(FirmwareInfo::from(image))))
    }
    .await;
    audited(&state, &principal, "firmware.upload", &target, result).await
}

/// Removes an image.
#[utoipa::path(delete, path = "/api/firmware/{id}", tag = "firmware",
    params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_firmware(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        if state
            .inner
            .server
            .remove_firmware(&id)
            .await
            .map_err(firmware_error)?
        {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!("no firmware image {id:?}")))
        }
    }
    .await;
    audited(&state, &principal, "firmware.remove", &id, result).await
}

// ---- campaigns --------------------------------------------------------------------------------

/// How many devices are in each state.
#[derive(Serialize, ToSchema, Clone, Copy, Default)]
pub struct Counts {
    pub pending: usize,
    pub in_progress: usize,
    pub updated: usize,
    pub failed: usize,
    pub unreachable: usize,
    pub cancelled: usize,
    pub total: usize,
}

impl From<CampaignCounts> for Counts {
    fn from(c: CampaignCounts) -> Self {
        Counts {
            pending: c.pending,
            in_progress: c.in_progress,
            updated: c.updated,
            failed: c.failed,
            unreachable: c.unreachable,
            cancelled: c.cancelled,
            total: c.pending + c.in_progress + c.updated + c.failed + c.unreachable + c.cancelled,
        }
    }
}

/// One device's outcome in a campaign.
#[derive(Serialize, ToSchema, Clone)]
pub struct DeviceProgress {
    pub endpoint: String,
    /// `pending`, `in_progress`, `updated`, `failed`, `unreachable` or `cancelled`.
    pub state: &'static str,
    /// The Update Result (/5/0/5) of a failed device.
    pub result: Option<u8>,
}

/// A campaign and where it is.
#[derive(Serialize, ToSchema, Clone)]
pub struct CampaignInfo {
    pub id: String,
    pub name: String,
    pub image_id: String,
    /// `running`, `paused`, `halted`, `cancelled` or `completed`.
    pub state: &'static str,
    /// The wave being run (or the last one run), from 0.
    pub wave: usize,
    /// Share of the targets done by the end of each wave, percent.
    pub waves: Vec<u8>,
    pub max_failure_percent: f64,
    pub counts: Counts,
    /// Why the campaign stopped by itself.
    pub halt_reason: Option<String>,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    /// Every device's outcome (only in a single campaign's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceProgress>>,
}

pub(crate) fn state_name(state: CampaignState) -> &'static str {
    match state {
        CampaignState::Running => "running",
        CampaignState::Paused => "paused",
        CampaignState::Halted => "halted",
        CampaignState::Cancelled => "cancelled",
        CampaignState::Completed => "completed",
    }
}

pub(crate) fn campaign_info(status: &CampaignStatus, with_devices: bool) -> CampaignInfo {
    CampaignInfo {
        id: status.id.clone(),
        name: status.spec.name.clone(),
        image_id: status.spec.image_id.clone(),
        state: state_name(status.state),
        wave: status.wave,
        waves: status.spec.waves.clone(),
        max_failure_percent: status.spec.max_failure_percent,
        counts: status.counts().into(),
        halt_reason: status.halt_reason.clone(),
        started_at_ms: status.started_at_ms,
        updated_at_ms: status.updated_at_ms,
        devices: with_devices.then(|| {
            status
                .devices
                .iter()
                .map(|(endpoint, outcome)| {
                    let (state, result) = match outcome {
                        DeviceOutcome::Pending => ("pending", None),
                        DeviceOutcome::InProgress => ("in_progress", None),
                        DeviceOutcome::Updated => ("updated", Some(1)),
                        DeviceOutcome::Failed { result } => ("failed", Some(*result)),
                        DeviceOutcome::Unreachable => ("unreachable", None),
                        DeviceOutcome::Cancelled => ("cancelled", None),
                    };
                    DeviceProgress {
                        endpoint: endpoint.clone(),
                        state,
                        result,
                    }
                })
                .collect()
        }),
    }
}

fn campaign_error(error: CampaignError) -> ApiError {
    match error {
        CampaignError::Invalid(_) => ApiError::bad_request("invalid_campaign", error.to_string()),
        CampaignError::UnknownImage(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_image", error.to_string())
        }
        CampaignError::Unknown(_) => ApiError::not_found(error.to_string()),
        CampaignError::Finished(_) => {
            ApiError::new(StatusCode::CONFLICT, "campaign_finished", error.to_string())
        }
        CampaignError::Server(server) => ApiError::from(server),
    }
}

/// Every campaign, newest first (at most 200), without per-device outcomes.
#[utoipa::path(get, path = "/api/campaigns", tag = "firmware",
    responses((status = 200, body = Vec<CampaignInfo>), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_campaigns(
    State(state): State<WebState>,
    _viewer: Viewer,
) -> Json<Vec<CampaignInfo>> {
    Json(
        state
            .inner
            .server
            .campaigns(MAX_LISTED_CAMPAIGNS)
            .await
            .iter()
            .map(|status| campaign_info(status, false))
            .collect(),
    )
}

/// A new campaign. The targets are the `endpoints` given, or else the registered devices whose
/// names start with `prefix` and contain `contains` (at least one of the two).
#[derive(Deserialize, ToSchema)]
pub struct StartCampaignRequest {
    pub name: String,
    pub image_id: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
    pub contains: Option<String>,
    /// Share of the targets done by the end of each wave, percent (default 1, 10, 100).
    pub waves: Option<Vec<u8>>,
    /// A wave whose failures exceed this share halts the campaign (default 5).
    pub max_failure_percent: Option<f64>,
    /// Devices updated at once (default 64).
    pub concurrency: Option<usize>,
    /// How long one device may take (default 600 s).
    pub device_timeout_s: Option<u64>,
}

/// The endpoints a campaign request targets.
pub(crate) fn campaign_targets(
    state: &WebState,
    request: &StartCampaignRequest,
) -> Result<Vec<String>, ApiError> {
    let mut targets: Vec<String> = if !request.endpoints.is_empty() {
        request
            .endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect()
    } else {
        let prefix = request.prefix.as_deref().unwrap_or("");
        let contains = request.contains.as_deref().unwrap_or("");
        if prefix.is_empty() && contains.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_campaign",
                "give endpoints, a prefix or a substring",
            ));
        }
        state
            .inner
            .server
            .registrations()
            .into_iter()
            .map(|r| r.endpoint)
            .filter(|e| e.starts_with(prefix) && e.contains(contains))
            .collect()
    };
    targets.sort();
    targets.dedup();
    if targets.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_campaign",
            "no device matches",
        ));
    }
    if targets.len() > MAX_TARGETS {
        return Err(ApiError::bad_request(
            "invalid_campaign",
            format!("at most {MAX_TARGETS} devices"),
        ));
    }
    Ok(targets)
}

/// Starts a campaign; the answer is its status.
#[utoipa::path(post, path = "/api/campaigns", tag = "firmware", request_body = StartCampaignRequest,
    responses((status = 201, body = CampaignInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn start_campaign(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Body(request): Body<StartCampaignRequest>,
) -> Result<(StatusCode, Json<CampaignInfo>), ApiError> {
    let target = request.name.clone();
    let result = async {
        if request.name.trim().is_empty() || request.name.chars().count() > 128 {
            return Err(ApiError::bad_request(
                "invalid_campaign",
                "the name is 1 to 128 characters",
            ));
        }
        let targets = campaign_targets(&state, &request)?;
        let mut spec = CampaignSpec::new(request.name.trim(), &request.image_id, targets);
        if let Some(waves) = request.waves.clone() {
            spec.waves = waves;
        }
        if let Some(percent) = request.max_failure_percent {
            spec.max_failure_percent = percent;
        }
        if let Some(concurrency) = request.concurrency {
            spec.concurrency = concurrency.min(1024);
        }
        if let Some(timeout) = request.device_timeout_s {
            spec.device_timeout_s = timeout.min(24 * 3600);
        }
        let id = state
            .inner
            .server
            .start_campaign(spec)
            .await
            .map_err(campaign_error)?;
        let status = state
            .inner
            .server
            .campaign(&id)
            .await
            .ok_or_else(|| ApiError::internal("campaign status"))?;
        Ok((StatusCode::CREATED, Json(campaign_info(&status, true))))
    }
    .await;
    let target = match &result {
        Ok((_, Json(info))) => format!("{} ({})", info.id, target),
        Err(_) => target,
    };
    audited(&state, &principal, "campaign.start", &target, result).await
}

/// A campaign with its counts and every device's outcome.
#[utoipa::path(get, path = "/api/campaigns/{id}", tag = "firmware",
    params(("id" = String, Path)),
    responses((status = 200, body = CampaignInfo), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn get_campaign(
    State(state): State<WebState>,
    _viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Json<CampaignInfo>, ApiError> {
    match state.inner.server.campaign(&id).await {
        Some(status) => Ok(Json(campaign_info(&status, true))),
        None => Err(ApiError::not_found(format!("no campaign {id:?}"))),
    }
}

async fn control(
    state: &WebState,
    principal: &crate::Principal,
    id: &str,
    action: &'static str,
) -> Result<Json<CampaignInfo>, ApiError> {
    let result = async {
        let server = &state.inner.server;
        match action {
            "campaign.pause" => server.pause_campaign(id),
            "campaign.resume" => server.resume_campaign(id),
            _ => server.cancel_campaign(id),
        }
        .map_err(campaign_error)?;
        // The campaign's task applies the change; give it a moment to show.
        let wanted = match action {
            "campaign.pause" => CampaignState::Paused,
            "campaign.resume" => CampaignState::Running,
            _ => CampaignState::Cancelled,
        };
        let mut status = None;
        for _ in 0..20 {
            status = server.campaign(id).await;
            if status
                .as_ref()
                .is_none_or(|s| s.state == wanted || s.is_finished())
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        status
            .map(|s| Json(campaign_info(&s, false)))
            .ok_or_else(|| ApiError::not_found(format!("no campaign {id:?}")))
    }
    .await;
    audited(state, principal, action, id, result).await
}

/// Holds back the devices not yet started (those in progress finish).
#[utoipa::path(post, path = "/api/campaigns/{id}/pause", tag = "firmware",
    params(("id" = String, Path)),
    responses((status = 200, body = CampaignInfo), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn pause_campaign(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(id): Path<String>,
) -> Result<Json<CampaignInfo>, ApiError> {
    control(&state, &principal, &id, "campaign.pause").await
}

/// Resumes a paused campaign.
#[utoipa::path(post, path = "/api/campaigns/{id}/resume", tag = "firmware",
    params(("id" = String, Path)),
    responses((status = 200, body = CampaignInfo), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn resume_campaign(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(id): Path<String>,
) -> Result<Json<CampaignInfo>, ApiError> {
    control(&state, &principal, &id, "campaign.resume").await
}

/// Cancels a campaign: devices not yet started are left alone.
#[utoipa::path(post, path = "/api/campaigns/{id}/cancel", tag = "firmware",
    params(("id" = String, Path)),
    responses((status = 200, body = CampaignInfo), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn cancel_campaign(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path(id): Path<String>,
) -> Result<Json<CampaignInfo>, ApiError> {
    control(&state, &principal, &id, "campaign.cancel").await
}
