//! The embedded store against a model: random sequences of registration and observation
//! operations keep every index (by id, by endpoint, by expiry, observations by registration)
//! consistent with a plain in-memory model.

mod common;

use std::collections::BTreeMap;

use cairn_store::{
    EmbeddedStore, ObservationStore, Registration, RegistrationStore, RegistrationUpdate,
    StoreError,
};
use common::{observation, open, registration};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Operation {
    Add {
        endpoint: u8,
        id: u8,
        at: u64,
    },
    Update {
        id: u8,
        lifetime_s: Option<u32>,
        at: u64,
    },
    Remove {
        id: u8,
    },
    Observe {
        observation: u8,
        id: u8,
    },
    Cancel {
        observation: u8,
    },
    CancelAll {
        id: u8,
    },
    Sweep {
        now: u64,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (0..4u8, 0..8u8, 0..100_000u64).prop_map(|(endpoint, id, at)| Operation::Add {
            endpoint,
            id,
            at
        }),
        (0..8u8, proptest::option::of(1..200u32), 0..100_000u64)
            .prop_map(|(id, lifetime_s, at)| Operation::Update { id, lifetime_s, at }),
        (0..8u8).prop_map(|id| Operation::Remove { id }),
        (0..6u8, 0..8u8).prop_map(|(observation, id)| Operation::Observe { observation, id }),
        (0..6u8).prop_map(|observation| Operation::Cancel { observation }),
        (0..8u8).prop_map(|id| Operation::CancelAll { id }),
        (0..200_000u64).prop_map(|now| Operation::Sweep { now }),
    ]
}

#[derive(Default)]
struct Model {
    registrations: BTreeMap<String, Registration>,
    /// Observation id → registration id.
    observations: BTreeMap<String, String>,
}

impl Model {
    fn remove(&mut self, id: &str) -> Option<(Registration, usize)> {
        let registration = self.registrations.remove(id)?;
        let before = self.observations.len();
        self.observations.retain(|_, owner| owner != id);
        Some((registration, before - self.observations.len()))
    }
}

async fn apply(store: &EmbeddedStore, model: &mut Model, operation: Operation) {
    match operation {
        Operation::Add { endpoint, id, at } => {
            let new = registration(&format!("ep{endpoint}"), &format!("id{id}"), at);
            let result = store.add_registration(new.clone()).await;
            if let Some(existing) = model.registrations.get(&new.id) {
                if existing.endpoint != new.endpoint {
                    assert!(matches!(result, Err(StoreError::Conflict(_))));
                    return;
                }
            }
            let previous_id = model
                .registrations
                .values()
                .find(|r| r.endpoint == new.endpoint)
                .map(|r| r.id.clone());
            let expected = previous_id.and_then(|id| model.remove(&id));
            let replaced = result.unwrap();
            assert_eq!(
                replaced.map(|d| (d.registration, d.observations.len())),
                expected
            );
            model.registrations.insert(new.id.clone(), new);
        }
        Operation::Update { id, lifetime_s, at } => {
            let id = format!("id{id}");
            let update = RegistrationUpdate {
                registration_id: id.clone(),
                lifetime_s,
                binding: None,
                sms_number: None,
                object_links: None,
                peer_address: "127.0.0.1:1".parse().unwrap(),
                updated_at_ms: at,
            };
            let result = store.update_registration(update).await.unwrap();
            match model.registrations.get_mut(&id) {
                Some(registration) => {
                    if let Some(lifetime_s) = lifetime_s {
                        registration.lifetime_s = lifetime_s;
                    }
                    registration.last_update_ms = at;
                    registration.peer_address = "127.0.0.1:1".parse().unwrap();
                    assert_eq!(result.unwrap().updated, *registration);
                }
                None => assert!(result.is_none()),
            }
        }
        Operation::Remove { id } => {
            let id = format!("id{id}");
            let removed = store.remove_registration(&id).await.unwrap();
            assert_eq!(
                removed.map(|d| (d.registration, d.observations.len())),
                model.remove(&id)
            );
        }
        Operation::Observe {
            observation: number,
            id,
        } => {
            let id = format!("id{id}");
            let observation_id = format!("obs{number}");
            match model.registrations.get(&id) {
                Some(registration) => {
                    let new = observation(&observation_id, registration);
                    store.add_observation(new).await.unwrap();
                    model.observations.insert(observation_id, id);
                }
                None => {
                    let orphan = observation(&observation_id, &registration("x", &id, 0));
                    let result = store.add_observation(orphan).await;
                    assert!(matches!(result, Err(StoreError::NotFound(_))));
                }
            }
        }
        Operation::Cancel {
            observation: number,
        } => {
            let observation_id = format!("obs{number}");
            let removed = store.remove_observation(&observation_id).await.unwrap();
            assert_eq!(
                removed.map(|o| o.registration_id),
                model.observations.remove(&observation_id)
            );
        }
        Operation::CancelAll { id } => {
            let id = format!("id{id}");
            let removed = store.remove_observations_of(&id).await.unwrap();
            let before = model.observations.len();
            model.observations.retain(|_, owner| *owner != id);
            assert_eq!(removed.len(), before - model.observations.len());
        }
        Operation::Sweep { now } => {
            let swept = store.remove_expired_registrations(now, 100).await.unwrap();
            let expired: Vec<String> = model
                .registrations
                .values()
                .filter(|r| r.expires_at_ms() < now)
                .map(|r| r.id.clone())
                .collect();
            let mut expected: Vec<_> = expired.iter().filter_map(|id| model.remove(id)).collect();
            let mut swept: Vec<_> = swept
                .into_iter()
                .map(|d| (d.registration, d.observations.len()))
                .collect();
            swept.sort_by(|a, b| a.0.id.cmp(&b.0.id));
            expected.sort_by(|a, b| a.0.id.cmp(&b.0.id));
            assert_eq!(swept, expected);
        }
    }
}

async fn check(store: &EmbeddedStore, model: &Model) {
    for id in (0..8).map(|i| format!("id{i}")) {
        assert_eq!(
            store.get_registration(&id).await.unwrap().as_ref(),
            model.registrations.get(&id)
        );
        let mut observed: Vec<String> = store
            .list_observations(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        observed.sort();
        let expected: Vec<String> = model
            .observations
            .iter()
            .filter(|(_, owner)| **owner == id)
            .map(|(observation, _)| observation.clone())
            .collect();
        assert_eq!(observed, expected);
    }
    for endpoint in (0..4).map(|i| format!("ep{i}")) {
        let expected = model
            .registrations
            .values()
            .find(|r| r.endpoint == endpoint);
        assert_eq!(
            store
                .get_registration_by_endpoint(&endpoint)
                .await
                .unwrap()
                .as_ref(),
            expected
        );
    }
    let listed = store.list_registrations(None, 100).await.unwrap().items;
    assert_eq!(listed.len(), model.registrations.len());
    for now in [0, 30_000, 60_000, 100_000, 400_000] {
        let mut expired: Vec<String> = store
            .registrations_expired_before(now, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        expired.sort();
        let expected: Vec<String> = model
            .registrations
            .values()
            .filter(|r| r.expires_at_ms() < now)
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(expired, expected, "expired before {now}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn indexes_follow_the_model(operations in proptest::collection::vec(operation(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut model = Model::default();
        runtime.block_on(async {
            for operation in operations {
                apply(&store, &mut model, operation).await;
            }
            check(&store, &model).await;
        });
    }
}
