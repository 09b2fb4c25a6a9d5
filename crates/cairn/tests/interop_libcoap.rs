//! Interop with libcoap (Debian `libcoap3-bin`), a CoAP stack we did not write: libcoap's
//! client against `cairn coap serve`, and `cairn coap` against libcoap's server.

mod support;

use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

struct CairnServer {
    _peer: Peer,
    base: String,
    dir: std::path::PathBuf,
}

fn start_cairn_server(name: &str) -> CairnServer {
    let dir = scratch_dir(name);
    let port = free_udp_port_pair();
    let peer = Peer::spawn(
        "cairn coap serve",
        cairn()
            .args([
                "coap",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--dir",
            ])
            .arg(&dir),
    );
    let base = format!("coap://127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(20), || {
        cairn()
            .args(["coap", "get", &format!("{base}/"), "--timeout", "1"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(up, "cairn coap serve did not come up on {base}");
    CairnServer {
        _peer: peer,
        base,
        dir,
    }
}

fn start_libcoap_server() -> (Peer, String) {
    let binary = require("coap-server-notls");
    let port = free_udp_port_pair();
    let peer = Peer::spawn(
        "coap-server-notls",
        std::process::Command::new(binary).args([
            "-A",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
            "10",
        ]),
    );
    let base = format!("coap://127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(20), || {
        cairn()
            .args(["coap", "get", &format!("{base}/"), "--timeout", "1"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(up, "coap-server-notls did not come up on {base}");
    (peer, base)
}

fn libcoap_client() -> std::process::Command {
    std::process::Command::new(require("coap-client-notls"))
}

#[test]
fn libcoap_client_discovers_and_gets_a_large_file_block_wise() {
    let server = start_cairn_server("libcoap-get");
    let body = test_bytes(100 * 1024, 1);
    std::fs::write(server.dir.join("firmware.bin"), &body).unwrap();

    let output = run_with_timeout(
        libcoap_client().args(["-m", "get", &format!("{}/.well-known/core", server.base)]),
        LIMIT,
    );
    let links = String::from_utf8_lossy(&output.stdout);
    assert!(
        links.contains("</time>") && links.contains("obs"),
        "discovery: {links}"
    );
    assert!(
        links.contains("</firmware.bin>;sz=102400"),
        "discovery: {links}"
    );

    for block_size in ["1024", "64"] {
        let out = server.dir.join(format!("copy-{block_size}.bin"));
        let output = run_with_timeout(
            libcoap_client()
                .args(["-m", "get", "-b", block_size, "-o"])
                .arg(&out)
                .arg(format!("{}/firmware.bin", server.base)),
            LIMIT,
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            body,
            "block size {block_size}"
        );
    }
}

#[test]
fn libcoap_client_puts_with_block1() {
    let server = start_cairn_server("libcoap-put");
    let body = test_bytes(20_000, 2);
    let input = server.dir.join("upload.bin");
    std::fs::write(&input, &body).unwrap();
    let echoed = server.dir.join("echoed.bin");
    let output = run_with_timeout(
        libcoap_client()
            .args(["-m", "put", "-b", "256", "-f"])
            .arg(&input)
            .arg("-o")
            .arg(&echoed)
            .arg(format!("{}/echo", server.base)),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read(&echoed).unwrap(),
        body,
        "the server echoes the whole reassembled body"
    );
}

#[test]
fn libcoap_client_observes_time() {
    let server = start_cairn_server("libcoap-observe");
    let output = run_with_timeout(
        libcoap_client().args(["-m", "get", "-s", "4", &format!("{}/time", server.base)]),
        LIMIT,
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let notifications = text.matches('Z').count();
    assert!(
        notifications >= 3,
        "expected the first response and at least 2 notifications, got: {text:?}"
    );
}

#[test]
fn cairn_client_against_libcoap_server() {
    let (_server, base) = start_libcoap_server();
    let dir = scratch_dir("cairn-client");

    let output = run_with_timeout(cairn().args(["coap", "get", &format!("{base}/")]), LIMIT);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("libcoap"));

    // PUT 100 KB with Block1, GET it back with Block2.
    let body = test_bytes(100 * 1024, 3);
    let input = dir.join("in.bin");
    std::fs::write(&input, &body).unwrap();
    let output = run_with_timeout(
        cairn()
            .args([
                "coap",
                "put",
                &format!("{base}/example_data"),
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
            .args(["coap", "get", &format!("{base}/example_data"), "-o"])
            .arg(&copy),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&copy).unwrap(), body);

    // Observe /time: the first response and two notifications.
    let output = run_with_timeout(
        cairn().args([
            "coap",
            "observe",
            &format!("{base}/time"),
            "--count",
            "3",
            "--seconds",
            "20",
            "-v",
        ]),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(log.matches("Observe=").count(), 3, "{log}");
}

#[test]
fn cairn_client_reports_errors_clearly() {
    let (_server, base) = start_libcoap_server();
    let output = run_with_timeout(
        cairn().args(["coap", "get", &format!("{base}/no-such-resource")]),
        LIMIT,
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("4.04"));
    let output = run_with_timeout(cairn().args(["coap", "get", "http://example.com/"]), LIMIT);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("coap://"));
}
