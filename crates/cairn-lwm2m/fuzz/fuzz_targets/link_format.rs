//! Fuzz target: the RFC 6690 link-format parser; whatever parses must emit and parse back
//! to the same links.
#![no_main]

use cairn_coap::link_format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(links) = link_format::parse_bytes(data) {
        let emitted = link_format::emit(&links);
        assert_eq!(link_format::parse(&emitted).ok(), Some(links));
    }
});
