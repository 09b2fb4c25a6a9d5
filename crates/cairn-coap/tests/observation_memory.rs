//! What an established, idle observation of ours costs the endpoint (a server holds one per
//! device), and that the compact form it takes between notifications keeps RFC 7641's client
//! behaviour: reordering, notifications in Block2 blocks, deregistration.
//!
//! `cargo test -p cairn-coap --test observation_memory -- --nocapture` prints the figure.
//! Before the compact form, the same accounting gave 189 bytes: the boxed request (144),
//! its encoded template (19), its entry in the request map (17) and in the token index (9).

use std::net::SocketAddr;
use std::time::Duration;

use cairn_coap::{Code, Config, Endpoint, Event, Message, MessageType, OptionNumber, RequestId};

const SERVER: &str = "127.0.0.1:5683";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn device(n: u32) -> SocketAddr {
    SocketAddr::from(([127, 1, (n >> 8) as u8, n as u8], 5683))
}

fn observe_request() -> Message {
    let mut request = Message::request(Code::GET);
    request.set_uri_path("/3/0/9");
    request.options.set_uint(OptionNumber::OBSERVE, 0);
    request
}

/// The device's piggybacked answer to the request in `datagram`, with Observe `sequence`.
fn answer(datagram: &[u8], sequence: u32, payload: &[u8]) -> Vec<u8> {
    let request = Message::decode(datagram).unwrap();
    let mut response = Message::new(
        MessageType::Acknowledgement,
        Code::CONTENT,
        request.message_id,
    );
    response.token = request.token;
    response.options.set_uint(OptionNumber::OBSERVE, sequence);
    response.payload = payload.to_vec();
    response.to_bytes()
}

#[test]
fn an_idle_observation_costs_at_most_80_bytes() {
    let mut client = Endpoint::new(Config::default(), 7);
    let count = 2_000;
    let mut ids = Vec::new();
    for n in 0..count {
        let id = client
            .request(Duration::ZERO, device(n), observe_request())
            .unwrap();
        let sent = client.poll_transmit().unwrap();
        client.handle(Duration::ZERO, device(n), &answer(&sent.payload, 1, b"97"));
        assert!(matches!(client.poll_event(), Some(Event::Response { .. })));
        ids.push(id);
    }
    // Retransmission timers and idle peers go; the observations stay.
    client.handle_timeout(Duration::from_secs(300));
    client.handle_timeout(Duration::from_secs(600));
    assert_eq!(client.peer_count(), 0);
    let total: usize = ids
        .iter()
        .map(|id| client.request_bytes(*id).unwrap())
        .sum();
    let per_observation = total / ids.len();
    println!("bytes per idle observation (CoAP endpoint): {per_observation}");
    assert!(per_observation <= 80, "{per_observation} bytes");

    // Still observing: a fresh notification (non-confirmable) comes through.
    let mut notification = Message::new(MessageType::NonConfirmable, Code::CONTENT, 9);
    notification.token = client.request_token(ids[5]).unwrap();
    notification.options.set_uint(OptionNumber::OBSERVE, 2);
    client.handle(
        Duration::from_secs(601),
        device(5),
        &notification.to_bytes(),
    );
    assert!(matches!(client.poll_event(), Some(Event::Response { id, .. }) if id == ids[5]));
}

struct Net {
    now: Duration,
    client: Endpoint,
    server: Endpoint,
    /// The resource's current value: the server answers the requests for later blocks with it.
    body: Vec<u8>,
}

impl Net {
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                self.server
                    .handle(self.now, "127.0.0.1:40000".parse().unwrap(), &t.payload);
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                self.client.handle(self.now, addr(SERVER), &t.payload);
            }
            while let Some(event) = self.server.poll_event() {
                if let Event::Request { id, .. } = event {
                    moved = true;
                    let mut response = Message::response(Code::CONTENT);
                    response.payload = self.body.clone();
                    self.server.respond(self.now, id, response).unwrap();
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn client_responses(&mut self) -> Vec<(RequestId, Message)> {
        std::iter::from_fn(|| self.client.poll_event())
            .filter_map(|e| match e {
                Event::Response { id, message, .. } => Some((id, message)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_notification_in_blocks_is_fetched_and_the_observation_stays_compact() {
    let server_config = Config {
        block_size: 16,
        ..Config::default()
    };
    let mut net = Net {
        now: Duration::ZERO,
        client: Endpoint::new(Config::default(), 1),
        server: Endpoint::new(server_config, 2),
        body: Vec::new(),
    };
    let id = net
        .client
        .request(net.now, addr(SERVER), observe_request())
        .unwrap();
    while let Some(t) = net.client.poll_transmit() {
        net.server
            .handle(net.now, "127.0.0.1:40000".parse().unwrap(), &t.payload);
    }
    let exchange = match net.server.poll_event() {
        Some(Event::Request { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    let observation = net
        .server
        .respond(net.now, exchange, Message::response(Code::CONTENT))
        .unwrap()
        .unwrap();
    net.pump();
    assert_eq!(net.client_responses().len(), 1);
    let idle = net.client.request_bytes(id).unwrap();

    for round in 0..3u8 {
        net.now += Duration::from_secs(1);
        let mut notification = Message::response(Code::CONTENT);
        notification.payload = vec![round; 40];
        net.body = notification.payload.clone();
        net.server
            .notify(net.now, observation, notification)
            .unwrap();
        net.pump();
        let got = net.client_responses();
        assert_eq!(got.len(), 1, "round {round}");
        assert_eq!(got[0].0, id);
        assert_eq!(got[0].1.payload, vec![round; 40], "reassembled");
        assert_eq!(
            net.client.request_bytes(id),
            Some(idle),
            "compact again between notifications"
        );
    }

    // Deregistration from the compact form: a GET with Observe = 1 for the same resource.
    net.client.cancel(net.now, id, true).unwrap();
    let deregister = net.client.poll_transmit().unwrap();
    let message = Message::decode(&deregister.payload).unwrap();
    assert_eq!(message.observe(), Some(1));
    assert_eq!(message.options.get(OptionNumber::BLOCK2), None);
    assert_eq!(message.uri_path(), "/3/0/9");
    net.server.handle(
        net.now,
        "127.0.0.1:40000".parse().unwrap(),
        &deregister.payload,
    );
    assert!(net.client.request_bytes(id).is_none());
}

#[test]
fn a_compact_observation_drops_stale_notifications_until_the_freshness_window_ends() {
    let mut client = Endpoint::new(Config::default(), 3);
    let peer = device(1);
    let id = client
        .request(Duration::ZERO, peer, observe_request())
        .unwrap();
    let sent = client.poll_transmit().unwrap();
    client.handle(Duration::ZERO, peer, &answer(&sent.payload, 10, b"a"));
    assert!(client.poll_event().is_some());
    let token = client.request_token(id).unwrap();
    let notify = |client: &mut Endpoint, now: Duration, message_id: u16, sequence: u32| {
        let mut n = Message::new(MessageType::NonConfirmable, Code::CONTENT, message_id);
        n.token = token;
        n.options.set_uint(OptionNumber::OBSERVE, sequence);
        client.handle(now, peer, &n.to_bytes());
        std::iter::from_fn(|| client.poll_event()).count()
    };
    assert_eq!(
        notify(&mut client, Duration::from_secs(1), 1, 9),
        0,
        "older"
    );
    assert_eq!(
        notify(&mut client, Duration::from_secs(2), 2, 11),
        1,
        "newer"
    );
    assert_eq!(
        notify(&mut client, Duration::from_secs(3), 3, 11),
        0,
        "same"
    );
    // RFC 7641 §3.4: after 128 seconds any notification is fresh.
    assert_eq!(notify(&mut client, Duration::from_secs(200), 4, 5), 1);
}
