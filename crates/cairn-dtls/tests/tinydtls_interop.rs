//! Interoperability with tinydtls (through aiocoap's DTLSSocket): a CoAP GET over DTLS 1.2
//! PSK (tinydtls offers PSK-AES128-CCM8 and PSK-AES128-CCM) from its client to our server,
//! answered with a hand-built CoAP 2.05 response (RFC 7252 §3), and from our client to an
//! aiocoap server on tinydtls.
//!
//! Needs the Python venv with `aiocoap` and `DTLSSocket` that scripts/setup.sh makes in `.venv`
//! (or the one `CAIRN_PYTHON_VENV` names). When the venv is missing the test fails and says so.

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_dtls::{Event, ServerEndpoint};
use common::*;

fn venv_binary(name: &str) -> PathBuf {
    let venv = std::env::var("CAIRN_PYTHON_VENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv").to_owned());
    let client = PathBuf::from(venv).join("bin").join(name);
    assert!(
        client.exists(),
        "{} is missing: create the venv with `python3 -m venv V && V/bin/pip install aiocoap DTLSSocket` \
         or run scripts/setup.sh, which makes .venv; CAIRN_PYTHON_VENV points elsewhere",
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
fn tinydtls_client_against_our_server() {
    let client = venv_binary("aiocoap-client");
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

/// An aiocoap server on tinydtls with one resource, `/hello`; DTLS listens on `port + 1`.
const SERVER_SCRIPT: &str = r#"
import asyncio, sys
import aiocoap, aiocoap.resource as resource

class Hello(resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(payload=b"hello from tinydtls")

async def main():
    root = resource.Site()
    root.add_resource(["hello"], Hello())
    ctx = await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", int(sys.argv[1])))
    ctx.server_credentials.load_from_dict({":device-1": {"dtls": {
        "psk": {"hex": sys.argv[2]}, "client-identity": {"ascii": "device-1"}}}})
    print("READY", flush=True)
    await asyncio.sleep(30)

asyncio.run(main())
"#;

/// A confirmable GET for `/hello` (RFC 7252 §3, option Uri-Path 11).
fn coap_get_hello() -> Vec<u8> {
    let mut request = vec![0x42, 0x01, 0x12, 0x34, 0xCA, 0xFE, 0xB5];
    request.extend_from_slice(b"hello");
    request
}

#[test]
fn our_client_against_tinydtls_server() {
    let python = venv_binary("python3");
    let port = loop {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if port < 60000 && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            break port;
        }
    };
    let dir = std::env::temp_dir().join(format!("cairn-tinydtls-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("server.py");
    std::fs::write(&script, SERVER_SCRIPT).unwrap();
    let key_hex: String = KEY.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut child = Command::new(python)
        .arg(&script)
        .arg(port.to_string())
        .arg(key_hex)
        .env("AIOCOAP_SERVER_TRANSPORT", "tinydtls_server:udp6")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the aiocoap server");
    let mut ready = String::new();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    if let Some(Ok(line)) = lines.next() {
        ready = line;
    }
    assert_eq!(ready, "READY", "the aiocoap server did not start");
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut client = cairn_dtls::ClientEndpoint::new(client_config(), rng(51), server).unwrap();
    let start = Instant::now();
    client.connect(start.elapsed()).unwrap();
    let mut response = None;
    let mut buffer = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(20) && response.is_none() {
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
                Event::Connected { .. } => {
                    client
                        .send(start.elapsed(), server, &coap_get_hello())
                        .unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
    let response = response.unwrap_or_else(|| {
        panic!(
            "no CoAP response; the server said:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(response[1], 0x45, "2.05 Content");
    assert_eq!(&response[2..4], &[0x12, 0x34], "message ID echoed");
    assert!(
        response.ends_with(b"\xFFhello from tinydtls"),
        "{response:?}"
    );
}
