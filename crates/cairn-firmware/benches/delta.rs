//! Delta size against the full image, and patch/apply times.
//!
//! `cargo bench -p cairn-firmware --bench delta` prints one `delta_ratio` line per case:
//!
//! * `synthetic-1MiB-1pct`: a 1 MiB firmware-like image (code-shaped runs, address tables,
//!   noise) and a new build with about 1% of its bytes changed in scattered patches, plus a
//!   100-byte insertion and a 60-byte deletion that shift everything after them;
//! * `cc-shared-object`: a generated C library of 3,000 functions compiled twice with
//!   `cc -O2 -shared`, the second time with one function changed and one added (skipped
//!   when no C compiler is installed);
//! * `files`: `CAIRN_FW_BENCH_OLD` and `CAIRN_FW_BENCH_NEW`, when both are set.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cairn_firmware::delta::{apply_patch, create_patch};

fn measure(name: &str, old: &[u8], new: &[u8]) {
    let started = Instant::now();
    let patch = create_patch(old, new).expect("diff");
    let diff_time = started.elapsed();
    let started = Instant::now();
    let rebuilt = apply_patch(old, &patch, new.len() as u64).expect("apply");
    let apply_time = started.elapsed();
    assert_eq!(
        rebuilt, new,
        "{name}: the patch does not reproduce the new image"
    );
    println!(
        "{name}: old {} B, new {} B, patch {} B, delta_ratio={:.4} ({:.2}% of full), diff {:.0} ms, apply {:.0} ms",
        old.len(),
        new.len(),
        patch.len(),
        patch.len() as f64 / new.len() as f64,
        100.0 * patch.len() as f64 / new.len() as f64,
        diff_time.as_secs_f64() * 1e3,
        apply_time.as_secs_f64() * 1e3,
    );
}

fn c_library(extra: bool) -> String {
    let mut source = String::from("#include <stdint.h>\n");
    for i in 0..3000u32 {
        let k = if extra && i == 1500 {
            7777
        } else {
            i.wrapping_mul(2_654_435_761) >> 8
        };
        source.push_str(&format!(
            "uint32_t f{i}(uint32_t x) {{ uint32_t a = x ^ {k}u; for (int j = 0; j < {}; j++) {{ a = a * 33u + (uint32_t)j + f{}(a); if (a % 7u == {}u) break; }} return a + {k}u; }}\n",
            i % 5 + 1,
            if i == 0 { 0 } else { i - 1 },
            i % 7,
        ));
        if i == 0 {
            source = source.replace("+ f0(a)", "");
        }
    }
    if extra {
        source.push_str("uint32_t added(uint32_t x) { return f2999(x) ^ f1(x); }\n");
    }
    source
}

fn compile(dir: &Path, name: &str, source: &str) -> Option<Vec<u8>> {
    let c = dir.join(format!("{name}.c"));
    let so = dir.join(format!("{name}.so"));
    std::fs::write(&c, source).ok()?;
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&c)
        .status()
        .ok()?;
    status.success().then(|| std::fs::read(&so).ok()).flatten()
}

fn main() {
    let old = common::firmware_image(1, 1 << 20);
    let new = common::edited(&old, 1, 2);
    measure("synthetic-1MiB-1pct", &old, &new);

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("firmware-delta-bench");
    let _ = std::fs::create_dir_all(&dir);
    match (
        compile(&dir, "v1", &c_library(false)),
        compile(&dir, "v2", &c_library(true)),
    ) {
        (Some(v1), Some(v2)) => measure("cc-shared-object", &v1, &v2),
        _ => println!("cc-shared-object: skipped (no working `cc`)"),
    }

    if let (Some(a), Some(b)) = (
        std::env::var_os("CAIRN_FW_BENCH_OLD"),
        std::env::var_os("CAIRN_FW_BENCH_NEW"),
    ) {
        let old = std::fs::read(a).expect("read CAIRN_FW_BENCH_OLD");
        let new = std::fs::read(b).expect("read CAIRN_FW_BENCH_NEW");
        measure("files", &old, &new);
    }
}
