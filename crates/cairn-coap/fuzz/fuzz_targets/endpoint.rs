//! Fuzz the CoAP endpoint with a sequence of datagrams from a few peers, answering every
//! request with a large body: no panic, and the peer table stays within its bound.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use cairn_coap::{Code, Config, Endpoint, Event, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = Config { max_peers: 4, dedup_capacity_per_peer: 4, max_body_size: 4096, ..Config::default() };
    let mut endpoint = Endpoint::new(config, 7);
    let mut now = Duration::ZERO;
    // Each chunk: one byte of peer and time step, one byte of length, then the datagram.
    let mut rest = data;
    while let [selector, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        let peer = SocketAddr::from(([127, 0, 0, 1], 20000 + u16::from(selector & 0x7)));
        now += Duration::from_millis(u64::from(selector >> 3) * 100);
        endpoint.handle_timeout(now);
        endpoint.handle(now, peer, datagram);
        while let Some(event) = endpoint.poll_event() {
            if let Event::Request { id, .. } = event {
                let mut response = Message::response(Code::CONTENT);
                response.payload = vec![0x5a; 3000];
                let _ = endpoint.respond(now, id, response);
            }
        }
        while endpoint.poll_transmit().is_some() {}
        assert!(endpoint.peer_count() <= 4);
    }
});
