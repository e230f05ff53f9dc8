//! The HTTP listener against a real broker on loopback: health, metrics,
//! every API route, access control, and what kicking and ending sessions do
//! to real MQTT connections. Bounded waits only; every server on 127.0.0.1.

use std::time::Duration;

use serde_json::{json, Value};
use starling_codec::{Packet, ProtocolVersion as V, Publish, ReasonCode};

mod support;

use support::{start, Raw, Setup, WAIT};

fn http(s: &Setup, path: &str) -> String {
    format!("http://{}{path}", s.http)
}

async fn get_json(s: &Setup, path: &str) -> (u16, Value) {
    let r = reqwest::get(http(s, path)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn health_and_readiness() {
    let s = start(None, "health").await;
    let (status, body) = get_json(&s, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get_json(&s, "/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    s.shutdown.shutdown();
}

#[tokio::test]
async fn metrics_in_both_formats() {
    let s = start(None, "metrics").await;
    let mut c = Raw::connect(s.mqtt, "m1", V::V5, true, 0).await;
    c.subscribe("m/#").await;
    c.send(Packet::Publish(Publish::new("m/x", "hello"))).await;
    assert!(matches!(c.recv().await, Some(Packet::Publish(_))));
    let text = reqwest::get(http(&s, "/metrics")).await.unwrap();
    assert!(text.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = text.text().await.unwrap();
    for want in [
        "# TYPE starling_connects_total counter",
        "starling_connections{listener=\"mqtt://127.0.0.1:0\",transport=\"tcp\",protocol=\"5.0\"} 1",
        "starling_connections{listener=\"mqtt://127.0.0.1:0\",transport=\"tcp\",protocol=\"3.1.1\"} 0",
        "starling_messages_received_payload_bytes_total{qos=\"0\"} 5",
        "starling_messages_received_total{qos=\"0\"} 1",
        "starling_messages_sent_total{qos=\"0\"} 1",
        "starling_subscriptions 1",
        "# TYPE starling_store_commit_seconds histogram",
        "starling_store_commit_seconds_bucket{le=\"+Inf\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    let om = reqwest::Client::new()
        .get(http(&s, "/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(om.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let om = om.text().await.unwrap();
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE starling_connects counter"));
}

#[tokio::test]
async fn clients_sessions_subscriptions_and_kick() {
    let s = start(None, "clients").await;
    let mut a = Raw::connect(s.mqtt, "alpha", V::V5, true, 0).await;
    a.subscribe("a/+").await;
    let _b = Raw::connect(s.mqtt, "beta", V::V3_1_1, true, 0).await;
    let (status, page) = get_json(&s, "/api/v1/clients").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert_eq!(page["meta"]["count"], 2);
    let (_, one) = get_json(&s, "/api/v1/clients/alpha").await;
    assert_eq!(one["connection"]["protocol"], "5.0");
    assert_eq!(one["connection"]["transport"], "tcp");
    assert_eq!(one["connection"]["keep_alive"], 60);
    assert_eq!(one["subscriptions"], json!([{"filter": "a/+", "qos": 1}]));
    let (_, v3) = get_json(&s, "/api/v1/clients?protocol=4").await;
    assert_eq!(v3["data"][0]["client_id"], "beta");
    let (_, paged) = get_json(&s, "/api/v1/clients?limit=1&page=2").await;
    assert_eq!(
        (
            paged["data"][0]["client_id"].as_str(),
            paged["meta"]["hasnext"].as_bool()
        ),
        (Some("beta"), Some(false))
    );
    let (status, err) = get_json(&s, "/api/v1/clients?limit=0").await;
    assert_eq!((status, err["code"].as_str()), (400, Some("bad_request")));
    let (status, err) = get_json(&s, "/api/v1/clients?page=x").await;
    assert_eq!((status, err["code"].as_str()), (400, Some("bad_request")));
    let (_, subs) = get_json(&s, "/api/v1/subscriptions?filter=a/%2B").await;
    assert_eq!(
        subs["data"],
        json!([{"client_id": "alpha", "filter": "a/+", "qos": 1}])
    );
    // Kick: an MQTT 5 client gets DISCONNECT 0x98.
    let r = reqwest::Client::new()
        .delete(http(&s, "/api/v1/clients/alpha"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    match a.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x98),
        other => panic!("{other:?}"),
    }
    assert!(a.recv().await.is_none(), "closed after the DISCONNECT");
    let r = reqwest::Client::new()
        .delete(http(&s, "/api/v1/clients/alpha"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (status, _) = get_json(&s, "/api/v1/clients/nobody").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn ending_sessions_online_and_offline() {
    let s = start(None, "sessions").await;
    // An offline persistent session with a subscription.
    let mut p = Raw::connect(s.mqtt, "offline", V::V5, true, 3600).await;
    p.subscribe("o/#").await;
    p.send(Packet::Disconnect(Default::default())).await;
    assert!(p.recv().await.is_none());
    let (_, list) = get_json(&s, "/api/v1/sessions?connected=false").await;
    assert_eq!(list["data"][0]["client_id"], "offline");
    assert_eq!(list["data"][0]["persistent"], true);
    let r = reqwest::Client::new()
        .delete(http(&s, "/api/v1/sessions/offline"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (status, _) = get_json(&s, "/api/v1/clients/offline").await;
    assert_eq!(status, 404);
    let (_, subs) = get_json(&s, "/api/v1/subscriptions").await;
    assert_eq!(subs["meta"]["count"], 0);
    // An online one: disconnected, and its session does not come back.
    let mut on = Raw::connect(s.mqtt, "online", V::V5, true, 3600).await;
    let r = reqwest::Client::new()
        .delete(http(&s, "/api/v1/sessions/online"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(matches!(on.recv().await, Some(Packet::Disconnect(d)) if d.reason_code.0 == 0x98));
    let again = Raw::connect(s.mqtt, "online", V::V5, false, 3600).await;
    drop(again);
    let (_, one) = get_json(&s, "/api/v1/clients/online").await;
    assert_eq!(one["subscriptions"], json!([]));
}

#[tokio::test]
async fn retained_and_publish() {
    let s = start(None, "retained").await;
    let client = reqwest::Client::new();
    let r = client
        .post(http(&s, "/api/v1/publish"))
        .json(&json!({"topic": "r/1", "payload": "one", "retain": true, "qos": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, list) = get_json(&s, "/api/v1/retained?filter=r/%23").await;
    assert_eq!(list["data"][0]["topic"], "r/1");
    assert_eq!(list["data"][0]["payload"], "one");
    // A subscriber gets what the API publishes.
    let mut sub = Raw::connect(s.mqtt, "sub", V::V5, true, 0).await;
    sub.subscribe("r/#").await;
    assert!(
        matches!(sub.recv().await, Some(Packet::Publish(p)) if &p.payload[..] == b"one" && p.retain)
    );
    let r = client
        .post(http(&s, "/api/v1/publish"))
        .json(&json!({"topic": "r/2", "payload_base64": "AAE=", "user_properties": [{"name": "k", "value": "v"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["offered"], 1);
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], [0, 1]);
            assert_eq!(p.properties.user_properties, vec![("k".into(), "v".into())]);
        }
        other => panic!("{other:?}"),
    }
    // Deleted through the API: a new subscriber gets nothing.
    let r = client
        .delete(http(&s, "/api/v1/retained/r/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = client
        .delete(http(&s, "/api/v1/retained/r/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let mut late = Raw::connect(s.mqtt, "late", V::V5, true, 0).await;
    late.subscribe("r/#").await;
    late.send(Packet::PingReq).await;
    assert!(
        matches!(late.recv().await, Some(Packet::PingResp)),
        "no retained message left"
    );
    for bad in [
        json!({"topic": "a/#"}),
        json!({"topic": ""}),
        json!({"topic": "t", "qos": 3}),
        json!({"topic": "t", "payload": "x", "payload_base64": "eA=="}),
        json!({"topic": "t", "payload_base64": "!!"}),
    ] {
        let r = client
            .post(http(&s, "/api/v1/publish"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    let r = client
        .post(http(&s, "/api/v1/publish"))
        .json(&json!({"topic": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let r = client
        .post(http(&s, "/api/v1/publish"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn connects_refused_by_max_sessions_are_counted() {
    let config = starling_broker::Config {
        max_sessions: 1,
        ..starling_broker::Config::default()
    };
    let s = support::start_with(None, "session-limit", config).await;
    let _held = Raw::connect(s.mqtt, "held", V::V5, true, 0).await;
    let (_r, code) = Raw::try_connect(s.mqtt, "new", V::V5, true, 0).await;
    assert_eq!(code, ReasonCode::QUOTA_EXCEEDED);
    let text = reqwest::get(http(&s, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("starling_sessions_refused_total 1"), "{text}");
    assert!(text.contains("starling_sessions 1"), "{text}");
}

#[tokio::test]
async fn a_publish_past_the_retained_limit_is_a_409_and_counted() {
    let config = starling_broker::Config {
        max_retained_messages: 1,
        ..starling_broker::Config::default()
    };
    let s = support::start_with(None, "retained-limit", config).await;
    let client = reqwest::Client::new();
    let publish = |topic: &str| {
        client
            .post(http(&s, "/api/v1/publish"))
            .json(&json!({"topic": topic, "payload": "v", "retain": true}))
            .send()
    };
    assert_eq!(publish("one").await.unwrap().status().as_u16(), 200);
    let r = publish("two").await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "quota_exceeded");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("max-retained-messages"));
    assert_eq!(
        publish("one").await.unwrap().status().as_u16(),
        200,
        "a replacement"
    );
    let text = reqwest::get(http(&s, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("starling_retained_refused_total 1"), "{text}");
    let bytes = text
        .lines()
        .find_map(|l| l.strip_prefix("starling_retained_bytes "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(bytes.is_some_and(|b| b > 0), "{text}");
}

#[tokio::test]
async fn tokens_guard_the_api_but_not_metrics_or_health() {
    let path = std::env::temp_dir().join(format!("starling-admin-tokens-{}", std::process::id()));
    std::fs::write(&path, "s3cret\n").unwrap();
    let s = start(Some(path.clone()), "tokens").await;
    let client = reqwest::Client::new();
    let r = client.get(http(&s, "/api/v1/stats")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    assert!(!body.to_string().contains("s3cret"));
    let r = client
        .get(http(&s, "/api/v1/stats"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(http(&s, "/api/v1/stats"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let stats: Value = r.json().await.unwrap();
    assert_eq!(stats["connections"], 0);
    for open in ["/metrics", "/healthz", "/readyz", "/api/v1/openapi.json"] {
        let r = client.get(http(&s, open)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open}");
    }
    let r = client
        .get(http(&s, "/api/v1/nothing"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client
        .post(http(&s, "/api/v1/reload"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let s = start(None, "openapi").await;
    let (status, doc) = get_json(&s, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/clients",
        "/api/v1/clients/{client_id}",
        "/api/v1/sessions",
        "/api/v1/sessions/{client_id}",
        "/api/v1/subscriptions",
        "/api/v1/retained",
        "/api/v1/retained/{topic}",
        "/api/v1/publish",
        "/api/v1/stats",
        "/api/v1/listeners",
        "/api/v1/reload",
    ] {
        assert!(paths.contains_key(p), "{p} not in the document");
    }
    let (_, listeners) = get_json(&s, "/api/v1/listeners").await;
    assert_eq!(listeners[0]["address"], s.mqtt.to_string());
}

#[tokio::test]
async fn a_mosquitto_sub_client_is_listed_and_kicked() {
    let s = start(None, "mosquitto-sub").await;
    let child = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.mqtt.port().to_string()])
        .args(["-i", "mosq-sub", "-t", "api/#", "-V", "mqttv5", "-d"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("mosquitto_sub: {e}; run scripts/install-test-deps.d/interop.sh")
        });
    // Listed once it has subscribed (polled: nothing tells the test sooner).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, c) = get_json(&s, "/api/v1/clients/mosq-sub").await;
        if c["subscriptions"] == json!([{"filter": "api/#", "qos": 0}]) {
            assert_eq!(c["connection"]["protocol"], "5.0");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub never listed: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = reqwest::Client::new()
        .delete(http(&s, "/api/v1/clients/mosq-sub"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("mosquitto_sub exits once disconnected")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Received DISCONNECT (152)"), "{text}");
}

#[tokio::test]
async fn without_tokens_other_hosts_and_origins_are_refused() {
    let s = start(None, "rebinding").await;
    let client = reqwest::Client::new();
    // DNS rebinding: a page whose own name resolves to 127.0.0.1.
    let r = client
        .get(http(&s, "/api/v1/stats"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A cross-site request from a page elsewhere.
    let r = client
        .post(http(&s, "/api/v1/reload"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client
        .post(http(&s, "/api/v1/reload"))
        .header("origin", format!("http://{}", s.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Metrics and health stay open to any host (Prometheus scrapes by name).
    let r = client
        .get(http(&s, "/metrics"))
        .header("host", "broker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn a_parked_connection_is_woken_and_kicked() {
    let s = start(None, "parked").await;
    // A client that says nothing after its CONNACK parks at once.
    let mut idle = Raw::connect(s.mqtt, "sleeper", V::V5, true, 0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, stats) = get_json(&s, "/api/v1/stats").await;
        if stats["connections_parked"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never parked: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = reqwest::Client::new()
        .delete(http(&s, "/api/v1/clients/sleeper"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(matches!(idle.recv().await, Some(Packet::Disconnect(d)) if d.reason_code.0 == 0x98));
    assert!(idle.recv().await.is_none());
    let (_, stats) = get_json(&s, "/api/v1/stats").await;
    assert_eq!(
        (
            stats["connections"].as_u64(),
            stats["connections_parked"].as_u64()
        ),
        (Some(0), Some(0))
    );
}
