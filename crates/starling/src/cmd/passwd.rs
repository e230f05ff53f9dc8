//! `starling passwd`: adds or updates a user in a password file, with an
//! argon2id hash, like `mosquitto_passwd`; with `--scram`, in a SCRAM-SHA-256
//! credentials file (`scram-file`) instead.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use starling_broker::auth::{hash_password, PasswordFile, ScramFile};

/// Arguments of `starling passwd`.
#[derive(clap::Args, Debug)]
pub struct PasswdArgs {
    /// Take the password from the command line (for scripts).
    #[arg(short = 'b')]
    batch: bool,
    /// Create a new file, replacing any existing one.
    #[arg(short = 'c')]
    create: bool,
    /// Write SCRAM-SHA-256 credentials (for `scram-file`: MQTT 5 enhanced
    /// authentication) instead of a password hash.
    #[arg(long)]
    scram: bool,
    /// Password file.
    file: PathBuf,
    /// User name.
    user: String,
    /// Password (with -b).
    password: Option<String>,
}

/// Writes the user's hash into the file.
pub fn run(args: PasswdArgs) -> anyhow::Result<ExitCode> {
    if args.user.contains(':') || args.user.is_empty() {
        anyhow::bail!("user name must be non-empty and must not contain ':'");
    }
    let password = match (args.batch, args.password) {
        (true, Some(p)) => p,
        (true, None) => anyhow::bail!("-b needs a password argument"),
        (false, Some(_)) => anyhow::bail!("a password argument needs -b"),
        (false, None) => read_password()?,
    };
    if args.scram {
        let mut file = if args.create || !args.file.exists() {
            ScramFile::default()
        } else {
            ScramFile::load(&args.file)?
        };
        let credential =
            starling_scram::Credential::new(&password, starling_scram::DEFAULT_ITERATIONS);
        file.set(&args.user, credential);
        std::fs::write(&args.file, file.to_text())
            .with_context(|| format!("{}", args.file.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut file = if args.create || !args.file.exists() {
        PasswordFile::default()
    } else {
        PasswordFile::load(&args.file)?
    };
    let hash =
        hash_password(&password).map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))?;
    file.set(&args.user, hash);
    std::fs::write(&args.file, file.to_text())
        .with_context(|| format!("{}", args.file.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let ask = |prompt: &str| -> anyhow::Result<String> {
        eprint!("{prompt}");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = ask("Password: ")?;
    let second = ask("Reenter password: ")?;
    if first != second {
        anyhow::bail!("passwords do not match");
    }
    Ok(first)
}
