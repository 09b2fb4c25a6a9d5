//! `cairn server --cert --key --ca --crl` with devices added by `cairn device add --x509` and
//! `--rpk`, and `cairn client` registering with an X.509 certificate and with a raw public
//! key; keys and certificates from `cairn keys`. A device whose certificate names another
//! endpoint is refused (4.03).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn succeed(command: &mut std::process::Command) -> String {
    let output = run_with_timeout(command, LIMIT);
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A child process with a channel of its standard error lines.
fn spawn_logged(name: &str, command: &mut std::process::Command) -> (Peer, mpsc::Receiver<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
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
            name: name.into(),
        },
        receiver,
    )
}

/// Waits for a line containing one of `needles`; returns the line.
fn wait_for_any(lines: &mpsc::Receiver<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if needles.iter().any(|needle| line.contains(needle)) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {needles:?}; saw:\n{}", seen.join("\n"));
}

struct Setup {
    dir: PathBuf,
}

impl Setup {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn device_add(&self, args: &[&str]) {
        succeed(
            cairn()
                .args(["device", "--data-dir"])
                .arg(self.data_dir())
                .arg("add")
                .args(args),
        );
    }
}

fn setup() -> Setup {
    let setup = Setup {
        dir: scratch_dir("server-certificates"),
    };
    let ca = setup.path("ca");
    succeed(cairn().args(["keys", "ca", "init", "--dir", &ca]));
    let issue = |cn: &str, usage: &str, extra: &[&str]| {
        succeed(
            cairn()
                .args(["keys", "ca", "issue", "--dir", &ca, "--cn", cn])
                .args(["--usage", usage, "--out", &setup.path(cn)])
                .args(extra),
        );
    };
    issue("localhost", "server", &["--dns", "localhost"]);
    issue("meter-x509", "client", &[]);
    issue("impostor", "client", &[]);
    succeed(cairn().args(["keys", "gen-ec", "--out", &setup.path("meter-rpk.key")]));
    assert!(Path::new(&setup.path("meter-rpk.pub")).is_file());
    setup.device_add(&["--endpoint", "meter-x509", "--x509"]);
    setup.device_add(&[
        "--endpoint",
        "meter-rpk",
        "--rpk",
        &setup.path("meter-rpk.pub"),
    ]);
    let listed = succeed(
        cairn()
            .args(["device", "--data-dir"])
            .arg(setup.data_dir())
            .arg("list"),
    );
    assert!(
        listed.contains("meter-x509") && listed.contains("meter-rpk"),
        "{listed}"
    );
    setup
}

fn client(
    setup: &Setup,
    port: u16,
    endpoint: &str,
    credentials: &[&str],
) -> (Peer, mpsc::Receiver<String>) {
    spawn_logged(
        "cairn client",
        cairn()
            .args(["client", "--endpoint", endpoint])
            .args(["--server", &format!("coaps://127.0.0.1:{port}")])
            .args(credentials)
            .current_dir(&setup.dir),
    )
}

#[test]
fn x509_and_rpk_devices_register_with_cairn_server() {
    let setup = setup();
    let port = free_udp_port_pair();
    let (_server, server_log) = spawn_logged(
        "cairn server",
        cairn()
            .args(["--log", "info", "server", "--data-dir"])
            .arg(setup.data_dir())
            .args(["--no-coap", "--dtls-listen", &format!("127.0.0.1:{port}")])
            .args(["--no-web", "--no-bootstrap"])
            .args(["--cert", &setup.path("localhost.pem")])
            .args(["--key", &setup.path("localhost.key")])
            .args(["--ca", &setup.path("ca/ca.pem")]),
    );
    wait_for_any(&server_log, &["devices on coaps://"]);

    let x509 = [
        "--cert",
        &setup.path("meter-x509.pem"),
        "--key",
        &setup.path("meter-x509.key"),
        "--ca",
        &setup.path("ca/ca.pem"),
        "--server-name",
        "localhost",
    ];
    let (_device, log) = client(&setup, port, "meter-x509", &x509);
    let line = wait_for_any(&log, &["registered at", "failed"]);
    assert!(line.contains("registered at"), "{line}");

    // The server's key in raw form: the public key of its certificate's key.
    let server_public = setup.path("localhost.pub");
    let spki = succeed(cairn().args([
        "keys",
        "public",
        "--key",
        &setup.path("localhost.key"),
        "--out",
        &server_public,
    ]));
    assert!(!spki.is_empty());
    let rpk = [
        "--key",
        &setup.path("meter-rpk.key"),
        "--rpk",
        &server_public,
    ];
    let (_device, log) = client(&setup, port, "meter-rpk", &rpk);
    let line = wait_for_any(&log, &["registered at", "failed"]);
    assert!(line.contains("registered at"), "{line}");

    // A certificate from the same CA for another name cannot register as meter-x509.
    let impostor = [
        "--cert",
        &setup.path("impostor.pem"),
        "--key",
        &setup.path("impostor.key"),
        "--ca",
        &setup.path("ca/ca.pem"),
        "--server-name",
        "localhost",
    ];
    let (_device, log) = client(&setup, port, "meter-x509", &impostor);
    let line = wait_for_any(&log, &["registered at", "failed"]);
    assert!(line.contains("4.03"), "{line}");
}
