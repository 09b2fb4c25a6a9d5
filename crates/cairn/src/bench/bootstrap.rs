//! `cairn bench bootstrap`: N simulated devices from factory state to registered. A
//! device-management server and a Bootstrap-Server run in this process on one embedded store
//! (every credential change is a durable commit); factory credentials come from
//! `cairn keys factory` and are imported from its sealed manifest; the devices (the
//! `cairn-client` device flow, each with its own sockets and in-memory vault) bootstrap over
//! DTLS-PSK, get generated credentials, and register over a second DTLS session with them.
//! Prints `RESULT bootstrap devices=N seconds=S per_s=N`: S from the first Bootstrap-Request
//! to the last registration.

use std::time::Duration;

use anyhow::Context;
use cairn_server::bootstrap::security::device_management_stores;
use cairn_server::bootstrap::{BootstrapServer, BootstrapServerConfig, BootstrapStores};
use cairn_server::{EmbeddedStore, LwM2mServer, ServerConfig};
use cairn_store::{
    BootstrapSettings, BootstrapStore, BootstrapTemplate, CredentialKind, DmCredentialSource,
    DmServerConfig, MasterKey, MasterKeySource,
};
use clap::Args;

#[derive(Debug, Args)]
pub struct BootstrapBenchArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Devices started per second.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub fn run(args: BootstrapBenchArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: BootstrapBenchArgs) -> anyhow::Result<()> {
    let work = tempfile_dir()?;
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
    let factory = work.join("factory");
    crate::factory_cmd::generate(args.devices, &factory, &public, &bs_uri, "bench-", 1)?;
    let devices = crate::factory_cmd::read_manifest(&factory.join("manifest.toml"), &data)?;
    store.import_device_credentials(devices).await?;
    eprintln!("{} devices from factory state to registered…", args.devices);
    let outcome = crate::fleet_bootstrap::run(crate::fleet_bootstrap::BootstrapFleet {
        devices: None,
        bootstrap_uri: None,
        factory,
        state_dir: None,
        bind: None,
        rate: args.rate,
        ack_timeout: Duration::from_secs(2),
        register_attempts: 3,
        deadline: Duration::from_secs(1800),
    })
    .await?;
    eprintln!("{}", crate::fleet_bootstrap::summary(&outcome));
    let registered = outcome.registered;
    let seconds = outcome.elapsed.as_secs_f64();
    crate::fleet_bootstrap::stop(outcome).await;
    bootstrap.shutdown().await;
    dm.shutdown().await;
    drop(store);
    let _ = std::fs::remove_dir_all(&work);
    anyhow::ensure!(
        registered == args.devices,
        "only {registered} of {} devices registered",
        args.devices
    );
    println!(
        "RESULT bootstrap devices={registered} seconds={seconds:.2} per_s={:.0}",
        registered as f64 / seconds
    );
    Ok(())
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
