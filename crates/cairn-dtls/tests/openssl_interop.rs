//! Interoperability with OpenSSL 3 over loopback UDP (RFC 6347, PSK-AES128-CCM8 and
//! PSK-AES128-CCM). The engine is driven by a small blocking `UdpSocket` loop; `openssl`
//! must be installed (the test fails, naming the missing binary, when it is not).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_dtls::{ClientConfig, ClientEndpoint, Event, Psk, ServerEndpoint};
use common::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn require_openssl() {
    let output = Command::new("openssl").arg("version").output();
    assert!(
        output.is_ok_and(|output| output.status.success()),
        "the `openssl` binary is required for this interop test (apt-get install openssl)"
    );
}

/// Collects a child's stdout and stderr in the background.
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

/// Receives with a short timeout and feeds `handle`; returns whether a datagram came.
fn pump(socket: &UdpSocket, mut handle: impl FnMut(SocketAddr, &[u8])) -> bool {
    let mut buffer = [0u8; 2048];
    match socket.recv_from(&mut buffer) {
        Ok((len, from)) => {
            handle(from, &buffer[..len]);
            true
        }
        Err(_) => false,
    }
}

fn run_s_client_against_our_server(cipher: &str) {
    require_openssl();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let start = Instant::now();
    let mut config = server_config();
    config.identity_hint = Some(b"cairn".to_vec());
    let mut server = ServerEndpoint::new(config, rng(11), Duration::ZERO).unwrap();
    let mut child = Command::new("openssl")
        .args(["s_client", "-dtls1_2", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-psk_identity",
            "device-1",
            "-psk",
            &hex(KEY),
            "-cipher",
            cipher,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_client");
    let output = capture(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let mut peer = None;
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !received.ends_with(b"\n") {
        pump(&socket, |from, datagram| {
            server.handle(start.elapsed(), from, datagram)
        });
        server.handle_timeout(start.elapsed());
        while let Some(transmit) = server.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected {
                    peer: from,
                    identity,
                    ..
                } => {
                    assert_eq!(identity, IDENTITY);
                    peer = Some(from);
                    server
                        .send(start.elapsed(), from, b"hello from cairn\n")
                        .unwrap();
                    stdin.write_all(b"hello from openssl\n").unwrap();
                    stdin.flush().unwrap();
                }
                Event::ApplicationData { data, .. } => received.extend_from_slice(&data),
                Event::Closed { reason, .. } => panic!("closed: {reason:?}"),
                Event::PeerMoved { .. } => {}
            }
        }
    }
    let got_reply = wait_for(&output, "hello from cairn", Duration::from_secs(5));
    if let Some(peer) = peer {
        server.close(peer);
        while let Some(transmit) = server.poll_transmit() {
            let _ = socket.send_to(&transmit.payload, transmit.destination);
        }
    }
    drop(stdin);
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let _ = child.wait();
    let text = output.lock().unwrap().clone();
    assert!(peer.is_some(), "no handshake; s_client said:\n{text}");
    assert_eq!(received, b"hello from openssl\n", "s_client said:\n{text}");
    assert!(got_reply, "s_client did not print our data:\n{text}");
    assert!(text.contains(&format!("Cipher is {cipher}")), "{text}");
    assert!(text.contains("Extended master secret: yes"), "{text}");
}

#[test]
fn openssl_s_client_against_our_server_ccm8() {
    run_s_client_against_our_server("PSK-AES128-CCM8");
}

#[test]
fn openssl_s_client_against_our_server_ccm() {
    run_s_client_against_our_server("PSK-AES128-CCM");
}

fn run_our_client_against_s_server(cipher: &str, suite: cairn_dtls::CipherSuite) {
    require_openssl();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("openssl")
        .args(["s_server", "-dtls1_2", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-nocert", "-psk", &hex(KEY), "-psk_identity", "device-1"])
        .args(["-psk_hint", "device-1", "-cipher", cipher])
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
    let mut config = ClientConfig::new(IDENTITY, Psk::new(KEY.to_vec()));
    config.cipher_suites = vec![suite];
    let mut client = ClientEndpoint::new(config, rng(12), server).unwrap();
    let start = Instant::now();
    client.connect(start.elapsed()).unwrap();
    let mut connected = false;
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !received.ends_with(b"\n") {
        while let Some(transmit) = client.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
        pump(&socket, |from, datagram| {
            client.handle(start.elapsed(), from, datagram)
        });
        client.handle_timeout(start.elapsed());
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connected { .. } => {
                    connected = true;
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
        socket
            .send_to(&transmit.payload, transmit.destination)
            .unwrap();
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
    assert!(connected, "no handshake; s_server said:\n{text}");
    assert_eq!(received, b"hello from openssl\n", "s_server said:\n{text}");
    assert!(got_ours, "s_server did not print our data:\n{text}");
    assert!(text.contains(cipher), "{text}");
}

#[test]
fn our_client_against_openssl_s_server_ccm8() {
    run_our_client_against_s_server(
        "PSK-AES128-CCM8",
        cairn_dtls::CipherSuite::PskWithAes128Ccm8,
    );
}

#[test]
fn our_client_against_openssl_s_server_ccm() {
    run_our_client_against_s_server("PSK-AES128-CCM", cairn_dtls::CipherSuite::PskWithAes128Ccm);
}
