//! `cairn coap serve|get|put|post|delete|observe`: a CoAP server and client for interop and demos.

use clap::Args;

#[derive(Debug, Args)]
pub struct CoapArgs {}

pub fn run(_args: CoapArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
