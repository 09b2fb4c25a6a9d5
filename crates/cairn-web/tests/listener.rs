//! The plain-HTTP web listener holds against slow and greedy clients: a request head that
//! never ends is cut after the header timeout, and one address cannot hold more than its
//! share of connections.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get_health(address: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /login HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the listener answers")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads until the server closes; how long that took (or `None` if it did not within `limit`).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut() {
    let h = support::harness_with(|c| c.header_read_timeout = Duration::from_millis(500)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(cairn_web::serve(listener, h.state.clone(), None));

    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /login HTTP/1.1\r\nhost: loc")
        .await
        .unwrap();
    let closed = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "a never-ending request head held the connection"
    );
    // An idle connection that never sends a byte is cut too.
    let mut idle = TcpStream::connect(address).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some()
    );
    // Others are served throughout.
    assert!(get_health(address).await.starts_with("HTTP/1.1 200"));
    server.abort();
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let h = support::harness_with(|c| {
        c.max_connections_per_address = 8;
        c.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(cairn_web::serve(listener, h.state.clone(), None));

    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(address).await.unwrap());
    }
    // Give the listener time to take them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(address).await.unwrap();
    let closed = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "a ninth connection from the address was kept"
    );
    // Once the address lets go, it is served again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(get_health(address).await.starts_with("HTTP/1.1 200"));
    server.abort();
}
