//! `cairn server`: the LwM2M device-management server with its embedded store, and
//! `cairn device add|list|remove` to manage the security information of devices in the store.
//!
//! Settings come from the command line, then `CAIRN_*` environment variables, then the
//! `--config` TOML file, then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cairn_dtls::Credentials;
use cairn_server::{
    DeviceCertificates, EmbeddedStore, LwM2mServer, SecurityInfo, SecurityMode, SecurityStore,
    ServerConfig, ServerEvent,
};
use cairn_store::{SecretBytes, X509Expectation};
use clap::{Args, Subcommand};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Deserialize;

/// Default data directory.
const DEFAULT_DATA_DIR: &str = "./cairn-data";

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML file with any of the settings below (`data_dir`, `coap_listen`, `dtls_listen`,
    /// `request_timeout_s`, `queue_timeout_s`, `models_dir`, `cert`, `key`, `ca`, `crl`,
    /// `web_listen`, `no_web`, `web_tls_cert`, `web_tls_key`, `web_tls_self_signed`,
    /// `web_public_url`, `telemetry_retention_days`, `bootstrap_ca`, `rotate_after`).
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Where the embedded store lives (default ./cairn-data).
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address for devices over plain CoAP (default 0.0.0.0:5683); only endpoints
    /// explicitly allowed NoSec may register there.
    #[arg(long, env = "CAIRN_COAP_LISTEN")]
    coap_listen: Option<SocketAddr>,
    /// UDP address for devices over CoAP/DTLS (default 0.0.0.0:5684).
    #[arg(long, env = "CAIRN_DTLS_LISTEN")]
    dtls_listen: Option<SocketAddr>,
    /// Do not listen for plain CoAP at all.
    #[arg(long, env = "CAIRN_NO_COAP")]
    no_coap: bool,
    /// Seconds an API request waits for a device's answer (default 30).
    #[arg(long, env = "CAIRN_REQUEST_TIMEOUT_S")]
    request_timeout_s: Option<u64>,
    /// Seconds a request to a sleeping queue-mode device waits for it (default 600).
    #[arg(long, env = "CAIRN_QUEUE_TIMEOUT_S")]
    queue_timeout_s: Option<u64>,
    /// A directory of extra object models (OMA DDF XML files).
    #[arg(long, alias = "models", env = "CAIRN_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// The server's certificate chain (PEM, end entity first) for X.509 devices, with --key.
    #[arg(long, requires = "key", env = "CAIRN_CERT")]
    cert: Option<PathBuf>,
    /// The server's private key (PEM or DER): turns on the certificate modes of the DTLS
    /// listener (raw public keys; X.509 too with --cert and --ca).
    #[arg(long, env = "CAIRN_KEY")]
    key: Option<PathBuf>,
    /// Trust anchors (PEM) that device certificates must chain to.
    #[arg(long, requires = "key", env = "CAIRN_CA")]
    ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of the device CAs; repeat for several.
    #[arg(long, requires = "ca")]
    crl: Vec<PathBuf>,
    #[command(flatten)]
    web: WebArgs,
    /// UDP address of the Bootstrap-Server over plain CoAP (default 0.0.0.0:5783).
    #[arg(long, env = "CAIRN_BOOTSTRAP_COAP_LISTEN")]
    bootstrap_coap_listen: Option<SocketAddr>,
    /// UDP address of the Bootstrap-Server over DTLS (default 0.0.0.0:5784).
    #[arg(long, env = "CAIRN_BOOTSTRAP_DTLS_LISTEN")]
    bootstrap_dtls_listen: Option<SocketAddr>,
    /// Do not run the Bootstrap-Server.
    #[arg(long, env = "CAIRN_NO_BOOTSTRAP")]
    no_bootstrap: bool,
    /// Cairn's CA for the certificate-mode credentials the Bootstrap-Server generates. Without
    /// --key, the DM listener's key and certificate (DATA_DIR/dm-server.key, .pem) are issued
    /// by it on first start.
    #[command(flatten)]
    bootstrap_ca: crate::bootstrap_cmd::CaArgs,
    /// Rotate device-management credentials older than this (e.g. `90d`, `12h`, `30m`,
    /// `45s`), as `cairn keys rotate` does; reports go to DATA_DIR/rotation/reports. Off by
    /// default.
    #[arg(long, env = "CAIRN_ROTATE_AFTER", value_parser = parse_age)]
    rotate_after: Option<Duration>,
}

/// A duration as a number and a unit: `d`, `h`, `m` or `s`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: give a unit (d, h, m or s), e.g. 90d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a number followed by a unit"))?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{text:?}: the unit is d, h, m or s")),
    };
    let age = Duration::from_secs(number.saturating_mul(seconds));
    if age.is_zero() {
        return Err("the age must be positive".into());
    }
    Ok(age)
}

/// The certificate mode of the DTLS listener from `--cert`, `--key`, `--ca` and `--crl`,
/// or else from the configuration file.
fn device_certificates(
    args: &ServerArgs,
    file: &FileConfig,
) -> anyhow::Result<Option<DeviceCertificates>> {
    let cert = args.cert.as_ref().or(file.cert.as_ref());
    let ca = args.ca.as_ref().or(file.ca.as_ref());
    let Some(key) = args.key.as_ref().or(file.key.as_ref()) else {
        anyhow::ensure!(
            cert.is_none() && ca.is_none(),
            "the certificate modes need the server's private key (--key or `key`)"
        );
        return Ok(None);
    };
    let crl_files = if args.crl.is_empty() {
        file.crl.as_deref().unwrap_or_default()
    } else {
        args.crl.as_slice()
    };
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let credentials = match cert {
        Some(cert) => Credentials::from_pem(&read(cert)?, &read(key)?)
            .with_context(|| format!("{} with {}", cert.display(), key.display()))?,
        None => Credentials::raw_public_key(crate::coap_cmd::read_private_key(key)?),
    };
    let trust_anchors = match ca {
        Some(ca) => CertificateDer::pem_slice_iter(&read(ca)?)
            .map(|cert| cert.map(|cert| cert.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: not PEM certificates", ca.display()))?,
        None => Vec::new(),
    };
    let mut crls = Vec::new();
    for path in crl_files {
        for crl in CertificateRevocationListDer::pem_slice_iter(&read(path)?) {
            crls.push(
                crl.with_context(|| format!("{}: not a PEM CRL", path.display()))?
                    .to_vec(),
            );
        }
    }
    Ok(Some(DeviceCertificates {
        credentials,
        trust_anchors,
        crls,
    }))
}

/// The web console and REST API listener.
#[derive(Debug, Args, Default)]
pub struct WebArgs {
    /// TCP address of the web console and REST API (default 127.0.0.1:8080).
    #[arg(long, env = "CAIRN_WEB_LISTEN")]
    web_listen: Option<SocketAddr>,
    /// Do not start the web console and REST API.
    #[arg(long, env = "CAIRN_NO_WEB")]
    no_web: bool,
    /// PEM certificate chain: serve the console over HTTPS (with --web-tls-key).
    #[arg(long, env = "CAIRN_WEB_TLS_CERT", requires = "web_tls_key")]
    web_tls_cert: Option<PathBuf>,
    /// PEM private key of --web-tls-cert.
    #[arg(long, env = "CAIRN_WEB_TLS_KEY", requires = "web_tls_cert")]
    web_tls_key: Option<PathBuf>,
    /// Serve the console over HTTPS with a self-signed certificate, made on first start in
    /// the data directory (`web/self-signed.crt` and its key, 0600) and kept for later ones.
    #[arg(
        long,
        env = "CAIRN_WEB_TLS_SELF_SIGNED",
        conflicts_with = "web_tls_cert"
    )]
    web_tls_self_signed: bool,
    /// The console's URL as users reach it (for the printed links), when it is behind a
    /// proxy or a name.
    #[arg(long, env = "CAIRN_WEB_PUBLIC_URL")]
    web_public_url: Option<String>,
    /// Days the web side keeps observed values for its plots (default 7).
    #[arg(long, env = "CAIRN_TELEMETRY_RETENTION_DAYS")]
    telemetry_retention_days: Option<u64>,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    coap_listen: Option<SocketAddr>,
    dtls_listen: Option<SocketAddr>,
    no_coap: Option<bool>,
    request_timeout_s: Option<u64>,
    queue_timeout_s: Option<u64>,
    models_dir: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    crl: Option<Vec<PathBuf>>,
    web_listen: Option<SocketAddr>,
    no_web: Option<bool>,
    web_tls_cert: Option<PathBuf>,
    web_tls_key: Option<PathBuf>,
    web_tls_self_signed: Option<bool>,
    web_public_url: Option<String>,
    telemetry_retention_days: Option<u64>,
    bootstrap_ca: Option<PathBuf>,
    rotate_after: Option<String>,
}

/// The DM listener's certificate credentials for the Bootstrap-Server's generated
/// certificate-mode credentials: the given ones (`--key`), with Cairn's CA among the trust
/// anchors so the certificates it issues are accepted, or else a key and certificate issued by
/// Cairn's CA in the data directory (created on first start).
fn bootstrap_device_certificates(
    certificates: Option<DeviceCertificates>,
    data_dir: &Path,
    ca_dir: &Path,
) -> anyhow::Result<DeviceCertificates> {
    if crate::keys_cmd::ensure_ca(ca_dir, "Cairn CA")? {
        eprintln!("cairn server: created Cairn's CA in {}", ca_dir.display());
    }
    let ca_der = std::fs::read(ca_dir.join("ca.der"))
        .with_context(|| format!("cannot read {}/ca.der", ca_dir.display()))?;
    let mut certificates = match certificates {
        Some(certificates) => certificates,
        None => {
            std::fs::create_dir_all(data_dir)?;
            let prefix = data_dir.join("dm-server");
            crate::keys_cmd::ensure_server_certificate(ca_dir, &prefix, "cairn-dm-server")?;
            let read = |extension: &str| {
                let path = prefix.with_extension(extension);
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
            };
            DeviceCertificates {
                credentials: Credentials::from_pem(&read("pem")?, &read("key")?)
                    .context("the DM server's certificate")?,
                trust_anchors: Vec::new(),
                crls: Vec::new(),
            }
        }
    };
    if !certificates.trust_anchors.contains(&ca_der) {
        certificates.trust_anchors.push(ca_der);
    }
    Ok(certificates)
}

/// The web listener's settings, resolved from flags, environment and the config file.
pub struct WebSettings {
    pub listen: SocketAddr,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub public_url: Option<String>,
    pub retention: Duration,
}

impl WebSettings {
    /// `None` when the web side is disabled.
    fn resolve(
        args: WebArgs,
        file: &FileConfig,
        data_dir: &Path,
    ) -> anyhow::Result<Option<WebSettings>> {
        if args.no_web || file.no_web.unwrap_or(false) {
            return Ok(None);
        }
        let listen = match args.web_listen.or(file.web_listen) {
            Some(listen) => listen,
            None => cairn_web::DEFAULT_LISTEN.parse()?,
        };
        let tls = match (
            args.web_tls_cert.or(file.web_tls_cert.clone()),
            args.web_tls_key.or(file.web_tls_key.clone()),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) if args.web_tls_self_signed || file.web_tls_self_signed == Some(true) => {
                Some(self_signed_certificate(&data_dir.join("web"), listen)?)
            }
            (None, None) => None,
            _ => bail!("give both web_tls_cert and web_tls_key, or neither"),
        };
        let days = args
            .telemetry_retention_days
            .or(file.telemetry_retention_days)
            .unwrap_or(7);
        Ok(Some(WebSettings {
            listen,
            tls,
            public_url: args.web_public_url.or(file.web_public_url.clone()),
            retention: Duration::from_secs(days.saturating_mul(24 * 3600)),
        }))
    }
}

/// The self-signed certificate of the web listener in `dir`, made on first use: P-256, for
/// `localhost`, 127.0.0.1, ::1 and the listener's own address. Prints its SHA-256
/// fingerprint, for the browser's warning.
fn self_signed_certificate(dir: &Path, listen: SocketAddr) -> anyhow::Result<(PathBuf, PathBuf)> {
    use sha2::Digest;
    let cert_path = dir.join("self-signed.crt");
    let key_path = dir.join("self-signed.key");
    if !(cert_path.exists() && key_path.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
            names.push(listen.ip().to_string());
        }
        let certified = rcgen::generate_simple_self_signed(names)
            .context("cannot make the self-signed certificate")?;
        // The key first, created 0600: a certificate without its key is made anew next time.
        let _ = std::fs::remove_file(&key_path);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut key_file = options
            .open(&key_path)
            .with_context(|| format!("cannot create {}", key_path.display()))?;
        std::io::Write::write_all(
            &mut key_file,
            certified.signing_key.serialize_pem().as_bytes(),
        )?;
        key_file.sync_all()?;
        std::fs::write(&cert_path, certified.cert.pem())
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
    }
    let pem = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    let fingerprint = sha2::Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    eprintln!(
        "cairn server: web console certificate {} (self-signed), SHA-256 {fingerprint}",
        cert_path.display()
    );
    Ok((cert_path, key_path))
}

/// Starts the web console and REST API for `server`; prints its URL, and the one-time setup
/// link when there is no user yet. Returns the web side's state (to give it the
/// Bootstrap-Server with [`cairn_web::WebState::set_bootstrap`]).
pub async fn start_web(
    settings: WebSettings,
    server: &LwM2mServer,
    store: &EmbeddedStore,
) -> anyhow::Result<cairn_web::WebState> {
    let tls = match &settings.tls {
        Some((cert, key)) => Some(cairn_web::tls::server_config(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the web console (choose another address with \
                 --web-listen, or disable it with --no-web)",
                settings.listen
            )
        })?;
    let address = listener.local_addr()?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{address}"));
    let config = cairn_web::WebConfig {
        public_url,
        https: tls.is_some(),
        telemetry_retention: settings.retention,
        ..cairn_web::WebConfig::default()
    };
    let state =
        cairn_web::WebState::new(server.clone(), std::sync::Arc::new(store.clone()), config);
    let setup_link = state
        .issue_setup_link_if_no_users()
        .await
        .map_err(|e| anyhow::anyhow!("cannot issue the setup link: {}", e.message))?;
    state.spawn_background();
    let serving = state.clone();
    tokio::spawn(async move {
        if let Err(error) = cairn_web::serve(listener, serving, tls).await {
            tracing::error!(%error, "the web listener stopped");
        }
    });
    eprintln!("cairn server: web console on {scheme}://{address}");
    if let Some(link) = setup_link {
        // Printed, never logged: it is a one-time credential.
        eprintln!(
            "cairn server: no user yet; create the first administrator within 1 hour at\n  {link}"
        );
    }
    Ok(state)
}

fn read_config(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

pub fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let file = read_config(args.config.as_deref())?;
    let certificates = device_certificates(&args, &file)?;
    let data_dir = args
        .data_dir
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let web = WebSettings::resolve(args.web, &file, &data_dir)?;
    let mut config = ServerConfig::default();
    let defaults = config.clone();
    config.coap_listen = if args.no_coap || file.no_coap.unwrap_or(false) {
        None
    } else {
        args.coap_listen
            .or(file.coap_listen)
            .or(defaults.coap_listen)
    };
    config.dtls_listen = args
        .dtls_listen
        .or(file.dtls_listen)
        .or(defaults.dtls_listen);
    if let Some(seconds) = args.request_timeout_s.or(file.request_timeout_s) {
        config.request_timeout = Duration::from_secs(seconds);
    }
    if let Some(seconds) = args.queue_timeout_s.or(file.queue_timeout_s) {
        config.queue_timeout = Duration::from_secs(seconds);
    }
    if let Some(dir) = args.models_dir.or(file.models_dir) {
        let mut models = cairn_lwm2m::ModelRegistry::with_core_models();
        let count = models
            .load_dir(&dir)
            .with_context(|| format!("cannot load models from {}", dir.display()))?;
        tracing::info!(count, dir = %dir.display(), "object models loaded");
        config.models = std::sync::Arc::new(models);
    }
    let rotate_after = match (args.rotate_after, &file.rotate_after) {
        (Some(age), _) => Some(age),
        (None, Some(text)) => {
            Some(parse_age(text).map_err(|e| anyhow::anyhow!("rotate_after: {e}"))?)
        }
        (None, None) => None,
    };
    anyhow::ensure!(
        rotate_after.is_none() || !args.no_bootstrap,
        "--rotate-after needs the Bootstrap-Server (drop --no-bootstrap)"
    );
    let mut bootstrap_ca = args.bootstrap_ca;
    bootstrap_ca.dir = bootstrap_ca
        .dir
        .or(file.bootstrap_ca)
        .or_else(|| Some(data_dir.join("ca")));
    let bootstrap_certificates = if args.no_bootstrap {
        config.certificates = certificates;
        None
    } else {
        let ca_dir = bootstrap_ca.dir.clone().unwrap_or_default();
        let certificates = bootstrap_device_certificates(certificates, &data_dir, &ca_dir)?;
        let server_public_key = certificates.credentials.key.subject_public_key_info();
        config.certificates = Some(certificates);
        Some(crate::bootstrap_cmd::dm_certificates(
            &data_dir,
            &bootstrap_ca,
            Some(server_public_key),
        )?)
    };
    let bootstrap_settings =
        (!args.no_bootstrap).then_some((args.bootstrap_coap_listen, args.bootstrap_dtls_listen));
    let no_coap = args.no_coap || file.no_coap.unwrap_or(false);
    let store = open_store(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = LwM2mServer::start(
            config,
            cairn_server::bootstrap::security::device_management_stores(store.clone()),
        )
        .await?;
        tokio::spawn(crate::campaign_cmd::serve_requests(
            data_dir.clone(),
            server.clone(),
        ));
        let web = match web {
            Some(web) => Some(start_web(web, &server, &store).await?),
            None => None,
        };
        let bootstrap = if let Some((coap, dtls)) = bootstrap_settings {
            let defaults = cairn_server::bootstrap::BootstrapServerConfig::default();
            let coap = if no_coap {
                None
            } else {
                coap.or(defaults.coap_listen)
            };
            let mut bootstrap_config =
                crate::bootstrap_cmd::server_config(coap, dtls.or(defaults.dtls_listen));
            bootstrap_config.certificates = bootstrap_certificates;
            let bootstrap = cairn_server::bootstrap::BootstrapServer::start(
                bootstrap_config,
                cairn_server::bootstrap::BootstrapStores::embedded(store.clone()),
            )
            .await?;
            bootstrap.follow(&server);
            if let Some(web) = &web {
                web.set_bootstrap(bootstrap.clone());
            }
            if let Some(age) = rotate_after {
                eprintln!("cairn server: credentials older than {age:?} are rotated");
                let reports = data_dir.clone();
                bootstrap.schedule_rotation(
                    &server,
                    cairn_server::bootstrap::RotationSchedule::after(age),
                    move |report| crate::rotate_cmd::scheduled_report(&reports, report),
                );
            }
            tokio::spawn(crate::rotate_cmd::serve_requests(
                data_dir.clone(),
                std::sync::Arc::new(store),
                bootstrap.clone(),
                server.clone(),
            ));
            let (coap, dtls) = bootstrap.local_addrs();
            for (scheme, address) in [("coap", coap), ("coaps", dtls)] {
                if let Some(address) = address {
                    eprintln!("cairn server: bootstrap on {scheme}://{address}");
                }
            }
            let mut events = bootstrap.events();
            tokio::spawn(async move {
                while let Ok(event) = events.recv().await {
                    crate::bootstrap_cmd::log_event(&event);
                }
            });
            Some(bootstrap)
        } else {
            None
        };
        let (coap, dtls) = server.local_addrs();
        eprintln!("cairn server: data in {}", data_dir.display());
        if let Some(address) = coap {
            eprintln!("cairn server: devices on coap://{address}");
        }
        if let Some(address) = dtls {
            eprintln!("cairn server: devices on coaps://{address}");
        }
        eprintln!(
            "cairn server: {} registrations restored",
            server.registration_count()
        );
        let mut events = server.events();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => log_event(&event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "event log fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        if let Some(bootstrap) = bootstrap {
            bootstrap.shutdown().await;
        }
        server.shutdown().await;
        anyhow::Ok(())
    })
}

/// Logs what the library does not log itself (it logs registrations as they happen).
fn log_event(event: &ServerEvent) {
    match event {
        ServerEvent::RequestQueued { endpoint } => tracing::debug!(%endpoint, "request queued"),
        ServerEvent::Notification { endpoint, path, .. } => {
            tracing::debug!(%endpoint, %path, "notification")
        }
        ServerEvent::Send { endpoint, nodes } => {
            tracing::info!(%endpoint, values = nodes.len(), "send")
        }
        ServerEvent::Registered(_)
        | ServerEvent::Updated(_)
        | ServerEvent::Deregistered(_)
        | ServerEvent::Expired(_) => {}
    }
}

pub(crate) fn open_store(data_dir: &Path) -> anyhow::Result<EmbeddedStore> {
    EmbeddedStore::open(data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (is a cairn server already running on it?)",
            data_dir.display()
        )
    })
}

// ----- cairn device -----

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The server's data directory (default ./cairn-data).
    #[arg(long, global = true, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Add or replace a device's security information.
    Add(AddArgs),
    /// List devices (identities and key fingerprints, never keys).
    List,
    /// Add many PSK devices at once from a file of `endpoint,identity,hexkey` lines
    /// (`#` starts a comment), in one durable commit.
    Import {
        #[arg(long)]
        psk_file: PathBuf,
    },
    /// Remove a device's security information.
    Remove {
        #[arg(long)]
        endpoint: String,
    },
}

#[derive(Args)]
struct AddArgs {
    /// Endpoint client name.
    #[arg(long)]
    endpoint: String,
    /// PSK identity (with --psk-key).
    #[arg(long, requires = "psk_key", conflicts_with = "no_sec")]
    psk_identity: Option<String>,
    /// PSK as hexadecimal digits (at least 16 bytes); prefer the CAIRN_PSK_KEY variable,
    /// which does not show in the process list.
    #[arg(long, env = "CAIRN_PSK_KEY", hide_env_values = true)]
    psk_key: Option<String>,
    /// Allow this endpoint to register without DTLS.
    #[arg(long)]
    no_sec: bool,
    /// The device's raw public key (PEM `PUBLIC KEY` or DER SubjectPublicKeyInfo, as
    /// `cairn keys gen-ec` writes it): the device authenticates with it (RFC 7250).
    #[arg(long, conflicts_with_all = ["psk_identity", "no_sec", "x509"])]
    rpk: Option<PathBuf>,
    /// The device authenticates with an X.509 certificate from the server's --ca whose common
    /// name is the endpoint name.
    #[arg(long, conflicts_with_all = ["psk_identity", "no_sec"])]
    x509: bool,
}

/// The security information of a credential file; every key must be at least 16 bytes.
fn read_psk_file(path: &Path) -> anyhow::Result<Vec<SecurityInfo>> {
    let created_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    crate::psk_file::read(path)?
        .into_iter()
        .map(|entry| {
            anyhow::ensure!(
                entry.key.0.len() >= 16,
                "{}: the key of {} is shorter than 16 bytes",
                path.display(),
                entry.endpoint
            );
            Ok(SecurityInfo {
                endpoint: entry.endpoint,
                mode: SecurityMode::Psk {
                    identity: entry.identity,
                    key: SecretBytes::new(entry.key.0.to_vec()),
                },
                created_at_ms,
            })
        })
        .collect()
}

impl std::fmt::Debug for AddArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddArgs")
            .field("endpoint", &self.endpoint)
            .field("psk_identity", &self.psk_identity)
            .field("no_sec", &self.no_sec)
            .field("rpk", &self.rpk)
            .field("x509", &self.x509)
            .finish_non_exhaustive()
    }
}

pub fn run_device(args: DeviceArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let store = open_store(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.command {
            DeviceCommand::Add(add) => {
                let public_key_der = match &add.rpk {
                    Some(rpk) => Some(crate::coap_cmd::read_public_key(rpk)?),
                    None => None,
                };
                let mode = match (add.psk_identity, add.psk_key, add.no_sec) {
                    _ if add.x509 => {
                        SecurityMode::X509(X509Expectation::CommonName(add.endpoint.clone()))
                    }
                    _ if public_key_der.is_some() => SecurityMode::Rpk {
                        public_key_der: public_key_der.unwrap_or_default(),
                    },
                    (Some(identity), Some(key), false) => {
                        let key =
                            crate::hex::decode(&key).context("--psk-key must be hexadecimal")?;
                        anyhow::ensure!(
                            key.len() >= 16,
                            "a PSK must be at least 16 bytes (128 bits)"
                        );
                        SecurityMode::Psk {
                            identity: identity.into_bytes(),
                            key: SecretBytes::new(key),
                        }
                    }
                    (None, _, true) => SecurityMode::NoSec,
                    _ => bail!("give --psk-identity with --psk-key, --rpk, --x509 or --no-sec"),
                };
                let created_at_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let info = SecurityInfo {
                    endpoint: add.endpoint.clone(),
                    mode,
                    created_at_ms,
                };
                let replaced = store.put_security_info(info).await?;
                println!(
                    "{} {}",
                    if replaced.is_some() {
                        "replaced"
                    } else {
                        "added"
                    },
                    add.endpoint
                );
            }
            DeviceCommand::List => {
                let mut after: Option<String> = None;
                println!("{:<32} {:<6} {:<32} key", "endpoint", "mode", "identity");
                loop {
                    let page = store.list_security_summaries(after.as_deref(), 500).await?;
                    for summary in &page.items {
                        println!(
                            "{:<32} {:<6} {:<32} {}",
                            summary.endpoint,
                            format!("{:?}", summary.mode).to_lowercase(),
                            summary.identity.as_deref().unwrap_or("-"),
                            summary.key_fingerprint.as_deref().unwrap_or("-"),
                        );
                    }
                    match page.next_cursor {
                        Some(cursor) => after = Some(cursor),
                        None => break,
                    }
                }
            }
            DeviceCommand::Import { psk_file } => {
                let infos = read_psk_file(&psk_file)?;
                let count = infos.len();
                store.import_security_infos_blocking(&infos)?;
                println!("imported {count} devices");
            }
            DeviceCommand::Remove { endpoint } => {
                match store.remove_security_info(&endpoint).await? {
                    Some(_) => println!("removed {endpoint}"),
                    None => bail!("no device {endpoint}"),
                }
            }
        }
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_a_number_and_a_unit() {
        assert_eq!(parse_age("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_age("45s"), Ok(Duration::from_secs(45)));
        for wrong in ["90", "d", "0d", "5w", "-1d", "1.5d", ""] {
            assert!(parse_age(wrong).is_err(), "{wrong}");
        }
    }
}
