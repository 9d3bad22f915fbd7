//! Real servers for the integration tests, each private to the test that starts it: a
//! ClickHouse server (Debian's `clickhouse-server`) and a Kafka-protocol broker (tansu), on
//! free ports with their data in a temporary directory. `tests/run.sh` installs both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not start within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find_binary(env: &str, candidates: &[&str], install_hint: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return p.into();
    }
    for c in candidates {
        let p = shellexpand(c);
        if p.exists() {
            return p;
        }
        if let Some(found) = std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(c)).find(|p| p.exists()))
        {
            return found;
        }
    }
    panic!("{} not found (set {env}); {install_hint}", candidates[0]);
}

fn shellexpand(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(p),
    }
}

/// A ClickHouse server of its own.
pub struct ClickHouse {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    tcp_port: u16,
    child: Option<Child>,
}

impl ClickHouse {
    pub fn start() -> ClickHouse {
        let dir = tempfile::tempdir().unwrap();
        let mut ch = ClickHouse { dir, http_port: free_port(), tcp_port: free_port(), child: None };
        ch.write_config();
        ch.spawn();
        ch
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
  <http_port>{}</http_port>
  <tcp_port>{}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"#,
            self.http_port, self.tcp_port
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(self.dir.path().join("config.xml"), config).unwrap();
        std::fs::write(self.dir.path().join("users.xml"), users).unwrap();
    }

    fn spawn(&mut self) {
        let bin = find_binary("CLICKHOUSE_SERVER", &["clickhouse-server", "/usr/sbin/clickhouse-server"], "run tests/run.sh, which installs it");
        let child = Command::new(bin)
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting clickhouse-server");
        self.child = Some(child);
        let ping = format!("127.0.0.1:{}", self.http_port);
        wait_until("clickhouse-server", Duration::from_secs(30), || http_ok(&ping, "/ping"));
    }

    /// Stops the server as an operator's restart does (SIGTERM, wait) and starts it again on
    /// the same data and ports.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// Brings a stopped server back on the same data and ports.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::terminate(&mut child);
        }
    }

    /// Runs one statement over HTTP and returns the answer's text.
    pub fn sql(&self, statement: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--data-binary", statement, &format!("{}/", self.url())])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "clickhouse: {statement}: {text}");
        text
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 12 && buf[..n].starts_with(b"HTTP/1.") && &buf[9..12] == b"200")
}

/// A Kafka-protocol broker of its own (tansu, in memory).
pub struct Kafka {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Kafka {
    pub fn start() -> Kafka {
        let bin = find_binary("TANSU_BIN", &["~/.cache/tansu/bin/tansu", "tansu"], "run tests/run.sh, which builds it");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let listener = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("broker.log")).unwrap()))
            .spawn()
            .expect("starting tansu");
        let addr = format!("127.0.0.1:{port}");
        wait_until("tansu broker", Duration::from_secs(30), || std::net::TcpStream::connect(&addr).is_ok());
        Kafka { port, child, _dir: dir }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self._dir.path().join("broker.log")
    }

    /// Stalls the broker (SIGSTOP): connections stay open and nothing answers, as with a hung
    /// machine. `resume` lets it go on where it was.
    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }
}

/// Sends signal `name` (`STOP`, `CONT`, `KILL`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {}", child.id());
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `../shared/tools/clickhouse-modern-check`, next to the repository.
pub fn modern_check_tool() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../shared/tools/clickhouse-modern-check")
}
