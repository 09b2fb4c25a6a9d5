//! Certificate-mode interoperability with libcoap 4.3 on OpenSSL (`coap-client-openssl`,
//! `coap-server-openssl`, Debian package `libcoap3-bin`): a CoAP GET over ECDHE-ECDSA with X.509
//! certificates, from libcoap's client (with its device certificate) to our server, answered
//! with a hand-built 2.05 (RFC 7252 §5.2.1), and from our client (with its certificate) to
//! libcoap's server. libcoap picks the suite from OpenSSL's default list, so these runs use the
//! CCM or GCM suite rather than CCM-8.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_dtls::{
    ClientCertificateConfig, ClientConfig, ClientEndpoint, Credentials, Event, PeerVerifier,
    ServerCertificateConfig, ServerConfig, ServerEndpoint, X509Verifier,
};
use common::certs::{Leaf, TestCa};
use common::rng;

const DEVICE: &str = "urn:imei:350000000000077";

fn require(binary: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "`{binary}` is required for this interop test (apt-get install libcoap3-bin)"
    );
}

struct Files {
    dir: PathBuf,
    ca: TestCa,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cairn-libcoap-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("Cairn libcoap CA");
        let mut server_leaf = Leaf::new("127.0.0.1", 2);
        server_leaf.dns_names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
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

/// A piggybacked 2.05 Content answer to a confirmable request (RFC 7252 §5.2.1).
fn coap_response(request: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    let token_len = usize::from(*request.first()? & 0x0F);
    let message_id = request.get(2..4)?;
    let token = request.get(4..4 + token_len)?;
    let mut response = vec![0x60 | token_len as u8, 0x45];
    response.extend_from_slice(message_id);
    response.extend_from_slice(token);
    response.push(0xFF);
    response.extend_from_slice(payload);
    Some(response)
}

/// A port P such that P (CoAP) and P + 1 (DTLS) are both free on loopback now.
fn free_port_pair() -> u16 {
    loop {
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

#[test]
fn libcoap_client_with_certificate_against_our_server() {
    require("coap-client-openssl");
    let files = Files::new("client");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let config = ServerConfig::with_certificate(ServerCertificateConfig {
        credentials: files.credentials("server"),
        client_auth: Some(files.verifier()),
    });
    let mut server = ServerEndpoint::new(config, rng(31), Duration::ZERO).unwrap();
    let mut child = Command::new("coap-client-openssl")
        .args(["-m", "get", "-B", "10"])
        .args([
            "-c",
            &files.path("device.pem"),
            "-j",
            &files.path("device.key"),
        ])
        .args(["-C", &files.path("ca.pem")])
        .arg(format!("coaps://127.0.0.1:{port}/hello"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coap-client-openssl");
    let start = Instant::now();
    let mut identity = None;
    let mut answered = false;
    let mut buffer = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(15) && !answered {
        if let Ok((len, from)) = socket.recv_from(&mut buffer) {
            server.handle(start.elapsed(), from, &buffer[..len]);
        }
        server.handle_timeout(start.elapsed());
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected { identity: id, .. } => identity = Some(id),
                Event::ApplicationData { peer, data } => {
                    let response = coap_response(&data, b"hello from cairn").expect("CoAP request");
                    server.send(start.elapsed(), peer, &response).unwrap();
                    answered = true;
                }
                Event::Closed { .. } | Event::PeerMoved { .. } => {}
            }
        }
        while let Some(transmit) = server.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        if let Ok((len, from)) = socket.recv_from(&mut buffer) {
            server.handle(start.elapsed(), from, &buffer[..len]);
        }
        while let Some(transmit) = server.poll_transmit() {
            let _ = socket.send_to(&transmit.payload, transmit.destination);
        }
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        identity.as_deref(),
        Some(DEVICE.as_bytes()),
        "no handshake; coap-client said:\n{stdout}\n{stderr}"
    );
    assert!(answered, "no CoAP request arrived:\n{stdout}\n{stderr}");
    assert!(stdout.contains("hello from cairn"), "{stdout}\n{stderr}");
}

#[test]
fn our_client_with_certificate_against_libcoap_server() {
    require("coap-server-openssl");
    let files = Files::new("server");
    let port = free_port_pair();
    let mut child = Command::new("coap-server-openssl")
        .args(["-A", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-c",
            &files.path("server.pem"),
            "-j",
            &files.path("server.key"),
        ])
        .args(["-C", &files.path("ca.pem")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coap-server-openssl");
    std::thread::sleep(Duration::from_millis(500));
    let server: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let config = ClientConfig::with_certificate(ClientCertificateConfig {
        credentials: Some(files.credentials("device")),
        server_auth: files.verifier(),
        server_name: Some("127.0.0.1".to_string()),
    });
    let mut client = ClientEndpoint::new(config, rng(32), server).unwrap();
    let start = Instant::now();
    client.connect(start.elapsed()).unwrap();
    let mut identity = None;
    let mut response = None;
    let mut buffer = [0u8; 4096];
    // CON GET /time, message ID 0x1234, token 0x77 (RFC 7252 §3).
    let request = [0x41, 0x01, 0x12, 0x34, 0x77, 0xB4, b't', b'i', b'm', b'e'];
    while start.elapsed() < Duration::from_secs(15) && response.is_none() {
        while let Some(transmit) = client.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
        if let Ok((len, from)) = socket.recv_from(&mut buffer) {
            client.handle(start.elapsed(), from, &buffer[..len]);
        }
        client.handle_timeout(start.elapsed());
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connected { identity: id, .. } => {
                    identity = Some(id);
                    client.send(start.elapsed(), server, &request).unwrap();
                }
                Event::ApplicationData { data, .. } => response = Some(data),
                Event::Closed { reason, .. } => panic!("closed: {reason:?}"),
                Event::PeerMoved { .. } => {}
            }
        }
    }
    client.close(server);
    while let Some(transmit) = client.poll_transmit() {
        let _ = socket.send_to(&transmit.payload, transmit.destination);
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(identity.as_deref(), Some(&b"127.0.0.1"[..]), "{stderr}");
    let response = response.unwrap_or_else(|| panic!("no CoAP response:\n{stderr}"));
    // ACK 2.05 with our message ID and token.
    assert_eq!(
        &response[..5],
        &[0x61, 0x45, 0x12, 0x34, 0x77],
        "{response:?}"
    );
}
