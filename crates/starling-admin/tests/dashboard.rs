//! The dashboard (`GET /`) in headless Chromium (Debian's `chromium`) driven
//! by Playwright (npm `playwright-core`, through `tests/drive-dashboard.js`),
//! against a real broker and its HTTP listener on loopback: the page loads
//! with no console error, its charts update with real traffic, a raw MQTT 5
//! client appears in the list, shows its session, and its Kick button
//! disconnects it (DISCONNECT 0x98); with a token file, the page asks for the
//! token. Also the files themselves: types, caching, 404s, no secret.
//!
//! Dependencies come from `scripts/install-test-deps.d/browser.sh`; when they
//! are missing the test fails and says so. Every wait is bounded; Node and
//! its Chromium are killed when a test ends, however it ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use starling_codec::{Packet, ProtocolVersion as V, Publish};

mod support;

use support::{start, Raw};
use tokio::io::AsyncReadExt;

const HINT: &str =
    "install the browser test dependencies with scripts/install-test-deps.d/browser.sh";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run, loading included (the script has its own, shorter).
const BROWSER_WAIT: Duration = Duration::from_secs(120);

/// The client that is kicked: a client id that is a path, has markup in it
/// and is not ASCII, so the page must encode and escape it.
const KICKED: &str = "dash/kick <b>&\"é\"</b>";

/// A client that publishes to itself ten times a second until dropped, so the
/// message charts have something to show.
struct Traffic(tokio::task::JoinHandle<()>);

impl Traffic {
    async fn start(addr: SocketAddr) -> Traffic {
        let mut c = Raw::connect(addr, "dash-load", V::V5, true, 0).await;
        c.subscribe("load/#").await;
        Traffic(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                c.send(Packet::Publish(Publish::new("load/tick", "x")))
                    .await;
                // What comes back is read so the socket never fills.
                let mut sink = [0u8; 4096];
                let _ =
                    tokio::time::timeout(Duration::from_millis(1), c.stream.read(&mut sink)).await;
            }
        }))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---- Node, Playwright and Chromium ---------------------------------------------

/// Where playwright-core is installed, or a failure naming the install script.
fn playwright() -> PathBuf {
    let dir = std::env::var_os("STARLING_BROWSER_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/starling/browser")
        });
    let pw = dir.join("node_modules/playwright-core");
    assert!(
        pw.join("package.json").exists(),
        "{} is missing; {HINT}",
        pw.display()
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing; {HINT}"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node does not run; {HINT}"
    );
    pw
}

/// The Node process driving Chromium. Dropping it kills Node and the
/// Chromium it started (found by its user data dir, which is ours alone).
struct Driver {
    child: tokio::process::Child,
    profile: PathBuf,
    started: Instant,
}

impl Driver {
    /// Runs `tests/drive-dashboard.js` with `config` (plus the paths), with
    /// the playwright-core of [`playwright`].
    fn spawn(playwright: &Path, mut config: Value, dir: &Path) -> Driver {
        let profile = dir.join("chromium-profile");
        config["playwright"] = json!(playwright);
        config["profile"] = json!(profile);
        config["timeoutMs"] = json!(90_000);
        config["watchStdin"] = json!(true);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drive-dashboard.js");
        let child = tokio::process::Command::new("node")
            .arg(script)
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}); {HINT}"));
        Driver {
            child,
            profile,
            started: Instant::now(),
        }
    }

    /// Its result (the last line it prints), bounded in time.
    async fn result(&mut self) -> Value {
        let mut stdout = self.child.stdout.take().expect("stdout");
        let mut stderr = self.child.stderr.take().expect("stderr");
        let run = async {
            let (mut out, mut err) = (String::new(), String::new());
            let (a, b) = tokio::join!(
                stdout.read_to_string(&mut out),
                stderr.read_to_string(&mut err)
            );
            a.and(b).expect("reading node's output");
            let status: ExitStatus = self.child.wait().await.expect("node ends");
            (status, out, err)
        };
        let (status, out, err) = tokio::time::timeout(BROWSER_WAIT, run)
            .await
            .unwrap_or_else(|_| panic!("the browser run took more than {BROWSER_WAIT:?}"));
        eprintln!(
            "browser run: {:.1} s, {status}",
            self.started.elapsed().as_secs_f64()
        );
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("node printed no result ({e}); stdout:\n{out}\nstderr:\n{err}")
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        kill_browser(&self.profile);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kills the Chromium run with `--user-data-dir=<profile>` and its process
/// group (Playwright starts it in a group of its own), if it still runs.
fn kill_browser(profile: &Path) {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut targets = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            targets.push(pid.to_string());
            // The fifth field of /proc/PID/stat (after the name in parentheses).
            let group = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_string()))
                .and_then(|rest| rest.split(' ').nth(2).map(str::to_string));
            if group.as_deref() == Some(&pid.to_string()) {
                targets.push(format!("-{pid}"));
            }
        }
    }
    if !targets.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .args(&targets)
            .stderr(Stdio::null())
            .status();
    }
}

fn assert_ran(result: &Value) {
    assert_eq!(
        result["ok"],
        true,
        "the browser run failed: {}\nsteps: {}\nconsole errors: {}\npage errors: {}",
        result["error"].as_str().unwrap_or_default(),
        result["steps"],
        result["consoleErrors"],
        result["pageErrors"]
    );
    assert_eq!(
        result["pageErrors"],
        json!([]),
        "uncaught errors in the page"
    );
}

// ---- The tests ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_figures_and_kicks_a_client() {
    let pw = playwright();
    let s = start(None, "live").await;
    let mut kicked = Raw::connect(s.mqtt, KICKED, V::V5, true, 300).await;
    kicked.subscribe("dash/alerts/#").await;
    let traffic = Traffic::start(s.mqtt).await;

    let shot = s.dir.join("dashboard.png");
    let mut driver = Driver::spawn(
        &pw,
        json!({
            "url": s.url("/"),
            "traffic": true,
            "expectClient": KICKED,
            "search": "dash/kick",
            "hidden": "dash-load",
            "view": KICKED,
            "subscription": "dash/alerts/#",
            "retained": {"topic": "dash/status", "payload": "<i>online</i>", "filter": "dash/#"},
            "screenshot": shot,
            "kick": KICKED,
        }),
        &s.dir,
    );
    let result = driver.result().await;
    drop(driver);
    assert_ran(&result);
    assert_eq!(
        result["consoleErrors"],
        json!([]),
        "console errors in the page"
    );
    let dialogs = result["dialogs"].as_array().expect("dialogs");
    assert!(
        dialogs.len() == 1 && dialogs[0].as_str().is_some_and(|d| d.contains(KICKED)),
        "one confirmation, naming the client: {dialogs:?}"
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);

    // What the Kick button did to the client.
    match kicked.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x98),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert!(kicked.recv().await.is_none(), "closed after the DISCONNECT");
    eprintln!("steps: {}", result["steps"]);
    drop(traffic);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_api_token() {
    let pw = playwright();
    let token = format!("dash-{}-token", std::process::id());
    let path =
        std::env::temp_dir().join(format!("starling-dashboard-tokens-{}", std::process::id()));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let s = start(Some(path.clone()), "token").await;
    let mut driver = Driver::spawn(&pw, json!({"url": s.url("/"), "token": token}), &s.dir);
    let result = driver.result().await;
    drop(driver);
    let _ = std::fs::remove_file(&path);
    s.stop().await;
    assert_ran(&result);
    // The only console errors are the API's 401s, before and for the wrong token.
    let errors = result["consoleErrors"].as_array().expect("console errors");
    assert!(!errors.is_empty(), "the API answered 401 at first");
    for e in errors {
        assert!(
            e.as_str()
                .is_some_and(|e| e.contains("status of 401") && e.contains("/api/v1/")),
            "console error other than a 401 of the API: {e}"
        );
    }
}

#[tokio::test]
async fn the_files_are_served_with_their_types_and_no_secret() {
    let path =
        std::env::temp_dir().join(format!("starling-dashboard-files-{}", std::process::id()));
    std::fs::write(&path, "files-s3cret\n").unwrap();
    let s = start(Some(path.clone()), "files").await;
    let client = reqwest::Client::new();
    let page = client.get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200, "the page needs no token");
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let body = page.text().await.unwrap();
    assert!(body.contains("assets/dashboard.js") && !body.contains("s3cret"));
    // Not modified: the entity tag.
    let etag = h["etag"].to_str().unwrap();
    let again = client
        .get(s.url("/"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    for (file, kind) in [
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("uPlot.min.css", "text/css; charset=utf-8"),
        ("uPlot.LICENSE", "text/plain; charset=utf-8"),
    ] {
        let r = client
            .get(s.url(&format!("/assets/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{file}");
        assert_eq!(r.headers()["content-type"], kind, "{file}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{file}");
        let text = r.text().await.unwrap();
        assert!(!text.is_empty() && !text.contains("s3cret"), "{file}");
    }
    for missing in [
        "/assets/nothing.js",
        "/assets/README.md",
        "/assets/index.html",
        "/assets/dashboard.js.map",
        "/assets/a/dashboard.js",
        "/assets/..%2fCargo.toml",
    ] {
        let r = client.get(s.url(missing)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{missing}");
        assert_eq!(r.headers()["content-type"], "application/json", "{missing}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_found", "{missing}");
    }
    let _ = std::fs::remove_file(&path);
    s.stop().await;
}
