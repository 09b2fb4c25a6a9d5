//! CoAP over DTLS in certificate mode (ECDHE-ECDSA, P-256) with keys and certificates from
//! `cairn keys`: libcoap's OpenSSL client against `cairn coap serve` with mutual
//! authentication, `cairn coap get` against libcoap's server, and the refusals (no client
//! certificate, wrong server name, revoked certificate).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = scratch_dir(name);
        let ca = dir.join("ca");
        let run = |args: &[&str]| {
            let output = run_with_timeout(cairn().arg("keys").args(args), LIMIT);
            assert!(
                output.status.success(),
                "cairn keys {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ca_dir = ca.to_str().unwrap();
        run(&["ca", "init", "--dir", ca_dir, "--cn", "Cairn Test CA"]);
        let server = dir.join("server");
        run(&[
            "ca",
            "issue",
            "--dir",
            ca_dir,
            "--cn",
            "localhost",
            "--dns",
            "localhost",
            "--usage",
            "server",
        ]
        .into_iter()
        .chain(["--out", server.to_str().unwrap()])
        .collect::<Vec<_>>());
        for device in ["dev-1", "dev-2"] {
            let out = dir.join(device);
            run(&[
                "ca",
                "issue",
                "--dir",
                ca_dir,
                "--cn",
                device,
                "--usage",
                "client",
                "--out",
                out.to_str().unwrap(),
            ]);
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn ca(&self) -> String {
        self.path("ca/ca.pem")
    }
}

fn serve(pki: &Pki, extra: &[&str]) -> (Peer, u16) {
    let port = free_udp_port_pair();
    let peer = Peer::spawn(
        "cairn coap serve",
        cairn()
            .args(["coap", "serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--dtls-listen", &format!("127.0.0.1:{}", port + 1)])
            .args([
                "--cert",
                &pki.path("server.pem"),
                "--key",
                &pki.path("server.key"),
                "--ca",
                &pki.ca(),
            ])
            .args(extra),
    );
    let up = wait_until(Duration::from_secs(20), || {
        cairn()
            .args([
                "coap",
                "get",
                &format!("coap://127.0.0.1:{port}/"),
                "--timeout",
                "1",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(up, "cairn coap serve did not come up");
    (peer, port + 1)
}

fn cairn_get(pki: &Pki, uri: &str, device: Option<&str>, extra: &[&str]) -> std::process::Output {
    let mut command = cairn();
    command.args(["coap", "get", uri, "--timeout", "10", "--ca", &pki.ca()]);
    // The address is 127.0.0.1 (no name lookup); the certificate's name is checked explicitly.
    if !extra.contains(&"--server-name") {
        command.args(["--server-name", "localhost"]);
    }
    command.args(extra);
    if let Some(device) = device {
        command.args([
            "--cert",
            &pki.path(&format!("{device}.pem")),
            "--key",
            &pki.path(&format!("{device}.key")),
        ]);
    }
    run_with_timeout(&mut command, LIMIT)
}

#[test]
fn mutual_authentication_with_libcoap_and_cairn_clients() {
    let pki = Pki::new("certs-mutual");
    let (_server, port) = serve(&pki, &[]);
    let client = require("coap-client-openssl");
    let output = run_with_timeout(
        Command::new(client)
            .args([
                "-m",
                "get",
                "-B",
                "10",
                "-c",
                &pki.path("dev-1.pem"),
                "-j",
                &pki.path("dev-1.key"),
            ])
            .args(["-C", &pki.ca(), &format!("coaps://127.0.0.1:{port}/time")]),
        LIMIT,
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains('Z'),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = cairn_get(
        &pki,
        &format!("coaps://127.0.0.1:{port}/time"),
        Some("dev-2"),
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains('Z'));

    // No client certificate: the server requires one.
    let output = cairn_get(&pki, &format!("coaps://127.0.0.1:{port}/time"), None, &[]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());

    // The server's certificate does not carry this name.
    let output = cairn_get(
        &pki,
        &format!("coaps://127.0.0.1:{port}/time"),
        Some("dev-1"),
        &["--server-name", "other.example"],
    );
    assert!(!output.status.success());
}

#[test]
fn a_revoked_device_certificate_is_refused() {
    let pki = Pki::new("certs-revoked");
    let output = run_with_timeout(
        cairn().args([
            "keys",
            "ca",
            "revoke",
            "--dir",
            &pki.path("ca"),
            "--cert",
            &pki.path("dev-2.pem"),
        ]),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let crl = pki.path("ca/crl.pem");
    assert!(Path::new(&crl).is_file());
    let (_server, port) = serve(&pki, &["--crl", &crl]);
    let output = cairn_get(
        &pki,
        &format!("coaps://127.0.0.1:{port}/time"),
        Some("dev-2"),
        &[],
    );
    assert!(
        !output.status.success(),
        "a revoked certificate must be refused"
    );
    let output = cairn_get(
        &pki,
        &format!("coaps://127.0.0.1:{port}/time"),
        Some("dev-1"),
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cairn_client_against_libcoap_server_with_certificates() {
    let pki = Pki::new("certs-libcoap-server");
    let binary = require("coap-server-openssl");
    let port = free_udp_port_pair();
    let _server = Peer::spawn(
        "coap-server-openssl",
        Command::new(binary)
            .args(["-A", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-c",
                &pki.path("server.pem"),
                "-j",
                &pki.path("server.key"),
                "-C",
                &pki.ca(),
                "-n",
            ]),
    );
    let uri = format!("coaps://127.0.0.1:{}/", port + 1);
    let up = wait_until(Duration::from_secs(20), || {
        cairn_get(&pki, &uri, Some("dev-1"), &[]).status.success()
    });
    assert!(up, "no answer from coap-server-openssl in certificate mode");
    let output = cairn_get(&pki, &uri, Some("dev-1"), &[]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("libcoap"));
}
