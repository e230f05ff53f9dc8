//! Bridges reloaded (what SIGHUP does): a changed `[[bridge]]` carries its
//! new topics, at its new `max-rate`; against a real Mosquitto.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use starling_broker::config::{BridgeConfig, BridgeTopic};
use starling_broker::{Broker, Config};
use starling_client::{Client, ConnectOptions, QoS};
use starling_integrate::bridge::Bridges;

const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn mosquitto(port: u16) -> Proc {
    let dir = std::env::temp_dir().join(format!("starling-reload-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let bin = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let p = Proc(
        Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (apt mosquitto)"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..3000 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("mosquitto did not start");
}

fn bridge(remote: u16, filter: &str, max_rate: u64) -> BridgeConfig {
    BridgeConfig {
        name: "cloud".into(),
        url: format!("mqtt://127.0.0.1:{remote}"),
        max_rate,
        topic: vec![BridgeTopic {
            filter: filter.into(),
            ..BridgeTopic::default()
        }],
        ..BridgeConfig::default()
    }
}

/// Publishes `topic` here until the remote subscriber gets it.
async fn until_forwarded(local: &Client, remote: &Client, topic: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            local
                .publish(topic, &b"x"[..], QoS::AtLeastOnce, false)
                .await
                .unwrap();
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(100), remote.recv()).await
            {
                if &*m.topic == topic {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{topic} never reached the remote broker"));
}

#[tokio::test]
async fn a_reloaded_bridge_carries_its_new_topics_at_its_new_rate() {
    let m_port = free_port();
    let _m = mosquitto(m_port).await;
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        sys_interval: 0,
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.unwrap();
    let port = broker.local_addrs()[0].port();
    let bridges = Bridges::start(broker.local_connector(), &[bridge(m_port, "a/#", 0)]).await;
    let handle = broker.shutdown_handle();
    let running = tokio::spawn(broker.run());
    let mut o = ConnectOptions::new("127.0.0.1", m_port);
    o.client_id = "remote".into();
    o.message_capacity = 1000;
    let (remote, _) = Client::connect(o).await.unwrap();
    remote.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let (local, _) = Client::connect(ConnectOptions::new("127.0.0.1", port))
        .await
        .unwrap();
    until_forwarded(&local, &remote, "a/1").await;

    bridges.reload(&[bridge(m_port, "b/#", 20)]);
    until_forwarded(&local, &remote, "b/1").await;
    // "a/#" is no longer carried: "a/2" then "b/2", and "b/2" comes first.
    local
        .publish("a/2", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    local
        .publish("b/2", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let next = loop {
        let m = tokio::time::timeout(WAIT, remote.recv())
            .await
            .unwrap()
            .unwrap();
        if &*m.topic != "b/1" {
            break m;
        }
    };
    assert_eq!(&*next.topic, "b/2");

    // max-rate = 20: 40 messages take about 2 s to go out (a lower bound:
    // the rate can only slow them down).
    let started = tokio::time::Instant::now();
    for i in 0..40 {
        local
            .publish(format!("b/r{i}"), &b"x"[..], QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let mut got = 0;
    while got < 40 {
        let m = tokio::time::timeout(WAIT, remote.recv())
            .await
            .unwrap()
            .unwrap();
        if m.topic.starts_with("b/r") {
            got += 1;
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    bridges.stop().await;
    handle.shutdown();
    let _ = running.await;
}
