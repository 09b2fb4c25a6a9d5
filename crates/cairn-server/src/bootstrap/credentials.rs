//! Credential generation and replacement at bootstrap.
//!
//! Every key comes from the operating system's CSPRNG ([`generate_psk`]); none is computed from
//! an identifier. A device keeps a working credential whatever moment it loses power: the new
//! bootstrap and device-management credentials are written to it in one bootstrap sequence and
//! the device commits them together at Bootstrap-Finish, so the server keeps the previous ones
//! valid until the device proves it holds the new ones, either by registering with the new
//! device-management credential ([`on_registration`]) or by bootstrapping with the new
//! bootstrap credential ([`on_bootstrap_request`]). Until then, a device that comes back with
//! the old credential is given the same new ones again (never a third pair that would orphan
//! the one it may hold).

use cairn_store::{
    BootstrapSettings, CredentialKind, DeviceCredentials, DmCredential, DmCredentialSource,
    PskCredential, SecretBytes,
};

/// Why credentials could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The operating system's random number generator failed.
    #[error("random number generator: {0}")]
    Random(String),
    /// The configuration asks for a credential kind the server cannot generate yet.
    #[error("generating {0:?} credentials is not supported yet")]
    Unsupported(CredentialKind),
    /// The identity the device used is none of its credentials.
    #[error("the identity is not a credential of this device")]
    UnknownIdentity,
}

/// A fresh PSK credential: `GENERATED_PSK_LEN` random bytes of key and an identity of
/// `prefix` followed by 24 random hexadecimal digits.
pub fn generate_psk(prefix: &str) -> Result<PskCredential, CredentialError> {
    let mut key = vec![0u8; cairn_store::bootstrap::GENERATED_PSK_LEN];
    getrandom::fill(&mut key).map_err(|e| CredentialError::Random(e.to_string()))?;
    let key = SecretBytes::new(key);
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).map_err(|e| CredentialError::Random(e.to_string()))?;
    let mut identity = prefix.as_bytes().to_vec();
    for byte in id {
        identity.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    Ok(PskCredential { identity, key })
}

/// The server of `settings` that carries a credential, if any.
pub fn credential_server(settings: &BootstrapSettings) -> Option<&cairn_store::DmServerConfig> {
    settings
        .servers
        .iter()
        .find(|s| !matches!(s.credential, DmCredentialSource::NoSec))
}

/// Updates a device's credentials for a Bootstrap-Request authenticated with `used_identity`
/// (`None`: over plain CoAP). `in_security_store` is the device-management credential the
/// security store holds for the endpoint now: one provisioned by hand is kept valid as the
/// previous one when the first generated credential replaces it, and when it is not the
/// device's current one any more (an operator removed or replaced it), the current one is not
/// kept valid.
pub fn on_bootstrap_request(
    mut device: DeviceCredentials,
    used_identity: Option<&[u8]>,
    settings: &BootstrapSettings,
    in_security_store: Option<PskCredential>,
    now_ms: u64,
) -> Result<DeviceCredentials, CredentialError> {
    if let Some(used) = used_identity {
        if device.bootstrap.identity == used {
            if !device.bootstrap_proven {
                // The device bootstraps with the credential written last time: it committed
                // that whole bootstrap, so the previous credentials can go.
                prove(&mut device);
            }
            if settings.replace_bootstrap_credential {
                device.bootstrap_previous = Some(device.bootstrap.clone());
                device.bootstrap = generate_psk("cairn-bs-")?;
                device.bootstrap_proven = false;
            }
        } else if device
            .bootstrap_previous
            .as_ref()
            .is_none_or(|p| p.identity != used)
        {
            return Err(CredentialError::UnknownIdentity);
        }
    }
    if let Some(server) = credential_server(settings) {
        let wanted = match &server.credential {
            DmCredentialSource::Generate(CredentialKind::Psk) => None,
            DmCredentialSource::Generate(kind) => return Err(CredentialError::Unsupported(*kind)),
            DmCredentialSource::ExplicitPsk(psk) => Some(psk.clone()),
            DmCredentialSource::NoSec => None,
        };
        let short_server_id = server.short_server_id;
        let revoked = device
            .dm
            .as_ref()
            .is_some_and(|dm| in_security_store.as_ref() != Some(&dm.current));
        if revoked {
            // Neither the current credential nor the one it replaces may come back.
            device.dm = None;
        }
        device.dm = Some(match device.dm.take() {
            None => DmCredential {
                short_server_id,
                current: match wanted {
                    Some(psk) => psk,
                    None => generate_psk("cairn-dm-")?,
                },
                proven: false,
                previous: in_security_store,
            },
            Some(mut dm) => {
                let replace = match &wanted {
                    Some(psk) => dm.current != *psk,
                    None => dm.proven,
                };
                if replace {
                    if dm.proven {
                        dm.previous = Some(dm.current.clone());
                    }
                    dm.current = match wanted {
                        Some(psk) => psk,
                        None => generate_psk("cairn-dm-")?,
                    };
                    dm.proven = false;
                }
                dm.short_server_id = short_server_id;
                dm
            }
        });
    }
    device.status.attempts = device.status.attempts.saturating_add(1);
    device.status.last_attempt_ms = now_ms;
    device.status.last_result = Some("started".into());
    device.status.rotation_requested = false;
    Ok(device)
}

/// Updates a device's credentials after it registered with the device-management server
/// under `identity`; `None` if nothing changes.
pub fn on_registration(
    mut device: DeviceCredentials,
    identity: &[u8],
) -> Option<DeviceCredentials> {
    let dm = device.dm.as_ref()?;
    if dm.proven || dm.current.identity != identity {
        return None;
    }
    prove(&mut device);
    Some(device)
}

/// The device holds its current credentials: retire the previous ones.
fn prove(device: &mut DeviceCredentials) {
    device.bootstrap_proven = true;
    device.bootstrap_previous = None;
    if let Some(dm) = device.dm.as_mut() {
        dm.proven = true;
        dm.previous = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::DmServerConfig;

    fn settings(replace: bool) -> BootstrapSettings {
        BootstrapSettings {
            servers: vec![DmServerConfig {
                short_server_id: 1,
                uri: "coaps://dm".into(),
                lifetime_s: 60,
                binding: "U".into(),
                credential: DmCredentialSource::Generate(CredentialKind::Psk),
                oscore: false,
            }],
            acl: Vec::new(),
            replace_bootstrap_credential: replace,
            bootstrap_uri: "coaps://bs".into(),
            allow_unsecured: false,
        }
    }

    fn factory() -> DeviceCredentials {
        DeviceCredentials::factory("dev", generate_psk("factory-").unwrap())
    }

    #[test]
    fn generated_keys_are_random_and_long() {
        let a = generate_psk("x-").unwrap();
        let b = generate_psk("x-").unwrap();
        assert_eq!(a.key.len(), 32);
        assert_ne!(a.key, b.key);
        assert_ne!(a.identity, b.identity);
        assert!(a.identity.starts_with(b"x-") && a.identity.len() == 26);
    }

    #[test]
    fn an_interrupted_bootstrap_is_given_the_same_new_credentials() {
        let device = factory();
        let factory_id = device.bootstrap.identity.clone();
        let first =
            on_bootstrap_request(device, Some(&factory_id), &settings(true), None, 1).unwrap();
        assert_eq!(
            first.bootstrap_previous.as_ref().unwrap().identity,
            factory_id
        );
        assert!(!first.bootstrap_proven);
        let dm = first.dm.clone().unwrap();
        // The device lost power before Finish and comes back with the factory credential.
        let again = on_bootstrap_request(
            first.clone(),
            Some(&factory_id),
            &settings(true),
            Some(dm.current.clone()),
            2,
        )
        .unwrap();
        assert_eq!(again.bootstrap, first.bootstrap);
        assert_eq!(again.dm.as_ref().unwrap().current, dm.current);
        // It registers with the new DM credential: the factory one is retired.
        let proven = on_registration(again, &dm.current.identity).unwrap();
        assert!(proven.bootstrap_previous.is_none() && proven.bootstrap_proven);
        assert!(proven.dm.as_ref().unwrap().proven);
        assert!(on_registration(proven.clone(), &dm.current.identity).is_none());
        // The factory credential is no longer one of the device's.
        assert!(matches!(
            on_bootstrap_request(
                proven,
                Some(&factory_id),
                &settings(true),
                Some(dm.current),
                3
            ),
            Err(CredentialError::UnknownIdentity)
        ));
    }

    #[test]
    fn bootstrapping_with_the_new_credential_proves_it_and_rotates() {
        let device = factory();
        let factory_id = device.bootstrap.identity.clone();
        let first =
            on_bootstrap_request(device, Some(&factory_id), &settings(true), None, 1).unwrap();
        let new_id = first.bootstrap.identity.clone();
        let dm1 = first.dm.clone().unwrap().current;
        let second =
            on_bootstrap_request(first, Some(&new_id), &settings(true), Some(dm1.clone()), 2)
                .unwrap();
        assert_eq!(second.bootstrap_previous.as_ref().unwrap().identity, new_id);
        let dm = second.dm.unwrap();
        assert_eq!(dm.previous.unwrap(), dm1);
        assert_ne!(dm.current, dm1);
    }

    #[test]
    fn a_revoked_dm_credential_is_not_kept_valid() {
        let device = factory();
        let factory_id = device.bootstrap.identity.clone();
        let first =
            on_bootstrap_request(device, Some(&factory_id), &settings(true), None, 1).unwrap();
        let dm1 = first.dm.clone().unwrap().current;
        let proven = on_registration(first, &dm1.identity).unwrap();
        // The operator removed the DM credential from the security store.
        let again = on_bootstrap_request(
            proven.clone(),
            Some(&proven.bootstrap.identity),
            &settings(true),
            None,
            2,
        )
        .unwrap();
        let dm = again.dm.unwrap();
        assert_ne!(dm.current, dm1);
        assert_eq!(dm.previous, None);
    }

    #[test]
    fn a_hand_provisioned_dm_credential_stays_valid_until_replaced() {
        let device = factory();
        let factory_id = device.bootstrap.identity.clone();
        let manual = generate_psk("manual-").unwrap();
        let first = on_bootstrap_request(
            device,
            Some(&factory_id),
            &settings(false),
            Some(manual.clone()),
            1,
        )
        .unwrap();
        assert_eq!(first.dm.unwrap().previous, Some(manual));
        assert!(first.bootstrap_previous.is_none());
    }
}
