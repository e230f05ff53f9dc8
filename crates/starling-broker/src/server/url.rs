//! Listener URLs: `mqtt://`, `mqtts://`, `ws://`, `wss://` and `quic://`, parsed
//! into a transport, an address and a WebSocket path.

use super::StartError;

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://`, `tcp://`: plain TCP.
    Tcp,
    /// `mqtts://`, `ssl://`, `tls://`: TLS over TCP.
    Tls,
    /// `ws://`: WebSocket.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
    /// `quic://`: QUIC.
    Quic,
}

impl Transport {
    /// Whether the transport runs TLS (and so needs a certificate and key).
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::Quic)
    }

    /// Its name as metrics and the admin API label it.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Quic => "quic",
        }
    }

    /// The port used when a URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 8080,
            Transport::Wss => 8443,
            Transport::Quic => 14567,
        }
    }
}

/// A parsed listener URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUrl {
    /// The scheme (`mqtt`, `tcp`, `mqtts`, `ws`, ...).
    pub scheme: String,
    /// `host:port`.
    pub addr: String,
    /// The transport the scheme names.
    pub transport: Transport,
    /// The URL's path, when it has one other than `/` (WebSocket endpoints).
    pub path: Option<String>,
    /// `?proxy-protocol=true`: connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl ListenerUrl {
    /// Parses `mqtt://HOST:PORT` (or `tcp://`), `mqtts://HOST:PORT` (or `ssl://`,
    /// `tls://`), `ws://HOST:PORT/PATH`, `wss://HOST:PORT/PATH` or `quic://HOST:PORT`.
    /// The one query parameter is `proxy-protocol=true|false` (TCP-based listeners).
    pub fn parse(url: &str) -> Result<ListenerUrl, StartError> {
        let bad = |message: &str| StartError::BadUrl {
            url: url.to_string(),
            message: message.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = parsed.scheme().to_string();
        let transport =
            match scheme.as_str() {
                "mqtt" | "tcp" => Transport::Tcp,
                "mqtts" | "ssl" | "tls" => Transport::Tls,
                "ws" => Transport::Ws,
                "wss" => Transport::Wss,
                "quic" => Transport::Quic,
                _ => return Err(bad(
                    "unknown scheme (expected mqtt://, tcp://, mqtts://, ws://, wss:// or quic://)",
                )),
            };
        let host = parsed.host_str().ok_or_else(|| bad("missing host"))?;
        let port = parsed.port().unwrap_or(transport.default_port());
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let path = match parsed.path() {
            "" | "/" => None,
            p => Some(p.to_string()),
        };
        if path.is_some() && !matches!(transport, Transport::Ws | Transport::Wss) {
            return Err(bad("only ws:// and wss:// listeners have a path"));
        }
        let mut proxy_protocol = false;
        for (key, value) in parsed.query_pairs() {
            match (&*key, &*value) {
                ("proxy-protocol", "true" | "1" | "") => proxy_protocol = true,
                ("proxy-protocol", "false" | "0") => proxy_protocol = false,
                ("proxy-protocol", _) => return Err(bad("proxy-protocol is true or false")),
                _ => return Err(bad(&format!("unknown URL parameter {key:?}"))),
            }
        }
        if proxy_protocol && transport == Transport::Quic {
            return Err(bad("the PROXY protocol needs a TCP-based listener"));
        }
        Ok(ListenerUrl {
            scheme,
            addr: format!("{host}:{port}"),
            transport,
            path,
            proxy_protocol,
        })
    }
}
