//! Running the `starling` binary in tests: bounded waits, no polling.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::Duration;

/// The `starling` binary under test.
pub fn starling() -> Command {
    Command::new(env!("CARGO_BIN_EXE_starling"))
}

/// Everything `pipe` yields until it closes.
fn read_all(pipe: Option<Box<dyn Read + Send>>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        p.read_to_end(&mut buf).expect("read the child's output");
    }
    buf
}

/// Waits for `child` to exit and returns its status and whatever it wrote to
/// its piped stdout and stderr (read while it runs, so a full pipe cannot
/// stall it). Kills it and fails the test if it runs longer than `limit`.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> Output {
    let pid = child.id();
    let stdout_pipe = child
        .stdout
        .take()
        .map(|p| Box::new(p) as Box<dyn Read + Send>);
    let stderr_pipe = child
        .stderr
        .take()
        .map(|p| Box::new(p) as Box<dyn Read + Send>);
    std::thread::scope(|s| {
        let stdout = s.spawn(move || read_all(stdout_pipe));
        let stderr = s.spawn(move || read_all(stderr_pipe));
        let (tx, rx) = mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(limit) {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => {
                // The waiting thread holds the child: kill it by pid, which
                // ends that wait, then fail.
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("starling did not finish within {limit:?}");
            }
        };
        Output {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    })
}
