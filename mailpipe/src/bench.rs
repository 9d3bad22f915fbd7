//! Benchmarks that print figures (never tests: these machines are shared and noisy).
//! `overview`: ingest, store open and resident memory, and overview query latency over HTTP from the rollup on N stored events, next to
//! DataFusion scanning the same raw rows. `guard`: what key, scope and rate-limit checks
//! cost, against the same routes without them. `freshness`: tracking hit to queryable, p50/p99.
//! `production`: Kafka -> processor -> ClickHouse (rows/s, events/s per core, overview
//! latency, and bounce-to-suppressed freshness on `serve` over Kafka and ClickHouse). `suppression`: checks/s at 10 million entries, memory per entry, start-up from
//! the snapshot, bounce-to-suppressed freshness. `soak`: a long steady mixed load, a row a minute. The pixel throughput benchmark against nginx
//! is `tests/bench/pixel.sh`.

use crate::demo::{Generator, Profile};
use crate::{telemetry, App};
use anyhow::Context;
use chrono::{Duration as Days, Utc};
use clap::Subcommand;
use mailpipe_config::Config;
use mailpipe_store::datafusion::{DataFusionEventStore, DataFusionStoreConfig};
use mailpipe_query::dashboards::campaigns::{self, Campaigns};
use mailpipe_query::dashboards::overview::{self, Overview};
use mailpipe_query::dashboards::Dashboard;
use mailpipe_store::{Aggregate, EventStore, Filters, Frame, Grain, Measure};
use mailpipe_tokens::{Claims, Kind};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod soak;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Overview latency on a store of `--events` events (generated once into `--dir`).
    Overview {
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        #[arg(long, default_value = "./bench-data/overview")]
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        queries: usize,
        /// Raw DataFusion scans to run as the reference.
        #[arg(long, default_value_t = 10)]
        scans: usize,
    },
    /// What the guard (API key, scope, rate limit) costs: overview requests/s with and
    /// without it, on the same store, in one run.
    Guard {
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value = "./bench-data/guard")]
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Kafka -> processor -> ClickHouse on running servers (see tests/bench/production.sh), and
    /// acknowledged hard bounce to suppressed on `serve` over them.
    Production {
        /// ClickHouse HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:8123")]
        clickhouse: String,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 300)]
        queries: usize,
        /// Events per store insert (and the store writer's batch_max).
        #[arg(long, default_value_t = 20_000)]
        batch: usize,
    },
    /// The suppression API: start-up from a snapshot of `--entries` suppressed addresses,
    /// memory per entry, checks per second over HTTP in batches of 1,000 (and p99 per batch at
    /// half that load), and how soon an acknowledged hard bounce is suppressed (p50/p99).
    Suppression {
        #[arg(long, default_value_t = 10_000_000)]
        entries: u64,
        #[arg(long, default_value = "./bench-data/suppression")]
        dir: PathBuf,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Hard bounces for the freshness figures.
        #[arg(long, default_value_t = 500)]
        bounces: usize,
    },
    /// Writes the snapshot the suppression benchmark starts from (run by it, in a process of
    /// its own so that its memory does not count).
    #[command(hide = true)]
    SuppressionSnapshot {
        #[arg(long)]
        entries: u64,
        #[arg(long)]
        path: PathBuf,
    },
    /// `serve` at a steady mixed load (reported events, hits, DSNs) for a long time: a row a
    /// minute of memory, descriptors, disk, store lag and p99 latency; acknowledged vs stored.
    Soak {
        /// Events a second, all kinds together.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        #[arg(long, default_value = "./bench-data/soak")]
        dir: PathBuf,
        /// `bus.retention` of the run (`7d` by default, as in production; `2m` shows the bus
        /// log's disk levelling off within a short run).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        bus_retention: std::time::Duration,
        /// `bus.segment_bytes` of the run.
        #[arg(long, default_value_t = 128 << 20)]
        bus_segment_bytes: u64,
    },
    /// Hit-to-queryable latency under a steady stream of open pixel hits.
    Freshness {
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

pub async fn run(command: BenchCommand, _config: Config) -> anyhow::Result<()> {
    match command {
        BenchCommand::Overview { events, dir, queries, scans } => overview(events, dir, queries, scans).await,
        BenchCommand::Guard { events, dir, seconds, rounds, concurrency } => guard_cost(events, dir, seconds, rounds, concurrency).await,
        BenchCommand::Freshness { rate, seconds } => freshness(rate, seconds).await,
        BenchCommand::Soak { rate, minutes, dir, bus_retention, bus_segment_bytes } => soak::soak(rate, minutes, dir, bus_retention, bus_segment_bytes).await,
        BenchCommand::Suppression { entries, dir, seconds, concurrency, bounces } => suppression(entries, dir, seconds, concurrency, bounces).await,
        BenchCommand::SuppressionSnapshot { entries, path } => suppression_snapshot(entries, &path),
        BenchCommand::Production { clickhouse, brokers, events, queries, batch } => production(clickhouse, brokers, events, queries, batch).await,
    }
}

/// The question the overview dashboard asks: daily counts of every kind in a range.
fn overview_aggregate(from: chrono::NaiveDate, to: chrono::NaiveDate, tz: chrono_tz::Tz, campaign: Option<String>) -> Aggregate {
    let measures = Measure::all().into_iter().filter(|m| !m.needs_raw_rows()).collect();
    Aggregate { frame: Some(Frame::new(from, to, tz, Grain::Day)), filters: Filters { campaign, variant: None }, group_by: vec![], measures }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The benchmark store of `events` generated events in `dir` (generated the first time).
async fn bench_store(events: usize, dir: &std::path::Path) -> anyhow::Result<Arc<DataFusionEventStore>> {
    let marker = dir.join(format!("complete-{events}"));
    if !marker.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        let store = DataFusionEventStore::open(DataFusionStoreConfig::new(&dir)).await?;
        let started = Instant::now();
        let cpu = cpu_seconds();
        let mut written = 0;
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let generator = Generator::new(Profile::sized(events), Utc::now());
        let producer = std::thread::spawn(move || generator.run(200_000, |chunk, _| { let _ = tx.blocking_send(chunk); }));
        while let Some(chunk) = rx.recv().await {
            written += store.insert(&chunk).await?;
            store.flush().await?;
            eprint!("\rgenerated and stored {written} events");
        }
        producer.join().map_err(|_| anyhow::anyhow!("generator panicked"))?;
        let cpu = cpu_seconds() - cpu;
        println!(
            "generated and stored {written} events in {:.1} s, {:.0} events per CPU-second (generator included); resident memory {:.0} MiB",
            started.elapsed().as_secs_f64(), written as f64 / cpu, rss_bytes() as f64 / 1048576.0
        );
        std::fs::write(&marker, written.to_string())?;
    }
    let opened = Instant::now();
    let store = Arc::new(DataFusionEventStore::open(DataFusionStoreConfig::new(dir)).await?);
    let stored = store.event_count();
    println!(
        "store: {stored} events in {} files, opened in {:.2} s; resident memory {:.0} MiB",
        store.file_count().await, opened.elapsed().as_secs_f64(), rss_bytes() as f64 / 1048576.0
    );
    Ok(store)
}

/// The benchmark's registry in `dir`, with the demo tenants and a fresh `stats:read` key of
/// acme that no limit stops (the figures are of the store, not of the limit).
fn bench_key(dir: &std::path::Path) -> anyhow::Result<(Arc<mailpipe_tenants::Registry>, String)> {
    let registry = Arc::new(mailpipe_tenants::Registry::open(dir.join("registry.json"))?);
    if registry.tenants().is_empty() {
        for t in crate::demo::DEMO_TENANTS {
            registry.create_tenant(t)?;
        }
    }
    let mut new = mailpipe_tenants::NewKey::new("acme", &[mailpipe_tenants::Scope::StatsRead]);
    new.name = "benchmark".into();
    new.rate_limit_per_minute = Some(u32::MAX);
    let key = registry.create_api_key(new)?;
    Ok((registry, key))
}

/// Serves the query API on `store` behind `guard`, on a free port.
async fn serve_query(store: Arc<DataFusionEventStore>, guard: mailpipe_http::Guard) -> anyhow::Result<std::net::SocketAddr> {
    let router = crate::api::guarded(mailpipe_query::router(Arc::new(mailpipe_query::QueryState { store })), guard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

async fn overview(events: usize, dir: PathBuf, queries: usize, scans: usize) -> anyhow::Result<()> {
    let store = bench_store(events, &dir).await?;
    let (registry, key) = bench_key(&dir)?;
    let addr = serve_query(store.clone(), crate::api::guard(&Config::default(), registry)).await?;

    let campaigns: Vec<String> = Campaigns::answer(store.as_ref(), "acme", campaigns::Params {})
        .await
        .map_err(|e| anyhow::anyhow!("campaigns: {:?}", e.errors))?
        .campaigns
        .into_iter()
        .map(|c| c.campaign)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let today = Utc::now().date_naive();
    let zones = ["UTC", "America/New_York", "Europe/Paris", "Asia/Kolkata"];
    let plan: Vec<(i64, Option<String>, &str)> = (0..queries)
        .map(|_| {
            let days = [7, 30, 90][rng.random_range(0..3)];
            let campaign = (rng.random_bool(0.3) && !campaigns.is_empty()).then(|| campaigns[rng.random_range(0..campaigns.len())].clone());
            (days, campaign, zones[rng.random_range(0..zones.len())])
        })
        .collect();
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut sent_total = 0u64;
    for (days, campaign, tz) in &plan {
        let mut url = format!("http://{addr}/v1/stats/overview?from={}&to={today}&tz={tz}", today - Days::days(days - 1));
        if let Some(c) = campaign {
            url.push_str(&format!("&campaign={c}"));
        }
        let t = Instant::now();
        let body: serde_json::Value = client.get(&url).bearer_auth(&key).send().await?.error_for_status()?.json().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        sent_total += body["totals"]["sent"].as_u64().unwrap_or(0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "overview over HTTP from the rollup ({} queries, 7/30/90 days, all or one campaign, 4 time zones): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms (sent counted: {sent_total})",
        latencies.len(), percentile(&latencies, 0.5), percentile(&latencies, 0.95), percentile(&latencies, 0.99), latencies.last().copied().unwrap_or(f64::NAN)
    );

    let mut campaign_ms = Vec::new();
    for _ in 0..(queries / 3).max(1) {
        let t = Instant::now();
        client.get(format!("http://{addr}/v1/campaigns")).bearer_auth(&key).send().await?.error_for_status()?.bytes().await?;
        campaign_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    campaign_ms.sort_by(f64::total_cmp);
    println!(
        "campaigns over HTTP ({} queries): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms; resident memory after the queries {:.0} MiB",
        campaign_ms.len(), percentile(&campaign_ms, 0.5), percentile(&campaign_ms, 0.95), percentile(&campaign_ms, 0.99), rss_bytes() as f64 / 1048576.0
    );

    let mut scan_ms = Vec::new();
    for (days, campaign, tz) in plan.iter().take(scans) {
        let q = overview_aggregate(today - Days::days(days - 1), today, tz.parse().unwrap_or(chrono_tz::UTC), campaign.clone());
        let t = Instant::now();
        let scanned = store.scan("acme", &q).await?;
        scan_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let rolled = store.aggregate("acme", &q).await?;
        anyhow::ensure!(scanned == rolled, "rollup and raw scan disagree: {rolled:?} vs {scanned:?}");
    }
    scan_ms.sort_by(f64::total_cmp);
    println!(
        "reference: the same totals by a DataFusion scan of raw Parquet rows ({} queries, answers identical): p50 {:.0} ms, p95 {:.0} ms",
        scan_ms.len(), percentile(&scan_ms, 0.5), percentile(&scan_ms, 0.95)
    );
    Ok(())
}

/// Requests a second of `GET /v1/stats/overview` (30 days, UTC) from the guarded API and from
/// the same routes with nothing checked, in alternating rounds of `seconds`.
async fn guard_cost(events: usize, dir: PathBuf, seconds: u64, rounds: usize, concurrency: usize) -> anyhow::Result<()> {
    let store = bench_store(events, &dir).await?;
    let (registry, key) = bench_key(&dir)?;
    let principal = registry.authenticate(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let guarded = serve_query(store.clone(), crate::api::guard(&Config::default(), registry.clone())).await?;
    let unchecked = serve_query(store, crate::api::guard(&Config::default(), registry).unchecked(principal)).await?;
    let client = reqwest::Client::new();
    let today = Utc::now().date_naive();
    let path = format!("/v1/stats/overview?from={}&to={today}", today - Days::days(29));
    let round = |addr: std::net::SocketAddr| {
        let (client, key, url) = (client.clone(), key.clone(), format!("http://{addr}{path}"));
        async move {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let workers = (0..concurrency).map(|_| {
                let (client, key, url) = (client.clone(), key.clone(), url.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        client.get(&url).bearer_auth(&key).send().await?.error_for_status()?.bytes().await?;
                        n += 1;
                    }
                    anyhow::Ok(n)
                })
            });
            let mut total = 0;
            for w in futures::future::join_all(workers).await {
                total += w??;
            }
            anyhow::Ok(total as f64 / seconds as f64)
        }
    };
    round(guarded).await?; // warm both
    round(unchecked).await?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with.push(round(guarded).await?);
        without.push(round(unchecked).await?);
    }
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    let (w, wo) = (percentile(&with, 0.5), percentile(&without, 0.5));
    println!(
        "GET /v1/stats/overview (30 days), {concurrency} connections, {rounds} alternating rounds of {seconds} s: \
         with key, scope and rate limit {w:.0} req/s (min {:.0}, max {:.0}); without {wo:.0} req/s (min {:.0}, max {:.0}); \
         cost {:.1}% of requests/s",
        with[0], with[rounds - 1], without[0], without[rounds - 1], (1.0 - w / wo) * 100.0
    );
    Ok(())
}

async fn freshness(rate: u64, seconds: u64) -> anyhow::Result<()> {
    telemetry::metrics();
    let dir = tempfile_dir()?;
    let mut config = Config::default();
    config.data_dir = dir.clone();
    let app = App::open(config).await?;
    app.registry.create_tenant("bench")?;
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            app.registry.mint(Claims {
                kind: Kind::Open,
                key_id: String::new(),
                tenant: "bench".into(),
                campaign: "fresh".into(),
                variant: String::new(),
                message_id: format!("<{i}@bench>"),
                recipient: format!("r{i}@gmail.com"),
                link: String::new(),
            })
        })
        .collect::<Result<_, _>>()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = app.start(listener).await?;
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let total = rate * seconds;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut inflight = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for i in 0..total {
        tick.tick().await;
        let url = format!("{base}/o/{}", tokens[i as usize % tokens.len()]);
        let client = client.clone();
        inflight.push(async move { client.get(url).send().await.map(|r| r.status().is_success()) });
        while inflight.len() > 256 {
            inflight.next().await;
        }
    }
    while inflight.next().await.is_some() {}
    let sent_in = started.elapsed().as_secs_f64();
    running.wait_for_events(total as usize, Duration::from_secs(30)).await;
    let (p50, p99, count) = lag_quantiles(&telemetry::render_metrics());
    println!(
        "freshness: {total} open hits at {:.0}/s; hit to queryable (from the lag histogram, {count} samples): p50 {:.0} ms, p99 {:.0} ms",
        total as f64 / sent_in, p50 * 1000.0, p99 * 1000.0
    );
    running.shutdown().await?;
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mailpipe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// p50 and p99 of the end-to-end lag histogram, interpolated within buckets.
fn lag_quantiles(text: &str) -> (f64, f64, f64) {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("mailpipe_store_end_to_end_lag_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last().map_or(0.0, |b| b.1);
    let q = |p: f64| {
        let target = p * count;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &buckets {
            if c >= target {
                if !le.is_finite() {
                    return prev.0;
                }
                let frac = if c > prev.1 { (target - prev.1) / (c - prev.1) } else { 0.0 };
                return prev.0 + frac * (le - prev.0);
            }
            prev = (le, c);
        }
        f64::NAN
    };
    (q(0.5), q(0.99), count)
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Inserts `events` in batches of `batch`; returns the events stored and rows per second.
async fn timed_inserts(store: &dyn EventStore, events: &[mailpipe_schemas::Event], batch: usize) -> anyhow::Result<(usize, f64)> {
    let started = Instant::now();
    let mut stored = 0;
    for chunk in events.chunks(batch) {
        stored += store.insert(chunk).await?;
    }
    Ok((stored, stored as f64 / started.elapsed().as_secs_f64()))
}

#[derive(clickhouse::Row, serde::Serialize)]
struct NarrowRow {
    id: u64,
    value: u32,
}

/// Kafka -> processor -> ClickHouse on running servers: rows per second into ClickHouse (full
/// event rows through the store, next to narrow rows through the bare `clickhouse` crate),
/// processor throughput per core, and overview latency from the rollups.
async fn production(clickhouse_url: String, brokers: String, events: usize, queries: usize, batch: usize) -> anyhow::Result<()> {
    use mailpipe_bus::{EventBus, KafkaBusConfig, KafkaEventBus};
    use mailpipe_store::clickhouse::{ClickHouseEventStore, ClickHouseStoreConfig};
    let run = std::process::id();
    let config = ClickHouseStoreConfig {
        url: clickhouse_url.clone(),
        database: format!("bench_{run}"),
        user: "default".into(),
        password: String::new(),
    };
    ClickHouseEventStore::migrate(&config).await?;
    let store = Arc::new(ClickHouseEventStore::new(&config));
    println!("clickhouse {} at {clickhouse_url}, kafka at {brokers}", store.version().await?);

    // Reference: the bare crate inserting narrow rows, in 1M-row inserts.
    let client = clickhouse::Client::default()
        .with_url(&clickhouse_url)
        .with_database(&config.database)
        .with_compression(clickhouse::Compression::None)
        .with_validation(false);
    client.query("CREATE TABLE narrow (id UInt64, value UInt32) ENGINE = MergeTree ORDER BY id").execute().await?;
    let narrow_rows = 5_000_000u64;
    let started = Instant::now();
    for chunk in 0..narrow_rows / 1_000_000 {
        let mut insert = client.insert::<NarrowRow>("narrow").await?;
        for i in 0..1_000_000u64 {
            insert.write(&NarrowRow { id: chunk * 1_000_000 + i, value: i as u32 }).await?;
        }
        insert.end().await?;
    }
    let narrow_rate = narrow_rows as f64 / started.elapsed().as_secs_f64();
    println!("reference: bare clickhouse crate, narrow rows (UInt64, UInt32): {narrow_rate:.0} rows/s");

    // Full event rows through the store: duplicate lookup + one insert per batch.
    let mut generated = Vec::with_capacity(events);
    Generator::new(Profile::sized(events), Utc::now()).run(20_000, |chunk, _| generated.extend(chunk));
    let (stored, rate) = timed_inserts(store.as_ref(), &generated, batch).await?;
    println!(
        "store.insert, full event rows (batches of {batch}, duplicate lookup included): {stored} rows = {rate:.0} rows/s ({:.2}x the narrow reference)",
        rate / narrow_rate
    );
    // Live traffic: the same events as if they were happening now, in time order, a few
    // seconds per batch (the duplicate lookup then reads a few granules).
    let mut live = generated.clone();
    let now = Utc::now();
    for (i, e) in live.iter_mut().enumerate() {
        e.event_id = uuid::Uuid::new_v4();
        e.occurred_at = now + chrono::Duration::milliseconds(i as i64 / 4);
    }
    let (live_stored, rate) = timed_inserts(store.as_ref(), &live, batch).await?;
    println!("store.insert, live-like traffic (the same rows, time-ordered, ~4,000 per second of event time): {live_stored} rows = {rate:.0} rows/s");
    let started = Instant::now();
    for chunk in generated.chunks(batch).take(10) {
        assert_eq!(store.insert(chunk).await?, 0, "a redelivered batch adds nothing");
    }
    println!(
        "store.insert of already-stored batches (the redelivery path): {:.0} rows/s",
        (generated.len().min(10 * batch)) as f64 / started.elapsed().as_secs_f64()
    );

    // Overview latency from the rollups.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let today = Utc::now().date_naive();
    let mut latencies = Vec::with_capacity(queries);
    for _ in 0..queries {
        let tenant = crate::demo::DEMO_TENANTS[rng.random_range(0..3)];
        let days = [7, 30, 90][rng.random_range(0..3)];
        let params = overview::Params { from: Some((today - Days::days(days)).to_string()), to: Some(today.to_string()), campaign: None, tz: Some("Europe/Paris".into()) };
        let started = Instant::now();
        Overview::answer(store.as_ref(), tenant, params).await.map_err(|e| anyhow::anyhow!("overview: {:?}", e.errors))?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "overview dashboard from ClickHouse ({} events stored; {} queries, 7/30/90 days): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        stored,
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
    let mut campaign_ms = Vec::new();
    for i in 0..(queries / 3).max(1) {
        let started = Instant::now();
        Campaigns::answer(store.as_ref(), crate::demo::DEMO_TENANTS[i % 3], campaigns::Params {}).await.map_err(|e| anyhow::anyhow!("campaigns: {:?}", e.errors))?;
        campaign_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    campaign_ms.sort_by(f64::total_cmp);
    println!(
        "campaigns dashboard from ClickHouse ({} queries): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        campaign_ms.len(), percentile(&campaign_ms, 0.5), percentile(&campaign_ms, 0.95), percentile(&campaign_ms, 0.99)
    );

    // The processor: the same events again under new ids, published to Kafka first, then
    // consumed, validated and stored by the store writer.
    for e in &mut generated {
        e.event_id = uuid::Uuid::new_v4();
    }
    let bus = Arc::new(KafkaEventBus::connect(KafkaBusConfig { topic_prefix: format!("bench{run}."), ..KafkaBusConfig::new(&brokers) }).await?);
    let started = Instant::now();
    for chunk in generated.chunks(20_000) {
        mailpipe_ingest::publish(bus.as_ref(), chunk).await?;
    }
    println!("published {} events to kafka in {:.1} s", generated.len(), started.elapsed().as_secs_f64());
    let before = store.count().await?;
    let target = before + generated.len() as u64;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let runner = mailpipe_processors::Runner {
        bus: bus.clone() as Arc<dyn EventBus>,
        store: store.clone(),
        steps: vec![Box::new(mailpipe_processors::Validate)],
        config: mailpipe_processors::RunnerConfig { group: "bench".into(), batch_max: batch, flush_interval: Duration::from_millis(500) },
    };
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let task = tokio::spawn(runner.run(stop_rx));
    while store.count().await? < target {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    stop.send_replace(true);
    task.await??;
    let n = generated.len() as f64;
    println!(
        "processor kafka -> clickhouse: {} events in {secs:.1} s = {:.0} events/s wall; processor CPU {cpu:.1} s = {:.0} events per CPU-second (per core)",
        generated.len(),
        n / secs,
        n / cpu.max(1e-9)
    );

    // What the server itself does with the same full rows, no client and no lookup: INSERT
    // SELECT from a table in memory, into `events` (with its materialized views) and into a
    // copy of it without views.
    client.query(&format!("CREATE TABLE src ENGINE = Memory AS SELECT * FROM events LIMIT {events}")).execute().await?;
    let rows: u64 = client.query("SELECT count() FROM src").fetch_one().await?;
    for table in ["events", "rollup_15m", "message_firsts", "sends"] {
        client.query(&format!("TRUNCATE TABLE {table}")).execute().await?;
    }
    client.query("CREATE TABLE plain AS events").execute().await?;
    let mut ceiling = Vec::new();
    for table in ["events", "plain"] {
        let started = Instant::now();
        client.query(&format!("INSERT INTO {table} SELECT * FROM src")).execute().await?;
        ceiling.push(rows as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "the server alone, INSERT SELECT of {rows} of these rows from memory: into events (4 materialized views) {:.0} rows/s; into a copy without views {:.0} rows/s",
        ceiling[0], ceiling[1]
    );
    kafka_freshness(&clickhouse_url, &config.database, &brokers, 200).await?;
    client.query(&format!("DROP DATABASE IF EXISTS {}", config.database)).execute().await.ok();
    Ok(())
}

/// Posts `bounces` hard bounces one after another to `base` and, after each 202, checks its
/// address until it is suppressed: p50 and p99 of acknowledged to suppressed, in seconds.
async fn bounce_to_suppressed(client: &reqwest::Client, base: &str, key: &str, bounces: usize) -> anyhow::Result<(f64, f64)> {
    let run = std::process::id();
    let mut took = Vec::with_capacity(bounces);
    for i in 0..bounces {
        let address = format!("fresh{i}.{run}@bounce.example");
        let bounce = serde_json::json!([{"type": "bounced", "campaign": "bench", "message_id": format!("<f{i}.{run}@bench>"), "recipient": address, "bounce_class": "hard", "status": "5.1.1"}]);
        let res = client.post(format!("{base}/v1/events")).bearer_auth(key).json(&bounce).send().await?;
        anyhow::ensure!(res.status() == 202, "event answered {}", res.status());
        let acked = Instant::now();
        loop {
            let res = client.post(format!("{base}/v1/suppressions/check")).bearer_auth(key).json(&serde_json::json!({"recipients": [address]})).send().await?;
            anyhow::ensure!(res.status() == 200, "check answered {}", res.status());
            let answer: serde_json::Value = res.json().await?;
            if answer["suppressed"].as_array().is_some_and(|a| !a.is_empty()) {
                took.push(acked.elapsed().as_secs_f64());
                break;
            }
            anyhow::ensure!(acked.elapsed() < Duration::from_secs(30), "{address} not suppressed after 30 s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took.sort_by(f64::total_cmp);
    Ok((percentile(&took, 0.5), percentile(&took, 0.99)))
}

/// `serve` on Kafka and ClickHouse (every role in this process, the suppression writer and the
/// follower of its topic included): acknowledged hard bounce to suppressed.
async fn kafka_freshness(clickhouse_url: &str, database: &str, brokers: &str, bounces: usize) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let file = dir.join("mailpipe.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\n[bus]\nbackend = \"kafka\"\nbrokers = \"{brokers}\"\ntopic_prefix = \"fresh{}.\"\n\
             [store]\nbackend = \"clickhouse\"\nurl = \"{clickhouse_url}\"\ndatabase = \"{database}\"\n",
            dir.display(),
            std::process::id()
        ),
    )?;
    let app = App::open(Config::load(Some(&file))?).await?;
    app.suppressions.state.index.wait_ready().await;
    app.registry.create_tenant(SUPPRESSION_TENANT)?;
    let mut new = mailpipe_tenants::NewKey::new(SUPPRESSION_TENANT, &[mailpipe_tenants::Scope::SuppressionsRead, mailpipe_tenants::Scope::EventsWrite]);
    new.rate_limit_per_minute = Some(u32::MAX / 2);
    let key = app.registry.create_api_key(new)?;
    let running = app.start(tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
    let (p50, p99) = bounce_to_suppressed(&reqwest::Client::new(), &format!("http://{}", running.addr), &key, bounces).await?;
    println!("freshness, kafka + clickhouse (`serve` on them): acknowledged hard bounce to suppressed, {bounces} bounces: p50 {:.1} ms, p99 {:.1} ms", p50 * 1000.0, p99 * 1000.0);
    running.shutdown().await?;
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}

const SUPPRESSION_TENANT: &str = "bench";

/// The `i`th suppressed address of the benchmark (every third one on the marketing stream).
fn suppressed_address(i: u64) -> String {
    format!("user{i}@domain{}.example", i % 5000)
}

/// Fills an index with `entries` suppressed addresses and saves it as a snapshot covering no
/// record of the (empty) topic.
fn suppression_snapshot(entries: u64, path: &std::path::Path) -> anyhow::Result<()> {
    use mailpipe_suppression::entry::{Action, Change, Provenance, Reason};
    let index = mailpipe_suppression::Index::default();
    let at = Utc::now();
    let reasons = [Reason::HardBounce, Reason::Complaint, Reason::Unsubscribe, Reason::Manual];
    for i in 0..entries {
        let address = mailpipe_suppression::Address::parse(&suppressed_address(i)).map_err(anyhow::Error::msg)?;
        let mut entry = mailpipe_suppression::Entry::new(SUPPRESSION_TENANT, address.as_str());
        let reason = reasons[(i % 4) as usize];
        entry.active.push(Change {
            id: uuid::Uuid::from_u128(i as u128),
            action: Action::Suppressed,
            reason,
            stream: (reason == Reason::Unsubscribe).then(|| "marketing".to_string()),
            at,
            expires_at: None,
            doubtful: false,
            provenance: Provenance::default(),
        });
        index.apply(address.key(SUPPRESSION_TENANT), &entry, i * 400, None);
    }
    index.save(path)?;
    Ok(())
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0) * 1024
}

async fn suppression(entries: u64, dir: PathBuf, seconds: u64, concurrency: usize, bounces: usize) -> anyhow::Result<()> {
    telemetry::metrics();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let mut config = Config::default();
    config.data_dir = dir.clone();
    let snapshot = config.suppression_dir().join("serve.snapshot");
    std::fs::create_dir_all(config.suppression_dir())?;
    let started = Instant::now();
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "suppression-snapshot", "--entries", &entries.to_string(), "--path"])
        .arg(&snapshot)
        .status()?;
    anyhow::ensure!(status.success(), "writing the snapshot failed");
    let snapshot_bytes = std::fs::metadata(&snapshot)?.len();
    println!("snapshot of {entries} entries written in {:.1} s ({:.0} MiB)", started.elapsed().as_secs_f64(), snapshot_bytes as f64 / (1 << 20) as f64);

    let before = rss_bytes();
    let started = Instant::now();
    let app = App::open(config).await?;
    app.suppressions.state.index.wait_ready().await;
    let startup = started.elapsed();
    let after = rss_bytes();
    println!(
        "start-up from the snapshot: {:.2} s for {} entries; resident memory {:.0} MiB -> {:.0} MiB: {:.1} bytes per entry",
        startup.as_secs_f64(),
        app.suppressions.state.index.len(),
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        (after.saturating_sub(before)) as f64 / entries.max(1) as f64
    );
    app.registry.create_tenant(SUPPRESSION_TENANT)?;
    let mut new = mailpipe_tenants::NewKey::new(SUPPRESSION_TENANT, &[mailpipe_tenants::Scope::SuppressionsRead, mailpipe_tenants::Scope::EventsWrite]);
    new.rate_limit_per_minute = Some(u32::MAX / 2);
    let key = app.registry.create_api_key(new)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = app.start(listener).await?;
    let url = format!("http://{}/v1/suppressions/check", running.addr);

    // Batches of 1,000: half suppressed addresses (in other spellings), half unknown ones.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bodies: Vec<axum::body::Bytes> = (0..64)
        .map(|_| {
            let recipients: Vec<String> = (0..1000)
                .map(|j| {
                    let i = rng.random_range(0..entries.max(1));
                    if j % 2 == 0 { suppressed_address(i).to_uppercase() } else { format!("someone{i}@elsewhere.example") }
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "recipients": recipients, "stream": "marketing" })).unwrap().into()
        })
        .collect();
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let run = |rate: Option<f64>| {
        let (client, url, key, bodies) = (client.clone(), url.clone(), key.clone(), bodies.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let per_worker = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r));
            let workers: Vec<_> = (0..concurrency)
                .map(|w| {
                    let (client, url, key, bodies) = (client.clone(), url.clone(), key.clone(), bodies.clone());
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        let mut suppressed = 0u64;
                        let mut next = Instant::now();
                        let mut n = w;
                        while Instant::now() < deadline {
                            if let Some(every) = per_worker {
                                tokio::time::sleep_until(next.into()).await;
                                next += every;
                            }
                            let t = Instant::now();
                            let res = client.post(&url).bearer_auth(&key).header("content-type", "application/json").body(bodies[n % bodies.len()].clone()).send().await?;
                            anyhow::ensure!(res.status() == 200, "check answered {}", res.status());
                            let answer: serde_json::Value = res.json().await?;
                            latencies.push(t.elapsed().as_secs_f64());
                            suppressed += answer["suppressed"].as_array().map_or(0, |a| a.len() as u64);
                            n += concurrency;
                        }
                        anyhow::Ok((latencies, suppressed))
                    })
                })
                .collect();
            let started = Instant::now();
            let mut latencies = Vec::new();
            let mut suppressed = 0;
            for w in workers {
                let (l, s) = w.await??;
                latencies.extend(l);
                suppressed += s;
            }
            let secs = started.elapsed().as_secs_f64();
            latencies.sort_by(f64::total_cmp);
            anyhow::Ok((latencies.len() as f64 * 1000.0 / secs, percentile(&latencies, 0.5), percentile(&latencies, 0.99), suppressed, latencies.len()))
        }
    };
    let (rate, p50, p99, suppressed, batches) = run(None).await?;
    println!(
        "checks, {concurrency} connections, batches of 1,000, load generator in this process: {rate:.0} addresses/s; per batch p50 {:.2} ms, p99 {:.2} ms ({suppressed} suppressed of {} checked); resident memory {:.0} MiB",
        p50 * 1000.0, p99 * 1000.0, batches * 1000, rss_bytes() as f64 / (1 << 20) as f64
    );
    let (half, p50, p99, _, _) = run(Some(rate / 2.0 / 1000.0)).await?;
    println!("checks at half that load ({half:.0} addresses/s): per batch p50 {:.2} ms, p99 {:.2} ms", p50 * 1000.0, p99 * 1000.0);

    let (p50, p99) = bounce_to_suppressed(&client, &format!("http://{}", running.addr), &key, bounces).await?;
    println!("freshness, embedded: acknowledged hard bounce to suppressed, {bounces} bounces: p50 {:.1} ms, p99 {:.1} ms", p50 * 1000.0, p99 * 1000.0);
    running.shutdown().await?;
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}
