//! `cairn keys factory`: factory bootstrap credentials for a batch of devices.
//!
//! Each device gets its own file, `devices/ENDPOINT.toml` (mode 0600), with its endpoint name,
//! the Bootstrap-Server URI and its PSK identity and key, to be flashed into that device and
//! nowhere else. The Bootstrap-Server gets `manifest.toml`, where every key is sealed to the
//! server's X25519 public key (from `cairn bootstrap keygen`): an ephemeral X25519 key per
//! device, HKDF-SHA-256 over the shared secret (salt: both public keys; info: a label and the
//! endpoint name), AES-256-GCM with the endpoint name and identity as associated data. Only the
//! holder of the server's private key (`cairn bootstrap import`) can read the keys; the
//! manifest can travel from the factory like any other file.
//!
//! Keys are 32 random alphanumeric characters (about 190 bits) from the operating system's
//! generator: text, so that the usual tools (`coap-client -k`) take them as they are.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{PrivateKey, UnparsedPublicKey, X25519, agree};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use cairn_store::{DeviceCredentials, PskCredential, SecretBytes};
use clap::Args;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The manifest's format tag.
const MANIFEST_FORMAT: &str = "cairn-factory-manifest/1";
const HKDF_LABEL: &[u8] = b"cairn factory manifest v1\0";
/// The server's private key file in the data directory.
pub const SERVER_KEY_FILE: &str = "bootstrap-x25519.key";
const KEY_ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Args)]
pub struct FactoryArgs {
    /// Number of devices.
    #[arg(long)]
    count: usize,
    /// Output directory (created; must not hold a manifest already).
    #[arg(long)]
    out: PathBuf,
    /// The Bootstrap-Server's X25519 public key (hex, or a file holding it), from
    /// `cairn bootstrap keygen`.
    #[arg(long)]
    server_key: String,
    /// The Bootstrap-Server URI written into each device file.
    #[arg(long, default_value = "coaps://127.0.0.1:5784")]
    bootstrap_uri: String,
    /// Endpoint names are this prefix and a number.
    #[arg(long, default_value = "dev-")]
    prefix: String,
    /// First number.
    #[arg(long, default_value_t = 1)]
    first: u64,
}

/// One device's factory file.
#[derive(Serialize, Deserialize)]
pub struct DeviceFile {
    pub endpoint: String,
    pub bootstrap_uri: String,
    pub psk_identity: String,
    /// The key (text).
    pub psk_key: String,
}

impl Drop for DeviceFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.psk_key);
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    server_public_key: String,
    #[serde(default)]
    device: Vec<ManifestEntry>,
}

#[derive(Serialize, Deserialize)]
struct ManifestEntry {
    endpoint: String,
    psk_identity: String,
    /// Hex of ephemeral public key (32) || nonce (12) || ciphertext and tag.
    sealed_key: String,
}

fn random_bytes(length: usize) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(vec![0u8; length]);
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("random generator failed"))?;
    Ok(bytes)
}

/// A random key of alphanumeric characters (rejection sampling: no modulo bias).
fn random_text_key(length: usize) -> anyhow::Result<Zeroizing<String>> {
    let mut key = Zeroizing::new(String::with_capacity(length));
    while key.len() < length {
        for byte in random_bytes(64)?.iter() {
            if usize::from(*byte) < 62 * 4 && key.len() < length {
                key.push(char::from(KEY_ALPHABET[usize::from(*byte) % 62]));
            }
        }
    }
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn manifest_key(
    shared: &[u8],
    ephemeral_public: &[u8],
    server_public: &[u8],
    endpoint: &str,
) -> anyhow::Result<LessSafeKey> {
    let mut salt = ephemeral_public.to_vec();
    salt.extend_from_slice(server_public);
    let mut info = HKDF_LABEL.to_vec();
    info.extend_from_slice(endpoint.as_bytes());
    let info = [info.as_slice()];
    let mut key = Zeroizing::new([0u8; 32]);
    Salt::new(HKDF_SHA256, &salt)
        .extract(shared)
        .expand(&info, HKDF_SHA256)
        .and_then(|okm| okm.fill(key.as_mut()))
        .map_err(|_| anyhow::anyhow!("HKDF failed"))?;
    let unbound = UnboundKey::new(&AES_256_GCM, key.as_ref())
        .map_err(|_| anyhow::anyhow!("AES-256-GCM key"))?;
    Ok(LessSafeKey::new(unbound))
}

fn associated_data(endpoint: &str, identity: &str) -> Vec<u8> {
    let mut aad = endpoint.as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(identity.as_bytes());
    aad
}

/// Seals `key` to the server's public key.
fn seal(
    server_public: &[u8],
    endpoint: &str,
    identity: &str,
    key: &[u8],
) -> anyhow::Result<String> {
    let ephemeral_bytes = random_bytes(32)?;
    let ephemeral = PrivateKey::from_private_key(&X25519, &ephemeral_bytes)
        .map_err(|_| anyhow::anyhow!("X25519 key"))?;
    let ephemeral_public = ephemeral
        .compute_public_key()
        .map_err(|_| anyhow::anyhow!("X25519 public key"))?;
    let cipher = agree(
        &ephemeral,
        UnparsedPublicKey::new(&X25519, server_public),
        anyhow::anyhow!("the server public key is not an X25519 key"),
        |shared| manifest_key(shared, ephemeral_public.as_ref(), server_public, endpoint),
    )?;
    let nonce_bytes = random_bytes(12)?;
    let nonce =
        Nonce::try_assume_unique_for_key(&nonce_bytes).map_err(|_| anyhow::anyhow!("nonce"))?;
    let mut sealed = Zeroizing::new(key.to_vec());
    cipher
        .seal_in_place_append_tag(
            nonce,
            Aad::from(associated_data(endpoint, identity)),
            &mut *sealed,
        )
        .map_err(|_| anyhow::anyhow!("sealing failed"))?;
    let mut out = ephemeral_public.as_ref().to_vec();
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&sealed);
    Ok(hex(&out))
}

/// Opens a sealed key with the server's private key.
fn open(
    server: &PrivateKey,
    server_public: &[u8],
    endpoint: &str,
    identity: &str,
    sealed_hex: &str,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let sealed = crate::hex::decode(sealed_hex).context("sealed key")?;
    anyhow::ensure!(sealed.len() > 32 + 12 + 16, "sealed key too short");
    let (ephemeral_public, rest) = sealed.split_at(32);
    let (nonce, ciphertext) = rest.split_at(12);
    let cipher = agree(
        server,
        UnparsedPublicKey::new(&X25519, ephemeral_public),
        anyhow::anyhow!("bad ephemeral key"),
        |shared| manifest_key(shared, ephemeral_public, server_public, endpoint),
    )?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("nonce"))?;
    let plain = cipher
        .open_in_place(nonce, Aad::from(associated_data(endpoint, identity)), &mut buffer)
        .map_err(|_| {
            anyhow::anyhow!(
                "the key of {endpoint:?} does not open: another server's key, or the manifest was changed"
            )
        })?;
    Ok(Zeroizing::new(plain.to_vec()))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    write_private_file(path, text, true)
}

/// Creates a file only its owner can read; `durable`: synced to disk before it returns.
fn write_private_file(path: &Path, text: &str, durable: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    if durable {
        file.sync_all()?;
    }
    Ok(())
}

/// The server's X25519 private key from the data directory.
pub fn load_server_key(data_dir: &Path) -> anyhow::Result<(PrivateKey, Vec<u8>)> {
    let path = data_dir.join(SERVER_KEY_FILE);
    let text = Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (run `cairn bootstrap keygen` first)",
            path.display()
        )
    })?);
    let bytes = Zeroizing::new(crate::hex::decode(&text)?);
    let key = PrivateKey::from_private_key(&X25519, &bytes)
        .map_err(|_| anyhow::anyhow!("{} is not an X25519 key", path.display()))?;
    let public = key
        .compute_public_key()
        .map_err(|_| anyhow::anyhow!("X25519 public key"))?
        .as_ref()
        .to_vec();
    Ok((key, public))
}

/// Creates the server's key pair in the data directory; returns the public key.
pub fn create_server_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(SERVER_KEY_FILE);
    if path.exists() {
        bail!("{} exists already", path.display());
    }
    let bytes = random_bytes(32)?;
    write_private(&path, &format!("{}\n", hex(&bytes)))?;
    Ok(load_server_key(data_dir)?.1)
}

/// Reads a manifest and opens its keys.
pub fn read_manifest(path: &Path, data_dir: &Path) -> anyhow::Result<Vec<DeviceCredentials>> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(metadata.len() < 256 << 20, "the manifest is too large");
    let text = std::fs::read_to_string(path)?;
    let manifest: Manifest = toml::from_str(&text)
        .with_context(|| format!("{} is not a factory manifest", path.display()))?;
    anyhow::ensure!(
        manifest.format == MANIFEST_FORMAT,
        "unknown manifest format {:?}",
        manifest.format
    );
    let (server, public) = load_server_key(data_dir)?;
    anyhow::ensure!(
        crate::hex::decode(&manifest.server_public_key)? == public,
        "the manifest was sealed to another Bootstrap-Server key"
    );
    manifest
        .device
        .iter()
        .map(|entry| {
            let key = open(
                &server,
                &public,
                &entry.endpoint,
                &entry.psk_identity,
                &entry.sealed_key,
            )?;
            Ok(DeviceCredentials::factory(
                entry.endpoint.clone(),
                PskCredential {
                    identity: entry.psk_identity.as_bytes().to_vec(),
                    key: SecretBytes::new(key.to_vec()),
                },
            ))
        })
        .collect()
}

/// Reads one device's factory file.
pub fn read_device_file(path: &Path) -> anyhow::Result<DeviceFile> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(metadata.len() < 64 << 10, "{} is too large", path.display());
    let text = Zeroizing::new(std::fs::read_to_string(path)?);
    toml::from_str(&text).with_context(|| format!("{} is not a device file", path.display()))
}

/// The device files of a factory output directory, in name order.
pub fn device_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let devices = dir.join("devices");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&devices)
        .with_context(|| format!("cannot list {}", devices.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn run(args: FactoryArgs) -> anyhow::Result<()> {
    let key_text = match std::fs::read_to_string(&args.server_key) {
        Ok(text) => text,
        Err(_) => args.server_key.clone(),
    };
    let server_public = crate::hex::decode(&key_text).context("--server-key")?;
    generate(
        args.count,
        &args.out,
        &server_public,
        &args.bootstrap_uri,
        &args.prefix,
        args.first,
    )?;
    eprintln!(
        "cairn keys factory: {} device files in {}, sealed manifest {}",
        args.count,
        args.out.join("devices").display(),
        args.out.join("manifest.toml").display()
    );
    Ok(())
}

/// Writes `count` device files and the sealed manifest into `out`, each synced to disk.
pub fn generate(
    count: usize,
    out: &Path,
    server_public: &[u8],
    bootstrap_uri: &str,
    prefix: &str,
    first: u64,
) -> anyhow::Result<()> {
    generate_with(
        count,
        out,
        server_public,
        bootstrap_uri,
        prefix,
        first,
        true,
    )
}

/// [`generate`], with the files synced to disk only if `durable` (a benchmark's throwaway
/// factory output need not be).
pub fn generate_with(
    count: usize,
    out: &Path,
    server_public: &[u8],
    bootstrap_uri: &str,
    prefix: &str,
    first: u64,
    durable: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(count > 0, "--count must be positive");
    anyhow::ensure!(
        server_public.len() == 32,
        "--server-key is not an X25519 public key"
    );
    let devices_dir = out.join("devices");
    std::fs::create_dir_all(&devices_dir)
        .with_context(|| format!("cannot create {}", devices_dir.display()))?;
    let manifest_path = out.join("manifest.toml");
    if manifest_path.exists() {
        bail!("{} exists already", manifest_path.display());
    }
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        server_public_key: hex(server_public),
        device: Vec::with_capacity(count),
    };
    let width = (first + count as u64).to_string().len().max(6);
    for number in first..first + count as u64 {
        let endpoint = format!("{prefix}{number:0width$}");
        let psk_identity = format!("factory-{}", hex(&random_bytes(12)?));
        let key = random_text_key(32)?;
        manifest.device.push(ManifestEntry {
            sealed_key: seal(server_public, &endpoint, &psk_identity, key.as_bytes())?,
            endpoint: endpoint.clone(),
            psk_identity: psk_identity.clone(),
        });
        let file = DeviceFile {
            endpoint: endpoint.clone(),
            bootstrap_uri: bootstrap_uri.to_owned(),
            psk_identity,
            psk_key: key.to_string(),
        };
        let text = Zeroizing::new(toml::to_string(&file)?);
        write_private_file(
            &devices_dir.join(format!("{endpoint}.toml")),
            &text,
            durable,
        )?;
    }
    write_private_file(&manifest_path, &toml::to_string(&manifest)?, durable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_the_server_key_and_their_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let public = create_server_key(dir.path()).unwrap();
        assert!(create_server_key(dir.path()).is_err(), "never overwritten");
        let (server, loaded) = load_server_key(dir.path()).unwrap();
        assert_eq!(loaded, public);
        let sealed = seal(&public, "dev-1", "id-1", b"the-key-of-device-1").unwrap();
        assert!(!sealed.contains(&hex(b"the-key")));
        let opened = open(&server, &public, "dev-1", "id-1", &sealed).unwrap();
        assert_eq!(opened.as_slice(), b"the-key-of-device-1");
        assert!(open(&server, &public, "dev-2", "id-1", &sealed).is_err());
        assert!(open(&server, &public, "dev-1", "id-2", &sealed).is_err());
        let other = tempfile::tempdir().unwrap();
        create_server_key(other.path()).unwrap();
        let (stranger, stranger_public) = load_server_key(other.path()).unwrap();
        assert!(open(&stranger, &stranger_public, "dev-1", "id-1", &sealed).is_err());
    }

    #[test]
    fn text_keys_are_long_random_and_alphanumeric() {
        let a = random_text_key(32).unwrap();
        let b = random_text_key(32).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(*a, *b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
