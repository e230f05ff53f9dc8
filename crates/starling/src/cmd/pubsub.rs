//! `starling pub` and `starling sub`.

use std::process::ExitCode;

/// Arguments of `starling pub`.
#[derive(clap::Args, Debug)]
pub struct PubArgs {}

/// Arguments of `starling sub`.
#[derive(clap::Args, Debug)]
pub struct SubArgs {}

pub fn run_pub(_args: PubArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("starling pub is not implemented yet")
}

pub fn run_sub(_args: SubArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("starling sub is not implemented yet")
}
