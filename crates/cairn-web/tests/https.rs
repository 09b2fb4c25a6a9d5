//! The web listener over HTTPS (rustls): a real TLS connection to a spawned listener gets the
//! console with HSTS and `Secure` cookies.

mod support;

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn the_console_is_served_over_https_with_hsts_and_secure_cookies() {
    let h = support::harness_with(|c| c.https = true).await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = h.dir.path().join("web.crt");
    let key_path = h.dir.path().join("web.key");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let config = cairn_web::tls::server_config(&cert_path, &key_path).unwrap();
    assert!(cairn_web::tls::server_config(&key_path, &key_path).is_err());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(cairn_web::serve(listener, h.state.clone(), Some(config)));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(certified.cert.der().to_vec()))
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("strict-transport-security: max-age="));
    assert!(answer.contains("set-cookie: cairn_form="));
    assert!(answer.contains("; secure"));
    assert!(answer.contains("sign in"));

    // Plain HTTP on the HTTPS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    plain
        .write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut bytes),
    )
    .await;
    assert!(!String::from_utf8_lossy(&bytes).contains("Sign in"));
    server.abort();
}
