//! The store traits: what the server needs to persist, independent of where it is kept.
//!
//! The server holds its store as `Arc<dyn RegistrationStore>` (and the other traits), so the
//! traits must be object safe. `async fn` in a trait is not (its future type is unnamed and
//! generic over the implementation), so every method returns a boxed [`StoreFuture`] instead:
//! one allocation per call, negligible beside a database commit or a network round trip, and no
//! procedural macro. The futures are `Send`, so they can be awaited from any tokio task.
//!
//! Each operation is small and self-contained (a handful of keys, no transaction spanning calls),
//! so a Redis implementation can map every method to one `MULTI`/`EXEC` or a short Lua script.
//! Methods have distinct names across the traits, so one type implementing them all is
//! unambiguous to call.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::error::StoreError;
use crate::record::{Observation, Registration, SecurityInfo, SecurityInfoSummary};
use crate::secret::SecretBytes;

/// The future every store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// Pass this as `after` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A registration that ended (deregistered, replaced or expired) and the observations that
/// ended with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deregistration {
    /// The registration as it was.
    pub registration: Registration,
    /// Its observations, now removed.
    pub observations: Vec<Observation>,
}

/// The parameters of an Update (Core §6.2.2); `None` leaves a value unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationUpdate {
    /// The registration to update.
    pub registration_id: String,
    /// New lifetime in seconds (`lt`).
    pub lifetime_s: Option<u32>,
    /// New binding mode (`b`).
    pub binding: Option<String>,
    /// New SMS number (`sms`).
    pub sms_number: Option<String>,
    /// New object links: the raw link-format payload and its paths.
    pub object_links: Option<(String, Vec<String>)>,
    /// The address the update came from.
    pub peer_address: SocketAddr,
    /// When the update arrived (Unix milliseconds).
    pub updated_at_ms: u64,
}

/// A registration before and after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatedRegistration {
    /// As it was.
    pub previous: Registration,
    /// As it is now.
    pub updated: Registration,
}

/// Registrations of LwM2M clients.
pub trait RegistrationStore: Send + Sync {
    /// Stores a registration. A registration of the same endpoint is replaced atomically; it is
    /// returned with its observations, which are removed.
    fn add_registration(
        &self,
        registration: Registration,
    ) -> StoreFuture<'_, Option<Deregistration>>;

    /// Applies an update; `None` if the registration does not exist.
    fn update_registration(
        &self,
        update: RegistrationUpdate,
    ) -> StoreFuture<'_, Option<UpdatedRegistration>>;

    /// Removes a registration and its observations; `None` if it does not exist.
    fn remove_registration<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Deregistration>>;

    /// The registration with this id.
    fn get_registration<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Registration>>;

    /// The current registration of an endpoint.
    fn get_registration_by_endpoint<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<Registration>>;

    /// Registrations ordered by endpoint name, starting after the endpoint `after`.
    fn list_registrations<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<Registration>>;

    /// Up to `limit` registrations whose expiry is before `now_ms`, soonest first.
    fn registrations_expired_before(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Registration>>;

    /// Removes up to `limit` registrations whose expiry is before `now_ms` (soonest first) with
    /// their observations, checking the expiry in the same transaction: a registration updated
    /// since a listing is never swept.
    fn remove_expired_registrations(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Deregistration>>;
}

/// How endpoints authenticate. Secrets leave this store only through `get_*` (for the DTLS
/// handshake); listings carry identities and fingerprints.
pub trait SecurityStore: Send + Sync {
    /// Stores security info, replacing the endpoint's previous one (returned as a summary).
    /// A PSK identity already used by another endpoint is a [`StoreError::Conflict`].
    fn put_security_info(&self, info: SecurityInfo)
    -> StoreFuture<'_, Option<SecurityInfoSummary>>;

    /// The security info of an endpoint.
    fn get_security_info<'a>(&'a self, endpoint: &'a str) -> StoreFuture<'a, Option<SecurityInfo>>;

    /// The security info whose PSK identity is `identity` (one index lookup: the DTLS
    /// handshake's path).
    fn get_security_info_by_psk_identity<'a>(
        &'a self,
        identity: &'a [u8],
    ) -> StoreFuture<'a, Option<SecurityInfo>>;

    /// Removes an endpoint's security info; returns its summary.
    fn remove_security_info<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<SecurityInfoSummary>>;

    /// Summaries ordered by endpoint name, starting after the endpoint `after`. No secrets.
    fn list_security_summaries<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<SecurityInfoSummary>>;
}

/// Observations the server holds on devices.
pub trait ObservationStore: Send + Sync {
    /// Stores an observation (replacing one with the same id). Its registration must exist
    /// ([`StoreError::NotFound`] otherwise).
    fn add_observation(&self, observation: Observation) -> StoreFuture<'_, ()>;

    /// Removes an observation; `None` if it does not exist.
    fn remove_observation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Observation>>;

    /// The observation with this id.
    fn get_observation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Observation>>;

    /// The observations of a registration.
    fn list_observations<'a>(
        &'a self,
        registration_id: &'a str,
    ) -> StoreFuture<'a, Vec<Observation>>;

    /// Removes every observation of a registration and returns them.
    fn remove_observations_of<'a>(
        &'a self,
        registration_id: &'a str,
    ) -> StoreFuture<'a, Vec<Observation>>;
}

/// The tables of opaque values keyed by a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// Bootstrap configuration per endpoint (holds credentials: encrypted at rest).
    BootstrapConfig,
    /// Firmware image metadata per image id.
    FirmwareImage,
    /// Firmware campaign state per campaign id.
    Campaign,
}

impl BlobKind {
    /// Every kind.
    pub const ALL: [BlobKind; 3] = [
        BlobKind::BootstrapConfig,
        BlobKind::FirmwareImage,
        BlobKind::Campaign,
    ];

    /// Whether values of this kind are encrypted at rest.
    pub fn is_secret(self) -> bool {
        matches!(self, BlobKind::BootstrapConfig)
    }

    /// The kind's table name.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::BootstrapConfig => "bootstrap_configs",
            BlobKind::FirmwareImage => "firmware_images",
            BlobKind::Campaign => "campaigns",
        }
    }
}

/// A bootstrap configuration (the Security and Server objects a bootstrap server writes to a
/// device, Core §5.2), in an encoding the bootstrap server chooses. It holds credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapConfig(pub SecretBytes);

/// Opaque values keyed by a string, with typed helpers for each kind. Values of secret kinds
/// are encrypted at rest; the store wipes its copies of them.
pub trait BlobStore: Send + Sync {
    /// Stores a value, replacing the previous one.
    fn put_blob<'a>(&'a self, kind: BlobKind, key: &'a str, value: Vec<u8>) -> StoreFuture<'a, ()>;

    /// The value under `key`.
    fn get_blob<'a>(&'a self, kind: BlobKind, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Removes a value; whether it existed.
    fn remove_blob<'a>(&'a self, kind: BlobKind, key: &'a str) -> StoreFuture<'a, bool>;

    /// Keys in order, starting after `after`.
    fn list_blob_keys<'a>(
        &'a self,
        kind: BlobKind,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<String>>;

    /// Stores the bootstrap configuration of an endpoint.
    fn put_bootstrap_config<'a>(
        &'a self,
        endpoint: &'a str,
        config: &BootstrapConfig,
    ) -> StoreFuture<'a, ()> {
        self.put_blob(
            BlobKind::BootstrapConfig,
            endpoint,
            config.0.expose().to_vec(),
        )
    }

    /// The bootstrap configuration of an endpoint.
    fn get_bootstrap_config<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<BootstrapConfig>> {
        let value = self.get_blob(BlobKind::BootstrapConfig, endpoint);
        Box::pin(async move {
            Ok(value
                .await?
                .map(|bytes| BootstrapConfig(SecretBytes::new(bytes))))
        })
    }

    /// Stores the metadata of a firmware image.
    fn put_firmware_image<'a>(
        &'a self,
        image_id: &'a str,
        metadata: Vec<u8>,
    ) -> StoreFuture<'a, ()> {
        self.put_blob(BlobKind::FirmwareImage, image_id, metadata)
    }

    /// The metadata of a firmware image.
    fn get_firmware_image<'a>(&'a self, image_id: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.get_blob(BlobKind::FirmwareImage, image_id)
    }

    /// Stores the state of a firmware campaign.
    fn put_campaign<'a>(&'a self, campaign_id: &'a str, state: Vec<u8>) -> StoreFuture<'a, ()> {
        self.put_blob(BlobKind::Campaign, campaign_id, state)
    }

    /// The state of a firmware campaign.
    fn get_campaign<'a>(&'a self, campaign_id: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.get_blob(BlobKind::Campaign, campaign_id)
    }
}
