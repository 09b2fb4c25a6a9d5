//! A minimal LwM2M registration endpoint for trying `cairn client` and `cairn fleet`
//! without a full server: it accepts Register (2.01, `rd/<n>`), Update and De-register,
//! and counts registrations. Plain CoAP, or DTLS-PSK with one key shared by every identity.
//!
//! ```text
//! cargo run --release -p cairn-client --example registrar -- 127.0.0.1:5683
//! cargo run --release -p cairn-client --example registrar -- 127.0.0.1:5684 <hex key>
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_coap::Config;
use cairn_dtls::{Psk, PskResolver, ServerConfig};
use cairn_lwm2m::{ClientRequest, CoapRequest, CoapResponse, NoModels, ResponseCode};
use cairn_transport::{CoapEndpoint, Reply, Request, Security};

/// Every identity gets the same key.
struct SharedKey(Vec<u8>);

impl PskResolver for SharedKey {
    fn key(&self, _identity: &[u8]) -> Option<Psk> {
        Some(Psk::new(self.0.clone()))
    }
}

#[derive(Default)]
struct Counters {
    next_id: AtomicU64,
    registered: AtomicU64,
    updated: AtomicU64,
    deregistered: AtomicU64,
}

fn answer(counters: &Counters, request: &Request) -> Reply {
    let operation = CoapRequest::from_message(&request.message)
        .ok()
        .and_then(|coap| ClientRequest::from_coap(&coap, &NoModels).ok());
    let Some(operation) = operation else {
        return Reply::Ready(CoapResponse::new(ResponseCode::NOT_FOUND).to_message());
    };
    let mut response = CoapResponse::new(operation.success_code());
    match operation {
        ClientRequest::Register { .. } => {
            let id = counters.next_id.fetch_add(1, Ordering::Relaxed);
            response.location_path = vec!["rd".into(), id.to_string()];
            counters.registered.fetch_add(1, Ordering::Relaxed);
        }
        ClientRequest::Update { .. } => {
            counters.updated.fetch_add(1, Ordering::Relaxed);
        }
        ClientRequest::Deregister { .. } => {
            counters.deregistered.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    Reply::Ready(response.to_message())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let address: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5683".into())
        .parse()
        .expect("a socket address");
    let security = match args.next() {
        Some(hex) => Security::DtlsServer(ServerConfig::new(Arc::new(SharedKey(
            decode_hex(&hex).expect("the key in hexadecimal"),
        )))),
        None => Security::NoSec,
    };
    let counters = Arc::new(Counters::default());
    let handler_counters = Arc::clone(&counters);
    let handler = move |request: &Request| answer(&handler_counters, request);
    let endpoint = CoapEndpoint::bind_secured(
        address,
        Config::default(),
        security,
        Some(Arc::new(handler)),
    )
    .await
    .expect("bind");
    eprintln!("registrar listening on {}", endpoint.local_addr());
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                eprintln!(
                    "registered {}, updated {}, de-registered {}",
                    counters.registered.load(Ordering::Relaxed),
                    counters.updated.load(Ordering::Relaxed),
                    counters.deregistered.load(Ordering::Relaxed),
                );
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    endpoint.shutdown().await;
}
