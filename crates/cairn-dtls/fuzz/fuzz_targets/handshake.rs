//! Fuzzes the handshake parsers (RFC 6347 §4.2.2, RFC 5246 §7.4, RFC 8422 §5.4–5.7) and the
//! reassembler, and the certificate-mode inputs: certificate lists, raw public keys and X.509
//! chains handed to the validator.
#![no_main]

use cairn_dtls::codec::Reader;
use cairn_dtls::message::{
    CertificateRequest, ClientHello, DigitallySigned, EcdheServerKeyExchange, Fragment,
    HelloVerifyRequest, ServerHello, parse_certificate, parse_ecdhe_client_key_exchange,
    parse_finished,
};
use cairn_dtls::pki::{PeerRole, PeerVerifier, RawPublicKeys, X509Verifier};
use cairn_dtls::reassembly::{Reassembled, Reassembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ClientHello::parse(data);
    let _ = ServerHello::parse(data);
    let _ = HelloVerifyRequest::parse(data);
    let _ = parse_finished(data);
    let _ = EcdheServerKeyExchange::parse(data);
    let _ = CertificateRequest::parse(data);
    let _ = DigitallySigned::parse_certificate_verify(data);
    let _ = parse_ecdhe_client_key_exchange(data);
    let _ = PeerVerifier::raw_public_keys(std::sync::Arc::new(RawPublicKeys::new()))
        .verify_raw_public_key(data);
    if let Ok(chain) = parse_certificate(data, false, 8) {
        if let Some(root) = chain.last() {
            if let Ok(verifier) = X509Verifier::new(std::slice::from_ref(root)) {
                let _ = verifier.at_time(1_700_000_000).verify(&chain, PeerRole::Client);
            }
        }
    }
    let mut reassembler = Reassembler::new(0, 4096);
    let mut reader = Reader::new(data);
    while let Ok(fragment) = Fragment::parse(&mut reader) {
        if let Reassembled::Complete(message) = reassembler.push(&fragment) {
            let _ = ClientHello::parse(&message.body);
        }
    }
});
