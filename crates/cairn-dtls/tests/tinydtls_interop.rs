//! Interoperability with tinydtls (through aiocoap's DTLSSocket client): a CoAP GET over
//! DTLS 1.2 PSK (tinydtls offers PSK-AES128-CCM8 and PSK-AES128-CCM) against our server,
//! answered with a hand-built CoAP 2.05 response (RFC 7252 §3).
//!
//! Needs a Python venv with `aiocoap` and `DTLSSocket` (see /work/shared/INTEROP.md); its path
//! comes from `CAIRN_TINYDTLS_VENV` (default `/opt/tinydtls-venv`). The test is ignored by
//! default because CI does not install that venv yet; run it with `--ignored`. When the venv is
//! missing it fails and says so.

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_dtls::{Event, ServerEndpoint};
use common::*;

fn aiocoap_client() -> PathBuf {
    let venv = std::env::var("CAIRN_TINYDTLS_VENV").unwrap_or_else(|_| "/opt/tinydtls-venv".into());
    let client = PathBuf::from(venv).join("bin/aiocoap-client");
    assert!(
        client.exists(),
        "{} is missing: create the venv with `python3 -m venv V && V/bin/pip install aiocoap DTLSSocket` \
         and point CAIRN_TINYDTLS_VENV at it",
        client.display()
    );
    client
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

#[test]
#[ignore = "needs the aiocoap + DTLSSocket (tinydtls) venv; run with --ignored"]
fn tinydtls_client_against_our_server() {
    let client = aiocoap_client();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("cairn-tinydtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let credentials = dir.join("credentials.json");
    let key_hex: String = KEY.iter().map(|byte| format!("{byte:02x}")).collect();
    std::fs::write(
        &credentials,
        format!(
            r#"{{"coaps://127.0.0.1:{port}/*": {{"dtls": {{"psk": {{"hex": "{key_hex}"}}, "client-identity": {{"ascii": "device-1"}}}}}}}}"#
        ),
    )
    .unwrap();
    let mut child = Command::new(client)
        .arg("--credentials")
        .arg(&credentials)
        .arg(format!("coaps://127.0.0.1:{port}/hello"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start aiocoap-client");
    let mut server = ServerEndpoint::new(server_config(), rng(50), Duration::ZERO).unwrap();
    let start = Instant::now();
    let mut connected = false;
    let mut answered = false;
    let mut buffer = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(20) && !answered {
        if let Ok((len, from)) = socket.recv_from(&mut buffer) {
            server.handle(start.elapsed(), from, &buffer[..len]);
        }
        server.handle_timeout(start.elapsed());
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected { identity, .. } => {
                    assert_eq!(identity, IDENTITY);
                    connected = true;
                }
                Event::ApplicationData { peer, data } => {
                    let response = coap_response(&data, b"hello from cairn").expect("CoAP request");
                    server.send(start.elapsed(), peer, &response).unwrap();
                    answered = true;
                }
                Event::Closed { reason, .. } => panic!("closed: {reason:?}"),
                Event::PeerMoved { .. } => {}
            }
        }
        while let Some(transmit) = server.poll_transmit() {
            socket
                .send_to(&transmit.payload, transmit.destination)
                .unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        connected,
        "no handshake; aiocoap-client said:\n{stdout}\n{stderr}"
    );
    assert!(answered, "no CoAP request arrived:\n{stdout}\n{stderr}");
    assert!(stdout.contains("hello from cairn"), "{stdout}\n{stderr}");
}
