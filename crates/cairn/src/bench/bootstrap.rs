//! `cairn bench bootstrap`: N simulated devices from factory state to registered. A
//! device-management server and a Bootstrap-Server run in this process on one embedded store
//! (every credential change is durable before the device hears of it); factory credentials
//! come from `cairn keys factory` and are imported from its sealed manifest; the devices run
//! in `cairn fleet --factory` processes (the `cairn-client` device flow, each device with its
//! own sockets and in-memory vault), up to `--per-process` devices each, each process sending
//! from its own loopback address (one address has only the kernel's ~28,000 ephemeral ports,
//! one process 20,000 file descriptors). The devices bootstrap over DTLS-PSK, get generated
//! credentials, and register over a second DTLS session with them.
//! Prints `RESULT bootstrap devices=N seconds=S per_s=N`: S from the start of the fleet
//! processes to the DM server's last registration. The line before it gives the CPU time
//! (user + system, from the kernel's accounting) the bench process (both servers) and the
//! fleet processes used over that span, in all and per device: on a shared machine the
//! figure to compare versions by, where the wall-clock time depends on the other load.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_server::bootstrap::security::device_management_stores;
use cairn_server::bootstrap::{BootstrapServer, BootstrapServerConfig, BootstrapStores};
use cairn_server::{EmbeddedStore, LwM2mServer, ServerConfig, ServerEvent};
use cairn_store::{
    BootstrapSettings, BootstrapStore, BootstrapTemplate, CredentialKind, DmCredentialSource,
    DmServerConfig, MasterKey, MasterKeySource,
};
use clap::Args;

use super::cpu::CpuSample;

#[derive(Debug, Args)]
pub struct BootstrapBenchArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Devices started per second, across every fleet process (2,000: 100,000 devices
    /// start in 50 s, about 1.7 of 2 cores at the measured CPU per device).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Worker threads of the servers' runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Devices per `cairn fleet` process.
    #[arg(long, default_value_t = 15_000)]
    per_process: usize,
    /// Worker threads of each fleet process.
    #[arg(long, default_value_t = 1)]
    fleet_threads: usize,
    /// Seconds to wait for every device before giving up (default: the start time at
    /// --rate plus 300 s); the devices still missing are then listed with their bootstrap
    /// records.
    #[arg(long)]
    give_up_s: Option<u64>,
}

/// Kills the fleet processes when dropped.
struct Fleets(Vec<Child>);

impl Drop for Fleets {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: BootstrapBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be positive");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let work = tempfile_dir()?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(bench(&args, &work));
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn bench(args: &BootstrapBenchArgs, work: &Path) -> anyhow::Result<()> {
    let data = work.join("data");
    let store = EmbeddedStore::open_with(&data, MasterKeySource::Key(MasterKey::generate()?.0))?;
    let dm = LwM2mServer::start(
        ServerConfig {
            coap_listen: None,
            dtls_listen: Some("127.0.0.1:0".parse()?),
            ..ServerConfig::default()
        },
        device_management_stores(store.clone()),
    )
    .await?;
    let bootstrap = BootstrapServer::start(
        BootstrapServerConfig {
            coap_listen: None,
            dtls_listen: Some("127.0.0.1:0".parse()?),
            ..BootstrapServerConfig::default()
        },
        BootstrapStores::embedded(store.clone()),
    )
    .await?;
    bootstrap.follow(&dm);
    let dm_uri = format!("coaps://{}", dm.local_addrs().1.context("DM address")?);
    let bs_uri = format!(
        "coaps://{}",
        bootstrap.local_addrs().1.context("BS address")?
    );
    store
        .put_bootstrap_template(BootstrapTemplate {
            name: "bench".into(),
            endpoint_prefix: "bench-".into(),
            settings: BootstrapSettings {
                servers: vec![DmServerConfig {
                    short_server_id: 1,
                    uri: dm_uri,
                    lifetime_s: 3600,
                    binding: "U".into(),
                    credential: DmCredentialSource::Generate(CredentialKind::Psk),
                    oscore: false,
                }],
                acl: Vec::new(),
                replace_bootstrap_credential: true,
                bootstrap_uri: bs_uri.clone(),
                allow_unsecured: false,
            },
        })
        .await?;
    let public = crate::factory_cmd::create_server_key(&data)?;
    // The devices split evenly over the fewest processes of at most --per-process each, each
    // process starting its share at its share of --rate: all of them finish starting at
    // the same moment (devices / rate).
    let processes = args.devices.div_ceil(args.per_process.max(1));
    let mut factories = Vec::new();
    let mut first = 1u64;
    for n in 0..processes {
        let count = args.devices / processes + usize::from(n < args.devices % processes);
        let dir = work.join(format!("factory-{}", factories.len()));
        crate::factory_cmd::generate_with(count, &dir, &public, &bs_uri, "bench-", first, false)?;
        let devices = crate::factory_cmd::read_manifest(&dir.join("manifest.toml"), &data)?;
        store.import_device_credentials(devices).await?;
        factories.push((dir, count));
        first += count as u64;
    }
    // Registrations counted from the DM server's events (every endpoint once).
    let mut events = dm.events();
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let counter_dm = dm.clone();
    let counter = tokio::spawn(async move {
        let mut seen = HashSet::new();
        loop {
            match events.recv().await {
                Ok(ServerEvent::Registered(registration)) => {
                    seen.insert(registration.endpoint);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    seen.extend(counter_dm.registrations().into_iter().map(|r| r.endpoint));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            let _ = count_tx.send(seen.len());
        }
    });
    eprintln!(
        "{} devices from factory state to registered, {} fleet process(es)…",
        args.devices,
        factories.len()
    );
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let server_cpu = CpuSample::read(std::process::id())?;
    let mut fleet_cpu = Vec::new();
    let mut fleets = Fleets(Vec::new());
    let mut logs = Vec::new();
    for (n, (dir, count)) in factories.iter().enumerate() {
        let bind = format!("127.0.{}.{}", 1 + n / 250, 2 + n % 250);
        let log = work.join(format!("fleet-{n}.log"));
        let child = Command::new(&exe)
            .arg("fleet")
            .arg("--factory")
            .arg(dir)
            .args(["--devices", &count.to_string(), "--bind", &bind])
            .args([
                "--rate",
                &(args.rate * *count as f64 / args.devices as f64).to_string(),
                "--hold",
                "100000",
            ])
            .args(["--threads", &args.fleet_threads.max(1).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start cairn fleet")?;
        fleet_cpu.push(CpuSample::read(child.id())?);
        fleets.0.push(child);
        logs.push(log);
    }
    let limit = match args.give_up_s {
        Some(seconds) => Duration::from_secs(seconds),
        None => Duration::from_secs_f64(args.devices as f64 / args.rate + 300.0),
    };
    let mut last_report = Instant::now();
    let registered = loop {
        let registered = *count_rx.borrow_and_update();
        if registered >= args.devices {
            break registered;
        }
        if started.elapsed() > limit {
            explain_missing(&store, &dm, &logs).await;
            bail!(
                "only {registered} of {} devices registered within {limit:?}",
                args.devices
            );
        }
        for child in &mut fleets.0 {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "a fleet process exited early ({status}) with {registered} devices registered"
                );
            }
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {registered} registered after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), count_rx.changed()).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu = server_cpu.until(&CpuSample::read(std::process::id())?);
    let mut fleets_cpu = Duration::ZERO;
    for (child, start) in fleets.0.iter().zip(&fleet_cpu) {
        fleets_cpu += start.until(&CpuSample::read(child.id())?);
    }
    // Each fleet prints its summary (latencies) once all its devices registered.
    let summaries = fleet_summaries(&logs, Duration::from_secs(5)).await;
    for line in &summaries {
        eprintln!("  fleet: {line}");
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        eprintln!("  load average: {}", load.trim());
    }
    drop(fleets);
    counter.abort();
    bootstrap.shutdown().await;
    dm.shutdown().await;
    drop(store);
    let per_device_ms = |cpu: Duration| cpu.as_secs_f64() * 1e3 / registered as f64;
    println!(
        "CPU bootstrap server_s={:.2} fleet_s={:.2} server_ms_per_device={:.3} fleet_ms_per_device={:.3} total_ms_per_device={:.3}",
        server_cpu.as_secs_f64(),
        fleets_cpu.as_secs_f64(),
        per_device_ms(server_cpu),
        per_device_ms(fleets_cpu),
        per_device_ms(server_cpu + fleets_cpu),
    );
    println!(
        "RESULT bootstrap devices={registered} seconds={seconds:.2} per_s={:.0}",
        registered as f64 / seconds
    );
    Ok(())
}

/// Lists (up to 40 of) the devices that did not register, with their bootstrap records, and
/// the fleets' warnings.
async fn explain_missing(store: &EmbeddedStore, dm: &LwM2mServer, logs: &[PathBuf]) {
    let registered: HashSet<String> = dm.registrations().into_iter().map(|r| r.endpoint).collect();
    let mut missing = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let Ok(page) = store.list_device_endpoints(after.as_deref(), 1000).await else {
            break;
        };
        missing.extend(page.items.into_iter().filter(|e| !registered.contains(e)));
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    eprintln!("{} devices did not register:", missing.len());
    for endpoint in missing.iter().take(40) {
        let Ok(Some(device)) = store.get_device_credentials(endpoint).await else {
            continue;
        };
        let dm_state = match &device.dm {
            Some(dm) if dm.proven => "proven",
            Some(_) => "written",
            None => "none",
        };
        eprintln!(
            "  {endpoint}: attempts={} finished={} last={:?} bootstrap_proven={} dm={dm_state}",
            device.status.attempts,
            device.status.finished,
            device.status.last_result,
            device.bootstrap_proven,
        );
    }
    for log in logs {
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        for line in text.lines().filter(|l| l.contains("WARN")).take(20) {
            eprintln!("  fleet: {line}");
        }
    }
}

/// The summary line of each fleet log, waiting up to `wait` for them.
async fn fleet_summaries(logs: &[PathBuf], wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    loop {
        let lines: Vec<String> = logs
            .iter()
            .filter_map(|log| {
                std::fs::read_to_string(log)
                    .ok()?
                    .lines()
                    .find(|l| l.contains("bootstrapped and registered"))
                    .map(str::to_owned)
            })
            .collect();
        if lines.len() == logs.len() || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("random"))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("cairn-bench-bootstrap-{name}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
