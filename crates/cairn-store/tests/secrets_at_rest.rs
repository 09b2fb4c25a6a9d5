//! Secrets are encrypted at rest, and a wrong or missing master key fails clearly.

mod common;

use cairn_store::{
    BlobStore, BootstrapConfig, EmbeddedStore, MasterKey, MasterKeyError, MasterKeySource,
    SecretBytes, SecurityStore, StoreError,
};
use common::{open, psk_info};

const PSK: &[u8] = b"PSK-that-must-never-hit-the-disk-7f3a9c";
const BOOTSTRAP_SECRET: &[u8] = b"bootstrap-server-psk-5d1e0b";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn the_database_file_never_holds_a_psk_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .put_security_info(psk_info("ep", "ident", PSK))
            .await
            .unwrap();
        let config = BootstrapConfig(SecretBytes::new(BOOTSTRAP_SECRET.to_vec()));
        store.put_bootstrap_config("ep", &config).await.unwrap();
        // Overwrite once so any page the first version lived in is rewritten too.
        store
            .put_security_info(psk_info("ep", "ident", PSK))
            .await
            .unwrap();
    }
    let raw = std::fs::read(dir.path().join(cairn_store::embedded::DATABASE_FILE)).unwrap();
    assert!(
        contains(&raw, b"ident"),
        "the identity is stored in the clear"
    );
    assert!(!contains(&raw, PSK), "the PSK is in the database file");
    assert!(
        !contains(&raw, BOOTSTRAP_SECRET),
        "the bootstrap secret is in the file"
    );

    let store = open(dir.path());
    let (_, key) = store.psk_key_blocking(b"ident").unwrap().unwrap();
    assert_eq!(key.expose(), PSK);
}

#[test]
fn a_wrong_master_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let wrong = MasterKey::from_bytes(&[0x43; 32]);
    let error = EmbeddedStore::open_with(dir.path(), MasterKeySource::Key(wrong)).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::MasterKey(MasterKeyError::Mismatch { .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("does not match"));
}

#[test]
fn a_missing_key_file_for_an_existing_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os(cairn_store::secret::MASTER_KEY_ENV).is_some() {
        return;
    }
    drop(EmbeddedStore::open(dir.path()).unwrap());
    let key_file = dir.path().join(cairn_store::secret::MASTER_KEY_FILE);
    assert!(key_file.exists());
    drop(EmbeddedStore::open(dir.path()).unwrap());
    std::fs::remove_file(&key_file).unwrap();
    let error = EmbeddedStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(error, StoreError::MasterKey(MasterKeyError::Missing { .. })),
        "{error}"
    );
    assert!(
        !key_file.exists(),
        "no new key is made for an existing database"
    );
}

const CHILD_DIR_ENV: &str = "CAIRN_STORE_ENV_KEY_CHILD_DIR";

/// Run as a child by the test below: opens the store with the key from `CAIRN_MASTER_KEY` and
/// prints the outcome.
#[test]
fn env_key_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    match EmbeddedStore::open(std::path::Path::new(&dir)) {
        Ok(_) => println!("outcome: opened"),
        Err(error) => println!("outcome: {error}"),
    }
}

fn open_in_child_with_env_key(dir: &std::path::Path, key: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["env_key_child", "--exact", "--nocapture"])
        .env(CHILD_DIR_ENV, dir)
        .env(cairn_store::secret::MASTER_KEY_ENV, key)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("outcome: "))
        .unwrap_or_else(|| panic!("no outcome in {stdout:?}"))
        .to_owned()
}

#[test]
fn the_master_key_from_the_environment_opens_and_guards_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let key_hex = "42".repeat(32);
    assert_eq!(open_in_child_with_env_key(dir.path(), &key_hex), "opened");
    assert!(
        !dir.path()
            .join(cairn_store::secret::MASTER_KEY_FILE)
            .exists(),
        "no key file when the key comes from the environment"
    );
    // The environment key is the one `common::KEY` holds: the database opens with it directly.
    drop(open(dir.path()));

    let wrong = open_in_child_with_env_key(dir.path(), &"17".repeat(32));
    assert!(wrong.contains("does not match"), "{wrong}");
    let malformed = open_in_child_with_env_key(dir.path(), "not-a-key");
    assert!(
        malformed.contains("not 64 hexadecimal digits"),
        "{malformed}"
    );
}
