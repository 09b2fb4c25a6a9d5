//! Who may connect while credentials change (LwM2M Core 1.2 §7.1).
//!
//! - [`BootstrapPskResolver`]: the bootstrap server's DTLS handshake accepts each device's
//!   current bootstrap credential and, until the device proves it holds that one, the previous
//!   one (the factory credential at first).
//! - [`TransitionalPskResolver`] and [`TransitionalSecurityStore`]: the device-management
//!   server accepts a device's current credential (in the security store) and, until the device
//!   registers with it, the one it had before the last bootstrap; [`TransitionalRawPublicKeys`]
//!   does the same for raw public keys. The DM server asks the security store for a session
//!   identity's retiring credential ([`SecurityStore::get_security_info_by_psk_identity`] with
//!   the raw-public-key or X.509 session identity) when the endpoint's current key or
//!   certificate is not the one used. An X.509 device's certificates all chain to Cairn's CA and
//!   pass the handshake; registration tells them apart by their SHA-256 fingerprint.

use std::sync::Arc;

use cairn_dtls::{Psk, PskResolver, RawPublicKeyResolver};
use cairn_store::{
    BootstrapStore, CredentialKind, EmbeddedStore, Page, PeerIdentity, SecurityInfo,
    SecurityInfoSummary, SecurityStore, StoreFuture,
};

use crate::security::{StoreRawPublicKeys, rpk_session_identity};
use crate::{StorePskResolver, Stores};

/// Resolves device-management raw public keys: the security store's, then the retiring ones.
#[derive(Clone)]
pub struct TransitionalRawPublicKeys(pub EmbeddedStore);

impl RawPublicKeyResolver for TransitionalRawPublicKeys {
    fn identity(&self, subject_public_key_info: &[u8]) -> Option<Vec<u8>> {
        if let Some(identity) = StoreRawPublicKeys(self.0.clone()).identity(subject_public_key_info)
        {
            return Some(identity);
        }
        match self.0.previous_dm_rpk_blocking(subject_public_key_info) {
            Ok(Some(_)) => Some(rpk_session_identity(subject_public_key_info)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "retiring raw public key lookup failed");
                None
            }
        }
    }
}

/// Resolves bootstrap PSK identities (current and previous) from the embedded store.
#[derive(Clone)]
pub struct BootstrapPskResolver(pub EmbeddedStore);

impl PskResolver for BootstrapPskResolver {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        match self.0.bootstrap_psk_blocking(identity) {
            Ok(Some((_, key))) => Some(Psk::new(key.expose().to_vec())),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "bootstrap PSK lookup failed");
                None
            }
        }
    }
}

/// Resolves device-management PSK identities: the security store's, then the retiring ones.
#[derive(Clone)]
pub struct TransitionalPskResolver(pub EmbeddedStore);

impl PskResolver for TransitionalPskResolver {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        // A PSK identity can never pass for a certificate-mode identity (see
        // `StorePskResolver`), retiring ones included.
        if identity.first() == Some(&0) {
            return None;
        }
        if let Some(key) = StorePskResolver(self.0.clone()).key(identity) {
            return Some(key);
        }
        match self.0.previous_dm_psk_blocking(identity) {
            Ok(Some((_, key))) => Some(Psk::new(key.expose().to_vec())),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "retiring PSK lookup failed");
                None
            }
        }
    }
}

/// A security store whose identity lookup also finds a device by its retiring
/// device-management credential; everything else goes to the inner store.
#[derive(Clone)]
pub struct TransitionalSecurityStore {
    /// The security store.
    pub security: Arc<dyn SecurityStore>,
    /// The bootstrap store with the retiring credentials.
    pub bootstrap: Arc<dyn BootstrapStore>,
}

impl SecurityStore for TransitionalSecurityStore {
    fn put_security_info(
        &self,
        info: SecurityInfo,
    ) -> StoreFuture<'_, Option<SecurityInfoSummary>> {
        self.security.put_security_info(info)
    }

    fn get_security_info<'a>(&'a self, endpoint: &'a str) -> StoreFuture<'a, Option<SecurityInfo>> {
        self.security.get_security_info(endpoint)
    }

    fn get_security_info_by_psk_identity<'a>(
        &'a self,
        identity: &'a [u8],
    ) -> StoreFuture<'a, Option<SecurityInfo>> {
        Box::pin(async move {
            if let Some(info) = self
                .security
                .get_security_info_by_psk_identity(identity)
                .await?
            {
                return Ok(Some(info));
            }
            // A raw-public-key session identity asks for a retiring raw public key.
            let (kind, lookup) = match crate::peer_identity(Some(identity)) {
                PeerIdentity::Rpk(key) => (CredentialKind::Rpk, key),
                PeerIdentity::Psk(_) => (CredentialKind::Psk, identity.to_vec()),
                PeerIdentity::X509Certificate { fingerprint, .. } => {
                    (CredentialKind::X509, fingerprint.to_vec())
                }
                _ => return Ok(None),
            };
            let Some(device) = self
                .bootstrap
                .device_by_previous_dm_identity(&lookup)
                .await?
            else {
                return Ok(None);
            };
            let Some(dm) = device.dm else {
                return Ok(None);
            };
            let Some(previous) = dm.previous.filter(|p| {
                dm.previous_kind == kind
                    && cairn_store::bootstrap::lookup_key(kind, &p.identity) == lookup
            }) else {
                return Ok(None);
            };
            Ok(Some(SecurityInfo {
                endpoint: device.endpoint,
                mode: super::credentials::security_mode(kind, &previous),
                created_at_ms: 0,
            }))
        })
    }

    fn remove_security_info<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> StoreFuture<'a, Option<SecurityInfoSummary>> {
        self.security.remove_security_info(endpoint)
    }

    fn list_security_summaries<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Page<SecurityInfoSummary>> {
        self.security.list_security_summaries(after, limit)
    }
}

/// The device-management server's stores in one embedded store, accepting retiring
/// credentials while devices change them.
pub fn device_management_stores(store: EmbeddedStore) -> Stores {
    let mut stores = Stores::embedded(store.clone());
    stores.security = Arc::new(TransitionalSecurityStore {
        security: Arc::new(store.clone()),
        bootstrap: Arc::new(store.clone()),
    });
    stores.psk_resolver = Arc::new(TransitionalPskResolver(store.clone()));
    stores.raw_public_keys = Arc::new(TransitionalRawPublicKeys(store));
    stores
}
