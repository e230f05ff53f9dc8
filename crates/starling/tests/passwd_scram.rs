//! `starling passwd --scram` writes credentials the broker's SCRAM file
//! reads, and with which the right password authenticates.

use std::path::Path;

use starling_broker::auth::ScramFile;
use starling_scram::{ClientExchange, ServerExchange};

#[test]
fn passwd_scram_writes_a_credential_that_proves_the_password() {
    let dir = std::env::temp_dir().join(format!("starling-passwd-scram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scram");
    let run = |user: &str, pw: &str, create: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_starling"));
        cmd.args(["passwd", "--scram", "-b"]);
        if create {
            cmd.arg("-c");
        }
        let status = cmd.arg(&file).args([user, pw]).status().unwrap();
        assert!(status.success());
    };
    run("alice", "wonderland", true);
    run("bob", "builder", false);
    let creds = ScramFile::load(Path::new(&file)).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("wonderland"), "no password in the file");
    for (user, pw, ok) in [
        ("alice", "wonderland", true),
        ("bob", "builder", true),
        ("alice", "builder", false),
    ] {
        let mut client = ClientExchange::new(user, pw);
        let (server, first) =
            ServerExchange::start(&client.client_first(), creds.get(user).cloned()).unwrap();
        let last = client.client_final(&first).unwrap();
        assert_eq!(server.finish(&last).is_ok(), ok, "{user}/{pw}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
