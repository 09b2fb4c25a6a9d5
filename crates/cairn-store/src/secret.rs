//! Secrets at rest: the master key and AES-256-GCM sealing of PSKs and other credentials.
//!
//! A sealed secret is `nonce (12 bytes) || ciphertext || tag (16 bytes)`. The nonce is drawn
//! from the operating system for every encryption; a 96-bit random nonce keeps the collision
//! probability below 2^-32 for 2^32 encryptions under one key, far beyond what a device store
//! writes. The associated data binds the ciphertext to its record (a label and the endpoint
//! name), so a ciphertext copied to another endpoint's record fails to authenticate.
//!
//! The master key comes from `CAIRN_MASTER_KEY` (64 hex digits) or from `master.key` in the data
//! directory, created on first start with mode 0600 from 32 bytes of OS randomness.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{MasterKeyError, StoreError};

/// The environment variable that holds the master key as 64 hexadecimal digits.
pub const MASTER_KEY_ENV: &str = "CAIRN_MASTER_KEY";
/// The master key file's name in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Secret bytes (a PSK, a bootstrap configuration with credentials): wiped from memory when
/// dropped, and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, moved out without a copy; the caller takes over wiping them.
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

/// The 256-bit key that encrypts secrets at rest.
pub struct MasterKey {
    cipher: Box<Aes256Gcm>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            cipher: Box::new(Aes256Gcm::new(bytes.into())),
        }
    }

    /// A key from 64 hexadecimal digits (surrounding whitespace is ignored). `source_name`
    /// names where the text came from, for the error message.
    pub fn from_hex(text: &str, source_name: &str) -> Result<Self, MasterKeyError> {
        let malformed = || MasterKeyError::Malformed {
            source_name: source_name.to_owned(),
        };
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return Err(malformed());
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let high = hex_digit(pair[0]).ok_or_else(malformed)?;
            let low = hex_digit(pair[1]).ok_or_else(malformed)?;
            *byte = high << 4 | low;
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<(Self, Zeroizing<[u8; 32]>), MasterKeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| MasterKeyError::Random(e.to_string()))?;
        Ok((Self::from_bytes(&bytes), bytes))
    }

    /// Seals `plaintext` bound to `context` (the associated data).
    pub(crate) fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| MasterKeyError::Random(e.to_string()))?;
        let payload = Payload {
            msg: plaintext,
            aad: context,
        };
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| StoreError::InvalidInput("secret too large to encrypt"))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens a sealed secret; `None` if it is truncated, tampered with, bound to another context
    /// or sealed under another key.
    pub(crate) fn open(&self, sealed: &[u8], context: &[u8]) -> Option<SecretBytes> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: context,
        };
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()?;
        Some(SecretBytes::new(plaintext))
    }
}

fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Zeroizing::new(String::with_capacity(bytes.len() * 2 + 1));
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Where the master key comes from.
#[derive(Debug)]
pub enum MasterKeySource {
    /// `CAIRN_MASTER_KEY` if set, else `master.key` in the data directory (created when the
    /// database is new).
    EnvironmentOrFile,
    /// A key the caller already holds.
    Key(MasterKey),
}

/// Resolves the master key for the data directory. `env_value` is the value of
/// `CAIRN_MASTER_KEY`; `database_exists` says whether a key file may be created.
pub(crate) fn resolve_master_key(
    data_dir: &Path,
    env_value: Option<&str>,
    database_exists: bool,
) -> Result<MasterKey, StoreError> {
    if let Some(text) = env_value {
        return Ok(MasterKey::from_hex(text, MASTER_KEY_ENV)?);
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            Ok(MasterKey::from_hex(&text, &path.display().to_string())?)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if database_exists {
                return Err(MasterKeyError::Missing {
                    data_dir: data_dir.to_owned(),
                }
                .into());
            }
            create_key_file(&path)
        }
        Err(source) => Err(StoreError::Io { path, source }),
    }
}

fn create_key_file(path: &Path) -> Result<MasterKey, StoreError> {
    let io_error = |source| StoreError::Io {
        path: PathBuf::from(path),
        source,
    };
    let (key, bytes) = MasterKey::generate()?;
    let mut text = hex(bytes.as_ref());
    text.push('\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error)?;
    file.write_all(text.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    text.zeroize();
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(io_error)?;
    }
    Ok(key)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn seal_then_open_round_trips() {
        let key = MasterKey::from_hex(KEY_HEX, "test").unwrap();
        let sealed = key.seal(b"secret", b"ctx").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 6 + TAG_LEN);
        assert_eq!(key.open(&sealed, b"ctx").unwrap().expose(), b"secret");
    }

    #[test]
    fn nonces_differ_per_encryption() {
        let key = MasterKey::from_hex(KEY_HEX, "test").unwrap();
        let a = key.seal(b"secret", b"ctx").unwrap();
        let b = key.seal(b"secret", b"ctx").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn open_rejects_other_context_key_and_tampering() {
        let key = MasterKey::from_hex(KEY_HEX, "test").unwrap();
        let sealed = key.seal(b"secret", b"endpoint-a").unwrap();
        assert!(key.open(&sealed, b"endpoint-b").is_none());
        let (other, _) = MasterKey::generate().unwrap();
        assert!(other.open(&sealed, b"endpoint-a").is_none());
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert!(key.open(&tampered, b"endpoint-a").is_none());
        assert!(
            key.open(&sealed[..NONCE_LEN + TAG_LEN - 1], b"endpoint-a")
                .is_none()
        );
    }

    #[test]
    fn hex_parsing_rejects_bad_text() {
        assert!(MasterKey::from_hex(&KEY_HEX[..62], "test").is_err());
        assert!(MasterKey::from_hex(&KEY_HEX.replace('0', "g"), "test").is_err());
        assert!(MasterKey::from_hex(&format!(" {KEY_HEX}\n"), "test").is_ok());
        assert_eq!(hex(&[0x00, 0xab, 0xff]).as_str(), "00abff");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let secret = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "SecretBytes(7 bytes, redacted)");
        let key = MasterKey::from_hex(KEY_HEX, "test").unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey(redacted)");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_created_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = resolve_master_key(dir.path(), None, false).unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = resolve_master_key(dir.path(), None, true).unwrap();
        let sealed = first.seal(b"x", b"").unwrap();
        assert!(second.open(&sealed, b"").is_some());
    }

    #[test]
    fn missing_key_for_existing_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = resolve_master_key(dir.path(), None, true).unwrap_err();
        assert!(matches!(
            error,
            StoreError::MasterKey(MasterKeyError::Missing { .. })
        ));
    }

    #[test]
    fn environment_key_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let from_env = resolve_master_key(dir.path(), Some(KEY_HEX), true).unwrap();
        let direct = MasterKey::from_hex(KEY_HEX, "test").unwrap();
        let sealed = direct.seal(b"x", b"").unwrap();
        assert!(from_env.open(&sealed, b"").is_some());
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
    }
}
