use super::*;
use crate::{Aggregate, AggregateAnswer, Dimension, EventStore, Filters, Frame, Grain, Measure};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use mailpipe_schemas::{BounceClass, Event, EventType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Deterministic mixed traffic for two tenants over ten days of May 2026.
fn fixture(seed: u64, n: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    (0..n)
        .map(|_| {
            let t = EventType::ALL[rng.random_range(0..EventType::ALL.len())];
            let at: DateTime<Utc> = start + Duration::seconds(rng.random_range(0..10 * 86_400));
            let msg = rng.random_range(0..200);
            Event {
                event_id: uuid::Uuid::from_u128(rng.random()),
                tenant: ["a", "b"][rng.random_range(0..2)].into(),
                event_type: t,
                occurred_at: at,
                received_at: at,
                campaign: format!("c{}", msg % 3),
                variant: ["", "A", "B"][msg % 3].into(),
                message_id: if rng.random_bool(0.5) { format!("<m{msg}@x>") } else { format!("m{msg}@x") },
                recipient: format!("r{msg}@gmail.com"),
                link: (t == EventType::Click).then(|| "https://x.test/".into()),
                bounce_class: (t == EventType::Bounced)
                    .then(|| if rng.random_bool(0.5) { BounceClass::Hard } else { BounceClass::Soft }),
                status: None,
                reason: None,
                revenue_micros: (t == EventType::Conversion).then(|| rng.random_range(0..100_000_000)),
                currency: None,
                user_agent: None,
                ip: None,
                stream: None,
            }
        })
        .collect()
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 5, d).unwrap()
}

fn q(from: u32, to: u32, tz: chrono_tz::Tz, grain: Grain, campaign: Option<&str>, group_by: Vec<Dimension>) -> Aggregate {
    Aggregate {
        frame: Some(Frame::new(day(from), day(to), tz, grain)),
        filters: Filters { campaign: campaign.map(String::from), variant: None },
        group_by,
        measures: Measure::all(),
    }
}

fn queries() -> Vec<Aggregate> {
    let mut out = Vec::new();
    for (from, to) in [(1, 10), (3, 5), (7, 7), (1, 1)] {
        for tz in [chrono_tz::UTC, chrono_tz::America::Los_Angeles, chrono_tz::Asia::Kolkata] {
            for campaign in [None, Some("c1"), Some("missing")] {
                out.push(q(from, to, tz, Grain::Day, campaign, vec![]));
            }
        }
    }
    for grain in [Grain::Total, Grain::HourOfWeek] {
        for group_by in [vec![], vec![Dimension::Campaign], vec![Dimension::Variant, Dimension::Campaign]] {
            out.push(q(2, 9, chrono_tz::Asia::Kathmandu, grain, None, group_by));
        }
    }
    out.push(Aggregate { frame: None, ..q(1, 1, chrono_tz::UTC, Grain::Total, None, vec![Dimension::Campaign, Dimension::Variant]) });
    out
}

async fn answer(store: &DataFusionEventStore, tenant: &str, q: &Aggregate) -> AggregateAnswer {
    store.aggregate(tenant, q).await.unwrap()
}

#[tokio::test]
async fn rollup_answers_match_a_raw_scan_before_and_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = DataFusionEventStore::open(DataFusionStoreConfig::new(dir.path())).await.unwrap();
    let events = fixture(7, 3000);
    store.insert(&events[..1500]).await.unwrap();
    store.flush().await.unwrap();
    store.insert(&events[1500..]).await.unwrap(); // these stay in the tail
    let mut nonzero = 0;
    for q in queries() {
        for tenant in ["a", "b", "nobody"] {
            let rolled = answer(&store, tenant, &q).await;
            let scanned = store.scan(tenant, &q).await.unwrap();
            assert_eq!(rolled, scanned, "tenant {tenant}, query {q:?}");
            nonzero += usize::from(rolled.rows.iter().any(|r| r.values.iter().all(|&v| v != 0)));
        }
    }
    assert!(nonzero > 10, "fixture too sparse to prove anything");
}

#[tokio::test]
async fn flushed_events_survive_reopen_and_are_never_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let events = fixture(11, 2000);
    let q = q(1, 10, chrono_tz::UTC, Grain::Day, None, vec![Dimension::Campaign]);
    let before = {
        let store = DataFusionEventStore::open(DataFusionStoreConfig::new(dir.path())).await.unwrap();
        assert_eq!(store.insert(&events).await.unwrap(), 2000);
        assert_eq!(store.insert(&events[..500]).await.unwrap(), 0, "duplicates inserted");
        store.flush().await.unwrap();
        answer(&store, "a", &q).await
    };
    let store = DataFusionEventStore::open(DataFusionStoreConfig::new(dir.path())).await.unwrap();
    assert_eq!(store.event_count(), 2000);
    assert_eq!(answer(&store, "a", &q).await, before);
    // A redelivery after restart is recognised too.
    assert_eq!(store.insert(&events).await.unwrap(), 0);
    assert_eq!(answer(&store, "a", &q).await, before);
    assert_eq!(store.scan("a", &q).await.unwrap(), before);
}

#[tokio::test]
async fn unflushed_tail_is_not_durable_but_is_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let events = fixture(3, 100);
    {
        let store = DataFusionEventStore::open(DataFusionStoreConfig::new(dir.path())).await.unwrap();
        store.insert(&events).await.unwrap();
        assert_eq!(store.event_count(), 100);
    }
    // Never flushed: the bus still holds these (not acknowledged) and will redeliver them.
    let store = DataFusionEventStore::open(DataFusionStoreConfig::new(dir.path())).await.unwrap();
    assert_eq!(store.event_count(), 0);
    assert_eq!(store.insert(&events).await.unwrap(), 100);
}

#[tokio::test]
async fn compaction_merges_small_files_and_a_crash_midway_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DataFusionStoreConfig::new(dir.path());
    config.compact_after_files = 4;
    let events = fixture(5, 2000);
    let q = q(1, 10, chrono_tz::UTC, Grain::Day, None, vec![Dimension::Campaign]);
    let store = DataFusionEventStore::open(config.clone()).await.unwrap();
    for chunk in events.chunks(100) {
        store.insert(&chunk).await.unwrap();
        store.flush().await.unwrap();
    }
    let expected = answer(&store, "b", &q).await;
    // 20 flushes over 10 days would be ~200 files; compaction keeps each day at 4 or fewer.
    // (Compaction runs beside the flushes: wait for it.)
    store.compacted().await.unwrap();
    let files = store.file_count().await;
    assert!(files <= 10 * 4, "{files} files left after compaction");
    drop(store);

    // Simulate a crash after a compaction wrote its output but before it removed its inputs.
    let day_dir = std::fs::read_dir(dir.path().join("events")).unwrap().next().unwrap().unwrap().path();
    let mut inputs: Vec<_> = std::fs::read_dir(&day_dir).unwrap().map(|e| e.unwrap().path()).collect();
    inputs.sort();
    let parsed: Vec<files::DataFile> = files::open_files(&dir.path().join("events"))
        .unwrap()
        .into_iter()
        .filter(|f| f.path.parent() == Some(day_dir.as_path()))
        .collect();
    assert!(parsed.len() >= 2);
    let merged = files::compact(&dir.path().join("events"), &parsed).unwrap();
    assert!(merged.path.exists() && parsed.iter().all(|f| f.path.exists()));

    let store = DataFusionEventStore::open(config).await.unwrap();
    assert_eq!(store.event_count(), 2000);
    assert_eq!(answer(&store, "b", &q).await, expected);
    assert_eq!(store.scan("b", &q).await.unwrap(), expected);
    assert!(parsed.iter().all(|f| !f.path.exists()), "superseded files left behind");
}

/// Files written before the `stream` column existed (by an earlier release) load, compact with
/// newer files and scan alike; their sends simply have no stream.
#[tokio::test]
async fn files_from_before_the_stream_column_load_compact_and_scan_with_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let may_1 = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let mut events = fixture(13, 400);
    for (i, e) in events.iter_mut().enumerate() {
        (e.occurred_at, e.received_at) = (may_1 + Duration::seconds(i as i64), may_1 + Duration::seconds(i as i64));
        e.stream = (e.event_type == EventType::Sent).then(|| "marketing".into());
        if i < 200 {
            e.message_id = format!("old{i}@x");
        }
    }
    let (old, new) = events.split_at(200);
    let batch = convert::to_batch(&old.iter().collect::<Vec<_>>()).unwrap();
    let without = batch.project(&(0..batch.num_columns() - 1).collect::<Vec<_>>()).unwrap();
    assert!(without.column_by_name("stream").is_none() && without.num_columns() == mailpipe_schemas::COLUMNS.len() - 1);
    let day_dir = dir.path().join("events/day=2026-05-01");
    std::fs::create_dir_all(&day_dir).unwrap();
    let old_file = day_dir.join("000000000001-000000000001.parquet");
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&old_file).unwrap(), without.schema(), None).unwrap();
    w.write(&without).unwrap();
    w.close().unwrap();

    let config = DataFusionStoreConfig::new(dir.path());
    let store = DataFusionEventStore::open(config.clone()).await.unwrap();
    assert_eq!(store.event_count(), 200, "the old file loads");
    for chunk in new.chunks(50) {
        store.insert(chunk).await.unwrap();
        store.flush().await.unwrap();
    }
    let q = q(1, 1, chrono_tz::UTC, Grain::Day, None, vec![Dimension::Campaign]);
    let expected = answer(&store, "a", &q).await;
    assert_eq!(store.scan("a", &q).await.unwrap(), expected, "old and new files scan together");
    drop(store);
    // The old file compacts with the new ones (the inputs go when the store opens next).
    let root = dir.path().join("events");
    let day = files::open_files(&root).unwrap();
    assert_eq!(day.len(), 5);
    files::compact(&root, &day).unwrap();

    let store = DataFusionEventStore::open(config).await.unwrap();
    assert!(!old_file.exists(), "the old file was compacted with the new ones");
    assert_eq!(store.file_count().await, 1);
    assert_eq!(store.event_count(), 400);
    assert_eq!(answer(&store, "a", &q).await, expected);
    assert_eq!(store.scan("a", &q).await.unwrap(), expected);
    let stream_of = |e: &Event| {
        let store = &store;
        let (tenant, id) = (e.tenant.clone(), e.message_id.clone());
        async move { store.message(&tenant, &id).await.unwrap().unwrap().stream }
    };
    let old_send = old.iter().find(|e| e.event_type == EventType::Sent).unwrap();
    assert_eq!(stream_of(old_send).await, None, "the old file had no stream");
    let new_send = new.iter().rev().find(|e| e.event_type == EventType::Sent).unwrap();
    assert_eq!(stream_of(new_send).await.as_deref(), Some("marketing"));
}
