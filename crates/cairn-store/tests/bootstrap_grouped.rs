//! A device's credentials at bootstrap are grouped writes: the writes queued at one moment
//! share a commit, a write that fails (an identity another device owns) fails alone, and
//! every write acknowledged is on disk, credentials and DM security info together.

mod common;

use cairn_store::{
    BootstrapStore, CredentialKind, DeviceCredentials, DmCredential, PskCredential, SecretBytes,
    SecurityInfo, SecurityMode, SecurityStore, StoreError,
};
use common::open;

fn psk(identity: &str, seed: u32) -> PskCredential {
    // 32 bytes, distinct per seed.
    let key = format!("key-{seed:010}-abcdefghijklmnopq");
    PskCredential {
        identity: identity.as_bytes().to_vec(),
        key: SecretBytes::new(key.into_bytes()),
    }
}

fn bootstrapped(n: u32, factory: PskCredential) -> DeviceCredentials {
    let mut device = DeviceCredentials::factory(format!("dev-{n}"), psk(&format!("bs-{n}"), n));
    device.bootstrap_previous = Some(factory);
    device.bootstrap_proven = false;
    device.dm = Some(DmCredential {
        short_server_id: 1,
        kind: CredentialKind::Psk,
        previous_kind: CredentialKind::Psk,
        issued_at_ms: 0,
        current: psk(&format!("dm-{n}"), n + 100_000),
        proven: false,
        previous: None,
    });
    device
}

fn security(device: &DeviceCredentials) -> SecurityInfo {
    let dm = device.dm.as_ref().unwrap();
    SecurityInfo {
        endpoint: device.endpoint.clone(),
        mode: SecurityMode::Psk {
            identity: dm.current.identity.clone(),
            key: dm.current.key.clone(),
        },
        created_at_ms: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bootstrap_writes_share_commits_and_a_failing_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factories: Vec<PskCredential> = (0..300)
        .map(|n| psk(&format!("factory-{n}"), n + 200_000))
        .collect();
    let devices: Vec<DeviceCredentials> = factories
        .iter()
        .enumerate()
        .map(|(n, f)| DeviceCredentials::factory(format!("dev-{n}"), f.clone()))
        .collect();
    store.import_device_credentials(devices).await.unwrap();
    // Every 50th write takes a bootstrap identity device 0 already has: a conflict.
    let mut writes = Vec::new();
    for n in 0..300u32 {
        let mut device = bootstrapped(n, factories[n as usize].clone());
        if n % 50 == 7 {
            device.bootstrap.identity = b"factory-0".to_vec();
        }
        let info = security(&device);
        // Queued at once (the write is submitted when the method is called).
        writes.push(store.put_device_credentials_and_security(device, info));
    }
    let mut conflicts = 0;
    for (n, write) in writes.into_iter().enumerate() {
        match write.await {
            Ok(()) => assert_ne!(n % 50, 7),
            Err(StoreError::Conflict(_)) => {
                assert_eq!(n % 50, 7);
                conflicts += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(conflicts, 6);
    drop(store);

    let store = open(dir.path());
    for n in 0..300u32 {
        let endpoint = format!("dev-{n}");
        let stored = store
            .get_device_credentials(&endpoint)
            .await
            .unwrap()
            .unwrap();
        let info = store.get_security_info(&endpoint).await.unwrap();
        if n % 50 == 7 {
            // Nothing of the failed write: the factory record, no DM security info.
            assert_eq!(stored.bootstrap.identity, format!("factory-{n}").as_bytes());
            assert!(stored.dm.is_none());
            assert!(info.is_none());
        } else {
            assert_eq!(stored, bootstrapped(n, factories[n as usize].clone()));
            assert_eq!(info.map(|i| i.mode), Some(security(&stored).mode));
            // Both bootstrap credentials are accepted until the device proves the new one.
            assert!(
                store
                    .bootstrap_psk_blocking(format!("factory-{n}").as_bytes())
                    .unwrap()
                    .is_some()
            );
            assert!(
                store
                    .bootstrap_psk_blocking(format!("bs-{n}").as_bytes())
                    .unwrap()
                    .is_some()
            );
        }
    }
    // Device 0 still owns its factory identity.
    let (owner, _) = store.bootstrap_psk_blocking(b"factory-0").unwrap().unwrap();
    assert_eq!(owner, "dev-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_info_of_another_endpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let device = bootstrapped(1, psk("factory-1", 7));
    let mut info = security(&device);
    info.endpoint = "someone-else".into();
    assert!(matches!(
        store
            .put_device_credentials_and_security(device, info)
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(
        store
            .get_device_credentials("dev-1")
            .await
            .unwrap()
            .is_none()
    );
}
