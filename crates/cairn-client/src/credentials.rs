//! The device's credentials and their protected storage.
//!
//! [`DeviceState`] is what a Bootstrap-Server configures (OMA LwM2M Core 1.2 §6.1): the
//! Security (0), Server (1), Access Control (2) and OSCORE (21) object instances, with the
//! endpoint name. It is persisted as a whole through a [`CredentialVault`], the boundary a
//! secure element or a TPM implements on a real device; [`FileVault`] is its file-based stand-in:
//! the state encrypted with AES-256-GCM under a device key kept in a separate file (mode 0600),
//! written atomically (temporary file, `fsync`, rename, `fsync` of the directory) so that a power
//! cut leaves either the old or the new state, never a torn one. Secrets are wiped from memory
//! when dropped and never appear in `Debug`.
//!
//! The persisted form is `CDS1`, the endpoint name, then each object as (object id, length, TLV)
//! (Core §7.4.3), so nothing but the LwM2M codecs reads it back.

use std::collections::BTreeMap;
use std::fmt;

use cairn_coap::ContentFormat;
use cairn_lwm2m::node::{
    LwM2mNode, LwM2mObject, LwM2mObjectInstance, LwM2mResource, ResourceValue,
};
use cairn_lwm2m::{LwM2mPath, ModelLookup, Value};
use zeroize::{Zeroize, Zeroizing};

/// The objects a Bootstrap-Server manages.
pub const BOOTSTRAP_OBJECTS: [u16; 4] = [0, 1, 2, 21];

const MAGIC: &[u8; 4] = b"CDS1";
/// The largest persisted state read back.
pub const MAX_STATE_LEN: usize = 64 * 1024;

/// Why credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The persisted state is not one this build wrote.
    #[error("stored credentials are malformed: {0}")]
    Malformed(&'static str),
    /// The persisted state did not authenticate under the device key.
    #[error("stored credentials do not authenticate under the device key")]
    Tampered,
    /// The vault's storage failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The random number generator failed.
    #[error("random number generator: {0}")]
    Random(String),
}

/// One account of the Security object.
#[derive(Clone)]
pub struct Account {
    /// The Security instance.
    pub instance: u16,
    /// The server URI (`coaps://host:port`).
    pub uri: String,
    /// Whether this is the Bootstrap-Server account.
    pub bootstrap_server: bool,
    /// Security Mode (0 PSK, 3 NoSec).
    pub mode: i64,
    /// PSK identity.
    pub identity: Vec<u8>,
    /// PSK, or the PKCS#8 private key in the certificate modes (Secret Key, resource 5).
    pub key: Zeroizing<Vec<u8>>,
    /// The server's public key (RPK mode) or trust anchor (X.509 mode), DER (resource 4).
    pub server_public_key: Vec<u8>,
    /// Short Server ID (device-management accounts).
    pub short_server_id: Option<u16>,
    /// Client Hold Off Time, seconds (resource 11).
    pub hold_off_s: Option<u32>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("uri", &self.uri)
            .field("bootstrap_server", &self.bootstrap_server)
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("short_server_id", &self.short_server_id)
            .finish_non_exhaustive()
    }
}

/// A device-management server account: its Security and Server instances.
#[derive(Clone, Debug)]
pub struct DmAccount {
    /// The security settings.
    pub account: Account,
    /// Short Server ID.
    pub short_server_id: u16,
    /// Lifetime, seconds.
    pub lifetime: u32,
    /// Binding.
    pub binding: String,
}

/// What a Bootstrap-Server configured on a device.
#[derive(Clone, Default, PartialEq)]
pub struct DeviceState {
    /// The endpoint client name.
    pub endpoint: String,
    objects: BTreeMap<u16, BTreeMap<u16, LwM2mObjectInstance>>,
}

impl fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let instances: Vec<String> = self
            .objects
            .iter()
            .flat_map(|(o, instances)| instances.keys().map(move |i| format!("/{o}/{i}")))
            .collect();
        f.debug_struct("DeviceState")
            .field("endpoint", &self.endpoint)
            .field("instances", &instances)
            .finish()
    }
}

impl Drop for DeviceState {
    fn drop(&mut self) {
        for instances in self.objects.values_mut() {
            for instance in instances.values_mut() {
                wipe(instance);
            }
        }
    }
}

/// Zeroizes the opaque and string values of an instance (keys, identities, secrets).
pub(crate) fn wipe(instance: &mut LwM2mObjectInstance) {
    for resource in instance.resources.values_mut() {
        let values: Vec<&mut Value> = match &mut resource.value {
            ResourceValue::Single(value) => vec![value],
            ResourceValue::Multiple(values) => values.values_mut().collect(),
        };
        for value in values {
            match value {
                Value::Opaque(bytes) => bytes.zeroize(),
                Value::String(text) => text.zeroize(),
                _ => {}
            }
        }
    }
}

fn integer(instance: &LwM2mObjectInstance, resource: u16) -> Option<i64> {
    match &instance.resources.get(&resource)?.value {
        ResourceValue::Single(Value::Integer(v)) => Some(*v),
        ResourceValue::Single(Value::UnsignedInteger(v)) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn opaque(instance: &LwM2mObjectInstance, resource: u16) -> Vec<u8> {
    match instance.resources.get(&resource).map(|r| &r.value) {
        Some(ResourceValue::Single(Value::Opaque(bytes))) => bytes.clone(),
        Some(ResourceValue::Single(Value::String(text))) => text.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

fn string(instance: &LwM2mObjectInstance, resource: u16) -> Option<String> {
    match &instance.resources.get(&resource)?.value {
        ResourceValue::Single(Value::String(text)) => Some(text.clone()),
        _ => None,
    }
}

fn boolean(instance: &LwM2mObjectInstance, resource: u16) -> bool {
    matches!(
        instance.resources.get(&resource).map(|r| &r.value),
        Some(ResourceValue::Single(Value::Boolean(true)))
    )
}

/// The Short Server ID of a Server object instance.
pub(crate) fn short_server_id_of(instance: &LwM2mObjectInstance) -> Option<u16> {
    integer(instance, 0).and_then(|v| u16::try_from(v).ok())
}

/// Whether a Security instance is the Bootstrap-Server account.
pub(crate) fn is_bootstrap_account(instance: &LwM2mObjectInstance) -> bool {
    boolean(instance, 1)
}

impl DeviceState {
    /// A device as it leaves the factory: only a Bootstrap-Server account.
    pub fn factory(
        endpoint: impl Into<String>,
        bootstrap_uri: impl Into<String>,
        identity: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> DeviceState {
        let account = LwM2mObjectInstance::new(
            0,
            [
                LwM2mResource::single(0, Value::String(bootstrap_uri.into())),
                LwM2mResource::single(1, Value::Boolean(true)),
                LwM2mResource::single(2, Value::Integer(0)),
                LwM2mResource::single(3, Value::Opaque(identity.into())),
                LwM2mResource::single(5, Value::Opaque(key.into())),
            ],
        );
        let mut state = DeviceState {
            endpoint: endpoint.into(),
            objects: BTreeMap::new(),
        };
        state.put(0, account);
        state
    }

    /// The instances of an object.
    pub fn instances(&self, object: u16) -> impl Iterator<Item = &LwM2mObjectInstance> {
        self.objects
            .get(&object)
            .into_iter()
            .flat_map(|i| i.values())
    }

    /// One instance.
    pub fn instance(&self, object: u16, instance: u16) -> Option<&LwM2mObjectInstance> {
        self.objects.get(&object)?.get(&instance)
    }

    /// Adds or replaces an instance.
    pub(crate) fn put(&mut self, object: u16, instance: LwM2mObjectInstance) {
        if let Some(mut previous) = self
            .objects
            .entry(object)
            .or_default()
            .insert(instance.id, instance)
        {
            wipe(&mut previous);
        }
    }

    /// Removes an instance; whether it existed.
    pub(crate) fn remove(&mut self, object: u16, instance: u16) -> bool {
        match self
            .objects
            .get_mut(&object)
            .and_then(|i| i.remove(&instance))
        {
            Some(mut removed) => {
                wipe(&mut removed);
                true
            }
            None => false,
        }
    }

    /// The instance ids of an object.
    pub fn instance_ids(&self, object: u16) -> Vec<u16> {
        self.objects
            .get(&object)
            .map(|i| i.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The account a Security instance describes.
    pub fn account_of(instance: &LwM2mObjectInstance) -> Account {
        Account {
            instance: instance.id,
            uri: string(instance, 0).unwrap_or_default(),
            bootstrap_server: is_bootstrap_account(instance),
            mode: integer(instance, 2).unwrap_or(3),
            identity: opaque(instance, 3),
            key: Zeroizing::new(opaque(instance, 5)),
            server_public_key: opaque(instance, 4),
            short_server_id: integer(instance, 10).and_then(|v| u16::try_from(v).ok()),
            hold_off_s: integer(instance, 11).and_then(|v| u32::try_from(v).ok()),
        }
    }

    /// The Bootstrap-Server account.
    pub fn bootstrap_account(&self) -> Option<Account> {
        self.instances(0)
            .find(|i| is_bootstrap_account(i))
            .map(Self::account_of)
    }

    /// The device-management accounts: Security instances paired with the Server instance of
    /// the same Short Server ID.
    pub fn dm_accounts(&self) -> Vec<DmAccount> {
        self.instances(0)
            .filter(|i| !is_bootstrap_account(i))
            .filter_map(|security| {
                let account = Self::account_of(security);
                let short_server_id = account.short_server_id?;
                let server = self.instances(1).find(|s| {
                    integer(s, 0).and_then(|v| u16::try_from(v).ok()) == Some(short_server_id)
                })?;
                Some(DmAccount {
                    lifetime: integer(server, 1)
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(86_400),
                    binding: string(server, 7).unwrap_or_else(|| "U".into()),
                    short_server_id,
                    account,
                })
            })
            .collect()
    }

    /// The persisted form (secret: wipe it after use).
    pub fn encode(&self, models: &dyn ModelLookup) -> Result<Zeroizing<Vec<u8>>, CredentialError> {
        let mut out = Zeroizing::new(MAGIC.to_vec());
        let endpoint = self.endpoint.as_bytes();
        let length =
            u16::try_from(endpoint.len()).map_err(|_| CredentialError::Malformed("endpoint"))?;
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(endpoint);
        for (object, instances) in &self.objects {
            if instances.is_empty() {
                continue;
            }
            let node = LwM2mNode::Object(LwM2mObject::new(*object, instances.values().cloned()));
            let mut node = node;
            let encoded = cairn_lwm2m::encode(
                &node,
                &LwM2mPath::Object(*object),
                ContentFormat::LWM2M_TLV,
                models,
            );
            if let LwM2mNode::Object(object) = &mut node {
                object.instances.values_mut().for_each(wipe);
            }
            let bytes = Zeroizing::new(encoded.map_err(|_| CredentialError::Malformed("object"))?);
            let length =
                u32::try_from(bytes.len()).map_err(|_| CredentialError::Malformed("object"))?;
            out.extend_from_slice(&object.to_be_bytes());
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        if out.len() > MAX_STATE_LEN {
            return Err(CredentialError::Malformed("state too large"));
        }
        Ok(out)
    }

    /// Reads the persisted form back.
    pub fn decode(bytes: &[u8], models: &dyn ModelLookup) -> Result<DeviceState, CredentialError> {
        if bytes.len() > MAX_STATE_LEN {
            return Err(CredentialError::Malformed("state too large"));
        }
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(CredentialError::Malformed("not a device state"))?;
        let (length, rest) = split(rest, 2)?;
        let (endpoint, mut rest) = split(
            rest,
            usize::from(u16::from_be_bytes([length[0], length[1]])),
        )?;
        let endpoint = std::str::from_utf8(endpoint)
            .map_err(|_| CredentialError::Malformed("endpoint"))?
            .to_owned();
        let mut state = DeviceState {
            endpoint,
            objects: BTreeMap::new(),
        };
        while !rest.is_empty() {
            let (object, after) = split(rest, 2)?;
            let object = u16::from_be_bytes([object[0], object[1]]);
            let (length, after) = split(after, 4)?;
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            let (tlv, after) = split(after, length as usize)?;
            rest = after;
            if !BOOTSTRAP_OBJECTS.contains(&object) {
                return Err(CredentialError::Malformed("object id"));
            }
            let node = cairn_lwm2m::decode(
                tlv,
                ContentFormat::LWM2M_TLV,
                &LwM2mPath::Object(object),
                models,
            )
            .map_err(|_| CredentialError::Malformed("object"))?;
            let LwM2mNode::Object(mut decoded) = node else {
                return Err(CredentialError::Malformed("object"));
            };
            for instance in std::mem::take(&mut decoded.instances).into_values() {
                state.put(object, instance);
            }
        }
        Ok(state)
    }
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), CredentialError> {
    if bytes.len() < at {
        return Err(CredentialError::Malformed("truncated"));
    }
    Ok(bytes.split_at(at))
}

/// Where a device keeps its credentials: a secure element, a TPM, or [`FileVault`]. The vault
/// seals what it stores; `store` replaces the previous content atomically.
pub trait CredentialVault: Send + Sync {
    /// The stored plaintext, if any.
    fn load(&self) -> Result<Option<Zeroizing<Vec<u8>>>, CredentialError>;
    /// Replaces the stored plaintext, atomically and durably.
    fn store(&self, plaintext: &[u8]) -> Result<(), CredentialError>;
    /// Whether [`CredentialVault::store`] may block (file or device I/O): it then runs off the
    /// async runtime's threads. A vault in memory answers `false` and is written in place.
    fn blocks(&self) -> bool {
        true
    }
}

/// A vault in memory (simulated devices, tests).
#[derive(Default)]
pub struct MemoryVault(std::sync::Mutex<Option<Zeroizing<Vec<u8>>>>);

impl CredentialVault for MemoryVault {
    fn load(&self) -> Result<Option<Zeroizing<Vec<u8>>>, CredentialError> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn store(&self, plaintext: &[u8]) -> Result<(), CredentialError> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Zeroizing::new(plaintext.to_vec()));
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }
}

pub use file_vault::FileVault;

mod file_vault {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};
    use zeroize::Zeroizing;

    use super::{CredentialError, CredentialVault};

    /// The device key's file name.
    pub const KEY_FILE: &str = "device.key";
    /// The sealed credentials' file name.
    pub const CREDENTIALS_FILE: &str = "credentials.sealed";
    const HEADER: &[u8; 5] = b"CVLT1";
    const NONCE_LEN: usize = 12;

    /// Credentials sealed with AES-256-GCM in `credentials.sealed`, under the device key in
    /// `device.key` (32 random bytes, mode 0600; on a real device that key stays in a secure
    /// element, which implements [`CredentialVault`] itself).
    pub struct FileVault {
        dir: PathBuf,
        cipher: Box<Aes256Gcm>,
    }

    impl std::fmt::Debug for FileVault {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FileVault")
                .field("dir", &self.dir)
                .finish_non_exhaustive()
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError + '_ {
        move |source| CredentialError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn sync_dir(dir: &Path) -> Result<(), CredentialError> {
        #[cfg(unix)]
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }

    /// Writes `bytes` to `path` atomically: a temporary file, `fsync`, rename, `fsync` of the
    /// directory.
    fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CredentialError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let temporary = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(io(&temporary))?;
        file.write_all(bytes).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(io(path))?;
        sync_dir(dir)
    }

    impl FileVault {
        /// Opens the vault in `dir`, creating the directory and the device key when absent.
        /// A missing key beside existing credentials is an error (they could not be opened).
        pub fn open(dir: impl AsRef<Path>) -> Result<FileVault, CredentialError> {
            let dir = dir.as_ref().to_owned();
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let key_path = dir.join(KEY_FILE);
            let key = match std::fs::read(&key_path) {
                Ok(bytes) => Zeroizing::new(bytes),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    if dir.join(CREDENTIALS_FILE).exists() {
                        return Err(CredentialError::Malformed(
                            "credentials exist but the device key is missing",
                        ));
                    }
                    let mut key = Zeroizing::new(vec![0u8; 32]);
                    getrandom::fill(&mut key)
                        .map_err(|e| CredentialError::Random(e.to_string()))?;
                    write_atomically(&key_path, &key)?;
                    key
                }
                Err(error) => return Err(io(&key_path)(error)),
            };
            if key.len() != 32 {
                return Err(CredentialError::Malformed("the device key is not 32 bytes"));
            }
            let cipher = Box::new(
                Aes256Gcm::new_from_slice(&key)
                    .map_err(|_| CredentialError::Malformed("device key"))?,
            );
            Ok(FileVault { dir, cipher })
        }

        /// The directory.
        pub fn dir(&self) -> &Path {
            &self.dir
        }
    }

    impl CredentialVault for FileVault {
        fn load(&self) -> Result<Option<Zeroizing<Vec<u8>>>, CredentialError> {
            let path = self.dir.join(CREDENTIALS_FILE);
            let sealed = match std::fs::read(&path) {
                Ok(sealed) => sealed,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(io(&path)(error)),
            };
            if sealed.len() > super::MAX_STATE_LEN + 64 {
                return Err(CredentialError::Malformed("credentials file too large"));
            }
            let body = sealed
                .strip_prefix(HEADER.as_slice())
                .ok_or(CredentialError::Malformed("not a credentials file"))?;
            if body.len() < NONCE_LEN {
                return Err(CredentialError::Malformed("truncated"));
            }
            let (nonce, ciphertext) = body.split_at(NONCE_LEN);
            let plaintext = self
                .cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: HEADER,
                    },
                )
                .map_err(|_| CredentialError::Tampered)?;
            Ok(Some(Zeroizing::new(plaintext)))
        }

        fn store(&self, plaintext: &[u8]) -> Result<(), CredentialError> {
            let mut nonce = [0u8; NONCE_LEN];
            getrandom::fill(&mut nonce).map_err(|e| CredentialError::Random(e.to_string()))?;
            let ciphertext = self
                .cipher
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: plaintext,
                        aad: HEADER,
                    },
                )
                .map_err(|_| CredentialError::Malformed("too large to seal"))?;
            let mut sealed = HEADER.to_vec();
            sealed.extend_from_slice(&nonce);
            sealed.extend_from_slice(&ciphertext);
            write_atomically(&self.dir.join(CREDENTIALS_FILE), &sealed)
        }
    }
}

/// Loads the state from a vault.
pub fn load_state(
    vault: &dyn CredentialVault,
    models: &dyn ModelLookup,
) -> Result<Option<DeviceState>, CredentialError> {
    match vault.load()? {
        Some(plaintext) => Ok(Some(DeviceState::decode(&plaintext, models)?)),
        None => Ok(None),
    }
}

/// Stores the state in a vault.
pub fn store_state(
    vault: &dyn CredentialVault,
    state: &DeviceState,
    models: &dyn ModelLookup,
) -> Result<(), CredentialError> {
    vault.store(&state.encode(models)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_lwm2m::ModelRegistry;

    fn state() -> DeviceState {
        let mut state = DeviceState::factory(
            "dev-1",
            "coaps://bs:5784",
            "factory-id",
            b"factory-key-0123".to_vec(),
        );
        state.put(
            0,
            LwM2mObjectInstance::new(
                1,
                [
                    LwM2mResource::single(0, Value::String("coaps://dm:5684".into())),
                    LwM2mResource::single(1, Value::Boolean(false)),
                    LwM2mResource::single(2, Value::Integer(0)),
                    LwM2mResource::single(3, Value::Opaque(b"dm-id".to_vec())),
                    LwM2mResource::single(5, Value::Opaque(b"dm-key-0123456789".to_vec())),
                    LwM2mResource::single(10, Value::Integer(101)),
                ],
            ),
        );
        state.put(
            1,
            LwM2mObjectInstance::new(
                1,
                [
                    LwM2mResource::single(0, Value::Integer(101)),
                    LwM2mResource::single(1, Value::Integer(300)),
                    LwM2mResource::single(6, Value::Boolean(false)),
                    LwM2mResource::single(7, Value::String("U".into())),
                ],
            ),
        );
        state
    }

    #[test]
    fn state_round_trips_and_pairs_accounts() {
        let models = ModelRegistry::with_core_models();
        let state = state();
        let bytes = state.encode(&models).unwrap();
        let decoded = DeviceState::decode(&bytes, &models).unwrap();
        assert_eq!(decoded, state);
        let dm = decoded.dm_accounts();
        assert_eq!(dm.len(), 1);
        assert_eq!((dm[0].short_server_id, dm[0].lifetime), (101, 300));
        assert_eq!(dm[0].account.key.as_slice(), b"dm-key-0123456789");
        assert_eq!(decoded.bootstrap_account().unwrap().identity, b"factory-id");
        let text = format!("{decoded:?} {:?}", dm[0]);
        assert!(!text.contains("dm-key") && !text.contains("factory-key"));
    }

    #[test]
    fn malformed_states_are_errors() {
        let models = ModelRegistry::with_core_models();
        let bytes = state().encode(&models).unwrap();
        for cut in 0..bytes.len() {
            let _ = DeviceState::decode(&bytes[..cut], &models);
        }
        assert!(DeviceState::decode(b"CDS1\x00\x01a\x00\x03\x00\x00\x00\x00", &models).is_err());
        assert!(DeviceState::decode(b"XXXX", &models).is_err());
    }

    #[test]
    fn the_file_vault_seals_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileVault::open(dir.path()).unwrap();
        assert!(vault.load().unwrap().is_none());
        vault.store(b"the-secret-credentials").unwrap();
        let raw = std::fs::read(dir.path().join("credentials.sealed")).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        let reopened = FileVault::open(dir.path()).unwrap();
        assert_eq!(
            reopened.load().unwrap().unwrap().as_slice(),
            b"the-secret-credentials"
        );
        let mut tampered = raw.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        std::fs::write(dir.path().join("credentials.sealed"), &tampered).unwrap();
        assert!(matches!(reopened.load(), Err(CredentialError::Tampered)));
        std::fs::remove_file(dir.path().join("device.key")).unwrap();
        assert!(FileVault::open(dir.path()).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let other = tempfile::tempdir().unwrap();
            FileVault::open(other.path()).unwrap();
            let mode = std::fs::metadata(other.path().join("device.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_write_cut_short_leaves_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileVault::open(dir.path()).unwrap();
        vault.store(b"working credentials").unwrap();
        // Power lost while the next state was being written: only the temporary file is torn.
        std::fs::write(dir.path().join("credentials.tmp"), b"CVLT1 torn").unwrap();
        let reopened = FileVault::open(dir.path()).unwrap();
        assert_eq!(
            reopened.load().unwrap().unwrap().as_slice(),
            b"working credentials"
        );
        reopened.store(b"new credentials").unwrap();
        assert_eq!(
            reopened.load().unwrap().unwrap().as_slice(),
            b"new credentials"
        );
        assert!(!dir.path().join("credentials.tmp").exists());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let models = ModelRegistry::with_core_models();
            let mut input = MAGIC.to_vec();
            input.extend_from_slice(&bytes);
            let _ = DeviceState::decode(&input, &models);
        }
    }
}
