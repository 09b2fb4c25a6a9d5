//! Registrations (LwM2M Core 1.2 §6.2, Client Registration Interface): the in-memory index of
//! the store's registration records by id, endpoint and address, and what the server derives
//! from a record (object versions, security).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use cairn_coap::link_format;
use cairn_lwm2m::LwM2mPath;
use cairn_lwm2m::model::Version;
use cairn_store::{PeerIdentity, Registration};

/// Lifetime when the client gives none (Core §6.2.1: 86400 s).
pub const DEFAULT_LIFETIME: u32 = 86_400;

/// The object versions a registration declared (`</3>;ver=1.1`), for choosing models.
pub fn object_versions(registration: &Registration) -> BTreeMap<u16, Version> {
    let Ok(links) = link_format::parse(&registration.object_links) else {
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
#[derive(Default, Debug)]
pub struct Registry {
    by_id: HashMap<String, Registration>,
    id_of_endpoint: HashMap<String, String>,
    id_of_address: HashMap<SocketAddr, String>,
}

impl Registry {
    /// Adds a registration, returning the one it replaces (same endpoint).
    pub fn insert(&mut self, registration: Registration) -> Option<Registration> {
        let previous = self
            .id_of_endpoint
            .get(&registration.endpoint)
            .cloned()
            .and_then(|id| self.remove(&id));
        self.id_of_endpoint
            .insert(registration.endpoint.clone(), registration.id.clone());
        self.id_of_address
            .insert(registration.peer_address, registration.id.clone());
        self.by_id.insert(registration.id.clone(), registration);
        previous
    }

    pub fn remove(&mut self, id: &str) -> Option<Registration> {
        let registration = self.by_id.remove(id)?;
        if self
            .id_of_endpoint
            .get(&registration.endpoint)
            .is_some_and(|i| i == id)
        {
            self.id_of_endpoint.remove(&registration.endpoint);
        }
        if self
            .id_of_address
            .get(&registration.peer_address)
            .is_some_and(|i| i == id)
        {
            self.id_of_address.remove(&registration.peer_address);
        }
        Some(registration)
    }

    pub fn get(&self, id: &str) -> Option<&Registration> {
        self.by_id.get(id)
    }

    pub fn by_endpoint(&self, endpoint: &str) -> Option<&Registration> {
        self.by_id.get(self.id_of_endpoint.get(endpoint)?)
    }

    pub fn by_address(&self, address: SocketAddr) -> Option<&Registration> {
        self.by_id.get(self.id_of_address.get(&address)?)
    }

    pub fn all(&self) -> Vec<Registration> {
        let mut list: Vec<_> = self.by_id.values().cloned().collect();
        list.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        list
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
