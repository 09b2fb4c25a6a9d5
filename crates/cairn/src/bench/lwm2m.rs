//! `cairn bench lwm2m`: many simulated devices (`cairn fleet` processes) register over new
//! DTLS-PSK sessions with an LwM2M server running in this process on its embedded store;
//! then one observation per device, memory per registered device from this process's RSS,
//! and Read round trips per second across all devices.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cairn_lwm2m::LwM2mPath;
use cairn_server::{EmbeddedStore, LwM2mServer, SecurityInfo, SecurityMode, ServerConfig, Stores};
use cairn_store::{MasterKey, MasterKeySource, SecretBytes};
use clap::Args;
use rand::RngCore;

#[derive(Debug, Args)]
pub struct Lwm2mBenchArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    /// Devices per `cairn fleet` process (each device has its own socket).
    #[arg(long, default_value_t = 15_000)]
    per_process: usize,
    /// Devices each fleet process starts per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Seconds of Read round trips across all devices.
    #[arg(long, default_value_t = 5)]
    read_seconds: u64,
    /// Reads in flight.
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
    /// Skip the observation per device.
    #[arg(long)]
    no_observe: bool,
    /// Seconds the fleet stays idle before the memory per device is read again. The default
    /// outlasts CoAP's EXCHANGE_LIFETIME (247 s) and the sweep that follows it, so the
    /// duplicate-detection state of the registrations and observations has expired, as it
    /// has for a device that has not talked for a few minutes. 0 reads it only right after
    /// the observations.
    #[arg(long, default_value_t = 290)]
    idle_seconds: u64,
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

fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

fn write_credentials(devices: usize) -> anyhow::Result<Vec<SecurityInfo>> {
    let mut rng = rand::rng();
    let created_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut infos = Vec::with_capacity(devices);
    for i in 0..devices {
        let mut key = vec![0u8; 16];
        rng.fill_bytes(&mut key);
        infos.push(SecurityInfo {
            endpoint: format!("bench-{i}"),
            mode: SecurityMode::Psk {
                identity: format!("bench-{i}-id").into_bytes(),
                key: SecretBytes::new(key),
            },
            created_at_ms,
        });
    }
    Ok(infos)
}

fn write_psk_files(
    dir: &Path,
    infos: &[SecurityInfo],
    per_process: usize,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for (n, chunk) in infos.chunks(per_process.max(1)).enumerate() {
        let mut text = String::new();
        for info in chunk {
            if let SecurityMode::Psk { identity, key } = &info.mode {
                let hex: String = key.expose().iter().map(|b| format!("{b:02x}")).collect();
                text.push_str(&format!(
                    "{},{},{hex}\n",
                    info.endpoint,
                    String::from_utf8_lossy(identity)
                ));
            }
        }
        let path = dir.join(format!("fleet-{n}.psk"));
        write_private(&path, &text)?;
        files.push(path);
    }
    Ok(files)
}

/// Writes a file only its owner can read (it holds keys).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

pub fn run(args: Lwm2mBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be positive");
    let dir = std::env::temp_dir().join(format!("cairn-bench-lwm2m-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, &args);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, args: &Lwm2mBenchArgs) -> anyhow::Result<()> {
    let infos = write_credentials(args.devices)?;
    let psk_files = write_psk_files(dir, &infos, args.per_process)?;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let store = EmbeddedStore::open_with(
        dir.join("data"),
        MasterKeySource::Key(MasterKey::from_bytes(&key)),
    )?;
    store.import_security_infos_blocking(&infos)?;
    drop(infos);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = ServerConfig {
            coap_listen: None,
            dtls_listen: Some("127.0.0.1:0".parse()?),
            ..ServerConfig::default()
        };
        let server = LwM2mServer::start(config, Stores::embedded(store)).await?;
        let address = server.local_addrs().1.context("no DTLS address")?;
        let rss_before = rss_bytes()?;
        eprintln!("server on coaps://{address}; {} fleet processes of up to {} devices", psk_files.len(), args.per_process);

        let exe = std::env::current_exe()?;
        let started = Instant::now();
        let mut fleets = Fleets(Vec::new());
        for (n, file) in psk_files.iter().enumerate() {
            // Each fleet process sends from its own loopback address: one address has
            // only the kernel's ~28,000 ephemeral ports. The second octet comes from the
            // process id, so that two benches on one machine do not share addresses.
            let octet = 100 + std::process::id() % 100;
            let bind = format!("127.{octet}.{}.{}", 1 + n / 250, 2 + n % 250);
            let child = Command::new(&exe)
                .args(["fleet", "--server", &format!("coaps://{address}"), "--bind", &bind, "--psk-file"])
                .arg(file)
                .args(["--rate", &args.rate.to_string(), "--hold", "100000", "--lifetime", "3600"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start cairn fleet")?;
            fleets.0.push(child);
        }
        let limit = Duration::from_secs_f64(args.devices as f64 / args.rate.max(1.0) + 120.0);
        let mut last_report = Instant::now();
        loop {
            let registered = server.registration_count();
            if registered >= args.devices {
                break;
            }
            if started.elapsed() > limit {
                bail!("only {registered} of {} devices registered within {limit:?}", args.devices);
            }
            for child in &mut fleets.0 {
                if let Some(status) = child.try_wait()? {
                    bail!("a fleet process exited early ({status}) with {registered} devices registered");
                }
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("  {registered} registered after {:.1} s", started.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let registration_time = started.elapsed();
        let reg_per_s = args.devices as f64 / registration_time.as_secs_f64();
        eprintln!("{} devices registered in {:.2} s ({reg_per_s:.0}/s)", args.devices, registration_time.as_secs_f64());

        // Collected into a new vector: `into_iter().map().collect()` would reuse the
        // registrations' allocation (far larger than the names) and count it as the server's.
        let mut names = Vec::with_capacity(args.devices);
        names.extend(server.registrations().into_iter().map(|r| r.endpoint));
        let mut endpoints: Arc<Vec<String>> = Arc::new(names);
        let mut observations = Vec::new();
        if !args.no_observe {
            let started = Instant::now();
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..args.in_flight {
                let (server, endpoints, next) = (server.clone(), endpoints.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let mut held = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(endpoint) = endpoints.get(i) else {
                            return held;
                        };
                        if let Ok((_, notifications)) =
                            server.observe(endpoint, LwM2mPath::Resource(3, 0, 9), None).await
                        {
                            held.push(notifications);
                        }
                    }
                }));
            }
            for task in tasks {
                observations.extend(task.await?);
            }
            eprintln!("{} observations in {:.2} s", observations.len(), started.elapsed().as_secs_f64());
        }
        let rss_after = rss_bytes()?;
        let mut bytes_per_device = rss_after.saturating_sub(rss_before) / args.devices as u64;
        eprintln!(
            "RSS {:.1} MiB -> {:.1} MiB: {bytes_per_device} bytes per registered device, right after the observations",
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0
        );
        if args.idle_seconds > 0 {
            // The bench's own list of names is not the server's: it goes before the idle
            // reading and is collected again for the Reads.
            drop(std::mem::take(&mut endpoints));
            let idle_since = Instant::now();
            let idle = Duration::from_secs(args.idle_seconds);
            while idle_since.elapsed() < idle {
                tokio::time::sleep(Duration::from_secs(30).min(idle - idle_since.elapsed())).await;
                // Only the RSS: listing the registrations here would copy all of them and
                // leave freed memory the allocator has not yet given back in the reading.
                eprintln!(
                    "  idle {:.0} s: RSS {:.1} MiB",
                    idle_since.elapsed().as_secs_f64(),
                    rss_bytes()? as f64 / 1048576.0
                );
            }
            let rss_idle = rss_bytes()?;
            bytes_per_device = rss_idle.saturating_sub(rss_before) / args.devices as u64;
            eprintln!(
                "RSS {:.1} MiB -> {:.1} MiB: {bytes_per_device} bytes per registered idle device, after {} s without traffic",
                rss_before as f64 / 1048576.0,
                rss_idle as f64 / 1048576.0,
                args.idle_seconds
            );
            endpoints = Arc::new(server.registrations().into_iter().map(|r| r.endpoint).collect());
        }

        let reads = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(args.read_seconds);
        let stride = args.in_flight;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..args.in_flight {
            let (server, endpoints, reads, failures) =
                (server.clone(), endpoints.clone(), reads.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = worker;
                while Instant::now() < deadline {
                    let endpoint = &endpoints[i % endpoints.len()];
                    match server.read(endpoint, LwM2mPath::Resource(3, 0, 0), None).await {
                        Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    i += stride;
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        let read_rps = reads.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "{} reads ({} failed) in {:.1} s: {read_rps:.0} reads/s",
            reads.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
        println!(
            "RESULT lwm2m reg_per_s={reg_per_s:.0} devices={} bytes_per_device={bytes_per_device} read_rps={read_rps:.0}",
            args.devices
        );
        drop(observations);
        drop(fleets);
        server.shutdown().await;
        anyhow::Ok(())
    })
}
