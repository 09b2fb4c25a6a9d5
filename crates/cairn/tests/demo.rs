//! `cairn demo` as a person runs it, with five devices on free ports: the devices bootstrap
//! with their factory credentials, register over DTLS and report their clocks; the console's
//! setup link is printed; afterwards the store holds each device's bootstrap history and
//! device-management credential.

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
    let deadline = Instant::now() + Duration::from_secs(90);
    let has = |seen: &[String], needle: &str| seen.iter().any(|l| l.contains(needle));
    // Until the fleet is up and a clock notification arrived.
    while !(has(&seen, "fleet: bootstrapped and registered") && has(&seen, "notification ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the demo did not get going:\n{}", seen.join("\n")),
        }
    }
    drop(demo);
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
    }

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
