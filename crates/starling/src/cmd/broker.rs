//! `starling broker`: builds the configuration from the file and the flags (flags
//! win), starts the broker, and shuts it down gracefully on SIGINT or SIGTERM.
//! SIGHUP reloads the TLS certificates and keys, and the password and ACL
//! files, without dropping connections.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use starling_admin::{AdminConfig, AdminServer};
use starling_broker::store::Durability;
use starling_broker::{Broker, Config};

/// Arguments of `starling broker`.
#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listener URL, e.g. mqtt://0.0.0.0:1883 (repeatable).
    #[arg(long = "listen", value_name = "URL")]
    listen: Vec<String>,
    /// Data directory of the persistent store.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Allow clients without a user name.
    #[arg(long, value_name = "BOOL")]
    allow_anonymous: Option<bool>,
    /// Password file (written by `starling passwd`, or Mosquitto's).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// ACL file in Mosquitto's format.
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// Serve metrics, health checks and the admin API on this URL,
    /// e.g. http://127.0.0.1:8081 (https:// uses --tls-cert and --tls-key).
    #[arg(long, value_name = "URL")]
    http_listen: Option<String>,
    /// Bearer tokens of the admin API, one per line (without it the API
    /// answers loopback clients only).
    #[arg(long, value_name = "FILE")]
    http_token_file: Option<PathBuf>,
    /// Largest keep alive a client may use, in seconds.
    #[arg(long, value_name = "SECS")]
    max_keepalive: Option<u16>,
    /// Seconds a new connection has to send CONNECT.
    #[arg(long, value_name = "SECS")]
    connect_timeout: Option<u64>,
    /// Most simultaneous connections (0: no limit).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// When acknowledged messages reach the disk: always (fsync before the
    /// acknowledgement), periodic, or none (memory only).
    #[arg(long, value_name = "MODE", value_parser = ["always", "periodic", "none"])]
    durability: Option<String>,
    /// PEM certificate chain for TLS listeners (mqtts://, wss://, quic://).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS listeners.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates are verified against.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate signed by --tls-ca.
    #[arg(long)]
    require_client_cert: bool,
    /// Use the client certificate's CN (or first SAN) as the user name; no
    /// password needed. Implies --require-client-cert.
    #[arg(long)]
    use_identity_as_username: bool,
    /// Password attempts per (address, user name) per minute checked at once;
    /// past it they are slowed down and taken one at a time (0: no limiter).
    #[arg(long, value_name = "N")]
    auth_failure_limit: Option<u32>,
    /// Most levels a topic name or filter may have.
    #[arg(long, value_name = "N")]
    max_topic_levels: Option<usize>,
    /// Join a cluster over these NATS servers (comma-separated
    /// nats://HOST:PORT); needs --node-id. Overrides `[cluster] nats`.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's name in the cluster (unique; letters, digits, - and _).
    #[arg(long, value_name = "NAME")]
    node_id: Option<String>,
    /// Log level (error, warn, info, debug, trace) when RUST_LOG is not set.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log lines as text (default) or one JSON object per line.
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

impl BrokerArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            config.listen = self.listen;
        }
        macro_rules! flag {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        flag!(
            data_dir,
            allow_anonymous,
            max_keepalive,
            connect_timeout,
            max_connections,
            max_topic_levels,
            log_level
        );
        if let Some(d) = self.durability.as_deref() {
            config.durability = match d {
                "periodic" => Durability::Periodic,
                "none" => Durability::None,
                _ => Durability::Always,
            };
        }
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            config.tls_key = self.tls_key;
        }
        if self.tls_ca.is_some() {
            config.tls_ca = self.tls_ca;
        }
        config.require_client_cert |= self.require_client_cert;
        config.use_identity_as_username |= self.use_identity_as_username;
        if let Some(n) = self.auth_failure_limit {
            config.auth_failure_limit = n;
        }
        if self.password_file.is_some() {
            config.password_file = self.password_file;
        }
        if self.acl_file.is_some() {
            config.acl_file = self.acl_file;
        }
        if self.http_listen.is_some() {
            config.http_listen = self.http_listen;
        }
        match self.log_format.as_deref() {
            Some("json") => config.log_format = starling_broker::LogFormat::Json,
            Some(_) => config.log_format = starling_broker::LogFormat::Text,
            None => {}
        }
        if self.http_token_file.is_some() {
            config.http_token_file = self.http_token_file;
        }
        if !self.cluster.is_empty() || self.node_id.is_some() {
            let cluster = config.cluster.get_or_insert_with(Default::default);
            if !self.cluster.is_empty() {
                cluster.nats = self.cluster;
            }
            if let Some(id) = self.node_id {
                cluster.node_id = id;
            }
        }
        config.validate("command line")?;
        Ok(config)
    }
}

fn init_logging(level: &str, format: starling_broker::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        starling_broker::LogFormat::Json => builder.json().try_init(),
        starling_broker::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let config_path = args.config.clone();
    let config = args.into_config()?;
    init_logging(&config.log_level, config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let admin_config = config.http_listen.clone().map(|listen| AdminConfig {
            listen,
            token_file: config.http_token_file.clone(),
            tls_cert: config.tls_cert.clone(),
            tls_key: config.tls_key.clone(),
        });
        let mut builder = Broker::builder(config.clone());
        for source in starling_integrate::sources(&config)? {
            builder = builder.authenticate(source);
        }
        // A cluster node replicates its persistent sessions in JetStream.
        let replica = match (&config.cluster, config.durability) {
            (Some(_), d) if d != starling_broker::store::Durability::None => {
                let replica = starling_cluster::Replica::new();
                let local = starling_broker::store::FjallStore::open(&config.data_dir)?;
                builder = builder.store(Box::new(replica.wrap(Box::new(local))));
                Some(replica)
            }
            _ => None,
        };
        let broker = builder.bind().await?;
        let mut node = None;
        if let Some(cluster) = &config.cluster {
            node = Some(join_cluster(cluster, &broker.state(), replica).await?);
        }
        starling_integrate::webhook::start(&broker.state())?;
        let bridges =
            starling_integrate::bridge::Bridges::start(broker.local_connector(), &config.bridge)
                .await;
        let handle = broker.shutdown_handle();
        let mut tokens = None;
        if let Some(admin_config) = admin_config {
            let admin = AdminServer::bind(
                &admin_config,
                broker.state(),
                broker.reload_handle(),
                broker.shutdown_handle(),
            )
            .await?;
            tracing::info!(addr = %admin.local_addr(), "HTTP listener serving /metrics, /healthz, /readyz and /api/v1");
            tokens = Some(admin.tokens());
            tokio::spawn(admin.run());
        }
        tokio::spawn(reload_on_sighup(
            broker.reload_handle(),
            tokens,
            Some((bridges, config_path)),
        ));
        tokio::spawn(async move {
            wait_for_signal().await;
            // A cluster node first hands its sessions to the other nodes.
            if let Some(node) = node {
                node.drain(DRAIN).await;
            }
            handle.shutdown();
        });
        let state = broker.state();
        broker.run().await;
        if let Some(store) = state.store() {
            store.close().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Joins the cluster before the listeners serve: waits a little for
/// JetStream (persistent sessions are refused until it answers), installs the
/// cluster seam and tells it the subscriptions restored from the store.
/// How long a stopping cluster node waits for its sessions to move.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn join_cluster(
    config: &starling_broker::config::ClusterConfig,
    state: &std::sync::Arc<starling_broker::BrokerState>,
    replica: Option<starling_cluster::Replica>,
) -> anyhow::Result<std::sync::Arc<starling_cluster::NatsCluster>> {
    let cluster = starling_cluster::NatsCluster::start(config, state, replica).await?;
    if !cluster.wait_ready(std::time::Duration::from_secs(10)).await {
        tracing::warn!(
            "the cluster's state is not ready yet: serving clean sessions only until it is"
        );
    }
    state.set_cluster(cluster.clone());
    let n = state.announce_interest(&*cluster);
    tracing::info!(node = %config.node_id, subscriptions = n, "serving as a cluster node");
    Ok(cluster)
}

/// Reloads certificates and the password and ACL files on each SIGHUP. A
/// reload that fails changes nothing and is logged.
async fn reload_on_sighup(
    reload: starling_broker::ReloadHandle,
    tokens: Option<std::sync::Arc<starling_admin::Tokens>>,
    bridges: Option<(
        std::sync::Arc<starling_integrate::bridge::Bridges>,
        Option<std::path::PathBuf>,
    )>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Some(tokens) = &tokens {
                match tokens.reload() {
                    Ok(()) => tracing::info!("SIGHUP: API tokens reloaded"),
                    Err(err) => tracing::error!("SIGHUP: keeping the previous API tokens: {err}"),
                }
            }
            // The [[bridge]] tables are read again from the file.
            if let Some((bridges, Some(path))) = &bridges {
                match Config::from_file(path) {
                    Ok(config) => {
                        bridges.reload(&config.bridge);
                        tracing::info!("SIGHUP: bridges reloaded");
                    }
                    Err(err) => tracing::error!("SIGHUP: keeping the previous bridges: {err}"),
                }
            }
            let reload = reload.clone();
            match tokio::task::spawn_blocking(move || reload.reload()).await {
                Ok(Ok(())) => tracing::info!("SIGHUP: certificates and auth files reloaded"),
                Ok(Err(err)) => {
                    tracing::error!("SIGHUP: reload failed, keeping the previous files: {err}")
                }
                Err(err) => tracing::error!("SIGHUP: reload failed: {err}"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reload, tokens, bridges);
        std::future::pending::<()>().await
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
