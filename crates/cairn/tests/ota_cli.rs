//! Firmware over the air as an operator runs it: `cairn server`, a `cairn fleet` whose
//! devices carry a Firmware Update object on simulated flash, `cairn firmware upload` and
//! `cairn campaign start | status --follow`, then the fleet's report of what each device boots.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cairn_firmware::package::encode_package;
use cairn_firmware::{Algorithm, Manifest, Payload, SigningKey, sha256, sign_manifest};
use support::*;

const LIMIT: Duration = Duration::from_secs(90);
const KEY_HEX: &str = "6f74612d636c692d7365637265742d31";

fn package(image: &[u8], sequence: u64, key: &SigningKey) -> Vec<u8> {
    let manifest = Manifest {
        vendor: "acme".into(),
        class: "meter".into(),
        sequence,
        image_digest: sha256(image),
        image_size: image.len() as u64,
        payload: Payload::Full,
        expires_at: None,
        min_hardware_version: None,
        min_bootloader_version: None,
    };
    encode_package(&sign_manifest(&manifest, key), image)
}

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?}; saw:\n{}", seen.join("\n"));
}

#[test]
fn upload_and_campaign_update_a_fleet_through_the_cli() {
    let dir = scratch_dir("ota-cli");
    let data_dir = dir.join("data");
    let key = SigningKey::from_random(Algorithm::Ed25519, &[33; 32]).unwrap();
    let public = dir.join("firmware.pub");
    std::fs::write(&public, key.public_key().to_text()).unwrap();
    let v1: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
    let v2: Vec<u8> = (0..7000u32).map(|i| (i * 13 + 1) as u8).collect();
    let factory = dir.join("v1.pkg");
    let update = dir.join("v2.pkg");
    std::fs::write(&factory, package(&v1, 1, &key)).unwrap();
    std::fs::write(&update, package(&v2, 2, &key)).unwrap();

    for n in 0..2 {
        let endpoint = format!("ota-cli-{n}");
        ok(&run_with_timeout(
            cairn()
                .arg("device")
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["add", "--endpoint", &endpoint, "--psk-identity", &endpoint])
                .args(["--psk-key", KEY_HEX]),
            LIMIT,
        ));
    }
    let coap = free_udp_port_pair();
    let dtls = free_udp_port_pair();
    let mut server = cairn()
        .args(["--log", "info", "server", "--no-bootstrap", "--data-dir"])
        .arg(&data_dir)
        .args(["--coap-listen", &format!("127.0.0.1:{coap}")])
        .args(["--dtls-listen", &format!("127.0.0.1:{dtls}")])
        .args(["--web-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn server");
    let server_lines = lines_of(server.child_stderr());
    let _server = Peer {
        child: server,
        name: "cairn server".into(),
    };
    wait_for_line(&server_lines, "devices on coaps://");

    let mut fleet = cairn()
        .args(["fleet", "--server", &format!("coaps://127.0.0.1:{dtls}")])
        .args(["--devices", "2", "--endpoint-prefix", "ota-cli-"])
        .args(["--psk-key-hex", KEY_HEX, "--firmware-factory"])
        .arg(&factory)
        .arg("--firmware-trust")
        .arg(&public)
        .args(["--power-cut-rate", "0", "--drop-rate", "0.05"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cairn fleet");
    let fleet_lines = lines_of(fleet.stdout.take().unwrap());
    let fleet_pid = fleet.id();
    let fleet = Peer {
        child: fleet,
        name: "cairn fleet".into(),
    };
    wait_for_line(&fleet_lines, "registered: 2");

    let uploaded = ok(&run_with_timeout(
        cairn()
            .args(["firmware", "upload"])
            .arg(&update)
            .args(["--name", "meter", "--version", "2", "--data-dir"])
            .arg(&data_dir),
        LIMIT,
    ));
    let image = uploaded
        .lines()
        .find_map(|l| l.strip_prefix("image:"))
        .map(str::trim)
        .expect("an image id")
        .to_owned();
    // Not a package: refused before it reaches the server.
    let output = run_with_timeout(
        cairn()
            .args(["firmware", "upload"])
            .arg(&public)
            .args(["--name", "x", "--version", "1", "--data-dir"])
            .arg(&data_dir),
        LIMIT,
    );
    assert!(!output.status.success());

    let started = ok(&run_with_timeout(
        cairn()
            .args(["campaign", "--data-dir"])
            .arg(&data_dir)
            .args(["start", "--image", &image, "--group", "ota-cli-"])
            .args(["--waves", "50,100"]),
        LIMIT,
    ));
    let campaign = started
        .lines()
        .find_map(|l| l.strip_prefix("campaign:"))
        .map(str::trim)
        .expect("a campaign id")
        .to_owned();
    let status = ok(&run_with_timeout(
        cairn()
            .args(["campaign", "--data-dir"])
            .arg(&data_dir)
            .args(["status", &campaign, "--follow"]),
        LIMIT,
    ));
    assert!(status.contains("state=completed"), "{status}");
    assert!(status.contains("updated=2"), "{status}");

    // Ctrl-C: the fleet reports what its devices boot, then de-registers.
    let _ = Command::new("kill")
        .args(["-INT", &fleet_pid.to_string()])
        .status();
    wait_for_line(&fleet_lines, "bricked:  0");
    wait_for_line(&fleet_lines, "versions: 2: 2");
    drop(fleet);
}

trait ChildStderr {
    fn child_stderr(&mut self) -> std::process::ChildStderr;
}

impl ChildStderr for std::process::Child {
    fn child_stderr(&mut self) -> std::process::ChildStderr {
        self.stderr.take().expect("piped stderr")
    }
}
