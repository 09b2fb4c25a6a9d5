//! `cairn firmware upload` and `cairn campaign start | status | pause | resume | cancel`:
//! the firmware repository and update campaigns of a running `cairn server`.
//!
//! The running server owns its store (one process), so, like `cairn keys rotate`, these
//! commands hand their request to it through its data directory: they write
//! `ota/requests/ID.toml` (atomically) and wait for `ota/reports/ID.toml`. The server picks
//! requests up within a second ([`serve_requests`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_server::LwM2mServer;
use cairn_server::campaign::{CampaignSpec, CampaignState};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

const REQUESTS: &str = "ota/requests";
const REPORTS: &str = "ota/reports";
/// The largest request file read.
const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// The largest package uploaded.
const MAX_PACKAGE_BYTES: u64 = 64 << 20;
/// How long a command waits for the server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The package file (`cairn firmware sign` and a payload, see the firmware docs).
    package: PathBuf,
    /// Package name (reported as /5/0/6).
    #[arg(long)]
    name: String,
    /// Package version (reported as /5/0/7).
    #[arg(long)]
    version: String,
    /// The running server's data directory (default ./cairn-data).
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CampaignArgs {
    /// The running server's data directory (default ./cairn-data).
    #[arg(long, env = "CAIRN_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: CampaignCommand,
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Start a campaign: the image goes to the devices wave by wave.
    Start(StartArgs),
    /// A campaign's progress; --follow draws a progress bar until it ends.
    Status {
        id: String,
        #[arg(long)]
        follow: bool,
    },
    /// Stop starting devices (those under way finish).
    Pause { id: String },
    /// Carry on after a pause.
    Resume { id: String },
    /// Stop for good.
    Cancel { id: String },
}

#[derive(Debug, Args)]
struct StartArgs {
    /// The firmware image id (from `cairn firmware upload`).
    #[arg(long)]
    image: String,
    /// A name for people.
    #[arg(long, default_value = "campaign")]
    name: String,
    /// Target devices by endpoint name (repeat).
    #[arg(long, conflicts_with = "group")]
    endpoint: Vec<String>,
    /// Every registered device whose endpoint name starts with this prefix ("" for all).
    #[arg(long)]
    group: Option<String>,
    /// Share of the targets done by the end of each wave, percent, e.g. 1,10,100.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    waves: Vec<u8>,
    /// A wave in which more than this share of devices failed halts the campaign.
    #[arg(long, default_value_t = 5.0)]
    max_failure_percent: f64,
    /// Devices updated at the same time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// What a command asks of the server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum OtaRequest {
    Upload {
        package: PathBuf,
        name: String,
        version: String,
    },
    Start {
        name: String,
        image: String,
        #[serde(default)]
        endpoints: Vec<String>,
        group: Option<String>,
        waves: Vec<u8>,
        max_failure_percent: f64,
        concurrency: usize,
    },
    Status {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Cancel {
        id: String,
    },
}

/// The server's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OtaReport {
    error: Option<String>,
    /// An uploaded image's or a started campaign's id.
    id: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    state: Option<String>,
    wave: Option<usize>,
    total: Option<usize>,
    updated: Option<usize>,
    failed: Option<usize>,
    unreachable: Option<usize>,
    in_progress: Option<usize>,
    pending: Option<usize>,
    halt_reason: Option<String>,
    finished: Option<bool>,
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| PathBuf::from("./cairn-data"))
}

/// Hands `request` to the server and waits for its report.
fn ask(data_dir: &Path, request: &OtaRequest) -> anyhow::Result<OtaReport> {
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
    write_atomically(
        &requests.join(format!("{id}.toml")),
        &toml::to_string(request)?,
    )?;
    let report_path = data_dir.join(REPORTS).join(format!("{id}.toml"));
    let deadline = Instant::now() + ANSWER_WAIT;
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&report_path) {
            let _ = std::fs::remove_file(&report_path);
            break text;
        }
        if Instant::now() >= deadline {
            let _ = std::fs::remove_file(requests.join(format!("{id}.toml")));
            anyhow::bail!(
                "no answer from the server (is `cairn server` running on {}?)",
                data_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let report: OtaReport = toml::from_str(&text).context("malformed report")?;
    if let Some(error) = &report.error {
        anyhow::bail!("{error}");
    }
    Ok(report)
}

pub fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let package = args
        .package
        .canonicalize()
        .with_context(|| format!("cannot read {}", args.package.display()))?;
    let bytes = std::fs::read(&package)?;
    // Only a well-formed package is worth storing: its manifest is checked by the devices.
    cairn_firmware::package::split_package(&bytes).context("not a Cairn firmware package")?;
    let report = ask(
        &data_dir(args.data_dir),
        &OtaRequest::Upload {
            package,
            name: args.name,
            version: args.version,
        },
    )?;
    println!("image:  {}", report.id.unwrap_or_default());
    println!("size:   {}", report.size.unwrap_or_default());
    println!("sha256: {}", report.sha256.unwrap_or_default());
    Ok(())
}

pub fn run(args: CampaignArgs) -> anyhow::Result<()> {
    let dir = data_dir(args.data_dir);
    match args.command {
        CampaignCommand::Start(start) => {
            anyhow::ensure!(
                !start.endpoint.is_empty() || start.group.is_some(),
                "name the devices: --endpoint E or --group PREFIX"
            );
            let report = ask(
                &dir,
                &OtaRequest::Start {
                    name: start.name,
                    image: start.image,
                    endpoints: start.endpoint,
                    group: start.group,
                    waves: start.waves,
                    max_failure_percent: start.max_failure_percent,
                    concurrency: start.concurrency,
                },
            )?;
            println!("campaign: {}", report.id.unwrap_or_default());
            Ok(())
        }
        CampaignCommand::Status { id, follow } => status(&dir, &id, follow),
        CampaignCommand::Pause { id } => simple(&dir, OtaRequest::Pause { id }),
        CampaignCommand::Resume { id } => simple(&dir, OtaRequest::Resume { id }),
        CampaignCommand::Cancel { id } => simple(&dir, OtaRequest::Cancel { id }),
    }
}

fn simple(dir: &Path, request: OtaRequest) -> anyhow::Result<()> {
    let report = ask(dir, &request)?;
    println!("state: {}", report.state.unwrap_or_default());
    Ok(())
}

fn summary(report: &OtaReport) -> String {
    format!(
        "state={} wave={} updated={} failed={} unreachable={} in_progress={} pending={}",
        report.state.as_deref().unwrap_or("?"),
        report.wave.map_or(0, |w| w + 1),
        report.updated.unwrap_or(0),
        report.failed.unwrap_or(0),
        report.unreachable.unwrap_or(0),
        report.in_progress.unwrap_or(0),
        report.pending.unwrap_or(0),
    )
}

fn status(dir: &Path, id: &str, follow: bool) -> anyhow::Result<()> {
    let mut report = ask(dir, &OtaRequest::Status { id: id.into() })?;
    if follow {
        let bar = ProgressBar::new(report.total.unwrap_or(0) as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")?
                .progress_chars("=> "),
        );
        while !report.finished.unwrap_or(true) {
            let done = report.updated.unwrap_or(0)
                + report.failed.unwrap_or(0)
                + report.unreachable.unwrap_or(0);
            bar.set_position(done as u64);
            bar.set_message(summary(&report));
            std::thread::sleep(Duration::from_secs(1));
            report = ask(dir, &OtaRequest::Status { id: id.into() })?;
        }
        bar.finish_and_clear();
    }
    println!("{}", summary(&report));
    if let Some(reason) = &report.halt_reason {
        println!("halted: {reason}");
    }
    Ok(())
}

async fn answer(server: &LwM2mServer, request: OtaRequest) -> anyhow::Result<OtaReport> {
    Ok(match request {
        OtaRequest::Upload {
            package,
            name,
            version,
        } => {
            let size = std::fs::metadata(&package)?.len();
            anyhow::ensure!(
                size <= MAX_PACKAGE_BYTES,
                "the package is larger than {MAX_PACKAGE_BYTES} bytes"
            );
            let bytes = tokio::fs::read(&package).await?;
            cairn_firmware::package::split_package(&bytes)
                .context("not a Cairn firmware package")?;
            let image = server.add_firmware(&name, &version, bytes).await?;
            tracing::info!(id = %image.id, %name, %version, "firmware image added");
            OtaReport {
                id: Some(image.id),
                size: Some(image.size as u64),
                sha256: Some(image.sha256),
                ..OtaReport::default()
            }
        }
        OtaRequest::Start {
            name,
            image,
            endpoints,
            group,
            waves,
            max_failure_percent,
            concurrency,
        } => {
            let targets = match group {
                Some(prefix) => {
                    let mut all: Vec<String> = server
                        .registrations()
                        .into_iter()
                        .map(|r| r.endpoint)
                        .filter(|e| e.starts_with(prefix.as_str()))
                        .collect();
                    all.sort();
                    all
                }
                None => endpoints,
            };
            let spec = CampaignSpec {
                waves,
                max_failure_percent,
                concurrency: concurrency.max(1),
                ..CampaignSpec::new(name, image, targets)
            };
            let id = server.start_campaign(spec).await?;
            OtaReport {
                id: Some(id),
                ..OtaReport::default()
            }
        }
        OtaRequest::Status { id } => status_report(server, &id).await?,
        OtaRequest::Pause { id } => {
            server.pause_campaign(&id)?;
            status_report(server, &id).await?
        }
        OtaRequest::Resume { id } => {
            server.resume_campaign(&id)?;
            status_report(server, &id).await?
        }
        OtaRequest::Cancel { id } => {
            server.cancel_campaign(&id)?;
            status_report(server, &id).await?
        }
    })
}

async fn status_report(server: &LwM2mServer, id: &str) -> anyhow::Result<OtaReport> {
    let status = server
        .campaign(id)
        .await
        .with_context(|| format!("no campaign {id}"))?;
    let counts = status.counts();
    Ok(OtaReport {
        id: Some(status.id.clone()),
        state: Some(
            match status.state {
                CampaignState::Running => "running",
                CampaignState::Paused => "paused",
                CampaignState::Halted => "halted",
                CampaignState::Cancelled => "cancelled",
                CampaignState::Completed => "completed",
            }
            .into(),
        ),
        wave: Some(status.wave),
        total: Some(status.devices.len()),
        updated: Some(counts.updated),
        failed: Some(counts.failed),
        unreachable: Some(counts.unreachable),
        in_progress: Some(counts.in_progress),
        pending: Some(counts.pending),
        halt_reason: status.halt_reason.clone(),
        finished: Some(status.is_finished()),
        ..OtaReport::default()
    })
}

async fn handle_request(path: &Path, reports: &Path, server: &LwM2mServer) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)?.len();
    let text = std::fs::read_to_string(path);
    std::fs::remove_file(path)?;
    let report = if size > MAX_REQUEST_BYTES {
        OtaReport {
            error: Some("request too large".into()),
            ..OtaReport::default()
        }
    } else {
        let parsed = text
            .map_err(anyhow::Error::from)
            .and_then(|t| toml::from_str::<OtaRequest>(&t).map_err(anyhow::Error::from));
        match parsed {
            Ok(request) => answer(server, request).await.unwrap_or_else(|e| OtaReport {
                error: Some(format!("{e:#}")),
                ..OtaReport::default()
            }),
            Err(e) => OtaReport {
                error: Some(format!("malformed request: {e}")),
                ..OtaReport::default()
            },
        }
    };
    let name = path.file_name().context("request name")?;
    write_atomically(&reports.join(name), &toml::to_string(&report)?)
}

/// Serves firmware and campaign requests dropped in the data directory, for as long as the
/// server runs.
pub async fn serve_requests(data_dir: PathBuf, server: LwM2mServer) {
    let requests = data_dir.join(REQUESTS);
    let reports = data_dir.join(REPORTS);
    if let Err(error) =
        std::fs::create_dir_all(&requests).and_then(|()| std::fs::create_dir_all(&reports))
    {
        tracing::warn!(%error, "firmware and campaign requests are not served");
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
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
            if let Err(error) = handle_request(&path, &reports, &server).await {
                tracing::warn!(%error, path = %path.display(), "firmware request failed");
            }
        }
    }
}
