//! mailpipe's roles (`ingest`, `process`, `query`) as separate processes of the real binary, on
//! a Kafka-protocol broker and ClickHouse of their own (`servers`), as production runs them.

use crate::servers::{free_port, ClickHouse, Kafka};
use crate::{binary, wait_for_ok};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The processors poll up to `batch_max` records and take only whole fetches beyond the first
/// record, so with a `batch_max` above everything a test publishes they never commit in the
/// middle of a producer's record batch: tansu, unlike Kafka, skips the rest of a batch when a
/// fetch starts in its middle, and a partition handed over after such a commit would lose it.
pub fn write_config(dir: &Path, prefix: &str) -> PathBuf {
    let path = dir.join("mailpipe.toml");
    std::fs::write(
        &path,
        format!(
            "[bus]\nbackend = \"kafka\"\nbrokers = \"unset\"\ntopic_prefix = \"{prefix}\"\npartitions = 4\n\
             [bus.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [store]\nbackend = \"clickhouse\"\nurl = \"http://unset\"\n\
             [processor]\nbatch_max = 100000\nflush_interval_ms = 100\n"
        ),
    )
    .unwrap();
    path
}

/// Environment of a `mailpipe` role on Kafka and ClickHouse, listening on `port`.
pub fn role_env(cmd: &mut Command, kafka: &Kafka, ch: &ClickHouse, database: &str, data: &Path, config: &Path, port: u16) {
    cmd.env("MAILPIPE_CONFIG", config)
        .env("MAILPIPE__DATA_DIR", data)
        .env("MAILPIPE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("MAILPIPE__BUS__BROKERS", kafka.brokers())
        .env("MAILPIPE__STORE__URL", ch.url())
        .env("MAILPIPE__STORE__DATABASE", database)
        .env("RUST_LOG", std::env::var("MAILPIPE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
}

/// A `mailpipe process` instance, not waited for.
pub fn spawn_process(kafka: &Kafka, ch: &ClickHouse, database: &str, dir: &Path, config: &Path) -> Child {
    let mut cmd = Command::new(binary());
    cmd.arg("process");
    role_env(&mut cmd, kafka, ch, database, dir, config, free_port());
    cmd.spawn().unwrap()
}

/// Spawns one role on a free port; returns the child and its base URL once `/readyz` answers.
pub async fn spawn_role(role: &str, kafka: &Kafka, ch: &ClickHouse, database: &str, dir: &Path, config: &Path) -> (Child, String) {
    spawn_role_on(free_port(), role, kafka, ch, database, dir, config).await
}

/// The same on `port` (a role restarted where its clients expect it).
pub async fn spawn_role_on(port: u16, role: &str, kafka: &Kafka, ch: &ClickHouse, database: &str, dir: &Path, config: &Path) -> (Child, String) {
    let mut cmd = Command::new(binary());
    cmd.arg(role);
    role_env(&mut cmd, kafka, ch, database, dir, config, port);
    let child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_ok(&format!("{base}/readyz"), Duration::from_secs(30)).await;
    (child, base)
}
