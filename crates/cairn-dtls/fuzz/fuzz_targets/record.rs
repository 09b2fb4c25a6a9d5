//! Fuzzes the record parser (RFC 6347 §4.1, RFC 9146 §4) and record opening.
#![no_main]

use cairn_dtls::CipherSuite;
use cairn_dtls::crypto::TrafficKey;
use cairn_dtls::record::{Protection, Records};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cid_len, datagram)) = data.split_first() else {
        return;
    };
    let protection = Protection {
        suite: CipherSuite::PskWithAes128Ccm8,
        key: TrafficKey::new([0; 16], [0; 4]),
    };
    for record in Records::new(datagram, usize::from(cid_len % 33)) {
        let _ = protection.open(&record);
    }
});
