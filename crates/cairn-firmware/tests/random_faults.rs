//! Random fault runs: each update suffers up to five power cuts at random
//! operations, transient bit flips on reads, and failed writes and erases
//! (which leave the area partly programmed). No run may brick the device.

mod common;

use cairn_firmware::sim::{FaultRates, SimPower, SplitMix64};
use common::*;

const RATES: FaultRates = FaultRates {
    bit_flip_per_read: 3_000,
    write_failure: 3_000,
    erase_failure: 3_000,
};

struct Case {
    path: Path,
    old: Vec<u8>,
    new: Vec<u8>,
    package: Package,
    operations: u64,
}

fn cases(image_len: usize) -> Vec<Case> {
    let old = firmware_image(11, image_len);
    let new = edited(&old, 1, 12);
    [Path::FullAB, Path::DeltaAB, Path::DeltaInPlace]
        .into_iter()
        .map(|path| Case {
            path,
            package: package(&old, &new, 2, path != Path::FullAB, &signer()),
            operations: operations_for(path, &old, &new),
            old: old.clone(),
            new: new.clone(),
        })
        .collect()
}

/// Runs `runs` updates from `first_seed`; returns (updated, kept old).
fn random_runs(cases: &[Case], first_seed: u64, runs: u64) -> (u64, u64) {
    let (mut updated, mut kept) = (0, 0);
    for seed in first_seed..first_seed + runs {
        let mut rng = SplitMix64::new(seed);
        let case = &cases[rng.below(cases.len() as u64) as usize];
        let rig = Rig::new(case.path, seed, &case.old);
        rig.power.set_rates(RATES);
        let mut cuts_left = rng.below(6);
        let mut arm = |power: &SimPower| {
            if cuts_left > 0 {
                cuts_left -= 1;
                power.cut_after(rng.below(case.operations) + 1);
            }
        };
        arm(&rig.power);
        match drive_with(&rig, &case.package, &case.old, &case.new, &mut arm) {
            Outcome::Updated => updated += 1,
            Outcome::KeptOld => kept += 1,
        }
    }
    (updated, kept)
}

#[test]
fn five_hundred_random_runs_never_brick() {
    let cases = cases(16 * 1024);
    let (updated, kept) = random_runs(&cases, 1, 500);
    eprintln!("500 runs: {updated} updated, {kept} kept the old image, 0 bricked");
    assert_eq!(updated + kept, 500);
    assert!(updated > 0);
}

/// Ten thousand runs on a 64 KB image. Heavy: minutes in a debug build.
#[test]
#[ignore = "long random fault run, run in the ignored-tests CI step"]
fn ten_thousand_random_runs_never_brick() {
    let cases = cases(IMAGE_LEN);
    let (updated, kept) = random_runs(&cases, 1_000_000, 10_000);
    eprintln!("10000 runs: {updated} updated, {kept} kept the old image, 0 bricked");
    assert_eq!(updated + kept, 10_000);
}
