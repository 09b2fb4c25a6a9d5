//! Behaviour of the embedded store through the traits, as the server holds it (`Arc<dyn …>`).

mod common;

use std::sync::Arc;

use cairn_store::{
    BlobKind, BlobStore, BootstrapConfig, ObservationStore, RegistrationStore, RegistrationUpdate,
    SecretBytes, SecurityInfo, SecurityMode, SecurityModeKind, SecurityStore, StoreError,
    X509Expectation,
};
use common::{observation, open, psk_info, registration};

#[tokio::test]
async fn a_new_registration_of_an_endpoint_replaces_the_old_one_and_its_observations() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let registrations: Arc<dyn RegistrationStore> = Arc::new(store.clone());
    let observations: Arc<dyn ObservationStore> = Arc::new(store.clone());

    let first = registration("ep1", "id-1", 1_000);
    assert!(
        registrations
            .add_registration(first.clone())
            .await
            .unwrap()
            .is_none()
    );
    observations
        .add_observation(observation("obs-1", &first))
        .await
        .unwrap();

    let second = registration("ep1", "id-2", 2_000);
    let replaced = registrations
        .add_registration(second.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.registration, first);
    assert_eq!(replaced.observations, vec![observation("obs-1", &first)]);

    assert_eq!(registrations.get_registration("id-1").await.unwrap(), None);
    assert_eq!(
        registrations.get_registration("id-2").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        registrations
            .get_registration_by_endpoint("ep1")
            .await
            .unwrap(),
        Some(second)
    );
    assert_eq!(observations.get_observation("obs-1").await.unwrap(), None);
    assert!(
        registrations
            .registrations_expired_before(u64::MAX, 10)
            .await
            .unwrap()
            .len()
            == 1
    );
}

#[tokio::test]
async fn update_moves_the_expiry_and_remove_cleans_every_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let registration = registration("ep", "id", 1_000);
    store.add_registration(registration.clone()).await.unwrap();
    assert_eq!(registration.expires_at_ms(), 61_000);
    let expired = store
        .registrations_expired_before(61_001, 10)
        .await
        .unwrap();
    assert_eq!(expired, vec![registration.clone()]);
    assert!(
        store
            .registrations_expired_before(61_000, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let update = RegistrationUpdate {
        registration_id: "id".to_owned(),
        lifetime_s: Some(120),
        binding: Some("UQ".to_owned()),
        sms_number: None,
        object_links: Some(("</3/0>".to_owned(), vec!["/3/0".to_owned()])),
        peer_address: "127.0.0.1:40001".parse().unwrap(),
        updated_at_ms: 50_000,
    };
    let updated = store
        .update_registration(update.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.previous, registration);
    assert_eq!(updated.updated.expires_at_ms(), 170_000);
    assert_eq!(updated.updated.binding, "UQ");
    assert_eq!(updated.updated.object_paths, vec!["/3/0".to_owned()]);
    assert!(
        store
            .registrations_expired_before(170_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .registrations_expired_before(170_001, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    let mut unknown = update;
    unknown.registration_id = "nope".to_owned();
    assert!(store.update_registration(unknown).await.unwrap().is_none());

    store
        .add_observation(observation("o", &updated.updated))
        .await
        .unwrap();
    let removed = store.remove_registration("id").await.unwrap().unwrap();
    assert_eq!(removed.registration, updated.updated);
    assert_eq!(removed.observations.len(), 1);
    assert!(
        store
            .get_registration_by_endpoint("ep")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .registrations_expired_before(u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.remove_registration("id").await.unwrap().is_none());
}

#[tokio::test]
async fn registrations_list_in_pages_by_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..7 {
        let endpoint = format!("ep{i}");
        store
            .add_registration(registration(&endpoint, &format!("id{i}"), 0))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_registrations(cursor.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|r| r.endpoint));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("ep{i}")).collect();
    assert_eq!(seen, expected);
    assert!(
        store
            .list_registrations(None, 0)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn a_registration_id_cannot_move_to_another_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_registration(registration("a", "id", 0))
        .await
        .unwrap();
    let error = store
        .add_registration(registration("b", "id", 0))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)));
    let error = store
        .add_registration(registration("", "x", 0))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidInput(_)));
}

#[tokio::test]
async fn security_info_by_endpoint_and_by_psk_identity() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let security: Arc<dyn SecurityStore> = Arc::new(store.clone());
    let info = psk_info("ep", "identity-1", b"key-one");
    assert!(
        security
            .put_security_info(info.clone())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        security.get_security_info("ep").await.unwrap(),
        Some(info.clone())
    );
    assert_eq!(
        security
            .get_security_info_by_psk_identity(b"identity-1")
            .await
            .unwrap(),
        Some(info)
    );
    let (endpoint, key) = store.psk_key_blocking(b"identity-1").unwrap().unwrap();
    assert_eq!((endpoint.as_str(), key.expose()), ("ep", &b"key-one"[..]));

    // A new identity for the endpoint frees the old one.
    let renewed = psk_info("ep", "identity-2", b"key-two");
    let previous = security.put_security_info(renewed).await.unwrap().unwrap();
    assert_eq!(previous.identity.as_deref(), Some("identity-1"));
    assert!(
        security
            .get_security_info_by_psk_identity(b"identity-1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.psk_key_blocking(b"identity-2").unwrap().is_some());

    // Another endpoint cannot take an identity in use.
    let error = security
        .put_security_info(psk_info("other", "identity-2", b"k"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)));

    // Switching to another mode drops the identity from the index.
    let x509 = SecurityInfo {
        endpoint: "ep".to_owned(),
        mode: SecurityMode::X509(X509Expectation::CommonName("ep".to_owned())),
        created_at_ms: 3,
    };
    security.put_security_info(x509).await.unwrap();
    assert!(store.psk_key_blocking(b"identity-2").unwrap().is_none());

    let removed = security.remove_security_info("ep").await.unwrap().unwrap();
    assert_eq!(removed.mode, SecurityModeKind::X509);
    assert!(security.get_security_info("ep").await.unwrap().is_none());
    assert!(security.remove_security_info("ep").await.unwrap().is_none());
}

#[tokio::test]
async fn security_summaries_list_identities_and_fingerprints_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .put_security_info(psk_info("a", "id-a", b"secret-a"))
        .await
        .unwrap();
    store
        .put_security_info(SecurityInfo {
            endpoint: "b".to_owned(),
            mode: SecurityMode::Rpk {
                public_key_der: vec![0x30, 0x59, 1, 2],
            },
            created_at_ms: 1,
        })
        .await
        .unwrap();
    store
        .put_security_info(SecurityInfo {
            endpoint: "c".to_owned(),
            mode: SecurityMode::NoSec,
            created_at_ms: 1,
        })
        .await
        .unwrap();
    let page = store.list_security_summaries(None, 2).await.unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].identity.as_deref(), Some("id-a"));
    assert!(
        page.items[0]
            .key_fingerprint
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(!format!("{page:?}").contains("secret-a"));
    assert_eq!(page.items[1].mode, SecurityModeKind::Rpk);
    let rest = store
        .list_security_summaries(page.next_cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].mode, SecurityModeKind::NoSec);
    assert_eq!(rest.next_cursor, None);
}

#[tokio::test]
async fn observations_belong_to_a_registration() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = registration("a", "id-a", 0);
    let second = registration("b", "id-b", 0);
    store.add_registration(first.clone()).await.unwrap();
    store.add_registration(second.clone()).await.unwrap();

    let orphan = observation("o", &registration("c", "id-c", 0));
    assert!(matches!(
        store.add_observation(orphan).await.unwrap_err(),
        StoreError::NotFound(_)
    ));

    for id in ["o1", "o2"] {
        store
            .add_observation(observation(id, &first))
            .await
            .unwrap();
    }
    store
        .add_observation(observation("o3", &second))
        .await
        .unwrap();
    assert_eq!(store.list_observations("id-a").await.unwrap().len(), 2);

    let removed = store.remove_observation("o1").await.unwrap().unwrap();
    assert_eq!(removed.id, "o1");
    assert!(store.remove_observation("o1").await.unwrap().is_none());
    assert_eq!(store.list_observations("id-a").await.unwrap().len(), 1);

    let removed = store.remove_observations_of("id-a").await.unwrap();
    assert_eq!(removed.len(), 1);
    assert!(store.list_observations("id-a").await.unwrap().is_empty());
    assert_eq!(store.list_observations("id-b").await.unwrap().len(), 1);
}

#[tokio::test]
async fn blobs_round_trip_and_list_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let config = BootstrapConfig(SecretBytes::new(b"{\"servers\":[]}".to_vec()));
    store.put_bootstrap_config("ep", &config).await.unwrap();
    assert_eq!(
        store.get_bootstrap_config("ep").await.unwrap(),
        Some(config)
    );
    assert!(!format!("{:?}", store.get_bootstrap_config("ep").await.unwrap()).contains("servers"));

    store
        .put_firmware_image("fw-1", b"meta-1".to_vec())
        .await
        .unwrap();
    store
        .put_firmware_image("fw-2", b"meta-2".to_vec())
        .await
        .unwrap();
    store.put_campaign("c-1", b"state".to_vec()).await.unwrap();
    assert_eq!(
        store.get_firmware_image("fw-2").await.unwrap(),
        Some(b"meta-2".to_vec())
    );
    assert_eq!(
        store.get_campaign("c-1").await.unwrap(),
        Some(b"state".to_vec())
    );

    let page = store
        .list_blob_keys(BlobKind::FirmwareImage, None, 1)
        .await
        .unwrap();
    assert_eq!(page.items, vec!["fw-1".to_owned()]);
    let page = store
        .list_blob_keys(BlobKind::FirmwareImage, page.next_cursor.as_deref(), 1)
        .await
        .unwrap();
    assert_eq!(page.items, vec!["fw-2".to_owned()]);
    assert_eq!(page.next_cursor, None);

    assert!(store.remove_blob(BlobKind::Campaign, "c-1").await.unwrap());
    assert!(!store.remove_blob(BlobKind::Campaign, "c-1").await.unwrap());
    assert!(store.get_campaign("c-1").await.unwrap().is_none());
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .add_registration(registration("ep", "id", 5))
            .await
            .unwrap();
        store
            .put_security_info(psk_info("ep", "ident", b"k"))
            .await
            .unwrap();
    }
    let store = open(dir.path());
    assert!(store.get_registration("id").await.unwrap().is_some());
    assert!(store.psk_key_blocking(b"ident").unwrap().is_some());
}

#[test]
fn writes_outside_a_tokio_runtime_fail_cleanly_or_run_on_the_writer_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Registrations go to the group-commit writer thread: no runtime needed.
    let future = store.add_registration(registration("ep", "id", 0));
    futures_lite_block_on(future).unwrap();
    let stored = futures_lite_block_on(store.get_registration("id")).unwrap();
    assert_eq!(stored.map(|r| r.endpoint).as_deref(), Some("ep"));
    // Other writes run on tokio's blocking pool, and say so without one.
    let future = store.remove_expired_registrations(u64::MAX, 10);
    let result = futures_lite_block_on(future);
    assert!(matches!(result, Err(StoreError::Task(_))));
}

/// Polls a future to completion on this thread, with no runtime.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

#[test]
fn the_store_is_send_and_sync_and_its_traits_are_object_safe() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<cairn_store::EmbeddedStore>();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let registrations: Arc<dyn RegistrationStore> = Arc::new(store.clone());
    let security: Arc<dyn SecurityStore> = Arc::new(store.clone());
    let observations: Arc<dyn ObservationStore> = Arc::new(store.clone());
    let blobs: Arc<dyn BlobStore> = Arc::new(store);
    fn assert_shareable<T: Send + Sync + ?Sized>(_: &T) {}
    assert_shareable(&*registrations);
    assert_shareable(&*security);
    assert_shareable(&*observations);
    assert_shareable(&*blobs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_readers_from_many_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let endpoint = format!("ep{i}");
            store
                .add_registration(registration(&endpoint, &format!("id{i}"), i))
                .await
                .unwrap();
            store
                .put_security_info(psk_info(&endpoint, &format!("identity{i}"), b"k"))
                .await
                .unwrap();
            assert!(
                store
                    .get_registration_by_endpoint(&endpoint)
                    .await
                    .unwrap()
                    .is_some()
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let page = store.list_registrations(None, 100).await.unwrap();
    assert_eq!(page.items.len(), 32);
    for i in 0..32 {
        let identity = format!("identity{i}");
        let info = store
            .get_security_info_by_psk_identity(identity.as_bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.endpoint, format!("ep{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_share_commits_and_a_failing_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_registration(registration("owner", "taken", 0))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..300 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every 50th write reuses an id that belongs to another endpoint: a conflict.
            let id = if n % 50 == 7 {
                "taken".to_string()
            } else {
                format!("id{n}")
            };
            store
                .add_registration(registration(&format!("ep{n}"), &id, 0))
                .await
        }));
    }
    let mut conflicts = 0;
    for (n, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(_) => assert_ne!(n % 50, 7),
            Err(StoreError::Conflict(_)) => {
                assert_eq!(n % 50, 7);
                conflicts += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(conflicts, 6);
    drop(store);
    // Everything acknowledged is on disk.
    let store = open(dir.path());
    for n in (0..300).filter(|n| n % 50 != 7) {
        let stored = store.get_registration(&format!("id{n}")).await.unwrap();
        assert_eq!(stored.unwrap().endpoint, format!("ep{n}"));
    }
    let owner = store.get_registration("taken").await.unwrap().unwrap();
    assert_eq!(owner.endpoint, "owner");
}

/// A store with a page cache far smaller than its data still reads back every record (the
/// pages that do not fit come from the file).
#[tokio::test]
async fn a_small_page_cache_holds_a_larger_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = cairn_store::EmbeddedStore::open_with_cache(
        dir.path(),
        cairn_store::MasterKeySource::Key(cairn_store::MasterKey::from_bytes(&[7; 32])),
        1 << 20,
    )
    .unwrap();
    let mut padded = registration("ep", "id", 1_000);
    padded.object_links = "</3/0>,".repeat(400);
    for n in 0..500u64 {
        let mut record = padded.clone();
        record.endpoint = format!("ep{n}");
        record.id = format!("id{n}");
        store.add_registration(record).await.unwrap();
    }
    for n in (0..500u64).step_by(37) {
        let got = store
            .get_registration_by_endpoint(&format!("ep{n}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.id, format!("id{n}"));
        assert_eq!(got.object_links, padded.object_links);
    }
    assert_eq!(cairn_store::embedded::DEFAULT_CACHE_BYTES, 4 << 20);
}
