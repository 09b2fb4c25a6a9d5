//! Firmware over the air for Cairn devices: signed manifests, full images and
//! bsdiff deltas, anti-rollback, and a slot manager that survives power cuts.
#![forbid(unsafe_code)]

pub mod delta;
pub mod device;
pub mod flash;
pub mod manifest;
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
