//! `starling passwd`.

use std::process::ExitCode;

/// Arguments of `starling passwd`.
#[derive(clap::Args, Debug)]
pub struct PasswdArgs {}

pub fn run(_args: PasswdArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("starling passwd is not implemented yet")
}
