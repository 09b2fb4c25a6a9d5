//! A DTLS session replaced by a new handshake from the same address, over loopback.
//!
//! CoAP exchanges belong to the security context they ran in (RFC 7252 §9.1): when another
//! identity takes over an address (a freed NAT port given to another device), a request meant
//! for the old device fails at once and never reaches the new one; when the same identity
//! comes back (a device re-handshaking), its observations keep working.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_coap::{Code, Config, Endpoint, Event, Message, ObservationId, RequestError};
use cairn_dtls::{
    ClientConfig, ClientEndpoint, Event as DtlsEvent, Psk, PskResolver, ServerConfig,
};
use cairn_transport::{CoapEndpoint, Security, TransportError};
use rand::SeedableRng;

const DEVICE_A: &[u8] = b"device-a";
const DEVICE_B: &[u8] = b"device-b";

fn key_of(identity: &[u8]) -> Vec<u8> {
    let mut key = b"key of ".to_vec();
    key.extend_from_slice(identity);
    key.resize(16, b'.');
    key
}

struct Keys;

impl PskResolver for Keys {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        [DEVICE_A, DEVICE_B]
            .contains(&identity)
            .then(|| Psk::new(key_of(identity)))
    }
}

async fn server() -> CoapEndpoint {
    CoapEndpoint::bind_secured(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        Security::DtlsServer(ServerConfig::new(Arc::new(Keys))),
        None,
    )
    .await
    .unwrap()
}

enum Command {
    Notify(Vec<u8>),
    Stop,
}

#[derive(Debug)]
enum Report {
    Connected,
    /// A decrypted datagram from the server.
    Data(Vec<u8>),
}

/// A device on its own thread: a DTLS client of the server over a blocking socket, with a
/// CoAP endpoint that answers GETs (and accepts observations) when `serve` is set, and
/// otherwise never answers anything.
struct Device {
    commands: mpsc::Sender<Command>,
    reports: mpsc::Receiver<Report>,
    thread: JoinHandle<State>,
}

/// What a device keeps across DTLS sessions.
struct State {
    socket: UdpSocket,
    coap: Endpoint,
    /// The observation the server registered on the device.
    observation: Option<ObservationId>,
}

impl State {
    fn new(socket: UdpSocket) -> State {
        State {
            socket,
            coap: Endpoint::new(Config::default(), getrandom::u64().unwrap()),
            observation: None,
        }
    }
}

impl Device {
    fn start(
        state: State,
        origin: Instant,
        identity: &[u8],
        server: SocketAddr,
        serve: bool,
    ) -> Device {
        let (commands, command_rx) = mpsc::channel();
        let (report_tx, reports) = mpsc::channel();
        let config = ClientConfig::new(identity.to_vec(), Psk::new(key_of(identity)));
        let thread = std::thread::spawn(move || {
            let State {
                socket,
                mut coap,
                mut observation,
            } = state;
            socket
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            let rng = Box::new(rand::rngs::StdRng::from_os_rng());
            let mut dtls = ClientEndpoint::new(config, rng, server).unwrap();
            dtls.connect(origin.elapsed()).unwrap();
            let mut buffer = vec![0u8; 2048];
            loop {
                let now = origin.elapsed();
                match command_rx.try_recv() {
                    Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => break,
                    Ok(Command::Notify(payload)) => {
                        let mut notification = Message::response(Code::CONTENT);
                        notification.payload = payload;
                        if let Some(id) = observation {
                            coap.notify(now, id, notification).unwrap();
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                if let Ok((len, from)) = socket.recv_from(&mut buffer) {
                    dtls.handle(now, from, &buffer[..len]);
                }
                if dtls.poll_timeout().is_some_and(|at| at <= now) {
                    dtls.handle_timeout(now);
                }
                if coap.poll_timeout().is_some_and(|at| at <= now) {
                    coap.handle_timeout(now);
                }
                while let Some(event) = dtls.poll_event() {
                    match event {
                        DtlsEvent::Connected { .. } => {
                            let _ = report_tx.send(Report::Connected);
                        }
                        DtlsEvent::ApplicationData { data, .. } => {
                            if serve {
                                coap.handle(now, server, &data);
                            }
                            let _ = report_tx.send(Report::Data(data));
                        }
                        _ => {}
                    }
                }
                while let Some(event) = coap.poll_event() {
                    if let Event::Request { id, .. } = event {
                        let mut response = Message::response(Code::CONTENT);
                        response.payload = b"v0".to_vec();
                        if let Ok(Some(registered)) = coap.respond(now, id, response) {
                            observation = Some(registered);
                        }
                    }
                }
                while let Some(transmit) = coap.poll_transmit() {
                    if dtls.is_connected() {
                        dtls.send(now, server, &transmit.payload).unwrap();
                    }
                }
                while let Some(transmit) = dtls.poll_transmit() {
                    let _ = socket.send_to(&transmit.payload, transmit.destination);
                }
            }
            State {
                socket,
                coap,
                observation,
            }
        });
        Device {
            commands,
            reports,
            thread,
        }
    }

    fn wait_connected(&self) {
        loop {
            match self.reports.recv_timeout(Duration::from_secs(10)) {
                Ok(Report::Connected) => return,
                Ok(Report::Data(_)) => {}
                Err(error) => panic!("no DTLS session: {error}"),
            }
        }
    }

    fn stop(self) -> (State, Vec<Report>) {
        self.commands.send(Command::Stop).unwrap();
        let state = self.thread.join().unwrap();
        (state, self.reports.try_iter().collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_device_never_reaches_another_identity_at_its_address() {
    let server = Arc::new(server().await);
    let origin = Instant::now();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let a = Device::start(
        State::new(socket),
        origin,
        DEVICE_A,
        server.local_addr(),
        false,
    );
    tokio::task::block_in_place(|| a.wait_connected());

    // A request of the server that device A receives and never answers.
    let mut write = Message::request(Code::PUT);
    write.set_uri_path("/0/1/5");
    write.payload = b"credentials of A".to_vec();
    let request = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.request(address, write).await })
    };
    let received = tokio::task::block_in_place(|| a.reports.recv_timeout(Duration::from_secs(5)));
    assert!(
        matches!(received, Ok(Report::Data(_))),
        "A never got the request: {received:?}"
    );

    // A goes away; B, another identity, gets A's port and connects.
    let (state, _) = tokio::task::block_in_place(|| a.stop());
    drop(state);
    let socket = UdpSocket::bind(address).unwrap();
    let b = Device::start(
        State::new(socket),
        origin,
        DEVICE_B,
        server.local_addr(),
        true,
    );
    tokio::task::block_in_place(|| b.wait_connected());
    let connected = Instant::now();

    // The request fails at once with the session error (a retransmission would come after
    // 2 to 3 s, the timeout after 93 s).
    let outcome = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("the request did not fail when another identity took the address")
        .unwrap();
    assert!(
        matches!(
            outcome,
            Err(TransportError::Request(RequestError::SessionFailed))
        ),
        "{outcome:?}"
    );
    assert!(connected.elapsed() < Duration::from_secs(2));

    // Past the retransmission times: B received nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, reports) = tokio::task::block_in_place(|| b.stop());
    let data: Vec<&Vec<u8>> = reports
        .iter()
        .filter_map(|report| match report {
            Report::Data(data) => Some(data),
            Report::Connected => None,
        })
        .collect();
    assert!(data.is_empty(), "B received {data:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_identity_re_handshaking_keeps_its_observation() {
    let server = server().await;
    let origin = Instant::now();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let device = Device::start(
        State::new(socket),
        origin,
        DEVICE_A,
        server.local_addr(),
        true,
    );
    tokio::task::block_in_place(|| device.wait_connected());
    let mut request = Message::request(Code::GET);
    request.set_uri_path("/3/0/9");
    let (first, mut observation) =
        tokio::time::timeout(Duration::from_secs(10), server.observe(address, request))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(first.payload, b"v0");

    // The device makes a new full handshake from the same address, CoAP state kept.
    let (state, _) = tokio::task::block_in_place(|| device.stop());
    assert!(state.observation.is_some());
    let device = Device::start(state, origin, DEVICE_A, server.local_addr(), true);
    tokio::task::block_in_place(|| device.wait_connected());

    device
        .commands
        .send(Command::Notify(b"v1".to_vec()))
        .unwrap();
    let notification = tokio::time::timeout(Duration::from_secs(5), observation.next())
        .await
        .expect("no notification after the re-handshake")
        .expect("the observation ended");
    assert_eq!(notification.payload, b"v1");
    tokio::task::block_in_place(|| device.stop());
    server.shutdown().await;
}
