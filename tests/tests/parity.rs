//! The same fixture events through the embedded store (DataFusion) and the ClickHouse store
//! (a real server): every typed query must get the same answer from both. Also: the
//! ClickHouse store is idempotent by event id, keeps tenants apart, and its DDL and query
//! templates run on a modern ClickHouse too.

use chrono::{DateTime, NaiveDate, Utc};
use mailpipe::demo::{Generator, Profile};
use mailpipe_schemas::{BounceClass, Event, EventType};
use mailpipe_store::clickhouse::{Capabilities, ClickHouseEventStore, ClickHouseStoreConfig, MIGRATIONS};
use mailpipe_store::datafusion::{DataFusionEventStore, DataFusionStoreConfig};
use mailpipe_store::{Answer, EventStore, OverviewQuery, Query};
use mailpipe_tests::servers::{modern_check_tool, ClickHouse};
use uuid::Uuid;

fn config(ch: &ClickHouse, database: &str) -> ClickHouseStoreConfig {
    ClickHouseStoreConfig { url: ch.url(), database: database.into(), user: "default".into(), password: String::new() }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Hand-made edge cases the generator does not produce.
fn edge_cases() -> Vec<Event> {
    let id = |n: u128| Uuid::from_u128(0xfeed_0000 + n);
    let ev = |n, t, when: &str, campaign: &str, msg: &str| Event {
        campaign: campaign.into(),
        variant: "B".into(),
        message_id: msg.into(),
        recipient: "edge@example.com".into(),
        ..Event::new(id(n), "acme", t, at(when))
    };
    vec![
        ev(1, EventType::Sent, "2026-05-01T18:10:00Z", "edge", "<e1@x>"),
        // Opens of e1: the earliest arrives last and moves the unique open to its day.
        ev(2, EventType::Open, "2026-05-03T10:00:00Z", "edge", "e1@x"),
        ev(3, EventType::Open, "2026-05-02T10:00:00Z", "edge", "<e1@x>"),
        ev(4, EventType::Open, "2026-05-01T18:20:00Z", "edge", "e1@x"),
        // Either side of midnight in Kathmandu (UTC+5:45).
        ev(5, EventType::Click, "2026-05-01T18:14:59Z", "edge", "e2@x"),
        ev(6, EventType::Click, "2026-05-01T18:15:00Z", "edge", "e3@x"),
        Event { bounce_class: Some(BounceClass::Hard), ..ev(7, EventType::Bounced, "2026-05-02T01:00:00Z", "edge", "e4@x") },
        Event { bounce_class: Some(BounceClass::Soft), ..ev(8, EventType::Bounced, "2026-05-02T01:00:00Z", "edge", "e5@x") },
        Event { revenue_micros: Some(12_340_000), ..ev(9, EventType::Conversion, "2026-05-02T23:59:59Z", "edge", "e1@x") },
        ev(10, EventType::Unsubscribe, "2026-05-02T05:00:00Z", "edge", "e1@x"),
        ev(11, EventType::Unsubscribe, "2026-05-02T06:00:00Z", "edge", "e1@x"),
        ev(12, EventType::Complaint, "2026-05-02T07:00:00Z", "other", "e6@x"),
        // The same id twice: stored and counted once.
        ev(13, EventType::Delivered, "2026-05-01T18:11:00Z", "edge", "e1@x"),
        ev(13, EventType::Delivered, "2026-05-01T18:11:00Z", "edge", "e1@x"),
        Event { tenant: "globex".into(), ..ev(14, EventType::Sent, "2026-05-01T12:00:00Z", "edge", "<e1@x>") },
    ]
}

fn queries(now: NaiveDate) -> Vec<OverviewQuery> {
    let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
    let mut out = Vec::new();
    let ranges = [(d(2026, 5, 1), d(2026, 5, 3)), (now - chrono::Days::new(7), now), (now - chrono::Days::new(90), now), (now, now)];
    let zones = [chrono_tz::UTC, chrono_tz::Asia::Kathmandu, chrono_tz::America::New_York, chrono_tz::Asia::Tokyo];
    for (i, (from, to)) in ranges.into_iter().enumerate() {
        for tz in zones {
            for campaign in [None, Some("edge"), Some("other"), Some("nope")] {
                if i > 0 && campaign.is_some_and(|c| c != "edge") {
                    continue;
                }
                out.push(OverviewQuery { from, to, campaign: campaign.map(String::from), tz });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_answers_every_typed_query_like_the_embedded_store() {
    let ch = ClickHouse::start();
    let cfg = config(&ch, "parity");
    assert_eq!(ClickHouseEventStore::migrate(&cfg).await.unwrap(), vec![1, 2]);
    assert!(ClickHouseEventStore::migrate(&cfg).await.unwrap().is_empty(), "migrations apply once");
    let clickhouse = ClickHouseEventStore::new(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let embedded = DataFusionEventStore::open(DataFusionStoreConfig::new(dir.path())).await.unwrap();

    let now = Utc::now();
    let mut events = edge_cases();
    Generator::new(Profile::sized(20_000), now).run(5_000, |chunk, _| events.extend(chunk));
    // Each batch goes in, and the first ones go in again (a redelivery after a crash).
    let batches: Vec<&[Event]> = events.chunks(2_000).collect();
    for batch in batches.iter().chain(batches.iter().take(3)) {
        let a = embedded.insert(batch).await.unwrap();
        let b = clickhouse.insert(batch).await.unwrap();
        assert_eq!(a, b, "both stores take the same new events from a batch");
    }
    embedded.flush().await.unwrap();
    let (rows, distinct) = clickhouse.counts().await.unwrap();
    assert_eq!(rows, distinct, "no event id is stored twice");
    assert_eq!(rows, embedded.count().await.unwrap());
    assert!(rows > 15_000, "{rows}");

    let mut compared = 0;
    for tenant in ["acme", "globex", "initech", "nobody"] {
        for q in queries(now.date_naive()) {
            let a = embedded.query(tenant, Query::Overview(q.clone())).await.unwrap();
            let b = clickhouse.query(tenant, Query::Overview(q.clone())).await.unwrap();
            assert_eq!(a, b, "overview of {tenant} for {q:?}");
            compared += 1;
        }
        let a = embedded.query(tenant, Query::Campaigns).await.unwrap();
        let b = clickhouse.query(tenant, Query::Campaigns).await.unwrap();
        assert_eq!(a, b, "campaigns of {tenant}");
        for e in events.iter().filter(|e| e.tenant == tenant).step_by(997).chain(&events[..2]) {
            for id in [e.message_id.clone(), format!("<{}>", e.message_id.trim_matches(|c| c == '<' || c == '>')), "unknown@x".into()] {
                let q = Query::Message { message_id: id.clone() };
                assert_eq!(embedded.query(tenant, q.clone()).await.unwrap(), clickhouse.query(tenant, q).await.unwrap(), "message {id} of {tenant}");
            }
        }
    }
    assert!(compared > 100);

    // The hand-made cases came out as designed, not merely equal.
    let may = OverviewQuery {
        from: NaiveDate::from_ymd_opt(2026, 5, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2026, 5, 3).unwrap(),
        campaign: Some("edge".into()),
        tz: chrono_tz::Asia::Kathmandu,
    };
    let Answer::Overview(o) = clickhouse.query("acme", Query::Overview(may)).await.unwrap() else { panic!() };
    assert_eq!((o.totals.opens, o.totals.unique_opens, o.totals.clicks), (3, 1, 2));
    assert_eq!((o.totals.hard_bounces, o.totals.soft_bounces, o.totals.unsubscribes, o.totals.delivered), (1, 1, 1, 1));
    assert_eq!(o.totals.revenue_micros, 12_340_000);
    // Kathmandu: 18:14:59 UTC is 1 May, 18:15 UTC is 2 May; the first open (18:20 UTC) is 2 May.
    let clicks: Vec<u64> = o.daily.iter().map(|d| d.totals.clicks).collect();
    assert_eq!(clicks, vec![1, 1, 0]);
    let unique: Vec<u64> = o.daily.iter().map(|d| d.totals.unique_opens).collect();
    assert_eq!(unique, vec![0, 1, 0]);

    // A batch large enough to go in parts (each part's lookup overlapping the insert of the one
    // before), with the stored events in its middle: only the new ones go in, once.
    let (before, _) = clickhouse.counts().await.unwrap();
    let new: Vec<Event> = events
        .iter()
        .cycle()
        .take(100_000)
        .map(|e| Event { event_id: Uuid::new_v4(), tenant: "bulk".into(), ..e.clone() })
        .collect();
    let big: Vec<Event> = new[..40_000].iter().chain(&events).chain(&new[40_000..]).cloned().collect();
    assert_eq!(clickhouse.insert(&big).await.unwrap(), 100_000);
    assert_eq!(clickhouse.insert(&big).await.unwrap(), 0, "a redelivered large batch adds nothing");
    let (rows, distinct) = clickhouse.counts().await.unwrap();
    assert_eq!((rows, distinct), (before + 100_000, before + 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_keeps_tenants_apart_and_refuses_bad_ranges() {
    let ch = ClickHouse::start();
    let cfg = config(&ch, "tenants");
    ClickHouseEventStore::migrate(&cfg).await.unwrap();
    let store = ClickHouseEventStore::new(&cfg);
    let mut events = edge_cases();
    // A tenant name that tries to break out of its quotes is just a name.
    events.push(Event { tenant: "x' OR '1'='1".into(), ..events[0].clone() });
    events.last_mut().unwrap().event_id = Uuid::from_u128(99);
    store.insert(&events).await.unwrap();
    let q = |campaign: Option<&str>| OverviewQuery {
        from: NaiveDate::from_ymd_opt(2026, 5, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2026, 5, 3).unwrap(),
        campaign: campaign.map(String::from),
        tz: chrono_tz::UTC,
    };
    let sent = |a: Answer| match a {
        Answer::Overview(o) => o.totals.sent,
        other => panic!("{other:?}"),
    };
    assert_eq!(sent(store.query("acme", Query::Overview(q(None))).await.unwrap()), 1);
    assert_eq!(sent(store.query("globex", Query::Overview(q(None))).await.unwrap()), 1);
    assert_eq!(sent(store.query("x' OR '1'='1", Query::Overview(q(None))).await.unwrap()), 1);
    assert_eq!(sent(store.query("nobody", Query::Overview(q(Some("edge")))).await.unwrap()), 0);
    let Answer::Campaigns(c) = store.query("globex", Query::Campaigns).await.unwrap() else { panic!() };
    assert_eq!(c.len(), 1, "globex sees only its own campaign: {c:?}");
    let Answer::Message(m) = store.query("globex", Query::Message { message_id: "e6@x".into() }).await.unwrap() else { panic!() };
    assert_eq!(m, None, "acme's message is not globex's");
    let reversed = OverviewQuery { from: NaiveDate::from_ymd_opt(2026, 5, 3).unwrap(), to: NaiveDate::from_ymd_opt(2026, 5, 1).unwrap(), ..q(None) };
    assert!(store.query("acme", Query::Overview(reversed)).await.is_err());
}

/// Every DDL statement and query template, rendered for a modern server, runs on ClickHouse
/// 26.9 (`../shared/tools/clickhouse-modern-check`); the cluster DDL parses there.
#[test]
fn ddl_and_queries_run_on_a_modern_clickhouse() {
    let mut sql = String::new();
    for (_, _, migration) in MIGRATIONS {
        for statement in Capabilities::MODERN.render(migration) {
            sql.push_str(&statement);
            sql.push_str(";\n");
        }
    }
    // The cluster DDL needs a cluster and Keeper to execute: here it must parse.
    let cluster = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../deploy/clickhouse/cluster.sql");
    let cluster = std::fs::read_to_string(&cluster).unwrap_or_else(|e| panic!("{}: {e}", cluster.display()));
    for statement in Capabilities::MODERN.render(&cluster) {
        sql.push_str(&format!("EXPLAIN AST {statement};\n"));
    }
    for template in mailpipe_store::clickhouse::query_templates() {
        sql.push_str(&template);
        sql.push_str(";\n");
    }
    let mut child = std::process::Command::new(modern_check_tool())
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ../shared/tools/clickhouse-modern-check");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\n--- SQL ---\n{sql}");
    assert!(text.contains("statements ran on ClickHouse 26"), "{text}");
}

/// The cluster DDL repeats each table's columns and each view's query (a `_local` table per
/// shard): they must stay those of the migrations.
#[test]
fn the_cluster_ddl_declares_what_the_migrations_declare() {
    let cluster = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../deploy/clickhouse/cluster.sql");
    let cluster = std::fs::read_to_string(&cluster).unwrap_or_else(|e| panic!("{}: {e}", cluster.display()));
    // The body of the CREATE statement that starts with `head`: the columns up to the engine,
    // or a view's query up to its end.
    fn body<'a>(sql: &'a str, head: &str) -> &'a str {
        let at = sql.find(head).unwrap_or_else(|| panic!("no `{head}`"));
        let rest = &sql[at + head.len()..];
        let start = rest.find(if head.contains("VIEW") { "SELECT" } else { "(" }).unwrap();
        let end = rest.find(if head.contains("VIEW") { ";" } else { "\n) ENGINE" }).unwrap();
        &rest[start..end]
    }
    let mut checked = 0;
    for (_, _, migration) in MIGRATIONS {
        for line in migration.lines() {
            if let Some(name) = line.strip_prefix("CREATE TABLE IF NOT EXISTS ").and_then(|l| l.split_whitespace().next()) {
                let ours = body(migration, &format!("CREATE TABLE IF NOT EXISTS {name} "));
                assert_eq!(ours, body(&cluster, &format!("CREATE TABLE IF NOT EXISTS {name}_local ")), "columns of {name}");
                checked += 1;
            }
            if let Some(name) = line.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS ").and_then(|l| l.split_whitespace().next()) {
                let ours = body(migration, &format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {name} "));
                let theirs = body(&cluster, &format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {name} ")).replace("FROM events_local", "FROM events");
                assert_eq!(ours, theirs, "query of {name}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7, "4 tables and 3 views");
}
