//! Test harness: an in-process broker on port 0 and a raw-bytes MQTT peer built
//! on the codec, so tests can check exact packets and send malformed ones.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_broker::{Broker, BrokerState, Config, LocalConnector, ShutdownHandle};
use starling_codec::{
    ConnAck, Connect, Decoder, Packet, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen. Under paused time the
/// broker's own timers (all shorter) fire first.
pub const WAIT: Duration = Duration::from_secs(60);

/// A connection to the broker: TCP, or in memory for tests that pause time
/// (a paused clock jumps ahead while loopback TCP data is still in the kernel).
pub enum Addr {
    Tcp(SocketAddr),
    Local(LocalConnector),
}

pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

pub struct TestBroker {
    pub tcp: SocketAddr,
    /// Where tests connect: TCP by default, in memory under a paused clock.
    pub addr: &'static Addr,
    pub handle: ShutdownHandle,
    pub state: Arc<BrokerState>,
    pub join: JoinHandle<()>,
}

impl TestBroker {
    pub async fn start(mut config: Config) -> TestBroker {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        config.listen = vec!["mqtt://127.0.0.1:0".to_string()];
        config.sys_interval = 0;
        // Memory only unless a test asks for the store (and gives it a data dir).
        if config.data_dir == Config::default().data_dir {
            config.durability = starling_broker::store::Durability::None;
        }
        let broker = Broker::bind(config).await.expect("broker binds");
        Self::run(broker)
    }

    pub fn run(broker: Broker) -> TestBroker {
        let tcp = broker.local_addrs()[0];
        let addr: &'static Addr = if paused() {
            Box::leak(Box::new(Addr::Local(broker.local_connector())))
        } else {
            Box::leak(Box::new(Addr::Tcp(tcp)))
        };
        let handle = broker.shutdown_handle();
        let state = broker.state();
        let join = tokio::spawn(broker.run());
        TestBroker {
            tcp,
            addr,
            handle,
            state,
            join,
        }
    }

    pub async fn default() -> TestBroker {
        Self::start(Config::default()).await
    }

    pub async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("broker stops")
            .expect("no panic");
        if let Some(store) = self.state.store() {
            store.close().await;
        }
    }
}

fn paused() -> bool {
    let before = tokio::time::Instant::now();
    std::thread::sleep(Duration::from_millis(2));
    tokio::time::Instant::now() == before
}

/// A peer that speaks raw MQTT through the codec.
pub struct Raw {
    pub stream: Box<dyn Stream>,
    pub buf: BytesMut,
    pub decoder: Decoder,
    pub version: ProtocolVersion,
}

impl Raw {
    pub async fn open(addr: &Addr, version: ProtocolVersion) -> Raw {
        let stream: Box<dyn Stream> = match addr {
            Addr::Tcp(a) => Box::new(TcpStream::connect(a).await.expect("connect")),
            Addr::Local(c) => Box::new(c.connect()),
        };
        Raw {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(version),
            version,
        }
    }

    /// Opens a socket, sends CONNECT and returns the CONNACK.
    pub async fn connect(addr: &Addr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, connect.protocol).await;
        raw.send(Packet::Connect(Box::new(connect))).await;
        match raw.recv().await {
            Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with a client id and clean start, and asserts success.
    pub async fn client(addr: &Addr, version: ProtocolVersion, id: &str) -> Raw {
        let (raw, ack) = Raw::connect(addr, Connect::new(version, id)).await;
        assert_eq!(ack.reason_code.0, 0, "{ack:?}");
        raw
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encodes");
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` when the broker closed the connection.
    pub async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(p)) => return Some(p),
                    Ok(None) => {}
                    Err(e) => panic!("broker sent a bad packet: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("timed out waiting for the broker")
    }

    pub async fn recv(&mut self) -> Packet {
        self.next().await.expect("connection closed unexpectedly")
    }

    /// Reads until the broker closes; returns what arrived first.
    pub async fn closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        while let Some(p) = self.next().await {
            got.push(p);
        }
        got
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )
        .await;
    }

    pub async fn subscribe_with(&mut self, filter: &str, options: SubscriptionOptions) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: filter.into(),
                options,
            }],
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(ack) => assert!(!ack.reason_codes[0].is_error(), "{ack:?}"),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and waits for the QoS flow to finish.
    pub async fn publish(&mut self, topic: &str, payload: &'static [u8], qos: QoS, packet_id: u16) {
        let mut p = Publish::new(topic, payload);
        p.qos = qos;
        p.packet_id = if qos == QoS::AtMostOnce { 0 } else { packet_id };
        self.send(Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert!(matches!(self.recv().await, Packet::PubAck(_))),
            QoS::ExactlyOnce => {
                assert!(matches!(self.recv().await, Packet::PubRec(_)));
                self.send(Packet::PubRel(starling_codec::Ack::new(packet_id)))
                    .await;
                assert!(matches!(self.recv().await, Packet::PubComp(_)));
            }
        }
    }

    /// The next PUBLISH, acknowledging nothing.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Sends PINGREQ and waits for PINGRESP: everything the broker queued before
    /// the ping has arrived by then.
    pub async fn sync(&mut self) -> Vec<Packet> {
        self.send(Packet::PingReq).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                Packet::PingResp => return before,
                other => before.push(other),
            }
        }
    }
}
