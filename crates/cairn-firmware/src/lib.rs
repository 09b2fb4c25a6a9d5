//! Firmware over the air for Cairn devices: signed manifests, full images and
//! bsdiff deltas, anti-rollback, and a slot manager that survives power cuts.
#![forbid(unsafe_code)]

pub mod delta;
pub mod flash;
pub mod manifest;
pub mod sim;
pub mod storage;

pub use manifest::{Digest, sha256};
