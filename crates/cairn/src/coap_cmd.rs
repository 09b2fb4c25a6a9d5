//! `cairn coap serve|get|put|post|delete|observe`: a CoAP server and client for interop and demos.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cairn_coap::link_format::{self, Link};
use cairn_coap::{CoapUri, Code, Config, ContentFormat, Message, MessageType, OptionNumber};
use cairn_dtls::{
    CipherSuite, ClientCertificateConfig, ClientConfig, Credentials, PeerVerifier, PrivateKey, Psk,
    PskResolver, RawPublicKeys, ServerCertificateConfig, ServerConfig, X509Verifier,
};
use cairn_transport::{CoapEndpoint, Reply, Request, Security, text_response};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct CoapArgs {
    #[command(subcommand)]
    command: CoapCommand,
}

#[derive(Debug, Subcommand)]
enum CoapCommand {
    /// Serve `/.well-known/core`, `/time` (observable), `/echo` and the files of a directory.
    Serve(ServeArgs),
    /// GET a resource.
    Get(ClientArgs),
    /// PUT a payload.
    Put(ClientArgs),
    /// POST a payload.
    Post(ClientArgs),
    /// DELETE a resource.
    Delete(ClientArgs),
    /// Observe a resource and print each notification.
    Observe(ObserveArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:5683")]
    listen: SocketAddr,
    /// Directory whose files are served by path (block-wise for large ones).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Worker threads of the runtime (the socket itself is served by one task).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// UDP address for CoAP over DTLS (`coaps://`), with the PSK options.
    #[arg(long)]
    dtls_listen: Option<SocketAddr>,
    #[command(flatten)]
    psk: PskArgs,
    #[command(flatten)]
    certificates: CertificateArgs,
}

/// Certificate mode (TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 and friends, P-256) with X.509
/// certificates or raw public keys (RFC 7250), PEM files as `cairn keys` writes them.
#[derive(Debug, Args, Clone)]
pub struct CertificateArgs {
    /// Our certificate chain (PEM); with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Our private key (PEM or DER). Without --cert, our raw public key is presented.
    #[arg(long)]
    key: Option<PathBuf>,
    /// A peer's raw public key (PEM `PUBLIC KEY` or DER SubjectPublicKeyInfo, as
    /// `cairn keys gen-ec` writes it); repeat for several. On the server, clients must then
    /// present one of these keys (or a certificate from --ca); on the client, the server
    /// must present one of them. Any other key is refused.
    #[arg(long)]
    rpk: Vec<PathBuf>,
    /// Validated peer certificate chains remembered, so that a peer that connects again with
    /// the same chain costs no signature verification of it (0: validate every chain).
    #[arg(long, default_value_t = cairn_dtls::pki::DEFAULT_CHAIN_CACHE)]
    chain_cache: usize,
    /// Trust anchors (PEM) to verify the peer: on the server, client certificates are then
    /// required (mutual authentication); on the client, the server is verified against them.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Certificate revocation list (PEM) checked with --ca (hard fail).
    #[arg(long, requires = "ca")]
    crl: Option<PathBuf>,
    /// Name the server's certificate must carry (client; default: the URI's host when it is a
    /// name, none for an address literal).
    #[arg(long)]
    server_name: Option<String>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

impl CertificateArgs {
    fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some(Credentials::from_pem(&read(cert)?, &read(key)?)?)),
            (None, Some(key)) => Ok(Some(Credentials::raw_public_key(read_private_key(key)?))),
            _ => Ok(None),
        }
    }

    fn verifier(&self) -> anyhow::Result<Option<PeerVerifier>> {
        let mut verifier = PeerVerifier::default();
        if let Some(ca) = &self.ca {
            let mut x509 = X509Verifier::from_pem(&read(ca)?)?.with_chain_cache(self.chain_cache);
            if let Some(crl) = &self.crl {
                x509.add_crl_pem(&read(crl)?)?;
            }
            verifier.x509 = Some(Arc::new(x509));
        }
        if !self.rpk.is_empty() {
            let mut keys = RawPublicKeys::new();
            for path in &self.rpk {
                let identity = path
                    .file_stem()
                    .map(|stem| stem.to_string_lossy().into_owned())
                    .unwrap_or_default();
                keys.insert(read_public_key(path)?, identity.into_bytes());
            }
            verifier.raw_public_keys = Some(Arc::new(keys));
        }
        Ok((verifier.x509.is_some() || verifier.raw_public_keys.is_some()).then_some(verifier))
    }
}

/// A P-256 private key from a PEM (`PRIVATE KEY`, `EC PRIVATE KEY`) or DER file.
pub(crate) fn read_private_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let bytes = read(path)?;
    PrivateKey::from_pem(&bytes)
        .or_else(|_| PrivateKey::from_der(&bytes))
        .map_err(|error| anyhow::anyhow!("{}: not a P-256 private key ({error})", path.display()))
}

/// A raw public key (DER SubjectPublicKeyInfo) from a PEM `PUBLIC KEY` or DER file; only
/// P-256 keys are accepted.
pub(crate) fn read_public_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read(path)?;
    parse_public_key(&bytes).with_context(|| {
        format!(
            "{}: not a P-256 public key (PEM PUBLIC KEY or DER SubjectPublicKeyInfo)",
            path.display()
        )
    })
}

/// The DER SubjectPublicKeyInfo of PEM or DER contents, checked to be a P-256 key.
pub(crate) fn parse_public_key(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};
    let der = match x509_parser::pem::parse_x509_pem(bytes) {
        Ok((_, pem)) => {
            anyhow::ensure!(pem.label == "PUBLIC KEY", "PEM label {}", pem.label);
            pem.contents
        }
        Err(_) => bytes.to_vec(),
    };
    let (rest, info) = SubjectPublicKeyInfo::from_der(&der).context("malformed DER")?;
    anyhow::ensure!(rest.is_empty(), "trailing bytes after the key");
    let curve = info
        .algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok())
        .map(|oid| oid.to_id_string());
    anyhow::ensure!(
        info.algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1"
            && curve.as_deref() == Some("1.2.840.10045.3.1.7"),
        "not an EC key on secp256r1"
    );
    Ok(der)
}

/// A pre-shared key for DTLS (TLS_PSK_WITH_AES_128_CCM_8 and _CCM).
#[derive(Args, Clone)]
pub struct PskArgs {
    /// PSK identity.
    #[arg(long, requires = "psk_key")]
    psk_identity: Option<String>,
    /// PSK as hexadecimal digits.
    #[arg(long, requires = "psk_identity")]
    psk_key: Option<String>,
}

impl std::fmt::Debug for PskArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskArgs")
            .field("psk_identity", &self.psk_identity)
            .finish_non_exhaustive()
    }
}

impl PskArgs {
    fn credentials(&self) -> anyhow::Result<Option<(Vec<u8>, Psk)>> {
        match (&self.psk_identity, &self.psk_key) {
            (Some(identity), Some(key)) => {
                let key = crate::hex::decode(key).context("--psk-key must be hexadecimal")?;
                anyhow::ensure!(!key.is_empty(), "--psk-key is empty");
                Ok(Some((identity.clone().into_bytes(), Psk::new(key))))
            }
            _ => Ok(None),
        }
    }
}

/// One identity and its key.
struct StaticPsk {
    identity: Vec<u8>,
    key: Psk,
}

impl PskResolver for StaticPsk {
    fn key(&self, identity: &[u8]) -> Option<Psk> {
        (identity == self.identity.as_slice()).then(|| self.key.clone())
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// `coap://host[:port]/path[?query]`
    uri: String,
    /// Request payload (text).
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Request payload read from a file.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// Content-Format number of the payload.
    #[arg(long)]
    content_format: Option<u16>,
    /// Accept option (the content format wanted in the response).
    #[arg(long)]
    accept: Option<u16>,
    /// Send a non-confirmable request.
    #[arg(long)]
    non: bool,
    /// Write the response payload to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print the response code and options on standard error.
    #[arg(long, short)]
    verbose: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 100)]
    timeout: u64,
    #[command(flatten)]
    psk: PskArgs,
    #[command(flatten)]
    certificates: CertificateArgs,
}

#[derive(Debug, Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Stop after this many notifications (the first response included).
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
}

pub fn run(args: CoapArgs) -> anyhow::Result<()> {
    let threads = match &args.command {
        CoapCommand::Serve(serve) => serve.threads.max(1),
        _ => 1,
    };
    // One thread serves a socket best: no cross-thread wake-ups on the request path.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        match args.command {
            CoapCommand::Serve(serve) => serve_command(serve).await,
            CoapCommand::Get(client) => request_command(Code::GET, client).await,
            CoapCommand::Put(client) => request_command(Code::PUT, client).await,
            CoapCommand::Post(client) => request_command(Code::POST, client).await,
            CoapCommand::Delete(client) => request_command(Code::DELETE, client).await,
            CoapCommand::Observe(observe) => observe_command(observe).await,
        }
    })
}

// ----- server -----

const BANNER: &str = "Cairn CoAP server: secure device management for IoT fleets.\n\
                      Resources: /.well-known/core, /time (observable), /echo (POST, PUT)";

/// The resources of `cairn coap serve`.
pub struct DemoResources {
    dir: Option<PathBuf>,
}

impl DemoResources {
    pub fn new(dir: Option<PathBuf>) -> Self {
        DemoResources { dir }
    }

    fn handle(&self, request: &Request) -> Reply {
        let message = &request.message;
        let Some(resource) = Resource::of(message) else {
            return match message.code {
                Code::GET => self.file(message),
                _ => Message::response(Code::NOT_FOUND).into(),
            };
        };
        match (message.code, resource) {
            (Code::GET, Resource::Root) => text_response(Code::CONTENT, BANNER).into(),
            (Code::GET, Resource::Core) => self.core_links().into(),
            (Code::GET, Resource::Time) => time_response().into(),
            (Code::POST | Code::PUT, Resource::Echo) => {
                let mut response = Message::response(Code::CHANGED);
                response.payload.clone_from(&message.payload);
                if let Some(format) = message.content_format() {
                    response.set_content_format(format);
                }
                response.into()
            }
            _ => Message::response(Code::METHOD_NOT_ALLOWED).into(),
        }
    }

    fn core_links(&self) -> Message {
        let mut links = vec![
            Link::new("/time")
                .with("rt", Some("time"))
                .with("ct", Some("0"))
                .with("obs", None::<&str>),
            Link::new("/echo").with("ct", Some("0")),
        ];
        if let Some(dir) = &self.dir {
            let mut files = Vec::new();
            collect_files(dir, Path::new(""), 3, &mut files);
            files.sort();
            for file in files.iter().take(256) {
                let size = file_size(dir, file).to_string();
                links.push(Link::new(format!("/{file}")).with("sz", Some(size)));
            }
        }
        let mut response = Message::response(Code::CONTENT);
        response.payload = link_format::emit(&links).into_bytes();
        response.set_content_format(ContentFormat::LINK_FORMAT);
        response
    }

    fn file(&self, message: &Message) -> Reply {
        let Some(dir) = &self.dir else {
            return Message::response(Code::NOT_FOUND).into();
        };
        let Some(path) = safe_join(dir, message.options.get_all(OptionNumber::URI_PATH)) else {
            return text_response(Code::BAD_REQUEST, "invalid path").into();
        };
        Reply::Pending(Box::pin(async move {
            match tokio::fs::read(&path).await {
                Ok(body) => {
                    let mut response = Message::response(Code::CONTENT);
                    response.set_content_format(content_format_of(&path));
                    response.payload = body;
                    response
                }
                Err(_) => Message::response(Code::NOT_FOUND),
            }
        }))
    }
}

/// The fixed resources of the demo server.
#[derive(Clone, Copy)]
enum Resource {
    Root,
    Core,
    Time,
    Echo,
}

impl Resource {
    /// Matches the Uri-Path without building a string (this is every request's path).
    fn of(message: &Message) -> Option<Resource> {
        let mut segments = message.options.get_all(OptionNumber::URI_PATH);
        let resource = match (segments.next(), segments.next()) {
            (None, _) => Resource::Root,
            (Some(b".well-known"), Some(b"core")) => Resource::Core,
            (Some(b"time"), None) => Resource::Time,
            (Some(b"echo"), None) => Resource::Echo,
            _ => return None,
        };
        segments.next().is_none().then_some(resource)
    }
}

/// Joins Uri-Path segments under `dir`, refusing anything that could leave it.
fn safe_join<'a>(dir: &Path, segments: impl Iterator<Item = &'a [u8]>) -> Option<PathBuf> {
    let mut path = dir.to_path_buf();
    for segment in segments {
        let segment = std::str::from_utf8(segment).ok()?;
        let mut components = Path::new(segment).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(part)), None) if !segment.contains(['/', '\\']) => {
                path.push(part)
            }
            _ => return None,
        }
    }
    (path != dir).then_some(path)
}

fn collect_files(root: &Path, relative: &Path, depth: usize, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root.join(relative)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = relative.join(entry.file_name());
        match entry.file_type() {
            Ok(kind) if kind.is_file() => out.push(name.to_string_lossy().replace('\\', "/")),
            Ok(kind) if kind.is_dir() && depth > 0 => collect_files(root, &name, depth - 1, out),
            _ => {}
        }
    }
}

fn file_size(dir: &Path, file: &str) -> u64 {
    std::fs::metadata(dir.join(file))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn content_format_of(path: &Path) -> ContentFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some("txt" | "md") => ContentFormat::TEXT_PLAIN,
        Some("json") => ContentFormat::JSON,
        Some("cbor") => ContentFormat::CBOR,
        Some("xml") => ContentFormat::XML,
        _ => ContentFormat::OCTET_STREAM,
    }
}

fn time_response() -> Message {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut response = text_response(Code::CONTENT, format_utc(seconds));
    response.options.set_uint(OptionNumber::MAX_AGE, 1);
    response
}

/// `YYYY-MM-DDTHH:MM:SSZ` from Unix seconds (civil-from-days, proleptic Gregorian).
pub(crate) fn format_utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let secs = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

async fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.dir {
        anyhow::ensure!(dir.is_dir(), "--dir {} is not a directory", dir.display());
    }
    let resources = Arc::new(DemoResources::new(args.dir.clone()));
    let handler: Arc<dyn cairn_transport::Handler> =
        Arc::new(move |request: &Request| resources.handle(request));
    let mut endpoints = Vec::new();
    let plain = CoapEndpoint::bind(args.listen, Config::default(), Some(handler.clone()))
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "cairn coap serve: listening on coap://{}",
        plain.local_addr()
    );
    endpoints.push(plain);
    if let Some(address) = args.dtls_listen {
        let psk = args.psk.credentials()?;
        let credentials = args.certificates.credentials()?;
        let config = match (psk, credentials) {
            (None, None) => {
                bail!(
                    "--dtls-listen needs --psk-identity/--psk-key, or --key (with --cert for X.509)"
                )
            }
            (Some((identity, key)), None) => {
                ServerConfig::new(Arc::new(StaticPsk { identity, key }))
            }
            (psk, Some(credentials)) => {
                let client_auth = args.certificates.verifier()?;
                let mut config = ServerConfig::with_certificate(ServerCertificateConfig {
                    credentials,
                    client_auth,
                });
                if let Some((identity, key)) = psk {
                    // Both modes on one socket: the client's offer picks.
                    config.psk_resolver = Arc::new(StaticPsk { identity, key });
                    config.cipher_suites =
                        [CipherSuite::ECDHE_ECDSA.as_slice(), &CipherSuite::PSK].concat();
                }
                config
            }
        };
        let security = Security::DtlsServer(config);
        let secured =
            CoapEndpoint::bind_secured(address, Config::default(), security, Some(handler))
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
        eprintln!(
            "cairn coap serve: listening on coaps://{}",
            secured.local_addr()
        );
        endpoints.push(secured);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for endpoint in &endpoints {
                    endpoint.notify("/time", time_response()).await?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    for endpoint in &endpoints {
        endpoint.shutdown().await;
    }
    Ok(())
}

// ----- client -----

async fn resolve(uri: &CoapUri) -> anyhow::Result<SocketAddr> {
    let host = uri.host.as_str();
    let mut addresses = tokio::net::lookup_host((host, uri.port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?;
    addresses
        .next()
        .with_context(|| format!("no address for {host}"))
}

async fn client_endpoint(
    uri: &CoapUri,
    args: &ClientArgs,
) -> anyhow::Result<(SocketAddr, CoapEndpoint)> {
    let target = resolve(uri).await?;
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let security = match (
        uri.secure,
        args.psk.credentials()?,
        args.certificates.verifier()?,
    ) {
        (false, _, _) => Security::NoSec,
        (true, _, Some(server_auth)) => {
            let server_name = args.certificates.server_name.clone().or_else(|| {
                (uri.host.parse::<std::net::IpAddr>().is_err()).then(|| uri.host.clone())
            });
            let credentials = args.certificates.credentials()?;
            let config = ClientConfig::with_certificate(ClientCertificateConfig {
                credentials,
                server_auth,
                server_name,
            });
            Security::DtlsClient {
                config,
                server: target,
            }
        }
        (true, Some((identity, key)), None) => Security::DtlsClient {
            config: ClientConfig::new(identity, key),
            server: target,
        },
        (true, None, None) => bail!(
            "coaps:// needs --psk-identity and --psk-key, or --ca or --rpk (and --key, with --cert for X.509)"
        ),
    };
    let endpoint = CoapEndpoint::bind_secured(local, Config::default(), security, None).await?;
    Ok((target, endpoint))
}

async fn build_request(code: Code, args: &ClientArgs) -> anyhow::Result<(CoapUri, Message)> {
    let uri = CoapUri::parse(&args.uri).with_context(|| format!("invalid URI {}", args.uri))?;
    let mut message = Message::request(code);
    if args.non {
        message.message_type = MessageType::NonConfirmable;
    }
    uri.apply(&mut message);
    if let Some(payload) = &args.payload {
        message.payload = payload.clone().into_bytes();
    }
    if let Some(file) = &args.payload_file {
        message.payload = tokio::fs::read(file)
            .await
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    if let Some(format) = args.content_format {
        message.set_content_format(ContentFormat(format));
    }
    if let Some(accept) = args.accept {
        message
            .options
            .set_uint(OptionNumber::ACCEPT, u32::from(accept));
    }
    Ok((uri, message))
}

fn describe(message: &Message) -> String {
    let mut text = format!("{} {:?}", message.code, message.message_type);
    for (number, value) in message.options.iter() {
        let name = number
            .name()
            .map_or_else(|| number.0.to_string(), str::to_owned);
        match cairn_coap::option::decode_uint(value) {
            Some(v)
                if matches!(
                    number.definition().map(|d| d.format),
                    Some(cairn_coap::option::OptionFormat::Uint)
                ) =>
            {
                text.push_str(&format!(" {name}={v}"))
            }
            _ => text.push_str(&format!(" {name}={}", String::from_utf8_lossy(value))),
        }
    }
    text
}

async fn write_payload(args: &ClientArgs, message: &Message, append: bool) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    if args.verbose {
        eprintln!("{}", describe(message));
    }
    match &args.output {
        Some(path) => {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(path)
                .await?;
            file.write_all(&message.payload).await?;
        }
        None => {
            let mut stdout = tokio::io::stdout();
            stdout.write_all(&message.payload).await?;
            if !message.payload.ends_with(b"\n") && !message.payload.is_empty() {
                stdout.write_all(b"\n").await?;
            }
            stdout.flush().await?;
        }
    }
    Ok(())
}

async fn request_command(code: Code, args: ClientArgs) -> anyhow::Result<()> {
    let (uri, message) = build_request(code, &args).await?;
    let (target, endpoint) = client_endpoint(&uri, &args).await?;
    let response = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        endpoint.request(target, message),
    )
    .await
    .context("timed out waiting for the response")??;
    write_payload(&args, &response, false).await?;
    if !response.code.is_success() {
        bail!("server answered {}", response.code);
    }
    Ok(())
}

async fn observe_command(args: ObserveArgs) -> anyhow::Result<()> {
    let (uri, message) = build_request(Code::GET, &args.client).await?;
    let (target, endpoint) = client_endpoint(&uri, &args.client).await?;
    let deadline = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let (first, mut observation) = tokio::time::timeout(
        Duration::from_secs(args.client.timeout),
        endpoint.observe(target, message),
    )
    .await
    .context("timed out waiting for the first response")??;
    write_payload(&args.client, &first, false).await?;
    if !first.code.is_success() {
        bail!("server answered {}", first.code);
    }
    if first.observe().is_none() {
        eprintln!("the server did not accept the observation");
        return Ok(());
    }
    let mut received = 1;
    while args.count.is_none_or(|count| received < count) {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, observation.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => observation.next().await,
        };
        let Some(notification) = next else {
            break;
        };
        write_payload(&args.client, &notification, true).await?;
        received += 1;
    }
    observation.cancel().await;
    // Give the deregistration a moment to leave before the socket closes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn file_paths_cannot_escape_the_directory() {
        let dir = Path::new("/srv/files");
        let join = |segments: &[&str]| safe_join(dir, segments.iter().map(|s| s.as_bytes()));
        assert_eq!(
            join(&["a", "b.txt"]),
            Some(PathBuf::from("/srv/files/a/b.txt"))
        );
        assert_eq!(join(&[".."]), None);
        assert_eq!(join(&["a", "..", "b"]), None);
        assert_eq!(join(&["a/b"]), None);
        assert_eq!(join(&["/etc"]), None);
        assert_eq!(join(&["."]), None);
        assert_eq!(join(&[]), None);
    }
}
