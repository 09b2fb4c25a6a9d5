//! A simulated device and a model of the LwM2M client that drives it through
//! an update, restarting it whenever the power goes.

#![allow(dead_code)]

use cairn_firmware::delta::create_patch;
use cairn_firmware::sim::{SimFlash, SimPower, SplitMix64};
use cairn_firmware::*;

pub const SECTOR: usize = 2048;
pub const IMAGE_LEN: usize = 64 * 1024;
pub const CHUNK: usize = 700;
pub const WINDOW: usize = 2;

pub type SimDevice = Device<SimFlash, RecordStore<SimFlash>>;

/// A firmware-like image: code-shaped runs (repeated instruction patterns
/// with varying operands), tables and some noise.
pub fn firmware_image(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match rng.below(4) {
            0 | 1 => {
                let base = rng.next_u64().to_le_bytes();
                for i in 0..rng.below(64) + 16 {
                    out.extend_from_slice(&[0xe5, 0x9f, base[0] ^ (i as u8 & 3), base[1]]);
                }
            }
            2 => {
                let start = rng.below(1 << 20) as u32;
                for i in 0..rng.below(32) + 4 {
                    out.extend_from_slice(&(start + 4 * i as u32).to_le_bytes());
                }
            }
            _ => {
                for _ in 0..rng.below(48) + 8 {
                    out.push(rng.next_u64() as u8);
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// A new build of `old`: about `percent` of its bytes changed, in a few
/// patches, with a small insertion and a small deletion.
pub fn edited(old: &[u8], percent: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut new = old.to_vec();
    let budget = old.len() * percent / 100;
    let mut changed = 0;
    while changed < budget {
        let len = (rng.below(64) + 8) as usize;
        let at = rng.below((new.len() - len) as u64) as usize;
        for b in &mut new[at..at + len] {
            *b = rng.next_u64() as u8;
        }
        changed += len;
    }
    let at = new.len() / 3;
    new.splice(at..at, (0..100).map(|i| i as u8));
    let at = 2 * new.len() / 3;
    new.drain(at..at + 60);
    new
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A/B, full image.
    FullAB,
    /// A/B, delta staged then applied into the inactive slot.
    DeltaAB,
    /// One slot, delta patched in place by the bootloader.
    DeltaInPlace,
}

pub fn identity() -> DeviceIdentity {
    DeviceIdentity {
        vendor: "acme".into(),
        class: "meter-3".into(),
        hardware_version: 3,
        bootloader_version: 2,
    }
}

pub fn signer() -> SigningKey {
    SigningKey::from_random(Algorithm::Ed25519, &[42; 32]).unwrap()
}

pub fn manifest_for(new: &[u8], sequence: u64, payload: Payload) -> Manifest {
    Manifest {
        vendor: "acme".into(),
        class: "meter-3".into(),
        sequence,
        image_digest: sha256(new),
        image_size: new.len() as u64,
        payload,
        expires_at: None,
        min_hardware_version: Some(2),
        min_bootloader_version: None,
    }
}

/// A package: signed manifest and payload.
pub struct Package {
    pub manifest: Vec<u8>,
    pub payload: Vec<u8>,
}

pub fn package(old: &[u8], new: &[u8], sequence: u64, delta: bool, key: &SigningKey) -> Package {
    if delta {
        let patch = create_patch(old, new).unwrap();
        let payload = Payload::Delta {
            precursor_digest: sha256(old),
            patch_digest: sha256(&patch),
            patch_size: patch.len() as u64,
        };
        Package {
            manifest: sign_manifest(&manifest_for(new, sequence, payload), key),
            payload: patch,
        }
    } else {
        Package {
            manifest: sign_manifest(&manifest_for(new, sequence, Payload::Full), key),
            payload: new.to_vec(),
        }
    }
}

/// A simulated device: a main flash and a protected-storage flash on one
/// power supply.
pub struct Rig {
    pub power: SimPower,
    pub flash: SimFlash,
    pub meta: SimFlash,
    pub layout: Layout,
    pub keys: TrustedKeys,
}

impl Rig {
    pub fn new(path: Path, seed: u64, old: &[u8]) -> Self {
        let slot_sectors = (old.len() * 5 / 4).div_ceil(SECTOR);
        let layout = match path {
            Path::FullAB | Path::DeltaAB => Layout {
                slot_sectors,
                staging_sectors: (slot_sectors / 2).max(4),
                strategy: Strategy::AB,
            },
            Path::DeltaInPlace => Layout {
                slot_sectors,
                staging_sectors: (slot_sectors / 2).max(4),
                strategy: Strategy::InPlace { window: WINDOW },
            },
        };
        let power = SimPower::new(seed);
        let flash = SimFlash::new(
            Geometry {
                sector_size: SECTOR,
                sector_count: layout.sectors(),
            },
            power.clone(),
        );
        let meta = SimFlash::new(
            Geometry {
                sector_size: SECTOR,
                sector_count: 4,
            },
            power.clone(),
        );
        let keys = TrustedKeys::new().with(signer().public_key());
        let rig = Rig {
            power,
            flash,
            meta,
            layout,
            keys,
        };
        let mut device = rig.open().unwrap();
        let manifest = sign_manifest(&manifest_for(old, 1, Payload::Full), &signer());
        device.provision(old, &manifest).unwrap();
        rig
    }

    /// The device as it comes up from its flash contents.
    pub fn open(&self) -> Result<SimDevice, UpdateError> {
        Device::open(
            self.flash.clone(),
            RecordStore::new(self.meta.clone()),
            identity(),
            self.keys.clone(),
            self.layout,
        )
    }

    /// The raw bytes of a slot.
    pub fn slot_bytes(&self, slot: Slot, len: usize) -> Vec<u8> {
        let start = slot.index() * self.layout.slot_sectors * SECTOR;
        self.flash.contents()[start..start + len].to_vec()
    }
}

/// How a driven update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The new image runs, confirmed.
    Updated,
    /// The old image runs; the update was given up (Update Result 8).
    KeptOld,
}

/// The client: takes the device from wherever it stands to the end of the
/// update, restarting after every power loss. `on_boot` sees every image
/// the bootloader starts. Panics on a brick (no bootable image) or when the
/// device runs something that is neither image.
pub fn drive(rig: &Rig, package: &Package, old: &[u8], new: &[u8]) -> Outcome {
    drive_with(rig, package, old, new, &mut |_| {})
}

/// [`drive`], calling `after_cut` each time the power comes back after a
/// cut (to arm the next fault).
pub fn drive_with(
    rig: &Rig,
    package: &Package,
    old: &[u8],
    new: &[u8],
    after_cut: &mut dyn FnMut(&SimPower),
) -> Outcome {
    let old_digest = sha256(old);
    let new_digest = sha256(new);
    let mut restarts = 0;
    let mut need_boot = false;
    let mut passes = 0;
    let mut device = loop {
        match rig.open() {
            Ok(device) => break device,
            Err(e) if e.is_power_loss() => {
                rig.power.restore();
                after_cut(&rig.power);
            }
            Err(e) => panic!("device does not open: {e}"),
        }
    };
    loop {
        passes += 1;
        assert!(restarts < 200 && passes < 400, "update does not converge");
        let step = step(&mut device, rig, package, need_boot, old_digest, new_digest);
        match step {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => {}
            Err(e) if e.is_power_loss() => restarts += 1,
            Err(e) => panic!("update failed without a power cut: {e}"),
        }
        // A restart: the device comes up again from its flash contents.
        if !rig.power.is_powered() {
            rig.power.restore();
            after_cut(&rig.power);
        }
        device = loop {
            match rig.open() {
                Ok(device) => break device,
                Err(e) if e.is_power_loss() => {
                    rig.power.restore();
                    after_cut(&rig.power);
                }
                Err(e) => panic!("device does not reopen: {e}"),
            }
        };
        need_boot = true;
    }
}

/// One pass of the client. `Ok(None)`: restart the device and call again.
fn step(
    device: &mut SimDevice,
    rig: &Rig,
    package: &Package,
    need_boot: bool,
    old_digest: Digest,
    new_digest: Digest,
) -> Result<Option<Outcome>, UpdateError> {
    if need_boot {
        let booted = match device.boot() {
            Ok(booted) => booted,
            Err(BootFailure::NoBootableImage) => panic!("bricked: no bootable image"),
            Err(BootFailure::Step(e)) => return Err(e),
        };
        let manifest = device.boot_state().slots[booted.slot.index()]
            .clone()
            .expect("booted slot has a manifest");
        let manifest = verify_manifest(&manifest, &rig.keys).unwrap();
        let running = sha256(&rig.slot_bytes(booted.slot, manifest.image_size as usize));
        assert!(
            running == old_digest || running == new_digest,
            "device runs an unknown image"
        );
        assert_eq!(running, manifest.image_digest);
        if booted.trial {
            device.confirm()?;
        }
        if running == new_digest && device.update_state() == UpdateState::Idle {
            return Ok(Some(Outcome::Updated));
        }
        if device.update_result() == UpdateResult::UpdateFailed
            && device.update_state() == UpdateState::Idle
        {
            return Ok(Some(Outcome::KeptOld));
        }
    }
    loop {
        match device.update_state() {
            UpdateState::Idle | UpdateState::Downloading => {
                let mut offset = device.begin(&package.manifest, b"etag-1", Some(1_700_000_000))?;
                while (offset as usize) < package.payload.len() {
                    let end = (offset as usize + CHUNK).min(package.payload.len());
                    device.write_chunk(offset, &package.payload[offset as usize..end])?;
                    offset = end as u64;
                }
                device.finish()?;
            }
            UpdateState::Downloaded => {
                device.install()?;
                return Ok(None);
            }
            UpdateState::Updating => {
                let state = device.boot_state();
                if state.download.as_ref().is_some_and(|d| d.installing)
                    && state.trial.is_none()
                    && state.in_place.is_none()
                {
                    device.install()?;
                }
                return Ok(None);
            }
        }
    }
}

/// Runs the update once with no fault and returns how many flash
/// operations it took (the range the cut sweeps cover).
pub fn operations_for(path: Path, old: &[u8], new: &[u8]) -> u64 {
    let rig = Rig::new(path, 1, old);
    let package = package(old, new, 2, path != Path::FullAB, &signer());
    let before = rig.power.operations();
    assert_eq!(drive(&rig, &package, old, new), Outcome::Updated);
    rig.power.operations() - before
}

/// The update with the power cut during operation `cut` (counted from the
/// start of the update).
pub fn run_with_cut(path: Path, cut: u64, old: &[u8], new: &[u8], package: &Package) -> Outcome {
    let rig = Rig::new(path, cut, old);
    rig.power.cut_after(cut);
    drive(&rig, package, old, new)
}
