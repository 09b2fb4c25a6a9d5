//! The LwM2M Security object (0, OMA LwM2M Core 1.2 Appendix E.1): the server URI, the
//! security mode and the credentials of each server account.
//!
//! Only a Bootstrap-Server may read or write it (Core §6.3 and E.1), so every Device
//! Management operation on it is answered 4.01. The secret key never appears in `Debug`.

use cairn_lwm2m::{LwM2mObjectInstance, LwM2mResource, Value};
use zeroize::Zeroizing;

use crate::object::{ObjectError, ObjectHandler};
use crate::objects::ids;

/// Security Mode (resource 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityMode {
    /// 0: pre-shared key.
    PreSharedKey,
    /// 1: raw public key (RFC 7250).
    RawPublicKey,
    /// 2: X.509 certificate.
    Certificate,
    /// 3: no security.
    NoSec,
}

impl SecurityMode {
    fn value(self) -> i64 {
        match self {
            SecurityMode::PreSharedKey => 0,
            SecurityMode::RawPublicKey => 1,
            SecurityMode::Certificate => 2,
            SecurityMode::NoSec => 3,
        }
    }
}

/// One server account's security settings.
#[derive(Clone)]
struct Account {
    uri: String,
    mode: SecurityMode,
    identity: Vec<u8>,
    secret_key: Zeroizing<Vec<u8>>,
    short_server_id: u16,
}

/// The Security object.
#[derive(Clone, Default)]
pub struct SecurityObject {
    accounts: Vec<Account>,
}

impl std::fmt::Debug for SecurityObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uris: Vec<&str> = self.accounts.iter().map(|a| a.uri.as_str()).collect();
        f.debug_struct("SecurityObject")
            .field("servers", &uris)
            .finish_non_exhaustive()
    }
}

impl SecurityObject {
    /// An empty object.
    pub fn new() -> SecurityObject {
        SecurityObject::default()
    }

    /// Adds the account of a LwM2M Server as the next instance.
    pub fn add_server(
        &mut self,
        uri: impl Into<String>,
        mode: SecurityMode,
        identity: impl Into<Vec<u8>>,
        secret_key: impl Into<Vec<u8>>,
        short_server_id: u16,
    ) {
        self.accounts.push(Account {
            uri: uri.into(),
            mode,
            identity: identity.into(),
            secret_key: Zeroizing::new(secret_key.into()),
            short_server_id,
        });
    }

    /// The full instance, for a Bootstrap-Server interface.
    pub fn instance(&self, id: u16) -> Option<LwM2mObjectInstance> {
        let account = self.accounts.get(usize::from(id))?;
        Some(LwM2mObjectInstance::new(
            id,
            [
                LwM2mResource::single(0, Value::String(account.uri.clone())),
                LwM2mResource::single(1, Value::Boolean(false)),
                LwM2mResource::single(2, Value::Integer(account.mode.value())),
                LwM2mResource::single(3, Value::Opaque(account.identity.clone())),
                LwM2mResource::single(5, Value::Opaque(account.secret_key.to_vec())),
                LwM2mResource::single(10, Value::Integer(i64::from(account.short_server_id))),
            ],
        ))
    }
}

impl ObjectHandler for SecurityObject {
    fn object_id(&self) -> u16 {
        ids::SECURITY
    }

    fn instance_ids(&self) -> Vec<u16> {
        (0..self.accounts.len())
            .filter_map(|i| u16::try_from(i).ok())
            .collect()
    }

    fn read(&self, _instance: u16) -> Result<LwM2mObjectInstance, ObjectError> {
        Err(ObjectError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_reads() {
        let mut security = SecurityObject::new();
        security.add_server(
            "coaps://example.net",
            SecurityMode::PreSharedKey,
            "id",
            vec![0xab; 16],
            1,
        );
        let text = format!("{security:?}");
        assert!(text.contains("coaps://example.net") && !text.contains("171"));
        assert_eq!(security.read(0), Err(ObjectError::Unauthorized));
        assert_eq!(security.instance_ids(), vec![0]);
    }
}
