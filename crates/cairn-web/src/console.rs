//! The web console: server-rendered pages (askama) and the static assets embedded in the
//! binary (rust-embed; no CDN). Pages carry no inline script or style, so the strict content
//! security policy holds; `static/app.js` drives the buttons through the REST API with the
//! session's CSRF token (read from a `<meta>` element).
//!
//! Sign-in, setup and enrolment are plain HTML forms that work without JavaScript. The forms
//! used before a session exists (sign-in, setup) are protected from cross-site posting by a
//! double-submit token: a random value in a `SameSite=Strict` cookie that the form must repeat.

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use cairn_store::Role;
use rust_embed::RustEmbed;
use serde::Deserialize;

use crate::api::{self, DeviceQuery, DeviceSummary, Peer};
use crate::error::ApiError;
use crate::session::{self, NextStep, Principal};
use crate::{WebState, auth};

/// The double-submit cookie of the sign-in and setup forms.
const FORM_COOKIE: &str = "cairn_form";

#[derive(RustEmbed)]
#[folder = "static/"]
struct Assets;

/// Every console route.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(fleet_page))
        .route("/fleet/rows", get(fleet_rows))
        .route("/login", get(login_page).post(login_submit))
        .route("/login/totp", get(totp_page).post(totp_submit))
        .route("/setup", get(setup_page).post(setup_submit))
        .route("/enrol", get(enrol_page).post(enrol_start))
        .route("/enrol/confirm", axum::routing::post(enrol_confirm))
        .route("/logout", axum::routing::post(logout_submit))
        .route("/devices/{endpoint}", get(device_page))
        .route("/audit", get(audit_page))
        .route("/account", get(account_page))
        .route("/users", get(users_page))
        .route("/tokens", get(tokens_page))
        .route("/security", get(security_page))
        .route("/static/{*file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    match Assets::get(&file) {
        Some(content) => {
            let mime = match file.rsplit('.').next() {
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("svg") => "image/svg+xml",
                _ => "application/octet-stream",
            };
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "max-age=300"),
                ],
                content.data.into_owned(),
            )
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// What every page shows in its frame.
pub struct Chrome {
    pub title: String,
    pub csrf: String,
    pub user: String,
    pub role: String,
    pub admin: bool,
}

impl Chrome {
    fn anonymous(title: &str) -> Chrome {
        Chrome {
            title: title.to_owned(),
            csrf: String::new(),
            user: String::new(),
            role: String::new(),
            admin: false,
        }
    }

    pub(crate) fn of(principal: &Principal, title: &str) -> Chrome {
        Chrome {
            title: title.to_owned(),
            csrf: principal.csrf_token().unwrap_or_default().to_owned(),
            user: principal.username.clone(),
            role: principal.role.as_str().to_owned(),
            admin: principal.role == Role::Admin,
        }
    }
}

pub(crate) fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "template failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    page: Chrome,
    class: &'static str,
    message: String,
    link: String,
    link_text: String,
}

pub(crate) fn message(
    page: Chrome,
    status: StatusCode,
    message: &str,
    link: &str,
    text: &str,
) -> Response {
    let mut response = render(&MessagePage {
        page,
        class: if status.is_success() { "info" } else { "error" },
        message: message.to_owned(),
        link: link.to_owned(),
        link_text: text.to_owned(),
    });
    *response.status_mut() = status;
    response
}

/// A signed-in user for a page; anyone else is sent to the sign-in page.
pub struct PageUser(pub Principal);

impl FromRequestParts<WebState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Response> {
        let peer = crate::tls::peer_of(&parts.extensions);
        // Pages are GETs: no CSRF token is due.
        session::authenticate(state, &Method::GET, &parts.headers, peer, None)
            .await
            .map(PageUser)
            .map_err(|_| Redirect::to("/login").into_response())
    }
}

pub(crate) fn forbidden(principal: &Principal) -> Response {
    message(
        Chrome::of(principal, "Not allowed"),
        StatusCode::FORBIDDEN,
        "Your role does not allow this page.",
        "/",
        "Back to the fleet",
    )
}

// ---- sign-in, setup, enrolment ----------------------------------------------------------------

fn form_cookie(state: &WebState, value: &str) -> HeaderValue {
    let secure = if state.inner.config.https {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{FORM_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn check_form_token(headers: &HeaderMap, sent: &str) -> Result<(), ApiError> {
    match session::cookie(headers, FORM_COOKIE) {
        Some(expected) if !sent.is_empty() && auth::same_secret(expected, sent) => Ok(()),
        _ => Err(ApiError::csrf()),
    }
}

/// A page with a fresh double-submit token in its form and cookie.
fn with_form_token(state: &WebState, make: impl FnOnce(String) -> Response) -> Response {
    let token = match auth::random_token("") {
        Ok(token) => token.as_str().to_owned(),
        Err(error) => return error.into_response(),
    };
    let mut response = make(token.clone());
    response
        .headers_mut()
        .append(header::SET_COOKIE, form_cookie(state, &token));
    response
}

fn with_cookie(state: &WebState, id: &str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::session_cookie(state, Some(id)));
    response
}

fn after_login(next: NextStep) -> Redirect {
    match next {
        NextStep::Totp => Redirect::to("/login/totp"),
        NextStep::EnrolTotp => Redirect::to("/enrol"),
        NextStep::Done => Redirect::to("/"),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    page: Chrome,
    form_token: String,
    error: String,
}

fn login_form(state: &WebState, status: StatusCode, error: &str) -> Response {
    with_form_token(state, |form_token| {
        let mut response = render(&LoginPage {
            page: Chrome::anonymous("Sign in"),
            form_token,
            error: error.to_owned(),
        });
        *response.status_mut() = status;
        response
    })
}

async fn login_page(State(state): State<WebState>) -> Response {
    login_form(&state, StatusCode::OK, "")
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf_token: String,
    username: String,
    password: String,
}

async fn login_submit(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(error) = check_form_token(&headers, &form.csrf_token) {
        return login_form(&state, error.status, "The form expired; try again.");
    }
    match session::login_password(&state, &headers, peer, &form.username, &form.password).await {
        Ok(step) => with_cookie(&state, &step.session_id, after_login(step.next)),
        Err(error) => login_form(&state, error.status, &error.message),
    }
}

#[derive(Template)]
#[template(path = "totp.html")]
struct TotpPage {
    page: Chrome,
    form_token: String,
    error: String,
}

async fn totp_page(State(state): State<WebState>, headers: HeaderMap) -> Response {
    match session::pending_login(&state, &headers).await {
        Ok(current) => render(&TotpPage {
            page: Chrome::anonymous("Second factor"),
            form_token: current.session.csrf_token,
            error: String::new(),
        }),
        Err(_) => Redirect::to("/login").into_response(),
    }
}

#[derive(Deserialize)]
struct CodeForm {
    #[serde(default)]
    csrf_token: String,
    code: String,
}

async fn totp_submit(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let Ok(current) = session::pending_login(&state, &headers).await else {
        return Redirect::to("/login").into_response();
    };
    if let Err(error) = session::check_csrf(&current.session, &headers, Some(&form.csrf_token)) {
        return error.into_response();
    }
    let csrf = current.session.csrf_token.clone();
    match session::login_second_factor(&state, current, peer, &form.code).await {
        Ok(step) => with_cookie(&state, &step.session_id, Redirect::to("/")),
        Err(error) => {
            let mut response = render(&TotpPage {
                page: Chrome::anonymous("Second factor"),
                form_token: csrf,
                error: error.message,
            });
            *response.status_mut() = error.status;
            response
        }
    }
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    page: Chrome,
    form_token: String,
    token: String,
    error: String,
}

#[derive(Deserialize)]
struct SetupQuery {
    #[serde(default)]
    token: String,
}

fn setup_form(state: &WebState, token: &str, status: StatusCode, error: &str) -> Response {
    with_form_token(state, |form_token| {
        let mut response = render(&SetupPage {
            page: Chrome::anonymous("Set up Cairn"),
            form_token,
            token: token.to_owned(),
            error: error.to_owned(),
        });
        *response.status_mut() = status;
        response
    })
}

async fn setup_page(State(state): State<WebState>, Query(query): Query<SetupQuery>) -> Response {
    let valid = state
        .inner
        .accounts
        .check_setup_token(auth::digest(&query.token), state.now_ms())
        .await
        .unwrap_or(false);
    if !valid {
        return message(
            Chrome::anonymous("Set up Cairn"),
            StatusCode::UNAUTHORIZED,
            "This setup link is invalid, used or expired. Run `cairn admin setup-link` or \
             `cairn admin create` on the server to get a new one.",
            "/login",
            "Sign in",
        );
    }
    setup_form(&state, &query.token, StatusCode::OK, "")
}

#[derive(Deserialize)]
struct SetupForm {
    #[serde(default)]
    csrf_token: String,
    token: String,
    username: String,
    password: String,
}

async fn setup_submit(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> Response {
    if let Err(error) = check_form_token(&headers, &form.csrf_token) {
        return setup_form(
            &state,
            &form.token,
            error.status,
            "The form expired; try again.",
        );
    }
    match api::run_setup(&state, peer, &form.token, &form.username, &form.password).await {
        Ok(step) => with_cookie(&state, &step.session_id, after_login(step.next)),
        Err(error) => setup_form(&state, &form.token, error.status, &error.message),
    }
}

#[derive(Template)]
#[template(path = "enrol.html")]
struct EnrolPage {
    page: Chrome,
    form_token: String,
    error: String,
    qr: String,
    secret: String,
}

async fn enrol_page(State(state): State<WebState>, headers: HeaderMap) -> Response {
    match session::enrolment_session(&state, &headers).await {
        Ok(current) => render(&EnrolPage {
            page: Chrome::anonymous("Two-factor authentication"),
            form_token: current.session.csrf_token,
            error: String::new(),
            qr: String::new(),
            secret: String::new(),
        }),
        Err(_) => Redirect::to("/login").into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf_token: String,
}

async fn enrol_start(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Ok(current) = session::enrolment_session(&state, &headers).await else {
        return Redirect::to("/login").into_response();
    };
    if let Err(error) = session::check_csrf(&current.session, &headers, Some(&form.csrf_token)) {
        return error.into_response();
    }
    let csrf = current.session.csrf_token.clone();
    match session::start_enrolment(&state, current).await {
        Ok(enrolment) => render(&EnrolPage {
            page: Chrome::anonymous("Two-factor authentication"),
            form_token: csrf,
            error: String::new(),
            qr: enrolment.qr_svg_data_uri,
            secret: enrolment.secret,
        }),
        Err(error) => error.into_response(),
    }
}

#[derive(Template)]
#[template(path = "recovery.html")]
struct RecoveryPage {
    page: Chrome,
    codes: Vec<String>,
}

async fn enrol_confirm(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let Ok(current) = session::enrolment_session(&state, &headers).await else {
        return Redirect::to("/login").into_response();
    };
    if let Err(error) = session::check_csrf(&current.session, &headers, Some(&form.csrf_token)) {
        return error.into_response();
    }
    let csrf = current.session.csrf_token.clone();
    match session::confirm_enrolment(&state, current, peer, &form.code).await {
        Ok((step, codes)) => {
            let page = RecoveryPage {
                page: Chrome::anonymous("Recovery codes"),
                codes: codes.iter().map(|c| c.as_str().to_owned()).collect(),
            };
            with_cookie(&state, &step.session_id, render(&page))
        }
        Err(error) => {
            let mut response = render(&EnrolPage {
                page: Chrome::anonymous("Two-factor authentication"),
                form_token: csrf,
                error: format!("{} Start again.", error.message),
                qr: String::new(),
                secret: String::new(),
            });
            *response.status_mut() = error.status;
            response
        }
    }
}

async fn logout_submit(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    match session::authenticate(
        &state,
        &Method::POST,
        &headers,
        peer,
        Some(&form.csrf_token),
    )
    .await
    {
        Ok(principal) => {
            if let Err(error) = api::end_session(&state, &principal).await {
                return error.into_response();
            }
            let mut response = Redirect::to("/login").into_response();
            response
                .headers_mut()
                .append(header::SET_COOKIE, session::session_cookie(&state, None));
            response
        }
        Err(error) if error.status == StatusCode::UNAUTHORIZED => {
            Redirect::to("/login").into_response()
        }
        Err(error) => error.into_response(),
    }
}

// ---- console pages ----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    page: Chrome,
    q: String,
    status: String,
    statuses: Vec<(&'static str, &'static str)>,
    devices: Vec<DeviceSummary>,
    total: usize,
    next: String,
}

async fn fleet_page(
    State(state): State<WebState>,
    PageUser(principal): PageUser,
    Query(query): Query<DeviceQuery>,
) -> Response {
    match api::filtered_fleet(&state, &query).await {
        Ok(page) => render(&FleetPage {
            page: Chrome::of(&principal, "Fleet"),
            q: query.q.clone().unwrap_or_default(),
            status: query.status.clone().unwrap_or_default(),
            statuses: vec![
                ("", "Any"),
                ("registered", "Registered"),
                ("queue", "Queue mode"),
                ("offline", "Offline"),
            ],
            devices: page.items,
            total: page.total,
            next: page.next.unwrap_or_default(),
        }),
        Err(error) => error.into_response(),
    }
}

#[derive(Template)]
#[template(path = "fleet_rows.html")]
struct FleetRows {
    q: String,
    status: String,
    devices: Vec<DeviceSummary>,
    total: usize,
    next: String,
}

/// The fleet table alone, for htmx (search as you type, refresh every few seconds). A
/// request whose session ended gets 401 with `HX-Redirect` to the sign-in page.
async fn fleet_rows(
    State(state): State<WebState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(query): Query<DeviceQuery>,
) -> Response {
    if session::authenticate(&state, &Method::GET, &headers, peer, None)
        .await
        .is_err()
    {
        return (StatusCode::UNAUTHORIZED, [("hx-redirect", "/login")]).into_response();
    }
    match api::filtered_fleet(&state, &query).await {
        Ok(page) => render(&FleetRows {
            q: query.q.clone().unwrap_or_default(),
            status: query.status.clone().unwrap_or_default(),
            devices: page.items,
            total: page.total,
            next: page.next.unwrap_or_default(),
        }),
        Err(error) => error.into_response(),
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    page: Chrome,
    endpoint: String,
    device: DeviceView,
    can_operate: bool,
}

struct DeviceView {
    summary: DeviceSummary,
    lifetime_s: u32,
    objects: Vec<api::ObjectInfo>,
}

async fn device_page(
    State(state): State<WebState>,
    PageUser(principal): PageUser,
    Path(endpoint): Path<String>,
) -> Response {
    let Some(registration) = state.inner.server.registration(&endpoint) else {
        return message(
            Chrome::of(&principal, "Device"),
            StatusCode::NOT_FOUND,
            "This device is not registered.",
            "/",
            "Back to the fleet",
        );
    };
    render(&DevicePage {
        page: Chrome::of(&principal, &endpoint),
        endpoint: endpoint.clone(),
        can_operate: principal.role >= Role::Operator,
        device: DeviceView {
            summary: api::summary_of(&registration),
            lifetime_s: registration.lifetime_s,
            objects: api::object_tree(&state, &registration),
        },
    })
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    page: Chrome,
    entries: Vec<api::AuditInfo>,
    older: Option<u64>,
}

#[derive(Deserialize)]
struct BeforeQuery {
    before: Option<u64>,
}

async fn audit_page(
    State(state): State<WebState>,
    PageUser(principal): PageUser,
    Query(query): Query<BeforeQuery>,
) -> Response {
    if principal.role < Role::Admin {
        return forbidden(&principal);
    }
    match api::audit_page(&state, query.before, Some(100)).await {
        Ok(entries) => {
            let older = if entries.len() == 100 {
                entries.last().map(|e| e.seq)
            } else {
                None
            };
            render(&AuditPage {
                page: Chrome::of(&principal, "Audit log"),
                entries,
                older,
            })
        }
        Err(error) => error.into_response(),
    }
}

struct UserRow {
    username: String,
    role: &'static str,
    totp_enrolled: bool,
    recovery_codes_left: usize,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    page: Chrome,
    users: Vec<UserRow>,
}

async fn users_page(State(state): State<WebState>, PageUser(principal): PageUser) -> Response {
    if principal.role < Role::Admin {
        return forbidden(&principal);
    }
    match state.inner.accounts.list_users().await {
        Ok(users) => render(&UsersPage {
            page: Chrome::of(&principal, "Users"),
            users: users
                .iter()
                .map(|u| UserRow {
                    username: u.username.clone(),
                    role: u.role.as_str(),
                    totp_enrolled: u.totp_secret.is_some(),
                    recovery_codes_left: u.recovery_codes.len(),
                })
                .collect(),
        }),
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    page: Chrome,
    tokens: Vec<cairn_store::ApiToken>,
}

async fn tokens_page(State(state): State<WebState>, PageUser(principal): PageUser) -> Response {
    if principal.role < Role::Admin {
        return forbidden(&principal);
    }
    match state.inner.accounts.list_api_tokens().await {
        Ok(tokens) => render(&TokensPage {
            page: Chrome::of(&principal, "API tokens"),
            tokens,
        }),
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[derive(Template)]
#[template(path = "security.html")]
struct SecurityPage {
    page: Chrome,
    entries: Vec<SecurityRow>,
}

struct SecurityRow {
    endpoint: String,
    mode: &'static str,
    identity: Option<String>,
    key_fingerprint: Option<String>,
}

async fn security_page(State(state): State<WebState>, PageUser(principal): PageUser) -> Response {
    if principal.role < Role::Admin {
        return forbidden(&principal);
    }
    match state.inner.server.security_summaries().await {
        Ok(entries) => render(&SecurityPage {
            page: Chrome::of(&principal, "Device security"),
            entries: entries
                .into_iter()
                .map(|s| SecurityRow {
                    mode: api::mode_name(s.mode),
                    endpoint: s.endpoint,
                    identity: s.identity,
                    key_fingerprint: s.key_fingerprint,
                })
                .collect(),
        }),
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    page: Chrome,
    totp_enrolled: bool,
    recovery_codes_left: usize,
}

async fn account_page(State(state): State<WebState>, PageUser(principal): PageUser) -> Response {
    match state.inner.accounts.get_user(&principal.username).await {
        Ok(Some(user)) => render(&AccountPage {
            page: Chrome::of(&principal, "Your account"),
            totp_enrolled: user.totp_secret.is_some(),
            recovery_codes_left: user.recovery_codes.len(),
        }),
        Ok(None) => Redirect::to("/login").into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}
