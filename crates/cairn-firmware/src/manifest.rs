//! Signed firmware manifests: a COSE_Sign1 envelope (RFC 9052 §4.2) around a
//! CBOR map that describes one firmware package.
//!
//! The envelope's protected header carries the algorithm (`EdDSA` with
//! Ed25519, or `ES256` with P-256) and the key id; the key id selects a key in
//! the device's [`TrustedKeys`]. The payload map uses small integer keys:
//!
//! | key | field | type |
//! | --- | --- | --- |
//! | 1 | vendor id | text, ≤ 64 bytes |
//! | 2 | device class id | text, ≤ 64 bytes |
//! | 3 | sequence number (anti-rollback) | uint |
//! | 4 | SHA-256 of the resulting image | bstr(32) |
//! | 5 | size of the resulting image | uint |
//! | 6 | SHA-256 of the precursor image (delta only) | bstr(32) |
//! | 7 | SHA-256 of the delta patch (delta only) | bstr(32) |
//! | 8 | size of the delta patch (delta only) | uint |
//! | 9 | expiry, seconds since the Unix epoch | uint |
//! | 10 | minimum hardware version | uint |
//! | 11 | minimum bootloader version | uint |
//!
//! Decoding is strict: unknown or duplicate keys, wrong types, oversized
//! values and bytes after the envelope are all refused. Verification
//! ([`verify_manifest`]) checks the signature before the payload is parsed;
//! [`Manifest::check_applicable`] then checks the device-specific rules
//! (vendor, class, rollback, expiry, compatibility).

use coset::cbor::value::Value;
use coset::{
    CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana,
};
use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Largest signed manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: usize = 4096;
/// Largest vendor or class id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Length of a key id (the first bytes of the SHA-256 of the public key).
pub const KEY_ID_LEN: usize = 8;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Computes the SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// Why a manifest was refused. Each reason is its own variant; see
/// [`crate::UpdateResult::from`] for the LwM2M Update Result each maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_LEN} accepted")]
    TooLong(usize),
    #[error("manifest envelope is not a COSE_Sign1 structure: {0}")]
    Envelope(String),
    #[error("bytes follow the manifest envelope")]
    TrailingData,
    #[error("manifest algorithm is missing or not supported")]
    UnsupportedAlgorithm,
    #[error("manifest has no key id in its protected header")]
    MissingKeyId,
    #[error("manifest is signed by an unknown key")]
    UnknownKey,
    #[error("manifest signature does not verify")]
    BadSignature,
    #[error("manifest payload is malformed: {0}")]
    Payload(&'static str),
    #[error("manifest is for vendor {found:?}, this device is {expected:?}")]
    WrongVendor { expected: String, found: String },
    #[error("manifest is for device class {found:?}, this device is {expected:?}")]
    WrongClass { expected: String, found: String },
    #[error("manifest sequence number {found} is not above the installed {installed}")]
    Rollback { installed: u64, found: u64 },
    #[error("manifest expired at {expires_at}, it is now {now}")]
    Expired { expires_at: u64, now: u64 },
    #[error("manifest needs hardware version {required}, this device has {actual}")]
    HardwareTooOld { required: u32, actual: u32 },
    #[error("manifest needs bootloader version {required}, this device has {actual}")]
    BootloaderTooOld { required: u32, actual: u32 },
}

/// Signature algorithms a manifest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// EdDSA over Ed25519 (COSE algorithm -8).
    Ed25519,
    /// ECDSA over P-256 with SHA-256 (COSE algorithm -7).
    P256,
}

impl Algorithm {
    fn cose(self) -> iana::Algorithm {
        match self {
            Algorithm::Ed25519 => iana::Algorithm::EdDSA,
            Algorithm::P256 => iana::Algorithm::ES256,
        }
    }

    /// The lowercase name used in key files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::P256 => "p256",
        }
    }

    /// Parses [`Algorithm::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ed25519" => Some(Algorithm::Ed25519),
            "p256" => Some(Algorithm::P256),
            _ => None,
        }
    }
}

/// A public key that may sign manifests.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey({})", self.to_text().trim_end())
    }
}

/// Errors reading a key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key text is not `<alg>:<hex>`")]
    Format,
    #[error("unknown key algorithm")]
    Algorithm,
    #[error("key bytes are not a valid key for the algorithm")]
    Invalid,
}

impl PublicKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Ed25519(_) => Algorithm::Ed25519,
            PublicKey::P256(_) => Algorithm::P256,
        }
    }

    /// The key's encoding: 32 bytes for Ed25519, compressed SEC1 for P-256.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PublicKey::Ed25519(key) => key.to_bytes().to_vec(),
            PublicKey::P256(key) => key.to_sec1_point(true).as_bytes().to_vec(),
        }
    }

    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, KeyError> {
        match algorithm {
            Algorithm::Ed25519 => {
                let bytes: &[u8; 32] = bytes.try_into().map_err(|_| KeyError::Invalid)?;
                ed25519_dalek::VerifyingKey::from_bytes(bytes)
                    .map(PublicKey::Ed25519)
                    .map_err(|_| KeyError::Invalid)
            }
            Algorithm::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(PublicKey::P256)
                .map_err(|_| KeyError::Invalid),
        }
    }

    /// The key id: the first [`KEY_ID_LEN`] bytes of SHA-256 over the
    /// algorithm name, a zero byte and the key's encoding.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        let mut hasher = Sha256::new();
        hasher.update(self.algorithm().name().as_bytes());
        hasher.update([0]);
        hasher.update(self.to_bytes());
        let digest = hasher.finalize();
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        id
    }

    /// `<alg>:<hex>\n`, the public key file format.
    pub fn to_text(&self) -> String {
        format!("{}:{}\n", self.algorithm().name(), to_hex(&self.to_bytes()))
    }

    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let (algorithm, bytes) = parse_key_text(text)?;
        Self::from_bytes(algorithm, &bytes)
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), ManifestError> {
        match self {
            PublicKey::Ed25519(key) => {
                let signature = ed25519_dalek::Signature::try_from(signature)
                    .map_err(|_| ManifestError::BadSignature)?;
                key.verify_strict(message, &signature)
                    .map_err(|_| ManifestError::BadSignature)
            }
            PublicKey::P256(key) => {
                let signature = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| ManifestError::BadSignature)?;
                key.verify(message, &signature)
                    .map_err(|_| ManifestError::BadSignature)
            }
        }
    }
}

/// A private key that signs manifests. Its bytes are zeroized on drop and
/// never printed.
pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "SigningKey({}, public {})",
            self.algorithm().name(),
            to_hex(&self.public_key().key_id())
        )
    }
}

impl SigningKey {
    /// Makes a key from 32 random bytes supplied by the caller (the crate
    /// has no randomness of its own). For P-256 the bytes must be a valid
    /// scalar; [`KeyError::Invalid`] asks the caller for fresh bytes.
    pub fn from_random(algorithm: Algorithm, seed: &[u8; 32]) -> Result<Self, KeyError> {
        Self::from_secret_bytes(algorithm, seed)
    }

    fn from_secret_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, KeyError> {
        match algorithm {
            Algorithm::Ed25519 => {
                let bytes: &[u8; 32] = bytes.try_into().map_err(|_| KeyError::Invalid)?;
                Ok(SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    bytes,
                )))
            }
            Algorithm::P256 => p256::ecdsa::SigningKey::from_slice(bytes)
                .map(SigningKey::P256)
                .map_err(|_| KeyError::Invalid),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Ed25519(_) => Algorithm::Ed25519,
            SigningKey::P256(_) => Algorithm::P256,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::Ed25519(key) => PublicKey::Ed25519(key.verifying_key()),
            SigningKey::P256(key) => PublicKey::P256(*key.verifying_key()),
        }
    }

    /// `<alg>:<hex>\n`, the private key file format (keep it private).
    pub fn to_text(&self) -> Zeroizing<String> {
        let secret: Zeroizing<Vec<u8>> = match self {
            SigningKey::Ed25519(key) => Zeroizing::new(key.to_bytes().to_vec()),
            SigningKey::P256(key) => Zeroizing::new(key.to_bytes().to_vec()),
        };
        Zeroizing::new(format!("{}:{}\n", self.algorithm().name(), to_hex(&secret)))
    }

    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let (algorithm, bytes) = parse_key_text(text)?;
        let bytes = Zeroizing::new(bytes);
        Self::from_secret_bytes(algorithm, &bytes)
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(key) => key.sign(message).to_bytes().to_vec(),
            SigningKey::P256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(message);
                signature.to_bytes().to_vec()
            }
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key_text(text: &str) -> Result<(Algorithm, Vec<u8>), KeyError> {
    let (name, hex) = text.trim().split_once(':').ok_or(KeyError::Format)?;
    let algorithm = Algorithm::from_name(name).ok_or(KeyError::Algorithm)?;
    if hex.len() % 2 != 0 || hex.len() > 256 || !hex.is_ascii() {
        return Err(KeyError::Format);
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| KeyError::Format)?;
    Ok((algorithm, bytes))
}

/// The keys a device trusts to sign manifests, looked up by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<([u8; KEY_ID_LEN], PublicKey)>,
}

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: PublicKey) -> Self {
        self.add(key);
        self
    }

    pub fn add(&mut self, key: PublicKey) {
        let id = key.key_id();
        if !self.keys.iter().any(|(known, _)| *known == id) {
            self.keys.push((id, key));
        }
    }

    fn find(&self, key_id: &[u8]) -> Option<&PublicKey> {
        self.keys
            .iter()
            .find(|(id, _)| id.as_slice() == key_id)
            .map(|(_, key)| key)
    }
}

/// How the package reaches the image: the image itself, or a bsdiff patch
/// against a precursor image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Full,
    Delta {
        precursor_digest: Digest,
        patch_digest: Digest,
        patch_size: u64,
    },
}

/// The description of one firmware package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub vendor: String,
    pub class: String,
    pub sequence: u64,
    pub image_digest: Digest,
    pub image_size: u64,
    pub payload: Payload,
    /// Seconds since the Unix epoch after which the package is refused.
    pub expires_at: Option<u64>,
    pub min_hardware_version: Option<u32>,
    pub min_bootloader_version: Option<u32>,
}

/// What a device knows about itself when it judges a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub vendor: String,
    pub class: String,
    pub hardware_version: u32,
    pub bootloader_version: u32,
}

impl Manifest {
    /// The number of bytes the package transfers: the patch for a delta,
    /// the image otherwise.
    pub fn payload_size(&self) -> u64 {
        match self.payload {
            Payload::Full => self.image_size,
            Payload::Delta { patch_size, .. } => patch_size,
        }
    }

    /// The digest of the bytes the package transfers.
    pub fn payload_digest(&self) -> Digest {
        match self.payload {
            Payload::Full => self.image_digest,
            Payload::Delta { patch_digest, .. } => patch_digest,
        }
    }

    /// The device rules: vendor and class, anti-rollback (the sequence must
    /// be above `installed_sequence`), expiry (when the caller knows the
    /// time, as seconds since the Unix epoch) and minimum versions.
    pub fn check_applicable(
        &self,
        device: &DeviceIdentity,
        installed_sequence: u64,
        now_unix: Option<u64>,
    ) -> Result<(), ManifestError> {
        if self.vendor != device.vendor {
            return Err(ManifestError::WrongVendor {
                expected: device.vendor.clone(),
                found: self.vendor.clone(),
            });
        }
        if self.class != device.class {
            return Err(ManifestError::WrongClass {
                expected: device.class.clone(),
                found: self.class.clone(),
            });
        }
        if self.sequence <= installed_sequence {
            return Err(ManifestError::Rollback {
                installed: installed_sequence,
                found: self.sequence,
            });
        }
        if let (Some(expires_at), Some(now)) = (self.expires_at, now_unix) {
            if now >= expires_at {
                return Err(ManifestError::Expired { expires_at, now });
            }
        }
        if let Some(required) = self.min_hardware_version {
            if device.hardware_version < required {
                return Err(ManifestError::HardwareTooOld {
                    required,
                    actual: device.hardware_version,
                });
            }
        }
        if let Some(required) = self.min_bootloader_version {
            if device.bootloader_version < required {
                return Err(ManifestError::BootloaderTooOld {
                    required,
                    actual: device.bootloader_version,
                });
            }
        }
        Ok(())
    }

    /// Encodes the payload map (unsigned).
    pub fn to_payload(&self) -> Vec<u8> {
        let int = |k: u64| Value::Integer(k.into());
        let mut map = vec![
            (int(1), Value::Text(self.vendor.clone())),
            (int(2), Value::Text(self.class.clone())),
            (int(3), int(self.sequence)),
            (int(4), Value::Bytes(self.image_digest.to_vec())),
            (int(5), int(self.image_size)),
        ];
        if let Payload::Delta {
            precursor_digest,
            patch_digest,
            patch_size,
        } = self.payload
        {
            map.push((int(6), Value::Bytes(precursor_digest.to_vec())));
            map.push((int(7), Value::Bytes(patch_digest.to_vec())));
            map.push((int(8), int(patch_size)));
        }
        if let Some(expires_at) = self.expires_at {
            map.push((int(9), int(expires_at)));
        }
        if let Some(version) = self.min_hardware_version {
            map.push((int(10), int(version.into())));
        }
        if let Some(version) = self.min_bootloader_version {
            map.push((int(11), int(version.into())));
        }
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = coset::cbor::ser::into_writer(&Value::Map(map), &mut out);
        out
    }

    /// Parses a payload map, strictly.
    pub fn from_payload(bytes: &[u8]) -> Result<Self, ManifestError> {
        let value = Value::from_slice(bytes).map_err(|_| ManifestError::Payload("not CBOR"))?;
        let Value::Map(entries) = value else {
            return Err(ManifestError::Payload("not a map"));
        };
        let mut fields: [Option<Value>; 12] = Default::default();
        for (key, value) in entries {
            let key = key
                .as_integer()
                .and_then(|k| u8::try_from(k).ok())
                .filter(|k| (1..=11).contains(k))
                .ok_or(ManifestError::Payload("unknown key"))?;
            let slot = &mut fields[usize::from(key)];
            if slot.is_some() {
                return Err(ManifestError::Payload("duplicate key"));
            }
            *slot = Some(value);
        }
        let mut take = |k: usize| fields[k].take();
        let vendor = text(take(1), "vendor")?;
        let class = text(take(2), "class")?;
        let sequence = uint(take(3), "sequence")?;
        let image_digest = digest(take(4), "image digest")?;
        let image_size = uint(take(5), "image size")?;
        let delta = (take(6), take(7), take(8));
        let payload = match delta {
            (None, None, None) => Payload::Full,
            (Some(precursor), Some(patch), Some(size)) => Payload::Delta {
                precursor_digest: digest(Some(precursor), "precursor digest")?,
                patch_digest: digest(Some(patch), "patch digest")?,
                patch_size: uint(Some(size), "patch size")?,
            },
            _ => return Err(ManifestError::Payload("incomplete delta description")),
        };
        let expires_at = take(9).map(|v| uint(Some(v), "expiry")).transpose()?;
        let min_hardware_version = take(10).map(|v| small(v, "hardware version")).transpose()?;
        let min_bootloader_version = take(11)
            .map(|v| small(v, "bootloader version"))
            .transpose()?;
        Ok(Manifest {
            vendor,
            class,
            sequence,
            image_digest,
            image_size,
            payload,
            expires_at,
            min_hardware_version,
            min_bootloader_version,
        })
    }
}

fn text(value: Option<Value>, what: &'static str) -> Result<String, ManifestError> {
    match value {
        Some(Value::Text(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Ok(s),
        Some(_) => Err(ManifestError::Payload(what)),
        None => Err(ManifestError::Payload("missing field")),
    }
}

fn uint(value: Option<Value>, what: &'static str) -> Result<u64, ManifestError> {
    match value {
        Some(Value::Integer(i)) => u64::try_from(i).map_err(|_| ManifestError::Payload(what)),
        Some(_) => Err(ManifestError::Payload(what)),
        None => Err(ManifestError::Payload("missing field")),
    }
}

fn small(value: Value, what: &'static str) -> Result<u32, ManifestError> {
    u32::try_from(uint(Some(value), what)?).map_err(|_| ManifestError::Payload(what))
}

fn digest(value: Option<Value>, what: &'static str) -> Result<Digest, ManifestError> {
    match value {
        Some(Value::Bytes(b)) => b.try_into().map_err(|_| ManifestError::Payload(what)),
        Some(_) => Err(ManifestError::Payload(what)),
        None => Err(ManifestError::Payload("missing field")),
    }
}

/// Signs `manifest` into a tagged COSE_Sign1 envelope.
pub fn sign_manifest(manifest: &Manifest, key: &SigningKey) -> Vec<u8> {
    let protected = HeaderBuilder::new()
        .algorithm(key.algorithm().cose())
        .key_id(key.public_key().key_id().to_vec())
        .build();
    let envelope = CoseSign1Builder::new()
        .protected(protected)
        .payload(manifest.to_payload())
        .create_signature(&[], |data| key.sign(data))
        .build();
    // Serialising a well-formed structure into memory does not fail.
    envelope.to_tagged_vec().unwrap_or_default()
}

/// Decodes a signed manifest, finds its key among `keys`, checks the
/// signature, and only then parses the payload.
pub fn verify_manifest(bytes: &[u8], keys: &TrustedKeys) -> Result<Manifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_LEN {
        return Err(ManifestError::TooLong(bytes.len()));
    }
    let envelope = CoseSign1::from_tagged_slice(bytes).map_err(|e| match e {
        coset::CoseError::ExtraneousData => ManifestError::TrailingData,
        other => ManifestError::Envelope(other.to_string()),
    })?;
    let header = &envelope.protected.header;
    let algorithm = match header.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA)) => {
            Algorithm::Ed25519
        }
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256)) => {
            Algorithm::P256
        }
        _ => return Err(ManifestError::UnsupportedAlgorithm),
    };
    if header.key_id.is_empty() {
        return Err(ManifestError::MissingKeyId);
    }
    let key = keys.find(&header.key_id).ok_or(ManifestError::UnknownKey)?;
    if key.algorithm() != algorithm {
        return Err(ManifestError::UnsupportedAlgorithm);
    }
    envelope.verify_signature(&[], |signature, data| key.verify(data, signature))?;
    let payload = envelope
        .payload
        .as_deref()
        .ok_or(ManifestError::Payload("detached payload"))?;
    Manifest::from_payload(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            vendor: "acme".into(),
            class: "sensor-v2".into(),
            sequence: 7,
            image_digest: sha256(b"image"),
            image_size: 5,
            payload: Payload::Delta {
                precursor_digest: sha256(b"old"),
                patch_digest: sha256(b"patch"),
                patch_size: 99,
            },
            expires_at: Some(2_000_000_000),
            min_hardware_version: Some(2),
            min_bootloader_version: Some(1),
        }
    }

    fn device() -> DeviceIdentity {
        DeviceIdentity {
            vendor: "acme".into(),
            class: "sensor-v2".into(),
            hardware_version: 3,
            bootloader_version: 1,
        }
    }

    #[test]
    fn round_trips_with_both_algorithms() {
        for algorithm in [Algorithm::Ed25519, Algorithm::P256] {
            let key = SigningKey::from_random(algorithm, &[7; 32]).unwrap();
            let keys = TrustedKeys::new().with(key.public_key());
            let signed = sign_manifest(&sample(), &key);
            assert_eq!(verify_manifest(&signed, &keys).unwrap(), sample());
        }
    }

    #[test]
    fn refuses_unknown_key_and_trailing_data() {
        let key = SigningKey::from_random(Algorithm::Ed25519, &[1; 32]).unwrap();
        let other = SigningKey::from_random(Algorithm::Ed25519, &[2; 32]).unwrap();
        let signed = sign_manifest(&sample(), &key);
        let keys = TrustedKeys::new().with(other.public_key());
        assert_eq!(
            verify_manifest(&signed, &keys),
            Err(ManifestError::UnknownKey)
        );
        let keys = TrustedKeys::new().with(key.public_key());
        let mut longer = signed.clone();
        longer.push(0);
        assert_eq!(
            verify_manifest(&longer, &keys),
            Err(ManifestError::TrailingData)
        );
    }

    #[test]
    fn device_rules() {
        let m = sample();
        assert_eq!(m.check_applicable(&device(), 6, Some(1)), Ok(()));
        assert!(matches!(
            m.check_applicable(&device(), 7, None),
            Err(ManifestError::Rollback { .. })
        ));
        assert!(matches!(
            m.check_applicable(&device(), 0, Some(2_000_000_000)),
            Err(ManifestError::Expired { .. })
        ));
        let mut d = device();
        d.class = "other".into();
        assert!(matches!(
            m.check_applicable(&d, 0, None),
            Err(ManifestError::WrongClass { .. })
        ));
        let mut d = device();
        d.vendor = "other".into();
        assert!(matches!(
            m.check_applicable(&d, 0, None),
            Err(ManifestError::WrongVendor { .. })
        ));
        let mut d = device();
        d.hardware_version = 1;
        assert!(matches!(
            m.check_applicable(&d, 0, None),
            Err(ManifestError::HardwareTooOld { .. })
        ));
        let mut d = device();
        d.bootloader_version = 0;
        assert!(matches!(
            m.check_applicable(&d, 0, None),
            Err(ManifestError::BootloaderTooOld { .. })
        ));
    }

    #[test]
    fn key_text_round_trips() {
        for algorithm in [Algorithm::Ed25519, Algorithm::P256] {
            let key = SigningKey::from_random(algorithm, &[9; 32]).unwrap();
            let again = SigningKey::from_text(&key.to_text()).unwrap();
            assert_eq!(again.public_key(), key.public_key());
            let public = PublicKey::from_text(&key.public_key().to_text()).unwrap();
            assert_eq!(public, key.public_key());
        }
        assert_eq!(PublicKey::from_text("rsa:00"), Err(KeyError::Algorithm));
        assert_eq!(PublicKey::from_text("ed25519:zz"), Err(KeyError::Format));
    }
}
