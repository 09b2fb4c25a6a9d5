//! `cairn bench dtls --ecdhe`: full ECDHE-ECDSA handshakes on secp256r1 (RFC 8422) with
//! mutual authentication, Cairn's server beside libcoap's `coap-server-openssl`, and the
//! limit the P-256 operations alone put on one server core, measured in the same run.
//!
//! Three servers, each in its own process on 127.0.0.1, loaded one after the other by the
//! in-process generator of [`super::dtls_load`] (the same handshake load as the PSK run:
//! new session with its cookie exchange, one GET, close_notify):
//!
//! - `cairn x509`: `cairn coap serve --cert --key --ca`: X.509 both ways, the client's chain
//!   validated against the CA (RFC 5280, `rustls-webpki`);
//! - `cairn rpk`: `cairn coap serve --key --rpk`: raw public keys both ways (RFC 7250);
//! - `libcoap x509`: `coap-server-openssl -c -j -C`: X.509 both ways (OpenSSL 3.0 has no raw
//!   public keys).
//!
//! The crypto-bound limit: what one server core could do if a handshake cost nothing but
//! its P-256 operations, timed with `aws-lc-rs` (the server's backend) on the thread's own
//! CPU clock. Per handshake the server makes one ephemeral key pair, one ECDH, one ECDSA
//! signature (ServerKeyExchange) and, with X.509, two ECDSA verifications: the client
//! certificate's signature by the CA (a chain of one certificate under the trust anchor)
//! and the client's CertificateVerify; with raw public keys only the CertificateVerify.
//! The server's figure that compares to it is handshakes per second of server CPU time.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_lc_rs::agreement::{self, ECDH_P256, UnparsedPublicKey};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
};
use cairn_dtls::{
    ClientCertificateConfig, Credentials as DtlsCredentials, PeerVerifier, PrivateKey,
    RawPublicKeys, X509Verifier,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustix::time::{ClockId, clock_gettime};

use super::coap::{format_option, stop_on_signal, warn_if_busy};
use super::dtls_load::{self, Credentials, Timing, Window};
use super::message::GetRequest;
use super::server::{ServerProcess, find_in_path, free_loopback_address};

/// libcoap's server with OpenSSL, from Debian's `libcoap3-bin`.
const LIBCOAP_SERVER: &str = "coap-server-openssl";
/// The common name of the load generator's certificate.
const CLIENT_NAME: &str = "cairn-bench-device";
/// CPU time each P-256 operation is timed for.
const CRYPTO_TIME: Duration = Duration::from_millis(400);
/// Operations per timed batch; the median batch is kept.
const CRYPTO_BATCH: u32 = 50;
/// ECDSA verifications per handshake on the server, X.509: the client certificate's
/// signature (its issuer is the trust anchor) and the CertificateVerify.
const VERIFIES_X509: u32 = 2;
/// ECDSA verifications per handshake on the server, raw public keys: the CertificateVerify.
const VERIFIES_RPK: u32 = 1;

/// What `cairn bench dtls --ecdhe` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub timing: Timing,
    pub rounds: usize,
    pub clients: usize,
    pub cairn: bool,
    pub libcoap: bool,
    pub path: String,
    pub seconds: f64,
}

/// How the peers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    X509,
    RawPublicKey,
}

impl Mode {
    fn verifies(self) -> u32 {
        match self {
            Mode::X509 => VERIFIES_X509,
            Mode::RawPublicKey => VERIFIES_RPK,
        }
    }
}

/// A server under test in one mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    CairnX509,
    /// X.509 with the verifier's chain cache off: every handshake validates the chain.
    CairnX509Uncached,
    CairnRpk,
    LibcoapX509,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::CairnX509 => "cairn x509",
            Target::CairnX509Uncached => "cairn x509 no-cache",
            Target::CairnRpk => "cairn rpk",
            Target::LibcoapX509 => "libcoap x509",
        }
    }

    fn mode(self) -> Mode {
        match self {
            Target::CairnX509 | Target::CairnX509Uncached | Target::LibcoapX509 => Mode::X509,
            Target::CairnRpk => Mode::RawPublicKey,
        }
    }

    /// Starts this server on free loopback ports; returns it with its DTLS address.
    fn spawn(self, pki: &BenchPki) -> anyhow::Result<(ServerProcess, SocketAddr)> {
        let path = |file: &str| pki.path(file).into_os_string();
        let (plain, dtls, program, args): (_, _, _, Vec<OsString>) = match self {
            Target::CairnX509 | Target::CairnX509Uncached | Target::CairnRpk => {
                let (plain, dtls) = (free_loopback_address()?, free_loopback_address()?);
                let mut args: Vec<OsString> = [
                    "coap",
                    "serve",
                    "--listen",
                    &plain.to_string(),
                    "--dtls-listen",
                    &dtls.to_string(),
                ]
                .map(OsString::from)
                .to_vec();
                args.extend(["--key".into(), path("server.key")]);
                match self {
                    Target::CairnRpk => args.extend(["--rpk".into(), path("client.pub")]),
                    _ => {
                        args.extend(["--cert".into(), path("server.pem")]);
                        args.extend(["--ca".into(), path("ca.pem")]);
                    }
                }
                if self == Target::CairnX509Uncached {
                    args.extend(["--chain-cache".into(), "0".into()]);
                }
                (
                    plain,
                    dtls,
                    std::env::current_exe().context("cannot find the cairn binary")?,
                    args,
                )
            }
            Target::LibcoapX509 => {
                let plain = super::dtls::free_port_pair()?;
                let dtls = SocketAddr::from((plain.ip(), plain.port() + 1));
                let program = find_in_path(LIBCOAP_SERVER).with_context(|| {
                    format!("{LIBCOAP_SERVER} is not installed (Debian package libcoap3-bin; scripts/setup.sh installs it)")
                })?;
                let mut args: Vec<OsString> = ["-A", "127.0.0.1", "-p", &plain.port().to_string()]
                    .map(OsString::from)
                    .to_vec();
                // -C: the client's certificate is requested and validated against the CA.
                args.extend(["-c".into(), path("server.pem")]);
                args.extend(["-j".into(), path("server.key")]);
                args.extend(["-C".into(), path("ca.pem")]);
                (plain, dtls, program, args)
            }
        };
        Ok((
            ServerProcess::spawn(self.name(), &program, &args, plain)?,
            dtls,
        ))
    }
}

/// A CA, a server and a client certificate with their keys and public keys, as files in a
/// temporary directory (removed on drop).
struct BenchPki {
    dir: PathBuf,
}

impl BenchPki {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("cairn-bench-ecdhe-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let pki = Self { dir };
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Cairn bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;
        pki.write("ca.pem", ca.pem().as_bytes())?;
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, common_name, dns) in [
            ("server", "localhost", vec!["localhost".to_string()]),
            ("client", CLIENT_NAME, Vec::new()),
        ] {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(dns)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer)?;
            pki.write(&format!("{name}.pem"), cert.pem().as_bytes())?;
            pki.write(&format!("{name}.key"), key.serialize_pem().as_bytes())?;
            pki.write(&format!("{name}.pub"), key.public_key_pem().as_bytes())?;
        }
        Ok(pki)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn write(&self, file: &str, bytes: &[u8]) -> anyhow::Result<()> {
        std::fs::write(self.path(file), bytes)
            .with_context(|| format!("cannot write {}", self.path(file).display()))
    }

    fn read(&self, file: &str) -> anyhow::Result<Vec<u8>> {
        read(&self.path(file))
    }

    /// The load generator's credentials in `mode`.
    fn client_credentials(&self, mode: Mode) -> anyhow::Result<Credentials> {
        let config = match mode {
            Mode::X509 => ClientCertificateConfig {
                credentials: Some(DtlsCredentials::from_pem(
                    &self.read("client.pem")?,
                    &self.read("client.key")?,
                )?),
                server_auth: PeerVerifier::x509(X509Verifier::from_pem(&self.read("ca.pem")?)?),
                server_name: Some("localhost".into()),
            },
            Mode::RawPublicKey => {
                let mut keys = RawPublicKeys::new();
                keys.insert_pem(&self.read("server.pub")?, b"server".to_vec())?;
                ClientCertificateConfig {
                    credentials: Some(DtlsCredentials::raw_public_key(PrivateKey::from_pem(
                        &self.read("client.key")?,
                    )?)),
                    server_auth: PeerVerifier::raw_public_keys(Arc::new(keys)),
                    server_name: None,
                }
            }
        };
        Ok(Credentials::Certificate(Arc::new(config)))
    }
}

impl Drop for BenchPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// CPU time of one P-256 operation with `aws-lc-rs`, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CryptoCosts {
    pub sign_us: f64,
    pub verify_us: f64,
    pub keygen_us: f64,
    pub ecdh_us: f64,
}

impl CryptoCosts {
    /// Server CPU time of the P-256 operations of one handshake with `verifies` ECDSA
    /// verifications, in microseconds.
    pub fn handshake_us(&self, verifies: u32) -> f64 {
        self.sign_us + f64::from(verifies) * self.verify_us + self.keygen_us + self.ecdh_us
    }

    /// Handshakes per second of one core if nothing but these operations cost anything.
    pub fn limit(&self, verifies: u32) -> f64 {
        1e6 / self.handshake_us(verifies)
    }

    /// Times each operation on this thread's CPU clock.
    fn measure() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let unspecified = |_| anyhow::anyhow!("aws-lc-rs failed");
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(unspecified)?;
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("aws-lc-rs refused its own key"))?;
        // What the server signs: client random, server random and the ECDH parameters.
        let message = [0x5a_u8; 32 + 32 + 69];
        let signature = signer.sign(&rng, &message).map_err(unspecified)?;
        let public = signer.public_key().as_ref().to_vec();
        let verifier =
            aws_lc_rs::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public);
        let peer = agreement::PrivateKey::generate(&ECDH_P256).map_err(unspecified)?;
        let peer_point = peer.compute_public_key().map_err(unspecified)?;
        let own = agreement::PrivateKey::generate(&ECDH_P256).map_err(unspecified)?;
        let sign_us = time_operation(|| signer.sign(&rng, &message).is_ok())?;
        let verify_us = time_operation(|| verifier.verify(&message, signature.as_ref()).is_ok())?;
        let keygen_us = time_operation(|| {
            agreement::PrivateKey::generate(&ECDH_P256)
                .and_then(|key| key.compute_public_key().map(|point| point.as_ref()[0] == 4))
                .unwrap_or(false)
        })?;
        let ecdh_us = time_operation(|| {
            agreement::agree(
                &own,
                UnparsedPublicKey::new(&ECDH_P256, peer_point.as_ref()),
                (),
                |secret| Ok(secret.len() == 32),
            )
            .unwrap_or(false)
        })?;
        Ok(Self {
            sign_us,
            verify_us,
            keygen_us,
            ecdh_us,
        })
    }
}

fn thread_cpu() -> Duration {
    let time = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(time.tv_sec).unwrap_or(0),
        u32::try_from(time.tv_nsec).unwrap_or(0),
    )
}

/// The median over batches of the CPU time of one call of `operation`, in microseconds;
/// `operation` says whether it succeeded.
fn time_operation(mut operation: impl FnMut() -> bool) -> anyhow::Result<f64> {
    let begun = thread_cpu();
    let mut batches = Vec::new();
    while thread_cpu().saturating_sub(begun) < CRYPTO_TIME || batches.len() < 5 {
        let start = thread_cpu();
        for _ in 0..CRYPTO_BATCH {
            if !operation() {
                bail!("a P-256 operation failed");
            }
        }
        let elapsed = thread_cpu().saturating_sub(start);
        batches.push(elapsed.as_secs_f64() * 1e6 / f64::from(CRYPTO_BATCH));
    }
    batches.sort_by(f64::total_cmp);
    Ok(batches[batches.len() / 2])
}

/// A server under test with its DTLS address and the generator's credentials for it.
struct Running {
    target: Target,
    process: ServerProcess,
    dtls: SocketAddr,
    credentials: Credentials,
    window: Option<Window>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let targets: Vec<Target> = [
        Target::CairnX509,
        Target::CairnX509Uncached,
        Target::CairnRpk,
        Target::LibcoapX509,
    ]
    .into_iter()
    .filter(|target| match target {
        Target::CairnX509 | Target::CairnX509Uncached | Target::CairnRpk => options.cairn,
        Target::LibcoapX509 => options.libcoap,
    })
    .collect();
    let request = GetRequest::new(&options.path);
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; measure with a release build (cargo build --release)"
        );
    }
    let stop = stop_on_signal()?;
    let pki = BenchPki::new()?;
    let mut servers = Vec::with_capacity(targets.len());
    for &target in &targets {
        let start = || -> anyhow::Result<Running> {
            let (mut process, dtls) = target.spawn(&pki)?;
            let credentials = pki.client_credentials(target.mode())?;
            process.wait_until_ready(&request, &stop)?;
            dtls_load::probe(&mut process, dtls, &credentials, &request, &stop)?;
            Ok(Running {
                target,
                process,
                dtls,
                credentials,
                window: None,
            })
        };
        servers.push(start().with_context(|| format!("cannot benchmark {}", target.name()))?);
    }
    warn_if_busy();
    let costs = CryptoCosts::measure()?;
    println!(
        "DTLS 1.2 ECDHE-ECDSA (secp256r1), mutual authentication, CoAP GET {}, on 127.0.0.1; \
         {} s measured per server, in {} round(s) with {} s warm-up each",
        options.path,
        options.seconds,
        options.rounds,
        options.timing.warmup.as_secs_f64()
    );
    println!(
        "\nP-256 with aws-lc-rs, CPU time per operation: ECDSA sign {:.1} us, ECDSA verify {:.1} us, \
         key generation {:.1} us, ECDH {:.1} us",
        costs.sign_us, costs.verify_us, costs.keygen_us, costs.ecdh_us
    );
    for (mode, name) in [(Mode::X509, "X.509"), (Mode::RawPublicKey, "RPK")] {
        println!(
            "crypto-bound limit, {name}: sign + {} verify + keygen + ECDH = {:.1} us -> {:.0} handshakes per server CPU second",
            mode.verifies(),
            costs.handshake_us(mode.verifies()),
            costs.limit(mode.verifies())
        );
    }
    println!(
        "\nFull handshakes (new session + one GET + close_notify), {} clients back to back:",
        options.clients
    );
    for _ in 0..options.rounds {
        for server in &mut servers {
            let window = dtls_load::run_handshakes(
                &mut server.process,
                server.dtls,
                &server.credentials,
                &request,
                options.clients,
                options.timing,
                &stop,
            )?;
            server.window = Some(Window::merge(server.window.take(), window));
        }
    }
    println!(
        "{:<19} {:>12} {:>14} {:>12} {:>9} {:>8} {:>12} {:>17} {:>9}",
        "server",
        "handshakes/s",
        "server CPU us",
        "hs/CPU-s",
        "limit",
        "% limit",
        "server cores",
        "generator CPU us",
        "failures"
    );
    let mut figures = Vec::new();
    for server in &servers {
        let Some(window) = &server.window else {
            continue;
        };
        let per_cpu_second = per_cpu_second(window);
        let limit = costs.limit(server.target.mode().verifies());
        println!(
            "{:<19} {:>12.0} {:>14} {:>12} {:>9.0} {:>8} {:>12.2} {:>17} {:>9}",
            server.target.name(),
            window.per_second(),
            format_option(window.server_cpu_us(), 1),
            format_option(per_cpu_second, 0),
            limit,
            format_option(per_cpu_second.map(|rate| 100.0 * rate / limit), 1),
            window.server_cores(),
            format_option(window.generator_cpu_us(), 1),
            window.failures,
        );
        figures.push((server.target, per_cpu_second));
    }
    println!(
        "(hs/CPU-s: handshakes per second of the server's CPU time, the figure that compares \
         to the limit of one core; handshakes/s depends on the cores the server and the \
         generator got)"
    );
    drop(servers);
    println!("{}", result_line(&figures, costs.limit(VERIFIES_X509)));
    Ok(())
}

/// Handshakes per second of server CPU time.
fn per_cpu_second(window: &Window) -> Option<f64> {
    window
        .server_cpu_us()
        .filter(|us| *us > 0.0)
        .map(|us| 1e6 / us)
}

/// `RESULT dtls_ecdhe cairn_hs=N libcoap_hs=N limit_hs=N`: X.509 handshakes per second of
/// server CPU time, and the crypto-bound limit of X.509 handshakes per core-second.
fn result_line(figures: &[(Target, Option<f64>)], limit: f64) -> String {
    let find = |target: Target| {
        figures
            .iter()
            .find(|(t, _)| *t == target)
            .and_then(|(_, rate)| *rate)
    };
    format!(
        "RESULT dtls_ecdhe cairn_hs={} libcoap_hs={} limit_hs={:.0}",
        format_option(find(Target::CairnX509), 0),
        format_option(find(Target::LibcoapX509), 0),
        limit
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_adds_up_the_operations() {
        let costs = CryptoCosts {
            sign_us: 20.0,
            verify_us: 50.0,
            keygen_us: 15.0,
            ecdh_us: 65.0,
        };
        assert_eq!(costs.handshake_us(2), 200.0);
        assert_eq!(costs.limit(2), 5000.0);
        assert_eq!(costs.limit(1), 1e6 / 150.0);
    }

    #[test]
    fn result_line_marks_what_was_not_measured() {
        assert_eq!(
            result_line(&[(Target::CairnX509, Some(3999.6))], 4200.2),
            "RESULT dtls_ecdhe cairn_hs=4000 libcoap_hs=NA limit_hs=4200"
        );
    }

    /// The generator in certificate mode against a real peer: libcoap's server with mutual
    /// X.509 authentication (scripts/setup.sh installs it).
    #[test]
    fn measures_libcoap_with_certificates() {
        let pki = BenchPki::new().unwrap();
        let (mut server, dtls) = Target::LibcoapX509
            .spawn(&pki)
            .expect("coap-server-openssl (run scripts/setup.sh)");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let request = GetRequest::new("/");
        let credentials = pki.client_credentials(Mode::X509).unwrap();
        server.wait_until_ready(&request, &stop).unwrap();
        dtls_load::probe(&mut server, dtls, &credentials, &request, &stop).unwrap();
        let timing = Timing {
            warmup: Duration::from_millis(100),
            measured: Duration::from_millis(700),
        };
        let window =
            dtls_load::run_handshakes(&mut server, dtls, &credentials, &request, 4, timing, &stop)
                .unwrap();
        assert!(window.completed > 5, "{window:?}");
        assert!(per_cpu_second(&window).is_some_and(|rate| rate > 0.0));
    }
}
