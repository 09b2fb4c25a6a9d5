//! Registrations (LwM2M Core 1.2 §6.2, Client Registration Interface): the in-memory index of
//! the store's registration records by id, endpoint and address, and what the server derives
//! from a record (object versions, security).

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashTable;
use std::net::SocketAddr;

use cairn_coap::link_format;
use cairn_lwm2m::LwM2mPath;
use cairn_lwm2m::model::Version;
use cairn_store::{PeerIdentity, Registration};

/// Lifetime when the client gives none (Core §6.2.1: 86400 s).
pub const DEFAULT_LIFETIME: u32 = 86_400;

/// The object versions a registration declared (`</3>;ver=1.1`), for choosing models.
pub fn object_versions(registration: &Registration) -> BTreeMap<u16, Version> {
    object_versions_of_links(&registration.object_links)
}

/// [`object_versions`] of a registration's link-format payload.
pub fn object_versions_of_links(object_links: &str) -> BTreeMap<u16, Version> {
    let Ok(links) = link_format::parse(object_links) else {
        return BTreeMap::new();
    };
    let mut versions = BTreeMap::new();
    for link in &links {
        let Some(object) = link
            .target
            .parse::<LwM2mPath>()
            .ok()
            .and_then(|p| p.object_id())
        else {
            continue;
        };
        let declared = link
            .attribute("ver")
            .flatten()
            .and_then(|v| v.trim_matches('"').parse().ok());
        match declared {
            Some(version) => {
                versions.insert(object, version);
            }
            None => {
                versions.entry(object).or_insert(Version::V1_0);
            }
        }
    }
    versions
}

/// The link targets of a registration's link-format payload (`/3/0`).
fn object_paths(object_links: &str) -> Vec<String> {
    link_format::parse(object_links)
        .map(|links| links.iter().map(|l| l.target.to_string()).collect())
        .unwrap_or_default()
}

/// The objects of a registration as CoRE link format (`</3>;ver=1.1,</3/0>`), as stored.
pub fn object_links(objects: &[cairn_lwm2m::RegisteredObject]) -> String {
    let links: Vec<link_format::Link> = objects
        .iter()
        .map(|object| {
            let link = link_format::Link::new(object.path.to_string());
            match object.version {
                Some(version) => link.with("ver", Some(version.to_string())),
                None => link,
            }
        })
        .collect();
    link_format::emit(&links)
}

/// The LwM2M version of a registration (1.0 when unreadable).
pub fn lwm2m_version(registration: &Registration) -> Version {
    registration.lwm2m_version.parse().unwrap_or(Version::V1_0)
}

/// Whether the registration came over DTLS.
pub fn is_secure(registration: &Registration) -> bool {
    !matches!(registration.identity, PeerIdentity::Unsecured)
}

/// Registrations indexed by id, endpoint name and address.
///
/// Held for every registered device, so it is kept small: each registration is one compact
/// entry in a slab (the id and short endpoint names inline, longer strings boxed to their
/// length, the object links shared by every registration that declared the same ones, the
/// common LwM2M versions and bindings not allocated at all, the rarely set fields boxed
/// together, a PSK identity equal to the endpoint name not stored twice, the object paths
/// derived from the links when asked for), and the three indexes are hash tables of slab
/// positions that store no key of their own.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_id: HashTable<u32>,
    by_endpoint: HashTable<u32>,
    by_address: HashTable<u32>,
    /// The distinct object links of the live entries (a fleet of one device type shares one).
    links: HashTable<Arc<str>>,
    hasher: foldhash::fast::RandomState,
    len: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("len", &self.len).finish()
    }
}

struct Entry {
    id: Short,
    endpoint: Short,
    object_links: Arc<str>,
    identity: Identity,
    /// An index into [`KNOWN`], or [`OTHER`] for a value kept in `rare`.
    lwm2m_version: u8,
    binding: u8,
    queue_mode: bool,
    rare: Option<Box<Rare>>,
    peer_address: Address,
    registered_at_ms: u64,
    last_update_ms: u64,
    lifetime_s: u32,
}

/// A peer address in 16 bytes: IPv4 inline, IPv6 (with its flow and scope) boxed.
enum Address {
    V4 { ip: [u8; 4], port: u16 },
    V6(Box<std::net::SocketAddrV6>),
}

impl Address {
    fn new(address: SocketAddr) -> Address {
        match address {
            SocketAddr::V4(v4) => Address::V4 {
                ip: v4.ip().octets(),
                port: v4.port(),
            },
            SocketAddr::V6(v6) => Address::V6(Box::new(v6)),
        }
    }

    fn get(&self) -> SocketAddr {
        match self {
            Address::V4 { ip, port } => SocketAddr::from((*ip, *port)),
            Address::V6(v6) => SocketAddr::V6(**v6),
        }
    }
}

/// What few registrations have: an SMS number, a version or binding outside [`KNOWN`].
#[derive(Default)]
struct Rare {
    sms_number: Option<Box<str>>,
    lwm2m_version: Option<Box<str>>,
    binding: Option<Box<str>>,
}

/// A string inline up to [`SHORT_INLINE`] bytes (every registration id, many endpoint
/// names), boxed beyond.
enum Short {
    Inline { len: u8, bytes: [u8; SHORT_INLINE] },
    Boxed(Box<str>),
}

const SHORT_INLINE: usize = 22;

impl Short {
    fn new(text: String) -> Short {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= SHORT_INLINE => {
                let mut bytes = [0; SHORT_INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Short::Inline { len, bytes }
            }
            _ => Short::Boxed(text.into_boxed_str()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Always whole UTF-8: the bytes of a `String`.
            Short::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Short::Boxed(text) => text,
        }
    }
}

enum Identity {
    Unsecured,
    /// A PSK identity that is the endpoint name.
    PskIsEndpoint,
    Psk(Box<[u8]>),
    Rpk(Box<[u8]>),
    X509(Box<str>),
    /// The common name and the certificate's fingerprint, boxed together so that an entry
    /// of another kind does not pay for them.
    X509Certificate(Box<(Box<str>, [u8; 32])>),
}

/// The index of a version or binding in [`KNOWN`], if it is there.
fn known(text: &str) -> Option<u8> {
    KNOWN
        .iter()
        .position(|k| *k == text)
        .map(|index| index as u8)
}

/// Marks a version or binding kept in [`Rare`].
const OTHER: u8 = u8::MAX;

/// LwM2M versions and bindings.
const KNOWN: &[&str] = &[
    "1.0", "1.1", "1.2", "U", "UQ", "T", "TQ", "S", "N", "US", "UQS",
];

impl Entry {
    fn new(registration: Registration, object_links: Arc<str>) -> Entry {
        let mut rare = Rare {
            sms_number: registration.sms_number.map(String::into_boxed_str),
            ..Rare::default()
        };
        let lwm2m_version = known(&registration.lwm2m_version).unwrap_or_else(|| {
            rare.lwm2m_version = Some(registration.lwm2m_version.into_boxed_str());
            OTHER
        });
        let binding = known(&registration.binding).unwrap_or_else(|| {
            rare.binding = Some(registration.binding.into_boxed_str());
            OTHER
        });
        let rare =
            (rare.sms_number.is_some() || rare.lwm2m_version.is_some() || rare.binding.is_some())
                .then(|| Box::new(rare));
        let identity = match registration.identity {
            PeerIdentity::Unsecured => Identity::Unsecured,
            PeerIdentity::Psk(id) if id == registration.endpoint.as_bytes() => {
                Identity::PskIsEndpoint
            }
            PeerIdentity::Psk(id) => Identity::Psk(id.into_boxed_slice()),
            PeerIdentity::Rpk(key) => Identity::Rpk(key.into_boxed_slice()),
            PeerIdentity::X509(name) => Identity::X509(name.into_boxed_str()),
            PeerIdentity::X509Certificate {
                common_name,
                fingerprint,
            } => Identity::X509Certificate(Box::new((common_name.into_boxed_str(), fingerprint))),
        };
        Entry {
            id: Short::new(registration.id),
            endpoint: Short::new(registration.endpoint),
            object_links,
            identity,
            lwm2m_version,
            binding,
            queue_mode: registration.queue_mode,
            rare,
            peer_address: Address::new(registration.peer_address),
            registered_at_ms: registration.registered_at_ms,
            last_update_ms: registration.last_update_ms,
            lifetime_s: registration.lifetime_s,
        }
    }

    fn id(&self) -> &str {
        self.id.as_str()
    }

    fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    fn text(&self, index: u8, rare: impl Fn(&Rare) -> Option<&str>) -> &str {
        match KNOWN.get(usize::from(index)) {
            Some(text) => text,
            None => self.rare.as_deref().and_then(rare).unwrap_or_default(),
        }
    }

    fn registration(&self) -> Registration {
        Registration {
            id: self.id().to_owned(),
            endpoint: self.endpoint().to_owned(),
            lifetime_s: self.lifetime_s,
            lwm2m_version: self
                .text(self.lwm2m_version, |r| r.lwm2m_version.as_deref())
                .to_owned(),
            binding: self.text(self.binding, |r| r.binding.as_deref()).to_owned(),
            queue_mode: self.queue_mode,
            sms_number: self
                .rare
                .as_ref()
                .and_then(|r| r.sms_number.as_deref())
                .map(str::to_owned),
            object_links: self.object_links.to_string(),
            object_paths: object_paths(&self.object_links),
            peer_address: self.peer_address.get(),
            identity: match &self.identity {
                Identity::Unsecured => PeerIdentity::Unsecured,
                Identity::PskIsEndpoint => PeerIdentity::Psk(self.endpoint().as_bytes().to_vec()),
                Identity::Psk(id) => PeerIdentity::Psk(id.to_vec()),
                Identity::Rpk(key) => PeerIdentity::Rpk(key.to_vec()),
                Identity::X509(name) => PeerIdentity::X509(name.to_string()),
                Identity::X509Certificate(certificate) => PeerIdentity::X509Certificate {
                    common_name: certificate.0.to_string(),
                    fingerprint: certificate.1,
                },
            },
            registered_at_ms: self.registered_at_ms,
            last_update_ms: self.last_update_ms,
        }
    }
}

impl Registry {
    fn hash<T: std::hash::Hash + ?Sized>(&self, value: &T) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(value)
    }

    fn entry(&self, slot: u32) -> &Entry {
        self.entries[slot as usize]
            .as_ref()
            .expect("registry indexes point at live entries")
    }

    fn slot_of_id(&self, id: &str) -> Option<u32> {
        self.by_id
            .find(self.hash(id), |&slot| self.entry(slot).id() == id)
            .copied()
    }

    fn slot_of_endpoint(&self, endpoint: &str) -> Option<u32> {
        self.by_endpoint
            .find(self.hash(endpoint), |&slot| {
                self.entry(slot).endpoint() == endpoint
            })
            .copied()
    }

    fn slot_of_address(&self, address: SocketAddr) -> Option<u32> {
        self.by_address
            .find(self.hash(&address), |&slot| {
                self.entry(slot).peer_address.get() == address
            })
            .copied()
    }

    /// Adds a registration, returning the one it replaces (same endpoint or same id).
    pub fn insert(&mut self, registration: Registration) -> Option<Registration> {
        let previous = self
            .slot_of_endpoint(&registration.endpoint)
            .map(|slot| self.entry(slot).id().to_owned())
            .and_then(|id| self.remove(&id));
        // Ids are unique: one still held by another endpoint goes too.
        let same_id = self.remove(&registration.id);
        let previous = previous.or(same_id);
        let object_links = self.intern_links(&registration.object_links);
        let entry = Entry::new(registration, object_links);
        let (id_hash, endpoint_hash, address_hash) = (
            self.hash(entry.id()),
            self.hash(entry.endpoint()),
            self.hash(&entry.peer_address.get()),
        );
        let address = entry.peer_address.get();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as u32
            }
        };
        let Registry {
            entries,
            by_id,
            by_endpoint,
            by_address,
            hasher,
            ..
        } = self;
        use std::hash::BuildHasher;
        let entries: &Vec<Option<Entry>> = entries;
        by_id.insert_unique(id_hash, slot, |&s| {
            hasher.hash_one(entries[s as usize].as_ref().expect("live entry").id())
        });
        by_endpoint.insert_unique(endpoint_hash, slot, |&s| {
            hasher.hash_one(entries[s as usize].as_ref().expect("live entry").endpoint())
        });
        // Two registrations may come from one address (a NAT): the newest one owns it.
        if let Ok(found) = by_address.find_entry(address_hash, |&s| {
            entries[s as usize]
                .as_ref()
                .expect("live entry")
                .peer_address
                .get()
                == address
        }) {
            found.remove();
        }
        by_address.insert_unique(address_hash, slot, |&s| {
            hasher.hash_one(
                entries[s as usize]
                    .as_ref()
                    .expect("live entry")
                    .peer_address
                    .get(),
            )
        });
        self.len += 1;
        previous
    }

    pub fn remove(&mut self, id: &str) -> Option<Registration> {
        let slot = self.slot_of_id(id)?;
        let entry = self.entries[slot as usize].take()?;
        let id_hash = self.hash(entry.id());
        let endpoint_hash = self.hash(entry.endpoint());
        let address_hash = self.hash(&entry.peer_address.get());
        for (table, hash) in [
            (&mut self.by_id, id_hash),
            (&mut self.by_endpoint, endpoint_hash),
            (&mut self.by_address, address_hash),
        ] {
            if let Ok(found) = table.find_entry(hash, |&s| s == slot) {
                found.remove();
            }
        }
        self.free.push(slot);
        self.len -= 1;
        let registration = entry.registration();
        let Entry { object_links, .. } = entry;
        self.release_links(object_links);
        if self.len == 0 {
            *self = Registry {
                hasher: self.hasher.clone(),
                ..Registry::default()
            };
        }
        Some(registration)
    }

    /// The shared copy of `links`, added if no live entry has them.
    fn intern_links(&mut self, links: &str) -> Arc<str> {
        use std::hash::BuildHasher;
        let hash = self.hash(links);
        if let Some(shared) = self.links.find(hash, |shared| &**shared == links) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = links.into();
        let hasher = &self.hasher;
        self.links
            .insert_unique(hash, Arc::clone(&shared), |shared| {
                hasher.hash_one(&**shared)
            });
        shared
    }

    /// Drops the shared copy of `links` once no entry holds it.
    fn release_links(&mut self, links: Arc<str>) {
        // The table's reference and this one: no entry is left.
        if Arc::strong_count(&links) <= 2 {
            let hash = self.hash(&*links);
            if let Ok(found) = self
                .links
                .find_entry(hash, |shared| Arc::ptr_eq(shared, &links))
            {
                found.remove();
            }
        }
        if self.links.capacity() > 64 && self.links.len() < self.links.capacity() / 4 {
            use std::hash::BuildHasher;
            let hasher = &self.hasher;
            self.links
                .shrink_to(self.links.len() * 2, |shared| hasher.hash_one(&**shared));
        }
    }

    pub fn get(&self, id: &str) -> Option<Registration> {
        Some(self.entry(self.slot_of_id(id)?).registration())
    }

    pub fn by_endpoint(&self, endpoint: &str) -> Option<Registration> {
        Some(self.entry(self.slot_of_endpoint(endpoint)?).registration())
    }

    pub fn by_address(&self, address: SocketAddr) -> Option<Registration> {
        Some(self.entry(self.slot_of_address(address)?).registration())
    }

    /// Whether `endpoint` is registered (without copying its registration).
    pub fn contains_endpoint(&self, endpoint: &str) -> bool {
        self.slot_of_endpoint(endpoint).is_some()
    }

    /// The endpoint registered from `address` and its identity's owner check, without copying
    /// the registration.
    pub fn endpoint_at(&self, address: SocketAddr, identity: &PeerIdentity) -> Option<String> {
        let entry = self.entry(self.slot_of_address(address)?);
        let same = match (&entry.identity, identity) {
            (Identity::Unsecured, PeerIdentity::Unsecured) => true,
            (Identity::PskIsEndpoint, PeerIdentity::Psk(b)) => {
                entry.endpoint().as_bytes() == &b[..]
            }
            (Identity::Psk(a), PeerIdentity::Psk(b)) => **a == **b,
            (Identity::Rpk(a), PeerIdentity::Rpk(b)) => **a == **b,
            (Identity::X509(a), PeerIdentity::X509(b)) => **a == **b,
            (
                Identity::X509Certificate(a),
                PeerIdentity::X509Certificate {
                    common_name: b,
                    fingerprint: b_fingerprint,
                },
            ) => *a.0 == **b && a.1 == *b_fingerprint,
            _ => false,
        };
        same.then(|| entry.endpoint().to_owned())
    }

    /// The object versions `endpoint` registered with, without copying its registration.
    pub fn object_versions_of(&self, endpoint: &str) -> Option<BTreeMap<u16, Version>> {
        let entry = self.entry(self.slot_of_endpoint(endpoint)?);
        Some(object_versions_of_links(&entry.object_links))
    }

    pub fn all(&self) -> Vec<Registration> {
        let mut list: Vec<_> = self
            .entries
            .iter()
            .flatten()
            .map(Entry::registration)
            .collect();
        list.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        list
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn entry_is_compact() {
        assert!(
            std::mem::size_of::<Option<Entry>>() <= 136,
            "{}",
            std::mem::size_of::<Option<Entry>>()
        );
        assert_eq!(std::mem::size_of::<Short>(), 24);
        assert_eq!(std::mem::size_of::<Address>(), 16);
        for address in [
            "127.0.0.1:5684",
            "[::1]:5684",
            "[fe80::1%3]:61000",
            "0.0.0.0:0",
        ] {
            let address: SocketAddr = address.parse().unwrap();
            assert_eq!(Address::new(address).get(), address);
        }
        for text in ["", "AbCdEfGhIjKl", "é-22-bytes-long-name", &"x".repeat(100)] {
            assert_eq!(Short::new(text.to_owned()).as_str(), text);
        }
        assert!(matches!(Short::new("a".repeat(22)), Short::Inline { .. }));
        assert!(matches!(Short::new("a".repeat(23)), Short::Boxed(_)));
    }

    #[test]
    fn rare_fields_and_an_identity_equal_to_the_endpoint_come_back() {
        let mut registry = Registry::default();
        let mut record = registration("a", "dev", 1);
        record.lwm2m_version = "1.3".into();
        record.binding = "UX".into();
        record.sms_number = Some("+123".into());
        record.identity = PeerIdentity::Psk(b"dev".to_vec());
        registry.insert(record.clone());
        assert_eq!(registry.get("a"), Some(record.clone()));
        let address = record.peer_address;
        assert_eq!(
            registry.endpoint_at(address, &PeerIdentity::Psk(b"dev".to_vec())),
            Some("dev".to_owned())
        );
        assert_eq!(
            registry.endpoint_at(address, &PeerIdentity::Psk(b"other".to_vec())),
            None
        );
        let common = registration("b", "dev2", 2);
        registry.insert(common.clone());
        assert_eq!(registry.get("b"), Some(common));
    }

    #[test]
    fn equal_object_links_are_stored_once_while_used() {
        let mut registry = Registry::default();
        for n in 0..100u16 {
            registry.insert(registration(&format!("id{n}"), &format!("ep{n}"), n));
        }
        let mut other = registration("x", "odd", 500);
        other.object_links = "</1/0>,</3/0>,</5/0>".into();
        other.object_paths = vec!["/1/0".into(), "/3/0".into(), "/5/0".into()];
        registry.insert(other.clone());
        assert_eq!(registry.links.len(), 2);
        let entries: Vec<&Entry> = registry.entries.iter().flatten().collect();
        assert!(Arc::ptr_eq(
            &entries[0].object_links,
            &entries[1].object_links
        ));
        assert_eq!(registry.remove("x"), Some(other));
        assert_eq!(registry.links.len(), 1);
        for n in 0..99u16 {
            registry.remove(&format!("id{n}"));
        }
        assert_eq!(registry.links.len(), 1);
        assert_eq!(
            registry.get("id99").unwrap().object_links,
            "</1/0>,</3>;ver=1.1,</3/0>"
        );
        // An update with other links (a remove and an insert) lets the old ones go.
        let mut updated = registration("id99", "ep99", 99);
        updated.object_links = "</3/0>".into();
        registry.insert(updated);
        assert_eq!(registry.links.len(), 1);
        assert_eq!(registry.get("id99").unwrap().object_links, "</3/0>");
    }

    pub(crate) fn registration(id: &str, endpoint: &str, port: u16) -> Registration {
        Registration {
            id: id.into(),
            endpoint: endpoint.into(),
            lifetime_s: 60,
            lwm2m_version: "1.1".into(),
            binding: "U".into(),
            queue_mode: false,
            sms_number: None,
            object_links: "</1/0>,</3>;ver=1.1,</3/0>".into(),
            object_paths: vec!["/1/0".into(), "/3".into(), "/3/0".into()],
            peer_address: SocketAddr::from(([127, 0, 0, 1], port)),
            identity: PeerIdentity::Psk(b"id".to_vec()),
            registered_at_ms: 1_000,
            last_update_ms: 1_000,
        }
    }

    #[test]
    fn a_new_registration_replaces_the_old_one_of_the_endpoint() {
        let mut registry = Registry::default();
        assert!(registry.insert(registration("a", "dev", 1)).is_none());
        let replaced = registry.insert(registration("b", "dev", 2)).unwrap();
        assert_eq!(replaced.id, "a");
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.by_endpoint("dev").unwrap().id, "b");
        assert!(
            registry
                .by_address(SocketAddr::from(([127, 0, 0, 1], 1)))
                .is_none()
        );
    }

    #[test]
    fn versions_security_and_indexes() {
        let mut registry = Registry::default();
        let record = registration("a", "dev", 1);
        assert_eq!(object_versions(&record).get(&3), Some(&Version::V1_1));
        assert_eq!(object_versions(&record).get(&1), Some(&Version::V1_0));
        assert_eq!(lwm2m_version(&record), Version::V1_1);
        assert!(is_secure(&record));
        assert_eq!(record.expires_at_ms(), 61_000);
        registry.insert(record);
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(registry.by_address(address).unwrap().id, "a");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { id: u8, endpoint: u8, port: u8 },
        Remove { id: u8 },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..12, 0u8..8, 0u8..6).prop_map(|(id, endpoint, port)| Op::Insert {
                id,
                endpoint,
                port
            }),
            (0u8..12).prop_map(|id| Op::Remove { id }),
        ]
    }

    proptest::proptest! {
        /// The slab and its three indexes answer as a plain list of registrations would.
        #[test]
        fn the_registry_behaves_like_a_list(ops in proptest::collection::vec(op(), 0..200)) {
            let mut registry = Registry::default();
            // The model: live registrations, and which id owns each address.
            let mut live: Vec<Registration> = Vec::new();
            let mut owner: HashMap<u16, String> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert { id, endpoint, port } => {
                        let record = registration(&format!("id{id}"), &format!("ep{endpoint}"), port.into());
                        let replaced = live
                            .iter()
                            .position(|r| r.endpoint == record.endpoint)
                            .or_else(|| live.iter().position(|r| r.id == record.id))
                            .map(|i| live.remove(i));
                        if let Some(old) = &replaced {
                            if owner.get(&old.peer_address.port()) == Some(&old.id) {
                                owner.remove(&old.peer_address.port());
                            }
                        }
                        // The same id may still be live under another endpoint: it goes too.
                        if let Some(i) = live.iter().position(|r| r.id == record.id) {
                            let old = live.remove(i);
                            if owner.get(&old.peer_address.port()) == Some(&old.id) {
                                owner.remove(&old.peer_address.port());
                            }
                        }
                        owner.insert(port.into(), record.id.clone());
                        live.push(record.clone());
                        let got = registry.insert(record);
                        proptest::prop_assert_eq!(got.map(|r| r.id), replaced.map(|r| r.id));
                    }
                    Op::Remove { id } => {
                        let id = format!("id{id}");
                        let expected = live.iter().position(|r| r.id == id).map(|i| live.remove(i));
                        if let Some(old) = &expected {
                            if owner.get(&old.peer_address.port()) == Some(&old.id) {
                                owner.remove(&old.peer_address.port());
                            }
                        }
                        proptest::prop_assert_eq!(registry.remove(&id), expected);
                    }
                }
                proptest::prop_assert_eq!(registry.len(), live.len());
                for record in &live {
                    proptest::prop_assert_eq!(registry.get(&record.id), Some(record.clone()));
                    proptest::prop_assert_eq!(registry.by_endpoint(&record.endpoint), Some(record.clone()));
                }
                for port in 0..6u16 {
                    let address = SocketAddr::from(([127, 0, 0, 1], port));
                    let expected = owner.get(&port).cloned();
                    proptest::prop_assert_eq!(registry.by_address(address).map(|r| r.id), expected);
                }
            }
        }
    }
}
