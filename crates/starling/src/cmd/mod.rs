//! One module per subcommand.

pub mod bench;
pub mod broker;
pub mod check;
pub mod ctl;
pub mod generate;
pub mod migrate;
pub mod passwd;
pub mod pubsub;

/// `s` as a JSON string, quoted and escaped.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Where and how to connect: the flags shared by `pub`, `sub` and `bench`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ServerArgs {
    /// Host to connect to.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,
    /// Port to connect to (1883, or 8883 with TLS).
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,
    /// Connect to this URL instead: mqtt://, mqtts://, ws://host:port/mqtt, wss://, quic://.
    #[arg(short = 'L', long = "url")]
    url: Option<String>,
    /// Protocol version: 31, 311 or 5 (also mqttv31, mqttv311, mqttv5). Default 311.
    #[arg(short = 'V', long = "protocol-version")]
    version: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS flags, part of [`ServerArgs`].
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TlsArgs {
    /// CA certificates (PEM) to verify the server with; enables TLS.
    #[arg(long = "cafile")]
    cafile: Option<std::path::PathBuf>,
    /// Client certificate (PEM); enables TLS.
    #[arg(long = "cert")]
    cert: Option<std::path::PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "key")]
    key: Option<std::path::PathBuf>,
    /// Do not verify the server's certificate or name; enables TLS.
    #[arg(long = "insecure")]
    insecure: bool,
}

/// Connection options for the URL, or for the host and port (1883, or 8883
/// when a TLS flag is given), speaking MQTT 3.1.1 unless the URL or the
/// version flag says otherwise; TLS (or WSS) when a TLS flag is given.
pub(crate) fn base_options(server: &ServerArgs) -> anyhow::Result<starling_client::ConnectOptions> {
    use anyhow::Context as _;
    use starling_client::{ClientTlsConfig, ConnectOptions, ProtocolVersion, TransportKind};
    let (url, tls) = (server.url.as_deref(), &server.tls);
    let tls_wanted =
        tls.cafile.is_some() || tls.cert.is_some() || tls.key.is_some() || tls.insecure;
    let mut o = match url {
        Some(url) => {
            let mut o = ConnectOptions::from_url(url)?;
            if !url.contains("version=") {
                o.version = ProtocolVersion::V3_1_1;
            }
            o
        }
        None => {
            let port = server.port.unwrap_or(if tls_wanted { 8883 } else { 1883 });
            let mut o = ConnectOptions::new(server.host.clone(), port);
            o.version = ProtocolVersion::V3_1_1;
            o
        }
    };
    if let Some(v) = &server.version {
        o.version = starling_client::parse_version(v)
            .with_context(|| format!("unknown protocol version {v:?} (use 31, 311 or 5)"))?;
    }
    if tls_wanted {
        o.transport = match o.transport {
            TransportKind::Tcp => TransportKind::Tls,
            TransportKind::Ws => TransportKind::Wss,
            other => other,
        };
        o.tls = ClientTlsConfig {
            ca_file: tls.cafile.clone(),
            client_cert: tls.cert.clone(),
            client_key: tls.key.clone(),
            insecure: tls.insecure,
            server_name: None,
        };
    }
    Ok(o)
}
