//! Fuzz target: the DDF XML object definition parser (OMA LwM2M Core 1.2 Appendix D).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn_lwm2m::ddf::parse_ddf_bytes(data);
});
