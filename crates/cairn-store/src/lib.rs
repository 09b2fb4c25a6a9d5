//! Cairn's storage: the records a server keeps across restarts, the store traits, and the
//! default embedded implementation.
//!
//! - [`record`]: [`Registration`], [`SecurityInfo`], [`Observation`] and their versioned CBOR
//!   encoding.
//! - [`store`]: the object-safe async traits the server holds as `Arc<dyn …>`:
//!   [`RegistrationStore`], [`SecurityStore`], [`ObservationStore`], [`BlobStore`].
//! - [`embedded`]: [`EmbeddedStore`], all of them in one `redb` file in a data directory.
//! - [`secret`]: the master key and the AES-256-GCM sealing of secrets at rest.
//!
//! ```no_run
//! # async fn example() -> Result<(), cairn_store::StoreError> {
//! use std::sync::Arc;
//! use cairn_store::{EmbeddedStore, RegistrationStore};
//!
//! let store = EmbeddedStore::open("/var/lib/cairn")?;
//! let registrations: Arc<dyn RegistrationStore> = Arc::new(store.clone());
//! let current = registrations.get_registration_by_endpoint("urn:dev:1").await?;
//! # let _ = current;
//! # Ok(())
//! # }
//! ```

pub mod accounts;
pub mod bootstrap;
pub mod embedded;
pub mod error;
pub mod record;
pub mod secret;
pub mod store;

pub use accounts::{
    AccountStore, ApiToken, AuditEntry, LockoutPolicy, Role, Session, SessionStage, SetupOutcome,
    TokenDigest, User,
};
pub use bootstrap::{
    AclConfig, BootstrapSettings, BootstrapStatus, BootstrapStore, BootstrapTemplate,
    CredentialKind, DeviceBootstrapConfig, DeviceCredentials, DmCredential, DmCredentialSource,
    DmServerConfig, PskCredential, WeakKey,
};
pub use embedded::EmbeddedStore;
pub use error::{DecodeError, MasterKeyError, StoreError};
pub use record::{
    Observation, PeerIdentity, Registration, SecurityInfo, SecurityInfoSummary, SecurityMode,
    SecurityModeKind, X509Expectation, random_id,
};
pub use secret::{MasterKey, MasterKeySource, SecretBytes};
pub use store::{
    BlobKind, BlobStore, BootstrapConfig, Deregistration, ObservationStore, Page,
    RegistrationStore, RegistrationUpdate, SecurityStore, StoreFuture, UpdatedRegistration,
};
