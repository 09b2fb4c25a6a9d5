//! The embedded store: every table in one `redb` file in the data directory.
//!
//! `redb` is a copy-on-write B-tree with ACID transactions; a commit with
//! [`Durability::Immediate`] is on disk when it returns, so every write that returns `Ok` survives
//! a crash or a `SIGKILL`. Each store operation is one transaction, except the hot writes
//! (registrations, observations, and the Bootstrap-Server's changes to device credentials),
//! which are committed in groups: a writer thread takes
//! every such write queued while it was committing the previous group, runs them in one
//! transaction and answers each once that transaction is on disk (one `fsync` for the group).
//! If one write of a group fails, the group is rolled back and its writes run again one by one,
//! so a failing write never takes others with it.
//!
//! Other writes end in an `fsync` too, so they run on tokio's blocking pool (`spawn_blocking`);
//! a write whose future is dropped after it started still runs to its commit. Reads do
//! not touch the disk's write path: a read transaction is an MVCC snapshot that never waits for a
//! writer, and a lookup is a few B-tree pages already in the page cache. They run inline on the
//! caller's task (when the method is called; the returned future is already complete); `cargo bench -p cairn-store` measures them in microseconds (docs/benchmarks.md),
//! cheaper than the hand-off to another thread would be. The DTLS handshake, whose PSK resolver
//! is synchronous, can call [`EmbeddedStore::psk_key_blocking`] directly.
//!
//! Tables (key → value):
//! - `registrations`: registration id → record; `registration_by_endpoint`: endpoint → id;
//!   `registration_expiry`: (expiry ms, id) → () for the expiry sweep.
//! - `security`: endpoint → record (PSK sealed); `security_by_psk_identity`: identity → endpoint;
//!   `security_by_public_key`: SHA-256 of a raw public key → endpoint.
//! - `observations`: id → record; `observations_by_registration`: registration id ↦ ids.
//! - `bootstrap_configs` (sealed), `firmware_images`, `campaigns`: key → bytes.
//! - `meta`: the master key check value.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, MultimapTableDefinition, ReadTransaction, ReadableTable, TableDefinition,
    WriteTransaction,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{MasterKeyError, StoreError};
use crate::record::{
    self, Observation, Registration, SecurityInfo, SecurityInfoSummary, SecurityMode,
};
use crate::secret::{MASTER_KEY_ENV, MasterKey, MasterKeySource, SecretBytes, resolve_master_key};
use crate::store::{
    BlobKind, BlobStore, Deregistration, ObservationStore, Page, RegistrationStore,
    RegistrationUpdate, SecurityStore, StoreFuture, UpdatedRegistration,
};

/// The database file's name in the data directory.
pub const DATABASE_FILE: &str = "cairn.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
const REGISTRATION_BY_ENDPOINT: TableDefinition<&str, &str> =
    TableDefinition::new("registration_by_endpoint");
const REGISTRATION_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("registration_expiry");
const SECURITY: TableDefinition<&str, &[u8]> = TableDefinition::new("security");
const SECURITY_BY_PSK_IDENTITY: TableDefinition<&[u8], &str> =
    TableDefinition::new("security_by_psk_identity");
/// SHA-256 of a raw public key's SubjectPublicKeyInfo → endpoint.
const SECURITY_BY_PUBLIC_KEY: TableDefinition<&[u8], &str> =
    TableDefinition::new("security_by_public_key");
const OBSERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("observations");
const OBSERVATIONS_BY_REGISTRATION: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("observations_by_registration");

const KEY_CHECK: &str = "master_key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"cairn-store master key check";
const KEY_CHECK_CONTEXT: &[u8] = b"cairn-store/meta/master-key-check";

fn blob_table(kind: BlobKind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.name())
}

fn blob_context(kind: BlobKind, key: &str) -> Vec<u8> {
    let mut context = format!("cairn-store/blob/{}\0", kind.name()).into_bytes();
    context.extend_from_slice(key.as_bytes());
    context
}

/// Bytes of redb's own page cache unless told otherwise. 4 MiB holds the hot pages (the
/// upper levels of the tables, recent writes); the rest is read from the OS page cache. 16 MiB
/// cost 168 bytes per device at 100,000 devices and registered no faster (docs/benchmarks.md).
pub const DEFAULT_CACHE_BYTES: usize = 4 << 20;

/// Environment variable that sets redb's page cache of [`EmbeddedStore::open`] and
/// [`EmbeddedStore::open_with`], in MiB (e.g. `4`; at least 1).
pub const CACHE_MIB_ENV: &str = "CAIRN_STORE_CACHE_MIB";

/// The page cache size from [`CACHE_MIB_ENV`], or [`DEFAULT_CACHE_BYTES`].
fn cache_bytes_from_env() -> Result<usize, StoreError> {
    match std::env::var(CACHE_MIB_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_CACHE_BYTES),
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(mib) if (1..=1 << 20).contains(&mib) => Ok(mib << 20),
            _ => Err(StoreError::InvalidInput(
                "CAIRN_STORE_CACHE_MIB must be a whole number of MiB from 1",
            )),
        },
        Err(std::env::VarError::NotUnicode(_)) => Err(StoreError::InvalidInput(
            "CAIRN_STORE_CACHE_MIB must be a whole number of MiB from 1",
        )),
    }
}

/// The embedded store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// The group-commit writer of the hot writes (registrations, observations, device
    /// credentials at bootstrap).
    writer: Arc<GroupWriter>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

/// The database and the master key, shared by every handle of a store (and what a write's
/// closure gets: it holds no handle, so a write never keeps the writer thread alive).
pub(crate) struct Inner {
    db: Database,
    master_key: MasterKey,
    data_dir: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`, with the master key from `CAIRN_MASTER_KEY`
    /// or `data_dir/master.key` (created, mode 0600, when the database is new).
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(data_dir, MasterKeySource::EnvironmentOrFile)
    }

    /// Opens (or creates) the store in `data_dir` with the master key from `source`.
    ///
    /// Fails with [`MasterKeyError::Mismatch`] if the database was created under another key,
    /// and with [`MasterKeyError::Missing`] if the database exists but no key is found.
    ///
    /// redb's page cache is [`DEFAULT_CACHE_BYTES`], or [`CACHE_MIB_ENV`] when set.
    pub fn open_with(
        data_dir: impl AsRef<Path>,
        source: MasterKeySource,
    ) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, source, cache_bytes_from_env()?)
    }

    /// [`EmbeddedStore::open_with`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(
        data_dir: impl AsRef<Path>,
        source: MasterKeySource,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let data_dir = data_dir.as_ref().to_owned();
        std::fs::create_dir_all(&data_dir).map_err(|source| StoreError::Io {
            path: data_dir.clone(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let master_key = match source {
            MasterKeySource::Key(key) => key,
            MasterKeySource::EnvironmentOrFile => {
                let env_value = match std::env::var(MASTER_KEY_ENV) {
                    Ok(value) => Some(Zeroizing::new(value)),
                    Err(std::env::VarError::NotPresent) => None,
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(MasterKeyError::Malformed {
                            source_name: MASTER_KEY_ENV.to_owned(),
                        }
                        .into());
                    }
                };
                resolve_master_key(
                    &data_dir,
                    env_value.as_deref().map(String::as_str),
                    path.exists(),
                )?
            }
        };
        // redb's page cache would grow to 1 GiB by default; hot pages (indexes, recent
        // registrations) fit in far less, and the rest is a read from the OS page cache.
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)?;
        let inner = Inner {
            db,
            master_key,
            data_dir,
        };
        inner.initialize()?;
        let inner = Arc::new(inner);
        let writer = Arc::new(GroupWriter::start(inner.clone())?);
        Ok(Self { inner, writer })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The database, for the other modules' tables (bootstrap).
    pub(crate) fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The key that seals secrets at rest.
    pub(crate) fn master_key(&self) -> &MasterKey {
        &self.inner.master_key
    }

    /// The shared database and key, for the other modules' reads.
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The endpoint and key of a PSK identity, synchronously (for a DTLS PSK resolver). One
    /// index lookup and one record read; no disk write.
    pub fn psk_key_blocking(
        &self,
        identity: &[u8],
    ) -> Result<Option<(String, SecretBytes)>, StoreError> {
        let info = self
            .inner
            .read(|inner, txn| inner.security_by_psk_identity(txn, identity))?;
        Ok(info.and_then(|info| match info.mode {
            SecurityMode::Psk { key, .. } => Some((info.endpoint, key)),
            _ => None,
        }))
    }

    /// The endpoint registered with the raw public key `subject_public_key_info` (DER), for a
    /// DTLS handshake's raw-public-key check; synchronous, one index lookup and one read.
    pub fn rpk_endpoint_blocking(
        &self,
        subject_public_key_info: &[u8],
    ) -> Result<Option<String>, StoreError> {
        self.inner
            .read(|inner, txn| inner.endpoint_of_public_key(txn, subject_public_key_info))
    }

    /// Stores many security infos in one transaction (provisioning a fleet's credentials):
    /// all or none. Blocking: call it from a blocking context (a CLI, `spawn_blocking`).
    pub fn import_security_infos_blocking(&self, infos: &[SecurityInfo]) -> Result<(), StoreError> {
        self.inner.write(|inner, txn| {
            for info in infos {
                inner.put_security_info(txn, info)?;
            }
            Ok(())
        })
    }

    /// A write in its own transaction on tokio's blocking pool.
    pub(crate) fn write<T, F>(&self, operation: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|e| StoreError::Task(e.to_string()))?;
            runtime
                .spawn_blocking(move || inner.write(operation))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }

    /// A write that shares its transaction and `fsync` with the other writes queued at the
    /// same moment (group commit). `operation` may run twice: if another write of the group
    /// fails, the group is rolled back and each write runs again in its own transaction; so it
    /// must compute what it writes from `txn` (and its captured input), never from state it
    /// changed in an earlier run.
    pub(crate) fn write_grouped<T, F>(&self, operation: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnMut(&Inner, &WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = self.writer.submit(Box::new(Grouped {
            operation,
            result: None,
            reply,
        }));
        Box::pin(async move {
            queued?;
            answer
                .await
                .map_err(|_| StoreError::Task("the store's writer stopped".into()))?
        })
    }

    fn read<T, F>(&self, operation: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &ReadTransaction) -> Result<T, StoreError>,
    {
        Box::pin(std::future::ready(self.inner.read(operation)))
    }
}

impl Inner {
    /// The key that seals secrets at rest.
    pub(crate) fn master_key(&self) -> &MasterKey {
        &self.master_key
    }

    fn write<T>(
        &self,
        operation: impl FnOnce(&Inner, &WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let result = operation(self, &txn)?;
        txn.commit()?;
        Ok(result)
    }

    fn read<T>(
        &self,
        operation: impl FnOnce(&Inner, &ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read()?;
        operation(self, &txn)
    }

    /// Creates every table and checks (or, for a new database, writes) the master key check.
    fn initialize(&self) -> Result<(), StoreError> {
        self.write(|inner, txn| {
            txn.open_table(REGISTRATIONS)?;
            txn.open_table(REGISTRATION_BY_ENDPOINT)?;
            txn.open_table(REGISTRATION_EXPIRY)?;
            txn.open_table(SECURITY)?;
            txn.open_table(SECURITY_BY_PSK_IDENTITY)?;
            txn.open_table(SECURITY_BY_PUBLIC_KEY)?;
            txn.open_table(OBSERVATIONS)?;
            txn.open_multimap_table(OBSERVATIONS_BY_REGISTRATION)?;
            for kind in BlobKind::ALL {
                txn.open_table(blob_table(kind))?;
            }
            let mut meta = txn.open_table(META)?;
            let check = meta.get(KEY_CHECK)?.map(|sealed| sealed.value().to_vec());
            match check {
                Some(sealed) => {
                    let opened = inner.master_key.open(&sealed, KEY_CHECK_CONTEXT);
                    if opened.as_ref().map(SecretBytes::expose) != Some(KEY_CHECK_PLAINTEXT) {
                        return Err(MasterKeyError::Mismatch {
                            data_dir: inner.data_dir.clone(),
                        }
                        .into());
                    }
                }
                None => {
                    let sealed = inner
                        .master_key
                        .seal(KEY_CHECK_PLAINTEXT, KEY_CHECK_CONTEXT)?;
                    meta.insert(KEY_CHECK, sealed.as_slice())?;
                }
            }
            Ok(())
        })
    }

    // ---- registrations ----

    fn registration(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        id: &str,
    ) -> Result<Option<Registration>, StoreError> {
        match table.get(id)? {
            Some(bytes) => Ok(Some(record::decode_registration(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn add_registration(
        &self,
        txn: &WriteTransaction,
        registration: &Registration,
    ) -> Result<Option<Deregistration>, StoreError> {
        if registration.id.is_empty() || registration.endpoint.is_empty() {
            return Err(StoreError::InvalidInput(
                "registration id and endpoint must not be empty",
            ));
        }
        {
            let registrations = txn.open_table(REGISTRATIONS)?;
            if let Some(existing) = self.registration(&registrations, &registration.id)? {
                if existing.endpoint != registration.endpoint {
                    return Err(StoreError::Conflict(format!(
                        "registration id {} belongs to another endpoint",
                        registration.id
                    )));
                }
            }
        }
        let previous_id = txn
            .open_table(REGISTRATION_BY_ENDPOINT)?
            .get(registration.endpoint.as_str())?
            .map(|id| id.value().to_owned());
        let previous = match previous_id {
            Some(id) => self.remove_registration(txn, &id)?,
            None => None,
        };
        let bytes = record::encode_registration(registration);
        txn.open_table(REGISTRATIONS)?
            .insert(registration.id.as_str(), bytes.as_slice())?;
        txn.open_table(REGISTRATION_BY_ENDPOINT)?
            .insert(registration.endpoint.as_str(), registration.id.as_str())?;
        txn.open_table(REGISTRATION_EXPIRY)?
            .insert((registration.expires_at_ms(), registration.id.as_str()), ())?;
        Ok(previous)
    }

    fn remove_registration(
        &self,
        txn: &WriteTransaction,
        id: &str,
    ) -> Result<Option<Deregistration>, StoreError> {
        let registration = {
            let mut registrations = txn.open_table(REGISTRATIONS)?;
            let Some(registration) = self.registration(&registrations, id)? else {
                return Ok(None);
            };
            registrations.remove(id)?;
            registration
        };
        let mut by_endpoint = txn.open_table(REGISTRATION_BY_ENDPOINT)?;
        let indexed = by_endpoint
            .get(registration.endpoint.as_str())?
            .map(|indexed| indexed.value() == id);
        if indexed == Some(true) {
            by_endpoint.remove(registration.endpoint.as_str())?;
        }
        txn.open_table(REGISTRATION_EXPIRY)?
            .remove((registration.expires_at_ms(), id))?;
        let observations = self.remove_observations_of(txn, id)?;
        Ok(Some(Deregistration {
            registration,
            observations,
        }))
    }

    fn update_registration(
        &self,
        txn: &WriteTransaction,
        update: RegistrationUpdate,
    ) -> Result<Option<UpdatedRegistration>, StoreError> {
        let mut registrations = txn.open_table(REGISTRATIONS)?;
        let Some(previous) = self.registration(&registrations, &update.registration_id)? else {
            return Ok(None);
        };
        let mut updated = previous.clone();
        if let Some(lifetime_s) = update.lifetime_s {
            updated.lifetime_s = lifetime_s;
        }
        if let Some(binding) = update.binding {
            updated.binding = binding;
        }
        if let Some(sms_number) = update.sms_number {
            updated.sms_number = Some(sms_number);
        }
        if let Some((links, paths)) = update.object_links {
            updated.object_links = links;
            updated.object_paths = paths;
        }
        updated.peer_address = update.peer_address;
        updated.last_update_ms = update.updated_at_ms;
        let bytes = record::encode_registration(&updated);
        registrations.insert(updated.id.as_str(), bytes.as_slice())?;
        let mut expiry = txn.open_table(REGISTRATION_EXPIRY)?;
        expiry.remove((previous.expires_at_ms(), previous.id.as_str()))?;
        expiry.insert((updated.expires_at_ms(), updated.id.as_str()), ())?;
        Ok(Some(UpdatedRegistration { previous, updated }))
    }

    fn registration_by_endpoint(
        &self,
        txn: &ReadTransaction,
        endpoint: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let Some(id) = txn.open_table(REGISTRATION_BY_ENDPOINT)?.get(endpoint)? else {
            return Ok(None);
        };
        self.registration(&txn.open_table(REGISTRATIONS)?, id.value())
    }

    fn list_registrations(
        &self,
        txn: &ReadTransaction,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Registration>, StoreError> {
        let by_endpoint = txn.open_table(REGISTRATION_BY_ENDPOINT)?;
        let registrations = txn.open_table(REGISTRATIONS)?;
        page(&by_endpoint, after, limit, |_, id| {
            self.registration(&registrations, id)
        })
    }

    fn expired_before(
        &self,
        txn: &ReadTransaction,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Registration>, StoreError> {
        let expiry = txn.open_table(REGISTRATION_EXPIRY)?;
        let registrations = txn.open_table(REGISTRATIONS)?;
        let mut expired = Vec::new();
        for entry in expiry.range(..(now_ms, ""))?.take(limit) {
            let (key, _) = entry?;
            let (_, id) = key.value();
            if let Some(registration) = self.registration(&registrations, id)? {
                expired.push(registration);
            }
        }
        Ok(expired)
    }

    /// Whether a registration expired before `now_ms`.
    fn any_expired(&self, txn: &ReadTransaction, now_ms: u64) -> Result<bool, StoreError> {
        let expiry = txn.open_table(REGISTRATION_EXPIRY)?;
        Ok(expiry.range(..(now_ms, ""))?.next().transpose()?.is_some())
    }

    fn remove_expired(
        &self,
        txn: &WriteTransaction,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Deregistration>, StoreError> {
        let ids = {
            let expiry = txn.open_table(REGISTRATION_EXPIRY)?;
            let mut ids = Vec::new();
            for entry in expiry.range(..(now_ms, ""))?.take(limit) {
                let (key, _) = entry?;
                ids.push(key.value().1.to_owned());
            }
            ids
        };
        let mut removed = Vec::with_capacity(ids.len());
        for id in ids {
            removed.extend(self.remove_registration(txn, &id)?);
        }
        Ok(removed)
    }

    // ---- security ----

    pub(crate) fn put_security_info(
        &self,
        txn: &WriteTransaction,
        info: &SecurityInfo,
    ) -> Result<Option<SecurityInfoSummary>, StoreError> {
        if info.endpoint.is_empty() {
            return Err(StoreError::InvalidInput("endpoint must not be empty"));
        }
        let mut by_identity = txn.open_table(SECURITY_BY_PSK_IDENTITY)?;
        let new_identity = match &info.mode {
            SecurityMode::Psk { identity, .. } => {
                let owner = by_identity
                    .get(identity.as_slice())?
                    .map(|owner| owner.value().to_owned());
                if let Some(owner) = owner.filter(|owner| *owner != info.endpoint) {
                    return Err(StoreError::Conflict(format!(
                        "PSK identity {:?} is used by endpoint {owner:?}",
                        String::from_utf8_lossy(identity)
                    )));
                }
                Some(identity.as_slice())
            }
            _ => None,
        };
        let new_key = match &info.mode {
            SecurityMode::Rpk { public_key_der } => {
                let digest = Sha256::digest(public_key_der);
                let owner = txn
                    .open_table(SECURITY_BY_PUBLIC_KEY)?
                    .get(digest.as_slice())?
                    .map(|owner| owner.value().to_owned());
                if let Some(owner) = owner.filter(|owner| *owner != info.endpoint) {
                    return Err(StoreError::Conflict(format!(
                        "the public key is used by endpoint {owner:?}"
                    )));
                }
                Some(digest)
            }
            _ => None,
        };
        self.unindex_public_key(txn, &info.endpoint)?;
        if let Some(digest) = &new_key {
            txn.open_table(SECURITY_BY_PUBLIC_KEY)?
                .insert(digest.as_slice(), info.endpoint.as_str())?;
        }
        let bytes = record::encode_security_info(info, &self.master_key)?;
        let mut security = txn.open_table(SECURITY)?;
        let previous = security
            .insert(info.endpoint.as_str(), bytes.as_slice())?
            .map(|previous| record::decode_stored_psk_identity(previous.value()))
            .transpose()?;
        let previous = match previous {
            Some((summary, old_identity)) => {
                if let Some(old_identity) = old_identity {
                    if Some(old_identity.as_slice()) != new_identity {
                        by_identity.remove(old_identity.as_slice())?;
                    }
                }
                Some(summary)
            }
            None => None,
        };
        if let Some(identity) = new_identity {
            by_identity.insert(identity, info.endpoint.as_str())?;
        }
        Ok(previous)
    }

    /// Drops the public-key index entry of `endpoint`'s current record, if it is an RPK one.
    fn unindex_public_key(&self, txn: &WriteTransaction, endpoint: &str) -> Result<(), StoreError> {
        let old_key = match txn.open_table(SECURITY)?.get(endpoint)? {
            Some(bytes) => {
                match record::decode_security_info(bytes.value(), &self.master_key)?.mode {
                    SecurityMode::Rpk { public_key_der } => Some(Sha256::digest(&public_key_der)),
                    _ => None,
                }
            }
            None => None,
        };
        if let Some(digest) = old_key {
            let mut by_key = txn.open_table(SECURITY_BY_PUBLIC_KEY)?;
            let owned = by_key
                .get(digest.as_slice())?
                .is_some_and(|owner| owner.value() == endpoint);
            if owned {
                by_key.remove(digest.as_slice())?;
            }
        }
        Ok(())
    }

    /// The endpoint whose raw public key is `subject_public_key_info`.
    fn endpoint_of_public_key(
        &self,
        txn: &ReadTransaction,
        subject_public_key_info: &[u8],
    ) -> Result<Option<String>, StoreError> {
        let digest = Sha256::digest(subject_public_key_info);
        let Some(endpoint) = txn
            .open_table(SECURITY_BY_PUBLIC_KEY)?
            .get(digest.as_slice())?
            .map(|e| e.value().to_owned())
        else {
            return Ok(None);
        };
        // The index names the endpoint; its record must hold exactly this key.
        let matches = self
            .security_info(txn, &endpoint)?
            .is_some_and(|info| matches!(info.mode, SecurityMode::Rpk { public_key_der } if public_key_der == subject_public_key_info));
        Ok(matches.then_some(endpoint))
    }

    fn remove_security_info(
        &self,
        txn: &WriteTransaction,
        endpoint: &str,
    ) -> Result<Option<SecurityInfoSummary>, StoreError> {
        self.unindex_public_key(txn, endpoint)?;
        let removed = txn
            .open_table(SECURITY)?
            .remove(endpoint)?
            .map(|bytes| record::decode_stored_psk_identity(bytes.value()))
            .transpose()?;
        let Some((summary, identity)) = removed else {
            return Ok(None);
        };
        if let Some(identity) = identity {
            txn.open_table(SECURITY_BY_PSK_IDENTITY)?
                .remove(identity.as_slice())?;
        }
        Ok(Some(summary))
    }

    fn security_info(
        &self,
        txn: &ReadTransaction,
        endpoint: &str,
    ) -> Result<Option<SecurityInfo>, StoreError> {
        match txn.open_table(SECURITY)?.get(endpoint)? {
            Some(bytes) => Ok(Some(record::decode_security_info(
                bytes.value(),
                &self.master_key,
            )?)),
            None => Ok(None),
        }
    }

    fn security_by_psk_identity(
        &self,
        txn: &ReadTransaction,
        identity: &[u8],
    ) -> Result<Option<SecurityInfo>, StoreError> {
        let Some(endpoint) = txn.open_table(SECURITY_BY_PSK_IDENTITY)?.get(identity)? else {
            return Ok(None);
        };
        self.security_info(txn, endpoint.value())
    }

    fn list_security_summaries(
        &self,
        txn: &ReadTransaction,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<SecurityInfoSummary>, StoreError> {
        page(&txn.open_table(SECURITY)?, after, limit, |_, bytes| {
            Ok(Some(record::decode_security_summary(bytes)?))
        })
    }

    // ---- observations ----

    fn add_observation(
        &self,
        txn: &WriteTransaction,
        observation: &Observation,
    ) -> Result<(), StoreError> {
        if txn
            .open_table(REGISTRATIONS)?
            .get(observation.registration_id.as_str())?
            .is_none()
        {
            return Err(StoreError::NotFound(format!(
                "registration {}",
                observation.registration_id
            )));
        }
        self.remove_observation(txn, &observation.id)?;
        let bytes = record::encode_observation(observation);
        txn.open_table(OBSERVATIONS)?
            .insert(observation.id.as_str(), bytes.as_slice())?;
        txn.open_multimap_table(OBSERVATIONS_BY_REGISTRATION)?
            .insert(
                observation.registration_id.as_str(),
                observation.id.as_str(),
            )?;
        Ok(())
    }

    fn remove_observation(
        &self,
        txn: &WriteTransaction,
        id: &str,
    ) -> Result<Option<Observation>, StoreError> {
        let removed = txn
            .open_table(OBSERVATIONS)?
            .remove(id)?
            .map(|bytes| record::decode_observation(bytes.value()))
            .transpose()?;
        if let Some(observation) = &removed {
            txn.open_multimap_table(OBSERVATIONS_BY_REGISTRATION)?
                .remove(observation.registration_id.as_str(), id)?;
        }
        Ok(removed)
    }

    fn remove_observations_of(
        &self,
        txn: &WriteTransaction,
        registration_id: &str,
    ) -> Result<Vec<Observation>, StoreError> {
        let ids = {
            let mut index = txn.open_multimap_table(OBSERVATIONS_BY_REGISTRATION)?;
            let mut ids = Vec::new();
            for id in index.remove_all(registration_id)? {
                ids.push(id?.value().to_owned());
            }
            ids
        };
        let mut observations = txn.open_table(OBSERVATIONS)?;
        let mut removed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(bytes) = observations.remove(id.as_str())? {
                removed.push(record::decode_observation(bytes.value())?);
            }
        }
        Ok(removed)
    }

    fn observation(
        &self,
        txn: &ReadTransaction,
        id: &str,
    ) -> Result<Option<Observation>, StoreError> {
        match txn.open_table(OBSERVATIONS)?.get(id)? {
            Some(bytes) => Ok(Some(record::decode_observation(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn observations_of(
        &self,
        txn: &ReadTransaction,
        registration_id: &str,
    ) -> Result<Vec<Observation>, StoreError> {
        let index = txn.open_multimap_table(OBSERVATIONS_BY_REGISTRATION)?;
        let observations = txn.open_table(OBSERVATIONS)?;
        let mut found = Vec::new();
        for id in index.get(registration_id)? {
            if let Some(bytes) = observations.get(id?.value())? {
                found.push(record::decode_observation(bytes.value())?);
            }
        }
        Ok(found)
    }

    // ---- blobs ----

    fn put_blob(
        &self,
        txn: &WriteTransaction,
        kind: BlobKind,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let stored = if kind.is_secret() {
            self.master_key.seal(value, &blob_context(kind, key))?
        } else {
            value.to_vec()
        };
        txn.open_table(blob_table(kind))?
            .insert(key, stored.as_slice())?;
        Ok(())
    }

    fn blob(
        &self,
        txn: &ReadTransaction,
        kind: BlobKind,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(stored) = txn.open_table(blob_table(kind))?.get(key)? else {
            return Ok(None);
        };
        if !kind.is_secret() {
            return Ok(Some(stored.value().to_vec()));
        }
        let secret = self
            .master_key
            .open(stored.value(), &blob_context(kind, key))
            .ok_or_else(|| StoreError::SecretTampered {
                record: format!("{} entry {key:?}", kind.name()),
            })?;
        Ok(Some(secret.into_vec()))
    }

    fn blob_keys(
        &self,
        txn: &ReadTransaction,
        kind: BlobKind,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>, StoreError> {
        page(
            &txn.open_table(blob_table(kind))?,
            after,
            limit,
            |key, _| Ok(Some(key.to_owned())),
        )
    }
}

impl RegistrationStore for EmbeddedStore {
    fn add_registration(
        &self,
        registration: Registration,
    ) -> StoreFuture<'_, Option<Deregistration>> {
        self.write_grouped(move |inner, txn| inner.add_registration(txn, &registration))
    }

    fn update_registration(
        &self,
        update: RegistrationUpdate,
    ) -> StoreFuture<'_, Option<UpdatedRegistration>> {
        self.write_grouped(move |inner, txn| inner.update_registration(txn, update.clone()))
    }

    fn remove_registration<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Deregistration>> {
        let id = id.to_owned();
        self.write_grouped(move |inner, txn| inner.remove_registration(txn, &id))
    }

    fn get_registration<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Registration>> {
        self.read(|inner, txn| inner.registration(&txn.open_table(REGISTRATIONS)?, id))
    }

    fn get_registration_by_endpoint<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<Registration>> {
        self.read(|inner, txn| inner.registration_by_endpoint(txn, endpoint))
    }

    fn list_registrations<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<Registration>> {
        self.read(|inner, txn| inner.list_registrations(txn, after, limit))
    }

    fn registrations_expired_before(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Registration>> {
        self.read(|inner, txn| inner.expired_before(txn, now_ms, limit))
    }

    fn remove_expired_registrations(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Deregistration>> {
        // The server asks every second: a read answers the usual "nothing expired" without a
        // write transaction and its fsync. The write checks again, in its own transaction.
        match self.inner.read(|inner, txn| inner.any_expired(txn, now_ms)) {
            Ok(false) => Box::pin(std::future::ready(Ok(Vec::new()))),
            Ok(true) => self.write(move |inner, txn| inner.remove_expired(txn, now_ms, limit)),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

impl SecurityStore for EmbeddedStore {
    fn put_security_info(
        &self,
        info: SecurityInfo,
    ) -> StoreFuture<'_, Option<SecurityInfoSummary>> {
        self.write(move |inner, txn| inner.put_security_info(txn, &info))
    }

    fn get_security_info<'a>(&'a self, endpoint: &'a str) -> StoreFuture<'a, Option<SecurityInfo>> {
        self.read(|inner, txn| inner.security_info(txn, endpoint))
    }

    fn get_security_info_by_psk_identity<'a>(
        &'a self,
        identity: &'a [u8],
    ) -> StoreFuture<'a, Option<SecurityInfo>> {
        self.read(|inner, txn| inner.security_by_psk_identity(txn, identity))
    }

    fn remove_security_info<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<SecurityInfoSummary>> {
        let endpoint = endpoint.to_owned();
        self.write(move |inner, txn| inner.remove_security_info(txn, &endpoint))
    }

    fn list_security_summaries<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<SecurityInfoSummary>> {
        self.read(|inner, txn| inner.list_security_summaries(txn, after, limit))
    }
}

impl ObservationStore for EmbeddedStore {
    fn add_observation(&self, observation: Observation) -> StoreFuture<'_, ()> {
        self.write_grouped(move |inner, txn| inner.add_observation(txn, &observation))
    }

    fn remove_observation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Observation>> {
        let id = id.to_owned();
        self.write_grouped(move |inner, txn| inner.remove_observation(txn, &id))
    }

    fn get_observation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Observation>> {
        self.read(|inner, txn| inner.observation(txn, id))
    }

    fn list_observations<'a>(
        &'a self,
        registration_id: &'a str,
    ) -> StoreFuture<'a, Vec<Observation>> {
        self.read(|inner, txn| inner.observations_of(txn, registration_id))
    }

    fn remove_observations_of<'a>(
        &'a self,
        registration_id: &'a str,
    ) -> StoreFuture<'a, Vec<Observation>> {
        let registration_id = registration_id.to_owned();
        self.write(move |inner, txn| inner.remove_observations_of(txn, &registration_id))
    }
}

impl BlobStore for EmbeddedStore {
    fn put_blob<'a>(&'a self, kind: BlobKind, key: &'a str, value: Vec<u8>) -> StoreFuture<'a, ()> {
        let key = key.to_owned();
        let value = Zeroizing::new(value);
        self.write(move |inner, txn| inner.put_blob(txn, kind, &key, &value))
    }

    fn get_blob<'a>(&'a self, kind: BlobKind, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.read(|inner, txn| inner.blob(txn, kind, key))
    }

    fn remove_blob<'a>(&'a self, kind: BlobKind, key: &'a str) -> StoreFuture<'a, bool> {
        let key = key.to_owned();
        self.write(move |_, txn| {
            Ok(txn
                .open_table(blob_table(kind))?
                .remove(key.as_str())?
                .is_some())
        })
    }

    fn list_blob_keys<'a>(
        &'a self,
        kind: BlobKind,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<String>> {
        self.read(|inner, txn| inner.blob_keys(txn, kind, after, limit))
    }
}

/// Up to `limit` entries of a string-keyed table after the key `after`, converted (`None` skips
/// an entry), and the cursor of the next page.
/// Most writes one group commit takes.
const GROUP_LIMIT: usize = 512;

/// One write of a group: run, then answered once its group is on disk.
trait GroupedWrite: Send {
    /// Runs the write in `txn`; `false` if it failed (its error is kept for the answer).
    fn apply(&mut self, inner: &Inner, txn: &WriteTransaction) -> bool;
    /// Answers the caller: the write's result if `committed` is `Ok`, else the commit's error.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

struct Grouped<T, F> {
    operation: F,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> GroupedWrite for Grouped<T, F>
where
    T: Send,
    F: FnMut(&Inner, &WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, inner: &Inner, txn: &WriteTransaction) -> bool {
        let result = (self.operation)(inner, txn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let never_run = || StoreError::Task("a grouped write was never run".into());
        let answer = match (self.result, committed) {
            // A write that failed was rolled back with its transaction: its own error.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(error)) => Err(error),
            (None, Ok(())) => Err(never_run()),
        };
        let _ = self.reply.send(answer);
    }
}

/// The thread that commits queued writes in groups: one transaction and one `fsync` for all
/// the writes that arrived while the previous group was committing. A registration flood
/// costs one `fsync` per group instead of one per device.
struct GroupWriter {
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<Box<dyn GroupedWrite>>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GroupWriter {
    fn start(inner: Arc<Inner>) -> Result<Self, StoreError> {
        let (queue, writes) = std::sync::mpsc::channel::<Box<dyn GroupedWrite>>();
        let thread = std::thread::Builder::new()
            .name("cairn-store-writer".into())
            .spawn(move || {
                while let Ok(first) = writes.recv() {
                    let mut group = vec![first];
                    while group.len() < GROUP_LIMIT {
                        match writes.try_recv() {
                            Ok(write) => group.push(write),
                            Err(_) => break,
                        }
                    }
                    commit_group(&inner, group);
                }
            })
            .map_err(|e| StoreError::Task(format!("cannot start the store's writer: {e}")))?;
        Ok(GroupWriter {
            queue: std::sync::Mutex::new(Some(queue)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn submit(&self, write: Box<dyn GroupedWrite>) -> Result<(), StoreError> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue
            .as_ref()
            .and_then(|queue| queue.send(write).ok())
            .ok_or_else(|| StoreError::Task("the store's writer stopped".into()))
    }
}

impl Drop for GroupWriter {
    /// Lets the writer commit what is queued, then waits for it, so that the database is
    /// closed when the last handle of the store is gone (a restart can reopen it at once).
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn commit_group(inner: &Inner, mut group: Vec<Box<dyn GroupedWrite>>) {
    if group.len() > 1 {
        match apply_all(inner, &mut group) {
            Ok(true) => {
                for write in group {
                    write.finish(Ok(()));
                }
                return;
            }
            // One write failed: the group is rolled back, and each write runs alone below.
            Ok(false) => {}
            Err(error) => {
                let message = error.to_string();
                for write in group {
                    write.finish(Err(StoreError::Task(message.clone())));
                }
                return;
            }
        }
    }
    for mut write in group {
        let committed = (|| {
            let mut txn = inner.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            if write.apply(inner, &txn) {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok(())
        })();
        write.finish(committed);
    }
}

/// Runs every write of `group` in one transaction and commits it: `Ok(false)` (and nothing
/// committed) if one of them failed.
fn apply_all(inner: &Inner, group: &mut [Box<dyn GroupedWrite>]) -> Result<bool, StoreError> {
    let mut txn = inner.db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    for write in group.iter_mut() {
        if !write.apply(inner, &txn) {
            txn.abort()?;
            return Ok(false);
        }
    }
    txn.commit()?;
    Ok(true)
}

fn page<V, T>(
    table: &impl ReadableTable<&'static str, V>,
    after: Option<&str>,
    limit: usize,
    mut convert: impl for<'v> FnMut(&str, V::SelfType<'v>) -> Result<Option<T>, StoreError>,
) -> Result<Page<T>, StoreError>
where
    V: redb::Value + 'static,
{
    let range = match after {
        Some(after) => table.range::<&str>((Bound::Excluded(after), Bound::Unbounded))?,
        None => table.range::<&str>(..)?,
    };
    let mut items = Vec::new();
    let mut last_key = None;
    for (taken, entry) in range.enumerate() {
        let (key, value) = entry?;
        if taken == limit {
            return Ok(Page {
                items,
                next_cursor: last_key,
            });
        }
        last_key = Some(key.value().to_owned());
        if let Some(item) = convert(key.value(), value.value())? {
            items.push(item);
        }
    }
    Ok(Page {
        items,
        next_cursor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DecodeError;

    fn store(dir: &Path) -> EmbeddedStore {
        let key = MasterKey::from_bytes(&[1; 32]);
        EmbeddedStore::open_with(dir, MasterKeySource::Key(key)).unwrap()
    }

    fn put_raw(
        store: &EmbeddedStore,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) {
        store
            .inner
            .write(|_, txn| {
                txn.open_table(table)?.insert(key, value)?;
                Ok(())
            })
            .unwrap();
    }

    #[tokio::test]
    async fn corrupted_records_read_as_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        put_raw(&store, REGISTRATIONS, "bad", &[1, 0xff, 0x00]);
        put_raw(&store, OBSERVATIONS, "bad", &[]);
        put_raw(&store, SECURITY, "bad", &[2, 0x80]);
        assert!(matches!(
            store.get_registration("bad").await,
            Err(StoreError::Decode(DecodeError::Malformed { .. }))
        ));
        assert!(matches!(
            store.get_observation("bad").await,
            Err(StoreError::Decode(DecodeError::Empty { .. }))
        ));
        assert!(matches!(
            store.get_security_info("bad").await,
            Err(StoreError::Decode(DecodeError::UnsupportedVersion {
                version: 2,
                ..
            }))
        ));
        assert!(store.list_security_summaries(None, 10).await.is_err());
    }

    #[tokio::test]
    async fn a_sealed_bootstrap_config_moved_to_another_endpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store
            .put_blob(BlobKind::BootstrapConfig, "a", b"credentials".to_vec())
            .await
            .unwrap();
        let sealed = store
            .inner
            .read(|_, txn| {
                let table = txn.open_table(blob_table(BlobKind::BootstrapConfig))?;
                Ok(table.get("a")?.map(|v| v.value().to_vec()))
            })
            .unwrap()
            .unwrap();
        put_raw(&store, blob_table(BlobKind::BootstrapConfig), "b", &sealed);
        assert!(matches!(
            store.get_blob(BlobKind::BootstrapConfig, "b").await,
            Err(StoreError::SecretTampered { .. })
        ));
    }
}
