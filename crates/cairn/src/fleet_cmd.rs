//! `cairn fleet`: many simulated LwM2M devices in one process, each a full client
//! (`cairn-client`) with its own socket and DTLS session, started at a given rate; a
//! progress bar while they register, then a summary (registered, failed, registration
//! latency percentiles). They stay registered until Ctrl-C (or `--hold` seconds), then
//! de-register.
//!
//! Keys: `--psk-file` lists `endpoint,identity,hexkey` per device; `--psk-key-hex` gives
//! one key shared by every device, whose PSK identity is then its endpoint name (a demo
//! set-up: the server must know that key for each identity). Without either, only
//! `coap://` works. Keys are never derived from names.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_client::{ClientHandle, Event, RegistrationEvent, RetryPolicy, ServerId};
use cairn_coap::Config;
use cairn_lwm2m::{LwM2mPath, ModelRegistry, Version};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::client_cmd::{DeviceSetup, PskKey, build_client_with, resolve_server};

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Number of devices (defaults to the number of lines of --psk-file).
    #[arg(long)]
    devices: Option<usize>,
    /// LwM2M Server URI: `coap://host:5683` or `coaps://host:5684`.
    #[arg(long, required_unless_present = "factory")]
    server: Option<String>,
    /// Devices start from factory state: the device files of `cairn keys factory` in DIR.
    /// Each bootstraps, then registers with the credentials it was given.
    #[arg(long, conflicts_with_all = ["server", "psk_file", "psk_key_hex"])]
    factory: Option<PathBuf>,
    /// Bootstrap-Server URI (with --factory), instead of the one in the device files.
    #[arg(long, requires = "factory")]
    bootstrap: Option<String>,
    /// Keep each device's encrypted state in DIR/ENDPOINT (with --factory), so a restarted
    /// fleet carries on from what its devices persisted.
    #[arg(long, requires = "factory")]
    state_dir: Option<PathBuf>,
    /// Device credentials, one `endpoint,identity,hexkey` line per device (`#` comments).
    #[arg(long)]
    psk_file: Option<PathBuf>,
    /// One PSK (hex) shared by every device; each device's identity is its endpoint name.
    #[arg(long, conflicts_with = "psk_file")]
    psk_key_hex: Option<PskKey>,
    /// Local address the devices send from (one source address holds at most about
    /// 28,000 sockets: the kernel's ephemeral port range).
    #[arg(long)]
    bind: Option<std::net::IpAddr>,
    /// Devices started per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Endpoint names are this prefix and a number (without --psk-file).
    #[arg(long, default_value = "cairn-sim-")]
    endpoint_prefix: String,
    /// Registration lifetime, seconds.
    #[arg(long, default_value_t = 300)]
    lifetime: u32,
    /// Register attempts per device before it counts as failed.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// CoAP ACK_TIMEOUT in milliseconds (RFC 7252 §4.8: 2000). A lower value finds
    /// unreachable servers and refused DTLS handshakes sooner: a request fails after about
    /// 47 × ACK_TIMEOUT.
    #[arg(long, default_value_t = 2000)]
    ack_timeout_ms: u64,
    /// Every device reports its battery level and clock with Send (`/dp`, SenML CBOR)
    /// this often, in seconds, once registered.
    #[arg(long)]
    send_interval: Option<u64>,
    /// Seconds to stay registered after the summary (default: until Ctrl-C).
    #[arg(long)]
    hold: Option<u64>,
    /// Worker threads of the runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Every device gets a Firmware Update object (/5) over a simulated flash of its own,
    /// provisioned with this package (its manifest signed by a --firmware-trust key).
    #[arg(long, requires = "firmware_trust")]
    firmware_factory: Option<PathBuf>,
    /// Public key file (`firmware.pub`) the devices trust; repeat for several.
    #[arg(long)]
    firmware_trust: Vec<PathBuf>,
    /// Room in each flash slot, KiB (default: twice the factory image).
    #[arg(long)]
    firmware_slot_kib: Option<usize>,
    /// Probability of a power cut per flash operation (with --firmware-factory).
    #[arg(long, default_value_t = 0.0)]
    power_cut_rate: f64,
    /// Probability that a firmware download block is lost with its connection.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
}

/// The simulated firmware of the fleet's devices.
fn firmware_setup(args: &FleetArgs) -> anyhow::Result<Option<crate::ota_sim::FirmwareSetup>> {
    let Some(factory) = &args.firmware_factory else {
        return Ok(None);
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.power_cut_rate) && (0.0..=1.0).contains(&args.drop_rate),
        "--power-cut-rate and --drop-rate are probabilities (0 to 1)"
    );
    let mut keys = cairn_firmware::TrustedKeys::new();
    for path in &args.firmware_trust {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.add(
            cairn_firmware::PublicKey::from_text(text.trim())
                .with_context(|| format!("reading the public key {}", path.display()))?,
        );
    }
    let bytes = std::fs::read(factory).with_context(|| format!("reading {}", factory.display()))?;
    let room = match args.firmware_slot_kib {
        Some(kib) => kib * 1024,
        None => bytes.len() * 2,
    };
    Ok(Some(crate::ota_sim::FirmwareSetup::new(keys, bytes, room)?))
}

/// One device of the fleet.
struct Device {
    endpoint: String,
    psk: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

/// The devices of a credential file.
fn read_psk_file(path: &Path) -> anyhow::Result<Vec<Device>> {
    Ok(crate::psk_file::read(path)?
        .into_iter()
        .map(|entry| Device {
            endpoint: entry.endpoint,
            psk: Some((entry.identity, entry.key.0)),
        })
        .collect())
}

fn devices(args: &FleetArgs, secure: bool) -> anyhow::Result<Vec<Device>> {
    let mut devices = match (&args.psk_file, &args.psk_key_hex) {
        (Some(path), _) => read_psk_file(path)?,
        (None, shared) => {
            let count = args
                .devices
                .context("--devices is needed without --psk-file")?;
            (0..count)
                .map(|i| {
                    let endpoint = format!("{}{i}", args.endpoint_prefix);
                    let psk = shared
                        .as_ref()
                        .map(|key| (endpoint.clone().into_bytes(), key.0.clone()));
                    Device { endpoint, psk }
                })
                .collect()
        }
    };
    if let Some(count) = args.devices {
        anyhow::ensure!(
            count <= devices.len(),
            "--devices {count} but the PSK file lists {}",
            devices.len()
        );
        devices.truncate(count);
    }
    let keyed = devices.iter().all(|d| d.psk.is_some());
    match (secure, keyed) {
        (true, false) => bail!("coaps:// needs --psk-file or --psk-key-hex"),
        (false, true) if !devices.is_empty() => {
            bail!("PSKs are given but the server URI is coap://; use coaps://")
        }
        _ => Ok(devices),
    }
}

/// Counters shared by the devices' event handlers.
#[derive(Default)]
struct Tally {
    registered: AtomicUsize,
    failed: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
}

impl Tally {
    fn done(&self) -> usize {
        self.registered.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.lifetime > 0, "--lifetime must be positive");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(fleet(args))
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * percent / 100]
}

async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    if let Some(factory) = args.factory.clone() {
        return bootstrap_fleet(args, factory).await;
    }
    let (address, secure) = resolve_server(args.server.as_deref().unwrap_or_default()).await?;
    let devices = devices(&args, secure)?;
    let total = devices.len();
    anyhow::ensure!(total > 0, "no devices");
    let models = Arc::new(ModelRegistry::with_core_models());
    let firmware = firmware_setup(&args)?;
    let faults = crate::ota_sim::Faults {
        power_cut_rate: args.power_cut_rate,
        drop_rate: args.drop_rate,
    };
    let mut simulated = Vec::new();
    let tally = Arc::new(Tally::default());
    let progress = ProgressBar::new(u64::try_from(total)?);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} registered or failed {msg}",
        )?
        .progress_chars("=> "),
    );
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::with_capacity(total);
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    for (n, device) in devices.into_iter().enumerate() {
        tokio::select! {
            _ = pace.tick() => {}
            _ = &mut ctrl_c => { interrupted = true; break; }
        }
        let setup = DeviceSetup {
            serial: device.endpoint.clone(),
            endpoint: device.endpoint,
            server_uri: args.server.clone().unwrap_or_default(),
            address,
            local_ip: args.bind,
            psk: device.psk,
            certificate: None,
            lifetime: args.lifetime,
            lwm2m_version: Version::V1_1,
            queue_mode: false,
            retry: RetryPolicy {
                max_attempts: Some(args.max_attempts.max(1)),
                ..RetryPolicy::default()
            },
            coap: Config {
                ack_timeout: Duration::from_millis(args.ack_timeout_ms.max(10)),
                ..Config::default()
            },
        };
        let with_firmware = match &firmware {
            Some(setup) => Some(crate::ota_sim::SimDevice::new(
                setup, false, n as u64, faults,
            )?),
            None => None,
        };
        let (sim, object) = match with_firmware {
            Some((sim, object)) => (Some(sim), Some(object)),
            None => (None, None),
        };
        let built = build_client_with(setup, Arc::clone(&models), |tree| {
            if let Some(object) = object {
                tree.add(object);
            }
        })
        .await;
        let client = match built {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!("{error:#}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
                progress.inc(1);
                continue;
            }
        };
        if let Some(sim) = sim {
            sim.start_agent(client.handle(), faults)?;
            simulated.push((sim, client.handle()));
        }
        if let Some(seconds) = args.send_interval {
            tokio::spawn(report_periodically(
                client.handle(),
                Duration::from_secs(seconds.max(1)),
                stopped.clone(),
            ));
        }
        let tally = Arc::clone(&tally);
        let progress = progress.clone();
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let mut counted = false;
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let on_event = move |event: &Event| {
                let Event::Registration { event, .. } = event else {
                    return;
                };
                match event {
                    RegistrationEvent::Registered { latency, .. } if !counted => {
                        counted = true;
                        tally.registered.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut latencies) = tally.latencies.lock() {
                            latencies.push(*latency);
                        }
                        progress.inc(1);
                    }
                    RegistrationEvent::StateChanged("failed") if !counted => {
                        counted = true;
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        progress.inc(1);
                    }
                    _ => {}
                }
            };
            client.run(shutdown, on_event).await
        }));
    }
    while !interrupted && tally.done() < total {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut ctrl_c => interrupted = true,
        }
    }
    progress.finish_and_clear();
    summary(&tally, total);
    if !interrupted {
        match args.hold {
            Some(seconds) => {
                eprintln!("holding the registrations for {seconds} s (Ctrl-C to stop now)");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                    _ = &mut ctrl_c => {}
                }
            }
            None => {
                eprintln!("registered; Ctrl-C de-registers every device");
                let _ = ctrl_c.await;
            }
        }
    }
    if !simulated.is_empty() {
        firmware_summary(&simulated);
    }
    eprintln!("de-registering…");
    let _ = stop.send(true);
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("{error}"),
            Err(error) => tracing::warn!("device task: {error}"),
        }
    }
    eprintln!("done");
    Ok(())
}

/// `--factory`: devices from factory state through bootstrap to registration.
async fn bootstrap_fleet(args: FleetArgs, factory: PathBuf) -> anyhow::Result<()> {
    let outcome = crate::fleet_bootstrap::run(crate::fleet_bootstrap::BootstrapFleet {
        devices: args.devices,
        bootstrap_uri: args.bootstrap.clone(),
        factory,
        state_dir: args.state_dir.clone(),
        bind: args.bind,
        rate: args.rate,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms.max(10)),
        register_attempts: args.max_attempts,
        deadline: Duration::from_secs(600),
    })
    .await?;
    eprintln!("{}", crate::fleet_bootstrap::summary(&outcome));
    let complete = outcome.registered == outcome.total;
    match args.hold {
        Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
        None => {
            eprintln!("registered; Ctrl-C de-registers every device");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    crate::fleet_bootstrap::stop(outcome).await;
    anyhow::ensure!(complete, "some devices did not register");
    Ok(())
}

/// Sends the battery level and the clock every `interval` until the fleet stops.
async fn report_periodically(
    client: ClientHandle,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let paths = [LwM2mPath::Resource(3, 0, 9), LwM2mPath::Resource(3, 0, 13)];
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                // Not registered (yet, or any more): skip this report.
                let _ = client.send(ServerId(0), &paths);
            }
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// What the devices' firmware came to: the image each boots, and the bricked ones.
fn firmware_summary(devices: &[(crate::ota_sim::SimDevice, ClientHandle)]) {
    let results: Vec<u8> = devices
        .iter()
        .map(|(_, handle)| {
            handle.with_core(|core| {
                core.objects_mut()
                    .object_mut::<crate::ota_sim::SimFirmware>(5)
                    .map_or(0, |fw| fw.result().code())
            })
        })
        .collect();
    let sims: Vec<&crate::ota_sim::SimDevice> = devices.iter().map(|(sim, _)| sim).collect();
    let target = sims
        .iter()
        .filter_map(|s| s.boot_check())
        .max()
        .unwrap_or(0);
    let report = crate::ota_sim::OtaReport::collect_refs(&sims, &results, target);
    println!("firmware (newest image: sequence {target}):");
    println!("{report}");
}

fn summary(tally: &Tally, total: usize) {
    let mut latencies = tally
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort();
    println!("devices:    {total}");
    println!("registered: {}", tally.registered.load(Ordering::Relaxed));
    println!("failed:     {}", tally.failed.load(Ordering::Relaxed));
    println!(
        "registration latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50).as_secs_f64() * 1e3,
        percentile(&latencies, 99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_name_bad_lines_without_the_key() {
        let dir = std::env::temp_dir().join(format!("cairn-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.csv");
        std::fs::write(&path, "# devices\nd1,id1,00ff\n\nd2,id2,zz\n").unwrap();
        let error = read_psk_file(&path).err().unwrap();
        let text = format!("{error:#}");
        assert!(text.contains(":4: invalid key"), "{text}");
        std::fs::write(&path, "d1,id1,00ff\nd2, id2 ,0102\n").unwrap();
        let devices = read_psk_file(&path).unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].endpoint, "d2");
        let (identity, key) = devices[1].psk.as_ref().unwrap();
        assert_eq!(
            (identity.as_slice(), key.as_slice()),
            (&b"id2"[..], &[1u8, 2][..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn percentiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
