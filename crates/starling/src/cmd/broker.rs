//! `starling broker`.

use std::process::ExitCode;

/// Arguments of `starling broker`.
#[derive(clap::Args, Debug)]
pub struct BrokerArgs {}

pub fn run(_args: BrokerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("starling broker is not implemented yet")
}
