//! Broker configuration: every option and limit, its default, and loading from a
//! TOML file with one-line errors that name the file, the line and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod integrate;
pub use cluster::ClusterConfig;
pub use integrate::{
    AuthConfig, BridgeConfig, BridgeTopic, Direction, HttpAuthConfig, JwtAuthConfig, OnError,
    WebhookConfig,
};

/// What happens when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Drop the oldest queued message to make room for the new one.
    #[default]
    DropOldest,
    /// Drop the new message.
    DropNewest,
    /// MQTT 5: refuse the PUBLISH (PUBACK/PUBREC 0x97 Quota exceeded) when
    /// the queue of a persistent session it would go to is full, so that an
    /// acknowledgement means "queued for every persistent subscriber"; the
    /// publisher keeps the message and may send it again. (MQTT 3.x cannot
    /// refuse: there it acts as `drop-newest`.)
    Reject,
}

/// What happens to a subscriber that does not drain its queue within
/// `slow-consumer-timeout-ms` while publishers wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumer {
    /// Publishers stop waiting for it, and its QoS 0 messages past the
    /// high-water mark are dropped (counted) until it catches up; QoS 1/2
    /// messages still queue within `max-queued-messages`.
    #[default]
    Drop,
    /// It is disconnected (MQTT 5: DISCONNECT 0x97 Quota exceeded).
    Disconnect,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// How a shared subscription group picks the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SharedStrategy {
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// A member at random.
    Random,
    /// Always the same member for a publisher's client id.
    HashClientId,
}

/// The broker's configuration. Every field has a default; see the README for the table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Listener URLs such as `mqtt://127.0.0.1:1883`.
    pub listen: Vec<String>,
    /// Directory of the persistent store.
    pub data_dir: PathBuf,
    /// Whether clients without a user name may connect.
    pub allow_anonymous: bool,
    /// Password file (`user:hash` lines; argon2id, or Mosquitto `$6$`/`$7$`).
    pub password_file: Option<PathBuf>,
    /// ACL file in Mosquitto's format.
    pub acl_file: Option<PathBuf>,
    /// SCRAM-SHA-256 credentials (`starling passwd --scram`): MQTT 5 clients
    /// may authenticate with the Authentication Method `SCRAM-SHA-256`, and
    /// re-authenticate. Reloads on SIGHUP.
    pub scram_file: Option<PathBuf>,
    /// The authentication sources in the order they are asked:
    /// `"password-file"`, `"jwt"`, `"http"`. Each answers allow, deny or
    /// "not mine" (the next one is asked); when all pass, `allow-anonymous`
    /// decides as without a chain. Default: those configured, in that order.
    pub auth_chain: Option<Vec<String>>,
    /// `[auth.http]` and `[auth.jwt]`: authentication sources that ask
    /// other systems.
    pub auth: AuthConfig,
    /// The Response Information an MQTT 5 client that asks for it (Request
    /// Response Information = 1) gets in its CONNACK: a topic prefix for its
    /// responses, `%c` and `%u` replaced by its client id and user name.
    /// Empty: none is given.
    pub response_information: String,
    /// `[[webhook]]` tables: broker events posted to HTTP endpoints.
    pub webhook: Vec<WebhookConfig>,
    /// `[[bridge]]` tables: store-and-forward links to other brokers.
    pub bridge: Vec<BridgeConfig>,
    /// `[cluster]`: other nodes to act as one broker with, over NATS.
    /// Without it the broker is a single node.
    pub cluster: Option<ClusterConfig>,
    /// Largest keep alive a client may use, in seconds; 0 means no limit.
    pub max_keepalive: u16,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    /// Most simultaneous connections; 0 means no limit.
    pub max_connections: usize,
    /// Most sessions the broker holds at once, with a connection or without
    /// (0: no limit). Past it a CONNECT that needs a new session is refused
    /// with CONNACK 0x97 Quota exceeded (3.x: 3, server unavailable);
    /// resuming or taking over a session it holds always works. Client ids
    /// are the client's choice and MQTT 3.x sessions never expire by
    /// default, so without it a client could grow memory and the store
    /// one session at a time.
    pub max_sessions: usize,
    /// Largest packet accepted from a client, in bytes.
    pub max_packet_size: u32,
    /// The Receive Maximum told to MQTT 5 clients: most QoS 2 messages such a
    /// client may leave unreleased (more is DISCONNECT 0x93). MQTT 3.x
    /// clients, never told one, are bounded by the packet id space alone.
    pub receive_maximum: u16,
    /// Most QoS 1/2 messages the broker has unacknowledged towards one client
    /// (further capped by the client's Receive Maximum).
    pub max_inflight_messages: u16,
    /// Milliseconds of quiet after which a plain TCP connection gives up its
    /// task and parks (a client that says nothing after its CONNACK parks at
    /// once); 0 never parks. See `crate::connection::hibernate`.
    pub hibernate_after_ms: u64,
    /// Most topic aliases a client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Most messages queued per session.
    pub max_queued_messages: usize,
    /// Most bytes queued per session: each message's payload, topic and
    /// properties ([`crate::message::Message::weight`]). A persistent
    /// session's queue beyond its first messages is on disk (see
    /// `max-queued-memory-bytes`).
    pub max_queued_bytes: usize,
    /// Most bytes of one session's queue held in memory: the whole queue of
    /// a clean session, and what a persistent session's connection is about
    /// to send.
    pub max_queued_memory_bytes: usize,
    /// Most bytes of queued messages kept on disk for all sessions together
    /// (0: no limit). Past it, a queue is full (see `queue-overflow`).
    pub max_store_queue_bytes: u64,
    /// What a full queue drops.
    pub queue_overflow: OverflowPolicy,
    /// Longest time, in milliseconds, that a publisher stops being read
    /// because a subscriber's queue is past its high-water mark (the lesser
    /// of 1,000 messages and a quarter of the queue's bounds). A subscriber
    /// that has not drained by then is a slow consumer; 0 turns
    /// backpressure off (queues overflow at once).
    pub slow_consumer_timeout_ms: u64,
    /// What happens to a slow consumer.
    pub slow_consumer: SlowConsumer,
    /// Most PUBLISH packets per second one connection may send (0: no
    /// limit). Past it the connection is not read until the rate allows:
    /// nothing is dropped, the client's sends wait.
    pub max_publish_rate: u64,
    /// Most payload bytes per second one connection may publish (0: no
    /// limit), enforced as `max-publish-rate` is.
    pub max_publish_bytes_rate: u64,
    /// Queue QoS 0 messages for offline MQTT 3.x persistent sessions.
    pub queue_qos0_offline: bool,
    /// Session expiry, in seconds, for MQTT 3.x persistent sessions; none means never.
    pub persistent_session_expiry: Option<u32>,
    /// Most levels a topic name or filter may have (a `$share/group/` prefix
    /// and a listener's mountpoint are counted as the broker sees the topic).
    /// A deeper SUBSCRIBE filter gets SUBACK 0x8F (3.x: 0x80); a deeper
    /// PUBLISH or will topic closes the connection (MQTT 5: 0x90).
    pub max_topic_levels: usize,
    /// Most bytes in a topic name or filter (as the broker sees it, under a
    /// mountpoint). Past it, as for `max-topic-levels`. Each subscription
    /// keeps its filter, so this and `max-subscriptions-per-client` bound
    /// what one client's subscriptions cost.
    pub max_topic_length: usize,
    /// Most connections a listener accepts per second; past it new
    /// connections wait in the kernel's backlog (0: no limit).
    pub max_connection_rate: u32,
    /// Most subscriptions one session may hold; past it a SUBSCRIBE filter
    /// gets SUBACK 0x97 Quota exceeded (3.x: 0x80). Each costs memory in the
    /// session and the topic index, and the client chooses how many.
    pub max_subscriptions_per_client: usize,
    /// Most bytes a client id may have; 0 means the protocol limit (65535).
    pub max_client_id_len: usize,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Most retained messages the broker holds (0: no limit). Past it a
    /// retained PUBLISH on a new topic is refused: MQTT 5 QoS 1/2 with
    /// PUBACK/PUBREC 0x97 Quota exceeded (not delivered either); QoS 0,
    /// MQTT 3.x and wills are delivered without being retained. Counted in
    /// `starling_retained_refused_total`.
    pub max_retained_messages: usize,
    /// Most bytes of retained messages (0: no limit), each counted as its
    /// topic, payload and properties plus 64 bytes per topic level; past
    /// it, as for `max-retained-messages`.
    pub max_retained_bytes: usize,
    /// Seconds between `$SYS` updates; 0 disables them.
    pub sys_interval: u64,
    /// How shared subscription groups pick a member.
    pub shared_subscription_strategy: SharedStrategy,
    /// Log level when `RUST_LOG` is not set.
    pub log_level: String,
    /// When acknowledged QoS 1/2 messages reach the disk.
    pub durability: crate::store::Durability,
    /// With `durability = "periodic"`, milliseconds between fsyncs.
    pub durability_interval_ms: u64,
    /// Listeners with their own settings (`[[listener]]` tables), served beside
    /// those of `listen`. When a file has `[[listener]]` tables and no `listen`
    /// key, only the tables are served.
    pub listener: Vec<ListenerConfig>,
    /// PEM certificate chain of TLS listeners (`mqtts://`, `wss://`, `quic://`)
    /// that do not name their own.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of TLS listeners that do not name their own.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates are verified against, for
    /// TLS listeners that do not name their own. Without one, client
    /// certificates are not asked for.
    pub tls_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate signed by `tls-ca`, during the handshake.
    pub require_client_cert: bool,
    /// Use the client certificate's CN (or first SAN) as the user name; the
    /// client needs no password. Implies `require-client-cert`.
    pub use_identity_as_username: bool,
    /// Seconds a TLS, WebSocket or QUIC handshake may take before the
    /// connection is dropped.
    pub handshake_timeout: u64,
    /// Password attempts per (source address, user name) per minute that are
    /// checked at once; past it they are slowed down and taken one at a time
    /// (see `auth::limiter` and the README). 0 disables the limiter.
    pub auth_failure_limit: u32,
    /// Threads that check passwords; at most this many hashes are computed at
    /// once, whatever the number of CONNECTs.
    pub auth_threads: usize,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// `http://HOST:PORT` or `https://HOST:PORT` of the HTTP listener
    /// (metrics, health checks, admin API; served by `starling-admin`). Off
    /// when unset.
    pub http_listen: Option<String>,
    /// Bearer tokens of the admin API, one per line; without it the API
    /// answers loopback clients only.
    pub http_token_file: Option<PathBuf>,
}

/// A `[[listener]]` table: one listener and its own settings. Settings left out
/// take the top-level value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerConfig {
    /// `mqtt://HOST:PORT` (or `tcp://`), `mqtts://`, `ws://HOST:PORT/PATH`,
    /// `wss://HOST:PORT/PATH` or `quic://HOST:PORT`.
    pub url: String,
    /// PEM certificate chain (TLS listeners).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (TLS listeners).
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates for client certificates (TLS listeners).
    pub tls_ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate (TLS listeners).
    pub require_client_cert: Option<bool>,
    /// Use the certificate's CN (or first SAN) as the user name (TLS listeners).
    pub use_identity_as_username: Option<bool>,
    /// Whether clients without a user name may connect on this listener.
    pub allow_anonymous: Option<bool>,
    /// Most simultaneous connections on this listener; 0 means no limit of its own.
    #[serde(default)]
    pub max_connections: usize,
    /// Most connections this listener accepts per second (default: the
    /// top-level `max-connection-rate`).
    pub max_connection_rate: Option<u32>,
    /// WebSocket path (`ws`, `wss`); else the URL's path, else `/mqtt`.
    pub path: Option<String>,
    /// Expect a PROXY protocol header (v1 or v2) at the start of every
    /// connection (TCP-based listeners: `mqtt`, `mqtts`, `ws`, `wss`); the
    /// client address it names becomes the connection's peer. Also
    /// `?proxy-protocol=true` on a listener URL.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// This listener's own password file: its clients are authenticated
    /// against it instead of the top-level `password-file`. Reloads on SIGHUP.
    pub password_file: Option<PathBuf>,
    /// This listener's own ACL file: its clients' publishes, subscriptions,
    /// deliveries and wills are checked against it instead of the top-level
    /// `acl-file`. Reloads on SIGHUP.
    pub acl_file: Option<PathBuf>,
    /// A topic prefix (such as `"tenant/a/"`) for this listener's clients: added
    /// to what they publish (will included) and subscribe to, removed from what
    /// they receive; they receive nothing outside it. `$SYS` topics are left as
    /// they are. ACLs see the prefixed topics.
    pub mountpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec!["mqtt://127.0.0.1:1883".to_string()],
            data_dir: PathBuf::from("./starling-data"),
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            auth_chain: None,
            scram_file: None,
            auth: AuthConfig::default(),
            webhook: Vec::new(),
            bridge: Vec::new(),
            cluster: None,
            response_information: "response/%c/".into(),
            max_keepalive: 65535,
            connect_timeout: 10,
            max_connections: 0,
            max_sessions: 1_000_000,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight_messages: 100,
            hibernate_after_ms: 2000,
            topic_alias_maximum: 64,
            max_queued_messages: 100_000,
            max_queued_bytes: 1024 * 1024 * 1024,
            max_queued_memory_bytes: 64 * 1024 * 1024,
            max_store_queue_bytes: 8 * 1024 * 1024 * 1024,
            queue_overflow: OverflowPolicy::DropOldest,
            slow_consumer_timeout_ms: 500,
            slow_consumer: SlowConsumer::Drop,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            queue_qos0_offline: false,
            persistent_session_expiry: None,
            max_topic_levels: 128,
            max_topic_length: 4096,
            max_subscriptions_per_client: 10_000,
            max_connection_rate: 0,
            max_client_id_len: 0,
            retain_available: true,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            sys_interval: 10,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            log_level: "info".to_string(),
            durability: crate::store::Durability::Always,
            durability_interval_ms: 100,
            listener: Vec::new(),
            tls_cert: None,
            http_listen: None,
            http_token_file: None,
            log_format: LogFormat::Text,
            tls_key: None,
            tls_ca: None,
            require_client_cert: false,
            use_identity_as_username: false,
            handshake_timeout: 10,
            auth_failure_limit: 10,
            auth_threads: 2,
        }
    }
}

/// A configuration that could not be loaded. Its message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value is out of its range.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// The file, or "command line".
        origin: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads a TOML configuration file; keys missing from it keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses TOML text; `path` is used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: err.message().replace('\n', " "),
            }
        })?;
        // `[[listener]]` tables without a `listen` key replace the default listener.
        if !config.listener.is_empty() {
            let has_listen = text
                .parse::<toml::Table>()
                .is_ok_and(|t| t.contains_key("listen"));
            if !has_listen {
                config.listen.clear();
            }
        }
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// What these settings give up against the defaults' guarantees (see
    /// the README, "What the defaults guarantee"): one line per setting
    /// below its default, logged at startup.
    pub fn weaker_than_defaults(&self) -> Vec<String> {
        let d = Config::default();
        let mut out = Vec::new();
        if self.durability != crate::store::Durability::Always {
            out.push(format!(
                "durability = {:?}: acknowledged QoS 1/2 messages can be lost in a crash",
                self.durability
            ));
        }
        if self.max_queued_messages < d.max_queued_messages
            || self.max_queued_bytes < d.max_queued_bytes
        {
            out.push(format!(
                "max-queued-messages = {}, max-queued-bytes = {}: a persistent session's queue \
                 overflows sooner than the defaults' 100,000 messages / 1 GiB",
                self.max_queued_messages, self.max_queued_bytes
            ));
        }
        if self.max_store_queue_bytes != 0 && self.max_store_queue_bytes < d.max_store_queue_bytes {
            out.push(format!(
                "max-store-queue-bytes = {}: queues overflow once that much is on disk",
                self.max_store_queue_bytes
            ));
        }
        if self.retain_available
            && (self.max_retained_messages == 0 || self.max_retained_bytes == 0)
        {
            out.push(
                "max-retained-messages or max-retained-bytes = 0: retained messages are not \
                 bounded; clients that retain on many topics grow memory and the store"
                    .into(),
            );
        }
        if self.max_sessions == 0 {
            out.push(
                "max-sessions = 0: sessions are not bounded; clients that connect with new \
                 client ids grow memory and the store"
                    .into(),
            );
        }
        if self.slow_consumer_timeout_ms == 0 {
            out.push(
                "slow-consumer-timeout-ms = 0: no backpressure; a subscriber that falls behind \
                 loses QoS 0 messages at once"
                    .into(),
            );
        }
        out
    }

    /// Checks ranges that the types alone do not.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key,
                message: message.to_string(),
            })
        };
        if let Err((key, message)) = integrate::validate(
            self.auth_chain.as_deref(),
            &self.auth,
            self.password_file.is_some(),
        ) {
            return invalid(key, &message);
        }
        if let Err((key, message)) = integrate::validate_webhooks(&self.webhook) {
            return invalid(key, &message);
        }
        if let Err((key, message)) = integrate::validate_bridges(&self.bridge) {
            return invalid(key, &message);
        }
        if let Some(Err((key, message))) = self.cluster.as_ref().map(cluster::validate) {
            return invalid(key, &message);
        }
        if self.listen.is_empty() && self.listener.is_empty() {
            return invalid("listen", "at least one listener is needed");
        }
        if self.max_inflight_messages == 0 {
            return invalid("max-inflight-messages", "must be at least 1");
        }
        if self.receive_maximum == 0 {
            return invalid("receive-maximum", "must be at least 1");
        }
        if self.max_packet_size < 16 {
            return invalid("max-packet-size", "must be at least 16 bytes");
        }
        if self.max_queued_messages == 0 {
            return invalid("max-queued-messages", "must be at least 1");
        }
        if self.slow_consumer_timeout_ms > 60_000 {
            return invalid(
                "slow-consumer-timeout-ms",
                "must be at most 60000 (a publisher is not read meanwhile)",
            );
        }
        if self.max_publish_bytes_rate != 0
            && self.max_publish_bytes_rate < u64::from(self.max_packet_size)
        {
            return invalid(
                "max-publish-bytes-rate",
                "must be 0 (no limit) or at least max-packet-size",
            );
        }
        if self.max_retained_bytes != 0 && self.max_retained_bytes < self.max_packet_size as usize {
            return invalid(
                "max-retained-bytes",
                "must be 0 (no limit) or at least max-packet-size",
            );
        }
        if self.max_subscriptions_per_client == 0 {
            return invalid("max-subscriptions-per-client", "must be at least 1");
        }
        if !(1..=65_535).contains(&self.max_topic_length) {
            return invalid("max-topic-length", "must be between 1 and 65535");
        }
        if !(1..=65_536).contains(&self.max_topic_levels) {
            return invalid("max-topic-levels", "must be between 1 and 65536");
        }
        if !(1..=64).contains(&self.auth_threads) {
            return invalid("auth-threads", "must be between 1 and 64");
        }
        if self.durability_interval_ms == 0 {
            return invalid("durability-interval-ms", "must be at least 1");
        }
        if self.connect_timeout == 0 {
            return invalid("connect-timeout", "must be at least 1 second");
        }
        if self.handshake_timeout == 0 {
            return invalid("handshake-timeout", "must be at least 1 second");
        }
        Ok(())
    }

    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }

    /// How long a connection stays quiet before it parks.
    pub fn hibernate_after(&self) -> Duration {
        Duration::from_millis(self.hibernate_after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_below_the_defaults_guarantees_are_named() {
        assert!(Config::default().weaker_than_defaults().is_empty());
        let text = "max-queued-messages = 1000\nslow-consumer-timeout-ms = 0\ndurability = \"none\"\nqueue-overflow = \"reject\"\n";
        let config = Config::from_toml(text, Path::new("w.toml")).unwrap();
        let weaker = config.weaker_than_defaults();
        assert_eq!(weaker.len(), 3, "{weaker:?}");
        assert!(weaker
            .iter()
            .any(|w| w.starts_with("max-queued-messages = 1000")));
        let config = Config::from_toml("max-retained-messages = 0\n", Path::new("r.toml")).unwrap();
        let weaker = config.weaker_than_defaults();
        assert!(
            weaker[0].contains("retained messages are not bounded"),
            "{weaker:?}"
        );
        let config = Config::from_toml("max-sessions = 0\n", Path::new("s.toml")).unwrap();
        let weaker = config.weaker_than_defaults();
        assert!(
            weaker[0].starts_with("max-sessions = 0: sessions are not bounded"),
            "{weaker:?}"
        );
        let config = Config::from_toml("max-sessions = 5\n", Path::new("s.toml")).unwrap();
        assert_eq!(config.max_sessions, 5);
        assert!(config.weaker_than_defaults().is_empty());
    }

    #[test]
    fn retained_limits_load_and_are_checked() {
        let text = "max-retained-messages = 10\nmax-retained-bytes = 2000000\n";
        let config = Config::from_toml(text, Path::new("r.toml")).unwrap();
        assert_eq!(
            (config.max_retained_messages, config.max_retained_bytes),
            (10, 2_000_000)
        );
        let err = Config::from_toml("max-retained-bytes = 1000\n", Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "r.toml: max-retained-bytes: must be 0 (no limit) or at least max-packet-size"
        );
    }

    #[test]
    fn listener_tables() {
        let text = "[[listener]]\nurl = \"mqtts://0.0.0.0:8883\"\ntls-cert = \"c.pem\"\ntls-key = \"k.pem\"\nrequire-client-cert = true\n\n[[listener]]\nurl = \"ws://127.0.0.1:8080\"\npath = \"/ws\"\nmax-connections = 5\nmax-connection-rate = 50\n";
        let config = Config::from_toml(text, Path::new("l.toml")).unwrap();
        assert!(config.listen.is_empty());
        assert_eq!(config.listener.len(), 2);
        assert_eq!(config.listener[0].require_client_cert, Some(true));
        assert_eq!(config.listener[1].path.as_deref(), Some("/ws"));
        assert_eq!(config.listener[1].max_connections, 5);
        assert_eq!(config.listener[1].max_connection_rate, Some(50));
        assert_eq!(config.listener[0].max_connection_rate, None);
        let text = format!("listen = [\"mqtt://127.0.0.1:1883\"]\n{text}");
        let config = Config::from_toml(&text, Path::new("l.toml")).unwrap();
        assert_eq!(config.listen.len(), 1);
        let err = Config::from_toml(
            "[[listener]]\nurl = \"mqtt://x:1\"\nbogus = 1\n",
            Path::new("m.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("m.toml:3:") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate("defaults").unwrap();
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = Config::from_toml(
            "allow-anonymous = true\nmax-keepalive = \"x\"\n",
            Path::new("b.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("b.toml:2:"), "{err}");
        assert!(
            err.contains("max-keepalive") || err.contains("invalid type"),
            "{err}"
        );
        let err = Config::from_toml("nope = 1\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml:1:") && err.contains("nope"),
            "{err}"
        );
        let err = Config::from_toml("receive-maximum = 0\n", Path::new("d.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "d.toml: receive-maximum: must be at least 1");
        assert!(!err.contains('\n'));
    }
}
