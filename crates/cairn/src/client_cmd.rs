//! `cairn client`: one LwM2M device with the standard objects (Security, Server, Access
//! Control, Device, Connectivity Monitoring) that registers with a server over `coap://` or
//! `coaps://` (DTLS with a PSK, an X.509 certificate or a raw public key), stays registered
//! until Ctrl-C, then de-registers.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use cairn_client::objects::{
    Connectivity, DeviceInfo, DeviceObject, SecurityMode, SecurityObject, ServerInstance,
    standard_tree, system_time,
};
use cairn_client::{
    Client, ClientAction, ClientCore, Event, RegistrationEvent, RegistrationSettings, RetryPolicy,
    ServerConnection,
};
use cairn_coap::{CoapUri, Config};
use cairn_dtls::{
    ClientCertificateConfig, Credentials, PeerVerifier, Psk, RawPublicKeys, X509Verifier,
};
use cairn_lwm2m::{ModelRegistry, Version};
use clap::Args;
use zeroize::Zeroizing;

/// A pre-shared key given as hexadecimal digits; zeroized on drop, `Debug` shows only its
/// length.
#[derive(Clone)]
pub struct PskKey(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for PskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PskKey({} bytes)", self.0.len())
    }
}

impl FromStr for PskKey {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<PskKey> {
        anyhow::ensure!(!text.trim().is_empty(), "the key is empty");
        Ok(PskKey(Zeroizing::new(crate::hex::decode(text)?)))
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Endpoint client name.
    #[arg(long)]
    endpoint: String,
    /// LwM2M Server URI: `coap://host:5683` or `coaps://host:5684` (DTLS: PSK, X.509 or RPK).
    #[arg(long)]
    server: String,
    /// PSK identity (`coaps://`).
    #[arg(long, requires = "psk_key")]
    psk_identity: Option<String>,
    /// PSK as hexadecimal digits (`coaps://`).
    #[arg(long, requires = "psk_identity")]
    psk_key: Option<PskKey>,
    /// Registration lifetime, seconds.
    #[arg(long, default_value_t = 300)]
    lifetime: u32,
    /// LwM2M version to register with (1.0 or 1.1).
    #[arg(long, default_value = "1.1")]
    lwm2m_version: Version,
    /// Queue mode: the device may sleep between exchanges.
    #[arg(long)]
    queue_mode: bool,
    /// Serial number reported in the Device object (defaults to the endpoint name).
    #[arg(long)]
    serial: Option<String>,
    /// The device's certificate chain (PEM; its common name is the endpoint name), with
    /// --key and --ca (`coaps://`, X.509 mode).
    #[arg(long, requires_all = ["key", "ca"])]
    cert: Option<std::path::PathBuf>,
    /// The device's private key (PEM or DER): with --cert (X.509), or alone with --rpk (raw
    /// public key mode).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// Trust anchors (PEM) the server's certificate must chain to.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// The server's raw public key (PEM `PUBLIC KEY` or DER), raw public key mode.
    #[arg(long, requires = "key", conflicts_with = "cert")]
    rpk: Option<std::path::PathBuf>,
    /// Name the server's certificate must carry (default: the URI's host when it is a name).
    #[arg(long)]
    server_name: Option<String>,
}

impl ClientArgs {
    /// The certificate mode, when --cert or --rpk is given.
    fn certificate(&self, server_host: &str) -> anyhow::Result<Option<ClientCertificateConfig>> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        match (&self.cert, &self.key, &self.ca, &self.rpk) {
            (Some(cert), Some(key), Some(ca), None) => {
                let server_name = self.server_name.clone().or_else(|| {
                    (server_host.parse::<std::net::IpAddr>().is_err())
                        .then(|| server_host.to_string())
                });
                Ok(Some(ClientCertificateConfig {
                    credentials: Some(Credentials::from_pem(&read(cert)?, &read(key)?)?),
                    server_auth: PeerVerifier::x509(X509Verifier::from_pem(&read(ca)?)?),
                    server_name,
                }))
            }
            (None, Some(key), None, Some(rpk)) => {
                let mut keys = RawPublicKeys::new();
                keys.insert(crate::coap_cmd::read_public_key(rpk)?, b"server".to_vec());
                Ok(Some(ClientCertificateConfig {
                    credentials: Some(Credentials::raw_public_key(
                        crate::coap_cmd::read_private_key(key)?,
                    )),
                    server_auth: PeerVerifier::raw_public_keys(Arc::new(keys)),
                    server_name: None,
                }))
            }
            (None, None, None, None) => Ok(None),
            _ => bail!("give --cert, --key and --ca (X.509), or --key and --rpk (raw public key)"),
        }
    }
}

/// The address of a `coap://` or `coaps://` URI, and whether it is secured.
pub async fn resolve_server(uri: &str) -> anyhow::Result<(SocketAddr, bool)> {
    let parsed = CoapUri::parse(uri).with_context(|| format!("invalid server URI {uri}"))?;
    let host = parsed.host.as_str();
    let address = tokio::net::lookup_host((host, parsed.port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    Ok((address, parsed.secure))
}

/// Everything one simulated or real device needs to start.
pub struct DeviceSetup {
    pub endpoint: String,
    pub serial: String,
    pub server_uri: String,
    pub address: SocketAddr,
    /// The local address to send from (the fleet spreads devices over 127.0.0.x).
    pub local_ip: Option<std::net::IpAddr>,
    pub psk: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// Certificate mode (X.509 or raw public key) instead of a PSK.
    pub certificate: Option<ClientCertificateConfig>,
    pub lifetime: u32,
    pub lwm2m_version: Version,
    pub queue_mode: bool,
    pub retry: RetryPolicy,
    pub coap: Config,
}

/// Builds a client with the standard objects for `setup`.
pub async fn build_client(
    setup: DeviceSetup,
    models: Arc<ModelRegistry>,
) -> anyhow::Result<Client> {
    build_client_with(setup, models, |_| {}).await
}

/// Builds a client with the standard objects for `setup` and whatever `extend` adds.
pub async fn build_client_with(
    setup: DeviceSetup,
    models: Arc<ModelRegistry>,
    extend: impl FnOnce(&mut cairn_client::ObjectTree),
) -> anyhow::Result<Client> {
    const SHORT_SERVER_ID: u16 = 1;
    let mut security = SecurityObject::new();
    let (mode, identity, key) = match (&setup.certificate, &setup.psk) {
        (Some(certificate), _) => {
            let mode = match &certificate.credentials {
                Some(credentials) if credentials.chain.is_empty() => SecurityMode::RawPublicKey,
                _ => SecurityMode::Certificate,
            };
            (mode, Vec::new(), Vec::new())
        }
        (None, Some((identity, key))) => {
            (SecurityMode::PreSharedKey, identity.clone(), key.to_vec())
        }
        (None, None) => (SecurityMode::NoSec, Vec::new(), Vec::new()),
    };
    security.add_server(&setup.server_uri, mode, identity, key, SHORT_SERVER_ID);
    let binding = if setup.queue_mode && setup.lwm2m_version == Version::V1_0 {
        "UQ"
    } else {
        "U"
    };
    let server = ServerInstance {
        instance: 0,
        short_server_id: SHORT_SERVER_ID,
        lifetime: setup.lifetime,
        binding: binding.into(),
        default_pmin: None,
        default_pmax: None,
    };
    let info = DeviceInfo {
        serial_number: setup.serial.clone(),
        ..DeviceInfo::default()
    };
    let mut tree = standard_tree(
        models,
        setup.lwm2m_version,
        security,
        &[server],
        DeviceObject::new(info, system_time),
        &Connectivity::default(),
    );
    extend(&mut tree);
    let mut settings = RegistrationSettings::new(setup.endpoint.clone());
    settings.lifetime = setup.lifetime;
    settings.queue_mode = setup.queue_mode;
    settings.retry = setup.retry;
    let connection = ServerConnection {
        short_server_id: SHORT_SERVER_ID,
        address: setup.address,
        local_ip: setup.local_ip,
        psk: setup
            .psk
            .map(|(identity, key)| (identity, Psk::new(key.to_vec()))),
        certificate: setup.certificate,
        settings,
        coap: setup.coap,
    };
    Client::bind(ClientCore::new(tree), vec![connection])
        .await
        .context("cannot bind the client's socket")
}

pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(client_command(args))
}

async fn client_command(args: ClientArgs) -> anyhow::Result<()> {
    let (address, secure) = resolve_server(&args.server).await?;
    let host = CoapUri::parse(&args.server)
        .map(|uri| uri.host)
        .unwrap_or_default();
    let certificate = args.certificate(&host)?;
    anyhow::ensure!(
        secure || certificate.is_none(),
        "certificates and raw public keys need a coaps:// server"
    );
    let psk = match (secure, args.psk_identity, args.psk_key) {
        (true, Some(identity), Some(key)) => Some((identity.into_bytes(), key.0)),
        (true, None, None) if certificate.is_some() => None,
        (true, _, _) => {
            bail!("coaps:// needs --psk-identity and --psk-key, --cert/--key/--ca, or --key/--rpk")
        }
        (false, Some(_), _) => bail!("--psk-identity needs a coaps:// server"),
        (false, _, _) => None,
    };
    anyhow::ensure!(args.lifetime > 0, "--lifetime must be positive");
    let setup = DeviceSetup {
        serial: args.serial.unwrap_or_else(|| args.endpoint.clone()),
        endpoint: args.endpoint.clone(),
        server_uri: args.server.clone(),
        address,
        local_ip: None,
        psk,
        certificate,
        lifetime: args.lifetime,
        lwm2m_version: args.lwm2m_version,
        queue_mode: args.queue_mode,
        retry: RetryPolicy::default(),
        coap: Config::default(),
    };
    let client = build_client(setup, Arc::new(ModelRegistry::with_core_models())).await?;
    eprintln!(
        "cairn client: {} → {} ({address}), lifetime {} s; Ctrl-C de-registers",
        args.endpoint, args.server, args.lifetime
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    client.run(shutdown, report).await?;
    Ok(())
}

fn report(event: &Event) {
    match event {
        Event::Registration { event, .. } => match event {
            RegistrationEvent::StateChanged(state) => eprintln!("state: {state}"),
            RegistrationEvent::Registered { location, latency } => eprintln!(
                "registered at /{} in {} ms",
                location.join("/"),
                latency.as_millis()
            ),
            RegistrationEvent::Updated => eprintln!("registration updated"),
            RegistrationEvent::RequestFailed { operation, reason } => {
                eprintln!("{operation} failed: {reason}");
            }
            RegistrationEvent::Sleeping => eprintln!("queue mode: sleeping"),
            RegistrationEvent::Deregistered => eprintln!("de-registered"),
        },
        Event::Action(ClientAction::Reboot) => {
            eprintln!("reboot requested (simulated device: nothing to restart)");
        }
        Event::Action(ClientAction::FactoryReset) => {
            eprintln!("factory reset requested (simulated device: nothing to reset)");
        }
        Event::Action(action) => tracing::info!(?action, "server action"),
        Event::SendCompleted { result, .. } => tracing::info!(?result, "send completed"),
    }
}
