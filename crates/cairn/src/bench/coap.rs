//! `cairn bench coap`: the same CoAP GET load against Cairn's server, libcoap's
//! `coap-server-notls` and a raw UDP echo, one after the other, each server in its own
//! process on a free loopback port. For each it prints requests per second, latency
//! percentiles and the server's CPU time per request (from the kernel's accounting of
//! the server process), then one `RESULT` line for scripts.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::cpu::machine_busy_cores;
use super::load::{self, LoadSpec, MAX_IN_FLIGHT, Measurement};
use super::message::GetRequest;
use super::server::{ServerProcess, find_in_path, free_loopback_address};

/// libcoap's server without DTLS, from Debian's `libcoap3-bin`.
const LIBCOAP_SERVER: &str = "coap-server-notls";

#[derive(Debug, Args)]
pub struct CoapBenchArgs {
    /// Length of the measured window per server, in seconds.
    #[arg(long, default_value_t = 8.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Warm-up before each measured window (each round), in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_seconds)]
    warmup: f64,
    /// Split the measurement into this many rounds that alternate between the servers
    /// (`--seconds` in all per server), so that other work on the machine weighs on all
    /// of them alike.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// Client sockets, each with its own source port.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    clients: u16,
    /// Confirmable requests in flight per client.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=MAX_IN_FLIGHT as i64))]
    in_flight: u8,
    /// Measure only these servers (repeat the option or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Target>,
    /// Path of the resource to GET.
    #[arg(long, default_value = "/")]
    path: String,
}

pub(super) fn positive_seconds(text: &str) -> Result<f64, String> {
    let seconds = non_negative_seconds(text)?;
    if seconds > 0.0 {
        Ok(seconds)
    } else {
        Err("must be more than 0".into())
    }
}

pub(super) fn non_negative_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if (0.0..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err("expected a number of seconds from 0 to 3600".into()),
    }
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// `cairn coap serve`.
    Cairn,
    /// libcoap's `coap-server-notls`.
    Libcoap,
    /// The raw UDP echo baseline (`cairn bench echo-server`).
    Echo,
}

impl Target {
    const ALL: [Target; 3] = [Target::Cairn, Target::Libcoap, Target::Echo];

    fn name(self) -> &'static str {
        match self {
            Target::Cairn => "cairn",
            Target::Libcoap => "libcoap",
            Target::Echo => "echo",
        }
    }

    /// Starts this server on a free loopback port.
    fn spawn(self) -> anyhow::Result<ServerProcess> {
        let address = free_loopback_address()?;
        let (program, args): (_, Vec<OsString>) = match self {
            Target::Cairn => (
                std::env::current_exe().context("cannot find the cairn binary")?,
                vec!["coap".into(), "serve".into(), "--listen".into(), address.to_string().into()],
            ),
            Target::Libcoap => (
                find_in_path(LIBCOAP_SERVER).with_context(|| {
                    format!(
                        "{LIBCOAP_SERVER} is not installed (Debian package libcoap3-bin; scripts/setup.sh installs it)"
                    )
                })?,
                vec!["-A".into(), address.ip().to_string().into(), "-p".into(), address.port().to_string().into()],
            ),
            Target::Echo => (
                std::env::current_exe().context("cannot find the cairn binary")?,
                vec!["bench".into(), "echo-server".into(), "--listen".into(), address.to_string().into()],
            ),
        };
        ServerProcess::spawn(self.name(), &program, &args, address)
    }
}

pub fn run(args: CoapBenchArgs) -> anyhow::Result<()> {
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|target| args.only.is_empty() || args.only.contains(target))
        .collect();
    let spec = LoadSpec {
        request: GetRequest::new(&args.path),
        clients: usize::from(args.clients),
        in_flight: usize::from(args.in_flight),
        warmup: Duration::from_secs_f64(args.warmup),
        measured: Duration::from_secs_f64(args.seconds / f64::from(args.rounds)),
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; measure with a release build (cargo build --release)"
        );
    }
    let stop = stop_on_signal()?;

    // Start every server first, so that a missing or broken one fails before any run.
    let mut servers = Vec::with_capacity(targets.len());
    for &target in &targets {
        let mut server = target
            .spawn()
            .with_context(|| leave_out_hint(target, &targets))?;
        server
            .wait_until_ready(&spec.request, &stop)
            .with_context(|| leave_out_hint(target, &targets))?;
        servers.push((target, server));
    }
    warn_if_busy();
    println!(
        "CoAP GET {}: {} clients x {} in flight, {} s measured per server in {} round(s) \
         with {} s warm-up each, on 127.0.0.1",
        args.path, spec.clients, spec.in_flight, args.seconds, args.rounds, args.warmup
    );
    println!(
        "{:<8} {:>11} {:>9} {:>9} {:>15} {:>12} {:>18} {:>9}",
        "server",
        "requests/s",
        "p50 us",
        "p99 us",
        "server CPU us",
        "server cores",
        "generator CPU us",
        "timeouts"
    );
    let mut results: Vec<(Target, Option<Measurement>)> =
        targets.iter().map(|&target| (target, None)).collect();
    for _ in 0..args.rounds {
        for ((_, server), (_, total)) in servers.iter_mut().zip(&mut results) {
            let round = load::run(&spec, server, &stop)?;
            *total = Some(match total.take() {
                Some(earlier) => earlier.merge(round),
                None => round,
            });
        }
    }
    let results: Vec<(Target, Measurement)> = results
        .into_iter()
        .filter_map(|(target, measurement)| Some((target, measurement?)))
        .collect();
    for (target, measurement) in &results {
        print_row(*target, measurement);
        if measurement.unexpected_answers > 0 {
            eprintln!(
                "warning: {} answers from {} were not 2.xx (does it serve {}?)",
                measurement.unexpected_answers,
                target.name(),
                args.path
            );
        }
    }
    drop(servers);
    println!(
        "(CPU figures are per request; server cores is the server's CPU time over the window)"
    );
    println!("{}", result_line(&results));
    Ok(())
}

/// Tells how to run the benchmark without `failed`.
fn leave_out_hint(failed: Target, targets: &[Target]) -> String {
    let others: Vec<&str> = targets
        .iter()
        .filter(|&&target| target != failed)
        .map(|target| target.name())
        .collect();
    if others.is_empty() {
        format!("cannot benchmark {}", failed.name())
    } else {
        format!(
            "cannot benchmark {} (leave it out with --only {})",
            failed.name(),
            others.join(",")
        )
    }
}

/// The figures assume the machine is otherwise idle: say so when it is not.
pub(super) fn warn_if_busy() {
    if let Ok(busy) = machine_busy_cores(Duration::from_millis(300)) {
        if busy >= 0.2 {
            eprintln!(
                "note: {busy:.1} cores were busy just before the run; other work on this machine skews the figures"
            );
        }
    }
}

fn print_row(target: Target, measurement: &Measurement) {
    println!(
        "{:<8} {:>11.0} {:>9} {:>9} {:>15} {:>12.2} {:>18} {:>9}",
        target.name(),
        measurement.requests_per_second(),
        format_option(measurement.latency_us(50.0), 0),
        format_option(measurement.latency_us(99.0), 0),
        format_option(measurement.server_cpu_per_request_us(), 2),
        measurement.server_cores(),
        format_option(measurement.generator_cpu_per_request_us(), 2),
        measurement.timeouts,
    );
}

pub(super) fn format_option(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "NA".to_owned(), |value| format!("{value:.decimals$}"))
}

/// `RESULT coap_get cairn_rps=N libcoap_rps=N echo_rps=N cairn_cpu_us=X
/// libcoap_cpu_us=Y echo_cpu_us=Z ratio_libcoap=R`, with `NA` for what was not measured.
/// `ratio_libcoap` is libcoap's CPU per request over Cairn's.
fn result_line(results: &[(Target, Measurement)]) -> String {
    let find = |target: Target| results.iter().find(|(t, _)| *t == target).map(|(_, m)| m);
    let mut line = String::from("RESULT coap_get");
    for target in Target::ALL {
        let rps = find(target).map(Measurement::requests_per_second);
        let _ = write!(line, " {}_rps={}", target.name(), format_option(rps, 0));
    }
    for target in Target::ALL {
        let cpu = find(target).and_then(Measurement::server_cpu_per_request_us);
        let _ = write!(line, " {}_cpu_us={}", target.name(), format_option(cpu, 2));
    }
    let cairn = find(Target::Cairn).and_then(Measurement::server_cpu_per_request_us);
    let libcoap = find(Target::Libcoap).and_then(Measurement::server_cpu_per_request_us);
    let ratio = cairn
        .zip(libcoap)
        .filter(|(cairn, _)| *cairn > 0.0)
        .map(|(cairn, libcoap)| libcoap / cairn);
    let _ = write!(line, " ratio_libcoap={}", format_option(ratio, 2));
    line
}

/// A flag raised by SIGINT or SIGTERM, so that the run stops and its servers are killed
/// on the way out rather than left behind.
pub(super) fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut interrupt, mut terminate) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let raised = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            });
            raised.store(true, Ordering::Relaxed);
        })?;
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator against a real peer: libcoap's server (scripts/setup.sh installs it).
    #[test]
    fn measures_libcoap() {
        let mut server = Target::Libcoap
            .spawn()
            .expect("coap-server-notls (run scripts/setup.sh)");
        let stop = AtomicBool::new(false);
        let spec = LoadSpec {
            request: GetRequest::new("/"),
            clients: 4,
            in_flight: 2,
            warmup: Duration::from_millis(50),
            measured: Duration::from_millis(300),
        };
        server.wait_until_ready(&spec.request, &stop).unwrap();
        let measurement = load::run(&spec, &mut server, &stop).unwrap();
        assert!(measurement.answers > 100, "{measurement:?}");
        assert_eq!(measurement.unexpected_answers, 0);
        assert!(measurement.server_cpu > Duration::ZERO);
        assert!(measurement.latency_us(50.0).unwrap() <= measurement.latency_us(99.0).unwrap());
        let line = result_line(&[(Target::Libcoap, measurement)]);
        assert!(
            line.starts_with("RESULT coap_get cairn_rps=NA libcoap_rps="),
            "{line}"
        );
        assert!(line.ends_with("ratio_libcoap=NA"), "{line}");
    }

    #[test]
    fn result_line_marks_what_was_not_measured() {
        assert_eq!(
            result_line(&[]),
            "RESULT coap_get cairn_rps=NA libcoap_rps=NA echo_rps=NA \
             cairn_cpu_us=NA libcoap_cpu_us=NA echo_cpu_us=NA ratio_libcoap=NA"
        );
    }
}
