//! `cairn demo`: the whole stack on one machine. A device-management server and a
//! Bootstrap-Server on one embedded store, the web console and REST API, and a fleet of
//! simulated devices made like a factory makes them (`cairn keys factory`: a random bootstrap
//! PSK per device, sealed in a manifest the Bootstrap-Server imports). Each device bootstraps
//! over DTLS with its factory credential, gets fresh device-management credentials generated
//! for it (and a new bootstrap credential), registers with the server over DTLS, and reports
//! its clock, which the server observes. A demo firmware image is put in the repository. It
//! prints the console's URL and the one-time administrator setup link, then what happens,
//! until Ctrl-C.
//!
//! Run again on the same data directory, the devices carry on with the credentials they were
//! given (their state is kept, encrypted, in DIR/devices).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cairn_lwm2m::node::{LwM2mNode, ResourceValue};
use cairn_lwm2m::value::Value;
use cairn_lwm2m::{AttributeName, AttributeSet, AttributeValue, LwM2mPath};
use cairn_server::bootstrap::{BootstrapEvent, BootstrapServer, BootstrapStores};
use cairn_server::firmware::FirmwareImage;
use cairn_server::{EmbeddedStore, LwM2mServer, ServerConfig, ServerEvent};
use cairn_store::{
    BootstrapSettings, BootstrapStore, BootstrapTemplate, CredentialKind, DmCredentialSource,
    DmServerConfig,
};
use clap::Args;

/// Endpoint names of the demo's devices start with this.
const DEVICE_PREFIX: &str = "demo-meter-";
/// The demo firmware image put in the repository.
const DEMO_FIRMWARE_NAME: &str = "demo-meter-firmware";
const DEMO_FIRMWARE_VERSION: &str = "1.1.0";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Data directory of the demo (created): the store, the factory output and the devices'
    /// state.
    #[arg(long, default_value = "./cairn-demo")]
    data_dir: PathBuf,
    /// UDP address the device-management server listens on for DTLS.
    #[arg(long, default_value = "127.0.0.1:5684")]
    dtls_listen: SocketAddr,
    /// UDP address the Bootstrap-Server listens on for DTLS.
    #[arg(long, default_value = "127.0.0.1:5784")]
    bootstrap_listen: SocketAddr,
    /// TCP address of the web console and REST API.
    #[arg(long, default_value = cairn_web::DEFAULT_LISTEN)]
    web_listen: SocketAddr,
    /// Do not start the web console.
    #[arg(long)]
    no_web: bool,
    /// Devices started per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Print only the summary lines, not every registration and notification.
    #[arg(long)]
    quiet: bool,
}

fn uri(scheme: &str, address: SocketAddr) -> String {
    format!("{scheme}://{address}")
}

/// The factory output for `count` devices: made (and imported into the Bootstrap-Server's
/// store) at the first run, reused after.
async fn factory(
    data_dir: &Path,
    store: &EmbeddedStore,
    count: usize,
    bootstrap_uri: &str,
) -> anyhow::Result<PathBuf> {
    let out = data_dir.join("factory");
    let manifest = out.join("manifest.toml");
    if manifest.exists() {
        let available = crate::factory_cmd::device_files(&out)?.len();
        anyhow::ensure!(
            count <= available,
            "{} holds a demo of {available} devices; run with --devices {available} or less, \
             or with a fresh --data-dir",
            data_dir.display()
        );
        return Ok(out);
    }
    let server_public = match crate::factory_cmd::load_server_key(data_dir) {
        Ok((_, public)) => public,
        Err(_) => crate::factory_cmd::create_server_key(data_dir)?,
    };
    crate::factory_cmd::generate(count, &out, &server_public, bootstrap_uri, DEVICE_PREFIX, 1)?;
    let devices = crate::factory_cmd::read_manifest(&manifest, data_dir)?;
    store
        .import_device_credentials(devices)
        .await
        .context("cannot import the factory manifest")?;
    Ok(out)
}

/// The template every demo device bootstraps with: the DM server at `dm_uri`, a fresh random
/// PSK generated per device, a new bootstrap credential at each bootstrap.
fn demo_template(dm_uri: String, bootstrap_uri: String) -> BootstrapTemplate {
    BootstrapTemplate {
        name: "demo".into(),
        endpoint_prefix: DEVICE_PREFIX.into(),
        settings: BootstrapSettings {
            servers: vec![DmServerConfig {
                short_server_id: 1,
                uri: dm_uri,
                lifetime_s: 300,
                binding: "U".into(),
                credential: DmCredentialSource::Generate(CredentialKind::Psk),
                oscore: false,
            }],
            acl: Vec::new(),
            replace_bootstrap_credential: true,
            bootstrap_uri,
            allow_unsecured: false,
        },
    }
}

/// A recognisable image of 256 KiB, so the Firmware page has something to show.
fn demo_firmware_bytes() -> Vec<u8> {
    let mut bytes =
        format!("CAIRN DEMO FIRMWARE {DEMO_FIRMWARE_NAME} {DEMO_FIRMWARE_VERSION}\n").into_bytes();
    let mut x: u32 = 0x2545_f491;
    while bytes.len() < 256 * 1024 {
        // A fixed xorshift sequence: the same image (and digest) at every run.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// Puts the demo image in the firmware repository unless it is there already.
async fn demo_firmware(server: &LwM2mServer) -> anyhow::Result<FirmwareImage> {
    let images = server.firmware_images().await?;
    if let Some(image) = images
        .into_iter()
        .find(|i| i.name == DEMO_FIRMWARE_NAME && i.version == DEMO_FIRMWARE_VERSION)
    {
        return Ok(image);
    }
    Ok(server
        .add_firmware(
            DEMO_FIRMWARE_NAME,
            DEMO_FIRMWARE_VERSION,
            demo_firmware_bytes(),
        )
        .await?)
}

/// The demo's firmware campaign, once the fleet is registered: it updates the devices that
/// have a Firmware Update object (/5) with the demo image. The simulated devices do not have
/// one yet, so this reports that and does nothing; when they do, the campaign starts here.
async fn demo_firmware_campaign(server: &LwM2mServer, image: &FirmwareImage) {
    let targets: Vec<String> = server
        .registrations()
        .into_iter()
        .filter(|r| r.endpoint.starts_with(DEVICE_PREFIX))
        .filter(|r| {
            r.object_paths
                .iter()
                .any(|p| p == "/5" || p.starts_with("/5/"))
        })
        .map(|r| r.endpoint)
        .collect();
    if targets.is_empty() {
        println!(
            "firmware: {} {} is in the repository; the simulated devices have no Firmware \
             Update object (/5), so no campaign runs",
            image.name, image.version
        );
        return;
    }
    let spec = cairn_server::campaign::CampaignSpec::new(
        format!("demo update to {}", image.version),
        image.id.clone(),
        targets,
    );
    match server.start_campaign(spec).await {
        Ok(id) => println!("firmware: campaign {id} started (see the console's Firmware page)"),
        Err(error) => println!("firmware: the demo campaign did not start: {error}"),
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be positive");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let store = crate::server_cmd::open_store(&args.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = ServerConfig {
            coap_listen: None,
            dtls_listen: Some(args.dtls_listen),
            ..ServerConfig::default()
        };
        let server = LwM2mServer::start(
            config,
            cairn_server::bootstrap::security::device_management_stores(store.clone()),
        )
        .await
        .with_context(|| format!("cannot start the server on {}", args.dtls_listen))?;
        let bootstrap = BootstrapServer::start(
            crate::bootstrap_cmd::server_config(None, Some(args.bootstrap_listen)),
            BootstrapStores::embedded(store.clone()),
        )
        .await
        .with_context(|| format!("cannot start the Bootstrap-Server on {}", args.bootstrap_listen))?;
        bootstrap.follow(&server);
        // `cairn keys rotate --data-dir DIR` works on the demo as on `cairn server`.
        tokio::spawn(crate::rotate_cmd::serve_requests(
            args.data_dir.clone(),
            std::sync::Arc::new(store.clone()),
            bootstrap.clone(),
            server.clone(),
        ));
        let dm_address = server.local_addrs().1.context("no DTLS socket")?;
        let bootstrap_address = bootstrap.local_addrs().1.context("no DTLS socket")?;
        let (dm_uri, bootstrap_uri) = (uri("coaps", dm_address), uri("coaps", bootstrap_address));
        store
            .put_bootstrap_template(demo_template(dm_uri.clone(), bootstrap_uri.clone()))
            .await
            .context("cannot store the demo's bootstrap template")?;
        let factory_dir = factory(&args.data_dir, &store, args.devices, &bootstrap_uri).await?;
        let mut events = server.events();
        let mut bootstrap_events = bootstrap.events();
        if !args.no_web {
            let web = crate::server_cmd::WebSettings {
                listen: args.web_listen,
                tls: None,
                public_url: None,
                retention: Duration::from_secs(7 * 24 * 3600),
            };
            let web = crate::server_cmd::start_web(web, &server, &store).await?;
            web.set_bootstrap(bootstrap.clone());
        }
        let image = demo_firmware(&server).await?;
        println!("server: LwM2M over DTLS on {dm_uri}");
        println!("bootstrap: Bootstrap-Server over DTLS on {bootstrap_uri}");
        println!(
            "firmware: {} {} ({} bytes) in the repository",
            image.name, image.version, image.size
        );
        println!(
            "fleet: {} simulated devices bootstrapping with their factory credentials from {}",
            args.devices,
            factory_dir.display()
        );
        let fleet = tokio::spawn(crate::fleet_bootstrap::run(
            crate::fleet_bootstrap::BootstrapFleet {
                devices: Some(args.devices),
                bootstrap_uri: Some(bootstrap_uri.clone()),
                factory: factory_dir,
                state_dir: Some(args.data_dir.join("devices")),
                bind: None,
                rate: args.rate,
                ack_timeout: Duration::from_secs(2),
                register_attempts: 3,
                deadline: Duration::from_secs(300),
            },
        ));
        let mut fleet = Some(fleet);
        let mut running_fleet = None;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                outcome = async { fleet.as_mut().expect("guarded").await }, if fleet.is_some() => {
                    fleet = None;
                    match outcome {
                        Ok(Ok(outcome)) => {
                            println!("fleet: {}", crate::fleet_bootstrap::summary(&outcome));
                            demo_firmware_campaign(&server, &image).await;
                            running_fleet = Some(outcome);
                        }
                        Ok(Err(error)) => println!("fleet: failed: {error:#}"),
                        Err(error) => println!("fleet: failed: {error}"),
                    }
                }
                event = bootstrap_events.recv() => {
                    if args.quiet {
                        continue;
                    }
                    match event {
                        Ok(BootstrapEvent::Finished { endpoint }) => println!("bootstrapped {endpoint}"),
                        Ok(BootstrapEvent::Failed { endpoint, step, reason }) => {
                            println!("bootstrap    {endpoint} failed at {step}: {reason}")
                        }
                        Ok(BootstrapEvent::Refused { endpoint, reason }) => {
                            println!("bootstrap    {endpoint} refused: {reason}")
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
                event = events.recv() => {
                    let Ok(event) = event else { continue };
                    if let ServerEvent::Registered(registration) = &event {
                        let server = server.clone();
                        let endpoint = registration.endpoint.clone();
                        let quiet = args.quiet;
                        tokio::spawn(async move { manage(server, endpoint, quiet).await });
                    }
                    if !args.quiet {
                        print_event(event);
                    }
                }
            }
        }
        if let Some(outcome) = running_fleet {
            crate::fleet_bootstrap::stop(outcome).await;
        }
        bootstrap.shutdown().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

fn print_event(event: ServerEvent) {
    match event {
        ServerEvent::Registered(registration) => println!(
            "registered   {} from {}",
            registration.endpoint, registration.peer_address
        ),
        ServerEvent::Updated(registration) => println!("updated      {}", registration.endpoint),
        ServerEvent::Deregistered(registration) => {
            println!("deregistered {}", registration.endpoint)
        }
        ServerEvent::Expired(registration) => println!("expired      {}", registration.endpoint),
        ServerEvent::Notification {
            endpoint,
            path,
            node,
        } => println!("notification {endpoint} {path} = {}", show(&node)),
        ServerEvent::Send { endpoint, nodes } => {
            let values: Vec<String> = nodes
                .iter()
                .map(|(p, n)| format!("{p} = {}", show(n)))
                .collect();
            println!("send         {endpoint} {}", values.join(", "));
        }
        ServerEvent::RequestQueued { endpoint } => println!("queued       request for {endpoint}"),
    }
}

/// What the server does with a new device: read its Device object, observe its clock.
async fn manage(server: LwM2mServer, endpoint: String, quiet: bool) {
    match server
        .read(&endpoint, LwM2mPath::ObjectInstance(3, 0), None)
        .await
    {
        Ok(LwM2mNode::ObjectInstance(device)) => {
            let text = |id: u16| match device.resources.get(&id).map(|r| &r.value) {
                Some(ResourceValue::Single(value)) => show_value(value),
                _ => "-".into(),
            };
            if !quiet {
                println!(
                    "read         {endpoint} /3/0: manufacturer {}, model {}, serial {}, firmware {}",
                    text(0),
                    text(1),
                    text(2),
                    text(3)
                );
            }
        }
        Ok(other) if quiet => drop(other),
        Ok(other) => println!("read         {endpoint} /3/0: {}", show(&other)),
        Err(error) => println!("read         {endpoint} failed: {error}"),
    }
    // A notification at most every 5 s (pmin), at least every 30 s (pmax).
    let attributes = AttributeSet::new()
        .with(AttributeName::Pmin, AttributeValue::Unsigned(5))
        .with(AttributeName::Pmax, AttributeValue::Unsigned(30));
    let target = LwM2mPath::Resource(3, 0, 13);
    if let Err(error) = server.write_attributes(&endpoint, target, attributes).await {
        println!("attributes   {endpoint} failed: {error}");
    }
    match server
        .observe(&endpoint, LwM2mPath::Resource(3, 0, 13), None)
        .await
    {
        Ok((_, mut notifications)) => {
            // Notifications show on the event bus; keep the observation while the device lives.
            while notifications.next().await.is_some() {}
        }
        Err(error) => println!("observe      {endpoint} failed: {error}"),
    }
}

fn show(node: &LwM2mNode) -> String {
    match node {
        LwM2mNode::Resource(resource) => match &resource.value {
            ResourceValue::Single(value) => show_value(value),
            ResourceValue::Multiple(values) => format!("{} values", values.len()),
        },
        LwM2mNode::ResourceInstance(instance) => show_value(&instance.value),
        LwM2mNode::ObjectInstance(instance) => format!("{} resources", instance.resources.len()),
        LwM2mNode::Object(object) => format!("{} instances", object.instances.len()),
    }
}

fn show_value(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Integer(n) => n.to_string(),
        Value::UnsignedInteger(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Time(t) => crate::coap_cmd::format_utc(u64::try_from(*t).unwrap_or(0)),
        Value::Opaque(bytes) => format!("{} bytes", bytes.len()),
        other => format!("{other:?}"),
    }
}
