//! CoAP over DTLS 1.2 with pre-shared keys against peers we did not write: libcoap with
//! OpenSSL (`coap-client-openssl`, `coap-server-openssl`) and aiocoap with DTLSSocket
//! (tinydtls, from the venv that scripts/setup.sh makes).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);
const IDENTITY: &str = "device-7";
const KEY: &str = "interop-secret-key";

fn key_hex() -> String {
    KEY.bytes().map(|b| format!("{b:02x}")).collect()
}

struct SecuredServer {
    _peer: Peer,
    coaps: String,
    dir: PathBuf,
}

fn start_cairn_server(name: &str) -> SecuredServer {
    let dir = scratch_dir(name);
    let port = free_udp_port_pair();
    let peer = Peer::spawn(
        "cairn coap serve",
        cairn()
            .args(["coap", "serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--dtls-listen", &format!("127.0.0.1:{}", port + 1)])
            .args(["--psk-identity", IDENTITY, "--psk-key", &key_hex(), "--dir"])
            .arg(&dir),
    );
    let coaps = format!("coaps://127.0.0.1:{}", port + 1);
    let up = wait_until(Duration::from_secs(20), || {
        cairn_get(&format!("{coaps}/"), KEY).status.success()
    });
    assert!(up, "cairn coap serve did not come up on {coaps}");
    SecuredServer {
        _peer: peer,
        coaps,
        dir,
    }
}

fn cairn_get(uri: &str, key: &str) -> std::process::Output {
    let key: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    run_with_timeout(
        cairn().args([
            "coap",
            "get",
            uri,
            "--timeout",
            "5",
            "--psk-identity",
            IDENTITY,
            "--psk-key",
            &key,
        ]),
        LIMIT,
    )
}

fn libcoap_client() -> Command {
    let mut command = Command::new(require("coap-client-openssl"));
    command.args(["-u", IDENTITY, "-k", KEY]);
    command
}

#[test]
fn libcoap_openssl_client_against_cairn_server() {
    let server = start_cairn_server("coaps-libcoap-client");
    let output = run_with_timeout(
        libcoap_client().args(["-m", "get", &format!("{}/time", server.coaps)]),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains('Z'));

    // A block-wise GET of 100 KB over DTLS.
    let body = test_bytes(100 * 1024, 11);
    std::fs::write(server.dir.join("image.bin"), &body).unwrap();
    let copy = server.dir.join("copy.bin");
    let output = run_with_timeout(
        libcoap_client()
            .args(["-m", "get", "-o"])
            .arg(&copy)
            .arg(format!("{}/image.bin", server.coaps)),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&copy).unwrap(), body);

    // A Block1 PUT over DTLS, echoed back.
    let upload = server.dir.join("upload.bin");
    std::fs::write(&upload, test_bytes(9000, 12)).unwrap();
    let echoed = server.dir.join("echoed.bin");
    let output = run_with_timeout(
        libcoap_client()
            .args(["-m", "put", "-b", "512", "-f"])
            .arg(&upload)
            .arg("-o")
            .arg(&echoed)
            .arg(format!("{}/echo", server.coaps)),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read(&echoed).unwrap(),
        std::fs::read(&upload).unwrap()
    );

    // Observe over DTLS.
    let output = run_with_timeout(
        libcoap_client().args(["-m", "get", "-s", "3", &format!("{}/time", server.coaps)]),
        LIMIT,
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.matches('Z').count() >= 3,
        "expected notifications, got {text:?}"
    );
}

#[test]
fn wrong_key_gets_nothing() {
    let server = start_cairn_server("coaps-wrong-key");
    let mut client = Command::new(require("coap-client-openssl"));
    client.args([
        "-u",
        IDENTITY,
        "-k",
        "not-the-key",
        "-B",
        "3",
        "-m",
        "get",
        &format!("{}/time", server.coaps),
    ]);
    let output = run_with_timeout(&mut client, LIMIT);
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains('Z'),
        "a wrong key must not get a response"
    );

    let output = cairn_get(&format!("{}/time", server.coaps), "not-the-key");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());

    // The server keeps serving the right key.
    let output = cairn_get(&format!("{}/time", server.coaps), KEY);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cairn_client_against_libcoap_openssl_server() {
    let binary = require("coap-server-openssl");
    let port = free_udp_port_pair();
    let _server = Peer::spawn(
        "coap-server-openssl",
        Command::new(binary).args([
            "-A",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-k",
            KEY,
            "-h",
            IDENTITY,
            "-d",
            "10",
        ]),
    );
    // libcoap serves DTLS on the port above the plain one.
    let base = format!("coaps://127.0.0.1:{}", port + 1);
    assert!(
        wait_until(Duration::from_secs(20), || cairn_get(
            &format!("{base}/"),
            KEY
        )
        .status
        .success()),
        "coap-server-openssl did not answer on {base}"
    );
    let output = cairn_get(&format!("{base}/"), KEY);
    assert!(String::from_utf8_lossy(&output.stdout).contains("libcoap"));

    let dir = scratch_dir("coaps-cairn-client");
    let body = test_bytes(50 * 1024, 13);
    let input = dir.join("in.bin");
    std::fs::write(&input, &body).unwrap();
    let output = run_with_timeout(
        cairn()
            .args([
                "coap",
                "put",
                &format!("{base}/example_data"),
                "--psk-identity",
                IDENTITY,
            ])
            .args([
                "--psk-key",
                &key_hex(),
                "--content-format",
                "42",
                "--payload-file",
            ])
            .arg(&input),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let copy = dir.join("out.bin");
    let output = run_with_timeout(
        cairn()
            .args([
                "coap",
                "get",
                &format!("{base}/example_data"),
                "--psk-identity",
                IDENTITY,
            ])
            .args(["--psk-key", &key_hex(), "-o"])
            .arg(&copy),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&copy).unwrap(), body);

    let output = run_with_timeout(
        cairn()
            .args([
                "coap",
                "observe",
                &format!("{base}/time"),
                "--count",
                "3",
                "--seconds",
                "20",
                "-v",
            ])
            .args(["--psk-identity", IDENTITY, "--psk-key", &key_hex()]),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stderr)
            .matches("Observe=")
            .count(),
        3
    );
}

fn aiocoap_client() -> PathBuf {
    let venv = std::env::var_os("CAIRN_PYTHON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let client = venv.join("bin/aiocoap-client");
    assert!(
        client.is_file(),
        "{} not found: run scripts/setup.sh (it makes the venv with aiocoap and DTLSSocket)",
        client.display()
    );
    client
}

#[test]
fn aiocoap_tinydtls_client_against_cairn_server() {
    let client = aiocoap_client();
    let server = start_cairn_server("coaps-aiocoap");
    let credentials = server.dir.join("credentials.json");
    std::fs::write(
        &credentials,
        format!(
            r#"{{"{}/*": {{"dtls": {{"psk": {{"ascii": "{KEY}"}}, "client-identity": {{"ascii": "{IDENTITY}"}}}}}}}}"#,
            server.coaps
        ),
    )
    .unwrap();
    let output = run_with_timeout(
        Command::new(&client)
            .arg("--credentials")
            .arg(&credentials)
            .arg(format!("{}/time", server.coaps)),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains('Z'),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let body = "tinydtls ".repeat(800);
    std::fs::write(server.dir.join("notes.txt"), &body).unwrap();
    let output = run_with_timeout(
        Command::new(&client)
            .arg("--credentials")
            .arg(&credentials)
            .arg(format!("{}/notes.txt", server.coaps)),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        body.trim_end()
    );
}
