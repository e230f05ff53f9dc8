//! `[[webhook]]`: a receiver written here (axum on 127.0.0.1:0) collects the
//! events of a `mosquitto_pub` run; a receiver that never answers, and one
//! that is not there, cost the broker nothing but dropped, counted events.

#[path = "../../starling-broker/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use common::{Raw, TestBroker};
use parking_lot::Mutex;
use serde_json::Value;
use starling_broker::config::WebhookConfig;
use starling_broker::{Broker, Config};
use starling_codec::{ProtocolVersion as V, QoS};
use tokio::sync::Notify;

#[derive(Default)]
struct Received {
    events: Mutex<Vec<Value>>,
    batches: Mutex<usize>,
    arrived: Notify,
}

async fn collect(State(r): State<Arc<Received>>, Json(batch): Json<Vec<Value>>) {
    r.events.lock().extend(batch);
    *r.batches.lock() += 1;
    r.arrived.notify_waiters();
}

async fn receiver() -> (SocketAddr, Arc<Received>) {
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route("/hook", post(collect))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

async fn broker(hooks: Vec<WebhookConfig>) -> TestBroker {
    let mut config = Config {
        webhook: hooks,
        ..Config::default()
    };
    config.listen = vec!["mqtt://127.0.0.1:0".into()];
    config.sys_interval = 0;
    config.durability = starling_broker::store::Durability::None;
    config.validate("test").expect("valid config");
    let broker = Broker::bind(config).await.unwrap();
    starling_integrate::webhook::start(&broker.state()).unwrap();
    TestBroker::run(broker)
}

/// Waits (at most 30 s) until `done` holds for what was received.
async fn until(r: &Received, done: impl Fn(&[Value]) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let notified = r.arrived.notified();
            if done(&r.events.lock()) {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("the webhook posts within 30 s");
}

async fn mosquitto_pub(port: u16, id: &str, topic: &str) {
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
            .args(["-i", id, "-t", topic, "-m", "hello", "-q", "1"])
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("mosquitto_pub ends within 30 s")
    .expect("mosquitto_pub runs (apt mosquitto-clients)");
    assert!(status.success());
}

#[tokio::test]
async fn a_receiver_gets_the_events_of_a_mosquitto_pub_run() {
    let (addr, received) = receiver().await;
    let b = broker(vec![WebhookConfig {
        url: format!("http://{addr}/hook"),
        events: ["client.connected", "client.disconnected", "message.publish"]
            .map(String::from)
            .to_vec(),
        topics: vec!["sensors/#".into()],
        ..WebhookConfig::default()
    }])
    .await;
    mosquitto_pub(b.tcp.port(), "pub-other", "other/t").await;
    mosquitto_pub(b.tcp.port(), "pub-1", "sensors/t").await;
    let of = |events: &[Value], id: &str, name: &str| {
        events
            .iter()
            .filter(|e| e["event"] == name && (e["clientid"] == id || e["from_clientid"] == id))
            .count()
    };
    until(&received, |e| of(e, "pub-1", "client.disconnected") == 1).await;
    let events = received.events.lock().clone();
    assert_eq!(of(&events, "pub-1", "client.connected"), 1);
    assert_eq!(of(&events, "pub-1", "message.publish"), 1);
    assert_eq!(of(&events, "pub-other", "client.connected"), 1);
    // Not a topic the webhook asked for.
    assert_eq!(of(&events, "pub-other", "message.publish"), 0);
    let publish = events
        .iter()
        .find(|e| e["event"] == "message.publish")
        .unwrap();
    assert_eq!(publish["topic"], "sensors/t");
    assert_eq!(publish["payload"], "hello");
    assert_eq!(publish["qos"], 1);
    assert!(publish["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    // Nothing it did not ask for.
    assert!(events.iter().all(|e| e["event"] != "session.created"));
    b.stop().await;
}

/// Accepts connections and never answers.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[tokio::test]
async fn a_dead_receiver_costs_only_dropped_counted_events() {
    let hole = black_hole().await;
    // A port with nobody listening: bound, then closed.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let hook = |url: String| WebhookConfig {
        url,
        events: vec!["message.publish".into()],
        queue_max: 100,
        batch_max: 10,
        retries: 0,
        ..WebhookConfig::default()
    };
    let b = broker(vec![
        hook(format!("http://{hole}/hook")),
        hook(format!("http://{closed}/hook")),
    ])
    .await;
    let mut publisher = Raw::client(b.addr, V::V5, "p").await;
    const N: u16 = 3000;
    for i in 1..=N {
        publisher.publish("t", b"x", QoS::AtLeastOnce, i).await;
    }
    // Every publish was acknowledged: the webhooks held nobody up. What did
    // not fit their queues was dropped and counted; the refused batches too.
    let m = &b.state.metrics;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let dropped = m.webhook_dropped.get(0) + m.webhook_dropped.get(1);
            // The hanging hook holds at most its queue and one batch.
            if dropped >= 2 * u64::from(N) - 110 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the drops are counted");
    assert!(m.webhook_dropped.get(0) >= u64::from(N) - 110);
    assert!(m.webhook_dropped.get(1) > 0, "refused batches are counted");
    assert_eq!(m.webhook_sent.load(std::sync::atomic::Ordering::Relaxed), 0);
    b.stop().await;
}
