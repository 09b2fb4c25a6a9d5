//! `cairn demo`: an LwM2M server on its embedded store and a fleet of simulated devices that
//! register with it over DTLS-PSK, each with its own random key; the server then reads
//! every device's Device object and observes their clocks, and prints what happens until
//! Ctrl-C.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cairn_lwm2m::node::{LwM2mNode, ResourceValue};
use cairn_lwm2m::value::Value;
use cairn_lwm2m::{AttributeName, AttributeSet, AttributeValue, LwM2mPath};
use cairn_server::{
    EmbeddedStore, LwM2mServer, SecurityInfo, SecurityMode, ServerConfig, ServerEvent, Stores,
};
use cairn_store::SecretBytes;
use clap::Args;
use rand::RngCore;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Data directory of the demo's server (created; its devices are added there).
    #[arg(long, default_value = "./cairn-demo")]
    data_dir: PathBuf,
    /// UDP address the server listens on for DTLS.
    #[arg(long, default_value = "127.0.0.1:5684")]
    dtls_listen: std::net::SocketAddr,
    /// TCP address of the web console and REST API.
    #[arg(long, default_value = cairn_web::DEFAULT_LISTEN)]
    web_listen: std::net::SocketAddr,
    /// Do not start the web console.
    #[arg(long)]
    no_web: bool,
}

struct Fleet(Child);

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be positive");
    std::fs::create_dir_all(&args.data_dir)?;
    let store = EmbeddedStore::open(&args.data_dir)
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    // Fresh random keys for every device, this run: never derived from names.
    let created_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut infos = Vec::new();
    let mut lines = String::new();
    for i in 0..args.devices {
        let mut key = [0u8; 16];
        rand::rng().fill_bytes(&mut key);
        let endpoint = format!("demo-meter-{i:03}");
        let identity = format!("{endpoint}-psk");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        lines.push_str(&format!("{endpoint},{identity},{hex}\n"));
        infos.push(SecurityInfo {
            endpoint,
            mode: SecurityMode::Psk {
                identity: identity.into_bytes(),
                key: SecretBytes::new(key.to_vec()),
            },
            created_at_ms,
        });
    }
    store.import_security_infos_blocking(&infos)?;
    let psk_file = args.data_dir.join("demo-fleet.psk");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&psk_file)?;
        file.write_all(lines.as_bytes())?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = ServerConfig {
            coap_listen: None,
            dtls_listen: Some(args.dtls_listen),
            ..ServerConfig::default()
        };
        let server = LwM2mServer::start(config, Stores::embedded(store.clone())).await?;
        let mut events = server.events();
        if !args.no_web {
            let web = crate::server_cmd::WebSettings {
                listen: args.web_listen,
                tls: None,
                public_url: None,
                retention: std::time::Duration::from_secs(7 * 24 * 3600),
            };
            crate::server_cmd::start_web(web, &server, &store).await?;
        }
        println!("server: LwM2M over DTLS on coaps://{}", args.dtls_listen);
        println!(
            "server: {} devices provisioned with random pre-shared keys",
            args.devices
        );
        let _fleet = Fleet(
            Command::new(std::env::current_exe()?)
                .args([
                    "fleet",
                    "--server",
                    &format!("coaps://{}", args.dtls_listen),
                    "--psk-file",
                ])
                .arg(&psk_file)
                .args([
                    "--rate",
                    "20",
                    "--send-interval",
                    "30",
                    "--hold",
                    "1000000000",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start the simulated fleet")?,
        );
        println!("fleet: {} simulated devices starting", args.devices);
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = tokio::signal::ctrl_c() => break,
            };
            let Ok(event) = event else {
                continue;
            };
            match event {
                ServerEvent::Registered(registration) => {
                    println!(
                        "registered   {} from {}",
                        registration.endpoint, registration.peer_address
                    );
                    let server = server.clone();
                    tokio::spawn(async move { manage(server, registration.endpoint).await });
                }
                ServerEvent::Updated(registration) => {
                    println!("updated      {}", registration.endpoint)
                }
                ServerEvent::Deregistered(registration) => {
                    println!("deregistered {}", registration.endpoint)
                }
                ServerEvent::Expired(registration) => {
                    println!("expired      {}", registration.endpoint)
                }
                ServerEvent::Notification {
                    endpoint,
                    path,
                    node,
                } => {
                    println!("notification {endpoint} {path} = {}", show(&node))
                }
                ServerEvent::Send { endpoint, nodes } => {
                    let values: Vec<String> = nodes
                        .iter()
                        .map(|(p, n)| format!("{p} = {}", show(n)))
                        .collect();
                    println!("send         {endpoint} {}", values.join(", "));
                }
                ServerEvent::RequestQueued { endpoint } => {
                    println!("queued       request for {endpoint}")
                }
            }
        }
        server.shutdown().await;
        anyhow::Ok(())
    })
}

/// What the server does with a new device: read its Device object, observe its clock.
async fn manage(server: LwM2mServer, endpoint: String) {
    match server
        .read(&endpoint, LwM2mPath::ObjectInstance(3, 0), None)
        .await
    {
        Ok(LwM2mNode::ObjectInstance(device)) => {
            let text = |id: u16| match device.resources.get(&id).map(|r| &r.value) {
                Some(ResourceValue::Single(value)) => show_value(value),
                _ => "-".into(),
            };
            println!(
                "read         {endpoint} /3/0: manufacturer {}, model {}, serial {}, firmware {}",
                text(0),
                text(1),
                text(2),
                text(3)
            );
        }
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
