//! `cairn bench ...`: benchmarks that run Cairn and a real peer side by side.

mod bootstrap;
mod coap;
mod cpu;
mod dtls;
mod dtls_ecdhe;
mod dtls_load;
mod echo;
mod load;
mod lwm2m;
mod message;
mod ota;
mod server;

use std::net::SocketAddr;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// CoAP GET throughput, latency and server CPU per request: Cairn's server beside
    /// libcoap's `coap-server-notls` and a raw UDP echo, each in its own process.
    Coap(coap::CoapBenchArgs),
    /// CoAP over DTLS-PSK: handshakes/s, GETs/s over long-lived sessions and server CPU per
    /// unit, Cairn's server beside libcoap's `coap-server-openssl`; memory per idle session.
    /// With --ecdhe: ECDHE-ECDSA handshakes (X.509, raw public keys) against the P-256 limit.
    Dtls(dtls::DtlsBenchArgs),
    /// LwM2M: registrations/s of simulated devices over new DTLS-PSK sessions, memory per
    /// registered device with one observation each, and Read round trips/s.
    Lwm2m(lwm2m::Lwm2mBenchArgs),
    /// Bootstrap: simulated devices from factory state through bootstrap (generated
    /// credentials) to registration with them.
    Bootstrap(bootstrap::BootstrapBenchArgs),
    /// Firmware over the air: simulated devices on simulated flash updated by a campaign
    /// over DTLS; time, aggregate download rate, bricked devices and the delta ratio.
    Ota(ota::OtaBenchArgs),
    /// The raw UDP echo server that `bench coap` measures as its baseline.
    #[command(hide = true)]
    EchoServer {
        /// Address to listen on, e.g. 127.0.0.1:5683.
        #[arg(long)]
        listen: SocketAddr,
    },
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Coap(args) => coap::run(args),
        BenchCommand::Dtls(args) => dtls::run(args),
        BenchCommand::Lwm2m(args) => lwm2m::run(args),
        BenchCommand::Bootstrap(args) => bootstrap::run(args),
        BenchCommand::Ota(args) => ota::run(args),
        BenchCommand::EchoServer { listen } => echo::serve(listen),
    }
}
