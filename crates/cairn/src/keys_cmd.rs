//! `cairn keys gen-ec | public | ca init | ca issue | ca revoke`: ECDSA P-256 keys and a small
//! certificate authority for the LwM2M certificate modes (X.509 and raw public keys).
//!
//! A CA directory holds `ca.pem`/`ca.der` (the CA certificate), `ca.key` (its key), `serial`
//! (the next serial number), `revoked` (one `serial unix-time` line per revoked certificate) and,
//! after a revocation, `crl.pem`/`crl.der`. Private keys are PKCS#8 PEM files created with mode
//! 0600 and never overwritten.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate an ECDSA P-256 key (PKCS#8 PEM, mode 0600) and print its public key.
    GenEc(GenEcArgs),
    /// Write the public key (the RFC 7250 raw public key) of an existing private key, e.g. a
    /// server's certificate key for devices that pin it.
    Public(PublicArgs),
    /// The certificate authority.
    Ca(CaArgs),
    /// Factory bootstrap credentials for N devices: one file per device, and a manifest
    /// sealed to the Bootstrap-Server's key.
    Factory(crate::factory_cmd::FactoryArgs),
    /// Fresh credentials for devices, through the running server: they bootstrap again and
    /// the old credentials are refused once they use the new ones. Prints a report.
    Rotate(crate::rotate_cmd::RotateArgs),
}

#[derive(Debug, Args)]
struct GenEcArgs {
    /// Private key file to create.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the public key (SubjectPublicKeyInfo, the RFC 7250 raw public key);
    /// default: the key file's name with the extension `.pub` (PEM, or DER with --der).
    #[arg(long)]
    public: Option<PathBuf>,
    /// Write DER instead of PEM.
    #[arg(long)]
    der: bool,
}

#[derive(Debug, Args)]
struct PublicArgs {
    /// Private key (PEM or DER).
    #[arg(long)]
    key: PathBuf,
    /// Public key file to write.
    #[arg(long)]
    out: PathBuf,
    /// Write DER instead of PEM.
    #[arg(long)]
    der: bool,
}

#[derive(Debug, Args)]
struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA in a directory.
    Init(CaInitArgs),
    /// Issue a certificate (the common name is the LwM2M endpoint name for a device).
    Issue(CaIssueArgs),
    /// Revoke a certificate and write the CA's CRL (`crl.pem`, `crl.der`).
    Revoke(CaRevokeArgs),
}

#[derive(Debug, Args)]
struct CaInitArgs {
    /// CA directory (created).
    #[arg(long, default_value = "cairn-ca")]
    dir: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "Cairn CA")]
    cn: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    days: i64,
}

/// What an issued certificate may be used for (extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Usage {
    /// TLS client (a device).
    Client,
    /// TLS server (an LwM2M server).
    Server,
    /// Both.
    Both,
}

#[derive(Debug, Args)]
struct CaIssueArgs {
    /// CA directory.
    #[arg(long, default_value = "cairn-ca")]
    dir: PathBuf,
    /// Common name: the device's endpoint name, or the server's name.
    #[arg(long)]
    cn: String,
    /// DNS subject alternative names (for servers).
    #[arg(long)]
    dns: Vec<String>,
    /// Extended key usage.
    #[arg(long, value_enum, default_value_t = Usage::Client)]
    usage: Usage,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
    /// Output prefix: writes PREFIX.pem, PREFIX.der and PREFIX.key (default: the common name).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CaRevokeArgs {
    /// CA directory.
    #[arg(long, default_value = "cairn-ca")]
    dir: PathBuf,
    /// Serial number to revoke (decimal).
    #[arg(long, conflicts_with = "cert")]
    serial: Option<u64>,
    /// Certificate (PEM) to revoke.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Days until the CRL's next update.
    #[arg(long, default_value_t = 30)]
    crl_days: i64,
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::GenEc(args) => gen_ec(&args),
        KeysCommand::Public(args) => public_key(&args),
        KeysCommand::Ca(CaArgs { command }) => match command {
            CaCommand::Init(args) => ca_init(&args),
            CaCommand::Issue(args) => ca_issue(&args).map(|_| ()),
            CaCommand::Revoke(args) => ca_revoke(&args),
        },
        KeysCommand::Factory(args) => crate::factory_cmd::run(args),
        KeysCommand::Rotate(args) => crate::rotate_cmd::run(args),
    }
}

/// Creates `path` with mode 0600; an existing file is never overwritten.
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating a P-256 key")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn gen_ec(args: &GenEcArgs) -> anyhow::Result<()> {
    let key = new_key()?;
    if args.der {
        write_secret(&args.out, &key.serialize_der())?;
    } else {
        write_secret(&args.out, key.serialize_pem().as_bytes())?;
    }
    let public = args
        .public
        .clone()
        .unwrap_or_else(|| default_public_path(&args.out));
    if args.der {
        write_public(&public, &key.subject_public_key_info())?;
    } else {
        write_public(&public, key.public_key_pem().as_bytes())?;
    }
    eprintln!("public key in {}", public.display());
    println!("{}", hex(&key.subject_public_key_info()));
    Ok(())
}

fn public_key(args: &PublicArgs) -> anyhow::Result<()> {
    let key = crate::coap_cmd::read_private_key(&args.key)?;
    let der = key.subject_public_key_info();
    if args.der {
        write_public(&args.out, &der)?;
    } else {
        write_public(&args.out, public_pem(&der).as_bytes())?;
    }
    println!("{}", hex(&der));
    Ok(())
}

/// A `PUBLIC KEY` PEM block of a DER SubjectPublicKeyInfo.
fn public_pem(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// `device.key` → `device.pub` (`device.pub` → `device.pub.pub`).
fn default_public_path(key: &Path) -> PathBuf {
    let public = key.with_extension("pub");
    if public == key {
        let mut name = key.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    } else {
        public
    }
}

fn ca_params(common_name: &str, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

fn ca_init(args: &CaInitArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.dir)?;
    let key = new_key()?;
    let cert = ca_params(&args.cn, args.days).self_signed(&key)?;
    write_secret(&args.dir.join("ca.key"), key.serialize_pem().as_bytes())?;
    write_public(&args.dir.join("ca.pem"), cert.pem().as_bytes())?;
    write_public(&args.dir.join("ca.der"), cert.der())?;
    write_public(&args.dir.join("serial"), b"2\n")?;
    write_public(&args.dir.join("revoked"), b"")?;
    println!("CA {} in {}", args.cn, args.dir.display());
    Ok(())
}

/// Creates the CA of `dir` (as `cairn keys ca init` does) unless it exists; returns whether it
/// was created.
pub(crate) fn ensure_ca(dir: &Path, common_name: &str) -> anyhow::Result<bool> {
    if dir.join("ca.key").exists() {
        return Ok(false);
    }
    ca_init(&CaInitArgs {
        dir: dir.to_path_buf(),
        cn: common_name.to_string(),
        days: 3650,
    })?;
    Ok(true)
}

/// Issues a server certificate from the CA of `ca_dir` to `prefix`.pem/.key unless the key
/// exists; returns whether it was issued.
pub(crate) fn ensure_server_certificate(
    ca_dir: &Path,
    prefix: &Path,
    common_name: &str,
) -> anyhow::Result<bool> {
    if prefix.with_extension("key").exists() {
        return Ok(false);
    }
    ca_issue(&CaIssueArgs {
        dir: ca_dir.to_path_buf(),
        cn: common_name.to_string(),
        dns: Vec::new(),
        usage: Usage::Server,
        days: 3650,
        out: Some(prefix.to_path_buf()),
    })?;
    Ok(true)
}

/// The CA of `dir` as the Bootstrap-Server issues device certificates with it.
pub(crate) fn bootstrap_authority(
    dir: &Path,
    validity_days: i64,
) -> anyhow::Result<cairn_server::bootstrap::credentials::CertificateAuthority> {
    let key_pem = fs::read_to_string(dir.join("ca.key")).context("reading ca.key")?;
    let der = fs::read(dir.join("ca.der")).context("reading ca.der")?;
    let common_name = {
        let (_, cert) = X509Certificate::from_der(&der).context("parsing ca.der")?;
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .context("the CA certificate has no common name")?
            .to_string()
    };
    cairn_server::bootstrap::credentials::CertificateAuthority::new(
        der,
        &common_name,
        &key_pem,
        validity_days,
    )
    .with_context(|| format!("the CA in {}", dir.display()))
}

/// The CA of a directory, ready to sign.
fn load_ca(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let key_pem = fs::read_to_string(dir.join("ca.key")).context("reading ca.key")?;
    let key = KeyPair::from_pem(&key_pem).context("parsing ca.key")?;
    let der = fs::read(dir.join("ca.der")).context("reading ca.der")?;
    let (_, cert) = X509Certificate::from_der(&der).context("parsing ca.der")?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .context("the CA certificate has no common name")?
        .to_string();
    // Only the subject name and the key identifier method matter for signing.
    Ok(Issuer::new(ca_params(&common_name, 1), key))
}

fn next_serial(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("serial");
    let serial: u64 = fs::read_to_string(&path)
        .context("reading serial")?
        .trim()
        .parse()
        .context("parsing serial")?;
    write_public(&path, format!("{}\n", serial + 1).as_bytes())?;
    Ok(serial)
}

/// Issues a certificate; returns the output prefix.
fn ca_issue(args: &CaIssueArgs) -> anyhow::Result<PathBuf> {
    let issuer = load_ca(&args.dir)?;
    let serial = next_serial(&args.dir)?;
    let key = new_key()?;
    let mut params = CertificateParams::new(args.dns.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, args.cn.as_str());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(args.days);
    params.serial_number = Some(SerialNumber::from(serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match args.usage {
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Both => vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let prefix = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(
            args.cn
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>(),
        )
    });
    let with_extension = |extension: &str| {
        let mut path = prefix.clone().into_os_string();
        path.push(".");
        path.push(extension);
        PathBuf::from(path)
    };
    write_secret(&with_extension("key"), key.serialize_pem().as_bytes())?;
    write_public(&with_extension("pem"), cert.pem().as_bytes())?;
    write_public(&with_extension("der"), cert.der())?;
    println!("serial {serial}: {}", with_extension("pem").display());
    Ok(prefix)
}

fn serial_of(cert: &Path) -> anyhow::Result<u64> {
    let pem = fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).context("parsing the PEM")?;
    let cert = pem.parse_x509().context("parsing the certificate")?;
    u64::try_from(cert.serial.clone()).context("serial number larger than 64 bits")
}

fn ca_revoke(args: &CaRevokeArgs) -> anyhow::Result<()> {
    let serial = match (&args.serial, &args.cert) {
        (Some(serial), _) => *serial,
        (None, Some(cert)) => serial_of(cert)?,
        (None, None) => bail!("name the certificate with --serial or --cert"),
    };
    let issuer = load_ca(&args.dir)?;
    let now = OffsetDateTime::now_utc();
    let revoked_path = args.dir.join("revoked");
    let mut revoked = fs::read_to_string(&revoked_path).unwrap_or_default();
    let mut entries: Vec<(u64, i64)> = revoked
        .lines()
        .filter_map(|line| {
            let (serial, time) = line.split_once(' ')?;
            Some((serial.parse().ok()?, time.parse().ok()?))
        })
        .collect();
    if !entries.iter().any(|(known, _)| *known == serial) {
        entries.push((serial, now.unix_timestamp()));
        revoked.push_str(&format!("{serial} {}\n", now.unix_timestamp()));
        write_public(&revoked_path, revoked.as_bytes())?;
    }
    let revoked_certs = entries
        .iter()
        .map(|(serial, time)| -> anyhow::Result<RevokedCertParams> {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from(*serial),
                revocation_time: OffsetDateTime::from_unix_timestamp(*time)?,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let crl = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(args.crl_days),
        crl_number: SerialNumber::from(entries.len() as u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)?;
    write_public(&args.dir.join("crl.pem"), crl.pem()?.as_bytes())?;
    write_public(&args.dir.join("crl.der"), crl.der())?;
    println!(
        "revoked serial {serial}; CRL in {}",
        args.dir.join("crl.pem").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use cairn_dtls::X509Verifier;
    use cairn_dtls::pki::PeerRole;

    use super::*;

    fn issue(dir: &Path, cn: &str, out: &Path) -> PathBuf {
        ca_issue(&CaIssueArgs {
            dir: dir.to_path_buf(),
            cn: cn.to_string(),
            dns: Vec::new(),
            usage: Usage::Client,
            days: 30,
            out: Some(out.to_path_buf()),
        })
        .unwrap()
    }

    #[test]
    fn ca_issues_certificates_the_engine_accepts_and_revocation_refuses() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("ca");
        ca_init(&CaInitArgs {
            dir: dir.clone(),
            cn: "Test CA".to_string(),
            days: 30,
        })
        .unwrap();
        let mode = fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        issue(&dir, "urn:dev:1", &temp.path().join("dev1"));
        issue(&dir, "urn:dev:2", &temp.path().join("dev2"));
        let mode = fs::metadata(temp.path().join("dev1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let chain = |name: &str| vec![fs::read(temp.path().join(format!("{name}.der"))).unwrap()];
        let verifier = X509Verifier::from_pem(&fs::read(dir.join("ca.pem")).unwrap()).unwrap();
        let peer = verifier.verify(&chain("dev1"), PeerRole::Client).unwrap();
        assert_eq!(peer.identity, b"urn:dev:1");

        ca_revoke(&CaRevokeArgs {
            dir: dir.clone(),
            serial: None,
            cert: Some(temp.path().join("dev1.pem")),
            crl_days: 7,
        })
        .unwrap();
        let mut verifier = X509Verifier::from_pem(&fs::read(dir.join("ca.pem")).unwrap()).unwrap();
        verifier
            .add_crl_pem(&fs::read(dir.join("crl.pem")).unwrap())
            .unwrap();
        assert_eq!(
            verifier.verify(&chain("dev1"), PeerRole::Client),
            Err(cairn_dtls::CertificateError::Revoked)
        );
        assert!(verifier.verify(&chain("dev2"), PeerRole::Client).is_ok());
        // Keys are never overwritten.
        assert!(
            ca_init(&CaInitArgs {
                dir,
                cn: "Again".to_string(),
                days: 1
            })
            .is_err()
        );
    }

    #[test]
    fn gen_ec_writes_a_private_key_the_engine_reads() {
        let temp = tempfile::tempdir().unwrap();
        let key = temp.path().join("device.key");
        gen_ec(&GenEcArgs {
            out: key.clone(),
            public: Some(temp.path().join("device.pub.pem")),
            der: false,
        })
        .unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        cairn_dtls::PrivateKey::from_pem(&fs::read(&key).unwrap()).unwrap();
    }

    #[test]
    fn gen_ec_writes_the_public_key_beside_the_private_key() {
        let temp = tempfile::tempdir().unwrap();
        for der in [false, true] {
            let key = temp.path().join(if der { "der.key" } else { "pem.key" });
            gen_ec(&GenEcArgs {
                out: key.clone(),
                public: None,
                der,
            })
            .unwrap();
            let public = fs::read(key.with_extension("pub")).unwrap();
            let private = if der {
                cairn_dtls::PrivateKey::from_der(&fs::read(&key).unwrap()).unwrap()
            } else {
                cairn_dtls::PrivateKey::from_pem(&fs::read(&key).unwrap()).unwrap()
            };
            assert_eq!(
                crate::coap_cmd::parse_public_key(&public).unwrap(),
                private.subject_public_key_info()
            );
        }
        let written = temp.path().join("again.pub");
        public_key(&PublicArgs {
            key: temp.path().join("pem.key"),
            out: written.clone(),
            der: false,
        })
        .unwrap();
        assert_eq!(
            fs::read(&written).unwrap(),
            fs::read(temp.path().join("pem.pub")).unwrap()
        );
        assert_eq!(
            default_public_path(Path::new("a/device.pub")),
            PathBuf::from("a/device.pub.pub")
        );
        assert_eq!(
            default_public_path(Path::new("device")),
            PathBuf::from("device.pub")
        );
    }
}
