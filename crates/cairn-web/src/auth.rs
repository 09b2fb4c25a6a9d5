//! Authentication primitives: Argon2id password hashes and the strength rule, TOTP (RFC 6238)
//! codes with replay refusal, random tokens stored as SHA-256 digests, and the per-address
//! login throttle.
//!
//! Passwords are high-value, low-entropy secrets: they are hashed with Argon2id (memory-hard),
//! on the blocking pool so a hash does not stall the async workers. Session ids, API tokens,
//! setup tokens and recovery codes are random (at least 128 bits), so one SHA-256 is enough to
//! keep them out of the store in usable form; they are compared through their digests, in
//! constant time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cairn_store::{LockoutPolicy, TokenDigest};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::ApiError;

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The TOTP time step (RFC 6238 §4.1, the recommended 30 s).
pub const TOTP_STEP_S: u64 = 30;
/// TOTP steps accepted either side of the current one (clock drift).
pub const TOTP_SKEW: u64 = 1;
const TOTP_DIGITS: usize = 6;
/// Bytes of a TOTP secret (160 bits, RFC 4226 §4's recommendation).
pub const TOTP_SECRET_LEN: usize = 20;

/// Common passwords at least [`MIN_PASSWORD_LEN`] long, refused whatever their length.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::internal("random number generator"))?;
    Ok(bytes)
}

/// A random token: 32 bytes (256 bits), URL-safe base64, with a prefix naming its use.
pub fn random_token(prefix: &str) -> Result<Zeroizing<String>, ApiError> {
    let bytes = Zeroizing::new(random_bytes::<32>()?);
    Ok(Zeroizing::new(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(*bytes)
    )))
}

/// The digest a token is stored and looked up by.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two strings (CSRF tokens).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why a password is refused.
pub fn check_password_strength(password: &str, username: &str) -> Result<(), ApiError> {
    let weak = |message: &str| Err(ApiError::bad_request("weak_password", message));
    if password.chars().count() < MIN_PASSWORD_LEN {
        return weak("the password must be at least 12 characters long");
    }
    if password.len() > 1024 {
        return weak("the password must be at most 1024 bytes long");
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .any(|common| !common.is_empty() && common == lower)
    {
        return weak("the password is one of the most common passwords");
    }
    let first = lower.chars().next();
    if lower.chars().all(|c| Some(c) == first) {
        return weak("the password repeats one character");
    }
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        return weak("the password must not contain the user name");
    }
    Ok(())
}

/// How passwords are hashed.
#[derive(Clone, Debug)]
pub struct PasswordHashing {
    params: Params,
}

impl Default for PasswordHashing {
    /// Argon2id with the `argon2` crate's defaults (19 MiB, 2 passes: OWASP's minimum).
    fn default() -> Self {
        PasswordHashing {
            params: Params::default(),
        }
    }
}

impl PasswordHashing {
    /// Cheap parameters for tests only (the hash is still Argon2id).
    pub fn insecure_for_tests() -> Self {
        PasswordHashing {
            params: Params::new(256, 1, 1, None).unwrap_or_default(),
        }
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string of an Argon2id hash of `password` with a fresh salt (blocking).
    pub fn hash(&self, password: &str) -> Result<String, ApiError> {
        let salt_bytes = random_bytes::<16>()?;
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|_| ApiError::internal("password salt"))?;
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|_| ApiError::internal("password hashing"))
    }

    /// Whether `password` matches a stored PHC string (blocking). The parameters are those of
    /// the stored hash.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(hash) => self
                .argon2()
                .verify_password(password.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        }
    }

    /// A hash of nothing anyone knows, verified against when the user does not exist so that
    /// an unknown name costs as much time as a wrong password.
    pub fn decoy(&self) -> Result<String, ApiError> {
        self.hash(&URL_SAFE_NO_PAD.encode(random_bytes::<16>()?))
    }
}

/// The TOTP code of a secret at a time step (RFC 6238 with HMAC-SHA-1 and 6 digits, the
/// parameters authenticator apps expect).
pub fn totp_code(secret: &[u8], step: u64) -> String {
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        TOTP_DIGITS,
        0,
        TOTP_STEP_S,
        secret.to_vec(),
    );
    totp.generate(step * TOTP_STEP_S)
}

/// The time step of a code that matches within the skew window, if any; the caller still
/// checks that the step was not used before.
pub fn totp_match(secret: &[u8], code: &str, now_ms: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now_step = now_ms / 1000 / TOTP_STEP_S;
    let mut found = None;
    // Every candidate is computed and compared, so the time does not tell which one matched.
    for step in now_step.saturating_sub(TOTP_SKEW)..=now_step + TOTP_SKEW {
        let expected = totp_code(secret, step);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    found
}

/// The `otpauth://` URI authenticator apps read from the QR code.
pub fn otpauth_uri(issuer: &str, username: &str, secret: &[u8]) -> String {
    let secret = data_encoding::BASE32_NOPAD.encode(secret);
    let label = percent_encode(&format!("{issuer}:{username}"));
    format!(
        "otpauth://totp/{label}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        percent_encode(issuer)
    )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The QR code of `text` as an SVG document.
pub fn qr_svg(text: &str) -> Result<String, ApiError> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|_| ApiError::internal("QR code"))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .build())
}

/// Recovery codes: 10 random codes of 16 base32 characters (80 bits), shown once.
pub fn recovery_codes() -> Result<Vec<Zeroizing<String>>, ApiError> {
    (0..10)
        .map(|_| {
            let bytes = Zeroizing::new(random_bytes::<10>()?);
            let text = data_encoding::BASE32_NOPAD.encode(&*bytes).to_lowercase();
            Ok(Zeroizing::new(format!("{}-{}", &text[..8], &text[8..])))
        })
        .collect()
}

/// The digest a recovery code is stored by (case and dashes do not matter when typed).
pub fn recovery_digest(code: &str) -> TokenDigest {
    let normalized: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let canonical = if normalized.len() == 16 {
        format!("{}-{}", &normalized[..8], &normalized[8..])
    } else {
        normalized
    };
    digest(&canonical)
}

/// Login throttling by source address: a token bucket (`governor`) that bounds the attempt
/// rate, and a lockout with exponential backoff after repeated failures.
pub struct LoginThrottle {
    rate: DefaultKeyedRateLimiter<IpAddr>,
    failures: Mutex<HashMap<IpAddr, (u32, u64)>>,
    policy: LockoutPolicy,
}

/// The most addresses whose failures are remembered; past it, the oldest locks are dropped.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl LoginThrottle {
    /// `per_minute` attempts per address and minute (in a burst as large), and `policy` for
    /// the lockout.
    pub fn new(per_minute: u32, policy: LockoutPolicy) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        LoginThrottle {
            rate: RateLimiter::keyed(Quota::per_minute(per_minute)),
            failures: Mutex::new(HashMap::new()),
            policy,
        }
    }

    /// Whether an attempt from `address` may go ahead; `Err` carries the seconds to wait.
    pub fn admit(&self, address: IpAddr, now_ms: u64) -> Result<(), u64> {
        let locked_until = self
            .failures
            .lock()
            .ok()
            .and_then(|failures| failures.get(&address).map(|&(_, until)| until));
        if let Some(until) = locked_until.filter(|&until| until > now_ms) {
            return Err((until - now_ms).div_ceil(1000));
        }
        self.rate.check_key(&address).map_err(|_| 60)
    }

    /// Counts a failed attempt from `address`.
    pub fn failed(&self, address: IpAddr, now_ms: u64) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= MAX_TRACKED_ADDRESSES {
            failures.retain(|_, (_, until)| *until > now_ms);
            if failures.len() >= MAX_TRACKED_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(address).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(1);
        let lock = self.policy.lock_ms(entry.0);
        if lock > 0 {
            entry.1 = now_ms.saturating_add(lock);
        }
    }

    /// Forgets the failures of `address` after a success.
    pub fn succeeded(&self, address: IpAddr) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&address);
        }
        self.rate.retain_recent();
    }
}

/// Failed logins against user names that have no account, counted like an account's own
/// (same policy, same answers), so a lockout does not tell which names exist.
pub struct UnknownNameLockouts {
    names: Mutex<HashMap<String, (u32, u64)>>,
}

/// The most unknown names whose failures are remembered; past it, expired entries go first.
const MAX_TRACKED_NAMES: usize = 100_000;

impl UnknownNameLockouts {
    pub fn new() -> Self {
        UnknownNameLockouts {
            names: Mutex::new(HashMap::new()),
        }
    }

    /// The time `name` stays locked, if it is locked at `now_ms`.
    pub fn locked_until(&self, name: &str, now_ms: u64) -> Option<u64> {
        let names = self.names.lock().ok()?;
        names
            .get(name)
            .map(|&(_, until)| until)
            .filter(|&until| until > now_ms)
    }

    /// Counts a failed attempt against `name`, locking it as `policy` would lock an account.
    pub fn failed(&self, name: &str, now_ms: u64, policy: LockoutPolicy) {
        let Ok(mut names) = self.names.lock() else {
            return;
        };
        if names.len() >= MAX_TRACKED_NAMES && !names.contains_key(name) {
            names.retain(|_, (_, until)| *until > now_ms);
            if names.len() >= MAX_TRACKED_NAMES {
                names.clear();
            }
        }
        let entry = names.entry(name.to_owned()).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(1);
        let lock = policy.lock_ms(entry.0);
        if lock > 0 {
            entry.1 = entry.1.max(now_ms.saturating_add(lock));
        }
    }

    /// Forgets `name` (an account was created under it).
    pub fn forget(&self, name: &str) {
        if let Ok(mut names) = self.names.lock() {
            names.remove(name);
        }
    }
}

impl Default for UnknownNameLockouts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 Appendix B, SHA-1 seed, last 6 digits of the 8-digit values.
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59u64, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(totp_code(secret, time / 30), code, "time {time}");
        }
    }

    #[test]
    fn a_code_matches_within_one_step_only() {
        let secret = [7u8; 20];
        let now_ms = 1_700_000_000_000;
        let step = now_ms / 1000 / 30;
        for offset in [-1i64, 0, 1] {
            let s = (step as i64 + offset) as u64;
            assert_eq!(totp_match(&secret, &totp_code(&secret, s), now_ms), Some(s));
        }
        assert_eq!(
            totp_match(&secret, &totp_code(&secret, step + 2), now_ms),
            None
        );
        assert_eq!(
            totp_match(&secret, &totp_code(&secret, step - 2), now_ms),
            None
        );
        assert_eq!(totp_match(&secret, "12345", now_ms), None);
        assert_eq!(totp_match(&secret, "abcdef", now_ms), None);
    }

    #[test]
    fn weak_passwords_are_refused() {
        assert!(check_password_strength("short", "a").is_err());
        assert!(check_password_strength("password1234", "a").is_err());
        assert!(check_password_strength("PASSWORD1234", "a").is_err());
        assert!(check_password_strength("aaaaaaaaaaaaaaa", "a").is_err());
        assert!(check_password_strength("alice-is-the-best", "alice").is_err());
        assert!(check_password_strength("correct horse battery", "alice").is_ok());
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hashing = PasswordHashing::insecure_for_tests();
        let phc = hashing.hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(hashing.verify("correct horse battery", &phc));
        assert!(!hashing.verify("correct horse batterz", &phc));
        assert!(!hashing.verify("x", "not a hash"));
        assert_ne!(phc, hashing.hash("correct horse battery").unwrap());
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalized() {
        let codes = recovery_codes().unwrap();
        assert_eq!(codes.len(), 10);
        let first = codes[0].as_str();
        assert_eq!(
            recovery_digest(first),
            recovery_digest(&first.to_uppercase())
        );
        assert_eq!(
            recovery_digest(first),
            recovery_digest(&first.replace('-', ""))
        );
        assert_ne!(recovery_digest(first), recovery_digest(codes[1].as_str()));
    }

    #[test]
    fn the_throttle_locks_an_address_with_backoff() {
        let policy = LockoutPolicy {
            free_attempts: 2,
            base_ms: 1000,
            max_ms: 4000,
        };
        let throttle = LoginThrottle::new(1000, policy);
        let ip: IpAddr = [10, 0, 0, 1].into();
        throttle.failed(ip, 0);
        assert!(throttle.admit(ip, 0).is_ok());
        throttle.failed(ip, 0);
        assert_eq!(throttle.admit(ip, 0), Err(1));
        assert!(throttle.admit(ip, 1000).is_ok());
        throttle.failed(ip, 1000);
        assert_eq!(throttle.admit(ip, 1000), Err(2));
        throttle.succeeded(ip);
        assert!(throttle.admit(ip, 1000).is_ok());
        assert!(throttle.admit([10, 0, 0, 2].into(), 1000).is_ok());
    }

    #[test]
    fn the_rate_limit_bounds_attempts_per_address() {
        let policy = LockoutPolicy {
            free_attempts: 100,
            base_ms: 1,
            max_ms: 1,
        };
        let throttle = LoginThrottle::new(3, policy);
        let ip: IpAddr = [10, 0, 0, 3].into();
        for _ in 0..3 {
            assert!(throttle.admit(ip, 0).is_ok());
        }
        assert!(throttle.admit(ip, 0).is_err());
    }

    proptest::proptest! {
        /// Any typed code or recovery code is checked without panicking.
        #[test]
        fn any_code_is_checked(code in ".{0,40}", now in proptest::num::u64::ANY) {
            let _ = totp_match(&[1; 20], &code, now);
            let _ = recovery_digest(&code);
            let _ = check_password_strength(&code, "user");
        }
    }
}
