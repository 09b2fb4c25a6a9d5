//! `cairn firmware` as a release engineer runs it: keys, a full-image manifest, a delta
//! manifest with its patch, verification that accepts them and refusals for a downgrade,
//! a stranger's key and a changed image.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn firmware(args: &[&str]) -> std::process::Output {
    run_with_timeout(cairn().arg("firmware").args(args), LIMIT)
}

fn ok(args: &[&str]) -> String {
    let output = firmware(args);
    assert!(
        output.status.success(),
        "cairn firmware {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn refused(args: &[&str]) -> String {
    let output = firmware(args);
    assert!(
        !output.status.success(),
        "cairn firmware {args:?} succeeded"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn keygen_sign_verify_diff() {
    let dir = scratch_dir("firmware-cli");
    let keys = dir.join("keys");
    let stranger = dir.join("stranger");
    ok(&["keygen", "--out", s(&keys)]);
    ok(&["keygen", "--out", s(&stranger), "--alg", "p256"]);
    let mode = std::fs::metadata(keys.join("firmware.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second keygen never overwrites a private key.
    refused(&["keygen", "--out", s(&keys)]);

    let old_bytes = test_bytes(200_000, 1);
    let mut new_bytes = old_bytes.clone();
    new_bytes[5_000..5_400].copy_from_slice(&test_bytes(400, 2));
    new_bytes.extend_from_slice(b"release 2");
    let old = dir.join("v1.bin");
    let new = dir.join("v2.bin");
    std::fs::write(&old, &old_bytes).unwrap();
    std::fs::write(&new, &new_bytes).unwrap();
    let key = keys.join("firmware.key");
    let public = keys.join("firmware.pub");

    let full = dir.join("v2.full.cose");
    ok(&[
        "sign",
        "--key",
        s(&key),
        "--image",
        s(&new),
        "--vendor",
        "acme",
        "--class",
        "meter",
        "--seq",
        "2",
        "--min-hw",
        "3",
        "--out",
        s(&full),
    ]);
    let out = ok(&[
        "verify",
        "--pub",
        s(&public),
        "--manifest",
        s(&full),
        "--image",
        s(&new),
        "--installed-seq",
        "1",
        "--vendor",
        "acme",
        "--class",
        "meter",
    ]);
    assert!(
        out.contains("manifest OK") && out.contains("sequence:   2"),
        "{out}"
    );

    let delta = dir.join("v2.delta.cose");
    let patch = dir.join("v2.patch");
    let out = ok(&[
        "sign",
        "--key",
        s(&key),
        "--image",
        s(&new),
        "--precursor",
        s(&old),
        "--delta",
        "--patch-out",
        s(&patch),
        "--vendor",
        "acme",
        "--class",
        "meter",
        "--seq",
        "2",
        "--out",
        s(&delta),
    ]);
    assert!(out.contains("patch:"), "{out}");
    let patch_len = std::fs::metadata(&patch).unwrap().len();
    assert!(
        patch_len < new_bytes.len() as u64 / 10,
        "patch is {patch_len} bytes"
    );
    let out = ok(&[
        "verify",
        "--pub",
        s(&public),
        "--manifest",
        s(&delta),
        "--image",
        s(&new),
        "--patch",
        s(&patch),
        "--precursor",
        s(&old),
    ]);
    assert!(out.contains("payload:    delta"), "{out}");

    // Refusals, each with its LwM2M Update Result.
    let err = refused(&[
        "verify",
        "--pub",
        s(&public),
        "--manifest",
        s(&full),
        "--image",
        s(&new),
        "--installed-seq",
        "2",
    ]);
    assert!(
        err.contains("not above") && err.contains("Update Result 5"),
        "{err}"
    );
    let err = refused(&[
        "verify",
        "--pub",
        s(&stranger.join("firmware.pub")),
        "--manifest",
        s(&full),
        "--image",
        s(&new),
    ]);
    assert!(
        err.contains("unknown key") && err.contains("Update Result 5"),
        "{err}"
    );
    let err = refused(&[
        "verify",
        "--pub",
        s(&public),
        "--manifest",
        s(&full),
        "--image",
        s(&old),
    ]);
    assert!(err.contains("digest"), "{err}");
    let err = refused(&[
        "verify",
        "--pub",
        s(&public),
        "--manifest",
        s(&full),
        "--image",
        s(&new),
        "--class",
        "other",
    ]);
    assert!(err.contains("Update Result 6"), "{err}");
    let err = refused(&[
        "verify",
        "--pub",
        s(&public),
        "--manifest",
        s(&delta),
        "--image",
        s(&new),
        "--patch",
        s(&patch),
        "--precursor",
        s(&new),
    ]);
    assert!(err.contains("base image"), "{err}");

    let diff = dir.join("diff.patch");
    let out = ok(&["diff", s(&old), s(&new), "--out", s(&diff)]);
    assert!(out.contains("patch:") && out.contains("% of new"), "{out}");
    assert!(std::fs::metadata(&diff).unwrap().len() > 0);
}
