//! Feeds a server endpoint arbitrary datagrams from a few addresses (RFC 6347 as a whole):
//! the input is a sequence of `[address byte, length byte, datagram...]` chunks.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_dtls::{CidConfig, Psk, PskResolver, ServerConfig, ServerEndpoint};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

struct OneKey;

impl PskResolver for OneKey {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        (identity == b"device-1").then(|| Psk::new(b"0123456789abcdef".to_vec()))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut config = ServerConfig::new(Arc::new(OneKey));
    config.connection_id = Some(CidConfig {
        length: 4,
        node_prefix: vec![1],
    });
    let Ok(mut server) =
        ServerEndpoint::new(config, Box::new(StdRng::seed_from_u64(0)), Duration::ZERO)
    else {
        return;
    };
    let mut rest = data;
    let mut now = Duration::ZERO;
    while let [address, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        let from = SocketAddr::from(([127, 0, 0, address % 4], 5000));
        server.handle(now, from, datagram);
        now += Duration::from_millis(700);
        server.handle_timeout(now);
        while server.poll_transmit().is_some() {}
        while server.poll_event().is_some() {}
        rest = next;
    }
});
