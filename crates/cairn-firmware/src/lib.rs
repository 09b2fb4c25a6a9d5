//! Firmware over the air for Cairn devices: signed manifests, full images and
//! bsdiff deltas, anti-rollback, and a slot manager that survives power cuts.
//!
//! The crate is sans-IO: it never reads a clock (callers pass the time as
//! seconds since the Unix epoch when they know it), never draws random bytes
//! (key generation takes a seed from the caller), and reaches the hardware
//! only through two small traits, [`Flash`] and [`ProtectedStorage`].
//!
//! # Pieces
//!
//! * [`manifest`]: the signed description of a package (COSE_Sign1 with
//!   Ed25519 or ES256), [`verify_manifest`] and the device rules in
//!   [`Manifest::check_applicable`]. Every refusal has its own
//!   [`ManifestError`] variant.
//! * [`delta`]: bsdiff 4 patches: [`delta::create_patch`] on the host,
//!   the streaming [`delta::PatchDecoder`] on the device.
//! * [`Device`]: slots, download, install and the bootloader, over a flash
//!   laid out by [`Layout`] with an A/B or in-place [`Strategy`].
//! * [`package`]: one file holding manifest and payload, for the /5
//!   Package resource, fed in pieces by [`package::PackageStream`].
//! * [`sim`]: a simulated flash that cuts power, flips bits and fails
//!   writes, and [`RecordStore`], the atomic record store that gives
//!   protected storage on plain flash.
//!
//! # Driving it from the LwM2M Firmware Update object (/5)
//!
//! | /5 | call |
//! | --- | --- |
//! | write Package (push, Block1) | [`package::PackageStream::write`] for each block, then [`Device::finish`] |
//! | write Package URI (pull) | fetch the package; [`package::PackageStream::write`] per piece, [`Device::finish`] at the end; after a restart fetch the header again, then resume at [`package::PackageStream::resume_offset`] |
//! | Package URI empty / Package NULL / Cancel | [`Device::cancel`] |
//! | execute Update | [`Device::install`], then restart the device |
//! | after the restart | [`Device::boot`] (the bootloader); the new image calls [`Device::confirm`] once it runs well |
//! | State (/5/0/3) | [`Device::update_state`]: Idle, Downloading, Downloaded, Updating |
//! | Update Result (/5/0/5) | [`Device::update_result`]; an error maps with [`update_result`] |
//!
//! A manifest can also be given on its own with [`Device::begin`] followed
//! by [`Device::write_chunk`] at payload offsets. Every check on the
//! manifest (signature, trusted key, vendor, class, anti-rollback, expiry,
//! hardware and bootloader versions, sizes, delta base) runs before the
//! first payload byte is written; the payload's digest, and for a delta
//! the whole resulting image, are checked at [`Device::finish`], before
//! [`Device::install`] can touch a bootable slot.
//!
//! ```
//! use cairn_firmware::sim::{SimFlash, SimPower};
//! use cairn_firmware::*;
//!
//! let key = SigningKey::from_random(Algorithm::Ed25519, &[7; 32]).unwrap();
//! let identity = DeviceIdentity {
//!     vendor: "acme".into(),
//!     class: "meter".into(),
//!     hardware_version: 1,
//!     bootloader_version: 1,
//! };
//! let layout = Layout { slot_sectors: 4, staging_sectors: 2, strategy: Strategy::AB };
//! let power = SimPower::new(1);
//! let flash = SimFlash::new(Geometry { sector_size: 1024, sector_count: layout.sectors() }, power.clone());
//! let meta = SimFlash::new(Geometry { sector_size: 1024, sector_count: 4 }, power);
//! let keys = TrustedKeys::new().with(key.public_key());
//! let open = || {
//!     Device::open(flash.clone(), RecordStore::new(meta.clone()), identity.clone(), keys.clone(), layout)
//! };
//! let manifest_for = |image: &[u8], sequence| Manifest {
//!     vendor: "acme".into(),
//!     class: "meter".into(),
//!     sequence,
//!     image_digest: sha256(image),
//!     image_size: image.len() as u64,
//!     payload: Payload::Full,
//!     expires_at: None,
//!     min_hardware_version: None,
//!     min_bootloader_version: None,
//! };
//!
//! let v1 = vec![1u8; 3000];
//! let mut device = open().unwrap();
//! device.provision(&v1, &sign_manifest(&manifest_for(&v1, 1), &key)).unwrap();
//!
//! let v2 = vec![2u8; 3500];
//! let signed = sign_manifest(&manifest_for(&v2, 2), &key);
//! let offset = device.begin(&signed, b"etag", None).unwrap();
//! device.write_chunk(offset, &v2).unwrap();
//! device.finish().unwrap();
//! assert_eq!(device.update_state(), UpdateState::Downloaded);
//! device.install().unwrap();
//!
//! let mut device = open().unwrap(); // the restart
//! let booted = device.boot().unwrap();
//! assert!(booted.trial);
//! device.confirm().unwrap();
//! assert_eq!(device.update_result(), UpdateResult::Success);
//! ```
#![forbid(unsafe_code)]

pub mod delta;
pub mod device;
pub mod flash;
pub mod manifest;
pub mod package;
pub mod result;
pub mod sim;
pub mod state;
pub mod storage;

pub use device::{BootFailure, Booted, Device, Layout, Strategy};
pub use flash::{Flash, FlashError, Geometry, Partition};
pub use manifest::{
    Algorithm, DeviceIdentity, Digest, Manifest, ManifestError, Payload, PublicKey, SigningKey,
    TrustedKeys, sha256, sign_manifest, verify_manifest,
};
pub use result::{UpdateError, UpdateResult, UpdateState, update_result};
pub use state::Slot;
pub use storage::{ProtectedStorage, RecordStore, StorageError};
