//! `cairn demo` as a person runs it, with five devices on free ports: the devices bootstrap
//! with their factory credentials, register over DTLS and report their clocks; the console's
//! setup link is printed; the demo's firmware campaign updates every device (the server's
//! campaign report says completed, and each device reports the new Firmware Version); the
//! second signed package the demo leaves for the console, uploaded and rolled out with the
//! `cairn firmware` and `cairn campaign` commands, updates them again; afterwards the store
//! holds each device's bootstrap history and device-management credential.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn the_demo_bootstraps_registers_and_reports_its_devices() {
    let data_dir = scratch_dir("demo");
    let mut child = cairn()
        .args(["demo", "--devices", "5", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--dtls-listen",
            "127.0.0.1:0",
            "--bootstrap-listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn demo");
    let (lines, receiver) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
    }
    let demo = Peer {
        child,
        name: "cairn demo".into(),
    };
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let has = |seen: &[String], needle: &str| seen.iter().any(|l| l.contains(needle));
    // Until the fleet is up, a clock notification arrived and the campaign's outcome was
    // read back from the devices.
    // A campaign that did not start or did not complete ends the wait (and fails below).
    let done = |seen: &[String]| {
        let up = has(seen, "fleet: bootstrapped and registered")
            && has(seen, "notification demo-meter-000001 /3/0/13")
            && has(seen, "devices report firmware version");
        let no_campaign = has(seen, "no registered device has a Firmware Update object")
            || has(seen, "the demo campaign did not start");
        up || no_campaign
    };
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the demo did not get going:\n{}", seen.join("\n")),
        }
    }
    let text = seen.join("\n");
    assert!(
        text.contains("bootstrapped and registered 5/5 devices"),
        "{text}"
    );
    assert!(text.contains("/setup?token=setup_"), "{text}");
    assert!(
        text.contains("firmware: demo-meter-firmware 1.1.0"),
        "{text}"
    );
    for n in 1..=5 {
        let endpoint = format!("demo-meter-{n:06}");
        assert!(text.contains(&format!("bootstrapped {endpoint}")), "{text}");
        assert!(text.contains(&format!("registered   {endpoint}")), "{text}");
        assert!(
            text.contains(&format!("read         {endpoint} /3/0: manufacturer Cairn")),
            "{text}"
        );
    }

    // The demo's campaign: started once the fleet registered, completed, every device on
    // the new image by its own account.
    let campaign = seen
        .iter()
        .find_map(|l| l.strip_prefix("firmware: campaign "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no campaign started:\n{text}"))
        .to_owned();
    assert!(
        text.contains(&format!(
            "campaign {campaign} started: demo-meter-firmware 1.1.0 to 5 devices"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("campaign {campaign} completed in")),
        "{text}"
    );
    assert!(
        text.contains("5 updated, 0 failed, 0 unreachable of 5"),
        "{text}"
    );
    assert!(
        text.contains("5 of 5 devices report firmware version 1.1.0 (/3/0/3)"),
        "{text}"
    );
    // The running server's own report of the campaign.
    let status = run_with_timeout(
        cairn()
            .arg("campaign")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["status", &campaign]),
        Duration::from_secs(60),
    );
    assert!(status.status.success(), "{status:?}");
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(
        report.contains("state=completed wave=2 updated=5 failed=0 unreachable=0"),
        "{report}"
    );

    // The package left for the console is signed for the devices: uploaded and rolled out,
    // it updates them all again.
    let package = data_dir.join("firmware/demo-meter-firmware-1.2.0.cfw");
    assert!(
        text.contains(&format!("firmware: {} holds", package.display())),
        "{text}"
    );
    let uploaded = run_with_timeout(
        cairn()
            .args(["firmware", "upload"])
            .arg(&package)
            .args(["--name", "demo-meter-firmware", "--version", "1.2.0"])
            .arg("--data-dir")
            .arg(&data_dir),
        Duration::from_secs(60),
    );
    assert!(uploaded.status.success(), "{uploaded:?}");
    let uploaded = String::from_utf8_lossy(&uploaded.stdout);
    let image = uploaded
        .lines()
        .find_map(|l| l.strip_prefix("image:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no image id: {uploaded}"))
        .to_owned();
    let started = run_with_timeout(
        cairn()
            .arg("campaign")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["start", "--image", &image, "--group", "demo-meter-"])
            .args(["--waves", "50,100", "--name", "to 1.2.0"]),
        Duration::from_secs(60),
    );
    assert!(started.status.success(), "{started:?}");
    let started = String::from_utf8_lossy(&started.stdout);
    let second = started
        .lines()
        .find_map(|l| l.strip_prefix("campaign:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no campaign id: {started}"))
        .to_owned();
    let followed = run_with_timeout(
        cairn()
            .arg("campaign")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["status", &second, "--follow"]),
        Duration::from_secs(120),
    );
    assert!(followed.status.success(), "{followed:?}");
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.contains("state=completed wave=2 updated=5 failed=0 unreachable=0"),
        "{followed}"
    );
    drop(demo);

    // The store agrees: every device bootstrapped and holds a device-management credential
    // it registered with.
    let status = run_with_timeout(
        cairn()
            .args(["bootstrap", "--data-dir"])
            .arg(&data_dir)
            .arg("status"),
        Duration::from_secs(30),
    );
    assert!(status.status.success(), "{status:?}");
    let status = String::from_utf8_lossy(&status.stdout);
    let rows: Vec<&str> = status.lines().collect();
    assert_eq!(rows.len(), 5, "{status}");
    for row in rows {
        assert!(row.starts_with("demo-meter-"), "{row}");
        assert!(row.contains("dm_credential=in use"), "{row}");
        assert!(row.contains("finished=1"), "{row}");
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
