//! The bootstrap tables never hold a secret in the clear: factory keys, generated keys and
//! explicit keys of configurations are sealed under the master key.

mod common;

use cairn_store::{
    BootstrapSettings, BootstrapStore, CredentialKind, DeviceBootstrapConfig, DeviceCredentials,
    DmCredential, DmCredentialSource, DmServerConfig, PskCredential, SecretBytes,
};
use common::open;

const FACTORY_KEY: &[u8] = b"factory-key-that-must-stay-sealed-1";
const DM_KEY: &[u8] = b"dm-key-that-must-stay-sealed-27b9";
const EXPLICIT_KEY: &[u8] = b"explicit-key-that-must-stay-sealed";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn psk(identity: &str, key: &[u8]) -> PskCredential {
    PskCredential {
        identity: identity.as_bytes().to_vec(),
        key: SecretBytes::new(key.to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_file_never_holds_a_bootstrap_secret_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let mut device = DeviceCredentials::factory("sealed-dev", psk("factory-id", FACTORY_KEY));
        store
            .import_device_credentials(vec![device.clone()])
            .await
            .unwrap();
        device.dm = Some(DmCredential {
            short_server_id: 1,
            kind: CredentialKind::Psk,
            previous_kind: CredentialKind::Psk,
            issued_at_ms: 0,
            current: psk("dm-id", DM_KEY),
            proven: false,
            previous: None,
        });
        store.put_device_credentials(device).await.unwrap();
        let config = DeviceBootstrapConfig {
            endpoint: "other-dev".into(),
            settings: BootstrapSettings {
                servers: vec![DmServerConfig {
                    short_server_id: 1,
                    uri: "coaps://dm".into(),
                    lifetime_s: 60,
                    binding: "U".into(),
                    credential: DmCredentialSource::ExplicitPsk(psk("explicit-id", EXPLICIT_KEY)),
                    oscore: false,
                }],
                acl: Vec::new(),
                replace_bootstrap_credential: true,
                bootstrap_uri: "coaps://bs".into(),
                allow_unsecured: false,
            },
        };
        store.put_bootstrap_config(config).await.unwrap();
    }
    let raw = std::fs::read(dir.path().join(cairn_store::embedded::DATABASE_FILE)).unwrap();
    assert!(
        contains(&raw, b"factory-id"),
        "identities are indexed in the clear"
    );
    for secret in [FACTORY_KEY, DM_KEY, EXPLICIT_KEY] {
        assert!(!contains(&raw, secret), "a secret is in the database file");
    }
    let store = open(dir.path());
    let (endpoint, key) = store
        .bootstrap_psk_blocking(b"factory-id")
        .unwrap()
        .unwrap();
    assert_eq!(
        (endpoint.as_str(), key.expose()),
        ("sealed-dev", FACTORY_KEY)
    );
}
