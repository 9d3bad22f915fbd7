//! `bench soak`: `serve` (every role, embedded bus and store, in this process) at a steady mixed
//! load for a long time, one row a minute: the load reached, resident memory, open file
//! descriptors, disk used, how far the store lags behind the edge (p99 of received to
//! queryable over that minute) and p99 request latency per kind. At the end: what was
//! acknowledged against what was stored. The load generator runs in the same process (its
//! share of memory is small and constant: requests in flight are bounded).

use super::{lag_quantiles, percentile, rss_bytes};
use crate::{telemetry, App};
use anyhow::Context;
use mailpipe_config::Config;
use mailpipe_tokens::{Claims, Kind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests of one kind: their latencies this minute, and what was acknowledged.
#[derive(Default)]
struct Kinds {
    latencies: [Mutex<Vec<f64>>; 3],
    /// Reported events answered 202, hits answered 200, inbound messages answered 202.
    acknowledged: [AtomicU64; 3],
    failed: AtomicU64,
}

const EVENTS: usize = 0;
const HITS: usize = 1;
const INBOUND: usize = 2;

pub async fn soak(rate: u64, minutes: u64, dir: PathBuf, retention: Duration, segment_bytes: u64) -> anyhow::Result<()> {
    telemetry::metrics();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let mut config = Config::default();
    config.data_dir = dir.clone();
    config.bus = mailpipe_config::BusConfig::Embedded { retention, segment_bytes };
    let bus_dir = config.bus_dir();
    let app = App::open(config).await?;
    app.registry.create_tenant("soak")?;
    let mut new = mailpipe_tenants::NewKey::new("soak", &[mailpipe_tenants::Scope::EventsWrite, mailpipe_tenants::Scope::InboundWrite]);
    new.rate_limit_per_minute = Some(u32::MAX / 2);
    let key = app.registry.create_api_key(new)?;
    let registry = app.registry.clone();
    let running = app.start(tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
    let base = format!("http://{}", running.addr);
    // A click answers with a redirect to the link, which is not followed.
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).redirect(reqwest::redirect::Policy::none()).build()?;
    let kinds = Arc::new(Kinds::default());

    // Every 10 ms: a batch of reported events (a send of each new message, the delivery or
    // bounce of an earlier one), pixel hits and clicks on those messages, now and then a DSN.
    // Of `rate` events a second, 60% are reported, 35% hits, 5% inbound mail.
    let per_tick = |share: f64| (rate as f64 * share / 100.0).max(0.0);
    let (reported, hits, inbound) = (per_tick(0.60), per_tick(0.35), per_tick(0.05));
    println!(
        "soak: {rate} events/s for {minutes} min on `serve` (embedded) in {}, bus retention {}: per second {:.0} reported (sent, delivered, bounced), {:.0} open and click hits, {:.0} DSNs",
        dir.display(), humantime::format_duration(retention), reported * 100.0, hits * 100.0, inbound * 100.0
    );
    println!("{:>4} {:>8} {:>8} {:>5} {:>9} {:>8} {:>13} {:>28} {:>7}", "min", "events/s", "RSS MiB", "fds", "disk MiB", "bus MiB", "store lag p99", "p99 ms events/hits/inbound", "failed");
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Requests run as tasks of their own (their latency is theirs, not the loop's), at most
    // `INFLIGHT` at once.
    let inflight = Arc::new(tokio::sync::Semaphore::new(INFLIGHT));
    let (mut owed, mut message, mut minute) = ([0.0f64; 3], 0u64, 1u64);
    let mut lag_before = String::new();
    let mut acked_before = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        for (owe, add) in owed.iter_mut().zip([reported, hits, inbound]) {
            *owe += add;
        }
        // Reported events: one batch a tick.
        let n = owed[EVENTS] as u64;
        owed[EVENTS] -= n as f64;
        if n > 0 {
            let mut batch = Vec::with_capacity(n as usize);
            for _ in 0..n {
                message += 1;
                let m = message;
                let (kind, of) = match m % 3 {
                    0 => ("sent", m),
                    1 => (if m % 50 == 1 { "bounced" } else { "delivered" }, m - 1),
                    _ => ("sent", m),
                };
                let mut e = serde_json::json!({"type": kind, "campaign": format!("soak-{}", of / 100_000), "message_id": format!("<{of}@soak>"), "recipient": format!("r{of}@example.com")});
                if kind == "bounced" {
                    e["bounce_class"] = "soft".into();
                    e["status"] = "4.2.2".into();
                }
                batch.push(e);
            }
            let request = client.post(format!("{base}/v1/events")).bearer_auth(&key).json(&batch);
            spawn(&inflight, send(request, kinds.clone(), EVENTS, n)).await;
        }
        let n = owed[HITS] as u64;
        owed[HITS] -= n as f64;
        for h in 0..n {
            // A message sent a little earlier (sends are the ids that are multiples of 3).
            let of = (message.saturating_sub(h * 7 % 5000) / 3 * 3).max(3);
            let kind = if h % 5 == 4 { Kind::Click } else { Kind::Open };
            let token = registry.mint(Claims {
                kind,
                key_id: String::new(),
                tenant: "soak".into(),
                campaign: format!("soak-{}", of / 100_000),
                variant: String::new(),
                message_id: format!("<{of}@soak>"),
                recipient: format!("r{of}@example.com"),
                link: if kind == Kind::Click { "https://example.com/offer".into() } else { String::new() },
            })?;
            let request = client.get(format!("{base}{}{token}", kind.path_prefix()));
            spawn(&inflight, send(request, kinds.clone(), HITS, 1)).await;
        }
        let n = owed[INBOUND] as u64;
        owed[INBOUND] -= n as f64;
        for _ in 0..n {
            let of = (message.saturating_sub(300) / 3 * 3).max(3);
            let dsn = format!(
                "From: MAILER-DAEMON@mx.example.com\nTo: bounces@soak.example\nSubject: Undelivered Mail Returned to Sender\nMessage-ID: <dsn-{message}-{}@mx.example.com>\n\
                 MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
                 --b\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n\
                 --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; r{of}@example.com\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\n\n\
                 --b\nContent-Type: text/rfc822-headers\n\nMessage-ID: <{of}@soak>\nTo: r{of}@example.com\n\n--b--\n",
                started.elapsed().as_nanos()
            );
            let request = client.post(format!("{base}/v1/inbound")).bearer_auth(&key).header("content-type", "message/rfc822").body(dsn);
            spawn(&inflight, send(request, kinds.clone(), INBOUND, 1)).await;
        }
        if started.elapsed() >= Duration::from_secs(minute * 60) {
            let metrics = telemetry::render_metrics();
            let acked: u64 = kinds.acknowledged.iter().map(|a| a.load(Ordering::Relaxed)).sum();
            let p99 = |k: usize| {
                let mut l = std::mem::take(&mut *kinds.latencies[k].lock().unwrap());
                l.sort_by(f64::total_cmp);
                percentile(&l, 0.99) * 1000.0
            };
            println!(
                "{minute:>4} {:>8.0} {:>8.0} {:>5} {:>9.1} {:>8.1} {:>11.0}ms {:>28} {:>7}",
                (acked - acked_before) as f64 / 60.0,
                rss_bytes() as f64 / (1 << 20) as f64,
                open_fds(),
                disk_bytes(&dir) as f64 / (1 << 20) as f64,
                disk_bytes(&bus_dir) as f64 / (1 << 20) as f64,
                minute_lag_p99(&lag_before, &metrics) * 1000.0,
                format!("{:.1}/{:.1}/{:.1}", p99(EVENTS), p99(HITS), p99(INBOUND)),
                kinds.failed.load(Ordering::Relaxed)
            );
            (lag_before, acked_before, minute) = (metrics, acked, minute + 1);
        }
    }
    drop(inflight.acquire_many(INFLIGHT as u32).await?);
    let [events, hits, inbound] = [EVENTS, HITS, INBOUND].map(|k| kinds.acknowledged[k].load(Ordering::Relaxed));
    // A DSN is one bounce event once classified; every acknowledged event and every hit not
    // counted as dropped is one row.
    let dropped = metric_sum(&telemetry::render_metrics(), "mailpipe_ingest_hits_dropped_total") as u64;
    let expected = events + hits - dropped + inbound;
    let stored = running.wait_for_events(expected as usize, Duration::from_secs(120)).await;
    let count = running.app.store.count().await?;
    println!(
        "acknowledged: {events} reported events, {hits} hits, {inbound} DSNs = {expected} events; stored {count} ({}); hits answered but dropped (counted): {dropped}; failed requests: {}",
        if stored { "all of them" } else { "short after 120 s" },
        kinds.failed.load(Ordering::Relaxed)
    );
    running.shutdown().await?;
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}

const INFLIGHT: usize = 512;

async fn spawn(inflight: &Arc<tokio::sync::Semaphore>, request: impl std::future::Future<Output = ()> + Send + 'static) {
    let permit = inflight.clone().acquire_owned().await.expect("the semaphore is never closed");
    tokio::spawn(async move {
        request.await;
        drop(permit);
    });
}

async fn send(request: reqwest::RequestBuilder, kinds: Arc<Kinds>, kind: usize, events: u64) {
    let t = Instant::now();
    match request.send().await {
        Ok(res) if res.status().is_success() || res.status().is_redirection() => {
            kinds.latencies[kind].lock().unwrap().push(t.elapsed().as_secs_f64());
            kinds.acknowledged[kind].fetch_add(events, Ordering::Relaxed);
        }
        _ => {
            kinds.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// p99 of the end-to-end lag histogram over what was observed between two renderings.
fn minute_lag_p99(before: &str, now: &str) -> f64 {
    let buckets = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| l.starts_with("mailpipe_store_end_to_end_lag_seconds_bucket"))
            .filter_map(|l| Some((l.rsplit_once(' ')?.0.to_string(), l.rsplit(' ').next()?.parse().ok()?)))
            .collect()
    };
    let old = buckets(before);
    let diff: String = buckets(now)
        .into_iter()
        .map(|(name, n)| format!("{name} {}\n", n - old.iter().find(|(o, _)| *o == name).map_or(0.0, |o| o.1)))
        .collect();
    lag_quantiles(&diff).1
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}
