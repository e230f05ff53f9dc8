//! `starling broker` and `starling passwd` as a user runs them: one-line errors
//! for bad configuration, a port already in use, and a graceful exit on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn starling() -> Command {
    Command::new(env!("CARGO_BIN_EXE_starling"))
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("starling-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the broker to completion (it must exit by itself) and returns its
/// exit status and stderr.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = starling()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("starling runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_file_names_the_file_line_and_key() {
    let dir = temp("badconf");
    let conf = dir.join("starling.toml");
    std::fs::write(&conf, "allow-anonymous = true\nmax-keepalive = \"soon\"\n").unwrap();
    let (status, err) = run_to_exit(&["broker", "--config", conf.to_str().unwrap()]);
    assert!(!status.success());
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains(&format!("{}:2:", conf.display())), "{line}");
    std::fs::write(&conf, "no-such-key = 1\n").unwrap();
    let (status, err) = run_to_exit(&["broker", "--config", conf.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains(":1:") && err.contains("no-such-key"), "{err}");
}

#[test]
fn bad_url_and_busy_port_are_one_line_errors() {
    let (status, err) = run_to_exit(&["broker", "--listen", "mqtt//nope"]);
    assert!(!status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("mqtt//nope"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mqtt://127.0.0.1:{}", busy.local_addr().unwrap().port());
    let dir = temp("busy");
    let (status, err) = run_to_exit(&[
        "broker",
        "--listen",
        &url,
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&url), "{err}");
}

#[test]
fn sigterm_shuts_down_gracefully_with_disconnect_0x8b() {
    let dir = temp("term");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = starling()
        .args([
            "broker",
            "--listen",
            &format!("mqtt://127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stream = None;
    for _ in 0..3000 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            stream = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut stream = stream.expect("broker listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // MQTT 5 CONNECT, client id "t", no properties.
    stream
        .write_all(&[
            0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b't',
        ])
        .unwrap();
    let mut connack = [0u8; 64];
    let n = stream.read(&mut connack).unwrap();
    assert!(
        n >= 5 && connack[0] == 0x20 && connack[3] == 0,
        "{:?}",
        &connack[..n]
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        rest.len() >= 3 && rest[0] == 0xE0 && rest[2] == 0x8B,
        "DISCONNECT 0x8B, got {rest:?}"
    );
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn passwd_batch_mode_writes_an_argon2id_hash() {
    let dir = temp("passwd");
    let file = dir.join("passwords");
    let status = starling()
        .args(["passwd", "-b"])
        .arg(&file)
        .args(["alice", "s3cret"])
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    assert!(!text.contains("s3cret"));
    let status = starling()
        .args(["passwd", "-b"])
        .arg(&file)
        .args(["bob", "x"])
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 2);
}
