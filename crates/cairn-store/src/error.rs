//! Errors of the store.
//!
//! Every failure has a named variant: a record that does not decode, a master key that does not
//! open the database, a ciphertext that does not authenticate. Stored data never causes a panic.

use std::path::PathBuf;

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database engine failed (I/O, a locked or damaged file).
    #[error("database: {0}")]
    Database(Box<redb::Error>),
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A stored record could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The master key is missing, malformed or not the one the database was created with.
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    /// A stored secret did not authenticate under the master key (tampered or moved between
    /// records).
    #[error("the stored secret of {record} does not authenticate under the master key")]
    SecretTampered {
        /// The record that holds the secret (its table and key).
        record: String,
    },
    /// The write conflicts with what is stored (an id or PSK identity owned by another
    /// endpoint).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The write refers to a record that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The blocking task running the operation was cancelled or panicked.
    #[error("store task failed: {0}")]
    Task(String),
    /// The operation's input was rejected before it reached the database.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
}

/// A stored record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is empty (no format version byte).
    #[error("empty {kind} record")]
    Empty {
        /// The kind of record.
        kind: &'static str,
    },
    /// The record was written by a format version this build does not know.
    #[error("{kind} record has format version {version}, this build reads up to {supported}")]
    UnsupportedVersion {
        /// The kind of record.
        kind: &'static str,
        /// The version found.
        version: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// The CBOR body is malformed.
    #[error("malformed {kind} record: {reason}")]
    Malformed {
        /// The kind of record.
        kind: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// A field decoded but holds a value that is not valid for it.
    #[error("{kind} record: invalid {field}")]
    InvalidField {
        /// The kind of record.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// The master key that encrypts secrets at rest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key text is not 64 hexadecimal digits.
    #[error("master key from {source_name} is not 64 hexadecimal digits")]
    Malformed {
        /// Where the key came from (`CAIRN_MASTER_KEY` or the key file's path).
        source_name: String,
    },
    /// The database exists but no master key was found for it.
    #[error(
        "the database in {data_dir} exists but there is no master key: set CAIRN_MASTER_KEY or restore master.key"
    )]
    Missing {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The master key is not the one the database's secrets were encrypted with.
    #[error(
        "the master key does not match the database in {data_dir} (wrong CAIRN_MASTER_KEY or master.key)"
    )]
    Mismatch {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator: {0}")]
    Random(String),
}

macro_rules! database_error_from {
    ($($error:ty),*) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Database(Box::new(redb::Error::from(error)))
            }
        })*
    };
}

database_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
