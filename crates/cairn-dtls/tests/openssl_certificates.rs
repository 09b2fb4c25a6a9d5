//! Certificate-mode interoperability with OpenSSL 3 over loopback UDP: ECDHE-ECDSA on P-256
//! (`-cipher ECDHE-ECDSA-AES128-CCM8 -groups P-256`, and the CCM and GCM suites) with X.509
//! certificates, server-only and mutual, our server against `s_client` and our client against
//! `s_server`. The engine is driven by a blocking `UdpSocket` loop; `openssl` must be
//! installed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_dtls::{
    CipherSuite, ClientCertificateConfig, ClientConfig, ClientEndpoint, Credentials, Event,
    PeerVerifier, ServerCertificateConfig, ServerConfig, ServerEndpoint, X509Verifier,
};
use common::certs::{Leaf, TestCa};
use common::rng;

const DEVICE: &str = "urn:imei:350000000000042";

struct Files {
    dir: PathBuf,
    ca: TestCa,
}

impl Files {
    /// A CA, a server certificate for `localhost` and a device certificate, as PEM files.
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cairn-dtls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("Cairn interop CA");
        let mut server_leaf = Leaf::new("localhost", 2);
        server_leaf.dns_names = vec!["localhost".to_string()];
        let server = ca.issue(server_leaf);
        let device = ca.issue(Leaf::new(DEVICE, 3));
        let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
        write("ca.pem", &ca.cert_pem);
        write("server.pem", &server.cert_pem);
        write("server.key", &server.key_pem);
        write("device.pem", &device.cert_pem);
        write("device.key", &device.key_pem);
        Self { dir, ca }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    fn credentials(&self, who: &str) -> Credentials {
        let read = |file: String| std::fs::read(self.dir.join(file)).unwrap();
        Credentials::from_pem(&read(format!("{who}.pem")), &read(format!("{who}.key"))).unwrap()
    }

    fn verifier(&self) -> PeerVerifier {
        PeerVerifier::x509(X509Verifier::new(std::slice::from_ref(&self.ca.cert_der)).unwrap())
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn require_openssl() {
    let output = Command::new("openssl").arg("version").output();
    assert!(
        output.is_ok_and(|output| output.status.success()),
        "the `openssl` binary is required for this interop test (apt-get install openssl)"
    );
}

fn capture(child: &mut Child) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    if let Some(stdout) = child.stdout.take() {
        let text = Arc::clone(&text);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
    }
    if let Some(mut stderr) = child.stderr.take() {
        let text = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buffer = String::new();
            let _ = stderr.read_to_string(&mut buffer);
            text.lock().unwrap().push_str(&buffer);
        });
    }
    text
}

fn wait_for(text: &Arc<Mutex<String>>, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if text.lock().unwrap().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn receive(socket: &UdpSocket) -> Option<(SocketAddr, Vec<u8>)> {
    let mut buffer = [0u8; 4096];
    socket
        .recv_from(&mut buffer)
        .ok()
        .map(|(len, from)| (from, buffer[..len].to_vec()))
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `openssl s_client` against our server; returns the identity our server saw.
fn s_client_against_our_server(cipher: &str, mutual: bool) -> Vec<u8> {
    require_openssl();
    let files = Files::new(&format!("s-client-{cipher}-{mutual}"));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let config = ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: files.credentials("server"),
        client_auth: mutual.then(|| files.verifier()),
    });
    let mut server = ServerEndpoint::new(config, rng(21), Duration::ZERO).unwrap();
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-dtls1_2", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-CAfile", &files.path("ca.pem"), "-verify_return_error"])
        .args(["-cipher", cipher, "-groups", "P-256"]);
    if mutual {
        command.args(["-cert", &files.path("device.pem")]);
        command.args(["-key", &files.path("device.key")]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_client");
    let output = capture(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let start = Instant::now();
    let mut identity = None;
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !received.ends_with(b"\n") {
        if let Some((from, datagram)) = receive(&socket) {
            server.handle(start.elapsed(), from, &datagram);
        }
        server.handle_timeout(start.elapsed());
        while let Some(transmit) = server.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected {
                    peer, identity: id, ..
                } => {
                    identity = Some(id);
                    server
                        .send(start.elapsed(), peer, b"hello from cairn\n")
                        .unwrap();
                    stdin.write_all(b"hello from openssl\n").unwrap();
                    stdin.flush().unwrap();
                }
                Event::ApplicationData { data, .. } => received.extend_from_slice(&data),
                Event::Closed { reason, .. } => {
                    panic!("closed: {reason:?}\n{}", output.lock().unwrap())
                }
                Event::PeerMoved { .. } => {}
            }
        }
        while let Some(transmit) = server.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
    }
    let got_reply = wait_for(&output, "hello from cairn", Duration::from_secs(5));
    drop(stdin);
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let _ = child.wait();
    let text = output.lock().unwrap().clone();
    assert!(identity.is_some(), "no handshake; s_client said:\n{text}");
    assert_eq!(received, b"hello from openssl\n", "s_client said:\n{text}");
    assert!(got_reply, "s_client did not print our data:\n{text}");
    assert!(text.contains(&format!("Cipher is {cipher}")), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    identity.unwrap_or_default()
}

/// Runs our client against `openssl s_server`; returns the identity our client saw.
fn our_client_against_s_server(cipher: &str, suite: CipherSuite, mutual: bool) -> Vec<u8> {
    require_openssl();
    let files = Files::new(&format!("s-server-{cipher}-{mutual}"));
    let port = free_port();
    let mut command = Command::new("openssl");
    command
        .args(["s_server", "-dtls1_2", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", &files.path("server.pem")])
        .args(["-key", &files.path("server.key")])
        .args(["-cipher", cipher, "-groups", "P-256"]);
    if mutual {
        command.args(["-Verify", "1", "-CAfile", &files.path("ca.pem")]);
        command.arg("-verify_return_error");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_server");
    let output = capture(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    assert!(
        wait_for(&output, "ACCEPT", Duration::from_secs(10)),
        "s_server did not start:\n{}",
        output.lock().unwrap()
    );
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut config = ClientConfig::with_certificate(ClientCertificateConfig {
        credentials: mutual.then(|| files.credentials("device")),
        server_auth: files.verifier(),
        server_name: Some("localhost".to_string()),
    });
    config.cipher_suites = vec![suite];
    let mut client = ClientEndpoint::new(config, rng(22), server).unwrap();
    let start = Instant::now();
    client.connect(start.elapsed()).unwrap();
    let mut identity = None;
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !received.ends_with(b"\n") {
        while let Some(transmit) = client.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
        if let Some((from, datagram)) = receive(&socket) {
            client.handle(start.elapsed(), from, &datagram);
        }
        client.handle_timeout(start.elapsed());
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connected { identity: id, .. } => {
                    identity = Some(id);
                    client
                        .send(start.elapsed(), server, b"hello from cairn\n")
                        .unwrap();
                    stdin.write_all(b"hello from openssl\n").unwrap();
                    stdin.flush().unwrap();
                }
                Event::ApplicationData { data, .. } => received.extend_from_slice(&data),
                Event::Closed { reason, .. } => {
                    panic!("closed: {reason:?}\n{}", output.lock().unwrap())
                }
                Event::PeerMoved { .. } => {}
            }
        }
    }
    while let Some(transmit) = client.poll_transmit() {
        let _ = socket.send_to(&transmit.payload, transmit.destination);
    }
    let got_ours = wait_for(&output, "hello from cairn", Duration::from_secs(5));
    client.close(server);
    while let Some(transmit) = client.poll_transmit() {
        let _ = socket.send_to(&transmit.payload, transmit.destination);
    }
    drop(stdin);
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let _ = child.wait();
    let text = output.lock().unwrap().clone();
    assert!(identity.is_some(), "no handshake; s_server said:\n{text}");
    assert_eq!(received, b"hello from openssl\n", "s_server said:\n{text}");
    assert!(got_ours, "s_server did not print our data:\n{text}");
    assert!(text.contains(cipher), "{text}");
    identity.unwrap_or_default()
}

#[test]
fn openssl_s_client_against_our_server_ccm8() {
    assert!(s_client_against_our_server("ECDHE-ECDSA-AES128-CCM8", false).is_empty());
}

#[test]
fn openssl_s_client_with_certificate_against_our_server_ccm8() {
    assert_eq!(
        s_client_against_our_server("ECDHE-ECDSA-AES128-CCM8", true),
        DEVICE.as_bytes()
    );
}

#[test]
fn openssl_s_client_against_our_server_ccm_and_gcm() {
    s_client_against_our_server("ECDHE-ECDSA-AES128-CCM", true);
    s_client_against_our_server("ECDHE-ECDSA-AES128-GCM-SHA256", true);
}

#[test]
fn our_client_against_openssl_s_server_ccm8() {
    assert_eq!(
        our_client_against_s_server(
            "ECDHE-ECDSA-AES128-CCM8",
            CipherSuite::EcdheEcdsaWithAes128Ccm8,
            false
        ),
        b"localhost"
    );
}

#[test]
fn our_client_with_certificate_against_openssl_s_server_ccm8() {
    our_client_against_s_server(
        "ECDHE-ECDSA-AES128-CCM8",
        CipherSuite::EcdheEcdsaWithAes128Ccm8,
        true,
    );
}

#[test]
fn our_client_against_openssl_s_server_ccm_and_gcm() {
    our_client_against_s_server(
        "ECDHE-ECDSA-AES128-CCM",
        CipherSuite::EcdheEcdsaWithAes128Ccm,
        true,
    );
    our_client_against_s_server(
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::EcdheEcdsaWithAes128GcmSha256,
        true,
    );
}
