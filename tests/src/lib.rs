//! Helpers for the end-to-end tests: a whole mailpipe in-process on a temporary directory,
//! or the real binary as a child process (for kill -9).

use chrono::Utc;
use mailpipe::{App, Running};
use mailpipe_config::Config;
use mailpipe_tenants::{NewKey, Scope, Tier};
use mailpipe_tokens::{Claims, Kind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub running: Option<Running>,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts every role in-process with tenants `a` and `b`.
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// The same, with `configure` applied to the configuration first.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.data_dir = dir.path().to_path_buf();
        config.processor.flush_interval_ms = 100;
        configure(&mut config);
        let app = App::open(config).await.unwrap();
        for t in ["a", "b"] {
            app.registry.create_tenant(t).unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app.start(listener).await.unwrap();
        let base = format!("http://{}", running.addr);
        Server { running: Some(running), base, dir }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// A key of `tenant` with `scopes` (`events:write,stats:read`), of the enterprise tier so
    /// that only the tests of rate limits meet them.
    pub fn key(&self, tenant: &str, scopes: &str) -> String {
        let mut new = NewKey::new(tenant, &Scope::parse_list(scopes).unwrap());
        new.tier = Tier::Enterprise;
        self.key_with(new)
    }

    pub fn key_with(&self, new: NewKey) -> String {
        self.running().app.registry.create_api_key(new).unwrap()
    }

    pub fn token(&self, kind: Kind, tenant: &str, message_id: &str, link: &str) -> String {
        self.running()
            .app
            .registry
            .mint(Claims {
                kind,
                key_id: String::new(),
                tenant: tenant.into(),
                campaign: "c1".into(),
                variant: "A".into(),
                message_id: message_id.into(),
                recipient: format!("{message_id}@gmail.com"),
                link: link.into(),
            })
            .unwrap()
    }

    /// Waits until the store's event count has stopped moving for 400 ms: everything
    /// published has gone through the classifier and the writer (each hop takes milliseconds;
    /// the margin is for a loaded CI machine).
    pub async fn settle(&self) {
        for _ in 0..100 {
            let before = self.running().app.store.count().await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            if self.running().app.store.count().await.unwrap() == before {
                return;
            }
        }
    }
}

/// `GET /v1/stats/overview` totals for the last two days, with `key`.
pub async fn totals(base: &str, key: &str) -> serde_json::Value {
    let today = Utc::now().date_naive();
    let url = format!("{base}/v1/stats/overview?from={}&to={}", today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let res = reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json::<serde_json::Value>().await.unwrap()["totals"].clone()
}

/// The `mailpipe` binary next to the test executable (built by the same cargo run).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("MAILPIPE_BIN") {
        return p.into();
    }
    // A test runs from target/<profile>/deps, a tool (`chaos`) from target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let dirs = [exe.parent().and_then(Path::parent), exe.parent()];
    let bin = dirs.iter().flatten().map(|d| d.join("mailpipe")).find(|b| b.exists());
    bin.unwrap_or_else(|| panic!("mailpipe not built next to {}; build it with `cargo build --release -p mailpipe`", exe.display()))
}

/// Runs a `mailpipe` tool command on `data_dir` and returns its standard output.
pub fn tool(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(binary()).args(args).env("MAILPIPE__DATA_DIR", data_dir).output().unwrap();
    assert!(out.status.success(), "mailpipe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `mailpipe serve` on `data_dir` and a free port; returns the child and base URL
/// once it answers `/healthz`.
pub async fn spawn_serve(data_dir: &Path, flush_interval_ms: u64) -> (Child, String) {
    spawn_serve_with(data_dir, &[("MAILPIPE__PROCESSOR__FLUSH_INTERVAL_MS", flush_interval_ms.to_string())]).await
}

/// The same, with more settings as environment variables (`MAILPIPE__HTTP__...`).
pub async fn spawn_serve_with(data_dir: &Path, env: &[(&str, String)]) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(binary())
        .arg("serve")
        .env("MAILPIPE__DATA_DIR", data_dir)
        .env("MAILPIPE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_ok(&format!("{base}/healthz"), Duration::from_secs(15)).await;
    (child, base)
}

/// Waits until `url` answers 200.
pub async fn wait_for_ok(url: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = reqwest::get(url).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not answer 200 within {timeout:?}");
}

/// Stops a child as an operator or supervisor does (SIGTERM) and waits for its exit status;
/// a child that has not stopped after a minute (a drain that never ends) fails the test.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not stop within 60 s of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
/// A tmpfs of `size` (`48m`) mounted on `dir` for a full disk, unmounted when dropped; the
/// tests run as root (tests/run.sh).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().is_ok_and(|s| s.success());
        assert!(ok, "mounting a {size} tmpfs on {} for a full disk: run as root (tests/run.sh)", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with one file, until a write fails; returns the file.
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while file.write_all(&chunk).and_then(|_| file.sync_data()).is_ok() {}
    path
}

pub mod chaos;
pub mod fixtures;
pub mod roles;
pub mod servers;
