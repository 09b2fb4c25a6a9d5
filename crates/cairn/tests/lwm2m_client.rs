//! `cairn client` and `cairn fleet` against a registration endpoint run in the test on
//! `cairn-transport` (plain CoAP and DTLS-PSK): devices register, and de-register when
//! stopped.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_coap::Config;
use cairn_dtls::{Psk, PskResolver, ServerConfig};
use cairn_lwm2m::{ClientRequest, CoapRequest, CoapResponse, NoModels, ResponseCode};
use cairn_transport::{CoapEndpoint, Reply, Request, Security};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Keys by identity.
struct Keys(HashMap<Vec<u8>, Vec<u8>>);

impl PskResolver for Keys {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        self.0.get(identity).map(|k| Psk::new(k.clone()))
    }
}

/// Register → 2.01 `rd/<n>`, Update → 2.04, De-register → 2.02; keeps what it saw.
struct Registrar {
    runtime: tokio::runtime::Runtime,
    endpoint: CoapEndpoint,
    seen: Arc<Mutex<Vec<ClientRequest>>>,
}

impl Registrar {
    fn start(security: Security) -> Registrar {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let handler = move |request: &Request| -> Reply {
            let operation = CoapRequest::from_message(&request.message)
                .ok()
                .and_then(|coap| ClientRequest::from_coap(&coap, &NoModels).ok());
            let Some(operation) = operation else {
                return Reply::Ready(CoapResponse::new(ResponseCode::NOT_FOUND).to_message());
            };
            let mut response = CoapResponse::new(operation.success_code());
            let mut log = log.lock().unwrap();
            if let ClientRequest::Register { .. } = operation {
                response.location_path = vec!["rd".into(), log.len().to_string()];
            }
            log.push(operation);
            Reply::Ready(response.to_message())
        };
        let endpoint = runtime
            .block_on(CoapEndpoint::bind_secured(
                "127.0.0.1:0".parse().unwrap(),
                Config::default(),
                security,
                Some(Arc::new(handler)),
            ))
            .unwrap();
        Registrar {
            runtime,
            endpoint,
            seen,
        }
    }

    fn address(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    fn count(&self, wanted: fn(&ClientRequest) -> bool) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| wanted(r))
            .count()
    }

    fn registers(&self) -> usize {
        self.count(|r| matches!(r, ClientRequest::Register { .. }))
    }

    fn deregisters(&self) -> usize {
        self.count(|r| matches!(r, ClientRequest::Deregister { .. }))
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.runtime.block_on(self.endpoint.shutdown());
    }
}

#[test]
fn fleet_registers_and_deregisters_over_plain_coap() {
    let registrar = Registrar::start(Security::NoSec);
    let output = run_with_timeout(
        cairn().args([
            "fleet",
            "--devices",
            "20",
            "--server",
            &format!("coap://{}", registrar.address()),
            "--rate",
            "500",
            "--hold",
            "2",
            "--send-interval",
            "1",
        ]),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("registered: 20"), "{stdout}");
    let sends = registrar.count(|r| matches!(r, ClientRequest::Send { .. }));
    assert!(sends >= 20, "{sends} Send requests");
    assert!(stdout.contains("failed:     0"), "{stdout}");
    assert!(stdout.contains("p99"), "{stdout}");
    assert_eq!(registrar.registers(), 20);
    assert_eq!(registrar.deregisters(), 20);
}

#[test]
fn fleet_uses_the_keys_of_a_psk_file() {
    let keys: HashMap<Vec<u8>, Vec<u8>> = (0..5u8)
        .map(|i| (format!("id-{i}").into_bytes(), vec![i + 1; 16]))
        .collect();
    let registrar = Registrar::start(Security::DtlsServer(ServerConfig::new(Arc::new(Keys(
        keys,
    )))));
    let dir = scratch_dir("fleet-psk");
    let file = dir.join("keys.csv");
    let mut lines = String::from("# endpoint,identity,key\n");
    for i in 0..5u8 {
        let key: String = std::iter::repeat_n(format!("{:02x}", i + 1), 16).collect();
        lines.push_str(&format!("dev-{i},id-{i},{key}\n"));
    }
    // A sixth device whose key the server does not know fails.
    lines.push_str(&format!("dev-5,id-5,{}\n", "ff".repeat(16)));
    std::fs::write(&file, lines).unwrap();
    let output = run_with_timeout(
        cairn()
            .args([
                "fleet",
                "--server",
                &format!("coaps://{}", registrar.address()),
                "--max-attempts",
                "1",
                "--ack-timeout-ms",
                "100",
                "--hold",
                "0",
                "--psk-file",
            ])
            .arg(&file),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("devices:    6"), "{stdout}");
    assert!(stdout.contains("registered: 5"), "{stdout}");
    assert!(stdout.contains("failed:     1"), "{stdout}");
    assert_eq!(registrar.registers(), 5);
    assert_eq!(registrar.deregisters(), 5);
}

#[test]
fn client_registers_until_interrupted_then_deregisters() {
    let key = vec![0x42; 16];
    let keys = HashMap::from([(b"sensor-7".to_vec(), key)]);
    let registrar = Registrar::start(Security::DtlsServer(ServerConfig::new(Arc::new(Keys(
        keys,
    )))));
    let mut child = cairn()
        .args([
            "client",
            "--endpoint",
            "sensor-7",
            "--server",
            &format!("coaps://{}", registrar.address()),
            "--psk-identity",
            "sensor-7",
            "--psk-key",
            &"42".repeat(16),
            "--lifetime",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let registered = wait_until(Duration::from_secs(20), || registrar.registers() == 1);
    if !registered {
        let _ = child.kill();
    }
    assert!(registered, "no Register");
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let deregistered = wait_until(Duration::from_secs(20), || registrar.deregisters() == 1);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(deregistered, "{stderr}");
    assert!(output.status.success(), "{stderr}");
    for line in ["state: registering", "state: registered", "de-registered"] {
        assert!(stderr.contains(line), "{line:?} in {stderr}");
    }
    assert!(
        !stderr.contains(&"42".repeat(16)),
        "the key is never printed"
    );
}
