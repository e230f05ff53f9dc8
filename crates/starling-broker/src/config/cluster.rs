//! `[cluster]`: joining other Starling nodes over a NATS JetStream cluster.
//! The broker only carries these settings; the cluster itself lives in the
//! `starling-cluster` crate.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[cluster]` (or `--cluster` and `--node-id`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// The NATS servers to connect to (`nats://HOST:PORT` or `tls://...`);
    /// any one of them is enough, the rest are tried in turn.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`).
    pub node_id: String,
    /// NATS user name (with `password`).
    pub user: Option<String>,
    /// NATS password.
    pub password: Option<String>,
    /// NATS token.
    pub token: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates the NATS servers are verified against.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for NATS servers that ask for one, with
    /// `tls-key`.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Copies JetStream keeps of the cluster's state (1 to 5; at most the
    /// number of NATS servers).
    pub replicas: usize,
    /// How long one request to NATS may take (a claim, a takeover), in
    /// milliseconds.
    pub timeout_ms: u64,
    /// Messages from other nodes buffered per NATS subscription while this
    /// node routes the earlier ones; past it NATS drops them (a slow
    /// consumer) and the node repairs the gap for QoS 1/2 from the
    /// transit stream.
    pub subscription_capacity: usize,
    /// Where this node sends its MQTT 5 clients when it stops (a rolling
    /// restart) or is cut off from the cluster: the Server Reference of
    /// its DISCONNECT 0x9C Use another server, such as the load balancer's
    /// `host:port`. Without it a stopping node sends 0x8B Server shutting
    /// down, and a cut-off one 0x9C alone.
    pub server_reference: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: Vec::new(),
            node_id: String::new(),
            user: None,
            password: None,
            token: None,
            credentials_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            replicas: 3,
            timeout_ms: 2000,
            subscription_capacity: 65_536,
            server_reference: None,
        }
    }
}

/// Checks a `[cluster]` table: `Err((key, message))` for the first problem.
pub fn validate(c: &ClusterConfig) -> Result<(), (&'static str, String)> {
    if c.nats.is_empty() {
        return Err(("cluster.nats", "at least one NATS server is needed".into()));
    }
    for url in &c.nats {
        let ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|p| url.starts_with(p) && url.len() > p.len());
        if !ok {
            return Err((
                "cluster.nats",
                format!("{url:?} is not a nats://, tls://, ws:// or wss:// address"),
            ));
        }
    }
    let id_ok = !c.node_id.is_empty()
        && c.node_id.len() <= 64
        && c.node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        return Err((
            "cluster.node-id",
            "needs 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    if !(1..=5).contains(&c.replicas) {
        return Err(("cluster.replicas", "must be 1 to 5".into()));
    }
    if c.timeout_ms == 0 {
        return Err(("cluster.timeout-ms", "must be at least 1".into()));
    }
    // JetStream reads (a replay, a session rebuilt) go through the same
    // buffers, in batches of up to 500 messages.
    if !(1024..=1 << 24).contains(&c.subscription_capacity) {
        return Err((
            "cluster.subscription-capacity",
            "must be 1,024 to 16,777,216".into(),
        ));
    }
    if c.tls_cert.is_some() != c.tls_key.is_some() {
        return Err((
            "cluster.tls-cert",
            "tls-cert and tls-key go together".into(),
        ));
    }
    if c.user.is_some() != c.password.is_some() {
        return Err(("cluster.user", "user and password go together".into()));
    }
    if let Some(r) = &c.server_reference {
        // A UTF-8 string property, without NUL or other control
        // characters ([MQTT-1.5.4-2]); a host and port need far less than
        // the 65,535 bytes it may hold, and every DISCONNECT carries it.
        let ok = !r.is_empty()
            && r.len() <= 1024
            && !r.chars().any(|ch| ch.is_control() || ch.is_whitespace());
        if !ok {
            return Err((
                "cluster.server-reference",
                "needs 1 to 1,024 characters, without spaces or control characters (such as \"lb.example.com:1883\")".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ClusterConfig {
        ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            node_id: "n1".into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn a_table_needs_servers_and_a_node_id() {
        assert!(validate(&good()).is_ok());
        let mut c = good();
        c.nats.clear();
        assert_eq!(validate(&c).unwrap_err().0, "cluster.nats");
        let mut c = good();
        c.nats = vec!["127.0.0.1:4222".into()];
        assert_eq!(validate(&c).unwrap_err().0, "cluster.nats");
        for bad in ["", "a.b", "a b", &"x".repeat(65)] {
            let mut c = good();
            c.node_id = bad.into();
            assert_eq!(validate(&c).unwrap_err().0, "cluster.node-id", "{bad:?}");
        }
        let mut c = good();
        c.replicas = 0;
        assert_eq!(validate(&c).unwrap_err().0, "cluster.replicas");
        for bad in ["", "a b", "lb\u{0}:1883"] {
            let mut c = good();
            c.server_reference = Some(bad.into());
            assert_eq!(
                validate(&c).unwrap_err().0,
                "cluster.server-reference",
                "{bad:?}"
            );
        }
        let mut c = good();
        c.server_reference = Some("lb.example.com:1883".into());
        assert!(validate(&c).is_ok());
    }
}
