//! The `starling` command: the broker, the `pub`/`sub` clients, the `bench` load
//! generator, the `passwd` tool and the `ctl` client of the admin API.
//! Argument parsing and wiring only; protocol logic lives in the library
//! crates.
#![forbid(unsafe_code)]

mod cmd;

/// jemalloc rather than glibc's allocator: glibc keeps what its per-thread
/// arenas freed (the store's flushed memtables, drained queues) in the
/// process, where jemalloc returns it; retained messages cost 315 bytes of
/// RSS each instead of 476, and the publish path is no slower (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};

/// Starling: an MQTT 3.1 / 3.1.1 / 5.0 broker, client and load generator.
#[derive(Parser)]
#[command(name = "starling", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Broker(Box<cmd::broker::BrokerArgs>),
    /// Publish messages (like mosquitto_pub).
    Pub(Box<cmd::pubsub::PubArgs>),
    /// Subscribe and print messages (like mosquitto_sub).
    Sub(Box<cmd::pubsub::SubArgs>),
    /// Add or update a user in a password file (like mosquitto_passwd).
    Passwd(cmd::passwd::PasswdArgs),
    /// Load generator: connections, publishers, subscribers, end-to-end latency.
    Bench(Box<cmd::bench::BenchArgs>),
    /// Operate a running broker through its admin HTTP API (like emqx ctl).
    ///
    /// Lists clients, sessions and retained messages, shows or kicks a
    /// client, and shows the broker's figures. Talks to the broker's HTTP
    /// listener (`starling broker --http-listen`) at --url, sending the
    /// bearer token of --token-file when the broker has an --http-token-file
    /// (without one, the broker answers loopback clients only). Prints
    /// tables, or the API's JSON with --json.
    Ctl(cmd::ctl::CtlArgs),
    /// Check a configuration file and print the effective configuration.
    ///
    /// Loads the file as `starling broker --config FILE` would, with the
    /// password, ACL and token files it names and its listener URLs. Prints
    /// the configuration with every default filled in, or the first error as
    /// one line naming the file, line and key (exit status 1).
    CheckConfig(cmd::check::CheckArgs),
    /// Translate a Mosquitto configuration into a starling.toml.
    ///
    /// Writes the TOML to stdout (or --output) and lists on stderr, with
    /// their line numbers, the directives it cannot carry over.
    MigrateMosquitto(cmd::migrate::MigrateArgs),
    /// Write the man pages or shell completions (for packaging).
    #[command(hide = true)]
    Generate(cmd::generate::GenerateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker(args) => cmd::broker::run(*args),
        Command::Pub(args) => cmd::pubsub::run_pub(*args),
        Command::Sub(args) => cmd::pubsub::run_sub(*args),
        Command::Passwd(args) => cmd::passwd::run(args),
        Command::Bench(args) => cmd::bench::run(*args),
        Command::Ctl(args) => cmd::ctl::run(args),
        Command::CheckConfig(args) => cmd::check::run(args),
        Command::MigrateMosquitto(args) => cmd::migrate::run(args),
        Command::Generate(args) => cmd::generate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("starling: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
