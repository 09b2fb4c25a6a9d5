//! How the server authenticates devices (LwM2M Core 1.2 §7.1): the DTLS handshake asks
//! [`StorePskResolver`] for the key of a PSK identity, and registration checks that the
//! endpoint name belongs to the identity the session authenticated.
//!
//! Keys stay in the store, encrypted at rest; a key is decrypted for one handshake and
//! dropped (zeroized) after it.
//!
//! Certificate modes share the DTLS socket with PSK ([`DeviceCertificates`]): an X.509
//! device's chain is validated against the configured trust anchors (and CRLs) during the
//! handshake, a raw public key (RFC 7250) only if the security store holds it for some
//! endpoint ([`StoreRawPublicKeys`]; any other key fails the handshake), and registration then
//! checks the endpoint's security information: the
//! registered public key, or the certificate's common name, which must be the endpoint
//! name, and, for certificates the Bootstrap-Server issued, its SHA-256 fingerprint (the
//! session's identity carries it). The session's identity says which mode authenticated it
//! ([`peer_identity`]).

use std::sync::Arc;

use cairn_dtls::{
    Credentials, PeerVerifier, Psk, PskResolver, RawPublicKeyResolver, ServerCertificateConfig,
    X509Verifier,
};
use cairn_store::{EmbeddedStore, PeerIdentity};

/// Marks a session identity that is an X.509 common name.
const X509_IDENTITY: &[u8] = b"\0x509:";
/// Marks a session identity that is an X.509 certificate's SHA-256 fingerprint (32 bytes)
/// followed by its common name.
const X509_CERTIFICATE_IDENTITY: &[u8] = b"\0x509#";
/// Marks a session identity that is a raw public key (DER SubjectPublicKeyInfo).
const RPK_IDENTITY: &[u8] = b"\0rpk:";

/// The certificate mode of the server's DTLS listener, beside PSK.
#[derive(Clone)]
pub struct DeviceCertificates {
    /// The server's key and, for X.509 devices, its certificate chain (end entity first);
    /// a key alone serves raw-public-key devices only.
    pub credentials: Credentials,
    /// Trust anchors (DER) for device certificates; none: X.509 devices are refused.
    pub trust_anchors: Vec<Vec<u8>>,
    /// CRLs (DER) of the device certificates' issuers; a listed certificate is refused.
    pub crls: Vec<Vec<u8>>,
}

impl std::fmt::Debug for DeviceCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCertificates")
            .field("chain", &self.credentials.chain.len())
            .field("trust_anchors", &self.trust_anchors.len())
            .field("crls", &self.crls.len())
            .finish_non_exhaustive()
    }
}

impl DeviceCertificates {
    /// The DTLS engine's certificate configuration: devices must authenticate (mutual
    /// authentication), with an X.509 chain or a raw public key.
    pub fn server_config(
        &self,
        raw_public_keys: Arc<dyn RawPublicKeyResolver>,
    ) -> Result<ServerCertificateConfig, cairn_dtls::CertificateError> {
        let x509 = if self.trust_anchors.is_empty() {
            None
        } else {
            let mut verifier = X509Verifier::new(&self.trust_anchors)?
                .with_identity_prefix(X509_CERTIFICATE_IDENTITY)
                .with_fingerprint_in_identity();
            for crl in &self.crls {
                verifier.add_crl_der(crl)?;
            }
            Some(Arc::new(verifier))
        };
        Ok(ServerCertificateConfig {
            credentials: self.credentials.clone(),
            client_auth: Some(PeerVerifier {
                x509,
                raw_public_keys: Some(raw_public_keys),
            }),
        })
    }
}

/// Accepts at the handshake only the raw public keys the security store holds for an
/// endpoint, with the key itself as the session's identity; registration then checks that
/// the key is the one registered for the endpoint named.
#[derive(Clone)]
pub struct StoreRawPublicKeys(pub EmbeddedStore);

/// The session identity of a device authenticated by the raw public key
/// `subject_public_key_info`.
pub(crate) fn rpk_session_identity(subject_public_key_info: &[u8]) -> Vec<u8> {
    [RPK_IDENTITY, subject_public_key_info].concat()
}

/// The session identity of a device authenticated by the X.509 certificate of SHA-256
/// `fingerprint` and `common_name`.
pub(crate) fn x509_session_identity(fingerprint: &[u8; 32], common_name: &str) -> Vec<u8> {
    [
        X509_CERTIFICATE_IDENTITY,
        fingerprint,
        common_name.as_bytes(),
    ]
    .concat()
}

impl RawPublicKeyResolver for StoreRawPublicKeys {
    fn identity(&self, subject_public_key_info: &[u8]) -> Option<Vec<u8>> {
        match self.0.rpk_endpoint_blocking(subject_public_key_info) {
            Ok(Some(_)) => Some(rpk_session_identity(subject_public_key_info)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "raw public key lookup failed");
                None
            }
        }
    }
}

/// What a DTLS session's identity says about how the device authenticated: a PSK
/// identity, an X.509 common name or a raw public key; no session is [`PeerIdentity::Unsecured`].
pub fn peer_identity(identity: Option<&[u8]>) -> PeerIdentity {
    let Some(identity) = identity else {
        return PeerIdentity::Unsecured;
    };
    if let Some(common_name) = identity.strip_prefix(X509_IDENTITY) {
        PeerIdentity::X509(String::from_utf8_lossy(common_name).into_owned())
    } else if let Some((fingerprint, common_name)) = identity
        .strip_prefix(X509_CERTIFICATE_IDENTITY)
        .and_then(|rest| rest.split_first_chunk::<32>())
    {
        PeerIdentity::X509Certificate {
            common_name: String::from_utf8_lossy(common_name).into_owned(),
            fingerprint: *fingerprint,
        }
    } else if let Some(key) = identity.strip_prefix(RPK_IDENTITY) {
        PeerIdentity::Rpk(key.to_vec())
    } else {
        PeerIdentity::Psk(identity.to_vec())
    }
}

/// Resolves PSK identities from the embedded store, synchronously (the DTLS engine is sans-IO
/// and cannot wait).
#[derive(Clone)]
pub struct StorePskResolver(pub EmbeddedStore);

impl PskResolver for StorePskResolver {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        // A PSK identity can never pass for a certificate-mode identity.
        if identity.first() == Some(&0) {
            return None;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_identities_name_their_mode() {
        assert_eq!(peer_identity(None), PeerIdentity::Unsecured);
        assert_eq!(
            peer_identity(Some(b"dev-1")),
            PeerIdentity::Psk(b"dev-1".to_vec())
        );
        assert_eq!(
            peer_identity(Some(b"\0x509:urn:dev:1")),
            PeerIdentity::X509("urn:dev:1".into())
        );
        assert_eq!(
            peer_identity(Some(&[RPK_IDENTITY, &[0x30, 0x59]].concat())),
            PeerIdentity::Rpk(vec![0x30, 0x59])
        );
        assert_eq!(
            peer_identity(Some(
                &[X509_CERTIFICATE_IDENTITY, &[7; 32], b"dev-1"].concat()
            )),
            PeerIdentity::X509Certificate {
                common_name: "dev-1".into(),
                fingerprint: [7; 32]
            }
        );
        assert_eq!(
            x509_session_identity(&[7; 32], "dev-1"),
            [X509_CERTIFICATE_IDENTITY, &[7; 32], b"dev-1"].concat()
        );
    }

    #[tokio::test]
    async fn only_stored_raw_public_keys_pass_the_handshake() {
        use cairn_store::{MasterKey, MasterKeySource, SecurityInfo, SecurityMode, SecurityStore};
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(
            dir.path(),
            MasterKeySource::Key(MasterKey::from_bytes(&[5; 32])),
        )
        .unwrap();
        let key = vec![0x30, 0x59, 1, 2, 3];
        let rpk = |endpoint: &str, key: &[u8]| SecurityInfo {
            endpoint: endpoint.into(),
            mode: SecurityMode::Rpk {
                public_key_der: key.to_vec(),
            },
            created_at_ms: 0,
        };
        store.put_security_info(rpk("dev", &key)).await.unwrap();
        let resolver = StoreRawPublicKeys(store.clone());
        assert_eq!(resolver.identity(&key), Some([RPK_IDENTITY, &key].concat()));
        assert_eq!(resolver.identity(&[0x30, 0x59, 9]), None);
        // Another endpoint cannot take the same key.
        assert!(store.put_security_info(rpk("other", &key)).await.is_err());
        // A new key replaces the old one, which no longer passes.
        let new_key = vec![0x30, 0x59, 7, 7];
        store.put_security_info(rpk("dev", &new_key)).await.unwrap();
        assert_eq!(resolver.identity(&key), None);
        assert!(resolver.identity(&new_key).is_some());
        // Removing the endpoint removes its key; a PSK endpoint has none.
        store.remove_security_info("dev").await.unwrap();
        assert_eq!(resolver.identity(&new_key), None);
    }
}
