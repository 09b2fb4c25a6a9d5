//! `cairn fleet --factory DIR`: simulated devices from factory state (the device files of
//! `cairn keys factory`) through bootstrap to registration with the credentials the
//! Bootstrap-Server generated for each of them (the `cairn-client` device flow). Also what
//! `cairn bench bootstrap` measures.
//!
//! With [`FleetFirmware`] (`cairn demo`), every device also carries a Firmware Update object
//! (/5) over its own simulated flash (the devices of [`crate::ota_sim`]), pulls packages by
//! their Package URI over its DTLS session with the server, and reports a battery level
//! (/3/0/9) that drains and recharges, so there is telemetry to observe.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::credentials::{
    CredentialVault, DeviceState, FileVault, MemoryVault, load_state, store_state,
};
use cairn_client::device::{ClientExtension, DeviceEvent, DeviceSettings, run_device};
use cairn_client::objects::{DeviceInfo, DeviceObject, ids};
use cairn_client::{ClientHandle, ObjectTree};
use cairn_coap::Config;
use cairn_firmware::Manifest;
use cairn_lwm2m::{LwM2mPath, ModelRegistry};
use tokio::sync::{mpsc, watch};

use crate::ota_sim::{Faults, FirmwareSetup, SimDevice, SimFirmware};

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

/// The Firmware Update object every device of a bootstrap fleet carries.
#[derive(Clone)]
pub struct FleetFirmware {
    /// Keys, factory package and flash layout of the devices.
    pub setup: FirmwareSetup,
    /// How a manifest's firmware version is reported (/3/0/3).
    pub version_of: fn(&Manifest) -> String,
    /// How often the battery level (/3/0/9) changes.
    pub telemetry_interval: Duration,
}

/// One device's simulated firmware and telemetry, kept across the clients the device builds
/// (a new one at each registration after a bootstrap): the flash stays, the /5 object is
/// opened again over it.
struct SimExtension {
    device: SimDevice,
    version_of: fn(&Manifest) -> String,
    /// The /5 object made with the device, for its first client.
    first: Mutex<Option<SimFirmware>>,
    /// The client running now.
    current: Mutex<Option<ClientHandle>>,
    /// Bumped for each new client: the telemetry task of an older one stops.
    generation: Arc<AtomicU64>,
    interval: Duration,
    /// The battery level (percent), kept across clients.
    battery: Arc<AtomicU8>,
    stopped: watch::Receiver<bool>,
}

impl std::fmt::Debug for SimExtension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimExtension").finish_non_exhaustive()
    }
}

impl ClientExtension for SimExtension {
    fn extend(&self, tree: &mut ObjectTree) {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        let firmware = match first {
            Some(firmware) => Ok(firmware),
            None => self.device.reopen_firmware(),
        };
        let mut firmware = match firmware {
            Ok(firmware) => firmware,
            Err(error) => {
                tracing::warn!(%error, "the simulated firmware does not open");
                return;
            }
        };
        firmware.set_version_of(self.version_of);
        if let Some(version) = firmware.firmware_version()
            && let Some(device) = tree.object_mut::<DeviceObject>(ids::DEVICE)
        {
            device.set_firmware_version(version);
        }
        tree.add(firmware);
    }

    fn bound(&self, handle: ClientHandle) {
        let previous = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(handle.clone());
        if let Some(previous) = previous {
            // The old client's firmware agent waits for its object's waker: dropping the
            // waker ends the agent (and frees the old client).
            previous.with_core(|core| {
                if let Some(firmware) = core.objects_mut().object_mut::<SimFirmware>(5) {
                    firmware.set_waker(|| {});
                }
            });
        }
        if let Err(error) = self.device.start_agent(handle.clone(), Faults::default()) {
            tracing::warn!(%error, "no firmware agent");
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::spawn(battery(
            handle,
            self.battery.clone(),
            self.interval,
            self.generation.clone(),
            generation,
            self.stopped.clone(),
        ));
    }
}

/// Drains the battery by 1 % every `interval` and recharges it at 20 %, telling observers of
/// /3/0/9; ends with the fleet or when a newer client of the device took over.
async fn battery(
    handle: ClientHandle,
    level: Arc<AtomicU8>,
    interval: Duration,
    current: Arc<AtomicU64>,
    generation: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let path = LwM2mPath::Resource(3, 0, 9);
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        if current.load(Ordering::SeqCst) != generation {
            return;
        }
        let now = level.load(Ordering::Relaxed);
        handle.with_core(|core| {
            if let Some(device) = core.objects_mut().object_mut::<DeviceObject>(ids::DEVICE) {
                device.set_battery_level(now);
            }
        });
        handle.changed(&path);
        level.store(if now <= 20 { 100 } else { now - 1 }, Ordering::Relaxed);
    }
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
    run_with_firmware(fleet, None).await
}

/// [`run`], the devices carrying a Firmware Update object when `firmware` is given.
pub async fn run_with_firmware(
    fleet: BootstrapFleet,
    firmware: Option<FleetFirmware>,
) -> anyhow::Result<FleetOutcome> {
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
    // What every device shares, made once: `DeviceSettings::default()` builds a model
    // registry of its own each time.
    let base = DeviceSettings {
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
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / fleet.rate));
    let started = Instant::now();
    for (n, path) in files.into_iter().enumerate() {
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
        let extension = match &firmware {
            Some(firmware) => {
                let (device, object) =
                    SimDevice::new(&firmware.setup, false, n as u64, Faults::default())?;
                let extension = Arc::new(SimExtension {
                    device,
                    version_of: firmware.version_of,
                    first: Mutex::new(Some(object)),
                    current: Mutex::new(None),
                    generation: Arc::default(),
                    interval: firmware.telemetry_interval,
                    battery: Arc::new(AtomicU8::new(100 - (n % 30) as u8)),
                    stopped: stopped.clone(),
                });
                Some(extension as Arc<dyn ClientExtension>)
            }
            None => None,
        };
        let settings = DeviceSettings {
            extension,
            info: DeviceInfo {
                serial_number: file.endpoint.clone(),
                ..DeviceInfo::default()
            },
            ..base.clone()
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
