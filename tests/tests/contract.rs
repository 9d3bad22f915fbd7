//! Schemathesis (from PyPI, installed by tests/run.sh) against a live `mailpipe serve`, over
//! every operation of the document the server publishes, once with a key of each scope: no
//! 5xx, no answer outside its schema, no undocumented status code or content type, valid data
//! accepted (with the admin key; `tests/schemathesis.toml` says where a schema cannot say all).

use mailpipe_tests::{spawn_serve, tool};
use std::path::PathBuf;
use std::process::Command;

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/mailpipe-venv/bin/schemathesis"));
    assert!(path.exists(), "{} is missing: run tests/run.sh, which installs it", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_a_key_of_each_scope() {
    let dir = tempfile::tempdir().unwrap();
    tool(dir.path(), &["tenants", "create", "a"]);
    let (mut child, base) = spawn_serve(dir.path(), 100).await;
    // Some data, so that answers have rows to check against their schemas.
    let write = tool(dir.path(), &["keys", "create", "--tenant", "a", "--scope", "events:write", "--tier", "enterprise"]);
    let events = serde_json::json!([
        {"type": "sent", "campaign": "spring", "variant": "A", "message_id": "<1@x>", "recipient": "ana@gmail.com"},
        {"type": "conversion", "campaign": "spring", "message_id": "<1@x>", "recipient": "ana@gmail.com", "revenue": 10.5, "currency": "USD"}
    ]);
    let res = reqwest::Client::new().post(format!("{base}/v1/events")).bearer_auth(write.trim()).json(&events).send().await.unwrap();
    assert_eq!(res.status(), 202);

    let report = dir.path().join("report");
    let mut failed = Vec::new();
    for scope in mailpipe_tenants::Scope::ALL {
        let key = tool(dir.path(), &["keys", "create", "--tenant", "a", "--scope", scope.as_str(), "--tier", "enterprise"]);
        let admin = scope == mailpipe_tenants::Scope::Admin;
        // With a narrow key most operations answer 403 to valid data, as documented; whether
        // valid data is accepted is checked with the admin key.
        let excluded = if admin { "" } else { "positive_data_acceptance" };
        let mut command = Command::new(schemathesis());
        command
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .env("PYTHONPATH", env!("CARGO_MANIFEST_DIR"))
            .arg("--config-file")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml"))
            .current_dir(dir.path())
            .arg("run")
            .arg(format!("{base}/v1/openapi.json"))
            .args(["--max-examples", if admin { "30" } else { "8" }, "--seed", "7", "--workers", "2"])
            .args(["--request-timeout", "20", "--no-color", "--suppress-health-check", "all", "--generation-database", "none"])
            .args(["--header", &format!("Authorization: Bearer {}", key.trim())])
            .arg("--report-dir")
            .arg(report.join(scope.as_str().replace(':', "-")))
            .args(["--report", "junit"]);
        if !excluded.is_empty() {
            command.args(["--exclude-checks", excluded]);
        }
        let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
        if !out.status.success() {
            failed.push(format!("--- with a {scope} key:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(failed.is_empty(), "schemathesis found problems:\n{}", failed.join("\n"));
}
