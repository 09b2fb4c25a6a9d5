//! AES-128-CCM and AES-128-CCM-8 known answers from Wycheproof, run through the engine's AEAD
//! wrapper (`crypto::aead_seal` / `crypto::aead_open`) with the 12-byte nonce DTLS uses
//! (RFC 6655 §3).

use cairn_dtls::CipherSuite;
use cairn_dtls::crypto::{aead_open, aead_seal};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

#[test]
fn wycheproof_aes_128_ccm_and_ccm8() {
    let set = TestSet::load(TestName::AesCcm).expect("Wycheproof AES-CCM set");
    let mut checked = [0usize; 2];
    for group in set.test_groups {
        if group.key_size != 128 || group.nonce_size != 96 {
            continue;
        }
        let (suite, slot) = match group.tag_size {
            64 => (CipherSuite::PskWithAes128Ccm8, 0),
            128 => (CipherSuite::PskWithAes128Ccm, 1),
            _ => continue,
        };
        for test in group.tests {
            let key: [u8; 16] = test.key.as_slice().try_into().unwrap();
            let nonce: [u8; 12] = test.nonce.as_slice().try_into().unwrap();
            let mut sealed = test.pt.to_vec();
            let mut expected = test.ct.to_vec();
            expected.extend_from_slice(&test.tag);
            let mut opened = expected.clone();
            let open_result = aead_open(suite, &key, &nonce, &test.aad, &mut opened);
            match test.result {
                TestResult::Valid => {
                    aead_seal(suite, &key, &nonce, &test.aad, &mut sealed).unwrap();
                    assert_eq!(sealed, expected, "seal, test {}", test.tc_id);
                    assert!(open_result.is_ok(), "open, test {}", test.tc_id);
                    assert_eq!(opened, test.pt.to_vec(), "plaintext, test {}", test.tc_id);
                }
                TestResult::Invalid => {
                    assert!(
                        open_result.is_err(),
                        "invalid accepted, test {}",
                        test.tc_id
                    )
                }
                TestResult::Acceptable => {}
            }
            checked[slot] += 1;
        }
    }
    assert!(checked[0] >= 5, "CCM-8 vectors checked: {}", checked[0]);
    assert!(checked[1] > 10, "CCM vectors checked: {}", checked[1]);
}
