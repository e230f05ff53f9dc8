//! `starling ctl` as an operator runs it: the binary against a broker and its
//! admin HTTP server started in this process on loopback (port 0), with a
//! raw MQTT client to list, show and kick; and against a fake HTTP server for
//! paging and for answers that are not the API's. Bounded waits only.

#[path = "support/process.rs"]
mod process;
#[path = "../../starling-admin/tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use starling_codec::{Packet, ProtocolVersion as V};

use process::{starling, wait_with_limit};
use support::{start, Raw, WAIT};

/// How long one `starling ctl` run may take.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("starling-ctl-{}-{name}", std::process::id()))
}

/// Runs `starling ctl ARGS` with no STARLING_CTL_* variables from the
/// environment, plus `env`, to completion within [`RUN_LIMIT`].
fn ctl_blocking(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = starling();
    cmd.arg("ctl")
        .args(args)
        .env_remove("STARLING_CTL_URL")
        .env_remove("STARLING_CTL_TOKEN_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn starling ctl");
    wait_with_limit(&mut child, RUN_LIMIT)
}

/// [`ctl_blocking`] off the runtime, which keeps serving the broker.
async fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ctl_blocking(&args, &env)
    })
    .await
    .expect("the ctl runner")
}

async fn ctl(args: &[&str]) -> Output {
    ctl_env(args, &[]).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a run succeeded and returns its stdout.
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}, stderr: {}",
        o.status,
        stderr(o)
    );
    stdout(o)
}

/// Asserts a run failed with exit status 1 and one `error:` line on stderr,
/// and returns that line.
fn failed(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}, stderr: {err}",
        stdout(o)
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err.trim_end().to_string()
}

/// The table row whose first column is `first`, split into columns.
fn row(table: &str, first: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .filter(|c| !c.is_empty())
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|cols| cols.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_shows_and_kicks_a_client() {
    let s = start(None, "main").await;
    let base = s.url("");
    let url = base.as_str();
    let mut a = Raw::connect(s.mqtt, "ctl-alpha", V::V5, true, 0).await;
    a.subscribe("sensors/+/temp").await;
    a.retain("r/text", b"hello", 2).await;
    a.retain("r/bin", &[0, 0xff, 1], 3).await;
    a.retain("r/long", "x".repeat(100).as_bytes(), 4).await;

    let out = ok(&ctl(&["--url", url, "clients"]).await);
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "CLIENT ID",
        "USER",
        "ADDRESS",
        "PROTOCOL",
        "KEEPALIVE",
        "QUEUED",
        "INFLIGHT",
        "SUBS",
    ] {
        assert!(header.contains(col), "{col} missing from {header:?}");
    }
    let r = row(&out, "ctl-alpha");
    assert_eq!(r[1], "-", "no user name: {r:?}");
    assert!(r[2].starts_with("127.0.0.1:"), "{r:?}");
    assert_eq!(&r[3..], ["5.0", "60", "0", "0", "1"], "{r:?}");

    // --json after the subcommand, or before it: the API's JSON.
    for args in [
        ["--url", url, "clients", "--json"],
        ["--url", url, "--json", "clients"],
    ] {
        let json: Value = serde_json::from_str(&ok(&ctl(&args).await)).expect("valid JSON");
        assert_eq!(json["data"][0]["client_id"], "ctl-alpha", "{json}");
        assert_eq!(json["data"][0]["connection"]["protocol"], "5.0", "{json}");
        assert_eq!(json["meta"]["hasnext"], false, "{json}");
    }

    let out = ok(&ctl(&["--url", url, "client", "ctl-alpha"]).await);
    assert!(out.starts_with("client id "), "{out}");
    assert!(out.contains("\nconnected     yes\n"), "{out}");
    assert!(out.contains("\nprotocol      5.0\n"), "{out}");
    assert!(out.contains("\nsubscriptions (1):\n"), "{out}");
    assert_eq!(
        row(&out, "sensors/+/temp"),
        ["sensors/+/temp", "1"],
        "{out}"
    );
    let json: Value =
        serde_json::from_str(&ok(
            &ctl(&["--url", url, "--json", "client", "ctl-alpha"]).await
        ))
        .expect("valid JSON");
    assert_eq!(json["subscriptions"][0]["filter"], "sensors/+/temp");

    let out = ok(&ctl(&["--url", url, "sessions"]).await);
    assert!(out.starts_with("CLIENT ID"), "{out}");
    assert_eq!(
        row(&out, "ctl-alpha"),
        ["ctl-alpha", "yes", "no", "0s", "0", "0"],
        "{out}"
    );

    let out = ok(&ctl(&["--url", url, "retained"]).await);
    assert!(out.starts_with("TOPIC"), "{out}");
    assert_eq!(row(&out, "r/text"), ["r/text", "1", "5", "hello"], "{out}");
    assert_eq!(
        row(&out, "r/bin"),
        ["r/bin", "1", "3", "<3 bytes binary>"],
        "{out}"
    );
    let long = row(&out, "r/long");
    assert_eq!(long[3], format!("{}...", "x".repeat(37)), "{out}");
    let out = ok(&ctl(&["--url", url, "retained", "r/text"]).await);
    assert_eq!(out.lines().count(), 2, "the header and r/text: {out}");
    let out = ok(&ctl(&["--url", url, "retained", "none/#"]).await);
    assert_eq!(out.lines().count(), 1, "the header only: {out}");
    let err = failed(&ctl(&["--url", url, "retained", "a/#/b"]).await);
    assert!(err.ends_with("(HTTP 400)"), "{err}");

    let out = ok(&ctl(&["--url", url, "stats"]).await);
    assert_eq!(row(&out, "connections"), ["connections", "1"], "{out}");
    // $SYS topics are retained too.
    let retained: u64 = row(&out, "retained")[1].parse().expect("a number");
    assert!(retained >= 3, "{out}");
    let json: Value = serde_json::from_str(&ok(&ctl(&["--url", url, "stats", "--json"]).await))
        .expect("valid JSON");
    assert_eq!(json["connections"], 1, "{json}");

    // Kick: the client gets DISCONNECT 0x98, and a second kick finds nobody.
    let out = ok(&ctl(&["--url", url, "kick", "ctl-alpha"]).await);
    assert_eq!(out, "disconnected ctl-alpha\n");
    match a.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x98),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert!(a.recv().await.is_none(), "closed after the DISCONNECT");
    let err = failed(&ctl(&["--url", url, "kick", "ctl-alpha"]).await);
    assert_eq!(
        err,
        "error: client \"ctl-alpha\" is not connected (HTTP 404)"
    );
    let err = failed(&ctl(&["--url", url, "client", "nobody"]).await);
    assert_eq!(
        err,
        "error: no session with client id \"nobody\" (HTTP 404)"
    );
    // The URL from the environment.
    let out = ok(&ctl_env(&["clients"], &[("STARLING_CTL_URL", url)]).await);
    assert_eq!(out.lines().count(), 1, "no client connected: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_one_path_segment_whatever_it_holds() {
    let s = start(None, "odd").await;
    let id = "dev/1 x?y#z%41";
    let mut c = Raw::connect(s.mqtt, id, V::V5, true, 0).await;
    let out = ok(&ctl(&["--url", &s.url(""), "client", id]).await);
    assert!(out.starts_with(&format!("client id     {id}\n")), "{out}");
    let out = ok(&ctl(&["--url", &s.url(""), "kick", "--", id]).await);
    assert_eq!(out, format!("disconnected {id}\n"));
    assert!(matches!(c.recv().await, Some(Packet::Disconnect(d)) if d.reason_code.0 == 0x98));
    let err = failed(&ctl(&["--url", &s.url(""), "client", ".."]).await);
    assert!(err.contains("cannot be named"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_token_file_wants_the_token() {
    let server_tokens = temp("server-tokens");
    std::fs::write(&server_tokens, "s3cret\n").unwrap();
    let s = start(Some(server_tokens.clone()), "tokens").await;
    let base = s.url("");
    let url = base.as_str();

    let err = failed(&ctl(&["--url", url, "stats"]).await);
    assert!(err.contains("(HTTP 401)"), "{err}");
    assert!(err.contains("--token-file"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // The first line that is neither empty nor a comment is the token.
    let mine = temp("my-token");
    std::fs::write(&mine, "# the ops token\n\n  s3cret  \nnot-this-one\n").unwrap();
    let mine = mine.to_str().unwrap();
    let out = ok(&ctl(&["--url", url, "--token-file", mine, "stats"]).await);
    assert_eq!(row(&out, "connections"), ["connections", "0"], "{out}");
    let out = ok(&ctl_env(
        &["--url", url, "clients"],
        &[("STARLING_CTL_TOKEN_FILE", mine)],
    )
    .await);
    assert!(out.starts_with("CLIENT ID"), "{out}");

    let wrong = temp("wrong-token");
    std::fs::write(&wrong, "guess\n").unwrap();
    let err = failed(
        &ctl(&[
            "--url",
            url,
            "--token-file",
            wrong.to_str().unwrap(),
            "stats",
        ])
        .await,
    );
    assert!(
        err.contains("(HTTP 401)") && err.contains("was refused"),
        "{err}"
    );
    let empty = temp("empty-token");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let err = failed(
        &ctl(&[
            "--url",
            url,
            "--token-file",
            empty.to_str().unwrap(),
            "stats",
        ])
        .await,
    );
    assert!(err.contains("holds no token"), "{err}");
    for f in [&server_tokens, &wrong, &empty] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_file(mine);
}

#[test]
fn a_connection_failure_names_the_url() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = failed(&ctl_blocking(
        &["--url".into(), url.clone(), "stats".into()],
        &[],
    ));
    assert!(
        err.contains("cannot connect to") && err.contains(&url),
        "{err}"
    );
    let err = failed(&ctl_blocking(
        &["--url".into(), "mqtt://x".into(), "stats".into()],
        &[],
    ));
    assert!(err.contains("--url mqtt://x"), "{err}");
}

/// A one-thread HTTP server on loopback that answers each request with
/// `answer(request target)` and closes the connection; it records the
/// targets it was asked for.
fn fake_server(
    answer: fn(&str) -> (u16, &'static str, String),
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(WAIT));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let target = head.split(' ').nth(1).unwrap_or_default().to_string();
            let (status, content_type, body) = answer(&target);
            log.lock().unwrap().push(target);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

fn client_json(id: &str) -> Value {
    serde_json::json!({
        "client_id": id, "username": null, "connected": true,
        "connection": {"address": "10.0.0.1:1234", "protocol": "3.1.1", "keep_alive": 30},
        "persistent": false, "expiry_interval": 0, "queued": 0, "in_flight": 0,
        "subscriptions": []
    })
}

#[test]
fn lists_are_read_page_by_page() {
    let (url, seen) = fake_server(|target| {
        let (data, hasnext, page) = if target.contains("page=2") {
            (vec![client_json("second")], false, 2)
        } else {
            (vec![client_json("first")], true, 1)
        };
        let body = serde_json::json!({
            "data": data,
            "meta": {"page": page, "limit": 1000, "count": 2, "hasnext": hasnext}
        });
        (200, "application/json", body.to_string())
    });
    let out = ok(&ctl_blocking(
        &["--url".into(), url.clone(), "clients".into()],
        &[],
    ));
    assert_eq!(row(&out, "first")[2], "10.0.0.1:1234", "{out}");
    assert_eq!(row(&out, "second")[3], "3.1.1", "{out}");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "/api/v1/clients?page=1&limit=1000",
            "/api/v1/clients?page=2&limit=1000"
        ]
    );
    let json: Value = serde_json::from_str(&ok(&ctl_blocking(
        &["--url".into(), url, "--json".into(), "sessions".into()],
        &[],
    )))
    .expect("valid JSON");
    assert_eq!(json["data"][1]["client_id"], "second", "{json}");
    assert_eq!(json["meta"]["hasnext"], false, "{json}");
}

#[test]
fn answers_that_are_not_the_apis_are_errors_not_panics() {
    let (url, _) = fake_server(|target| {
        match target {
        t if t.starts_with("/api/v1/stats") => (200, "text/html", "<html>hello</html>".into()),
        t if t.starts_with("/api/v1/clients?") => (200, "application/json", r#"{"data": 5}"#.into()),
        t if t.starts_with("/api/v1/sessions") => (502, "text/html", "<h1>Bad\nGateway</h1>".into()),
        t if t.starts_with("/api/v1/retained") => {
            (200, "application/json", r#"{"data": [{"topic": "\u001b[2J", "payload": 7}]}"#.into())
        }
        _ => (
            200,
            "application/json",
            r#"{"client_id": 5, "connection": "x", "subscriptions": {}, "expiry_interval": 4294967295}"#
                .into(),
        ),
    }
    });
    let run = |cmd: &[&str]| {
        let mut args = vec!["--url".to_string(), url.clone()];
        args.extend(cmd.iter().map(|s| s.to_string()));
        ctl_blocking(&args, &[])
    };
    let err = failed(&run(&["stats"]));
    assert!(
        err.contains("not JSON") && err.contains("--http-listen"),
        "{err}"
    );
    let err = failed(&run(&["clients"]));
    assert!(err.contains("without a data list"), "{err}");
    let err = failed(&run(&["sessions"]));
    assert!(
        err.contains("Bad Gateway") && err.ends_with("(HTTP 502)"),
        "{err}"
    );
    // Odd shapes print as they can; control characters are escaped.
    let out = ok(&run(&["retained"]));
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("\\u{1b}[2J"), "{out}");
    let out = ok(&run(&["client", "x"]));
    assert_eq!(row(&out, "expiry"), ["expiry", "never"], "{out}");
}
