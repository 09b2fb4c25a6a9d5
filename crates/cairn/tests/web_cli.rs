//! `cairn server` with its web listener, and `cairn admin`, as an operator runs them: the first
//! start prints a one-time setup link that works once over HTTP; with an administrator created
//! offline no link is printed; `--no-web` starts no listener.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use support::*;

/// Starts `cairn server` (devices over DTLS on a free port, web on a free port) and returns it
/// with its stderr lines.
fn start_server(data_dir: &std::path::Path, extra: &[&str]) -> (Peer, mpsc::Receiver<String>) {
    let mut child = cairn()
        .args(["--log", "info", "server", "--no-coap", "--data-dir"])
        .arg(data_dir)
        .args(["--dtls-listen", "127.0.0.1:0"])
        // Tests run side by side: no fixed port.
        .args(["--bootstrap-dtls-listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn server");
    let stderr = child.stderr.take().unwrap();
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (
        Peer {
            child,
            name: "cairn server".into(),
        },
        receiver,
    )
}

/// Lines until one contains `until`.
fn lines_until(lines: &mpsc::Receiver<String>, until: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) {
        let done = line.contains(until);
        seen.push(line);
        if done {
            return seen;
        }
    }
    panic!("no line with {until:?}; saw:\n{}", seen.join("\n"));
}

/// One HTTP/1.1 request; the status code, headers and body.
fn http(address: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn get(address: SocketAddr, path: &str) -> (u16, String, String) {
    http(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"),
    )
}

fn web_address(lines: &[String]) -> SocketAddr {
    let line = lines
        .iter()
        .find(|l| l.contains("web console on http://"))
        .unwrap();
    line.rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_first_start_prints_a_setup_link_that_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, lines) = start_server(dir.path(), &["--web-listen", "127.0.0.1:0"]);
    let seen = lines_until(&lines, "/setup?token=");
    let address = web_address(&seen);
    let link = seen.last().unwrap().trim();
    let path = link.split_once(&address.to_string()).unwrap().1.to_owned();
    let token = path.split("token=").nth(1).unwrap().to_owned();

    let (status, head, body) = get(address, "/login");
    assert_eq!(status, 200);
    assert!(
        head.to_lowercase()
            .contains("content-security-policy: default-src 'self'")
    );
    assert!(body.contains("Sign in"));
    assert_eq!(get(address, &path).0, 200);

    let body = format!(
        r#"{{"token":"{token}","username":"root","password":"correct horse battery staple"}}"#
    );
    let request = |body: &str| {
        format!(
            "POST /api/setup HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, head, answer) = http(address, &request(&body));
    assert_eq!(status, 200, "{answer}");
    assert!(head.contains("cairn_session="));
    assert!(answer.contains("enrol_totp"));
    let (status, _, answer) = http(address, &request(&body.replace("root", "root2")));
    assert_eq!(status, 401);
    assert!(answer.contains("invalid_setup_token"));
    // The API answers without a session: 401 in JSON.
    let (status, _, answer) = get(address, "/api/devices");
    assert_eq!(status, 401);
    assert!(answer.contains("\"code\":\"unauthenticated\""));
}

#[test]
fn an_admin_created_offline_means_no_setup_link() {
    let dir = tempfile::tempdir().unwrap();
    let weak = run_with_timeout(
        cairn()
            .args(["admin", "create", "--username", "ops", "--data-dir"])
            .arg(dir.path())
            .env("CAIRN_ADMIN_PASSWORD", "password1234"),
        Duration::from_secs(60),
    );
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("common"));
    let created = run_with_timeout(
        cairn()
            .args(["admin", "create", "--username", "ops", "--data-dir"])
            .arg(dir.path())
            .env("CAIRN_ADMIN_PASSWORD", "correct horse battery staple"),
        Duration::from_secs(60),
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let (mut server, lines) = start_server(dir.path(), &["--web-listen", "127.0.0.1:0"]);
    let seen = lines_until(&lines, "registrations restored");
    assert!(seen.iter().any(|l| l.contains("web console on")));
    assert!(!seen.iter().any(|l| l.contains("setup?token")), "{seen:?}");
    let address = web_address(&seen);
    let login = r#"{"username":"ops","password":"correct horse battery staple"}"#;
    let (status, _, answer) = http(
        address,
        &format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{login}",
            login.len()
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("enrol_totp"),
        "an admin must enrol TOTP: {answer}"
    );
    let _ = server.child.kill();
    let _ = server.child.wait();

    // Offline, a new setup link can still be printed.
    let link = run_with_timeout(
        cairn()
            .args(["admin", "setup-link", "--data-dir"])
            .arg(dir.path()),
        Duration::from_secs(60),
    );
    assert!(link.status.success());
    assert!(String::from_utf8_lossy(&link.stdout).contains("/setup?token=setup_"));
}

#[test]
fn no_web_starts_no_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, lines) = start_server(dir.path(), &["--no-web"]);
    let seen = lines_until(&lines, "registrations restored");
    assert!(!seen.iter().any(|l| l.contains("web console")), "{seen:?}");
}

/// The string value of `"field":"..."` in a JSON answer.
fn json_field(answer: &str, field: &str) -> String {
    let start = answer
        .find(&format!("\"{field}\":\""))
        .unwrap_or_else(|| panic!("no {field} in {answer}"))
        + field.len()
        + 4;
    answer[start..].split('"').next().unwrap().to_owned()
}

/// The `cairn_session` cookie a response sets.
fn session_cookie(head: &str) -> String {
    head.split("cairn_session=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn base32_decode(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u32, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        let index = alphabet
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .unwrap() as u32;
        value = (value << 5) | index;
        bits += 5;
        if bits >= 8 {
            out.push((value >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

#[test]
fn the_console_of_cairn_server_reads_its_bootstrap_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, lines) = start_server(dir.path(), &["--web-listen", "127.0.0.1:0"]);
    let seen = lines_until(&lines, "/setup?token=");
    let address = web_address(&seen);
    let token = seen
        .last()
        .unwrap()
        .trim()
        .split("token=")
        .nth(1)
        .unwrap()
        .to_owned();
    let post = |path: &str, cookie: &str, csrf: &str, body: &str| {
        http(
            address,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
                 Cookie: cairn_session={cookie}\r\nX-CSRF-Token: {csrf}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    // The first administrator, with TOTP enrolled.
    let (status, head, answer) = post(
        "/api/setup",
        "",
        "",
        &format!(
            r#"{{"token":"{token}","username":"root","password":"correct horse battery staple"}}"#
        ),
    );
    assert_eq!(status, 200, "{answer}");
    let (cookie, csrf) = (session_cookie(&head), json_field(&answer, "csrf_token"));
    let (status, _, answer) = post("/api/auth/totp/enrol", &cookie, &csrf, "");
    assert_eq!(status, 200, "{answer}");
    let secret = base32_decode(&json_field(&answer, "secret"));
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30;
    let code = cairn_web::auth::totp_code(&secret, step);
    let (status, head, answer) = post(
        "/api/auth/totp/confirm",
        &cookie,
        &csrf,
        &format!(r#"{{"code":"{code}"}}"#),
    );
    assert_eq!(status, 200, "{answer}");
    let cookie = session_cookie(&head);

    // The bootstrap API answers from the server's Bootstrap-Server (not 503).
    let (status, _, answer) = http(
        address,
        &format!(
            "GET /api/bootstrap/templates HTTP/1.1\r\nHost: {address}\r\n\
             Cookie: cairn_session={cookie}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("[]"), "{answer}");
    let (status, _, answer) = http(
        address,
        &format!(
            "GET /bootstrap HTTP/1.1\r\nHost: {address}\r\n\
             Cookie: cairn_session={cookie}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200);
    assert!(answer.contains("Rotate credentials"), "{answer}");
}

/// `GET /login` over HTTPS with OpenSSL's client, trusting only `ca`; the answer's head.
fn openssl_get(address: SocketAddr, ca: &std::path::Path) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
        .arg(address.to_string())
        .args([
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-CAfile",
        ])
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let output = run_with_timeout_output(child, Duration::from_secs(20));
    String::from_utf8_lossy(&output).into_owned()
}

fn run_with_timeout_output(mut child: std::process::Child, limit: Duration) -> Vec<u8> {
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    reader.join().unwrap()
}

#[test]
fn a_self_signed_certificate_is_made_once_and_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let fingerprint_of = |seen: &[String]| {
        seen.iter()
            .find(|l| l.contains("(self-signed), SHA-256 "))
            .map(|l| l.rsplit("SHA-256 ").next().unwrap().trim().to_owned())
            .expect("the certificate's fingerprint is printed")
    };
    let https_address = |seen: &[String]| -> SocketAddr {
        let line = seen
            .iter()
            .find(|l| l.contains("web console on https://"))
            .expect("the console is served over HTTPS");
        line.rsplit("https://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let args = ["--web-listen", "127.0.0.1:0", "--web-tls-self-signed"];
    let (server, lines) = start_server(dir.path(), &args);
    let seen = lines_until(&lines, "web console on");
    let first = fingerprint_of(&seen);
    let address = https_address(&seen);
    let cert = dir.path().join("web/self-signed.crt");
    let key = dir.path().join("web/self-signed.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    let answer = openssl_get(address, &cert);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_lowercase().contains("strict-transport-security"));
    // Plain HTTP on the same port gets nothing useful.
    let mut plain = TcpStream::connect(address).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = plain.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut bytes = Vec::new();
    let _ = plain.read_to_end(&mut bytes);
    assert!(!String::from_utf8_lossy(&bytes).contains("HTTP/1.1 200"));
    drop(server);

    // The next start keeps the same certificate.
    let (_server, lines) = start_server(dir.path(), &args);
    let seen = lines_until(&lines, "web console on");
    assert_eq!(fingerprint_of(&seen), first);
    let answer = openssl_get(https_address(&seen), &cert);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
