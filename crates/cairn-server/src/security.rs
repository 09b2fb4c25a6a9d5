//! How the server authenticates devices (LwM2M Core 1.2 §7.1): the DTLS handshake asks
//! [`StorePskResolver`] for the key of a PSK identity, and registration checks that the
//! endpoint name belongs to the identity the session authenticated.
//!
//! Keys stay in the store, encrypted at rest; a key is decrypted for one handshake and
//! dropped (zeroized) after it.

use cairn_dtls::{Psk, PskResolver};
use cairn_store::EmbeddedStore;

/// Resolves PSK identities from the embedded store, synchronously (the DTLS engine is sans-IO
/// and cannot wait).
#[derive(Clone)]
pub struct StorePskResolver(pub EmbeddedStore);

impl PskResolver for StorePskResolver {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        match self.0.psk_key_blocking(identity) {
            Ok(Some((_, key))) => Some(Psk::new(key.expose().to_vec())),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "PSK lookup failed");
                None
            }
        }
    }
}
