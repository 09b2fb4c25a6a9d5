//! Credentials and peer authentication of the certificate modes: ECDSA secp256r1 keys, X.509
//! chains validated against trust anchors (RFC 5280 via `rustls-webpki`: validity dates, key
//! usage, basic constraints, signatures, revocation by CRL), and raw public keys (RFC 7250,
//! a `SubjectPublicKeyInfo` resolved to an identity by the application).
//!
//! X.509 validation needs the wall-clock time, which the rest of the engine never reads: an
//! [`X509Verifier`] reads the system clock unless it was given a fixed time with
//! [`X509Verifier::at_time`].

use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, PrivateKeyDer,
    SignatureVerificationAlgorithm, TrustAnchor, UnixTime, alg_id,
};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo, X509Certificate};

use crate::crypto;
use crate::error::CertificateError;

/// Most certificates accepted in a peer's chain (end entity included).
pub const MAX_CHAIN_LEN: usize = 8;
/// Validated chains an [`X509Verifier`] remembers by default.
pub const DEFAULT_CHAIN_CACHE: usize = 1024;
/// How long a validated chain is remembered at most, in seconds.
pub const CHAIN_CACHE_SECONDS: u64 = 300;

/// OID of id-ecPublicKey (RFC 5480 §2.1.1).
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// OID of secp256r1 (RFC 5480 §2.1.1.1).
const OID_SECP256R1: &str = "1.2.840.10045.3.1.7";

/// An ECDSA secp256r1 private key. Zeroized on drop; `Debug` prints nothing of it. With the
/// `aws-lc-rs` feature, signatures are made by `aws-lc-rs` from the same key.
#[derive(Clone)]
pub struct PrivateKey {
    key: SigningKey,
    #[cfg(feature = "aws-lc-rs")]
    signer: Arc<aws_lc_rs::signature::EcdsaKeyPair>,
}

impl core::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

impl PrivateKey {
    #[cfg(not(feature = "aws-lc-rs"))]
    fn wrap(key: SigningKey) -> Result<Self, CertificateError> {
        Ok(Self { key })
    }

    #[cfg(feature = "aws-lc-rs")]
    fn wrap(key: SigningKey) -> Result<Self, CertificateError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        use p256::pkcs8::EncodePrivateKey;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|_| CertificateError::UnsupportedKey)?;
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_bytes())
            .map_err(|_| CertificateError::UnsupportedKey)?;
        Ok(Self {
            key,
            signer: Arc::new(signer),
        })
    }

    /// A fresh random key.
    pub fn generate(rng: &mut dyn rand_core::CryptoRng) -> Self {
        loop {
            // Every valid scalar converts; the loop only satisfies the types.
            if let Ok(key) = Self::wrap(SigningKey::from(crypto::random_p256_secret(rng))) {
                return key;
            }
        }
    }

    /// Reads a PKCS#8 or SEC1 DER key.
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        if let Ok(key) = SigningKey::from_pkcs8_der(der) {
            return Self::wrap(key);
        }
        let key =
            p256::SecretKey::from_sec1_der(der).map_err(|_| CertificateError::UnsupportedKey)?;
        Self::wrap(SigningKey::from(key))
    }

    /// Reads the first private key of a PEM file's contents (`PRIVATE KEY` or `EC PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertificateError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| CertificateError::Malformed)?;
        Self::from_der(der.secret_der())
    }

    /// The public key as an uncompressed point.
    pub fn public_point(&self) -> Vec<u8> {
        self.key.verifying_key().to_sec1_bytes().to_vec()
    }

    /// The public key as a DER `SubjectPublicKeyInfo` (the raw public key of RFC 7250).
    pub fn subject_public_key_info(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_public_key_der()
            .map(|document| document.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// A DER ECDSA signature over a SHA-256 digest.
    #[cfg(not(feature = "aws-lc-rs"))]
    pub fn sign_prehash(&self, digest: &[u8; 32]) -> Vec<u8> {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let signature: Result<p256::ecdsa::Signature, _> = self.key.sign_prehash(digest);
        signature
            .map(|signature| signature.to_der().as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// A DER ECDSA signature over a SHA-256 digest.
    #[cfg(feature = "aws-lc-rs")]
    pub fn sign_prehash(&self, digest: &[u8; 32]) -> Vec<u8> {
        use aws_lc_rs::digest::{Digest, SHA256};
        Digest::import_less_safe(digest, &SHA256)
            .and_then(|digest| self.signer.sign_digest(&digest))
            .map(|signature| signature.as_ref().to_vec())
            .unwrap_or_default()
    }
}

/// This side's credentials: a key and, for X.509, its certificate chain (end entity first).
/// With an empty chain only raw public keys can be used.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The private key.
    pub key: PrivateKey,
    /// DER certificates, end entity first; empty for raw public keys only.
    pub chain: Vec<Vec<u8>>,
}

impl Credentials {
    /// Credentials from PEM contents: a certificate chain (end entity first) and its key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .map(|cert| cert.map(|cert| cert.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CertificateError::Malformed)?;
        if chain.is_empty() {
            return Err(CertificateError::Missing);
        }
        Ok(Self {
            key: PrivateKey::from_pem(key_pem)?,
            chain,
        })
    }

    /// Raw-public-key credentials (RFC 7250): the key alone.
    pub fn raw_public_key(key: PrivateKey) -> Self {
        Self {
            key,
            chain: Vec::new(),
        }
    }
}

/// Resolves a peer's raw public key (DER `SubjectPublicKeyInfo`) to its identity (RFC 7250);
/// `None` refuses the key.
pub trait RawPublicKeyResolver: Send + Sync {
    /// The identity of the holder of `subject_public_key_info`, if known.
    fn identity(&self, subject_public_key_info: &[u8]) -> Option<Vec<u8>>;
}

/// A fixed table of raw public keys and their identities.
#[derive(Debug, Clone, Default)]
pub struct RawPublicKeys(HashMap<Vec<u8>, Vec<u8>>);

impl RawPublicKeys {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (DER `SubjectPublicKeyInfo`) and its identity.
    pub fn insert(&mut self, subject_public_key_info: Vec<u8>, identity: Vec<u8>) {
        self.0.insert(subject_public_key_info, identity);
    }

    /// Adds a key from PEM contents (`PUBLIC KEY`, as `cairn keys gen-ec --public` writes it).
    pub fn insert_pem(&mut self, pem: &[u8], identity: Vec<u8>) -> Result<(), CertificateError> {
        let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|_| CertificateError::Malformed)?;
        self.insert(der.as_ref().to_vec(), identity);
        Ok(())
    }
}

impl RawPublicKeyResolver for RawPublicKeys {
    fn identity(&self, subject_public_key_info: &[u8]) -> Option<Vec<u8>> {
        self.0.get(subject_public_key_info).cloned()
    }
}

/// What to do when no CRL tells the status of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationPolicy {
    /// Refuse the certificate, and refuse CRLs past their next update (the default).
    #[default]
    HardFail,
    /// Accept the certificate; a certificate listed in a CRL is still refused.
    SoftFail,
}

/// The LwM2M Security object's Certificate Usage (resource 15, after RFC 6698 §2.1.1): how
/// the certificate provisioned for a server constrains the chain the server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertificateUsage {
    /// 0: the chain validates against the trust store and contains the given CA certificate.
    CaConstraint,
    /// 1: the chain validates against the trust store and ends in the given certificate.
    ServiceCertificateConstraint,
    /// 2: the given certificate is the only trust anchor.
    TrustAnchorAssertion,
    /// 3 (the LwM2M default): the server presents exactly the given certificate; no chain
    /// validation.
    #[default]
    DomainIssuedCertificate,
}

/// Validates X.509 chains against trust anchors, with optional CRLs.
///
/// A chain that validated is remembered (up to [`DEFAULT_CHAIN_CACHE`] chains, see
/// [`X509Verifier::with_chain_cache`]), so that a device that connects again with the same
/// chain costs no signature verification of it: the same DER chain, for the same role and
/// server name, gets the same answer until the earliest of [`CHAIN_CACHE_SECONDS`], the end
/// of a certificate's validity and the next update of a CRL. CRLs are fixed once the
/// verifier is shared, so a revocation takes a new verifier, which starts with an empty cache.
pub struct X509Verifier {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<CertRevocationList<'static>>,
    /// The earliest next update of the CRLs (Unix seconds).
    crls_next_update: Option<u64>,
    revocation: RevocationPolicy,
    time: Option<UnixTime>,
    usage: Option<(CertificateUsage, Vec<u8>)>,
    cache: Mutex<ChainCache>,
    identity_prefix: Vec<u8>,
    /// Put the end entity's SHA-256 fingerprint between the prefix and the common name.
    fingerprint_in_identity: bool,
}

/// Validated chains by the SHA-256 of what was validated, oldest evicted first.
#[derive(Debug, Default)]
struct ChainCache {
    capacity: usize,
    entries: HashMap<[u8; 32], (VerifiedPeer, u64)>,
    order: VecDeque<[u8; 32]>,
}

impl ChainCache {
    fn get(&self, key: &[u8; 32], now: u64) -> Option<VerifiedPeer> {
        let (peer, until) = self.entries.get(key)?;
        (now < *until).then(|| peer.clone())
    }

    fn insert(&mut self, key: [u8; 32], peer: VerifiedPeer, until: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, (peer, until)).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

impl core::fmt::Debug for X509Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("X509Verifier")
            .field("anchors", &self.anchors.len())
            .field("crls", &self.crls.len())
            .field("revocation", &self.revocation)
            .finish_non_exhaustive()
    }
}

impl X509Verifier {
    /// A verifier trusting the DER certificates `roots`.
    pub fn new(roots: &[Vec<u8>]) -> Result<Self, CertificateError> {
        let anchors = roots
            .iter()
            .map(|root| {
                let der = CertificateDer::from(root.as_slice());
                webpki::anchor_from_trusted_cert(&der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|_| CertificateError::Malformed)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if anchors.is_empty() {
            return Err(CertificateError::Missing);
        }
        Ok(Self {
            anchors,
            crls: Vec::new(),
            crls_next_update: None,
            revocation: RevocationPolicy::HardFail,
            time: None,
            usage: None,
            cache: Mutex::new(ChainCache {
                capacity: DEFAULT_CHAIN_CACHE,
                ..ChainCache::default()
            }),
            identity_prefix: Vec::new(),
            fingerprint_in_identity: false,
        })
    }

    /// Puts `prefix` before the common name in the identities this verifier returns, so that
    /// an application serving several modes on one socket can tell a certificate's common
    /// name from, say, a PSK identity.
    pub fn with_identity_prefix(mut self, prefix: &[u8]) -> Self {
        self.identity_prefix = prefix.to_vec();
        self
    }

    /// Puts the SHA-256 fingerprint of the end-entity certificate (32 bytes) between the
    /// identity prefix and the common name in the identities this verifier returns, so that
    /// an application can tell a certificate from another one with the same common name (a
    /// replaced one).
    pub fn with_fingerprint_in_identity(mut self) -> Self {
        self.fingerprint_in_identity = true;
        self
    }

    /// Remembers up to `capacity` validated chains (0: validate every chain in full).
    pub fn with_chain_cache(self, capacity: usize) -> Self {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = ChainCache {
                capacity,
                ..ChainCache::default()
            };
        }
        self
    }

    /// A verifier for an LwM2M server provisioned with `server_certificate` (DER) and a
    /// Certificate Usage; `trust_store` holds the extra trust anchors usages 0 and 1 validate
    /// against.
    pub fn for_lwm2m_server(
        usage: CertificateUsage,
        server_certificate: Vec<u8>,
        trust_store: &[Vec<u8>],
    ) -> Result<Self, CertificateError> {
        let mut roots = match usage {
            CertificateUsage::TrustAnchorAssertion | CertificateUsage::DomainIssuedCertificate => {
                Vec::new()
            }
            CertificateUsage::CaConstraint | CertificateUsage::ServiceCertificateConstraint => {
                trust_store.to_vec()
            }
        };
        if matches!(
            usage,
            CertificateUsage::TrustAnchorAssertion | CertificateUsage::CaConstraint
        ) {
            roots.push(server_certificate.clone());
        }
        if roots.is_empty() {
            // Usage 3 validates no chain; the pinned certificate stands in as the anchor list.
            roots.push(server_certificate.clone());
        }
        let mut verifier = Self::new(&roots)?;
        verifier.usage = Some((usage, server_certificate));
        Ok(verifier)
    }

    /// A verifier trusting every certificate in PEM contents.
    pub fn from_pem(roots_pem: &[u8]) -> Result<Self, CertificateError> {
        let roots = CertificateDer::pem_slice_iter(roots_pem)
            .map(|cert| cert.map(|cert| cert.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CertificateError::Malformed)?;
        Self::new(&roots)
    }

    /// Adds a DER CRL. Once any CRL is loaded, every certificate of a chain is checked.
    pub fn add_crl_der(&mut self, der: &[u8]) -> Result<(), CertificateError> {
        let crl =
            OwnedCertRevocationList::from_der(der).map_err(|_| CertificateError::Malformed)?;
        let next_update = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            .ok()
            .and_then(|(_, parsed)| parsed.next_update())
            .map_or(0, |time| u64::try_from(time.timestamp()).unwrap_or(0));
        self.crls_next_update = Some(
            self.crls_next_update
                .map_or(next_update, |earlier| earlier.min(next_update)),
        );
        self.crls.push(crl.into());
        if let Ok(mut cache) = self.cache.lock() {
            cache.entries.clear();
            cache.order.clear();
        }
        Ok(())
    }

    /// Adds every CRL in PEM contents (`X509 CRL`).
    pub fn add_crl_pem(&mut self, pem: &[u8]) -> Result<(), CertificateError> {
        for crl in rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(pem) {
            let crl = crl.map_err(|_| CertificateError::Malformed)?;
            self.add_crl_der(crl.as_ref())?;
        }
        Ok(())
    }

    /// Sets the policy for certificates no CRL covers.
    pub fn with_revocation_policy(mut self, policy: RevocationPolicy) -> Self {
        self.revocation = policy;
        if let Ok(mut cache) = self.cache.lock() {
            cache.entries.clear();
            cache.order.clear();
        }
        self
    }

    /// Validates at a fixed time (seconds since the Unix epoch) instead of the system clock.
    pub fn at_time(mut self, unix_seconds: u64) -> Self {
        self.time = Some(UnixTime::since_unix_epoch(Duration::from_secs(
            unix_seconds,
        )));
        self
    }

    /// Validates `chain` (DER, end entity first) for a TLS server (`server_name` checked against
    /// the subject alternative names, or the common name when there are none) or a TLS client, and returns the end
    /// entity's identity (its common name) and public point.
    pub fn verify(
        &self,
        chain: &[Vec<u8>],
        role: PeerRole<'_>,
    ) -> Result<VerifiedPeer, CertificateError> {
        if chain.is_empty() {
            return Err(CertificateError::Missing);
        }
        if chain.len() > MAX_CHAIN_LEN {
            return Err(CertificateError::ChainTooLong);
        }
        let time = self.time.unwrap_or_else(UnixTime::now);
        let now = time.as_secs();
        let key = chain_cache_key(chain, role);
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key, now));
        if let Some(peer) = cached {
            return Ok(peer);
        }
        let (mut peer, not_after) = self.verify_uncached(chain, role, time)?;
        if self.fingerprint_in_identity {
            use sha2::{Digest, Sha256};
            let fingerprint = Sha256::digest(&chain[0]);
            peer.identity = [fingerprint.as_slice(), &peer.identity].concat();
        }
        if !self.identity_prefix.is_empty() {
            peer.identity = [self.identity_prefix.as_slice(), &peer.identity].concat();
        }
        let until = [
            Some(now.saturating_add(CHAIN_CACHE_SECONDS)),
            Some(not_after),
            self.crls_next_update,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, peer.clone(), until);
        }
        Ok(peer)
    }

    /// [`Self::verify`] without the cache; also returns the end of the validity of the chain
    /// (the earliest `notAfter`, in Unix seconds).
    fn verify_uncached(
        &self,
        chain: &[Vec<u8>],
        role: PeerRole<'_>,
        time: UnixTime,
    ) -> Result<(VerifiedPeer, u64), CertificateError> {
        let (end_entity_der, intermediates) =
            chain.split_first().ok_or(CertificateError::Missing)?;
        let end_entity_der = CertificateDer::from(end_entity_der.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|cert| CertificateDer::from(cert.as_slice()))
            .collect();
        if let Some((CertificateUsage::DomainIssuedCertificate, pinned)) = &self.usage {
            if end_entity_der.as_ref() != pinned.as_slice() {
                return Err(CertificateError::UnknownIssuer);
            }
            return pinned_peer(pinned).map(|peer| (peer, u64::MAX));
        }
        let end_entity =
            EndEntityCert::try_from(&end_entity_der).map_err(|_| CertificateError::Malformed)?;
        let usage = match role {
            PeerRole::Server(_) => KeyUsage::server_auth(),
            PeerRole::Client => KeyUsage::client_auth(),
        };
        let crl_refs: Vec<&CertRevocationList<'static>> = self.crls.iter().collect();
        let revocation = if crl_refs.is_empty() {
            None
        } else {
            let (status, expiration) = match self.revocation {
                RevocationPolicy::HardFail => {
                    (UnknownStatusPolicy::Deny, ExpirationPolicy::Enforce)
                }
                RevocationPolicy::SoftFail => {
                    (UnknownStatusPolicy::Allow, ExpirationPolicy::Ignore)
                }
            };
            RevocationOptionsBuilder::new(&crl_refs)
                .ok()
                .map(|builder| {
                    builder
                        .with_depth(RevocationCheckDepth::Chain)
                        .with_status_policy(status)
                        .with_expiration_policy(expiration)
                        .build()
                })
        };
        let path = end_entity
            .verify_for_usage(
                &[&ECDSA_P256_SHA256],
                &self.anchors,
                &intermediates,
                time,
                usage,
                revocation,
                None,
            )
            .map_err(map_webpki_error)?;
        match &self.usage {
            Some((CertificateUsage::ServiceCertificateConstraint, given))
                if end_entity_der.as_ref() != given.as_slice() =>
            {
                return Err(CertificateError::UnknownIssuer);
            }
            Some((CertificateUsage::CaConstraint, given)) => {
                let given_der = CertificateDer::from(given.as_slice());
                let given_anchor = webpki::anchor_from_trusted_cert(&given_der)
                    .map_err(|_| CertificateError::Malformed)?;
                let in_chain = path
                    .intermediate_certificates()
                    .any(|cert| cert.der().as_ref() == given.as_slice());
                if !in_chain
                    && path.anchor().subject_public_key_info != given_anchor.subject_public_key_info
                {
                    return Err(CertificateError::UnknownIssuer);
                }
            }
            _ => {}
        }
        let (_, certificate) = X509Certificate::from_der(end_entity_der.as_ref())
            .map_err(|_| CertificateError::Malformed)?;
        if let Ok(Some(key_usage)) = certificate.key_usage() {
            if !key_usage.value.digital_signature() {
                return Err(CertificateError::WrongUsage);
            }
        }
        let common_name = certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .unwrap_or_default()
            .to_string();
        if let PeerRole::Server(Some(name)) = role {
            let by_san = rustls_pki_types::ServerName::try_from(name)
                .ok()
                .is_some_and(|server_name| {
                    end_entity
                        .verify_is_valid_for_subject_name(&server_name)
                        .is_ok()
                });
            // The common name counts only in a certificate without subject alternative names
            // (RFC 6125 §6.4.4).
            let has_san = certificate
                .subject_alternative_name()
                .is_ok_and(|san| san.is_some());
            if !by_san && (has_san || common_name != name) {
                return Err(CertificateError::NameMismatch);
            }
        }
        let public_point = p256_point_of(certificate.public_key())?;
        let mut not_after = not_after_of(&certificate);
        for der in intermediates {
            let (_, intermediate) =
                X509Certificate::from_der(der.as_ref()).map_err(|_| CertificateError::Malformed)?;
            not_after = not_after.min(not_after_of(&intermediate));
        }
        let peer = VerifiedPeer {
            identity: common_name.into_bytes(),
            public_point,
        };
        Ok((peer, not_after))
    }
}

/// The end of a certificate's validity, in Unix seconds (0 if before 1970).
fn not_after_of(certificate: &X509Certificate<'_>) -> u64 {
    u64::try_from(certificate.validity().not_after.timestamp()).unwrap_or(0)
}

/// What a chain's validation depends on besides the verifier: the chain, the role and the
/// expected server name.
fn chain_cache_key(chain: &[Vec<u8>], role: PeerRole<'_>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    match role {
        PeerRole::Client => hash.update([0]),
        PeerRole::Server(None) => hash.update([1]),
        PeerRole::Server(Some(name)) => {
            hash.update([2]);
            hash.update((name.len() as u64).to_be_bytes());
            hash.update(name.as_bytes());
        }
    }
    for certificate in chain {
        hash.update((certificate.len() as u64).to_be_bytes());
        hash.update(certificate);
    }
    hash.finalize().into()
}

/// Which peer a chain is validated for.
#[derive(Debug, Clone, Copy)]
pub enum PeerRole<'a> {
    /// A server, with the name the client expects, if any.
    Server(Option<&'a str>),
    /// A client.
    Client,
}

/// An authenticated peer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The identity: the certificate's common name, or what the raw-public-key resolver said.
    pub identity: Vec<u8>,
    /// The peer's uncompressed secp256r1 point.
    pub public_point: Vec<u8>,
}

/// How a peer is authenticated: X.509 chains, raw public keys, or either.
#[derive(Clone, Default)]
pub struct PeerVerifier {
    /// Chains validated against trust anchors.
    pub x509: Option<Arc<X509Verifier>>,
    /// Raw public keys resolved to identities.
    pub raw_public_keys: Option<Arc<dyn RawPublicKeyResolver>>,
}

impl core::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("x509", &self.x509)
            .field("raw_public_keys", &self.raw_public_keys.is_some())
            .finish()
    }
}

impl PeerVerifier {
    /// X.509 only.
    pub fn x509(verifier: X509Verifier) -> Self {
        Self {
            x509: Some(Arc::new(verifier)),
            raw_public_keys: None,
        }
    }

    /// Raw public keys only.
    pub fn raw_public_keys(resolver: Arc<dyn RawPublicKeyResolver>) -> Self {
        Self {
            x509: None,
            raw_public_keys: Some(resolver),
        }
    }

    /// Resolves a raw public key to an identity.
    pub fn verify_raw_public_key(
        &self,
        subject_public_key_info: &[u8],
    ) -> Result<VerifiedPeer, CertificateError> {
        let resolver = self
            .raw_public_keys
            .as_ref()
            .ok_or(CertificateError::UnsupportedType)?;
        let (rest, info) = SubjectPublicKeyInfo::from_der(subject_public_key_info)
            .map_err(|_| CertificateError::Malformed)?;
        if !rest.is_empty() {
            return Err(CertificateError::Malformed);
        }
        let public_point = p256_point_of(&info)?;
        let identity = resolver
            .identity(subject_public_key_info)
            .ok_or(CertificateError::UnknownRawPublicKey)?;
        Ok(VerifiedPeer {
            identity,
            public_point,
        })
    }
}

/// A server's certificate mode: its credentials and, for mutual authentication (which LwM2M
/// requires for device identity), how clients are verified.
#[derive(Debug, Clone)]
pub struct ServerCertificateConfig {
    /// The server's key, with its chain for X.509 (an empty chain offers raw public keys only).
    pub credentials: Credentials,
    /// When set, a client certificate (or raw public key) is requested and required.
    pub client_auth: Option<PeerVerifier>,
}

/// A client's certificate mode.
#[derive(Debug, Clone)]
pub struct ClientCertificateConfig {
    /// The client's key and chain, sent when the server asks for a certificate.
    pub credentials: Option<Credentials>,
    /// How the server is verified.
    pub server_auth: PeerVerifier,
    /// The name the server's certificate must carry (subject alternative name or common
    /// name); `None` skips the name check.
    pub server_name: Option<String>,
}

/// The identity and key of a pinned certificate (Certificate Usage 3).
fn pinned_peer(der: &[u8]) -> Result<VerifiedPeer, CertificateError> {
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|_| CertificateError::Malformed)?;
    let identity = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    Ok(VerifiedPeer {
        identity,
        public_point: p256_point_of(certificate.public_key())?,
    })
}

fn p256_point_of(info: &SubjectPublicKeyInfo<'_>) -> Result<Vec<u8>, CertificateError> {
    let algorithm = &info.algorithm;
    let curve = algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok());
    if algorithm.algorithm.to_id_string() != OID_EC_PUBLIC_KEY
        || curve.map(|oid| oid.to_id_string()).as_deref() != Some(OID_SECP256R1)
    {
        return Err(CertificateError::UnsupportedKey);
    }
    let point = info.subject_public_key.data.to_vec();
    crypto::parse_p256_point(&point).map_err(|_| CertificateError::UnsupportedKey)?;
    Ok(point)
}

// The unit variants are deprecated but still returned by some paths of `rustls-webpki`.
#[allow(deprecated)]
fn map_webpki_error(error: webpki::Error) -> CertificateError {
    use webpki::Error as E;
    match error {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotYetValid,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertRevoked => CertificateError::Revoked,
        E::UnknownRevocationStatus | E::CrlExpired { .. } => {
            CertificateError::RevocationStatusUnknown
        }
        E::RequiredEkuNotFound
        | E::RequiredEkuNotFoundContext(_)
        | E::CaUsedAsEndEntity
        | E::EndEntityUsedAsCa
        | E::EmptyEkuExtension => CertificateError::WrongUsage,
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => CertificateError::BadSignature,
        E::MaximumPathBuildCallsExceeded
        | E::MaximumPathDepthExceeded
        | E::MaximumSignatureChecksExceeded => CertificateError::ChainTooLong,
        _ => CertificateError::Malformed,
    }
}

/// ECDSA secp256r1 with SHA-256 for `rustls-webpki`, verified by [`crypto::verify_p256_sha256`].
#[derive(Debug)]
struct EcdsaP256Sha256;

static ECDSA_P256_SHA256: EcdsaP256Sha256 = EcdsaP256Sha256;

impl SignatureVerificationAlgorithm for EcdsaP256Sha256 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        crypto::verify_p256_sha256(public_key, message, signature).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_does_not_print_and_signs() {
        let mut rng = rand::rng();
        let key = PrivateKey::generate(&mut rng);
        assert_eq!(format!("{key:?}"), "PrivateKey(..)");
        let digest = [7u8; 32];
        let signature = key.sign_prehash(&digest);
        crypto::verify_p256_sha256_prehash(&key.public_point(), &digest, &signature).unwrap();
        assert!(
            crypto::verify_p256_sha256_prehash(&key.public_point(), &[8u8; 32], &signature)
                .is_err()
        );
    }

    #[test]
    fn raw_public_key_round_trip() {
        let mut rng = rand::rng();
        let key = PrivateKey::generate(&mut rng);
        let mut table = RawPublicKeys::new();
        table.insert(key.subject_public_key_info(), b"device-7".to_vec());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                key.subject_public_key_info()
            )
        );
        let mut from_pem = RawPublicKeys::new();
        from_pem
            .insert_pem(pem.as_bytes(), b"device-7".to_vec())
            .unwrap();
        assert_eq!(
            from_pem.identity(&key.subject_public_key_info()),
            Some(b"device-7".to_vec())
        );
        let verifier = PeerVerifier::raw_public_keys(Arc::new(table));
        let peer = verifier
            .verify_raw_public_key(&key.subject_public_key_info())
            .unwrap();
        assert_eq!(peer.identity, b"device-7");
        assert_eq!(peer.public_point, key.public_point());
        let other = PrivateKey::generate(&mut rng);
        assert_eq!(
            verifier.verify_raw_public_key(&other.subject_public_key_info()),
            Err(CertificateError::UnknownRawPublicKey)
        );
    }
}
