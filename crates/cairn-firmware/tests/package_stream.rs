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

/// A power cut at every flash operation of a pulled download: after the restart the
/// persisted record names the ETag the bytes came with, and every payload byte its offset
/// counts is in the slot (the offset is stored only after a sector was programmed and read
/// back). The download then resumes with the same ETag, or starts over from 0 with another
/// one (the package changed at its source) and completes with the new package.
#[test]
fn the_persisted_offset_and_etag_never_run_ahead_of_flash() {
    let old = firmware_image(41, 16 * 1024);
    let new = edited(&old, 1, 42);
    let replaced = edited(&old, 1, 43);
    let package_a = package(&old, &new, 2, false, &signer());
    let package_b = package(&old, &replaced, 3, false, &signer());
    let blob_a = encode_package(&package_a.manifest, &package_a.payload);
    let blob_b = encode_package(&package_b.manifest, &package_b.payload);
    let header = package_a.manifest.len() + 6;

    let operations = {
        let rig = Rig::new(Path::FullAB, 5, &old);
        let mut device = rig.open().unwrap();
        let before = rig.power.operations();
        let mut stream = PackageStream::new();
        for (i, piece) in blob_a.chunks(CHUNK).enumerate() {
            stream
                .write(&mut device, (i * CHUNK) as u64, piece, b"etag-a", None)
                .unwrap();
        }
        rig.power.operations() - before
    };
    let mut resumed_midway = 0;
    for cut in 1..=operations {
        let rig = Rig::new(Path::FullAB, 5, &old);
        let mut device = rig.open().unwrap();
        let mut stream = PackageStream::new();
        rig.power.cut_after(cut);
        let failed = blob_a.chunks(CHUNK).enumerate().any(|(i, piece)| {
            stream
                .write(&mut device, (i * CHUNK) as u64, piece, b"etag-a", None)
                .is_err()
        });
        assert!(failed, "cut {cut} of {operations} did not happen");
        rig.power.restore();

        let device = rig.open().unwrap();
        let Some(download) = device.boot_state().download.clone() else {
            // The cut came before the manifest's record was stored.
            assert_eq!(device.update_state(), UpdateState::Idle, "cut {cut}");
            continue;
        };
        assert_eq!(download.etag, b"etag-a", "cut {cut}");
        assert_eq!(download.manifest, package_a.manifest, "cut {cut}");
        let written = download.written as usize;
        assert_eq!(written % SECTOR, 0, "cut {cut}: {written}");
        assert_eq!(
            rig.slot_bytes(Slot::B, written),
            package_a.payload[..written],
            "cut {cut}: the persisted offset {written} runs ahead of the slot"
        );
        if written > 0 {
            resumed_midway += 1;
        }

        // The same ETag resumes where the record says.
        {
            let mut device = rig.open().unwrap();
            let mut stream = PackageStream::new();
            stream
                .write(&mut device, 0, &blob_a[..header], b"etag-a", None)
                .unwrap();
            assert_eq!(
                stream.resume_offset(&device),
                (header + written) as u64,
                "cut {cut}"
            );
        }

        // Another ETag (the package was replaced at its source) starts over from 0.
        let mut device = rig.open().unwrap();
        let mut stream = PackageStream::new();
        stream
            .write(&mut device, 0, &blob_b[..header], b"etag-b", None)
            .unwrap();
        assert_eq!(stream.resume_offset(&device), header as u64, "cut {cut}");
        assert_eq!(
            device.boot_state().download.as_ref().map(|d| d.written),
            Some(0)
        );
        for (i, piece) in blob_b[header..].chunks(CHUNK).enumerate() {
            stream
                .write(
                    &mut device,
                    (header + i * CHUNK) as u64,
                    piece,
                    b"etag-b",
                    None,
                )
                .unwrap();
        }
        device.finish().unwrap();
        device.install().unwrap();
        let mut device = rig.open().unwrap();
        assert_eq!(device.boot().unwrap().sequence, 3, "cut {cut}");
        device.confirm().unwrap();
        assert_eq!(
            rig.slot_bytes(Slot::B, replaced.len()),
            replaced,
            "cut {cut}"
        );
    }
    eprintln!(
        "{operations} operations, {resumed_midway} cuts left part of the payload to resume from"
    );
    assert!(resumed_midway > 0);
}
