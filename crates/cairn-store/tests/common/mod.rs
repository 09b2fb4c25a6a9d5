//! Records and stores shared by the integration tests.

#![allow(dead_code)]

use cairn_store::{
    EmbeddedStore, MasterKey, MasterKeySource, Observation, PeerIdentity, Registration,
    SecretBytes, SecurityInfo, SecurityMode,
};

pub const KEY: [u8; 32] = [0x42; 32];

pub fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open_with(dir, MasterKeySource::Key(MasterKey::from_bytes(&KEY))).unwrap()
}

pub fn registration(endpoint: &str, id: &str, last_update_ms: u64) -> Registration {
    Registration {
        id: id.to_owned(),
        endpoint: endpoint.to_owned(),
        lifetime_s: 60,
        lwm2m_version: "1.1".to_owned(),
        binding: "U".to_owned(),
        queue_mode: false,
        sms_number: None,
        object_links: "</1/0>,</3/0>".to_owned(),
        object_paths: vec!["/1/0".to_owned(), "/3/0".to_owned()],
        peer_address: "127.0.0.1:40000".parse().unwrap(),
        identity: PeerIdentity::Psk(endpoint.as_bytes().to_vec()),
        registered_at_ms: last_update_ms,
        last_update_ms,
    }
}

pub fn psk_info(endpoint: &str, identity: &str, key: &[u8]) -> SecurityInfo {
    SecurityInfo {
        endpoint: endpoint.to_owned(),
        mode: SecurityMode::Psk {
            identity: identity.as_bytes().to_vec(),
            key: SecretBytes::new(key.to_vec()),
        },
        created_at_ms: 1,
    }
}

pub fn observation(id: &str, registration: &Registration) -> Observation {
    Observation {
        id: id.to_owned(),
        registration_id: registration.id.clone(),
        endpoint: registration.endpoint.clone(),
        token: id.as_bytes().to_vec(),
        paths: vec!["/3/0/13".to_owned()],
        content_format: Some(112),
        peer_address: registration.peer_address,
        created_at_ms: 2,
    }
}
