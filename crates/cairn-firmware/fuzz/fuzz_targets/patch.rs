//! bsdiff patches from arbitrary bytes, applied to a fixed old image: the
//! streaming decoder never panics and never allocates past its bound.
#![no_main]

use cairn_firmware::delta::apply_patch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let old: Vec<u8> = (0..1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let _ = apply_patch(&old, data, 1 << 16);
});
