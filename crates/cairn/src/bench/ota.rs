//! `cairn bench ota`: N simulated devices (each a `cairn-client` with its own DTLS-PSK
//! session and a Firmware Update object over its own simulated flash) are updated with a
//! new image by a campaign of a server in this process. Prints the campaign's time, the
//! aggregate download rate, the devices that do not boot afterwards (bricked), and the size
//! of a delta package of the same update (a 1 % edit) against the full package.
//! Final line: `RESULT ota devices=N bricked=B seconds=S delta_ratio=R`.

use anyhow::Context;
use cairn_firmware::package::encode_package;
use cairn_firmware::{Algorithm, Payload, SigningKey, sha256, sign_manifest};
use clap::Args;

use crate::ota_sim::Faults;
use crate::ota_sim::campaign::{FleetCampaign, images, manifest, run as run_campaign};

#[derive(Debug, Args)]
pub struct OtaBenchArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Image size in KiB.
    #[arg(long, default_value_t = 256)]
    image_kib: usize,
    /// Devices the campaign updates at the same time.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Devices started per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Probability of a power cut per flash operation.
    #[arg(long, default_value_t = 0.0)]
    power_cut_rate: f64,
    /// Probability that a download block is lost with its connection.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds one device may take before the campaign counts it as failed.
    #[arg(long, default_value_t = 120)]
    device_timeout_s: u64,
}

pub fn run(args: OtaBenchArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(bench(args))
}

/// Full package and delta package sizes for the update the campaign runs.
fn delta_ratio(len: usize, seed: u64) -> anyhow::Result<f64> {
    let (v1, v2) = images(len, seed);
    let key = SigningKey::from_random(Algorithm::Ed25519, &[7; 32]).context("a signing key")?;
    let full = encode_package(&sign_manifest(&manifest(&v2, "meter", 2), &key), &v2);
    let patch = cairn_firmware::delta::create_patch(&v1, &v2)?;
    let mut delta_manifest = manifest(&v2, "meter", 2);
    delta_manifest.payload = Payload::Delta {
        precursor_digest: sha256(&v1),
        patch_digest: sha256(&patch),
        patch_size: patch.len() as u64,
    };
    let delta = encode_package(&sign_manifest(&delta_manifest, &key), &patch);
    Ok(delta.len() as f64 / full.len() as f64)
}

async fn bench(args: OtaBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be positive");
    let work = std::env::temp_dir().join(format!("cairn-bench-ota-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let image_len = args.image_kib * 1024;
    let seed = 42;
    eprintln!(
        "starting {} devices with a {} KiB image each…",
        args.devices, args.image_kib
    );
    let outcome = run_campaign(FleetCampaign {
        devices: args.devices,
        image_len,
        faults: Faults {
            power_cut_rate: args.power_cut_rate,
            drop_rate: args.drop_rate,
        },
        other_class: 0,
        waves: vec![1, 10, 100],
        max_failure_percent: 5.0,
        concurrency: args.concurrency.max(1),
        device_timeout_s: Some(args.device_timeout_s),
        rate: args.rate,
        seed,
        data_dir: work.join("data"),
        verbose: true,
    })
    .await;
    let _ = std::fs::remove_dir_all(&work);
    let outcome = outcome?;
    let ratio = delta_ratio(image_len, seed)?;
    let counts = outcome.status.counts();
    println!("{}", outcome.report);
    println!(
        "campaign: {:?}, updated {}, failed {}, unreachable {}",
        outcome.status.state, counts.updated, counts.failed, counts.unreachable
    );
    println!(
        "package {} bytes; received {} bytes in {:.1} s: {:.1} MB/s aggregate",
        outcome.package_len,
        outcome.bytes_received,
        outcome.campaign_seconds,
        outcome.bytes_received as f64 / outcome.campaign_seconds / 1e6
    );
    println!(
        "every device on the new image or reverted with a result code: {}",
        if outcome.report.accounted() {
            "yes"
        } else {
            "no"
        }
    );
    println!("delta package / full package: {ratio:.4} (1 % of the bytes changed)");
    println!(
        "RESULT ota devices={} bricked={} seconds={:.1} delta_ratio={:.4}",
        args.devices, outcome.report.bricked, outcome.campaign_seconds, ratio
    );
    Ok(())
}
