//! `starling pub` and `starling sub`, with the flags of `mosquitto_pub` and
//! `mosquitto_sub`.
//!
//! `-h` is the host, as in mosquitto's tools, so help is `--help` only.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use starling_client::{Client, ConnectOptions, LastWill, Message, QoS, SubscriptionOptions};

/// The exit code of `sub` when `-W` expires, as `mosquitto_sub` uses.
pub const EXIT_TIMEOUT: u8 = 27;

/// Connection flags shared by `pub` and `sub`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Client id; by default one is made up from the process id.
    #[arg(short = 'i', long = "id")]
    id: Option<String>,
    /// Disable the clean session / clean start flag (keeps the session; needs -i).
    #[arg(short = 'c', long = "disable-clean-session")]
    no_clean: bool,
    /// MQTT 5 session expiry interval in seconds.
    #[arg(short = 'x', long = "session-expiry-interval")]
    session_expiry: Option<u32>,
    /// User name.
    #[arg(short = 'u', long = "username")]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// Keep alive in seconds (0 disables it).
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    keepalive: u16,
    /// Topic of the will.
    #[arg(long = "will-topic")]
    will_topic: Option<String>,
    /// Payload of the will.
    #[arg(long = "will-payload")]
    will_payload: Option<String>,
    /// QoS of the will.
    #[arg(long = "will-qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    will_qos: u8,
    /// Retain the will.
    #[arg(long = "will-retain")]
    will_retain: bool,
    #[command(flatten)]
    server: super::ServerArgs,
    /// Seconds to wait for the connection and CONNACK.
    #[arg(long = "connect-timeout", default_value_t = 30)]
    connect_timeout: u64,
    /// Print debug messages to stderr.
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl ConnArgs {
    fn options(&self, role: &str) -> anyhow::Result<ConnectOptions> {
        let mut o = super::base_options(&self.server)?;
        match &self.id {
            Some(id) => o.client_id = id.clone(),
            None if o.client_id.is_empty() => {
                if self.no_clean {
                    bail!("-c (no clean session) needs a client id (-i)");
                }
                o.client_id = format!("starling-{role}-{}", std::process::id());
            }
            None => {}
        }
        o.clean_start = !self.no_clean;
        if self.session_expiry.is_some() {
            o.session_expiry = self.session_expiry;
        }
        if let Some(u) = &self.username {
            o.username = Some(u.clone());
        }
        if let Some(p) = &self.password {
            o.password = Some(Bytes::from(p.clone()));
        }
        o.keep_alive = Duration::from_secs(self.keepalive.into());
        o.connect_timeout = Duration::from_secs(self.connect_timeout.max(1));
        if let Some(topic) = &self.will_topic {
            let mut will = LastWill::new(
                topic.clone(),
                Bytes::from(self.will_payload.clone().unwrap_or_default()),
            );
            will.qos = qos(self.will_qos)?;
            will.retain = self.will_retain;
            o.will = Some(will);
        } else if self.will_payload.is_some() || self.will_retain {
            bail!("--will-payload and --will-retain need --will-topic");
        }
        Ok(o)
    }

    fn init_debug(&self) {
        if self.debug {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("starling_client=trace")
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

fn qos(q: u8) -> anyhow::Result<QoS> {
    QoS::from_u8(q).with_context(|| format!("invalid QoS {q} (0, 1 or 2)"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

async fn connect(args: &ConnArgs, role: &str) -> anyhow::Result<Client> {
    let opts = args.options(role)?;
    if args.debug {
        eprintln!(
            "Client {} connecting to {} (MQTT {})",
            opts.client_id,
            opts.address(),
            opts.version
        );
    }
    let (client, ack) = Client::connect(opts).await?;
    if args.debug {
        eprintln!(
            "Client {} connected: session present {}, {}",
            ack.client_id, ack.session_present, ack.code
        );
    }
    Ok(client)
}

/// Arguments of `starling pub`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["message", "file", "stdin_file", "stdin_line", "null_message"])))]
pub struct PubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic to publish to.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Message payload.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Read the message from stdin, all of it as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,
    /// Read stdin and send each line as a message (blank lines are skipped).
    #[arg(short = 'l', long = "stdin-line")]
    stdin_line: bool,
    /// Send a zero-length message.
    #[arg(short = 'n', long = "null-message")]
    null_message: bool,
    /// QoS of the message.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Keep QoS 1/2 messages in a persistent outbox in this directory until
    /// the server acknowledged them: they are stored before connecting,
    /// sent (with what an earlier run left) once a connection succeeds
    /// (retried until it does), and survive a crash of this process.
    #[arg(long = "outbox")]
    outbox: Option<PathBuf>,
}

/// Runs `starling pub`: connects, publishes, and disconnects.
pub fn run_pub(args: PubArgs) -> anyhow::Result<ExitCode> {
    args.conn.init_debug();
    runtime()?.block_on(publish_main(args))
}

async fn publish_main(args: PubArgs) -> anyhow::Result<ExitCode> {
    let qos = qos(args.qos)?;
    // Read a file or stdin before connecting, so a slow producer does not hold a
    // connection open with nothing to say.
    let single: Option<Bytes> = if let Some(m) = &args.message {
        Some(Bytes::from(m.clone()))
    } else if let Some(path) = &args.file {
        Some(Bytes::from(std::fs::read(path).with_context(|| {
            format!("cannot read {}", path.display())
        })?))
    } else if args.stdin_file {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        Some(Bytes::from(buf))
    } else if args.null_message {
        Some(Bytes::new())
    } else {
        None
    };
    if let Some(dir) = args.outbox.clone() {
        return outbox_main(args, &dir, qos, single).await;
    }
    let client = connect(&args.conn, "pub").await?;
    let publish = |payload: Bytes| {
        let client = client.clone();
        let topic = args.topic.clone();
        let debug = args.conn.debug;
        async move {
            let len = payload.len();
            let code = client
                .publish(topic.as_str(), payload, qos, args.retain)
                .await?;
            if debug {
                eprintln!(
                    "Published {len} bytes to {topic} (QoS {}): {code}",
                    qos as u8
                );
            }
            if code.is_error() {
                bail!("the server refused the message: {code}");
            }
            anyhow::Ok(())
        }
    };
    match single {
        Some(payload) => publish(payload).await?,
        None => {
            // Line mode: stdin is read on a blocking thread and fed through a bounded channel.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(64);
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            });
            while let Some(line) = rx.recv().await {
                let line = line.context("cannot read stdin")?;
                let line = line.strip_suffix('\r').unwrap_or(&line);
                if line.is_empty() {
                    continue;
                }
                publish(Bytes::from(line.to_owned())).await?;
            }
        }
    }
    client.disconnect().await?;
    Ok(ExitCode::SUCCESS)
}

/// `starling pub --outbox`: stores, then sends through the outbox.
async fn outbox_main(
    args: PubArgs,
    dir: &std::path::Path,
    qos: QoS,
    single: Option<Bytes>,
) -> anyhow::Result<ExitCode> {
    let outbox = starling_client::Outbox::open(dir)?;
    let store = |payload: Bytes| -> anyhow::Result<()> {
        let len = payload.len();
        outbox.publish(args.topic.as_str(), payload, qos, args.retain)?;
        if args.conn.debug {
            eprintln!("Stored {len} bytes for {} in the outbox", args.topic);
        }
        Ok(())
    };
    match single {
        Some(payload) => store(payload)?,
        None => {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("cannot read stdin")?;
                let line = line.strip_suffix('\r').unwrap_or(&line);
                if !line.is_empty() {
                    store(Bytes::from(line.to_owned()))?;
                }
            }
        }
    }
    let mut opts = args.conn.options("pub")?;
    opts.reconnect.get_or_insert_with(Default::default);
    let mut delay = std::time::Duration::from_millis(100);
    let client = loop {
        match Client::connect(opts.clone()).await {
            Ok((client, _)) => break client,
            Err(e) => {
                if args.conn.debug {
                    eprintln!(
                        "Not connected ({e}); {} messages wait in the outbox",
                        outbox.len()
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    };
    let client = std::sync::Arc::new(client);
    outbox.attach(client.clone());
    outbox.flushed().await;
    client.disconnect().await?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `starling sub`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct SubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long = "topic", required = true)]
    topics: Vec<String>,
    /// Maximum QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Exit after receiving this many messages.
    #[arg(short = 'C', long = "count")]
    count: Option<u64>,
    /// Exit with code 27 if this many seconds pass (and -C is not yet satisfied).
    #[arg(short = 'W', long = "timeout")]
    timeout: Option<u64>,
    /// Print the topic before each payload.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Output format: %t topic, %p payload, %q QoS, %r retain, %l payload
    /// length, %x payload as hex, %j JSON, %% a percent sign; \n and \t escapes.
    #[arg(short = 'F', long = "format")]
    format: Option<String>,
    /// Do not print a newline after each message.
    #[arg(short = 'N')]
    no_eol: bool,
    /// Do not print retained messages (those sent because of the subscription).
    #[arg(short = 'R', long = "no-retained")]
    no_retained: bool,
}

/// Runs `starling sub`: subscribes and prints messages until `-C`, `-W`, or Ctrl-C.
pub fn run_sub(args: SubArgs) -> anyhow::Result<ExitCode> {
    args.conn.init_debug();
    runtime()?.block_on(subscribe_main(args))
}

async fn subscribe_main(args: SubArgs) -> anyhow::Result<ExitCode> {
    let qos = qos(args.qos)?;
    let client = connect(&args.conn, "sub").await?;
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let filters = args.topics.iter().map(|t| {
        (
            t.clone(),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )
    });
    let codes = client
        .subscribe_many(filters, Default::default())
        .await
        .context("subscribe failed")?;
    for (topic, code) in args.topics.iter().zip(&codes) {
        if code.is_error() {
            eprintln!("Subscription to {topic} refused: {code}");
        } else if args.conn.debug {
            eprintln!("Subscribed to {topic}: {code}");
        }
    }
    if codes.iter().all(|c| c.is_error()) {
        bail!("all subscription requests were denied");
    }
    let mut received = 0u64;
    let stdout = std::io::stdout();
    loop {
        if args.count.is_some_and(|c| received >= c) {
            break;
        }
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, client.recv()).await.ok(),
                None => Some(client.recv().await),
            }
        };
        let msg = tokio::select! {
            m = next => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        match msg {
            None => {
                if args.conn.debug {
                    eprintln!("Timed out");
                }
                let _ = client.disconnect().await;
                return Ok(ExitCode::from(EXIT_TIMEOUT));
            }
            Some(None) => bail!("the connection was closed"),
            Some(Some(m)) => {
                if args.no_retained && m.retain {
                    continue;
                }
                received += 1;
                let mut out = format_message(&m, args.format.as_deref(), args.verbose);
                if !args.no_eol {
                    out.push(b'\n');
                }
                let mut lock = stdout.lock();
                lock.write_all(&out).context("cannot write to stdout")?;
                lock.flush().context("cannot write to stdout")?;
            }
        }
    }
    let _ = client.disconnect().await;
    Ok(ExitCode::SUCCESS)
}

/// Renders one message for output: `-F` format, else `topic payload` with `-v`,
/// else the payload alone. No trailing newline.
pub fn format_message(m: &Message, format: Option<&str>, verbose: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.payload.len() + m.topic.len() + 2);
    let Some(format) = format else {
        if verbose {
            out.extend_from_slice(m.topic.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&m.payload);
        return out;
    };
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('t') => out.extend_from_slice(m.topic.as_bytes()),
                Some('p') => out.extend_from_slice(&m.payload),
                Some('q') => out.extend_from_slice((m.qos as u8).to_string().as_bytes()),
                Some('r') => out.push(if m.retain { b'1' } else { b'0' }),
                Some('l') => out.extend_from_slice(m.payload.len().to_string().as_bytes()),
                Some('x') => {
                    for b in m.payload.iter() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                }
                Some('j') => out.extend_from_slice(json(m).as_bytes()),
                Some('%') => out.push(b'%'),
                Some(other) => {
                    out.push(b'%');
                    let mut b = [0; 4];
                    out.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
                }
                None => out.push(b'%'),
            },
            '\\' => match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('\\') => out.push(b'\\'),
                Some('0') => out.push(0),
                Some(other) => {
                    out.push(b'\\');
                    let mut b = [0; 4];
                    out.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
                }
                None => out.push(b'\\'),
            },
            other => {
                let mut b = [0; 4];
                out.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out
}

/// The message as one JSON object. A payload that is not UTF-8 is given as hex
/// in `payload_hex` instead of `payload`.
fn json(m: &Message) -> String {
    let tst = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let payload = match std::str::from_utf8(&m.payload) {
        Ok(s) => format!("\"payload\":{}", super::json_string(s)),
        Err(_) => {
            let hex: String = m.payload.iter().map(|b| format!("{b:02x}")).collect();
            format!("\"payload_hex\":\"{hex}\"")
        }
    };
    format!(
        "{{\"tst\":{tst:.3},\"topic\":{},\"qos\":{},\"retain\":{},\"payloadlen\":{},{payload}}}",
        super::json_string(&m.topic),
        m.qos as u8,
        m.retain,
        m.payload.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_client::{ByteString, Properties};

    fn msg(payload: &[u8]) -> Message {
        Message {
            topic: ByteString::from("a/b"),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            dup: false,
            properties: Properties::default(),
            packet_id: 0,
        }
    }

    #[test]
    fn clap_definitions_are_valid() {
        use clap::Args;
        PubArgs::augment_args(clap::Command::new("pub")).debug_assert();
        SubArgs::augment_args(clap::Command::new("sub")).debug_assert();
    }

    #[test]
    fn formats() {
        let m = msg(b"hi \"x\"");
        let f = |fmt: Option<&str>, v: bool| String::from_utf8(format_message(&m, fmt, v)).unwrap();
        assert_eq!(f(None, false), "hi \"x\"");
        assert_eq!(f(None, true), "a/b hi \"x\"");
        assert_eq!(
            f(Some("%t|%q|%r|%l|%p|%%|%z"), false),
            "a/b|1|1|6|hi \"x\"|%|%z"
        );
        assert_eq!(f(Some("%x\\t%l\\n"), false), "686920227822\t6\n");
        let j = f(Some("%j"), false);
        assert!(j.starts_with("{\"tst\":"), "{j}");
        assert!(
            j.ends_with(
                "\"topic\":\"a/b\",\"qos\":1,\"retain\":true,\"payloadlen\":6,\"payload\":\"hi \\\"x\\\"\"}"
            ),
            "{j}"
        );
        let bin = msg(&[0xff, 0x00]);
        let j = String::from_utf8(format_message(&bin, Some("%j"), false)).unwrap();
        assert!(j.ends_with("\"payload_hex\":\"ff00\"}"), "{j}");
    }
}
