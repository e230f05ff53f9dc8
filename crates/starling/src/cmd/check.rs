//! `starling check-config FILE`: loads a configuration file as the broker
//! would, with the files it names (password and ACL files, the API token
//! file) and its listener URLs, and prints the effective configuration as
//! TOML, or the first error as one line naming the file, line and key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use starling_broker::auth::{Acl, PasswordFile};
use starling_broker::{Config, ListenerUrl};

/// Arguments of `starling check-config`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The TOML configuration file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// Checks the file; the effective configuration goes to stdout.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_file(&args.file)?;
    check(&config, &args.file)?;
    let text =
        toml::to_string_pretty(&redacted(config)).context("cannot print the configuration")?;
    print!(
        "# Effective configuration of {} (defaults included).\n{text}",
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The configuration with its secrets (the JWT secret, bridge passwords,
/// header values sent to backends) replaced, for printing.
fn redacted(mut config: Config) -> Config {
    const HIDDEN: &str = "(redacted)";
    if let Some(jwt) = config.auth.jwt.as_mut() {
        if jwt.secret.is_some() {
            jwt.secret = Some(HIDDEN.into());
        }
    }
    let headers = config
        .auth
        .http
        .iter_mut()
        .flat_map(|h| h.headers.values_mut())
        .chain(
            config
                .webhook
                .iter_mut()
                .flat_map(|w| w.headers.values_mut()),
        );
    for value in headers {
        *value = HIDDEN.into();
    }
    for bridge in &mut config.bridge {
        if bridge.password.is_some() {
            bridge.password = Some(HIDDEN.into());
        }
    }
    if let Some(cluster) = config.cluster.as_mut() {
        for secret in [&mut cluster.password, &mut cluster.token] {
            if secret.is_some() {
                *secret = Some(HIDDEN.into());
            }
        }
    }
    config
}

/// What loading the file alone does not check: listener URLs and the files
/// the configuration names.
fn check(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let origin = file.display();
    let urls = config
        .listen
        .iter()
        .map(|u| ("listen", u))
        .chain(config.listener.iter().map(|l| ("listener.url", &l.url)));
    for (key, url) in urls {
        ListenerUrl::parse(url).map_err(|e| anyhow::anyhow!("{origin}: {key}: {e}"))?;
    }
    let passwords = config
        .password_file
        .iter()
        .map(|p| ("password-file", p))
        .chain(config.listener.iter().filter_map(|l| {
            l.password_file
                .as_ref()
                .map(|p| ("listener.password-file", p))
        }));
    for (key, path) in passwords {
        PasswordFile::load(path).map_err(|e| anyhow::anyhow!("{origin}: {key}: {e}"))?;
    }
    let acls = config.acl_file.iter().map(|p| ("acl-file", p)).chain(
        config
            .listener
            .iter()
            .filter_map(|l| l.acl_file.as_ref().map(|p| ("listener.acl-file", p))),
    );
    for (key, path) in acls {
        Acl::load(path).map_err(|e| anyhow::anyhow!("{origin}: {key}: {e}"))?;
    }
    let tls = [
        ("tls-cert", &config.tls_cert),
        ("tls-key", &config.tls_key),
        ("tls-ca", &config.tls_ca),
    ];
    for (key, path) in tls {
        if let Some(path) = path {
            std::fs::metadata(path)
                .map_err(|e| anyhow::anyhow!("{origin}: {key}: {}: {e}", path.display()))?;
        }
    }
    if let Some(path) = &config.scram_file {
        starling_broker::auth::ScramFile::load(path)
            .map_err(|e| anyhow::anyhow!("{origin}: scram-file: {e}"))?;
    }
    // The key files of [auth.jwt] (a JWKS URL is fetched by the broker)
    // and the CA file of [auth.http].
    if let Some(jwt) = config.auth.jwt.as_ref().filter(|j| j.jwks_url.is_none()) {
        starling_integrate::jwt::JwtAuth::new(jwt)
            .map_err(|e| anyhow::anyhow!("{origin}: auth.jwt: {e}"))?;
    }
    if let Some(http) = &config.auth.http {
        starling_integrate::http::HttpAuth::new(http)
            .map_err(|e| anyhow::anyhow!("{origin}: auth.http: {e}"))?;
    }
    if let Some(url) = &config.http_listen {
        starling_admin::check_listen(url).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    }
    if let Some(path) = &config.http_token_file {
        starling_admin::Tokens::load(Some(path.clone()))
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    }
    Ok(())
}
