//! `starling generate man|completions --dir DIR`: the man pages (one per
//! subcommand) and shell completions (bash, zsh, fish) that the Debian
//! package ships, generated from the command-line definition itself.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

/// Arguments of `starling generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// What to write.
    #[arg(value_enum)]
    what: What,
    /// The directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Debug)]
enum What {
    /// `starling.1`, `starling-broker.1`, ... (roff).
    Man,
    /// `starling.bash`, `_starling` (zsh), `starling.fish`.
    Completions,
}

/// Writes the files.
pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut cmd = crate::Cli::command();
    match args.what {
        What::Man => clap_mangen::generate_to(cmd, &args.dir)
            .with_context(|| format!("cannot write man pages to {}", args.dir.display()))?,
        What::Completions => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd, "starling", &args.dir)
                    .with_context(|| format!("cannot write {shell} completions"))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
