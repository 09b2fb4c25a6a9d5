//! Signed manifests from arbitrary bytes: decoding never panics, and a
//! manifest that verifies re-encodes to a payload that parses the same.
#![no_main]

use cairn_firmware::{Algorithm, Manifest, SigningKey, TrustedKeys, verify_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_random(Algorithm::Ed25519, &[1; 32]).expect("fixed key");
    let keys = TrustedKeys::new().with(key.public_key());
    if let Ok(manifest) = verify_manifest(data, &keys) {
        assert_eq!(Manifest::from_payload(&manifest.to_payload()), Ok(manifest));
    }
    if let Ok(manifest) = Manifest::from_payload(data) {
        assert_eq!(Manifest::from_payload(&manifest.to_payload()), Ok(manifest));
    }
});
