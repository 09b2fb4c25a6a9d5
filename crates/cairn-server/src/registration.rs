//! Registrations (LwM2M Core 1.2 §6.2, Client Registration Interface): what a Register
//! creates, what an Update changes, and the in-memory index by id, endpoint and address.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use cairn_lwm2m::model::Version;
use cairn_lwm2m::{RegisteredObject, RegistrationParameters};

/// Lifetime when the client gives none (Core §6.2.1: 86400 s).
pub const DEFAULT_LIFETIME: u32 = 86_400;

/// A registered client.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// Registration id, the last segment of the location `/rd/{id}`.
    pub id: String,
    pub endpoint: String,
    /// Seconds.
    pub lifetime: u32,
    pub lwm2m_version: Version,
    pub binding: String,
    pub queue_mode: bool,
    pub sms: Option<String>,
    pub objects: Vec<RegisteredObject>,
    pub alternate_path: Option<String>,
    /// Where the client's datagrams come from (updated on Update and on DTLS CID moves).
    pub address: SocketAddr,
    /// Whether it registered over DTLS.
    pub secure: bool,
    /// The DTLS identity it authenticated with.
    pub identity: Option<String>,
    /// Unix milliseconds.
    pub registered_at: u64,
    /// Unix milliseconds of the last Register or Update.
    pub updated_at: u64,
}

impl Registration {
    /// Unix milliseconds after which the registration has expired.
    pub fn expires_at(&self) -> u64 {
        self.updated_at
            .saturating_add(u64::from(self.lifetime) * 1000)
    }

    /// The object versions the client declared, for choosing models.
    pub fn object_versions(&self) -> BTreeMap<u16, Version> {
        self.objects
            .iter()
            .filter_map(|o| Some((o.path.object_id()?, o.version.unwrap_or(Version::V1_0))))
            .collect()
    }

    /// Applies the parameters of an Update (Core §6.2.2): only what is present changes.
    pub fn apply_update(
        &mut self,
        parameters: RegistrationParameters,
        address: SocketAddr,
        now: u64,
    ) {
        if let Some(lifetime) = parameters.lifetime {
            self.lifetime = lifetime;
        }
        if let Some(binding) = parameters.binding {
            self.binding = binding;
        }
        if parameters.sms.is_some() {
            self.sms = parameters.sms;
        }
        if let Some(objects) = parameters.objects {
            self.objects = objects;
        }
        if parameters.queue_mode {
            self.queue_mode = true;
        }
        self.address = address;
        self.updated_at = now;
    }
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
            .insert(registration.address, registration.id.clone());
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
            .get(&registration.address)
            .is_some_and(|i| i == id)
        {
            self.id_of_address.remove(&registration.address);
        }
        Some(registration)
    }

    pub fn get(&self, id: &str) -> Option<&Registration> {
        self.by_id.get(id)
    }

    /// Changes a registration in place, keeping the address index right.
    pub fn update(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut Registration),
    ) -> Option<Registration> {
        let registration = self.by_id.get_mut(id)?;
        let old_address = registration.address;
        change(registration);
        let registration = registration.clone();
        if registration.address != old_address {
            if self
                .id_of_address
                .get(&old_address)
                .is_some_and(|i| i == id)
            {
                self.id_of_address.remove(&old_address);
            }
            self.id_of_address
                .insert(registration.address, id.to_owned());
        }
        Some(registration)
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

    /// Ids of registrations expired at `now` (Unix ms), with `grace` of slack for late updates.
    pub fn expired(&self, now: u64, grace: Duration) -> Vec<String> {
        let grace = grace.as_millis() as u64;
        self.by_id
            .values()
            .filter(|r| r.expires_at().saturating_add(grace) < now)
            .map(|r| r.id.clone())
            .collect()
    }
}

/// A fresh registration id: 12 characters of an unambiguous alphabet, 60 bits of randomness.
pub fn new_registration_id(random: u64) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    (0..12)
        .map(|i| ALPHABET[((random >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: &str, endpoint: &str, port: u16) -> Registration {
        Registration {
            id: id.into(),
            endpoint: endpoint.into(),
            lifetime: 60,
            lwm2m_version: Version::V1_0,
            binding: "U".into(),
            queue_mode: false,
            sms: None,
            objects: Vec::new(),
            alternate_path: None,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            secure: true,
            identity: None,
            registered_at: 1_000,
            updated_at: 1_000,
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
    fn expiry_and_address_changes() {
        let mut registry = Registry::default();
        registry.insert(registration("a", "dev", 1));
        assert!(registry.expired(61_000, Duration::ZERO).is_empty());
        assert_eq!(
            registry.expired(61_001, Duration::ZERO),
            vec!["a".to_string()]
        );
        registry.update("a", |r| r.address = SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(
            registry
                .by_address(SocketAddr::from(([127, 0, 0, 1], 9)))
                .unwrap()
                .id,
            "a"
        );
        assert!(
            registry
                .by_address(SocketAddr::from(([127, 0, 0, 1], 1)))
                .is_none()
        );
    }

    #[test]
    fn registration_ids_differ() {
        assert_eq!(new_registration_id(0).len(), 12);
        assert_ne!(new_registration_id(1), new_registration_id(2));
    }
}
