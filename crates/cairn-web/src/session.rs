//! Who is asking: web sessions (cookie) and API tokens (`Authorization: Bearer`), the login
//! flow with its second factor, and the CSRF check.
//!
//! A session id is 256 random bits in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` under
//! HTTPS); the store keeps only its SHA-256. Every step of a login (password, then TOTP or
//! enrolment) issues a fresh id and deletes the old one in the same transaction, so an id
//! planted before login is worthless after it. A session ends after its idle timeout or its
//! absolute timeout, or at logout.
//!
//! A state-changing request (any method but GET, HEAD and OPTIONS) made with a session must
//! carry the session's synchronizer token in `X-CSRF-Token` (or, for console forms, in the
//! `csrf_token` field). A request with an API token carries no cookie, so a browser cannot be
//! made to send it cross-site: no CSRF token is needed.

use std::net::SocketAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use cairn_store::{Role, Session, SessionStage, TokenDigest, User};
use zeroize::Zeroizing;

use crate::WebState;
use crate::auth;
use crate::error::ApiError;

/// The session cookie's name over HTTP.
pub const SESSION_COOKIE: &str = "cairn_session";
/// Over HTTPS the `__Host-` prefix pins the cookie to this host and path `/`, `Secure`.
pub const SECURE_SESSION_COOKIE: &str = "__Host-cairn_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "cairn_";
/// Sessions are touched in the store at most this often (milliseconds).
const TOUCH_INTERVAL_MS: u64 = 60_000;

/// How a principal authenticated.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A web session.
    Session {
        digest: TokenDigest,
        csrf_token: String,
    },
    /// An API token.
    Token { id: String },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user (the token's owner for an API token).
    pub username: String,
    /// What the caller may do (for a token: the token's role, capped by its owner's).
    pub role: Role,
    /// How the caller authenticated.
    pub credential: Credential,
    /// Where the request came from.
    pub peer: SocketAddr,
}

impl Principal {
    /// The actor written to the audit log.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::Session { .. } => self.username.clone(),
            Credential::Token { id } => format!("{} (token {id})", self.username),
        }
    }

    /// The source written to the audit log.
    pub fn source(&self) -> String {
        self.peer.ip().to_string()
    }

    /// Refuses (403) a caller whose role is below `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// The CSRF token of a session principal.
    pub fn csrf_token(&self) -> Option<&str> {
        match &self.credential {
            Credential::Session { csrf_token, .. } => Some(csrf_token),
            Credential::Token { .. } => None,
        }
    }
}

/// The session cookie's name for this deployment.
pub fn cookie_name(state: &WebState) -> &'static str {
    if state.inner.config.https {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The value of a cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value for the session id (`None` clears the cookie).
pub fn session_cookie(state: &WebState, id: Option<&str>) -> HeaderValue {
    let secure = if state.inner.config.https {
        "; Secure"
    } else {
        ""
    };
    let text = match id {
        Some(id) => format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict{secure}",
            cookie_name(state)
        ),
        None => format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            cookie_name(state)
        ),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A session as found for a request, before the CSRF check.
pub struct CurrentSession {
    pub digest: TokenDigest,
    pub session: Session,
}

/// The request's session, if it has a live one (expired ones are removed).
pub async fn current_session(
    state: &WebState,
    headers: &HeaderMap,
) -> Result<Option<CurrentSession>, ApiError> {
    let Some(id) = cookie(headers, cookie_name(state)) else {
        return Ok(None);
    };
    let digest = auth::digest(id);
    let Some(mut session) = state.inner.accounts.get_session(digest).await? else {
        return Ok(None);
    };
    let now = state.now_ms();
    let config = &state.inner.config;
    let idle = now.saturating_sub(session.last_seen_ms) > config.idle_timeout.as_millis() as u64;
    let old =
        now.saturating_sub(session.created_at_ms) > config.absolute_timeout.as_millis() as u64;
    if idle || old {
        state.inner.accounts.remove_session(digest).await?;
        return Ok(None);
    }
    if now.saturating_sub(session.last_seen_ms) > TOUCH_INTERVAL_MS {
        session.last_seen_ms = now;
        state
            .inner
            .accounts
            .put_session(digest, session.clone(), None)
            .await?;
    }
    Ok(Some(CurrentSession { digest, session }))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Authenticates a request: the bearer token if there is one, else the session cookie.
/// `form_csrf` is the `csrf_token` field of a console form, checked like the header.
pub async fn authenticate(
    state: &WebState,
    method: &Method,
    headers: &HeaderMap,
    peer: SocketAddr,
    form_csrf: Option<&str>,
) -> Result<Principal, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        return authenticate_token(state, token, peer).await;
    }
    let current = current_session(state, headers)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    if current.session.stage != SessionStage::Authenticated {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "second_factor_required",
            "finish signing in with your second factor",
        ));
    }
    if !is_safe(method) {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .or(form_csrf);
        if !sent.is_some_and(|sent| auth::same_secret(sent, &current.session.csrf_token)) {
            return Err(ApiError::csrf());
        }
    }
    let user = state
        .inner
        .accounts
        .get_user(&current.session.username)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    Ok(Principal {
        username: user.username,
        role: user.role,
        credential: Credential::Session {
            digest: current.digest,
            csrf_token: current.session.csrf_token,
        },
        peer,
    })
}

async fn authenticate_token(
    state: &WebState,
    token: &str,
    peer: SocketAddr,
) -> Result<Principal, ApiError> {
    if !token.starts_with(API_TOKEN_PREFIX) || token.len() > 128 {
        return Err(ApiError::unauthenticated());
    }
    let record = state
        .inner
        .accounts
        .get_api_token_by_digest(auth::digest(token))
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    let now = state.now_ms();
    if record.revoked_at_ms.is_some() || now >= record.expires_at_ms {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "token_expired_or_revoked",
            "the API token expired or was revoked",
        ));
    }
    let owner = state
        .inner
        .accounts
        .get_user(&record.owner)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    Ok(Principal {
        username: owner.username,
        role: record.role.min(owner.role),
        credential: Credential::Token { id: record.id },
        peer,
    })
}

impl FromRequestParts<WebState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, ApiError> {
        let peer = crate::tls::peer_of(&parts.extensions);
        authenticate(state, &parts.method, &parts.headers, peer, None).await
    }
}

/// Names are 1 to 64 characters of letters, digits, `.`, `_`, `-` and `@`.
pub fn check_username(username: &str) -> Result<(), ApiError> {
    let valid = !username.is_empty()
        && username.len() <= 64
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_username",
            "a user name is 1 to 64 letters, digits, '.', '_', '-' or '@'",
        ))
    }
}

/// What a login step produced.
pub struct LoginStep {
    /// The new session id, for the cookie.
    pub session_id: Zeroizing<String>,
    /// The new session.
    pub session: Session,
    /// What the client must do next.
    pub next: NextStep,
}

/// The step after a successful password or second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NextStep {
    /// Enter the TOTP code (or a recovery code).
    Totp,
    /// Enrol a TOTP authenticator (administrators must).
    EnrolTotp,
    /// Signed in.
    Done,
}

/// Issues a new session (rotating `replaces` away) for `user` at `stage`.
pub async fn issue_session(
    state: &WebState,
    username: &str,
    stage: SessionStage,
    replaces: Option<TokenDigest>,
    created_at_ms: Option<u64>,
) -> Result<(Zeroizing<String>, Session), ApiError> {
    let id = auth::random_token("")?;
    let csrf = auth::random_token("")?;
    let now = state.now_ms();
    let session = Session {
        username: username.to_owned(),
        stage,
        csrf_token: csrf.as_str().to_owned(),
        created_at_ms: created_at_ms.unwrap_or(now),
        last_seen_ms: now,
        pending_totp_secret: None,
    };
    state
        .inner
        .accounts
        .put_session(auth::digest(&id), session.clone(), replaces)
        .await?;
    Ok((id, session))
}

fn next_step_for(user: &User) -> NextStep {
    match (&user.totp_secret, user.role) {
        (Some(_), _) => NextStep::Totp,
        (None, Role::Admin) => NextStep::EnrolTotp,
        (None, _) => NextStep::Done,
    }
}

/// The password step: throttled per source address and per account, Argon2id verification,
/// then a fresh session (the old one, if any, is deleted).
pub async fn login_password(
    state: &WebState,
    headers: &HeaderMap,
    peer: SocketAddr,
    username: &str,
    password: &str,
) -> Result<LoginStep, ApiError> {
    let now = state.now_ms();
    let ip = peer.ip();
    let source = ip.to_string();
    if let Err(wait) = state.inner.throttle.admit(ip, now) {
        state
            .audit(username, "login", username, &source, "throttled")
            .await;
        return Err(ApiError::too_many("too_many_attempts", wait));
    }
    // A name that cannot exist is not looked up (nor written to the audit log at length).
    let user = match check_username(username) {
        Ok(()) => state.inner.accounts.get_user(username).await?,
        Err(_) => None,
    };
    // A name without an account locks exactly as an account would, so the answer does not
    // tell which names exist.
    let locked_until = match &user {
        Some(user) => Some(user.locked_until_ms).filter(|&until| until > now),
        None => state.inner.unknown_names.locked_until(username, now),
    };
    if let Some(until) = locked_until {
        state.inner.throttle.failed(ip, now);
        state
            .audit(username, "login", username, &source, "account_locked")
            .await;
        return Err(ApiError::too_many(
            "account_locked",
            (until - now).div_ceil(1000),
        ));
    }
    let hash = match &user {
        Some(user) => user.password_hash.clone(),
        None => decoy_hash(state).await?,
    };
    let hashing = state.inner.config.password_hashing.clone();
    let password = Zeroizing::new(password.to_owned());
    let valid = tokio::task::spawn_blocking(move || hashing.verify(&password, &hash))
        .await
        .map_err(|_| ApiError::internal("password verification"))?;
    let Some(user) = user.filter(|_| valid) else {
        state.inner.throttle.failed(ip, now);
        if user_exists(state, username).await {
            state
                .inner
                .accounts
                .record_login_failure(username, now, state.inner.config.account_lockout)
                .await?;
        } else if check_username(username).is_ok() {
            state
                .inner
                .unknown_names
                .failed(username, now, state.inner.config.account_lockout);
        }
        state
            .audit(username, "login", username, &source, "bad_credentials")
            .await;
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong user name or password",
        ));
    };
    let next = next_step_for(&user);
    let stage = if next == NextStep::Done {
        state.inner.throttle.succeeded(ip);
        state.inner.accounts.clear_login_failures(username).await?;
        SessionStage::Authenticated
    } else {
        SessionStage::AwaitingSecondFactor
    };
    let old = cookie(headers, cookie_name(state)).map(auth::digest);
    let (session_id, session) = issue_session(state, &user.username, stage, old, None).await?;
    let outcome = match next {
        NextStep::Done => "ok",
        NextStep::Totp => "password_ok_totp_required",
        NextStep::EnrolTotp => "password_ok_enrolment_required",
    };
    state
        .audit(&user.username, "login", &user.username, &source, outcome)
        .await;
    Ok(LoginStep {
        session_id,
        session,
        next,
    })
}

async fn user_exists(state: &WebState, username: &str) -> bool {
    matches!(state.inner.accounts.get_user(username).await, Ok(Some(_)))
}

async fn decoy_hash(state: &WebState) -> Result<String, ApiError> {
    if let Some(hash) = state.inner.decoy_hash.get() {
        return Ok(hash.clone());
    }
    let hashing = state.inner.config.password_hashing.clone();
    let hash = tokio::task::spawn_blocking(move || hashing.decoy())
        .await
        .map_err(|_| ApiError::internal("password hashing"))??;
    Ok(state.inner.decoy_hash.get_or_init(|| hash).clone())
}

/// The session of a login in progress (password done, second factor due).
pub async fn pending_login(
    state: &WebState,
    headers: &HeaderMap,
) -> Result<CurrentSession, ApiError> {
    let current = current_session(state, headers)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    if current.session.stage != SessionStage::AwaitingSecondFactor {
        return Err(ApiError::bad_request(
            "no_login_in_progress",
            "there is no login waiting for a second factor",
        ));
    }
    Ok(current)
}

/// Checks the CSRF token of a session in progress (the second-factor forms).
pub fn check_csrf(
    session: &Session,
    headers: &HeaderMap,
    form: Option<&str>,
) -> Result<(), ApiError> {
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(form);
    if sent.is_some_and(|sent| auth::same_secret(sent, &session.csrf_token)) {
        Ok(())
    } else {
        Err(ApiError::csrf())
    }
}

/// The second-factor step: a TOTP code (each time step accepted once) or a recovery code
/// (each accepted once). On success the session id is rotated and the session authenticated.
pub async fn login_second_factor(
    state: &WebState,
    current: CurrentSession,
    peer: SocketAddr,
    code: &str,
) -> Result<LoginStep, ApiError> {
    let now = state.now_ms();
    let ip = peer.ip();
    let source = ip.to_string();
    let username = current.session.username.clone();
    if let Err(wait) = state.inner.throttle.admit(ip, now) {
        return Err(ApiError::too_many("too_many_attempts", wait));
    }
    let user = state
        .inner
        .accounts
        .get_user(&username)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    if user.locked_until_ms > now {
        return Err(ApiError::too_many(
            "account_locked",
            (user.locked_until_ms - now).div_ceil(1000),
        ));
    }
    let Some(secret) = &user.totp_secret else {
        return Err(ApiError::bad_request(
            "totp_not_enrolled",
            "enrol an authenticator first",
        ));
    };
    let accepted = match auth::totp_match(secret.expose(), code, now) {
        Some(step) => state.inner.accounts.use_totp_step(&username, step).await?,
        None if code.trim().len() > 6 => {
            state
                .inner
                .accounts
                .use_recovery_code(&username, auth::recovery_digest(code))
                .await?
        }
        None => false,
    };
    if !accepted {
        state.inner.throttle.failed(ip, now);
        state
            .inner
            .accounts
            .record_login_failure(&username, now, state.inner.config.account_lockout)
            .await?;
        state
            .audit(
                &username,
                "login.second_factor",
                &username,
                &source,
                "bad_code",
            )
            .await;
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "invalid_code",
            "wrong or already used code",
        ));
    }
    state.inner.throttle.succeeded(ip);
    state.inner.accounts.clear_login_failures(&username).await?;
    let (session_id, session) = issue_session(
        state,
        &username,
        SessionStage::Authenticated,
        Some(current.digest),
        None,
    )
    .await?;
    state
        .audit(&username, "login.second_factor", &username, &source, "ok")
        .await;
    Ok(LoginStep {
        session_id,
        session,
        next: NextStep::Done,
    })
}

/// What an enrolment shows: the secret (for manual entry), its URI and QR code.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Enrolment {
    /// The secret in base32, to type into an authenticator.
    pub secret: String,
    /// The `otpauth://` URI.
    pub otpauth_uri: String,
    /// The QR code of the URI, as an SVG `data:` URI.
    pub qr_svg_data_uri: String,
}

/// The session an enrolment may run in: a login waiting for enrolment, or a signed-in user.
pub async fn enrolment_session(
    state: &WebState,
    headers: &HeaderMap,
) -> Result<CurrentSession, ApiError> {
    let current = current_session(state, headers)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    if current.session.stage == SessionStage::AwaitingSecondFactor {
        let user = state
            .inner
            .accounts
            .get_user(&current.session.username)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        if user.totp_secret.is_some() {
            // A user with an authenticator proves it before changing it.
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "second_factor_required",
                "finish signing in with your second factor",
            ));
        }
    }
    Ok(current)
}

/// Starts an enrolment: a fresh secret kept (sealed) in the session until confirmed.
pub async fn start_enrolment(
    state: &WebState,
    mut current: CurrentSession,
) -> Result<Enrolment, ApiError> {
    let secret = Zeroizing::new(auth::random_bytes::<{ auth::TOTP_SECRET_LEN }>()?);
    let uri = auth::otpauth_uri("Cairn", &current.session.username, &*secret);
    let svg = auth::qr_svg(&uri)?;
    use base64::Engine;
    let data_uri = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    );
    current.session.pending_totp_secret = Some(cairn_store::SecretBytes::new(secret.to_vec()));
    state
        .inner
        .accounts
        .put_session(current.digest, current.session, None)
        .await?;
    Ok(Enrolment {
        secret: data_encoding::BASE32_NOPAD.encode(&*secret),
        otpauth_uri: uri,
        qr_svg_data_uri: data_uri,
    })
}

/// Confirms an enrolment with a code from the new authenticator: stores the secret, issues
/// recovery codes (returned once), rotates the session and authenticates it.
pub async fn confirm_enrolment(
    state: &WebState,
    current: CurrentSession,
    peer: SocketAddr,
    code: &str,
) -> Result<(LoginStep, Vec<Zeroizing<String>>), ApiError> {
    let now = state.now_ms();
    let username = current.session.username.clone();
    let source = peer.ip().to_string();
    let Some(secret) = current.session.pending_totp_secret.clone() else {
        return Err(ApiError::bad_request(
            "no_enrolment_in_progress",
            "start an enrolment first",
        ));
    };
    let Some(step) = auth::totp_match(secret.expose(), code, now) else {
        state.inner.throttle.failed(peer.ip(), now);
        state
            .audit(&username, "totp.enrol", &username, &source, "bad_code")
            .await;
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "invalid_code",
            "the code does not match the new authenticator",
        ));
    };
    let mut user = state
        .inner
        .accounts
        .get_user(&username)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    let codes = auth::recovery_codes()?;
    user.totp_secret = Some(secret);
    user.totp_last_step = step;
    user.recovery_codes = codes.iter().map(|c| auth::recovery_digest(c)).collect();
    user.failed_logins = 0;
    user.locked_until_ms = 0;
    state.inner.accounts.update_user(user).await?;
    let (session_id, session) = issue_session(
        state,
        &username,
        SessionStage::Authenticated,
        Some(current.digest),
        None,
    )
    .await?;
    state
        .audit(&username, "totp.enrol", &username, &source, "ok")
        .await;
    Ok((
        LoginStep {
            session_id,
            session,
            next: NextStep::Done,
        },
        codes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cairn_session_x=2; cairn_session=abc"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("other=3"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "other"), Some("3"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn user_names_are_bounded_and_plain() {
        assert!(check_username("ops.team-1@example").is_ok());
        for bad in ["", "a b", "x/y", "é", &"a".repeat(65)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any cookie header (valid header bytes) parses without panicking.
        #[test]
        fn any_cookie_header_parses(text in "[ -~]{0,200}", name in "[a-z_]{1,16}") {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert(header::COOKIE, value);
            }
            let _ = cookie(&headers, &name);
            let _ = check_username(&text);
        }
    }
}
