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

/// What one `openssl s_client` run against our server showed.
struct ClientRun {
    text: String,
    resumed: Option<bool>,
    /// Datagrams s_client sent.
    inbound: Vec<Vec<u8>>,
    /// Datagrams our server sent.
    outbound: Vec<Vec<u8>>,
}

fn s_client_against_our_server(
    cipher: &str,
    config: cairn_dtls::ServerConfig,
    server: Option<ServerEndpoint>,
    identity: &[u8],
    extra: &[&str],
) -> (ClientRun, ServerEndpoint) {
    require_openssl();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let start = Instant::now();
    let mut server =
        server.unwrap_or_else(|| ServerEndpoint::new(config, rng(11), Duration::ZERO).unwrap());
    let mut child = Command::new("openssl")
        .args(["s_client", "-dtls1_2", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-psk_identity", std::str::from_utf8(identity).unwrap()])
        .args(["-psk", &hex(KEY), "-cipher", cipher])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_client");
    let output = capture(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let mut peer = None;
    let mut resumed = None;
    let mut received = Vec::new();
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !received.ends_with(b"\n") {
        pump(&socket, |from, datagram| {
            inbound.push(datagram.to_vec());
            server.handle(start.elapsed(), from, datagram)
        });
        server.handle_timeout(start.elapsed());
        while let Some(transmit) = server.poll_transmit() {
            outbound.push(transmit.payload.clone());
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected {
                    peer: from,
                    identity: got,
                    resumed: was_resumed,
                } => {
                    assert_eq!(got, identity);
                    peer = Some(from);
                    resumed = Some(was_resumed);
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
    while server.poll_event().is_some() {}
    let text = output.lock().unwrap().clone();
    assert!(peer.is_some(), "no handshake; s_client said:\n{text}");
    assert_eq!(received, b"hello from openssl\n", "s_client said:\n{text}");
    assert!(got_reply, "s_client did not print our data:\n{text}");
    assert!(text.contains(&format!("Cipher is {cipher}")), "{text}");
    assert!(text.contains("Extended master secret: yes"), "{text}");
    (
        ClientRun {
            text,
            resumed,
            inbound,
            outbound,
        },
        server,
    )
}

fn run_s_client_against_our_server(cipher: &str) {
    let mut config = server_config();
    config.identity_hint = Some(b"cairn".to_vec());
    s_client_against_our_server(cipher, config, None, IDENTITY, &[]);
}

#[test]
fn openssl_s_client_resumes_a_session_with_our_server() {
    let dir = std::env::temp_dir().join(format!("cairn-dtls-sess-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let session_file = dir.join("session.pem");
    let session_path = session_file.to_str().unwrap();
    let (first, server) = s_client_against_our_server(
        "PSK-AES128-CCM8",
        server_config(),
        None,
        IDENTITY,
        &["-sess_out", session_path],
    );
    assert_eq!(first.resumed, Some(false));
    let (second, _) = s_client_against_our_server(
        "PSK-AES128-CCM8",
        server_config(),
        Some(server),
        IDENTITY,
        &["-sess_in", session_path],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(second.resumed, Some(true), "{}", second.text);
    assert!(second.text.contains("Reused"), "{}", second.text);
}

/// Whether any epoch 0 handshake record in `datagrams` carries only part of its message.
fn has_partial_fragment(datagrams: &[Vec<u8>]) -> bool {
    datagrams.iter().any(|datagram| {
        cairn_dtls::record::Records::new(datagram, 0).any(|record| {
            record.epoch == 0
                && record.content_type == cairn_dtls::record::ContentType::Handshake
                && cairn_dtls::message::Fragment::parse(&mut cairn_dtls::codec::Reader::new(
                    record.fragment,
                ))
                .is_ok_and(|fragment| !fragment.is_complete())
        })
    })
}

#[test]
fn openssl_reassembles_our_fragments_and_we_reassemble_its() {
    let identity = vec![b'd'; 250];
    let mut table = PskTable::default();
    table.0.insert(identity.clone(), KEY.to_vec());
    let mut config = cairn_dtls::ServerConfig::new(Arc::new(table));
    config.identity_hint = Some(vec![b'h'; 250]);
    config.mtu = 256;
    let (run, _) =
        s_client_against_our_server("PSK-AES128-CCM8", config, None, &identity, &["-mtu", "256"]);
    assert!(run.text.contains("Cipher is PSK-AES128-CCM8"));
    assert!(
        has_partial_fragment(&run.outbound),
        "we fragmented flight 4"
    );
    assert!(
        has_partial_fragment(&run.inbound),
        "s_client fragmented flight 5"
    );
}

#[test]
fn openssl_s_client_against_our_server_ccm8() {
    run_s_client_against_our_server("PSK-AES128-CCM8");
}

#[test]
fn openssl_s_client_against_our_server_ccm() {
    run_s_client_against_our_server("PSK-AES128-CCM");
}

/// Connects our client to one `openssl s_server` `rounds` times (closing in between) and
/// returns, per round, whether the session was resumed.
fn our_client_against_s_server(
    cipher: &str,
    suite: cairn_dtls::CipherSuite,
    rounds: usize,
) -> Vec<bool> {
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
    let mut resumed_per_round = Vec::new();
    for round in 0..rounds {
        client.connect(start.elapsed()).unwrap();
        let mut resumed = None;
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
                    Event::Connected { resumed: was, .. } => {
                        resumed = Some(was);
                        let line = format!("hello from cairn {round}\n");
                        client
                            .send(start.elapsed(), server, line.as_bytes())
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
        let line = format!("hello from cairn {round}");
        let got_ours = wait_for(&output, &line, Duration::from_secs(5));
        client.close(server);
        while let Some(transmit) = client.poll_transmit() {
            let _ = socket.send_to(&transmit.payload, transmit.destination);
        }
        while client.poll_event().is_some() {}
        let text = output.lock().unwrap().clone();
        assert!(
            resumed.is_some(),
            "round {round}: no handshake; s_server said:\n{text}"
        );
        assert_eq!(received, b"hello from openssl\n", "s_server said:\n{text}");
        assert!(got_ours, "s_server did not print our data:\n{text}");
        assert!(text.contains(cipher), "{text}");
        resumed_per_round.push(resumed.unwrap_or(false));
        // s_server goes back to accepting after close_notify.
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    resumed_per_round
}

fn run_our_client_against_s_server(cipher: &str, suite: cairn_dtls::CipherSuite) {
    assert_eq!(our_client_against_s_server(cipher, suite, 1), [false]);
}

#[test]
fn our_client_resumes_a_session_with_openssl_s_server() {
    let rounds = our_client_against_s_server(
        "PSK-AES128-CCM8",
        cairn_dtls::CipherSuite::PskWithAes128Ccm8,
        2,
    );
    assert_eq!(rounds, [false, true]);
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
