//! Property tests: the manifest and patch decoders never panic on arbitrary
//! bytes, and a valid manifest round-trips.

use cairn_firmware::delta::apply_patch;
use cairn_firmware::*;
use proptest::prelude::*;

fn keys() -> (SigningKey, TrustedKeys) {
    let key = SigningKey::from_random(Algorithm::Ed25519, &[3; 32]).unwrap();
    let keys = TrustedKeys::new().with(key.public_key());
    (key, keys)
}

fn sample(sequence: u64, size: u64, expires_at: Option<u64>) -> Manifest {
    Manifest {
        vendor: "v".into(),
        class: "c".into(),
        sequence,
        image_digest: sha256(&sequence.to_be_bytes()),
        image_size: size,
        payload: Payload::Full,
        expires_at,
        min_hardware_version: None,
        min_bootloader_version: Some(1),
    }
}

proptest! {
    #[test]
    fn manifest_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (_, keys) = keys();
        let _ = verify_manifest(&bytes, &keys);
        let _ = Manifest::from_payload(&bytes);
    }

    #[test]
    fn mutated_manifests_never_panic_and_never_verify(
        sequence in any::<u64>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let (key, keys) = keys();
        let mut signed = sign_manifest(&sample(sequence, 10, None), &key);
        let original = signed.clone();
        for (at, byte) in edits {
            let at = at % signed.len();
            signed[at] = byte;
        }
        let verdict = verify_manifest(&signed, &keys);
        if signed != original {
            prop_assert!(verdict.is_err());
        }
    }

    #[test]
    fn manifests_round_trip(sequence in any::<u64>(), size in any::<u64>(), expires in proptest::option::of(any::<u64>())) {
        let (key, keys) = keys();
        let manifest = sample(sequence, size, expires);
        prop_assert_eq!(verify_manifest(&sign_manifest(&manifest, &key), &keys), Ok(manifest));
    }

    #[test]
    fn patch_decoder_never_panics(
        old in proptest::collection::vec(any::<u8>(), 0..256),
        mut patch in proptest::collection::vec(any::<u8>(), 0..400),
        magic in any::<bool>(),
    ) {
        if magic && patch.len() >= 8 {
            patch[..8].copy_from_slice(b"BSDIFF40");
        }
        let _ = apply_patch(&old, &patch, 4096);
    }
}
