//! Power cut during every flash operation (or every N-th, in the normal
//! suite) of download, install, swap and first boot: after the restart the
//! device always boots a verified image, old or new.

mod common;

use common::*;

fn sweep(path: Path, stride: u64) {
    let old = firmware_image(7, IMAGE_LEN);
    let new = edited(&old, 1, 8);
    let package = package(&old, &new, 2, path != Path::FullAB, &signer());
    let total = operations_for(path, &old, &new);
    let (mut updated, mut kept) = (0, 0);
    let mut cut = 1;
    while cut <= total {
        match run_with_cut(path, cut, &old, &new, &package) {
            Outcome::Updated => updated += 1,
            Outcome::KeptOld => kept += 1,
        }
        cut += stride;
    }
    eprintln!(
        "{path:?}: {total} operations, cut every {stride}: {updated} updated, {kept} kept the old image, 0 bricked"
    );
    assert!(updated > 0);
}

#[test]
fn full_image_ab_survives_cuts() {
    sweep(Path::FullAB, 11);
}

#[test]
fn delta_ab_survives_cuts() {
    sweep(Path::DeltaAB, 11);
}

#[test]
fn delta_in_place_survives_cuts() {
    sweep(Path::DeltaInPlace, 11);
}

/// Every operation. Heavy: several thousand simulated restarts per path.
#[test]
#[ignore = "exhaustive sweep, run in the ignored-tests CI step"]
fn every_operation_every_path() {
    for path in [Path::FullAB, Path::DeltaAB, Path::DeltaInPlace] {
        sweep(path, 1);
    }
}
