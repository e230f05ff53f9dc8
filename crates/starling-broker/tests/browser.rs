//! A real browser client: MQTT.js (npm `mqtt`) in headless Chromium (Debian
//! `chromium`) against a `ws://` listener, at MQTT 3.1.1 and 5.0.
//!
//! The page subscribes, publishes at QoS 1 to itself, and on receipt publishes
//! `OK <payload>` to `browser/result/<version>`, which the test waits for with
//! our client. Chromium is killed when the test is done with it.
//!
//! Dependencies come from `scripts/install-test-deps.d/browser.sh`; when they
//! are missing the test fails and says so.

mod common;
mod transport_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use starling_broker::Config;
use starling_client::{Client, ConnectOptions, QoS};
use transport_support::Running;

const HINT: &str =
    "install the browser test dependencies with scripts/install-test-deps.d/browser.sh";

fn mqtt_js() -> PathBuf {
    let dir = std::env::var_os("STARLING_BROWSER_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/starling/browser")
        });
    let js = dir.join("node_modules/mqtt/dist/mqtt.min.js");
    assert!(js.exists(), "{} is missing; {HINT}", js.display());
    js
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><script src="mqtt.min.js"></script></head>
<body><script>
const q = new URLSearchParams(location.search);
const v = Number(q.get("v"));
const c = mqtt.connect("ws://127.0.0.1:" + q.get("port") + "/mqtt",
  { protocolVersion: v, clientId: "chromium-" + v, reconnectPeriod: 0 });
c.on("connect", () => {
  c.subscribe("browser/echo/" + v, { qos: 1 }, (err) => {
    if (!err) c.publish("browser/echo/" + v, "hello from chromium", { qos: 1 });
  });
});
c.on("message", (topic, payload) => {
  if (topic === "browser/echo/" + v)
    c.publish("browser/result/" + v, "OK " + payload.toString(), { qos: 1 });
});
</script></body></html>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_in_headless_chromium() {
    let js = mqtt_js();
    let dir = std::env::temp_dir().join(format!("starling-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&js, dir.join("mqtt.min.js")).unwrap();
    std::fs::write(dir.join("page.html"), PAGE).unwrap();
    let b = Running::start(Config {
        listen: vec!["ws://127.0.0.1:0/mqtt".into()],
        ..Config::default()
    })
    .await;
    let port = b.port(0);
    for v in [4, 5] {
        let mut o = ConnectOptions::from_url(&format!("ws://127.0.0.1:{port}/mqtt")).unwrap();
        o.client_id = format!("watch-{v}");
        let (watch, _) = Client::connect(o).await.unwrap();
        watch
            .subscribe(&format!("browser/result/{v}"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let profile = dir.join(format!("profile-{v}"));
        let url = format!("file://{}/page.html?port={port}&v={v}", dir.display());
        let mut chromium = tokio::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run chromium ({e}); {HINT}"));
        let got = tokio::time::timeout(Duration::from_secs(90), watch.recv())
            .await
            .unwrap_or_else(|_| panic!("no result from MQTT.js {v} in chromium"))
            .expect("message");
        assert_eq!(&got.payload[..], b"OK hello from chromium");
        let _ = chromium.start_kill();
        let _ = chromium.wait().await;
        watch.disconnect().await.unwrap();
    }
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
