//! `cairn server` and `cairn device` as an operator runs them: devices added to the store,
//! a registration from libcoap's client over DTLS-PSK, then `kill -9` and a restart that still
//! knows the registration.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn device_command(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    run_with_timeout(
        cairn()
            .arg("device")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args),
        LIMIT,
    )
}

/// Starts `cairn server` and returns it with a channel of its log lines.
fn start_server(
    data_dir: &std::path::Path,
    coap: u16,
    dtls: u16,
) -> (Peer, mpsc::Receiver<String>) {
    let mut child = cairn()
        .args(["--log", "info", "server", "--data-dir"])
        .arg(data_dir)
        .args([
            "--coap-listen",
            &format!("127.0.0.1:{coap}"),
            "--dtls-listen",
            &format!("127.0.0.1:{dtls}"),
            "--web-listen",
            "127.0.0.1:0",
            "--no-bootstrap",
        ])
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

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no log line with {needle:?}; saw:\n{}", seen.join("\n"));
}

#[test]
fn devices_registration_survives_kill_9() {
    let client = require("coap-client-openssl");
    let data_dir = scratch_dir("server-kill9");

    // Devices are added while the server is stopped.
    let key_hex: String = "kill-nine-secret"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let output = device_command(
        &data_dir,
        &[
            "add",
            "--endpoint",
            "meter-1",
            "--psk-identity",
            "meter-1-id",
            "--psk-key",
            &key_hex,
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = device_command(
        &data_dir,
        &[
            "add",
            "--endpoint",
            "weak",
            "--psk-identity",
            "w",
            "--psk-key",
            "00",
        ],
    );
    assert!(!output.status.success(), "a one-byte PSK must be refused");
    let output = device_command(&data_dir, &["list"]);
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        listing.contains("meter-1") && listing.contains("meter-1-id"),
        "{listing}"
    );
    assert!(
        !listing.contains(&key_hex) && !listing.contains("kill-nine-secret"),
        "keys are never listed"
    );

    let coap = free_udp_port_pair();
    let dtls = free_udp_port_pair();
    let (server, lines) = start_server(&data_dir, coap, dtls);
    wait_for_line(&lines, "devices on coaps://");

    let uri = format!("coaps://127.0.0.1:{dtls}/rd?ep=meter-1&lt=300&lwm2m=1.1&b=U");
    let output = run_with_timeout(
        Command::new(&client)
            .args(["-m", "post", "-u", "meter-1-id", "-k", "kill-nine-secret"])
            .args(["-e", "</1/0>,</3/0>", "-B", "10", &uri]),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = wait_for_line(&lines, "registered");
    let id = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("id="))
        .expect("the log names the registration id")
        .to_owned();

    // kill -9: no shutdown, no flush.
    drop(server);
    let (_server, lines) = start_server(&data_dir, coap, dtls);
    wait_for_line(&lines, "1 registrations restored");

    // The device's Update to its registration succeeds (2.04), which it cannot if the
    // server forgot it (4.04).
    let update = format!("coaps://127.0.0.1:{dtls}/rd/{id}");
    let output = run_with_timeout(
        Command::new(&client).args([
            "-m",
            "post",
            "-u",
            "meter-1-id",
            "-k",
            "kill-nine-secret",
            "-v",
            "7",
            "-B",
            "10",
            &update,
        ]),
        LIMIT,
    );
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        log.contains("2.04"),
        "the update after the restart must succeed:\n{log}"
    );
}
