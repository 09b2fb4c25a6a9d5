//! Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1).
//!
//! `Cookie = HMAC-SHA256(Secret, Client-Address | Client-Parameters)` truncated to 16 bytes. The
//! secret rotates every [`ROTATION`]; a cookie made with the previous secret is still accepted,
//! so a cookie is good for one to two rotation periods. Nothing is stored per client.

use core::net::SocketAddr;
use core::time::Duration;

use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::message::ClientHello;

/// Length of the cookies issued.
pub const COOKIE_LEN: usize = 16;
/// How often the secret changes.
pub const ROTATION: Duration = Duration::from_secs(300);

#[derive(Zeroize, ZeroizeOnDrop)]
struct Secret([u8; 32]);

/// The rotating cookie secret.
pub struct CookieJar {
    current: Secret,
    previous: Secret,
    rotated_at: Duration,
}

impl core::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieJar")
            .field("rotated_at", &self.rotated_at)
            .finish_non_exhaustive()
    }
}

fn fresh_secret(rng: &mut dyn CryptoRng) -> Secret {
    let mut secret = Secret([0; 32]);
    rng.fill_bytes(&mut secret.0);
    secret
}

impl CookieJar {
    /// A jar with fresh secrets.
    pub fn new(rng: &mut dyn CryptoRng, now: Duration) -> Self {
        Self {
            current: fresh_secret(rng),
            previous: fresh_secret(rng),
            rotated_at: now,
        }
    }

    /// Rotates the secret if [`ROTATION`] has passed.
    pub fn rotate(&mut self, rng: &mut dyn CryptoRng, now: Duration) {
        if now.saturating_sub(self.rotated_at) >= ROTATION {
            self.previous = core::mem::replace(&mut self.current, fresh_secret(rng));
            self.rotated_at = now;
        }
    }

    fn compute(secret: &Secret, peer: SocketAddr, hello: &ClientHello) -> [u8; COOKIE_LEN] {
        // HMAC takes keys of any length (RFC 2104 §2), so construction cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0) else {
            return [0; COOKIE_LEN];
        };
        match peer {
            SocketAddr::V4(v4) => mac.update(&v4.ip().octets()),
            SocketAddr::V6(v6) => mac.update(&v6.ip().octets()),
        }
        mac.update(&peer.port().to_be_bytes());
        mac.update(&hello.version.to_be_bytes());
        mac.update(&hello.random);
        mac.update(&[u8::try_from(hello.session_id.len()).unwrap_or(u8::MAX)]);
        mac.update(&hello.session_id);
        for suite in &hello.cipher_suites {
            mac.update(&suite.to_be_bytes());
        }
        mac.update(&hello.compression_methods);
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&mac.finalize().into_bytes()[..COOKIE_LEN]);
        cookie
    }

    /// The cookie for this client.
    pub fn issue(&self, peer: SocketAddr, hello: &ClientHello) -> [u8; COOKIE_LEN] {
        Self::compute(&self.current, peer, hello)
    }

    /// Whether the hello carries a cookie issued to this client, compared in constant time.
    pub fn verify(&self, peer: SocketAddr, hello: &ClientHello) -> bool {
        let current = Self::compute(&self.current, peer, hello);
        let previous = Self::compute(&self.previous, peer, hello);
        let matches_current = hello.cookie.ct_eq(&current);
        let matches_previous = hello.cookie.ct_eq(&previous);
        bool::from(matches_current | matches_previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HelloExtensions;
    use rand::SeedableRng;

    fn hello(cookie: Vec<u8>) -> ClientHello {
        ClientHello {
            version: 0xFEFD,
            random: [5; 32],
            session_id: Vec::new(),
            cookie,
            cipher_suites: vec![0xC0A8],
            compression_methods: vec![0],
            extensions: HelloExtensions::default(),
        }
    }

    #[test]
    fn cookie_binds_address_and_parameters_and_expires() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut jar = CookieJar::new(&mut rng, Duration::ZERO);
        let peer: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        let cookie = jar.issue(peer, &hello(Vec::new())).to_vec();
        assert!(jar.verify(peer, &hello(cookie.clone())));
        let other: SocketAddr = "127.0.0.1:5685".parse().unwrap();
        assert!(!jar.verify(other, &hello(cookie.clone())));
        let mut changed = hello(cookie.clone());
        changed.random[0] ^= 1;
        assert!(!jar.verify(peer, &changed));
        assert!(!jar.verify(peer, &hello(Vec::new())));
        jar.rotate(&mut rng, ROTATION);
        assert!(jar.verify(peer, &hello(cookie.clone())));
        jar.rotate(&mut rng, ROTATION * 2);
        assert!(!jar.verify(peer, &hello(cookie)));
    }
}
