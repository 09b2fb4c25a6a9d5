//! The web console in headless Chromium: `scripts/web-e2e.sh` starts `cairn demo` (this
//! build's binary, three devices with a Firmware Update object) and runs
//! `web-tests/console.test.mjs` (setup link, TOTP enrolment and sign-in, a device's /3/0
//! read, observed values changing (clock and battery level), the demo's campaign completed, a signed package uploaded
//! and a campaign started from the console and watched to completion, the device reporting
//! the new firmware version, a credential rotation; screenshots in target/web-tests/).
//!
//! Ignored by default: it needs Chromium and `npm ci` in web-tests (scripts/setup.sh) and
//! takes about a minute (a TOTP time step must pass between enrolment and sign-in). CI runs it
//! with the other heavy tests: `cargo nextest run --run-ignored only`.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs chromium and web-tests/node_modules; about a minute"]
fn the_console_works_in_a_real_browser() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(repo.join("scripts/web-e2e.sh"))
        .env("CAIRN_BIN", env!("CARGO_BIN_EXE_cairn"))
        .status()
        .expect("run scripts/web-e2e.sh");
    assert!(
        status.success(),
        "the browser test failed (see its output above)"
    );
}
