//! Console pages for firmware and campaigns (`/firmware`) and for bootstrap and device
//! credentials (`/bootstrap`). They read through the same functions as the API and change
//! things through the API (with the session's CSRF token, from `app.js`).

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_store::Role;
use serde::Deserialize;

use crate::api::Peer;
use crate::api_bootstrap::{self, BootstrapDeviceInfo, TemplateInfo};
use crate::api_firmware::{self, CampaignInfo, Counts, FirmwareInfo};
use crate::console::{Chrome, PageUser, forbidden, message, render};
use crate::{WebState, session};

/// Devices shown on one page of the bootstrap table.
const DEVICES_PER_PAGE: usize = 200;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/firmware", get(firmware_page))
        .route("/firmware/campaign-rows", get(campaign_rows))
        .route("/firmware/campaigns/{id}", get(campaign_page))
        .route("/firmware/campaigns/{id}/progress", get(campaign_progress))
        .route("/bootstrap", get(bootstrap_page))
        .route("/bootstrap/rows", get(bootstrap_rows))
}

/// One coloured part of a progress bar (percent of the width).
pub struct Segment {
    pub class: &'static str,
    pub label: &'static str,
    pub count: usize,
    pub x: String,
    pub width: String,
}

/// The segments of a campaign's progress bar, from its counts.
pub fn segments(counts: &Counts) -> Vec<Segment> {
    let total = counts.total.max(1) as f64;
    let mut x = 0.0;
    let mut out = Vec::new();
    for (class, label, count) in [
        ("seg-updated", "updated", counts.updated),
        ("seg-failed", "failed", counts.failed),
        ("seg-unreachable", "unreachable", counts.unreachable),
        ("seg-progress", "in progress", counts.in_progress),
        ("seg-cancelled", "cancelled", counts.cancelled),
        ("seg-pending", "pending", counts.pending),
    ] {
        let width = count as f64 * 100.0 / total;
        out.push(Segment {
            class,
            label,
            count,
            x: format!("{x:.2}"),
            width: format!("{width:.2}"),
        });
        x += width;
    }
    out
}

pub struct CampaignRow {
    pub info: CampaignInfo,
    pub segments: Vec<Segment>,
    /// Updated, failed, unreachable and cancelled over the total, percent.
    pub done_percent: usize,
    /// Halted, cancelled or completed: it will not change any more.
    pub finished: bool,
}

fn row(info: CampaignInfo) -> CampaignRow {
    let c = info.counts;
    let done = c.updated + c.failed + c.unreachable + c.cancelled;
    CampaignRow {
        segments: segments(&c),
        done_percent: done * 100 / c.total.max(1),
        finished: matches!(info.state, "halted" | "cancelled" | "completed"),
        info,
    }
}

async fn campaign_rows_of(state: &WebState) -> Vec<CampaignRow> {
    state
        .inner
        .server
        .campaigns(50)
        .await
        .iter()
        .map(|s| row(api_firmware::campaign_info(s, false)))
        .collect()
}

#[derive(Template)]
#[template(path = "firmware.html")]
struct FirmwarePage {
    page: Chrome,
    can_operate: bool,
    images: Vec<FirmwareInfo>,
    campaigns: Vec<CampaignRow>,
    upload_limit_mib: usize,
}

async fn firmware_page(State(state): State<WebState>, PageUser(principal): PageUser) -> Response {
    let images = match api_firmware::firmware_list(&state).await {
        Ok(images) => images,
        Err(error) => return error.into_response(),
    };
    render(&FirmwarePage {
        page: Chrome::of(&principal, "Firmware & campaigns"),
        can_operate: principal.role >= Role::Operator,
        images,
        campaigns: campaign_rows_of(&state).await,
        upload_limit_mib: state.inner.config.firmware_upload_limit >> 20,
    })
}

#[derive(Template)]
#[template(path = "campaign_rows.html")]
struct CampaignRows {
    campaigns: Vec<CampaignRow>,
}

/// The user of a fragment for htmx: 401 with `HX-Redirect` once the session ended.
async fn fragment_user(
    state: &WebState,
    headers: &HeaderMap,
    peer: Peer,
) -> Result<crate::Principal, Response> {
    session::authenticate(state, &Method::GET, headers, peer.0, None)
        .await
        .map_err(|_| (StatusCode::UNAUTHORIZED, [("hx-redirect", "/login")]).into_response())
}

async fn campaign_rows(State(state): State<WebState>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(refusal) = fragment_user(&state, &headers, peer).await {
        return refusal;
    }
    render(&CampaignRows {
        campaigns: campaign_rows_of(&state).await,
    })
}

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    page: Chrome,
    can_operate: bool,
    c: CampaignRow,
    image: String,
}

/// The name and version of an image, or its id when it is gone.
async fn image_label(state: &WebState, id: &str) -> String {
    api_firmware::firmware_list(state)
        .await
        .ok()
        .and_then(|images| images.into_iter().find(|i| i.id == id))
        .map(|i| format!("{} {}", i.name, i.version))
        .unwrap_or_else(|| format!("{id} (removed)"))
}

async fn campaign_page(
    State(state): State<WebState>,
    PageUser(principal): PageUser,
    Path(id): Path<String>,
) -> Response {
    match state.inner.server.campaign(&id).await {
        Some(status) => render(&CampaignPage {
            page: Chrome::of(&principal, &format!("Campaign {}", status.spec.name)),
            can_operate: principal.role >= Role::Operator,
            image: image_label(&state, &status.spec.image_id).await,
            c: row(api_firmware::campaign_info(&status, true)),
        }),
        None => message(
            Chrome::of(&principal, "Campaign"),
            StatusCode::NOT_FOUND,
            "There is no such campaign.",
            "/firmware",
            "Back to firmware & campaigns",
        ),
    }
}

#[derive(Template)]
#[template(path = "campaign_progress.html")]
struct CampaignProgress {
    c: CampaignRow,
    image: String,
}

async fn campaign_progress(
    State(state): State<WebState>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = fragment_user(&state, &headers, peer).await {
        return refusal;
    }
    match state.inner.server.campaign(&id).await {
        Some(status) => render(&CampaignProgress {
            image: image_label(&state, &status.spec.image_id).await,
            c: row(api_firmware::campaign_info(&status, true)),
        }),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Template)]
#[template(path = "bootstrap.html")]
struct BootstrapPage {
    page: Chrome,
    available: bool,
    templates: Vec<TemplateInfo>,
    devices: Vec<BootstrapDeviceInfo>,
    bootstrapped: usize,
    next: String,
    after: String,
}

#[derive(Template)]
#[template(path = "bootstrap_rows.html")]
struct BootstrapRows {
    devices: Vec<BootstrapDeviceInfo>,
    bootstrapped: usize,
}

/// The devices table alone, for htmx (refreshed every few seconds: a rotation shows).
async fn bootstrap_rows(
    State(state): State<WebState>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<AfterQuery>,
) -> Response {
    match fragment_user(&state, &headers, peer).await {
        Ok(principal) if principal.role >= Role::Admin => {}
        Ok(_) => return StatusCode::FORBIDDEN.into_response(),
        Err(refusal) => return refusal,
    }
    match api_bootstrap::device_page(&state, query.after.as_deref(), DEVICES_PER_PAGE).await {
        Ok(page) => render(&BootstrapRows {
            bootstrapped: page.items.iter().filter(|d| d.finished > 0).count(),
            devices: page.items,
        }),
        Err(error) => error.into_response(),
    }
}

#[derive(Deserialize)]
struct AfterQuery {
    after: Option<String>,
}

async fn bootstrap_page(
    State(state): State<WebState>,
    PageUser(principal): PageUser,
    Query(query): Query<AfterQuery>,
) -> Response {
    if principal.role < Role::Admin {
        return forbidden(&principal);
    }
    let chrome = Chrome::of(&principal, "Bootstrap & credentials");
    if api_bootstrap::bootstrap_of(&state).is_err() {
        return render(&BootstrapPage {
            page: chrome,
            available: false,
            templates: Vec::new(),
            devices: Vec::new(),
            bootstrapped: 0,
            next: String::new(),
            after: String::new(),
        });
    }
    let templates = match api_bootstrap::templates(&state).await {
        Ok(templates) => templates,
        Err(error) => return error.into_response(),
    };
    let page =
        match api_bootstrap::device_page(&state, query.after.as_deref(), DEVICES_PER_PAGE).await {
            Ok(page) => page,
            Err(error) => return error.into_response(),
        };
    render(&BootstrapPage {
        page: chrome,
        available: true,
        templates,
        bootstrapped: page.items.iter().filter(|d| d.finished > 0).count(),
        devices: page.items,
        next: page.next.unwrap_or_default(),
        after: query.after.unwrap_or_default(),
    })
}
