//! Throughput of the embedded store: durable registration writes, and the lookups on the
//! device path (PSK identity for the DTLS handshake, endpoint for a request).
//!
//! The database lives under the target directory (a real disk, not tmpfs), so every write pays
//! its `fsync`.

use std::hint::black_box;

use cairn_store::{
    EmbeddedStore, MasterKey, MasterKeySource, PeerIdentity, Registration, RegistrationStore,
    SecretBytes, SecurityInfo, SecurityMode, SecurityStore,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const DEVICES: u64 = 10_000;
const STORED_REGISTRATIONS: u64 = 1_000;

fn open() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let key = MasterKey::from_bytes(&[9; 32]);
    let store = EmbeddedStore::open_with(dir.path(), MasterKeySource::Key(key)).unwrap();
    (dir, store)
}

fn registration(i: u64) -> Registration {
    Registration {
        id: format!("reg-{i:08}"),
        endpoint: format!("urn:dev:{i:08}"),
        lifetime_s: 86_400,
        lwm2m_version: "1.1".to_owned(),
        binding: "U".to_owned(),
        queue_mode: false,
        sms_number: None,
        object_links: "</1/0>,</3/0>,</5/0>".to_owned(),
        object_paths: vec!["/1/0".to_owned(), "/3/0".to_owned(), "/5/0".to_owned()],
        peer_address: "192.0.2.10:50000".parse().unwrap(),
        identity: PeerIdentity::Psk(format!("id-{i:08}").into_bytes()),
        registered_at_ms: 1_700_000_000_000 + i,
        last_update_ms: 1_700_000_000_000 + i,
    }
}

fn security_info(i: u64) -> SecurityInfo {
    SecurityInfo {
        endpoint: format!("urn:dev:{i:08}"),
        mode: SecurityMode::Psk {
            identity: format!("id-{i:08}").into_bytes(),
            key: SecretBytes::new(i.to_be_bytes().repeat(2)),
        },
        created_at_ms: 0,
    }
}

fn registration_writes(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_dir, store) = open();
    let mut group = c.benchmark_group("registration");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("add (durable commit)", |b| {
        b.iter(|| {
            i += 1;
            runtime
                .block_on(store.add_registration(registration(i % DEVICES)))
                .unwrap()
        })
    });
    for i in 0..STORED_REGISTRATIONS {
        runtime
            .block_on(store.add_registration(registration(i)))
            .unwrap();
    }
    group.bench_function("get by endpoint (inline)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % STORED_REGISTRATIONS;
            let endpoint = format!("urn:dev:{i:08}");
            let lookup = store.get_registration_by_endpoint(&endpoint);
            black_box(runtime.block_on(lookup).unwrap().unwrap())
        })
    });
    group.finish();
}

fn psk_lookups(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_dir, store) = open();
    let infos: Vec<SecurityInfo> = (0..DEVICES).map(security_info).collect();
    store.import_security_infos_blocking(&infos).unwrap();
    let identities: Vec<Vec<u8>> = (0..DEVICES)
        .map(|i| format!("id-{i:08}").into_bytes())
        .collect();

    let mut group = c.benchmark_group("psk lookup (10k stored)");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("psk_key_blocking", |b| {
        b.iter(|| {
            i = (i + 7919) % identities.len();
            black_box(store.psk_key_blocking(&identities[i]).unwrap().unwrap())
        })
    });
    group.bench_function("get_security_info_by_psk_identity (inline)", |b| {
        b.iter(|| {
            i = (i + 7919) % identities.len();
            let lookup = store.get_security_info_by_psk_identity(&identities[i]);
            black_box(runtime.block_on(lookup).unwrap().unwrap())
        })
    });
    group.bench_function("same lookup moved to spawn_blocking", |b| {
        b.iter(|| {
            i = (i + 7919) % identities.len();
            let store = store.clone();
            let identity = identities[i].clone();
            let lookup = runtime.spawn_blocking(move || store.psk_key_blocking(&identity));
            black_box(runtime.block_on(lookup).unwrap().unwrap().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, registration_writes, psk_lookups);
criterion_main!(benches);
