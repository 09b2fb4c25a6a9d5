//! A package file pushed in Block1-sized pieces, with a restart in the
//! middle: the manifest is checked before the first payload write, the
//! download resumes from the persisted offset, and the update completes.

mod common;

use cairn_firmware::package::{PackageStream, encode_package};
use cairn_firmware::*;
use common::*;

#[test]
fn pushed_package_resumes_after_a_restart() {
    let old = firmware_image(31, 16 * 1024);
    let new = edited(&old, 1, 32);
    let rig = Rig::new(Path::FullAB, 3, &old);
    let package = package(&old, &new, 2, false, &signer());
    let blob = encode_package(&package.manifest, &package.payload);

    let mut device = rig.open().unwrap();
    let mut stream = PackageStream::new();
    let half = blob.len() / 2;
    for (i, piece) in blob[..half].chunks(512).enumerate() {
        stream
            .write(&mut device, (i * 512) as u64, piece, b"e1", None)
            .unwrap();
    }
    assert_eq!(device.update_state(), UpdateState::Downloading);

    // Restart: RAM is gone, flash and protected storage remain.
    let mut device = rig.open().unwrap();
    let mut stream = PackageStream::new();
    let header = package.manifest.len() + 6;
    stream
        .write(&mut device, 0, &blob[..header], b"e1", None)
        .unwrap();
    let resume = stream.resume_offset(&device);
    assert!(
        resume > header as u64 && resume <= half as u64,
        "resume at {resume}"
    );
    for (i, piece) in blob[resume as usize..].chunks(512).enumerate() {
        stream
            .write(&mut device, resume + (i * 512) as u64, piece, b"e1", None)
            .unwrap();
    }
    device.finish().unwrap();
    device.install().unwrap();
    let mut device = rig.open().unwrap();
    let booted = device.boot().unwrap();
    assert!(booted.trial);
    device.confirm().unwrap();
    assert_eq!(device.update_result(), UpdateResult::Success);
    assert_eq!(device.installed_sequence(), 2);
}

#[test]
fn a_bad_manifest_in_a_package_stops_before_the_payload() {
    let old = firmware_image(31, 16 * 1024);
    let new = edited(&old, 1, 32);
    let rig = Rig::new(Path::FullAB, 3, &old);
    let stranger = SigningKey::from_random(Algorithm::Ed25519, &[8; 32]).unwrap();
    let package = package(&old, &new, 2, false, &stranger);
    let blob = encode_package(&package.manifest, &package.payload);
    let before = rig.flash.contents();
    let mut device = rig.open().unwrap();
    let mut stream = PackageStream::new();
    let error = blob
        .chunks(1024)
        .enumerate()
        .find_map(|(i, piece)| {
            stream
                .write(&mut device, (i * 1024) as u64, piece, b"e", None)
                .err()
        })
        .unwrap();
    assert_eq!(error, UpdateError::Manifest(ManifestError::UnknownKey));
    assert_eq!(rig.flash.contents(), before, "a slot was written");
    assert_eq!(device.update_result(), UpdateResult::IntegrityCheckFailure);
}
