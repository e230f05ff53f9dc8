//! schemathesis (from PyPI, `scripts/install-test-deps.d/observability.sh`)
//! generates requests from the OpenAPI document, valid and invalid, against
//! a broker on loopback: no 5xx, every status documented, every body as its
//! schema says. A fixed seed keeps CI repeatable; run it by hand with more
//! examples and other seeds (see README "Monitoring and operations").

use std::process::{Command, Stdio};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let dir = std::env::temp_dir().join(format!("starling-schemathesis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "fuzz-token\n").unwrap();
    let s = support::start(Some(tokens), "schemathesis").await;
    let http = s.http;
    let base = format!("http://{http}");
    let cwd = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            // Its cache and reports go in the test's directory, not the checkout.
            .current_dir(&cwd)
            .args(["run", &format!("{base}/api/v1/openapi.json"), "--url", &base])
            .args(["--header", "Authorization: Bearer fuzz-token"])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,positive_data_acceptance,negative_data_rejection"])
            .args(["--max-examples", "40", "--seed", "3", "--no-color"])
            // A health check failing is hypothesis finding it hard to
            // generate data for a pattern, not a failure of the API.
            .args(["--suppress-health-check", "all"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("schemathesis: {e}; run scripts/install-test-deps.d/observability.sh"));
    s.stop().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{}\n{}",
        text.chars()
            .rev()
            .take(6_000)
            .collect::<Vec<char>>()
            .into_iter()
            .rev()
            .collect::<String>(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
