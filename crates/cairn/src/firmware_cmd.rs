//! `cairn firmware keygen | sign | verify | diff`: signing keys, signed manifests
//! (COSE_Sign1, Ed25519 or P-256) and bsdiff deltas for over-the-air updates.
//!
//! Key files are one line, `<alg>:<hex>`: `firmware.key` (private, mode 0600, never
//! overwritten) and `firmware.pub`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cairn_firmware::delta::{apply_patch, create_patch};
use cairn_firmware::{
    Algorithm, DeviceIdentity, Manifest, Payload, PublicKey, SigningKey, TrustedKeys, UpdateError,
    sha256, sign_manifest, update_result, verify_manifest,
};
use clap::{Args, Subcommand, ValueEnum};
use rand::RngCore;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct FirmwareArgs {
    #[command(subcommand)]
    command: FirmwareCommand,
}

#[derive(Debug, Subcommand)]
enum FirmwareCommand {
    /// Create a signing key pair: DIR/firmware.key (mode 0600) and DIR/firmware.pub.
    Keygen(KeygenArgs),
    /// Sign a manifest for an image (or, with --delta, for a patch from --precursor).
    Sign(SignArgs),
    /// Check a signed manifest against a public key and an image.
    Verify(VerifyArgs),
    /// Make a bsdiff patch from OLD to NEW and print the sizes.
    Diff(DiffArgs),
    /// Add a package to a running server's firmware repository (through its data directory).
    Upload(crate::campaign_cmd::UploadArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AlgArg {
    Ed25519,
    P256,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Directory for the key files (created).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "ed25519")]
    alg: AlgArg,
}

#[derive(Debug, Args)]
struct SignArgs {
    /// Private key file (`firmware.key`).
    #[arg(long)]
    key: PathBuf,
    /// The new firmware image.
    #[arg(long)]
    image: PathBuf,
    /// The image the devices run now (the base of a delta).
    #[arg(long)]
    precursor: Option<PathBuf>,
    /// Ship a bsdiff patch from --precursor instead of the whole image.
    #[arg(long, requires = "precursor")]
    delta: bool,
    /// Where the patch goes with --delta (default: the manifest path with `.patch`).
    #[arg(long)]
    patch_out: Option<PathBuf>,
    #[arg(long)]
    vendor: String,
    #[arg(long)]
    class: String,
    /// Sequence number; devices refuse anything not above what they run.
    #[arg(long)]
    seq: u64,
    /// Expiry, seconds since the Unix epoch.
    #[arg(long)]
    expires: Option<u64>,
    /// Minimum hardware version.
    #[arg(long)]
    min_hw: Option<u32>,
    /// Minimum bootloader version.
    #[arg(long)]
    min_bootloader: Option<u32>,
    /// Signed manifest file to write.
    #[arg(long)]
    out: PathBuf,
    /// Also write the package file (manifest and payload in one, for the /5 Package
    /// resource or a Package URI).
    #[arg(long)]
    package_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Public key file (`firmware.pub`); repeat for several trusted keys.
    #[arg(long = "pub", required = true)]
    public: Vec<PathBuf>,
    #[arg(long)]
    manifest: PathBuf,
    /// The image the manifest describes (the result, for a delta).
    #[arg(long)]
    image: PathBuf,
    /// For a delta: the patch, checked against the manifest and applied to --precursor.
    #[arg(long, requires = "precursor")]
    patch: Option<PathBuf>,
    /// For a delta: the base image.
    #[arg(long)]
    precursor: Option<PathBuf>,
    /// Sequence number installed on the device (the manifest must be above it).
    #[arg(long, default_value_t = 0)]
    installed_seq: u64,
    /// Check the vendor id.
    #[arg(long)]
    vendor: Option<String>,
    /// Check the device class id.
    #[arg(long)]
    class: Option<String>,
}

#[derive(Debug, Args)]
struct DiffArgs {
    old: PathBuf,
    new: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: FirmwareArgs) -> anyhow::Result<()> {
    match args.command {
        FirmwareCommand::Keygen(args) => keygen(args),
        FirmwareCommand::Sign(args) => sign(args),
        FirmwareCommand::Verify(args) => verify(args),
        FirmwareCommand::Diff(args) => diff(args),
        FirmwareCommand::Upload(args) => crate::campaign_cmd::upload(args),
    }
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let algorithm = match args.alg {
        AlgArg::Ed25519 => Algorithm::Ed25519,
        AlgArg::P256 => Algorithm::P256,
    };
    let key = loop {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        // A P-256 seed outside the scalar range is vanishingly rare: draw again.
        if let Ok(key) = SigningKey::from_random(algorithm, &seed) {
            break key;
        }
    };
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let private = args.out.join("firmware.key");
    let public = args.out.join("firmware.pub");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("creating {} (it must not exist yet)", private.display()))?;
    file.write_all(key.to_text().as_bytes())?;
    fs::write(&public, key.public_key().to_text())?;
    println!("private key: {}", private.display());
    println!("public key:  {}", public.display());
    println!("key id:      {}", hex(&key.public_key().key_id()));
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    let text = Zeroizing::new(
        fs::read_to_string(&args.key).with_context(|| format!("reading {}", args.key.display()))?,
    );
    let key = SigningKey::from_text(&text).context("reading the private key")?;
    let image = read(&args.image)?;
    let mut payload_bytes = image.clone();
    let payload = match (&args.precursor, args.delta) {
        (Some(_), false) => bail!("--precursor is the base of a delta: add --delta"),
        (None, _) => Payload::Full,
        (Some(precursor), true) => {
            let old = read(precursor)?;
            let patch = create_patch(&old, &image)?;
            let patch_path = args
                .patch_out
                .clone()
                .unwrap_or_else(|| args.out.with_extension("patch"));
            fs::write(&patch_path, &patch)
                .with_context(|| format!("writing {}", patch_path.display()))?;
            println!(
                "patch: {} ({} bytes, {:.1}% of the {}-byte image)",
                patch_path.display(),
                patch.len(),
                100.0 * patch.len() as f64 / image.len().max(1) as f64,
                image.len()
            );
            let payload = Payload::Delta {
                precursor_digest: sha256(&old),
                patch_digest: sha256(&patch),
                patch_size: patch.len() as u64,
            };
            payload_bytes = patch;
            payload
        }
    };
    let manifest = Manifest {
        vendor: args.vendor,
        class: args.class,
        sequence: args.seq,
        image_digest: sha256(&image),
        image_size: image.len() as u64,
        payload,
        expires_at: args.expires,
        min_hardware_version: args.min_hw,
        min_bootloader_version: args.min_bootloader,
    };
    // Check the fields against the decoder's limits before anything is written.
    Manifest::from_payload(&manifest.to_payload()).context("manifest fields")?;
    let signed = sign_manifest(&manifest, &key);
    fs::write(&args.out, &signed).with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.package_out {
        let package = cairn_firmware::package::encode_package(&signed, &payload_bytes);
        fs::write(path, &package).with_context(|| format!("writing {}", path.display()))?;
        println!("package: {} ({} bytes)", path.display(), package.len());
    }
    println!(
        "manifest: {} ({} bytes, sequence {}, key id {})",
        args.out.display(),
        signed.len(),
        manifest.sequence,
        hex(&key.public_key().key_id())
    );
    Ok(())
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let mut keys = TrustedKeys::new();
    for path in &args.public {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.add(
            PublicKey::from_text(&text).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let signed = read(&args.manifest)?;
    let outcome = check(&signed, &keys, &args);
    match outcome {
        Ok(manifest) => {
            println!("manifest OK");
            print_manifest(&manifest);
            Ok(())
        }
        Err(error) => {
            bail!(
                "refused: {error} (LwM2M Update Result {})",
                update_result(&error).code()
            )
        }
    }
}

fn check(signed: &[u8], keys: &TrustedKeys, args: &VerifyArgs) -> Result<Manifest, UpdateError> {
    let manifest = verify_manifest(signed, keys)?;
    let device = DeviceIdentity {
        vendor: args
            .vendor
            .clone()
            .unwrap_or_else(|| manifest.vendor.clone()),
        class: args.class.clone().unwrap_or_else(|| manifest.class.clone()),
        hardware_version: u32::MAX,
        bootloader_version: u32::MAX,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .ok();
    manifest.check_applicable(&device, args.installed_seq, now)?;
    let image = fs::read(&args.image).map_err(|_| UpdateError::ImageDigestMismatch)?;
    if image.len() as u64 != manifest.image_size || sha256(&image) != manifest.image_digest {
        return Err(UpdateError::ImageDigestMismatch);
    }
    if let (Some(patch), Some(precursor)) = (&args.patch, &args.precursor) {
        let Payload::Delta {
            precursor_digest,
            patch_digest,
            ..
        } = manifest.payload
        else {
            return Err(UpdateError::WrongPrecursor);
        };
        let patch = fs::read(patch).map_err(|_| UpdateError::PayloadDigestMismatch)?;
        let old = fs::read(precursor).map_err(|_| UpdateError::WrongPrecursor)?;
        if sha256(&patch) != patch_digest {
            return Err(UpdateError::PayloadDigestMismatch);
        }
        if sha256(&old) != precursor_digest {
            return Err(UpdateError::WrongPrecursor);
        }
        if apply_patch(&old, &patch, manifest.image_size)? != image {
            return Err(UpdateError::ImageDigestMismatch);
        }
    }
    Ok(manifest)
}

fn print_manifest(manifest: &Manifest) {
    println!("vendor:     {}", manifest.vendor);
    println!("class:      {}", manifest.class);
    println!("sequence:   {}", manifest.sequence);
    println!(
        "image:      {} bytes, sha256 {}",
        manifest.image_size,
        hex(&manifest.image_digest)
    );
    match manifest.payload {
        Payload::Full => println!("payload:    full image"),
        Payload::Delta {
            precursor_digest,
            patch_size,
            ..
        } => println!(
            "payload:    delta, {patch_size} bytes, from sha256 {}",
            hex(&precursor_digest)
        ),
    }
    if let Some(expires) = manifest.expires_at {
        println!("expires:    {expires}");
    }
    if let Some(version) = manifest.min_hardware_version {
        println!("min hw:     {version}");
    }
    if let Some(version) = manifest.min_bootloader_version {
        println!("min boot:   {version}");
    }
}

fn diff(args: DiffArgs) -> anyhow::Result<()> {
    let old = read(&args.old)?;
    let new = read(&args.new)?;
    let patch = create_patch(&old, &new)?;
    if apply_patch(&old, &patch, new.len() as u64)? != new {
        bail!("the patch does not reproduce the new image");
    }
    fs::write(&args.out, &patch).with_context(|| format!("writing {}", args.out.display()))?;
    println!("old:   {} bytes", old.len());
    println!("new:   {} bytes", new.len());
    println!(
        "patch: {} bytes ({:.2}% of new)",
        patch.len(),
        100.0 * patch.len() as f64 / new.len().max(1) as f64
    );
    Ok(())
}
