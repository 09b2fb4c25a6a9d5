//! `cairn bench dtls --ecdhe` end to end, Cairn's servers only and briefly: the run
//! completes, its handshakes succeed and it ends with the RESULT line.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn ecdhe_bench_prints_its_result_line() {
    let output = run_with_timeout(
        cairn().args([
            "bench",
            "dtls",
            "--ecdhe",
            "--only",
            "cairn",
            "--seconds",
            "0.6",
            "--rounds",
            "1",
            "--warmup",
            "0.2",
            "--handshake-clients",
            "4",
        ]),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for server in ["cairn x509 ", "cairn x509 no-cache", "cairn rpk"] {
        let row = stdout
            .lines()
            .find(|line| line.starts_with(server))
            .unwrap_or_else(|| panic!("no row for {server}: {stdout}"));
        let failures: u64 = row.split_whitespace().last().unwrap().parse().unwrap();
        assert_eq!(failures, 0, "{row}");
    }
    let last = stdout.lines().last().unwrap_or_default();
    let fields: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(fields[..2], ["RESULT", "dtls_ecdhe"], "{last}");
    let value = |key: &str| {
        fields
            .iter()
            .find_map(|field| field.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {last}"))
    };
    assert!(value("cairn_hs=").parse::<f64>().unwrap() > 0.0, "{last}");
    assert_eq!(value("libcoap_hs="), "NA");
    assert!(value("limit_hs=").parse::<f64>().unwrap() > 0.0, "{last}");
}
