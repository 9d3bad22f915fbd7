//! The same fixture events through the embedded store (DataFusion) and the ClickHouse store
//! (a real server): every dashboard must get the same answer from both (the golden cases and
//! every measure are in `golden.rs`). Also: the ClickHouse store is idempotent by event id,
//! keeps tenants apart, and its DDL and query templates run on a modern ClickHouse too.

use chrono::{NaiveDate, Utc};
use mailpipe::demo::{Generator, Profile};
use mailpipe_query::dashboards::dashboards;
use mailpipe_schemas::Event;
use mailpipe_store::clickhouse::{Capabilities, ClickHouseEventStore, ClickHouseStoreConfig, MIGRATIONS};
use mailpipe_store::datafusion::{DataFusionEventStore, DataFusionStoreConfig};
use mailpipe_store::{EventStore, QueryError, StoreError};
use mailpipe_tests::fixtures::edge_cases;
use mailpipe_tests::servers::{modern_check_tool, ClickHouse};
use std::collections::BTreeMap;
use uuid::Uuid;

fn config(ch: &ClickHouse, database: &str) -> ClickHouseStoreConfig {
    ClickHouseStoreConfig { url: ch.url(), database: database.into(), user: "default".into(), password: String::new() }
}


/// Overview query strings over ranges, time zones and campaigns.
fn overview_queries(now: NaiveDate) -> Vec<String> {
    let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
    let mut out = Vec::new();
    let ranges = [(d(2026, 5, 1), d(2026, 5, 3)), (now - chrono::Days::new(7), now), (now - chrono::Days::new(90), now), (now, now)];
    let zones = ["UTC", "Asia/Kathmandu", "America/New_York", "Asia/Tokyo"];
    for (i, (from, to)) in ranges.into_iter().enumerate() {
        for tz in zones {
            for campaign in [None, Some("edge"), Some("other"), Some("nope")] {
                if i > 0 && campaign.is_some_and(|c| c != "edge") {
                    continue;
                }
                let mut q = format!("from={from}&to={to}&tz={tz}");
                if let Some(c) = campaign {
                    q.push_str(&format!("&campaign={c}"));
                }
                out.push(q);
            }
        }
    }
    out
}

async fn overview(store: &dyn EventStore, tenant: &str, query: &str) -> serde_json::Value {
    let d = dashboards().into_iter().find(|d| d.name == "overview").unwrap();
    (d.answer)(store, tenant, query).await.unwrap_or_else(|e| panic!("{query}: {:?}", e.errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_answers_every_typed_query_like_the_embedded_store() {
    let ch = ClickHouse::start();
    let cfg = config(&ch, "parity");
    assert_eq!(ClickHouseEventStore::migrate(&cfg).await.unwrap(), vec![1, 2, 3, 4]);
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

    let (mut compared, mut streams) = (0, 0);
    for tenant in ["acme", "globex", "initech", "nobody"] {
        for dashboard in dashboards() {
            let queries = if dashboard.name == "overview" { overview_queries(now.date_naive()) } else { vec![String::new()] };
            for q in queries {
                let a = (dashboard.answer)(&embedded, tenant, &q).await.unwrap();
                let b = (dashboard.answer)(&clickhouse, tenant, &q).await.unwrap();
                assert_eq!(a, b, "{} of {tenant} for {q}", dashboard.name);
                compared += 1;
            }
        }
        for e in events.iter().filter(|e| e.tenant == tenant).step_by(997).chain(&events[..2]) {
            for id in [e.message_id.clone(), format!("<{}>", e.message_id.trim_matches(|c| c == '<' || c == '>')), "unknown@x".into()] {
                let sent = embedded.message(tenant, &id).await.unwrap();
                assert_eq!(sent, clickhouse.message(tenant, &id).await.unwrap(), "message {id} of {tenant}");
                streams += usize::from(sent.is_some_and(|m| m.stream.is_some()));
            }
        }
    }
    assert!(compared > 100);
    assert!(streams > 10, "sends' streams were compared ({streams})");

    // The hand-made cases came out as designed, not merely equal.
    let o = overview(&clickhouse, "acme", "from=2026-05-01&to=2026-05-03&tz=Asia/Kathmandu&campaign=edge").await;
    let t = &o["totals"];
    // e1's three opens and e7's first; e1 and e7 count once each.
    assert_eq!((t["opens"].as_u64(), t["unique_opens"].as_u64(), t["clicks"].as_u64()), (Some(4), Some(2), Some(2)));
    let n = |k: &str| t[k].as_u64().unwrap();
    assert_eq!((n("hard_bounces"), n("soft_bounces"), n("unsubscribes"), n("delivered")), (1, 1, 1, 1));
    assert_eq!(t["revenue_micros"].as_i64(), Some(12_340_000));
    let daily = |k: &str| o["daily"].as_array().unwrap().iter().map(|d| d[k].as_u64().unwrap()).collect::<Vec<_>>();
    // Kathmandu: 18:14:59 UTC is 1 May, 18:15 UTC is 2 May; e1's first open (18:20 UTC) is 2 May,
    // e7's (09:00 UTC) is 1 May.
    assert_eq!(daily("clicks"), vec![1, 1, 0]);
    assert_eq!(daily("unique_opens"), vec![1, 1, 0]);
    // e7 was first opened in `edge`: its later open in `other` is not a unique open there.
    let other = overview(&embedded, "acme", "from=2026-05-01&to=2026-05-03&campaign=other").await;
    assert_eq!((other["totals"]["opens"].as_u64(), other["totals"]["unique_opens"].as_u64()), (Some(1), Some(0)));

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
    let sent = |o: serde_json::Value| o["totals"]["sent"].as_u64().unwrap();
    let range = "from=2026-05-01&to=2026-05-03";
    assert_eq!(sent(overview(&store, "acme", range).await), 1);
    assert_eq!(sent(overview(&store, "globex", range).await), 1);
    assert_eq!(sent(overview(&store, "x' OR '1'='1", range).await), 1);
    assert_eq!(sent(overview(&store, "nobody", &format!("{range}&campaign=edge")).await), 0);
    let campaigns = dashboards().into_iter().find(|d| d.name == "campaigns").unwrap();
    let c = (campaigns.answer)(&store, "globex", "").await.unwrap();
    assert_eq!(c["campaigns"].as_array().unwrap().len(), 1, "globex sees only its own campaign: {c}");
    assert_eq!(store.message("globex", "e6@x").await.unwrap(), None, "acme's message is not globex's");
    let reversed = mailpipe_store::Aggregate {
        frame: Some(mailpipe_store::Frame::new(NaiveDate::from_ymd_opt(2026, 5, 3).unwrap(), NaiveDate::from_ymd_opt(2026, 5, 1).unwrap(), chrono_tz::UTC, mailpipe_store::Grain::Day)),
        filters: Default::default(),
        group_by: vec![],
        measures: vec![mailpipe_store::Measure::RevenueMicros],
    };
    assert!(matches!(store.aggregate("acme", &reversed).await, Err(StoreError::Query(QueryError::Reversed { .. }))));
}

/// Migration 3's backfill of `orphans` may run again (a migration cut short) or overlap its
/// view's first inserts: an orphan is still counted once, in its send's campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphans_backfill_may_run_again_without_counting_anything_twice() {
    let ch = ClickHouse::start();
    let cfg = config(&ch, "backfill");
    ClickHouseEventStore::migrate(&cfg).await.unwrap();
    let store = ClickHouseEventStore::new(&cfg);
    let late: Vec<Event> = edge_cases().into_iter().filter(|e| e.message_id.contains("late@x")).collect();
    assert_eq!(late.len(), 2, "the fixture's bounce filed under (unmatched) and its send");
    store.insert(&late).await.unwrap();
    let caps = Capabilities::of_version(&store.version().await.unwrap());
    let (_, _, orphans) = MIGRATIONS[2];
    let backfill = caps.render(orphans).into_iter().find(|s| s.starts_with("INSERT")).unwrap();
    let backfill = backfill.replace("INTO orphans", "INTO backfill.orphans").replace("FROM events", "FROM backfill.events");
    for _ in 0..2 {
        ch.sql(&backfill);
    }
    let o = overview(&store, "acme", "from=2026-05-05&to=2026-05-05&campaign=edge").await;
    assert_eq!((o["totals"]["sent"].as_u64(), o["totals"]["hard_bounces"].as_u64()), (Some(1), Some(1)));
    let u = overview(&store, "acme", "from=2026-05-05&to=2026-05-05&campaign=(unmatched)").await;
    assert_eq!(u["totals"]["hard_bounces"].as_u64(), Some(0));
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
/// shard): they must stay what the migrations leave, once every one has run (columns added by
/// a later ALTER, views dropped by a later migration).
#[test]
fn the_cluster_ddl_declares_what_the_migrations_declare() {
    let cluster = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../deploy/clickhouse/cluster.sql");
    let cluster = std::fs::read_to_string(&cluster).unwrap_or_else(|e| panic!("{}: {e}", cluster.display()));
    // Tables (their columns) and views (their queries) by name, as a series of statements
    // leaves them.
    fn declared(statements: Vec<String>) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let (mut tables, mut views) = (BTreeMap::new(), BTreeMap::new());
        let name = |rest: &str| rest.split_whitespace().next().unwrap().to_string();
        for st in statements {
            if let Some(rest) = st.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
                if let (Some(open), Some(end)) = (rest.find('('), rest.find("\n) ENGINE")) {
                    tables.insert(name(rest), rest[open + 1..end].trim().to_string());
                }
            } else if let Some(rest) = st.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
                views.insert(name(rest), rest[rest.find("SELECT").unwrap()..].to_string());
            } else if let Some(rest) = st.strip_prefix("ALTER TABLE ") {
                let column = rest.split_once(" ADD COLUMN IF NOT EXISTS ").unwrap_or_else(|| panic!("an ALTER this test does not know: {st}")).1;
                let columns: &mut String = tables.get_mut(&name(rest)).unwrap_or_else(|| panic!("ALTER of an unknown table: {st}"));
                columns.push_str(",\n    ");
                columns.push_str(column);
            } else if let Some(rest) = st.strip_prefix("DROP TABLE IF EXISTS ") {
                assert!(views.remove(&name(rest)).is_some(), "DROP of an unknown view: {st}");
            }
        }
        (tables, views)
    }
    let (tables, views) = declared(MIGRATIONS.iter().flat_map(|(_, _, m)| Capabilities::MODERN.render(m)).collect());
    let (cluster_tables, cluster_views) = declared(Capabilities::MODERN.render(&cluster));
    for (name, columns) in &tables {
        assert_eq!(Some(columns), cluster_tables.get(&format!("{name}_local")), "columns of {name}");
    }
    for (name, query) in &views {
        let theirs = cluster_views.get(name).unwrap_or_else(|| panic!("no view {name} in the cluster DDL")).replace("FROM events_local", "FROM events");
        assert_eq!(query, &theirs, "query of {name}");
    }
    assert_eq!(cluster_views.len(), views.len(), "the cluster DDL has the migrations' views and no others");
    assert_eq!((tables.len(), views.len()), (5, 4), "5 tables and 4 views");
    assert!(tables["events"].ends_with("stream LowCardinality(String) DEFAULT ''"), "{}", tables["events"]);
}
