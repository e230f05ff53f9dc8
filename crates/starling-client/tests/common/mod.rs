//! A real Mosquitto broker for tests, on a free port, in its own temp directory.
//!
//! Shared with the CLI tests of the `starling` crate (through `#[path]`).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running mosquitto, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

/// The mosquitto binary, or a panic that says how to install it.
pub fn mosquitto_binary() -> PathBuf {
    find_binary("mosquitto").unwrap_or_else(|| {
        panic!(
            "the mosquitto binary is missing: these tests need a real Mosquitto broker. \
             Install it with scripts/install-test-deps.d/client.sh \
             (apt-get install mosquitto mosquitto-clients)"
        )
    })
}

pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "starling-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

impl Mosquitto {
    /// Anonymous access on a plain TCP listener.
    pub fn start() -> Mosquitto {
        Self::start_with("allow_anonymous true\n", |_| {})
    }

    /// Only `user` with password `pass`; anonymous clients are refused.
    pub fn start_with_password(user: &str, pass: &str) -> Mosquitto {
        let (user, pass) = (user.to_owned(), pass.to_owned());
        Self::start_with(
            "allow_anonymous false\npassword_file {dir}/passwd\n",
            move |dir| {
                let passwd = find_binary("mosquitto_passwd").expect(
                "mosquitto_passwd is missing: install mosquitto (scripts/install-test-deps.d/client.sh)",
            );
                let file = dir.join("passwd");
                std::fs::write(&file, "").expect("create password file");
                let status = Command::new(passwd)
                    .arg("-b")
                    .arg(&file)
                    .arg(&user)
                    .arg(&pass)
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd failed");
            },
        )
    }

    /// `extra` is appended to the config after `listener PORT 127.0.0.1`; `{dir}`
    /// stands for the broker's directory. `prepare` runs first, in that directory.
    pub fn start_with(extra: &str, prepare: impl FnOnce(&Path)) -> Mosquitto {
        let bin = mosquitto_binary();
        let dir = temp_dir("mosquitto");
        prepare(&dir);
        // Another process may grab the port between our probe and mosquitto's bind;
        // retry with a new port in that case.
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "listener {port} 127.0.0.1\n{}\npersistence false\n",
                extra.replace("{dir}", &dir.display().to_string())
            );
            let conf_path = dir.join("mosquitto.conf");
            std::fs::write(&conf_path, config).expect("write config");
            let log = std::fs::File::create(dir.join("mosquitto.log")).expect("log file");
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut child = child;
            if wait_ready(&mut child, port, Duration::from_secs(10)) {
                return Mosquitto { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
        panic!("mosquitto did not start; its log:\n{log}");
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

/// Polls until the broker accepts connections; false if it exited or timed out.
fn wait_ready(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        // Poll interval, not a wait for a condition: the loop ends as soon as it connects.
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
