//! Fuzzes the handshake parsers (RFC 6347 §4.2.2, RFC 5246 §7.4) and the reassembler.
#![no_main]

use cairn_dtls::codec::Reader;
use cairn_dtls::message::{ClientHello, Fragment, HelloVerifyRequest, ServerHello, parse_finished};
use cairn_dtls::reassembly::{Reassembled, Reassembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ClientHello::parse(data);
    let _ = ServerHello::parse(data);
    let _ = HelloVerifyRequest::parse(data);
    let _ = parse_finished(data);
    let mut reassembler = Reassembler::new(0, 4096);
    let mut reader = Reader::new(data);
    while let Ok(fragment) = Fragment::parse(&mut reader) {
        if let Reassembled::Complete(message) = reassembler.push(&fragment) {
            let _ = ClientHello::parse(&message.body);
        }
    }
});
