//! CoAP over DTLS with raw public keys (RFC 7250, ECDHE-ECDSA on P-256) between
//! `cairn coap serve --key --rpk` and `cairn coap get --key --rpk`, keys from
//! `cairn keys gen-ec` (OpenSSL 3.0 and libcoap's OpenSSL build have no raw public keys):
//! a GET with known keys both ways (PEM and DER), and the refusals of an unknown client key
//! and of an unexpected server key.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Keys made by `cairn keys gen-ec` in a scratch directory.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new(name: &str) -> Keys {
        let keys = Keys {
            dir: scratch_dir(name),
        };
        for (key, der) in [
            ("server", false),
            ("dev-1", false),
            ("dev-2", true),
            ("stranger", false),
        ] {
            let mut command = cairn();
            command.args(["keys", "gen-ec", "--out", &keys.path(&format!("{key}.key"))]);
            if der {
                command.arg("--der");
            }
            let output = run_with_timeout(&mut command, LIMIT);
            assert!(
                output.status.success(),
                "cairn keys gen-ec: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(keys.dir.join(format!("{key}.pub")).is_file());
        }
        keys
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

/// `cairn coap serve` with the server key, accepting the raw public keys of dev-1 and dev-2.
fn serve(keys: &Keys) -> (Peer, u16) {
    let port = free_udp_port_pair();
    let peer = Peer::spawn(
        "cairn coap serve",
        cairn()
            .args(["coap", "serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--dtls-listen", &format!("127.0.0.1:{}", port + 1)])
            .args(["--key", &keys.path("server.key")])
            .args(["--rpk", &keys.path("dev-1.pub")])
            .args(["--rpk", &keys.path("dev-2.pub")]),
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

fn get(keys: &Keys, port: u16, device: &str, server_key: &str) -> std::process::Output {
    run_with_timeout(
        cairn().args([
            "coap",
            "get",
            &format!("coaps://127.0.0.1:{port}/time"),
            "--timeout",
            "5",
            "--key",
            &keys.path(&format!("{device}.key")),
            "--rpk",
            &keys.path(&format!("{server_key}.pub")),
        ]),
        LIMIT,
    )
}

#[test]
fn known_raw_public_keys_both_ways() {
    let keys = Keys::new("rpk-known");
    let (_server, port) = serve(&keys);
    for device in ["dev-1", "dev-2"] {
        let output = get(&keys, port, device, "server");
        assert!(
            output.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains('Z'));
    }
}

#[test]
fn unknown_raw_public_keys_are_refused() {
    let keys = Keys::new("rpk-unknown");
    let (_server, port) = serve(&keys);
    // The server does not know this device's key.
    let output = get(&keys, port, "stranger", "server");
    assert!(
        !output.status.success(),
        "an unknown client key must be refused"
    );
    assert!(output.stdout.is_empty());
    // The client expects another server key.
    let output = get(&keys, port, "dev-1", "stranger");
    assert!(
        !output.status.success(),
        "an unexpected server key must be refused"
    );
    assert!(output.stdout.is_empty());
    // And a known pair still works on the same server.
    let output = get(&keys, port, "dev-1", "server");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_public_key_file_that_is_not_p256_is_an_error() {
    let keys = Keys::new("rpk-invalid");
    std::fs::write(keys.dir.join("junk.pub"), b"not a key").unwrap();
    let output = run_with_timeout(
        cairn().args([
            "coap",
            "get",
            "coaps://127.0.0.1:9/time",
            "--timeout",
            "1",
            "--key",
            &keys.path("dev-1.key"),
            "--rpk",
            &keys.path("junk.pub"),
        ]),
        LIMIT,
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not a P-256 public key"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
