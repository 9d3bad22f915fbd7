//! The fault suite: each scenario starts the real binary and real servers, sends a sending
//! node's traffic (batches of `sent` events, each batch retried until it is acknowledged),
//! injects one fault, heals it, and reports one row: events acknowledged, stored, lost,
//! duplicated, how long after the heal the edge acknowledged again and the store had caught up
//! with everything acknowledged before it, and the peak lag (acknowledged, not yet stored).
//!
//! `cargo run --release -p mailpipe-tests --bin chaos -- [--long] [FAULT...]` prints the table
//! (`--long`: the outages of the reliability issue, 60 s and 10 min); `tests/chaos.rs` runs the
//! short ones as tests. Stored is counted from what the store holds (the Parquet files after a
//! clean stop, ClickHouse's `events` table), per event, not from its own counters.

use crate::roles::{spawn_role_on, write_config};
use crate::servers::{free_port, signal, ClickHouse, Kafka};
use crate::{binary, fill, terminate, tool, wait_for_ok, Tmpfs};
use mailpipe_store::clickhouse::{ClickHouseEventStore, ClickHouseStoreConfig};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events per request.
const BATCH: u64 = 100;
/// The sending nodes (concurrent clients).
const CLIENTS: u64 = 2;
/// The libfaketime of Debian's `faketime` package (`tests/run.sh` installs it).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillServe,
    DiskFull,
    ClockBack,
    KillIngest,
    KillProcess,
    KillQuery,
    BrokerStalled,
    ClickHouseDown,
    ProcessorPaused,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::KillServe,
        Fault::DiskFull,
        Fault::ClockBack,
        Fault::KillIngest,
        Fault::KillProcess,
        Fault::KillQuery,
        Fault::BrokerStalled,
        Fault::ClickHouseDown,
        Fault::ProcessorPaused,
    ];

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillServe => "kill-serve",
            Fault::DiskFull => "disk-full",
            Fault::ClockBack => "clock-back",
            Fault::KillIngest => "kill-ingest",
            Fault::KillProcess => "kill-process",
            Fault::KillQuery => "kill-query",
            Fault::BrokerStalled => "broker-stalled",
            Fault::ClickHouseDown => "clickhouse-down",
            Fault::ProcessorPaused => "processor-paused",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    fn embedded(self) -> bool {
        matches!(self, Fault::KillServe | Fault::DiskFull | Fault::ClockBack)
    }

    /// How long the fault lasts: short for the test command, the figures with `long`.
    pub fn lasts(self, long: bool) -> Duration {
        let s = match (self, long) {
            (Fault::KillServe | Fault::KillIngest | Fault::KillProcess | Fault::KillQuery, _) => 1,
            (Fault::ClockBack, _) => 0,
            (Fault::DiskFull | Fault::BrokerStalled | Fault::ClickHouseDown, false) => 5,
            (Fault::DiskFull | Fault::BrokerStalled | Fault::ClickHouseDown, true) => 60,
            (Fault::ProcessorPaused, false) => 20,
            (Fault::ProcessorPaused, true) => 600,
        };
        Duration::from_secs(s)
    }

    fn describe(self, lasts: Duration) -> String {
        let s = lasts.as_secs();
        match self {
            Fault::KillServe => format!("kill -9 serve, restarted after {s} s"),
            Fault::DiskFull => format!("disk full for {s} s, then freed"),
            Fault::ClockBack => "clock stepped back 5 min".into(),
            Fault::KillIngest => format!("kill -9 ingest, restarted after {s} s"),
            Fault::KillProcess => format!("kill -9 process, restarted after {s} s"),
            Fault::KillQuery => format!("kill -9 query, restarted after {s} s"),
            Fault::BrokerStalled => format!("broker stalled (SIGSTOP) {s} s"),
            Fault::ClickHouseDown => format!("ClickHouse stopped {s} s"),
            Fault::ProcessorPaused => format!("processor paused (SIGSTOP) {s} s"),
        }
    }
}

/// One scenario's outcome.
#[derive(Debug)]
pub struct Row {
    pub fault: String,
    pub backend: &'static str,
    pub acknowledged: u64,
    pub stored: u64,
    /// Acknowledged and not stored.
    pub lost: u64,
    /// Stored rows beyond one per event.
    pub duplicated: u64,
    /// Stored events no client ever sent (must be 0 too).
    pub unexpected: u64,
    /// From the heal until the edge acknowledged again (0 when it never stopped).
    pub acking_again: Duration,
    /// From the heal until everything acknowledged before it was stored.
    pub caught_up: Option<Duration>,
    /// The most events acknowledged and not yet stored at once.
    pub peak_lag: u64,
    /// Events stored per second between the heal and catching up, after a backlog of at least
    /// 10,000 events.
    pub catch_up_rate: Option<f64>,
    /// What the store answered at the end (the overview's sends for today, embedded; rows in
    /// ClickHouse), to compare with `stored`.
    pub counted: Option<u64>,
    /// From the earliest to the latest event time stored (embedded): about the traffic's
    /// duration, or 5 minutes more when the clock stepped back.
    pub span: Option<Duration>,
}

impl Row {
    pub const HEADER: &'static str = "| fault | backend | acknowledged | stored | lost | duplicated | acking again | caught up | peak lag | catch-up |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|";

    pub fn line(&self) -> String {
        let caught = self.caught_up.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        let again = if self.acking_again == Duration::MAX { "never".into() } else { format!("{:.2} s", self.acking_again.as_secs_f64()) };
        let rate = self.catch_up_rate.map_or("".into(), |r| format!("{r:.0} events/s"));
        format!(
            "| {} | {} | {} | {} | {} | {} | {again} | {caught} | {} | {rate} |",
            self.fault, self.backend, self.acknowledged, self.stored, self.lost, self.duplicated, self.peak_lag
        )
    }
}

/// The sending nodes: `CLIENTS` tasks, each posting a batch every `CLIENTS * BATCH / rate`
/// seconds and retrying a batch that was not acknowledged (after 100 ms) until it is.
struct Traffic {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    log: Arc<Mutex<Log>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Log {
    /// First event number of each batch tried, and whether it was acknowledged.
    batches: HashMap<u64, bool>,
    acks: Vec<Instant>,
}

fn batch(first: u64) -> serde_json::Value {
    serde_json::Value::Array(
        (first..first + BATCH)
            .map(|i| serde_json::json!({"type": "sent", "campaign": "chaos", "message_id": format!("<{i}@chaos>"), "recipient": format!("r{}@gmail.com", i % 5000)}))
            .collect(),
    )
}

impl Traffic {
    fn start(edge: String, key: String, rate: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Log::default()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let every = Duration::from_secs_f64((CLIENTS * BATCH) as f64 / rate as f64);
        let clients = (0..CLIENTS)
            .map(|c| {
                let (stop, acked, log, http, edge, key) = (stop.clone(), acked.clone(), log.clone(), http.clone(), edge.clone(), key.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut b = c;
                    'batches: while !stop.load(Ordering::SeqCst) {
                        tick.tick().await;
                        let first = b * BATCH;
                        log.lock().unwrap().batches.insert(first, false);
                        let body = batch(first);
                        loop {
                            let res = http.post(format!("{edge}/v1/events")).bearer_auth(&key).json(&body).send().await;
                            if res.is_ok_and(|r| r.status() == 202) {
                                let mut log = log.lock().unwrap();
                                log.batches.insert(first, true);
                                log.acks.push(Instant::now());
                                acked.fetch_add(BATCH, Ordering::SeqCst);
                                break;
                            }
                            if stop.load(Ordering::SeqCst) {
                                break 'batches;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        b += CLIENTS;
                    }
                })
            })
            .collect();
        Traffic { stop, acked, log, clients }
    }

    async fn stop(self) -> Log {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        Arc::try_unwrap(self.log).ok().unwrap().into_inner().unwrap()
    }
}

/// How many events the store holds now, as cheaply as it can say (for the lag).
#[derive(Clone)]
enum Probe {
    /// `GET /v1/stats/overview` of the embedded server.
    Overview { base: String, key: String },
    ClickHouse(Arc<ClickHouseEventStore>),
}

impl Probe {
    async fn stored(&self) -> Option<u64> {
        match self {
            Probe::Overview { base, key } => {
                let today = chrono::Utc::now().date_naive();
                let url = format!("{base}/v1/stats/overview?from={}&to={}", today.pred_opt()?, today.succ_opt()?);
                let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
                let res = http.get(url).bearer_auth(key).send().await.ok()?;
                let body: serde_json::Value = res.json().await.ok()?;
                body["totals"]["sent"].as_u64()
            }
            Probe::ClickHouse(store) => tokio::time::timeout(Duration::from_secs(2), store.counts()).await.ok()?.ok().map(|c| c.0),
        }
    }
}

/// (when, acknowledged, stored) every 250 ms.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, u64, Option<u64>)>>,
}

impl Sampler {
    fn start(probe: Probe, acked: Arc<AtomicU64>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let at = Instant::now();
                let acked = acked.load(Ordering::SeqCst);
                samples.push((at, acked, probe.stored().await));
                tokio::time::sleep(Duration::from_millis(250).saturating_sub(at.elapsed())).await;
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> Vec<(Instant, u64, Option<u64>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// `mailpipe serve` on a data directory of its own (on a 256 MiB tmpfs for the full disk, under
/// libfaketime for the clock step).
struct Embedded {
    root: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    child: Option<Child>,
    clock: Option<PathBuf>,
    filler: Option<PathBuf>,
    _mounted: Option<Tmpfs>,
}

impl Embedded {
    async fn start(fault: Fault) -> (Embedded, String, String) {
        let root = tempfile::tempdir().unwrap();
        let mut mounted = None;
        if fault == Fault::DiskFull {
            let disk = root.path().join("disk");
            std::fs::create_dir(&disk).unwrap();
            mounted = Some(Tmpfs::mount(&disk, "256m"));
        }
        let data = root.path().join("disk/data");
        let clock = (fault == Fault::ClockBack).then(|| {
            assert!(Path::new(FAKETIME).exists(), "{FAKETIME} is missing: install Debian's faketime (tests/run.sh does)");
            let file = root.path().join("faketime");
            std::fs::write(&file, "+0\n").unwrap();
            file
        });
        tool(&data, &["tenants", "create", "chaos"]);
        let write = tool(&data, &["keys", "create", "--tenant", "chaos", "--scope", "events:write", "--tier", "enterprise"]).trim().to_string();
        let read = tool(&data, &["keys", "create", "--tenant", "chaos", "--scope", "stats:read", "--tier", "enterprise"]).trim().to_string();
        let mut e = Embedded { root, data, port: free_port(), child: None, clock, filler: None, _mounted: mounted };
        e.spawn().await;
        (e, write, read)
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env("MAILPIPE__DATA_DIR", &self.data)
            .env("MAILPIPE__HTTP__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("MAILPIPE__PROCESSOR__FLUSH_INTERVAL_MS", "100")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.root.path().join("serve.log")).unwrap());
        if let Some(clock) = &self.clock {
            // The wall clock moves as the file says (re-read every second); timers and
            // intervals keep the real monotonic clock, as they do when a host's clock is stepped.
            cmd.env("LD_PRELOAD", FAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", clock)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        self.child = Some(cmd.spawn().unwrap());
        wait_for_ok(&format!("{}/readyz", self.base()), Duration::from_secs(30)).await;
    }

    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::KillServe => {
                let mut child = self.child.take().unwrap();
                child.kill().unwrap();
                child.wait().unwrap();
            }
            Fault::DiskFull => self.filler = Some(fill(&self.root.path().join("disk"))),
            Fault::ClockBack => std::fs::write(self.clock.as_ref().unwrap(), "-300\n").unwrap(),
            _ => unreachable!("{fault:?} is not an embedded fault"),
        }
    }

    async fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::KillServe => self.spawn().await,
            Fault::DiskFull => std::fs::remove_file(self.filler.take().unwrap()).unwrap(),
            _ => {}
        }
    }

    /// Stops the server cleanly (its tail flushed) and counts the rows of every event in the
    /// Parquet files.
    async fn finish(mut self) -> (HashMap<u64, u64>, Option<Duration>) {
        let status = terminate(self.child.as_mut().unwrap());
        assert!(status.success(), "serve stops cleanly on SIGTERM: {status}");
        let events = self.data.join("store/events");
        let ctx = datafusion::prelude::SessionContext::new();
        let options = datafusion::prelude::ParquetReadOptions::default();
        ctx.register_parquet("e", events.to_str().unwrap(), options).await.unwrap();
        let batches = ctx.sql("SELECT message_id, count(*) FROM e GROUP BY message_id").await.unwrap().collect().await.unwrap();
        let mut rows = HashMap::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                let text = |c: usize| datafusion::arrow::util::display::array_value_to_string(b.column(c), r).unwrap();
                rows.insert(event_number(&text(0)), text(1).parse().unwrap());
            }
        }
        let span = "SELECT date_part('epoch', max(occurred_at)) - date_part('epoch', min(occurred_at)) FROM e";
        let batches = ctx.sql(span).await.unwrap().collect().await.unwrap();
        let span = datafusion::arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap();
        (rows, span.parse::<f64>().ok().map(Duration::from_secs_f64))
    }
}

/// `<17@chaos>` -> 17.
fn event_number(message_id: &str) -> u64 {
    message_id.trim_start_matches('<').split('@').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

/// The three roles on tansu and ClickHouse.
struct Cluster {
    kafka: Kafka,
    ch: ClickHouse,
    dir: tempfile::TempDir,
    config: PathBuf,
    ingest: (Option<Child>, u16),
    process: Option<Child>,
    query: (Option<Child>, u16),
}

const DATABASE: &str = "chaos";

impl Cluster {
    async fn start() -> (Cluster, String, Arc<ClickHouseEventStore>) {
        let kafka = Kafka::start();
        let ch = ClickHouse::start();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "chaos.");
        let store_config = ClickHouseStoreConfig { url: ch.url(), database: DATABASE.into(), user: "default".into(), password: String::new() };
        ClickHouseEventStore::migrate(&store_config).await.unwrap();
        tool(dir.path(), &["tenants", "create", "chaos"]);
        let write = tool(dir.path(), &["keys", "create", "--tenant", "chaos", "--scope", "events:write", "--tier", "enterprise"]).trim().to_string();
        let mut c = Cluster { kafka, ch, dir, config, ingest: (None, free_port()), process: None, query: (None, free_port()) };
        for role in ["ingest", "process", "query"] {
            c.spawn(role).await;
        }
        (c, write, Arc::new(ClickHouseEventStore::new(&store_config)))
    }

    fn edge(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingest.1)
    }

    async fn spawn(&mut self, role: &str) {
        let port = match role {
            "ingest" => self.ingest.1,
            "query" => self.query.1,
            _ => free_port(),
        };
        let (child, _) = spawn_role_on(port, role, &self.kafka, &self.ch, DATABASE, self.dir.path(), &self.config).await;
        *self.child(role) = Some(child);
    }

    fn child(&mut self, role: &str) -> &mut Option<Child> {
        match role {
            "ingest" => &mut self.ingest.0,
            "query" => &mut self.query.0,
            _ => &mut self.process,
        }
    }

    fn role(fault: Fault) -> &'static str {
        match fault {
            Fault::KillIngest => "ingest",
            Fault::KillQuery => "query",
            _ => "process",
        }
    }

    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::KillIngest | Fault::KillProcess | Fault::KillQuery => {
                let mut child = self.child(Cluster::role(fault)).take().unwrap();
                child.kill().unwrap();
                child.wait().unwrap();
            }
            Fault::BrokerStalled => self.kafka.pause(),
            Fault::ClickHouseDown => self.ch.stop(),
            Fault::ProcessorPaused => signal(self.process.as_ref().unwrap(), "STOP"),
            _ => unreachable!("{fault:?} is not a Kafka + ClickHouse fault"),
        }
    }

    async fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::KillIngest | Fault::KillProcess | Fault::KillQuery => self.spawn(Cluster::role(fault)).await,
            Fault::BrokerStalled => self.kafka.resume(),
            Fault::ClickHouseDown => self.ch.start_again(),
            Fault::ProcessorPaused => signal(self.process.as_ref().unwrap(), "CONT"),
            _ => {}
        }
    }

    /// Stops every role cleanly and counts the rows of every event in ClickHouse.
    async fn finish(mut self) -> (HashMap<u64, u64>, Option<Duration>) {
        for role in ["ingest", "process", "query"] {
            let status = terminate(self.child(role).as_mut().unwrap());
            assert!(status.success(), "{role} stops cleanly on SIGTERM: {status}");
        }
        let text = self.ch.sql(&format!("SELECT message_id, count() FROM {DATABASE}.events GROUP BY message_id FORMAT TabSeparated"));
        (text.lines().filter_map(|l| l.split_once('\t')).map(|(id, n)| (event_number(id), n.parse().unwrap())).collect(), None)
    }
}

enum Setup {
    Embedded(Embedded),
    Cluster(Cluster),
}

/// Runs one scenario at `rate` events/s: 5 s of traffic, the fault, the heal, 5 s more; then it
/// waits for the store to catch up and counts.
pub async fn run(fault: Fault, long: bool, rate: u64) -> Row {
    run_for(fault, fault.lasts(long), rate, long).await
}

/// The same with the fault lasting `lasts`.
pub async fn run_for(fault: Fault, lasts: Duration, rate: u64, long: bool) -> Row {
    let (mut setup, edge, write, probe) = if fault.embedded() {
        let (e, write, read) = Embedded::start(fault).await;
        let probe = Probe::Overview { base: e.base(), key: read };
        let edge = e.base();
        (Setup::Embedded(e), edge, write, probe)
    } else {
        let (c, write, store) = Cluster::start().await;
        let edge = c.edge();
        (Setup::Cluster(c), edge, write, Probe::ClickHouse(store))
    };
    let traffic = Traffic::start(edge, write, rate);
    let sampler = Sampler::start(probe.clone(), traffic.acked.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;

    match &mut setup {
        Setup::Embedded(e) => e.inject(fault).await,
        Setup::Cluster(c) => c.inject(fault).await,
    }
    tokio::time::sleep(lasts).await;
    let healed = Instant::now();
    match &mut setup {
        Setup::Embedded(e) => e.heal(fault).await,
        Setup::Cluster(c) => c.heal(fault).await,
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = traffic.stop().await;
    let acknowledged: HashSet<u64> = log.batches.iter().filter(|(_, acked)| **acked).flat_map(|(first, _)| *first..first + BATCH).collect();

    // The store catches up: at least everything acknowledged, then still for 2 s.
    let deadline = Instant::now() + Duration::from_secs(if long { 900 } else { 180 });
    let mut still = 0;
    let mut last = None;
    while Instant::now() < deadline && still < 8 {
        let now = probe.stored().await;
        still = if now.is_some() && now == last && now >= Some(acknowledged.len() as u64) { still + 1 } else { 0 };
        last = now;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let samples = sampler.stop().await;
    let counted = last;
    let (rows, span) = match setup {
        Setup::Embedded(e) => e.finish().await,
        Setup::Cluster(c) => c.finish().await,
    };

    let tried: HashSet<u64> = log.batches.keys().flat_map(|first| *first..first + BATCH).collect();
    let acked_before_heal = samples.iter().take_while(|s| s.0 < healed).last().map_or(0, |s| s.1);
    let stored_at_heal = samples.iter().take_while(|s| s.0 < healed).filter_map(|s| s.2).last().unwrap_or(0);
    let caught = samples.iter().find(|s| s.0 >= healed && s.2.is_some_and(|n| n >= acked_before_heal));
    let caught_up = caught.map(|s| s.0 - healed);
    // Only a backlog worth the name says how fast the store catches up.
    let backlog = acked_before_heal.saturating_sub(stored_at_heal);
    let catch_up_rate = caught
        .filter(|s| backlog >= 10_000 && s.0 > healed)
        .map(|s| s.2.unwrap().saturating_sub(stored_at_heal) as f64 / (s.0 - healed).as_secs_f64());
    let stopped_before_heal = !log.acks.iter().any(|t| *t < healed && *t + Duration::from_secs(1) >= healed);
    let acking_again = match log.acks.iter().find(|t| **t >= healed) {
        Some(t) if stopped_before_heal => *t - healed,
        Some(_) => Duration::ZERO,
        None => Duration::MAX,
    };
    Row {
        fault: fault.describe(lasts),
        backend: if fault.embedded() { "embedded" } else { "Kafka + ClickHouse" },
        acknowledged: acknowledged.len() as u64,
        stored: rows.len() as u64,
        lost: acknowledged.iter().filter(|n| !rows.contains_key(n)).count() as u64,
        duplicated: rows.values().map(|n| n.saturating_sub(1)).sum(),
        unexpected: rows.keys().filter(|n| !tried.contains(n)).count() as u64,
        acking_again,
        caught_up,
        peak_lag: samples.iter().filter_map(|s| Some(s.1.saturating_sub(s.2?))).max().unwrap_or(0),
        catch_up_rate,
        counted,
        span,
    }
}
