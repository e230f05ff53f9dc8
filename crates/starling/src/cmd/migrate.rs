//! `starling migrate-mosquitto mosquitto.conf`: writes the equivalent
//! `starling.toml` (to stdout, or `--output FILE`) and lists on stderr, with
//! their line numbers, the directives it cannot carry over.
//!
//! Mosquitto's global settings become top-level keys; each `listener` starts
//! a `[[listener]]` table that takes the per-listener directives after it
//! (certificates, `mount_point`, `max_connections`, and, with
//! `per_listener_settings true`, `allow_anonymous`, `password_file` and
//! `acl_file`). What Starling does differently, or not at all (bridges,
//! plugins, logging destinations), is reported, never guessed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use toml::{Table, Value};

/// Arguments of `starling migrate-mosquitto`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Mosquitto's configuration file.
    #[arg(value_name = "MOSQUITTO_CONF")]
    input: PathBuf,
    /// Write the TOML here instead of to stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// What a Mosquitto configuration becomes.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Migration {
    /// The Starling configuration.
    pub toml: Table,
    /// Directives not carried over: line number and why.
    pub skipped: Vec<(usize, String)>,
}

/// Runs the command.
pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let m = migrate(&text);
    let mut out = format!(
        "# Written by `starling migrate-mosquitto {}`.\n",
        args.input.display()
    );
    out.push_str(&toml::to_string_pretty(&m.toml).context("cannot write TOML")?);
    match &args.output {
        Some(path) => std::fs::write(path, &out)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{out}"),
    }
    for (line, why) in &m.skipped {
        eprintln!("{}:{line}: not carried over: {why}", args.input.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// One `listener` block being read.
#[derive(Default)]
struct Listener {
    port: String,
    bind: Option<String>,
    websockets: bool,
    table: Table,
}

impl Listener {
    fn finish(mut self) -> Table {
        let tls = self.table.contains_key("tls-cert");
        let scheme = match (self.websockets, tls) {
            (false, false) => "mqtt",
            (false, true) => "mqtts",
            (true, false) => "ws",
            (true, true) => "wss",
        };
        // Mosquitto listens on every address when no bind address is given.
        let host = self.bind.unwrap_or_else(|| "0.0.0.0".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        self.table.insert(
            "url".into(),
            Value::String(format!("{scheme}://{host}:{}", self.port)),
        );
        self.table
    }
}

/// Mosquitto's durations (`persistent_client_expiration 2w`) in seconds.
fn duration_secs(v: &str) -> Option<i64> {
    // The unit is the last character, whatever its width in bytes.
    let unit = v.chars().last()?;
    let n: i64 = v[..v.len() - unit.len_utf8()].parse().ok()?;
    let mult = match unit {
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        'm' => 2_592_000,
        'y' => 31_536_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn integer(v: &str) -> Option<i64> {
    v.parse().ok()
}

/// Translates Mosquitto's configuration text.
pub(crate) fn migrate(text: &str) -> Migration {
    let mut m = Migration::default();
    let mut listeners: Vec<Listener> = Vec::new();
    let mut per_listener = false;
    let mut default_port: Option<String> = None;
    let mut default_bind: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        let mut skip = |why: &str| m.skipped.push((line_no, format!("{key}: {why}")));
        let current = listeners.last_mut();
        // Per-listener directives go to the listener being read, if any.
        let listener_key = match key {
            "certfile" => Some(("tls-cert", Value::String(value.into()))),
            "keyfile" => Some(("tls-key", Value::String(value.into()))),
            "cafile" => Some(("tls-ca", Value::String(value.into()))),
            "require_certificate" => {
                boolean(value).map(|b| ("require-client-cert", Value::Boolean(b)))
            }
            "use_identity_as_username" => {
                boolean(value).map(|b| ("use-identity-as-username", Value::Boolean(b)))
            }
            "mount_point" => Some(("mountpoint", Value::String(value.into()))),
            "max_connections" => integer(value)
                .map(|n| ("max-connections", Value::Integer(if n < 0 { 0 } else { n }))),
            "allow_anonymous" if per_listener => {
                boolean(value).map(|b| ("allow-anonymous", Value::Boolean(b)))
            }
            "password_file" if per_listener => Some(("password-file", Value::String(value.into()))),
            "acl_file" if per_listener => Some(("acl-file", Value::String(value.into()))),
            _ => None,
        };
        match (key, listener_key, current) {
            ("listener", _, _) => {
                let mut parts = value.split_whitespace();
                match parts.next() {
                    Some(port) if port.parse::<u16>().is_ok() => listeners.push(Listener {
                        port: port.into(),
                        bind: parts.next().map(String::from),
                        ..Listener::default()
                    }),
                    _ => skip("needs a port number"),
                }
            }
            ("protocol", _, Some(l)) => match value {
                "mqtt" => {}
                "websockets" => l.websockets = true,
                other => skip(&format!("protocol {other} is not supported")),
            },
            (_, Some((k, v)), Some(l)) => {
                l.table.insert(k.into(), v);
            }
            // The same directives before any `listener` apply to the default
            // listener in Mosquitto; Starling has them at the top level.
            ("certfile" | "keyfile" | "cafile", Some((k, v)), None) => {
                m.toml.insert(k.into(), v);
            }
            ("require_certificate" | "use_identity_as_username", Some((k, v)), None) => {
                m.toml.insert(k.into(), v);
            }
            ("max_connections", Some((k, v)), None) => {
                m.toml.insert(k.into(), v);
            }
            _ => translate_global(
                &mut m,
                key,
                value,
                line_no,
                &mut per_listener,
                &mut default_port,
                &mut default_bind,
            ),
        }
    }
    let mut listen: Vec<Value> = Vec::new();
    if let Some(port) = default_port {
        let host = default_bind.unwrap_or_else(|| "0.0.0.0".into());
        listen.push(Value::String(format!("mqtt://{host}:{port}")));
    }
    if listen.is_empty() && listeners.is_empty() {
        // Mosquitto 2 without a listener serves loopback only, as Starling does.
        listen.push(Value::String("mqtt://127.0.0.1:1883".into()));
    }
    if !listen.is_empty() {
        m.toml.insert("listen".into(), Value::Array(listen));
    }
    let tables: Vec<Value> = listeners
        .into_iter()
        .map(|l| Value::Table(l.finish()))
        .collect();
    if !tables.is_empty() {
        m.toml.insert("listener".into(), Value::Array(tables));
    }
    m
}

/// The directives that are not per-listener.
fn translate_global(
    m: &mut Migration,
    key: &str,
    value: &str,
    line_no: usize,
    per_listener: &mut bool,
    default_port: &mut Option<String>,
    default_bind: &mut Option<String>,
) {
    let t = &mut m.toml;
    let mut put = |k: &str, v: Option<Value>| match v {
        Some(v) => {
            t.insert(k.into(), v);
            None
        }
        None => Some(format!("{key}: value {value:?} not understood")),
    };
    let problem: Option<String> = match key {
        "per_listener_settings" => {
            *per_listener = boolean(value) == Some(true);
            None
        }
        "port" => {
            *default_port = Some(value.into());
            None
        }
        "bind_address" => {
            *default_bind = Some(value.into());
            None
        }
        "allow_anonymous" => put("allow-anonymous", boolean(value).map(Value::Boolean)),
        "password_file" => put("password-file", Some(Value::String(value.into()))),
        "acl_file" => put("acl-file", Some(Value::String(value.into()))),
        "persistence" => put(
            "durability",
            boolean(value).map(|b| Value::String(if b { "always" } else { "none" }.into())),
        ),
        "persistence_location" => put("data-dir", Some(Value::String(value.into()))),
        "max_keepalive" => put("max-keepalive", integer(value).map(Value::Integer)),
        "max_packet_size" | "message_size_limit" => put(
            "max-packet-size",
            integer(value).filter(|n| *n > 0).map(Value::Integer),
        ),
        "max_inflight_messages" => put("max-inflight-messages", integer(value).map(Value::Integer)),
        "max_queued_messages" => put("max-queued-messages", integer(value).map(Value::Integer)),
        "max_queued_bytes" => put(
            "max-queued-bytes",
            integer(value).filter(|n| *n > 0).map(Value::Integer),
        ),
        "queue_qos0_messages" => put("queue-qos0-offline", boolean(value).map(Value::Boolean)),
        "retain_available" => put("retain-available", boolean(value).map(Value::Boolean)),
        "sys_interval" => put("sys-interval", integer(value).map(Value::Integer)),
        "persistent_client_expiration" => put(
            "persistent-session-expiry",
            duration_secs(value).map(Value::Integer),
        ),
        "autosave_interval" | "autosave_on_changes" => Some(format!(
            "{key}: Starling writes every change; see durability and durability-interval-ms"
        )),
        "log_type"
        | "log_dest"
        | "log_timestamp"
        | "log_timestamp_format"
        | "connection_messages" => Some(format!(
            "{key}: logging goes to stderr; set log-level (or RUST_LOG)"
        )),
        "connection"
        | "address"
        | "topic"
        | "bridge_protocol_version"
        | "remote_username"
        | "remote_password"
        | "remote_clientid"
        | "cleansession"
        | "try_private" => Some(format!("{key}: bridges are not supported yet")),
        "plugin" | "auth_plugin" | "plugin_opt" | "auth_opt" => Some(format!(
            "{key}: plugins have no equivalent; see the auth chain"
        )),
        "include_dir" => Some(format!("{key}: merge the included files by hand")),
        "user" | "pid_file" => Some(format!("{key}: set by the service manager (systemd unit)")),
        _ => Some(format!("{key}: no Starling equivalent")),
    };
    if let Some(why) = problem {
        m.skipped.push((line_no, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typical_mosquitto_conf() {
        let conf = "\
# global
per_listener_settings false
allow_anonymous false
password_file /etc/mosquitto/passwd
acl_file /etc/mosquitto/acl
persistence true
persistence_location /var/lib/mosquitto/
persistent_client_expiration 2d
max_queued_messages 5000
log_dest syslog

listener 1883 127.0.0.1

listener 8883
certfile /etc/mosquitto/certs/server.crt
keyfile /etc/mosquitto/certs/server.key
cafile /etc/mosquitto/ca.crt
require_certificate true

listener 9001
protocol websockets
mount_point tenant/

connection cloud
address cloud.example:8883
";
        let m = migrate(conf);
        let t = &m.toml;
        assert_eq!(t["allow-anonymous"], Value::Boolean(false));
        assert_eq!(t["password-file"].as_str(), Some("/etc/mosquitto/passwd"));
        assert_eq!(t["durability"].as_str(), Some("always"));
        assert_eq!(t["data-dir"].as_str(), Some("/var/lib/mosquitto/"));
        assert_eq!(t["persistent-session-expiry"].as_integer(), Some(172_800));
        assert_eq!(t["max-queued-messages"].as_integer(), Some(5000));
        let ls = t["listener"].as_array().unwrap();
        let url = |i: usize| ls[i]["url"].as_str().unwrap().to_string();
        assert_eq!(url(0), "mqtt://127.0.0.1:1883");
        assert_eq!(url(1), "mqtts://0.0.0.0:8883");
        assert_eq!(ls[1]["require-client-cert"], Value::Boolean(true));
        assert_eq!(url(2), "ws://0.0.0.0:9001");
        assert_eq!(ls[2]["mountpoint"].as_str(), Some("tenant/"));
        assert!(t.get("listen").is_none());
        let lines: Vec<usize> = m.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [10, 24, 25], "{:?}", m.skipped);
        // What it writes is a configuration Starling loads.
        let text = toml::to_string_pretty(t).unwrap();
        let config: starling_broker::Config = toml::from_str(&text).unwrap();
        assert_eq!(config.listener.len(), 3);
    }

    #[test]
    fn per_listener_auth_and_the_default_listener() {
        let m = migrate("per_listener_settings true\nport 1884\nlistener 1885\nallow_anonymous true\npassword_file p\n");
        assert_eq!(
            m.toml["listen"].as_array().unwrap()[0].as_str(),
            Some("mqtt://0.0.0.0:1884")
        );
        let l = &m.toml["listener"].as_array().unwrap()[0];
        assert_eq!(l["allow-anonymous"], Value::Boolean(true));
        assert_eq!(l["password-file"].as_str(), Some("p"));
        assert!(m.skipped.is_empty(), "{:?}", m.skipped);
        // Nothing at all: loopback, like Mosquitto 2.
        assert_eq!(
            migrate("").toml["listen"].as_array().unwrap()[0].as_str(),
            Some("mqtt://127.0.0.1:1883")
        );
        assert_eq!(migrate("listener x\nmax_keepalive ten\n").skipped.len(), 2);
        // A unit that is not ASCII is reported, not a panic.
        let odd =
            migrate("persistent_client_expiration 2\u{e9}\npersistent_client_expiration \u{e9}\n");
        assert_eq!(odd.skipped.len(), 2, "{:?}", odd.skipped);
        assert_eq!(duration_secs("3w"), Some(1_814_400));
    }
}
