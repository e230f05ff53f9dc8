//! What the HTTP listener's tests share: a broker with its HTTP listener on
//! loopback port 0 ([`start`]), and a raw MQTT client ([`Raw`]). Each test
//! binary uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use starling_admin::{AdminConfig, AdminServer};
use starling_broker::{Broker, Config};
use starling_codec::{
    Connect, Decoder, Packet, ProtocolVersion as V, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the broker to answer.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running broker and its HTTP listener; shut down when dropped.
pub struct Setup {
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub shutdown: starling_broker::ShutdownHandle,
    broker: Option<tokio::task::JoinHandle<()>>,
    pub dir: PathBuf,
}

impl Setup {
    /// `http://ADDR/path` on the HTTP listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Shuts the broker down, waits (bounded) until it has, and removes its
    /// directory.
    pub async fn stop(mut self) {
        self.shutdown.shutdown();
        if let Some(broker) = self.broker.take() {
            let _ = tokio::time::timeout(WAIT, broker).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

/// A broker on `mqtt://127.0.0.1:0` with its data in a fresh directory named
/// after `name`, and its HTTP listener on `http://127.0.0.1:0` (with
/// `token_file`, if given).
pub async fn start(token_file: Option<PathBuf>, name: &str) -> Setup {
    start_with(token_file, name, Config::default()).await
}

/// As [`start`], with `config`'s settings (its listeners and data directory
/// are the test's).
pub async fn start_with(token_file: Option<PathBuf>, name: &str, config: Config) -> Setup {
    let dir = std::env::temp_dir().join(format!("starling-admin-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        data_dir: dir.join("data"),
        ..config
    };
    let broker = Broker::bind(config).await.expect("broker binds");
    let mqtt = broker.local_addrs()[0];
    let admin = AdminServer::bind(
        &AdminConfig {
            listen: "http://127.0.0.1:0".into(),
            token_file,
            ..AdminConfig::default()
        },
        broker.state(),
        broker.reload_handle(),
        broker.shutdown_handle(),
    )
    .await
    .expect("HTTP listener binds");
    let http = admin.local_addr();
    let shutdown = broker.shutdown_handle();
    tokio::spawn(admin.run());
    let broker = Some(tokio::spawn(broker.run()));
    Setup {
        mqtt,
        http,
        shutdown,
        broker,
        dir,
    }
}

/// A raw MQTT client.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    version: V,
}

impl Raw {
    /// Connects as `id` (keep alive 60 s; MQTT 5 with `expiry` > 0 asks for a
    /// Session Expiry Interval) and expects CONNACK 0x00.
    pub async fn connect(addr: SocketAddr, id: &str, version: V, clean: bool, expiry: u32) -> Raw {
        let (raw, code) = Raw::try_connect(addr, id, version, clean, expiry).await;
        assert_eq!(code.0, 0, "CONNACK of {id}");
        raw
    }

    /// As [`Raw::connect`], returning the CONNACK's reason code, whatever it is.
    pub async fn try_connect(
        addr: SocketAddr,
        id: &str,
        version: V,
        clean: bool,
        expiry: u32,
    ) -> (Raw, ReasonCode) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(version),
            version,
        };
        let mut c = Connect::new(version, id);
        c.clean_start = clean;
        c.keep_alive = 60;
        if version.is_v5() && expiry > 0 {
            c.properties.session_expiry_interval = Some(expiry);
        }
        raw.send(Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => (raw, a.reason_code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(self.version, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` when the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                    return Some(p);
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("the broker answers in time")
    }

    /// Publishes a retained QoS 1 message and waits for its PUBACK: the
    /// broker holds it when this returns.
    pub async fn retain(&mut self, topic: &str, payload: &[u8], packet_id: u16) {
        let mut p = starling_codec::Publish::new(topic, payload.to_vec());
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p.packet_id = packet_id;
        self.send(Packet::Publish(p)).await;
        assert!(matches!(self.recv().await, Some(Packet::PubAck(a)) if a.packet_id == packet_id));
    }

    /// Subscribes to `filter` at QoS 1 and expects the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
        }))
        .await;
        assert!(matches!(self.recv().await, Some(Packet::SubAck(_))));
    }
}
