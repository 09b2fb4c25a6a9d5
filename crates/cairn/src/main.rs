//! `cairn`: the command-line entry point.

mod admin_cmd;
mod bench;
mod bootstrap_cmd;
mod campaign_cmd;
mod client_cmd;
mod coap_cmd;
mod demo_cmd;
mod factory_cmd;
mod firmware_cmd;
mod fleet_bootstrap;
mod fleet_cmd;
mod hex;
mod keys_cmd;
mod ota_sim;
mod psk_file;
mod rotate_cmd;
mod server_cmd;

use clap::{Parser, Subcommand};

/// mimalloc instead of the C library's allocator: a server holding many small per-device
/// records fragments glibc's arenas, and mimalloc gives freed pages back (docs/benchmarks.md
/// has the figures).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Cairn: secure device management for IoT fleets (LwM2M over CoAP/DTLS).
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `cairn_coap=debug` (also read from RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    /// Write logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// CoAP server and client tools.
    Coap(coap_cmd::CoapArgs),
    /// A server and a fleet of simulated devices registering over DTLS, with what happens.
    Demo(demo_cmd::DemoArgs),
    /// The LwM2M device-management server with its embedded store.
    Server(server_cmd::ServerArgs),
    /// Manage devices' security information in the server's store.
    Device(server_cmd::DeviceArgs),
    /// Manage the web console's users offline (create an admin, print a setup link).
    Admin(admin_cmd::AdminArgs),
    /// Benchmarks against real peers.
    Bench(bench::BenchArgs),
    /// An LwM2M device that registers with a server until Ctrl-C.
    Client(client_cmd::ClientArgs),
    /// Many simulated LwM2M devices in one process.
    Fleet(fleet_cmd::FleetArgs),
    /// ECDSA P-256 keys and a certificate authority for the certificate modes.
    Keys(keys_cmd::KeysArgs),
    /// Firmware signing keys, signed manifests and delta patches.
    Firmware(firmware_cmd::FirmwareArgs),
    /// The LwM2M Bootstrap-Server alone, and its configurations and factory credentials.
    Bootstrap(bootstrap_cmd::BootstrapArgs),
    /// Firmware update campaigns of a running server: start, status, pause, resume, cancel.
    Campaign(campaign_cmd::CampaignArgs),
}

fn init_logging(filter: Option<&str>, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    keep_small_pages();
    let cli = Cli::parse();
    init_logging(cli.log.as_deref(), cli.log_json);
    match cli.command {
        Command::Coap(args) => coap_cmd::run(args),
        Command::Demo(args) => demo_cmd::run(args),
        Command::Server(args) => server_cmd::run_server(args),
        Command::Device(args) => server_cmd::run_device(args),
        Command::Admin(args) => admin_cmd::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Client(args) => client_cmd::run(args),
        Command::Fleet(args) => fleet_cmd::run(args),
        Command::Keys(args) => keys_cmd::run(args),
        Command::Firmware(args) => firmware_cmd::run(args),
        Command::Bootstrap(args) => bootstrap_cmd::run(args),
        Command::Campaign(args) => campaign_cmd::run(args),
    }
}

/// Transparent huge pages off for this process. The allocator marks its regions for huge
/// pages, and the kernel's khugepaged then turns any 2 MiB of them with one page in use into
/// a whole huge page: a server holding many small per-device records grew its resident
/// memory by half while idle (`cairn bench lwm2m`, docs/benchmarks.md). `CAIRN_HUGE_PAGES=1`
/// leaves the system's setting in force.
fn keep_small_pages() {
    if std::env::var_os("CAIRN_HUGE_PAGES").is_some_and(|value| value == "1") {
        return;
    }
    // Not fatal: without it the process only uses more memory.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
