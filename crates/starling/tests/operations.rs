//! The operator's commands as a user runs them: `check-config` (the effective
//! configuration, or one line naming the file, line and key),
//! `migrate-mosquitto` (its output loads), `broker --log-format json` (one
//! JSON object per line), and `generate` (man pages and completions for the
//! package).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

fn starling() -> Command {
    Command::new(env!("CARGO_BIN_EXE_starling"))
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("starling-ops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = starling()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("starling runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = temp("check-ok");
    let conf = dir.join("starling.toml");
    std::fs::write(&conf, "listen = [\"mqtt://127.0.0.1:1999\"]\nmax-queued-messages = 7\nhttp-listen = \"http://127.0.0.1:8081\"\n").unwrap();
    let (ok, out, err) = run(&["check-config", conf.to_str().unwrap()]);
    assert!(ok, "{err}");
    // Defaults are filled in, and what it prints loads again.
    for want in [
        "max-queued-messages = 7",
        "receive-maximum = 1024",
        "listen = [\"mqtt://127.0.0.1:1999\"]",
        "log-format = \"text\"",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let again = dir.join("again.toml");
    std::fs::write(&again, &out).unwrap();
    let (ok, _, err) = run(&["check-config", again.to_str().unwrap()]);
    assert!(ok, "the printed configuration does not load: {err}");
}

#[test]
fn check_config_does_not_print_secrets() {
    let dir = temp("check-secrets");
    let conf = dir.join("starling.toml");
    std::fs::write(
        &conf,
        "[auth.jwt]\nsecret = \"jwt-secret-1\"\n\n[[bridge]]\nname = \"b\"\nurl = \"mqtt://127.0.0.1:1\"\n\
         password = \"bridge-pw-2\"\n[[bridge.topic]]\nfilter = \"#\"\n\n[[webhook]]\n\
         url = \"http://127.0.0.1:1/h\"\nheaders = { authorization = \"Bearer hook-3\" }\n",
    )
    .unwrap();
    let (ok, out, err) = run(&["check-config", conf.to_str().unwrap()]);
    assert!(ok, "{err}");
    for secret in ["jwt-secret-1", "bridge-pw-2", "hook-3"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(out.contains("(redacted)"));
}

#[test]
fn check_config_names_the_file_line_and_key() {
    let dir = temp("check-bad");
    let conf = dir.join("starling.toml");
    let path = conf.to_str().unwrap();
    let cases: [(&str, &str); 5] = [
        ("allow-anonymous = true\nmax-keepalive = \"soon\"\n", ":2:"),
        ("max-inflight-messages = 0\n", "max-inflight-messages"),
        ("listen = [\"gopher://x:1\"]\n", "listen"),
        (
            "password-file = \"/nonexistent/passwords\"\n",
            "password-file",
        ),
        ("http-listen = \"127.0.0.1:8081\"\n", "http-listen"),
    ];
    for (text, want) in cases {
        std::fs::write(&conf, text).unwrap();
        let (ok, out, err) = run(&["check-config", path]);
        assert!(!ok, "{text:?} was accepted: {out}");
        assert!(err.contains(path) && err.contains(want), "{text:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn migrate_mosquitto_writes_a_configuration_that_loads() {
    let dir = temp("migrate");
    let mosq = dir.join("mosquitto.conf");
    std::fs::write(
        &mosq,
        "allow_anonymous true\npersistence true\nmax_queued_messages 200\nlistener 1883 127.0.0.1\nlistener 9001\nprotocol websockets\nlog_dest stdout\n",
    )
    .unwrap();
    let out = dir.join("starling.toml");
    let (ok, _, err) = run(&[
        "migrate-mosquitto",
        mosq.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains(":7: not carried over: log_dest"), "{err}");
    let (ok, printed, err) = run(&["check-config", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(printed.contains("url = \"ws://0.0.0.0:9001\""), "{printed}");
    assert!(printed.contains("max-queued-messages = 200"), "{printed}");
}

#[test]
fn broker_logs_json_lines() {
    let dir = temp("json-log");
    let mut child = starling()
        .args([
            "broker",
            "--listen",
            "mqtt://127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line is the start-up line; read it (bounded by the broker's
    // own output: it is killed below whatever happens).
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while buf.len() < 64 * 1024 {
            match stderr.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = reader.join().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(
        v["level"].is_string() && v["fields"]["message"].is_string(),
        "{line}"
    );
}

#[test]
fn generate_writes_man_pages_and_completions() {
    let dir = temp("generate");
    let (ok, _, err) = run(&[
        "generate",
        "man",
        "--dir",
        dir.join("man").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for page in [
        "starling.1",
        "starling-broker.1",
        "starling-ctl.1",
        "starling-check-config.1",
    ] {
        let text = std::fs::read_to_string(dir.join("man").join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page}: {text:.200}");
    }
    let (ok, _, err) = run(&[
        "generate",
        "completions",
        "--dir",
        dir.join("c").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for f in ["starling.bash", "_starling", "starling.fish"] {
        assert!(dir.join("c").join(f).exists(), "{f}");
    }
}
