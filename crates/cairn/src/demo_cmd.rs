//! `cairn demo`: the whole stack on one machine. A device-management server and a
//! Bootstrap-Server on one embedded store, the web console and REST API, and a fleet of
//! simulated devices made like a factory makes them (`cairn keys factory`: a random bootstrap
//! PSK per device, sealed in a manifest the Bootstrap-Server imports). Each device bootstraps
//! over DTLS with its factory credential, gets fresh device-management credentials generated
//! for it (and a new bootstrap credential), registers with the server over DTLS, and reports
//! its clock and battery level, which the server observes.
//!
//! Every device carries a Firmware Update object (/5) over its own simulated flash,
//! provisioned with a factory image (1.0.0) signed by a demo signing key (made at the first
//! run, kept in DIR/firmware). The demo signs image 1.1.0 with it, puts it in the firmware
//! repository and, once the fleet has registered, runs a campaign (10 % of the devices, then
//! all) that the devices pull over their DTLS sessions with Block2; then it reads the Firmware
//! Version (/3/0/3) back from every device. It also writes a signed 1.2.0 package in
//! DIR/firmware to upload from the console and roll out with a campaign started there.
//!
//! It prints the console's URL and the one-time administrator setup link, then what happens,
//! until Ctrl-C. `cairn campaign --data-dir DIR ...` and `cairn firmware upload` work on the
//! running demo as on `cairn server`.
//!
//! Run again on the same data directory, the devices carry on with the credentials they were
//! given (their state is kept, encrypted, in DIR/devices); their flash is not kept: they start
//! from the factory image again, and the demo's campaign runs again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cairn_firmware::package::encode_package;
use cairn_firmware::{
    Algorithm, Manifest, Payload, SigningKey, TrustedKeys, sha256, sign_manifest,
};
use cairn_lwm2m::node::{LwM2mNode, ResourceValue};
use cairn_lwm2m::value::Value;
use cairn_lwm2m::{AttributeName, AttributeSet, AttributeValue, LwM2mPath};
use cairn_server::bootstrap::{BootstrapEvent, BootstrapServer, BootstrapStores};
use cairn_server::campaign::{CampaignSpec, CampaignState};
use cairn_server::firmware::FirmwareImage;
use cairn_server::{EmbeddedStore, LwM2mServer, ServerConfig, ServerEvent};
use cairn_store::{
    BootstrapSettings, BootstrapStore, BootstrapTemplate, CredentialKind, DmCredentialSource,
    DmServerConfig,
};
use clap::Args;

/// Endpoint names of the demo's devices start with this.
const DEVICE_PREFIX: &str = "demo-meter-";
/// The demo firmware image put in the repository (sequence 2 of the demo's images).
const DEMO_FIRMWARE_NAME: &str = "demo-meter-firmware";
const DEMO_FIRMWARE_VERSION: &str = "1.1.0";
/// Sequence numbers of the factory image, the image of the demo's campaign and the image
/// left to roll out from the console.
const FACTORY_SEQUENCE: u64 = 1;
const CAMPAIGN_SEQUENCE: u64 = 2;
const CONSOLE_SEQUENCE: u64 = 3;
/// Vendor and device class in the demo's manifests.
const FIRMWARE_VENDOR: &str = "cairn-demo";
const FIRMWARE_CLASS: &str = "meter";
/// Size of the demo's images.
const IMAGE_LEN: usize = 64 * 1024;

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

/// The firmware version a demo manifest stands for: sequence 1 is 1.0.0, 2 is 1.1.0, …
fn demo_version(manifest: &Manifest) -> String {
    version_of_sequence(manifest.sequence)
}

fn version_of_sequence(sequence: u64) -> String {
    format!("1.{}.0", sequence.saturating_sub(1))
}

/// A recognisable image of `IMAGE_LEN` bytes for each sequence number: the same bytes (and
/// digest) at every run.
fn demo_image(sequence: u64) -> Vec<u8> {
    let version = version_of_sequence(sequence);
    let mut bytes = format!("CAIRN DEMO FIRMWARE {DEMO_FIRMWARE_NAME} {version}\n").into_bytes();
    let mut x: u32 = 0x2545_f491 ^ (sequence as u32).wrapping_mul(0x9e37_79b9);
    while bytes.len() < IMAGE_LEN {
        // A fixed xorshift sequence.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(IMAGE_LEN);
    bytes
}

/// The package (signed manifest and full image) of a demo image.
fn demo_package(key: &SigningKey, sequence: u64) -> Vec<u8> {
    let image = demo_image(sequence);
    let manifest = Manifest {
        vendor: FIRMWARE_VENDOR.into(),
        class: FIRMWARE_CLASS.into(),
        sequence,
        image_digest: sha256(&image),
        image_size: image.len() as u64,
        payload: Payload::Full,
        expires_at: None,
        min_hardware_version: None,
        min_bootloader_version: None,
    };
    encode_package(&sign_manifest(&manifest, key), &image)
}

/// The demo's firmware signing key: DIR/firmware/demo-signing.key, made at the first run.
fn demo_signing_key(data_dir: &Path) -> anyhow::Result<SigningKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let dir = data_dir.join("firmware");
    let path = dir.join("demo-signing.key");
    if path.exists() {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        return SigningKey::from_text(text.trim())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(seed.as_mut()).map_err(|_| anyhow::anyhow!("no random bytes"))?;
    let key = SigningKey::from_random(Algorithm::Ed25519, &seed)
        .map_err(|e| anyhow::anyhow!("a demo signing key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(key.to_text().as_bytes())?;
    Ok(key)
}

/// What the demo's devices run: the factory image, trusting the demo key.
fn demo_fleet_firmware(key: &SigningKey) -> anyhow::Result<crate::fleet_bootstrap::FleetFirmware> {
    let keys = TrustedKeys::new().with(key.public_key());
    let setup =
        crate::ota_sim::FirmwareSetup::new(keys, demo_package(key, FACTORY_SEQUENCE), IMAGE_LEN)?;
    Ok(crate::fleet_bootstrap::FleetFirmware {
        setup,
        version_of: demo_version,
        telemetry_interval: Duration::from_secs(10),
    })
}

/// Puts the demo image in the firmware repository unless it is there already.
async fn demo_firmware(server: &LwM2mServer, key: &SigningKey) -> anyhow::Result<FirmwareImage> {
    let package = demo_package(key, CAMPAIGN_SEQUENCE);
    let digest: String = sha256(&package)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for image in server.firmware_images().await? {
        if image.name == DEMO_FIRMWARE_NAME && image.version == DEMO_FIRMWARE_VERSION {
            if image.sha256 == digest {
                return Ok(image);
            }
            // An image of an earlier demo (another key or format): replaced.
            server.remove_firmware(&image.id).await?;
        }
    }
    Ok(server
        .add_firmware(DEMO_FIRMWARE_NAME, DEMO_FIRMWARE_VERSION, package)
        .await?)
}

/// Writes the package of the image to roll out from the console: DIR/firmware/NAME-VERSION.cfw.
fn console_package(data_dir: &Path, key: &SigningKey) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("firmware").join(format!(
        "{DEMO_FIRMWARE_NAME}-{}.cfw",
        version_of_sequence(CONSOLE_SEQUENCE)
    ));
    std::fs::write(&path, demo_package(key, CONSOLE_SEQUENCE))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Campaigns of an earlier run still going: cancelled, the devices start from their factory
/// image at every run.
async fn cancel_earlier_campaigns(server: &LwM2mServer) {
    for campaign in server.campaigns(1_000).await {
        if !campaign.is_finished() && server.cancel_campaign(&campaign.id).is_ok() {
            println!(
                "firmware: campaign {} of an earlier run cancelled",
                campaign.id
            );
        }
    }
}

/// The demo's firmware campaign, once the fleet is registered: the demo image to every
/// registered demo device with a Firmware Update object (/5), 10 % of them first.
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
        println!("firmware: no registered device has a Firmware Update object (/5): no campaign");
        return;
    }
    let count = targets.len();
    let spec = CampaignSpec {
        waves: vec![10, 100],
        max_failure_percent: 10.0,
        ..CampaignSpec::new(
            format!("demo update to {}", image.version),
            image.id.clone(),
            targets.clone(),
        )
    };
    match server.start_campaign(spec).await {
        Ok(id) => {
            println!(
                "firmware: campaign {id} started: {} {} to {count} devices, 10 % then 100 % \
                 (see the console's Firmware & campaigns page)",
                image.name, image.version
            );
            tokio::spawn(follow_campaign(
                server.clone(),
                id,
                targets,
                image.version.clone(),
            ));
        }
        Err(error) => println!("firmware: the demo campaign did not start: {error}"),
    }
}

/// Prints the campaign's progress at each wave and its end, then reads the Firmware Version
/// (/3/0/3) of every target back from the device.
async fn follow_campaign(server: LwM2mServer, id: String, targets: Vec<String>, version: String) {
    let started = std::time::Instant::now();
    let mut wave = usize::MAX;
    let status = loop {
        let Some(status) = server.campaign(&id).await else {
            println!("firmware: campaign {id} went missing");
            return;
        };
        if status.wave != wave && !status.is_finished() {
            wave = status.wave;
            let c = status.counts();
            println!(
                "firmware: campaign {id} wave {} of {}: updated {} failed {} unreachable {}",
                wave + 1,
                status.spec.waves.len(),
                c.updated,
                c.failed,
                c.unreachable
            );
        }
        if status.is_finished() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let c = status.counts();
    let state = match status.state {
        CampaignState::Completed => "completed",
        CampaignState::Halted => "halted",
        CampaignState::Cancelled => "cancelled",
        CampaignState::Running | CampaignState::Paused => "stopped",
    };
    println!(
        "firmware: campaign {id} {state} in {:.1} s: {} updated, {} failed, {} unreachable of {}{}",
        started.elapsed().as_secs_f64(),
        c.updated,
        c.failed,
        c.unreachable,
        status.devices.len(),
        status
            .halt_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    // What the devices themselves say they run.
    let mut on_version = 0;
    for endpoint in &targets {
        let read = server
            .read(endpoint, LwM2mPath::Resource(3, 0, 3), None)
            .await;
        if let Ok(LwM2mNode::Resource(resource)) = read
            && let ResourceValue::Single(Value::String(running)) = &resource.value
            && *running == version
        {
            on_version += 1;
        }
    }
    println!(
        "firmware: {on_version} of {} devices report firmware version {version} (/3/0/3)",
        targets.len()
    );
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
        cancel_earlier_campaigns(&server).await;
        // `cairn firmware upload` and `cairn campaign` work on the demo as on `cairn server`.
        tokio::spawn(crate::campaign_cmd::serve_requests(
            args.data_dir.clone(),
            server.clone(),
        ));
        let key = demo_signing_key(&args.data_dir)?;
        let image = demo_firmware(&server, &key).await?;
        let console_package = console_package(&args.data_dir, &key)?;
        let fleet_firmware = demo_fleet_firmware(&key)?;
        println!("server: LwM2M over DTLS on {dm_uri}");
        println!("bootstrap: Bootstrap-Server over DTLS on {bootstrap_uri}");
        println!(
            "firmware: {} {} ({} bytes) in the repository; the devices run {} from the factory",
            image.name,
            image.version,
            image.size,
            version_of_sequence(FACTORY_SEQUENCE)
        );
        println!(
            "firmware: {} holds {DEMO_FIRMWARE_NAME} {} signed for the devices too: upload it \
             on the console's Firmware & campaigns page and start a campaign",
            console_package.display(),
            version_of_sequence(CONSOLE_SEQUENCE)
        );
        println!(
            "fleet: {} simulated devices bootstrapping with their factory credentials from {}",
            args.devices,
            factory_dir.display()
        );
        let fleet = tokio::spawn(crate::fleet_bootstrap::run_with_firmware(
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
            Some(fleet_firmware),
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
