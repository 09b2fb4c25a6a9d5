//! An observation through the transport over loopback: notifications arrive as a stream,
//! what an idle one holds stays small, and cancelling deregisters on the peer.
//!
//! `cargo test -p cairn-transport --test observation -- --nocapture` prints the figures.

use std::sync::Arc;
use std::time::Duration;

use cairn_coap::{Code, Config, Message, OptionNumber};
use cairn_transport::{CoapEndpoint, Reply, Request};

fn battery(level: u8) -> Message {
    let mut message = Message::response(Code::CONTENT);
    message.payload = vec![level];
    message
}

async fn device() -> CoapEndpoint {
    let handler = Arc::new(|request: &Request| -> Reply {
        assert_eq!(request.message.uri_path(), "/3/0/9");
        Reply::Ready(battery(97))
    });
    CoapEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        Some(handler),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_observation_streams_notifications_and_an_idle_one_is_small() {
    let device = device().await;
    let server = CoapEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default(), None)
        .await
        .unwrap();
    let mut request = Message::request(Code::GET);
    request.set_uri_path("/3/0/9");
    let (first, mut observation) = server.observe(device.local_addr(), request).await.unwrap();
    assert_eq!(first.payload, vec![97]);
    assert!(first.options.get(OptionNumber::OBSERVE).is_some());

    let memory = observation.memory().await.unwrap();
    println!(
        "idle observation: CoAP endpoint {} B, transport {} B, mailbox {} B, total {} B",
        memory.coap,
        memory.transport,
        memory.sink,
        memory.total()
    );
    // Before the compact records: 189 (CoAP) + 33 (sink map entry) + 96 (mailbox).
    assert!(memory.coap <= 80, "{memory:?}");
    assert!(memory.transport <= 24, "{memory:?}");
    assert!(memory.sink <= 56, "{memory:?}");

    for level in [80, 75] {
        assert_eq!(device.notify("/3/0/9", battery(level)).await.unwrap(), 1);
        let notification = tokio::time::timeout(Duration::from_secs(5), observation.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(notification.payload, vec![level]);
    }
    assert_eq!(observation.memory().await, Some(memory), "idle again");

    observation.cancel().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while device.notify("/3/0/9", battery(1)).await.unwrap() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still observed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    device.shutdown().await;
}
