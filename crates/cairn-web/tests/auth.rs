//! Authentication and authorisation of the web side: the setup link, TOTP enrolment and
//! replay, lockouts, CSRF, session fixation and timeouts, cookies and headers, API tokens, the
//! role matrix of every endpoint, and the audit log.

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use cairn_store::Role;
use serde_json::json;
use support::{Auth, PASSWORD, harness};

const ADMIN_SECRET: [u8; 20] = [42; 20];

#[tokio::test]
async fn the_setup_link_creates_the_first_admin_once() {
    let h = harness().await;
    let link = h
        .state
        .issue_setup_link_if_no_users()
        .await
        .unwrap()
        .unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    assert!(token.len() > 40, "the setup token carries >= 128 bits");

    let page = h
        .call(
            Method::GET,
            &format!("/setup?token={token}"),
            &Auth::None,
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);

    let weak = h
        .call(
            Method::POST,
            "/api/setup",
            &Auth::None,
            Some(json!({"token": token, "username": "root", "password": "password1234"})),
        )
        .await;
    assert_eq!(weak.status, StatusCode::BAD_REQUEST);
    assert_eq!(weak.error_code(), "weak_password");

    let created = h
        .call(
            Method::POST,
            "/api/setup",
            &Auth::None,
            Some(json!({"token": token, "username": "root", "password": PASSWORD})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    assert_eq!(created.json()["next"], "enrol_totp");

    let again = h
        .call(
            Method::POST,
            "/api/setup",
            &Auth::None,
            Some(json!({"token": token, "username": "root2", "password": PASSWORD})),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.error_code(), "invalid_setup_token");
    let page = h
        .call(
            Method::GET,
            &format!("/setup?token={token}"),
            &Auth::None,
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // With a user, no new link is printed at start.
    assert!(
        h.state
            .issue_setup_link_if_no_users()
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_expired_setup_token_is_refused() {
    let h = harness().await;
    let link = h.state.issue_setup_link().await.unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    h.advance_ms(3600 * 1000 + 1);
    let answer = h
        .call(
            Method::POST,
            "/api/setup",
            &Auth::None,
            Some(json!({"token": token, "username": "root", "password": PASSWORD})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error_code(), "invalid_setup_token");
    let page = h
        .call(
            Method::GET,
            &format!("/setup?token={token}"),
            &Auth::None,
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // No user was created: a new link can be issued.
    assert!(
        h.state
            .issue_setup_link_if_no_users()
            .await
            .unwrap()
            .is_some()
    );
}

/// The setup flow through the API, to a signed-in admin with TOTP; returns the session, the
/// secret and the recovery codes.
async fn set_up_admin(h: &support::Harness) -> (Auth, Vec<u8>, Vec<String>) {
    let link = h.state.issue_setup_link().await.unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let created = h
        .call(
            Method::POST,
            "/api/setup",
            &Auth::None,
            Some(json!({"token": token, "username": "root", "password": PASSWORD})),
        )
        .await;
    let pending = Auth::Session {
        id: created.session_cookie().unwrap(),
        csrf: created.json()["csrf_token"].as_str().map(str::to_owned),
    };
    // Not signed in until enrolled.
    let me = h.call(Method::GET, "/api/me", &pending, None).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(me.error_code(), "second_factor_required");

    let enrol = h
        .call(Method::POST, "/api/auth/totp/enrol", &pending, None)
        .await;
    assert_eq!(enrol.status, StatusCode::OK, "{}", enrol.text);
    let enrolment = enrol.json();
    assert!(
        enrolment["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    assert!(
        enrolment["qr_svg_data_uri"]
            .as_str()
            .unwrap()
            .starts_with("data:image/svg+xml;base64,")
    );
    let secret = data_encoding::BASE32_NOPAD
        .decode(enrolment["secret"].as_str().unwrap().as_bytes())
        .unwrap();

    let wrong = h
        .call(
            Method::POST,
            "/api/auth/totp/confirm",
            &pending,
            Some(json!({"code": "000000"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let confirmed = h
        .call(
            Method::POST,
            "/api/auth/totp/confirm",
            &pending,
            Some(json!({"code": h.code(&secret)})),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    let codes: Vec<String> = confirmed.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    let session = Auth::Session {
        id: confirmed.session_cookie().unwrap(),
        csrf: confirmed.json()["csrf_token"].as_str().map(str::to_owned),
    };
    assert_ne!(
        session.session_id(),
        pending.session_id(),
        "enrolment rotates the id"
    );
    let old = h.call(Method::GET, "/api/me", &pending, None).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    (session, secret, codes)
}

#[tokio::test]
async fn an_admin_enrols_totp_and_then_signs_in_with_it() {
    let h = harness().await;
    let (session, secret, _) = set_up_admin(&h).await;
    let me = h.call(Method::GET, "/api/me", &session, None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["role"], "admin");

    // A later login needs the password and then a code of a later time step.
    h.advance_ms(30_000);
    let login = h
        .call(
            Method::POST,
            "/api/auth/login",
            &Auth::None,
            Some(json!({"username": "root", "password": PASSWORD})),
        )
        .await;
    assert_eq!(login.json()["next"], "totp");
    let pending = Auth::Session {
        id: login.session_cookie().unwrap(),
        csrf: login.json()["csrf_token"].as_str().map(str::to_owned),
    };
    let me = h.call(Method::GET, "/api/me", &pending, None).await;
    assert_eq!(
        me.status,
        StatusCode::UNAUTHORIZED,
        "password alone is not enough"
    );
    let done = h
        .call(
            Method::POST,
            "/api/auth/second-factor",
            &pending,
            Some(json!({"code": h.code(&secret)})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
}

#[tokio::test]
async fn an_admin_without_totp_must_enrol_before_anything_else() {
    let h = harness().await;
    h.add_user("offline-admin", Role::Admin, None).await;
    let login = h
        .call(
            Method::POST,
            "/api/auth/login",
            &Auth::None,
            Some(json!({"username": "offline-admin", "password": PASSWORD})),
        )
        .await;
    assert_eq!(login.json()["next"], "enrol_totp");
    let pending = Auth::Session {
        id: login.session_cookie().unwrap(),
        csrf: login.json()["csrf_token"].as_str().map(str::to_owned),
    };
    let users = h.call(Method::GET, "/api/users", &pending, None).await;
    assert_eq!(users.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_totp_code_is_never_accepted_twice() {
    let h = harness().await;
    h.add_user("alice", Role::Admin, Some(&ADMIN_SECRET)).await;
    let code = h.code(&ADMIN_SECRET);
    let first = h.sign_in("alice", Some(&ADMIN_SECRET)).await;
    assert_eq!(
        h.call(Method::GET, "/api/me", &first, None).await.status,
        StatusCode::OK
    );

    // Same code (same time step) in a second login: refused.
    let login = h
        .call(
            Method::POST,
            "/api/auth/login",
            &Auth::None,
            Some(json!({"username": "alice", "password": PASSWORD})),
        )
        .await;
    let pending = Auth::Session {
        id: login.session_cookie().unwrap(),
        csrf: login.json()["csrf_token"].as_str().map(str::to_owned),
    };
    let replay = h
        .call(
            Method::POST,
            "/api/auth/second-factor",
            &pending,
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.error_code(), "invalid_code");
    // The code of the previous step (inside the skew window) is older: refused too.
    let previous = cairn_web::auth::totp_code(&ADMIN_SECRET, h.now_ms() / 1000 / 30 - 1);
    let older = h
        .call(
            Method::POST,
            "/api/auth/second-factor",
            &pending,
            Some(json!({"code": previous})),
        )
        .await;
    assert_eq!(older.status, StatusCode::UNAUTHORIZED);
    // The next step's code works.
    h.advance_ms(30_000);
    let next = h
        .call(
            Method::POST,
            "/api/auth/second-factor",
            &pending,
            Some(json!({"code": h.code(&ADMIN_SECRET)})),
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
}

#[tokio::test]
async fn a_recovery_code_signs_in_once() {
    let h = harness().await;
    let (_, _, codes) = set_up_admin(&h).await;
    let pending = pending_login(&h, "root").await;
    let used = h
        .call(
            Method::POST,
            "/api/auth/second-factor",
            &pending,
            Some(json!({"code": codes[0].to_uppercase()})),
        )
        .await;
    assert_eq!(used.status, StatusCode::OK, "{}", used.text);
    let pending = pending_login(&h, "root").await;
    let again = h
        .call(
            Method::POST,
            "/api/auth/second-factor",
            &pending,
            Some(json!({"code": codes[0]})),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
}

async fn pending_login(h: &support::Harness, user: &str) -> Auth {
    let login = h
        .call(
            Method::POST,
            "/api/auth/login",
            &Auth::None,
            Some(json!({"username": user, "password": PASSWORD})),
        )
        .await;
    Auth::Session {
        id: login.session_cookie().unwrap(),
        csrf: login.json()["csrf_token"].as_str().map(str::to_owned),
    }
}

async fn try_login(
    h: &support::Harness,
    user: &str,
    password: &str,
    peer: &str,
) -> support::Answer {
    h.call_from(
        Method::POST,
        "/api/auth/login",
        &Auth::None,
        Some(json!({"username": user, "password": password})),
        peer,
    )
    .await
}

#[tokio::test]
async fn brute_force_locks_the_account_with_backoff() {
    let h = harness().await;
    h.add_user("bob", Role::Viewer, None).await;
    // Five failures from five addresses (so the address lockout is not what stops it).
    for i in 0..5 {
        let answer = try_login(&h, "bob", "wrong password!", &format!("198.51.100.{i}:1")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.error_code(), "invalid_credentials");
    }
    // Now even the right password is refused, with a Retry-After.
    let locked = try_login(&h, "bob", PASSWORD, "198.51.100.99:1").await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(locked.error_code(), "account_locked");
    assert_eq!(locked.headers.get("retry-after").unwrap(), "30");
    // After the lock, one more failure locks for twice as long.
    h.advance_ms(30_001);
    let answer = try_login(&h, "bob", "wrong password!", "198.51.100.98:1").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let locked = try_login(&h, "bob", PASSWORD, "198.51.100.97:1").await;
    assert_eq!(locked.headers.get("retry-after").unwrap(), "60");
    h.advance_ms(60_001);
    let ok = try_login(&h, "bob", PASSWORD, "198.51.100.96:1").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    // Success clears the count.
    let answer = try_login(&h, "bob", "wrong password!", "198.51.100.95:1").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let ok = try_login(&h, "bob", PASSWORD, "198.51.100.94:1").await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn a_lockout_does_not_tell_which_user_names_exist() {
    let h = harness().await;
    h.add_user("dave", Role::Viewer, None).await;
    // The same failures against an account and against a name without one, each from its
    // own addresses.
    let mut answers = Vec::new();
    for (n, name) in ["dave", "nobody"].into_iter().enumerate() {
        for i in 0..5 {
            let peer = format!("198.51.{n}.{i}:1");
            let answer = try_login(&h, name, "wrong password!", &peer).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
            assert_eq!(answer.error_code(), "invalid_credentials");
        }
        let peer = format!("198.51.{n}.99:1");
        answers.push(try_login(&h, name, PASSWORD, &peer).await);
    }
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.error_code(), "account_locked");
    }
    assert_eq!(
        answers[0].headers.get("retry-after"),
        answers[1].headers.get("retry-after")
    );
    assert_eq!(answers[0].json()["message"], answers[1].json()["message"]);
}

#[tokio::test]
async fn brute_force_from_one_address_locks_the_address() {
    let h = harness().await;
    h.add_user("carol", Role::Viewer, None).await;
    let attacker = "203.0.113.7:5000";
    for i in 0..10 {
        let answer = try_login(&h, &format!("guess{i}"), "wrong password!", attacker).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let blocked = try_login(&h, "carol", PASSWORD, attacker).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(blocked.error_code(), "too_many_attempts");
    // Another address is not affected, and the account is not locked by someone else's
    // guesses at other names.
    let ok = try_login(&h, "carol", PASSWORD, "203.0.113.8:5000").await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_address() {
    let h = support::harness_with(|c| c.login_attempts_per_minute = 3).await;
    h.add_user("dave", Role::Viewer, None).await;
    let peer = "203.0.113.20:1";
    for _ in 0..3 {
        assert_eq!(
            try_login(&h, "dave", PASSWORD, peer).await.status,
            StatusCode::OK
        );
    }
    let limited = try_login(&h, "dave", PASSWORD, peer).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn state_changing_requests_without_the_csrf_token_are_refused() {
    let h = harness().await;
    h.add_user("root", Role::Admin, Some(&ADMIN_SECRET)).await;
    let admin = h.sign_in("root", Some(&ADMIN_SECRET)).await;
    let body = json!({"username": "eve", "password": PASSWORD, "role": "viewer"});

    let missing = h
        .call(
            Method::POST,
            "/api/users",
            &admin.without_csrf(),
            Some(body.clone()),
        )
        .await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(missing.error_code(), "csrf_token_invalid");
    let wrong = Auth::Session {
        id: admin.session_id().to_owned(),
        csrf: Some("not-the-token".into()),
    };
    let refused = h
        .call(Method::POST, "/api/users", &wrong, Some(body.clone()))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let deleted = h
        .call(
            Method::DELETE,
            "/api/users/root",
            &admin.without_csrf(),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::FORBIDDEN);
    let logout = h
        .call(
            Method::POST,
            "/api/auth/logout",
            &admin.without_csrf(),
            None,
        )
        .await;
    assert_eq!(logout.status, StatusCode::FORBIDDEN);
    // Nothing happened.
    assert_eq!(
        h.call(Method::GET, "/api/me", &admin, None).await.status,
        StatusCode::OK
    );
    let users = h.call(Method::GET, "/api/users", &admin, None).await;
    assert_eq!(users.json().as_array().unwrap().len(), 1);

    let created = h.call(Method::POST, "/api/users", &admin, Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);

    // A token from another session does not work either.
    let other = h.sign_in("eve", None).await;
    let Auth::Session {
        csrf: other_csrf, ..
    } = other
    else {
        unreachable!()
    };
    let crossed = Auth::Session {
        id: admin.session_id().to_owned(),
        csrf: other_csrf,
    };
    let answer = h
        .call(
            Method::POST,
            "/api/tokens",
            &crossed,
            Some(json!({"name": "x", "role": "viewer"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn console_forms_need_their_csrf_tokens() {
    let h = harness().await;
    h.add_user("frank", Role::Viewer, None).await;
    // The sign-in form without the double-submit cookie: refused.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!(
            "csrf_token=abc&username=frank&password={}",
            PASSWORD.replace(' ', "+")
        )))
        .unwrap();
    let answer = h.send(request, support::PEER).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.session_cookie().is_none());
    // With the cookie the login page set, it works and redirects.
    let page = h.call(Method::GET, "/login", &Auth::None, None).await;
    let form_cookie = page
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("cairn_form="))
        .unwrap();
    let token = form_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("cairn_form=")
        .to_owned();
    assert!(page.text.contains(&token));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("cairn_form={token}"))
        .body(Body::from(format!(
            "csrf_token={token}&username=frank&password={}",
            PASSWORD.replace(' ', "+")
        )))
        .unwrap();
    let answer = h.send(request, support::PEER).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let session = answer.session_cookie().unwrap();
    // The sign-out form without its token does not sign out.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/logout")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("cairn_session={session}"))
        .body(Body::from("csrf_token=wrong"))
        .unwrap();
    assert_eq!(
        h.send(request, support::PEER).await.status,
        StatusCode::FORBIDDEN
    );
    let auth = Auth::Session {
        id: session,
        csrf: None,
    };
    assert_eq!(
        h.call(Method::GET, "/api/me", &auth, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn session_fixation_is_impossible() {
    let h = harness().await;
    h.add_user("grace", Role::Admin, Some(&ADMIN_SECRET)).await;
    // An attacker plants a session id in the victim's browser...
    let planted = "attacker-chosen-session-id-0000000000000000000";
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, format!("cairn_session={planted}"))
        .body(Body::from(
            json!({"username": "grace", "password": PASSWORD}).to_string(),
        ))
        .unwrap();
    let login = h.send(request, support::PEER).await;
    assert_eq!(login.status, StatusCode::OK);
    let first = login.session_cookie().unwrap();
    assert_ne!(first, planted);
    let pending = Auth::Session {
        id: first.clone(),
        csrf: login.json()["csrf_token"].as_str().map(str::to_owned),
    };
    let done = h
        .call(
            Method::POST,
            "/api/auth/second-factor",
            &pending,
            Some(json!({"code": h.code(&ADMIN_SECRET)})),
        )
        .await;
    let second = done.session_cookie().unwrap();
    assert_ne!(second, first, "the second factor rotates the id again");
    for stale in [planted.to_owned(), first] {
        let auth = Auth::Session {
            id: stale,
            csrf: None,
        };
        assert_eq!(
            h.call(Method::GET, "/api/me", &auth, None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let auth = Auth::Session {
        id: second,
        csrf: None,
    };
    assert_eq!(
        h.call(Method::GET, "/api/me", &auth, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sessions_end_when_idle_when_old_and_at_logout() {
    let h = harness().await;
    h.add_user("heidi", Role::Viewer, None).await;
    let session = h.sign_in("heidi", None).await;
    h.advance_ms(29 * 60_000);
    assert_eq!(
        h.call(Method::GET, "/api/me", &session, None).await.status,
        StatusCode::OK
    );
    h.advance_ms(31 * 60_000);
    let idle = h.call(Method::GET, "/api/me", &session, None).await;
    assert_eq!(idle.status, StatusCode::UNAUTHORIZED);

    // Used every 20 minutes, a session still ends 12 hours after login.
    let session = h.sign_in("heidi", None).await;
    for _ in 0..35 {
        h.advance_ms(20 * 60_000);
        assert_eq!(
            h.call(Method::GET, "/api/me", &session, None).await.status,
            StatusCode::OK
        );
    }
    h.advance_ms(20 * 60_000 + 1);
    let old = h.call(Method::GET, "/api/me", &session, None).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);

    let session = h.sign_in("heidi", None).await;
    let out = h
        .call(Method::POST, "/api/auth/logout", &session, None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.set_cookies().iter().any(|c| c.contains("Max-Age=0")));
    assert_eq!(
        h.call(Method::GET, "/api/me", &session, None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cookies_and_headers_are_strict() {
    let h = harness().await;
    h.add_user("ivan", Role::Viewer, None).await;
    let login = try_login(&h, "ivan", PASSWORD, support::PEER).await;
    let cookie = login
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("cairn_session="))
        .unwrap();
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains("Secure"));
    for path in ["/login", "/api/openapi.json", "/api/me", "/static/app.js"] {
        let answer = h.call(Method::GET, path, &Auth::None, None).await;
        let csp = answer
            .headers
            .get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'self'"), "{path}");
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(
            answer.headers.get("x-content-type-options").unwrap(),
            "nosniff"
        );
        assert_eq!(
            answer.headers.get("referrer-policy").unwrap(),
            "no-referrer"
        );
        assert!(answer.headers.get("strict-transport-security").is_none());
    }

    let https = support::harness_with(|c| c.https = true).await;
    https.add_user("ivan", Role::Viewer, None).await;
    let login = try_login(&https, "ivan", PASSWORD, support::PEER).await;
    let cookie = login
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-cairn_session="))
        .unwrap();
    assert!(cookie.contains("; Secure"));
    assert!(cookie.contains("Path=/"));
    assert!(login.headers.get("strict-transport-security").is_some());
}

#[tokio::test]
async fn pages_have_no_inline_script_or_style() {
    let h = harness().await;
    h.add_user("root", Role::Admin, Some(&ADMIN_SECRET)).await;
    let admin = h.sign_in("root", Some(&ADMIN_SECRET)).await;
    for path in [
        "/login",
        "/",
        "/audit",
        "/users",
        "/tokens",
        "/security",
        "/account",
        "/enrol",
        "/fleet/rows",
        "/bootstrap",
        "/firmware",
        "/firmware/campaign-rows",
        "/bootstrap/rows",
    ] {
        let request = Request::builder()
            .uri(path)
            .header(
                header::COOKIE,
                format!("cairn_session={}", admin.session_id()),
            )
            .body(Body::empty())
            .unwrap();
        let page = h.send(request, support::PEER).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let html = page.text.to_lowercase();
        assert!(!html.contains("<script>"), "{path} has an inline script");
        for tag in html.split("<script").skip(1) {
            assert!(tag.split('>').next().unwrap().contains("src="), "{path}");
        }
        assert!(!html.contains("<style"), "{path}");
        assert!(!html.contains(" style="), "{path}");
        assert!(!html.contains(" onclick="), "{path}");
        assert!(!html.contains("https://"), "{path} loads from elsewhere");
    }
    // Unauthenticated pages redirect to the sign-in page.
    let fleet = h.call(Method::GET, "/", &Auth::None, None).await;
    assert_eq!(fleet.status, StatusCode::SEE_OTHER);
    assert_eq!(fleet.headers.get(header::LOCATION).unwrap(), "/login");
}

#[tokio::test]
async fn api_tokens_are_scoped_expiring_and_revocable() {
    let h = harness().await;
    let (admin, [viewer, operator, _]) = h.admin_and_tokens().await;
    // A bearer request needs no CSRF token (it carries no cookie).
    let observe = h
        .call(
            Method::POST,
            "/api/devices/nobody/write",
            &operator,
            Some(json!({"path": "/3/0/14", "value": "+01"})),
        )
        .await;
    assert_eq!(observe.status, StatusCode::NOT_FOUND);
    assert_eq!(observe.error_code(), "device_not_registered");
    // Scope: a viewer token cannot write.
    let refused = h
        .call(
            Method::POST,
            "/api/devices/nobody/write",
            &viewer,
            Some(json!({"path": "/3/0/14", "value": "+01"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    // Listing shows no secret.
    let list = h.call(Method::GET, "/api/tokens", &admin, None).await;
    let Auth::Bearer(secret) = &viewer else {
        unreachable!()
    };
    assert!(!list.text.contains(secret.as_str()));
    assert_eq!(list.json().as_array().unwrap().len(), 3);
    // Revoke the viewer token.
    let id = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = h
        .call(Method::DELETE, &format!("/api/tokens/{id}"), &admin, None)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let answer = h.call(Method::GET, "/api/devices", &viewer, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error_code(), "token_expired_or_revoked");
    // A token cannot be given more than its creator's role, and expires.
    let short = h
        .call(
            Method::POST,
            "/api/tokens",
            &admin,
            Some(json!({"name": "short", "role": "viewer", "expires_in_days": 1})),
        )
        .await;
    let short = Auth::Bearer(short.json()["token"].as_str().unwrap().to_owned());
    assert_eq!(
        h.call(Method::GET, "/api/devices", &short, None)
            .await
            .status,
        StatusCode::OK
    );
    h.advance_ms(24 * 3600 * 1000);
    assert_eq!(
        h.call(Method::GET, "/api/devices", &short, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Garbage and unknown tokens.
    for token in ["cairn_nope", "nope", ""] {
        let auth = Auth::Bearer(token.into());
        assert_eq!(
            h.call(Method::GET, "/api/me", &auth, None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn a_deleted_users_tokens_and_sessions_stop_working() {
    let h = harness().await;
    let (admin, _) = h.admin_and_tokens().await;
    h.add_user("judy", Role::Admin, Some(&[7; 20])).await;
    let judy = h.sign_in("judy", Some(&[7; 20])).await;
    let token = h.token(&judy, "operator").await;
    assert_eq!(
        h.call(Method::GET, "/api/me", &token, None).await.status,
        StatusCode::OK
    );
    let deleted = h
        .call(Method::DELETE, "/api/users/judy", &admin, None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.call(Method::GET, "/api/me", &token, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call(Method::GET, "/api/me", &judy, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The last admin stays.
    let last = h
        .call(Method::DELETE, "/api/users/root", &admin, None)
        .await;
    assert_eq!(last.status, StatusCode::CONFLICT);
    assert_eq!(last.error_code(), "last_admin");
}

/// Every endpoint, the least role it needs, and a request for it.
fn endpoints() -> Vec<(
    Method,
    &'static str,
    Option<serde_json::Value>,
    Option<Role>,
)> {
    let path = json!({"path": "/3/0/13"});
    vec![
        (Method::GET, "/api/me", None, Some(Role::Viewer)),
        (Method::GET, "/api/devices", None, Some(Role::Viewer)),
        (Method::GET, "/api/devices/dev", None, Some(Role::Viewer)),
        (
            Method::GET,
            "/api/devices/dev/read?path=/3/0",
            None,
            Some(Role::Viewer),
        ),
        (
            Method::GET,
            "/api/devices/dev/discover?path=/3",
            None,
            Some(Role::Viewer),
        ),
        (
            Method::GET,
            "/api/devices/dev/samples",
            None,
            Some(Role::Viewer),
        ),
        (
            Method::GET,
            "/api/devices/dev/observations",
            None,
            Some(Role::Viewer),
        ),
        (
            Method::POST,
            "/api/devices/dev/read-composite",
            Some(json!({"paths": ["/3/0/0"]})),
            Some(Role::Viewer),
        ),
        (Method::GET, "/api/events", None, Some(Role::Viewer)),
        (
            Method::POST,
            "/api/devices/dev/write",
            Some(json!({"path": "/3/0/14", "value": "+01"})),
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/devices/dev/execute",
            Some(json!({"path": "/3/0/4"})),
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/devices/dev/create",
            Some(json!({"path": "/1", "instance_id": 3, "resources": {"0": 3}})),
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/devices/dev/delete",
            Some(json!({"path": "/1/3"})),
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/devices/dev/write-attributes",
            Some(json!({"path": "/3/0/13", "attributes": {"pmin": 1}})),
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/devices/dev/write-composite",
            Some(json!({"values": {"/3/0/14": "+01"}})),
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/devices/dev/observations",
            Some(path.clone()),
            Some(Role::Operator),
        ),
        (
            Method::DELETE,
            "/api/devices/dev/observations?path=/3/0/13",
            None,
            Some(Role::Operator),
        ),
        (Method::DELETE, "/api/devices/dev", None, Some(Role::Admin)),
        (Method::GET, "/api/security", None, Some(Role::Admin)),
        (
            Method::POST,
            "/api/security",
            Some(json!({"endpoint": "m", "mode": "nosec"})),
            Some(Role::Admin),
        ),
        (Method::DELETE, "/api/security/m", None, Some(Role::Admin)),
        (Method::GET, "/api/users", None, Some(Role::Admin)),
        (
            Method::POST,
            "/api/users",
            Some(json!({"username": "matrix", "password": PASSWORD, "role": "viewer"})),
            Some(Role::Admin),
        ),
        (
            Method::PUT,
            "/api/users/matrix/role",
            Some(json!({"role": "operator"})),
            Some(Role::Admin),
        ),
        (Method::DELETE, "/api/users/matrix", None, Some(Role::Admin)),
        (Method::GET, "/api/tokens", None, Some(Role::Admin)),
        (
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "m", "role": "viewer"})),
            Some(Role::Admin),
        ),
        (Method::DELETE, "/api/tokens/none", None, Some(Role::Admin)),
        (Method::GET, "/api/audit", None, Some(Role::Admin)),
        (Method::GET, "/api/firmware", None, Some(Role::Viewer)),
        (
            Method::POST,
            "/api/firmware?name=matrix&version=1",
            Some(json!({"image": "bytes"})),
            Some(Role::Operator),
        ),
        (
            Method::DELETE,
            "/api/firmware/none",
            None,
            Some(Role::Operator),
        ),
        (Method::GET, "/api/campaigns", None, Some(Role::Viewer)),
        (
            Method::POST,
            "/api/campaigns",
            Some(json!({"name": "m", "image_id": "none", "endpoints": ["dev"]})),
            Some(Role::Operator),
        ),
        (Method::GET, "/api/campaigns/none", None, Some(Role::Viewer)),
        (
            Method::POST,
            "/api/campaigns/none/pause",
            None,
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/campaigns/none/resume",
            None,
            Some(Role::Operator),
        ),
        (
            Method::POST,
            "/api/campaigns/none/cancel",
            None,
            Some(Role::Operator),
        ),
        (
            Method::GET,
            "/api/bootstrap/devices",
            None,
            Some(Role::Admin),
        ),
        (
            Method::GET,
            "/api/bootstrap/devices/dev",
            None,
            Some(Role::Admin),
        ),
        (
            Method::GET,
            "/api/bootstrap/templates",
            None,
            Some(Role::Admin),
        ),
        (
            Method::POST,
            "/api/bootstrap/templates",
            Some(json!({"name": "m", "endpoint_prefix": "m-",
                "dm_uri": "coaps://127.0.0.1:5684", "bootstrap_uri": "coaps://127.0.0.1:5784"})),
            Some(Role::Admin),
        ),
        (
            Method::DELETE,
            "/api/bootstrap/templates/m",
            None,
            Some(Role::Admin),
        ),
        (
            Method::POST,
            "/api/bootstrap/rotate",
            Some(json!({"endpoints": ["dev"], "wait_s": 1})),
            Some(Role::Admin),
        ),
        (Method::POST, "/api/auth/logout", None, Some(Role::Viewer)),
        // Public.
        (Method::GET, "/api/openapi.json", None, None),
    ]
}

#[tokio::test]
async fn every_endpoint_checks_every_role() {
    let h = harness().await;
    let (_admin, [viewer, operator, admin_token]) = h.admin_and_tokens().await;
    let mut checked = 0;
    for (method, uri, body, least) in endpoints() {
        let unauthenticated = h.call(method.clone(), uri, &Auth::None, body.clone()).await;
        match least {
            None => {
                assert_eq!(unauthenticated.status, StatusCode::OK, "{method} {uri}");
                continue;
            }
            Some(_) => {
                assert_eq!(
                    unauthenticated.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {uri} unauthenticated"
                );
                assert_eq!(unauthenticated.error_code(), "unauthenticated");
            }
        }
        let least = least.unwrap();
        for (role, auth) in [
            (Role::Viewer, &viewer),
            (Role::Operator, &operator),
            (Role::Admin, &admin_token),
        ] {
            let answer = if uri == "/api/events" && role >= least {
                // An event stream does not end: check the status line only.
                let request = Request::builder()
                    .uri(uri)
                    .header(
                        header::AUTHORIZATION,
                        match auth {
                            Auth::Bearer(t) => format!("Bearer {t}"),
                            _ => unreachable!(),
                        },
                    )
                    .body(Body::empty())
                    .unwrap();
                let response = tower::ServiceExt::oneshot(h.router.clone(), request)
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                checked += 1;
                continue;
            } else {
                h.call(method.clone(), uri, auth, body.clone()).await
            };
            if role >= least {
                assert!(
                    answer.status != StatusCode::UNAUTHORIZED
                        && answer.status != StatusCode::FORBIDDEN,
                    "{method} {uri} as {role:?}: {} {}",
                    answer.status,
                    answer.text
                );
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} as {role:?}: {}",
                    answer.text
                );
                assert_eq!(answer.error_code(), "forbidden");
            }
            checked += 1;
        }
    }
    assert!(checked >= 44 * 3, "{checked}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let h = harness().await;
    let doc = h
        .call(Method::GET, "/api/openapi.json", &Auth::None, None)
        .await
        .json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, uri, _, _) in endpoints() {
        let path = uri.split('?').next().unwrap();
        let templated = path
            .replace("/dev/", "/{endpoint}/")
            .replace("/api/devices/dev", "/api/devices/{endpoint}")
            .replace("/api/security/m", "/api/security/{endpoint}")
            .replace("/api/users/matrix/role", "/api/users/{username}/role")
            .replace("/api/users/matrix", "/api/users/{username}")
            .replace("/api/tokens/none", "/api/tokens/{id}")
            .replace("/api/firmware/none", "/api/firmware/{id}")
            .replace("/api/campaigns/none", "/api/campaigns/{id}")
            .replace(
                "/api/bootstrap/devices/dev",
                "/api/bootstrap/devices/{endpoint}",
            )
            .replace(
                "/api/bootstrap/templates/m",
                "/api/bootstrap/templates/{name}",
            );
        let entry = paths
            .get(&templated)
            .unwrap_or_else(|| panic!("{templated} missing"));
        assert!(
            entry.get(method.as_str().to_lowercase()).is_some(),
            "{method} {templated}"
        );
    }
    for path in [
        "/api/setup",
        "/api/auth/login",
        "/api/auth/second-factor",
        "/api/auth/totp/enrol",
        "/api/auth/totp/confirm",
    ] {
        assert!(paths.contains_key(path), "{path}");
    }
}

#[tokio::test]
async fn the_audit_log_records_actions_and_cannot_be_changed() {
    let h = harness().await;
    let (admin, _) = h.admin_and_tokens().await;
    try_login(&h, "root", "wrong password!", "192.0.2.77:1").await;
    let created = h
        .call(
            Method::POST,
            "/api/users",
            &admin,
            Some(json!({"username": "kim", "password": PASSWORD, "role": "operator"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let log = h.call(Method::GET, "/api/audit", &admin, None).await.json();
    let entries = log.as_array().unwrap();
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("{action} {outcome} not in {entries:?}"))
            .clone()
    };
    let user = find("user.create", "ok");
    assert_eq!(user["actor"], "root");
    assert_eq!(user["target"], "kim");
    assert_eq!(user["source"], "192.0.2.10");
    assert!(user["at_ms"].as_u64().unwrap() >= 1_800_000_000_000);
    let failed = find("login", "bad_credentials");
    assert_eq!(failed["source"], "192.0.2.77");
    find("token.create", "ok");
    find("login.second_factor", "ok");
    // No way to change or delete it.
    for method in [Method::DELETE, Method::PUT, Method::POST, Method::PATCH] {
        let answer = h
            .call(method.clone(), "/api/audit", &admin, Some(json!({})))
            .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
}

#[tokio::test]
async fn errors_are_json_with_stable_codes() {
    let h = harness().await;
    let (admin, [_, operator, _]) = h.admin_and_tokens().await;
    let bad = h
        .call(
            Method::GET,
            "/api/devices/x/read?path=/not/a/path",
            &operator,
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "invalid_path");
    let malformed = h
        .call(Method::POST, "/api/users", &admin, Some(json!({"nope": 1})))
        .await;
    assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(malformed.error_code(), "invalid_request_body");
    let weak = h
        .call(
            Method::POST,
            "/api/users",
            &admin,
            Some(json!({"username": "lee", "password": "qwertyuiop12", "role": "viewer"})),
        )
        .await;
    assert_eq!(weak.error_code(), "weak_password");
    let role = h
        .call(
            Method::POST,
            "/api/users",
            &admin,
            Some(json!({"username": "lee", "password": PASSWORD, "role": "god"})),
        )
        .await;
    assert_eq!(role.error_code(), "invalid_role");
    assert!(role.json()["error"]["message"].as_str().unwrap().len() > 5);
}

#[tokio::test]
async fn users_change_their_password_from_a_session_only() {
    let h = harness().await;
    let (_, [viewer_token, _, _]) = h.admin_and_tokens().await;
    h.add_user("mia", Role::Viewer, None).await;
    let other = h.sign_in("mia", None).await;
    let session = h.sign_in("mia", None).await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let wrong = h
        .call(
            Method::POST,
            "/api/me/password",
            &session,
            Some(change("nope nope nope", "a brand new passphrase")),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let weak = h
        .call(
            Method::POST,
            "/api/me/password",
            &session,
            Some(change(PASSWORD, "password1234")),
        )
        .await;
    assert_eq!(weak.error_code(), "weak_password");
    let by_token = h
        .call(
            Method::POST,
            "/api/me/password",
            &viewer_token,
            Some(change(PASSWORD, "a brand new passphrase")),
        )
        .await;
    assert_eq!(by_token.status, StatusCode::FORBIDDEN);
    assert_eq!(by_token.error_code(), "session_required");
    let changed = h
        .call(
            Method::POST,
            "/api/me/password",
            &session,
            Some(change(PASSWORD, "a brand new passphrase")),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    let renewed = Auth::Session {
        id: changed.session_cookie().unwrap(),
        csrf: None,
    };
    assert_ne!(renewed.session_id(), session.session_id());
    assert_eq!(
        h.call(Method::GET, "/api/me", &renewed, None).await.status,
        StatusCode::OK
    );
    for ended in [&session, &other] {
        assert_eq!(
            h.call(Method::GET, "/api/me", ended, None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        try_login(&h, "mia", PASSWORD, support::PEER).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        try_login(&h, "mia", "a brand new passphrase", support::PEER)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn roles_change_but_the_last_admin_stays() {
    let h = harness().await;
    let (admin, _) = h.admin_and_tokens().await;
    h.add_user("noah", Role::Viewer, None).await;
    let noah = h.sign_in("noah", None).await;
    assert_eq!(
        h.call(Method::GET, "/api/users", &noah, None).await.status,
        StatusCode::FORBIDDEN
    );
    let promoted = h
        .call(
            Method::PUT,
            "/api/users/noah/role",
            &admin,
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.text);
    assert_eq!(promoted.json()["role"], "admin");
    // The role applies at once; a new admin without TOTP must enrol at the next sign-in.
    assert_eq!(
        h.call(Method::GET, "/api/users", &noah, None).await.status,
        StatusCode::OK
    );
    let login = try_login(&h, "noah", PASSWORD, support::PEER).await;
    assert_eq!(login.json()["next"], "enrol_totp");
    // Two admins: one can be demoted, not both.
    let demoted = h
        .call(
            Method::PUT,
            "/api/users/noah/role",
            &admin,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(demoted.status, StatusCode::OK);
    let last = h
        .call(
            Method::PUT,
            "/api/users/root/role",
            &admin,
            Some(json!({"role": "operator"})),
        )
        .await;
    assert_eq!(last.status, StatusCode::CONFLICT);
    assert_eq!(last.error_code(), "last_admin");
    let unknown = h
        .call(
            Method::PUT,
            "/api/users/nobody/role",
            &admin,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
