//! Security information per endpoint (LwM2M Core 1.2 §7.1, the server's side of the Security
//! object): how a device authenticates, and the lookup the DTLS handshake uses to find the key
//! of a PSK identity.
//!
//! Keys live here and in the store only; the web side sees [`SecuritySummary`] (identity and a
//! fingerprint), never a key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use cairn_dtls::{Psk, PskResolver};
use zeroize::Zeroizing;

/// How an endpoint authenticates.
#[derive(Clone)]
pub enum SecurityMode {
    /// DTLS with a pre-shared key.
    Psk {
        identity: String,
        key: Zeroizing<Vec<u8>>,
    },
    /// No security: plain CoAP, allowed for this endpoint only because it was asked for.
    NoSec,
}

impl fmt::Debug for SecurityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecurityMode::Psk { identity, .. } => f
                .debug_struct("Psk")
                .field("identity", identity)
                .finish_non_exhaustive(),
            SecurityMode::NoSec => f.write_str("NoSec"),
        }
    }
}

/// The security information of one endpoint.
#[derive(Clone, Debug)]
pub struct SecurityInfo {
    pub endpoint: String,
    pub mode: SecurityMode,
}

impl SecurityInfo {
    pub fn psk(endpoint: impl Into<String>, identity: impl Into<String>, key: Vec<u8>) -> Self {
        SecurityInfo {
            endpoint: endpoint.into(),
            mode: SecurityMode::Psk {
                identity: identity.into(),
                key: Zeroizing::new(key),
            },
        }
    }

    pub fn no_sec(endpoint: impl Into<String>) -> Self {
        SecurityInfo {
            endpoint: endpoint.into(),
            mode: SecurityMode::NoSec,
        }
    }

    /// What may be shown outside the device-facing side.
    pub fn summary(&self) -> SecuritySummary {
        match &self.mode {
            SecurityMode::Psk { identity, key } => SecuritySummary {
                endpoint: self.endpoint.clone(),
                mode: "psk",
                identity: Some(identity.clone()),
                key_fingerprint: Some(fingerprint(key)),
            },
            SecurityMode::NoSec => SecuritySummary {
                endpoint: self.endpoint.clone(),
                mode: "nosec",
                identity: None,
                key_fingerprint: None,
            },
        }
    }
}

/// Security information without secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecuritySummary {
    pub endpoint: String,
    pub mode: &'static str,
    pub identity: Option<String>,
    /// First 8 bytes of a 64-bit FNV-1a digest of the key, in hex: enough to tell keys apart
    /// in a listing, useless for recovering one.
    pub key_fingerprint: Option<String>,
}

fn fingerprint(key: &[u8]) -> String {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Why security information was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error("PSK identity {identity:?} already belongs to endpoint {endpoint:?}")]
    IdentityTaken { identity: String, endpoint: String },
    #[error("the endpoint name is empty")]
    EmptyEndpoint,
    #[error("the PSK is empty")]
    EmptyKey,
}

/// Security information of every endpoint, indexed by endpoint and by PSK identity.
#[derive(Default)]
pub struct SecurityRegistry {
    by_endpoint: HashMap<String, SecurityInfo>,
    endpoint_of_identity: HashMap<Vec<u8>, String>,
}

impl SecurityRegistry {
    /// Adds or replaces the information of an endpoint.
    pub fn insert(&mut self, info: SecurityInfo) -> Result<(), SecurityError> {
        if info.endpoint.is_empty() {
            return Err(SecurityError::EmptyEndpoint);
        }
        if let SecurityMode::Psk { identity, key } = &info.mode {
            if key.is_empty() {
                return Err(SecurityError::EmptyKey);
            }
            if let Some(owner) = self.endpoint_of_identity.get(identity.as_bytes()) {
                if *owner != info.endpoint {
                    return Err(SecurityError::IdentityTaken {
                        identity: identity.clone(),
                        endpoint: owner.clone(),
                    });
                }
            }
        }
        self.remove(&info.endpoint);
        if let SecurityMode::Psk { identity, .. } = &info.mode {
            self.endpoint_of_identity
                .insert(identity.as_bytes().to_vec(), info.endpoint.clone());
        }
        self.by_endpoint.insert(info.endpoint.clone(), info);
        Ok(())
    }

    pub fn remove(&mut self, endpoint: &str) -> Option<SecurityInfo> {
        let info = self.by_endpoint.remove(endpoint)?;
        if let SecurityMode::Psk { identity, .. } = &info.mode {
            self.endpoint_of_identity.remove(identity.as_bytes());
        }
        Some(info)
    }

    pub fn get(&self, endpoint: &str) -> Option<&SecurityInfo> {
        self.by_endpoint.get(endpoint)
    }

    /// The endpoint a PSK identity belongs to.
    pub fn endpoint_of(&self, identity: &[u8]) -> Option<&str> {
        self.endpoint_of_identity.get(identity).map(String::as_str)
    }

    pub fn summaries(&self) -> Vec<SecuritySummary> {
        let mut list: Vec<_> = self
            .by_endpoint
            .values()
            .map(SecurityInfo::summary)
            .collect();
        list.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        list
    }

    pub fn len(&self) -> usize {
        self.by_endpoint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_endpoint.is_empty()
    }
}

/// The DTLS server's view of the registry: identity → key.
#[derive(Clone)]
pub struct SecurityResolver(pub Arc<RwLock<SecurityRegistry>>);

impl PskResolver for SecurityResolver {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        let registry = self.0.read().ok()?;
        let endpoint = registry.endpoint_of(identity)?;
        match &registry.get(endpoint)?.mode {
            SecurityMode::Psk { key, .. } => Some(Psk::new(key.to_vec())),
            SecurityMode::NoSec => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_unique_and_follow_replacement() {
        let mut registry = SecurityRegistry::default();
        registry
            .insert(SecurityInfo::psk("dev-1", "id-1", vec![1; 16]))
            .unwrap();
        assert_eq!(registry.endpoint_of(b"id-1"), Some("dev-1"));
        assert!(matches!(
            registry.insert(SecurityInfo::psk("dev-2", "id-1", vec![2; 16])),
            Err(SecurityError::IdentityTaken { .. })
        ));
        registry
            .insert(SecurityInfo::psk("dev-1", "id-1b", vec![3; 16]))
            .unwrap();
        assert_eq!(registry.endpoint_of(b"id-1"), None);
        assert_eq!(registry.endpoint_of(b"id-1b"), Some("dev-1"));
        let resolver = SecurityResolver(Arc::new(RwLock::new(registry)));
        assert!(resolver.key(b"id-1b").is_some());
        assert!(resolver.key(b"id-1").is_none());
    }

    #[test]
    fn debug_and_summary_never_show_keys() {
        let info = SecurityInfo::psk("dev-1", "id-1", b"very-secret-key".to_vec());
        let shown = format!("{info:?} {:?}", info.summary());
        assert!(!shown.contains("very-secret-key"));
        assert!(!shown.contains(&format!("{:?}", b"very-secret-key".to_vec())));
        assert_eq!(info.summary().identity.as_deref(), Some("id-1"));
    }
}
