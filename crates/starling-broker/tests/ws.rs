//! `ws://` and `wss://` listeners: raw WebSocket peers that split and merge
//! packets across frames, subprotocol negotiation, 404 on other paths, text
//! frames refused, our client over ws and wss at 3.1.1 and 5.0, and paho-mqtt
//! with `transport="websockets"`.

mod common;
mod transport_support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use starling_broker::config::ListenerConfig;
use starling_broker::Config;
use starling_client::{Client, ConnectOptions};
use starling_codec::{
    Ack, Connect, Decoder, Packet, ProtocolVersion as V, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use transport_support::{Pki, Running};

use common::WAIT;

fn ws_config() -> Config {
    Config {
        listen: vec!["ws://127.0.0.1:0".into()],
        ..Config::default()
    }
}

/// A raw MQTT peer over a WebSocket: it chooses how bytes map to frames.
struct WsPeer {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
    version: V,
    protocol: Option<String>,
}

impl WsPeer {
    async fn open(port: u16, path: &str, offer: &str, version: V) -> WsPeer {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut req = format!("ws://127.0.0.1:{port}{path}")
            .into_client_request()
            .unwrap();
        if !offer.is_empty() {
            let offer = HeaderValue::from_str(offer).unwrap();
            req.headers_mut().insert("Sec-WebSocket-Protocol", offer);
        }
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        WsPeer {
            ws,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(version),
            version,
            protocol,
        }
    }

    fn encode(&self, packets: &[Packet]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for p in packets {
            p.encode(self.version, &mut out).unwrap();
        }
        out.to_vec()
    }

    /// Sends `bytes` cut into frames at `cuts`.
    async fn send_frames(&mut self, bytes: &[u8], cuts: &[usize]) {
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let frame = Bytes::copy_from_slice(&bytes[start..end]);
            self.ws.send(Message::Binary(frame)).await.unwrap();
            start = end;
        }
    }

    async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                    return Some(p);
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .expect("timed out")
    }

    async fn recv(&mut self) -> Packet {
        self.next().await.expect("connection closed")
    }
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    })
}

#[tokio::test]
async fn packets_span_frames_and_frames_carry_packets() {
    let b = Running::start(ws_config()).await;
    for v in [V::V3_1_1, V::V5] {
        let mut sub = WsPeer::open(b.port(0), "/mqtt", "mqtt", v).await;
        assert_eq!(sub.protocol.as_deref(), Some("mqtt"));
        // CONNECT split over three frames, one of them a single byte.
        let connect = sub.encode(&[Packet::Connect(Box::new(Connect::new(v, "ws-sub")))]);
        sub.send_frames(&connect, &[1, 5]).await;
        assert!(matches!(sub.recv().await, Packet::ConnAck(a) if a.reason_code.0 == 0));
        // SUBSCRIBE and PINGREQ in one frame.
        let both = sub.encode(&[subscribe("ws/t"), Packet::PingReq]);
        sub.send_frames(&both, &[]).await;
        assert!(matches!(sub.recv().await, Packet::SubAck(_)));
        assert!(matches!(sub.recv().await, Packet::PingResp));

        // The publisher sends CONNECT and a QoS 1 PUBLISH in one frame, the
        // PUBLISH's tail in a second.
        let mut publ = WsPeer::open(b.port(0), "/mqtt", "mqttv3.1, mqtt", v).await;
        assert_eq!(publ.protocol.as_deref(), Some("mqttv3.1"));
        let mut p = Publish::new("ws/t", &b"framed"[..]);
        p.qos = QoS::AtLeastOnce;
        p.packet_id = 9;
        let bytes = publ.encode(&[
            Packet::Connect(Box::new(Connect::new(v, "ws-pub"))),
            Packet::Publish(p),
        ]);
        publ.send_frames(&bytes, &[bytes.len() - 3]).await;
        assert!(matches!(publ.recv().await, Packet::ConnAck(_)));
        assert!(matches!(publ.recv().await, Packet::PubAck(a) if a.packet_id == 9));
        match sub.recv().await {
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], b"framed");
                assert_eq!(p.qos, QoS::AtLeastOnce);
                let ack = sub.encode(&[Packet::PubAck(Ack::new(p.packet_id))]);
                sub.send_frames(&ack, &[]).await;
            }
            other => panic!("{other:?}"),
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn other_paths_get_404_and_a_clean_close() {
    let b = Running::start(Config {
        listen: vec![],
        listener: vec![ListenerConfig {
            url: "ws://127.0.0.1:0".into(),
            path: Some("/custom".into()),
            ..ListenerConfig::default()
        }],
        ..Config::default()
    })
    .await;
    for request in [
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut tcp = TcpStream::connect(b.addrs[0]).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
            .await
            .expect("closed")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    }
    // The configured path works, also for a client that offers no subprotocol.
    let mut peer = WsPeer::open(b.port(0), "/custom", "", V::V5).await;
    assert_eq!(peer.protocol, None);
    let connect = peer.encode(&[Packet::Connect(Box::new(Connect::new(V::V5, "c")))]);
    peer.send_frames(&connect, &[]).await;
    assert!(matches!(peer.recv().await, Packet::ConnAck(_)));
    b.stop().await;
}

#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let b = Running::start(ws_config()).await;
    let mut peer = WsPeer::open(b.port(0), "/mqtt", "mqtt", V::V3_1_1).await;
    let connect = peer.encode(&[Packet::Connect(Box::new(Connect::new(V::V3_1_1, "t")))]);
    peer.send_frames(&connect, &[]).await;
    assert!(matches!(peer.recv().await, Packet::ConnAck(_)));
    peer.ws.send(Message::Text("hello".into())).await.unwrap();
    assert!(peer.next().await.is_none());
    b.stop().await;
}

async fn client_round_trip(url: &str, ca: Option<std::path::PathBuf>) {
    for version in [V::V3_1_1, V::V5] {
        let opts = |id: &str| {
            let mut o = ConnectOptions::from_url(url).unwrap();
            o.client_id = format!("{id}-{version}");
            o.version = version;
            o.tls.ca_file = ca.clone();
            o
        };
        let (sub, _) = Client::connect(opts("sub")).await.unwrap();
        sub.subscribe("ws/client", QoS::AtLeastOnce).await.unwrap();
        let (publ, _) = Client::connect(opts("pub")).await.unwrap();
        for i in 0..20 {
            publ.publish("ws/client", format!("m{i}"), QoS::AtLeastOnce, false)
                .await
                .unwrap();
        }
        for i in 0..20 {
            let m = tokio::time::timeout(WAIT, sub.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
            assert_eq!(m.qos, QoS::AtLeastOnce);
        }
        publ.disconnect().await.unwrap();
        sub.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn our_client_over_ws_and_wss() {
    let pki = Pki::new("wss");
    let b = Running::start(Config {
        listen: vec!["ws://127.0.0.1:0/mqtt".into(), "wss://127.0.0.1:0".into()],
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        ..Config::default()
    })
    .await;
    client_round_trip(&format!("ws://127.0.0.1:{}/mqtt", b.port(0)), None).await;
    client_round_trip(
        &format!("wss://localhost:{}/mqtt", b.port(1)),
        Some(pki.path("ca.pem")),
    )
    .await;
    b.stop().await;
}

/// paho-mqtt over `transport="websockets"`: it subscribes, publishes at QoS 1 to
/// itself, and prints what it received; then it publishes to our client.
const PAHO_WS: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, version, topic = int(sys.argv[1]), sys.argv[2], sys.argv[3]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-ws-" + version,
                protocol=proto, transport="websockets")
c.ws_set_options(path="/mqtt")
got, subscribed = threading.Event(), threading.Event()
def on_message(client, userdata, msg):
    print("GOT", msg.topic, msg.qos, msg.payload.decode(), flush=True)
    got.set()
c.on_message = on_message
c.on_subscribe = lambda *a: subscribed.set()
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
c.subscribe("paho/self", qos=1)
if not subscribed.wait(20): sys.exit("no SUBACK")
c.publish("paho/self", "loop", qos=1).wait_for_publish(20)
if not got.wait(20): sys.exit("no message")
c.publish(topic, "from paho", qos=1).wait_for_publish(20)
c.disconnect()
c.loop_stop()
print("OK", flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_websockets() {
    let b = Running::start(ws_config()).await;
    for version in ["3.1.1", "5"] {
        let mut o =
            ConnectOptions::from_url(&format!("ws://127.0.0.1:{}/mqtt", b.port(0))).unwrap();
        o.client_id = "watch".into();
        let (watch, _) = Client::connect(o).await.unwrap();
        let topic = format!("paho/to-us/{version}");
        watch.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        let out = tokio::process::Command::new("python3")
            .args(["-c", PAHO_WS, &b.port(0).to_string(), version, &topic])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("paho finishes")
            .expect("python3 runs (paho-mqtt: scripts/install-test-deps.d/interop.sh)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("GOT paho/self 1 loop"), "{stdout}");
        let m = tokio::time::timeout(WAIT, watch.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"from paho");
        watch.disconnect().await.unwrap();
    }
    b.stop().await;
}
