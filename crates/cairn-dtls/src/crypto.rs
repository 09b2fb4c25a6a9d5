//! Cipher suites, record protection and key derivation.
//!
//! - AES-128-CCM and AES-128-CCM-8 record protection (RFC 6655 §3, RFC 5246 §6.2.3.3): a 12-byte
//!   nonce made of the 4-byte implicit salt and the 8-byte explicit nonce, which in DTLS is the
//!   record's epoch and sequence number.
//! - The TLS 1.2 PRF with P_SHA256 (RFC 5246 §5), the master secret (RFC 5246 §8.1), the
//!   extended master secret (RFC 7627 §4) and the key block (RFC 5246 §6.3).
//! - The PSK premaster secret (RFC 4279 §2).
//! - AES-128-GCM record protection (RFC 5288 §3) with the same nonce layout.
//! - ECDHE on secp256r1 (RFC 8422 §5.10: the premaster secret is the x-coordinate) and
//!   ECDSA/SHA-256 signatures in DER (RFC 8422 §5.4).
//!
//! The primitives come from RustCrypto (`ccm`, `aes`, `aes-gcm`, `hmac`, `sha2`, `p256`), and
//! P-256 from `aws-lc-rs` with the `aws-lc-rs` feature (servers); nothing here implements one.
//! Points are always parsed by [`parse_p256_point`] first, so both backends refuse the same
//! inputs. Secrets are zeroized on drop and never printed by `Debug`.

use aes::Aes128;
use aes_gcm::Aes128Gcm;
use ccm::aead::AeadInPlace;
use ccm::consts::{U8, U12, U16};
use ccm::{Ccm, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Error;

/// Length of the explicit nonce carried in every protected record.
pub const EXPLICIT_NONCE_LEN: usize = 8;
/// Length of the master secret.
pub const MASTER_SECRET_LEN: usize = 48;
/// Length of Finished verify data in TLS 1.2.
pub const VERIFY_DATA_LEN: usize = 12;

/// The cipher suites this engine speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655), mandatory for LwM2M.
    PskWithAes128Ccm8,
    /// TLS_PSK_WITH_AES_128_CCM (RFC 6655).
    PskWithAes128Ccm,
    /// TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (RFC 7251), mandatory for LwM2M certificate modes.
    EcdheEcdsaWithAes128Ccm8,
    /// TLS_ECDHE_ECDSA_WITH_AES_128_CCM (RFC 7251).
    EcdheEcdsaWithAes128Ccm,
    /// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 (RFC 5289).
    EcdheEcdsaWithAes128GcmSha256,
}

impl CipherSuite {
    /// All suites, in the default order of preference.
    pub const ALL: [CipherSuite; 5] = [
        Self::PskWithAes128Ccm8,
        Self::PskWithAes128Ccm,
        Self::EcdheEcdsaWithAes128Ccm8,
        Self::EcdheEcdsaWithAes128Ccm,
        Self::EcdheEcdsaWithAes128GcmSha256,
    ];
    /// The PSK suites, CCM-8 first.
    pub const PSK: [CipherSuite; 2] = [Self::PskWithAes128Ccm8, Self::PskWithAes128Ccm];
    /// The ECDHE-ECDSA suites, CCM-8 first.
    pub const ECDHE_ECDSA: [CipherSuite; 3] = [
        Self::EcdheEcdsaWithAes128Ccm8,
        Self::EcdheEcdsaWithAes128Ccm,
        Self::EcdheEcdsaWithAes128GcmSha256,
    ];

    /// The IANA code point.
    pub fn code(self) -> u16 {
        match self {
            Self::PskWithAes128Ccm8 => 0xC0A8,
            Self::PskWithAes128Ccm => 0xC0A4,
            Self::EcdheEcdsaWithAes128Ccm8 => 0xC0AE,
            Self::EcdheEcdsaWithAes128Ccm => 0xC0AC,
            Self::EcdheEcdsaWithAes128GcmSha256 => 0xC02B,
        }
    }

    /// Whether the key exchange is ECDHE with ECDSA authentication (certificates or raw public
    /// keys) rather than a pre-shared key.
    pub fn is_ecdhe_ecdsa(self) -> bool {
        Self::ECDHE_ECDSA.contains(&self)
    }

    /// The suite with this code point, if this engine speaks it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|suite| suite.code() == code)
    }

    /// Length of the authentication tag.
    pub fn tag_len(self) -> usize {
        match self {
            Self::PskWithAes128Ccm8 | Self::EcdheEcdsaWithAes128Ccm8 => 8,
            Self::PskWithAes128Ccm
            | Self::EcdheEcdsaWithAes128Ccm
            | Self::EcdheEcdsaWithAes128GcmSha256 => 16,
        }
    }

    /// Bytes a protected record adds to its plaintext.
    pub fn overhead(self) -> usize {
        EXPLICIT_NONCE_LEN + self.tag_len()
    }
}

/// One direction's record protection key and implicit nonce salt.
///
/// The AES key schedule is not kept: it is rebuilt for each record so that an idle session holds
/// 20 bytes per direction.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TrafficKey {
    key: [u8; 16],
    salt: [u8; 4],
}

impl core::fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TrafficKey(..)")
    }
}

impl TrafficKey {
    /// A key from its parts.
    pub fn new(key: [u8; 16], salt: [u8; 4]) -> Self {
        Self { key, salt }
    }

    fn nonce(&self, explicit: &[u8; EXPLICIT_NONCE_LEN]) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(explicit);
        nonce
    }

    /// Encrypts `buffer` in place and appends the tag.
    pub fn seal(
        &self,
        suite: CipherSuite,
        explicit: &[u8; EXPLICIT_NONCE_LEN],
        aad: &[u8],
        buffer: &mut Vec<u8>,
    ) -> Result<(), Error> {
        aead_seal(suite, &self.key, &self.nonce(explicit), aad, buffer)
    }

    /// Checks the tag at the end of `buffer`, decrypts in place and removes the tag.
    pub fn open(
        &self,
        suite: CipherSuite,
        explicit: &[u8; EXPLICIT_NONCE_LEN],
        aad: &[u8],
        buffer: &mut Vec<u8>,
    ) -> Result<(), Error> {
        aead_open(suite, &self.key, &self.nonce(explicit), aad, buffer)
    }
}

/// AES-128-CCM or AES-128-GCM encryption with the suite's tag length and a 12-byte nonce;
/// appends the tag.
pub fn aead_seal(
    suite: CipherSuite,
    key: &[u8; 16],
    nonce: &[u8; 12],
    aad: &[u8],
    buffer: &mut Vec<u8>,
) -> Result<(), Error> {
    let nonce = ccm::Nonce::<U12>::from_slice(nonce);
    let sealed = match suite {
        CipherSuite::PskWithAes128Ccm8 | CipherSuite::EcdheEcdsaWithAes128Ccm8 => {
            Ccm::<Aes128, U8, U12>::new(key.into())
                .encrypt_in_place_detached(nonce, aad, buffer)
                .map(|tag| buffer.extend_from_slice(&tag))
        }
        CipherSuite::PskWithAes128Ccm | CipherSuite::EcdheEcdsaWithAes128Ccm => {
            Ccm::<Aes128, U16, U12>::new(key.into())
                .encrypt_in_place_detached(nonce, aad, buffer)
                .map(|tag| buffer.extend_from_slice(&tag))
        }
        CipherSuite::EcdheEcdsaWithAes128GcmSha256 => {
            <Aes128Gcm as aes_gcm::KeyInit>::new(key.into())
                .encrypt_in_place_detached(nonce, aad, buffer)
                .map(|tag| buffer.extend_from_slice(&tag))
        }
    };
    sealed.map_err(|_| Error::RecordOverflow)
}

/// AES-128-CCM or AES-128-GCM decryption; `buffer` holds ciphertext then tag, and holds the plaintext on success.
pub fn aead_open(
    suite: CipherSuite,
    key: &[u8; 16],
    nonce: &[u8; 12],
    aad: &[u8],
    buffer: &mut Vec<u8>,
) -> Result<(), Error> {
    let tag_len = suite.tag_len();
    let Some(body_len) = buffer.len().checked_sub(tag_len) else {
        return Err(Error::BadRecordMac);
    };
    let tag = buffer.split_off(body_len);
    let nonce = ccm::Nonce::<U12>::from_slice(nonce);
    let opened = match suite {
        CipherSuite::PskWithAes128Ccm8 | CipherSuite::EcdheEcdsaWithAes128Ccm8 => {
            Ccm::<Aes128, U8, U12>::new(key.into()).decrypt_in_place_detached(
                nonce,
                aad,
                buffer,
                tag.as_slice().into(),
            )
        }
        CipherSuite::PskWithAes128Ccm | CipherSuite::EcdheEcdsaWithAes128Ccm => {
            Ccm::<Aes128, U16, U12>::new(key.into()).decrypt_in_place_detached(
                nonce,
                aad,
                buffer,
                tag.as_slice().into(),
            )
        }
        CipherSuite::EcdheEcdsaWithAes128GcmSha256 => <Aes128Gcm as aes_gcm::KeyInit>::new(
            key.into(),
        )
        .decrypt_in_place_detached(nonce, aad, buffer, tag.as_slice().into()),
    };
    opened.map_err(|_| {
        buffer.zeroize();
        Error::BadRecordMac
    })
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256 of the concatenated `parts` from a keyed state, which is cloned rather than
/// keyed anew (keying costs two SHA-256 blocks).
fn hmac(keyed: &HmacSha256, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed.clone();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The TLS 1.2 PRF: `P_SHA256(secret, label + seed)` (RFC 5246 §5), filling `out`.
pub fn prf(secret: &[u8], label: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    // HMAC takes keys of any length (RFC 2104 §2), so keying cannot fail.
    let Ok(keyed) = <HmacSha256 as Mac>::new_from_slice(secret) else {
        return;
    };
    let mut label_seed: Vec<&[u8]> = Vec::with_capacity(seed.len() + 1);
    label_seed.push(label);
    label_seed.extend_from_slice(seed);
    let mut a = Zeroizing::new(hmac(&keyed, &label_seed));
    let mut chunks = out.chunks_mut(32).peekable();
    while let Some(chunk) = chunks.next() {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(label_seed.len() + 1);
        parts.push(a.as_slice());
        parts.extend_from_slice(&label_seed);
        let block = Zeroizing::new(hmac(&keyed, &parts));
        chunk.copy_from_slice(&block[..chunk.len()]);
        // A(i + 1) only when another block follows.
        if chunks.peek().is_some() {
            *a = hmac(&keyed, &[a.as_slice()]);
        }
    }
}

/// The 48-byte master secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterSecret([u8; MASTER_SECRET_LEN]);

impl core::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

impl MasterSecret {
    /// Derives the master secret: with `session_hash` the extended master secret of RFC 7627 §4,
    /// without it the classic one of RFC 5246 §8.1.
    pub fn derive(
        premaster: &[u8],
        client_random: &[u8; 32],
        server_random: &[u8; 32],
        session_hash: Option<&[u8; 32]>,
    ) -> Self {
        let mut out = [0u8; MASTER_SECRET_LEN];
        match session_hash {
            Some(hash) => prf(premaster, b"extended master secret", &[hash], &mut out),
            None => prf(
                premaster,
                b"master secret",
                &[client_random, server_random],
                &mut out,
            ),
        }
        Self(out)
    }

    /// Finished verify data over `handshake_hash` (RFC 5246 §7.4.9).
    pub fn verify_data(&self, from_client: bool, handshake_hash: &[u8; 32]) -> [u8; 12] {
        let label: &[u8] = if from_client {
            b"client finished"
        } else {
            b"server finished"
        };
        let mut out = [0u8; VERIFY_DATA_LEN];
        prf(&self.0, label, &[handshake_hash], &mut out);
        out
    }

    /// Expands the key block (RFC 5246 §6.3) into the two directions' keys.
    pub fn key_block(&self, client_random: &[u8; 32], server_random: &[u8; 32]) -> KeyBlock {
        let mut block = Zeroizing::new([0u8; 40]);
        prf(
            &self.0,
            b"key expansion",
            &[server_random, client_random],
            block.as_mut_slice(),
        );
        let part = |range: core::ops::Range<usize>| -> Zeroizing<Vec<u8>> {
            Zeroizing::new(block[range].to_vec())
        };
        let (client_key, server_key) = (part(0..16), part(16..32));
        let (client_salt, server_salt) = (part(32..36), part(36..40));
        KeyBlock {
            client_write: TrafficKey::new(to_array(&client_key), to_array(&client_salt)),
            server_write: TrafficKey::new(to_array(&server_key), to_array(&server_salt)),
        }
    }
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// The keys of both directions.
#[derive(Debug, Clone)]
pub struct KeyBlock {
    /// Protects records from the client.
    pub client_write: TrafficKey,
    /// Protects records from the server.
    pub server_write: TrafficKey,
}

/// A pre-shared key. Zeroized on drop; `Debug` prints only its length.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Psk(Vec<u8>);

impl core::fmt::Debug for Psk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Psk({} bytes)", self.0.len())
    }
}

impl Psk {
    /// Wraps key bytes.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self(key.into())
    }

    /// The PSK premaster secret: `uint16 N, N zero bytes, uint16 N, psk` (RFC 4279 §2).
    pub fn premaster_secret(&self) -> Zeroizing<Vec<u8>> {
        let len = u16::try_from(self.0.len()).unwrap_or(u16::MAX);
        let mut out = Zeroizing::new(Vec::with_capacity(4 + 2 * self.0.len()));
        out.extend_from_slice(&len.to_be_bytes());
        out.resize(2 + usize::from(len), 0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.0[..usize::from(len)]);
        out
    }
}

/// Length of an uncompressed secp256r1 point (RFC 8422 §5.4.1).
pub const P256_POINT_LEN: usize = 65;

/// Parses a peer's secp256r1 point: only the uncompressed form (RFC 8422 §5.1.2) of a point on
/// the curve that is not the identity is accepted, which refuses invalid-curve points.
pub fn parse_p256_point(point: &[u8]) -> Result<p256::PublicKey, Error> {
    if point.len() != P256_POINT_LEN || point[0] != 4 {
        return Err(Error::Invalid {
            what: "ECDH point encoding",
        });
    }
    p256::PublicKey::from_sec1_bytes(point).map_err(|_| Error::Invalid {
        what: "ECDH point not on secp256r1",
    })
}

/// ECDH on secp256r1 with a static or ephemeral private key: the x-coordinate of the shared
/// point (RFC 8422 §5.10).
pub fn p256_shared_secret(
    private: &p256::SecretKey,
    peer_point: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let peer = parse_p256_point(peer_point)?;
    let shared = p256::ecdh::diffie_hellman(private.to_nonzero_scalar(), peer.as_affine());
    Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
}

/// A uniformly random secp256r1 private key: 32 random bytes, drawn again in the negligible
/// case that they are zero or not below the group order.
pub fn random_p256_secret(rng: &mut dyn rand_core::CryptoRng) -> p256::SecretKey {
    loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut_slice());
        if let Ok(key) = p256::SecretKey::from_slice(bytes.as_slice()) {
            return key;
        }
    }
}

/// An ephemeral ECDHE key pair on secp256r1; the private half is zeroized on drop.
pub struct EphemeralKey {
    #[cfg(not(feature = "aws-lc-rs"))]
    private: p256::SecretKey,
    #[cfg(feature = "aws-lc-rs")]
    private: aws_lc_rs::agreement::PrivateKey,
}

impl core::fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("EphemeralKey(..)")
    }
}

impl EphemeralKey {
    /// A fresh key pair.
    #[cfg(not(feature = "aws-lc-rs"))]
    pub fn generate(rng: &mut dyn rand_core::CryptoRng) -> Self {
        Self {
            private: random_p256_secret(rng),
        }
    }

    /// The public point, uncompressed.
    #[cfg(not(feature = "aws-lc-rs"))]
    pub fn public_point(&self) -> Vec<u8> {
        self.private.public_key().to_sec1_bytes().to_vec()
    }

    /// The premaster secret shared with the peer's point.
    #[cfg(not(feature = "aws-lc-rs"))]
    pub fn agree(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        p256_shared_secret(&self.private, peer_point)
    }

    /// A fresh key pair, drawn by `aws-lc-rs` from its own CSPRNG: importing a scalar drawn
    /// from `rng` would cost a second scalar multiplication (aws-lc checks that an imported
    /// private key matches its public key), a third more than the generation itself.
    /// `rng` is used only if aws-lc cannot generate.
    #[cfg(feature = "aws-lc-rs")]
    pub fn generate(rng: &mut dyn rand_core::CryptoRng) -> Self {
        use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
        if let Ok(private) = PrivateKey::generate(&ECDH_P256) {
            return Self { private };
        }
        loop {
            let secret = random_p256_secret(rng);
            let bytes = Zeroizing::new(secret.to_bytes());
            if let Ok(private) = PrivateKey::from_private_key(&ECDH_P256, bytes.as_slice()) {
                return Self { private };
            }
        }
    }

    /// The public point, uncompressed.
    #[cfg(feature = "aws-lc-rs")]
    pub fn public_point(&self) -> Vec<u8> {
        self.private
            .compute_public_key()
            .map(|point| point.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// The premaster secret shared with the peer's point.
    #[cfg(feature = "aws-lc-rs")]
    pub fn agree(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        use aws_lc_rs::agreement::{ECDH_P256, UnparsedPublicKey, agree};
        parse_p256_point(peer_point)?;
        let invalid = Error::Invalid {
            what: "ECDH point not on secp256r1",
        };
        agree(
            &self.private,
            UnparsedPublicKey::new(&ECDH_P256, peer_point),
            invalid,
            |secret| Ok(Zeroizing::new(secret.to_vec())),
        )
    }
}

/// Verifies a DER ECDSA signature over a SHA-256 digest with a secp256r1 public point.
#[cfg(feature = "aws-lc-rs")]
pub fn verify_p256_sha256_prehash(
    public_point: &[u8],
    digest: &[u8; 32],
    der_signature: &[u8],
) -> Result<(), Error> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    let digest = aws_lc_rs::digest::Digest::import_less_safe(digest, &aws_lc_rs::digest::SHA256)
        .map_err(|_| Error::BadSignature)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_point)
        .verify_digest(&digest, der_signature)
        .map_err(|_| Error::BadSignature)
}

/// Verifies a DER ECDSA signature over a SHA-256 digest with a secp256r1 public point.
#[cfg(not(feature = "aws-lc-rs"))]
pub fn verify_p256_sha256_prehash(
    public_point: &[u8],
    digest: &[u8; 32],
    der_signature: &[u8],
) -> Result<(), Error> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_point)
        .map_err(|_| Error::BadSignature)?;
    let signature =
        p256::ecdsa::Signature::from_der(der_signature).map_err(|_| Error::BadSignature)?;
    key.verify_prehash(digest, &signature)
        .map_err(|_| Error::BadSignature)
}

/// Verifies a DER ECDSA/SHA-256 signature over `message` with a secp256r1 public point.
pub fn verify_p256_sha256(
    public_point: &[u8],
    message: &[u8],
    der_signature: &[u8],
) -> Result<(), Error> {
    use sha2::Digest;
    let digest: [u8; 32] = Sha256::digest(message).into();
    verify_p256_sha256_prehash(public_point, &digest, der_signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let clean: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        clean
            .chunks(2)
            .map(|pair| u8::from_str_radix(core::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// The TLS 1.2 PRF (SHA-256) vector published on the IETF TLS list and reproduced by
    /// `openssl kdf TLS1-PRF`.
    #[test]
    fn prf_sha256_known_answer() {
        let secret = hex("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35");
        let seed = hex("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c");
        let expected = hex(
            "e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4
             e6 1e db 5a 6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af 0f a0 22 f7 07 7d ef 17
             ab fd 37 97 c0 56 4b ab 4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba a4 80 82 d1
             22 ee 42 c5 a7 2e 5a 51 10 ff f7 01 87 34 7b 66",
        );
        let mut out = vec![0u8; expected.len()];
        prf(&secret, b"test label", &[&seed], &mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn prf_depends_on_every_input() {
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        prf(b"k", b"label", &[b"seed"], &mut a);
        prf(b"k", b"label", &[b"seee"], &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn psk_premaster_layout() {
        let premaster = Psk::new(vec![0xAA, 0xBB]).premaster_secret();
        assert_eq!(premaster.as_slice(), &[0, 2, 0, 0, 0, 2, 0xAA, 0xBB]);
    }

    #[test]
    fn secrets_do_not_print() {
        let psk = Psk::new(b"supersecret".to_vec());
        assert_eq!(format!("{psk:?}"), "Psk(11 bytes)");
        let master = MasterSecret::derive(&[1, 2, 3], &[0; 32], &[1; 32], None);
        assert_eq!(format!("{master:?}"), "MasterSecret(..)");
        let keys = master.key_block(&[0; 32], &[1; 32]);
        assert!(!format!("{keys:?}").contains(char::is_numeric));
    }

    #[test]
    fn record_protection_round_trip_and_tamper() {
        for suite in CipherSuite::ALL {
            let key = TrafficKey::new([7; 16], [1, 2, 3, 4]);
            let explicit = [0, 1, 0, 0, 0, 0, 0, 9];
            let mut buffer = b"hello".to_vec();
            key.seal(suite, &explicit, b"aad", &mut buffer).unwrap();
            assert_eq!(buffer.len(), 5 + suite.tag_len());
            let mut tampered = buffer.clone();
            tampered[0] ^= 1;
            assert_eq!(
                key.open(suite, &explicit, b"aad", &mut tampered),
                Err(Error::BadRecordMac)
            );
            let mut wrong_aad = buffer.clone();
            assert!(key.open(suite, &explicit, b"aae", &mut wrong_aad).is_err());
            key.open(suite, &explicit, b"aad", &mut buffer).unwrap();
            assert_eq!(buffer, b"hello");
        }
    }

    #[test]
    fn ephemeral_keys_agree_and_refuse_bad_points() {
        let mut rng = rand::rng();
        let (a, b) = (
            EphemeralKey::generate(&mut rng),
            EphemeralKey::generate(&mut rng),
        );
        let shared = a.agree(&b.public_point()).unwrap();
        assert_eq!(
            shared.as_slice(),
            b.agree(&a.public_point()).unwrap().as_slice()
        );
        assert_eq!(shared.len(), 32);
        let mut off_curve = a.public_point();
        off_curve[64] ^= 1;
        assert!(b.agree(&off_curve).is_err());
        assert!(b.agree(&off_curve[..33]).is_err());
        assert_eq!(format!("{a:?}"), "EphemeralKey(..)");
    }

    #[test]
    fn short_ciphertext_is_a_bad_mac() {
        let key = TrafficKey::new([7; 16], [0; 4]);
        let mut buffer = vec![1, 2, 3];
        assert_eq!(
            key.open(CipherSuite::PskWithAes128Ccm, &[0; 8], &[], &mut buffer),
            Err(Error::BadRecordMac)
        );
    }
}
