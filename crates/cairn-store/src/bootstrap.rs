//! Bootstrap data (OMA LwM2M Core 1.2 §5.2 "Bootstrap" and §6.1 "Bootstrap Interface"): what a
//! Bootstrap-Server writes to each device, templates for groups of devices, and each device's
//! credentials with the state of their replacement.
//!
//! - [`DeviceBootstrapConfig`]: the servers (and access control entries) of one endpoint.
//! - [`BootstrapTemplate`]: the same for every endpoint whose name starts with a prefix. A
//!   template never carries a secret: credentials are generated per device from the operating
//!   system's CSPRNG when the device bootstraps.
//! - [`DeviceCredentials`]: the device's bootstrap credential (the factory one at first) and its
//!   device-management credential, each with the previous one kept valid until the device has
//!   proven that it holds the new one, so that a device that loses power in the middle of a
//!   bootstrap never ends up without a working credential.
//!
//! # Why there is no "key from the endpoint name"
//! A key computed from an identifier (`psk = f(endpoint)`, hashed or not, with or without a
//! constant) is known to everyone who knows `f` and the name, and the name travels in the clear
//! in every Register and Bootstrap-Request. Configurations therefore have no way to express one:
//! a key is either generated ([`DmCredentialSource::Generate`]) or given explicitly per device
//! ([`DmCredentialSource::ExplicitPsk`]). A derivation by an unknown function cannot be detected
//! from its output, so explicit keys are checked for what can be checked
//! ([`check_explicit_psk`]): at least [`MIN_PSK_LEN`] bytes, not the endpoint name or the
//! identity (or containing them), not one repeated byte, and never the same key for two
//! devices (a derived key with a constant shared across devices shows up as a repeat as soon
//! as the function ignores part of the name; a unique random key never repeats).
//!
//! Every record that holds a secret is sealed under the store's master key (AES-256-GCM, bound
//! to its table and key); the identity indexes hold identities, and the key-uniqueness index
//! holds HMAC-SHA-256 values under a random key that is itself sealed.

use std::fmt;

use hmac::{Hmac, Mac};
use minicbor::{Decode, Encode};
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::embedded::{EmbeddedStore, Inner};
use crate::error::{DecodeError, StoreError};
use crate::record::SecurityInfo;
use crate::secret::SecretBytes;
use crate::store::{Page, StoreFuture};

/// The shortest PSK a configuration may give or the server generates (128 bits).
pub const MIN_PSK_LEN: usize = 16;
/// The length of generated PSKs.
pub const GENERATED_PSK_LEN: usize = 32;

const FORMAT: u8 = 1;

const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bootstrap_device_configs");
const TEMPLATES: TableDefinition<&str, &[u8]> = TableDefinition::new("bootstrap_templates");
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("bootstrap_credentials");
const BOOTSTRAP_IDENTITIES: TableDefinition<&[u8], &str> =
    TableDefinition::new("bootstrap_identities");
const PREVIOUS_DM_IDENTITIES: TableDefinition<&[u8], &str> =
    TableDefinition::new("bootstrap_previous_dm_identities");
const KEY_FINGERPRINTS: TableDefinition<&[u8], &str> =
    TableDefinition::new("bootstrap_key_fingerprints");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("bootstrap_meta");
const FINGERPRINT_KEY: &str = "fingerprint_key";

/// A PSK identity and key.
#[derive(Clone, PartialEq, Eq)]
pub struct PskCredential {
    /// The PSK identity (RFC 4279), sent in the clear in the handshake.
    pub identity: Vec<u8>,
    /// The key.
    pub key: SecretBytes,
}

impl fmt::Debug for PskCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskCredential")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .finish_non_exhaustive()
    }
}

/// The kind of credential the server generates for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A pre-shared key and identity.
    Psk,
    /// A P-256 key pair (RFC 7250 raw public key): the Security object's Public Key or
    /// Identity holds the DER SubjectPublicKeyInfo, its Secret Key the PKCS#8 private key.
    Rpk,
    /// A P-256 key pair and a certificate issued by Cairn's CA with the endpoint name as its
    /// common name: Public Key or Identity holds the certificate (DER), Secret Key the PKCS#8
    /// private key.
    X509,
}

/// Where a device-management credential comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmCredentialSource {
    /// Generated from the operating system's CSPRNG at bootstrap, unique per device.
    Generate(CredentialKind),
    /// An explicit per-device random PSK given by the operator (checked by
    /// [`check_explicit_psk`]; only in a per-device configuration, never in a template).
    ExplicitPsk(PskCredential),
    /// No security (plain CoAP).
    NoSec,
}

/// One LwM2M Server a device is given (a Security and a Server object instance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmServerConfig {
    /// Short Server ID (1..=65534).
    pub short_server_id: u16,
    /// The server's URI (`coaps://host:5684`).
    pub uri: String,
    /// Registration lifetime, seconds.
    pub lifetime_s: u32,
    /// Binding (`U`).
    pub binding: String,
    /// The credential.
    pub credential: DmCredentialSource,
    /// Also write an OSCORE object instance (21) with a generated master secret.
    pub oscore: bool,
}

/// One Access Control object instance (2) to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclConfig {
    /// The object the entry controls.
    pub object_id: u16,
    /// The instance it controls (65535: the object, for Create).
    pub instance_id: u16,
    /// Rights per Short Server ID (bit 0 Read, 1 Write, 2 Execute, 3 Delete, 4 Create).
    pub rights: Vec<(u16, u8)>,
    /// Short Server ID of the owner.
    pub owner: u16,
}

/// What a device is given at bootstrap, for one endpoint or (in a template) a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// The LwM2M Servers. At most one has a credential (Cairn's device-management server,
    /// whose security store gets it); the others are NoSec.
    pub servers: Vec<DmServerConfig>,
    /// Access Control instances.
    pub acl: Vec<AclConfig>,
    /// Replace the device's bootstrap credential with a new one at each bootstrap.
    pub replace_bootstrap_credential: bool,
    /// The Bootstrap-Server URI written into the device's bootstrap account.
    pub bootstrap_uri: String,
    /// Whether the device may bootstrap over plain CoAP (only with NoSec servers).
    pub allow_unsecured: bool,
}

/// The bootstrap configuration of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceBootstrapConfig {
    /// The endpoint client name.
    pub endpoint: String,
    /// What it is given.
    pub settings: BootstrapSettings,
}

/// The bootstrap configuration of every endpoint whose name starts with `endpoint_prefix`
/// (and has no configuration of its own). Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapTemplate {
    /// The template's name.
    pub name: String,
    /// The prefix of the endpoint names it applies to (the longest matching prefix wins).
    pub endpoint_prefix: String,
    /// What the devices are given.
    pub settings: BootstrapSettings,
}

/// A device-management credential and its replacement state.
///
/// A credential is the pair the Security object carries (Core Appendix E.1): "Public Key or
/// Identity" (resource 3) and "Secret Key" (resource 5), held as a [`PskCredential`]'s
/// `identity` and `key` whatever its kind (see [`CredentialKind`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmCredential {
    /// The Short Server ID of the server it is for.
    pub short_server_id: u16,
    /// The kind of `current`.
    pub kind: CredentialKind,
    /// The credential in the security store now.
    pub current: PskCredential,
    /// Whether the device registered with `current`.
    pub proven: bool,
    /// The kind of `previous`.
    pub previous_kind: CredentialKind,
    /// The credential the device had before, still accepted until `current` is proven.
    pub previous: Option<PskCredential>,
    /// When `current` was generated (Unix milliseconds; 0: not known, from an older record).
    pub issued_at_ms: u64,
}

impl DmCredential {
    /// The key under which the retiring credential is found while the device proves the new
    /// one: a PSK by its identity, a raw public key by its SubjectPublicKeyInfo, a certificate
    /// by its SHA-256 fingerprint.
    pub fn previous_lookup_key(&self) -> Option<Vec<u8>> {
        let previous = self.previous.as_ref()?;
        Some(lookup_key(self.previous_kind, &previous.identity))
    }
}

/// How a device-management credential of `kind` with `identity` (Security resource 3) is found:
/// see [`DmCredential::previous_lookup_key`].
pub fn lookup_key(kind: CredentialKind, identity: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    match kind {
        CredentialKind::X509 => Sha256::digest(identity).to_vec(),
        CredentialKind::Psk | CredentialKind::Rpk => identity.to_vec(),
    }
}

/// What happened at a device's bootstraps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootstrapStatus {
    /// Bootstrap-Requests accepted.
    pub attempts: u32,
    /// Bootstrap sequences that ended with a successful Bootstrap-Finish.
    pub finished: u32,
    /// When the last one started (Unix milliseconds).
    pub last_attempt_ms: u64,
    /// How the last one ended (`finished`, or the step and error).
    pub last_result: Option<String>,
    /// An operator asked for fresh credentials (rotation) and the device has not
    /// bootstrapped since.
    pub rotation_requested: bool,
}

/// A device's credentials as the bootstrap server knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCredentials {
    /// The endpoint client name.
    pub endpoint: String,
    /// The bootstrap credential the device is given (or the factory one).
    pub bootstrap: PskCredential,
    /// Whether the device has used `bootstrap` (the factory credential is, by construction).
    pub bootstrap_proven: bool,
    /// The bootstrap credential before `bootstrap`, accepted until `bootstrap` is proven.
    pub bootstrap_previous: Option<PskCredential>,
    /// The device-management credential, once generated.
    pub dm: Option<DmCredential>,
    /// History.
    pub status: BootstrapStatus,
}

impl DeviceCredentials {
    /// A device fresh from the factory.
    pub fn factory(endpoint: impl Into<String>, factory: PskCredential) -> DeviceCredentials {
        DeviceCredentials {
            endpoint: endpoint.into(),
            bootstrap: factory,
            bootstrap_proven: true,
            bootstrap_previous: None,
            dm: None,
            status: BootstrapStatus::default(),
        }
    }

    /// Every bootstrap credential accepted now.
    pub fn accepted_bootstrap(&self) -> impl Iterator<Item = &PskCredential> {
        std::iter::once(&self.bootstrap).chain(self.bootstrap_previous.iter())
    }

    fn keys(&self) -> Vec<&SecretBytes> {
        let mut keys: Vec<&SecretBytes> = self.accepted_bootstrap().map(|c| &c.key).collect();
        if let Some(dm) = &self.dm {
            keys.push(&dm.current.key);
            keys.extend(dm.previous.iter().map(|c| &c.key));
        }
        keys
    }
}

/// Why an explicit key is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeakKey {
    /// Fewer than [`MIN_PSK_LEN`] bytes.
    #[error("the PSK has {0} bytes; at least {MIN_PSK_LEN} random bytes are required")]
    TooShort(usize),
    /// The key is, or contains, the endpoint name or the PSK identity.
    #[error("the PSK is derived from the endpoint name or identity")]
    DerivedFromIdentifier,
    /// The key is one byte repeated.
    #[error("the PSK is one repeated byte")]
    Repeated,
    /// Another device has the same key.
    #[error("the PSK is already used by another device")]
    Reused,
    /// A template carries a key (the same for every device of the group).
    #[error("a template cannot carry a key; use generated credentials")]
    InTemplate,
    /// A configuration gives more than one server a credential.
    #[error("only one server of a configuration may have a credential")]
    SeveralCredentials,
}

/// Checks an operator-given PSK for `endpoint`: long enough and not made from an identifier.
pub fn check_explicit_psk(endpoint: &str, credential: &PskCredential) -> Result<(), WeakKey> {
    let key = credential.key.expose();
    if key.len() < MIN_PSK_LEN {
        return Err(WeakKey::TooShort(key.len()));
    }
    let contains = |needle: &[u8]| {
        needle.len() >= 4 && key.windows(needle.len()).any(|window| window == needle)
    };
    let lowered = Zeroizing::new(key.to_ascii_lowercase());
    let lowered_contains = |needle: &[u8]| {
        let needle = needle.to_ascii_lowercase();
        needle.len() >= 4
            && lowered
                .windows(needle.len())
                .any(|window| window == needle.as_slice())
    };
    if contains(endpoint.as_bytes())
        || contains(&credential.identity)
        || lowered_contains(endpoint.as_bytes())
        || key == endpoint.as_bytes()
    {
        return Err(WeakKey::DerivedFromIdentifier);
    }
    if key.iter().all(|b| *b == key[0]) {
        return Err(WeakKey::Repeated);
    }
    Ok(())
}

/// Checks bootstrap settings: at most one server with a credential, explicit keys strong, and
/// no key at all in a template.
pub fn check_settings(endpoint: Option<&str>, settings: &BootstrapSettings) -> Result<(), WeakKey> {
    let with_credential = settings
        .servers
        .iter()
        .filter(|s| !matches!(s.credential, DmCredentialSource::NoSec))
        .count();
    if with_credential > 1 {
        return Err(WeakKey::SeveralCredentials);
    }
    for server in &settings.servers {
        if let DmCredentialSource::ExplicitPsk(credential) = &server.credential {
            match endpoint {
                Some(endpoint) => check_explicit_psk(endpoint, credential)?,
                None => return Err(WeakKey::InTemplate),
            }
        }
    }
    Ok(())
}

/// Bootstrap configurations, templates and device credentials.
pub trait BootstrapStore: Send + Sync {
    /// Stores an endpoint's configuration (checked by [`check_settings`]; an explicit key used
    /// by another device is refused).
    fn put_bootstrap_config(&self, config: DeviceBootstrapConfig) -> StoreFuture<'_, ()>;

    /// An endpoint's own configuration.
    fn get_bootstrap_config<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<DeviceBootstrapConfig>>;

    /// Removes an endpoint's configuration; whether it existed.
    fn remove_bootstrap_config<'a>(&'a self, endpoint: &'a str) -> StoreFuture<'a, bool>;

    /// Stores a template (refused if it carries a key).
    fn put_bootstrap_template(&self, template: BootstrapTemplate) -> StoreFuture<'_, ()>;

    /// Every template, by name.
    fn list_bootstrap_templates(&self) -> StoreFuture<'_, Vec<BootstrapTemplate>>;

    /// Removes a template; whether it existed.
    fn remove_bootstrap_template<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool>;

    /// Stores a device's credentials, replacing the previous record and its identities. An
    /// identity or key owned by another device is a [`StoreError::Conflict`].
    fn put_device_credentials(&self, credentials: DeviceCredentials) -> StoreFuture<'_, ()>;

    /// Stores a device's credentials and, in the same commit, the device-management security
    /// info of its current credential (in this store's [`SecurityStore`] tables: the
    /// embedded store is both). Durable when the future completes with `Ok`: the
    /// Bootstrap-Server calls it before it answers the Bootstrap-Request that will write these
    /// credentials to the device.
    ///
    /// [`SecurityStore`]: crate::SecurityStore
    fn put_device_credentials_and_security(
        &self,
        credentials: DeviceCredentials,
        security: SecurityInfo,
    ) -> StoreFuture<'_, ()>;

    /// Stores the credentials of many new devices in one transaction (all or none); an
    /// endpoint that already has credentials is a [`StoreError::Conflict`].
    fn import_device_credentials(&self, devices: Vec<DeviceCredentials>) -> StoreFuture<'_, ()>;

    /// A device's credentials.
    fn get_device_credentials<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<DeviceCredentials>>;

    /// The device whose current or previous bootstrap identity is `identity`.
    fn device_by_bootstrap_identity<'a>(
        &'a self,
        identity: &'a [u8],
    ) -> StoreFuture<'a, Option<DeviceCredentials>>;

    /// The device whose previous (retiring) device-management identity is `identity`.
    fn device_by_previous_dm_identity<'a>(
        &'a self,
        identity: &'a [u8],
    ) -> StoreFuture<'a, Option<DeviceCredentials>>;

    /// Endpoints with credentials, in order, after `after`.
    fn list_device_endpoints<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<String>>;

    /// Removes a device's credentials and identities; whether it had any.
    fn remove_device_credentials<'a>(&'a self, endpoint: &'a str) -> StoreFuture<'a, bool>;
}

// ---- wire encoding ----------------------------------------------------------------------------

#[derive(Encode, Decode, Zeroize, ZeroizeOnDrop, Default)]
struct WirePsk {
    #[cbor(n(0), with = "minicbor::bytes")]
    identity: Vec<u8>,
    #[cbor(n(1), with = "minicbor::bytes")]
    key: Vec<u8>,
}

#[derive(Encode, Decode, Zeroize, ZeroizeOnDrop, Default)]
struct WireServer {
    #[n(0)]
    short_server_id: u16,
    #[n(1)]
    uri: String,
    #[n(2)]
    lifetime_s: u32,
    #[n(3)]
    binding: String,
    /// 0 generate PSK, 1 generate RPK, 2 generate X.509, 3 explicit PSK, 4 NoSec.
    #[n(4)]
    credential: u8,
    #[n(5)]
    explicit: Option<WirePsk>,
    #[n(6)]
    oscore: bool,
}

#[derive(Encode, Decode, Zeroize, Default)]
struct WireAcl {
    #[n(0)]
    object_id: u16,
    #[n(1)]
    instance_id: u16,
    #[n(2)]
    rights: Vec<(u16, u8)>,
    #[n(3)]
    owner: u16,
}

#[derive(Encode, Decode, Zeroize, ZeroizeOnDrop, Default)]
struct WireSettings {
    #[n(0)]
    servers: Vec<WireServer>,
    #[n(1)]
    acl: Vec<WireAcl>,
    #[n(2)]
    replace_bootstrap_credential: bool,
    #[n(3)]
    bootstrap_uri: String,
    #[n(4)]
    allow_unsecured: bool,
}

#[derive(Encode, Decode, Zeroize, ZeroizeOnDrop, Default)]
struct WireConfig {
    #[n(0)]
    name: String,
    #[n(1)]
    prefix: String,
    #[n(2)]
    settings: WireSettings,
}

#[derive(Encode, Decode, Zeroize, ZeroizeOnDrop, Default)]
struct WireDm {
    #[n(0)]
    short_server_id: u16,
    #[n(1)]
    current: WirePsk,
    #[n(2)]
    proven: bool,
    #[n(3)]
    previous: Option<WirePsk>,
    /// Absent in older records: PSK.
    #[n(4)]
    kind: Option<u8>,
    #[n(5)]
    previous_kind: Option<u8>,
    #[n(6)]
    issued_at_ms: Option<u64>,
}

#[derive(Encode, Decode, Zeroize, ZeroizeOnDrop, Default)]
struct WireCredentials {
    #[n(0)]
    endpoint: String,
    #[n(1)]
    bootstrap: WirePsk,
    #[n(2)]
    bootstrap_proven: bool,
    #[n(3)]
    bootstrap_previous: Option<WirePsk>,
    #[n(4)]
    dm: Option<WireDm>,
    #[n(5)]
    attempts: u32,
    #[n(6)]
    finished: u32,
    #[n(7)]
    last_attempt_ms: u64,
    #[n(8)]
    last_result: Option<String>,
    #[n(9)]
    rotation_requested: bool,
}

fn wire_psk(credential: &PskCredential) -> WirePsk {
    WirePsk {
        identity: credential.identity.clone(),
        key: credential.key.expose().to_vec(),
    }
}

fn psk_of(wire: &mut WirePsk) -> PskCredential {
    PskCredential {
        identity: std::mem::take(&mut wire.identity),
        key: SecretBytes::new(std::mem::take(&mut wire.key)),
    }
}

fn kind_code(kind: CredentialKind) -> u8 {
    match kind {
        CredentialKind::Psk => 0,
        CredentialKind::Rpk => 1,
        CredentialKind::X509 => 2,
    }
}

fn kind_of(code: Option<u8>) -> CredentialKind {
    match code {
        Some(1) => CredentialKind::Rpk,
        Some(2) => CredentialKind::X509,
        _ => CredentialKind::Psk,
    }
}

fn wire_settings(settings: &BootstrapSettings) -> WireSettings {
    WireSettings {
        servers: settings
            .servers
            .iter()
            .map(|server| {
                let (credential, explicit) = match &server.credential {
                    DmCredentialSource::Generate(kind) => (kind_code(*kind), None),
                    DmCredentialSource::ExplicitPsk(psk) => (3, Some(wire_psk(psk))),
                    DmCredentialSource::NoSec => (4, None),
                };
                WireServer {
                    short_server_id: server.short_server_id,
                    uri: server.uri.clone(),
                    lifetime_s: server.lifetime_s,
                    binding: server.binding.clone(),
                    credential,
                    explicit,
                    oscore: server.oscore,
                }
            })
            .collect(),
        acl: settings
            .acl
            .iter()
            .map(|acl| WireAcl {
                object_id: acl.object_id,
                instance_id: acl.instance_id,
                rights: acl.rights.clone(),
                owner: acl.owner,
            })
            .collect(),
        replace_bootstrap_credential: settings.replace_bootstrap_credential,
        bootstrap_uri: settings.bootstrap_uri.clone(),
        allow_unsecured: settings.allow_unsecured,
    }
}

fn settings_of(
    wire: &mut WireSettings,
    kind: &'static str,
) -> Result<BootstrapSettings, DecodeError> {
    let mut servers = Vec::with_capacity(wire.servers.len());
    for server in &mut wire.servers {
        let credential = match (server.credential, server.explicit.as_mut()) {
            (0, _) => DmCredentialSource::Generate(CredentialKind::Psk),
            (1, _) => DmCredentialSource::Generate(CredentialKind::Rpk),
            (2, _) => DmCredentialSource::Generate(CredentialKind::X509),
            (3, Some(psk)) => DmCredentialSource::ExplicitPsk(psk_of(psk)),
            (4, _) => DmCredentialSource::NoSec,
            _ => {
                return Err(DecodeError::InvalidField {
                    kind,
                    field: "credential source",
                });
            }
        };
        servers.push(DmServerConfig {
            short_server_id: server.short_server_id,
            uri: std::mem::take(&mut server.uri),
            lifetime_s: server.lifetime_s,
            binding: std::mem::take(&mut server.binding),
            credential,
            oscore: server.oscore,
        });
    }
    Ok(BootstrapSettings {
        servers,
        acl: wire
            .acl
            .iter_mut()
            .map(|acl| AclConfig {
                object_id: acl.object_id,
                instance_id: acl.instance_id,
                rights: std::mem::take(&mut acl.rights),
                owner: acl.owner,
            })
            .collect(),
        replace_bootstrap_credential: wire.replace_bootstrap_credential,
        bootstrap_uri: std::mem::take(&mut wire.bootstrap_uri),
        allow_unsecured: wire.allow_unsecured,
    })
}

fn wire_credentials(credentials: &DeviceCredentials) -> WireCredentials {
    WireCredentials {
        endpoint: credentials.endpoint.clone(),
        bootstrap: wire_psk(&credentials.bootstrap),
        bootstrap_proven: credentials.bootstrap_proven,
        bootstrap_previous: credentials.bootstrap_previous.as_ref().map(wire_psk),
        dm: credentials.dm.as_ref().map(|dm| WireDm {
            short_server_id: dm.short_server_id,
            current: wire_psk(&dm.current),
            proven: dm.proven,
            previous: dm.previous.as_ref().map(wire_psk),
            kind: Some(kind_code(dm.kind)),
            previous_kind: Some(kind_code(dm.previous_kind)),
            issued_at_ms: Some(dm.issued_at_ms),
        }),
        attempts: credentials.status.attempts,
        finished: credentials.status.finished,
        last_attempt_ms: credentials.status.last_attempt_ms,
        last_result: credentials.status.last_result.clone(),
        rotation_requested: credentials.status.rotation_requested,
    }
}

fn credentials_of(wire: &mut WireCredentials) -> DeviceCredentials {
    DeviceCredentials {
        endpoint: std::mem::take(&mut wire.endpoint),
        bootstrap: psk_of(&mut wire.bootstrap),
        bootstrap_proven: wire.bootstrap_proven,
        bootstrap_previous: wire.bootstrap_previous.as_mut().map(psk_of),
        dm: wire.dm.as_mut().map(|dm| DmCredential {
            short_server_id: dm.short_server_id,
            kind: kind_of(dm.kind),
            current: psk_of(&mut dm.current),
            proven: dm.proven,
            previous_kind: kind_of(dm.previous_kind),
            previous: dm.previous.as_mut().map(psk_of),
            issued_at_ms: dm.issued_at_ms.unwrap_or(0),
        }),
        status: BootstrapStatus {
            attempts: wire.attempts,
            finished: wire.finished,
            last_attempt_ms: wire.last_attempt_ms,
            last_result: wire.last_result.take(),
            rotation_requested: wire.rotation_requested,
        },
    }
}

fn encode<T: Encode<()>>(wire: &T) -> Zeroizing<Vec<u8>> {
    let mut bytes = Zeroizing::new(vec![FORMAT]);
    // Writing CBOR into a Vec cannot fail.
    let _ = minicbor::encode(wire, &mut *bytes);
    bytes
}

fn decode<'b, T: Decode<'b, ()>>(kind: &'static str, bytes: &'b [u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty { kind })?;
    if version != FORMAT {
        return Err(DecodeError::UnsupportedVersion {
            kind,
            version,
            supported: FORMAT,
        });
    }
    let mut decoder = minicbor::Decoder::new(body);
    let wire = decoder.decode().map_err(|e| DecodeError::Malformed {
        kind,
        reason: e.to_string(),
    })?;
    if decoder.position() != body.len() {
        return Err(DecodeError::Malformed {
            kind,
            reason: "trailing bytes".into(),
        });
    }
    Ok(wire)
}

fn context(table: &str, key: &str) -> Vec<u8> {
    let mut context = format!("cairn-store/{table}\0").into_bytes();
    context.extend_from_slice(key.as_bytes());
    context
}

// ---- the embedded implementation --------------------------------------------------------------

/// Opens a table for reading; a table never written to reads as empty.
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

impl EmbeddedStore {
    /// A write in its own transaction (configurations, templates, imports, removals).
    fn bs_write<T, F>(&self, operation: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.write(operation)
    }

    /// A write that shares its transaction and `fsync` with the other writes queued at the
    /// same moment (a device's credentials at bootstrap, its result, its proof). `operation`
    /// may run twice (alone, after another write of its group failed), so it only writes what
    /// it computes from its input and `txn`.
    fn bs_write_grouped<T, F>(&self, operation: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnMut(&Inner, &WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_grouped(operation)
    }

    fn bs_read<T>(
        &self,
        operation: impl FnOnce(&Inner, &ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.database().begin_read()?;
        operation(self.inner(), &txn)
    }

    /// The current (or previous) bootstrap PSK of an identity with its endpoint, synchronously
    /// (for the bootstrap server's DTLS PSK resolver).
    pub fn bootstrap_psk_blocking(
        &self,
        identity: &[u8],
    ) -> Result<Option<(String, SecretBytes)>, StoreError> {
        let device =
            self.bs_read(|store, txn| store.read_by_index(txn, BOOTSTRAP_IDENTITIES, identity))?;
        Ok(device.and_then(|device| {
            let key = device
                .accepted_bootstrap()
                .find(|c| c.identity == identity)
                .map(|c| c.key.clone())?;
            Some((device.endpoint, key))
        }))
    }

    /// The retiring device-management PSK of an identity with its endpoint, synchronously (for
    /// the device-management server's DTLS PSK resolver while a device changes credentials).
    pub fn previous_dm_psk_blocking(
        &self,
        identity: &[u8],
    ) -> Result<Option<(String, SecretBytes)>, StoreError> {
        let device =
            self.bs_read(|store, txn| store.read_by_index(txn, PREVIOUS_DM_IDENTITIES, identity))?;
        Ok(device.and_then(|device| {
            let dm = device.dm?;
            let previous = dm
                .previous
                .filter(|_| dm.previous_kind == CredentialKind::Psk)?;
            (previous.identity == identity).then_some((device.endpoint, previous.key))
        }))
    }
}

impl EmbeddedStore {
    /// The endpoint whose retiring device-management credential is the raw public key
    /// `subject_public_key_info`, synchronously (for the DM server's raw-public-key resolver
    /// while a device changes credentials).
    pub fn previous_dm_rpk_blocking(
        &self,
        subject_public_key_info: &[u8],
    ) -> Result<Option<String>, StoreError> {
        let device = self.bs_read(|store, txn| {
            store.read_by_index(txn, PREVIOUS_DM_IDENTITIES, subject_public_key_info)
        })?;
        Ok(device.and_then(|device| {
            let dm = device.dm?;
            let previous = dm
                .previous
                .filter(|_| dm.previous_kind == CredentialKind::Rpk)?;
            (previous.identity == subject_public_key_info).then_some(device.endpoint)
        }))
    }
}

impl Inner {
    fn seal_record(&self, table: &str, key: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.master_key().seal(plain, &context(table, key))
    }

    fn open_record(
        &self,
        table: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<SecretBytes, StoreError> {
        self.master_key()
            .open(sealed, &context(table, key))
            .ok_or_else(|| StoreError::SecretTampered {
                record: format!("{table} entry {key:?}"),
            })
    }

    fn config_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        endpoint: &str,
    ) -> Result<Option<DeviceBootstrapConfig>, StoreError> {
        let Some(sealed) = table.get(endpoint)? else {
            return Ok(None);
        };
        let plain = self.open_record("bootstrap_device_configs", endpoint, sealed.value())?;
        let mut wire: WireConfig = decode("bootstrap config", plain.expose())?;
        Ok(Some(DeviceBootstrapConfig {
            endpoint: std::mem::take(&mut wire.name),
            settings: settings_of(&mut wire.settings, "bootstrap config")?,
        }))
    }

    fn credentials_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        endpoint: &str,
    ) -> Result<Option<DeviceCredentials>, StoreError> {
        let Some(sealed) = table.get(endpoint)? else {
            return Ok(None);
        };
        let plain = self.open_record("bootstrap_credentials", endpoint, sealed.value())?;
        let mut wire: WireCredentials = decode("device credentials", plain.expose())?;
        Ok(Some(credentials_of(&mut wire)))
    }

    fn read_credentials(
        &self,
        txn: &ReadTransaction,
        endpoint: &str,
    ) -> Result<Option<DeviceCredentials>, StoreError> {
        match read_table(txn, CREDENTIALS)? {
            Some(table) => self.credentials_in(&table, endpoint),
            None => Ok(None),
        }
    }

    fn read_by_index(
        &self,
        txn: &ReadTransaction,
        index: TableDefinition<&'static [u8], &'static str>,
        identity: &[u8],
    ) -> Result<Option<DeviceCredentials>, StoreError> {
        let Some(table) = read_table(txn, index)? else {
            return Ok(None);
        };
        let Some(endpoint) = table.get(identity)? else {
            return Ok(None);
        };
        self.read_credentials(txn, endpoint.value())
    }

    /// The HMAC key of the key-uniqueness index (created on first use, sealed).
    fn fingerprint_key(&self, txn: &WriteTransaction) -> Result<SecretBytes, StoreError> {
        let mut meta = txn.open_table(META)?;
        let existing = meta.get(FINGERPRINT_KEY)?.map(|v| v.value().to_vec());
        if let Some(sealed) = existing {
            return self.open_record("bootstrap_meta", FINGERPRINT_KEY, &sealed);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut())
            .map_err(|e| crate::error::MasterKeyError::Random(e.to_string()))?;
        let sealed = self.seal_record("bootstrap_meta", FINGERPRINT_KEY, key.as_ref())?;
        meta.insert(FINGERPRINT_KEY, sealed.as_slice())?;
        Ok(SecretBytes::new(key.to_vec()))
    }

    fn fingerprints(fingerprint_key: &SecretBytes, keys: &[&SecretBytes], tag: u8) -> Vec<Vec<u8>> {
        keys.iter()
            .map(|key| {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(fingerprint_key.expose())
                    .expect("HMAC takes keys of any length");
                mac.update(key.expose());
                let mut value = mac.finalize().into_bytes().to_vec();
                value.push(tag);
                value
            })
            .collect()
    }

    /// Replaces `endpoint`'s entries of an index (`old` → `new`), refusing entries another
    /// endpoint owns.
    fn reindex(
        txn: &WriteTransaction,
        index: TableDefinition<&'static [u8], &'static str>,
        endpoint: &str,
        old: &[Vec<u8>],
        new: &[Vec<u8>],
        what: &str,
    ) -> Result<(), StoreError> {
        let mut table = txn.open_table(index)?;
        for entry in old {
            let owned = table.get(entry.as_slice())?.map(|o| o.value() == endpoint);
            if owned == Some(true) {
                table.remove(entry.as_slice())?;
            }
        }
        for entry in new {
            let owner = table.get(entry.as_slice())?.map(|o| o.value().to_owned());
            if let Some(owner) = owner.filter(|owner| owner != endpoint) {
                return Err(StoreError::Conflict(format!(
                    "{what} is already used by endpoint {owner:?}"
                )));
            }
            table.insert(entry.as_slice(), endpoint)?;
        }
        Ok(())
    }

    fn check_fingerprints_free(
        txn: &WriteTransaction,
        endpoint: &str,
        fingerprints: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let table = txn.open_table(KEY_FINGERPRINTS)?;
        for fingerprint in fingerprints {
            // The other tag's entry for the same key.
            let mut other = fingerprint.clone();
            if let Some(tag) = other.last_mut() {
                *tag = if *tag == b'c' { b'k' } else { b'c' };
            }
            for entry in [fingerprint, &other] {
                let owner = table.get(entry.as_slice())?.map(|o| o.value().to_owned());
                if owner.is_some_and(|owner| owner != endpoint) {
                    return Err(StoreError::Conflict(WeakKey::Reused.to_string()));
                }
            }
        }
        Ok(())
    }

    fn write_credentials(
        &self,
        txn: &WriteTransaction,
        credentials: &DeviceCredentials,
        must_be_new: bool,
    ) -> Result<(), StoreError> {
        let endpoint = credentials.endpoint.as_str();
        if endpoint.is_empty() {
            return Err(StoreError::InvalidInput("endpoint must not be empty"));
        }
        for key in credentials.keys() {
            if key.len() < MIN_PSK_LEN {
                return Err(StoreError::InvalidInput("a PSK shorter than 16 bytes"));
            }
        }
        let previous = {
            let table = txn.open_table(CREDENTIALS)?;
            self.credentials_in(&table, endpoint)?
        };
        if must_be_new && previous.is_some() {
            return Err(StoreError::Conflict(format!(
                "endpoint {endpoint:?} already has bootstrap credentials"
            )));
        }
        let identities = |c: Option<&DeviceCredentials>| -> Vec<Vec<u8>> {
            c.map(|c| c.accepted_bootstrap().map(|p| p.identity.clone()).collect())
                .unwrap_or_default()
        };
        let previous_dm = |c: Option<&DeviceCredentials>| -> Vec<Vec<u8>> {
            c.and_then(|c| c.dm.as_ref())
                .and_then(DmCredential::previous_lookup_key)
                .map(|key| vec![key])
                .unwrap_or_default()
        };
        // An index whose entries for the endpoint stay the same (a status update) is not
        // rewritten.
        let (old, new) = (identities(previous.as_ref()), identities(Some(credentials)));
        if old != new {
            Inner::reindex(
                txn,
                BOOTSTRAP_IDENTITIES,
                endpoint,
                &old,
                &new,
                "a bootstrap PSK identity",
            )?;
        }
        let (old, new) = (
            previous_dm(previous.as_ref()),
            previous_dm(Some(credentials)),
        );
        if old != new {
            Inner::reindex(
                txn,
                PREVIOUS_DM_IDENTITIES,
                endpoint,
                &old,
                &new,
                "a PSK identity",
            )?;
        }
        let fingerprint_key = self.fingerprint_key(txn)?;
        let old = previous
            .as_ref()
            .map(|p| Inner::fingerprints(&fingerprint_key, &p.keys(), b'k'))
            .unwrap_or_default();
        let new = Inner::fingerprints(&fingerprint_key, &credentials.keys(), b'k');
        if old != new {
            Inner::check_fingerprints_free(txn, endpoint, &new)?;
            Inner::reindex(txn, KEY_FINGERPRINTS, endpoint, &old, &new, "a PSK")?;
        }
        let plain = encode(&wire_credentials(credentials));
        let sealed = self.seal_record("bootstrap_credentials", endpoint, &plain)?;
        txn.open_table(CREDENTIALS)?
            .insert(endpoint, sealed.as_slice())?;
        Ok(())
    }

    fn config_keys(settings: &BootstrapSettings) -> Vec<SecretBytes> {
        settings
            .servers
            .iter()
            .filter_map(|s| match &s.credential {
                DmCredentialSource::ExplicitPsk(psk) => Some(psk.key.clone()),
                _ => None,
            })
            .collect()
    }
}

impl BootstrapStore for EmbeddedStore {
    fn put_bootstrap_config(&self, config: DeviceBootstrapConfig) -> StoreFuture<'_, ()> {
        if config.endpoint.is_empty() {
            return Box::pin(std::future::ready(Err(StoreError::InvalidInput(
                "endpoint must not be empty",
            ))));
        }
        if let Err(weak) = check_settings(Some(&config.endpoint), &config.settings) {
            return Box::pin(std::future::ready(Err(StoreError::Conflict(
                weak.to_string(),
            ))));
        }
        self.bs_write(move |store, txn| {
            let endpoint = config.endpoint.as_str();
            let previous = {
                let table = txn.open_table(CONFIGS)?;
                store.config_in(&table, endpoint)?
            };
            let fingerprint_key = store.fingerprint_key(txn)?;
            let keys = |settings: &BootstrapSettings| Inner::config_keys(settings);
            let old_keys = previous
                .as_ref()
                .map(|p| keys(&p.settings))
                .unwrap_or_default();
            let new_keys = keys(&config.settings);
            let old =
                Inner::fingerprints(&fingerprint_key, &old_keys.iter().collect::<Vec<_>>(), b'c');
            let new =
                Inner::fingerprints(&fingerprint_key, &new_keys.iter().collect::<Vec<_>>(), b'c');
            Inner::check_fingerprints_free(txn, endpoint, &new)?;
            Inner::reindex(txn, KEY_FINGERPRINTS, endpoint, &old, &new, "a PSK")?;
            let plain = encode(&WireConfig {
                name: config.endpoint.clone(),
                prefix: String::new(),
                settings: wire_settings(&config.settings),
            });
            let sealed = store.seal_record("bootstrap_device_configs", endpoint, &plain)?;
            txn.open_table(CONFIGS)?
                .insert(endpoint, sealed.as_slice())?;
            Ok(())
        })
    }

    fn get_bootstrap_config<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<DeviceBootstrapConfig>> {
        Box::pin(std::future::ready(self.bs_read(
            |store, txn| match read_table(txn, CONFIGS)? {
                Some(table) => store.config_in(&table, endpoint),
                None => Ok(None),
            },
        )))
    }

    fn remove_bootstrap_config<'a>(&'a self, endpoint: &'a str) -> StoreFuture<'a, bool> {
        let endpoint = endpoint.to_owned();
        self.bs_write(move |store, txn| {
            let previous = {
                let table = txn.open_table(CONFIGS)?;
                store.config_in(&table, &endpoint)?
            };
            let Some(previous) = previous else {
                return Ok(false);
            };
            let fingerprint_key = store.fingerprint_key(txn)?;
            let keys = Inner::config_keys(&previous.settings);
            let old = Inner::fingerprints(&fingerprint_key, &keys.iter().collect::<Vec<_>>(), b'c');
            Inner::reindex(txn, KEY_FINGERPRINTS, &endpoint, &old, &[], "a PSK")?;
            txn.open_table(CONFIGS)?.remove(endpoint.as_str())?;
            Ok(true)
        })
    }

    fn put_bootstrap_template(&self, template: BootstrapTemplate) -> StoreFuture<'_, ()> {
        if template.name.is_empty() {
            return Box::pin(std::future::ready(Err(StoreError::InvalidInput(
                "template name must not be empty",
            ))));
        }
        if let Err(weak) = check_settings(None, &template.settings) {
            return Box::pin(std::future::ready(Err(StoreError::Conflict(
                weak.to_string(),
            ))));
        }
        self.bs_write(move |_, txn| {
            let bytes = encode(&WireConfig {
                name: template.name.clone(),
                prefix: template.endpoint_prefix.clone(),
                settings: wire_settings(&template.settings),
            });
            txn.open_table(TEMPLATES)?
                .insert(template.name.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    fn list_bootstrap_templates(&self) -> StoreFuture<'_, Vec<BootstrapTemplate>> {
        Box::pin(std::future::ready(self.bs_read(|_, txn| {
            let Some(table) = read_table(txn, TEMPLATES)? else {
                return Ok(Vec::new());
            };
            let mut templates = Vec::new();
            for entry in table.iter()? {
                let (_, bytes) = entry?;
                let mut wire: WireConfig = decode("bootstrap template", bytes.value())?;
                templates.push(BootstrapTemplate {
                    name: std::mem::take(&mut wire.name),
                    endpoint_prefix: std::mem::take(&mut wire.prefix),
                    settings: settings_of(&mut wire.settings, "bootstrap template")?,
                });
            }
            Ok(templates)
        })))
    }

    fn remove_bootstrap_template<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool> {
        let name = name.to_owned();
        self.bs_write(move |_, txn| Ok(txn.open_table(TEMPLATES)?.remove(name.as_str())?.is_some()))
    }

    fn put_device_credentials(&self, credentials: DeviceCredentials) -> StoreFuture<'_, ()> {
        // Re-runnable: the record is given; the indexes are recomputed from `txn`.
        self.bs_write_grouped(move |store, txn| store.write_credentials(txn, &credentials, false))
    }

    fn put_device_credentials_and_security(
        &self,
        credentials: DeviceCredentials,
        security: SecurityInfo,
    ) -> StoreFuture<'_, ()> {
        if security.endpoint != credentials.endpoint {
            return Box::pin(std::future::ready(Err(StoreError::InvalidInput(
                "the security info is another endpoint's",
            ))));
        }
        self.bs_write_grouped(move |store, txn| {
            store.write_credentials(txn, &credentials, false)?;
            store.put_security_info(txn, &security)?;
            Ok(())
        })
    }

    fn import_device_credentials(&self, devices: Vec<DeviceCredentials>) -> StoreFuture<'_, ()> {
        self.bs_write(move |store, txn| {
            for device in &devices {
                store.write_credentials(txn, device, true)?;
            }
            Ok(())
        })
    }

    fn get_device_credentials<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<DeviceCredentials>> {
        Box::pin(std::future::ready(
            self.bs_read(|store, txn| store.read_credentials(txn, endpoint)),
        ))
    }

    fn device_by_bootstrap_identity<'a>(
        &'a self,
        identity: &'a [u8],
    ) -> StoreFuture<'a, Option<DeviceCredentials>> {
        Box::pin(std::future::ready(self.bs_read(|store, txn| {
            store.read_by_index(txn, BOOTSTRAP_IDENTITIES, identity)
        })))
    }

    fn device_by_previous_dm_identity<'a>(
        &'a self,
        identity: &'a [u8],
    ) -> StoreFuture<'a, Option<DeviceCredentials>> {
        Box::pin(std::future::ready(self.bs_read(|store, txn| {
            store.read_by_index(txn, PREVIOUS_DM_IDENTITIES, identity)
        })))
    }

    fn list_device_endpoints<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<String>> {
        Box::pin(std::future::ready(self.bs_read(|_, txn| {
            let Some(table) = read_table(txn, CREDENTIALS)? else {
                return Ok(Page {
                    items: Vec::new(),
                    next_cursor: None,
                });
            };
            let range = match after {
                Some(after) => table.range::<&str>((
                    std::ops::Bound::Excluded(after),
                    std::ops::Bound::Unbounded,
                ))?,
                None => table.range::<&str>(..)?,
            };
            let mut items = Vec::new();
            for entry in range {
                let (key, _) = entry?;
                if items.len() == limit {
                    let next_cursor = items.last().cloned();
                    return Ok(Page { items, next_cursor });
                }
                items.push(key.value().to_owned());
            }
            Ok(Page {
                items,
                next_cursor: None,
            })
        })))
    }

    fn remove_device_credentials<'a>(&'a self, endpoint: &'a str) -> StoreFuture<'a, bool> {
        let endpoint = endpoint.to_owned();
        self.bs_write(move |store, txn| {
            let previous = {
                let table = txn.open_table(CREDENTIALS)?;
                store.credentials_in(&table, &endpoint)?
            };
            let Some(previous) = previous else {
                return Ok(false);
            };
            let identities: Vec<Vec<u8>> = previous
                .accepted_bootstrap()
                .map(|c| c.identity.clone())
                .collect();
            Inner::reindex(txn, BOOTSTRAP_IDENTITIES, &endpoint, &identities, &[], "")?;
            let retiring: Vec<Vec<u8>> = previous
                .dm
                .iter()
                .filter_map(DmCredential::previous_lookup_key)
                .collect();
            Inner::reindex(txn, PREVIOUS_DM_IDENTITIES, &endpoint, &retiring, &[], "")?;
            let fingerprint_key = store.fingerprint_key(txn)?;
            let old = Inner::fingerprints(&fingerprint_key, &previous.keys(), b'k');
            Inner::reindex(txn, KEY_FINGERPRINTS, &endpoint, &old, &[], "")?;
            txn.open_table(CREDENTIALS)?.remove(endpoint.as_str())?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{MasterKey, MasterKeySource};

    fn store(dir: &std::path::Path) -> EmbeddedStore {
        EmbeddedStore::open_with(dir, MasterKeySource::Key(MasterKey::from_bytes(&[9; 32])))
            .unwrap()
    }

    fn psk(identity: &str, key: &[u8]) -> PskCredential {
        PskCredential {
            identity: identity.as_bytes().to_vec(),
            key: SecretBytes::new(key.to_vec()),
        }
    }

    fn settings(credential: DmCredentialSource) -> BootstrapSettings {
        BootstrapSettings {
            servers: vec![DmServerConfig {
                short_server_id: 1,
                uri: "coaps://127.0.0.1:5684".into(),
                lifetime_s: 300,
                binding: "U".into(),
                credential,
                oscore: false,
            }],
            acl: vec![AclConfig {
                object_id: 3,
                instance_id: 0,
                rights: vec![(1, 0b11111)],
                owner: 1,
            }],
            replace_bootstrap_credential: true,
            bootstrap_uri: "coaps://127.0.0.1:5784".into(),
            allow_unsecured: false,
        }
    }

    #[test]
    fn keys_made_from_identifiers_are_refused() {
        let weak = |key: &[u8]| check_explicit_psk("sensor-0042", &psk("id-0042", key));
        assert_eq!(weak(b"short"), Err(WeakKey::TooShort(5)));
        assert_eq!(weak(b"sensor-0042"), Err(WeakKey::TooShort(11)));
        assert_eq!(
            weak(b"sensor-0042-secret-suffix"),
            Err(WeakKey::DerivedFromIdentifier)
        );
        assert_eq!(
            weak(b"prefix-SENSOR-0042-upper"),
            Err(WeakKey::DerivedFromIdentifier)
        );
        assert_eq!(
            weak(b"xxid-0042xxxxxxxxxxxx"),
            Err(WeakKey::DerivedFromIdentifier)
        );
        assert_eq!(weak(&[7; 32]), Err(WeakKey::Repeated));
        assert_eq!(
            weak(b"\x8a\x11\x03\x9f\x5c\x2d\x77\x01\xee\x42\x90\x1b\x6a\x3c\xd4\x58"),
            Ok(())
        );
        let template = settings(DmCredentialSource::ExplicitPsk(psk(
            "x",
            b"\x8a\x11\x03\x9f\x5c\x2d\x77\x01\xee\x42\x90\x1b\x6a\x3c\xd4\x58",
        )));
        assert_eq!(check_settings(None, &template), Err(WeakKey::InTemplate));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn configs_templates_and_credentials_round_trip_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let key = b"\x8a\x11\x03\x9f\x5c\x2d\x77\x01\xee\x42\x90\x1b\x6a\x3c\xd4\x58";
        let config = DeviceBootstrapConfig {
            endpoint: "dev-1".into(),
            settings: settings(DmCredentialSource::ExplicitPsk(psk("dm-1", key))),
        };
        store.put_bootstrap_config(config.clone()).await.unwrap();
        assert_eq!(
            store.get_bootstrap_config("dev-1").await.unwrap(),
            Some(config)
        );
        // The same explicit key for another device is refused.
        let copy = DeviceBootstrapConfig {
            endpoint: "dev-2".into(),
            settings: settings(DmCredentialSource::ExplicitPsk(psk("dm-2", key))),
        };
        assert!(matches!(
            store.put_bootstrap_config(copy).await,
            Err(StoreError::Conflict(_))
        ));
        let template = BootstrapTemplate {
            name: "fleet".into(),
            endpoint_prefix: "urn:dev:".into(),
            settings: settings(DmCredentialSource::Generate(CredentialKind::Psk)),
        };
        store
            .put_bootstrap_template(template.clone())
            .await
            .unwrap();
        assert_eq!(
            store.list_bootstrap_templates().await.unwrap(),
            vec![template]
        );

        let mut device = DeviceCredentials::factory(
            "dev-1",
            psk(
                "factory-1",
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            ),
        );
        store
            .import_device_credentials(vec![device.clone()])
            .await
            .unwrap();
        assert!(
            store
                .import_device_credentials(vec![device.clone()])
                .await
                .is_err()
        );
        let (endpoint, found) = store.bootstrap_psk_blocking(b"factory-1").unwrap().unwrap();
        assert_eq!(
            (endpoint.as_str(), found.expose()),
            (
                "dev-1",
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16][..]
            )
        );

        // Replacement: the factory credential stays valid as the previous one.
        device.bootstrap_previous = Some(device.bootstrap.clone());
        device.bootstrap = psk(
            "new-1",
            &[0x55; 31].iter().chain(&[1]).copied().collect::<Vec<_>>(),
        );
        device.bootstrap_proven = false;
        device.dm = Some(DmCredential {
            short_server_id: 1,
            kind: CredentialKind::Psk,
            previous_kind: CredentialKind::Psk,
            issued_at_ms: 0,
            current: psk(
                "dm-new",
                &[0x66; 31].iter().chain(&[2]).copied().collect::<Vec<_>>(),
            ),
            proven: false,
            previous: Some(psk(
                "dm-old",
                &[0x77; 31].iter().chain(&[3]).copied().collect::<Vec<_>>(),
            )),
        });
        store.put_device_credentials(device.clone()).await.unwrap();
        assert!(
            store
                .bootstrap_psk_blocking(b"factory-1")
                .unwrap()
                .is_some()
        );
        assert!(store.bootstrap_psk_blocking(b"new-1").unwrap().is_some());
        assert_eq!(
            store
                .previous_dm_psk_blocking(b"dm-old")
                .unwrap()
                .unwrap()
                .0,
            "dev-1"
        );
        assert_eq!(
            store.get_device_credentials("dev-1").await.unwrap(),
            Some(device.clone())
        );

        // Proven: the previous ones are retired from the indexes.
        device.bootstrap_previous = None;
        device.bootstrap_proven = true;
        if let Some(dm) = device.dm.as_mut() {
            dm.previous = None;
            dm.proven = true;
        }
        store.put_device_credentials(device.clone()).await.unwrap();
        assert!(
            store
                .bootstrap_psk_blocking(b"factory-1")
                .unwrap()
                .is_none()
        );
        assert!(store.previous_dm_psk_blocking(b"dm-old").unwrap().is_none());
        assert!(
            store
                .device_by_bootstrap_identity(b"new-1")
                .await
                .unwrap()
                .is_some()
        );

        // Another device may not take an identity or a key of this one.
        let thief = DeviceCredentials::factory(
            "dev-3",
            psk(
                "new-1",
                &[0x21; 15].iter().chain(&[9]).copied().collect::<Vec<_>>(),
            ),
        );
        assert!(matches!(
            store.put_device_credentials(thief).await,
            Err(StoreError::Conflict(_))
        ));
        let twin =
            DeviceCredentials::factory("dev-3", device.bootstrap.clone().with_identity("other"));
        assert!(matches!(
            store.put_device_credentials(twin).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.list_device_endpoints(None, 10).await.unwrap().items,
            vec!["dev-1"]
        );
        assert!(store.remove_device_credentials("dev-1").await.unwrap());
        assert!(store.bootstrap_psk_blocking(b"new-1").unwrap().is_none());
    }

    impl PskCredential {
        fn with_identity(mut self, identity: &str) -> Self {
            self.identity = identity.as_bytes().to_vec();
            self
        }
    }
}
