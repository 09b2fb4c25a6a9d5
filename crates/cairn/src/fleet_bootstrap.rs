//! `cairn fleet --factory DIR`: simulated devices from factory state (the device files of
//! `cairn keys factory`) through bootstrap to registration with the credentials the
//! Bootstrap-Server generated for each of them (the `cairn-client` device flow). Also what
//! `cairn bench bootstrap` measures.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::credentials::{
    CredentialVault, DeviceState, FileVault, MemoryVault, load_state, store_state,
};
use cairn_client::device::{DeviceEvent, DeviceSettings, run_device};
use cairn_coap::Config;
use cairn_lwm2m::ModelRegistry;
use tokio::sync::{mpsc, watch};

/// How to run a bootstrap fleet.
pub struct BootstrapFleet {
    /// Devices to run (default: every device file).
    pub devices: Option<usize>,
    /// Bootstrap-Server URI overriding the device files'.
    pub bootstrap_uri: Option<String>,
    /// The `cairn keys factory` output directory.
    pub factory: PathBuf,
    /// Keep each device's state in DIR/ENDPOINT (encrypted vaults): a restarted fleet carries
    /// on from what the devices persisted. In memory when absent.
    pub state_dir: Option<PathBuf>,
    pub bind: Option<IpAddr>,
    /// Devices started per second.
    pub rate: f64,
    pub ack_timeout: Duration,
    /// Register attempts before a device bootstraps again.
    pub register_attempts: u32,
    /// Give up waiting after this long.
    pub deadline: Duration,
}

/// What a bootstrap fleet did.
pub struct FleetOutcome {
    pub total: usize,
    pub registered: usize,
    pub bootstrap_failures: usize,
    /// Time from a device's start to its registration, sorted.
    pub latencies: Vec<Duration>,
    /// From the first start to the last registration.
    pub elapsed: Duration,
    /// Stops the devices (they de-register).
    pub stop: watch::Sender<bool>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn vault_for(
    fleet: &BootstrapFleet,
    endpoint: &str,
    factory: &DeviceState,
    models: &ModelRegistry,
) -> anyhow::Result<Arc<dyn CredentialVault>> {
    let vault: Arc<dyn CredentialVault> = match &fleet.state_dir {
        Some(dir) => Arc::new(FileVault::open(dir.join(endpoint))?),
        None => Arc::new(MemoryVault::default()),
    };
    if load_state(&*vault, models)?.is_none() {
        store_state(&*vault, factory, models)?;
    }
    Ok(vault)
}

/// Starts the devices and waits until each registered, or the deadline.
pub async fn run(fleet: BootstrapFleet) -> anyhow::Result<FleetOutcome> {
    anyhow::ensure!(fleet.rate > 0.0, "--rate must be positive");
    let mut files = crate::factory_cmd::device_files(&fleet.factory)?;
    if let Some(count) = fleet.devices {
        anyhow::ensure!(
            count <= files.len(),
            "--devices {count} but {} holds {} device files",
            fleet.factory.display(),
            files.len()
        );
        files.truncate(count);
    }
    anyhow::ensure!(!files.is_empty(), "no device files");
    let models = Arc::new(ModelRegistry::with_core_models());
    let total = files.len();
    let (stop, stopped) = watch::channel(false);
    let (registered_tx, mut registered_rx) = mpsc::unbounded_channel::<Duration>();
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(total);
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / fleet.rate));
    let started = Instant::now();
    for path in files {
        pace.tick().await;
        let file = crate::factory_cmd::read_device_file(&path)?;
        let uri = fleet
            .bootstrap_uri
            .clone()
            .unwrap_or_else(|| file.bootstrap_uri.clone());
        let factory = DeviceState::factory(
            file.endpoint.clone(),
            uri,
            file.psk_identity.as_bytes().to_vec(),
            file.psk_key.as_bytes().to_vec(),
        );
        let vault = vault_for(&fleet, &file.endpoint, &factory, &models)
            .with_context(|| format!("vault of {}", file.endpoint))?;
        let settings = DeviceSettings {
            models: models.clone(),
            coap: Config {
                ack_timeout: fleet.ack_timeout,
                ..Config::default()
            },
            local_ip: fleet.bind,
            request_timeout: fleet.ack_timeout.saturating_mul(8),
            register_attempts: fleet.register_attempts.max(1),
            register_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            ..DeviceSettings::default()
        };
        let registered = registered_tx.clone();
        let failures = failures.clone();
        let stopped = stopped.clone();
        let endpoint = file.endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let begin = Instant::now();
            let mut counted = false;
            let result = run_device(vault, settings, stopped, move |event| match event {
                DeviceEvent::Registered { .. } if !counted => {
                    counted = true;
                    let _ = registered.send(begin.elapsed());
                }
                DeviceEvent::BootstrapFailed { reason, .. } => {
                    tracing::debug!(%reason, "bootstrap failed");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            })
            .await;
            if let Err(error) = result {
                tracing::warn!(%endpoint, %error, "device stopped");
            }
        }));
    }
    drop(registered_tx);
    let mut latencies = Vec::with_capacity(total);
    let deadline = tokio::time::Instant::now() + fleet.deadline;
    while latencies.len() < total {
        match tokio::time::timeout_at(deadline, registered_rx.recv()).await {
            Ok(Some(latency)) => latencies.push(latency),
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(FleetOutcome {
        total,
        registered: latencies.len(),
        bootstrap_failures: failures.load(Ordering::Relaxed),
        latencies,
        elapsed,
        stop,
        tasks,
    })
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    sorted
        .get((sorted.len().saturating_sub(1)) * percent / 100)
        .copied()
        .unwrap_or_default()
}

/// The fleet summary line.
pub fn summary(outcome: &FleetOutcome) -> String {
    format!(
        "bootstrapped and registered {}/{} devices in {:.2} s (bootstrap failures {}); time to registration p50 {:?} p95 {:?} max {:?}",
        outcome.registered,
        outcome.total,
        outcome.elapsed.as_secs_f64(),
        outcome.bootstrap_failures,
        percentile(&outcome.latencies, 50),
        percentile(&outcome.latencies, 95),
        outcome.latencies.last().copied().unwrap_or_default(),
    )
}

/// Stops the devices and waits for them.
pub async fn stop(outcome: FleetOutcome) {
    let _ = outcome.stop.send(true);
    for task in outcome.tasks {
        let _ = task.await;
    }
}
