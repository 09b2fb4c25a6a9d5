//! `cairn bootstrap`: the LwM2M Bootstrap-Server alone (`serve`; `cairn server` also runs it
//! beside the device-management server), and its data: the X25519 key factory manifests are
//! sealed to (`keygen`), factory credentials (`import`), configuration templates for groups of
//! devices and per-device configurations (`template`, `config`), and what happened (`status`).
//!
//! Templates never hold keys: every device matching a template gets credentials generated for
//! it at bootstrap. A per-device configuration may give an explicit random PSK, which is
//! refused when it is short, made from the endpoint name or identity, or used by another
//! device.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_server::bootstrap::credentials::DmCertificates;
use cairn_server::bootstrap::{
    BootstrapEvent, BootstrapServer, BootstrapServerConfig, BootstrapStores,
};
use cairn_store::{
    AclConfig, BootstrapSettings, BootstrapStore, BootstrapTemplate, CredentialKind,
    DeviceBootstrapConfig, DmCredentialSource, DmServerConfig, EmbeddedStore, PskCredential,
    SecretBytes,
};
use clap::{Args, Subcommand, ValueEnum};

/// Default data directory (shared with `cairn server`).
const DEFAULT_DATA_DIR: &str = "./cairn-data";

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The data directory (default ./cairn-data).
    #[arg(long, global = true, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: BootstrapCommand,
}

#[derive(Debug, Subcommand)]
enum BootstrapCommand {
    /// Run the Bootstrap-Server alone (no device-management server) until Ctrl-C.
    Serve(ServeArgs),
    /// Create the X25519 key pair factory manifests are sealed to; prints the public key.
    Keygen {
        /// Also write the public key (hex) to this file.
        #[arg(long)]
        public_out: Option<PathBuf>,
    },
    /// Import the factory credentials of a `cairn keys factory` output directory (or its
    /// manifest.toml), in one commit.
    Import {
        #[arg(long)]
        factory: PathBuf,
    },
    /// Configuration templates for groups of devices.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Per-device configurations.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Devices, their bootstrap history and credential state (never keys).
    Status {
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// UDP address for plain CoAP (default 0.0.0.0:5783).
    #[arg(long, env = "CAIRN_BOOTSTRAP_COAP_LISTEN")]
    coap_listen: Option<SocketAddr>,
    /// UDP address for CoAP over DTLS (default 0.0.0.0:5784).
    #[arg(long, env = "CAIRN_BOOTSTRAP_DTLS_LISTEN")]
    dtls_listen: Option<SocketAddr>,
    /// Do not listen for plain CoAP.
    #[arg(long)]
    no_coap: bool,
    /// The device-management server's public key (PEM `PUBLIC KEY` or DER, as `cairn keys
    /// public` writes it): lets the server give raw-public-key credentials.
    #[arg(long)]
    dm_public_key: Option<PathBuf>,
    #[command(flatten)]
    ca: CaArgs,
}

/// Cairn's CA, which issues the devices' X.509 device-management certificates.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// The CA directory (`cairn keys ca init` layout); default DATA_DIR/ca, created on first
    /// start if absent.
    #[arg(long = "bootstrap-ca", env = "CAIRN_BOOTSTRAP_CA")]
    pub dir: Option<PathBuf>,
    /// Days the device certificates it issues are valid.
    #[arg(long, default_value_t = 365)]
    pub device_cert_days: i64,
}

/// The kind of device-management credential generated for each device at bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialArg {
    /// A pre-shared key with a random identity.
    Psk,
    /// A P-256 key pair; the DM server knows its public key (RFC 7250).
    Rpk,
    /// A P-256 key pair with a certificate from Cairn's CA naming the endpoint.
    X509,
}

impl From<CredentialArg> for CredentialKind {
    fn from(kind: CredentialArg) -> CredentialKind {
        match kind {
            CredentialArg::Psk => CredentialKind::Psk,
            CredentialArg::Rpk => CredentialKind::Rpk,
            CredentialArg::X509 => CredentialKind::X509,
        }
    }
}

/// What the Bootstrap-Server needs for certificate-mode credentials: the DM server's public
/// key (`None`: raw public keys are not offered) and Cairn's CA from `ca.dir`, else
/// `data_dir`/ca, created if absent.
pub fn dm_certificates(
    data_dir: &Path,
    ca: &CaArgs,
    server_public_key: Option<Vec<u8>>,
) -> anyhow::Result<std::sync::Arc<DmCertificates>> {
    let dir = ca.dir.clone().unwrap_or_else(|| data_dir.join("ca"));
    if crate::keys_cmd::ensure_ca(&dir, "Cairn CA")? {
        eprintln!("cairn: created Cairn's CA in {}", dir.display());
    }
    Ok(std::sync::Arc::new(DmCertificates {
        server_public_key: server_public_key.unwrap_or_default(),
        authority: Some(crate::keys_cmd::bootstrap_authority(
            &dir,
            ca.device_cert_days,
        )?),
    }))
}

/// What a device is given, from the command line.
#[derive(Debug, Args)]
struct ServerSettingsArgs {
    /// The device-management server's URI.
    #[arg(long)]
    dm_uri: String,
    /// The Bootstrap-Server URI written into the device's bootstrap account.
    #[arg(long)]
    bootstrap_uri: String,
    #[arg(long, default_value_t = 1)]
    short_server_id: u16,
    #[arg(long, default_value_t = 300)]
    lifetime: u32,
    #[arg(long, default_value = "U")]
    binding: String,
    /// Keep the factory bootstrap credential instead of replacing it at each bootstrap.
    #[arg(long)]
    keep_bootstrap_credential: bool,
    /// Also write an OSCORE object instance for the server.
    #[arg(long)]
    oscore: bool,
    /// No security for the DM server (coap://); the device may bootstrap without DTLS.
    #[arg(long)]
    nosec: bool,
    /// Give the server full rights on these objects (Access Control instances), e.g. `3,4`.
    #[arg(long, value_delimiter = ',')]
    acl_objects: Vec<u16>,
    /// The device-management credential generated for each device at bootstrap.
    #[arg(long, value_enum, default_value_t = CredentialArg::Psk)]
    credential: CredentialArg,
}

impl ServerSettingsArgs {
    fn settings(&self, credential: DmCredentialSource) -> BootstrapSettings {
        let credential = if self.nosec {
            DmCredentialSource::NoSec
        } else {
            credential
        };
        BootstrapSettings {
            servers: vec![DmServerConfig {
                short_server_id: self.short_server_id,
                uri: self.dm_uri.clone(),
                lifetime_s: self.lifetime,
                binding: self.binding.clone(),
                credential,
                oscore: self.oscore,
            }],
            acl: self
                .acl_objects
                .iter()
                .map(|object| AclConfig {
                    object_id: *object,
                    instance_id: 0,
                    rights: vec![(self.short_server_id, 0b1_1111)],
                    owner: self.short_server_id,
                })
                .collect(),
            replace_bootstrap_credential: !self.keep_bootstrap_credential,
            bootstrap_uri: self.bootstrap_uri.clone(),
            allow_unsecured: self.nosec,
        }
    }
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Add or replace a template: every device whose endpoint name starts with PREFIX (and has
    /// no configuration of its own) gets this server, with credentials generated for it.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        prefix: String,
        #[command(flatten)]
        settings: ServerSettingsArgs,
    },
    List,
    Remove {
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Add or replace one device's configuration. Without --psk-identity the DM credential is
    /// generated at bootstrap; with it, the key is read from the CAIRN_PSK_HEX environment
    /// variable (never from the command line, where other users could see it).
    Add {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        psk_identity: Option<String>,
        #[command(flatten)]
        settings: ServerSettingsArgs,
    },
    Remove {
        #[arg(long)]
        endpoint: String,
    },
}

fn open_store(data_dir: &Path) -> anyhow::Result<EmbeddedStore> {
    EmbeddedStore::open(data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (is a cairn server already running on it?)",
            data_dir.display()
        )
    })
}

/// The Bootstrap-Server's settings from listen addresses (`None`: off).
pub fn server_config(
    coap_listen: Option<SocketAddr>,
    dtls_listen: Option<SocketAddr>,
) -> BootstrapServerConfig {
    BootstrapServerConfig {
        coap_listen,
        dtls_listen,
        ..BootstrapServerConfig::default()
    }
}

/// Logs the Bootstrap-Server's events.
pub fn log_event(event: &BootstrapEvent) {
    match event {
        BootstrapEvent::Started { endpoint } => tracing::info!(%endpoint, "bootstrap started"),
        BootstrapEvent::Finished { endpoint } => eprintln!("bootstrap finished: {endpoint}"),
        BootstrapEvent::Failed {
            endpoint,
            step,
            reason,
        } => eprintln!("bootstrap failed: {endpoint} at {step}: {reason}"),
        BootstrapEvent::CredentialsProven { endpoint } => {
            eprintln!("new credentials in use, previous ones retired: {endpoint}")
        }
        BootstrapEvent::Refused { endpoint, reason } => {
            tracing::info!(%endpoint, %reason, "bootstrap refused")
        }
    }
}

pub fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.command {
        BootstrapCommand::Serve(serve) => runtime.block_on(serve_alone(&data_dir, serve)),
        BootstrapCommand::Keygen { public_out } => {
            let public = crate::factory_cmd::create_server_key(&data_dir)?;
            let text: String = public.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(path) = public_out {
                std::fs::write(&path, format!("{text}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!("{text}");
            Ok(())
        }
        BootstrapCommand::Import { factory } => {
            let manifest = if factory.is_dir() {
                factory.join("manifest.toml")
            } else {
                factory
            };
            let devices = crate::factory_cmd::read_manifest(&manifest, &data_dir)?;
            let count = devices.len();
            let store = open_store(&data_dir)?;
            runtime
                .block_on(store.import_device_credentials(devices))
                .context("import refused (nothing was imported)")?;
            eprintln!("cairn bootstrap import: {count} devices");
            Ok(())
        }
        BootstrapCommand::Template { command } => {
            let store = open_store(&data_dir)?;
            runtime.block_on(template(&store, command))
        }
        BootstrapCommand::Config { command } => {
            let store = open_store(&data_dir)?;
            runtime.block_on(config(&store, command))
        }
        BootstrapCommand::Status { endpoint } => {
            let store = open_store(&data_dir)?;
            runtime.block_on(status(&store, endpoint))
        }
    }
}

async fn serve_alone(data_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let store = open_store(data_dir)?;
    let defaults = BootstrapServerConfig::default();
    let coap = if args.no_coap {
        None
    } else {
        args.coap_listen.or(defaults.coap_listen)
    };
    let dtls = args.dtls_listen.or(defaults.dtls_listen);
    let server_public_key = match &args.dm_public_key {
        Some(path) => Some(crate::coap_cmd::read_public_key(path)?),
        None => None,
    };
    let mut config = server_config(coap, dtls);
    config.certificates = Some(dm_certificates(data_dir, &args.ca, server_public_key)?);
    let server = BootstrapServer::start(config, BootstrapStores::embedded(store)).await?;
    let (coap, dtls) = server.local_addrs();
    eprintln!("cairn bootstrap: data in {}", data_dir.display());
    if let Some(address) = coap {
        eprintln!("cairn bootstrap: devices on coap://{address}");
    }
    if let Some(address) = dtls {
        eprintln!("cairn bootstrap: devices on coaps://{address}");
    }
    let mut events = server.events();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => log_event(&event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.shutdown().await;
    Ok(())
}

async fn template(store: &EmbeddedStore, command: TemplateCommand) -> anyhow::Result<()> {
    match command {
        TemplateCommand::Add {
            name,
            prefix,
            settings,
        } => {
            store
                .put_bootstrap_template(BootstrapTemplate {
                    name: name.clone(),
                    endpoint_prefix: prefix,
                    settings: settings
                        .settings(DmCredentialSource::Generate(settings.credential.into())),
                })
                .await
                .context("template refused")?;
            eprintln!("template {name} stored");
        }
        TemplateCommand::List => {
            for template in store.list_bootstrap_templates().await? {
                let servers: Vec<&str> = template
                    .settings
                    .servers
                    .iter()
                    .map(|s| s.uri.as_str())
                    .collect();
                println!(
                    "{}\tprefix={:?}\tservers={}\treplace_bootstrap_credential={}",
                    template.name,
                    template.endpoint_prefix,
                    servers.join(","),
                    template.settings.replace_bootstrap_credential
                );
            }
        }
        TemplateCommand::Remove { name } => {
            anyhow::ensure!(
                store.remove_bootstrap_template(&name).await?,
                "no template {name:?}"
            );
        }
    }
    Ok(())
}

async fn config(store: &EmbeddedStore, command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Add {
            endpoint,
            psk_identity,
            settings,
        } => {
            let credential = match psk_identity {
                Some(_) if settings.credential != CredentialArg::Psk => {
                    anyhow::bail!("--psk-identity gives a PSK: it needs --credential psk")
                }
                Some(identity) => {
                    let hex = zeroize::Zeroizing::new(std::env::var("CAIRN_PSK_HEX").context(
                        "an explicit PSK is read from CAIRN_PSK_HEX (hex digits of random bytes)",
                    )?);
                    DmCredentialSource::ExplicitPsk(PskCredential {
                        identity: identity.into_bytes(),
                        key: SecretBytes::new(crate::hex::decode(&hex)?),
                    })
                }
                None => DmCredentialSource::Generate(settings.credential.into()),
            };
            store
                .put_bootstrap_config(DeviceBootstrapConfig {
                    endpoint: endpoint.clone(),
                    settings: settings.settings(credential),
                })
                .await
                .context("configuration refused")?;
            eprintln!("configuration of {endpoint} stored");
        }
        ConfigCommand::Remove { endpoint } => {
            anyhow::ensure!(
                store.remove_bootstrap_config(&endpoint).await?,
                "no configuration for {endpoint:?}"
            );
        }
    }
    Ok(())
}

async fn status(store: &EmbeddedStore, endpoint: Option<String>) -> anyhow::Result<()> {
    let endpoints = match endpoint {
        Some(endpoint) => vec![endpoint],
        None => {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store.list_device_endpoints(after.as_deref(), 500).await?;
                all.extend(page.items);
                match page.next_cursor {
                    Some(cursor) => after = Some(cursor),
                    None => break all,
                }
            }
        }
    };
    for endpoint in endpoints {
        let Some(device) = store.get_device_credentials(&endpoint).await? else {
            println!("{endpoint}\tunknown");
            continue;
        };
        let dm = match &device.dm {
            Some(dm) if dm.proven => "in use",
            Some(dm) if dm.previous.is_some() => "replacing (old one still accepted)",
            Some(_) => "written, not used yet",
            None => "none",
        };
        let kind = match device.dm.as_ref().map(|dm| dm.kind) {
            Some(CredentialKind::Psk) => "psk",
            Some(CredentialKind::Rpk) => "rpk",
            Some(CredentialKind::X509) => "x509",
            None => "-",
        };
        println!(
            "{endpoint}\tbootstrap_identity={}\tbootstrap_credential={}\tdm_credential={dm}\tdm_kind={kind}\tattempts={}\tfinished={}\tlast={}{}",
            String::from_utf8_lossy(&device.bootstrap.identity),
            if device.bootstrap_previous.is_some() {
                "replacing (old one still accepted)"
            } else {
                "in use"
            },
            device.status.attempts,
            device.status.finished,
            device.status.last_result.as_deref().unwrap_or("-"),
            if device.status.rotation_requested {
                "\trotation=requested"
            } else {
                ""
            },
        );
    }
    Ok(())
}
