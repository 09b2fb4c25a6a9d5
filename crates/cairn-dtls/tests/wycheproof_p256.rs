//! ECDSA P-256/SHA-256 verification and ECDH P-256 known answers from Wycheproof, run through
//! the engine's crypto path: `crypto::verify_p256_sha256` (ServerKeyExchange, CertificateVerify
//! and certificate signatures) and `crypto::p256_shared_secret` with the point parsing of
//! ClientKeyExchange (uncompressed points only; invalid-curve points refused).

use cairn_dtls::crypto::{p256_shared_secret, verify_p256_sha256};
use wycheproof::TestResult;

#[test]
fn wycheproof_ecdsa_p256_sha256_verify() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256).expect("Wycheproof ECDSA set");
    let mut checked = 0;
    for group in set.test_groups {
        let point = group.key.key.to_vec();
        for test in group.tests {
            let verified = verify_p256_sha256(&point, &test.msg, &test.sig).is_ok();
            match test.result {
                TestResult::Valid => assert!(verified, "valid test {} refused", test.tc_id),
                TestResult::Invalid => assert!(!verified, "invalid test {} accepted", test.tc_id),
                TestResult::Acceptable => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 400, "only {checked} vectors");
}

#[test]
fn wycheproof_ecdh_p256_ecpoint() {
    use wycheproof::ecdh::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdhSecp256r1Ecpoint).expect("Wycheproof ECDH set");
    let mut checked = [0usize; 2];
    for group in set.test_groups {
        for test in group.tests {
            // Private keys are big-endian integers, sometimes with a leading zero byte.
            let private = test.private_key.to_vec();
            let start = private.len().saturating_sub(32);
            let mut scalar = [0u8; 32];
            scalar[32 - (private.len() - start)..].copy_from_slice(&private[start..]);
            let Ok(private) = p256::SecretKey::from_slice(&scalar) else {
                continue;
            };
            let shared = p256_shared_secret(&private, &test.public_key);
            let compressed = test.public_key.first().is_some_and(|tag| *tag != 4);
            match (test.result, shared) {
                (TestResult::Valid, Ok(shared)) => {
                    assert_eq!(shared.as_slice(), &test.shared_secret[..], "{}", test.tc_id);
                    checked[0] += 1;
                }
                // Only uncompressed points are offered and accepted (RFC 8422 §5.1.2).
                (TestResult::Valid | TestResult::Acceptable, Err(_)) if compressed => {}
                (TestResult::Valid, Err(error)) => {
                    panic!("valid test {} refused: {error}", test.tc_id)
                }
                (TestResult::Invalid, Ok(_)) => panic!("invalid test {} accepted", test.tc_id),
                (TestResult::Invalid, Err(_)) => checked[1] += 1,
                (TestResult::Acceptable, _) => {}
            }
        }
    }
    assert!(checked[0] > 10 && checked[1] > 10, "{checked:?}");
}
