//! Two endpoints against each other in one thread with a fake clock: reliability, dedup,
//! separate responses, block-wise transfer both ways, observe, and hostile datagrams.

use std::net::SocketAddr;
use std::time::Duration;

use cairn_coap::{
    BlockValue, Code, Config, Endpoint, Event, Message, MessageType, ObservationEnd,
    ObserveRequest, OptionNumber, RequestError, RequestId, Transmit,
};

const CLIENT: &str = "127.0.0.1:40000";
const SERVER: &str = "127.0.0.1:5683";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Net {
    now: Duration,
    client: Endpoint,
    server: Endpoint,
    /// Every datagram that crossed the network, with its destination.
    log: Vec<Transmit>,
}

impl Net {
    fn new(client: Config, server: Config) -> Self {
        Net {
            now: Duration::ZERO,
            client: Endpoint::new(client, 1),
            server: Endpoint::new(server, 2),
            log: Vec::new(),
        }
    }

    fn default() -> Self {
        Net::new(Config::default(), Config::default())
    }

    /// Delivers queued datagrams both ways until none is left; `drop` decides losses.
    fn pump(&mut self, mut drop: impl FnMut(&Transmit) -> bool) {
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                self.log.push(t.clone());
                if !drop(&t) {
                    self.server.handle(self.now, addr(CLIENT), &t.payload);
                }
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                self.log.push(t.clone());
                if !drop(&t) {
                    self.client.handle(self.now, addr(SERVER), &t.payload);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn advance_to(&mut self, until: Duration) {
        loop {
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                    self.pump(|_| false);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn server_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    fn client_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    /// Answers every pending request on the server with `body`.
    fn answer_all(&mut self, body: &[u8]) -> usize {
        let mut answered = 0;
        for event in self.server_events() {
            if let Event::Request { id, .. } = event {
                let mut response = Message::response(Code::CONTENT);
                response.payload = body.to_vec();
                self.server.respond(self.now, id, response).unwrap();
                answered += 1;
            }
        }
        answered
    }

    fn get(&mut self, path: &str) -> RequestId {
        let mut request = Message::request(Code::GET);
        request.set_uri_path(path);
        self.client
            .request(self.now, addr(SERVER), request)
            .unwrap()
    }
}

fn responses(events: &[Event]) -> Vec<(RequestId, Message)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Response { id, message, .. } => Some((*id, message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn confirmable_get_gets_a_piggybacked_response() {
    let mut net = Net::default();
    let id = net.get("/time");
    net.pump(|_| false);
    let requests = net.server_events();
    let Event::Request {
        id: exchange,
        message,
        observe,
        ..
    } = &requests[0]
    else {
        panic!("{requests:?}")
    };
    assert_eq!(message.uri_path(), "/time");
    assert_eq!(*observe, ObserveRequest::None);
    let mut response = Message::response(Code::CONTENT);
    response.payload = b"12:00".to_vec();
    net.server.respond(net.now, *exchange, response).unwrap();
    net.pump(|_| false);
    let got = responses(&net.client_events());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, id);
    assert_eq!(got[0].1.payload, b"12:00");
    assert_eq!(got[0].1.message_type, MessageType::Acknowledgement);
    // Two datagrams in all: the request and the piggybacked response.
    assert_eq!(net.log.len(), 2);
}

#[test]
fn lost_request_is_retransmitted_and_lost_response_is_replayed_from_the_cache() {
    let mut net = Net::default();
    net.get("/a");
    // The first request is lost.
    let mut first = true;
    net.pump(|_| std::mem::take(&mut first));
    assert!(net.server_events().is_empty());
    // Retransmission between 2 and 3 seconds later.
    net.advance_to(Duration::from_millis(1999));
    assert!(net.server_events().is_empty());
    net.advance_to(Duration::from_secs(3));
    // Answer, but lose the response.
    assert_eq!(net.answer_all(b"x"), 1);
    net.pump(|t| t.destination == addr(CLIENT));
    assert!(net.client_events().is_empty());
    // The next retransmission is answered from the duplicate cache, not the application.
    net.advance_to(Duration::from_secs(10));
    assert!(
        net.server_events().is_empty(),
        "a duplicate must not reach the application"
    );
    let got = responses(&net.client_events());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.payload, b"x");
}

#[test]
fn request_times_out_after_max_retransmit() {
    let mut net = Net::default();
    let id = net.get("/a");
    net.pump(|_| true);
    // Retransmissions at t, 2t, 4t, 8t after the first timeout t in [2, 3] s: give up after 15t + 16t = 31t? No:
    // RFC 7252 §4.8.2 MAX_TRANSMIT_WAIT is 93 s; the last retransmission is at most 45 s in.
    let mut sent = 1;
    let mut failed_at = None;
    for ms in (0..=100_000).step_by(100) {
        let now = Duration::from_millis(ms);
        net.now = now;
        net.client.handle_timeout(now);
        while net.client.poll_transmit().is_some() {
            sent += 1;
        }
        for event in net.client_events() {
            if let Event::RequestFailed { id: failed, error } = event {
                assert_eq!(failed, id);
                assert_eq!(error, RequestError::Timeout(4));
                failed_at = Some(now);
            }
        }
        if failed_at.is_some() {
            break;
        }
    }
    assert_eq!(
        sent, 5,
        "one transmission and MAX_RETRANSMIT = 4 retransmissions"
    );
    let failed_at = failed_at.expect("the request must fail");
    assert!(
        failed_at >= Duration::from_secs(62) && failed_at <= Duration::from_secs(93),
        "{failed_at:?}"
    );
}

#[test]
fn slow_application_gets_an_empty_ack_then_a_separate_response() {
    let mut net = Net::default();
    net.get("/slow");
    net.pump(|_| false);
    let events = net.server_events();
    let Event::Request { id: exchange, .. } = events[0] else {
        panic!()
    };
    // After the piggyback window the server acknowledges; the client stops retransmitting.
    net.advance_to(Duration::from_secs(30));
    let kinds: Vec<_> = net
        .log
        .iter()
        .map(|t| Message::decode(&t.payload).unwrap().message_type)
        .collect();
    assert_eq!(
        kinds,
        vec![MessageType::Confirmable, MessageType::Acknowledgement]
    );
    net.server
        .respond(net.now, exchange, Message::response(Code::CONTENT))
        .unwrap();
    net.pump(|_| false);
    let got = responses(&net.client_events());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.message_type, MessageType::Confirmable);
    // The client acknowledged the separate response, so the server does not retransmit it.
    let before = net.log.len();
    net.advance_to(Duration::from_secs(200));
    assert_eq!(net.log.len(), before);
}

#[test]
fn block2_response_is_fetched_block_by_block() {
    let mut net = Net::new(
        Config {
            block_size: 256,
            ..Config::default()
        },
        Config::default(),
    );
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let id = net.get("/big");
    for _ in 0..100 {
        net.pump(|_| false);
        if net.answer_all(&body) == 0 {
            break;
        }
    }
    let got = responses(&net.client_events());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, id);
    assert_eq!(got[0].1.payload, body);
    // The server sent 1024-byte blocks, the largest it offers; the client kept that size.
    let server_payloads: Vec<_> = net
        .log
        .iter()
        .filter(|t| t.destination == addr(CLIENT))
        .map(|t| Message::decode(&t.payload).unwrap().payload.len())
        .collect();
    assert_eq!(server_payloads, vec![1024, 1024, 1024, 1024, 904]);
}

#[test]
fn an_explicit_block2_request_gets_that_one_block() {
    let mut net = Net::default();
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    for num in [0u32, 3, 4] {
        let mut request = Message::request(Code::GET);
        request.set_uri_path("/big");
        let asked = BlockValue {
            num,
            more: false,
            szx: 6,
        };
        request
            .options
            .set_uint(OptionNumber::BLOCK2, asked.to_uint());
        let id = net.client.request(net.now, addr(SERVER), request).unwrap();
        net.pump(|_| false);
        // Block 0 goes to the application; later blocks the server may cut from the
        // representation it kept.
        net.answer_all(&body);
        net.pump(|_| false);
        let got = responses(&net.client_events());
        assert_eq!(got.len(), 1, "one response for block {num}");
        assert_eq!(got[0].0, id);
        let block =
            BlockValue::decode(got[0].1.options.get(OptionNumber::BLOCK2).unwrap()).unwrap();
        assert_eq!(block.num, num);
        assert_eq!(block.more, num < 4);
        let start = num as usize * 1024;
        let end = (start + 1024).min(body.len());
        assert_eq!(got[0].1.payload, body[start..end]);
        // Nothing else was asked for.
        assert!(net.server_events().is_empty());
        assert!(net.client.poll_transmit().is_none());
    }
}

#[test]
fn block1_request_is_reassembled_with_late_negotiation() {
    let mut net = Net::new(
        Config::default(),
        Config {
            block_size: 256,
            ..Config::default()
        },
    );
    let body: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut put = Message::request(Code::PUT);
    put.set_uri_path("/upload");
    put.payload = body.clone();
    net.client.request(net.now, addr(SERVER), put).unwrap();
    net.pump(|_| false);
    let events = net.server_events();
    assert_eq!(
        events.len(),
        1,
        "the application sees one request with the whole body"
    );
    let Event::Request { id, message, .. } = &events[0] else {
        panic!()
    };
    assert_eq!(message.payload, body);
    net.server
        .respond(net.now, *id, Message::response(Code::CHANGED))
        .unwrap();
    net.pump(|_| false);
    let got = responses(&net.client_events());
    assert_eq!(got[0].1.code, Code::CHANGED);
    let block1 = BlockValue::decode(got[0].1.options.get(OptionNumber::BLOCK1).unwrap()).unwrap();
    assert!(!block1.more);
    // After the first 1024-byte block the client switched to the server's 256 bytes.
    let client_payloads: Vec<_> = net
        .log
        .iter()
        .filter(|t| t.destination == addr(SERVER))
        .map(|t| Message::decode(&t.payload).unwrap().payload.len())
        .collect();
    assert_eq!(client_payloads[0], 1024);
    assert!(
        client_payloads[1..client_payloads.len() - 1]
            .iter()
            .all(|&n| n == 256),
        "{client_payloads:?}"
    );
    assert_eq!(client_payloads.iter().sum::<usize>(), 3000);
}

#[test]
fn block1_body_over_the_limit_is_refused_with_4_13() {
    let mut net = Net::new(
        Config::default(),
        Config {
            max_body_size: 2000,
            ..Config::default()
        },
    );
    let mut put = Message::request(Code::PUT);
    put.set_uri_path("/upload");
    put.payload = vec![0; 5000];
    net.client.request(net.now, addr(SERVER), put).unwrap();
    net.pump(|_| false);
    assert!(net.server_events().is_empty());
    let got = responses(&net.client_events());
    assert_eq!(got[0].1.code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(got[0].1.options.get_uint(OptionNumber::SIZE1), Some(2000));
}

#[test]
fn block1_out_of_order_block_is_4_08() {
    let mut server = Endpoint::new(Config::default(), 3);
    let mut put = Message::new(MessageType::Confirmable, Code::PUT, 7);
    put.set_uri_path("/x");
    put.options.set_uint(
        OptionNumber::BLOCK1,
        BlockValue {
            num: 3,
            more: true,
            szx: 2,
        }
        .to_uint(),
    );
    put.payload = vec![0; 64];
    server.handle(Duration::ZERO, addr(CLIENT), &put.to_bytes());
    let reply = Message::decode(&server.poll_transmit().unwrap().payload).unwrap();
    assert_eq!(reply.code, Code::REQUEST_ENTITY_INCOMPLETE);
    assert!(server.poll_event().is_none());
}

#[test]
fn observe_delivers_fresh_notifications_and_ends_on_reset() {
    let mut net = Net::default();
    let mut request = Message::request(Code::GET);
    request.set_uri_path("/time");
    request.options.set_uint(OptionNumber::OBSERVE, 0);
    let id = net.client.request(net.now, addr(SERVER), request).unwrap();
    net.pump(|_| false);
    let events = net.server_events();
    let Event::Request {
        id: exchange,
        observe,
        ..
    } = events[0]
    else {
        panic!()
    };
    assert_eq!(observe, ObserveRequest::Register);
    let observation = net
        .server
        .respond(net.now, exchange, Message::response(Code::CONTENT))
        .unwrap()
        .unwrap();
    assert_eq!(net.server.observers("/time"), vec![observation]);
    net.pump(|_| false);
    for i in 0..3u8 {
        let mut notification = Message::response(Code::CONTENT);
        notification.payload = vec![i];
        net.server
            .notify(net.now, observation, notification)
            .unwrap();
        net.pump(|_| false);
    }
    let got = responses(&net.client_events());
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|(r, _)| *r == id));
    assert_eq!(got[3].1.payload, vec![2]);

    // A stale notification (older sequence number) is not delivered.
    let last = net
        .log
        .iter()
        .rev()
        .find(|t| t.destination == addr(CLIENT))
        .unwrap()
        .payload
        .clone();
    let mut stale = Message::decode(&last).unwrap();
    stale
        .options
        .set_uint(OptionNumber::OBSERVE, stale.observe().unwrap() - 1);
    stale.message_id = stale.message_id.wrapping_add(100);
    net.client.handle(net.now, addr(SERVER), &stale.to_bytes());
    assert!(responses(&net.client_events()).is_empty());

    // The client forgets the observation; the next notification is answered with Reset.
    net.client.cancel(net.now, id, false).unwrap();
    net.server
        .notify(net.now, observation, Message::response(Code::CONTENT))
        .unwrap();
    net.pump(|_| false);
    let ended = net.server_events();
    assert!(
        ended.contains(&Event::ObservationEnded {
            id: observation,
            peer: addr(CLIENT),
            reason: ObservationEnd::Reset
        }),
        "{ended:?}"
    );
    assert!(net.server.observers("/time").is_empty());
}

#[test]
fn observe_deregistration_with_observe_1() {
    let mut net = Net::default();
    let mut request = Message::request(Code::GET);
    request.set_uri_path("/time");
    request.options.set_uint(OptionNumber::OBSERVE, 0);
    let id = net.client.request(net.now, addr(SERVER), request).unwrap();
    net.pump(|_| false);
    net.answer_all(b"t0");
    net.pump(|_| false);
    assert_eq!(net.server.observers("/time").len(), 1);
    net.client.cancel(net.now, id, true).unwrap();
    net.pump(|_| false);
    let events = net.server_events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ObservationEnded {
            reason: ObservationEnd::Deregistered,
            ..
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Request {
            observe: ObserveRequest::Deregister,
            ..
        }
    )));
    assert!(net.server.observers("/time").is_empty());
}

#[test]
fn unknown_critical_option_gets_4_02_and_unknown_elective_is_ignored() {
    let mut server = Endpoint::new(Config::default(), 3);
    let mut request = Message::new(MessageType::Confirmable, Code::GET, 1);
    request.options.push(OptionNumber(65001), b"x".to_vec());
    server.handle(Duration::ZERO, addr(CLIENT), &request.to_bytes());
    let reply = Message::decode(&server.poll_transmit().unwrap().payload).unwrap();
    assert_eq!(
        (reply.code, reply.message_type, reply.message_id),
        (Code::BAD_OPTION, MessageType::Acknowledgement, 1)
    );
    assert!(server.poll_event().is_none());

    let mut request = Message::new(MessageType::Confirmable, Code::GET, 2);
    request.options.push(OptionNumber(65000), b"x".to_vec());
    server.handle(Duration::ZERO, addr(CLIENT), &request.to_bytes());
    assert!(matches!(server.poll_event(), Some(Event::Request { .. })));
}

#[test]
fn malformed_confirmable_gets_reset_and_malformed_non_is_dropped() {
    let mut server = Endpoint::new(Config::default(), 3);
    server.handle(
        Duration::ZERO,
        addr(CLIENT),
        &[0x40, 0x01, 0x12, 0x34, 0xf1],
    );
    let reply = Message::decode(&server.poll_transmit().unwrap().payload).unwrap();
    assert_eq!(
        (reply.message_type, reply.code, reply.message_id),
        (MessageType::Reset, Code::EMPTY, 0x1234)
    );
    server.handle(
        Duration::ZERO,
        addr(CLIENT),
        &[0x50, 0x01, 0x12, 0x35, 0xf1],
    );
    assert!(server.poll_transmit().is_none());
    assert!(server.poll_event().is_none());
}

#[test]
fn ping_is_answered_with_reset() {
    let mut net = Net::default();
    let id = net.client.ping(net.now, addr(SERVER)).unwrap();
    net.pump(|_| false);
    assert_eq!(net.client_events(), vec![Event::Pong { id }]);
}

#[test]
fn nstart_holds_back_a_second_confirmable_request() {
    let mut net = Net::default();
    net.get("/a");
    net.get("/b");
    net.pump(|_| false);
    assert_eq!(
        net.server_events().len(),
        1,
        "only one request in flight (NSTART = 1)"
    );
    net.advance_to(Duration::from_secs(1));
    // The first one was acknowledged empty after the piggyback window: the second goes out.
    assert_eq!(net.server_events().len(), 1);
}

#[test]
fn peer_table_is_bounded_and_a_full_table_still_serves_new_peers() {
    let mut server = Endpoint::new(
        Config {
            max_peers: 10,
            ..Config::default()
        },
        3,
    );
    let mut served = 0;
    for port in 0..1000u16 {
        let peer = SocketAddr::from(([127, 0, 0, 1], 10000 + port));
        let request = Message::new(MessageType::Confirmable, Code::GET, port);
        server.handle(Duration::ZERO, peer, &request.to_bytes());
        while let Some(event) = server.poll_event() {
            if let Event::Request { id, .. } = event {
                server
                    .respond(Duration::ZERO, id, Message::response(Code::CONTENT))
                    .unwrap();
                served += 1;
            }
        }
        assert!(server.peer_count() <= 10);
    }
    // Peers holding only duplicate-detection state make way for new ones (no 5.03 flood).
    assert_eq!(served, 1000);
}

#[test]
fn duplicate_cache_is_bounded_per_peer() {
    let mut server = Endpoint::new(
        Config {
            dedup_capacity_per_peer: 8,
            ..Config::default()
        },
        3,
    );
    for mid in 0..1000u16 {
        let request = Message::new(MessageType::Confirmable, Code::GET, mid);
        server.handle(Duration::ZERO, addr(CLIENT), &request.to_bytes());
        while let Some(Event::Request { id, .. }) = server.poll_event() {
            server
                .respond(Duration::ZERO, id, Message::response(Code::CONTENT))
                .unwrap();
        }
    }
    // The oldest entries were evicted: message 0 is new again, message 999 is a duplicate.
    let request = Message::new(MessageType::Confirmable, Code::GET, 999);
    server.handle(Duration::ZERO, addr(CLIENT), &request.to_bytes());
    assert!(server.poll_event().is_none());
    let request = Message::new(MessageType::Confirmable, Code::GET, 0);
    server.handle(Duration::ZERO, addr(CLIENT), &request.to_bytes());
    assert!(server.poll_event().is_some());
}

#[test]
fn response_with_an_unknown_token_is_reset() {
    let mut client = Endpoint::new(Config::default(), 1);
    let mut stray = Message::new(MessageType::Confirmable, Code::CONTENT, 9);
    stray.token = cairn_coap::Token::new(&[1, 2]).unwrap();
    client.handle(Duration::ZERO, addr(SERVER), &stray.to_bytes());
    let reply = Message::decode(&client.poll_transmit().unwrap().payload).unwrap();
    assert_eq!(
        (reply.message_type, reply.message_id),
        (MessageType::Reset, 9)
    );
    assert!(client.poll_event().is_none());
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic_and_state_stays_bounded(
            datagrams in proptest::collection::vec(
                (0u8..8, proptest::collection::vec(any::<u8>(), 0..200)), 1..64)
        ) {
            let config = Config { max_peers: 4, dedup_capacity_per_peer: 4, ..Config::default() };
            let mut endpoint = Endpoint::new(config, 9);
            let mut now = Duration::ZERO;
            for (port, mut bytes) in datagrams {
                // Half the inputs get a valid-looking header so they reach deeper code.
                if port % 2 == 0 && bytes.len() >= 4 {
                    bytes[0] = 0x40 | (bytes[0] & 0x3f);
                }
                let peer = SocketAddr::from(([127, 0, 0, 1], 20000 + u16::from(port)));
                endpoint.handle(now, peer, &bytes);
                while let Some(event) = endpoint.poll_event() {
                    if let Event::Request { id, .. } = event {
                        let mut big = Message::response(Code::CONTENT);
                        big.payload = vec![0; 3000];
                        endpoint.respond(now, id, big).unwrap();
                    }
                }
                while endpoint.poll_transmit().is_some() {}
                now += Duration::from_millis(500);
                endpoint.handle_timeout(now);
                prop_assert!(endpoint.peer_count() <= 4);
            }
        }
    }
}

#[test]
fn a_resumed_observation_receives_notifications() {
    let mut net = Net::default();
    let mut request = Message::request(Code::GET);
    request.set_uri_path("/time");
    request.options.set_uint(OptionNumber::OBSERVE, 0);
    let id = net
        .client
        .request(net.now, addr(SERVER), request.clone())
        .unwrap();
    let token = net.client.request_token(id).unwrap();
    net.pump(|_| false);
    net.answer_all(b"t0");
    net.pump(|_| false);
    assert_eq!(responses(&net.client_events()).len(), 1);

    // A new client endpoint (a restarted process) takes the observation over by its token.
    net.client = Endpoint::new(Config::default(), 5);
    let resumed = net
        .client
        .resume_observation(net.now, addr(SERVER), token, request)
        .unwrap();
    let observation = net.server.observers("/time")[0];
    let mut notification = Message::response(Code::CONTENT);
    notification.payload = b"t1".to_vec();
    net.server
        .notify(net.now, observation, notification)
        .unwrap();
    net.pump(|_| false);
    let got = responses(&net.client_events());
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0, got[0].1.payload.as_slice()),
        (resumed, b"t1".as_slice())
    );
    assert_eq!(
        net.server.observers("/time"),
        vec![observation],
        "no Reset: the observation lives on"
    );
}

/// Sends `request` from `peer` to a bare server endpoint, answers it with `payload` and
/// returns what the server sent back.
fn serve_once(
    server: &mut Endpoint,
    now: Duration,
    peer: SocketAddr,
    request: &Message,
    payload: &[u8],
) -> Vec<Vec<u8>> {
    server.handle(now, peer, &request.to_bytes());
    while let Some(event) = server.poll_event() {
        if let Event::Request { id, .. } = event {
            let mut response = Message::response(Code::CONTENT);
            response.payload = payload.to_vec();
            server.respond(now, id, response).unwrap();
        }
    }
    std::iter::from_fn(|| server.poll_transmit())
        .map(|t| t.payload)
        .collect()
}

#[test]
fn duplicates_get_the_same_reply_whatever_its_size() {
    let mut server = Endpoint::new(Config::default(), 5);
    // An empty ACK (separate response), a reply kept inline and one too long for that.
    for (n, payload) in [&b"short"[..], &[7u8; 25], &[9u8; 300]]
        .into_iter()
        .enumerate()
    {
        let peer = SocketAddr::from(([127, 0, 0, 1], 20000 + n as u16));
        let mut request = Message::new(MessageType::Confirmable, Code::GET, 100 + n as u16);
        request.token = cairn_coap::Token::from_u64(0x1122_3344_5566_7788);
        let first = serve_once(&mut server, Duration::ZERO, peer, &request, payload);
        assert_eq!(first.len(), 1);
        let again = serve_once(&mut server, Duration::from_secs(5), peer, &request, b"new");
        assert_eq!(again, first, "reply {n} replayed byte for byte");
    }
    // A request the application has not answered within the piggyback window gets an
    // empty ACK, and its duplicate gets that ACK again.
    let peer = addr(CLIENT);
    let request = Message::new(MessageType::Confirmable, Code::GET, 77);
    server.handle(Duration::ZERO, peer, &request.to_bytes());
    while server.poll_event().is_some() {}
    server.handle_timeout(Duration::from_secs(2));
    let ack: Vec<_> = std::iter::from_fn(|| server.poll_transmit()).collect();
    assert_eq!(ack.len(), 1);
    server.handle(Duration::from_secs(3), peer, &request.to_bytes());
    assert_eq!(
        server.poll_transmit().map(|t| t.payload),
        Some(ack[0].payload.clone())
    );
}

#[test]
fn peers_are_dropped_once_their_duplicate_window_ends() {
    let config = Config::default();
    let lifetime = config.exchange_lifetime;
    let mut server = Endpoint::new(config, 9);
    for n in 0..500u16 {
        let peer = SocketAddr::from(([127, 0, 0, 1], 30000 + n));
        let request = Message::new(MessageType::Confirmable, Code::POST, n);
        serve_once(
            &mut server,
            Duration::from_millis(u64::from(n)),
            peer,
            &request,
            b"",
        );
    }
    assert_eq!(server.peer_count(), 500);
    // Within EXCHANGE_LIFETIME a duplicate is still recognised.
    let first = SocketAddr::from(([127, 0, 0, 1], 30000));
    let request = Message::new(MessageType::Confirmable, Code::POST, 0);
    server.handle(
        lifetime - Duration::from_millis(1),
        first,
        &request.to_bytes(),
    );
    assert!(server.poll_event().is_none());
    // After it, the sweeps drop every peer: nothing else was held.
    let mut now = lifetime;
    while let Some(at) = server.poll_timeout() {
        if at > lifetime * 3 {
            break;
        }
        now = now.max(at);
        server.handle_timeout(now);
    }
    assert_eq!(server.peer_count(), 0);
    // The same message ID from the same address is new again.
    server.handle(now, first, &request.to_bytes());
    assert!(matches!(server.poll_event(), Some(Event::Request { .. })));
}

/// A full peer table (100,000 peers, each with a cached reply) keeps serving new addresses at
/// a bounded cost, and its sweep stays cheap. Heavy (a few seconds in a debug build), so run
/// with `cargo test --release -p cairn-coap --test endpoint -- --ignored --nocapture`.
#[test]
#[ignore]
fn a_full_peer_table_serves_new_addresses_without_a_scan() {
    let mut server = Endpoint::new(Config::default(), 11);
    let peer =
        |n: u32| SocketAddr::from(([127, 1, (n >> 8) as u8, n as u8], 10000 + (n >> 16) as u16));
    let fill = std::time::Instant::now();
    for n in 0..100_000u32 {
        let request = Message::new(MessageType::Confirmable, Code::POST, n as u16);
        serve_once(
            &mut server,
            Duration::from_millis(1),
            peer(n),
            &request,
            b"registered",
        );
    }
    let fill = fill.elapsed();
    assert_eq!(server.peer_count(), 100_000);
    let new = std::time::Instant::now();
    for n in 100_000..120_000u32 {
        let request = Message::new(MessageType::Confirmable, Code::GET, n as u16);
        let replies = serve_once(&mut server, Duration::from_secs(1), peer(n), &request, b"x");
        assert_eq!(replies.len(), 1);
        assert_ne!(replies[0][1], 0xA3, "no 5.03 while idle peers can make way");
    }
    let new = new.elapsed();
    assert_eq!(server.peer_count(), 100_000);
    let sweep = std::time::Instant::now();
    server.handle_timeout(Duration::from_secs(40));
    let sweep = sweep.elapsed();
    println!(
        "fill {:.2} µs per peer; new address on a full table {:.2} µs per request; sweep {:.2} ms",
        fill.as_secs_f64() * 1e6 / 100_000.0,
        new.as_secs_f64() * 1e6 / 20_000.0,
        sweep.as_secs_f64() * 1e3
    );
    // Seconds, not minutes: a scan per request would cost about 100,000 steps each.
    assert!(new < Duration::from_secs(20), "{new:?}");
}

#[test]
fn forget_peer_fails_our_requests_and_ends_its_observations() {
    let mut net = Net::default();
    // The client observes a resource of the server.
    let mut request = Message::request(Code::GET);
    request.set_uri_path("/time");
    request.options.set_uint(OptionNumber::OBSERVE, 0);
    net.client.request(net.now, addr(SERVER), request).unwrap();
    net.pump(|_| false);
    let events = net.server_events();
    let Event::Request { id: exchange, .. } = events[0] else {
        panic!("{events:?}")
    };
    let observation = net
        .server
        .respond(net.now, exchange, Message::response(Code::CONTENT))
        .unwrap()
        .unwrap();
    net.pump(|_| false);
    // A request of the server that the client never answers.
    let mut write = Message::request(Code::PUT);
    write.set_uri_path("/0/1");
    write.payload = b"secret".to_vec();
    let pending = net.server.request(net.now, addr(CLIENT), write).unwrap();
    net.pump(|_| true);
    let sent = net.log.len();

    net.server
        .forget_peer(addr(CLIENT), RequestError::SessionFailed);
    let events = net.server_events();
    assert!(
        events.contains(&Event::RequestFailed {
            id: pending,
            error: RequestError::SessionFailed
        }),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::ObservationEnded {
            id: observation,
            peer: addr(CLIENT),
            reason: ObservationEnd::SessionEnded
        }),
        "{events:?}"
    );
    assert!(net.server.observers("/time").is_empty());
    assert_eq!(net.server.peer_count(), 0);
    assert!(net.server.poll_transmit().is_none());
    assert!(
        net.server
            .notify(net.now, observation, Message::response(Code::CONTENT))
            .is_err()
    );
    // Nothing of the old context is retransmitted, and the request does not fail twice.
    net.advance_to(Duration::from_secs(300));
    assert!(
        net.log[sent..]
            .iter()
            .all(|t| t.destination != addr(CLIENT)),
        "{:?}",
        &net.log[sent..]
    );
    assert!(net.server_events().is_empty());
}

#[test]
fn forget_peer_drops_its_exchanges_and_cached_replies() {
    let mut server = Endpoint::new(Config::default(), 9);
    let peer = addr(CLIENT);
    // An exchange the application has not answered yet.
    let waiting = Message::new(MessageType::Confirmable, Code::GET, 100);
    server.handle(Duration::ZERO, peer, &waiting.to_bytes());
    let Some(Event::Request { id: exchange, .. }) = server.poll_event() else {
        panic!("no request")
    };
    // An answered one, whose reply is cached for duplicates.
    let mut answered = Message::new(MessageType::Confirmable, Code::GET, 200);
    answered.token = cairn_coap::Token::from_u64(0x55);
    let first = serve_once(&mut server, Duration::ZERO, peer, &answered, b"old device");
    assert_eq!(first.len(), 1);

    server.forget_peer(peer, RequestError::SessionFailed);
    assert!(server.poll_event().is_none());
    assert_eq!(
        server.respond(Duration::ZERO, exchange, Message::response(Code::CONTENT)),
        Err(cairn_coap::EndpointError::UnknownExchange)
    );
    assert!(server.poll_transmit().is_none());
    // The same message ID from the new context is a new request, not a duplicate.
    server.handle(Duration::from_secs(1), peer, &answered.to_bytes());
    assert!(
        server.poll_transmit().is_none(),
        "the old reply is not replayed"
    );
    assert!(matches!(server.poll_event(), Some(Event::Request { .. })));
}

#[test]
fn move_peer_takes_everything_of_the_peer_to_its_new_address() {
    // Two of our requests in flight at once: a ping and a write.
    let config = Config {
        nstart: 2,
        ..Config::default()
    };
    let mut server = Endpoint::new(config, 11);
    let (old, new) = (addr(CLIENT), addr("127.0.0.1:40001"));
    let drain =
        |server: &mut Endpoint| std::iter::from_fn(|| server.poll_transmit()).collect::<Vec<_>>();
    // The peer observes /time, answered (its reply cached for duplicates).
    let mut observe = Message::new(MessageType::Confirmable, Code::GET, 10);
    observe.token = cairn_coap::Token::from_u64(0xa1);
    observe.set_uri_path("/time");
    observe.options.set_uint(OptionNumber::OBSERVE, 0);
    server.handle(Duration::ZERO, old, &observe.to_bytes());
    let Some(Event::Request { id: exchange, .. }) = server.poll_event() else {
        panic!("no request")
    };
    let observation = server
        .respond(Duration::ZERO, exchange, Message::response(Code::CONTENT))
        .unwrap()
        .unwrap();
    // A request of the peer the application has not answered yet.
    let mut waiting = Message::new(MessageType::Confirmable, Code::GET, 11);
    waiting.token = cairn_coap::Token::from_u64(0xa2);
    server.handle(Duration::ZERO, old, &waiting.to_bytes());
    let Some(Event::Request { id: waiting_id, .. }) = server.poll_event() else {
        panic!("no request")
    };
    // A ping of ours, not answered yet.
    let ping = server.ping(Duration::ZERO, old).unwrap();
    assert!(drain(&mut server).iter().all(|t| t.destination == old));
    // A request of ours that the peer has not answered yet.
    let mut write = Message::request(Code::PUT);
    write.set_uri_path("/0/1");
    assert!(drain(&mut server).iter().all(|t| t.destination == old));
    let pending = server.request(Duration::ZERO, old, write).unwrap();

    // A request of the peer that arrived but was not polled yet.
    let mut unpolled = Message::new(MessageType::Confirmable, Code::GET, 12);
    unpolled.token = cairn_coap::Token::from_u64(0xa3);
    server.handle(Duration::ZERO, old, &unpolled.to_bytes());

    // The move comes before the request's datagram is polled: it goes to the new address.
    server.move_peer(old, new);
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(
        matches!(events.as_slice(), [Event::Request { peer, .. }] if *peer == new),
        "the queued request is the new address's, and nothing fails or ends: {events:?}"
    );
    assert_eq!(server.peer_count(), 1);
    let before = drain(&mut server);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].destination, new);
    let sent_write = Message::decode(&before[0].payload).unwrap();
    let now = Duration::from_millis(100);
    // A repeat of the observe request, now from the new address, gets the cached reply.
    server.handle(now, new, &observe.to_bytes());
    assert!(
        server.poll_event().is_none(),
        "a duplicate, not a new request"
    );
    let repeated = drain(&mut server);
    assert_eq!(repeated.len(), 1);
    assert_eq!(repeated[0].destination, new);
    // The waiting request is answered there, and so is the observation's notification.
    server
        .respond(now, waiting_id, Message::response(Code::CONTENT))
        .unwrap();
    server
        .notify(now, observation, Message::response(Code::CONTENT))
        .unwrap();
    let answers = drain(&mut server);
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|t| t.destination == new), "{answers:?}");
    // Our request is retransmitted to the new address, and its answer from there counts.
    server.handle_timeout(Duration::from_secs(4));
    let retransmitted = drain(&mut server);
    assert!(
        retransmitted
            .iter()
            .any(|t| t.destination == new && t.payload == before.last().unwrap().payload),
        "{retransmitted:?}"
    );
    assert!(retransmitted.iter().all(|t| t.destination == new));
    let mut ack = Message::new(
        MessageType::Acknowledgement,
        Code::CHANGED,
        sent_write.message_id,
    );
    ack.token = sent_write.token;
    server.handle(Duration::from_secs(4), new, &ack.to_bytes());
    assert!(
        std::iter::from_fn(|| server.poll_event()).any(|event| matches!(
            event,
            Event::Response { id, ref message, .. } if id == pending && message.code == Code::CHANGED
        )),
        "the answer from the new address completes the request"
    );
    // A response without a token from the new address answers no ping (pings are matched
    // by message ID), and the ping's own empty ACK does.
    let stray = Message::new(MessageType::Acknowledgement, Code::CONTENT, 999);
    server.handle(Duration::from_secs(4), new, &stray.to_bytes());
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(
        events
            .iter()
            .all(|event| !matches!(event, Event::Response { id, .. } if *id == ping)),
        "{events:?}"
    );
    let sent_ping = retransmitted
        .iter()
        .map(|t| Message::decode(&t.payload).unwrap())
        .find(|m| m.code == Code::EMPTY && m.message_type == MessageType::Confirmable)
        .map(|m| m.message_id);
    let message_id = sent_ping.expect("the ping is retransmitted to the new address");
    let pong = Message::new(MessageType::Acknowledgement, Code::EMPTY, message_id);
    server.handle(Duration::from_secs(4), new, &pong.to_bytes());
    assert_eq!(server.poll_event(), Some(Event::Pong { id: ping }));
    // The old address holds nothing any more.
    server.handle(Duration::from_secs(4), old, &ack.to_bytes());
    assert!(server.poll_event().is_none());
}

#[test]
fn forget_peer_drops_what_is_queued_for_it() {
    let mut server = Endpoint::new(Config::default(), 12);
    let (peer, other) = (addr(CLIENT), addr("127.0.0.1:40002"));
    // A request from each peer, not polled yet, and a request of ours to each, not sent yet.
    for (n, from) in [(1u16, peer), (2, other)] {
        let request = Message::new(MessageType::Confirmable, Code::GET, n);
        server.handle(Duration::ZERO, from, &request.to_bytes());
        let mut write = Message::request(Code::PUT);
        write.set_uri_path("/0/1");
        server.request(Duration::ZERO, from, write).unwrap();
    }
    server.forget_peer(peer, RequestError::SessionFailed);
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(
        events
            .iter()
            .all(|event| !matches!(event, Event::Request { peer: from, .. } if *from == peer)),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|event| matches!(event, Event::Request { peer: from, .. } if *from == other)),
        "{events:?}"
    );
    let transmits: Vec<Transmit> = std::iter::from_fn(|| server.poll_transmit()).collect();
    assert!(
        transmits.iter().all(|t| t.destination != peer),
        "{transmits:?}"
    );
    assert!(
        transmits.iter().any(|t| t.destination == other),
        "{transmits:?}"
    );
}
