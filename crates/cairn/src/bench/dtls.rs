//! `cairn bench dtls`: CoAP over DTLS 1.2 with a pre-shared key (RFC 7252 §9.1.3.1),
//! Cairn's server beside libcoap's `coap-server-openssl`, each in its own process on
//! 127.0.0.1, with the same in-process load generator ([`super::dtls_load`]):
//!
//! 1. full PSK handshakes (new session, one GET, close_notify) per second and the server's
//!    CPU time per handshake;
//! 2. GETs per second over long-lived sessions and the server's CPU time per GET;
//! 3. memory per idle established session in a fresh Cairn server process: the growth of
//!    its resident set (`VmRSS` of `/proc/PID/status`) over `--sessions` sessions.
//!
//! CPU time is the server process's own (kernel accounting), since the generator shares
//! the machine's cores. The last line is a `RESULT` line for scripts.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::coap::{
    format_option, non_negative_seconds, positive_seconds, stop_on_signal, warn_if_busy,
};
use super::dtls_load::{self, Credentials, Held, RequestLoad, Timing, Window};
use super::message::GetRequest;
use super::server::{ServerProcess, find_in_path, free_loopback_address};

/// libcoap's server with OpenSSL, from Debian's `libcoap3-bin`.
const LIBCOAP_SERVER: &str = "coap-server-openssl";
/// The PSK identity the clients present (and libcoap's identity hint).
const PSK_IDENTITY: &str = "cairn-bench";
/// The key: ASCII, because `coap-server-openssl -k` takes the key's bytes as text.
const PSK_KEY: &str = "cairn-bench-key1";
/// Idle time before the resident set of the memory run is read, so that the server has
/// handled every last datagram.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct DtlsBenchArgs {
    /// Measured time per server for each load (handshakes, then GETs), in seconds.
    #[arg(long, default_value_t = 8.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Warm-up before each measured window (each round), in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_seconds)]
    warmup: f64,
    /// Split each measurement into this many rounds that alternate between the servers
    /// (`--seconds` in all per server), so that other work on the machine weighs on
    /// both alike.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// Clients running handshakes back to back (libcoap allows 100 handshakes at once).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    handshake_clients: u16,
    /// Clients with a long-lived session for the GET load.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    clients: u16,
    /// Confirmable GETs in flight per session.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=64))]
    in_flight: u8,
    /// Idle sessions held in one Cairn server to measure memory per session (0 skips it).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    sessions: u32,
    /// Also measure libcoap's memory per idle session, with as many sessions (printed,
    /// not in the RESULT line).
    #[arg(long)]
    libcoap_memory: bool,
    /// Measure only these servers (repeat the option or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Target>,
    /// Path of the resource to GET.
    #[arg(long, default_value = "/")]
    path: String,
    /// Instead of PSK: ECDHE-ECDSA handshakes with mutual authentication (X.509 and raw
    /// public keys), against the crypto-bound limit of one server core (see
    /// docs/benchmarks.md). Uses --seconds, --rounds, --warmup, --handshake-clients, --only.
    #[arg(long)]
    ecdhe: bool,
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// `cairn coap serve --dtls-listen`.
    Cairn,
    /// libcoap's `coap-server-openssl`.
    Libcoap,
}

impl Target {
    const ALL: [Target; 2] = [Target::Cairn, Target::Libcoap];

    fn name(self) -> &'static str {
        match self {
            Target::Cairn => "cairn",
            Target::Libcoap => "libcoap",
        }
    }

    /// Starts this server on free loopback ports; returns it with its DTLS address.
    fn spawn(self) -> anyhow::Result<(ServerProcess, SocketAddr)> {
        let (plain, dtls, program, args): (_, _, _, Vec<OsString>) = match self {
            Target::Cairn => {
                let (plain, dtls) = (free_loopback_address()?, free_loopback_address()?);
                let key: String = PSK_KEY.bytes().map(|byte| format!("{byte:02x}")).collect();
                let args = [
                    "coap",
                    "serve",
                    "--listen",
                    &plain.to_string(),
                    "--dtls-listen",
                    &dtls.to_string(),
                    "--psk-identity",
                    PSK_IDENTITY,
                    "--psk-key",
                    &key,
                ]
                .map(OsString::from)
                .to_vec();
                (
                    plain,
                    dtls,
                    std::env::current_exe().context("cannot find the cairn binary")?,
                    args,
                )
            }
            Target::Libcoap => {
                // libcoap serves DTLS on the port after the CoAP one.
                let plain = free_port_pair()?;
                let dtls = SocketAddr::from((plain.ip(), plain.port() + 1));
                let program = find_in_path(LIBCOAP_SERVER).with_context(|| {
                    format!("{LIBCOAP_SERVER} is not installed (Debian package libcoap3-bin; scripts/setup.sh installs it)")
                })?;
                let port = plain.port().to_string();
                let args = [
                    "-A",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-k",
                    PSK_KEY,
                    "-h",
                    PSK_IDENTITY,
                ]
                .map(OsString::from)
                .to_vec();
                (plain, dtls, program, args)
            }
        };
        Ok((
            ServerProcess::spawn(self.name(), &program, &args, plain)?,
            dtls,
        ))
    }
}

/// A loopback address whose port and the next one were both free a moment ago.
pub(super) fn free_port_pair() -> anyhow::Result<SocketAddr> {
    for _ in 0..100 {
        let address = free_loopback_address()?;
        let Some(next) = address.port().checked_add(1) else {
            continue;
        };
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, next)).is_ok() {
            return Ok(address);
        }
    }
    bail!("no two consecutive free UDP ports on 127.0.0.1")
}

/// A server under test with its DTLS address.
struct Running {
    process: ServerProcess,
    dtls: SocketAddr,
}

/// The figures of one server.
#[derive(Debug, Default)]
struct Figures {
    handshakes: Option<Window>,
    requests: Option<Window>,
}

pub fn run(args: DtlsBenchArgs) -> anyhow::Result<()> {
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|target| args.only.is_empty() || args.only.contains(target))
        .collect();
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup),
        measured: Duration::from_secs_f64(args.seconds / f64::from(args.rounds)),
    };
    if args.ecdhe {
        return super::dtls_ecdhe::run(super::dtls_ecdhe::Options {
            timing,
            rounds: usize::from(args.rounds),
            clients: usize::from(args.handshake_clients),
            cairn: targets.contains(&Target::Cairn),
            libcoap: targets.contains(&Target::Libcoap),
            path: args.path,
            seconds: args.seconds,
        });
    }
    let rounds = usize::from(args.rounds);
    let credentials = Credentials::Psk {
        identity: PSK_IDENTITY.into(),
        key: PSK_KEY.into(),
    };
    let request = GetRequest::new(&args.path);
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; measure with a release build (cargo build --release)"
        );
    }
    let stop = stop_on_signal()?;

    // Start every server first, so that a missing or broken one fails before any run.
    let mut servers = Vec::with_capacity(targets.len());
    for &target in &targets {
        let start = || -> anyhow::Result<Running> {
            let (mut process, dtls) = target.spawn()?;
            process.wait_until_ready(&request, &stop)?;
            dtls_load::probe(&mut process, dtls, &credentials, &request, &stop)?;
            Ok(Running { process, dtls })
        };
        servers.push(start().with_context(|| leave_out_hint(target, &targets))?);
    }
    warn_if_busy();
    println!(
        "DTLS 1.2 PSK (TLS_PSK_WITH_AES_128_CCM_8), CoAP GET {}, on 127.0.0.1; \
         {} s measured per server and run, in {} round(s) with {} s warm-up each",
        args.path, args.seconds, args.rounds, args.warmup
    );
    let mut figures: Vec<(Target, Figures)> = targets
        .iter()
        .map(|&target| (target, Figures::default()))
        .collect();

    println!(
        "\nFull handshakes (new session + one GET + close_notify), {} clients back to back:",
        args.handshake_clients
    );
    print_header("handshakes/s");
    for _ in 0..rounds {
        for (server, (_, figures)) in servers.iter_mut().zip(&mut figures) {
            let window = dtls_load::run_handshakes(
                &mut server.process,
                server.dtls,
                &credentials,
                &request,
                usize::from(args.handshake_clients),
                timing,
                &stop,
            )?;
            figures.handshakes = Some(Window::merge(figures.handshakes.take(), window));
        }
    }
    for (target, figures) in &figures {
        if let Some(window) = &figures.handshakes {
            print_row(*target, window);
        }
    }

    println!(
        "\nGETs over long-lived sessions, {} sessions x {} in flight:",
        args.clients, args.in_flight
    );
    print_header("requests/s");
    for _ in 0..rounds {
        for (server, (_, figures)) in servers.iter_mut().zip(&mut figures) {
            let window = dtls_load::run_requests(
                &mut server.process,
                server.dtls,
                &credentials,
                &request,
                RequestLoad {
                    clients: usize::from(args.clients),
                    in_flight: usize::from(args.in_flight),
                },
                timing,
                &stop,
            )?;
            figures.requests = Some(Window::merge(figures.requests.take(), window));
        }
    }
    for (target, figures) in &figures {
        let Some(window) = &figures.requests else {
            continue;
        };
        print_row(*target, window);
        if window.unexpected_answers > 0 {
            eprintln!(
                "warning: {} answers from {} were not 2.xx (does it serve {}?)",
                window.unexpected_answers,
                target.name(),
                args.path
            );
        }
    }
    println!(
        "(CPU figures are per handshake or per request; server cores is the server's CPU time over the window)"
    );
    drop(servers);

    let bytes_per_session = if args.sessions > 0 && targets.contains(&Target::Cairn) {
        Some(measure_session_memory(
            Target::Cairn,
            args.sessions as usize,
            &credentials,
            &request,
            &stop,
        )?)
    } else {
        None
    };
    if args.sessions > 0 && args.libcoap_memory && targets.contains(&Target::Libcoap) {
        let sessions = args.sessions as usize;
        if let Err(error) =
            measure_session_memory(Target::Libcoap, sessions, &credentials, &request, &stop)
        {
            eprintln!("warning: libcoap's memory per session not measured: {error:#}");
        }
    }
    println!("{}", result_line(&figures, bytes_per_session));
    Ok(())
}

/// Holds `sessions` idle sessions in a fresh `target` server; returns the growth of its
/// resident set per session.
fn measure_session_memory(
    target: Target,
    sessions: usize,
    credentials: &Credentials,
    request: &GetRequest,
    stop: &AtomicBool,
) -> anyhow::Result<f64> {
    println!(
        "\nMemory per idle session, {sessions} sessions in a fresh {} server:",
        target.name()
    );
    let (mut process, dtls) = target.spawn()?;
    process.wait_until_ready(request, stop)?;
    std::thread::sleep(SETTLE);
    let before = resident_bytes(process.pid())?;
    let held: Held = dtls_load::hold_sessions(&mut process, dtls, credentials, sessions, 64, stop)?;
    std::thread::sleep(SETTLE);
    process.ensure_running()?;
    let after = resident_bytes(process.pid())?;
    if held.established == 0 {
        bail!(
            "no session could be established with the {} server",
            target.name()
        );
    }
    let per_session = after.saturating_sub(before) as f64 / held.established as f64;
    println!(
        "{} sessions established in {:.1} s ({} handshakes failed); resident set {:.1} MiB -> {:.1} MiB: {:.0} bytes per session",
        held.established,
        held.elapsed.as_secs_f64(),
        held.failures,
        before as f64 / 1_048_576.0,
        after as f64 / 1_048_576.0,
        per_session
    );
    if held.established < sessions {
        eprintln!(
            "warning: only {} of {sessions} sessions were established",
            held.established
        );
    }
    Ok(per_session)
}

/// `VmRSS` of `/proc/PID/status`, in bytes.
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS in /proc/PID/status")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
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

fn print_header(rate: &str) {
    println!(
        "{:<8} {:>13} {:>15} {:>12} {:>18} {:>9}",
        "server", rate, "server CPU us", "server cores", "generator CPU us", "failures"
    );
}

fn print_row(target: Target, window: &Window) {
    println!(
        "{:<8} {:>13.0} {:>15} {:>12.2} {:>18} {:>9}",
        target.name(),
        window.per_second(),
        format_option(window.server_cpu_us(), 2),
        window.server_cores(),
        format_option(window.generator_cpu_us(), 2),
        window.failures,
    );
}

/// `RESULT dtls psk_hs_cairn=N psk_hs_libcoap=N hs_cpu_us_cairn=X hs_cpu_us_libcoap=Y
/// get_rps_cairn=N get_rps_libcoap=N get_cpu_us_cairn=X get_cpu_us_libcoap=Y
/// bytes_per_session=N`, with `NA` for what was not measured.
fn result_line(figures: &[(Target, Figures)], bytes_per_session: Option<f64>) -> String {
    let find = |target: Target| {
        figures
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, figures)| figures)
    };
    let handshakes = |target: Target| find(target).and_then(|figures| figures.handshakes.as_ref());
    let requests = |target: Target| find(target).and_then(|figures| figures.requests.as_ref());
    let mut line = String::from("RESULT dtls");
    for target in Target::ALL {
        let _ = write!(
            line,
            " psk_hs_{}={}",
            target.name(),
            format_option(handshakes(target).map(Window::per_second), 0)
        );
    }
    for target in Target::ALL {
        let cpu = handshakes(target).and_then(Window::server_cpu_us);
        let _ = write!(
            line,
            " hs_cpu_us_{}={}",
            target.name(),
            format_option(cpu, 2)
        );
    }
    for target in Target::ALL {
        let _ = write!(
            line,
            " get_rps_{}={}",
            target.name(),
            format_option(requests(target).map(Window::per_second), 0)
        );
    }
    for target in Target::ALL {
        let cpu = requests(target).and_then(Window::server_cpu_us);
        let _ = write!(
            line,
            " get_cpu_us_{}={}",
            target.name(),
            format_option(cpu, 2)
        );
    }
    let _ = write!(
        line,
        " bytes_per_session={}",
        format_option(bytes_per_session, 0)
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_marks_what_was_not_measured() {
        assert_eq!(
            result_line(&[], None),
            "RESULT dtls psk_hs_cairn=NA psk_hs_libcoap=NA hs_cpu_us_cairn=NA hs_cpu_us_libcoap=NA \
             get_rps_cairn=NA get_rps_libcoap=NA get_cpu_us_cairn=NA get_cpu_us_libcoap=NA bytes_per_session=NA"
        );
    }

    #[test]
    fn result_line_has_the_figures() {
        let window = |completed| Window {
            length: Duration::from_secs(2),
            completed,
            failures: 0,
            unexpected_answers: 0,
            server_cpu: Duration::from_millis(100),
            generator_cpu: Duration::from_millis(100),
        };
        let cairn = Figures {
            handshakes: Some(window(10_000)),
            requests: Some(window(50_000)),
        };
        assert_eq!(
            result_line(&[(Target::Cairn, cairn)], Some(300.4)),
            "RESULT dtls psk_hs_cairn=5000 psk_hs_libcoap=NA hs_cpu_us_cairn=10.00 hs_cpu_us_libcoap=NA \
             get_rps_cairn=25000 get_rps_libcoap=NA get_cpu_us_cairn=2.00 get_cpu_us_libcoap=NA bytes_per_session=300"
        );
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tcairn\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t2\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
