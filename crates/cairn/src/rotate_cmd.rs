//! `cairn keys rotate --endpoint E | --all | --group PREFIX`: fresh credentials for devices.
//!
//! The running `cairn server` owns its store (one process), so the command hands the request to
//! it through its data directory: it writes `rotation/requests/ID.toml` (atomically) and waits
//! for `rotation/reports/ID.toml`. The server picks requests up within a second, asks each
//! registered device to bootstrap again (Execute of the Bootstrap-Request Trigger, /1/x/9),
//! waits for the devices to register with their new credentials (the old ones are refused from
//! then on) and writes the report: rotated, pending (not registered, or not done in time) and
//! failed, with the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cairn_server::LwM2mServer;
use cairn_server::bootstrap::BootstrapServer;
use cairn_store::BootstrapStore;
use clap::Args;
use serde::{Deserialize, Serialize};

const REQUESTS: &str = "rotation/requests";
const REPORTS: &str = "rotation/reports";
/// The largest request file read.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The running server's data directory (default ./cairn-data).
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// One device.
    #[arg(long, conflicts_with_all = ["all", "group"])]
    endpoint: Vec<String>,
    /// Every device with bootstrap credentials.
    #[arg(long, conflicts_with = "group")]
    all: bool,
    /// Every device whose endpoint name starts with this prefix.
    #[arg(long)]
    group: Option<String>,
    /// Seconds to wait for the devices to register with their new credentials.
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
}

#[derive(Serialize, Deserialize)]
struct RotationRequest {
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    all: bool,
    group: Option<String>,
    wait_s: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct RotationReportFile {
    rotated: Vec<String>,
    pending: Vec<String>,
    failed: Vec<FailedRotation>,
}

#[derive(Serialize, Deserialize)]
struct FailedRotation {
    endpoint: String,
    reason: String,
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: RotateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.endpoint.is_empty() || args.all || args.group.is_some(),
        "name the devices: --endpoint E, --group PREFIX or --all"
    );
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from("./cairn-data"));
    let requests = data_dir.join(REQUESTS);
    std::fs::create_dir_all(&requests)?;
    std::fs::create_dir_all(data_dir.join(REPORTS))?;
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let request = RotationRequest {
        endpoints: args.endpoint,
        all: args.all,
        group: args.group,
        wait_s: args.wait_s,
    };
    write_atomically(
        &requests.join(format!("{id}.toml")),
        &toml::to_string(&request)?,
    )?;
    let report_path = data_dir.join(REPORTS).join(format!("{id}.toml"));
    let deadline = std::time::Instant::now() + Duration::from_secs(args.wait_s + 30);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&report_path) {
            let _ = std::fs::remove_file(&report_path);
            break text;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no report from the server (is `cairn server` running on {}?)",
            data_dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let report: RotationReportFile = toml::from_str(&text).context("malformed report")?;
    for endpoint in &report.rotated {
        println!("rotated\t{endpoint}");
    }
    for endpoint in &report.pending {
        println!("pending\t{endpoint}");
    }
    for failed in &report.failed {
        println!("failed\t{}\t{}", failed.endpoint, failed.reason);
    }
    println!(
        "rotated={} pending={} failed={}",
        report.rotated.len(),
        report.pending.len(),
        report.failed.len()
    );
    Ok(())
}

async fn endpoints_of(
    store: &dyn BootstrapStore,
    request: &RotationRequest,
) -> anyhow::Result<Vec<String>> {
    if !request.all && request.group.is_none() {
        return Ok(request.endpoints.clone());
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_device_endpoints(after.as_deref(), 1000).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    if let Some(prefix) = &request.group {
        all.retain(|endpoint| endpoint.starts_with(prefix.as_str()));
    }
    Ok(all)
}

impl From<cairn_server::bootstrap::RotationReport> for RotationReportFile {
    fn from(report: cairn_server::bootstrap::RotationReport) -> Self {
        RotationReportFile {
            rotated: report.rotated,
            pending: report.pending,
            failed: report
                .failed
                .into_iter()
                .map(|(endpoint, reason)| FailedRotation { endpoint, reason })
                .collect(),
        }
    }
}

/// Prints and writes the report of a scheduled rotation (by credential age) as
/// `rotation/reports/scheduled-UNIXMS.toml`, in the format of `cairn keys rotate`'s.
pub fn scheduled_report(data_dir: &Path, report: &cairn_server::bootstrap::RotationReport) {
    eprintln!(
        "scheduled rotation: rotated={} pending={} failed={}",
        report.rotated.len(),
        report.pending.len(),
        report.failed.len()
    );
    let file = RotationReportFile::from(report.clone());
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let reports = data_dir.join(REPORTS);
    let written = std::fs::create_dir_all(&reports)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            write_atomically(
                &reports.join(format!("scheduled-{millis}.toml")),
                &toml::to_string(&file)?,
            )
        });
    if let Err(error) = written {
        tracing::warn!(%error, "cannot write the scheduled rotation's report");
    }
}

async fn handle_request(
    path: &Path,
    reports: &Path,
    store: &dyn BootstrapStore,
    bootstrap: &BootstrapServer,
    server: &LwM2mServer,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)?.len();
    let text = std::fs::read_to_string(path);
    std::fs::remove_file(path)?;
    anyhow::ensure!(size <= MAX_REQUEST_BYTES, "rotation request too large");
    let request: RotationRequest = toml::from_str(&text?)?;
    let endpoints = endpoints_of(store, &request).await?;
    tracing::info!(devices = endpoints.len(), "rotating credentials");
    let report = bootstrap
        .rotate(
            server,
            &endpoints,
            Duration::from_secs(request.wait_s.min(3600)),
        )
        .await;
    let file = RotationReportFile::from(report);
    let name = path.file_name().context("request name")?;
    write_atomically(&reports.join(name), &toml::to_string(&file)?)
}

/// Serves rotation requests dropped in the data directory, for as long as the server runs.
pub async fn serve_requests(
    data_dir: PathBuf,
    store: std::sync::Arc<dyn BootstrapStore>,
    bootstrap: BootstrapServer,
    server: LwM2mServer,
) {
    let requests = data_dir.join(REQUESTS);
    let reports = data_dir.join(REPORTS);
    if let Err(error) =
        std::fs::create_dir_all(&requests).and_then(|()| std::fs::create_dir_all(&reports))
    {
        tracing::warn!(%error, "rotation requests are not served");
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Ok(entries) = std::fs::read_dir(&requests) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            if let Err(error) = handle_request(&path, &reports, &*store, &bootstrap, &server).await
            {
                tracing::warn!(%error, path = %path.display(), "rotation request failed");
            }
        }
    }
}
