//! The bootstrap commands end to end: `cairn bootstrap keygen`, `cairn keys factory`,
//! `cairn bootstrap import`, templates and refused configurations, `cairn server` with its
//! Bootstrap-Server, `cairn fleet --factory` from factory state to registration, libcoap's
//! `coap-client-openssl` sending a Bootstrap-Request with a factory credential, and
//! `cairn bootstrap status`.

mod support;

use std::path::Path;
use std::process::Output;

use support::{Peer, cairn, free_udp_port_pair, require};

fn run_ok(output: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {stderr}{}",
        String::from_utf8_lossy(&output.stdout)
    );
    format!("{}{stderr}", String::from_utf8_lossy(&output.stdout))
}

fn field(file: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(&format!("{name} = \""))
                .map(|rest| rest.trim_end_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("{name} in {}", file.display()))
}

fn wait_for_port(port: u16) {
    // The server binds its sockets before printing; give it a moment to start.
    for _ in 0..100 {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

#[test]
fn factory_credentials_bootstrap_a_fleet_through_the_cli() {
    let coap_client = require("coap-client-openssl");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let factory = work.path().join("factory");
    let public = work.path().join("bootstrap.pub");
    let dm_port = free_udp_port_pair();
    let bs_port = free_udp_port_pair();
    let bs_uri = format!("coaps://127.0.0.1:{}", bs_port + 1);
    let dm_uri = format!("coaps://127.0.0.1:{}", dm_port + 1);

    run_ok(
        cairn()
            .args(["bootstrap", "keygen", "--public-out"])
            .arg(&public)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "keygen",
    );
    run_ok(
        cairn()
            .args(["keys", "factory", "--count", "4", "--out"])
            .arg(&factory)
            .arg("--server-key")
            .arg(&public)
            .args(["--bootstrap-uri", &bs_uri])
            .output()
            .unwrap(),
        "keys factory",
    );
    // Each device has its own file; the manifest holds no key in the clear.
    let manifest = std::fs::read_to_string(factory.join("manifest.toml")).unwrap();
    for number in 1..=4 {
        let file = factory.join(format!("devices/dev-{number:06}.toml"));
        let key = field(&file, "psk_key");
        assert!(key.len() >= 16);
        assert!(!manifest.contains(&key), "a key is in the manifest");
        assert!(manifest.contains(&field(&file, "psk_identity")));
    }
    run_ok(
        cairn()
            .args(["bootstrap", "import", "--factory"])
            .arg(&factory)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "import",
    );
    // A second import of the same devices is refused as a whole.
    assert!(
        !cairn()
            .args(["bootstrap", "import", "--factory"])
            .arg(&factory)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
            .status
            .success()
    );
    run_ok(
        cairn()
            .args([
                "bootstrap",
                "template",
                "add",
                "--name",
                "fleet",
                "--prefix",
                "dev-",
            ])
            .args([
                "--dm-uri",
                &dm_uri,
                "--bootstrap-uri",
                &bs_uri,
                "--acl-objects",
                "3",
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "template add",
    );
    // Explicit keys made from the endpoint name, or short, are refused.
    for key in ["dev-000009-factory-secret", "0011223344"] {
        let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
        let output = cairn()
            .args(["bootstrap", "config", "add", "--endpoint", "dev-000009"])
            .args([
                "--psk-identity",
                "id-9",
                "--dm-uri",
                &dm_uri,
                "--bootstrap-uri",
                &bs_uri,
            ])
            .arg("--data-dir")
            .arg(&data)
            .env("CAIRN_PSK_HEX", hex)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{key} accepted");
        assert!(String::from_utf8_lossy(&output.stderr).contains("refused"));
    }

    let server = Peer::spawn(
        "cairn server",
        cairn()
            .args(["server", "--no-web", "--data-dir"])
            .arg(&data)
            .args(["--coap-listen", &format!("127.0.0.1:{dm_port}")])
            .args(["--dtls-listen", &format!("127.0.0.1:{}", dm_port + 1)])
            .args(["--bootstrap-coap-listen", &format!("127.0.0.1:{bs_port}")])
            .args([
                "--bootstrap-dtls-listen",
                &format!("127.0.0.1:{}", bs_port + 1),
            ]),
    );
    wait_for_port(bs_port + 1);
    let fleet = Peer::spawn(
        "cairn fleet",
        cairn()
            .args(["fleet", "--factory"])
            .arg(&factory)
            .args(["--devices", "3", "--hold", "120", "--ack-timeout-ms", "500"])
            .arg("--state-dir")
            .arg(work.path().join("device-state"))
            .env("RUST_LOG", "off"),
    );
    // The fleet's vaults appear as its devices start; wait until all three registered by
    // looking for their DM accounts in their encrypted state.
    let registered = || {
        (1..=3).all(|n| {
            let dir = work.path().join(format!("device-state/dev-{n:06}"));
            // Opening a vault creates its key: only open one the fleet has written to.
            if !dir.join("credentials.sealed").exists() {
                return false;
            }
            let Ok(vault) = cairn_client::credentials::FileVault::open(&dir) else {
                return false;
            };
            let models = cairn_lwm2m::ModelRegistry::with_core_models();
            cairn_client::credentials::load_state(&vault, &models)
                .ok()
                .flatten()
                .is_some_and(|state| !state.dm_accounts().is_empty())
        })
    };
    let start = std::time::Instant::now();
    while !registered() {
        assert!(
            start.elapsed().as_secs() < 30,
            "the fleet did not bootstrap"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));

    // libcoap with the fourth device's factory credential: the Bootstrap-Request gets 2.04.
    let file = factory.join("devices/dev-000004.toml");
    let output = std::process::Command::new(coap_client)
        .args(["-v", "7", "-B", "10", "-m", "post"])
        .args([
            "-u",
            &field(&file, "psk_identity"),
            "-k",
            &field(&file, "psk_key"),
        ])
        .arg(format!(
            "coaps://127.0.0.1:{}/bs?ep=dev-000004",
            bs_port + 1
        ))
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(log.contains("c:2.04"), "{log}");
    // With the wrong endpoint name it gets 4.03.
    let output = std::process::Command::new(require("coap-client-openssl"))
        .args(["-v", "7", "-B", "10", "-m", "post"])
        .args([
            "-u",
            &field(&file, "psk_identity"),
            "-k",
            &field(&file, "psk_key"),
        ])
        .arg(format!(
            "coaps://127.0.0.1:{}/bs?ep=dev-000001",
            bs_port + 1
        ))
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(log.contains("c:4.03"), "{log}");

    // Rotation through the running server: the three running devices bootstrap again and
    // register with fresh credentials; the fourth (never registered) stays pending.
    let report = run_ok(
        cairn()
            .args(["keys", "rotate", "--all", "--wait-s", "20", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap(),
        "keys rotate",
    );
    assert!(report.contains("rotated=3 pending=1 failed=0"), "{report}");
    assert!(report.contains("pending\tdev-000004"), "{report}");
    drop(fleet);
    drop(server);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let status = run_ok(
        cairn()
            .args(["bootstrap", "status", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap(),
        "status",
    );
    let line = status
        .lines()
        .find(|l| l.starts_with("dev-000001"))
        .unwrap();
    assert!(line.contains("dm_credential=in use"), "{status}");
    assert!(
        line.contains("finished=2"),
        "bootstrapped, then rotated: {status}"
    );
    assert!(
        !line.contains("factory-"),
        "the factory identity was replaced: {line}"
    );
}

#[test]
fn the_bootstrap_server_runs_alone() {
    let coap_client = require("coap-client-openssl");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let factory = work.path().join("factory");
    let public = work.path().join("bootstrap.pub");
    let port = free_udp_port_pair();
    let uri = format!("coaps://127.0.0.1:{}", port + 1);
    run_ok(
        cairn()
            .args(["bootstrap", "keygen", "--public-out"])
            .arg(&public)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "keygen",
    );
    run_ok(
        cairn()
            .args([
                "keys", "factory", "--count", "1", "--prefix", "solo-", "--out",
            ])
            .arg(&factory)
            .arg("--server-key")
            .arg(&public)
            .args(["--bootstrap-uri", &uri])
            .output()
            .unwrap(),
        "keys factory",
    );
    run_ok(
        cairn()
            .args(["bootstrap", "import", "--factory"])
            .arg(factory.join("manifest.toml"))
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "import",
    );
    run_ok(
        cairn()
            .args([
                "bootstrap",
                "template",
                "add",
                "--name",
                "solo",
                "--prefix",
                "solo-",
            ])
            .args([
                "--dm-uri",
                "coaps://dm.example:5684",
                "--bootstrap-uri",
                &uri,
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "template add",
    );
    let _server = Peer::spawn(
        "cairn bootstrap serve",
        cairn()
            .args(["bootstrap", "serve", "--data-dir"])
            .arg(&data)
            .args(["--coap-listen", &format!("127.0.0.1:{port}")])
            .args(["--dtls-listen", &format!("127.0.0.1:{}", port + 1)]),
    );
    wait_for_port(port + 1);
    let file = factory.join("devices/solo-000001.toml");
    let output = std::process::Command::new(coap_client)
        .args(["-v", "7", "-B", "10", "-m", "post"])
        .args([
            "-u",
            &field(&file, "psk_identity"),
            "-k",
            &field(&file, "psk_key"),
        ])
        .arg(format!("{uri}/bs?ep=solo-000001"))
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(log.contains("c:2.04"), "{log}");
    // Without DTLS, this endpoint may not bootstrap.
    let output = std::process::Command::new(require("coap-client-notls"))
        .args(["-v", "7", "-B", "5", "-m", "post"])
        .arg(format!("coap://127.0.0.1:{port}/bs?ep=solo-000001"))
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(log.contains("c:4.03"), "{log}");
}

/// The DM account modes (Security Mode, /0/x/2) of the fleet's devices 1..=count, when all
/// of them have one.
fn dm_modes(state_dir: &Path, count: usize) -> Option<Vec<(i64, Vec<u8>)>> {
    (1..=count)
        .map(|n| {
            let dir = state_dir.join(format!("dev-{n:06}"));
            // Opening a vault creates its key: only open one the fleet has written to.
            if !dir.join("credentials.sealed").exists() {
                return None;
            }
            let vault = cairn_client::credentials::FileVault::open(&dir).ok()?;
            let models = cairn_lwm2m::ModelRegistry::with_core_models();
            let state = cairn_client::credentials::load_state(&vault, &models).ok()??;
            let account = state.dm_accounts().first()?.account.clone();
            Some((account.mode, account.identity.clone()))
        })
        .collect()
}

/// Prepares a factory of `count` devices and a template with `credential`; returns the
/// factory directory and the DM and bootstrap port pairs.
fn factory_with_template(work: &Path, count: usize, credential: &str) -> (u16, u16) {
    let data = work.join("data");
    let public = work.join("bootstrap.pub");
    let dm_port = free_udp_port_pair();
    let bs_port = free_udp_port_pair();
    let bs_uri = format!("coaps://127.0.0.1:{}", bs_port + 1);
    let dm_uri = format!("coaps://127.0.0.1:{}", dm_port + 1);
    run_ok(
        cairn()
            .args(["bootstrap", "keygen", "--public-out"])
            .arg(&public)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "keygen",
    );
    run_ok(
        cairn()
            .args(["keys", "factory", "--count", &count.to_string(), "--out"])
            .arg(work.join("factory"))
            .arg("--server-key")
            .arg(&public)
            .args(["--bootstrap-uri", &bs_uri])
            .output()
            .unwrap(),
        "keys factory",
    );
    run_ok(
        cairn()
            .args(["bootstrap", "import", "--factory"])
            .arg(work.join("factory"))
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "import",
    );
    run_ok(
        cairn()
            .args(["bootstrap", "template", "add", "--name", "fleet"])
            .args(["--prefix", "dev-", "--dm-uri", &dm_uri])
            .args(["--bootstrap-uri", &bs_uri, "--credential", credential])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
        "template add",
    );
    (dm_port, bs_port)
}

fn spawn_server(work: &Path, dm_port: u16, bs_port: u16, extra: &[&str]) -> Peer {
    let server = Peer::spawn(
        "cairn server",
        cairn()
            .args(["server", "--no-web", "--no-coap", "--data-dir"])
            .arg(work.join("data"))
            .args(["--dtls-listen", &format!("127.0.0.1:{}", dm_port + 1)])
            .args([
                "--bootstrap-dtls-listen",
                &format!("127.0.0.1:{}", bs_port + 1),
            ])
            .args(extra),
    );
    wait_for_port(bs_port + 1);
    wait_for_port(dm_port + 1);
    server
}

/// `cairn fleet --factory` with `count` devices; its messages go to `work`/fleet.log.
fn spawn_fleet(work: &Path, count: usize) -> Peer {
    let log = std::fs::File::create(work.join("fleet.log")).unwrap();
    let child = cairn()
        .args(["fleet", "--factory"])
        .arg(work.join("factory"))
        .args(["--devices", &count.to_string(), "--hold", "600"])
        .args(["--ack-timeout-ms", "500", "--state-dir"])
        .arg(work.join("device-state"))
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Peer {
        child,
        name: "cairn fleet".into(),
    }
}

/// Waits until the fleet reports every device registered.
fn wait_fleet_registered(work: &Path, count: usize) {
    let needle = format!("bootstrapped and registered {count}/{count} devices");
    let registered = support::wait_until(std::time::Duration::from_secs(90), || {
        std::fs::read_to_string(work.join("fleet.log")).is_ok_and(|log| log.contains(&needle))
    });
    assert!(
        registered,
        "the fleet did not register: {}",
        std::fs::read_to_string(work.join("fleet.log")).unwrap_or_default()
    );
}

/// A fleet bootstraps from factory credentials to `credential` DM credentials (Security Mode
/// `mode`) through `cairn server`, with the key and CA it creates in its data directory.
fn fleet_bootstraps_to(credential: &str, mode: i64, key_len: std::ops::RangeInclusive<usize>) {
    let work = tempfile::tempdir().unwrap();
    let (dm_port, bs_port) = factory_with_template(work.path(), 3, credential);
    let server = spawn_server(work.path(), dm_port, bs_port, &[]);
    // The DM listener's key and Cairn's CA were created in the data directory.
    for file in ["dm-server.key", "dm-server.pem", "ca/ca.key", "ca/ca.pem"] {
        assert!(work.path().join("data").join(file).exists(), "{file}");
    }
    let fleet = spawn_fleet(work.path(), 3);
    wait_fleet_registered(work.path(), 3);
    let modes = dm_modes(&work.path().join("device-state"), 3).expect("DM accounts");
    for (account_mode, identity) in &modes {
        assert_eq!(*account_mode, mode, "Security Mode");
        assert!(key_len.contains(&identity.len()), "{}", identity.len());
    }
    // The proofs of the registrations are recorded.
    std::thread::sleep(std::time::Duration::from_secs(1));
    drop(fleet);
    drop(server);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = run_ok(
        cairn()
            .args(["bootstrap", "status", "--data-dir"])
            .arg(work.path().join("data"))
            .output()
            .unwrap(),
        "status",
    );
    for n in 1..=3 {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("dev-{n:06}")))
            .unwrap();
        assert!(line.contains(&format!("dm_kind={credential}")), "{status}");
        assert!(line.contains("dm_credential=in use"), "{status}");
    }
}

#[test]
fn a_fleet_bootstraps_to_raw_public_keys_through_the_cli() {
    // A P-256 SubjectPublicKeyInfo is 91 bytes.
    fleet_bootstraps_to("rpk", 1, 91..=91);
}

#[test]
fn a_fleet_bootstraps_to_certificates_through_the_cli() {
    // A certificate from Cairn's CA.
    fleet_bootstraps_to("x509", 2, 200..=1200);
}

/// The number of devices rotated by the scheduled rotations so far, and whether any failed.
fn scheduled_rotations(data: &Path) -> (usize, bool) {
    let Ok(entries) = std::fs::read_dir(data.join("rotation/reports")) else {
        return (0, false);
    };
    let mut rotated = 0;
    let mut failed = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("scheduled-") && name.ends_with(".toml")) {
            continue;
        }
        let report: toml::Table = std::fs::read_to_string(entry.path())
            .unwrap()
            .parse()
            .unwrap();
        rotated += report["rotated"].as_array().unwrap().len();
        failed |= !report["failed"].as_array().unwrap().is_empty();
    }
    (rotated, failed)
}

#[test]
fn credentials_older_than_rotate_after_are_rotated_by_the_server() {
    let work = tempfile::tempdir().unwrap();
    let (dm_port, bs_port) = factory_with_template(work.path(), 3, "rpk");
    let server = spawn_server(work.path(), dm_port, bs_port, &["--rotate-after", "6s"]);
    let fleet = spawn_fleet(work.path(), 3);
    wait_fleet_registered(work.path(), 3);
    let state_dir = work.path().join("device-state");
    let first = dm_modes(&state_dir, 3).expect("DM accounts");
    let data = work.path().join("data");
    assert_eq!(scheduled_rotations(&data).0, 0, "rotated before its age");
    // Past the age, every device is given a fresh key pair, and the reports say so.
    let rotated = support::wait_until(std::time::Duration::from_secs(40), || {
        dm_modes(&state_dir, 3).is_some_and(|now| {
            now.iter()
                .zip(&first)
                .all(|((mode, key), (_, old))| *mode == 1 && key != old)
        }) && scheduled_rotations(&data).0 >= 3
    });
    assert!(rotated, "the credentials were not rotated by age");
    assert!(!scheduled_rotations(&data).1, "a scheduled rotation failed");
    drop(fleet);
    drop(server);
}
