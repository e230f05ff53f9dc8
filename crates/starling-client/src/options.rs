//! Connection options, built from a URL or field by field.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::{Properties, ProtocolVersion, QoS};

use crate::error::ConnectError;

/// The transport a connection runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Plain TCP (`mqtt://`, `tcp://`).
    Tcp,
    /// TLS over TCP (`mqtts://`, `ssl://`, `tls://`).
    Tls,
    /// WebSocket (`ws://`), subprotocol `mqtt`, binary frames.
    Ws,
    /// WebSocket over TLS (`wss://`).
    Wss,
    /// QUIC (`quic://`): TLS 1.3 with ALPN `mqtt`, one bidirectional stream
    /// per MQTT connection.
    Quic,
}

impl TransportKind {
    /// True for the transports that run TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss | Self::Quic)
    }

    /// The port used when a URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Tcp => 1883,
            Self::Tls => 8883,
            Self::Ws => 80,
            Self::Wss => 443,
            Self::Quic => 14567,
        }
    }
}

/// TLS settings for `mqtts://`, `wss://` and `quic://`.
///
/// Without a CA file the server is verified against the Mozilla root store
/// bundled through `webpki-roots`.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsConfig {
    /// PEM file of CA certificates to trust instead of the bundled roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM file with the client's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate and name. For tests only: it removes the
    /// protection TLS exists for.
    pub insecure: bool,
    /// The name to verify the certificate against, if not the host connected to.
    pub server_name: Option<String>,
}

/// The will: a message the server publishes if the connection ends without DISCONNECT.
#[derive(Debug, Clone)]
pub struct LastWill {
    /// Topic to publish to.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// MQTT 5 will properties (will delay interval, message expiry, content type, ...).
    pub properties: Properties,
}

impl LastWill {
    /// A will with QoS 0, not retained, without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        LastWill {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }
    }
}

/// Automatic reconnection with jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct ReconnectOptions {
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// The delay doubles after each failure up to this bound.
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

/// Everything [`crate::Client::connect`] needs.
///
/// Build one with [`ConnectOptions::new`] or [`ConnectOptions::from_url`], then
/// set the public fields.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The transport.
    pub transport: TransportKind,
    /// Host name or IP address of the server.
    pub host: String,
    /// TCP port (UDP for QUIC).
    pub port: u16,
    /// Path of the WebSocket endpoint (`/mqtt` by default).
    pub ws_path: String,
    /// Client identifier. Empty asks the server to assign one (MQTT 3.1.1 then
    /// requires `clean_start`; MQTT 5 returns it in the CONNACK).
    pub client_id: String,
    /// Protocol version; 5.0 by default.
    pub version: ProtocolVersion,
    /// Clean Session (3.x) or Clean Start (5.0); `true` by default.
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval in seconds (0 or unset: the session ends
    /// with the connection).
    pub session_expiry: Option<u32>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// The will.
    pub will: Option<LastWill>,
    /// Keep alive; zero disables it. 60 s by default.
    pub keep_alive: Duration,
    /// Time allowed for the transport, its handshakes and the CONNACK; 30 s by default.
    pub connect_timeout: Duration,
    /// TLS settings, used by `mqtts://`, `wss://` and `quic://`.
    pub tls: ClientTlsConfig,
    /// MQTT 5 Receive Maximum: how many QoS 1/2 messages the server may have in
    /// flight towards us.
    pub receive_maximum: Option<u16>,
    /// MQTT 5 Maximum Packet Size we accept. Also enforced by our decoder.
    pub maximum_packet_size: Option<u32>,
    /// MQTT 5 Topic Alias Maximum: how many inbound topic aliases we accept.
    pub topic_alias_maximum: Option<u16>,
    /// MQTT 5 user properties of CONNECT.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 Request Response Information: ask the server for Response
    /// Information in the CONNACK (see [`crate::ConnAckInfo::response_information`]).
    pub request_response_information: bool,
    /// MQTT 5 Request Problem Information; `Some(false)` asks the server to
    /// send no Reason String or User Property except on PUBLISH, CONNACK and
    /// DISCONNECT.
    pub request_problem_information: Option<bool>,
    /// MQTT 5 enhanced authentication: its method and data go in the
    /// CONNECT, and the AUTH exchange runs before the CONNACK (see
    /// [`crate::Scram`]).
    pub authentication: Option<std::sync::Arc<dyn crate::EnhancedAuth>>,
    /// Capacity of the incoming message channel (see [`crate::Client::recv`]); 64 by default.
    pub message_capacity: usize,
    /// Capacity of the channel of requests (publish, subscribe, ...) waiting for
    /// the connection task; 64 by default.
    pub request_capacity: usize,
    /// Acknowledge QoS 1/2 messages only when the application calls
    /// [`crate::Client::ack`] (by default they are acknowledged when handed
    /// to [`crate::Client::recv`]). For applications that must make a
    /// message safe before the server forgets it, such as a bridge; an
    /// unacknowledged message is sent again after a reconnection.
    pub manual_acks: bool,
    /// Automatic reconnection; off by default.
    pub reconnect: Option<ReconnectOptions>,
}

impl ConnectOptions {
    /// Options for a plain TCP connection to `host:port`, everything else at its default.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ConnectOptions {
            transport: TransportKind::Tcp,
            host: host.into(),
            port,
            ws_path: "/mqtt".to_owned(),
            client_id: String::new(),
            version: ProtocolVersion::V5,
            clean_start: true,
            session_expiry: None,
            username: None,
            password: None,
            will: None,
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            tls: ClientTlsConfig::default(),
            receive_maximum: None,
            maximum_packet_size: None,
            topic_alias_maximum: None,
            user_properties: Vec::new(),
            request_response_information: false,
            request_problem_information: None,
            authentication: None,
            message_capacity: 64,
            request_capacity: 64,
            manual_acks: false,
            reconnect: None,
        }
    }

    /// Options from a URL: `mqtt://`, `tcp://`, `mqtts://` (also `ssl://`,
    /// `tls://`), `ws://host:port/path`, `wss://` or `quic://` (UDP port 14567
    /// unless given).
    ///
    /// User name and password may be given in the URL (`mqtt://user:pass@host`),
    /// and so may the query parameters `client_id`, `version` (`3.1`, `3.1.1`,
    /// `5`), `keep_alive` (seconds) and `clean_start` (`true`/`false`).
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        let bad = |why: &str| ConnectError::InvalidUrl(format!("{url}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let transport = match parsed.scheme() {
            "mqtt" | "tcp" => TransportKind::Tcp,
            "mqtts" | "ssl" | "tls" => TransportKind::Tls,
            "ws" => TransportKind::Ws,
            "wss" => TransportKind::Wss,
            "quic" => TransportKind::Quic,
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port().unwrap_or(transport.default_port());
        let mut opts = ConnectOptions::new(host, port);
        opts.transport = transport;
        if matches!(transport, TransportKind::Ws | TransportKind::Wss) && parsed.path() != "/" {
            opts.ws_path = parsed.path().to_owned();
        }
        if !parsed.username().is_empty() {
            opts.username = Some(percent_decode(parsed.username()));
        }
        if let Some(pw) = parsed.password() {
            opts.password = Some(Bytes::from(percent_decode(pw)));
        }
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "client_id" | "clientid" => opts.client_id = value.into_owned(),
                "version" => {
                    opts.version = parse_version(&value).ok_or_else(|| bad("bad version"))?
                }
                "keep_alive" | "keepalive" => {
                    let secs: u16 = value.parse().map_err(|_| bad("bad keep_alive"))?;
                    opts.keep_alive = Duration::from_secs(secs.into());
                }
                "clean_start" | "clean" => {
                    opts.clean_start = value.parse().map_err(|_| bad("bad clean_start"))?
                }
                _ => return Err(bad(&format!("unknown parameter {key:?}"))),
            }
        }
        Ok(opts)
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses a protocol version as users write it: `3.1`, `31`, `mqttv31`, `3.1.1`,
/// `311`, `mqttv311`, `5`, `5.0`, `mqttv5`.
pub fn parse_version(s: &str) -> Option<ProtocolVersion> {
    match s.trim().to_ascii_lowercase().trim_start_matches("mqttv") {
        "3.1" | "31" | "3" => Some(ProtocolVersion::V3_1),
        "3.1.1" | "311" | "4" => Some(ProtocolVersion::V3_1_1),
        "5" | "5.0" | "50" => Some(ProtocolVersion::V5),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = ConnectOptions::from_url("mqtt://localhost").unwrap();
        assert_eq!(
            (o.transport, o.port, o.host.as_str()),
            (TransportKind::Tcp, 1883, "localhost")
        );
        let o = ConnectOptions::from_url("tcp://1.2.3.4:1999").unwrap();
        assert_eq!((o.transport, o.port), (TransportKind::Tcp, 1999));
        let o = ConnectOptions::from_url("mqtts://h").unwrap();
        assert_eq!((o.transport, o.port), (TransportKind::Tls, 8883));
        let o = ConnectOptions::from_url("ws://h:8080/mqtt").unwrap();
        assert_eq!(
            (o.transport, o.port, o.ws_path.as_str()),
            (TransportKind::Ws, 8080, "/mqtt")
        );
        let o = ConnectOptions::from_url("wss://h/other").unwrap();
        assert_eq!(
            (o.transport, o.port, o.ws_path.as_str()),
            (TransportKind::Wss, 443, "/other")
        );
        let o = ConnectOptions::from_url("ws://h:9001").unwrap();
        assert_eq!(o.ws_path, "/mqtt");
        let o = ConnectOptions::from_url("mqtt://u%40x:p%3Aw@[::1]:1884?client_id=abc&version=3.1.1&keep_alive=5&clean_start=false").unwrap();
        assert_eq!(o.host, "::1");
        assert_eq!(o.address(), "[::1]:1884");
        assert_eq!(o.username.as_deref(), Some("u@x"));
        assert_eq!(o.password.as_deref(), Some(&b"p:w"[..]));
        assert_eq!(o.client_id, "abc");
        assert_eq!(o.version, ProtocolVersion::V3_1_1);
        assert_eq!(o.keep_alive, Duration::from_secs(5));
        assert!(!o.clean_start);
        assert!(ConnectOptions::from_url("http://h").is_err());
        assert!(ConnectOptions::from_url("mqtt://h?bogus=1").is_err());
        let o = ConnectOptions::from_url("quic://h").unwrap();
        assert_eq!((o.transport, o.port), (TransportKind::Quic, 14567));
        let o = ConnectOptions::from_url("quic://127.0.0.1:4433?version=3.1.1").unwrap();
        assert_eq!(
            (o.transport, o.port, o.host.as_str(), o.version),
            (
                TransportKind::Quic,
                4433,
                "127.0.0.1",
                ProtocolVersion::V3_1_1
            )
        );
        assert!(o.transport.is_tls());
    }

    #[test]
    fn versions() {
        for (s, v) in [
            ("31", ProtocolVersion::V3_1),
            ("mqttv31", ProtocolVersion::V3_1),
            ("3.1", ProtocolVersion::V3_1),
            ("311", ProtocolVersion::V3_1_1),
            ("mqttv311", ProtocolVersion::V3_1_1),
            ("5", ProtocolVersion::V5),
            ("mqttv5", ProtocolVersion::V5),
        ] {
            assert_eq!(parse_version(s), Some(v), "{s}");
        }
        assert_eq!(parse_version("6"), None);
    }
}
